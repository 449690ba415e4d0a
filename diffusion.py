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

import functools
import math
from contextlib import nullcontext

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


def corrupt(x, generator, mask_token_id, wrong_token_id, guaranteed_correct_factor, remask_ratio, rate_min=0.0, rate_max=1.0):
    """The seed corruption. For each row independently:
        total = U(rate_min, min(rate_max, 1 - guaranteed_correct_factor))
        rate_random = U(0,1) * total * remask_ratio;  rate_mask = total - rate_random
    T*total positions are corrupted, T*rate_random of them with a random token that is never
    the original and the rest with [MASK]. Counts are rounded stochastically (floor(v + U(0,1)),
    first the corrupted count, then its random part), so that E[count] = T*rate however short
    the row: floored counts of a 4-token block drew no random token at a remask_ratio of 0.2,
    and never a fully masked block, with which every block starts when sampling. Targets: the original token,
    except [WRONG] at the randomised positions. [rate_min, rate_max] is the clipped range of
    BD3-LM: rows that are almost clean or almost all noise teach little and add variance.
    x (B, T) clean tokens of a base vocabulary of size mask_token_id.
    Returns inputs, targets, total (B,) (the row's corruption rate)."""
    B, T = x.shape
    vocab = mask_token_id # base vocabulary size: the special ids come right after it
    high = min(rate_max, 1 - guaranteed_correct_factor)
    total = rate_min + torch.rand(B, generator=generator, device=x.device) * max(0.0, high - rate_min)
    share_random = torch.rand(B, generator=generator, device=x.device) * remask_ratio # rate_random / total
    n_corrupted = (T * total + torch.rand(B, generator=generator, device=x.device)).long()
    n_random = (n_corrupted * share_random + torch.rand(B, generator=generator, device=x.device)).long()
    n_mask = n_corrupted - n_random
    masked, randomised = random_positions((B, T), [n_mask, n_random], generator, x.device)
    inputs = torch.where(masked, mask_token_id, torch.where(randomised, random_other_tokens(x, vocab, generator), x))
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


def corrupt_mask_only(x, generator, mask_token_id, schedule, t_min=1e-3, t_max=1.0):
    """Mask-only corruption for the ELBO objective: t per row, stratified over the batch
    (one draw in each of B equal slices of [t_min, t_max], which lowers the variance of the
    bound estimate without biasing it), each token masked independently with prob m(t).
    The bound needs the whole range [~0, 1]; a narrower one is BD3-LM's clipped training
    range (lower variance, no longer the bound).
    Returns inputs, targets (= x), t (B,), elbo_weight (B,), mask fraction m(t) (B,)."""
    B, T = x.shape
    u = (torch.arange(B, device=x.device) + torch.rand(B, generator=generator, device=x.device)) / B
    t = t_min + (t_max - t_min) * u[torch.randperm(B, generator=generator, device=x.device)]
    m, elbo_weight = mask_schedule(t, schedule)
    masked = torch.rand(B, T, generator=generator, device=x.device) < m[:, None]
    return torch.where(masked, mask_token_id, x), x, t, elbo_weight, m


def block_rows(x, block):
    """x (B, T, ...) seen as (B*T/block, block, ...): one row per diffusion block, so that
    corruption draws one noise level per block (stratified over batch x blocks) and the
    losses treat blocks as rows. block = T (a full-sequence model) changes nothing."""
    return x.reshape(-1, block, *x.shape[2:])


def random_other_tokens(x, vocab, generator):
    """A random token of the base vocabulary (size vocab) at every position of x, never
    the one already there: adding 1..vocab-1 modulo vocab can never give it back."""
    shift = torch.randint(1, vocab, x.shape, generator=generator, device=x.device)
    return (x + shift) % vocab


def exact_fraction_positions(x, fraction, generator):
    """(B, T) bool: exactly int(T * fraction) random positions in every row of x."""
    B, T = x.shape
    counts = torch.full((B,), int(T * fraction), dtype=torch.long, device=x.device)
    return random_positions((B, T), [counts], generator, x.device)[0]


def corrupt_fixed_fraction(x, generator, mask_token_id, fraction):
    """Mask exactly int(T * fraction) random positions of every row (masked val loss)."""
    return torch.where(exact_fraction_positions(x, fraction, generator), mask_token_id, x)


# ----------------------------------------------------------------------------
# curriculum, losses, controller

def ramp(it, warmup_iters):
    """Linear 0 -> 1 over warmup_iters iterations (1 from the start if warmup_iters <= 0)."""
    return 1.0 if warmup_iters <= 0 else min(1.0, it / warmup_iters)


