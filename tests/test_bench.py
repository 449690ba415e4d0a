"""bench.py end to end on tiny checkpoints (random-init ones saved in train.py's format, and a
block diffusion model trained by train.py for two iterations) on the tiny char dataset of
conftest.py and a tiny BPE dataset, with tiny settings; its training speed in this process (what
it times); and the metrics bench.py adds."""
import importlib
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch

import diffusion
import sampling
from conftest import ROOT, _tiny_text
from configurator import script_defaults
from loading import (chars_per_token, get_batch, load_checkpoint, load_split, load_tokenizer, model_from_checkpoint,
                     save_checkpoint)
from metrics import best_threshold, detection_prf, judge_nll_per_char, judge_token_nlls
from model import GPT, GPTConfig
from test_bpe import VOCAB as BPE_VOCAB, prepare as prepare_bpe

TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, bias=False, dropout=0.0)


def save_tiny(out_dir, dataset, vocab, model_type, loss_type='seed', pos_encoding='rope', diffusion_block=0):
    """A random-init checkpoint with every key train.py's save() writes."""
    vocab_size = vocab + 2 if model_type == 'diffusion' else vocab # the words, then [MASK] and [WRONG], as train.py's
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, vocab_size=vocab_size, model_type=model_type, pos_encoding=pos_encoding,
                          diffusion_block=diffusion_block))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    config = dict(dataset=dataset, model_type=model_type, loss_type=loss_type)
    rng = {'data': [torch.Generator().get_state()], 'noise': [torch.Generator().get_state()],
           'torch': [torch.get_rng_state()], 'cuda': None}
    save_checkpoint({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'model_args': asdict(model.config),
                     'iter_num': 0, 'best_val_loss': 1e9, 'config': config, 'rng': rng}, str(out_dir))
    return str(out_dir)


@pytest.fixture(scope='module')
def bpe_dataset(tmp_path_factory):
    """The name of a BPE dataset (data/shakespeare_bpe/prepare.py) of the tiny text under data/, removed afterwards."""
    source = tmp_path_factory.mktemp('bpe_text') / 'input.txt'
    source.write_text(_tiny_text(), encoding='utf-8')
    name = f'_test_bench_bpe_{uuid.uuid4().hex[:8]}'
    try:
        prepare_bpe(f'--input={source}', f'--vocab_size={BPE_VOCAB}', f'--out_dir={ROOT / "data" / name}')
        yield name
    finally:
        shutil.rmtree(ROOT / 'data' / name, ignore_errors=True)


@pytest.fixture(scope='module')
def checkpoints(tiny_dataset, bpe_dataset, tmp_path_factory, run_train, tiny_args):
    name, meta = tiny_dataset
    root = tmp_path_factory.mktemp('bench')
    # a trained block diffusion model (BD3-LM, blocks of 4 tokens, its clean stream also an AR model, trained on the
    # bound itself): train.py's own checkpoint, its evals on the val batches of the bench run below (eval_batches=1,
    # batch_size=2)
    r = run_train(*tiny_args, '--model_type=diffusion', '--loss_type=elbo', '--loss_weighting=elbo', '--diffusion_block=4',
                  '--ar_loss_weight=1.0', '--max_iters=2', '--eval_interval=2', '--warmup_iters=1', '--lr_decay_iters=2',
                  '--batch_size=2', '--eval_iters=1', f"--out_dir={root / 'block'}")
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(ar=save_tiny(root / 'ar', name, meta['vocab_size'], 'gpt2', pos_encoding='learned'),
                seed=save_tiny(root / 'seed', name, meta['vocab_size'], 'diffusion', 'seed'),
                elbo=save_tiny(root / 'elbo', name, meta['vocab_size'], 'diffusion', 'elbo'),
                block=str(root / 'block'), root=root, block_log=r.stdout, ar_dataset=name,
                # an AR and a block diffusion model (blocks of 4) on the BPE: other tokens, the same char judge
                bpe_ar=save_tiny(root / 'bpe_ar', bpe_dataset, BPE_VOCAB, 'gpt2'),
                bpe_block=save_tiny(root / 'bpe_block', bpe_dataset, BPE_VOCAB, 'diffusion', 'elbo', diffusion_block=4),
                bpe_dataset=bpe_dataset,
                # trained on the dataset as it was before a new prepare.py run added a character
                stale=save_tiny(root / 'stale', name, meta['vocab_size'] - 1, 'diffusion'))


