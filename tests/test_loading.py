"""loading.py's GPT-2 BPE tokenizer, with a tiny tiktoken encoding built here (no download)."""
import pytest
import tiktoken

import loading
from configurator import UserError


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
