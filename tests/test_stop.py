"""Stopping train.py with SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) at a random
moment: it finishes the step, saves a checkpoint, says so in one line and exits 130 or 143,
and --init_from=resume then ends with the same weights as a run that was never stopped. On
one process, on two (torchrun, gloo), and on two "nodes" of one process each."""
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, RUN_VARIANTS, _env, free_port
from loading import read_log
from test_train import assert_same_state, ckpt, iter_lines

pytestmark = pytest.mark.slow

ITERS = 60 # long enough that a signal after the first few iterations lands mid-run
STOPPED = re.compile(r'^stopped at iter (\d+): checkpoint saved to (.+); --init_from=resume continues$', re.M)


def command(args, nproc=1, node=None, port=None):
    """train.py with args: plain python, torchrun with nproc local processes, or one of two
    torchrun "nodes" (node 0 or 1) of one process each that meet at 127.0.0.1:port."""
    if node is not None:
        return [sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', f'--node_rank={node}', '--nproc_per_node=1',
                '--master_addr=127.0.0.1', f'--master_port={port}', 'train.py', *args]
    if nproc > 1:
        return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', 'train.py', *args]
    return [sys.executable, 'train.py', *args]


def start(cmd, log):
    """Popen of cmd from the repo root, unbuffered stdout to read line by line, stderr to log."""
    return subprocess.Popen(cmd, cwd=ROOT, env={**_env(), 'PYTHONUNBUFFERED': '1'}, text=True,
                            stdout=subprocess.PIPE, stderr=open(log, 'w'))


def signal_mid_run(watched, sig, others=()):
    """Send sig to watched (and others) a random moment after watched printed its first few
    iteration lines; return watched's whole stdout once all have exited."""
    after, delay = random.randint(2, 10), random.uniform(0, 0.02)
    out = []
    for line in watched.stdout:
        out.append(line)
        if line.startswith(f'iter {after}:'):
            break
    time.sleep(delay) # anywhere inside a step, or between two
    for p in (watched, *others):
        p.send_signal(sig)
    out.append(watched.stdout.read())
    for p in (watched, *others):
        p.wait(timeout=120)
    return ''.join(out)


def run(cmd):
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def train_args(tiny_args, variant, out_dir):
    return [*tiny_args, *RUN_VARIANTS[variant], '--warmup_iters=2', f'--lr_decay_iters={ITERS}',
            f'--eval_interval={ITERS // 3}', f'--max_iters={ITERS}', f'--out_dir={out_dir}']


@pytest.fixture(scope='module')
def straight(tmp_path_factory, tiny_args):
    """straight(variant, nproc): (out_dir, stdout) of a run of ITERS iterations that nothing stops, made once."""
    cache = {}

    def get(variant, nproc):
        if (variant, nproc) not in cache:
            out_dir = tmp_path_factory.mktemp(f'straight_{variant}_{nproc}')
            cache[variant, nproc] = out_dir, run(command(train_args(tiny_args, variant, out_dir), nproc)).stdout
        return cache[variant, nproc]
    return get


def assert_stopped(stdout, out_dir, world_size):
    """One stop line; the checkpoint it names holds that iteration and every rank's RNG streams."""
    lines = STOPPED.findall(stdout)
    assert len(lines) == 1 and lines[0][1] == str(out_dir), stdout[-2000:]
    stop = int(lines[0][0])
    assert 2 < stop < ITERS, stop # mid-run
    assert not (out_dir / 'ckpt.pt.tmp').exists()
    c = ckpt(out_dir)
    assert c['iter_num'] == stop
    assert len(c['rng']['data']) == len(c['rng']['noise']) == world_size
    return stop


def assert_resumed_exactly(straight_run, out_dir, resumed_stdout, stop):
    """The resumed run logs the straight run's lines from stop on and ends with its state, bit for bit."""
    straight_dir, straight_stdout = straight_run
    a, b = ckpt(straight_dir), ckpt(out_dir)
    assert a['iter_num'] == b['iter_num'] == ITERS
    assert_same_state(a['model'], b['model'])
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert_same_state(sa, sb)
    for key in ('data', 'noise', 'torch'):
        assert all(torch.equal(x, y) for x, y in zip(a['rng'][key], b['rng'][key])), key
    la, lb = iter_lines(straight_stdout), iter_lines(resumed_stdout)
    assert set(lb) == set(range(stop + 1, ITERS + 1))
    assert all(la[it] == lb[it] for it in lb)


@pytest.mark.parametrize('variant, sig', [('gpt2', signal.SIGINT), ('seed', signal.SIGTERM)], ids=['gpt2-SIGINT', 'seed-SIGTERM'])
def test_stop_one_process_and_resume(straight, tiny_args, tmp_path, variant, sig):
    out_dir = tmp_path / 'run'
    args = train_args(tiny_args, variant, out_dir)
    p = start(command(args), tmp_path / 'stderr.txt')
    stdout = signal_mid_run(p, sig)
    assert p.returncode == 128 + sig # 130 for SIGINT, 143 for SIGTERM
    assert (tmp_path / 'stderr.txt').read_text() == '' # no traceback, no warning
    stop = assert_stopped(stdout, out_dir, 1)
    resumed = run(command([*args, '--init_from=resume']))
    assert_resumed_exactly(straight(variant, 1), out_dir, resumed.stdout, stop)


