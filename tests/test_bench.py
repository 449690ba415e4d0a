"""bench.py end to end on tiny checkpoints (random-init ones saved in train.py's format, and a
block diffusion model trained by train.py for two iterations) and the tiny char dataset of
conftest.py, with tiny settings."""
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import diffusion
from conftest import ROOT
from loading import get_batch, load_checkpoint, load_split, model_from_checkpoint, save_checkpoint
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
def checkpoints(tiny_dataset, tmp_path_factory, run_train, tiny_args):
    name, meta = tiny_dataset
    root = tmp_path_factory.mktemp('bench')
    # a trained block diffusion model (BD3-LM, blocks of 4 tokens): train.py's own checkpoint, its
    # evals on the val batches of the bench run below (eval_batches=1, batch_size=2)
    r = run_train(*tiny_args, '--model_type=diffusion', '--loss_type=elbo', '--diffusion_block=4', '--max_iters=2',
                  '--eval_interval=2', '--warmup_iters=1', '--lr_decay_iters=2', '--batch_size=2', '--eval_iters=1',
                  f"--out_dir={root / 'block'}")
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(ar=save_tiny(root / 'ar', name, meta['vocab_size'], 'gpt2', pos_encoding='learned'),
                seed=save_tiny(root / 'seed', name, meta['vocab_size'], 'diffusion', 'seed'),
                elbo=save_tiny(root / 'elbo', name, meta['vocab_size'], 'diffusion', 'elbo'),
                block=str(root / 'block'), root=root, block_log=r.stdout, ar_dataset=name)


def run_bench(*args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, 'bench.py', '--device=cpu', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def table(results, title):
    """The rows of a markdown table of results.md, as lists of stripped cells, header first."""
    text = results.split(f'## {title}\n')[1].split('\n## ')[0]
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in text.splitlines()
            if line.startswith('| ')]


SAMPLERS = ('refine', 'confidence', 'confidence+wrong', 'ancestral', 'left_to_right', 'threshold', 'entropy')
MATCH_TOLERANCE = 0.05 # the tests' band: wide, since 2 samples of 12 tokens give a noisy entropy


@pytest.fixture(scope='module')
def bench(checkpoints):
    """One bench.py run on the tiny checkpoints: (CompletedProcess, results.md text, out folder)."""
    out = checkpoints['root'] / 'results'
    r = run_bench(f"--ar_dir={checkpoints['ar']}", f"--diffusion_dirs={checkpoints['seed']},{checkpoints['elbo']},"
                  f"{checkpoints['block']}", f'--out={out}', '--num_samples=2', '--sample_length=12', '--step_counts=2,4',
                  f"--samplers={','.join(SAMPLERS)}", '--match_step_counts=4', '--match_tries=3', f'--match_tolerance={MATCH_TOLERANCE}', '--eval_batches=1',
                  '--batch_size=2', '--proofread_rates=0.1,0.25', '--proofread_steps=2', '--speed_iters=1')
    assert r.returncode == 0, r.stderr
    return r, (out / 'results.md').read_text(encoding='utf-8'), out


