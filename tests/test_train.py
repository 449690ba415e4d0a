"""train.py end to end, in subprocesses on a tiny char dataset: learning, checkpoints,
exact resume, 2-process CPU DDP, starting diffusion from an AR checkpoint, and the
one-line errors a user can cause."""
import json
import math
import random
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from configurator import UserError
from conftest import ROOT, _env
from loading import load_checkpoint, model_from_checkpoint, read_log

pytestmark = pytest.mark.slow

VARIANTS = ['gpt2', 'ar_masked', 'seed', 'elbo', 'block'] # the runs of the training_runs fixture (conftest.py)


def ckpt(out_dir):
    return torch.load(out_dir / 'ckpt.pt', map_location='cpu', weights_only=True)


def one_line_error(r):
    """The error of a script that stopped for a user's mistake: exit 2, one line, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert 'Traceback' not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    return lines[0]


def eval_losses(stdout):
    """{step: (train loss, val loss)} from the evaluation lines."""
    return {int(m[1]): (float(m[2]), float(m[3]))
            for m in re.finditer(r'^step (\d+): train loss ([\d.]+), val loss ([\d.]+)', stdout, re.M)}


def iter_lines(stdout):
    """{iteration: the log line without its timing fields}"""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r'iter (\d+): loss ([\d.naif]+)', line)
        if m:
            stats = line.split(' | ')[1] if ' | ' in line else ''
            out[int(m[1])] = (m[2], stats)
    return out


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------
# learning and checkpoints

def test_ar_training_lowers_the_loss(training_runs, tiny_dataset, run_iters):
    N = run_iters
    _, r = training_runs('gpt2')['straight']
    losses = eval_losses(r.stdout)
    assert set(losses) == {0, 3, N}
    start, end = losses[0], losses[N]
    # fixed eval batches: the same text at both steps
    assert start[0] == pytest.approx(math.log(tiny_dataset[1]['vocab_size']), abs=0.3) # uniform at init
    assert end[0] < start[0] - 0.15 and end[1] < start[1] - 0.15
    lines = iter_lines(r.stdout)
    assert set(lines) == set(range(1, N + 1)) # log_interval=1
    assert all(math.isfinite(float(loss)) for loss, _ in lines.values())


@pytest.mark.parametrize('variant', VARIANTS)
def test_checkpoint_round_trip(training_runs, tiny_dataset, variant, run_iters):
    N = run_iters
    out_dir, r = training_runs(variant)['straight']
    assert (out_dir / 'ckpt.pt').is_file() and not (out_dir / 'ckpt.pt.tmp').exists()
    c = ckpt(out_dir) # plain data: loads with weights_only=True
    V = tiny_dataset[1]['vocab_size']
    args = c['model_args']
    assert (args['n_layer'], args['n_head'], args['n_embd'], args['block_size']) == (1, 2, 32, 32)
    assert c['iter_num'] == N
    assert math.isfinite(c['best_val_loss'])
    assert {'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config', 'rng'} <= set(c)
    assert c['config']['max_iters'] == N and c['config']['dataset'] == tiny_dataset[0]
    assert len(c['rng']['data']) == len(c['rng']['noise']) == len(c['rng']['torch']) == 1
    bias = c['model']['mask_logit_bias'].item() # generation applies the bias of training, kept with the weights
    assert 'mask_logit_bias' not in args
    if variant == 'gpt2':
        assert args['model_type'] == 'gpt2' and args['vocab_size'] == V and args['pos_encoding'] == 'learned'
        assert args['dropout'] == 0.1
    elif variant == 'ar_masked': # [MASK] (and [WRONG], unused) after the words, as in a diffusion model
        assert args['model_type'] == 'gpt2' and args['vocab_size'] == V + 2
        assert args['mask_token_id'] == V and args['wrong_token_id'] == V + 1
        assert all(0 < r['loss_masked_inputs'] < 10 for r in read_log(out_dir, 'iter'))
    else:
        assert args['model_type'] == 'diffusion' and args['pos_encoding'] == 'rope'
        assert args['vocab_size'] == V + 2
        assert args['mask_token_id'] == V and args['wrong_token_id'] == V + 1
        assert args['diffusion_block'] == (8 if variant == 'block' else 0)
        # the controller raised the bias from 0 toward the target p([MASK]) = 0.5
        assert 0 < bias <= 20
    # the loader rebuilds the same model
    model = model_from_checkpoint(load_checkpoint(str(out_dir)))
    assert_same_state(model.state_dict(), {k.removeprefix('_orig_mod.'): v for k, v in c['model'].items()})
    assert model.mask_logit_bias.item() == bias
    x = torch.randint(V, (2, 32))
    logits, _ = model(x)
    assert logits.shape == {'gpt2': (2, 1, V), 'ar_masked': (2, 1, V + 2)}.get(variant, (2, 32, V + 2))
    assert torch.isfinite(logits).all()


def test_diffusion_logs_show_the_controller_and_curriculum(training_runs):
    _, r = training_runs('seed')['straight']
    lines = iter_lines(r.stdout)
    for k in ('loss_unmask', 'loss_remask', 'loss_keep', 'p_mask', 'logit_gap', 'bias', 'penalty', 'remask_ratio'):
        assert k in lines[1][1], k
    stats = {it: dict(re.findall(r'(\w+) (-?[\d.]+)', s)) for it, (_, s) in lines.items()}
    # the curriculum: penalty 0.5 over 4 iterations, proofreading over 8 (logged after the step)
    assert [float(stats[it]['penalty']) for it in (2, 4, 6)] == pytest.approx([0.25, 0.5, 0.5], abs=0.006)
    assert [float(stats[it]['remask_ratio']) for it in (2, 4, 6)] == pytest.approx([0.25, 0.5, 0.75], abs=0.006)
    # the controller: p([MASK]) starts far below 0.5 and the bias rises step by step
    biases = [float(stats[it]['bias']) for it in sorted(stats)]
    assert all(b2 > b1 for b1, b2 in zip(biases, biases[1:]))
    # the deterministic masked val CE at 15/50/90 %, at every eval; a few steps already lower it
    for variant in ('seed', 'elbo'):
        _, r = training_runs(variant)['straight']
        masked = [tuple(map(float, m)) for m in re.findall(r'masked val CE 15/50/90%: ([\d.]+)/([\d.]+)/([\d.]+)', r.stdout)]
        assert len(masked) == 3
        assert all(end < start for start, end in zip(masked[0], masked[-1]))
    m = re.search(r'val loss ([\d.]+), .*val bound ([\d.]+) nats/token = ([\d.]+) bits/token', r.stdout)
    assert float(m[2]) == float(m[1]) and float(m[3]) == pytest.approx(float(m[2]) / math.log(2), abs=1e-3)


# ----------------------------------------------------------------------------
# exact resume

@pytest.mark.parametrize('variant', VARIANTS)
def test_exact_resume(training_runs, variant, run_iters):
    N = run_iters
    runs = training_runs(variant)
    straight_dir, straight = runs['straight']
    split_dir, resumed = runs['resumed']
    assert 'Resuming training' in resumed.stdout
    a, b = ckpt(straight_dir), ckpt(split_dir)
    assert a['iter_num'] == b['iter_num'] == N
    # the same parameters, bit for bit, and the same optimizer state and [MASK] bias
    assert_same_state(a['model'], b['model'])
    assert a['model_args'] == b['model_args']
    assert a['model']['mask_logit_bias'].item() == b['model']['mask_logit_bias'].item()
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert_same_state(sa, sb)
    for key in ('data', 'noise', 'torch'):
        assert all(torch.equal(x, y) for x, y in zip(a['rng'][key], b['rng'][key]))
    # the resumed run continues the same loss curve, line for line
    la, lb = iter_lines(straight.stdout), iter_lines(resumed.stdout)
    assert set(lb) == set(range(N // 2 + 1, N + 1))
    for it in lb:
        assert la[it] == lb[it], it
    assert eval_losses(straight.stdout)[N] == eval_losses(resumed.stdout)[N]
    # and it did train: the second half changed the parameters
    half = iter_lines(runs['half'][1].stdout)
    assert set(half) == set(range(1, N // 2 + 1))
    assert la[N] != la[N // 2]


@pytest.mark.parametrize('variant', ['gpt2', 'seed'])
def test_the_json_log_holds_what_the_lines_print(training_runs, variant, run_iters):
    """log.jsonl: a start record, one record per log line and per eval with the printed numbers;
    the resumed run keeps the records up to its checkpoint and redoes the rest, so both runs
    end with the same records but the timings."""
    N = run_iters
    runs = training_runs(variant)
    straight_dir, straight = runs['straight']
    (start,) = read_log(straight_dir, 'start')
    assert start['iter'] == 0 and start['dtype'] == 'float32' and start['world_size'] == 1
    evals = read_log(straight_dir, 'eval')
    assert [r['iter'] for r in evals] == [0, N // 2, N]
    assert {step: (round(r['train'], 4), round(r['val'], 4)) for r in evals for step in [r['iter']]} == eval_losses(straight.stdout)
    if variant == 'seed':
        assert {'masked15', 'masked50', 'masked90', 'bound'} <= set(evals[-1])
    iters = read_log(straight_dir, 'iter')
    assert [r['iter'] for r in iters] == list(range(1, N + 1))
    assert all(r['ms'] > 0 and r['tok_s'] > 0 for r in iters)
    printed = iter_lines(straight.stdout)
    assert all(f"{r['loss']:.4f}" == printed[r['iter']][0] for r in iters)
    split_dir, _ = runs['resumed']
    starts = read_log(split_dir, 'start')
    assert [r['iter'] for r in starts] == [0, N // 2]
    untimed = lambda records: [{k: v for k, v in r.items() if k not in ('ms', 'tok_s', 'mfu')} for r in records]
    assert untimed(read_log(split_dir, 'iter')) == untimed(iters)
    assert read_log(split_dir, 'eval')[-1] == evals[-1]


def whole_lines(log):
    """The records of log.jsonl's finished lines, each of which must be JSON; a cut-off last line is left out."""
    return [json.loads(line) for line in log.read_text().split('\n')[:-1]]


