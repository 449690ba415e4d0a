"""
Progress of the scripts' long loops, on stderr so that stdout keeps only the results: a tqdm
bar with its rate and ETA, redrawn in place on a terminal, and one plain line every
LOG_INTERVAL seconds when stderr is a file or a pipe (a log gets lines, not carriage returns).
"""
import sys

from tqdm import tqdm

LOG_INTERVAL = 10 # seconds between two lines of a bar when stderr is no terminal


class LogLines:
    """stderr for a bar when it is no terminal: each redraw of the bar becomes one line."""

    def __init__(self, file):
        self.file = file

    def write(self, text):
        if text.strip(): # tqdm redraws with '\r' and pads with spaces
            self.file.write(text.strip() + '\n')

    def flush(self):
        self.file.flush()


class AboveBar:
    """stdout while a bar is drawn on the same terminal: each finished line is written above
    the bar, which is then redrawn (print() onto the bar's line would garble both)."""

    def __init__(self, bar, stdout):
        self.bar, self.stdout, self.pending = bar, stdout, ''

    def write(self, text):
        self.pending += text
        if '\n' in self.pending:
            lines, _, self.pending = self.pending.rpartition('\n')
            self.bar.clear()
            self.stdout.write(lines + '\n')
            self.stdout.flush()
            self.bar.refresh()
        return len(text)

    def __getattr__(self, name): # isatty, encoding, flush...
        return getattr(self.stdout, name)


class Bar(tqdm):
    """A tqdm bar that hands stdout back (see AboveBar) when it closes."""

    def close(self):
        if isinstance(sys.stdout, AboveBar) and sys.stdout.bar is self: # hand stdout back
            sys.stdout, pending = sys.stdout.stdout, sys.stdout.pending
            sys.stdout.write(pending)
        super().close()


def progress(items, desc, unit='it'):
    """A bar on stderr: over items (a sequence, iterated through the bar), or over a count
    of units when items is an int (advanced with update()). On a terminal it is cleared
    when done: the results on stdout say the rest; a log keeps its last line."""
    terminal = sys.stderr.isatty()
    iterable, total = (None, items) if isinstance(items, int) else (items, len(items))
    bar = Bar(iterable, total=total, desc=desc, unit=unit, file=sys.stderr if terminal else LogLines(sys.stderr),
              mininterval=0.1 if terminal else LOG_INTERVAL, leave=not terminal, dynamic_ncols=True)
    if terminal and sys.stdout.isatty():
        sys.stdout = AboveBar(bar, sys.stdout)
    return bar