def curriculum(it, penalty_mask_correct, masking_warmup_iters, proofreading_warmup_iters, wrong_share=1.0):
    """The dual curriculum at iteration it: (the keep penalty, remask_ratio) of that iteration.
    The model first learns to fill in masks with no penalty for touching correct tokens,
    then the penalty and the share of proofreading work (random tokens to flag as
    [WRONG]) ramp up, the latter to wrong_share. A pure function of it, so a resumed run
    continues both ramps."""
    return penalty_mask_correct * ramp(it, masking_warmup_iters), wrong_share * ramp(it, proofreading_warmup_iters)


def forbid(logits, *token_ids):
    """logits with the given token ids made impossible. The mask is built on the logits' device
    from an arange: indexing a GPU tensor with a Python list would copy the list over first."""
    ids = torch.arange(logits.size(-1), device=logits.device)
    banned = functools.reduce(torch.logical_or, [ids == i for i in token_ids])
    return logits.masked_fill(banned, float('-inf'))


def word_log_probs(logits, mask_token_id, exclude_wrong=True):
    """log-softmax over the words only: [MASK] (and, unless asked, [WRONG]) excluded."""
    excluded = (mask_token_id, mask_token_id + 1) if exclude_wrong else (mask_token_id,)
    return F.log_softmax(forbid(logits.float(), *excluded), dim=-1)


