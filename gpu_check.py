"""
One command that checks the GPU paths on a machine with CUDA GPUs: every model kind trained
for a few hundred iterations at its GPU config size with the default dtype and compile=True,
a 2-process torchrun when there are 2 GPUs, then generation with each diffusion sampler.
It prints ms/iter, tokens/s, MFU, peak memory and the dtype chosen per run, and chars/s per
sampler. Data first: python data/shakespeare_char/prepare.py
$ python gpu_check.py
$ python gpu_check.py --iters=100 --kinds=ar,block
Runs write to out-gpu-check/<kind>, logs to logs/gpu_check/.
"""
import os
import re
import shlex
import statistics
import subprocess
import sys

import torch

from configurator import UserError, configure, parse_list, require
import sampling
from loading import read_log

iters = 300 # training iterations per model kind (the first ~10 include compilation and are not timed)
kinds = 'ar,seed,elbo,block' # model kinds to train, from KINDS below
ddp_kind = 'block' # the kind trained again with torchrun on 2 GPUs, when there are 2
samplers = 'refine,confidence,ancestral,left_to_right,threshold' # generation checks, from SAMPLERS
train_args = '' # extra train.py arguments for every run, e.g. '--dtype=float16'
device = 'cuda' # 'cuda' (the point of the check); 'cpu' runs the same steps as a smoke test
out_root = 'out-gpu-check'
log_dir = 'logs/gpu_check'
configure(globals())

# kind -> its GPU config (nanoGPT's shakespeare_char size: 6 layers, 384 wide, context 256, batch 64)
KINDS = {'ar': 'config/train_shakespeare_char.py', 'seed': 'config/train_shakespeare_diffusion.py',
         'elbo': 'config/train_shakespeare_diffusion_elbo.py', 'block': 'config/train_shakespeare_block_diffusion.py'}
# the command-line options of generate_diffusion.py for each of sampling.py's presets
SAMPLERS = {name: [f'--sampler={kind}', *(f'--{key}={value}' for key, value in options.items())]
            for name, (kind, options) in sampling.PRESETS.items()}
kind_list, sampler_list = parse_list(kinds, str.strip, 'kinds'), parse_list(samplers, str.strip, 'samplers')
require(all(k in KINDS for k in kind_list), f"kinds must come from {', '.join(KINDS)}, not {kinds!r}")
require(all(s in SAMPLERS for s in sampler_list), f"samplers must come from {', '.join(SAMPLERS)}, not {samplers!r}")
require(iters >= 20, f"iters must be >= 20 (the first 10 are not timed), not {iters}")
if device == 'cuda' and not torch.cuda.is_available():
    raise UserError("gpu_check.py needs a CUDA GPU: none is visible (use --device=cpu for a smoke test of the steps)")
n_gpus = torch.cuda.device_count() if device == 'cuda' else 0
os.makedirs(log_dir, exist_ok=True)


def run(name, cmd):
    """Run cmd with its output in log_dir/name.log; the log's text, or stop with its path."""
    log = os.path.join(log_dir, f'{name}.log')
    print(f"{name}: {' '.join(cmd)}", flush=True)
    with open(log, 'w') as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    text = open(log).read()
    if code != 0:
        raise UserError(f"{name} exited with {code}: see {log}")
    return text


def train(kind, nproc=1):
    """Train one kind; a row of the training table."""
    name = kind if nproc == 1 else f'{kind}-ddp{nproc}'
    launcher = [sys.executable] if nproc == 1 else [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                                    f'--nproc_per_node={nproc}']
    run_dir = f'{out_root}/{name}'
    run(name, [*launcher, 'train.py', KINDS[kind], f'--device={device}', '--compile=True', f'--max_iters={iters}',
               f'--lr_decay_iters={iters}', f'--eval_interval={iters}', '--log_interval=10', f'--out_dir={run_dir}',
               *shlex.split(train_args)])
    timed = [r for r in read_log(run_dir, 'iter') if r['iter'] > 10] # past compilation and warm-up
    require(timed, f"{name}: no timed iterations in {run_dir}/log.jsonl")
    dtype = read_log(run_dir, 'start')[-1]['dtype']
    ms = statistics.median(r['ms'] for r in timed)
    tok_s = statistics.median(r['tok_s'] for r in timed)
    memory = max((r['peak_memory_gib'] for r in timed if 'peak_memory_gib' in r), default=float('nan'))
    final = read_log(run_dir, 'eval')[-1]
    score = f"val bound {final['bound']:.4f}" if 'bound' in final else f"val loss {final['val']:.4f}" # a diffusion model's bound
    return [name, dtype, f"{ms:.1f}", f"{tok_s:,.0f}", f"{timed[-1]['mfu']:.2f}", f"{memory:.2f}", score]


def generate(kind, sampler):
    """Generate 16 samples with one sampler (the AR model: sample.py with its KV cache) from a
    trained kind; a row of the generation table."""
    if kind == 'ar':
        text = run('generate-ar', [sys.executable, 'sample.py', f'--out_dir={out_root}/ar', f'--device={device}',
                                   '--num_samples=16', '--max_new_tokens=256'])
        seconds, tok_s = re.search(r"in ([\d.]+)s: ([\d,]+) tokens/s", text).groups()
        return [kind, 'autoregressive, KV cache', '256', seconds, tok_s] # a char dataset: tokens are chars
    text = run(f'generate-{kind}-{sampler}', [sys.executable, 'generate_diffusion.py', f'--out_dir={out_root}/{kind}',
                                              f'--device={device}', '--num_samples=16', *SAMPLERS[sampler]])
    speed = re.search(r"(\d+) forward passes in ([\d.]+)s, wrote ([\d,]+) chars/s", text)
    return [kind, sampler, speed.group(1), speed.group(2), speed.group(3)]


print(f"{n_gpus} GPU(s): {torch.cuda.get_device_name() if n_gpus else device}")
rows = [train(kind) for kind in kind_list]
if n_gpus >= 2 and ddp_kind in kind_list:
    rows.append(train(ddp_kind, nproc=2))
gen_rows = [generate(kind, s) for kind in kind_list for s in (['-'] if kind == 'ar' else sampler_list)]
print("\n| run | dtype | ms/iter | tokens/s | MFU % | peak memory GiB | last eval (nats/token) |\n|---|---|---|---|---|---|---|")
print('\n'.join('| ' + ' | '.join(r) + ' |' for r in rows))
print("\n| model | sampler | forward passes | seconds | chars/s |\n|---|---|---|---|---|")
print('\n'.join('| ' + ' | '.join(r) + ' |' for r in gen_rows))
