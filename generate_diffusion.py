"""
Write text with a diffusion model of this project: start from [MASK] tokens and refine
the whole sequence in parallel, a few forward passes in all.
$ python generate_diffusion.py --out_dir=out-shakespeare-diffusion
$ python generate_diffusion.py --start="ROMEO:" --show_steps=True --trajectory=steps.html
$ python generate_diffusion.py --num_samples=1 --length=256 --trajectory=steps.gif
$ python generate_diffusion.py --template="ROMEO:\\n[MASK*100]\\nJULIET:\\n[MASK*100]"
$ python generate_diffusion.py --proofread="FILE:draft.txt"
Prompts: `start` is a prefix, and the rest of the `length` tokens are written; `length` may
exceed the model's block_size: a block model slides its context block by block (with a KV
cache of the finished blocks), a full-sequence model writes window after window.
`template` is a whole sequence with placeholders: [MASK] is one token to write, [MASK*N]
is N of them (tokens are characters for a char-level dataset, GPT-2 BPE tokens
otherwise); everything else is kept as written. `proofread` is a text the model checks:
the tokens it flags as [WRONG] are rewritten, the rest are kept. Each of the three takes
text or FILE:path; in text typed on the command line, \\n stands for a newline.
Masks are shown as \u2591, flagged tokens as \u2717. Progress (positions written, their rate and
the time left) goes to stderr, the samples to stdout.
"""

import os
import re
import sys

import torch

import configurator
from configurator import UserError, configure, require_choice, require_range
import sampling
from loading import MASK_GLYPH, WRONG_GLYPH, get_batch, load_model, load_split, load_tokenizer, read_text, setup_device, timed
from metrics import tuned_threshold
from progress import progress
from trajectory import render_terminal, token_states, write_gif, write_html

# -----------------------------------------------------------------------------
out_dir = 'out-shakespeare-diffusion' # directory of the diffusion checkpoint (ckpt.pt)
start = '' # prefix prompt, or "FILE:path"; '' = write from scratch
template = '' # a whole sequence with [MASK] / [MASK*N] placeholders to fill in, or "FILE:path"
proofread = '' # a text to check and correct, or "FILE:path"
wrong_threshold = None # proofread: flag a token when p([WRONG]) exceeds this; None = the F1-best threshold on the
                       # dataset's val text with proofread_rate of its tokens substituted; 'argmax' = where [WRONG] is the argmax
proofread_rate = 0.05 # wrong_threshold=None: the share of substituted tokens the threshold is tuned for
num_samples = 4 # samples drawn in parallel, as one batch
length = None # tokens per sample, prompt included; None = the model's block_size; longer text slides the context
sampler = 'confidence' # 'confidence' (commit proposals in the order and number below), 'refine' (the seed's loop: sample every position, rewrite what is flagged [WRONG]) or 'speculative' (draft by diffusion, verify as AR in the same pass: the AR mode's text, several tokens per pass; needs a model trained with --ar_loss_weight>0)
steps = 64 # confidence (and proofread): forward passes to write all masked tokens (per block for a block model; a cap for commit='threshold')
max_steps = 128 # refine: steps before one last pass fills whatever is still masked (per block for a block model)
schedule = 'cosine' # confidence: share of tokens still masked after each step, 'cosine' or 'linear'
order = 'auto' # confidence: which proposals a scheduled pass commits: 'auto' (the best at matched diversity in bench.py: 'left_to_right' for a block model, 'random' for a full-sequence one), 'left_to_right' (next-token order inside each block), 'confidence' (surest first) or 'random' (MDLM's ancestral order)
commit = 'schedule' # confidence sampler: how many proposals each pass commits: 'schedule' (steps passes) or 'threshold' (Fast-dLLM: every proposal surer than threshold, at least one)
threshold = 0.9 # commit='threshold': confidence above which a proposal is committed
temperature = 0.8 # 1.0 = the model's distribution, < 1.0 more conservative, 0 = greedy
top_k = None # sample only among the top_k most likely tokens (None = all)
top_p = None # sample only among the most likely tokens of total probability top_p (None = all)
seed = 1337
device = 'auto' # 'auto' (cuda > mps > cpu), or 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto' # 'auto': bfloat16 on CUDA if supported else float16; float32 elsewhere
show_steps = False # redraw the first sample in the terminal after every step
trajectory = '' # replay of the first sample step by step: a self-contained page (path.html) or an animation (path.gif, needs Pillow)
output = '' # also write the samples to this file
# -----------------------------------------------------------------------------
configure(globals())
# -----------------------------------------------------------------------------
SEPARATOR = '---------------'
PLACEHOLDER = re.compile(r'\[MASK(?:\*(\d+))?\]')