def test_bench_end_to_end(bench):
    r, results, out = bench
    assert table(results, 'Validation loss')[0][:6] == ['model', 'diffusion block', 'objective', 'nats/token',
                                                        'bits/token', 'vs AR']
    assert [row[:3] for row in table(results, 'Validation loss')[1:]] == [
        ['ar', '-', 'next token'], ['seed', 'full', 'seed'], ['elbo', 'full', 'elbo'], ['block', '4', 'elbo']]

    # fixed temperature: val text, AR, and every model x sampler x step count (the adaptive samplers
    # once, capped at the largest count); a block model gets its steps per block
    quality = table(results, 'Sample quality at a fixed temperature')
    assert quality[0] == ['model', 'diffusion block', 'sampler', 'steps', 'forward passes', 'judge NLL', 'entropy',
                          'repeated 4-grams']
    assert [row[:3] for row in quality[1:3]] == [['val text', '-', 'reference'], ['ar', '-', 'autoregressive']]
    for name in ('seed', 'elbo', 'block'):
        steps = {}
        for model, block, sampler, step, passes, nll, entropy, rep in quality[3:]:
            if model == name:
                steps.setdefault(sampler, []).append(step)
                assert 0 < float(nll) < 10 and 0 <= float(rep) <= 1 and int(passes) >= 1
        if name == 'block': # 2 or 4 passes over 11 tokens: one per block of 4
            assert steps == {**{s: ['2 (1/block)', '4 (1/block)'] for s in SAMPLERS[:5]},
                             'threshold': ['<=4 (1/block)'], 'entropy': ['<=4 (1/block)']}
        else:
            assert steps == {**{s: ['2', '4'] for s in SAMPLERS[:5]}, 'threshold': ['<=4'], 'entropy': ['<=4']}
    assert all(int(row[4]) >= 3 for row in quality[3:] if row[0] == 'block') # 12 tokens: 3 blocks, one by one

    # matched diversity: every generator once, at the val text's entropy or marked
    matched = table(results, 'Sample quality at matched diversity')
    header = matched[0]
    assert header == ['model', 'diffusion block', 'sampler', 'steps', 'temperature', 'tries', 'judge NLL', 'vs AR',
                      'entropy', 'repeated 4-grams', 'forward passes', 'matched']
    rows = [dict(zip(header, row)) for row in matched[1:]]
    assert rows[0]['model'] == 'val text' and rows[0]['matched'] == 'reference'
    target = float(rows[0]['entropy'])
    assert sorted((row['model'], row['sampler']) for row in rows[1:]) == sorted(
        [('ar', 'autoregressive')] + [(m, s) for m in ('seed', 'elbo', 'block') for s in SAMPLERS])
    for row in rows[1:]:
        assert row['matched'] in ('yes', 'not matched')
        if row['matched'] == 'yes': # interpolated at the target between two in-band tries, or one try very near it
            assert abs(float(row['entropy']) - target) <= MATCH_TOLERANCE * target / 20 + 1e-3
        assert 0.3 <= float(row['temperature']) <= 2.5 and 1 <= int(row['tries']) <= 3
    # sorted by judge NLL, the matched rows first
    order = [(row['matched'] != 'yes', float(row['judge NLL'])) for row in rows[1:]]
    assert order == sorted(order)
    ar = next(row for row in rows if row['model'] == 'ar')
    assert float(ar['vs AR']) == 1.0

    proofreading = table(results, 'Proofreading')
    assert {row[0] for row in proofreading[1:]} == {'seed', 'elbo', 'block'}
    assert proofreading[0][-3:] == ['error rate before', 'error rate after', 'after, perfect detection']
    # a perfect detector's rewrite touches only substituted positions: it cannot add errors
    assert all(0 <= float(row[-1]) <= float(row[-3]) for row in proofreading[1:])
    training = table(results, 'Training speed')
    assert training[0] == ['model', 'diffusion block', 'objective', 'parameters', 'ms/iteration', 'tokens/s', 'vs AR']
    assert [row[:3] for row in training[1:]] == [['AR', '-', 'next token'], ['diffusion', 'full', 'elbo'],
                                                 ['block diffusion', '4', 'elbo']]
    generation = table(results, 'Generation speed')
    assert [row[0] for row in generation[1:]] == ['AR', 'AR + KV cache', 'seed', 'elbo', 'block']
    assert all(float(row[-1].replace(',', '')) > 0 for row in generation[1:])

    assert 'judge NLL' in r.stdout # the tables are printed too
    assert (out / 'samples.txt').is_file()
    try:
        import matplotlib # noqa: F401
        assert all((out / f).is_file() for f in ('sample_quality.png', 'matched_diversity.png', 'proofreading.png'))
    except ImportError:
        assert 'matplotlib is not installed' in r.stdout


def test_validation_loss_values(bench, checkpoints):
    """The likelihood table: the AR NLL and every bound recomputed here on the same batches and noise
    seeds, bits = nats / ln 2, `vs AR` = bound / AR NLL; and the block model's bound is train.py's
    last `val bound` of the same checkpoint."""
    _, results, _ = bench
    rows = {row[0]: row for row in table(results, 'Validation loss')[1:]}
    seed = 1337 # bench.py's default

    def batches(model):
        g = torch.Generator().manual_seed(seed)
        return [get_batch(load_split(checkpoints['ar_dataset'], 'val'), 2, model.config.block_size, g, 'cpu')]

    ar = model_from_checkpoint(load_checkpoint(checkpoints['ar'])).eval()
    with torch.no_grad():
        ar_nll = sum(ar(x, y)[1].item() for x, y in batches(ar)) / len(batches(ar))
    expected = {'ar': ar_nll}
    for name in ('seed', 'elbo', 'block'):
        checkpoint = load_checkpoint(checkpoints[name])
        model = model_from_checkpoint(checkpoint).eval()
        expected[name] = diffusion.elbo_bound(model, [x for x, _ in batches(model)], model.config.mask_token_id,
                                              model.denoising_block or model.config.block_size,
                                              checkpoint['config']['noise_schedule'], torch.Generator().manual_seed(seed + 1))
    for name, nats in expected.items():
        row = rows[name]
        assert float(row[3]) == pytest.approx(nats, abs=6e-5)
        assert float(row[4]) == pytest.approx(float(row[3]) / math.log(2), abs=2e-4) # bits per token
        assert float(row[5]) == pytest.approx(nats / ar_nll, abs=6e-4) # vs AR: above 1 when worse than AR
    evals = re.findall(r'val loss ([\d.]+), .*val bound ([\d.]+) nats/token', checkpoints['block_log'])
    assert len(evals) == 2 and rows['block'][3] == evals[-1][1]
    # trained on the bound itself: train.py's val loss (the training pass, two-stream) equals its val bound
    # (elbo_bound) at every eval: both see each noisy block next to the clean blocks before it
    assert all(loss == bound for loss, bound in evals)


@pytest.mark.parametrize('args, message', [
    (lambda c: [f"--ar_dir={c['seed']}", f"--diffusion_dirs={c['elbo']}"], 'pass it in diffusion_dirs'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['ar']}"], 'pass it in ar_dir'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['seed']}", '--sample_length=17'], 'sample_length=17'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['seed']}", '--samplers=refine,bogus'], "unknown samplers ['bogus']"),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['seed']}", '--match_step_counts=0'], 'must be positive'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['seed']}", '--min_temperature=3'], 'min_temperature'),
])
def test_bench_user_errors(checkpoints, args, message):
    r = run_bench(*args(checkpoints), f"--out={checkpoints['root'] / 'bad'}")
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
