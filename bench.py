"""
The benchmark: autoregressive and diffusion checkpoints (full-sequence or block diffusion),
measured side by side on fixed seeds. Writes results.md (markdown tables), samples.txt and
PNG plots to --out, and prints the tables as it goes:
$ python bench.py --ar_dir=out-shakespeare-ar-cpu \\
    --diffusion_dirs=out-shakespeare-diffusion-elbo-cpu,out-shakespeare-block-cpu
The models may be trained on different datasets (tokenizers, e.g. characters and a BPE):
every loss is given per token and per character, which compares across tokenizers:
$ python bench.py --ar_dir=out-quickstart-ar --extra_ar_dirs=out-bpe-ar \\
    --diffusion_dirs=out-quickstart,out-bpe-block --samplers=left_to_right --step_counts=32,64,128
main() runs the stages in order: validation loss; sample quality under an AR judge at a
fixed temperature, then at matched diversity (the headline: each generator at the unigram
entropy of real text); proofreading ([WRONG] against an AR detector); training speed;
generation speed. results.md says how each table is measured (metrics.py writes the tables).
Everything but the timings is the same on every run with the same seed and device.
"""

import functools
import os
import re
import time
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import torch

from configurator import UserError, configure, note_for_ctrl_c, parse_list, require, require_range, script_defaults
import diffusion
import metrics
import sampling
from loading import (chars_per_token, get_batch, load_checkpoint, load_split, load_tokenizer, model_from_checkpoint,
                     read_meta, setup_device, timed)
from model import GPT, GPTConfig
from plots import write_plots
from progress import progress

# -----------------------------------------------------------------------------
ar_dir = 'out-shakespeare-ar-cpu' # the autoregressive checkpoint: the AR baseline (`vs AR`)
extra_ar_dirs = '' # more AR checkpoints, comma-separated, measured like ar_dir (e.g. on another tokenizer)
judge_dir = '' # the AR checkpoint that scores samples (on any dataset: it re-encodes the text); '' = ar_dir
diffusion_dirs = 'out-shakespeare-diffusion-cpu,out-shakespeare-diffusion-elbo-cpu' # comma-separated diffusion checkpoints
out = 'out-bench' # folder for results.md, samples.txt and the plots
device = 'auto' # 'auto' (cuda > mps > cpu), or 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto' # 'auto': bfloat16 on CUDA if supported else float16; float32 elsewhere
seed = 1337
# validation loss and proofreading
eval_batches = 20 # val batches, the same for every model of one block_size
batch_size = 16 # rows per val batch and per timed training iteration
# sample quality
num_samples = 16 # samples per generator, drawn as one batch (16 keeps the CPU run sane)
sample_length = 128 # tokens per sample, the first one given (a val token): at most every diffusion model's block_size
samplers = 'refine,confidence,ancestral,left_to_right,threshold' # diffusion samplers (sampling.PRESETS), comma-separated
step_counts = '8,16,32,64,128' # denoising passes over a whole sample, comma-separated; a block model gets
                               # max(1, round(steps * block / (sample_length - 1))) per block; threshold
                               # adapts its passes: it runs once, capped at the largest count
threshold = 0.9 # the threshold sampler commits every proposal more probable than this (at least one per pass)
temperature = 1.0 # of every generator in the fixed-temperature table, and the first try of the matched search
repetition_n = 4 # repetition is the fraction of repeated n-grams of this n
copy_source_tokens = 2_000_000 # copied 8-grams are looked up in this many tokens from the start of the training split
# sample quality at matched diversity
match_step_counts = '32,128' # step counts (as step_counts) of the matched-diversity search, comma-separated
match_tolerance = 0.02 # matched: two tries within this fraction of the val text's unigram entropy, one on each
                        # side; the metrics are interpolated between them at that entropy exactly
