"""train.py under 2-process CPU DDP (torchrun, gloo), watched from inside: a probe runs
train.py in each process and reports what each rank holds and computes. The ranks draw
different batches, so they only agree if DDP averages the gradients and every shared
statistic is averaged over ranks."""
import json
import math
import re
import subprocess
import sys

import pytest
import torch

import diffusion
from conftest import ROOT, _env

pytestmark = pytest.mark.slow

# runs train.py (its command line is the probe's) in this process and writes to probe<rank>.json
# (not stdout: the ranks share it, and their lines can interleave) what this rank saw: its own
# p([MASK]) at every step, the p the controller was given, its own bound and masked CE at every
# eval, and a hash of its parameters and [MASK] bias at the end
PROBE = '''
import hashlib, json, os, runpy, sys
import torch
sys.path.insert(0, {root!r})
import diffusion
seen = {{'local_p': [], 'controller_p': [], 'bound': [], 'masked': []}}

def recorded(fn, key, value):
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        if key != 'local_p' or torch.is_grad_enabled(): # a training step, not an eval
            seen[key].append(float(value(args, out)))
        return out
    return wrapper

diffusion.mask_statistics = recorded(diffusion.mask_statistics, 'local_p', lambda a, out: out[0])
diffusion.update_mask_bias = recorded(diffusion.update_mask_bias, 'controller_p', lambda a, out: a[1])
diffusion.elbo_bound = recorded(diffusion.elbo_bound, 'bound', lambda a, out: out[0])
diffusion.masked_val_loss = recorded(diffusion.masked_val_loss, 'masked', lambda a, out: out)
g = runpy.run_path(os.path.join({root!r}, 'train.py'), run_name='__main__')
state = g['raw_model'].state_dict()
seen['hash'] = hashlib.sha256(b''.join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
seen['bias'] = state['mask_logit_bias'].item()
with open(os.path.join({report!r}, f"probe{{os.environ['RANK']}}.json"), 'w') as f:
    json.dump(seen, f)
'''
ITERS = 3
TARGET, GAIN = 0.5, 0.3


@pytest.fixture(scope='module')
def ddp_run(tiny_args, tmp_path_factory):
    """One 2-process run of an ELBO model (the bias controller on), 1 micro-batch per rank."""
    root = tmp_path_factory.mktemp('ddp')
    probe = root / 'probe.py'
    probe.write_text(PROBE.format(root=str(ROOT), report=str(root)))
    args = [*tiny_args, '--model_type=diffusion', '--pos_encoding=rope', '--loss_type=elbo', '--loss_weighting=elbo',
            '--gradient_accumulation_steps=2',
            f'--max_iters={ITERS}', f'--eval_interval={ITERS}', '--warmup_iters=1', f'--lr_decay_iters={ITERS}',
            '--learning_rate=1e-2', f'--target_mask_prob={TARGET}', f'--mask_bias_gain={GAIN}', f'--out_dir={root / "out"}']
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(probe),
                        *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    ranks = [json.loads((root / f'probe{rank}.json').read_text()) for rank in (0, 1)]
    return ranks, r.stdout, root / 'out'


def test_ranks_hold_identical_parameters(ddp_run):
    (rank0, rank1), _, out_dir = ddp_run
    assert rank0['local_p'] != rank1['local_p'] # different batches on each rank
    assert rank0['hash'] == rank1['hash'] # yet the same model: DDP averaged the gradients
    state = torch.load(out_dir / 'ckpt.pt', map_location='cpu', weights_only=True)['model']
    assert state['mask_logit_bias'].item() == rank0['bias'] == rank1['bias']


def test_controller_uses_the_mean_over_ranks(ddp_run):
    (rank0, rank1), _, _ = ddp_run
    assert len(rank0['local_p']) == len(rank0['controller_p']) == ITERS
    mean = [(a + b) / 2 for a, b in zip(rank0['local_p'], rank1['local_p'])]
    assert rank0['controller_p'] == pytest.approx(mean, abs=1e-6)
    assert rank1['controller_p'] == pytest.approx(mean, abs=1e-6)
    bias = torch.tensor(0.0)
    for p in mean:
        bias = diffusion.update_mask_bias(bias, torch.tensor(p), TARGET, GAIN, 20.0)
    assert rank0['bias'] == pytest.approx(bias.item(), abs=1e-5)


def test_eval_reports_the_mean_over_ranks(ddp_run):
    (rank0, rank1), stdout, _ = ddp_run
    # an eval at 0 and at ITERS; each rank's 3 masked CEs (15/50/90 %) and its bound per eval
    assert len(rank0['bound']) == len(rank1['bound']) == 2 and rank0['bound'] != rank1['bound']
    lines = re.findall(r'step (\d+): train loss ([\d.]+), val loss ([\d.]+), masked val CE 15/50/90%: ([\d.]+)/([\d.]+)/'
                       r'([\d.]+), val bound ([\d.]+) nats/token = ([\d.]+) bits/token', stdout)
    assert [int(line[0]) for line in lines] == [0, ITERS]
    for i, line in enumerate(lines):
        bound = (rank0['bound'][i] + rank1['bound'][i]) / 2
        masked = [(a + b) / 2 for a, b in zip(rank0['masked'][3 * i:3 * i + 3], rank1['masked'][3 * i:3 * i + 3])]
        assert float(line[6]) == pytest.approx(bound, abs=6e-5)
        assert [float(v) for v in line[3:6]] == pytest.approx(masked, abs=6e-5)
        # the ELBO objective with its own weighting over the full range: the val loss is the bound
        assert float(line[2]) == pytest.approx(bound, abs=6e-5)
        assert float(line[7]) == pytest.approx(bound / math.log(2), abs=2e-4)