def parse_template(text, encode, mask_id):
    """Token ids of a template: its text encoded, each [MASK*N] as N [MASK] tokens."""
    ids, pos = [], 0
    for m in PLACEHOLDER.finditer(text):
        ids += encode(text[pos:m.start()]) + [mask_id] * int(m.group(1) or 1)
        pos = m.end()
    if mask_id not in ids:
        raise UserError("--template has nothing to fill in: add [MASK] (one token) or [MASK*N] (N tokens)")
    return ids + encode(text[pos:])


# the options, checked before the (slow) model loading
for key in ('template', 'proofread'):
    if key in configurator.GIVEN and not globals()[key]:
        raise UserError(f"--{key} is empty: give the text{' with [MASK] placeholders' if key == 'template' else ''}, "
                        f"or FILE:path, or leave --{key} out")
if sum(bool(v) for v in (start, template, proofread)) > 1:
    raise UserError("set only one of --start (a prefix), --template (placeholders anywhere) and --proofread")
if (template or proofread) and length is not None:
    raise UserError(f"--length does not go with --{'template' if template else 'proofread'}: the text sets the length")
require_choice('sampler', sampler, tuple(sampling.SAMPLERS))
writer = 'confidence' if proofread else sampler # proofreading rewrites the flagged tokens by confidence
options = {key: globals()[key] for key in sampling.OPTIONS[writer]} # the writer's options, with their defaults
given = {key for keys in sampling.OPTIONS.values() for key in keys if key in configurator.GIVEN}
try: # options the writer does not take, unknown choices, values out of range
    sampling.check_options(writer, {key: globals()[key] for key in given | set(options) if globals()[key] != 'auto'})
except ValueError as e:
    raise UserError(str(e)) from None
require_range('seed', seed, low=0, high=2**63, high_open=True, integer=True)
if num_samples < 1:
    raise UserError(f"num_samples must be at least 1, not {num_samples}")
if temperature < 0:
    raise UserError(f"temperature must be >= 0 (0 = greedy), not {temperature}")
if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
    raise UserError(f"top_k must be a positive integer or None, not {top_k!r}")
if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1):
    raise UserError(f"top_p must be a number in (0, 1] or None, not {top_p!r}")
if wrong_threshold not in (None, 'argmax') and (not isinstance(wrong_threshold, (int, float)) or isinstance(wrong_threshold, bool)
                                                or not 0 < wrong_threshold < 1):
    raise UserError(f"wrong_threshold must be a number in (0, 1), None (tuned) or 'argmax', not {wrong_threshold!r}")
require_range('proofread_rate', proofread_rate, low=0, high=1, low_open=True, high_open=True)
if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
    raise UserError(f"length must be a positive integer or None, not {length!r}")
if trajectory and not trajectory.endswith(('.html', '.gif')):
    raise UserError(f"--trajectory writes an HTML page or a GIF animation: give it a path ending in .html or .gif, not {trajectory!r}")