min_temperature = 0.3 # the matched search keeps the temperature in [min_temperature, max_temperature]
max_temperature = 2.5
match_tries = 8 # generations per generator in the search, at most
# proofreading
proofread_rates = '0.02,0.05,0.1' # fractions of val tokens replaced by random other tokens, comma-separated
proofread_steps = 8 # confidence_sample steps that rewrite the flagged tokens
proofread_temperature = 0.0 # 0 = argmax: a correction should be the likeliest word
# speed
speed_iters = 10 # timed training iterations per model, after 2 untimed ones
speed_block_passes = '4,2' # passes per block at which every block model's generation is timed, comma-separated
# -----------------------------------------------------------------------------
config = configure(globals())
# -----------------------------------------------------------------------------
require_range('proofread_temperature', proofread_temperature, low=0)
require_range('seed', seed, low=0, high=2**63, high_open=True, integer=True)
require_range('match_tolerance', match_tolerance, low=0, low_open=True)
require(out != '' and not os.path.isfile(out),
        f"out={out!r} is {'a file' if out else 'empty'}: give the folder for the results, e.g. --out=out-bench")
diffusion_dirs = parse_list(diffusion_dirs, str.strip, 'diffusion_dirs')
extra_ar_dirs = parse_list(extra_ar_dirs, str.strip, 'extra_ar_dirs') if extra_ar_dirs else []
samplers = parse_list(samplers, str.strip, 'samplers')
step_counts = parse_list(step_counts, int, 'step_counts')
match_step_counts = parse_list(match_step_counts, int, 'match_step_counts')
proofread_rates = parse_list(proofread_rates, float, 'proofread_rates')
speed_block_passes = parse_list(speed_block_passes, int, 'speed_block_passes')
judge_dir = judge_dir or ar_dir
require(set(samplers) <= set(sampling.PRESETS), f"unknown samplers {sorted(set(samplers) - set(sampling.PRESETS))}: "
        f"choose from {', '.join(sampling.PRESETS)}")
# every preset as (sampler, options), with this run's threshold where the sampler takes one
presets = {name: (kind, dict(options, **({'threshold': threshold} if 'threshold' in sampling.OPTIONS[kind] else {})))
           for name, (kind, options) in sampling.PRESETS.items()}
for name in samplers:
    try:
        sampling.check_options(*presets[name])
    except ValueError as e:
        raise UserError(f"sampler {name}: {e}") from None
# (a checkpoint in both lists is of the wrong kind in one: load_models() says which)
for key, dirs in (('diffusion_dirs', diffusion_dirs), ('ar_dir and extra_ar_dirs', [ar_dir, *extra_ar_dirs])):
    require(len(set(map(os.path.normpath, dirs))) == len(dirs), f"{key} name a checkpoint twice: {dirs}")
require(min(step_counts + match_step_counts + speed_block_passes) >= 1, f"step_counts, match_step_counts and "
        f"speed_block_passes must be positive, got {step_counts}, {match_step_counts} and {speed_block_passes}")
require(all(0 <= r < 1 for r in proofread_rates), f"proofread_rates must be fractions in [0, 1), got {proofread_rates}")
require(temperature > 0, f"temperature must be > 0 (AR sampling has no greedy mode here), got {temperature}")
require(0 < min_temperature < max_temperature,
        f"need 0 < min_temperature < max_temperature, got {min_temperature} and {max_temperature}")
require(min(eval_batches, batch_size, num_samples, repetition_n, proofread_steps, speed_iters, match_tries) >= 1,
        "eval_batches, batch_size, num_samples, repetition_n, proofread_steps, speed_iters and match_tries must all "
        "be at least 1")
device, device_type, dtype, ctx = setup_device(device, dtype)
settings = {key: globals()[key] for key in config} # as parsed and resolved: the tables quote them

# the presets that commit by a threshold set their own number of passes: their step count is only a cap
ADAPTIVE = {name for name, (_, options) in sampling.PRESETS.items() if options.get('commit') == 'threshold'}

# -----------------------------------------------------------------------------
# the models

