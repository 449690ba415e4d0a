"""Every configuration mistake gets one line: each case runs a script in a subprocess with
one bad setting and checks exit code 2, no traceback, a single `error: ...` line that
says what was wrong, and that train.py wrote nothing: its out_dir is not even created,
and an existing checkpoint stays byte-identical."""
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch

import loading
from conftest import ROOT, _env, _tiny_text
from configurator import UserError
from model import GPT, GPTConfig

pytestmark = pytest.mark.slow

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not torch.backends.mps.is_available()

# (script, arguments, a distinctive part of the error line). In the arguments, {ar} and {diff}
# are checkpoint folders, {tmp} a scratch folder, {file} an existing plain file, {empty} an
# empty text file and {latin1} a text file that is not UTF-8. train.py also gets tiny_args
# (CPU, tiny model, tiny dataset) and an out_dir that must still not exist afterwards.
CASES = [
    # train.py: config files
    ('train.py', ['{tmp}/syntax.py'], 'syntax.py, line 2: invalid syntax'),
    # train.py: sizes, counts, rates and probabilities
    ('train.py', ['--batch_size=0'], 'batch_size must be an integer >= 1, not 0: e.g. --batch_size=12 (the default)'),
    ('train.py', ['--learning_rate=-0.001'], 'learning_rate must be >= 0, not -0.001'),
    ('train.py', ['--model_type=diffusion', '--input_mask_weight=0.4'], 'input_mask_weight=0.4 trains an AR model from scratch'),
    ('train.py', ['--input_mask_rate=1.5'], 'input_mask_rate must be'),
    ('train.py', ['--warmup_iters=100', '--lr_decay_iters=50'], 'lr_decay_iters=50 must be greater than warmup_iters=100'),
    ('train.py', ['--mask_rate_min=0.6', '--mask_rate_max=0.4'], 'mask_rate_min=0.6 must be below mask_rate_max=0.4'),
    # train.py: model shapes (model.py's checks)
    ('train.py', ['--n_embd=100', '--n_head=3'], 'n_embd=100 is not a multiple of n_head=3'),
    ('train.py', ['--pos_encoding=rope', '--n_embd=30'], "pos_encoding='rope' needs an even head size"),
    ('train.py', ['--dropout=1.0'], 'dropout must be in [0, 1), not 1.0'),
    ('train.py', ['--model_type=diffusion', '--diffusion_block=5'], 'diffusion_block=5 does not divide block_size=32'),
    # train.py: named options
    ('train.py', ['--loss_type=ebo'], "loss_type must be 'seed' or 'elbo', not 'ebo': did you mean --loss_type=elbo?"),
    ('train.py', ['--loss_weighting=mean'], "loss_weighting must be 'elbo' or 'token_mean'"),
    ('train.py', ['--init_from=gpt3'], "init_from must be 'scratch', 'resume', a GPT-2 model"),
    # train.py: this machine, and the files it needs
    pytest.param('train.py', ['--device=cuda'], "device='cuda' is not available",
                 marks=pytest.mark.skipif(not NO_CUDA, reason='this machine has CUDA')),
    ('train.py', ['--dtype=float16'], "dtype='float16' needs a GPU (its GradScaler is CUDA's): on the CPU use --dtype=bfloat16"),
    ('train.py', ['--dataset={badmeta}'], "meta.json is not valid JSON (JSONDecodeError): prepare the dataset again"),
    ('train.py', ['--dataset={short}'], "train.bin holds 0 tokens, fewer than the 33 needed (block_size + 1)"),
    ('train.py', ['--dataset={nokeys}'], "meta.json lacks vocab_size: write it again with python data/{nokeys}/prepare.py"),
    ('train.py', ['--dataset={odd}'], "train.bin is 2001 bytes, not a whole number of 2-byte tokens: it was cut short"),
    ('train.py', ['--out_dir={file}'], 'is a file: give the folder for checkpoints'),
    # sample.py
    ('sample.py', ['--out_dir={ar}', '--init_from=gpt2-small'], "init_from must be 'resume' or a GPT-2 model"),
    ('sample.py', ['--out_dir={ar}', '--top_k=0'], 'top_k must be a positive integer or None, not 0'),
    pytest.param('sample.py', ['--out_dir={ar}', '--device=mps'], "device='mps' is not available",
                 marks=pytest.mark.skipif(not NO_MPS, reason='this machine has MPS')),
    # generate_diffusion.py
    ('generate_diffusion.py', ['--out_dir={diff}', '--proofread='], '--proofread is empty'),
    ('generate_diffusion.py', ['--out_dir={diff}', '--start=FILE:{latin1}'], '--start: {latin1} is not UTF-8 text (byte 2)'),
    ('generate_diffusion.py', ['--out_dir={diff}', '--commit=greedy'], "unknown commit 'greedy' (use 'schedule', 'threshold')"),
    ('generate_diffusion.py', ['--out_dir={diff}', '--sampler=refine', '--commit=threshold'],
     '--commit works with --sampler=confidence, not --sampler=refine'),
    ('generate_diffusion.py', ['--out_dir={diff}', '--sampler=confidence', '--commit=threshold', '--threshold=0'],
     'threshold must be in (0, 1], not 0.0'),
    ('generate_diffusion.py', ['--out_dir={diff}', '--commit=threshold', '--order=random'],
     "commit='threshold' picks the surest proposals itself: it does not go with order='random'"),
    ('generate_diffusion.py', ['--out_dir={diff}', '--start=the king', '--length=8'], 'length 8 leaves nothing to write'),
    ('generate_diffusion.py', ['--out_dir={diff}', '--output={tmp}/no/such/folder/s.txt'], 'folder {tmp}/no/such/folder does not exist'),
    # generate_diffusion.py: the files of a BPE dataset, damaged, or prepared again after the model was trained
    ('generate_diffusion.py', ['--out_dir={bpecut}'], 'tokenizer.json cannot be read as a tokenizer (EOF while parsing'),
    ('generate_diffusion.py', ['--out_dir={bpetext}'], 'tokenizer.json cannot be read as a tokenizer (expected'),
    ('generate_diffusion.py', ['--out_dir={bpevocab}'], 'tokenizer.json has 300 tokens but meta.json beside it says 299: '
     'run python data/shakespeare_bpe/prepare.py'),
    ('generate_diffusion.py', ['--out_dir={reprepared}'], 'meta.json has 300: the data was prepared again since it was trained'),
    # bench.py
    ('bench.py', ['--ar_dir={ar}', '--diffusion_dirs={diff}', '--proofread_temperature=-1'], 'proofread_temperature must be >= 0'),
    ('bench.py', ['--ar_dir={ar}', '--diffusion_dirs={diff}', '--out={file}'], 'is a file: give the folder for the results'),
    # data preparation
    ('data/shakespeare_char/prepare.py', ['--out_dir={tmp}/data', '--bogus=1'], 'unrecognized arguments: --bogus=1'),
    ('data/shakespeare_char/prepare.py', ['--out_dir={tmp}/data', '--input={empty}'], 'empty.txt is empty'),
    ('data/shakespeare_char/prepare.py', ['--out_dir={tmp}/data', '--input={latin1}'], 'is not UTF-8 text'),
    ('data/shakespeare_char/prepare.py', ['--out_dir={file}'], 'is a file: give a folder for the data set'),
    ('data/shakespeare/prepare.py', ['--out_dir={tmp}/data', '--input={tmp}'], 'is a folder: give the text file itself'),
    ('data/openwebtext/prepare.py', ['--num_proc=4'], 'takes no options'),
]


