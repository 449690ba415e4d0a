"""
The benchmark: autoregressive and diffusion checkpoints trained on the same data,
measured side by side on fixed seeds. Writes results.md (markdown tables), samples.txt
and PNG plots to --out, and prints the tables as it goes:
$ python bench.py --ar_dir=out-shakespeare-ar-cpu \\
    --diffusion_dirs=out-shakespeare-diffusion-cpu,out-shakespeare-diffusion-elbo-cpu
1. validation loss: the AR NLL; every diffusion model's ELBO bound and masked CE;
2. sample quality: NLL under an AR judge next to entropy and repetition, for AR
   sampling and for each diffusion model x sampler x step count;
3. proofreading: [WRONG] detection of random substitutions, and the error rate before
   and after proofread();
4. speed: training tokens/s of AR and diffusion models of one size, and generation
   tokens/s and forward passes.
Everything but the timings is the same on every run with the same seed and device.
"""

import math
import os
import time
from dataclasses import asdict

import numpy as np
import torch

from configurator import UserError, configure, require_range
import diffusion
from loading import get_batch, load_checkpoint, load_split, load_tokenizer, model_from_checkpoint, setup_device, timed
from metrics import char_error_rate, detection_prf, judge_nll, repetition, substitute_tokens, unigram_entropy
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
ar_dir = 'out-shakespeare-ar-cpu' # the autoregressive checkpoint: the AR baseline
judge_dir = '' # the AR checkpoint that scores samples; '' = ar_dir
diffusion_dirs = 'out-shakespeare-diffusion-cpu,out-shakespeare-diffusion-elbo-cpu' # comma-separated diffusion checkpoints
out = 'out-bench' # folder for results.md, samples.txt and the plots
device = 'auto' # 'auto' (cuda > mps > cpu), or 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto' # 'auto': bfloat16 on CUDA if supported else float16; float32 elsewhere
seed = 1337
# validation loss and proofreading
eval_batches = 20 # val batches, the same for every model of one block_size
batch_size = 16 # rows per val batch and per timed training iteration
# sample quality
num_samples = 16 # samples per generator, drawn as one batch (16 keeps the CPU run to a few minutes)
sample_length = 128 # tokens per sample, the first one given (a val token): at most every diffusion model's block_size
temperature = 1.0 # of every generator, AR and diffusion alike, so their samples compare
step_counts = '8,16,32,64,128' # diffusion steps (max_steps for refine), comma-separated
repetition_n = 4 # repetition is the fraction of repeated n-grams of this n
# proofreading
proofread_rates = '0.02,0.05,0.1' # fractions of val tokens replaced by random other tokens, comma-separated
proofread_steps = 8 # confidence_sample steps that rewrite the flagged tokens
proofread_temperature = 0.0 # 0 = argmax: a correction should be the likeliest word
# speed
speed_iters = 10 # timed training iterations per model, after 2 untimed ones
# -----------------------------------------------------------------------------
configure(globals())
# -----------------------------------------------------------------------------
require_range('proofread_temperature', proofread_temperature, low=0)
require_range('seed', seed, low=0, high=2**63, high_open=True, integer=True)
if not out or os.path.isfile(out):
    raise UserError(f"out={out!r} is {'a file' if out else 'empty'}: give the folder for the results, e.g. --out=out-bench")


