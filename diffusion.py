"""
The diffusion side of nanoGPT-diffusion, as plain functions shared by train.py,
generate_diffusion.py, the evaluation script and the tests:
- corruption of clean text into model inputs and targets (the seed's [MASK] + random
  token recipe, and mask-only corruption for the ELBO objective), with noise schedules;
- the dual curriculum; the task-weighted, argmax-free loss; the ELBO loss and bound;
- the controller of the [MASK] logit bias;
- the samplers that write text by refining a sequence of [MASK] tokens.
Everything is vectorised over the batch: no Python loop over rows, no host sync per row.
"""

import math

import torch
from torch.nn import functional as F

# ----------------------------------------------------------------------------
# corruption

def random_positions(shape, counts_per_row, generator, device):
    """Split each row's positions, in a random order, into consecutive groups of the given
    sizes: counts_per_row is a list of (B,) int tensors; returns one (B, T) bool mask per
    group, disjoint, with exactly that many True per row."""
    B, T = shape
    ranks = torch.rand(B, T, generator=generator, device=device).argsort(1).argsort(1)
    masks, start = [], torch.zeros(B, 1, dtype=torch.long, device=device)
    for counts in counts_per_row: # one iteration per group (2), not per row
        end = start + counts[:, None]
        masks.append((ranks >= start) & (ranks < end))
        start = end
    return masks


def corrupt(x, generator, mask_token_id, wrong_token_id, guaranteed_correct_factor, remask_ratio):
    """The seed corruption. For each row independently:
        total = U(0, 1 - guaranteed_correct_factor)
        rate_random = U(0,1) * total * remask_ratio;  rate_mask = total - rate_random
    exactly int(T*rate_mask) positions become [MASK] and int(T*rate_random) other
    positions a random token that is never the original. Targets: the original token,
    except [WRONG] at the randomised positions.
    x (B, T) clean tokens of a base vocabulary of size mask_token_id.
    Returns inputs, targets, total (B,) (the row's corruption rate)."""
    B, T = x.shape
    vocab = mask_token_id # base vocabulary size: the special ids come right after it
    total = torch.rand(B, generator=generator, device=x.device) * (1 - guaranteed_correct_factor)
    rate_random = torch.rand(B, generator=generator, device=x.device) * total * remask_ratio
    rate_mask = total - rate_random
    n_mask, n_random = (T * rate_mask).long(), (T * rate_random).long()
    masked, randomised = random_positions((B, T), [n_mask, n_random], generator, x.device)
    # adding 1..V-1 modulo V can never give back the original token
    shift = torch.randint(1, vocab, (B, T), generator=generator, device=x.device)
    inputs = torch.where(masked, mask_token_id, torch.where(randomised, (x + shift) % vocab, x))
    targets = torch.where(randomised, wrong_token_id, x)
    return inputs, targets, total


def mask_schedule(t, schedule):
    """Fraction of masked tokens at time t in [0,1] and the continuous-time ELBO weight
    m'(t) / m(t) of the absorbing-state diffusion (MDLM, Sahoo et al. 2024)."""
    if schedule == 'linear':
        return t, 1.0 / t
    if schedule == 'cosine':
        m = 1 - torch.cos(0.5 * math.pi * t)
        return m, 0.5 * math.pi * torch.sin(0.5 * math.pi * t) / m
    raise ValueError(f"unknown noise schedule {schedule!r} (use 'linear' or 'cosine')")


def corrupt_mask_only(x, generator, mask_token_id, schedule, t_min=1e-3):
    """Mask-only corruption for the ELBO objective: t per row, stratified over the batch
    (one draw in each of B equal slices of [t_min, 1], which lowers the variance of the
    bound estimate without biasing it), each token masked independently with prob m(t).
    Returns inputs, targets (= x), t (B,), elbo_weight (B,), mask fraction m(t) (B,)."""
    B, T = x.shape
    u = (torch.arange(B, device=x.device) + torch.rand(B, generator=generator, device=x.device)) / B
    t = t_min + (1 - t_min) * u[torch.randperm(B, generator=generator, device=x.device)]
    m, elbo_weight = mask_schedule(t, schedule)
    masked = torch.rand(B, T, generator=generator, device=x.device) < m[:, None]
    return torch.where(masked, mask_token_id, x), x, t, elbo_weight, m


def corrupt_fixed_fraction(x, generator, mask_token_id, fraction):
    """Mask exactly int(T * fraction) random positions of every row (masked val loss)."""
    B, T = x.shape
    counts = torch.full((B,), int(T * fraction), dtype=torch.long, device=x.device)
    masked, = random_positions((B, T), [counts], generator, x.device)
    return torch.where(masked, mask_token_id, x)


# ----------------------------------------------------------------------------
# curriculum, losses, controller

def ramp(it, warmup_iters):
    """Linear 0 -> 1 over warmup_iters iterations (1 from the start if warmup_iters <= 0)."""
    return 1.0 if warmup_iters <= 0 else min(1.0, it / warmup_iters)


def get_corruption_scheduler(it, penalty_mask_correct, masking_warmup_iters, proofreading_warmup_iters):
    """The dual curriculum: (current_penalty_mask_correct, remask_ratio) at iteration it.
    The model first learns to fill in masks with no penalty for touching correct tokens,
    then the penalty and the share of proofreading work (random tokens to flag as
    [WRONG]) ramp up. A pure function of it, so a resumed run continues both ramps."""
    return penalty_mask_correct * ramp(it, masking_warmup_iters), ramp(it, proofreading_warmup_iters)


