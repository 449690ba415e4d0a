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
1. validation loss: the AR NLL; every diffusion model's ELBO bound and masked CE;
2. sample quality at a fixed temperature: NLL per character under an AR judge (which
   re-encodes the text with its own tokenizer) next to entropy and repetition, for AR
   sampling and for each diffusion model x sampler x step count;
3. sample quality at matched diversity (the headline): each generator's temperature is
   searched until the unigram entropy of its samples is that of real text, and only
   then is its judge NLL compared;
4. proofreading: [WRONG] detection of random substitutions, and the error rate before
   and after proofread(), against an AR detector (a threshold on the probability of each
   token given the text before it) that rewrites what it flags with its argmax;
5. speed: training ms/iteration and tokens/s of AR, full-sequence and block diffusion
   models of one size; generation tokens/s and characters/s at batch 1 and in a batch,
   with the speculative sampler for the block models trained with ar_loss_weight > 0.
Stages 2 and 3 are one stage of the script (sample quality); everything but the timings is the
same on every run with the same seed and device.
"""

import functools
import math
import os
import re
import time
from dataclasses import asdict

import numpy as np
import torch

from configurator import UserError, configure, note_for_ctrl_c, parse_list, require_range, script_defaults
import diffusion
from loading import (chars_per_token, get_batch, load_checkpoint, load_split, load_tokenizer, model_from_checkpoint,
                     read_meta, setup_device, timed)
from metrics import (ar_rewrite, ar_token_probs, best_threshold, char_error_rate, detection_prf, judge_nll_per_char,
                     match_entropy, repetition, substitute_tokens, unigram_entropy)
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
samplers = 'refine,confidence,ancestral,left_to_right,threshold,entropy' # diffusion samplers, comma-separated (also: confidence+wrong)
step_counts = '8,16,32,64,128' # denoising passes over a whole sample, comma-separated; a block model gets
                               # max(1, round(steps * block / (sample_length - 1))) per block; threshold and
                               # entropy adapt their passes: they run once, capped at the largest count
threshold = 0.9 # the threshold sampler commits every proposal more probable than this (at least one per pass)
entropy_budget = 1.0 # the entropy sampler commits the surest proposals while their entropies sum to at most this (nats)
temperature = 1.0 # of every generator in the fixed-temperature table, and the first try of the matched search
repetition_n = 4 # repetition is the fraction of repeated n-grams of this n
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
configure(globals())
# -----------------------------------------------------------------------------
require_range('proofread_temperature', proofread_temperature, low=0)
require_range('seed', seed, low=0, high=2**63, high_open=True, integer=True)
if not out or os.path.isfile(out):
    raise UserError(f"out={out!r} is {'a file' if out else 'empty'}: give the folder for the results, e.g. --out=out-bench")


diffusion_dirs = parse_list(diffusion_dirs, str.strip, 'diffusion_dirs')
extra_ar_dirs = parse_list(extra_ar_dirs, str.strip, 'extra_ar_dirs') if extra_ar_dirs else []
samplers = parse_list(samplers, str.strip, 'samplers')
step_counts = parse_list(step_counts, int, 'step_counts')
match_step_counts = parse_list(match_step_counts, int, 'match_step_counts')
proofread_rates = parse_list(proofread_rates, float, 'proofread_rates')
speed_block_passes = parse_list(speed_block_passes, int, 'speed_block_passes')
judge_dir = judge_dir or ar_dir
# every diffusion sampler: (function of diffusion.py, its options); all run through diffusion.generate
commit_options = {'threshold': dict(threshold=threshold), 'entropy': dict(entropy_budget=entropy_budget)}
sampler_fns = {name: (diffusion.SAMPLE_FUNCTIONS[kind], {**options, **commit_options.get(options.get('commit'), {})})
               for name, (kind, options) in diffusion.PRESETS.items()}
adaptive = ('threshold', 'entropy') # samplers whose step count is only a cap
if set(samplers) - set(sampler_fns):
    raise UserError(f"unknown samplers {sorted(set(samplers) - set(sampler_fns))}: "
                    f"choose from {', '.join(sampler_fns)}")
# (a checkpoint in both lists is of the wrong kind in one: load() says which)
for key, dirs in (('diffusion_dirs', diffusion_dirs), ('ar_dir and extra_ar_dirs', [ar_dir, *extra_ar_dirs])):
    if len(set(map(os.path.normpath, dirs))) < len(dirs):
        raise UserError(f"{key} name a checkpoint twice: {dirs}")
if min(step_counts + match_step_counts + speed_block_passes) < 1:
    raise UserError(f"step_counts, match_step_counts and speed_block_passes must be positive, got {step_counts}, "
                    f"{match_step_counts} and {speed_block_passes}")
if not all(0 <= r < 1 for r in proofread_rates):
    raise UserError(f"proofread_rates must be fractions in [0, 1), got {proofread_rates}")
if temperature <= 0:
    raise UserError(f"temperature must be > 0 (AR sampling has no greedy mode here), got {temperature}")
if not 0 < min_temperature < max_temperature:
    raise UserError(f"need 0 < min_temperature < max_temperature, got {min_temperature} and {max_temperature}")
if not 0 < threshold < 1 or entropy_budget < 0 or match_tolerance <= 0:
    raise UserError(f"need 0 < threshold < 1, entropy_budget >= 0 and match_tolerance > 0, got {threshold}, "
                    f"{entropy_budget} and {match_tolerance}")
if min(eval_batches, batch_size, num_samples, repetition_n, proofread_steps, speed_iters, match_tries) < 1:
    raise UserError("eval_batches, batch_size, num_samples, repetition_n, proofread_steps, speed_iters and "
                    "match_tries must all be at least 1")
device, device_type, dtype, ctx = setup_device(device, dtype)
t_start = time.time()


def load(out_dir, model_type, key):
    """(model in eval mode, checkpoint); a checkpoint of the wrong kind names the option it belongs in."""
    checkpoint = load_checkpoint(out_dir, device, key)
    found = checkpoint['model_args'].get('model_type', 'gpt2')
    if found != model_type:
        raise UserError(f"{key}: {out_dir} holds a '{found}' model, not a '{model_type}' one: "
                        f"pass it in {'diffusion_dirs' if found == 'diffusion' else 'ar_dir, extra_ar_dirs or judge_dir'}")
    return model_from_checkpoint(checkpoint, device).eval(), checkpoint


def objective(checkpoint):
    """A diffusion checkpoint's training objective: its loss_type and, for the ELBO, its weighting
    and its clipped range of mask rates where they are not the bound's own."""
    config = checkpoint['config']
    if config.get('loss_type', 'seed') != 'elbo':
        return 'seed'
    parts, low, high = ['elbo'], config.get('mask_rate_min', 0.0), config.get('mask_rate_max', 1.0)
    if config.get('loss_weighting', 'elbo') != 'elbo':
        parts.append(config['loss_weighting'])
    if (low, high) != (0, 1):
        parts.append(f"mask rate in [{low:g}, {high:g}]")
    return ', '.join(parts)


