"""
The measurements of the evaluation script (bench.py), as plain functions on token
tensors, so that each one can be checked on a tiny input with a known answer:
- sample quality: NLL under an autoregressive judge, unigram entropy, repetition;
- proofreading: random substitutions with a known truth mask, [WRONG] detection
  precision/recall/F1, and the token (character) error rate.
"""

import torch
from torch.nn import functional as F

from diffusion import exact_fraction_positions, random_other_tokens

# ----------------------------------------------------------------------------
# sample quality

@torch.no_grad()
def judge_nll(judge, tokens):
    """Mean negative log-likelihood, in nats per token, of tokens[:, 1:] each given all
    the tokens before it in its row, under an autoregressive judge (a GPT, or anything
    whose forward(idx, targets) returns logits for every position and whose
    config.block_size is its context): how plausible the judge finds the text. The first
    token of each row is context only, never scored.
    Rows longer than the judge's context are scored in windows of block_size tokens that
    slide by half a block, each scoring only the tokens no earlier window scored, so every
    token past the first window is predicted from at least half a block of context."""
    B, L = tokens.shape
    block = judge.config.block_size
    total, start, scored_to = 0.0, 0, 1 # the targets tokens[:, 1:scored_to] are scored
    while scored_to < L:
        window = tokens[:, start:start + block + 1]
        logits, _ = judge(window[:, :-1], window[:, 1:])
        # window[:, 1 + j] is token start + 1 + j: keep the ones from scored_to on
        ce = F.cross_entropy(logits.float().transpose(1, 2), window[:, 1:], reduction='none')
        total += ce[:, scored_to - start - 1:].sum().item()
        scored_to = start + window.size(1)
        start += max(1, block // 2)
    return total / (B * (L - 1))


def unigram_entropy(tokens):
    """Entropy, in nats, of the token frequencies of all of tokens pooled together: 0 for
    a single repeated token, log 2 for two tokens equally often. A sampler that collapses
    onto a few frequent tokens scores low here however plausible each token is. It is an
    estimate from a finite sample, biased low, so compare it with the same number of
    tokens of real text."""
    counts = torch.bincount(tokens.flatten()).double()
    p = counts[counts > 0] / counts.sum()
    return -(p * p.log()).sum().item()


def repetition(tokens, n=4):
    """Mean over rows of the fraction of a row's n-grams that repeat an n-gram seen
    earlier in the same row (1 - distinct/total): 0 when all n-grams differ, close to 1
    for text stuck in a loop. Natural text repeats some n-grams too (for characters,
    ' the' ...), so compare it with real text of the same length."""
    B, L = tokens.shape
    if L < n:
        raise ValueError(f"rows of {L} tokens have no {n}-grams")
    grams = tokens.unfold(1, n, 1) # (B, G, n)
    G = grams.size(1)
    # prefix each n-gram with its row, so that one unique() counts distinct n-grams per row
    rows = torch.arange(B, device=tokens.device).repeat_interleave(G)
    keyed = torch.cat([rows[:, None], grams.reshape(B * G, n)], dim=1)
    distinct = torch.bincount(torch.unique(keyed, dim=0)[:, 0], minlength=B)
    return (1 - distinct.double() / G).mean().item()


# ----------------------------------------------------------------------------
# proofreading

def substitute_tokens(x, rate, vocab, generator):
    """Replace exactly int(T * rate) random positions of every row of x (B, T) with a
    random token of the base vocabulary that is never the original one. Returns the
    corrupted tokens and the (B, T) bool truth mask of the substituted positions."""
    truth = exact_fraction_positions(x, rate, generator)
    return torch.where(truth, random_other_tokens(x, vocab, generator), x), truth


def detection_prf(flags, truth):
    """Precision, recall and F1 of the flagged positions against the true ones (bool
    tensors of one shape), counted over all positions together (micro-average). A ratio
    with nothing to count (no flag, no true position) is 0, as is F1 when both are 0."""
    tp = (flags & truth).sum().item()
    n_flags, n_truth = flags.sum().item(), truth.sum().item()
    precision = tp / n_flags if n_flags else 0.0
    recall = tp / n_truth if n_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def char_error_rate(pred, ref):
    """Fraction of positions where pred differs from ref (tensors of one shape): the
    Hamming distance per token. For substitution-only corruption and a corrector that
    keeps every position in place, as here, the texts stay aligned and this is the
    character error rate; it is not an edit distance (an insertion would shift all)."""
    return (pred != ref).double().mean().item()