def test_a_damaged_json_log_is_one_line_but_a_cut_off_end_is_dropped(tmp_path, capsys):
    log = tmp_path / 'log.jsonl'
    # the last line of a run killed mid-write: dropped, with one warning
    log.write_text('{"kind": "eval", "iter": 0}\n{"kind": "ev')
    assert read_log(tmp_path, 'eval') == [{'kind': 'eval', 'iter': 0}]
    assert capsys.readouterr().err == f"warning: {log} ended in a cut-off line (a run stopped mid-write); dropped it\n"
    # a cut-off line with more written after it, or a whole line that is not JSON: damage
    for damaged in ('{"kind": "ev{"kind": "eval", "iter": 1}\n', 'not JSON\n{"kind": "eval", "iter": 1}\n'):
        log.write_text('{"kind": "eval", "iter": 0}\n' + damaged)
        with pytest.raises(UserError, match=r"log.jsonl line 2 is not JSON: the log was damaged"):
            read_log(tmp_path, 'eval')
    with pytest.raises(UserError, match=r"no training log at .*: train.py writes it"):
        read_log(tmp_path / 'none', 'eval')


def test_resume_drops_a_cut_off_last_log_line(run_train, tiny_args, tmp_path):
    """The resumed run warns once, drops the unfinished record and goes on; damage in the middle
    of the log still stops it with one line."""
    common = [*tiny_args, '--eval_interval=2', f'--out_dir={tmp_path}']
    assert run_train(*common, '--max_iters=4').returncode == 0
    log = tmp_path / 'log.jsonl'
    with open(log, 'a') as f:
        f.write('{"kind": "iter", "iter": 5, "lo')
    r = run_train(*common, '--init_from=resume', '--max_iters=6')
    assert r.returncode == 0, r.stderr[-3000:]
    warning = f"warning: {log} ended in a cut-off line (a run stopped mid-write); dropped it"
    assert [line for line in r.stderr.splitlines() if line.startswith('warning')] == [warning]
    assert log.read_text().endswith('\n')
    assert [rec['iter'] for rec in whole_lines(log) if rec['kind'] == 'iter'] == list(range(1, 7))
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + '\n' # a record cut short, then more appended
    log.write_text(''.join(lines))
    line = one_line_error(run_train(*common, '--init_from=resume', '--max_iters=8'))
    assert 'log.jsonl line 3 is not JSON: the log was damaged' in line