def block_label(model):
    """The denoising block of a model as the tables show it: '-' for AR, 'full' for full-sequence diffusion."""
    return '-' if model.config.model_type == 'gpt2' else model.denoising_block or 'full'


# checkpoints are named by their folder in the tables, or by their path if two folders share a name
paths = list(dict.fromkeys(os.path.normpath(d) for d in [ar_dir, judge_dir, *extra_ar_dirs, *diffusion_dirs]))
short = {p: os.path.basename(p) for p in paths}
names = short if len(set(short.values())) == len(paths) else {p: p for p in paths}
# (name, model, checkpoint) of every AR generator, the baseline first, and of every diffusion model
ar_models = [(names[os.path.normpath(d)], *load(d, 'gpt2', key))
             for d, key in [(ar_dir, 'ar_dir')] + [(d, 'extra_ar_dirs') for d in extra_ar_dirs]]
ar_name, ar_model, ar_ckpt = ar_models[0]
judge, judge_ckpt = (ar_model, ar_ckpt) if judge_dir == ar_dir else load(judge_dir, 'gpt2', 'judge_dir')
models = [(names[os.path.normpath(d)], *load(d, 'diffusion', 'diffusion_dirs')) for d in diffusion_dirs]
by_name = {name: model for name, model, _ in ar_models + models} # every generator's model
dataset_of = {name: checkpoint['config']['dataset'] for name, _, checkpoint in ar_models + models}
datasets = list(dict.fromkeys(dataset_of.values()))
vocab_of = {} # dataset: its token ids (below [MASK] and [WRONG]): meta.json's vocab_size, else its first model's
for name, model, checkpoint in [(names[os.path.normpath(judge_dir)], judge, judge_ckpt)] + ar_models + models:
    base = model.config.mask_token_id if model.config.model_type == 'diffusion' else model.config.vocab_size
    data, meta = checkpoint['config']['dataset'], read_meta(checkpoint['config']['dataset'])
    if vocab_of.setdefault(data, meta['vocab_size'] if meta else base) != base:
        raise UserError(f"{name} has {base} token ids but the dataset '{data}' has {vocab_of[data]} "
                        f"({'its meta.json' if meta else 'another of its models'}): the data was prepared again after "
                        "the model was trained; retrain it, or prepare the data it was trained on")
max_length = min(m.config.block_size for _, m, _ in models)
if not max(2, repetition_n) <= sample_length <= max_length:
    raise UserError(f"sample_length={sample_length} must be between {max(2, repetition_n)} and {max_length} "
                    "(the smallest block_size of the diffusion models)")
L = sample_length # tokens of each generator's own tokenizer
val_data = {d: load_split(d, 'val') for d in datasets}
cpt = {d: chars_per_token(d, 'val') for d in datasets} # None when the dataset does not count its characters
judge_dataset = judge_ckpt['config']['dataset']
decoders = {d: load_tokenizer(d)[1] for d in datasets}
judge_encode, judge_decode = load_tokenizer(judge_dataset)
judge_meta = read_meta(judge_dataset)
# a char judge has no token for a character its training text lacked, which a BPE can write (any byte):
# such characters are dropped before scoring, and counted
judge_chars = ''.join(judge_meta['itos']) if judge_meta['tokenizer'] == 'char' else None
unknown_to_judge = None if judge_chars is None else re.compile(f"[^{re.escape(judge_chars)}]")
os.makedirs(out, exist_ok=True)
# timings are only meaningful on an otherwise idle machine: say how busy it was
busy = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, 'getloadavg') else ''
report = ["# nanoGPT-diffusion benchmark\n",
          f"datasets {', '.join(f'`{d}`' for d in datasets)}, judge on `{judge_dataset}`, device `{device}` ({dtype}), "
          f"{os.cpu_count()} CPU cores{busy}, seed {seed}, torch {torch.__version__}. "
          f"Settings: eval_batches={eval_batches}, batch_size={batch_size}, num_samples={num_samples}, "
          f"sample_length={L}, samplers={','.join(samplers)}, step_counts={','.join(map(str, step_counts))}, "
          f"threshold={threshold}, entropy_budget={entropy_budget}, temperature={temperature}, "
          f"match_step_counts={','.join(map(str, match_step_counts))}, match_tolerance={match_tolerance}, "
          f"temperatures [{min_temperature}, {max_temperature}], match_tries={match_tries}, "
          f"proofread_steps={proofread_steps}, speed_iters={speed_iters}, "
          f"speed_block_passes={','.join(map(str, speed_block_passes))}.\n"]


