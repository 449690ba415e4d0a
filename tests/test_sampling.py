"""Tests for the samplers of sampling.py and for generate_diffusion.py and sample.py.
CPU only, tiny random models; the scripts mostly run in-process (runpy), and in a
subprocess where the one-line error of the excepthook is what is tested."""
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import loading
import sampling
from configurator import UserError
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent
V = 10 # base vocabulary of the sampler tests
MASK, WRONG = V, V + 1


def tiny(seed=0, model_type='diffusion', vocab=V, mask_logit_bias=0.0, diffusion_block=0):
    torch.manual_seed(seed)
    specials = dict(vocab_size=vocab + 2, mask_token_id=vocab, wrong_token_id=vocab + 1) if model_type == 'diffusion' else dict(vocab_size=vocab)
    config = GPTConfig(model_type=model_type, n_layer=1, n_head=2, n_embd=32, block_size=32, pos_encoding='rope',
                       diffusion_block=diffusion_block, **specials)
    model = GPT(config).eval()
    model.mask_logit_bias.fill_(mask_logit_bias)
    return model


def nudge(model, column, value, positions=slice(None)):
    """Add value to one logit column (at some positions) of every forward pass."""
    forward = model.forward
    def biased(idx, targets=None, kv_cache=None, attn_mask=None, pos=None):
        logits, loss = forward(idx, targets, kv_cache, attn_mask, pos)
        bias = torch.zeros_like(logits)
        bias[:, positions, column] = value
        return logits + bias, loss
    model.forward = biased
    return model


def flag_every_token(model):
    """Make the model call every token [WRONG], and never sample [WRONG] at a mask."""
    forward = model.forward
    def flagging(idx, targets=None, kv_cache=None, attn_mask=None, pos=None):
        logits, loss = forward(idx, targets, kv_cache, attn_mask, pos)
        wrong = torch.where(idx != MASK, 50.0, -50.0)[..., None]
        return torch.where(torch.arange(logits.size(-1)) == WRONG, wrong, logits), loss
    model.forward = flagging
    return model


def count_passes(model):
    """Wrap model.forward so that model.passes counts the forward passes."""
    forward, model.passes = model.forward, 0
    def counted(*args, **kwargs):
        model.passes += 1
        return forward(*args, **kwargs)
    model.forward = counted
    return model


def start(batch=3, T=32):
    """Masks to write, with a different number of fixed tokens in each row."""
    x = torch.full((batch, T), MASK)
    x[0, :4] = torch.arange(4)
    x[1, ::3] = 7
    return x  # row 2: all masked


SAMPLERS = {
    'refine': lambda model, x, **kw: sampling.refine_sample(model, x, max_steps=8, **kw),
    'confidence': lambda model, x, **kw: sampling.confidence_sample(model, x, steps=6, **kw),
    'confidence_linear': lambda model, x, **kw: sampling.confidence_sample(model, x, steps=6, schedule='linear', **kw),
    'confidence_random': lambda model, x, **kw: sampling.confidence_sample(model, x, steps=6, order='random', **kw),
    'confidence_left_to_right': lambda model, x, **kw: sampling.confidence_sample(model, x, steps=6, order='left_to_right', **kw),
    'confidence_threshold': lambda model, x, **kw: sampling.confidence_sample(model, x, steps=6, commit='threshold', **kw),
}
MODELS = {
    'random': lambda: tiny(),
    'defers': lambda: tiny(mask_logit_bias=3.0), # often samples [MASK]
    'doubts': lambda: nudge(tiny(), WRONG, 3.0), # often flags tokens as [WRONG]
}


