"""Tests for metrics.py: every metric on a tiny input whose answer is known by hand."""
import math
import re
from types import SimpleNamespace

import pytest
import torch

from metrics import (ar_rewrite, ar_token_probs, char_error_rate, copied_share, detection_prf, judge_token_nlls, match_entropy,
                     repetition, sample_metrics, substitute_tokens, tuned_threshold, unigram_entropy, written_chars)
from model import GPT, GPTConfig


class BigramJudge(torch.nn.Module):
    """A judge with GPT's forward signature whose next-token distribution depends on the
    previous token only: (prev + 1) % V with probability P, each other token equally."""
    P = 0.7

    def __init__(self, vocab, block_size):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)
        probs = torch.full((vocab, vocab), (1 - self.P) / (vocab - 1))
        probs[torch.arange(vocab), (torch.arange(vocab) + 1) % vocab] = self.P
        self.table = probs.log()

    def forward(self, idx, targets=None):
        assert idx.size(1) <= self.config.block_size # never given more than its context
        return self.table[idx], None


def bigram_nll_by_hand(rows, vocab):
    hits = sum(b == (a + 1) % vocab for row in rows for a, b in zip(row, row[1:]))
    scored = sum(len(row) - 1 for row in rows)
    p_other = (1 - BigramJudge.P) / (vocab - 1)
    return (-hits * math.log(BigramJudge.P) - (scored - hits) * math.log(p_other)) / scored


def test_judge_token_nlls_uniform_gpt():
    # a GPT whose (tied) embedding/head is zero outputs logits 0: the uniform distribution
    torch.manual_seed(0)
    judge = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16))
    torch.nn.init.zeros_(judge.lm_head.weight)
    judge.eval()
    tokens = torch.randint(0, 11, (3, 8))
    assert judge_token_nlls(judge, tokens).mean().item() == pytest.approx(math.log(11), rel=1e-6)
    # rows longer than the context are scored in sliding windows, with the same answer
    assert judge_token_nlls(judge, torch.randint(0, 11, (2, 21))).mean().item() == pytest.approx(math.log(11), rel=1e-6)


@pytest.mark.parametrize('block_size', [1, 2, 3, 4, 100])
def test_judge_token_nlls_bigram(block_size):
    # every token after the first is scored exactly once whatever the context length
    rows = [[0, 1, 2, 3, 4, 0, 2, 3, 1, 1], [4, 0, 1, 3, 3, 4, 0, 1, 2, 0]]
    judge = BigramJudge(5, block_size)
    assert judge_token_nlls(judge, torch.tensor(rows)).mean().item() == pytest.approx(bigram_nll_by_hand(rows, 5), rel=1e-6)


def test_unigram_entropy():
    assert unigram_entropy(torch.full((2, 7), 3)) == pytest.approx(0.0)
    assert unigram_entropy(torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0]])) == pytest.approx(math.log(2))
    # pooled over rows: frequencies 1/2, 1/4, 1/4
    assert unigram_entropy(torch.tensor([[5, 5], [2, 9]])) == pytest.approx(1.5 * math.log(2))


def test_repetition():
    # 'abababab': 7 bigrams, 2 distinct -> 5 of 7 repeat an earlier one
    assert repetition(torch.tensor([[0, 1] * 4]), n=2) == pytest.approx(5 / 7)
    assert repetition(torch.arange(10)[None], n=4) == 0.0
    # the mean over rows, each row counted on its own: the same 4-gram in two rows is no repeat
    rows = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 1], [7, 7, 7, 7, 7]])
    assert repetition(rows, n=4) == pytest.approx((0 + 0 + 1 / 2) / 3)
    with pytest.raises(ValueError):
        repetition(torch.zeros(1, 3, dtype=torch.long), n=4)


def try_at(t, entropy_at):
    """A generation at temperature t whose entropy is entropy_at(t) and whose other metrics are linear in t."""
    return dict(entropy=entropy_at(t), temperature=t, nll=3 - t, rep=t / 10, newlines=t / 100, copied=t / 5, text=f'at {t}')


def recorded(entropy_at):
    """A measure for match_entropy (try_at), and the list of the temperatures it is called at."""
    calls = []

    def measure(t):
        calls.append(t)
        return try_at(t, entropy_at)
    return measure, calls


def test_match_entropy_interpolates_between_two_tries_in_band():
    # 1.0 and 1.25 (a 25 % step) give 2.97 and 3.02, both within 2 % of 3.0 and one on each side:
    # every metric is linear in the entropy, so its interpolation is its value at the target's temperature
    measure, calls = recorded(lambda t: 3 + 0.2 * (t - 1.15))
    result = match_entropy(measure, 3.0, 1.0, 0.02, 8, 0.3, 2.5)
    assert calls == [1.0, 1.25]
    assert result['matched'] and result['tries'] == 2 and result['entropy'] == 3.0
    assert [result[k] for k in ('temperature', 'nll', 'rep', 'newlines', 'copied')] == pytest.approx(
        [1.15, 1.85, 0.115, 0.0115, 0.23])
    assert result['text'] == 'at 1.25' # the rest is the try closest to the target