def section(title, notes, header, rows):
    """Print a markdown table and add it, with its notes, to the report."""
    lines = [f"## {title}\n", *(note + '\n' for note in notes),
             '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header),
             *('| ' + ' | '.join(str(v) for v in row) + ' |' for row in rows), '']
    print('\n' + '\n'.join(lines), flush=True)
    report.extend(lines)
    note_for_ctrl_c(f"the tables up to '{title}' are printed above; {os.path.join(out, 'results.md')} is written at the end")


def val_batches(dataset, block_size, batch_seed=seed):
    """The same eval_batches val batches of a dataset (fixed seed) for every model of one block_size."""
    g = torch.Generator().manual_seed(batch_seed)
    return [get_batch(val_data[dataset], batch_size, block_size, g, device) for _ in range(eval_batches)]


def fmt(v, digits=3):
    return '-' if v is None else f"{v:.{digits}f}"


def per_char(nats, dataset):
    """A loss in nats per token of a dataset's val text, in nats per character; None when the
    dataset does not count its characters."""
    return None if cpt[dataset] is None else nats / cpt[dataset]


section('Models', [], ['checkpoint', 'type', 'dataset', 'chars/token', 'diffusion block', 'objective', 'iterations',
                       'parameters', 'block_size', 'positions'],
        [[name, m.config.model_type, dataset_of[name], fmt(cpt[dataset_of[name]]), block_label(m),
          'next token' if m.config.model_type == 'gpt2' else objective(c), c['iter_num'], f"{m.get_num_params():,}",
          m.config.block_size, m.config.pos_encoding]
         for name, m, c in ar_models + models])

# -----------------------------------------------------------------------------
# 1. validation loss
print("validation losses...", flush=True)
fractions = diffusion.VAL_FRACTIONS
losses = {} # name: (val NLL or bound in nats/token, [masked CE per fraction])
with torch.no_grad(), ctx:
    for name, model, _ in ar_models:
        batches = val_batches(dataset_of[name], model.config.block_size)
        losses[name] = np.mean([model(x, y)[1].item() for x, y in batches]), []
for name, model, checkpoint in progress(models, 'validation loss', 'model'):
    mask_id = model.config.mask_token_id
    batches = [x for x, _ in val_batches(dataset_of[name], model.config.block_size)]
    found = diffusion.val_metrics(model, batches, mask_id, model.denoising_block or model.config.block_size,
                                  checkpoint['config'].get('noise_schedule', 'linear'), seed, ctx)
    losses[name] = found['bound'], [found[f'masked{round(fraction * 100)}'] for fraction in fractions]
ar_loss = losses[ar_name][0]


def vs_ar(nats, dataset):
    """A loss (nats/token of a dataset) relative to the AR baseline's val NLL, per character so that
    tokenizers compare (on the baseline's own dataset: per token, the same ratio); None when a
    dataset does not count its characters."""
    if dataset == dataset_of[ar_name]:
        return nats / ar_loss
    mine, base = per_char(nats, dataset), per_char(ar_loss, dataset_of[ar_name])
    return None if mine is None or base is None else mine / base


rows = []
for name, model, checkpoint in ar_models + models:
    (loss, masked_ce), data = losses[name], dataset_of[name]
    masked_ce = masked_ce or [None] * len(fractions) # an AR model has no masked CE
    loss_char = per_char(loss, data)
    rows.append([name, block_label(model), 'next token' if model.config.model_type == 'gpt2' else objective(checkpoint),
                 fmt(loss, 4), fmt(loss / math.log(2), 4), fmt(loss_char, 4),
                 fmt(None if loss_char is None else loss_char / math.log(2), 4), fmt(vs_ar(loss, data))]
                + [fmt(ce) for ce in masked_ce] + [fmt(None if ce is None else per_char(ce, data)) for ce in masked_ce])
section('Validation loss', [
    f"{eval_batches} val batches of {batch_size} rows of each model's block_size (fixed seed) of its own dataset.",
    "AR: mean next-token NLL. Diffusion: diffusion.elbo_bound, the continuous-time ELBO of masked diffusion over "
    "the full range of noise levels t (one t per row, or per block of a block model: stratified, fixed seed; a block "
    "is denoised seeing the clean blocks before it). It is an upper bound on the NLL for any denoiser, in nats per "
    "token like the AR loss, so it is reported for every model, whatever its objective; it is tight only for a "
    "model trained on it (`elbo`; `token_mean` weighting and a clipped range of mask rates train on a reweighting "
    "of it, a `seed`-trained model never saw mask-only inputs at every t). Per character: nats/token divided by the "
    "characters per token of the dataset's val split (its meta.json; `-` where it has no counts), the unit that "
    f"compares tokenizers. `vs AR` = loss / the val NLL of {ar_name}, per character when the datasets differ (1 "
    "would be AR's likelihood). Diffusion block: tokens denoised together (BD3-LM), `full` = the whole sequence. "
    "Masked CE: mean CE over the words at exactly 15/50/90 % masked positions (the fill-in-the-blank loss, "
    "comparable across objectives), per token, then per character."],
    ['model', 'diffusion block', 'objective', 'nats/token', 'bits/token', 'nats/char', 'bits/char', 'vs AR']
    + [f"masked CE {int(f * 100)}%" for f in fractions] + [f"masked CE/char {int(f * 100)}%" for f in fractions], rows)

