"""
The diffusion objective of nanoGPT-diffusion, as plain functions that train.py, bench.py and
the tests share (the samplers are in sampling.py):
- corruption of clean text into model inputs and targets: the seed's [MASK] + random token
  recipe, and the mask-only corruption of the ELBO objective;
- the dual curriculum; the task-weighted, argmax-free loss; the ELBO loss and bound;
- the controller of the [MASK] logit bias; the validation metrics.
Everything is vectorised over the batch: no Python loop over rows, no host sync per row.
"""

import functools
import math
from contextlib import nullcontext

import torch
from torch.nn import functional as F

from model import causal_mask

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


def corrupt(x, generator, mask_token_id, wrong_token_id, remask_ratio, rate_min=0.0, rate_max=1.0):
    """The seed corruption. For each row independently:
        total = U(rate_min, rate_max)
        rate_random = U(0,1) * total * remask_ratio;  rate_mask = total - rate_random
    T*total positions are corrupted, T*rate_random of them with a random token that is never
    the original and the rest with [MASK]. Counts are rounded stochastically (floor(v + U(0,1)),
    first the corrupted count, then its random part), so that E[count] = T*rate however short
    the row: floored counts of a 4-token block drew no random token at a remask_ratio of 0.2,
    and never a fully masked block, with which every block starts when sampling. Targets: the original token,
    except [WRONG] at the randomised positions. [rate_min, rate_max] is the clipped range of
    BD3-LM: rows that are almost clean or almost all noise teach little and add variance.
    x (B, T) clean tokens of the mask_token_id ordinary words.
    Returns inputs, targets, total (B,) (the row's corruption rate)."""
    B, T = x.shape
    total = rate_min + torch.rand(B, generator=generator, device=x.device) * (rate_max - rate_min)
    share_random = torch.rand(B, generator=generator, device=x.device) * remask_ratio # rate_random / total
    n_corrupted = (T * total + torch.rand(B, generator=generator, device=x.device)).long()
    n_random = (n_corrupted * share_random + torch.rand(B, generator=generator, device=x.device)).long()
    n_mask = n_corrupted - n_random
    masked, randomised = random_positions((B, T), [n_mask, n_random], generator, x.device)
    inputs = torch.where(masked, mask_token_id, torch.where(randomised, random_other_tokens(x, mask_token_id, generator), x))
    targets = torch.where(randomised, wrong_token_id, x)
    return inputs, targets, total


def corrupt_mask_only(x, generator, mask_token_id, t_min=1e-3, t_max=1.0):
    """Mask-only corruption for the ELBO objective (MDLM, Sahoo et al. 2024, linear schedule):
    t per row, stratified over the batch (one draw in each of B equal slices of [t_min, t_max],
    which lowers the variance of the bound estimate without biasing it), each token masked
    independently with probability t; the ELBO weights a masked token's CE by 1/t.
    The bound needs the whole range [~0, 1]; a narrower one is BD3-LM's clipped training
    range (lower variance, no longer the bound).
    Returns inputs, targets (= x), t (B,)."""
    B, T = x.shape
    u = (torch.arange(B, device=x.device) + torch.rand(B, generator=generator, device=x.device)) / B
    t = t_min + (t_max - t_min) * u[torch.randperm(B, generator=generator, device=x.device)]
    masked = torch.rand(B, T, generator=generator, device=x.device) < t[:, None]
    return torch.where(masked, mask_token_id, x), x, t


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


