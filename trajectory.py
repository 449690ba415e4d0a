"""
Replays of a diffusion sampler, pass by pass: the terminal's --show_steps, a self-contained
HTML page and an animated GIF. A replay is the list of frames (the token ids of one sample
after every forward pass) with, per frame, the span being written and how many tokens
before it sit in the KV cache. One rule, token_states, says what each token is in a frame;
the three views only choose how to draw each state.
"""

import html
import json

# the states of a token in a frame, as token_states names them
STATES = {'fixed': 'given (the prompt): never changed',
          'mask': 'masked',
          'flagged': 'sent back to [MASK] in this pass',
          'new': 'written in this pass',
          'redrawn': 'replaced in this pass (a rejected draft)',
          'active': 'being written (block or window)',
          'cached': 'in the KV cache'}


def token_states(row, prev, fixed, span, cached, mask_id):
    """[the states of each token of a frame] (names of STATES): row and prev the token ids of this
    frame and the one before it (the same list for the first frame), fixed which positions were
    given, span (start, end) the positions being written, cached how many before them are cached."""
    start, end = span
    states = []
    for j, (t, p) in enumerate(zip(row, prev)):
        s = ['fixed'] if fixed[j] else []
        if t == mask_id:
            s.append('flagged' if p != mask_id else 'mask')
        elif p == mask_id:
            s.append('new')
        elif t != p: # only the speculative sampler's drafts change without going through [MASK]
            s.append('redrawn')
        if start <= j < end:
            s.append('active')
        elif start - cached <= j < start:
            s.append('cached')
        states.append(s)
    return states


def frame_states(replay, i, mask_id):
    """token_states of frame i of a replay (a dict: frames, spans, cached, fixed)."""
    frames = replay['frames']
    return token_states(frames[i], frames[max(i - 1, 0)], replay['fixed'], replay['spans'][i], replay['cached'][i], mask_id)


ANSI = {'mask': '2', 'flagged': '31', 'new': '32', 'redrawn': '33', 'active': '1', 'cached': '4'} # dim, red, green, yellow, bold, underline


def render_terminal(row, states, decode, mask_glyph, colour):
    """The text of one frame, masks as mask_glyph, each token styled by its states (ANSI codes) with colour."""
    parts = []
    for t, s in zip(row, states):
        text = decode([t])
        codes = [ANSI[name] for name in s if name in ANSI]
        parts.append(f"\x1b[{';'.join(codes)}m{text}\x1b[0m" if colour and codes else text)
    return ''.join(parts)