if trajectory.endswith('.gif'):
    try:
        from PIL import ImageFont
    except ImportError:
        raise UserError(f"--trajectory={trajectory} needs Pillow for the animation: pip install pillow") from None
    if not hasattr(ImageFont, 'load_default_imagefont'): # Pillow 10.1 made load_default() a scalable font
        raise UserError(f"--trajectory={trajectory} needs Pillow 10.1 or newer: pip install -U pillow")
for key in ('trajectory', 'output'): # written at the end: a path that cannot be written would waste the run
    path = globals()[key]
    folder = os.path.dirname(path)
    if path and (os.path.isdir(path) or (folder and not os.path.isdir(folder))):
        why = 'it is a folder' if os.path.isdir(path) else f'the folder {folder} does not exist'
        raise UserError(f"--{key}={path} cannot be written ({why}): give a file in an existing folder")

device, device_type, dtype, ctx = setup_device(device, dtype)

model, checkpoint = load_model(out_dir, device, 'diffusion', 'generate_diffusion.py')
if sampler == 'speculative' and not proofread and not model.config.causal_clean:
    raise UserError(f"--sampler=speculative needs a block model whose clean stream predicts the next token, and {out_dir} "
                    f"has none: train one with --ar_loss_weight>0 (e.g. python train.py config/quickstart_block_cpu.py --ar_loss_weight=1.0)")
if order == 'auto': # inside a small block, next-token order; over a whole sequence, a random order (docs/results.md)
    order = 'left_to_right' if model.denoising_block else 'random'
    options.update({'order': order} if 'order' in options else {})
encode, decode = load_tokenizer(checkpoint['config']['dataset'])
block_size, mask_id, wrong_id = model.config.block_size, model.config.mask_token_id, model.config.wrong_token_id

# the starting sequence: [MASK] where the model writes, fixed tokens everywhere else
if proofread or template:
    if proofread:
        ids = encode(read_text(proofread, 'proofread'))
        if not ids:
            raise UserError("--proofread got an empty text")
    else:
        ids = parse_template(read_text(template, 'template'), encode, mask_id)
    if proofread and len(ids) > block_size:
        raise UserError(f"the text is {len(ids)} tokens, longer than the model's block_size {block_size}: proofread it in parts")
else:
    prompt = encode(read_text(start, 'start'))
    total = block_size if length is None else length
    if len(prompt) >= total:
        raise UserError(f"the prompt has {len(prompt)} tokens, so length {total} leaves nothing to write: raise --length or shorten --start")
    ids = prompt + [mask_id] * (total - len(prompt))
x = torch.tensor(ids, dtype=torch.long, device=device)[None].repeat(num_samples, 1)
if proofread and wrong_threshold is None:
    # the detector of a model trained with few random tokens, whose [WRONG] argmax rarely wins
    dataset = checkpoint['config']['dataset']
    try:
        val = load_split(dataset, 'val')
    except UserError as e:
        raise UserError(f"{e}; or give --wrong_threshold (a p([WRONG]) in (0, 1), or 'argmax'), which is "
                        "otherwise tuned on that text") from None
    batch_generator, noise = torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed)
    with ctx:
        # tuned_threshold flags where 1 - p([WRONG]) is below the cutoff: p([WRONG]) above 1 - cutoff
        wrong_threshold = 1 - tuned_threshold(
            lambda tokens: 1 - sampling.wrong_probs(model, tokens),
            [get_batch(val, 16, block_size, batch_generator, device)[0] for _ in range(8)], proofread_rate,
            model.config.words, noise)
    print(f"flagging tokens with p([WRONG]) > {wrong_threshold:.3f}: the F1-best threshold on {dataset}'s val text "
          f"with {proofread_rate:.0%} of its tokens substituted (--wrong_threshold sets it)")


# watching it think: the first sample after every forward pass, replayed by trajectory.py
replay = {'frames': [ids], 'spans': [[0, 0]], 'cached': [0], 'fixed': (x[0] != mask_id).tolist()}
tty = sys.stdout.isatty()