def run_bench(*args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, 'bench.py', '--device=cpu', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def table(results, title):
    """The rows of a markdown table of results.md, as lists of stripped cells, header first."""
    text = results.split(f'## {title}\n')[1].split('\n## ')[0]
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in text.splitlines()
            if line.startswith('| ')]


SAMPLERS = tuple(sampling.PRESETS) # every preset; 'threshold' adapts its passes, capped at the largest step count
MATCH_TOLERANCE = 0.05 # the tests' band: wide, since 2 samples of 12 tokens give a noisy entropy


@pytest.fixture(scope='module')
def bench(checkpoints):
    """One bench.py run on the tiny checkpoints: (CompletedProcess, results.md text, out folder)."""
    out = checkpoints['root'] / 'results'
    r = run_bench(f"--ar_dir={checkpoints['ar']}", f"--extra_ar_dirs={checkpoints['bpe_ar']}",
                  f"--diffusion_dirs={checkpoints['seed']},{checkpoints['elbo']},{checkpoints['block']},"
                  f"{checkpoints['bpe_block']}", f'--out={out}', '--num_samples=2', '--sample_length=12', '--step_counts=2,4',
                  f"--samplers={','.join(SAMPLERS)}", '--match_step_counts=4', '--match_tries=3', f'--match_tolerance={MATCH_TOLERANCE}', '--eval_batches=1',
                  '--batch_size=2', '--proofread_rates=0.1,0.25', '--proofread_steps=2', '--speed_iters=1')
    assert r.returncode == 0, r.stderr
    return r, (out / 'results.md').read_text(encoding='utf-8'), out