def test_early_stopping_keeps_the_best_bound(run_train, tiny_args, run_variants, tmp_path):
    """patience=N stops once N evals in a row brought no better val (learning_rate=0: none ever does);
    without it, always_save_checkpoint=False keeps the checkpoint of the best eval, by the bound for a
    diffusion model."""
    common = [*tiny_args, '--eval_interval=2', '--always_save_checkpoint=False']
    r = run_train(*common, '--learning_rate=0', '--patience=2', '--max_iters=20', f'--out_dir={tmp_path / "ar"}')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'stopping early at iteration 4: val has not improved for 2 evals, since iteration 0' in r.stdout
    assert [e['iter'] for e in read_log(tmp_path / 'ar', 'eval')] == [0, 2, 4]
    r = run_train(*common, *run_variants['elbo'], '--learning_rate=3e-3', '--max_iters=10', f'--out_dir={tmp_path / "d"}')
    assert r.returncode == 0, r.stderr[-3000:]
    evals = read_log(tmp_path / 'd', 'eval')
    best = min(evals, key=lambda e: e['bound']) # the first of equals, as train.py keeps it
    assert all(e['bound_se'] > 0 for e in evals) and best['iter'] > 0
    c = ckpt(tmp_path / 'd')
    assert (c['iter_num'], c['best_iter'], c['best_val_loss']) == (best['iter'], best['iter'], best['bound'])


