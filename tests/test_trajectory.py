"""trajectory.py: the one rule that names each token's state in a replayed pass, and the
views drawn from it (terminal, page, GIF layout)."""
import pytest

from trajectory import ANSI, STATES, layout, render_terminal, token_states

M = 99 # the [MASK] id of these tests


def test_token_states_of_a_pass():
    """Prompt 0; block 2-5 being written with 0-1 cached; position 2 written in this pass,
    position 3 sent back to [MASK], position 4 still masked, position 5 replaced (a rejected draft),
    position 6 masked outside the block."""
    prev = [5, 6, M, 8, M, 9, M]
    row = [5, 6, 1, M, M, 7, M]
    fixed = [True, False, False, False, False, False, False]
    states = token_states(row, prev, fixed, (2, 6), 2, M)
    assert states == [['fixed', 'cached'], ['cached'], ['new', 'active'], ['flagged', 'active'], ['mask', 'active'], ['redrawn', 'active'], ['mask']]
    assert {name for s in states for name in s} == set(STATES)
    # the first frame is its own previous one: nothing is new or flagged
    assert token_states(row, row, fixed, (0, 0), 0, M) == [['fixed'], [], [], ['mask'], ['mask'], [], ['mask']]


def test_the_terminal_draws_the_states():
    decode = lambda ids: ''.join('_' if i == M else chr(ord('a') + i) for i in ids)
    row, states = [0, M, 1], [['new'], ['flagged', 'active'], []]
    assert render_terminal(row, states, decode, '#', colour=False) == 'a_b'
    assert render_terminal(row, states, decode, '#', colour=True) == \
        f"\x1b[{ANSI['new']}ma\x1b[0m\x1b[{ANSI['flagged']};{ANSI['active']}m_\x1b[0mb"


@pytest.mark.parametrize('masked', [0, 3])
def test_masks_take_one_cell_whatever_they_become(masked):
    """The GIF lays out each frame from its own text: a mask is one cell, so the layout of the
    finished text never shows through the masks."""
    words = {0: 'hello', 1: ' ', 2: 'world', 3: '\n'}
    decode = lambda ids: ''.join(words[i] for i in ids)
    row = [0, 1, 2, 3, 0][:5 - masked] + [M] * masked
    cells = layout(row, decode, M)
    assert cells[:2] == [(0, 0, 5), (0, 5, 1)]
    if masked:
        assert cells[2:] == [(0, 6, 1), (0, 7, 1), (0, 8, 1)]
    else:
        assert cells[2:] == [(0, 6, 5), (0, 11, 1), (1, 0, 5)]