def word_log_probs(logits, mask_token_id, exclude_wrong=True):
    """log-softmax over the words only: [MASK] (and, unless asked, [WRONG]) excluded."""
    keep = torch.ones(logits.size(-1), dtype=torch.bool, device=logits.device)
    keep[mask_token_id] = False
    if exclude_wrong:
        keep[mask_token_id + 1] = False
    return F.log_softmax(logits.float().masked_fill(~keep, float('-inf')), dim=-1)


def task_weighted_loss(logits, inputs, targets, rate, mask_token_id, wrong_token_id,
                       weight_unmask_task, weight_remask_task, penalty_mask_correct, reward_correct_unmask):
    """The seed's task-weighted cross-entropy. Each position's task is read from input
    and target only, never from the model's argmax:
      un-masking (input [MASK])          weight_unmask_task, softly discounted when the
                                         model is already right, but never below
                                         reward_correct_unmask of it (capped reward: a
                                         zero weight would be an infinite jackpot);
      proofreading (target [WRONG])      weight_remask_task;
      keeping a correct token            penalty_mask_correct * (1 - the row's corruption
                                         rate): a destructive edit costs most in clean text.
    The [MASK] logit is left out of the softmax: no target is ever [MASK], so in the
    softmax it would only ever be pushed down, and the bias controller would chase it
    forever (the runaway of the seed). [MASK] is a sampling decision ("defer"), steered
    by the controller alone.
    Returns the loss and detached diagnostics (per-task mean CE as tensors)."""
    logp = word_log_probs(logits, mask_token_id, exclude_wrong=False)
    ce = -logp.gather(-1, targets[..., None]).squeeze(-1)
    unmask = inputs == mask_token_id
    remask = targets == wrong_token_id
    keep = ~unmask & ~remask
    p_right = (-ce).exp().detach()
    unmask_weight = weight_unmask_task * (reward_correct_unmask + (1 - reward_correct_unmask) * (1 - p_right))
    weight = torch.where(unmask, unmask_weight, torch.where(remask, weight_remask_task,
                         penalty_mask_correct * (1 - rate[:, None]).expand_as(ce)))
    loss = (weight * ce).mean()
    ce = ce.detach()
    stats = {f'loss_{name}': (ce * sel).sum() / sel.sum().clamp(min=1)
             for name, sel in (('unmask', unmask), ('remask', remask), ('keep', keep))}
    return loss, stats


def elbo_loss(logits, inputs, targets, elbo_weight, mask_token_id):
    """Continuous-time ELBO of masked diffusion: at masked positions, cross-entropy over
    the words, weighted by m'(t)/m(t) of the row, summed and divided by T. Its mean over
    t ~ U(0,1) is an upper bound on the negative log-likelihood in nats per token."""
    logp = word_log_probs(logits, mask_token_id)
    ce = -logp.gather(-1, targets[..., None]).squeeze(-1)
    masked = inputs == mask_token_id
    per_row = (ce * masked).sum(1) / inputs.size(1)
    loss = (elbo_weight * per_row).mean()
    return loss, {'loss_unmask': (ce.detach() * masked).sum() / masked.sum().clamp(min=1)}


def masked_cross_entropy(logits, inputs, targets, mask_token_id):
    """Mean cross-entropy over the words at the masked positions: how well the model
    fills in blanks, comparable between objectives (the masked val loss)."""
    ce = -word_log_probs(logits, mask_token_id).gather(-1, targets[..., None]).squeeze(-1)
    masked = inputs == mask_token_id
    return (ce * masked).sum() / masked.sum().clamp(min=1)


def mask_statistics(logits, inputs, mask_token_id, mask_logit_bias):
    """At masked positions: mean p([MASK]) as the sampler sees it (bias included), and the
    mean raw logit gap between [MASK] (bias removed) and the best word."""
    masked = (inputs == mask_token_id).float()
    n = masked.sum().clamp(min=1)
    logits = logits.detach().float()
    p_mask = logits.softmax(-1)[..., mask_token_id]
    gap = logits[..., mask_token_id] - mask_logit_bias - logits[..., :mask_token_id].max(-1).values
    return (p_mask * masked).sum() / n, (gap * masked).sum() / n


def update_mask_bias(bias, mean_p_mask, target_mask_prob, gain, limit):
    """One step of the [MASK] logit-bias controller, an integral controller in log-odds:
        bias += gain * (logit(target) - logit(mean p([MASK])))
    With every position's p = sigmoid(d + bias) the log-odds of the mean move about one
    for one with the bias, so gain <= 1 converges without overshoot; batch noise is
    averaged out by a gain well below 1. It is stable because the raw [MASK] logit gets
    no gradient from the loss (see task_weighted_loss): the plant does not drift, so the
    bias does not have to chase it. The clamp to +-limit only guards against a broken
    statistic (e.g. no masked position at all), it is not what keeps the bias bounded."""
    p = mean_p_mask.clamp(1e-6, 1 - 1e-6)
    error = math.log(target_mask_prob / (1 - target_mask_prob)) - torch.log(p / (1 - p))
    return (bias + gain * error).clamp(-limit, limit)
