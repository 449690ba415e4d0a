"""
The training ablations of the full-sequence diffusion model (docs/results.md): every row is
one change to a CPU config as it was before the ablation (the recipe's baseline below),
trained for its 2,500 iterations at two or more seeds; the table gives the final val bound
(always the full 1/t ELBO) and masked val CE, each seed's value and the mean +- half the spread.
recipe='elbo' ablates the ELBO objective, recipe='seed' the [MASK]/[WRONG] recipe.
recipe='scarce' asks when diffusion beats AR: each model on the first train_chars characters of
the training text (data/shakespeare_char/prepare.py --train_chars=N, the val text unchanged),
evaluated every 20 epochs or 250 iterations if sooner, its best checkpoint kept and stopped 3
evals after it; the table evaluates each kept checkpoint again until the standard error of its
val is under final_error (AR NLL, diffusion bound), gives the epoch where it was reached, and
<out_root>/scarce.png plots it against the size of the training text.

$ python ablation.py                         # every ELBO row, two runs at a time, one thread each
$ python ablation.py --rows=token_mean,bias --seeds=1337,1338,1339
$ python ablation.py --recipe=seed
$ python ablation.py --recipe=scarce --train_chars=10000,25000,100000,0   # 0: all the training text
$ python ablation.py --recipe=scarce --train=False   # the table and plot of the runs finished so far
Finished runs (train.py exited 0: a .done file beside the log) are read, not rerun, and
runs stopped by Ctrl-C continue from their checkpoint, so the script can be stopped and
started again. Runs write to out-ablation/<row>-s<seed>, logs to logs/ablation/.
"""
import json
import os
import shlex
import subprocess
import sys
import time

import torch

from configurator import configure, note_for_ctrl_c, parse_list, require
from diffusion import MASKED_METRICS, elbo_bound
from loading import chars_per_token, get_batch, load_checkpoint, load_split, model_from_checkpoint, read_log
from plots import write_scarce_plot
from progress import progress

recipe = 'elbo' # 'elbo', 'seed' or 'scarce': which config and rows (RECIPES below)
train_chars = '25000,100000' # recipe='scarce': the sizes of the training text, in characters, comma-separated (0 = all of it)
text = '' # recipe='scarce': the text file to slice ('' = prepare.py's default, Tiny Shakespeare downloaded once)
rows = '' # comma-separated names from the recipe's rows below ('' = all)
seeds = '1337,1338' # comma-separated training seeds, at least two for a spread
train_args = '' # extra train.py arguments for every run, e.g. '--max_iters=1000 --lr_decay_iters=1000'
final_error = 0.005 # recipe='scarce': each run's kept (best) checkpoint is evaluated again on the same val batches of 16
                    # rows, 100 at a time, until the standard error of its val is below this (nats/char)
final_batches = 2000 # ... or until this many batches
train = True # False: train nothing, only the table (and plot) of the runs already finished
jobs = 2 # trainings at once; each gets cpus // jobs threads (2 cores: two 1-thread runs beat one 2-thread run by ~30%)
log_dir = 'logs/ablation'
out_root = 'out-ablation'
configure(globals())

# every ELBO run starts from the config as it was before this ablation, but for the token mean: the
# full range of mask rates, so the table stays reproducible now that the winner (the clipped range) is
# the config's default. The rows of options retired since (untied embeddings, time conditioning) are in
# docs/results.md with the measurements that retired them
ELBO_BASELINE = {'loss_weighting': 'token_mean', 'mask_rate_min': 0.0, 'mask_rate_max': 1.0}
# name -> (what it changes, train.py overrides on top of BASELINE): one change each, but for the last row
ELBO_ROWS = {
    'one_over_t': ("1/t-weighted ELBO (the bound itself) instead of the token mean", {'loss_weighting': 'elbo'}),
    'token_mean': ("none: token mean over masked positions", {}),
    'clipped': ("mask rates clipped to [0.3, 0.8] in training", {'mask_rate_min': 0.3, 'mask_rate_max': 0.8}),
    'bias': ("biases in Linear and LayerNorm", {'bias': True}),
    'lr_2e-3': ("learning rate 2e-3 (min 2e-4) instead of 1e-3", {'learning_rate': 2e-3, 'min_lr': 2e-4}),
    'warmup_500': ("500 warm-up iterations instead of 100", {'warmup_iters': 500}),
}
# every seed run starts from the seed CPU config as it was before this ablation: corruption rates
# over the whole range, [WRONG] share 1, discount floor 0.1 (the per-task means, retired, are in docs/results.md)
SEED_BASELINE = {'mask_rate_min': 0.0, 'mask_rate_max': 1.0, 'wrong_share': 1.0,
                 'reward_correct_unmask': 0.1, 'penalty_mask_correct': 0.5}