def load_models(ar_dirs, judge_dir, diffusion_dirs, device):
    """(AR models, the judge, diffusion models), each model a (name, model in eval mode, checkpoint),
    the AR baseline first. A checkpoint is named by its folder, or by its path if two folders share a
    name; one of the wrong kind names the option it belongs in. Every model must read the token ids of
    its dataset (its words, the ids below [MASK] and [WRONG]): as many as the dataset's meta.json says,
    else as its other models."""
    paths = list(dict.fromkeys(os.path.normpath(d) for d in [*ar_dirs, judge_dir, *diffusion_dirs]))
    short = {p: os.path.basename(p) for p in paths}
    names = short if len(set(short.values())) == len(paths) else {p: p for p in paths}

    def named(out_dir, model_type, key):
        checkpoint = load_checkpoint(out_dir, device, key)
        found = checkpoint['model_args'].get('model_type', 'gpt2')
        if found != model_type:
            raise UserError(f"{key}: {out_dir} holds a '{found}' model, not a '{model_type}' one: pass it in "
                            f"{'diffusion_dirs' if found == 'diffusion' else 'ar_dir, extra_ar_dirs or judge_dir'}")
        return names[os.path.normpath(out_dir)], model_from_checkpoint(checkpoint, device).eval(), checkpoint

    ar_models = [named(ar_dirs[0], 'gpt2', 'ar_dir')] + [named(d, 'gpt2', 'extra_ar_dirs') for d in ar_dirs[1:]]
    judge = ar_models[0] if judge_dir == ar_dirs[0] else named(judge_dir, 'gpt2', 'judge_dir')
    models = [named(d, 'diffusion', 'diffusion_dirs') for d in diffusion_dirs]
    words = {}
    for name, model, checkpoint in [judge] + ar_models + models:
        data, meta = dataset(checkpoint), read_meta(dataset(checkpoint))
        if words.setdefault(data, meta['vocab_size'] if meta else model.config.words) != model.config.words:
            raise UserError(f"{name} has {model.config.words} token ids but the dataset '{data}' has {words[data]} "
                            f"({'its meta.json' if meta else 'another of its models'}): the data was prepared again "
                            "after the model was trained; retrain it, or prepare the data it was trained on")
    return ar_models, judge, models


def dataset(checkpoint):
    return checkpoint['config']['dataset']


def val_batches(tokens, block_size, count, batch_size, batch_seed, device):
    """count batches (x, y) of a dataset's val tokens, drawn with a fixed seed: the same for every model
    of one block_size."""
    g = torch.Generator().manual_seed(batch_seed)
    return [get_batch(tokens, batch_size, block_size, g, device) for _ in range(count)]

# -----------------------------------------------------------------------------
# 1. validation loss

def validation_loss(ar_models, models, data, eval_batches, batch_size, seed, device, ctx):
    """The rows of metrics.validation_table: the AR val NLL, and every diffusion model's ELBO bound and
    masked CE (diffusion.val_metrics), on the same val batches for every model of one dataset and block_size."""
    masked = diffusion.MASKED_METRICS # the masked CE at each of diffusion.VAL_FRACTIONS
    rows = []
    for name, model, checkpoint in progress(ar_models + models, 'validation loss', 'model'):
        d = dataset(checkpoint)
        batches = val_batches(data[d].val, model.config.block_size, eval_batches, batch_size, seed, device)
        if model.config.model_type == 'gpt2':
            with torch.no_grad(), ctx:
                loss, error, masked_ce = np.mean([model(x, y)[1].item() for x, y in batches]), None, [None] * len(masked)
        else:
            found = diffusion.val_metrics(model, [x for x, _ in batches], seed, ctx)
            loss, error, masked_ce = found['bound'], found['bound_se'], [found[m] for m in masked]
        rows.append(dict(name=name, dataset=d, cpt=data[d].cpt, loss=loss, error=error, block=metrics.block_label(model),
                         objective=metrics.objective(checkpoint),
                         masked=dict(zip([m.removeprefix('masked') for m in masked], masked_ce))))
    return rows