def test_bench_end_to_end(bench, checkpoints):
    r, results, out = bench
    char, bpe = checkpoints['ar_dataset'], checkpoints['bpe_dataset']
    dataset_of = {'ar': char, 'seed': char, 'elbo': char, 'block': char, 'bpe_ar': bpe, 'bpe_block': bpe}
    assert table(results, 'Validation loss')[0][:9] == ['model', 'diffusion block', 'objective', 'nats/token',
                                                        'bits/token', 'nats/char', 's.e./char', 'bits/char', 'vs AR']
    # one val batch: a bound without a standard error, shown as '-' like AR's
    assert {row[6] for row in table(results, 'Validation loss')[1:]} == {'-'}
    assert [row[:3] for row in table(results, 'Validation loss')[1:]] == [
        ['ar', '-', 'next token'], ['bpe_ar', '-', 'next token'], ['seed', 'full', 'seed'], ['elbo', 'full', 'elbo'],
        ['block', '4', 'elbo'], ['bpe_block', '4', 'elbo']]

    # fixed temperature: the val text of each dataset, the AR models, and every model x sampler x step
    # count (the adaptive samplers once, capped at the largest count); a block model gets its steps per block
    quality = table(results, 'Sample quality at a fixed temperature')
    assert quality[0] == ['model', 'diffusion block', 'sampler', 'steps', 'forward passes', 'chars/pass',
                          'judge nats/char', 'entropy', 'repeated 4-grams', 'newlines', 'copied 8-grams']
    assert [row[:3] for row in quality[1:5]] == [[f'val text {char}', '-', 'reference'],
                                                 [f'val text {bpe}', '-', 'reference'],
                                                 ['ar', '-', 'autoregressive'], ['bpe_ar', '-', 'autoregressive']]
    for name in ('seed', 'elbo', 'block', 'bpe_block'):
        steps = {}
        for model, block, sampler, step, passes, chars_per_pass, nll, entropy, rep, newlines, copied in quality[5:]:
            if model == name:
                steps.setdefault(sampler, []).append(step)
                assert 0 < float(nll) < 10 and 0 <= float(rep) <= 1 and 0 <= float(newlines) <= 1 and int(passes) >= 1
                assert 0 <= float(copied) <= 1
                if dataset_of[name] == char: # 11 characters written per sample
                    assert float(chars_per_pass) == pytest.approx(11 / int(passes), abs=0.005)
        if name in ('block', 'bpe_block'): # 2 or 4 passes over 11 tokens: one per block of 4
            assert steps == {s: ['<=4 (1/block)'] if s == 'threshold' else ['2 (1/block)', '4 (1/block)']
                             for s in SAMPLERS}
        else:
            assert steps == {s: ['<=4'] if s == 'threshold' else ['2', '4'] for s in SAMPLERS}
    assert all(int(row[4]) >= 3 for row in quality[5:] if row[0] == 'block') # 12 tokens: 3 blocks, one by one
    assert quality[3][4:6] == ['11', '1.00'] # char AR: a character per pass

    # matched diversity: every generator once, at the entropy of its dataset's val text or marked
    matched = table(results, 'Sample quality at matched diversity')
    header = matched[0]
    assert header == ['model', 'diffusion block', 'sampler', 'steps', 'temperature', 'tries', 'judge nats/char',
                      'vs AR', 'entropy', 'repeated 4-grams', 'newlines', 'copied 8-grams', 'forward passes', 'chars/pass',
                      'matched']
    rows = [dict(zip(header, row)) for row in matched[1:]]
    assert [row['model'] for row in rows[:2]] == [f'val text {char}', f'val text {bpe}']
    assert all(row['matched'] == 'reference' for row in rows[:2])
    targets = {char: float(rows[0]['entropy']), bpe: float(rows[1]['entropy'])}
    assert sorted((row['model'], row['sampler']) for row in rows[2:]) == sorted(
        [('ar', 'autoregressive'), ('bpe_ar', 'autoregressive')]
        + [(m, s) for m in ('seed', 'elbo', 'block', 'bpe_block') for s in SAMPLERS])
    for row in rows[2:]:
        target = targets[dataset_of[row['model']]]
        assert row['matched'] in ('yes', 'not matched')
        if row['matched'] == 'yes': # interpolated at the target between two in-band tries, or one try very near it
            assert abs(float(row['entropy']) - target) <= MATCH_TOLERANCE * target / 20 + 1e-3
        assert 0.3 <= float(row['temperature']) <= 2.5 and 1 <= int(row['tries']) <= 3
    # sorted by judge NLL, the matched rows first
    order = [(row['matched'] != 'yes', float(row['judge nats/char'])) for row in rows[2:]]
    assert order == sorted(order)
    ar = next(row for row in rows if row['model'] == 'ar')
    assert float(ar['vs AR']) == 1.0

    # proofreading: every AR model as a detector with its threshold, every diffusion model's [WRONG] head by
    # its argmax and by its tuned threshold, at each rate
    header, *cells = table(results, 'Proofreading')
    proofreading = [dict(zip(header, row)) for row in cells]
    labels = [row['model'] for row in proofreading]
    assert [re.sub(r' (AR p<|p\(\[WRONG\]\)>)\S+$', r' \1', label) for label in labels] == [
        'ar AR p<', 'ar AR p<', 'bpe_ar AR p<', 'bpe_ar AR p<'] + [
        label for name in ('seed', 'elbo', 'block', 'bpe_block') for _ in range(2) for label in (name, f'{name} p([WRONG])>')]
    assert all(0 <= float(re.split(r'p<|\)>', label)[1]) <= 1 for label in labels if '<' in label or ')>' in label)
    for row in proofreading:
        assert all(0 <= float(row[key]) <= 1 for key in ('precision', 'recall', 'F1'))
        # a perfect detector's rewrite touches only substituted positions: it cannot add errors
        assert 0 <= float(row['after, perfect detection']) <= float(row['error rate before'])
    # the models of one dataset and block_size proofread the same corrupted batches
    before = {(row['model'].split()[0], row['substituted']): row['error rate before'] for row in proofreading}
    for rate in ('10%', '25%'):
        assert before['ar', rate] == before['seed', rate] == before['elbo', rate]
        assert before['bpe_ar', rate] == before['bpe_block', rate]
    training = table(results, 'Training speed')
    assert training[0] == ['model', 'diffusion block', 'objective', 'parameters', 'ms/iteration', 'tokens/s', 'vs AR']
    assert [row[:3] for row in training[1:]] == [['AR', '-', 'next token'], ['diffusion', 'full', 'elbo'],
                                                 ['block diffusion', '4', 'elbo']]

    # generation speed: every generator at its best matched settings, then every block model at 4 and 2
    # passes per block, left to right, then the block model with a causal clean stream, speculative
    header, *cells = table(results, 'Generation speed')
    assert header == ['generator', 'diffusion block', 'sampler', 'steps', 'temperature', 'forward passes',
                      'chars/pass', 'tokens/s batch 1', 'chars/s batch 1', 'tokens/s batch 2', 'chars/s batch 2',
                      'vs AR batch 1', 'vs AR batch 2']
    generation = [dict(zip(header, row)) for row in cells]
    assert [row['generator'] for row in generation] == ['ar', 'bpe_ar', 'seed', 'elbo', 'block', 'bpe_block',
                                                        'block', 'block', 'bpe_block', 'bpe_block', 'block']
    assert [(row['sampler'], row['steps'], row['forward passes']) for row in generation[6:10]] == [
        ('left_to_right', '4/block', '11 / 11'), ('left_to_right', '2/block', '6 / 6')] * 2
    speculative = generation[10] # 11 tokens in 3 blocks: at least one pass per block, at most one per token
    assert speculative['sampler'] == 'speculative' and speculative['steps'] == '-'
    assert all(3 <= int(passes) <= 11 for passes in speculative['forward passes'].split(' / '))
    assert generation[0]['vs AR batch 1'] == generation[0]['vs AR batch 2'] == '1.00'
    for row in generation:
        speeds = [float(row[key].replace(',', '')) for key in header[7:11]]
        assert all(speed > 0 for speed in speeds)
        if dataset_of[row['generator']] == char: # a token is a character
            assert row['tokens/s batch 1'] == row['chars/s batch 1'] and row['tokens/s batch 2'] == row['chars/s batch 2']

    assert 'judge NLL' in r.stdout # the tables are printed too
    assert (out / 'samples.txt').is_file()
    try:
        import matplotlib # noqa: F401
        assert all((out / f).is_file() for f in ('sample_quality.png', 'matched_diversity.png', 'proofreading.png'))
    except ImportError:
        assert 'matplotlib is not installed' in (out / 'results.md').read_text(encoding='utf-8')