def task_weighted_loss(logits, inputs, targets, rate, mask_token_id, wrong_token_id,
                       weight_unmask_task, weight_remask_task, penalty_mask_correct, reward_correct_unmask,
                       normalise='positions'):
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
    normalise: 'positions' averages weight * CE over every position of the batch, so rows
    with more corruption weigh more and untouched positions dilute the rest; 'tasks' takes,
    in every row, the mean of each task over its own positions and sums the three (the
    token mean of MDLM's masked loss, per task), then averages the rows.
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
    if normalise == 'positions':
        loss = (weight * ce).mean()
    elif normalise == 'tasks':
        loss = sum(((weight * ce) * sel).sum(1) / sel.sum(1).clamp(min=1) for sel in (unmask, remask, keep)).mean()
    else:
        raise ValueError(f"unknown normalise {normalise!r} (use 'positions' or 'tasks')")
    ce = ce.detach()
    stats = {f'loss_{name}': (ce * sel).sum() / sel.sum().clamp(min=1)
             for name, sel in (('unmask', unmask), ('remask', remask), ('keep', keep))}
    return loss, stats


def elbo_loss(logits, inputs, targets, elbo_weight, mask_token_id, weighting='elbo'):
    """Continuous-time ELBO of masked diffusion: at masked positions, cross-entropy over
    the words, weighted by m'(t)/m(t) of the row, summed and divided by T. Its mean over
    t ~ U(0,1) is an upper bound on the negative log-likelihood in nats per token.
    Rows may be the blocks of a block model (block_rows): the mean over blocks of their
    sums / block length is the bound's sum over blocks / T.
    weighting='token_mean' trains on the mean CE over each row's masked positions instead:
    no 1/t, so the rows with few masks (small t) no longer dominate the variance; it is
    not the bound, which is always measured with 'elbo'."""
    logp = word_log_probs(logits, mask_token_id)
    ce = -logp.gather(-1, targets[..., None]).squeeze(-1)
    masked = inputs == mask_token_id
    if weighting == 'elbo':
        loss = (elbo_weight * (ce * masked).sum(1) / inputs.size(1)).mean()
    elif weighting == 'token_mean':
        loss = ((ce * masked).sum(1) / masked.sum(1).clamp(min=1)).mean()
    else:
        raise ValueError(f"unknown weighting {weighting!r} (use 'elbo' or 'token_mean')")
    return loss, {'loss_unmask': (ce.detach() * masked).sum() / masked.sum().clamp(min=1)}


def masked_cross_entropy(logits, inputs, targets, mask_token_id):
    """Mean cross-entropy over the words at the masked positions: how well the model
    fills in blanks, comparable between objectives (the masked val loss)."""
    ce = -word_log_probs(logits, mask_token_id).gather(-1, targets[..., None]).squeeze(-1)
    masked = inputs == mask_token_id
    return (ce * masked).sum() / masked.sum().clamp(min=1)


def next_token_loss(logits, targets, mask_token_id):
    """Mean next-token cross-entropy over the words of logits (B, T, V) of a clean stream
    against targets (B, T), the tokens that follow: [MASK] and [WRONG] are never targets, so
    they are left out of the softmax (they could only ever be pushed down)."""
    return -word_log_probs(logits, mask_token_id).gather(-1, targets[..., None]).mean()


@torch.no_grad()
def ar_val_loss(model, batches, mask_token_id, ctx=nullcontext()):
    """Mean next_token_loss of a causal_clean model in AR mode (token-causal attention over
    clean text) on batches of (x, y): the val loss of an AR model, in nats per token."""
    losses = []
    for x, y in batches:
        with ctx:
            logits, _ = model(x, ar=True)
        losses.append(next_token_loss(logits, y, mask_token_id))
    return torch.stack(losses).mean().item()


VAL_FRACTIONS = (0.15, 0.5, 0.9) # the masked shares of the masked val CE that train.py logs and bench.py tables


def val_metrics(model, batches, mask_token_id, noise_span, schedule, seed, ctx=nullcontext()):
    """The validation metrics of a diffusion model on batches of clean text (B, T), the same in
    train.py and bench.py: 'masked15', 'masked50', 'masked90' (masked_val_loss at each of
    VAL_FRACTIONS, noise seeded seed + 2) and 'bound' (elbo_bound with noise_span tokens per noise
    level, noise seeded seed + 1), all in nats per token."""
    def noise(offset):
        return torch.Generator(device=batches[0].device).manual_seed(seed + offset)
    out = {f'masked{round(fraction * 100)}': masked_val_loss(model, batches, mask_token_id, fraction, noise(2), ctx)
           for fraction in VAL_FRACTIONS}
    out['bound'] = elbo_bound(model, batches, mask_token_id, noise_span, schedule, noise(1), ctx)
    return out


@torch.no_grad()
def masked_val_loss(model, batches, mask_token_id, fraction, generator, ctx=nullcontext()):
    """Mean masked_cross_entropy over batches of clean text (B, T) with exactly fraction
    of every row masked: the fixed-seed masked val loss of train.py and bench.py. A block
    model sees each block's masks with the clean blocks before it as context."""
    losses = []
    for x in batches:
        inputs = corrupt_fixed_fraction(x, generator, mask_token_id, fraction)
        with ctx:
            logits, _ = model(inputs, noise_level=torch.full((x.size(0),), fraction, device=x.device), clean=x)
        losses.append(masked_cross_entropy(logits, inputs, x, mask_token_id))
    return torch.stack(losses).mean().item()


@torch.no_grad()
def elbo_bound(model, batches, mask_token_id, block, schedule, generator, ctx=nullcontext()):
    """The ELBO of masked diffusion on batches of clean text (B, T), in nats per token: an
    upper bound on the NLL for any denoiser, comparable to an AR val loss. One noise level
    per block of `block` tokens (block = T for a full-sequence model), over the full range
    of t whatever range the model was trained on."""
    bounds = []
    for x in batches:
        inputs, targets, _, elbo_weight, m = corrupt_mask_only(block_rows(x, block), generator, mask_token_id, schedule)
        with ctx:
            # noise_level per block row: only time conditioning reads it, and block models have none
            logits, _ = model(inputs.view_as(x), noise_level=m, clean=x)
        bounds.append(elbo_loss(block_rows(logits, block), inputs, targets, elbo_weight, mask_token_id)[0])
    return torch.stack(bounds).mean().item()


def with_mask_bias(logits, mask_token_id, mask_logit_bias):
    """The model's logits as sampling reads them: the controller's bias (a tensor) added to the
    [MASK] column. Only the samplers that may draw [MASK] and the controller's statistic need it:
    every loss and every other sampler leaves [MASK] out of its softmax. Without an in-place write
    (autograd-safe) and without a tensor made from a Python int on the host (a blocking copy to
    the GPU at every pass)."""
    is_mask = torch.arange(logits.size(-1), device=logits.device) == mask_token_id
    return logits + is_mask * mask_logit_bias.float()


def mask_statistics(logits, inputs, mask_token_id, mask_logit_bias):
    """At masked positions: mean p([MASK]) as the sampler sees it (with the bias), and the
    mean raw logit gap between [MASK] (without it) and the best word."""
    masked = (inputs == mask_token_id).float()
    n = masked.sum().clamp(min=1)
    logits = logits.detach().float()
    p_mask = with_mask_bias(logits, mask_token_id, mask_logit_bias).softmax(-1)[..., mask_token_id]
    gap = logits[..., mask_token_id] - logits[..., :mask_token_id].max(-1).values
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


def training_loss(model, x, y, generator, it, settings, ctx=nullcontext()):
    """The loss of one micro-batch of train.py's diffusion training, and detached statistics.
    x (B, T) is clean text, corrupted here by the objective of settings['loss_type']: the seed
    recipe at curriculum step it, or mask-only corruption for the ELBO. A block model corrupts
    each block as a row of its own (one noise level per block) and sees the clean text beside
    the noisy one; with settings['ar_loss_weight'] > 0 its clean stream also predicts the next
    tokens y (loss_ar). settings: train.py's configuration by name (its globals). model: the
    GPT, or the DDP or compiled module around it. Statistics: the loss's per-task CE, and
    p([MASK]) and the logit gap of mask_statistics, which the controller reads."""
    gpt = getattr(model, 'module', model) # DDP keeps the GPT in .module; a compiled module passes attributes on
    mask_id, wrong_id, s = gpt.config.mask_token_id, gpt.config.wrong_token_id, settings
    span = gpt.denoising_block or x.size(1) # tokens that share one noise level: a block, or a whole row
    rows = block_rows(x, span)
    if s['loss_type'] == 'elbo':
        inputs, targets, _, elbo_weight, noise_level = corrupt_mask_only(
            rows, generator, mask_id, s['noise_schedule'], max(s['mask_rate_min'], 1e-3), s['mask_rate_max'])
    else:
        penalty, remask_ratio = curriculum(it, s['penalty_mask_correct'], s['masking_warmup_iters'],
                                           s['proofreading_warmup_iters'], s['wrong_share'])
        inputs, targets, noise_level = corrupt(rows, generator, mask_id, wrong_id, s['guaranteed_correct_factor'],
                                               remask_ratio, s['mask_rate_min'], s['mask_rate_max'])
    with ctx:
        # noise_level is per block row: only time conditioning reads it, and block models have none
        logits, _ = model(inputs.view_as(x), noise_level=noise_level, clean=x, both_streams=s['ar_loss_weight'] > 0)
    logits, clean_logits = block_rows(logits[:, :x.size(1)], span), logits[:, x.size(1):]
    if s['loss_type'] == 'elbo':
        loss, stats = elbo_loss(logits, inputs, targets, elbo_weight, mask_id, s['loss_weighting'])
    else:
        loss, stats = task_weighted_loss(logits, inputs, targets, noise_level, mask_id, wrong_id, s['weight_unmask_task'],
                                         s['weight_remask_task'], penalty, s['reward_correct_unmask'], s['seed_normalise'])
    stats['p_mask'], stats['logit_gap'] = mask_statistics(logits, inputs, mask_id, gpt.mask_logit_bias)
    if s['ar_loss_weight'] > 0:
        loss_ar = next_token_loss(clean_logits, y, mask_id)
        loss = loss + s['ar_loss_weight'] * loss_ar
        stats['loss_ar'] = loss_ar.detach()
    return loss, stats


# ----------------------------------------------------------------------------
# samplers
# A sampler gets x (B, T): [MASK] at the positions to write, fixed tokens (a prompt or
# a template) everywhere else, which it never changes. It returns the written tokens,
# with no [MASK] or [WRONG] left, and the number of forward passes it used.

def filter_logits(logits, temperature, top_k=None, top_p=None):
    """Logits reshaped for sampling from softmax(result): divided by temperature, then
    everything outside the top_k tokens and outside the smallest set whose probability
    reaches top_p set to -inf. Temperature 0 keeps only the argmax (greedy)."""
    logits = logits.float()
    if temperature == 0:
        return torch.full_like(logits, float('-inf')).scatter(-1, logits.argmax(-1, keepdim=True), 0.0)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the more likely ones already reach top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float('-inf'))
    return logits


