"""
The training ablation of the full-sequence diffusion model (README, "Ablation"): every row
is one change to the CPU ELBO config, trained for its 2,500 iterations at two or more seeds;
the table gives the final val bound (always the full 1/t ELBO) and masked val CE, each
seed's value and the mean +- half the spread.

$ python ablation.py                         # every row, two runs at a time, one thread each
$ python ablation.py --rows=base,bias --seeds=1337,1338,1339
Finished runs (train.py exited 0: a .done file beside the log) are read, not rerun, so
the script can be stopped and started again. Runs write to out-ablation/<row>-s<seed>, logs to logs/ablation/.
"""
import os
import re
import shlex
import subprocess
import sys
import time

from configurator import configure, require

base_config = 'config/train_shakespeare_diffusion_elbo_cpu.py' # the config every row changes
rows = '' # comma-separated names from ROWS below ('' = all)
seeds = '1337,1338' # comma-separated training seeds, at least two for a spread
train_args = '' # extra train.py arguments for every run, e.g. '--max_iters=1000 --lr_decay_iters=1000'
jobs = 2 # trainings at once; each gets cpus // jobs threads (2 cores: two 1-thread runs beat one 2-thread run by ~30%)
log_dir = 'logs/ablation'
out_root = 'out-ablation'
configure(globals())

# name -> (what it changes, train.py overrides); the first two rows are the two training weights,
# every later row is one change on top of the token mean, the adopted default
ROWS = {
    'one_over_t': ("1/t ELBO weight (the bound itself)", {'loss_weighting': 'elbo'}),
    'token_mean': ("token mean over masked positions", {'loss_weighting': 'token_mean'}),
    'clipped': ("token mean, mask rates clipped to [0.3, 0.8]", {'loss_weighting': 'token_mean', 'mask_rate_min': 0.3, 'mask_rate_max': 0.8}),
    'untied': ("token mean, untied embeddings (std 0.02)", {'loss_weighting': 'token_mean', 'tie_embeddings': False}),
    'untied_n01': ("token mean, untied, N(0,1) embeddings", {'loss_weighting': 'token_mean', 'tie_embeddings': False, 'embedding_init_std': 1.0}),
    'bias': ("token mean, biases in Linear and LayerNorm", {'loss_weighting': 'token_mean', 'bias': True}),
    'reference': ("token mean, untied, N(0,1), biases (the spec's reference model)", {'loss_weighting': 'token_mean', 'tie_embeddings': False, 'embedding_init_std': 1.0, 'bias': True}),
    'time_cond': ("token mean, time conditioning", {'loss_weighting': 'token_mean', 'time_conditioning': True}),
    'lr_2e-3': ("token mean, learning rate 2e-3 (min 2e-4)", {'loss_weighting': 'token_mean', 'learning_rate': 2e-3, 'min_lr': 2e-4}),
    'lr_5e-4': ("token mean, learning rate 5e-4 (min 5e-5)", {'loss_weighting': 'token_mean', 'learning_rate': 5e-4, 'min_lr': 5e-5}),
    'warmup_500': ("token mean, 500 warm-up iterations (not 100)", {'loss_weighting': 'token_mean', 'warmup_iters': 500}),
}
names = [r for r in rows.split(',') if r] or list(ROWS)
unknown = [r for r in names if r not in ROWS]
require(not unknown, f"unknown rows {unknown}: choose from {', '.join(ROWS)}")
seed_list = [int(s) for s in seeds.split(',') if s]
require(len(seed_list) >= 1, "give at least one seed, e.g. --seeds=1337,1338")
require(jobs >= 1, f"jobs must be >= 1, not {jobs}")
FINAL = re.compile(r"step (\d+): .*masked val CE 15/50/90%: ([\d.]+)/([\d.]+)/([\d.]+), val bound ([\d.]+)")


def final_eval(log_path):
    """(iteration, bound, ce15, ce50, ce90) of the last eval in a log, or None."""
    if not os.path.exists(log_path):
        return None
    found = FINAL.findall(open(log_path).read())
    return tuple(float(v) for v in found[-1]) if found else None


os.makedirs(log_dir, exist_ok=True)
runs = [(name, seed, os.path.join(log_dir, f"{name}-s{seed}.log")) for name in names for seed in seed_list]
# a run is done when train.py exited 0 and left its final eval; the exit is marked by a .done file
done_logs = {log for _, _, log in runs if os.path.exists(log + '.done')}
todo = [run for run in runs if run[2] not in done_logs]
threads = max(1, (os.cpu_count() or 1) // jobs)
running = []
print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to train, {jobs} at a time")
while todo or running:
    while todo and len(running) < jobs:
        name, seed, log = todo.pop(0)
        args = [sys.executable, 'train.py', base_config, *shlex.split(train_args), f'--seed={seed}',
                f'--out_dir={out_root}/{name}-s{seed}', *(f'--{k}={v}' for k, v in ROWS[name][1].items())]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        print(f"training {name} seed {seed}: {' '.join(args[1:])}", flush=True)
        running.append((subprocess.Popen(args, stdout=open(log, 'w'), stderr=subprocess.STDOUT, env=env), log))
    time.sleep(5)
    for proc, log in [r for r in running if r[0].poll() is not None]:
        running.remove((proc, log))
        if proc.returncode == 0:
            open(log + '.done', 'w').close()
        else:
            print(f"error: {log} exited with {proc.returncode}: see that log", flush=True)

print(f"\n| row | change | val bound per seed ({', '.join(map(str, seed_list))}) | bound mean +- half spread | masked CE 15/50/90 % (mean) |")
print("|---|---|---|---|---|")
for name in names:
    evals = [final_eval(log) for n, _, log in runs if n == name and os.path.exists(log + '.done')]
    if not evals:
        continue
    bounds = [e[1] for e in evals]
    ces = [sum(e[i] for e in evals) / len(evals) for i in (2, 3, 4)]
    spread = (max(bounds) - min(bounds)) / 2
    print(f"| {name} | {ROWS[name][0]} | {' / '.join(f'{b:.3f}' for b in bounds)} | "
          f"{sum(bounds) / len(bounds):.3f} +- {spread:.3f} | {' / '.join(f'{c:.3f}' for c in ces)} |")