def write_html(path, title, replay, decode, mask_id, mask_glyph):
    """A self-contained HTML page (no network) replaying the frames with a slider. The states of
    every token come from token_states, one class each; the page only draws them."""
    frames = replay['frames']
    data = {'title': title, 'frames': frames, 'spans': replay['spans'], 'cached': replay['cached'],
            'states': [[' '.join(s) for s in frame_states(replay, i, mask_id)] for i in range(len(frames))],
            'mask': mask_id, 'glyph': mask_glyph, 'text': {t: decode([t]) for t in set().union(*frames) if t != mask_id}}
    # as JSON inside <script>: escaping <, > and & keeps "</script>" in a token from ending it
    payload = json.dumps(data, ensure_ascii=False).replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026')
    legend = ' &middot;\n'.join(f'<span class="{name}">{html.escape(label)}</span>' for name, label in STATES.items())
    page = PAGE.replace('@TITLE@', html.escape(title)).replace('@LEGEND@', legend).replace('@DATA@', payload)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(page)


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>@TITLE@</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 60em; }
#text { font-family: monospace; white-space: pre-wrap; overflow-wrap: anywhere; border: 1px solid #ccc; padding: 1em; line-height: 1.6; }
.active { background: #e3ecf7; } .cached { border-bottom: 2px solid #9bd; }
.fixed { font-weight: bold; } .mask { color: #aaa; } .new { background: #c8f7c5; } .flagged { background: #f7c5c5; color: #c00; } .redrawn { background: #fad6a0; }
</style></head><body>
<h3>@TITLE@</h3>
<p><button id="play">play</button> <input id="slider" type="range" min="0" value="0" style="width: 30em">
<span id="label"></span></p>
<div id="text"></div>
<p>@LEGEND@</p>
<script type="application/json" id="data">@DATA@</script>
<script>
const data = JSON.parse(document.getElementById('data').textContent);
const slider = document.getElementById('slider'), text = document.getElementById('text');
const label = document.getElementById('label'), play = document.getElementById('play');
slider.max = data.frames.length - 1;
function show(i) {
  const row = data.frames[i], [start, end] = data.spans[i], cached = data.cached[i];
  text.replaceChildren(...row.map((t, j) => {
    const span = document.createElement('span');
    span.textContent = t === data.mask ? data.glyph : data.text[t];
    span.className = data.states[i][j];
    return span;
  }));
  const masked = row.filter(t => t === data.mask).length;
  label.textContent = 'pass ' + i + ' of ' + (data.frames.length - 1) + ', ' + masked + ' masked' +
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

GIF_COLUMNS, GIF_FONT_SIZE = 64, 15 # text width in characters, and the font size
GIF_FONT = 'DejaVuSansMono.ttf' # a fixed-pitch font, found among the system's fonts; else Pillow's default, drawn cell by cell
COLOURS = {'paper': (255, 255, 255), 'active': (204, 222, 247), 'new': (200, 240, 196), 'flagged': (245, 190, 190),
           'redrawn': (250, 214, 160), 'ink': (20, 20, 20), 'fixed': (30, 80, 170), 'caption': (90, 90, 90),
           'cross': (200, 30, 30), 'mask': (190, 190, 190)} # five backgrounds, then what is drawn on them
LEGEND = {'mask': 'masked', 'active': 'being written', 'new': 'written in this pass', 'flagged': 'sent back',
          'redrawn': 'draft rejected'} # the states a frame may show, those that occur in the replay


def layout(row, decode, mask_id):
    """(line, column, cells) of every token of one frame, the text wrapped at GIF_COLUMNS: a mask
    takes one cell, so the masks never show the shape of the text still to be written."""
    cells, line, column = [], 0, 0
    for t in row:
        text = '' if t == mask_id else decode([t])
        n = max(1, len(text.replace('\n', '')))
        if column and column + n > GIF_COLUMNS and '\n' not in text:
            line, column = line + 1, 0
        cells.append((line, column, n))
        line, column = (line + 1, 0) if '\n' in text else (line, column + n)
    return cells


def write_gif(path, title, replay, decode, mask_id):
    """An animated GIF (needs Pillow 10.1+) replaying the frames, one per pass, the last one held.
    Each frame is laid out from its own text (layout), in a fixed-pitch font; the block being
    written is tinted blue, tokens written in this pass green, tokens sent back to [MASK] red with
    a cross, rejected drafts orange, masks grey boxes, the prompt blue; the legend names the
    states that occur."""
    from PIL import Image, ImageDraw, ImageFont
    try:
        font = ImageFont.truetype(GIF_FONT, GIF_FONT_SIZE)
    except OSError:
        font = ImageFont.load_default(size=GIF_FONT_SIZE)
    frames = replay['frames']
    ascent, descent = font.getmetrics()
    cw, ch, margin = round(font.getlength('n')) + 1, ascent + descent + 4, 12
    layouts = [layout(row, decode, mask_id) for row in frames]
    lines = max(cells[-1][0] for cells in layouts) + 1
    top = margin + 2 * ch # below the caption
    legend_y = top + lines * ch + ch // 2
    size = (2 * margin + GIF_COLUMNS * cw, legend_y + ch + margin)
    states_of = [frame_states(replay, i, mask_id) for i in range(len(frames))] # once: for the legend and the frames
    shown = {name for states in states_of for s in states for name in s}
    legend = [(name, label) for name, label in LEGEND.items() if name in shown]

    def box(draw, x, y, n, colour):
        inset_x, inset_y = (1, 4) if colour == 'mask' else (0, 0) # a mask is a glyph-sized box, a tint fills the cell
        draw.rectangle((x + inset_x, y + inset_y, x + n * cw - 1 - inset_x, y + ch - 1 - inset_y), fill=COLOURS[colour])

    def cross(draw, x, y):
        draw.line((x + 2, y + 3, x + cw - 3, y + ch - 4), fill=COLOURS['cross'], width=2)
        draw.line((x + 2, y + ch - 4, x + cw - 3, y + 3), fill=COLOURS['cross'], width=2)

    def draw_frame(i):
        row, (start, end), states = frames[i], replay['spans'][i], states_of[i]
        image = Image.new('RGB', size, COLOURS['paper'])
        draw = ImageDraw.Draw(image)
        where = f", writing {start}-{end - 1}" if end > start else ''
        draw.text((margin, margin), title, font=font, fill=COLOURS['caption'])
        draw.text((margin, margin + ch), f"pass {i} of {len(frames) - 1}{where}, {row.count(mask_id)} masked",
                  font=font, fill=COLOURS['ink'])
        for t, (line, column, n), s in zip(row, layouts[i], states):
            x, y = margin + column * cw, top + line * ch
            for name in ('active', 'new', 'flagged', 'redrawn', 'mask'): # backgrounds, in this order
                if name in s:
                    box(draw, x, y, n, name)
            if 'flagged' in s:
                cross(draw, x, y)
            if t != mask_id:
                for k, char in enumerate(decode([t]).replace('\n', '')[:n]):
                    draw.text((x + k * cw + cw / 2, y + 2 + ascent), char, font=font, anchor='ms',
                              fill=COLOURS['fixed' if 'fixed' in s else 'ink'])
        x, y = margin, legend_y
        for name, label in legend:
            box(draw, x, y, 1, name)
            if name == 'flagged':
                cross(draw, x, y)
            draw.text((x + cw + 4, y + 2 + ascent), label, font=font, anchor='ls', fill=COLOURS['caption'])
            x += cw + 20 + round(font.getlength(label))
        return image

    # one palette for all frames (a GIF has 256 colours): every mix of a background and what is
    # drawn on it, in 8 steps, so that flat colours stay exact, anti-aliased text keeps its
    # edges, and every frame stores only what changed
    shades = list(COLOURS.values())
    mixes = {tuple(round(b + (f - b) * k / 7) for b, f in zip(back, fore)) for back in shades[:5] for fore in shades[5:]
             for k in range(8)}
    palette = Image.new('P', (1, 1))
    palette.putpalette([v for colour in sorted(mixes) for v in colour])
    images = [draw_frame(i).quantize(palette=palette, dither=Image.Dither.NONE) for i in range(len(frames))]
    pace = max(40, min(400, 12000 // len(images))) # ms per pass: about 12 s in all, the last frame 3 s more
    images[0].save(path, save_all=True, append_images=images[1:], duration=[pace] * (len(images) - 1) + [3000],
                   loop=0, optimize=True)