@pytest.mark.parametrize('model_name', MODELS)
@pytest.mark.parametrize('sampler', SAMPLERS)
def test_no_specials_and_fixed_positions_kept(sampler, model_name):
    x = start()
    y, passes = SAMPLERS[sampler](MODELS[model_name](), x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and passes >= 1
    assert not ((y == MASK) | (y == WRONG)).any()
    fixed = x != MASK
    assert torch.equal(y[fixed], x[fixed])


@pytest.mark.parametrize('steps', [1, 3, 7])
def test_confidence_forward_pass_budget(steps):
    model = count_passes(nudge(tiny(), WRONG, 20.0)) # flags every written token: [WRONG] must still never be written
    y, passes = sampling.confidence_sample(model, start(), steps, generator=torch.Generator().manual_seed(0))
    assert passes == model.passes == steps # on the schedule: exactly `steps` passes
    assert not ((y == MASK) | (y == WRONG)).any()


def test_confidence_commits_along_the_schedule():
    x = torch.full((2, 32), MASK)
    x[1, :16] = 3 # row 1 has half as many masks
    masked_after = []
    sampling.confidence_sample(tiny(), x, 4, schedule='linear', temperature=0,
                                on_step=lambda step, t: masked_after.append((t == MASK).sum(1).tolist()))
    assert masked_after == [[24, 12], [16, 8], [8, 4], [0, 0]]


@pytest.mark.parametrize('sampler', [s for s in SAMPLERS if s != 'confidence_random']) # a random order is the generator's
def test_temperature_zero_is_deterministic(sampler):
    model = tiny()
    a, _ = SAMPLERS[sampler](model, start(), temperature=0, generator=torch.Generator().manual_seed(1))
    b, _ = SAMPLERS[sampler](model, start(), temperature=0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize('sampler', SAMPLERS)
def test_seed_decides_the_sample(sampler):
    model = tiny()
    run = lambda seed: SAMPLERS[sampler](model, start(), top_k=8, top_p=0.95, generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_refine_stops_at_max_steps_when_the_model_always_defers():
    model = count_passes(tiny(mask_logit_bias=50.0))
    seen = []
    y, passes = sampling.refine_sample(model, start(), max_steps=5, on_step=lambda step, t: seen.append(step))
    assert passes == model.passes == 6 and seen == [1, 2, 3, 4, 5, 6] # 5 steps, then the final fill
    assert not ((y == MASK) | (y == WRONG)).any()


def test_refine_treats_wrong_at_a_mask_as_defer():
    states = []
    y, passes = sampling.refine_sample(nudge(tiny(), WRONG, 20.0), start(), max_steps=3, on_step=lambda step, t: states.append(t))
    assert passes == 4 and all(torch.equal(s, start()) for s in states[:3]) # never written, never [WRONG]
    assert not ((y == MASK) | (y == WRONG)).any()


def test_refine_sends_flagged_tokens_back_to_mask():
    model = flag_every_token(nudge(tiny(mask_logit_bias=-50.0), MASK, 100.0, positions=-1)) # writes all but the last at once
    states = []
    y, passes = sampling.refine_sample(model, start(), max_steps=2, on_step=lambda step, t: states.append(t))
    fixed = start() != MASK
    assert torch.equal(states[0] == MASK, torch.arange(32).expand(3, 32) == 31) # step 1 writes all but the last
    assert torch.equal(states[1] == MASK, ~fixed) # step 2 flags every written token, never a fixed one
    assert passes == 3 and not ((y == MASK) | (y == WRONG)).any()


def test_filter_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    greedy = sampling.filter_logits(logits, 0)
    assert greedy.argmax(-1).item() == 1 and torch.isinf(greedy).sum() == 3
    assert torch.isinf(sampling.filter_logits(logits, 1.0, top_k=2)).tolist() == [[True, False, False, True]]
    assert torch.isinf(sampling.filter_logits(logits, 1.0, top_p=0.5)).tolist() == [[True, False, True, True]]
    assert torch.allclose(sampling.filter_logits(logits, 2.0), logits / 2)


def test_wrong_flags_respect_fixed():
    tokens = torch.randint(0, V, (2, 32), generator=torch.Generator().manual_seed(0))
    assert not sampling.wrong_flags(nudge(tiny(), WRONG, -20.0), tokens).any()
    doubting = nudge(tiny(), WRONG, 20.0)
    assert sampling.wrong_flags(doubting, tokens).all()
    fixed = torch.zeros(2, 32, dtype=torch.bool)
    fixed[:, :5] = True
    assert torch.equal(sampling.wrong_flags(doubting, tokens, fixed), ~fixed)


def test_proofread_rewrites_only_flagged_positions():
    tokens = torch.randint(0, V, (2, 32), generator=torch.Generator().manual_seed(0))
    model = count_passes(nudge(tiny(), WRONG, 20.0, positions=slice(0, None, 2))) # doubts the even positions
    fixed = torch.zeros(2, 32, dtype=torch.bool)
    fixed[:, :4] = True
    flags, corrected, passes = sampling.proofread(model, tokens, 4, fixed, temperature=0)
    expected = torch.zeros(32, dtype=torch.bool)
    expected[4::2] = True
    assert torch.equal(flags, expected.expand(2, 32))
    assert torch.equal(corrected[~flags], tokens[~flags])
    assert not ((corrected == MASK) | (corrected == WRONG)).any()
    assert passes == model.passes <= 4 + 1


# ----------------------------------------------------------------------------
# the scripts

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz :\n"))


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A char dataset under data/ (scripts read tokenizers there) and a tiny diffusion, block
    diffusion (blocks of 8) and AR checkpoint in the format train.py writes."""
    dataset = f'_test_sampling_{os.getpid()}'
    data_dir = Path(loading.DATA_DIR) / dataset
    data_dir.mkdir(parents=True)
    (data_dir / 'meta.json').write_text(json.dumps({'tokenizer': 'char', 'vocab_size': len(CHARS), 'itos': CHARS}))
    # val text, on which proofreading tunes its threshold
    np.random.default_rng(0).integers(len(CHARS), size=200).astype(np.uint16).tofile(data_dir / 'val.bin')
    root = tmp_path_factory.mktemp('ckpt')
    dirs = {}
    for kind, model_type, name in (('diffusion', 'diffusion', 'diff<&"x'), ('block', 'diffusion', 'block'),
                                   ('gpt2', 'gpt2', 'ar')): # a name that needs escaping in HTML
        model = tiny(model_type=model_type, vocab=len(CHARS), diffusion_block=8 if kind == 'block' else 0)
        optimizer = torch.optim.AdamW(model.parameters())
        dirs[kind] = root / name
        loading.save_checkpoint({'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                                 'model_args': asdict(model.config), 'iter_num': 0, 'best_val_loss': 1e9,
                                 'config': {'dataset': dataset},
                                 'rng': {'data': [torch.get_rng_state()], 'noise': [torch.get_rng_state()],
                                         'torch': [torch.get_rng_state()], 'cuda': None}}, dirs[kind])
    yield dirs
    shutil.rmtree(data_dir)


def run_script(monkeypatch, capsys, script, *args):
    monkeypatch.setattr(sys, 'argv', [script, *args])
    runpy.run_path(str(ROOT / script), run_name='__main__')
    return capsys.readouterr().out


def run_subprocess(script, *args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'} # a small shared machine: no thread oversubscription
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def read_samples(path):
    return path.read_text(encoding='utf-8').split('\n---------------\n')[:-1]


def test_generate_prefix(checkpoints, monkeypatch, capsys, tmp_path):
    out = run_script(monkeypatch, capsys, 'generate_diffusion.py', f'--out_dir={checkpoints["diffusion"]}', '--start=ab\\ncd',
                     '--num_samples=3', '--length=20', '--sampler=confidence', '--steps=5', f'--output={tmp_path / "s.txt"}', '--device=cpu')
    samples = read_samples(tmp_path / 's.txt')
    assert len(samples) == 3 and out.count('---------------') == 3
    for s in samples:
        assert len(s) == 20 and s.startswith('ab\ncd') and set(s) <= set(CHARS)
    # order 'auto': a random order for a full-sequence model, next-token order for a block model
    assert re.search(r'3 samples of 20 tokens \(confidence, order random, commit schedule\): [1-5] forward passes in .* chars/s', out)
    out = run_script(monkeypatch, capsys, 'generate_diffusion.py', f'--out_dir={checkpoints["block"]}', '--start=ab',
                     '--num_samples=1', '--length=20', '--device=cpu')
    assert '(confidence, order left_to_right, commit schedule)' in out


@pytest.mark.parametrize('sampler', ['refine', 'confidence'])
def test_generate_template_and_trajectory(checkpoints, monkeypatch, capsys, tmp_path, sampler):
    page = tmp_path / 't.html'
    out = run_script(monkeypatch, capsys, 'generate_diffusion.py', f'--out_dir={checkpoints["diffusion"]}', '--device=cpu',
                     '--template=romeo:[MASK*6]\\njuliet:[MASK]x', f'--sampler={sampler}',
                     '--max_steps=4' if sampler == 'refine' else '--steps=3', # each sampler takes only its own options
                     '--num_samples=2', f'--trajectory={page}', f'--output={tmp_path / "s.txt"}', '--show_steps=True')
    for s in read_samples(tmp_path / 's.txt'):
        assert len(s) == 22 and s.startswith('romeo:') and s[12:20] == '\njuliet:' and s[-1] == 'x'
    assert 'step 1: ' in out and '\x1b' not in out # shown as a log, no colour: stdout is no terminal
    passes = int(re.search(r'(\d+) forward passes', out).group(1))
    text = page.read_text(encoding='utf-8')
    assert 'diff&lt;&amp;&quot;x' in text and 'diff<' not in text # the checkpoint's name, escaped
    assert 'http' not in text.replace('http-equiv', '') # self-contained
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S).group(1))
    assert len(data['frames']) == passes + 1 # the start and every step
    assert data['frames'][-1].count(data['mask']) == 0
    assert sum('fixed' not in states.split() for states in data['states'][-1]) == 7 # the placeholders


@pytest.mark.parametrize('kind', ['block', 'diffusion'])
@pytest.mark.parametrize('sampler', ['refine', 'confidence'])
def test_generate_text_longer_than_block_size(checkpoints, monkeypatch, capsys, tmp_path, kind, sampler):
    """--length past block_size (32): a block model slides its context block by block, a
    full-sequence model window by window; the page shows which positions are written and cached."""
    page = tmp_path / 't.html'
    out = run_script(monkeypatch, capsys, 'generate_diffusion.py', f'--out_dir={checkpoints[kind]}', '--device=cpu',
                     '--start=ab', '--length=90', f'--sampler={sampler}',
                     *(['--steps=3', '--commit=threshold'] if sampler == 'confidence' else ['--max_steps=3']),
                     '--num_samples=2', f'--trajectory={page}', f'--output={tmp_path / "s.txt"}', '--show_steps=True')
    samples = read_samples(tmp_path / 's.txt')
    assert len(samples) == 2 and all(len(s) == 90 and s.startswith('ab') and set(s) <= set(CHARS) for s in samples)
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page.read_text(encoding='utf-8'), re.S).group(1))
    spans, cached = data['spans'][1:], data['cached'][1:]
    if kind == 'block':
        assert {e - s for s, e in spans} == {8, 90 % 8} and max(cached) == 32 - 8 and 'cached' in out
    else:
        assert {e - s for s, e in spans} == {32} and set(cached) == {0}
    assert spans[-1][1] == 90 and data['frames'][-1].count(data['mask']) == 0
    assert 'overflow-wrap: anywhere' in page.read_text(encoding='utf-8') # a run of masks wraps in the page


def test_generate_proofread(checkpoints, monkeypatch, capsys, tmp_path):
    text = 'the quick brown fox'
    out = run_script(monkeypatch, capsys, 'generate_diffusion.py', f'--out_dir={checkpoints["diffusion"]}', '--device=cpu',
                     f'--proofread={text}', '--steps=3', '--num_samples=2', f'--output={tmp_path / "s.txt"}')
    assert re.search(rf'flagged \d+ of {len(text)} tokens', out)
    assert all(len(s) == len(text) for s in read_samples(tmp_path / 's.txt'))
    # by default the detector's threshold is tuned on the dataset's val text, and said
    threshold = float(re.search(r"flagging tokens with p\(\[WRONG\]\) > ([\d.]+): the F1-best threshold on .*'s val text "
                                r"with 5% of its tokens substituted", out).group(1))
    assert 0 < threshold < 1


def test_generate_proofread_without_val_data_says_what_to_do(checkpoints, monkeypatch, capsys):
    def missing(dataset, split):
        raise UserError(f"no {split} data at data/{dataset}/{split}.bin: run python data/{dataset}/prepare.py first")
    monkeypatch.setattr(loading, 'load_split', missing)
    with pytest.raises(UserError, match=re.escape("prepare.py first; or give --wrong_threshold (a p([WRONG]) in (0, 1), "
                                                  "or 'argmax'), which is otherwise tuned on that text")):
        run_script(monkeypatch, capsys, 'generate_diffusion.py', f'--out_dir={checkpoints["diffusion"]}', '--device=cpu',
                   '--proofread=the fox')


@pytest.mark.parametrize('args, message', [
    (['--start=abc', '--length=3'], 'leaves nothing to write'),
    (['--start=ABC'], "characters 'ABC' are not in"),
    (['--start=ab', '--template=[MASK]'], 'set only one of'),
    (['--proofread=ab', '--length=3'], 'does not go with --proofread'),
    (['--template=abc[MASK*0]'], 'nothing to fill in'),
    (['--start=FILE:/nonexistent/prompt.txt'], 'no file at /nonexistent/prompt.txt'),
    (['--proofread=' + 'a' * 40], 'proofread it in parts'),
    (['--sampler=refine', '--order=random'], '--order works with --sampler=confidence, not --sampler=refine'),
    (['--sampler=confidence', '--max_steps=4'], '--max_steps works with --sampler=refine, not --sampler=confidence'),
    (['--sampler=speculative', '--commit=threshold'], '--commit works with --sampler=confidence, not --sampler=speculative'),
    (['--trajectory=t.txt'], 'ending in .html'),
])
def test_generate_user_errors(checkpoints, monkeypatch, capsys, args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run_script(monkeypatch, capsys, 'generate_diffusion.py', f'--out_dir={checkpoints["diffusion"]}', '--device=cpu', *args)


def test_generate_refuses_an_ar_checkpoint_in_one_line(checkpoints):
    r = run_subprocess('generate_diffusion.py', f'--out_dir={checkpoints["gpt2"]}', '--device=cpu')
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.strip().count('\n') == 0 and "holds a 'gpt2' model" in r.stderr and 'sample.py' in r.stderr


@pytest.mark.parametrize('content, message', [(None, 'no checkpoint at'), (b'not a checkpoint', 'cannot be read')])
def test_generate_missing_or_corrupt_checkpoint(tmp_path, monkeypatch, capsys, content, message):
    if content is not None:
        (tmp_path / loading.CHECKPOINT_NAME).write_bytes(content)
    with pytest.raises(UserError, match=message):
        run_script(monkeypatch, capsys, 'generate_diffusion.py', f'--out_dir={tmp_path}', '--device=cpu')


@pytest.mark.parametrize('use_kv_cache', [True, False])
def test_sample_ar(checkpoints, monkeypatch, capsys, use_kv_cache):
    out = run_script(monkeypatch, capsys, 'sample.py', f'--out_dir={checkpoints["gpt2"]}', '--device=cpu', '--start=ab',
                     '--num_samples=2', '--max_new_tokens=10', f'--use_kv_cache={use_kv_cache}')
    out = ''.join(line for line in out.splitlines(keepends=True) if not line.startswith('Overriding'))
    samples = out.split('---------------\n')
    assert len(samples) == 3 and all(s.startswith('ab') for s in samples[:2])
    assert re.search(r'2 samples of 10 new tokens in .* tokens/s', samples[2])


def test_sample_refuses_a_diffusion_checkpoint_in_one_line(checkpoints):
    r = run_subprocess('sample.py', f'--out_dir={checkpoints["diffusion"]}', '--device=cpu')
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.strip().count('\n') == 0 and 'generate_diffusion.py' in r.stderr