def test_validation_loss_values(bench, checkpoints):
    """The likelihood table: the AR NLL and every bound recomputed here on the same batches and noise
    seeds, bits = nats / ln 2, `vs AR` = bound / AR NLL; and the block model's bound is train.py's
    last `val bound` of the same checkpoint."""
    _, results, _ = bench
    header, *cells = table(results, 'Validation loss')
    rows = {row[0]: dict(zip(header, row)) for row in cells}
    seed = 1337 # bench.py's default

    def batches(model):
        g = torch.Generator().manual_seed(seed)
        return [get_batch(load_split(checkpoints['ar_dataset'], 'val'), 2, model.config.block_size, g, 'cpu')]

    ar = model_from_checkpoint(load_checkpoint(checkpoints['ar'])).eval()
    with torch.no_grad():
        ar_nll = sum(ar(x, y)[1].item() for x, y in batches(ar)) / len(batches(ar))
    expected = {'ar': ar_nll}
    for name in ('seed', 'elbo', 'block'):
        model = model_from_checkpoint(load_checkpoint(checkpoints[name])).eval()
        expected[name] = diffusion.elbo_bound(model, [x for x, _ in batches(model)], torch.Generator().manual_seed(seed + 1))[0]
    for name, nats in expected.items():
        row = rows[name]
        assert float(row['nats/token']) == pytest.approx(nats, abs=6e-5)
        assert float(row['bits/token']) == pytest.approx(nats / math.log(2), abs=2e-4)
        assert float(row['vs AR']) == pytest.approx(nats / ar_nll, abs=6e-4) # above 1 when worse than AR
    evals = re.findall(r'val loss ([\d.]+), .*val bound ([\d.]+) nats/token.*AR-mode val loss ([\d.]+)', checkpoints['block_log'])
    assert len(evals) == 2 and rows['block']['nats/token'] == evals[-1][1]
    # trained on the bound itself plus the next-token loss of the clean stream (ar_loss_weight=1): train.py's val
    # loss (the training pass, two-stream) is its val bound (elbo_bound: each noisy block next to the clean blocks
    # before it) plus its AR-mode val loss (the clean stream alone, on the same batches) at every eval
    assert all(float(loss) == pytest.approx(float(bound) + float(ar), abs=2e-4) for loss, bound, ar in evals)