def word_log_probs(logits, *excluded):
    """log-softmax with the given special ids ([MASK], and [WRONG] where no target is one) excluded."""
    return F.log_softmax(forbid(logits.float(), *excluded), dim=-1)


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
    by the controller alone. The loss is the mean of weight * CE over every position of the
    batch: rows with more corruption weigh more.
    Returns the loss and detached diagnostics (per-task mean CE as tensors)."""
    ce = -word_log_probs(logits, mask_token_id).gather(-1, targets[..., None]).squeeze(-1)
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


def elbo_loss(logits, inputs, targets, t, mask_token_id, wrong_token_id, weighting='elbo'):
    """Continuous-time ELBO of masked diffusion: at masked positions, cross-entropy over
    the words, weighted by 1/t of the row, summed and divided by T. Its mean over
    t ~ U(0,1) is an upper bound on the negative log-likelihood in nats per token.
    Rows may be the blocks of a block model (block_rows): the mean over blocks of their
    sums / block length is the bound's sum over blocks / T.
    weighting='token_mean' trains on the mean CE over each row's masked positions instead:
    no 1/t, so the rows with few masks (small t) no longer dominate the variance; it is
    not the bound, which is always measured with 'elbo'."""
    ce = -word_log_probs(logits, mask_token_id, wrong_token_id).gather(-1, targets[..., None]).squeeze(-1)
    masked = inputs == mask_token_id
    if weighting == 'elbo':
        loss = (1 / t * (ce * masked).sum(1) / inputs.size(1)).mean()
    else:
        loss = ((ce * masked).sum(1) / masked.sum(1).clamp(min=1)).mean()
    return loss, {'loss_unmask': (ce.detach() * masked).sum() / masked.sum().clamp(min=1)}


def masked_cross_entropy(logits, inputs, targets, mask_token_id, wrong_token_id):
    """Mean cross-entropy over the words at the masked positions: how well the model
    fills in blanks, comparable between objectives (the masked val loss)."""
    ce = -word_log_probs(logits, mask_token_id, wrong_token_id).gather(-1, targets[..., None]).squeeze(-1)
    masked = inputs == mask_token_id
    return (ce * masked).sum() / masked.sum().clamp(min=1)


def next_token_loss(logits, targets, mask_token_id, wrong_token_id):
    """Mean next-token cross-entropy over the words of logits (B, T, V) of a clean stream
    against targets (B, T), the tokens that follow: [MASK] and [WRONG] are never targets, so
    they are left out of the softmax (they could only ever be pushed down)."""
    return -word_log_probs(logits, mask_token_id, wrong_token_id).gather(-1, targets[..., None]).mean()


# ----------------------------------------------------------------------------
# the passes over clean and noisy text that training and validation run

def two_stream_mask(T, block, device, causal_clean=False):
    """The training mask of block diffusion over [x_t ; x_0] (BD3-LM): 2T positions, both
    halves at positions 0..T-1. A noisy position sees the noisy positions of its own block
    and the clean positions of earlier blocks; a clean position sees the clean positions of
    its own and earlier blocks (causal_clean: of itself and earlier positions, as in an AR
    model), never the noisy half."""
    b = torch.arange(T, device=device) // block
    same, earlier = b[:, None] == b[None, :], b[None, :] < b[:, None]
    clean = torch.ones_like(same).tril() if causal_clean else same | earlier
    return torch.cat([torch.cat([same, earlier], 1), torch.cat([torch.zeros_like(same), clean], 1)], 0)


def denoise(model, noisy, clean):
    """Logits (B, T, V) of a diffusion model for noisy text (B, T) whose clean text (B, T) is
    known, as in training. A full-sequence model sees the noisy text alone. A block model runs
    [noisy ; clean] side by side (two_stream_mask), each noisy block seeing the clean blocks
    before it, and returns the logits of both halves, (B, 2T, V), the clean half last.
    model: the GPT, or the DDP or compiled module around it."""
    gpt = getattr(model, 'module', model) # DDP keeps the GPT in .module; a compiled module passes attributes on
    if gpt.denoising_block is None:
        return model(noisy)[0]
    T = noisy.size(1)
    mask = two_stream_mask(T, gpt.denoising_block, noisy.device, gpt.config.causal_clean)
    return model(torch.cat([noisy, clean], 1), attn_mask=mask, pos=torch.arange(T, device=noisy.device).repeat(2))[0]


@torch.no_grad()
def ar_val_loss(model, batches, ctx=nullcontext()):
    """Mean next_token_loss of a causal_clean model in AR mode (token-causal attention over
    clean text) on batches of (x, y): the val loss of an AR model, in nats per token."""
    config, losses = getattr(model, 'module', model).config, []
    for x, y in batches:
        with ctx:
            logits, _ = model(x, attn_mask=causal_mask(x.size(1), 0, x.device))
        losses.append(next_token_loss(logits, y, config.mask_token_id, config.wrong_token_id))
    return torch.stack(losses).mean().item()


VAL_FRACTIONS = (0.15, 0.5, 0.9) # the masked shares of the masked val CE that train.py logs and bench.py tables
MASKED_METRICS = tuple(f'masked{round(fraction * 100)}' for fraction in VAL_FRACTIONS) # masked val CE at each fraction
VAL_METRICS = ('bound', 'bound_se', *MASKED_METRICS) # the names val_metrics gives them, which logs and tables read


def val_metrics(model, batches, seed, ctx=nullcontext()):
    """The validation metrics of a diffusion model on batches of clean text (B, T), the same in
    train.py and bench.py: 'masked15', 'masked50', 'masked90' (masked_val_loss at each of
    VAL_FRACTIONS, noise seeded seed + 2), 'bound' and its standard error 'bound_se' (elbo_bound,
    noise seeded seed + 1), all in nats per token."""
    def noise(offset):
        return torch.Generator(device=batches[0].device).manual_seed(seed + offset)
    out = {name: masked_val_loss(model, batches, fraction, noise(2), ctx)
           for name, fraction in zip(MASKED_METRICS, VAL_FRACTIONS)}
    out['bound'], out['bound_se'] = elbo_bound(model, batches, noise(1), ctx)
    return {name: out[name] for name in VAL_METRICS}


@torch.no_grad()
def masked_val_loss(model, batches, fraction, generator, ctx=nullcontext()):
    """Mean masked_cross_entropy over batches of clean text (B, T) with exactly fraction
    of every row masked: the fixed-seed masked val loss of train.py and bench.py. A block
    model sees each block's masks with the clean blocks before it as context."""
    config, losses = getattr(model, 'module', model).config, []
    for x in batches:
        inputs = corrupt_fixed_fraction(x, generator, config.mask_token_id, fraction)
        with ctx:
            logits = denoise(model, inputs, x)[:, :x.size(1)]
        losses.append(masked_cross_entropy(logits, inputs, x, config.mask_token_id, config.wrong_token_id))
    return torch.stack(losses).mean().item()