# -----------------------------------------------------------------------------
# 2. sample quality: every generator (AR, or a diffusion model and a sampler) rewrites the rows of its
# dataset's reference after their first token, at a fixed temperature, then at matched diversity

def block_steps(model, steps, length):
    """Denoising passes per block that add up to about steps over a sample of length tokens (steps
    itself for a full-sequence model, which denoises the whole sample at once)."""
    block = model.denoising_block
    return steps if block is None else max(1, round(steps * block / (length - 1)))


def steps_label(model, sampler, steps, length):
    """A step count as the tables show it: '<=' for a cap, and the passes per block of a block model
    (steps '-': AR, or a block model at a number of passes per block)."""
    if steps == '-':
        return '-'
    label = f"<={steps}" if sampler in ADAPTIVE else str(steps)
    return label if model.denoising_block is None else f"{label} ({block_steps(model, steps, length)}/block)"


def sampler_steps(sampler, counts):
    """The step counts a sampler runs at: all of them, or the largest only when it is a cap."""
    return [max(counts)] if sampler in ADAPTIVE else counts


def sample(model, reference, sampler, steps, temp, per_block=None, *, presets, seed, ctx, device_type):
    """(tokens, forward passes, seconds) of one generator at temperature temp: every row of reference
    (B, L) rewritten after its first token, with a fixed seed (the same random numbers at every
    temperature). AR: model.generate with its KV cache. Diffusion: sampling.generate with the sampler
    and options of presets[sampler] (or the speculative sampler, whose drafts set its passes), block by
    block for a block model, in per_block passes per block if given, else block_steps. Only the
    generation itself is timed."""
    generator = torch.Generator(device=reference.device).manual_seed(seed + 4)
    prompt, length = reference[:, :1], reference.size(1)
    if model.config.model_type == 'gpt2':
        def run():
            return model.generate(prompt, length - 1, temperature=temp, generator=generator), length - 1
    else:
        masks = torch.full((len(prompt), length - 1), model.config.mask_token_id, device=prompt.device)
        x = torch.cat([prompt, masks], 1)
        if sampler == 'speculative': # no step count: its drafts set its passes
            kind, options = 'speculative', {}
        else:
            kind, options = presets[sampler]
            steps_key = 'max_steps' if 'max_steps' in sampling.OPTIONS[kind] else 'steps'
            options = {**options, steps_key: per_block or block_steps(model, steps, length)}

        def run():
            return sampling.generate(model, x, sampling.SAMPLERS[kind], temperature=temp, generator=generator,
                                     **options)
    with ctx:
        (tokens, passes), seconds = timed(run, device_type)
    return tokens, passes, seconds