def sample_tokens(logits, temperature, top_k, top_p, generator):
    """One token per position from logits (..., V), through filter_logits."""
    logits = filter_logits(logits, temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1) # no random draw, so greedy sampling is deterministic
    probs = logits.softmax(-1)
    return torch.multinomial(probs.view(-1, probs.size(-1)), 1, generator=generator).view(probs.shape[:-1])


def denoiser_logits(model, x, context=None):
    """Float logits of a diffusion model on x, with its [MASK] bias (with_mask_bias); the noise
    level of each row, for a model with time conditioning, is the fraction of its positions
    still masked. context, from generate(), is a dict: x is then one block at position
    context['offset'] that sees the clean blocks before it through the KV cache
    context['cache'], which it reads without extending. Finished blocks not yet in the cache
    (context['pending'], the tokens right before x) ride along in the first pass, which stores
    them: no pass of their own."""
    mask_id = model.config.mask_token_id
    noise_level = (x == mask_id).float().mean(1)
    if context is None:
        logits, _ = model(x, noise_level=noise_level)
    else:
        pending = context.pop('pending', x[:, :0])
        logits, _ = model(torch.cat([pending, x], 1), noise_level=noise_level, kv_cache=context['cache'],
                          pos_offset=context['offset'] - pending.size(1), store=pending.size(1))
        logits = logits[:, pending.size(1):]
    return with_mask_bias(logits.float(), mask_id, model.mask_logit_bias)


