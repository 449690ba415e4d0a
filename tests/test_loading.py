"""loading.py's GPT-2 BPE tokenizer, with a tiny tiktoken encoding built here (no download), and
the checkpoints of earlier versions."""
from dataclasses import asdict

import pytest
import tiktoken
import torch

import loading
import sampling
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
    assert torch.equal(sampling.denoiser_logits(loaded, x), sampling.denoiser_logits(model, x))


def old_checkpoint(tmp_path, model_type='diffusion', **retired):
    """A checkpoint as earlier versions wrote it, whose model_args also carry the retired settings."""
    torch.manual_seed(0)
    specials = dict(vocab_size=12, mask_token_id=10, wrong_token_id=11) if model_type == 'diffusion' else dict(vocab_size=10)
    model = GPT(GPTConfig(model_type=model_type, n_layer=1, n_head=2, n_embd=16, block_size=8, pos_encoding='rope',
                          **specials)).eval()
    loading.save_checkpoint({'model': model.state_dict(), 'model_args': dict(asdict(model.config), **retired),
                             'iter_num': 0, 'config': {}}, str(tmp_path))
    return model


@pytest.mark.parametrize('model_type', ['diffusion', 'gpt2'])
def test_a_checkpoint_with_the_kept_values_of_retired_settings_still_loads(tmp_path, model_type):
    """time_conditioning=False, tie_embeddings=True and embedding_init_std=0.02 are the model of today."""
    model = old_checkpoint(tmp_path, model_type, time_conditioning=False, tie_embeddings=True, embedding_init_std=0.02)
    loaded = loading.model_from_checkpoint(loading.load_checkpoint(str(tmp_path))).eval()
    assert loaded.config == model.config
    assert loaded.transformer.wte.weight is loaded.lm_head.weight
    x = torch.randint(10, (2, 8))
    assert torch.equal(loaded(x, x)[0], model(x, x)[0])


@pytest.mark.parametrize('retired, named', [
    (dict(time_conditioning=True), 'time_conditioning=True'),
    (dict(time_conditioning=True, tie_embeddings=True, embedding_init_std=0.02), 'time_conditioning=True'),
    (dict(tie_embeddings=False), 'tie_embeddings=False'),
    (dict(tie_embeddings=False, embedding_init_std=1.0), 'tie_embeddings=False'),
])
def test_a_checkpoint_with_another_value_of_a_retired_setting_is_one_clear_error(tmp_path, retired, named):
    old_checkpoint(tmp_path, **retired)
    with pytest.raises(UserError) as e:
        loading.model_from_checkpoint(loading.load_checkpoint(str(tmp_path)))
    message = str(e.value)
    assert '\n' not in message
    assert message.startswith(f"this checkpoint was trained with {named}, which this version no longer has")
    assert 'retrain it with python train.py' in message


def test_a_checkpoint_with_another_embedding_init_std_is_refused(tmp_path):
    old_checkpoint(tmp_path, embedding_init_std=1.0)
    with pytest.raises(UserError, match='trained with embedding_init_std=1.0, which this version no longer has'):
        loading.model_from_checkpoint(loading.load_checkpoint(str(tmp_path)))


def test_random_states_continue_on_the_same_setup_and_restart_from_reseed_elsewhere():
    streams = {'data': torch.Generator().manual_seed(1), 'noise': torch.Generator().manual_seed(2)}
    torch.manual_seed(3)
    saved = loading.random_states(streams, 'cpu', 1)
    expected = [torch.rand(4, generator=g) for g in streams.values()] + [torch.rand(4)]
    # the same device kind and number of processes: every stream goes on where it was saved
    fresh = {'data': torch.Generator(), 'noise': torch.Generator()}
    assert loading.restore_random_states(saved, fresh, 'cpu', 0, 1, reseed=99) is None
    for want, got in zip(expected, [torch.rand(4, generator=g) for g in fresh.values()] + [torch.rand(4)]):
        assert torch.equal(want, got)
    # saved on another device kind: every stream restarts from reseed, the generators 1000 apart
    saved['device_type'] = 'cuda'
    assert loading.restore_random_states(saved, fresh, 'cpu', 0, 1, reseed=99) == ('cuda', 1)
    assert torch.equal(torch.rand(4, generator=fresh['data']), torch.rand(4, generator=torch.Generator().manual_seed(99)))
    assert torch.equal(torch.rand(4, generator=fresh['noise']), torch.rand(4, generator=torch.Generator().manual_seed(1099)))
    assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(99)))