def sample_quality(ar_models, models, data, judge, write, samplers, step_counts, match_step_counts, temperature,
                   repetition_n, search):
    """The rows of metrics.fixed_table and metrics.matched_table. write: sample() of this run;
    search(measure, target): metrics.match_entropy with this run's settings. Returns (the real-text rows
    by dataset, the rows at the fixed temperature, the matched rows best first, every generation)."""
    generations, runs = [], {} # runs: every generation by its settings, measured once

    def score(tokens, d):
        return metrics.sample_metrics(tokens, data[d].decode, judge.model, judge.encode, judge.decode, repetition_n,
                                      judge.unknown, data[d].source)

    def measure(entry, sampler, steps, temp):
        """The metrics of one generator's samples at temperature temp, as a table row; the matched search
        starts at the fixed temperature, which is not run again."""
        (name, model, checkpoint), key = entry, (entry[0], sampler, steps, temp)
        if key not in runs:
            reference = data[dataset(checkpoint)].reference
            tokens, passes, seconds = write(model, reference, sampler, steps, temp)
            runs[key] = dict(score(tokens, dataset(checkpoint)), name=name, model=model,
                             block=metrics.block_label(model), sampler=sampler, steps=steps, temperature=temp,
                             steps_label=steps_label(model, sampler, steps, reference.size(1)), passes=passes)
            generations.append(runs[key])
            print(f"{name} {sampler} steps {steps} temperature {temp:.3f}: judge NLL {runs[key]['nll']:.3f}/char, "
                  f"entropy {runs[key]['entropy']:.3f}, {passes} passes, {seconds:.2f}s", flush=True)
        return runs[key]

    t_quality = time.time()
    references = {d: dict(score(data[d].reference, d), model=None, block='-', sampler='reference',
                          name='val text' if len(data) == 1 else f"val text {d}", steps='-', steps_label='-',
                          temperature='-', passes='-') for d in data}
    fixed = [*references.values()] + [measure(entry, 'autoregressive', '-', temperature) for entry in ar_models] + [
        measure(entry, sampler, steps, temperature) for entry in progress(models, 'fixed temperature', 'model')
        for sampler in samplers for steps in sampler_steps(sampler, step_counts)]
    print(f"fixed temperature: {time.time() - t_quality:.0f}s", flush=True)

    def match(entry, sampler, steps):
        """The generator at exactly the unigram entropy of the val text of its dataset (real text of the
        same size: the entropy estimate is biased low for few tokens)."""
        return search(functools.partial(measure, entry, sampler, steps), references[dataset(entry[2])]['entropy'])

    t_matched = time.time()
    matched = [match(entry, 'autoregressive', '-') for entry in ar_models] + [
        match(entry, sampler, steps) for entry in progress(models, 'matched diversity', 'model')
        for sampler in samplers for steps in sampler_steps(sampler, match_step_counts)]
    matched.sort(key=lambda r: (not r['matched'], r['nll'])) # the best first, the generators that missed the band last
    print(f"matched diversity: {time.time() - t_matched:.0f}s", flush=True)
    return references, fixed, matched, generations

# -----------------------------------------------------------------------------
# 3. proofreading

def proofread_batch(model, corrupted, truth, cutoff, fix, steps, temp, ctx):
    """(flags, corrected, corrected with perfect detection) of corrupted rows. AR: flags the tokens less
    probable than cutoff given the text before them, rewritten by metrics.ar_rewrite. Diffusion: flags
    [WRONG] (its argmax when cutoff is None, else p([WRONG]) > 1 - cutoff) and rewrites in steps
    confidence steps (sampling.proofread), sampling with fix at temperature temp."""
    if model.config.model_type == 'gpt2':
        flags, words = metrics.ar_token_probs(model, corrupted, ctx) < cutoff, model.config.words
        return (flags, metrics.ar_rewrite(model, corrupted, flags, words, ctx),
                metrics.ar_rewrite(model, corrupted, truth, words, ctx))
    with ctx:
        flags, corrected, _ = sampling.proofread(model, corrupted, steps, generator=fix, temperature=temp,
                                                 threshold=None if cutoff is None else 1 - cutoff)
        # the same rewrite of exactly the substituted positions: what perfect detection would leave
        oracle, _ = sampling.confidence_sample(model, torch.where(truth, model.config.mask_token_id, corrupted), steps,
                                               temperature=temp, generator=fix)
    return flags, corrected, oracle