def one_line_error(r):
    """The error line of a script that stopped for a user's mistake: exit 2, no traceback, one line."""
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert 'Traceback' not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    return lines[0]


def run_script(script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120)


def diffusion_checkpoint(out_dir, dataset, vocab):
    """A tiny diffusion checkpoint in train.py's format, for a dataset of vocab tokens."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=vocab + 2, model_type='diffusion',
                          mask_token_id=vocab, wrong_token_id=vocab + 1, pos_encoding='rope'))
    loading.save_checkpoint({'model': model.state_dict(), 'model_args': asdict(model.config), 'iter_num': 0,
                             'config': {'dataset': dataset, 'loss_type': 'elbo'}}, str(out_dir))
    return out_dir


@pytest.fixture(scope='module')
def places(tmp_path_factory, tiny_dataset, tiny_args, run_train):
    """{name: path} of the placeholders in CASES: a checkpoint of a 2-iteration train.py run
    ({ar}), a tiny diffusion checkpoint in train.py's format ({diff}), the files, and datasets
    under data/ (copies of the tiny one) with one file damaged: {short}, whose train.bin is
    empty and whose val.bin holds 5 tokens, {badmeta}, whose meta.json is cut short, {nokeys},
    whose meta.json lacks vocab_size, and {odd}, whose train.bin ends in half a token. {bpe}
    is a BPE dataset of 300 tokens; {bpecut}, {bpetext} and {bpevocab} are diffusion checkpoints
    of copies of it whose tokenizer.json is cut short, is not JSON, or has another vocabulary
    size than meta.json, and {reprepared} one of a model of the tiny dataset's vocabulary that
    names {bpe} as its data, as if that had been prepared again since."""
    root = tmp_path_factory.mktemp('errors')
    ar = root / 'ar'
    r = run_train(*tiny_args, '--max_iters=2', '--eval_interval=2', '--warmup_iters=1', '--lr_decay_iters=2',
                  f'--out_dir={ar}')
    assert r.returncode == 0, r.stderr[-3000:]
    vocab = tiny_dataset[1]['vocab_size']
    diff = diffusion_checkpoint(root / 'diff', tiny_dataset[0], vocab)
    (root / 'syntax.py').write_text("n_layer = 2\nbatch_size = \n")
    (root / 'plain.txt').write_text("not a folder\n")
    (root / 'empty.txt').write_text("")
    (root / 'latin1.txt').write_bytes("Sc\u00e8ne premi\u00e8re\n".encode('latin-1'))
    (root / 'input.txt').write_text(_tiny_text(), encoding='utf-8')
    datasets = {name: ROOT / 'data' / f'{tiny_dataset[0]}_{name}' # name: its folder under data/
                for name in ('short', 'badmeta', 'nokeys', 'odd', 'bpe', 'bpecut', 'bpetext', 'bpevocab')}
    try:
        for name in ('short', 'badmeta', 'nokeys', 'odd'):
            shutil.copytree(ROOT / 'data' / tiny_dataset[0], datasets[name])
        (datasets['short'] / 'train.bin').write_bytes(b'')
        np.arange(5, dtype=np.uint16).tofile(datasets['short'] / 'val.bin')
        (datasets['badmeta'] / 'meta.json').write_text('{"tokenizer": "char", "vocab_size": ')
        (datasets['nokeys'] / 'meta.json').write_text('{"tokenizer": "char", "itos": ["a", "b"]}')
        (datasets['odd'] / 'train.bin').write_bytes(np.arange(1000, dtype=np.uint16).tobytes() + b'\x00')
        r = run_script('data/shakespeare_bpe/prepare.py', f'--input={root / "input.txt"}', '--vocab_size=300',
                       f'--out_dir={datasets["bpe"]}')
        assert r.returncode == 0, r.stderr[-3000:]
        for name in ('bpecut', 'bpetext', 'bpevocab'):
            shutil.copytree(datasets['bpe'], datasets[name])
        tokenizer = (datasets['bpe'] / 'tokenizer.json').read_text(encoding='utf-8')
        (datasets['bpecut'] / 'tokenizer.json').write_text(tokenizer[:len(tokenizer) // 2], encoding='utf-8')
        (datasets['bpetext'] / 'tokenizer.json').write_text("not a tokenizer\n")
        meta = json.loads((datasets['bpe'] / 'meta.json').read_text())
        (datasets['bpevocab'] / 'meta.json').write_text(json.dumps({**meta, 'vocab_size': 299}))
        yield dict(ar=ar, diff=diff, tmp=root, file=root / 'plain.txt', empty=root / 'empty.txt', latin1=root / 'latin1.txt',
                   **{name: datasets[name].name for name in ('short', 'badmeta', 'nokeys', 'odd', 'bpe')},
                   **{name: diffusion_checkpoint(root / name, datasets[name].name, 299 if name == 'bpevocab' else 300)
                      for name in ('bpecut', 'bpetext', 'bpevocab')},
                   reprepared=diffusion_checkpoint(root / 'reprepared', datasets['bpe'].name, vocab))
    finally:
        for path in datasets.values():
            shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize('script, args, message', CASES)
def test_one_line_error(places, tiny_args, script, args, message):
    args = [a.format(**places) for a in args]
    never = places['tmp'] / 'never' # the out_dir of a train.py run that must not start
    if script == 'train.py':
        args = [*tiny_args, f'--out_dir={never}', *args] # a later --out_dir wins
    line = one_line_error(run_script(script, *args))
    assert message.format(**places) in line
    assert not never.exists()


@pytest.mark.parametrize('args, message', [
    (['--beta2=1.5'], 'beta2 must be in [0, 1), not 1.5'),
    (['--dataset={bpe}'], 'has a vocabulary of {vocab} tokens but data/{bpe}/meta.json has 300: resume on the data it was trained on'),
])
def test_bad_resume_leaves_the_checkpoint_alone(places, tiny_args, tiny_dataset, tmp_path, args, message):
    """init_from='resume' with a bad setting, or on a dataset of another vocabulary, stops
    before it writes anything."""
    out_dir = tmp_path / 'run'
    shutil.copytree(places['ar'], out_dir)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out_dir.iterdir()}
    line = one_line_error(run_script('train.py', *tiny_args, '--init_from=resume', f'--out_dir={out_dir}',
                                     '--max_iters=4', *(a.format(**places) for a in args)))
    assert message.format(**places, vocab=tiny_dataset[1]['vocab_size']) in line
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out_dir.iterdir()} == before


def test_shipped_configs_pass_the_validation(monkeypatch):
    """The validation step of train.py accepts every config in config/ (the data need not be there)."""
    source = (ROOT / 'train.py').read_text()
    head = source[:source.index('# various inits')] # the defaults, the configuration and its validation
    monkeypatch.setattr(loading, 'split_path', lambda *args: None)
    monkeypatch.chdir(ROOT) # configs exec() others by a path relative to the repo root
    configs = sorted((ROOT / 'config').glob('*.py'))
    assert configs
    for cfg in configs:
        monkeypatch.setattr(sys, 'argv', ['train.py', str(cfg.relative_to(ROOT)), '--device=cpu', '--dtype=auto'])
        namespace = {'__name__': '__validate__'}
        try:
            exec(compile(head, 'train.py', 'exec'), namespace)
        except UserError as e:
            # the GPT-2 configs need transformers, and train_gpt2.py logs to wandb: optional packages
            missing = [p for p in ('transformers', 'wandb') if p in str(e) and importlib.util.find_spec(p) is None]
            # a config that continues an earlier run (the quick start's second step) needs that run's folder
            init_from = namespace.get('init_from')
            chained = init_from not in (None, 'scratch', 'resume') and (f"not {init_from!r}" in str(e)
                                                                        or f"no checkpoint at {init_from}" in str(e))
            assert missing or chained, (cfg.name, str(e))


@pytest.mark.parametrize('script, args', [
    ('sample.py', ['--out_dir={ar}', '--max_new_tokens=1000000']),
    ('generate_diffusion.py', ['--out_dir={diff}', '--length=100000']),
    ('bench.py', ['--ar_dir={ar}', '--diffusion_dirs={diff}', '--sample_length=16', '--out={tmp}/bench']),
])
def test_ctrl_c_is_one_line(places, script, args):
    """Ctrl-C while a script loads or samples: exit 130 and one line, not a traceback."""
    p = subprocess.Popen([sys.executable, script, *(a.format(**places) for a in args)], cwd=ROOT,
                         env={**_env(), 'PYTHONUNBUFFERED': '1'}, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().startswith('Overriding') # the configuration is read: the script is under way
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and 'Traceback' not in err, err
    assert err.strip().splitlines()[-1].startswith('stopped by Ctrl-C'), err # after the progress bar's lines, if any