@torch.no_grad()
def elbo_bound(model, batches, generator, ctx=nullcontext()):
    """(the ELBO of masked diffusion on batches of clean text (B, T), its standard error), in
    nats per token: an upper bound on the NLL for any denoiser, comparable to an AR val loss.
    One noise level per block (per row for a full-sequence model), over the full range of t
    whatever range the model was trained on. The error is that of a mean over batches, whose
    noise levels are drawn independently (NaN for one batch): more batches make it smaller."""
    gpt, bounds = getattr(model, 'module', model), []
    mask_id, wrong_id = gpt.config.mask_token_id, gpt.config.wrong_token_id
    for x in batches:
        span = gpt.denoising_block or x.size(1)
        inputs, targets, t = corrupt_mask_only(block_rows(x, span), generator, mask_id)
        with ctx:
            logits = denoise(model, inputs.view_as(x), x)[:, :x.size(1)]
        bounds.append(elbo_loss(block_rows(logits, span), inputs, targets, t, mask_id, wrong_id)[0])
    bounds = torch.stack(bounds).float()
    return bounds.mean().item(), (bounds.std() / len(bounds) ** 0.5).item() if len(bounds) > 1 else math.nan


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
    gpt = getattr(model, 'module', model)
    mask_id, wrong_id, s = gpt.config.mask_token_id, gpt.config.wrong_token_id, settings
    span = gpt.denoising_block or x.size(1) # tokens that share one noise level: a block, or a whole row
    rows = block_rows(x, span)
    if s['loss_type'] == 'elbo':
        inputs, targets, noise_level = corrupt_mask_only(rows, generator, mask_id, max(s['mask_rate_min'], 1e-3), s['mask_rate_max'])
    else:
        penalty, remask_ratio = curriculum(it, s['penalty_mask_correct'], s['masking_warmup_iters'],
                                           s['proofreading_warmup_iters'], s['wrong_share'])
        inputs, targets, noise_level = corrupt(rows, generator, mask_id, wrong_id, remask_ratio, s['mask_rate_min'], s['mask_rate_max'])
    with ctx:
        logits = denoise(model, inputs.view_as(x), x)
    logits, clean_logits = block_rows(logits[:, :x.size(1)], span), logits[:, x.size(1):]
    if s['loss_type'] == 'elbo':
        loss, stats = elbo_loss(logits, inputs, targets, noise_level, mask_id, wrong_id, s['loss_weighting'])
    else:
        loss, stats = task_weighted_loss(logits, inputs, targets, noise_level, mask_id, wrong_id, s['weight_unmask_task'],
                                         s['weight_remask_task'], penalty, s['reward_correct_unmask'])
    stats['p_mask'], stats['logit_gap'] = mask_statistics(logits, inputs, mask_id, gpt.mask_logit_bias)
    if s['ar_loss_weight'] > 0:
        loss_ar = next_token_loss(clean_logits, y, mask_id, wrong_id)
        loss = loss + s['ar_loss_weight'] * loss_ar
        stats['loss_ar'] = loss_ar.detach()
    return loss, stats