def test_training_speed_times_the_step_of_train_py(checkpoints, monkeypatch):
    """The training speed is that of diffusion.train_step, the optimizer step train.py runs, with train.py's
    GradScaler and default settings (the ELBO objective, one micro-batch): on fresh AR, full-sequence and block
    models of the first diffusion checkpoint's architecture, the [MASK] bias controller included."""
    monkeypatch.setattr(sys, 'argv', ['bench.py', '--device=cpu']) # bench.py reads its settings when imported
    bench = importlib.import_module('bench')
    calls, train_step = [], diffusion.train_step

    def spy(model, optimizer, scaler, next_batch, generator, it, settings, ctx, world_size=1):
        calls.append((model, scaler, settings, next_batch()[0].shape))
        return train_step(model, optimizer, scaler, next_batch, generator, it, settings, ctx, world_size)
    monkeypatch.setattr(diffusion, 'train_step', spy)
    loaded = {name: load_checkpoint(checkpoints[name]) for name in ('elbo', 'block')} # block_size 16, and blocks of 4
    models = [(name, model_from_checkpoint(checkpoint), checkpoint) for name, checkpoint in loaded.items()]
    data = {checkpoints['ar_dataset']: SimpleNamespace(val=load_split(checkpoints['ar_dataset'], 'val'))}
    rows, arch = bench.training_speed(models, data, 2, 3, 1337, 'cpu', bench.ctx, 'cpu', 'float32')
    assert [(r['label'], r['block'], r['objective']) for r in rows] == [
        ('AR', '-', 'next token'), ('diffusion', 'full', 'elbo'), ('block diffusion', 4, 'elbo')]
    assert arch['block_size'] == 16 and all(r['seconds'] > 0 and r['tokens_per_s'] > 0 for r in rows)
    assert len(calls) == 3 * (2 + 3) # 2 untimed steps and 3 timed ones per model
    expected = dict(script_defaults(os.path.join(ROOT, 'train.py')), loss_type='elbo', gradient_accumulation_steps=1)
    for model, scaler, settings, shape in calls:
        assert isinstance(scaler, torch.amp.GradScaler) and not scaler.is_enabled() # float32: as train.py builds it
        assert settings == expected and settings['grad_clip'] > 0 and shape == (2, 16)
    models_timed = list(dict.fromkeys(model for model, *_ in calls))
    assert [m.config.model_type for m in models_timed] == ['gpt2', 'diffusion', 'diffusion']
    assert all(m.mask_logit_bias.item() != 0 for m in models_timed[1:]) # the controller moved the [MASK] bias


