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

import html
import json
import os
import re
import sys

import torch

import configurator
from configurator import UserError, configure, require_choice, require_range
import diffusion
from loading import MASK_GLYPH, WRONG_GLYPH, load_model, load_tokenizer, read_text, setup_device, timed
from progress import progress

# -----------------------------------------------------------------------------
out_dir = 'out-shakespeare-diffusion' # directory of the diffusion checkpoint (ckpt.pt)
start = '' # prefix prompt, or "FILE:path"; '' = write from scratch
template = '' # a whole sequence with [MASK] / [MASK*N] placeholders to fill in, or "FILE:path"
proofread = '' # a text to check and correct, or "FILE:path"
wrong_threshold = None # proofread: flag a token when p([WRONG]) exceeds this (bench.py reports an F1-best one per model); None = where [WRONG] is the argmax
num_samples = 4 # samples drawn in parallel, as one batch
length = None # tokens per sample, prompt included; None = the model's block_size; longer text slides the context
sampler = 'confidence' # 'confidence' (commit proposals in the order and number below), 'refine' (the seed's loop: sample every position, rewrite what is flagged [WRONG]) or 'speculative' (draft by diffusion, verify as AR in the same pass: the AR mode's text, several tokens per pass; needs a model trained with --ar_loss_weight>0)
steps = 64 # confidence (and proofread): forward passes to write all masked tokens (per block for a block model; a cap for adaptive commits)
max_steps = 128 # refine: steps before one last pass fills whatever is still masked (per block for a block model)
schedule = 'cosine' # confidence: share of tokens still masked after each step, 'cosine' or 'linear'
order = 'auto' # confidence: which proposals a scheduled pass commits: 'auto' (the best at matched diversity in bench.py: 'left_to_right' for a block model, 'random' for a full-sequence one), 'left_to_right' (next-token order inside each block), 'confidence' (surest first) or 'random' (MDLM's ancestral order)
remask = 'none' # confidence: 'none', 'wrong' (rewrite tokens flagged [WRONG]) or 'low_confidence' (ReMDM-like)
commit = 'schedule' # confidence sampler: how many proposals each pass commits: 'schedule' (steps passes), 'threshold' (every proposal surer than threshold, at least one) or 'entropy' (lowest-entropy proposals while their summed entropy <= entropy_budget)
threshold = 0.9 # commit='threshold': confidence above which a proposal is committed
draft = 'simple' # speculative: 'simple' (one noisy copy drafts, as if every draft were kept) or 'ahead' (a copy per number of drafts kept,
                 # TiDAR: more tokens per pass, more positions per pass; slower on a CPU, docs/results.md)
entropy_budget = 1.0 # commit='entropy': nats of summed proposal entropy committed per pass
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
require_choice('sampler', sampler, ('confidence', 'refine', 'speculative'))
require_choice('draft', draft, ('ahead', 'simple'))
if schedule not in ('cosine', 'linear'):
    raise UserError(f"schedule must be 'cosine' or 'linear', not {schedule!r}")
if remask not in ('none', 'wrong', 'low_confidence'):
    raise UserError(f"remask must be 'none', 'wrong' or 'low_confidence', not {remask!r}")
require_choice('order', order, ('auto', 'confidence', 'random', 'left_to_right'))
require_choice('commit', commit, ('schedule', 'threshold', 'entropy'))
confidence_only = [key for key in ('remask', 'order', 'commit') if key in configurator.GIVEN]
if sampler != 'confidence' and confidence_only and not proofread:
    raise UserError(f"--{confidence_only[0]} works with the confidence sampler: add --sampler=confidence "
                    f"({sampler} writes every position {'left to right' if sampler == 'speculative' else 'and rewrites the tokens it flags as [WRONG]'})")
if 'draft' in configurator.GIVEN and sampler != 'speculative':
    raise UserError(f"--draft works with the speculative sampler: add --sampler=speculative, or leave --draft out")
if commit != 'schedule' and ('order' in configurator.GIVEN or remask == 'low_confidence'):
    raise UserError(f"--commit={commit} picks the surest proposals itself: it does not go with "
                    f"{'--order' if 'order' in configurator.GIVEN else '--remask=low_confidence'}; drop one of the two")
require_range('threshold', threshold, low=0, high=1, low_open=True)
require_range('entropy_budget', entropy_budget, low=0, low_open=True)
require_range('seed', seed, low=0, high=2**63, high_open=True, integer=True)
if steps < 1 or max_steps < 0 or num_samples < 1:
    raise UserError("steps and num_samples must be at least 1 and max_steps at least 0")