# -----------------------------------------------------------------------------
# 2. sample quality: every generator (AR, or a diffusion model and a sampler) writes num_samples
# samples at a temperature, scored by measure(); at a fixed temperature, then at matched diversity
print("sample quality...", flush=True)
# real text of each dataset; every generator writes tokens 2..L after the first token of its dataset's rows
references = {d: get_batch(val_data[d], num_samples, L, torch.Generator().manual_seed(seed + 3), device)[0]
              for d in datasets}


def block_steps(model, steps):
    """Denoising passes per block that add up to about steps over a sample (steps itself for a
    full-sequence model, which denoises the whole sample at once)."""
    block = model.denoising_block
    return steps if block is None else max(1, round(steps * block / (L - 1)))


def steps_label(model, sampler, steps):
    """A step count as the tables show it: '<=' for a cap, and the passes per block of a block model
    (steps '-': AR, or a block model at a number of passes per block)."""
    if steps == '-':
        return '-'
    label = f"<={steps}" if sampler in adaptive else str(steps)
    return label if model.denoising_block is None else f"{label} ({block_steps(model, steps)}/block)"


def describe(r):
    """The model, diffusion block, sampler and steps cells of a sample-quality row."""
    if r['model'] is None: # real text
        return [r['name'], '-', r['sampler'], '-']
    return [r['name'], block_label(r['model']), r['sampler'], steps_label(r['model'], r['sampler'], r['steps'])]


def sampler_steps(sampler, counts):
    """The step counts a sampler runs at: all of them, or the largest only when it is a cap."""
    return [max(counts)] if sampler in adaptive else counts


def sample(name, sampler, steps, temp, batch, per_block=None):
    """(tokens (batch, L), forward passes, seconds) of one generator at temperature temp, from the
    first tokens of the first batch rows of its dataset's reference and a fixed seed (the same random
    numbers at every temperature). AR: model.generate with its KV cache. Diffusion: diffusion.generate
    with sampler_fns[sampler], block by block for a block model, in per_block passes per block if given
    (else block_steps). Only the generation itself is timed."""
    model = by_name[name]
    generator = torch.Generator(device=device).manual_seed(seed + 4)
    prompt = references[dataset_of[name]][:batch, :1]
    if model.config.model_type == 'gpt2':
        def run():
            return model.generate(prompt, L - 1, temperature=temp, generator=generator), L - 1
    elif sampler == 'speculative':
        x = torch.cat([prompt, torch.full((batch, L - 1), model.config.mask_token_id, device=device)], 1)

        def run():
            return diffusion.generate(model, x, diffusion.speculative_sample, temperature=temp, generator=generator)
    else:
        sample_fn, kwargs = sampler_fns[sampler]
        x = torch.cat([prompt, torch.full((batch, L - 1), model.config.mask_token_id, device=device)], 1)
        steps_key = 'max_steps' if sample_fn is diffusion.refine_sample else 'steps'
        kwargs = {**kwargs, steps_key: per_block or block_steps(model, steps)}

        def run():
            return diffusion.generate(model, x, sample_fn, temperature=temp, generator=generator, **kwargs)
    with ctx:
        (tokens, passes), seconds = timed(run, device_type)
    return tokens, passes, seconds


def texts(tokens, dataset):
    """Every row of tokens (B, T) of a dataset, decoded."""
    return [decoders[dataset](row) for row in tokens.tolist()]


def written_chars(tokens, dataset):
    """The characters of all rows of generated tokens but those of the first token of each, which was given."""
    return sum(map(len, texts(tokens, dataset))) - sum(map(len, texts(tokens[:, :1], dataset)))


def text_metrics(tokens, dataset):
    """Of samples (B, L) of a dataset: the judge NLL per character (the text decoded, stripped of
    the characters a char judge has no token for, which are counted, and re-encoded by the judge),
    unigram entropy and repetition in the generator's own tokens, the share of newlines among the
    characters (a sampler that writes many short lines, e.g. speaker names, scores a low NLL), the
    characters written per sample, and the first sample decoded."""
    rows = texts(tokens, dataset)
    stripped, unknown = (rows, [0]) if unknown_to_judge is None else zip(*(unknown_to_judge.subn('', r) for r in rows))
    return dict(nll=judge_nll_per_char(judge, judge_encode, judge_decode, stripped, device), unknown=sum(unknown),
                entropy=unigram_entropy(tokens), rep=repetition(tokens, repetition_n),
                newlines=sum(r.count('\n') for r in rows) / max(1, sum(map(len, rows))),
                chars=written_chars(tokens, dataset) / len(rows), text=rows[0])


def chars_per_pass(r):
    """Characters each forward pass of a generator wrote, per sample."""
    return '-' if r['passes'] == '-' else fmt(r['chars'] / r['passes'], 2)


def unknown_note(rows):
    """What a char judge dropped from these rows' text (nothing to say for another judge)."""
    if unknown_to_judge is None:
        return ''
    return (f" The judge has no token for {sum(r['unknown'] for r in rows)} of the characters in these rows (a BPE "
            "can write any byte): they are dropped before scoring.")


generations = [] # every measure() row, in order, for samples.txt


@functools.cache # the matched search starts at the fixed temperature: that run is not repeated
def measure(name, sampler, steps, temp):
    """The metrics of one generator's num_samples samples at temperature temp, as a table row."""
    tokens, passes, seconds = sample(name, sampler, steps, temp, num_samples)
    row = dict(text_metrics(tokens, dataset_of[name]), name=name, model=by_name[name], sampler=sampler, steps=steps,
               temperature=temp, passes=passes)
    generations.append(row)
    print(f"{name} {sampler} steps {steps} temperature {temp:.3f}: judge NLL {row['nll']:.3f}/char, entropy "
          f"{row['entropy']:.3f}, {passes} passes, {seconds:.2f}s", flush=True)
    return row