def model_loss(model, x, y, generator, it, settings, ctx=nullcontext()):
    """Loss of one micro-batch and detached statistics: nanoGPT's next-token loss for an AR
    model, else training_loss. In training, an AR model with settings['input_mask_weight'] > 0
    adds that weight times the next-token loss of the same text with its input tokens replaced
    by [MASK] at a rate drawn per row from U(0, settings['input_mask_rate']) (input masking, a
    regulariser for many epochs over scarce data); its val loss stays the plain one."""
    gpt = getattr(model, 'module', model)
    if gpt.config.model_type == 'diffusion':
        return training_loss(model, x, y, generator, it, settings, ctx)
    with ctx:
        _, loss = model(x, y)
    if not (model.training and settings.get('input_mask_weight', 0) > 0):
        return loss, {}
    rate = torch.rand(x.size(0), 1, generator=generator, device=x.device) * settings['input_mask_rate']
    masked = torch.rand(x.shape, generator=generator, device=x.device) < rate
    with ctx:
        _, loss_masked = model(torch.where(masked, gpt.config.mask_token_id, x), y)
    return loss + settings['input_mask_weight'] * loss_masked, {'loss_masked_inputs': loss_masked.detach()}


def train_step(model, optimizer, scaler, next_batch, generator, it, settings, ctx=nullcontext(), world_size=1):
    """One optimizer step of train.py, which bench.py times: settings['gradient_accumulation_steps']
    micro-batches (x, y) from next_batch(), each loss scaled and backpropagated (DDP syncs the
    gradients at the last one only, as nanoGPT does), clipping at settings['grad_clip'] (0: none),
    AdamW through the GradScaler, then the [MASK] bias controller, which sees the mean p([MASK])
    of every rank so that all apply the same bias. model: the GPT, or the DDP or compiled module
    around it. Returns the last micro-batch's loss (scaled back), the statistics averaged over
    the micro-batches, and a flag that is True if any loss was NaN/inf (read without a sync)."""
    gpt, steps, s = getattr(model, 'module', model), settings['gradient_accumulation_steps'], settings
    stat_sums, nonfinite = {}, torch.zeros((), dtype=torch.bool, device=gpt.mask_logit_bias.device)
    for micro_step in range(steps):
        if world_size > 1:
            model.require_backward_grad_sync = (micro_step == steps - 1)
        x, y = next_batch()
        loss, stats = model_loss(model, x, y, generator, it, s, ctx)
        nonfinite |= ~torch.isfinite(loss.detach())
        for k, v in stats.items():
            stat_sums[k] = stat_sums.get(k, 0) + v / steps
        scaler.scale(loss / steps).backward() # scaled to account for gradient accumulation
    if s['grad_clip'] != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), s['grad_clip'])
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True) # flush the gradients as soon as we can
    if 'p_mask' in stat_sums and s['mask_bias_gain'] > 0:
        p_mask = stat_sums['p_mask'].detach().clone()
        if world_size > 1:
            torch.distributed.all_reduce(p_mask)
            p_mask /= world_size
        gpt.mask_logit_bias.copy_(update_mask_bias(gpt.mask_logit_bias, p_mask, s['target_mask_prob'],
                                                   s['mask_bias_gain'], s['mask_bias_limit']))
    return loss.detach(), stat_sums, nonfinite