@torch.no_grad()
def refine_sample(model, x, max_steps, temperature=1.0, top_k=None, top_p=None, generator=None, on_step=None, context=None):
    """The seed's loop. Each step samples every position from the model (with its [MASK]
    bias): a [MASK] position takes the sample, where sampling [MASK] (or [WRONG], which is
    no word) means "defer"; a written token for which the model samples [WRONG] goes back
    to [MASK], to be rewritten. It stops when no [MASK] is left or after max_steps steps;
    a final pass then fills what is left with [MASK] and [WRONG] forbidden.
    on_step(step, tokens) is called after every forward pass; context: see denoiser_logits.
    Returns (tokens, forward_passes)."""
    mask_id, wrong_id = model.config.mask_token_id, model.config.wrong_token_id
    fixed = x != mask_id
    passes = 0
    while passes < max_steps and (x == mask_id).any(): # one host sync per step, not per row
        masked = x == mask_id
        sampled = sample_tokens(denoiser_logits(model, x, context), temperature, top_k, top_p, generator)
        passes += 1
        flagged = ~fixed & ~masked & (sampled == wrong_id)
        x = torch.where(masked & (sampled != wrong_id), sampled, x)
        x = torch.where(flagged, mask_id, x)
        if on_step is not None:
            on_step(passes, x)
    masked = x == mask_id
    if masked.any():
        words = forbid(denoiser_logits(model, x, context), mask_id, wrong_id)
        x = torch.where(masked, sample_tokens(words, temperature, top_k, top_p, generator), x)
        passes += 1
        if on_step is not None:
            on_step(passes, x)
    return x, passes


def masked_fraction(progress, schedule):
    """Fraction of the positions to write that are still masked after a share progress
    in [0, 1] of the steps: 1 at the start, 0 at the end."""
    if schedule == 'linear':
        return 1.0 - progress
    if schedule == 'cosine': # MaskGIT's choice: few tokens first, while the context is poor
        return math.cos(0.5 * math.pi * progress)
    raise ValueError(f"unknown schedule {schedule!r} (use 'linear' or 'cosine')")


@torch.no_grad()
def confidence_sample(model, x, steps, schedule='cosine', temperature=1.0, top_k=None, top_p=None,
                      generator=None, remask='none', order='confidence', commit='schedule', threshold=0.9,
                      entropy_budget=1.0, on_step=None, context=None):
    """MaskGIT/LLaDA-style sampling. Each step proposes a word at every masked position
    ([MASK] and [WRONG] forbidden) and commits some of the proposals. How many, per row:
      commit='schedule'   the share of the schedule: a row with n masked positions at step s
                          keeps floor(n * m((s+1)/steps) / m(s/steps)) masked, 0 at the last
                          step, so exactly `steps` passes; the count is taken from the current
                          masks, so positions sent back to [MASK] join the remaining budget;
      commit='threshold'  every proposal whose confidence exceeds threshold, and at least
                          the surest one (Fast-dLLM): easy stretches go fast, hard ones slow;
      commit='entropy'    the lowest-entropy proposals while their summed entropy stays within
                          entropy_budget nats, at least one (EB-sampler);
    the adaptive rules stop when nothing is masked, and commit everything left at pass
    `steps` (their cap); they choose by their own score, so `order` is for the schedule. Confidence is the model's probability of the proposed word and
    entropy that of its distribution over words, both at temperature 1, so that greedy
    sampling still ranks them. Which proposals: the surest first; order='random' commits
    a random choice on the schedule instead: the ancestral sampler of masked diffusion
    (MDLM), which keeps the model's diversity where committing the surest tokens first
    drifts toward frequent words; order='left_to_right' commits the leftmost masked
    positions (inside a small block: next-token order, each token written with all the
    clean text before it, which measured best at matched diversity). remask:
      'none'            written tokens stay;
      'wrong'           a written token whose argmax (over all but [MASK]) is [WRONG] goes
                        back to [MASK] (self-correction), at every step but the last;
      'low_confidence'  ReMDM-like, with the schedule: written tokens compete with the
                        proposals; a row keeps the most confident of both (a written
                        token's confidence is the probability of its current word against
                        the other words and [WRONG]), so a doubtful one may go back to
                        [MASK] while a better proposal is committed instead, at every step
                        but the last.
    on_step(step, tokens) is called after each pass; context: see denoiser_logits.
    Returns (tokens, forward_passes)."""
    if order not in ('confidence', 'random', 'left_to_right'):
        raise ValueError(f"unknown order {order!r} (use 'confidence', 'random' or 'left_to_right')")
    if steps < 1:
        raise ValueError(f"confidence_sample needs steps >= 1, got {steps}")
    if remask not in ('none', 'wrong', 'low_confidence'):
        raise ValueError(f"unknown remask {remask!r} (use 'none', 'wrong' or 'low_confidence')")
    if commit not in ('schedule', 'threshold', 'entropy'):
        raise ValueError(f"unknown commit rule {commit!r} (use 'schedule', 'threshold' or 'entropy')")
    if commit != 'schedule' and remask == 'low_confidence':
        raise ValueError(f"commit={commit!r} picks the proposals itself: it goes with remask 'none' or 'wrong'")
    mask_id, wrong_id = model.config.mask_token_id, model.config.wrong_token_id
    fixed = x != mask_id
    passes = 0
    for step in range(steps):
        masked = x == mask_id
        if not masked.any(): # one host sync per step, not per row
            break
        logits = denoiser_logits(model, x, context)
        words = forbid(logits, mask_id, wrong_id)
        proposal = sample_tokens(words, temperature, top_k, top_p, generator)
        last = step == steps - 1
        n_masked = masked.sum(1)
        # floor(n * ratio), nudged up so that float rounding cannot take an exact integer one
        # below it, and at least one token written per step; 0 at the last step
        ratio = masked_fraction((step + 1) / steps, schedule) / masked_fraction(step / steps, schedule)
        keep_masked = torch.minimum((n_masked * (ratio * (1 + 1e-6))).long(), n_masked - 1).clamp(min=0)
        if remask == 'low_confidence' and not last:
            # candidates: every non-fixed position, with its proposal or its current word;
            # a current word competes with [WRONG] (which is how the model doubts it)
            candidate = torch.where(masked, proposal, x)
            confidence = torch.where(masked, token_probs(words, proposal), token_probs(forbid(logits, mask_id), x))
            confidence = confidence.masked_fill(fixed, float('-inf'))
            n_written = (~fixed).sum(1) - keep_masked
            write = ~fixed & (rank_descending(confidence) < n_written[:, None])
            x = torch.where(fixed, x, torch.where(write, candidate, mask_id))
        else:
            # which proposals (score, highest first) and how many (n_commit) per row
            if commit == 'entropy':
                score = -token_entropy(words).masked_fill(~masked, float('inf'))
                n_commit = ((-score).sort(-1).values.cumsum(-1) <= entropy_budget).sum(1).clamp(min=1)
            elif commit == 'threshold':
                score = token_probs(words, proposal)
                n_commit = ((score > threshold) & masked).sum(1).clamp(min=1)
            else:
                n_commit = n_masked - keep_masked
                if order == 'random':
                    score = torch.rand(x.shape, generator=generator, device=x.device)
                elif order == 'left_to_right':
                    score = -torch.arange(x.size(1), device=x.device).expand(x.shape).float()
                else:
                    score = token_probs(words, proposal)
            if last:
                n_commit = n_masked
            commit_now = masked & (rank_descending(score.masked_fill(~masked, float('-inf'))) < n_commit[:, None])
            x_new = torch.where(commit_now, proposal, x)
            if remask == 'wrong' and not last:
                flagged = ~fixed & ~masked & (forbid(logits, mask_id).argmax(-1) == wrong_id)
                x_new = torch.where(flagged, mask_id, x_new)
            x = x_new
        passes += 1
        if on_step is not None:
            on_step(passes, x)
    return x, passes