def parse_list(text, kind, key):
    try:
        values = [kind(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise UserError(f"{key} must be a comma-separated list of {kind.__name__}s, got {text!r}")
    if not values:
        raise UserError(f"{key} is empty: give at least one value")
    return values


diffusion_dirs = parse_list(diffusion_dirs, str.strip, 'diffusion_dirs')
step_counts = parse_list(step_counts, int, 'step_counts')
proofread_rates = parse_list(proofread_rates, float, 'proofread_rates')
judge_dir = judge_dir or ar_dir
if min(step_counts) < 1:
    raise UserError(f"step_counts must be positive, got {step_counts}")
if not all(0 <= r < 1 for r in proofread_rates):
    raise UserError(f"proofread_rates must be fractions in [0, 1), got {proofread_rates}")
if temperature <= 0:
    raise UserError(f"temperature must be > 0 (AR sampling has no greedy mode here), got {temperature}")
if min(eval_batches, batch_size, num_samples, repetition_n, proofread_steps, speed_iters) < 1:
    raise UserError("eval_batches, batch_size, num_samples, repetition_n, proofread_steps and speed_iters "
                    "must all be at least 1")
device, device_type, dtype, ctx = setup_device(device, dtype)
t_start = time.time()


def load(out_dir, model_type, key):
    """(model in eval mode, checkpoint); a checkpoint of the wrong kind names the option it belongs in."""
    checkpoint = load_checkpoint(out_dir, device, key)
    found = checkpoint['model_args'].get('model_type', 'gpt2')
    if found != model_type:
        raise UserError(f"{key}: {out_dir} holds a '{found}' model, not a '{model_type}' one: "
                        f"pass it in {'diffusion_dirs' if found == 'diffusion' else 'ar_dir or judge_dir'}")
    return model_from_checkpoint(checkpoint, device).eval(), checkpoint


def objective(checkpoint):
    return checkpoint['config'].get('loss_type', 'seed')


# checkpoints are named by their folder in the tables, or by their path if two folders share a name
paths = list(dict.fromkeys(os.path.normpath(d) for d in [ar_dir, judge_dir, *diffusion_dirs]))
short = {p: os.path.basename(p) for p in paths}
names = short if len(set(short.values())) == len(paths) else {p: p for p in paths}
ar_name = names[os.path.normpath(ar_dir)]
ar_model, ar_ckpt = load(ar_dir, 'gpt2', 'ar_dir')
judge, judge_ckpt = (ar_model, ar_ckpt) if judge_dir == ar_dir else load(judge_dir, 'gpt2', 'judge_dir')
# (name, model, checkpoint) of every diffusion model
models = [(names[os.path.normpath(d)], *load(d, 'diffusion', 'diffusion_dirs')) for d in diffusion_dirs]
dataset = ar_ckpt['config']['dataset']
vocab = ar_model.config.vocab_size
for key, name, model, checkpoint in [('judge_dir', judge_dir, judge, judge_ckpt)] + [('diffusion_dirs', *m) for m in models]:
    base = model.config.mask_token_id if model.config.model_type == 'diffusion' else model.config.vocab_size
    if checkpoint['config']['dataset'] != dataset or base != vocab:
        raise UserError(f"{key}: {name} was trained on '{checkpoint['config']['dataset']}' ({base} tokens) but {ar_dir} "
                        f"on '{dataset}' ({vocab} tokens): compare models of one dataset")
max_length = min(m.config.block_size for _, m, _ in models)
if not max(2, repetition_n) <= sample_length <= max_length:
    raise UserError(f"sample_length={sample_length} must be between {max(2, repetition_n)} and {max_length} "
                    "(the smallest block_size of the diffusion models)")
val_data = load_split(dataset, 'val')
decode = load_tokenizer(dataset)[1]
os.makedirs(out, exist_ok=True)
# timings are only meaningful on an otherwise idle machine: say how busy it was
busy = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, 'getloadavg') else ''
report = ["# nanoGPT-diffusion benchmark\n",
          f"dataset `{dataset}`, device `{device}` ({dtype}), {os.cpu_count()} CPU cores{busy}, seed {seed}, "
          f"torch {torch.__version__}. "
          f"Settings: eval_batches={eval_batches}, batch_size={batch_size}, num_samples={num_samples}, "
          f"sample_length={sample_length}, temperature={temperature}, proofread_steps={proofread_steps}, "
          f"speed_iters={speed_iters}.\n"]


def section(title, notes, header, rows):
    """Print a markdown table and add it, with its notes, to the report."""
    lines = [f"## {title}\n", *(note + '\n' for note in notes),
             '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header),
             *('| ' + ' | '.join(str(v) for v in row) + ' |' for row in rows), '']
    print('\n' + '\n'.join(lines), flush=True)
    report.extend(lines)


def val_batches(block_size):
    """The same eval_batches val batches (fixed seed) for every model of one block_size."""
    g = torch.Generator().manual_seed(seed)
    return [get_batch(val_data, batch_size, block_size, g, device) for _ in range(eval_batches)]


def fmt(v, digits=3):
    return f"{v:.{digits}f}"


section('Models', [], ['checkpoint', 'type', 'objective', 'iterations', 'parameters', 'block_size', 'positions'],
        [[name, m.config.model_type, 'next token' if m is ar_model else objective(c), c['iter_num'],
          f"{m.get_num_params():,}", m.config.block_size, m.config.pos_encoding]
         for name, m, c in [(ar_name, ar_model, ar_ckpt)] + models])

# -----------------------------------------------------------------------------
# 1. validation loss
print("validation losses...", flush=True)
fractions = (0.15, 0.5, 0.9)
with torch.no_grad():
    with ctx:
        ar_loss = np.mean([ar_model(x, y)[1].item() for x, y in val_batches(ar_model.config.block_size)])
    rows = [[ar_name, 'next token', 'NLL', fmt(ar_loss, 4), fmt(ar_loss / math.log(2), 4)] + ['-'] * len(fractions)]
    for name, model, checkpoint in models:
        mask_id = model.config.mask_token_id
        batches = val_batches(model.config.block_size)
        noise = torch.Generator(device=device).manual_seed(seed + 1)
        bound = []
        for x, _ in batches:
            schedule = checkpoint['config'].get('noise_schedule', 'linear')
            inputs, targets, _, elbo_weight, m = diffusion.corrupt_mask_only(x, noise, mask_id, schedule)
            with ctx:
                logits, _ = model(inputs, noise_level=m)
            bound.append(diffusion.elbo_loss(logits, inputs, targets, elbo_weight, mask_id)[0].item())
        masked_ce = [fmt(diffusion.masked_val_loss(model, [x for x, _ in batches], mask_id, fraction,
                                                   torch.Generator(device=device).manual_seed(seed + 2), ctx))
                     for fraction in fractions]
        b = np.mean(bound)
        measure = 'ELBO bound' if objective(checkpoint) == 'elbo' else 'ELBO bound (not its objective)'
        rows.append([name, objective(checkpoint), measure, fmt(b, 4), fmt(b / math.log(2), 4)] + masked_ce)
section('Validation loss', [
    f"{eval_batches} val batches of {batch_size} rows of each model's block_size (fixed seed).",
    "AR: mean next-token NLL. Diffusion: the continuous-time ELBO of masked diffusion, one noise level t per row "
    "(stratified, fixed seed). It is an upper bound on the NLL for any denoiser, so it is reported for every model, "
    "but it is tight only for a model trained on it (objective `elbo`); a `seed`-trained model never learned the "
    "mask-only inputs at every t it measures. Masked CE: mean CE over the words at exactly 15/50/90 % masked "
    "positions (the fill-in-the-blank loss, comparable across objectives)."],
    ['model', 'objective', 'measure', 'nats/token', 'bits/token'] + [f"masked CE {int(f * 100)}%" for f in fractions], rows)

# -----------------------------------------------------------------------------
# 2. sample quality, and the timings of generation
print("sample quality...", flush=True)
L = sample_length
reference = get_batch(val_data, num_samples, L, torch.Generator().manual_seed(seed + 3), device)[0]
first = reference[:, :1] # every generator writes tokens 2..L after the same first token
val_entropy = unigram_entropy(torch.from_numpy(val_data.astype(np.int64)))
quality = [] # one dict per generator: name, sampler, steps, passes, seconds, nll, entropy, rep
samples_txt = []


def add_sample(name, sampler, steps, tokens, passes, seconds):
    row = dict(name=name, sampler=sampler, steps=steps, passes=passes, seconds=seconds, nll=judge_nll(judge, tokens),
               entropy=unigram_entropy(tokens), rep=repetition(tokens, repetition_n))
    quality.append(row)
    samples_txt.append(f"==== {name} | {sampler} | steps {steps} | judge NLL {row['nll']:.3f} ====\n"
                       f"{decode(tokens[0].tolist())}\n")


with ctx:
    add_sample('val text', 'reference', '-', reference, '-', None)
    ar_tokens, seconds = timed(lambda: ar_model.generate(first, L - 1, temperature=temperature,
                                                          generator=torch.Generator(device=device).manual_seed(seed + 4)), device_type)
    add_sample(ar_name, 'autoregressive', '-', ar_tokens, L - 1, seconds)
    samplers = {'refine': (diffusion.refine_sample, {}), 'confidence': (diffusion.confidence_sample, {}),
                'confidence+wrong': (diffusion.confidence_sample, {'remask': 'wrong'}),
                'ancestral': (diffusion.confidence_sample, {'order': 'random'})}
    for name, model, _ in models:
        x = torch.cat([first, torch.full((num_samples, L - 1), model.config.mask_token_id, device=device)], 1)
        with torch.no_grad():
            diffusion.denoiser_logits(model, x) # warm-up, so the first timing is not paying for it
        for sampler, (sample_fn, kwargs) in samplers.items():
            for steps in step_counts:
                generator = torch.Generator(device=device).manual_seed(seed + 4)
                (tokens, passes), seconds = timed(lambda: sample_fn(model, x, steps, temperature=temperature,
                                                                    generator=generator, **kwargs), device_type)
                add_sample(name, sampler, steps, tokens, passes, seconds)
                print(f"{name} {sampler} {steps} steps: judge NLL {quality[-1]['nll']:.3f}, {passes} passes, "
                      f"{seconds:.2f}s", flush=True)
with open(os.path.join(out, 'samples.txt'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(samples_txt))
judge_note = ("The judge is the AR baseline itself, so the AR samples are scored by the model that wrote them "
              "(at temperature 1 their NLL is its own entropy rate: a favourable reference); pass judge_dir for an "
              "independent judge." if judge is ar_model else f"The judge is {names[os.path.normpath(judge_dir)]}.")
section('Sample quality', [
    f"{num_samples} samples of {L} tokens per generator, temperature {temperature}; the first token of each sample "
    f"is the first token of a random val window, the same for every generator, and the rest is generated.",
    f"Judge NLL: mean NLL (nats/token) of tokens 2..{L}, each given all tokens before it, under the AR judge "
    f"(context up to its block_size of {judge.config.block_size}: longer samples are scored in windows sliding by half "
    f"a block). {judge_note}",
    "Entropy: unigram entropy (nats) of all generated tokens pooled; repeated n-grams: mean over samples of the "
    f"fraction of a sample's {repetition_n}-grams that repeat an earlier one in it. **Read the judge NLL next to "
    "both**: a low NLL with a collapsed entropy or a high repetition is a degenerate sampler (repeating frequent "
    "tokens), not a good one. The `val text` row is real text of the same size, the reference for all three; the "
    f"unigram entropy of the whole val split is {val_entropy:.3f} nats.",
    "Samplers (diffusion.py): `refine` is the seed's loop (steps = max_steps; it may stop early), `confidence` "
    "commits the most confident tokens on a cosine schedule, `confidence+wrong` also sends tokens the model flags "
    "[WRONG] back to [MASK], `ancestral` commits a random choice of proposals on the same schedule "
    "(MDLM's ancestral order). The first sample of each row is in samples.txt."],
    ['model', 'sampler', 'steps', 'forward passes', 'judge NLL', 'entropy', f'repeated {repetition_n}-grams'],
    [[r['name'], r['sampler'], r['steps'], r['passes'], fmt(r['nll']), fmt(r['entropy']), fmt(r['rep'])] for r in quality])

# -----------------------------------------------------------------------------
# 3. proofreading
print("proofreading...", flush=True)
proofreading = [] # one dict per model and rate: name, objective, rate, prf, before, after
for name, model, checkpoint in models:
    batches = val_batches(model.config.block_size)
    for rate in proofread_rates:
        noise = torch.Generator(device=device).manual_seed(seed + 5)
        results = []
        for x, _ in batches:
            corrupted, truth = substitute_tokens(x, rate, vocab, noise)
            with ctx:
                flagged, corrected, _ = diffusion.proofread(model, corrupted, proofread_steps,
                                                            temperature=proofread_temperature, generator=noise)
            results.append((x, corrupted, truth, flagged, corrected))
        clean, corrupted, truth, flagged, corrected = (torch.cat(t) for t in zip(*results))
        proofreading.append(dict(name=name, objective=objective(checkpoint), rate=rate, prf=detection_prf(flagged, truth),
                                 before=char_error_rate(corrupted, clean), after=char_error_rate(corrected, clean)))
section('Proofreading', [
    f"{eval_batches} val batches of {batch_size} rows of each model's block_size; in every row exactly int(rate * "
    "block_size) positions get a random different token. Detection: the positions diffusion.wrong_flags flags "
    "[WRONG] (argmax over everything but [MASK]) against the substituted ones, counted over all positions. "
    f"Correction: diffusion.proofread sends the flagged tokens back to [MASK] and rewrites them in {proofread_steps} "
    f"confidence steps at temperature {proofread_temperature}. Error rate: fraction of tokens that differ from the "
    "clean text (substitution only, so the texts stay aligned: Hamming = character error rate for char data). "
    "A model trained with the `elbo` objective never saw [WRONG] as a target: its row measures an untrained head."],
    ['model', 'objective', 'substituted', 'precision', 'recall', 'F1', 'error rate before', 'error rate after'],
    [[r['name'], r['objective'], f"{r['rate'] * 100:g}%", *map(fmt, r['prf']), fmt(r['before'], 4), fmt(r['after'], 4)]
     for r in proofreading])

# -----------------------------------------------------------------------------
# 4. speed: fresh models of one architecture, that of the first diffusion checkpoint
print("speed...", flush=True)
arch = dict(asdict(models[0][1].config), mask_logit_bias=0.0)
ar_arch = dict(arch, model_type='gpt2', vocab_size=vocab, mask_token_id=-1, wrong_token_id=-1, time_conditioning=False)
block = arch['block_size']


def training_speed(model_args, loss_type):
    """(tokens/s, seconds per iteration, parameters) of train.py's step on a fresh model:
    corruption, forward, loss, backward, gradient clipping, AdamW and, for diffusion, the
    [MASK] bias controller. One batch of real val text is reused: data loading is the
    same for both kinds of model."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**model_args)).to(device)
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), device_type)
    x, y = get_batch(val_data, batch_size, block, torch.Generator().manual_seed(seed), device)
    noise = torch.Generator(device=device).manual_seed(seed)
    mask_id, wrong_id = model.config.mask_token_id, model.config.wrong_token_id

    def step():
        if loss_type == 'ar':
            with ctx:
                _, loss = model(x, y)
        elif loss_type == 'elbo':
            inputs, targets, _, elbo_weight, noise_level = diffusion.corrupt_mask_only(x, noise, mask_id, 'linear')
            with ctx:
                logits, _ = model(inputs, noise_level=noise_level)
            loss, _ = diffusion.elbo_loss(logits, inputs, targets, elbo_weight, mask_id)
        else: # the seed recipe past its curriculum: every kind of corruption, full penalty (train.py's defaults)
            inputs, targets, noise_level = diffusion.corrupt(x, noise, mask_id, wrong_id, 0.0, 1.0)
            with ctx:
                logits, _ = model(inputs, noise_level=noise_level)
            loss, _ = diffusion.task_weighted_loss(logits, inputs, targets, noise_level, mask_id, wrong_id, 1.0, 1.0, 0.5, 0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if loss_type != 'ar':
            p_mask, _ = diffusion.mask_statistics(logits, inputs, mask_id, model.mask_logit_bias)
            model.mask_logit_bias.copy_(diffusion.update_mask_bias(model.mask_logit_bias, p_mask, 0.5, 0.1, 20.0))

    for _ in range(2): # warm-up: allocations, kernel selection
        step()
    _, seconds = timed(lambda: [step() for _ in range(speed_iters)], device_type)
    return batch_size * block * speed_iters / seconds, seconds / speed_iters, model.get_num_params()


speeds = [(label, objective_name, *training_speed(args, loss_type)) for label, objective_name, args, loss_type in
          (('AR', 'next token', ar_arch, 'ar'), ('diffusion', 'seed', arch, 'seed'), ('diffusion', 'elbo', arch, 'elbo'))]
section('Training speed', [
    f"Fresh models of the architecture of {models[0][0]} ({arch['n_layer']} layers, {arch['n_head']} heads, "
    f"{arch['n_embd']} wide, block_size {block}, {arch['pos_encoding']} positions), batch {batch_size}, eager "
    f"(no torch.compile), {speed_iters} timed iterations of train.py's step: corruption (diffusion), forward, loss, "
    "backward, clipping, AdamW, and the [MASK] bias controller (diffusion). `vs AR` is tokens/s relative to AR: "
    "the diffusion models pay for the corruption and their loss only."],
    ['model', 'objective', 'parameters', 'ms/iteration', 'tokens/s', 'vs AR'],
    [[label, objective_name, f"{params:,}", fmt(seconds * 1000, 1), f"{tokens_per_s:,.0f}",
      fmt(tokens_per_s / speeds[0][2], 2)] for label, objective_name, tokens_per_s, seconds, params in speeds])

twin = GPT(GPTConfig(**ar_arch)).to(device).eval()
generation = []
with ctx:
    twin.generate(first, 2) # warm-up
    for use_kv_cache in (False, True):
        _, seconds = timed(lambda: twin.generate(first, L - 1, temperature=temperature, use_kv_cache=use_kv_cache,
                                                  generator=torch.Generator(device=device).manual_seed(seed)), device_type)
        generation.append(dict(name='AR + KV cache' if use_kv_cache else 'AR', sampler='autoregressive', steps='-',
                               passes=L - 1, seconds=seconds))
generation += [r for r in quality if r['seconds'] is not None and r['sampler'] != 'autoregressive']
ar_kv_speed = num_samples * (L - 1) / generation[1]['seconds']
section('Generation speed', [
    f"Batches of {num_samples} samples, {L - 1} tokens written after a given first one, temperature {temperature}. "
    f"AR: a fresh model of the architecture of {models[0][0]} (speed does not depend on the weights), without and "
    "with its KV cache. Diffusion: the timed runs of the sample-quality table (the trained checkpoints, since the "
    "number of forward passes of `refine` depends on the model). tokens/s = generated tokens / wall time."],
    ['generator', 'sampler', 'steps', 'forward passes', 'seconds', 'tokens/s', 'vs AR + KV cache'],
    [[r['name'], r['sampler'], r['steps'], r['passes'], fmt(r['seconds']), f"{num_samples * (L - 1) / r['seconds']:,.0f}",
      fmt(num_samples * (L - 1) / r['seconds'] / ar_kv_speed, 2)] for r in generation])

# -----------------------------------------------------------------------------
# plots


def write_plots():
    """PNG plots of the tables (matplotlib is optional): a colour per model, a line style per sampler."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    styles = dict(zip(samplers, ('-o', '--s', ':^', '-.D', '-v', '--P')))

    def plot_samplers(ax, rows, value):
        for i, (name, _, _) in enumerate(models):
            for sampler in samplers:
                points = [r for r in rows if r['name'] == name and r['sampler'] == sampler]
                ax.plot([r['steps'] for r in points], [value(r) for r in points], styles[sampler],
                        color=colours[i % len(colours)], label=f"{name} {sampler}")
        ax.set_xscale('log', base=2)
        ax.set_xlabel('diffusion steps')

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.5), layout='constrained')
    for ax, key, label in zip(axes, ('nll', 'entropy', 'rep'),
                              ('judge NLL (nats/token)', 'unigram entropy (nats)', f'repeated {repetition_n}-grams')):
        plot_samplers(ax, quality, lambda r: r[key])
        for r, style in zip(quality[:2], ('--', ':')): # val text and AR samples
            ax.axhline(r[key], color='k', linestyle=style, label=f"{r['name']} ({r['sampler']})")
        ax.set_ylabel(label)
    fig.legend(*axes[0].get_legend_handles_labels(), loc='outside lower center', ncol=3, fontsize=8)
    fig.suptitle('sample quality: read the judge NLL next to entropy and repetition')
    fig.savefig(os.path.join(out, 'sample_quality.png'), dpi=100)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout='constrained')
    rates = [r * 100 for r in proofread_rates]
    for i, (name, _, _) in enumerate(models):
        rows = [r for r in proofreading if r['name'] == name]
        axes[0].plot(rates, [r['prf'][2] for r in rows], '-o', color=colours[i % len(colours)], label=name)
        axes[1].plot(rates, [r['after'] for r in rows], '-o', color=colours[i % len(colours)], label=f"{name}: after proofread")
    axes[1].plot(rates, [r['before'] for r in proofreading[:len(proofread_rates)]], 'k--', label='before')
    for ax, label in zip(axes, ('[WRONG] detection F1', 'token error rate')):
        ax.set_xlabel('substituted tokens (%)')
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, 'proofreading.png'), dpi=100)

    fig, ax = plt.subplots(figsize=(8, 6), layout='constrained')
    plot_samplers(ax, generation, lambda r: num_samples * (L - 1) / r['seconds'])
    for r, style in zip(generation[:2], (':', '--')): # AR without and with the KV cache
        ax.axhline(num_samples * (L - 1) / r['seconds'], color='k', linestyle=style, label=r['name'])
    ax.set_yscale('log')
    ax.set_ylabel('generated tokens/s')
    fig.legend(loc='outside lower center', ncol=2, fontsize=8)
    fig.savefig(os.path.join(out, 'generation_speed.png'), dpi=100)
    plt.close('all')
    return ['sample_quality.png', 'proofreading.png', 'generation_speed.png']


plots = write_plots()
report.append(f"Plots: {', '.join(plots) if plots else 'none (matplotlib is not installed)'}. "
              f"The benchmark took {time.time() - t_start:.0f} s.\n")
with open(os.path.join(out, 'results.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(report))
print(f"wrote {os.path.join(out, 'results.md')} ({time.time() - t_start:.0f} s)")
