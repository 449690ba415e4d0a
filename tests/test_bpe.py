"""The byte-level BPE trained offline (data/shakespeare_bpe/prepare.py) and loading.py's side
of it, on a tiny corpus: a dataset under data/ that the scripts train and sample on."""
import json
import re
import runpy
import shutil
import sys
import uuid

import numpy as np
import pytest
import torch

import loading
from configurator import UserError
from conftest import ROOT, _tiny_text

PREPARE = ROOT / 'data' / 'shakespeare_bpe' / 'prepare.py'
VOCAB = 300 # 256 bytes + 44 merges: enough to compress, small enough for fast tiny models


def prepare(*args):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, 'argv', [str(PREPARE), *args])
        runpy.run_path(str(PREPARE), run_name='__main__')


@pytest.fixture(scope='module')
def bpe_dataset(tmp_path_factory):
    """(name, text) of a BPE dataset prepared from about 20k characters under data/, removed afterwards."""
    source = tmp_path_factory.mktemp('bpe') / 'input.txt'
    text = _tiny_text()
    source.write_text(text, encoding='utf-8')
    name = f'_test_bpe_{uuid.uuid4().hex[:8]}'
    try:
        prepare(f'--input={source}', f'--vocab_size={VOCAB}', f'--out_dir={ROOT / "data" / name}')
        yield name, text
    finally:
        shutil.rmtree(ROOT / 'data' / name, ignore_errors=True)


def read_ids(folder, split):
    return np.fromfile(folder / f'{split}.bin', dtype=np.uint16).tolist()


def test_prepare_is_deterministic_and_round_trips(bpe_dataset, tmp_path):
    name, text = bpe_dataset
    folder = ROOT / 'data' / name
    (tmp_path / 'input.txt').write_text(text, encoding='utf-8')
    prepare(f'--input={tmp_path / "input.txt"}', f'--vocab_size={VOCAB}', f'--out_dir={tmp_path / "again"}')
    for file in ('tokenizer.json', 'train.bin', 'val.bin', 'meta.json'):
        assert (tmp_path / 'again' / file).read_bytes() == (folder / file).read_bytes(), file
    n = int(len(text) * 0.9)
    splits = {'train': text[:n], 'val': text[n:]}
    meta = json.loads((folder / 'meta.json').read_text())
    tokens = {split: len(read_ids(folder, split)) for split in splits}
    assert meta == {'tokenizer': 'bpe', 'vocab_size': VOCAB, 'chars': {'train': n, 'val': len(text) - n}, 'tokens': tokens}
    encode, decode = loading.load_tokenizer(name)
    for split, part in splits.items():
        ids = read_ids(folder, split)
        assert decode(ids) == part and encode(part) == ids and max(ids) < VOCAB
        assert loading.chars_per_token(name, split) == len(part) / len(ids) > 1.2 # the merges compress
    odd = ' two  spaces\n\n\ttab, trailing \nnon-ASCII: caf\u00e9 \u6f22\n'
    assert decode(encode(odd)) == odd # bytes the training text never had still round-trip


def test_mask_and_wrong_ids_decode_to_glyphs(bpe_dataset):
    name, _ = bpe_dataset
    encode, decode = loading.load_tokenizer(name)
    assert len(encode('\u00e9')) == 2 # an unseen character is two byte tokens: decoded as one run
    ids = encode('ROMEO') + [VOCAB] + encode(' caf\u00e9') + [VOCAB + 1]
    assert decode(ids) == f'ROMEO{loading.MASK_GLYPH} caf\u00e9{loading.WRONG_GLYPH}'


def test_chars_per_token_of_other_datasets(tiny_dataset, tmp_path, monkeypatch):
    assert loading.chars_per_token(tiny_dataset[0], 'val') == 1.0 # a char dataset
    monkeypatch.setattr(loading, 'DATA_DIR', str(tmp_path))
    (tmp_path / 'gpt2').mkdir()
    (tmp_path / 'gpt2' / 'meta.json').write_text(json.dumps({'tokenizer': 'gpt2', 'vocab_size': 50257}))
    assert loading.chars_per_token('gpt2', 'val') is None # GPT-2 BPE data prepared without counts
    assert loading.chars_per_token('missing', 'val') is None