def sampling_probs(logits, mask_token_id, temperature, top_k, top_p):
    """The distribution over the words (the ids below [MASK]; [MASK] and [WRONG] come right
    after them) that sample_tokens draws from, as probabilities: one-hot at temperature 0."""
    return filter_logits(logits[..., :mask_token_id], temperature, top_k, top_p).softmax(-1)


def draw(probs, generator):
    """One token per position from probabilities (..., V)."""
    return torch.multinomial(probs.reshape(-1, probs.size(-1)), 1, generator=generator).view(probs.shape[:-1])


@torch.no_grad()
def speculative_sample(model, x, temperature=1.0, top_k=None, top_p=None, generator=None, draft='simple',
                       on_step=None, context=None):
    """Speculative sampling in one network (TiDAR, Liu et al. 2025): a block model trained with
    a causal clean stream (causal_clean) drafts tokens by diffusion and verifies them as an AR
    model, in the same forward pass. x is one block (generate() calls it block by block), its
    positions written left to right. Each pass runs [pending ; block ; copies] (draft_verify_mask):
    - the clean block holds the written tokens and the drafts of the last pass; its logits at
      position i give the AR distribution p of token i+1. The drafts are checked in order
      (Leviathan et al. 2023): draft d, drawn from q, is kept with probability min(1, p(d)/q(d));
      at the first rejection the token is drawn from max(0, p - q), normalised, and after the
      last draft from p. Every pass writes one token or more, each distributed exactly as the
      AR mode would write it: the drafts change the speed, never the text's distribution;
    - noisy copies of the block draft the next tokens, q, at the positions after the token
      written from p or from the residual (it is not known before the pass). draft='simple':
      one copy, with every draft of this pass given as if it were kept; after a rejection,
      the drafts of the last pass after it are still drafts (none of them was read), and the
      copy's drafts go after them. draft='ahead' (TiDAR): one copy per number of drafts kept,
      so whatever is rejected, the next pass has drafts made from the tokens actually kept.
    The token at the start of the text, which no clean token comes before, is the draft's.
    Rows accept different numbers of drafts; the block is done when every row is.
    Temperature, top_k and top_p shape p and q alike; fixed positions are kept and not drawn.
    Returns (tokens, forward_passes)."""
    if not model.config.causal_clean:
        raise ValueError("the speculative sampler needs a block model with a causal clean stream: "
                         "train one with --ar_loss_weight>0")
    if draft not in ('ahead', 'simple'):
        raise ValueError(f"unknown draft {draft!r} (use 'ahead' or 'simple')")
    mask_id = model.config.mask_token_id
    R, L = x.shape
    if context is None: # a block at the start of the text
        context = {'cache': [{} for _ in model.transformer.h], 'offset': 0}
    pending = context.pop('pending', x[:, :0])
    pos = torch.arange(L, device=x.device)
    fixed = x != mask_id
    tokens = x.clone() # written tokens, then drafts, then [MASK] (or fixed tokens)
    written = torch.zeros(R, dtype=torch.long, device=x.device) # leading positions written, per row
    drafted = torch.zeros(R, L, dtype=torch.bool, device=x.device)
    q = torch.zeros(R, L, mask_id, device=x.device) # the draft distribution at each drafted position
    passes = 0
    while ((pos >= written[:, None]) & ~fixed).any(): # one host sync per pass, not per row
        end = written + drafted.sum(1) # drafts run from written to end
        if draft == 'ahead':
            given = torch.minimum(written[:, None] + torch.arange(int((end - written).max()) + 1, device=x.device), end[:, None])
        else:
            given = end[:, None]
        copies = torch.where((pos < given[..., None]) | fixed[:, None], tokens[:, None], mask_id) # (R, C, L)
        C, P = copies.size(1), pending.size(1)
        logits, _ = model(torch.cat([pending, tokens, copies.view(R, -1)], 1), kv_cache=context['cache'],
                          pos_offset=context['offset'] - P, store=P, copies=C)
        passes += 1
        clean, copy_logits = logits[:, :P + L], logits[:, P + L:].view(R, C, L, -1)
        first = clean[:, P - 1] if P else copy_logits[:, 0, 0] # what comes before position 0
        p = sampling_probs(torch.cat([first[:, None], clean[:, P:P + L - 1]], 1), mask_id, temperature, top_k, top_p)
        pending = pending[:, :0] # stored in the cache now
        # verify: fixed and written positions pass, a draft with probability min(1, p/q)
        p_token, q_token = (dist.gather(-1, tokens.clamp(max=mask_id - 1)[..., None]).squeeze(-1) for dist in (p, q))
        u = torch.rand(R, L, generator=generator, device=x.device)
        ok = fixed | (pos < written[:, None]) | (drafted & (u * q_token < p_token))
        stop = torch.where(ok.all(1), L, (~ok).long().argmax(1)) # the first position that fails, per row
        at = stop.clamp(max=L - 1)[:, None, None].expand(R, 1, mask_id)
        residual = (p.gather(1, at) - q.gather(1, at) * drafted.gather(1, at[..., 0])[..., None]).clamp(min=0).squeeze(1)
        new = draw(residual + (residual.sum(-1, keepdim=True) == 0) * 1.0, generator) # rows with stop == L draw a filler
        tokens = torch.where(pos == stop[:, None], new[:, None], tokens)
        # the next drafts: from the copy whose given tokens are those kept
        pick = (stop - written).clamp(max=C - 1) if draft == 'ahead' else torch.zeros_like(stop)
        q_copy = sampling_probs(copy_logits[torch.arange(R, device=x.device), pick], mask_id, temperature, top_k, top_p)
        after = (pos > stop[:, None]) & ~fixed
        from_copy = after & ((pos >= end[:, None]) | (draft == 'ahead'))
        tokens = torch.where(from_copy, draw(q_copy, generator), tokens)
        q = torch.where(from_copy[..., None], q_copy, q)
        drafted, written = after, (stop + 1).clamp(max=L)
        if on_step is not None:
            on_step(passes, torch.where((pos < written[:, None]) | fixed, tokens, mask_id))
    return tokens, passes


