"""Shared fixtures: the repository root on sys.path, a tiny char dataset under data/,
and a runner for train.py in a subprocess."""
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the first 20,000 characters of Tiny Shakespeare (public domain): real text, shipped with the tests
EXCERPT = Path(__file__).resolve().parent / 'shakespeare_excerpt.txt'


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: runs train.py in subprocesses (seconds each); CI runs them')
    # the tests use tiny models on a small, shared machine: one thread is faster, and
    # several spinning OpenMP threads competing with other processes can be 100x slower
    import torch
    torch.set_num_threads(1)


def _tiny_text():
    """About 20k characters of real text (the shipped excerpt of Tiny Shakespeare)."""
    return EXCERPT.read_text(encoding='utf-8')


@pytest.fixture(scope='session')
def tiny_dataset():
    """Name of a char dataset written under data/ (where loading.py looks), removed afterwards.
    Returns (name, meta) with meta the parsed meta.json."""
    name = f'_test_{os.getpid()}_{uuid.uuid4().hex[:8]}'
    path = ROOT / 'data' / name
    path.mkdir(parents=True)
    try:
        text = _tiny_text()
        itos = sorted(set(text))
        stoi = {c: i for i, c in enumerate(itos)}
        ids = np.array([stoi[c] for c in text], dtype=np.uint16)
        n = int(len(ids) * 0.9)
        ids[:n].tofile(path / 'train.bin')
        ids[n:].tofile(path / 'val.bin')
        meta = {'tokenizer': 'char', 'vocab_size': len(itos), 'itos': itos}
        (path / 'meta.json').write_text(json.dumps(meta), encoding='utf-8')
        yield name, meta
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='session')
def tiny_args(tiny_dataset):
    """train.py options for a model small enough that a run takes seconds on a shared
    2-core CPU, on the tiny dataset."""
    return ['--device=cpu', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32',
            '--batch_size=4', '--eval_iters=2', '--log_interval=1', '--gradient_accumulation_steps=1',
            f'--dataset={tiny_dataset[0]}']


def _env():
    env = dict(os.environ)
    env['OMP_NUM_THREADS'] = '1' # the machine is small and shared: no thread oversubscription
    for key in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(key, None)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def run_train():
    """run_train(*args, nproc=1, env=None, timeout=...) runs train.py from the repo root
    (python, or torchrun with nproc processes on gloo) and returns the CompletedProcess."""
    def run(*args, nproc=1, env=None, timeout=300):
        if nproc == 1:
            cmd = [sys.executable, 'train.py', *args]
        else:
            cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
                   'train.py', *args]
        return subprocess.run(cmd, cwd=ROOT, env={**_env(), **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
    return run


@pytest.fixture(scope='session')
def run_train_ranks():
    """run_train_ranks(*args, world_size=2) starts world_size plain `python train.py`
    processes with the RANK/WORLD_SIZE environment torchrun would give them (so their own
    exit codes and stderr can be checked), and returns their CompletedProcess-like results."""
    def run(*args, world_size=2, timeout=300):
        port = str(free_port())
        procs = []
        for rank in range(world_size):
            env = {**_env(), 'RANK': str(rank), 'LOCAL_RANK': str(rank), 'WORLD_SIZE': str(world_size),
                   'LOCAL_WORLD_SIZE': str(world_size), 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': port}
            procs.append(subprocess.Popen([sys.executable, 'train.py', *args], cwd=ROOT, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        results = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        return results
    return run


# the kinds of training run whose resume is tested, each with its own options on top of
# tiny_args: AR with dropout (so the torch RNG must be restored too), AR with input masking (its
# masks drawn from the noise stream), the seed objective with
# the curriculum mid-ramp, a clipped range of rates and the bias controller on, the 1/t-weighted
# ELBO with gradient accumulation, and a block diffusion model (blocks of 8 of the 32 tokens) on the
# seed objective in its two-stream pass, with the token-mean ELBO weighting never used, and
# one whose clean stream also learns the next token (ar_loss_weight, causal_clean)
RUN_VARIANTS = {
    'gpt2': ['--model_type=gpt2', '--dropout=0.1', '--learning_rate=1e-2', '--min_lr=1e-3'],
    'ar_masked': ['--model_type=gpt2', '--input_mask_weight=0.4', '--learning_rate=1e-2', '--min_lr=1e-3'],
    'seed': ['--model_type=diffusion', '--pos_encoding=rope', '--loss_type=seed', '--masking_warmup_iters=4',
             '--proofreading_warmup_iters=8', '--mask_rate_max=0.9', '--mask_bias_gain=0.3'],
    'elbo': ['--model_type=diffusion', '--pos_encoding=rope', '--loss_type=elbo', '--loss_weighting=elbo',
             '--gradient_accumulation_steps=2'],
    'block': ['--model_type=diffusion', '--pos_encoding=rope', '--loss_type=seed', '--diffusion_block=8',
              '--masking_warmup_iters=4', '--proofreading_warmup_iters=8', '--mask_bias_gain=0.3'],
    'causal': ['--model_type=diffusion', '--pos_encoding=rope', '--loss_type=elbo', '--diffusion_block=8',
               '--ar_loss_weight=0.5', '--gradient_accumulation_steps=2'],
}
RUN_ITERS = 6 # evaluated and saved at 3 and 6


@pytest.fixture(scope='session')
def run_variants():
    """{variant: its train.py options}, the runs that training_runs makes."""
    return RUN_VARIANTS


@pytest.fixture(scope='session')
def run_iters():
    """How many iterations the runs of training_runs train in all."""
    return RUN_ITERS


@pytest.fixture(scope='session')
def training_runs(tmp_path_factory, run_train, tiny_args):
    """training_runs(variant) trains a tiny model of RUN_VARIANTS[variant] three ways, once
    per test run: RUN_ITERS iterations straight ('straight'), half of them ('half'), then
    resumed from that to RUN_ITERS ('resumed'). Returns {way: (out_dir, CompletedProcess)}."""
    cache = {}

    def get(variant):
        if variant not in cache:
            base = tmp_path_factory.mktemp(f'run_{variant}')
            common = [*tiny_args, *RUN_VARIANTS[variant], '--warmup_iters=2', f'--lr_decay_iters={RUN_ITERS}',
                      f'--eval_interval={RUN_ITERS // 2}']
            runs = {}
            for way, extra in (('straight', [f'--max_iters={RUN_ITERS}']),
                               ('half', [f'--max_iters={RUN_ITERS // 2}']),
                               ('resumed', ['--init_from=resume', f'--max_iters={RUN_ITERS}'])):
                out_dir = base / ('straight' if way == 'straight' else 'split')
                r = run_train(*common, *extra, f'--out_dir={out_dir}')
                if r.returncode != 0:
                    pytest.fail(f"{variant} run '{way}' failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
                runs[way] = (out_dir, r)
            cache[variant] = runs
        return cache[variant]
    return get