def run_script(monkeypatch, capsys, script, *args):
    monkeypatch.setattr(sys, 'argv', [script, *args])
    runpy.run_path(str(ROOT / script), run_name='__main__')
    return capsys.readouterr().out


def test_scripts_train_and_sample_on_bpe(bpe_dataset, tiny_args, tmp_path, monkeypatch, capsys):
    name, _ = bpe_dataset
    args = [a for a in tiny_args if not a.startswith('--dataset=')] + [f'--dataset={name}', '--max_iters=2',
            '--lr_decay_iters=2', '--warmup_iters=1', '--eval_interval=2']
    ar, block = tmp_path / 'ar', tmp_path / 'block'
    out = run_script(monkeypatch, capsys, 'train.py', *args, '--model_type=gpt2', f'--out_dir={ar}')
    assert f'found vocab_size = {VOCAB}' in out
    run_script(monkeypatch, capsys, 'train.py', *args, '--model_type=diffusion', '--loss_type=elbo', '--diffusion_block=4',
               f'--init_from={ar}', f'--out_dir={block}')
    model_args = torch.load(block / 'ckpt.pt', weights_only=True)['model_args']
    assert (model_args['mask_token_id'], model_args['wrong_token_id'], model_args['vocab_size']) == (VOCAB, VOCAB + 1, VOCAB + 2)

    # [MASK*N] is N BPE tokens: the sample is the two encoded texts and 5 + 3 written tokens
    encode, _ = loading.load_tokenizer(name)
    samples = tmp_path / 'samples.txt'
    out = run_script(monkeypatch, capsys, 'generate_diffusion.py', f'--out_dir={block}', '--device=cpu', '--num_samples=2',
                     '--template=ROMEO:[MASK*5]\\nJULIET:[MASK*3]', '--steps=2', f'--output={samples}')
    length = len(encode('ROMEO:')) + 5 + len(encode('\nJULIET:')) + 3
    assert re.search(rf'2 samples of {length} tokens', out)
    for sample in samples.read_text(encoding='utf-8').split('\n---------------\n')[:-1]:
        assert sample.startswith('ROMEO:') and '\nJULIET:' in sample and loading.MASK_GLYPH not in sample

    out = run_script(monkeypatch, capsys, 'sample.py', f'--out_dir={ar}', '--device=cpu', '--start=ROMEO:',
                     '--num_samples=1', '--max_new_tokens=5')
    assert re.search(r'^ROMEO:', out, re.M) and '1 samples of 5 new tokens' in out


def test_without_tokenizers_package_is_one_line(bpe_dataset, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, 'tokenizers', None) # what `import tokenizers` sees when it is not installed
    with pytest.raises(UserError, match='pip install tokenizers') as e:
        loading.load_tokenizer(bpe_dataset[0])
    assert '\n' not in str(e.value)
    (tmp_path / 'in.txt').write_text('some text\n' * 10, encoding='utf-8')
    with pytest.raises(SystemExit) as exit:
        prepare(f'--input={tmp_path / "in.txt"}', f'--out_dir={tmp_path / "out"}')
    err = capsys.readouterr().err
    assert exit.value.code == 2 and 'pip install tokenizers' in err and len(err.strip().splitlines()) == 1


def test_without_tokenizer_json_is_one_line(bpe_dataset, monkeypatch, tmp_path):
    folder = tmp_path / 'no_tokenizer'
    folder.mkdir()
    shutil.copy(ROOT / 'data' / bpe_dataset[0] / 'meta.json', folder)
    monkeypatch.setattr(loading, 'DATA_DIR', str(tmp_path))
    with pytest.raises(UserError, match='python data/shakespeare_bpe/prepare.py') as e:
        loading.load_tokenizer('no_tokenizer')
    assert '\n' not in str(e.value)


def test_prepare_refuses_a_vocabulary_outside_uint16(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        prepare('--vocab_size=100', f'--out_dir={tmp_path}')
    err = capsys.readouterr().err
    assert exit.value.code == 2 and '--vocab_size=100' in err and len(err.strip().splitlines()) == 1