def proofreading(generators, data, rates, eval_batches, batch_size, steps, temp, seed, device, ctx):
    """The rows of metrics.proofreading_table: every model as a detector and corrector of the val batches
    of its dataset with a share rate of their tokens substituted, at each of rates; the models of one
    dataset and block_size see the same corrupted batches. AR: a threshold on p(token | text before)
    tuned on another draw of batches; diffusion: the [WRONG] argmax, then a threshold on p([WRONG]) tuned so."""
    rows = []
    for name, model, checkpoint in progress(generators, 'proofreading', 'model'):
        is_ar, words, val = model.config.model_type == 'gpt2', model.config.words, data[dataset(checkpoint)].val
        batches = [x for x, _ in val_batches(val, model.config.block_size, eval_batches, batch_size, seed, device)]
        tuning = [x for x, _ in val_batches(val, model.config.block_size, eval_batches, batch_size, seed + 6, device)]
        # the detector's score, low where it doubts a token
        score = ((lambda tokens: metrics.ar_token_probs(model, tokens)) if is_ar else
                 (lambda tokens: 1 - sampling.wrong_probs(model, tokens)))
        for rate in rates:
            with ctx:
                tuned = metrics.tuned_threshold(score, tuning, rate, words,
                                                torch.Generator(device=device).manual_seed(seed + 7))
            noise = torch.Generator(device=device).manual_seed(seed + 5)
            corrupted = [(x, *metrics.substitute_tokens(x, rate, words, noise)) for x in batches]
            for cutoff in [tuned] if is_ar else [None, tuned]:
                fix = torch.Generator(device=device).manual_seed(seed + 8) # the sampling of the corrections
                results = [(clean, bad, truth, *proofread_batch(model, bad, truth, cutoff, fix, steps, temp, ctx))
                           for clean, bad, truth in corrupted]
                clean, bad, truth, flagged, corrected, oracle = (torch.cat(t) for t in zip(*results))
                rows.append(dict(name=name, label=(name if cutoff is None else f"{name} AR p<{cutoff:.3g}" if is_ar
                                                   else f"{name} p([WRONG])>{1 - cutoff:.3g}"),
                                 detector='argmax' if cutoff is None else 'threshold', rate=rate,
                                 block=metrics.block_label(model), objective=metrics.objective(checkpoint),
                                 prf=metrics.detection_prf(flagged, truth), before=metrics.char_error_rate(bad, clean),
                                 after=metrics.char_error_rate(corrected, clean),
                                 oracle=metrics.char_error_rate(oracle, clean)))
    return rows

# -----------------------------------------------------------------------------
# 4. speed: training on fresh models of one architecture, then generation with the trained checkpoints

