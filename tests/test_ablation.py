"""ablation.py end to end on the tiny dataset: every row x seed is trained once, the table
reads each run's final eval, and a second call reuses the finished runs."""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, _env
from loading import read_log

pytestmark = pytest.mark.slow


def test_ablation_trains_each_row_and_seed_once(tiny_args, tmp_path):
    tiny = ' '.join(tiny_args + ['--max_iters=4', '--lr_decay_iters=4', '--warmup_iters=1', '--eval_interval=4',
                                 '--masking_warmup_iters=2', '--proofreading_warmup_iters=2'])
    args = [sys.executable, 'ablation.py', '--rows=token_mean,bias', '--seeds=1,2', f'--train_args={tiny}',
            f'--log_dir={tmp_path}/logs', f'--out_root={tmp_path}/out']
    first = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert '0 of 4 runs already finished; 4 to train' in first.stdout
    rows = {line.split('|')[1].strip(): line for line in first.stdout.splitlines() if re.match(r'\| (token_mean|bias) ', line)}
    assert set(rows) == {'token_mean', 'bias'}
    for name, line in rows.items():
        per_seed = line.split('|')[3].split(' / ')
        assert len(per_seed) == 2 and all(0 < float(b) < 10 for b in per_seed)
        log = (tmp_path / 'logs' / f'{name}-s1.log').read_text()
        assert 'step 4:' in log and (tmp_path / 'out' / f'{name}-s1' / 'ckpt.pt').is_file()
        # the bound of seed 1 is the last eval's bound in its log, not one of the masked CEs
        assert abs(float(per_seed[0]) - float(re.findall(r'val bound ([\d.]+)', log)[-1])) < 6e-4
    assert "Overriding: bias = True" in (tmp_path / 'logs' / 'bias-s2.log').read_text()
    second = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and '4 of 4 runs already finished; 0 to train' in second.stdout
    assert [l for l in second.stdout.splitlines() if l.startswith('| token_mean')] == [rows['token_mean']]
    # --train=False: the table of the finished runs, a seed not trained yet left out and left untrained
    table_only = subprocess.run([*args, '--seeds=1,2,3', '--train=False'], cwd=ROOT, env=_env(), capture_output=True,
                                text=True, timeout=600)
    assert table_only.returncode == 0 and '4 of 6 runs already finished; 0 to train' in table_only.stdout
    assert [l for l in table_only.stdout.splitlines() if l.startswith('| token_mean')] == [rows['token_mean']]
    assert not (tmp_path / 'logs' / 'token_mean-s3.log').exists()


def test_ablation_refuses_an_unknown_row():
    r = subprocess.run([sys.executable, 'ablation.py', '--rows=token_mean,bogus'], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown rows ['bogus']" in r.stderr and 'Traceback' not in r.stderr


def test_ctrl_c_stops_the_trainings_and_the_same_command_continues_them(tiny_args, tmp_path):
    """Ctrl-C reaches the whole process group, as in a terminal: each training saves and stops,
    ablation.py says how many runs are done, and the same command again continues the stopped ones."""
    tiny = ' '.join(tiny_args + ['--max_iters=400', '--lr_decay_iters=400', '--warmup_iters=1', '--eval_interval=400'])
    args = [sys.executable, 'ablation.py', '--rows=token_mean', '--seeds=1,2', f'--train_args={tiny}',
            f'--log_dir={tmp_path}/logs', f'--out_root={tmp_path}/out']
    env = {**_env(), 'PYTHONUNBUFFERED': '1'} # the trainings' logs fill line by line
    logs = [tmp_path / 'logs' / f'token_mean-s{seed}.log' for seed in (1, 2)]
    # SIGINT as a terminal delivers it, even where pytest itself was started in the background (a shell
    # without job control starts background commands with SIGINT ignored, and children inherit that)
    p = subprocess.Popen(args, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not all(log.exists() and 'iter 3:' in log.read_text() for log in logs) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and 'Traceback' not in err, err
    assert err.strip().splitlines()[-1].startswith('stopped by Ctrl-C: 0 of 2 runs are done'), err
    for log in logs:
        assert re.search(r'^stopped at iter \d+: checkpoint saved', log.read_text(), re.M), log.read_text()[-2000:]
    again = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and '0 of 2 runs already finished; 2 to train' in again.stdout, again.stdout + again.stderr
    for log in logs:
        text = log.read_text()
        assert 'Resuming training' in text and 'step 400:' in text # continued to the end, in the same log
    assert re.search(r'^\| token_mean ', again.stdout, re.M)


def test_scarce_recipe_slices_trains_and_evaluates_the_kept_checkpoints(tiny_args, tmp_path):
    """--recipe=scarce on a text of its own: a slice of the training text (the val text whole), an AR and
    a diffusion row trained on it with early stopping, each kept checkpoint evaluated again (cached in
    final_val.json), and the table with the epochs of the kept checkpoint; --train=False reads the same."""
    size, name = 3001, 'shakespeare_char_3001' # a size nobody prepares: the slice lives in data/ while the test runs
    tiny = ' '.join(tiny_args + ['--max_iters=90', '--lr_decay_iters=90', '--warmup_iters=1'])
    args = [sys.executable, 'ablation.py', '--recipe=scarce', f'--text={ROOT}/tests/shakespeare_excerpt.txt',
            f'--train_chars={size}', f'--rows=ar_regularised_{size},elbo_{size}', '--seeds=1', '--final_batches=100',
            f'--train_args={tiny}', f'--log_dir={tmp_path}/logs', f'--out_root={tmp_path}/out']
    try:
        first = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        with open(os.path.join(ROOT, 'data', name, 'train.bin'), 'rb') as f:
            assert len(f.read()) == 2 * size # uint16 ids: the first size characters
        rows = {m[1]: (float(m[2]), int(m[3]), int(m[4])) for m in re.finditer(
            r'^\| (\w+_3001) \| .+ \| ([\d.]+) \+- [\d.]+ \| (\d+) \((\d+)\) \|$', first.stdout, re.M)}
        assert set(rows) == {f'ar_regularised_{size}', f'elbo_{size}'}, first.stdout[-3000:]
        for row, (val, it, epochs) in rows.items():
            kept = json.load(open(tmp_path / 'out' / f'{row}-s1' / 'final_val.json'))
            assert kept['iter'] == it > 0 and abs(kept['val'] - val) < 6e-4 and 0 < val < 10
            assert epochs == round(it * 4 * 32 / size) # rows of 4 x 32 characters an iteration
            evals = read_log(str(tmp_path / 'out' / f'{row}-s1'), 'eval')
            assert all(e['iter'] % 30 == 0 for e in evals) # every 20 epochs: size // 100 iterations
        assert (tmp_path / 'out' / 'scarce.png').exists() == (importlib.util.find_spec('matplotlib') is not None)
        again = subprocess.run([*args, '--train=False'], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and '2 of 2 runs already finished; 0 to train' in again.stdout
        assert [l for l in again.stdout.splitlines() if '_3001 |' in l] == [l for l in first.stdout.splitlines() if '_3001 |' in l]
        # before any run, into a folder not made yet: the (empty) table, not a traceback
        fresh = subprocess.run([*args[:-2], f'--log_dir={tmp_path}/logs2', f'--out_root={tmp_path}/out2', '--train=False'],
                               cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        assert fresh.returncode == 0 and '0 of 2 runs already finished' in fresh.stdout, fresh.stderr[-2000:]
    finally:
        shutil.rmtree(os.path.join(ROOT, 'data', name), ignore_errors=True)