t_quality = time.time()
val_rows = {d: dict(text_metrics(references[d], d), name='val text' if len(datasets) == 1 else f"val text {d}",
                   model=None, sampler='reference', steps='-', temperature='-', passes='-') for d in datasets}
fixed = [*val_rows.values()] + [measure(name, 'autoregressive', '-', temperature) for name, _, _ in ar_models] + [
    measure(name, sampler, steps, temperature)
    for name, _, _ in progress(models, 'fixed temperature', 'model')
    for sampler in samplers for steps in sampler_steps(sampler, step_counts)]
judge_note = ("The judge is the AR baseline itself, so the AR samples are scored by the model that wrote them "
              "(at temperature 1 their NLL is its own entropy rate: a favourable reference); pass judge_dir for an "
              "independent judge." if judge is ar_model else f"The judge is {names[os.path.normpath(judge_dir)]}.")
section('Sample quality at a fixed temperature', [
    f"{num_samples} samples of {L} tokens (of each generator's own tokenizer) per generator, temperature "
    f"{temperature}; the first token of each sample is the first token of a random val window of the generator's "
    "dataset, the same for every generator of that dataset, and the rest is generated. Chars/pass: characters "
    "written per sample / forward passes.",
    f"Judge NLL: nats per character. Each sample is decoded to text and re-encoded with the tokenizer of the AR "
    f"judge (dataset `{judge_dataset}`); every judge token after the first is scored given all the tokens before "
    "it, and the sum is divided by the characters of the scored tokens, so generators of any tokenizer are scored "
    f"alike (for a char generator and a char judge: tokens 2..{L}). The judge's context is its block_size of "
    f"{judge.config.block_size} tokens: longer texts are scored in windows sliding by half a block. {judge_note}"
    + unknown_note(fixed),
    "Entropy: unigram entropy (nats) of all generated tokens pooled; repeated n-grams: mean over samples of the "
    f"fraction of a sample's {repetition_n}-grams that repeat an earlier one in it; both in the generator's own "
    "tokens, so compare them with the `val text` row of its dataset; newlines: the share of newline characters in "
    "the decoded text. **Read the judge NLL next to all three**: a low NLL with a collapsed entropy or a high "
    "repetition is a degenerate sampler (repeating frequent tokens), and one with many more newlines than real "
    "text writes short lines (speaker names) that are easy to predict; neither is a good one. The next table "
    "compares generators at the entropy of real text. The `val text` row is real text of the same size, the "
    "reference for all four.",
    "Samplers (diffusion.py, all through diffusion.generate): `refine` is the seed's loop (steps = max_steps; it "
    "may stop early), `confidence` commits the most confident proposals on a cosine schedule, `confidence+wrong` "
    "also sends tokens the model flags [WRONG] back to [MASK], `ancestral` commits a random choice of proposals on "
    "the same schedule (MDLM's ancestral order, the model's own distribution), `left_to_right` the leftmost masked "
    "positions (next-token order inside a block), `threshold` commits every proposal "
    f"more probable than {threshold} (Fast-dLLM), `entropy` the surest proposals while their entropies sum to at "
    f"most {entropy_budget} nats (EB-sampler); these two set their own number of passes, the step count (`<=`) is "
    "only their cap. Steps count denoising passes over the whole sample: a block model (diffusion block < "
    f"block_size) writes block after block, each in max(1, round(steps x block / {L - 1})) passes (`/block`), "
    "seeing the finished blocks through a KV cache; forward passes are all the passes diffusion.generate used. "
    "The first sample of each row is in samples.txt."],
    ['model', 'diffusion block', 'sampler', 'steps', 'forward passes', 'chars/pass', 'judge nats/char', 'entropy',
     f'repeated {repetition_n}-grams', 'newlines'],
    [[*describe(r), r['passes'], chars_per_pass(r), fmt(r['nll']), fmt(r['entropy']), fmt(r['rep']), fmt(r['newlines'])]
     for r in fixed])
print(f"fixed temperature: {time.time() - t_quality:.0f}s", flush=True)

t_matched = time.time()


def match(name, sampler, steps):
    """The generator's metrics at exactly the unigram entropy of the val text of its dataset (real
    text of the same size: the entropy estimate is biased low for few tokens), by match_entropy's
    search over the temperature."""
    return match_entropy(lambda temp: measure(name, sampler, steps, temp), val_rows[dataset_of[name]]['entropy'],
                         temperature, match_tolerance, match_tries, min_temperature, max_temperature)


matched = [match(name, 'autoregressive', '-') for name, _, _ in ar_models] + [
    match(name, sampler, steps)
    for name, _, _ in progress(models, 'matched diversity', 'model')
    for sampler in samplers for steps in sampler_steps(sampler, match_step_counts)]