SEED_ROWS = {
    'seed': ("none: the seed recipe as it was", {}),
    'seed_clipped': ("corruption rates clipped to [0.3, 0.8]", {'mask_rate_min': 0.3, 'mask_rate_max': 0.8}),
    'seed_wrong_0.2': ("[WRONG] share 0.2 instead of 1", {'wrong_share': 0.2}),
    'seed_clipped_wrong_0.2': ("clipped and [WRONG] share 0.2", {'mask_rate_min': 0.3, 'mask_rate_max': 0.8, 'wrong_share': 0.2}),
    'seed_clipped_wrong_0.05': ("clipped and [WRONG] share 0.05", {'mask_rate_min': 0.3, 'mask_rate_max': 0.8, 'wrong_share': 0.05}),
    'seed_penalty_0.1': ("keep penalty 0.1 instead of 0.5", {'penalty_mask_correct': 0.1}),
    'seed_no_discount': ("no soft discount (reward_correct_unmask 1)", {'reward_correct_unmask': 1.0}),
}
# scarce data: every model on each slice, evaluated every 20 epochs (an iteration is 2,048 characters: N // 100
# iterations) or 250 iterations if sooner, the best val kept, stopped 3 evals after it
SCARCE_BASELINE = {'always_save_checkpoint': False, 'eval_iters': 50, 'patience': 3}
SCARCE_MODELS = { # name -> (what it is, its config, its overrides)
    'ar': ("AR twin", 'config/train_shakespeare_ar_cpu.py', {}),
    'ar_dropout': ("AR twin, dropout 0.2", 'config/train_shakespeare_ar_cpu.py', {'dropout': 0.2}),
    **{f'ar_regularised{suffix}': (f"AR twin, dropout {d}, weight decay {wd}, input masking (weight 0.4, rates U(0, 0.5))",
                                   'config/train_shakespeare_ar_cpu.py', {'dropout': d, 'weight_decay': wd, 'input_mask_weight': 0.4})
       for suffix, d, wd in (('', 0.2, 1.0), ('_dropout_0.1', 0.1, 1.0), ('_dropout_0.3', 0.3, 1.0),
                             ('_wd_2', 0.2, 2.0), ('_wd_4', 0.2, 4.0), ('_wd_8', 0.2, 8.0), ('_wd_16', 0.2, 16.0), ('_wd_32', 0.2, 32.0))},
    'elbo': ("full-sequence diffusion, ELBO", 'config/train_shakespeare_diffusion_elbo_cpu.py', {}),
    'elbo_dropout': ("full-sequence diffusion, ELBO, dropout 0.2", 'config/train_shakespeare_diffusion_elbo_cpu.py',
                     {'dropout': 0.2}),
    **{f'elbo_wd_{wd:g}': (f"full-sequence diffusion, ELBO, weight decay {wd:g}", 'config/train_shakespeare_diffusion_elbo_cpu.py',
                           {'weight_decay': wd}) for wd in (1.0, 2.0, 4.0, 8.0)}, # the AR model's regularisers, one at a time
    'elbo_wide': ("full-sequence diffusion, ELBO, 256 wide (3.2 M parameters)", 'config/train_shakespeare_diffusion_elbo_cpu.py',
                  {'n_embd': 256, 'n_head': 8}), # the papers find diffusion wants more parameters than AR
    'block_elbo': ("block diffusion (blocks of 4), ELBO", 'config/train_shakespeare_block_diffusion_cpu.py', {}),
    'block_seed': ("block diffusion (blocks of 4), seed recipe", 'config/train_shakespeare_block_seed_cpu.py', {}),
}
sizes = parse_list(train_chars, int, 'train_chars') if recipe == 'scarce' else []
SLICES = {n: f'shakespeare_char_{n}' if n else 'shakespeare_char' for n in sizes} # size -> its prepared dataset
SCARCE_ROWS = {f"{model}_{n or 'all'}": (f"{what}, {f'{n:,} chars' if n else 'all the text'}", config,
                                        {**overrides, 'dataset': SLICES[n], 'eval_interval': min(250, n // 100 or 250)})
               for n in sizes for model, (what, config, overrides) in SCARCE_MODELS.items()}
RECIPES = {'elbo': ('config/train_shakespeare_diffusion_elbo_cpu.py', ELBO_BASELINE, ELBO_ROWS),
           'seed': ('config/train_shakespeare_diffusion_cpu.py', SEED_BASELINE, SEED_ROWS),
           'scarce': (None, SCARCE_BASELINE, SCARCE_ROWS)}
require(recipe in RECIPES, f"recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
base_config, BASELINE, ROWS = RECIPES[recipe]
ROWS = {name: (what, base_config, overrides) for name, (what, overrides) in ROWS.items()} if base_config else ROWS
names = parse_list(rows, str.strip, 'rows') if rows else list(ROWS)
unknown = [r for r in names if r not in ROWS]
require(not unknown, f"unknown rows {unknown}: choose from {', '.join(ROWS)}")
seed_list = parse_list(seeds, int, 'seeds')
require(jobs >= 1, f"jobs must be >= 1, not {jobs}")


@torch.no_grad()
def best_eval(run_dir, chars):
    """(val, its standard error, in nats/char; the iteration of the checkpoint; the epochs of a training text of
    `chars` characters by then) of the checkpoint a run kept, its best, evaluated again (final_error): an AR
    model's NLL, a diffusion model's bound (diffusion.elbo_bound). Kept in the run's final_val.json."""
    checkpoint, saved = load_checkpoint(run_dir), os.path.join(run_dir, 'final_val.json')
    key = dict(iter=checkpoint['iter_num'], final_error=final_error, final_batches=final_batches)
    found = json.load(open(saved)) if os.path.exists(saved) else {}
    if {k: found.get(k) for k in key} != key:
        model, dataset = model_from_checkpoint(checkpoint).eval(), checkpoint['config']['dataset']
        val, per_char = load_split(dataset, 'val'), chars_per_token(dataset, 'val') or 1
        batch_seed, noise, means, errors = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1), [], []
        error = lambda: sum(e * e for e in errors) ** 0.5 / len(errors) / per_char # of the mean of independent chunks
        while not errors or (error() > final_error and len(means) * 100 < final_batches):
            batches = [get_batch(val, 16, model.config.block_size, batch_seed, 'cpu') for _ in range(100)]
            if model.config.model_type == 'gpt2':
                losses = torch.tensor([model(x, y)[1].item() for x, y in batches])
                chunk = losses.mean().item(), (losses.std() / 10).item()
            else:
                chunk = elbo_bound(model, [x for x, _ in batches], noise)
            means.append(chunk[0])
            errors.append(chunk[1])
        found = dict(key, val=sum(means) / len(means) / per_char, error=error())
        json.dump(found, open(saved, 'w'))
    epochs = checkpoint['iter_num'] * read_log(run_dir, 'start')[-1]['tokens_per_iter'] / chars # char tokens
    return found['val'], found['error'], checkpoint['iter_num'], epochs


def prepare_slices():
    """data/shakespeare_char_N for each size N: the first N characters of the training text, the usual val text
    (and data/shakespeare_char itself for N = 0), all from one text: their val splits must be the same."""
    for n, name in SLICES.items():
        if not os.path.exists(os.path.join('data', name, 'val.bin')):
            subprocess.run([sys.executable, 'data/shakespeare_char/prepare.py', *([f'--input={text}'] if text else []),
                            *([f'--train_chars={n}', f'--out_dir=data/{name}'] if n else [])], check=True)
    vals = {name: open(os.path.join('data', name, 'val.bin'), 'rb').read() for name in SLICES.values()}
    require(len(set(vals.values())) <= 1, f"the val texts of {', '.join(vals)} differ: they were prepared from different "
            "texts (offline, prepare.py falls back to another corpus); delete them and run again with --text=PATH")


def final_eval(run_dir):
    """(bound, (ce15, ce50, ce90)) of the last eval of a finished run, from train.py's log.jsonl."""
    last = read_log(run_dir, 'eval')[-1]
    return last['bound'], [last[name] for name in MASKED_METRICS]


os.makedirs(log_dir, exist_ok=True)
os.makedirs(out_root, exist_ok=True) # the plot goes there, even before any run
prepare_slices()
runs = [(name, seed, os.path.join(log_dir, f"{name}-s{seed}.log")) for name in names for seed in seed_list]
# a run is done when train.py exited 0 and left its final eval; the exit is marked by a .done file
done_logs = {log for _, _, log in runs if os.path.exists(log + '.done')}
todo = [run for run in runs if run[2] not in done_logs] if train else []
threads = max(1, (os.cpu_count() or 1) // jobs)
running = []
print(f"{len(done_logs)} of {len(runs)} runs already finished; {len(todo)} to train, {jobs} at a time")
bar = progress(len(todo), 'ablation', 'run') # runs finished, their rate and the time left
while todo or running:
    # Ctrl-C also reaches the trainings, which save a checkpoint and stop
    note_for_ctrl_c(f"{len(done_logs)} of {len(runs)} runs are done (a .done file beside the log in {log_dir}); "
                    "the same command again trains the others, continuing the stopped ones")
    while todo and len(running) < jobs:
        name, seed, log = todo.pop(0)
        # a run stopped by Ctrl-C saved a checkpoint and said so in its log: it continues from there
        stopped = os.path.exists(log) and '--init_from=resume continues' in open(log).read()
        args = [sys.executable, 'train.py', ROWS[name][1], *shlex.split(train_args), f'--seed={seed}',
                f'--out_dir={out_root}/{name}-s{seed}', *(f'--{k}={v}' for k, v in {**BASELINE, **ROWS[name][2]}.items()),
                *(['--init_from=resume'] if stopped else [])]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        print(f"training {name} seed {seed}: {' '.join(args[1:])}", flush=True)
        running.append((subprocess.Popen(args, stdout=open(log, 'a' if stopped else 'w'), stderr=subprocess.STDOUT, env=env), log))
    time.sleep(5)
    for proc, log in [r for r in running if r[0].poll() is not None]:
        running.remove((proc, log))
        bar.update()
        if proc.returncode == 0:
            open(log + '.done', 'w').close()
            done_logs.add(log)
        else:
            print(f"error: {log} exited with {proc.returncode}: see that log", flush=True)
bar.close()

if recipe == 'scarce':
    print(f"\n| row | model | val of the kept checkpoint per seed ({', '.join(map(str, seed_list))}), nats/char | "
          "at iteration (epochs) |")
    print("|---|---|---|---|")
    points = [] # the plot's rows
    for name in names:
        chars = len(load_split(ROWS[name][2]['dataset'], 'train')) # char tokens
        found = [best_eval(f'{out_root}/{n}-s{seed}', chars) for n, seed, log in runs if n == name and os.path.exists(log + '.done')]
        points.append(dict(model=ROWS[name][0].rsplit(', ', 1)[0], chars=chars, best=[v for v, _, _, _ in found]))
        print(f"| {name} | {ROWS[name][0]} | {' / '.join(f'{v:.3f} +- {se:.3f}' for v, se, _, _ in found)} | "
              f"{' / '.join(f'{it} ({epochs:.0f})' for _, _, it, epochs in found)} |")
    plot = write_scarce_plot(os.path.join(out_root, 'scarce.png'), points)
    print(f"\nplot: {plot or 'none (matplotlib is not installed: pip install matplotlib)'}")
    sys.exit(0)
print(f"\n| row | change | val bound per seed ({', '.join(map(str, seed_list))}) | bound mean +- half spread | masked CE 15/50/90 % (mean) |")
print("|---|---|---|---|---|")
for name in names:
    evals = [final_eval(f'{out_root}/{n}-s{seed}') for n, seed, log in runs if n == name and os.path.exists(log + '.done')]
    if not evals:
        continue
    bounds = [e[0] for e in evals]
    ces = [sum(e[1][i] for e in evals) / len(evals) for i in range(len(MASKED_METRICS))]
    spread = (max(bounds) - min(bounds)) / 2
    print(f"| {name} | {ROWS[name][0]} | {' / '.join(f'{b:.3f}' for b in bounds)} | "
          f"{sum(bounds) / len(bounds):.3f} +- {spread:.3f} | {' / '.join(f'{c:.3f}' for c in ces)} |")