@pytest.mark.parametrize('args, message', [
    (lambda c: [f"--ar_dir={c['seed']}", f"--diffusion_dirs={c['elbo']}"], 'pass it in diffusion_dirs'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['ar']}"], 'pass it in ar_dir'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['seed']}", '--sample_length=17'], 'sample_length=17'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['seed']}", '--samplers=refine,bogus'], "unknown samplers ['bogus']"),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['seed']}", '--match_step_counts=0'], 'must be positive'),
    # the sampler's own rules (sampling.check_options)
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['seed']}", '--threshold=0'], 'threshold must be in (0, 1]'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--extra_ar_dirs={c['ar']}", f"--diffusion_dirs={c['seed']}"],
     'ar_dir and extra_ar_dirs name a checkpoint twice'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['stale']}"], 'the data was prepared again'),
    (lambda c: [f"--ar_dir={c['ar']}", f"--diffusion_dirs={c['seed']}", '--min_temperature=3'], 'min_temperature'),
])
def test_bench_user_errors(checkpoints, args, message):
    r = run_bench(*args(checkpoints), f"--out={checkpoints['root'] / 'bad'}")
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_per_char_columns(bench, checkpoints):
    """Every loss per character is the loss per token / the characters per token of the model's
    dataset's val split (1 for chars, more for the BPE); `vs AR` compares per character."""
    _, results, _ = bench
    char, bpe = checkpoints['ar_dataset'], checkpoints['bpe_dataset']
    cpt = {name: chars_per_token(dataset, 'val') for name, dataset in
           [('ar', char), ('seed', char), ('elbo', char), ('block', char), ('bpe_ar', bpe), ('bpe_block', bpe)]}
    assert cpt['ar'] == 1.0 and cpt['bpe_ar'] > 1.2
    assert {row[0]: row[3] for row in table(results, 'Models')[1:]} == {name: f"{c:.3f}" for name, c in cpt.items()}
    header, *cells = table(results, 'Validation loss')
    rows = {row[0]: dict(zip(header, row)) for row in cells}
    ar_per_char = float(rows['ar']['nats/char'])
    for name, row in rows.items():
        nats, per_char = float(row['nats/token']), float(row['nats/char'])
        assert per_char == pytest.approx(nats / cpt[name], abs=1e-4) # both printed to 4 decimals
        assert float(row['bits/char']) == pytest.approx(per_char / math.log(2), abs=2e-4)
        assert float(row['vs AR']) == pytest.approx(per_char / ar_per_char, abs=1e-3)
        for rate in (15, 50, 90):
            if name.endswith('ar'): # an AR model has no masked CE
                assert row[f'masked CE {rate}%'] == row[f'masked CE/char {rate}%'] == '-'
            else:
                assert float(row[f'masked CE/char {rate}%']) == pytest.approx(
                    float(row[f'masked CE {rate}%']) / cpt[name], abs=1.1e-3)


def test_judge_scores_the_val_text_per_character(bench, checkpoints):
    """The val text rows by hand: each text decoded by its own tokenizer, stripped of what the char
    judge cannot encode, re-encoded with the judge's chars and scored alone (no padding); the NLL summed
    over the texts / their characters after the first. For char text it is the per-token NLL of the ids."""
    _, results, _ = bench
    judge = model_from_checkpoint(load_checkpoint(checkpoints['ar'])).eval()
    char, bpe = checkpoints['ar_dataset'], checkpoints['bpe_dataset']
    encode = load_tokenizer(char)[0]
    known = set(load_tokenizer(char)[1](list(range(judge.config.vocab_size))))
    rows = {row[0]: row for row in table(results, 'Sample quality at a fixed temperature')[1:]}
    for dataset in (char, bpe):
        reference = get_batch(load_split(dataset, 'val'), 2, 12, torch.Generator().manual_seed(1337 + 3), 'cpu')[0]
        texts = [''.join(c for c in load_tokenizer(dataset)[1](row) if c in known) for row in reference.tolist()]
        total = sum(judge_token_nlls(judge, torch.tensor([encode(text)])).sum().item() for text in texts)
        nll = float(rows[f'val text {dataset}'][6])
        decoded = [load_tokenizer(dataset)[1](row) for row in reference.tolist()]
        assert float(rows[f'val text {dataset}'][9]) == pytest.approx(
            sum(text.count('\n') for text in decoded) / sum(map(len, decoded)), abs=6e-4)
        assert nll == pytest.approx(total / sum(len(text) - 1 for text in texts), abs=6e-4)
        if dataset == char:
            assert nll == pytest.approx(judge_token_nlls(judge, reference).mean().item(), abs=6e-4)