matched.sort(key=lambda r: (not r['matched'], r['nll'])) # the best first, the generators that missed the band last
ar_matched = next(r for r in matched if r['name'] == ar_name)
section('Sample quality at matched diversity', [
    f"The headline comparison. For AR and for every diffusion model x sampler at step counts "
    f"{', '.join(map(str, match_step_counts))} (as in the table above), the temperature is searched so that the "
    "unigram entropy of the samples equals that of the `val text` row of the generator's dataset ("
    + ', '.join(f"{r['entropy']:.3f} nats for `{d}`" for d, r in val_rows.items()) + ": real text of the same "
    f"number of tokens, {num_samples} x {L}, since the estimate depends on the sample size). From temperature "
    f"{temperature}, the search steps the temperature (in [{min_temperature}, {max_temperature}]) until two tries "
    f"within {match_tolerance * 100:g} % of the target entropy lie one on each side of it, at most {match_tries} "
    f"tries (`tries`) of {num_samples} samples each, with the same seed at every temperature; the judge NLL, "
    "repetition, newline share and temperature are interpolated linearly in entropy between those two, at the target exactly "
    "(a row anywhere in a 2 % band could be ~0.1 nats better or worse), or a single try within a twentieth of "
    "the band is taken as it is. A generator with neither shows its try closest to the target, `not "
    "matched`, at the bottom. Rows sorted by judge NLL (nats/char: comparable across tokenizers), `vs AR` = "
    f"judge NLL / the matched judge NLL of {ar_name} ({ar_matched['nll']:.3f}). Forward passes and chars/pass: "
    "the try closest to the target; every try's first sample is in samples.txt." + unknown_note(generations)],
    ['model', 'diffusion block', 'sampler', 'steps', 'temperature', 'tries', 'judge nats/char', 'vs AR', 'entropy',
     f'repeated {repetition_n}-grams', 'newlines', 'forward passes', 'chars/pass', 'matched'],
    [[*describe(r), r['temperature'] if r['model'] is None else fmt(r['temperature']), r.get('tries', '-'),
      fmt(r['nll']), fmt(r['nll'] / ar_matched['nll']), fmt(r['entropy']), fmt(r['rep']), fmt(r['newlines']), r['passes'],
      chars_per_pass(r),
      'reference' if r['model'] is None else 'yes' if r['matched'] else 'not matched']
     for r in [*val_rows.values()] + matched])
print(f"matched diversity: {time.time() - t_matched:.0f}s", flush=True)
with open(os.path.join(out, 'samples.txt'), 'w', encoding='utf-8') as f: # the first sample of every generation
    f.write('\n'.join([f"==== {r['name']} | judge NLL {r['nll']:.3f}/char | entropy {r['entropy']:.3f} ====\n"
                       f"{r['text']}\n" for r in val_rows.values()] + [
        f"==== {r['name']} | {r['sampler']} | steps {r['steps']} | temperature {r['temperature']:.3f} | judge NLL "
        f"{r['nll']:.3f}/char | entropy {r['entropy']:.3f} ====\n{r['text']}\n" for r in generations]))

# -----------------------------------------------------------------------------
# 3. proofreading
print("proofreading...", flush=True)


@functools.cache
def corrupted_batches(dataset, block_size, rate, tuning=False):
    """[(clean, corrupted, truth)] for the val batches of a dataset (val_batches), exactly int(rate *
    block_size) positions of each row replaced by a random different token (substitute_tokens): the
    same for every model of one dataset and block_size. tuning: another draw of batches and substitutions."""
    batch_seed, noise_seed = (seed + 6, seed + 7) if tuning else (seed, seed + 5)
    noise = torch.Generator(device=device).manual_seed(noise_seed)
    return [(x, *substitute_tokens(x, rate, vocab_of[dataset], noise))
            for x, _ in val_batches(dataset, block_size, batch_seed)]


def tuned_threshold(name, model, rate, score):
    """The F1-best threshold (best_threshold) of a detector that flags the tokens whose score(model,
    tokens) is below it, on the tuning draw of corrupted val batches at this rate."""
    batches = corrupted_batches(dataset_of[name], model.config.block_size, rate, tuning=True)
    return best_threshold(torch.cat([score(model, corrupted) for _, corrupted, _ in batches]),
                          torch.cat([truth for _, _, truth in batches]))[0]


def not_wrong(model, tokens):
    """1 - p([WRONG]) of a diffusion model: low where it doubts a token (the score of tuned_threshold)."""
    with ctx:
        return 1 - diffusion.wrong_probs(model, tokens)


def proofread_batch(name, model, corrupted, truth, cutoff, fix):
    """(flags, corrected, corrected with perfect detection) of corrupted rows. AR: flags the tokens less
    probable than cutoff given the text before them, rewritten by ar_rewrite. Diffusion: flags [WRONG]
    (its argmax when cutoff is None, else p([WRONG]) > 1 - cutoff) and rewrites in proofread_steps
    confidence steps (diffusion.proofread), sampling with fix."""
    if model.config.model_type == 'gpt2':
        flags, vocab = ar_token_probs(model, corrupted, ctx) < cutoff, vocab_of[dataset_of[name]]
        return flags, ar_rewrite(model, corrupted, flags, vocab, ctx), ar_rewrite(model, corrupted, truth, vocab, ctx)
    with ctx:
        flags, corrected, _ = diffusion.proofread(model, corrupted, proofread_steps, generator=fix,
                                                  threshold=None if cutoff is None else 1 - cutoff,
                                                  temperature=proofread_temperature)
        # the same rewrite of exactly the substituted positions: what perfect detection would leave
        oracle, _ = diffusion.confidence_sample(model, torch.where(truth, model.config.mask_token_id, corrupted),
                                                proofread_steps, temperature=proofread_temperature, generator=fix)
    return flags, corrected, oracle


proofreading = [] # one dict per model, detector and rate: name, label, detector, block, objective, rate, prf, before, after, oracle
for name, model, checkpoint in progress(ar_models + models, 'proofreading', 'model'):
    is_ar = model.config.model_type == 'gpt2'
    # AR: a tuned threshold on p(token | text before); diffusion: the [WRONG] argmax, then a tuned p([WRONG])
    detectors = [(rate, cutoff) for rate in proofread_rates
                 for cutoff in ([tuned_threshold(name, model, rate, functools.partial(ar_token_probs, ctx=ctx))] if is_ar
                                else [None, tuned_threshold(name, model, rate, not_wrong)])]
    for rate, cutoff in detectors:
        fix = torch.Generator(device=device).manual_seed(seed + 8) # the sampling of the corrections
        results = [(clean, corrupted, truth, *proofread_batch(name, model, corrupted, truth, cutoff, fix))
                   for clean, corrupted, truth in corrupted_batches(dataset_of[name], model.config.block_size, rate)]
        clean, corrupted, truth, flagged, corrected, oracle = (torch.cat(t) for t in zip(*results))
        label = (name if cutoff is None else f"{name} AR p<{cutoff:.3g}" if is_ar
                 else f"{name} p([WRONG])>{1 - cutoff:.3g}")
        proofreading.append(dict(name=name, label=label, detector='argmax' if cutoff is None else 'threshold',
                                 block=block_label(model), objective='next token' if is_ar else objective(checkpoint),
                                 rate=rate, prf=detection_prf(flagged, truth), before=char_error_rate(corrupted, clean),
                                 after=char_error_rate(corrected, clean), oracle=char_error_rate(oracle, clean)))