def test_match_entropy_steps_then_secant_then_takes_an_exact_try_as_it_is():
    measure, calls = recorded(lambda t: t ** 3)
    result = match_entropy(measure, 3.0, 1.0, 0.02, 8, 0.3, 2.5)
    assert calls[:3] == [1.0, 1.25, 1.5625] # 25 % steps up until the target is bracketed
    assert calls[3] == pytest.approx(1.25 + (3 - 1.25 ** 3) / (1.5625 ** 3 - 1.25 ** 3) * (1.5625 - 1.25)) # the secant
    # the secant creeps onto 3.0 from below, until one try lies within a twentieth of the band
    assert all(t ** 3 < 3.0 for t in calls[3:]) and abs(calls[-1] ** 3 - 3.0) <= 0.02 * 3.0 / 20
    assert abs(calls[-2] ** 3 - 3.0) > 0.02 * 3.0 / 20
    assert result == dict(try_at(calls[-1], lambda t: t ** 3), tries=len(calls), matched=True)


def test_match_entropy_stops_at_max_tries():
    # bracketed by 2.5 and 3.125 after three tries, neither within 2 % of 3.0: not matched, the closest try
    measure, calls = recorded(lambda t: 2 * t)
    result = match_entropy(measure, 3.0, 1.0, 0.02, 3, 0.3, 2.5)
    assert calls == [1.0, 1.25, 1.5625]
    assert result == dict(try_at(1.5625, lambda t: 2 * t), tries=3, matched=False)


@pytest.mark.parametrize('target, start, temperatures', [
    (10.0, 1.0, [1.0, 1.25, 1.5625, 1.953125, 2.44140625, 2.5]), # above the entropy at max_temperature
    (0.1, 1.0, [1.0, 0.8, 0.64, 0.512, 0.4096, 0.32768, 0.3]), # below the entropy at min_temperature
    (10.0, 5.0, [2.5])]) # the first try is kept in the range too
def test_match_entropy_unreachable_target(target, start, temperatures):
    # the search stops once it is stuck at a temperature limit, before max_tries
    measure, calls = recorded(lambda t: 2 * t)
    result = match_entropy(measure, target, start, 0.02, 8, 0.3, 2.5)
    assert calls == pytest.approx(temperatures)
    assert result == dict(try_at(calls[-1], lambda t: 2 * t), tries=len(temperatures), matched=False)


def test_ar_token_probs():
    # under the bigram judge each token is (previous + 1) % 5 with probability P, any other one (1 - P) / 4
    tokens = torch.tensor([[0, 1, 2, 0, 4], [3, 4, 0, 0, 1]])
    follows = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)
    probs = ar_token_probs(BigramJudge(5, 4), tokens)
    assert probs.shape == tokens.shape and (probs[:, 0] == float('inf')).all() # the first token is never flagged
    assert probs[:, 1:] == pytest.approx(torch.where(follows, BigramJudge.P, (1 - BigramJudge.P) / 4))


