"""
The measurements of the evaluation script (bench.py), as plain functions on token
tensors, so that each one can be checked on a tiny input with a known answer:
- sample quality: NLL under an autoregressive judge (per token, or per character of text
  that the judge re-encodes with its own tokenizer), unigram entropy, repetition, and the
  temperature search that compares generators at one entropy;
- proofreading: random substitutions with a known truth mask, detection precision/recall/F1,
  the threshold that maximises F1 (and the [WRONG] threshold of a diffusion model tuned so),
  the AR detector and rewriter, and the token (character) error rate.
"""

from contextlib import nullcontext

import torch
from torch.nn import functional as F

from diffusion import exact_fraction_positions, random_other_tokens
from sampling import wrong_probs

# ----------------------------------------------------------------------------
# sample quality

@torch.no_grad()
def judge_token_nlls(judge, tokens):
    """(B, L - 1): the negative log-likelihood (nats) of each of tokens[:, 1:] given all the
    tokens before it in its row, under an autoregressive judge (a GPT, or anything whose
    forward(idx, targets) returns logits for every position and whose config.block_size
    is its context). The first token of each row is context only, never scored.
    Rows longer than the judge's context are scored in windows of block_size tokens that
    slide by half a block, each scoring only the tokens no earlier window scored, so every
    token past the first window is predicted from at least half a block of context."""
    L = tokens.size(1)
    block = judge.config.block_size
    nlls = [tokens.new_zeros(tokens.size(0), 0, dtype=torch.float)] # (B, 0) when there is nothing to score
    start, scored_to = 0, 1 # the targets tokens[:, 1:scored_to] are scored
    while scored_to < L:
        window = tokens[:, start:start + block + 1]
        logits, _ = judge(window[:, :-1], window[:, 1:])
        # window[:, 1 + j] is token start + 1 + j: keep the ones from scored_to on
        ce = F.cross_entropy(logits.float().transpose(1, 2), window[:, 1:], reduction='none')
        nlls.append(ce[:, scored_to - start - 1:])
        scored_to = start + window.size(1)
        start += max(1, block // 2)
    return torch.cat(nlls, 1)


def judge_nll_per_char(judge, encode, decode, texts, device='cpu'):
    """Negative log-likelihood in nats per character of texts (a list of strings) under an
    autoregressive judge with its own tokenizer (encode: str -> ids, decode: ids -> str):
    each text is encoded, and every token after its first is scored given all the tokens
    before it (judge_token_nlls); the sum over all texts is divided by the characters those
    tokens hold (each text's length less its first token's). The text of any tokenizer is
    scored on one scale so, and with a char judge this is the mean NLL per token of the text's ids."""
    ids = [torch.tensor(encode(text), dtype=torch.long) for text in texts]
    lengths = torch.tensor([len(i) for i in ids], device=device)
    tokens = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True).to(device) # padded at the end: never context
    scored = torch.arange(1, tokens.size(1), device=device) < lengths[:, None] # real targets, not the padding
    chars = sum(len(text) - len(decode(i[:1].tolist())) for text, i in zip(texts, ids))
    if chars == 0:
        raise ValueError("the texts hold no characters after their first token: nothing to score")
    return judge_token_nlls(judge, tokens)[scored].sum().item() / chars


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


def closest_try(tries, target):
    return min(tries, key=lambda r: abs(r['entropy'] - target))


def at_target(below, above, key, target):
    """r[key] interpolated linearly in entropy between two tries, at the target entropy."""
    share = (target - below['entropy']) / (above['entropy'] - below['entropy'])
    return below[key] + share * (above[key] - below[key])


