"""Tests for metrics.py: every metric on a tiny input whose answer is known by hand."""
import math
from types import SimpleNamespace

import pytest
import torch

from metrics import char_error_rate, detection_prf, judge_token_nlls, repetition, substitute_tokens, unigram_entropy
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


def test_tuned_wrong_threshold_separates_substituted_tokens(monkeypatch):
    """A detector sure of the substituted tokens (ids >= 5 in text of ids < 5): the F1-best
    p([WRONG]) threshold lies midway between its two levels."""
    import metrics
    monkeypatch.setattr(metrics, 'wrong_probs', lambda model, tokens: torch.where(tokens >= 5, 0.9, 0.2))
    model = GPT(GPTConfig(block_size=8, vocab_size=12, n_layer=1, n_head=1, n_embd=8, mask_token_id=10, wrong_token_id=11))
    batches = [torch.randint(0, 5, (4, 40), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    assert metrics.tuned_wrong_threshold(model, batches, 0.1, torch.Generator().manual_seed(0)) == pytest.approx(0.55)