def test_resume_after_sigkill_while_logging(run_train, tiny_args, tmp_path):
    """SIGKILL leaves a run no chance to finish a line or to save: killed three times at random
    moments while it logs every iteration, its log's finished lines are JSON each time and
    --init_from=resume goes on, to a log with one record per iteration."""
    rng = random.Random(0)
    log = tmp_path / 'log.jsonl'
    common = [*tiny_args, '--eval_interval=5', f'--out_dir={tmp_path}'] # tiny_args log every iteration
    resume = []
    for _ in range(3):
        begin = ckpt(tmp_path)['iter_num'] if resume else 0
        until = begin + rng.randint(6, 12) # past the first checkpoint, at iteration 5
        p = subprocess.Popen([sys.executable, 'train.py', *common, '--max_iters=100000', *resume], cwd=ROOT,
                             env={**_env(), 'PYTHONUNBUFFERED': '1'}, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # the line is printed just before its record is written
        assert any(line.startswith(f'iter {until}:') for line in p.stdout), p.communicate()[1][-3000:]
        time.sleep(rng.uniform(0, 0.02)) # mid-write, mid-step or in between
        p.kill()
        p.communicate()
        whole_lines(log) # every finished line is JSON
        resume = ['--init_from=resume']
    begin = ckpt(tmp_path)['iter_num']
    r = run_train(*common, '--init_from=resume', f'--max_iters={begin + 2}')
    assert r.returncode == 0, r.stderr[-3000:]
    assert log.read_text().endswith('\n')
    assert [rec['iter'] for rec in whole_lines(log) if rec['kind'] == 'iter'] == list(range(1, begin + 3))


# ----------------------------------------------------------------------------
# distributed, on CPU with gloo

@pytest.mark.parametrize('variant', ['gpt2', 'seed'])
def test_torchrun_two_processes(run_train, tiny_args, tmp_path, variant, run_variants):
    extra = {'gpt2': ['--model_type=gpt2'], 'seed': run_variants['seed']}[variant]
    r = run_train(*tiny_args, *extra, '--gradient_accumulation_steps=2', '--max_iters=2', '--eval_interval=2',
                  f'--out_dir={tmp_path}', nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('saving checkpoint') == 1 # the master process saves, once
    assert r.stdout.count('step 2: train loss') == 1 # and logs alone
    c = ckpt(tmp_path)
    assert c['iter_num'] == 2
    assert len(c['rng']['data']) == 2 # each rank's RNG state is kept
    assert not torch.equal(c['rng']['data'][0], c['rng']['data'][1]) # ranks draw different batches
    assert all(torch.isfinite(v).all() for v in c['model'].values())
    if variant == 'seed':
        bias = c['model']['mask_logit_bias'].item()
        assert math.isfinite(bias) and bias > 0


def test_gradient_accumulation_that_cannot_be_shared(run_train_ranks, tiny_args, tmp_path):
    results = run_train_ranks(*tiny_args, '--gradient_accumulation_steps=3', '--batch_size=3', '--max_iters=2',
                              f'--out_dir={tmp_path}', world_size=2)
    for r in results: # every rank stops with the same clear line
        line = one_line_error(r)
        assert 'cannot be shared by 2 processes' in line and 'gradient_accumulation_steps' in line


# ----------------------------------------------------------------------------
# adapting an AR checkpoint

def test_init_diffusion_from_an_ar_checkpoint(training_runs, run_train, tiny_args, tiny_dataset, tmp_path):
    ar_dir, _ = training_runs('gpt2')['straight']
    ar = ckpt(ar_dir)
    # learning rate 0: the carried weights can be compared exactly after a step of training
    r = run_train(*tiny_args, '--model_type=diffusion', f'--init_from={ar_dir}', '--learning_rate=0.0',
                  '--decay_lr=False', '--max_iters=1', '--eval_interval=1', f'--out_dir={tmp_path}')
    assert r.returncode == 0, r.stderr[-3000:]
    c = ckpt(tmp_path)
    V = tiny_dataset[1]['vocab_size']
    args = c['model_args']
    assert args['model_type'] == 'diffusion' and args['vocab_size'] == V + 2
    assert args['mask_token_id'] == V and args['wrong_token_id'] == V + 1
    assert args['pos_encoding'] == ar['model_args']['pos_encoding']
    assert args['dropout'] == 0.0 # the dropout of this run, not of the AR one
    new, old = c['model'], ar['model']
    assert new.keys() == old.keys()
    for k in old:
        if k == 'mask_logit_bias':
            continue
        if k in ('lm_head.weight', 'transformer.wte.weight'):
            assert new[k].shape == (V + 2, 32)
            assert torch.equal(new[k][:V], old[k]) # grown by two rows, the old ones carried
        else:
            assert torch.equal(new[k], old[k]), k
    assert 'masked val CE' in r.stdout
    # the wrong way round: a diffusion checkpoint is not an AR starting point
    diff_dir = tmp_path
    r = run_train(*tiny_args, '--model_type=diffusion', f'--init_from={diff_dir}', '--max_iters=1',
                  f'--out_dir={tmp_path / "again"}')
    assert 'autoregressive' in one_line_error(r)
    # a context longer than the AR model's cannot be grown: one line, not a deep assert
    r = run_train(*tiny_args, '--model_type=diffusion', f'--init_from={ar_dir}', '--block_size=64', '--max_iters=1',
                  f'--out_dir={tmp_path / "longer"}')
    assert 'has block_size 32: set --block_size=32 or less' in one_line_error(r)


# ----------------------------------------------------------------------------
# one-line errors

def test_missing_data_names_the_prepare_command(run_train, tiny_args, tmp_path):
    args = [a for a in tiny_args if not a.startswith('--dataset=')]
    line = one_line_error(run_train(*args, '--dataset=_test_no_such_dataset', f'--out_dir={tmp_path}'))
    assert 'python data/_test_no_such_dataset/prepare.py' in line


def test_resume_without_checkpoint(run_train, tiny_args, tmp_path):
    line = one_line_error(run_train(*tiny_args, '--init_from=resume', f'--out_dir={tmp_path}'))
    assert 'no checkpoint' in line and str(tmp_path) in line


def test_resume_from_corrupt_checkpoint(run_train, tiny_args, tmp_path):
    (tmp_path / 'ckpt.pt').write_bytes(b'\x00garbage, not a checkpoint\xff' * 50)
    line = one_line_error(run_train(*tiny_args, '--init_from=resume', f'--out_dir={tmp_path}'))
    assert 'corrupt' in line and 'ckpt.pt' in line


def test_resume_with_the_wrong_model_type(training_runs, run_train, tiny_args, tmp_path):
    shutil.copytree(training_runs('gpt2')['straight'][0], tmp_path / 'run')
    line = one_line_error(run_train(*tiny_args, '--init_from=resume', '--model_type=diffusion',
                                    f'--out_dir={tmp_path / "run"}'))
    assert '--model_type=gpt2' in line


def test_nan_loss_stops_and_keeps_the_checkpoint(training_runs, run_train, tiny_args, tmp_path, run_iters, run_variants):
    N = run_iters
    out_dir = tmp_path / 'run'
    shutil.copytree(training_runs('gpt2')['straight'][0], out_dir)
    before = (out_dir / 'ckpt.pt').read_bytes()
    # an absurd learning rate from the resumed checkpoint: the weights blow up after one step
    r = run_train(*tiny_args, *run_variants['gpt2'], '--init_from=resume', '--learning_rate=1e30',
                  '--decay_lr=False', f'--max_iters={N + 20}', '--eval_interval=1000', f'--out_dir={out_dir}')
    line = one_line_error(r)
    assert 'NaN' in line and 'checkpoint' in line
    assert (out_dir / 'ckpt.pt').read_bytes() == before # untouched
    assert not (out_dir / 'ckpt.pt.tmp').exists()
    c = ckpt(out_dir)
    assert c['iter_num'] == N and all(torch.isfinite(v).all() for v in c['model'].values())
    # it stopped at once, not after the remaining iterations
    assert max(iter_lines(r.stdout), default=N) <= N + 3
