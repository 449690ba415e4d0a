"""Progress on stderr (progress.py, generate_diffusion.py's bar: stdout keeps only the
samples) and the animated GIF of generate_diffusion.py --trajectory=path.gif."""
import io
import re
import runpy
import sys

import numpy as np
import pytest
import torch

import loading
import progress
from configurator import UserError
from model import GPT
from test_sampling import CHARS, ROOT, checkpoints # noqa: F401 (a fixture: tiny checkpoints of a char dataset)

MASK = len(CHARS) # the checkpoints' [MASK] and [WRONG]
WRONG = MASK + 1


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run_generate(monkeypatch, capsys, *args):
    """(stdout, stderr) of generate_diffusion.py run in-process."""
    monkeypatch.setattr(sys, 'argv', ['generate_diffusion.py', '--device=cpu', *args])
    runpy.run_path(str(ROOT / 'generate_diffusion.py'), run_name='__main__')
    return capsys.readouterr()


def test_a_log_gets_a_line_per_interval(monkeypatch, capsys):
    for i in progress.progress([10, 20, 30], 'stage', 'model'):
        print(i)
    out, err = capsys.readouterr()
    assert out == '10\n20\n30\n'
    lines = err.splitlines()
    # a fast loop within LOG_INTERVAL: its first and its last line, no carriage returns
    assert len(lines) == 2 and '\r' not in err
    assert lines[0].startswith('stage:   0%') and '0/3' in lines[0]
    assert lines[1].startswith('stage: 100%') and '3/3' in lines[1] and 'model/s' in lines[1]
    monkeypatch.setattr(progress, 'LOG_INTERVAL', 0)
    bar = progress.progress(4, 'writing', 'token')
    for _ in range(4):
        bar.update()
    bar.close()
    counts = [re.search(r'(\d)/4', line).group(1) for line in capsys.readouterr().err.splitlines()]
    assert counts[:5] == ['0', '1', '2', '3', '4'] # every update is a line


def test_a_terminal_redraws_the_bar_and_prints_above_it(monkeypatch):
    out, err = Terminal(), Terminal()
    monkeypatch.setattr(sys, 'stdout', out)
    monkeypatch.setattr(sys, 'stderr', err)
    for i in progress.progress([1, 2, 3], 'stage', 'model'):
        print('row', i, end='') # a line in two writes: kept whole, above the bar
        print()
    assert sys.stdout is out and out.getvalue() == 'row 1\nrow 2\nrow 3\n'
    # drawn, cleared for each line of stdout, redrawn, and cleared at the end: all on one line
    drawn = err.getvalue()
    assert drawn.startswith('\rstage:   0%') and drawn.count('\rstage:') == 4 and '\n' not in drawn
    assert drawn.endswith(' \r')


def test_generate_progress_goes_to_stderr(checkpoints, monkeypatch, capsys, tmp_path):
    """Text longer than block_size (32): the bar counts the positions written, of both samples."""
    out, err = run_generate(monkeypatch, capsys, f'--out_dir={checkpoints["block"]}', '--start=ab', '--length=90',
                            '--steps=2', '--num_samples=2', f'--output={tmp_path / "s.txt"}')
    assert 'writing' not in out and '%|' not in out and 'token/s' not in out
    assert out.count('---------------') == 2 and (tmp_path / 's.txt').read_text(encoding='utf-8').split('\n---------------\n')[0] in out
    last = err.strip().splitlines()[-1]
    assert last.startswith('writing: 100%') and '176/176' in last and 'token/s' in last and '\r' not in err


def test_gif_replays_every_pass(checkpoints, monkeypatch, capsys, tmp_path):
    """A model that flags every written token: the refine loop sends each pass's tokens back
    to [MASK] at the next one, drawn red; the last pass writes everything."""
    Image = pytest.importorskip('PIL.Image')
    forward = GPT.forward

    def flagging(self, idx, **kwargs):
        logits, loss = forward(self, idx, **kwargs)
        wrong = torch.where(idx != MASK, 50.0, -50.0)[..., None]
        return torch.where(torch.arange(logits.size(-1)) == WRONG, wrong, logits), loss
    monkeypatch.setattr(GPT, 'forward', flagging)
    gif = tmp_path / 'steps.gif'
    out, _ = run_generate(monkeypatch, capsys, f'--out_dir={checkpoints["diffusion"]}', '--start=ab', '--length=24',
                          '--sampler=refine', '--max_steps=4', '--num_samples=1', f'--trajectory={gif}')
    passes = int(re.search(r'(\d+) forward passes', out).group(1))
    assert passes == 5 and f'to {gif}' in out
    with Image.open(gif) as im:
        assert im.format == 'GIF' and im.is_animated and im.n_frames == passes + 1 # the start and every pass
        width, height = im.size
        assert 500 < width < 1000 and 80 < height < width
        frames, durations = [], []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(torch.from_numpy(np.array(im.convert('RGB'))).int())
            durations.append(im.info['duration'])
    assert durations[-1] == 3000 and set(durations[:-1]) == {400} # 5 passes are slow enough to follow

    def area(frame, colour):
        """Pixels of a colour (give or take the palette's rounding) in solid 2x2 squares: boxes,
        not the edges of anti-aliased letters."""
        m = ((frame - torch.tensor(colour)).abs() <= 4).all(-1)
        return int((m[:-1, :-1] & m[1:, :-1] & m[:-1, 1:] & m[1:, 1:]).sum())
    grey, red = (190, 190, 190), (245, 190, 190) # a mask, and a token sent back to [MASK]
    assert area(frames[0], grey) > 15 * area(frames[-1], grey) > 0 # 22 masks and the legend's, then the legend's
    flagged = [area(frame, red) for frame in frames]
    assert flagged[0] == flagged[1] == flagged[-1] > 0 # only the legend's swatch: nothing was written before
    # the loop writes every masked position, the next pass sends them all back (red), and so on
    assert flagged[2] > 2 * flagged[0] and flagged[4] > 2 * flagged[0] and flagged[3] < flagged[2], flagged


def test_gif_without_pillow_is_one_error_line(checkpoints, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, 'PIL', None) # `import PIL` now fails as if it were not installed

    def refuse(*args, **kwargs):
        raise AssertionError('the model was loaded before the options were checked')
    monkeypatch.setattr(loading, 'load_model', refuse)
    gif = tmp_path / 'steps.gif'
    with pytest.raises(UserError, match=re.escape('needs Pillow for the animation: pip install pillow')) as e:
        run_generate(monkeypatch, capsys, f'--out_dir={checkpoints["diffusion"]}', f'--trajectory={gif}')
    assert '\n' not in str(e.value) and not gif.exists()