class PairJudge(torch.nn.Module):
    """A judge whose next-token distribution depends on the previous token only (a fixed random
    table), over a tokenizer of characters ('ab...') or of character pairs."""

    def __init__(self, vocab, block_size):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)
        self.log_probs = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)).log_softmax(-1)

    def forward(self, idx, targets=None):
        assert idx.size(1) <= self.config.block_size # never given more than its context
        return self.log_probs[idx], None


@pytest.mark.parametrize('unit', [1, 2])
def test_judge_nll_per_char_by_hand(unit):
    """Texts of different lengths under a judge of 1- or 2-character tokens: the sum of the NLLs of
    every token after the first, divided by the characters they hold (not by the tokens)."""
    letters = 'abc'
    tokens = [a + b for a in letters for b in letters] if unit == 2 else list(letters)
    tokens += list(letters) * (unit == 2) # an odd text ends with one character
    ids = {t: i for i, t in enumerate(tokens)}
    encode = lambda text: [ids[text[i:i + unit]] for i in range(0, len(text), unit)]
    decode = lambda seq: ''.join(tokens[i] for i in seq)
    judge = PairJudge(len(tokens), block_size=3) # shorter than the texts: sliding windows
    texts = ['abcabcacb', 'ccbaab', 'bacabbacca']
    nll, chars = 0.0, 0
    for text in texts:
        seq = encode(text)
        nll -= sum(judge.log_probs[a, b].item() for a, b in zip(seq, seq[1:]))
        chars += len(text) - len(tokens[seq[0]])
    assert chars == sum(map(len, texts)) - len(texts) * unit
    assert judge_nll_per_char(judge, encode, decode, texts) == pytest.approx(nll / chars, rel=1e-6)


def test_judge_nll_per_char_equals_judge_nll_for_chars():
    torch.manual_seed(0)
    judge = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16)).eval()
    rows = torch.randint(0, 11, (3, 20))
    itos = 'abcdefghijk'
    texts = [''.join(itos[i] for i in row) for row in rows.tolist()]
    per_char = judge_nll_per_char(judge, lambda text: [itos.index(c) for c in text],
                                  lambda seq: ''.join(itos[i] for i in seq), texts)
    assert per_char == pytest.approx(judge_token_nlls(judge, rows).mean().item(), rel=1e-6)


def test_best_threshold_maximises_f1():
    # flag the k lowest scores: F1 = 2 hits / (k + 3) = 0.5, 0.8, 0.667, 0.857, 0.75, 0.667: k = 4,
    # the threshold halfway between the 4th and 5th score
    scores = torch.tensor([0.4, 0.1, 0.95, 0.2, 0.9, 0.3])
    truth = torch.tensor([True, True, False, True, False, False])
    threshold, f1 = best_threshold(scores, truth)
    assert threshold == pytest.approx(0.65) and f1 == pytest.approx(6 / 7)
    assert detection_prf(scores < threshold, truth)[2] == pytest.approx(f1)
    # a tie is flagged whole: not after the first 0.1 (F1 1.0), but after both (F1 2/3)
    assert best_threshold(torch.tensor([0.1, 0.1, 0.5]), torch.tensor([True, False, False])) == \
        pytest.approx((0.3, 2 / 3))
    # an infinite score is never flagged; nothing true: nothing flagged
    threshold, f1 = best_threshold(torch.tensor([0.2, float('inf')]), torch.tensor([True, True]))
    assert f1 == pytest.approx(2 / 3) and (torch.tensor([0.2, float('inf')]) < threshold).tolist() == [True, False]
    threshold, f1 = best_threshold(torch.tensor([0.3, 0.2]), torch.tensor([False, False]))
    assert f1 == 0 and not (torch.tensor([0.3, 0.2]) < threshold).any()
    # on random scores, no threshold does better
    g = torch.Generator().manual_seed(0)
    scores, truth = torch.rand(200, generator=g), torch.rand(200, generator=g) < 0.2
    threshold, f1 = best_threshold(scores, truth)
    assert max(detection_prf(scores < t, truth)[2] for t in scores.tolist() + [2.0]) == pytest.approx(f1)