def on_step(step, tokens, span, cached):
    if bar is not None: # positions written so far, of all samples: one host sync, as the sampler's own per pass
        bar.update(bar.total - int((tokens == mask_id).sum()) - bar.n)
    if not (show_steps or trajectory):
        return
    row = tokens[0].tolist() # one host sync per step, only when watching
    if show_steps:
        screen = '\x1b[H\x1b[2J' if tty else '' # redraw in place on a terminal, a log otherwise
        where = f"writing {span[0]}-{span[1] - 1}" + (f", {cached} cached" if cached else '')
        states = token_states(row, replay['frames'][-1], replay['fixed'], span, cached, mask_id)
        print(f"{screen}step {step}: {where}, {row.count(mask_id)} masked\n"
              f"{render_terminal(row, states, decode, MASK_GLYPH, tty)}\n", flush=True)
    replay['frames'].append(row)
    replay['spans'].append(list(span))
    replay['cached'].append(cached)


# run
generator = torch.Generator(device=device).manual_seed(seed)
# --show_steps prints every pass itself, and proofreading is one short pass over one window
bar = None if show_steps or proofread else progress(int((x == mask_id).sum()), 'writing', 'token')
sampler_kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                on_step=on_step if bar is not None or show_steps or trajectory else None)


def run():
    """(tokens, forward passes, positions the sampler wrote) of the chosen mode."""
    with ctx:
        if proofread:
            if sampler_kwargs['on_step'] is not None: # proofread() has no blocks or cache to show
                sampler_kwargs['on_step'] = lambda step, tokens: on_step(step, tokens, (0, len(ids)), 0)
            flags, y, passes = sampling.proofread(model, x, steps, schedule=schedule,
                                                  threshold=None if wrong_threshold == 'argmax' else wrong_threshold,
                                                  **sampler_kwargs)
            return y, passes, flags
        y, passes = sampling.generate(model, x, sampling.SAMPLERS[sampler], **options, **sampler_kwargs)
        return y, passes, x == mask_id


(y, passes, written), elapsed = timed(run, device_type)
if bar is not None:
    bar.close()
samples = [decode(row) for row in y.tolist()]
if proofread:
    print(f"flagged {int(written[0].sum())} of {len(ids)} tokens as [WRONG] (shown as {WRONG_GLYPH}):")
    print(decode(torch.where(written[0], wrong_id, x[0]).tolist()))
    print(SEPARATOR)
for sample in samples:
    print(sample)
    print(SEPARATOR)
if output:
    with open(output, 'w', encoding='utf-8') as f:
        f.write(''.join(f"{sample}\n{SEPARATOR}\n" for sample in samples))
if trajectory:
    replay['fixed'] = (~written[0]).tolist() # proofreading: every token but the flagged ones
    how = f", order {order}" if sampler == 'confidence' else ''
    title = f"{os.path.basename(os.path.normpath(out_dir))}: {sampler} sampler{how}"
    if trajectory.endswith('.gif'):
        write_gif(trajectory, title, replay, decode, mask_id)
    else:
        write_html(trajectory, title, replay, decode, mask_id, MASK_GLYPH)
    print(f"wrote the {'animation' if trajectory.endswith('.gif') else 'trajectory'} of sample 1 "
          f"({len(replay['frames']) - 1} steps) to {trajectory}")
# speed: the text the model wrote, not the prompt it was given
n_tokens = int(written.sum())
n_chars = sum(len(decode(part.tolist())) for part in y[written].split(written.sum(1).tolist()))
how = f"{sampler}" + (f", order {order}, commit {commit}" if sampler == 'confidence' else '')
print(f"{num_samples} samples of {len(ids)} tokens ({how}): {passes} forward passes in {elapsed:.2f}s, "
      f"wrote {n_chars / elapsed:,.0f} chars/s ({n_tokens / elapsed:,.0f} tokens/s), "
      f"{n_tokens / num_samples / max(passes, 1):.2f} tokens per pass per sample")
