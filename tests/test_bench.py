"""bench.py end to end on tiny random-init checkpoints (saved in train.py's format) and
the tiny char dataset of conftest.py, with tiny settings."""
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from conftest import ROOT
from loading import save_checkpoint
from model import GPT, GPTConfig

TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, bias=False, dropout=0.0)


def save_tiny(out_dir, dataset, vocab, model_type, loss_type='seed', pos_encoding='rope'):
    """A random-init checkpoint with every key train.py's save() writes."""
    extra = dict(vocab_size=vocab + 2, mask_token_id=vocab, wrong_token_id=vocab + 1) if model_type == 'diffusion' \
        else dict(vocab_size=vocab)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, **extra, model_type=model_type, pos_encoding=pos_encoding))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    config = dict(dataset=dataset, model_type=model_type, loss_type=loss_type, noise_schedule='linear')
    rng = {'data': [torch.Generator().get_state()], 'noise': [torch.Generator().get_state()],
           'torch': [torch.get_rng_state()], 'cuda': None}
    save_checkpoint({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'model_args': asdict(model.config),
                     'iter_num': 0, 'best_val_loss': 1e9, 'config': config, 'rng': rng}, str(out_dir))
    return str(out_dir)


@pytest.fixture(scope='module')
def checkpoints(tiny_dataset, tmp_path_factory):
    name, meta = tiny_dataset
    root = tmp_path_factory.mktemp('bench')
    return dict(ar=save_tiny(root / 'ar', name, meta['vocab_size'], 'gpt2', pos_encoding='learned'),
                seed=save_tiny(root / 'seed', name, meta['vocab_size'], 'diffusion', 'seed'),
                elbo=save_tiny(root / 'elbo', name, meta['vocab_size'], 'diffusion', 'elbo'),
                root=root)


def run_bench(*args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, 'bench.py', '--device=cpu', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bench_end_to_end(checkpoints):
    out = checkpoints['root'] / 'results'
    r = run_bench(f"--ar_dir={checkpoints['ar']}", f"--diffusion_dirs={checkpoints['seed']},{checkpoints['elbo']}",
                  f'--out={out}', '--num_samples=2', '--sample_length=12', '--step_counts=2,4', '--eval_batches=1',
                  '--batch_size=2', '--proofread_rates=0.1,0.25', '--proofread_steps=2', '--speed_iters=1')
    assert r.returncode == 0, r.stderr
    results = (out / 'results.md').read_text(encoding='utf-8')
    for header in ('## Models', '## Validation loss', '## Sample quality', '## Proofreading', '## Training speed',
                   '## Generation speed', '| model | objective | measure | nats/token | bits/token |',
                   '| model | sampler | steps | forward passes | judge NLL | entropy | repeated 4-grams |',
                   '| model | objective | substituted | precision | recall | F1 | error rate before | error rate after |',
                   '| model | objective | parameters | ms/iteration | tokens/s | vs AR |'):
        assert header in results, header
    assert '| seed | ELBO bound (not its objective) |' in results and '| elbo | ELBO bound |' in results
    # one sample-quality row per generator: val text, AR, and every model x sampler x step count
    quality = results.split('## Sample quality')[1].split('## Proofreading')[0]
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in quality.splitlines()
            if line.startswith('| ') and not line.startswith('| model')]
    assert [row[:2] for row in rows[:2]] == [['val text', 'reference'], ['ar', 'autoregressive']]
    for name in ('seed', 'elbo'):
        steps = {}
        for model, sampler, step, passes, nll, entropy, rep in rows[2:]:
            if model == name:
                steps.setdefault(sampler, []).append(step)
                assert 0 < float(nll) < 10 and 0 <= float(rep) <= 1
        assert {'refine', 'confidence', 'confidence+wrong'} <= set(steps)
        assert all(v == ['2', '4'] for v in steps.values())
    assert 'judge NLL' in r.stdout # the tables are printed too
    assert (out / 'samples.txt').is_file()
    try:
        import matplotlib # noqa: F401
        assert (out / 'sample_quality.png').is_file() and (out / 'proofreading.png').is_file()
    except ImportError:
        assert 'matplotlib is not installed' in r.stdout


@pytest.mark.parametrize('args, message', [
    (lambda c: [f"--ar_dir={c['seed']}", f"--diffusion_dirs={c['elbo']}"], 'pass it in diffusion_dirs'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['ar']}"], 'pass it in ar_dir'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['seed']}", '--sample_length=17'], 'sample_length=17'),
])
def test_bench_user_errors(checkpoints, args, message):
    r = run_bench(*args(checkpoints), f"--out={checkpoints['root'] / 'bad'}")
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