def token_entropy(logits):
    """Entropy (nats) of softmax(logits) at every position, (B, T)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


def token_probs(logits, tokens):
    """softmax(logits) at the given tokens, (B, T), without a (B, T, V) softmax."""
    return (logits.gather(-1, tokens[..., None]).squeeze(-1) - logits.logsumexp(-1)).exp()


def rank_descending(scores):
    """Rank of each entry within its row, 0 for the largest: comparing it with a (B, 1)
    tensor of counts selects a different number of top entries in each row."""
    return scores.argsort(-1, descending=True).argsort(-1)


# the samplers, by the name generate_diffusion.py's --sampler gives them
SAMPLE_FUNCTIONS = {'confidence': confidence_sample, 'refine': refine_sample, 'speculative': speculative_sample}
# the named settings that bench.py and gpu_check.py compare: (sampler, its options beyond the defaults)
PRESETS = {'refine': ('refine', {}),
           'confidence': ('confidence', dict(order='confidence')),
           'confidence+wrong': ('confidence', dict(order='confidence', remask='wrong')),
           'ancestral': ('confidence', dict(order='random')),
           'left_to_right': ('confidence', dict(order='left_to_right')),
           'threshold': ('confidence', dict(commit='threshold')),
           'entropy': ('confidence', dict(commit='entropy'))}


@torch.no_grad()
def generate(model, x, sample_fn, on_step=None, **sampler_kwargs):
    """Fill every [MASK] of x (B, N), N of any length, with sample_fn (refine_sample or
    confidence_sample, with sampler_kwargs); every other position stays as given.
    A block model writes block by block, left to right, each block with sample_fn on its
    own tokens, seeing the finished blocks before it through a KV cache: they are run once
    as clean input (beside the first pass over the next block, see denoiser_logits) and
    their keys and values reused by every later pass. When the next block does not
    fit in block_size, the context slides by whole blocks (so blocks stay where training
    put them) and the cache is rebuilt from the last block_size - block tokens.
    A full-sequence model has no cache: sample_fn runs on the whole x when it fits in
    block_size; longer text is written window after window of block_size tokens, each
    sliding by half a window, its first half the end of the text written so far (fixed).
    on_step(passes, tokens (B, N), (start, end) of the positions being written, number of
    positions whose keys are cached) is called after every denoising pass.
    Returns (tokens, forward_passes)."""
    mask_id, T, block = model.config.mask_token_id, model.config.block_size, model.denoising_block
    N = x.size(1)
    x = x.clone()
    # the spans written one after the other: blocks, or windows of a full-sequence model
    if block is not None:
        spans = [(s, min(s + block, N)) for s in range(0, N, block)]
    else:
        ends = [min(N, T)] + list(range(T + T // 2, N + T // 2, T // 2))
        spans = [(max(0, min(e, N) - T), min(e, N)) for e in ends]
    cache, cache_start, cache_end, passes = None, 0, 0, 0
    for start, end in spans:
        if not (x[:, start:end] == mask_id).any(): # one host sync per span
            continue
        context = None
        if block is not None:
            window = max(0, start + block - T) # first position the model sees: a block boundary
            if cache is None or cache_start != window: # start, or slide: rebuild the cache
                cache, cache_start, cache_end = [{} for _ in model.transformer.h], window, window
            # the clean blocks written (or given) since the last store go into the cache
            # during the first pass over this block
            context = {'cache': cache, 'offset': start - cache_start, 'pending': x[:, cache_end:start]}
            cache_end = start

        def span_step(step, tokens, start=start, end=end, done=passes):
            if on_step is not None:
                full = x.clone()
                full[:, start:end] = tokens
                on_step(done + step, full, (start, end), cache_end - cache_start if block is not None else 0)

        x[:, start:end], n = sample_fn(model, x[:, start:end], on_step=span_step, context=context, **sampler_kwargs)
        passes += n
    return x, passes


@torch.no_grad()
def wrong_probs(model, tokens):
    """(B, T): the model's probability of [WRONG] at every position, over everything but [MASK]."""
    logits = forbid(denoiser_logits(model, tokens), model.config.mask_token_id)
    return logits.softmax(-1)[..., model.config.wrong_token_id]