def training_speed(models, data, batch_size, iters, seed, device, ctx, device_type, dtype):
    """The rows of metrics.training_table, and the architecture they share (a GPTConfig as a dict): that
    of the first diffusion checkpoint, as AR, full-sequence diffusion and a block model per diffusion
    block of the checkpoints that cuts its block_size into whole blocks. Each a fresh model, timed over
    iters of train.py's optimizer step (diffusion.train_step) after 2 untimed ones (allocations, kernel
    selection), with train.py's default settings, the ELBO objective and one micro-batch per step. One
    batch of val text is reused: data loading is the same for every kind of model."""
    _, model, checkpoint = models[0]
    arch = dict(asdict(model.config), diffusion_block=0, causal_clean=False) # the step has no AR loss
    ar_arch = dict(arch, model_type='gpt2', vocab_size=model.config.words, mask_token_id=-1, wrong_token_id=-1)
    blocks = sorted({m.denoising_block for _, m, _ in models
                     if m.denoising_block and arch['block_size'] % m.denoising_block == 0})
    train_settings = dict(script_defaults(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')),
                          loss_type='elbo', gradient_accumulation_steps=1)
    x, y = get_batch(data[dataset(checkpoint)].val, batch_size, arch['block_size'],
                     torch.Generator().manual_seed(seed), device)
    variants = [('AR', ar_arch), ('diffusion', arch)] + [('block diffusion', dict(arch, diffusion_block=b))
                                                         for b in blocks]
    rows = []
    for label, args in progress(variants, 'training speed', 'model'):
        torch.manual_seed(seed)
        fresh = GPT(GPTConfig(**args)).to(device)
        s = train_settings
        optimizer = fresh.configure_optimizers(s['weight_decay'], s['learning_rate'], (s['beta1'], s['beta2']), device_type)
        scaler = torch.amp.GradScaler('cuda', enabled=(dtype == 'float16')) # as train.py builds it
        noise = torch.Generator(device=device).manual_seed(seed)

        def step():
            diffusion.train_step(fresh, optimizer, scaler, lambda: (x, y), noise, 0, train_settings, ctx)

        for _ in range(2):
            step()
        _, seconds = timed(lambda: [step() for _ in range(iters)], device_type)
        rows.append(dict(label=label, block=metrics.block_label(fresh), parameters=fresh.get_num_params(),
                         objective='next token' if label == 'AR' else 'elbo', seconds=seconds / iters,
                         tokens_per_s=x.numel() * iters / seconds))
    return rows, arch


def generation_speed(ar_models, models, matched, data, write, block_passes, temperature):
    """The rows of metrics.generation_table: every AR and diffusion model at the settings of its best row
    at matched diversity (its first row there), then every block model at each of block_passes passes
    per block, left to right, then every block model with a causal clean stream with the speculative
    sampler (the text of its AR mode). Each timed at batch 1 and at the batch of its reference, after a
    warm-up run at batch 1 (allocations and kernels for this shape)."""
    by_name = {entry[0]: entry for entry in ar_models + models}
    best = [next(r for r in matched if r['name'] == name) for name in by_name]
    timed_rows = [(by_name[r['name']], r['sampler'], r['steps'], None, r['temperature'],
                   '' if r['matched'] else ' (not matched)') for r in best] + [
        (entry, 'left_to_right', '-', per_block, temperature, '')
        for entry in models if entry[1].denoising_block for per_block in block_passes] + [
        (entry, 'speculative', '-', None, temperature, '') for entry in models if entry[1].config.causal_clean]
    rows = []
    for entry, sampler, steps, per_block, temp, note in progress(timed_rows, 'generation speed', 'generator'):
        (name, model, checkpoint), speeds = entry, []
        reference, decode = data[dataset(checkpoint)].reference, data[dataset(checkpoint)].decode
        write(model, reference[:1], sampler, steps, temp, per_block) # the warm-up
        for batch in (1, len(reference)):
            tokens, passes, seconds = write(model, reference[:batch], sampler, steps, temp, per_block)
            chars = metrics.written_chars(tokens, decode)
            speeds.append((batch * (tokens.size(1) - 1) / seconds, chars / seconds, passes, chars / batch / passes))
        rows.append(dict(name=name, block=metrics.block_label(model), sampler=sampler + note, temperature=temp,
                         steps_label=(steps_label(model, sampler, steps, reference.size(1)) if per_block is None
                                      else f"{per_block}/block"), one=speeds[0], many=speeds[1]))
    return rows

# -----------------------------------------------------------------------------
# the run: the stages in order, each table printed as it comes and results.md written at the end

def show(report, lines):
    """Print a table (markdown lines) and add it to the report."""
    print('\n' + '\n'.join(lines), flush=True)
    report.extend(lines)


def main():
    t_start = time.time()
    ar_models, (judge_name, judge_model, judge_checkpoint), models = load_models(
        [ar_dir, *extra_ar_dirs], judge_dir, diffusion_dirs, device)
    max_length = min(m.config.block_size for _, m, _ in models)
    if not max(2, repetition_n) <= sample_length <= max_length:
        raise UserError(f"sample_length={sample_length} must be between {max(2, repetition_n)} and {max_length} "
                        "(the smallest block_size of the diffusion models)")
    data = {} # every generator's dataset: its val tokens, chars per token (None: not counted), decode, reference
    # and source, the start of its training text (copied 8-grams are looked up there)
    for d in dict.fromkeys(dataset(c) for _, _, c in ar_models + models):
        val = load_split(d, 'val')
        # real text: every generator rewrites tokens 2..sample_length of its dataset's reference rows
        reference = get_batch(val, num_samples, sample_length, torch.Generator().manual_seed(seed + 3), device)[0]
        decode = load_tokenizer(d)[1]
        data[d] = SimpleNamespace(val=val, cpt=chars_per_token(d, 'val'), decode=decode, reference=reference,
                                  source=decode(load_split(d, 'train')[:copy_source_tokens].tolist()))
    judge_dataset = dataset(judge_checkpoint)
    meta = read_meta(judge_dataset)
    # a char judge has no token for a character its training text lacked, which a BPE can write (any byte):
    # such characters are dropped before scoring, and counted
    unknown = re.compile(f"[^{re.escape(''.join(meta['itos']))}]") if meta and meta['tokenizer'] == 'char' else None
    encode, decode = load_tokenizer(judge_dataset)
    judge = SimpleNamespace(name=judge_name, model=judge_model, dataset=judge_dataset, encode=encode, decode=decode,
                            unknown=unknown, baseline=judge_model is ar_models[0][1])
    os.makedirs(out, exist_ok=True)
    note_for_ctrl_c(f"the tables finished so far are printed above; {os.path.join(out, 'results.md')} is written "
                    "at the end")
    report = metrics.report_header(list(data), judge_dataset, settings)
    show(report, metrics.markdown('Models', [], ['checkpoint', 'type', 'dataset', 'chars/token', 'diffusion block',
                                                 'objective', 'iterations', 'parameters', 'block_size', 'positions'],
                                  [[name, m.config.model_type, dataset(c), metrics.fmt(data[dataset(c)].cpt),
                                    metrics.block_label(m), metrics.objective(c), c['iter_num'],
                                    f"{m.get_num_params():,}", m.config.block_size, m.config.pos_encoding]
                                   for name, m, c in ar_models + models]))

    print("validation losses...", flush=True)
    losses = validation_loss(ar_models, models, data, eval_batches, batch_size, seed, device, ctx)
    show(report, metrics.validation_table(losses, settings))

    print("sample quality...", flush=True)
    write = functools.partial(sample, presets=presets, seed=seed, ctx=ctx, device_type=device_type)
    search = functools.partial(metrics.match_entropy, start_temperature=temperature, tolerance=match_tolerance,
                               max_tries=match_tries, min_temperature=min_temperature, max_temperature=max_temperature)
    references, fixed, matched, generations = sample_quality(
        ar_models, models, data, judge, write, samplers, step_counts, match_step_counts, temperature, repetition_n,
        search)
    show(report, metrics.fixed_table(fixed, judge, settings))
    show(report, metrics.matched_table(references, matched, generations, ar_models[0][0], judge, settings))
    with open(os.path.join(out, 'samples.txt'), 'w', encoding='utf-8') as f: # the first sample of every generation
        f.write('\n'.join([f"==== {r['name']} | judge NLL {r['nll']:.3f}/char | entropy {r['entropy']:.3f} ====\n"
                           f"{r['text']}\n" for r in references.values()] + [
            f"==== {r['name']} | {r['sampler']} | steps {r['steps']} | temperature {r['temperature']:.3f} | judge NLL "
            f"{r['nll']:.3f}/char | entropy {r['entropy']:.3f} ====\n{r['text']}\n" for r in generations]))

    print("proofreading...", flush=True)
    proofread = proofreading(ar_models + models, data, proofread_rates, eval_batches, batch_size, proofread_steps,
                             proofread_temperature, seed, device, ctx)
    show(report, metrics.proofreading_table(proofread, settings))

    print("training speed...", flush=True)
    training, arch = training_speed(models, data, batch_size, speed_iters, seed, device, ctx, device_type, dtype)
    show(report, metrics.training_table(training, models[0][0], arch, settings))

    print("generation speed...", flush=True)
    generation = generation_speed(ar_models, models, matched, data, write, speed_block_passes, temperature)
    show(report, metrics.generation_table(generation, settings))

    plots = write_plots(out, fixed, matched, proofread, {name: dataset(c) for name, _, c in ar_models + models},
                        temperature, repetition_n)
    report.append(f"Plots: {', '.join(plots) if plots else 'none (matplotlib is not installed: pip install matplotlib)'}. "
                  f"The benchmark took {time.time() - t_start:.0f} s, {len(generations)} generations of "
                  f"{num_samples} samples for the sample-quality tables.\n")
    with open(os.path.join(out, 'results.md'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(report))
    print(f"wrote {os.path.join(out, 'results.md')} ({time.time() - t_start:.0f} s)")


if __name__ == '__main__':
    main()