def match_entropy(measure, target, start_temperature, tolerance, max_tries, min_temperature, max_temperature):
    """A generator's metrics at exactly the target unigram entropy. measure(temperature) generates
    at that temperature and returns a dict of at least 'entropy', 'temperature', 'nll', 'rep' and
    'newlines'. Entropy rises with the temperature: starting at start_temperature, each try steps the
    temperature by 25 % toward the target until two tries bracket it, then takes the secant between
    the bracketing pair, until both ends of the bracket lie within tolerance (a fraction of the
    target) of the target (at most max_tries calls of measure, in [min_temperature, max_temperature]),
    or until one try lands within a twentieth of the band. 'nll', 'rep', 'newlines' and 'temperature'
    are then interpolated linearly in entropy between those two tries, at the target itself: a band
    alone is not enough, since the NLL moves fast with the entropy (a row at the top of a 2 % band
    pays ~0.1 nats). Returns the try closest to the target with tries= (the calls of measure) and
    matched=True, its interpolated keys and entropy=target, or that try as it is when it lies within
    a twentieth of the band. Without such a bracket: the try closest to the target, matched=False."""
    tries = [measure(min(max(start_temperature, min_temperature), max_temperature))]
    in_band = lambda r: abs(r['entropy'] - target) <= tolerance * target
    while True:
        below = max((r for r in tries if r['entropy'] <= target), key=lambda r: r['entropy'], default=None)
        above = min((r for r in tries if r['entropy'] > target), key=lambda r: r['entropy'], default=None)
        # a try within a twentieth of the band is taken as it is (the NLL moves < 0.01 nats there): the
        # secant can creep onto the target from one side and never bracket it from within the band
        exact = abs(closest_try(tries, target)['entropy'] - target) <= tolerance * target / 20
        bracketed = exact or (below is not None and above is not None and in_band(below) and in_band(above))
        if bracketed or len(tries) == max_tries:
            break
        if below is not None and above is not None: # the secant
            temp = at_target(below, above, 'temperature', target)
        else:
            temp = min(max(tries[-1]['temperature'] * (1.25 if above is None else 0.8), min_temperature), max_temperature)
        if any(r['temperature'] == temp for r in tries): # stuck at a temperature limit, or converged
            break
        tries.append(measure(temp))
    closest = closest_try(tries, target)
    if not bracketed or exact:
        return dict(closest, tries=len(tries), matched=bracketed)
    interpolated = {key: at_target(below, above, key, target) for key in ('nll', 'rep', 'newlines', 'temperature')}
    return dict(closest, **interpolated, entropy=target, tries=len(tries), matched=True)


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


def best_threshold(scores, truth):
    """(threshold, F1) of the detector that flags the positions whose score is below a threshold,
    at the threshold that maximises F1 against truth (bool, the shape of scores; F1 as
    detection_prf). Every cut between two consecutive distinct finite scores is tried (a tie is
    flagged whole or not at all): the threshold is the midpoint of the cut, which generalises
    to other scores best, or the smallest score when no cut has F1 > 0 (nothing flagged).
    An infinite score is never flagged."""
    scores, order = scores.flatten().double().sort()
    hits = truth.flatten()[order].double().cumsum(0) # true positives when the k + 1 lowest scores are flagged
    flagged = torch.arange(1, len(scores) + 1, device=scores.device, dtype=torch.double)
    f1 = 2 * hits / (flagged + truth.sum()) # = 2PR / (P + R)
    # a cut lies after the last of a tie, and below an infinite score
    cut = torch.cat([scores[:-1] < scores[1:], scores.new_ones(1, dtype=torch.bool)]) & scores.isfinite()
    f1 = f1.masked_fill(~cut, -1.0)
    k = int(f1.argmax())
    if f1[k] <= 0:
        return scores[0].item(), 0.0
    above = scores[k + 1] if k + 1 < len(scores) else scores[k] + 1 # nothing above: any higher value
    return ((scores[k] + above) / 2).item(), f1[k].item()


@torch.no_grad()
def tuned_wrong_threshold(model, batches, rate, generator):
    """The p([WRONG]) above which a diffusion model's flags have the best F1 (best_threshold) on
    clean batches (B, T) with a share rate of their tokens substituted (substitute_tokens): the
    detector of a model trained with few random tokens, whose [WRONG] argmax rarely wins."""
    corrupted = [substitute_tokens(x, rate, model.config.words, generator) for x in batches]
    not_wrong = torch.cat([1 - wrong_probs(model, tokens) for tokens, _ in corrupted])
    threshold, _ = best_threshold(not_wrong, torch.cat([truth for _, truth in corrupted]))
    return 1 - threshold


def ar_token_probs(model, tokens, ctx=nullcontext()):
    """(B, T): an AR model's probability of each token given the tokens before it; +inf at the first
    position, which has no text before it to be judged by (so never below a threshold)."""
    with ctx:
        probs = (-judge_token_nlls(model, tokens)).exp()
    return torch.cat([torch.full_like(probs[:, :1], float('inf')), probs], 1)


@torch.no_grad()
def ar_rewrite(model, tokens, flags, vocab, ctx=nullcontext()):
    """tokens with the flagged positions rewritten left to right, each by the AR model's argmax (over
    the vocab real tokens) given the text before it as corrected so far; the first position, with no
    text before it, stays. Pass k rewrites the k-th flag of every row: a pass per flag of the most
    flagged row."""
    nth = flags[:, 1:].cumsum(1) * flags[:, 1:] # k at the k-th flag of a row, after its first position
    for k in range(1, int(nth.max()) + 1):
        with ctx:
            logits, _ = model(tokens[:, :-1], tokens[:, 1:])
        tokens = torch.cat([tokens[:, :1], torch.where(nth == k, logits[..., :vocab].argmax(-1), tokens[:, 1:])], 1)
    return tokens


def char_error_rate(pred, ref):
    """Fraction of positions where pred differs from ref (tensors of one shape): the
    Hamming distance per token. For substitution-only corruption and a corrector that
    keeps every position in place, as here, the texts stay aligned and this is the
    character error rate; it is not an edit distance (an insertion would shift all)."""
    return (pred != ref).double().mean().item()