section('Proofreading', [
    f"{eval_batches} val batches of {batch_size} rows of each model's block_size of its dataset; in every row exactly "
    "int(rate * block_size) positions get a random different token; the models of one dataset and block_size see the "
    "same corrupted batches. Diffusion detection: the positions diffusion.wrong_flags flags "
    "[WRONG] against the substituted ones, counted over all positions (precision, recall, F1 micro-averaged): "
    "first where [WRONG] is the argmax over everything but [MASK], then (`p([WRONG])>threshold`) where p([WRONG]) "
    "exceeds the F1-best threshold on the tuning draw of batches, as for the AR rows. "
    f"Correction: diffusion.proofread sends the flagged tokens back to [MASK] and rewrites them in {proofread_steps} "
    f"confidence steps at temperature {proofread_temperature}. Both see the whole row at once: a block model with "
    "its block-causal attention (each block sees itself and the blocks before it). Error rate: fraction of tokens "
    "that differ from the clean text (substitution only, so the texts stay aligned: Hamming = character error rate "
    "for char data). `after, perfect detection`: the same rewrite of exactly the substituted positions, the error "
    "rate a perfect detector would leave with this model's corrections (it separates detection from correction). A "
    "model trained with the `elbo` objective never saw [WRONG] as a target: its detection measures an untrained head.",
    "AR rows (`AR p<threshold`): an AR model as a detector of the same budget. It flags a token when its probability "
    "given the text before it is below the threshold, the F1-maximising one (metrics.best_threshold) on another "
    f"draw of {eval_batches} corrupted val batches at the same rate; the first position of a row, with no text "
    "before it, is never flagged (its substitutions count as misses). Correction: the flagged tokens are rewritten "
    "left to right, each by the AR argmax given the corrected text before it (one forward pass per flag of the "
    "most flagged row), never seeing the text after it; `after, perfect detection` rewrites the substituted "
    "positions so."],
    ['model', 'diffusion block', 'objective', 'substituted', 'precision', 'recall', 'F1', 'error rate before',
     'error rate after', 'after, perfect detection'],
    [[r['label'], r['block'], r['objective'], f"{r['rate'] * 100:g}%", *map(fmt, r['prf']), fmt(r['before'], 4),
      fmt(r['after'], 4), fmt(r['oracle'], 4)] for r in proofreading])

# -----------------------------------------------------------------------------
# 4. speed: training on fresh models of one architecture, that of the first diffusion checkpoint
print("training speed...", flush=True)
arch = dict(asdict(models[0][1].config), diffusion_block=0, causal_clean=False) # the step has no AR loss
ar_arch = dict(arch, model_type='gpt2', vocab_size=arch['mask_token_id'], mask_token_id=-1, wrong_token_id=-1,
               time_conditioning=False)
block_size = arch['block_size']
# the diffusion blocks of the checkpoints that cut this block_size into whole blocks
blocks = sorted({m.denoising_block for _, m, _ in models if m.denoising_block and block_size % m.denoising_block == 0})


train_settings = dict(script_defaults(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')),
                      loss_type='elbo') # train.py's defaults, the ELBO objective


def training_speed(model_args):
    """(tokens/s, seconds per iteration, the model) of train.py's step on a fresh model, with
    train.py's default settings: forward, loss, backward, gradient clipping, AdamW and, for
    diffusion, the [MASK] bias controller; the loss of diffusion.training_loss with the ELBO
    objective (mask-only corruption of each block, or of each row; the two-stream pass of a
    block model). One batch of real val text is reused: data loading is the same for every
    kind of model."""
    s = train_settings
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**model_args)).to(device)
    optimizer = model.configure_optimizers(s['weight_decay'], s['learning_rate'], (s['beta1'], s['beta2']), device_type)
    x, y = get_batch(val_data[dataset_of[models[0][0]]], batch_size, block_size, torch.Generator().manual_seed(seed), device)
    noise = torch.Generator(device=device).manual_seed(seed)

    def step():
        if model.config.model_type == 'gpt2':
            with ctx:
                _, loss = model(x, y)
        else:
            loss, stats = diffusion.training_loss(model, x, y, noise, 0, s, ctx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s['grad_clip'])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if model.config.model_type == 'diffusion':
            model.mask_logit_bias.copy_(diffusion.update_mask_bias(
                model.mask_logit_bias, stats['p_mask'], s['target_mask_prob'], s['mask_bias_gain'], s['mask_bias_limit']))

    for _ in range(2): # warm-up: allocations, kernel selection
        step()
    _, seconds = timed(lambda: [step() for _ in range(speed_iters)], device_type)
    return batch_size * block_size * speed_iters / seconds, seconds / speed_iters, model


# (label, architecture): AR, full-sequence diffusion and a block model per block size (without time
# conditioning, which the two-stream pass cannot take: one noise level per block, not per row)
variants = [('AR', ar_arch), ('diffusion', arch)] + [
    ('block diffusion', dict(arch, diffusion_block=b, time_conditioning=False)) for b in blocks]