@torch.no_grad()
def wrong_flags(model, tokens, fixed=None, threshold=None):
    """(B, T) bool: the tokens the model says are incorrect, positions in fixed never. With
    threshold None, those whose argmax over everything but [MASK] is [WRONG]; else those whose
    p([WRONG]) exceeds threshold. A model trained with few random tokens gives [WRONG] a small
    prior, so that its argmax rarely wins even where p([WRONG]) stands far above its usual level."""
    if threshold is None:
        logits = forbid(denoiser_logits(model, tokens), model.config.mask_token_id)
        flags = logits.argmax(-1) == model.config.wrong_token_id
    else:
        flags = wrong_probs(model, tokens) > threshold
    return flags if fixed is None else flags & ~fixed


@torch.no_grad()
def proofread(model, tokens, steps, fixed=None, threshold=None, **sampling_kwargs):
    """Flag the incorrect tokens of a text (wrong_flags with threshold), send them back to
    [MASK] and rewrite them with confidence_sample(steps, **sampling_kwargs); every other
    position stays as it was. An on_step in sampling_kwargs sees the flagged text as step 1.
    Returns (flags, corrected tokens, forward_passes)."""
    flags = wrong_flags(model, tokens, fixed, threshold)
    x = torch.where(flags, model.config.mask_token_id, tokens)
    on_step = sampling_kwargs.pop('on_step', None)
    if on_step is not None:
        on_step(1, x)
        sampling_kwargs['on_step'] = lambda step, t: on_step(step + 1, t)
    corrected, passes = confidence_sample(model, x, steps, **sampling_kwargs)
    return flags, corrected, passes + 1
