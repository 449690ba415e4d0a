"""ablation.py end to end on the tiny dataset: every row x seed is trained once, the table
reads each run's final eval, and a second call reuses the finished runs."""
import re
import subprocess
import sys

import pytest

from conftest import ROOT, _env

pytestmark = pytest.mark.slow


def test_ablation_trains_each_row_and_seed_once(tiny_args, tmp_path):
    tiny = ' '.join(tiny_args + ['--max_iters=4', '--lr_decay_iters=4', '--warmup_iters=1', '--eval_interval=4',
                                 '--masking_warmup_iters=2', '--proofreading_warmup_iters=2'])
    args = [sys.executable, 'ablation.py', '--rows=token_mean,untied_n01', '--seeds=1,2', f'--train_args={tiny}',
            f'--log_dir={tmp_path}/logs', f'--out_root={tmp_path}/out']
    first = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert '0 of 4 runs already finished; 4 to train' in first.stdout
    rows = {line.split('|')[1].strip(): line for line in first.stdout.splitlines() if re.match(r'\| (token_mean|untied_n01) ', line)}
    assert set(rows) == {'token_mean', 'untied_n01'}
    for name, line in rows.items():
        per_seed = line.split('|')[3].split(' / ')
        assert len(per_seed) == 2 and all(0 < float(b) < 10 for b in per_seed)
        log = (tmp_path / 'logs' / f'{name}-s1.log').read_text()
        assert 'step 4:' in log and (tmp_path / 'out' / f'{name}-s1' / 'ckpt.pt').is_file()
        # the bound of seed 1 is the last eval's bound in its log, not one of the masked CEs
        assert abs(float(per_seed[0]) - float(re.findall(r'val bound ([\d.]+)', log)[-1])) < 6e-4
    assert "Overriding: tie_embeddings = False" in (tmp_path / 'logs' / 'untied_n01-s2.log').read_text()
    second = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and '4 of 4 runs already finished; 0 to train' in second.stdout
    assert [l for l in second.stdout.splitlines() if l.startswith('| token_mean')] == [rows['token_mean']]


def test_ablation_refuses_an_unknown_row():
    r = subprocess.run([sys.executable, 'ablation.py', '--rows=token_mean,bogus'], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown rows ['bogus']" in r.stderr and 'Traceback' not in r.stderr
