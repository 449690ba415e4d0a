"""loading.py's GPT-2 BPE tokenizer, with a tiny tiktoken encoding built here (no download), and
the checkpoints of earlier versions."""
from dataclasses import asdict

import pytest
import tiktoken
import torch

import diffusion
import loading
from configurator import UserError
from model import GPT, GPTConfig


@pytest.fixture
def byte_level_gpt2(monkeypatch):
    enc = tiktoken.Encoding(name='bytes', pat_str=r'\S+|\s+', mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={'<|endoftext|>': 256})
    monkeypatch.setattr(tiktoken, 'get_encoding', lambda name: enc)


def test_gpt2_tokenizer_round_trip_and_special_glyphs(byte_level_gpt2):
    encode, decode = loading.gpt2_tokenizer(vocab_size=257)
    ids = encode('hi there<|endoftext|>')
    assert ids[-1] == 256 and decode(ids) == 'hi there<|endoftext|>'
    # the ids of [MASK] and [WRONG] come right after the vocabulary and show as glyphs
    assert decode(ids[:2] + [257] + ids[2:8] + [258]) == f"hi{loading.MASK_GLYPH} there{loading.WRONG_GLYPH}"


def test_gpt2_tokenizer_offline_is_one_clear_error(monkeypatch):
    def offline(name):
        raise ConnectionError('no network')
    monkeypatch.setattr(tiktoken, 'get_encoding', offline)
    with pytest.raises(UserError, match='TIKTOKEN_CACHE_DIR'):
        loading.gpt2_tokenizer()


def test_a_checkpoint_with_the_mask_bias_in_model_args_still_loads(tmp_path):
    """Older checkpoints also kept the [MASK] bias in model_args; the state dict's copy is the one applied."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(model_type='diffusion', n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=12,
                          mask_token_id=10, wrong_token_id=11, pos_encoding='rope'))
    model.mask_logit_bias.fill_(1.5)
    loading.save_checkpoint({'model': model.state_dict(), 'model_args': dict(asdict(model.config), mask_logit_bias=1.5),
                             'iter_num': 0, 'config': {}}, str(tmp_path))
    loaded = loading.model_from_checkpoint(loading.load_checkpoint(str(tmp_path)))
    x = torch.randint(10, (2, 8))
    assert loaded.mask_logit_bias.item() == 1.5
    assert torch.equal(diffusion.denoiser_logits(loaded, x), diffusion.denoiser_logits(model, x))