if temperature < 0:
    raise UserError(f"temperature must be >= 0 (0 = greedy), not {temperature}")
if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
    raise UserError(f"top_k must be a positive integer or None, not {top_k!r}")
if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1):
    raise UserError(f"top_p must be a number in (0, 1] or None, not {top_p!r}")
if wrong_threshold is not None and (not isinstance(wrong_threshold, (int, float)) or isinstance(wrong_threshold, bool)
                                    or not 0 < wrong_threshold < 1):
    raise UserError(f"wrong_threshold must be a number in (0, 1) or None, not {wrong_threshold!r}")
if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
    raise UserError(f"length must be a positive integer or None, not {length!r}")
if trajectory and not trajectory.endswith(('.html', '.gif')):
    raise UserError(f"--trajectory writes an HTML page or a GIF animation: give it a path ending in .html or .gif, not {trajectory!r}")
if trajectory.endswith('.gif'):
    try:
        from PIL import Image, ImageDraw, ImageFont
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


# watching it think: the first sample after every forward pass
def render(row, prev, span, cached, colour):
    """The text of a sequence, masks as glyphs; with colour (ANSI escape codes), tokens
    written in this step in green, tokens sent back to [MASK] in red, the positions being
    written (the block, or window) in bold and those held in the KV cache underlined."""
    parts = []
    for i, (t, p) in enumerate(zip(row, prev)):
        text = decode([t])
        if colour:
            style = ['1'] if span[0] <= i < span[1] else ['4'] if span[0] - cached <= i < span[0] else []
            if t == mask_id:
                style.append('31' if p != mask_id else '2')
            elif p == mask_id:
                style.append('32')
            text = f"\x1b[{';'.join(style)}m{text}\x1b[0m" if style else text
        parts.append(text)
    return ''.join(parts)


frames = [ids] # token ids of the first sample, one list per step
spans, caches = [[0, 0]], [0] # per frame: the positions being written, and how many before them are cached
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
        print(f"{screen}step {step}: {where}, {row.count(mask_id)} masked\n{render(row, frames[-1], span, cached, tty)}\n", flush=True)
    frames.append(row)
    spans.append(list(span))
    caches.append(cached)


def write_trajectory(path, fixed):
    """A self-contained HTML page (no network) replaying frames with a slider; fixed
    lists the positions the sampler was not allowed to change."""
    data = {'title': f"{out_dir}: {sampler} sampler", 'frames': frames, 'spans': spans, 'cached': caches,
            'fixed': fixed, 'mask': mask_id, 'glyph': MASK_GLYPH,
            'text': {t: decode([t]) for t in set().union(*frames) if t != mask_id}}
    # as JSON inside <script>: escaping <, > and & keeps "</script>" in a token from ending it
    payload = json.dumps(data, ensure_ascii=False).replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026')
    page = TRAJECTORY_PAGE.replace('@TITLE@', html.escape(data['title'])).replace('@DATA@', payload)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(page)
    print(f"wrote the trajectory of sample 1 ({len(frames) - 1} steps) to {path}")