speeds = [(label, *training_speed(args)) for label, args in progress(variants, 'training speed', 'model')]
section('Training speed', [
    f"Fresh models of the architecture of {models[0][0]} ({arch['n_layer']} layers, {arch['n_head']} heads, "
    f"{arch['n_embd']} wide, block_size {block_size}, {arch['pos_encoding']} positions), batch {batch_size}, eager "
    f"(no torch.compile), {speed_iters} timed iterations of train.py's step with its default settings: forward, loss, "
    "backward, clipping, AdamW; for diffusion the `elbo` objective, its mask-only corruption (one noise level per row, or per block) "
    "and the [MASK] bias controller. A block model (one per diffusion block among the checkpoints) runs the "
    "two-stream pass of BD3-LM: the noisy and the clean text side by side, twice the positions. tokens/s counts "
    "the text tokens of a batch; `vs AR` is tokens/s relative to AR."],
    ['model', 'diffusion block', 'objective', 'parameters', 'ms/iteration', 'tokens/s', 'vs AR'],
    [[label, block_label(model), 'next token' if model.config.model_type == 'gpt2' else 'elbo',
      f"{model.get_num_params():,}", fmt(seconds * 1000, 1), f"{tokens_per_s:,.0f}",
      fmt(tokens_per_s / speeds[0][1], 2)]
     for label, tokens_per_s, seconds, model in speeds])

print("generation speed...", flush=True)
# (name, sampler, steps, passes per block, temperature, note) of each timed generator: every AR model and every
# diffusion model at the settings of its best row at matched diversity (its first row in that table), then every
# block model at each of speed_block_passes passes per block, left to right, then every block model with a causal
# clean stream with the speculative sampler (the text of its AR mode)
best = [next(r for r in matched if r['name'] == name) for name, _, _ in ar_models + models]
timed_rows = [(r['name'], r['sampler'], r['steps'], None, r['temperature'], '' if r['matched'] else ' (not matched)')
              for r in best] + [
    (name, 'left_to_right', '-', per_block, temperature, '')
    for name, model, _ in models if model.denoising_block for per_block in speed_block_passes] + [
    (name, 'speculative', '-', None, temperature, '') for name, model, _ in models if model.config.causal_clean]
generation = [] # per row and batch size (1, then num_samples): tokens/s, chars/s, forward passes, chars per pass
for name, sampler, steps, per_block, temp, _ in progress(timed_rows, 'generation speed', 'generator'):
    sample(name, sampler, steps, temp, 1, per_block) # warm-up: allocations and kernels for this shape
    generation.append([])
    for batch in (1, num_samples):
        tokens, passes, seconds = sample(name, sampler, steps, temp, batch, per_block)
        chars = written_chars(tokens, dataset_of[name])
        generation[-1].append((batch * (L - 1) / seconds, chars / seconds, passes, chars / batch / passes))
ar_speed = generation[0] # the AR baseline's, with its KV cache
section('Generation speed', [
    f"{L - 1} tokens (of each generator's tokenizer) written after a given first one, by one sample (batch 1) and "
    f"by a batch of {num_samples}; tokens/s and chars/s = generated tokens or characters / wall time of the "
    "generation alone (after an untimed warm-up run at batch 1). AR: each trained checkpoint with its KV cache "
    "(model.generate) at its matched temperature. Diffusion: each trained checkpoint through diffusion.generate "
    "(block models block by block with their KV cache), at the sampler, steps and temperature of its best row at "
    "matched diversity (its lowest judge NLL; marked if it did not reach the band), then every block model with "
    f"the `left_to_right` sampler at {', '.join(map(str, speed_block_passes))} passes per block, temperature "
    f"{temperature}, and every block model trained with ar_loss_weight > 0 with the `speculative` sampler "
    "(draft 'simple': the AR mode's text, as many passes as its drafts need). Forward passes and chars/pass at "
    "batch 1 / at the batch: `refine`, the adaptive samplers and `speculative` stop when every sample of the batch "
    f"is done. `vs AR`: chars/s / that of {ar_name} at the same batch size "
    "(characters compare across tokenizers)."],
    ['generator', 'diffusion block', 'sampler', 'steps', 'temperature', 'forward passes', 'chars/pass',
     'tokens/s batch 1', 'chars/s batch 1', f'tokens/s batch {num_samples}', f'chars/s batch {num_samples}',
     'vs AR batch 1', f'vs AR batch {num_samples}'],
    [[name, block_label(by_name[name]), sampler + note,
      steps_label(by_name[name], sampler, steps) if per_block is None else f"{per_block}/block", fmt(temp),
      f"{one[2]} / {many[2]}", f"{one[3]:.2f} / {many[3]:.2f}", f"{one[0]:,.0f}", f"{one[1]:,.0f}",
      f"{many[0]:,.0f}", f"{many[1]:,.0f}", fmt(one[1] / ar_speed[0][1], 2), fmt(many[1] / ar_speed[1][1], 2)]
     for (name, sampler, steps, per_block, temp, note), (one, many) in zip(timed_rows, generation)])

plots = write_plots(out, fixed, matched, proofreading, dataset_of, temperature, repetition_n)
report.append(f"Plots: {', '.join(plots) if plots else 'none (matplotlib is not installed: pip install matplotlib)'}. "
              f"The benchmark took {time.time() - t_start:.0f} s, {measure.cache_info().currsize} generations of "
              f"{num_samples} samples for the sample-quality tables.\n")
with open(os.path.join(out, 'results.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(report))
print(f"wrote {os.path.join(out, 'results.md')} ({time.time() - t_start:.0f} s)")