class NextTokenModel(torch.nn.Module):
    """GPT's forward signature: after token a, (a + 1) % vocab is the most probable real token, and
    the two special tokens past the vocab are more probable still (which a rewrite must never write).
    Counts its calls."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.calls = vocab, 0

    def forward(self, idx, targets=None):
        self.calls += 1
        logits = torch.nn.functional.one_hot((idx + 1) % self.vocab, self.vocab + 2).float()
        logits[..., self.vocab:] = 2.0
        return logits, None


def test_ar_rewrite_left_to_right_from_the_corrected_text():
    tokens = torch.tensor([[5, 3, 3, 3, 2, 6], [6, 0, 6, 6, 6, 6]])
    flags = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 0, 1, 0, 0, 1]], dtype=torch.bool)
    model = NextTokenModel(7)
    rewritten = ar_rewrite(model, tokens, flags, 7)
    # each flagged token follows the one before it as rewritten (5 6 0 1, not 5 6 4 4 from the text as
    # it was); the first position of a row stays although flagged, and unflagged tokens stay
    assert rewritten.tolist() == [[5, 6, 0, 1, 2, 6], [6, 0, 1, 6, 6, 0]]
    assert model.calls == 3 # a pass per flag of the most flagged row
    assert torch.equal(ar_rewrite(model, tokens, torch.zeros_like(flags), 7), tokens)


def test_detection_prf():
    flags = torch.tensor([[True, True, True, False, False, False]])
    truth = torch.tensor([[True, False, False, True, False, False]])
    precision, recall, f1 = detection_prf(flags, truth)
    assert (precision, recall) == pytest.approx((1 / 3, 1 / 2))
    assert f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert detection_prf(truth, truth) == (1.0, 1.0, 1.0)
    assert detection_prf(torch.zeros_like(truth), truth) == (0.0, 0.0, 0.0)


def test_char_error_rate():
    ref = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert char_error_rate(ref, ref) == 0.0
    assert char_error_rate(torch.tensor([[1, 0, 3, 4], [5, 6, 0, 0]]), ref) == pytest.approx(3 / 8)


@pytest.mark.parametrize('vocab', [2, 65])
def test_substitute_tokens(vocab):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (50, 40), generator=g)
    corrupted, truth = substitute_tokens(x, 0.1, vocab, g)
    assert (truth.sum(1) == 4).all() # exactly int(40 * 0.1) per row
    assert (corrupted[truth] != x[truth]).all() # never the original token
    assert (corrupted[~truth] == x[~truth]).all()
    assert corrupted.min() >= 0 and corrupted.max() < vocab
    # the same seed gives the same corruption
    a = substitute_tokens(x, 0.1, vocab, torch.Generator().manual_seed(1))
    b = substitute_tokens(x, 0.1, vocab, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert substitute_tokens(x, 0.0, vocab, g)[1].sum() == 0


@pytest.mark.parametrize('first', [None, float('inf')])
def test_tuned_threshold_of_any_detector(first):
    """A detector sure of the substituted tokens (ids >= 5 in text of ids < 5): the F1-best cutoff lies
    midway between its two levels, whether the score is 1 - p([WRONG]) of a diffusion model or an AR
    model's token probability (+inf at the first position, which has no text before it: never flagged)."""
    batches = [torch.randint(0, 5, (4, 40), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    seen = []

    def score(tokens):
        seen.append(tokens)
        scores = torch.where(tokens >= 5, 0.1, 0.8)
        return scores if first is None else torch.cat([torch.full_like(scores[:, :1], first), scores[:, 1:]], 1)

    threshold = tuned_threshold(score, batches, 0.1, 10, torch.Generator().manual_seed(0))
    assert threshold == pytest.approx(0.45)
    # the detector saw the batches corrupted by substitute_tokens, one after the other with the generator
    g = torch.Generator().manual_seed(0)
    corrupted = [substitute_tokens(x, 0.1, 10, g)[0] for x in batches]
    assert len(seen) == len(batches) and all(torch.equal(a, b) for a, b in zip(seen, corrupted))
    if first is not None:
        assert not (torch.cat([score(tokens) for tokens in corrupted]) < threshold)[:, 0].any()


def test_sample_metrics_by_hand():
    """Char samples under the bigram judge: its NLL of the text as written, or with the characters the judge
    has no token for dropped (and counted); entropy and repetition of the generator's tokens; the newline
    share, the characters written after the given first one, and the first sample."""
    itos = 'ab\ncd'
    decode = lambda ids: ''.join(itos[i] for i in ids)
    encode = lambda text: [itos.index(c) for c in text]
    tokens = torch.tensor([[0, 1, 2, 3, 0], [3, 3, 4, 0, 1]])
    judge = BigramJudge(5, 3)
    found = sample_metrics(tokens, decode, judge, encode, decode, repetition_n=2)
    assert found['nll'] == pytest.approx(bigram_nll_by_hand(tokens.tolist(), 5), rel=1e-6)
    assert (found['entropy'], found['rep']) == (unigram_entropy(tokens), repetition(tokens, 2))
    assert (found['newlines'], found['chars'], found['text'], found['unknown']) == (1 / 10, 4, 'ab\nca', 0)
    assert found['copied'] is None # no training text given
    nine = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]]) # 'ab\ncdab\nc': two 8-grams, the first in the source
    assert sample_metrics(nine, decode, judge, encode, decode, 2, source='dab\ncdab\nd')['copied'] == 1 / 2
    dropped = sample_metrics(tokens, decode, judge, encode, decode, repetition_n=2, unknown=re.compile('[d]'))
    assert dropped['unknown'] == 1 and dropped['entropy'] == found['entropy'] # the generator's tokens stay
    stripped = [[0, 1, 2, 3, 0], [3, 3, 0, 1]] # 'ccdab' without its 'd'
    assert dropped['nll'] == pytest.approx(bigram_nll_by_hand(stripped, 5), rel=1e-6)


def test_copied_share_counts_the_ngrams_found_verbatim():
    source = 'to be or not to be'
    assert copied_share(['to be', 'xo be'], source, n=4) == 3 / 4 # 'to b', 'o be' | 'xo b', 'o be'
    assert copied_share(['or n', 'abc'], source, n=4) == 1.0 # a text shorter than n has no n-grams
    assert copied_share(['ab'], source, n=4) == 0.0


def test_written_chars_leaves_out_the_first_token():
    pieces = ['the ', 'a', 'cat', '\n']
    decode = lambda ids: ''.join(pieces[i] for i in ids)
    assert written_chars(torch.tensor([[0, 2, 3], [1, 0, 2]]), decode) == len('cat\n') + len('the cat')