TRAJECTORY_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>@TITLE@</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 60em; }
#text { font-family: monospace; white-space: pre-wrap; overflow-wrap: anywhere; border: 1px solid #ccc; padding: 1em; line-height: 1.6; }
.active { background: #e3ecf7; } .cached { border-bottom: 2px solid #9bd; }
.fixed { font-weight: bold; } .mask { color: #aaa; } .new { background: #c8f7c5; } .flagged { background: #f7c5c5; }
</style></head><body>
<h3>@TITLE@</h3>
<p><button id="play">play</button> <input id="slider" type="range" min="0" value="0" style="width: 30em">
<span id="label"></span></p>
<div id="text"></div>
<p><span class="fixed">prompt</span> &middot; <span class="mask">masked</span> &middot;
<span class="new">written in this step</span> &middot; <span class="flagged">sent back to [MASK] in this step</span> &middot;
<span class="active">being written (block or window)</span> &middot; <span class="cached">in the KV cache</span></p>
<script type="application/json" id="data">@DATA@</script>
<script>
const data = JSON.parse(document.getElementById('data').textContent);
const slider = document.getElementById('slider'), text = document.getElementById('text');
const label = document.getElementById('label'), play = document.getElementById('play');
slider.max = data.frames.length - 1;
function show(i) {
  const row = data.frames[i], prev = data.frames[Math.max(i - 1, 0)];
  const [start, end] = data.spans[i], cached = data.cached[i];
  text.replaceChildren(...row.map((t, j) => {
    const span = document.createElement('span');
    span.textContent = t === data.mask ? data.glyph : data.text[t];
    const classes = [];
    if (data.fixed[j]) classes.push('fixed');
    else if (t === data.mask) classes.push(i > 0 && prev[j] !== data.mask ? 'mask flagged' : 'mask');
    else if (i > 0 && prev[j] === data.mask) classes.push('new');
    if (j >= start && j < end) classes.push('active');
    else if (j >= start - cached && j < start) classes.push('cached');
    span.className = classes.join(' ');
    return span;
  }));
  const masked = row.filter(t => t === data.mask).length;
  label.textContent = 'step ' + i + ' of ' + (data.frames.length - 1) + ', ' + masked + ' masked' +
    (end > start ? ', writing ' + start + '-' + (end - 1) : '') + (cached ? ', ' + cached + ' cached' : '');
}
let timer = null;
play.onclick = () => {
  if (timer) { clearInterval(timer); timer = null; play.textContent = 'play'; return; }
  if (+slider.value === data.frames.length - 1) slider.value = 0;
  play.textContent = 'pause';
  timer = setInterval(() => {
    if (+slider.value >= data.frames.length - 1) { play.onclick(); return; }
    slider.value = +slider.value + 1; show(+slider.value);
  }, 300);
};
slider.oninput = () => show(+slider.value);
show(0);
</script></body></html>
"""

GIF_COLUMNS, GIF_FONT_SIZE = 64, 15 # text width in characters, and the size of the (scalable) default font
COLOURS = {'paper': (255, 255, 255), 'active': (204, 222, 247), 'new': (200, 240, 196), 'flagged': (245, 190, 190),
           'ink': (20, 20, 20), 'prompt': (30, 80, 170), 'caption': (90, 90, 90), 'cross': (200, 30, 30),
           'mask': (190, 190, 190)} # four backgrounds, then what is drawn on them


def write_animation(path, fixed):
    """An animated GIF replaying frames, one per pass, the last one held. Every token keeps one
    place, that of the finished text wrapped at GIF_COLUMNS, drawn character by character in
    cells of one width (the default font is not monospace): masks as grey boxes, the block or
    window being written tinted blue, tokens written in this pass green, tokens sent back to
    [MASK] in this pass (flagged [WRONG], or doubted) red with a cross, the prompt in blue."""
    font = ImageFont.load_default(size=GIF_FONT_SIZE)
    ascent, descent = font.getmetrics()
    cw, ch, margin = round(font.getlength('n')) + 1, ascent + descent + 4, 12
    # the layout of the finished text: (row, column, cells) of every token; a newline ends a row
    cells, r, c = [], 0, 0
    for text in (decode([t]) for t in frames[-1]):
        n = max(1, len(text.replace('\n', '')))
        if c and c + n > GIF_COLUMNS and '\n' not in text:
            r, c = r + 1, 0
        cells.append((r, c, n))
        r, c = (r + 1, 0) if '\n' in text else (r, c + n)
    top = margin + 2 * ch # below the caption
    legend_y = top + (cells[-1][0] + 1) * ch + ch // 2
    size = (2 * margin + GIF_COLUMNS * cw, legend_y + ch + margin)
    how = f", order {order}, remask {remask}" if sampler == 'confidence' else ''
    title = f"{os.path.basename(os.path.normpath(out_dir))}: {sampler} sampler{how}"
    legend = [('mask', 'masked'), ('active', 'being written'), ('new', 'written in this pass'),
              ('flagged', 'sent back to [MASK]')]

    def box(draw, x, y, n, colour):
        inset_x, inset_y = (1, 4) if colour == 'mask' else (0, 0) # a mask is a glyph-sized box, a tint fills the cell
        draw.rectangle((x + inset_x, y + inset_y, x + n * cw - 1 - inset_x, y + ch - 1 - inset_y), fill=COLOURS[colour])

    def cross(draw, x, y):
        draw.line((x + 2, y + 3, x + cw - 3, y + ch - 4), fill=COLOURS['cross'], width=2)
        draw.line((x + 2, y + ch - 4, x + cw - 3, y + 3), fill=COLOURS['cross'], width=2)

    def draw_frame(i):
        row, prev, (start, end) = frames[i], frames[max(i - 1, 0)], spans[i]
        image = Image.new('RGB', size, COLOURS['paper'])
        draw = ImageDraw.Draw(image)
        where = f", writing {start}-{end - 1}" if end > start else ''
        draw.text((margin, margin), title, font=font, fill=COLOURS['caption'])
        draw.text((margin, margin + ch), f"pass {i} of {len(frames) - 1}{where}, {row.count(mask_id)} masked",
                  font=font, fill=COLOURS['ink'])
        for j, (t, p) in enumerate(zip(row, prev)):
            x, y, n = margin + cells[j][1] * cw, top + cells[j][0] * ch, cells[j][2]
            if start <= j < end:
                box(draw, x, y, n, 'active')
            if t == mask_id and p != mask_id:
                box(draw, x, y, n, 'flagged')
                cross(draw, x, y)
            elif t == mask_id:
                box(draw, x, y, n, 'mask')
            else:
                if p == mask_id and i > 0:
                    box(draw, x, y, n, 'new')
                for k, char in enumerate(decode([t]).replace('\n', '')[:n]):
                    draw.text((x + k * cw + cw / 2, y + 2 + ascent), char, font=font, anchor='ms',
                              fill=COLOURS['prompt' if fixed[j] else 'ink'])
        x, y = margin, legend_y
        for colour, label in legend:
            box(draw, x, y, 1, colour)
            if colour == 'flagged':
                cross(draw, x, y)
            draw.text((x + cw + 4, y + 2 + ascent), label, font=font, anchor='ls', fill=COLOURS['caption'])
            x += cw + 20 + round(font.getlength(label))
        return image

    # one palette for all frames (a GIF has 256 colours): every mix of a background and what is
    # drawn on it, in 8 steps, so that flat colours stay exact, anti-aliased text keeps its
    # edges, and every frame stores only what changed
    shades = list(COLOURS.values())
    mixes = {tuple(round(b + (f - b) * k / 7) for b, f in zip(back, fore)) for back in shades[:4] for fore in shades[4:]
             for k in range(8)}
    palette = Image.new('P', (1, 1))
    palette.putpalette([v for colour in sorted(mixes) for v in colour])
    images = [draw_frame(i).quantize(palette=palette, dither=Image.Dither.NONE) for i in range(len(frames))]
    pace = max(40, min(400, 12000 // len(images))) # ms per pass: about 12 s in all, the last frame 3 s more
    images[0].save(path, save_all=True, append_images=images[1:], duration=[pace] * (len(images) - 1) + [3000],
                   loop=0, optimize=True)
    print(f"wrote the animation of sample 1 ({len(frames) - 1} steps) to {path}")

# run
generator = torch.Generator(device=device).manual_seed(seed)
# --show_steps prints every pass itself, and proofreading is one short pass over one window
bar = None if show_steps or proofread else progress(int((x == mask_id).sum()), 'writing', 'token')
sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                on_step=on_step if bar is not None or show_steps or trajectory else None)


def run():
    """(tokens, forward passes, positions the sampler wrote) of the chosen mode."""
    with ctx:
        if proofread:
            if sampling['on_step'] is not None: # proofread() has no blocks or cache to show
                sampling['on_step'] = lambda step, tokens: on_step(step, tokens, (0, len(ids)), 0)
            flags, y, passes = diffusion.proofread(model, x, steps, schedule=schedule, remask=remask, threshold=wrong_threshold,
                                                 **sampling)
            return y, passes, flags
        if sampler == 'confidence':
            y, passes = diffusion.generate(model, x, diffusion.confidence_sample, steps=steps, schedule=schedule, remask=remask,
                                           order=order, commit=commit, threshold=threshold, entropy_budget=entropy_budget, **sampling)
        elif sampler == 'speculative':
            y, passes = diffusion.generate(model, x, diffusion.speculative_sample, draft=draft, **sampling)
        else:
            y, passes = diffusion.generate(model, x, diffusion.refine_sample, max_steps=max_steps, **sampling)
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
    (write_animation if trajectory.endswith('.gif') else write_trajectory)(trajectory, (~written[0]).tolist())
# speed: the text the model wrote, not the prompt it was given
n_tokens = int(written.sum())
n_chars = sum(len(decode(part.tolist())) for part in y[written].split(written.sum(1).tolist()))
how = f"{sampler}" + (f", order {order}, commit {commit}" if sampler == 'confidence' else f", draft {draft}" if sampler == 'speculative' else '')
print(f"{num_samples} samples of {len(ids)} tokens ({how}): {passes} forward passes in {elapsed:.2f}s, "
      f"wrote {n_chars / elapsed:,.0f} chars/s ({n_tokens / elapsed:,.0f} tokens/s), "
      f"{n_tokens / num_samples / max(passes, 1):.2f} tokens per pass per sample")