def test_a_stop_keeps_the_best_checkpoint(straight, tiny_args, tmp_path):
    """With always_save_checkpoint=False ckpt.pt holds the best eval's weights, the ones the other
    scripts read: a stop after that eval saves beside them, in stop.pt, and --init_from=resume goes
    on from stop.pt as exactly as from any stop. The next save of ckpt.pt (a better eval) makes
    stop.pt the older state, and removes it."""
    out_dir = tmp_path / 'run'
    args = [*train_args(tiny_args, 'gpt2', out_dir), '--always_save_checkpoint=False']
    p = start(command(args), tmp_path / 'stderr.txt')
    stdout, saved = [], False
    for line in p.stdout: # the first save is the best eval's; then a stop mid-run
        stdout.append(line)
        saved = saved or line.startswith('saving checkpoint')
        if saved and line.startswith('iter '):
            break
    p.send_signal(signal.SIGINT)
    stdout = ''.join(stdout) + p.stdout.read()
    assert p.wait(timeout=120) == 130 and (tmp_path / 'stderr.txt').read_text() == ''
    lines = re.findall(r'^stopped at iter (\d+): checkpoint saved to (.+)/stop.pt \(ckpt.pt keeps the best, iteration '
                       r'(\d+)\); --init_from=resume continues$', stdout, re.M)
    assert len(lines) == 1 and lines[0][1] == str(out_dir), stdout[-2000:]
    stop, best = int(lines[0][0]), int(lines[0][2])
    assert best == ITERS // 3 < stop # the first eval after iteration 0 is the best so far
    best_state = ckpt(out_dir)
    assert best_state['iter_num'] == best_state['best_iter'] == best
    assert torch.load(out_dir / 'stop.pt', weights_only=True)['iter_num'] == stop
    resumed = run(command([*args, '--init_from=resume']))
    assert f"Resuming training from {out_dir / 'stop.pt'}" in resumed.stdout
    straight_dir, straight_stdout = straight('gpt2', 1)
    la, lb = iter_lines(straight_stdout), iter_lines(resumed.stdout)
    assert set(lb) == set(range(stop + 1, ITERS + 1)) and all(la[it] == lb[it] for it in lb)
    val = {e['iter']: e['val'] for e in read_log(straight_dir, 'eval')}
    final_best = min(val, key=lambda it: (val[it], it)) # the first of equals, as train.py keeps it
    assert ckpt(out_dir)['iter_num'] == final_best
    assert (out_dir / 'stop.pt').exists() == (final_best == best)


def test_sigterm_to_torchrun_and_resume(straight, tiny_args, tmp_path):
    """torchrun passes the SIGTERM on to both ranks; they stop at the same iteration and rank 0 saves."""
    out_dir = tmp_path / 'run'
    args = train_args(tiny_args, 'seed', out_dir)
    p = start(command(args, nproc=2), tmp_path / 'stderr.txt')
    stdout = signal_mid_run(p, signal.SIGTERM)
    stop = assert_stopped(stdout, out_dir, 2)
    assert 'train.py", line' not in (tmp_path / 'stderr.txt').read_text() # torchrun's own traceback, none from train.py
    resumed = run(command([*args, '--init_from=resume'], nproc=2))
    assert_resumed_exactly(straight('seed', 2), out_dir, resumed.stdout, stop)


def test_two_nodes_stop_together_and_resume(straight, tiny_args, tmp_path):
    """Two torchrun agents, node_rank 0 and 1, one process each: global rank 1 has local rank 0,
    so mixing up RANK and LOCAL_RANK would make two masters (two stop lines) and equal seeds.
    A scheduler signals both nodes; the run saves once, and continues as one trained on one node."""
    out_dir = tmp_path / 'run'
    args = train_args(tiny_args, 'seed', out_dir)
    port = free_port()
    nodes = [start(command(args, node=n, port=port), tmp_path / f'stderr{n}.txt') for n in (0, 1)]
    stdout = signal_mid_run(nodes[0], signal.SIGTERM, others=nodes[1:])
    second = nodes[1].stdout.read()
    stop = assert_stopped(stdout, out_dir, 2)
    assert 'iter ' not in second and 'stopped' not in second # rank 1 neither logs nor saves
    assert all('train.py", line' not in (tmp_path / f'stderr{n}.txt').read_text() for n in (0, 1))
    c = ckpt(out_dir)
    assert not torch.equal(c['rng']['data'][0], c['rng']['data'][1]) # each rank draws its own batches
    resumed = run(command([*args, '--init_from=resume'], nproc=2))
    assert_resumed_exactly(straight('seed', 2), out_dir, resumed.stdout, stop)
