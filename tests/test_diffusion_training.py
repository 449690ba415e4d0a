"""The training side of diffusion.py: corruption (seed recipe, mask-only, fixed fraction),
the dual curriculum, the task-weighted and ELBO losses, the [MASK] statistics, the
logit-bias controller and train.py's loss of one micro-batch (training_loss)."""
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from configurator import script_defaults
from diffusion import (block_rows, corrupt, denoise, corrupt_fixed_fraction, corrupt_mask_only, elbo_loss, curriculum,
                       mask_statistics, masked_cross_entropy, next_token_loss, task_weighted_loss,
                       model_loss, training_loss, update_mask_bias)
from model import GPT, GPTConfig

V = 11 # base vocabulary
MASK, WRONG = V, V + 1


def clean(B, T, seed=0):
    return torch.randint(V, (B, T), generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------
# the seed corruption

@pytest.mark.parametrize('rate_max, remask_ratio', [(1.0, 1.0), (0.8, 0.5), (0.5, 1.0)])
def test_corrupt_statistics(rate_max, remask_ratio):
    B, T = 4000, 64
    x = clean(B, T)
    inputs, targets, total = corrupt(x, gen(1), MASK, WRONG, remask_ratio, 0.0, rate_max)
    assert inputs.shape == targets.shape == (B, T) and total.shape == (B,)
    assert inputs.dtype == targets.dtype == x.dtype
    masked = inputs == MASK
    wrong = targets == WRONG
    untouched = ~masked & ~wrong
    # the three kinds of position are disjoint and the targets say which is which
    assert not (masked & wrong).any()
    assert torch.equal(targets[masked], x[masked]) # un-masking: the original token
    assert torch.equal(inputs[untouched], x[untouched]) and torch.equal(targets[untouched], x[untouched])
    # randomised positions hold a word that is never the original
    assert (inputs[wrong] != x[wrong]).all()
    assert ((inputs[wrong] >= 0) & (inputs[wrong] < V)).all()
    # the random replacement is spread over the other V-1 words
    shift = (inputs[wrong] - x[wrong]) % V
    counts = torch.bincount(shift, minlength=V)
    assert counts[0] == 0
    assert counts[1:].min() > 0.8 * counts[1:].float().mean()
    # the number of positions of each kind is T * rate rounded stochastically, for rates summing to total:
    # within a token of T * total per count, and T * total on average
    n_mask, n_wrong = masked.sum(1), wrong.sum(1)
    corrupted = n_mask + n_wrong
    assert ((corrupted - T * total).abs() < 2).all()
    assert (corrupted - T * total).mean().item() == pytest.approx(0, abs=0.05)
    # total = U(0, rate_max): range and mean
    assert (total >= 0).all() and (total <= rate_max).all()
    assert total.mean().item() == pytest.approx(rate_max / 2, abs=0.02)
    assert (corrupted.float() / T).mean().item() == pytest.approx(rate_max / 2, abs=0.03)
    assert total.max().item() > 0.95 * rate_max and total.min().item() < 0.05 * rate_max
    # rate_random = U(0,1) * total * remask_ratio: on average half of remask_ratio of the corruption
    share_random = n_wrong.sum().item() / corrupted.sum().item()
    assert share_random == pytest.approx(remask_ratio / 2, abs=0.03)
    # rows are corrupted independently: their rates vary, and positions are spread over the row
    assert n_mask.float().std() > 5
    per_position = masked.float().mean(0)
    assert per_position.min() > 0.7 * per_position.mean()


def test_corrupt_without_remasking_masks_T_total_rounded_stochastically():
    B, T = 2000, 50
    x = clean(B, T)
    inputs, targets, total = corrupt(x, gen(2), MASK, WRONG, 0.0, 0.0, 0.9)
    assert not (targets == WRONG).any() # remask_ratio 0: no [WRONG]
    assert torch.equal(targets, x)
    n_mask = (inputs == MASK).sum(1)
    floor = (T * total).floor().long()
    assert ((n_mask == floor) | (n_mask == floor + 1)).all() # T * rate rounded down or up
    assert (n_mask - T * total).mean().item() == pytest.approx(0, abs=0.03) # up with probability frac(T * rate)
    assert torch.equal(inputs[inputs != MASK], x[inputs != MASK])


def test_corrupt_counts_are_unbiased_in_short_blocks():
    """Blocks of 4 at a random-token share of 0.2: random tokens at the expected rate (floored
    counts drew none) and fully masked blocks, which is how every block starts when sampling."""
    B, T = 20000, 4
    inputs, targets, total = corrupt(clean(B, T), gen(3), MASK, WRONG, 0.2)
    wrong_share = (targets == WRONG).float().mean().item()
    assert wrong_share == pytest.approx(0.2 / 2 * total.mean().item(), rel=0.1) # E[U(0,1)] * 0.2 of the corruption
    mask_share = (inputs == MASK).float().mean().item()
    assert mask_share == pytest.approx((1 - 0.2 / 2) * total.mean().item(), rel=0.05)
    fully_masked = ((inputs == MASK).sum(1) == T).float().mean().item()
    assert fully_masked > 0.05


def test_corrupt_is_deterministic_given_the_generator():
    x = clean(8, 32)
    a = corrupt(x, gen(5), MASK, WRONG, 1.0)
    b = corrupt(x, gen(5), MASK, WRONG, 1.0)
    c = corrupt(x, gen(6), MASK, WRONG, 1.0)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_corrupt_does_not_touch_its_input():
    x = clean(8, 32)
    x0 = x.clone()
    corrupt(x, gen(), MASK, WRONG, 1.0)
    assert torch.equal(x, x0)


# ----------------------------------------------------------------------------
# mask-only corruption (ELBO) and the fixed-fraction masking

def test_corrupt_mask_only():
    B, T = 1000, 400
    x = clean(B, T)
    inputs, targets, t = corrupt_mask_only(x, gen(3), MASK)
    assert torch.equal(targets, x)
    assert torch.equal(inputs[inputs != MASK], x[inputs != MASK])
    assert ((t >= 1e-3) & (t <= 1)).all()
    # stratified: exactly one t in each of the B equal slices of [t_min, 1]
    u = (t - 1e-3) / (1 - 1e-3)
    assert torch.equal((u * B).floor().long().clamp(max=B - 1).sort().values, torch.arange(B))
    # the mask fraction tracks t (the linear schedule of MDLM)
    frac = (inputs == MASK).float().mean(1)
    assert (frac - t).abs().mean() < 0.03 # binomial noise: std <= 0.025 at T=400
    assert abs((frac - t).mean().item()) < 0.005
    assert (frac - t).abs().max() < 0.12
    # the rows are shuffled, not sorted by t
    assert not torch.equal(t, t.sort().values)


@pytest.mark.parametrize('fraction', [0.15, 0.5, 0.9, 0.0, 1.0])
def test_corrupt_fixed_fraction(fraction):
    B, T = 64, 37
    x = clean(B, T)
    inputs = corrupt_fixed_fraction(x, gen(4), MASK, fraction)
    masked = inputs == MASK
    assert torch.equal(masked.sum(1), torch.full((B,), int(T * fraction)))
    assert torch.equal(inputs[~masked], x[~masked])
    if 0 < fraction < 1:
        assert len({tuple(row.tolist()) for row in masked}) > B // 2 # different positions per row
    # the same generator seed gives the same masks (the deterministic masked val loss)
    assert torch.equal(inputs, corrupt_fixed_fraction(x, gen(4), MASK, fraction))


# ----------------------------------------------------------------------------
# the dual curriculum

def test_corruption_scheduler():
    sched = lambda it: curriculum(it, 0.5, masking_warmup_iters=100, proofreading_warmup_iters=400)
    assert sched(0) == (0.0, 0.0)
    assert sched(50) == pytest.approx((0.25, 0.125))
    assert sched(100) == pytest.approx((0.5, 0.25)) # end of the masking ramp
    assert sched(200) == pytest.approx((0.5, 0.5))
    assert sched(400) == pytest.approx((0.5, 1.0)) # end of the proofreading ramp
    assert sched(10_000) == pytest.approx((0.5, 1.0))
    # monotone on the way
    values = [sched(it) for it in range(0, 500, 7)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(values, values[1:]))
    # no warmup: everything from the start
    assert curriculum(0, 0.7, 0, 0) == pytest.approx((0.7, 1.0))


# ----------------------------------------------------------------------------
# the task-weighted loss

P = dict(weight_unmask_task=2.0, weight_remask_task=3.0, penalty_mask_correct=0.5, reward_correct_unmask=0.1)


def hand_batch():
    """Two rows of four positions: unmask, remask, keep, unmask / keep, keep, remask, unmask."""
    x = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    inputs = torch.tensor([[MASK, 9, 3, MASK], [5, 6, 0, MASK]])
    targets = torch.tensor([[1, WRONG, 3, 4], [5, 6, WRONG, 8]])
    rate = torch.tensor([0.75, 0.5])
    kind = [['unmask', 'remask', 'keep', 'unmask'], ['keep', 'keep', 'remask', 'unmask']]
    return x, inputs, targets, rate, kind


def word_ce(logits, targets):
    """Cross-entropy over every column except [MASK] ([WRONG] is a valid target here)."""
    lg = logits.clone().double()
    lg[..., MASK] = float('-inf')
    return -F.log_softmax(lg, -1).gather(-1, targets[..., None]).squeeze(-1)


def expected_weights(logits, targets, rate, kind, p=P):
    ce = word_ce(logits, targets)
    w = torch.zeros_like(ce)
    for b in range(len(kind)):
        for i, k in enumerate(kind[b]):
            if k == 'unmask':
                p_right = math.exp(-ce[b, i].item())
                # the capped reward: a soft discount from the (detached) probability of the right
                # token, floored at reward_correct_unmask of the task weight
                w[b, i] = p['weight_unmask_task'] * (p['reward_correct_unmask'] + (1 - p['reward_correct_unmask']) * (1 - p_right))
            elif k == 'remask':
                w[b, i] = p['weight_remask_task']
            else:
                w[b, i] = p['penalty_mask_correct'] * (1 - rate[b].item()) # the destructive-edit penalty
    return w, ce


def effective_weights(logits, inputs, targets, rate, p=P):
    """The weight each position carries in the loss, read from the gradient: with detached
    weights, d loss / d logit[target] = w * (p_target - 1) / N."""
    logits = logits.clone().requires_grad_(True)
    loss, _ = task_weighted_loss(logits, inputs, targets, rate, MASK, WRONG, **p)
    loss.backward()
    lg = logits.detach().double().clone()
    lg[..., MASK] = float('-inf')
    p_target = F.softmax(lg, -1).gather(-1, targets[..., None]).squeeze(-1)
    g = logits.grad.double().gather(-1, targets[..., None]).squeeze(-1)
    return g * targets.numel() / (p_target - 1)


def test_task_weighted_loss_by_hand():
    _, inputs, targets, rate, kind = hand_batch()
    logits = torch.randn(2, 4, V + 2, generator=gen(0)) * 2
    loss, stats = task_weighted_loss(logits, inputs, targets, rate, MASK, WRONG, **P)
    w, ce = expected_weights(logits, targets, rate, kind)
    assert loss.item() == pytest.approx((w * ce).mean().item(), rel=1e-5)
    # the weights seen through the gradient are the hand-computed ones
    torch.testing.assert_close(effective_weights(logits, inputs, targets, rate), w, rtol=1e-4, atol=1e-6)
    # keep weight = penalty * (1 - rate of the row)
    assert w[0, 2].item() == pytest.approx(0.5 * 0.25) and w[1, 0].item() == pytest.approx(0.5 * 0.5)
    # per-task diagnostics: mean CE of each kind of position
    sel = lambda name: torch.tensor([[k == name for k in row] for row in kind])
    for name in ('unmask', 'remask', 'keep'):
        assert stats[f'loss_{name}'].item() == pytest.approx(ce[sel(name)].mean().item(), rel=1e-5)
        assert not stats[f'loss_{name}'].requires_grad


def test_no_zero_weight_when_certain_and_right():
    """The capped reward: an un-masking position the model already gets right still
    carries at least reward_correct_unmask * weight_unmask_task."""
    _, inputs, targets, rate, kind = hand_batch()
    logits = torch.zeros(2, 4, V + 2)
    logits.scatter_(-1, targets[..., None], 8.0) # p(target) ~ 0.997: certain and right
    w = effective_weights(logits, inputs, targets, rate)
    unmask = inputs == MASK
    floor = P['reward_correct_unmask'] * P['weight_unmask_task']
    assert (w[unmask] >= floor * (1 - 1e-3)).all()
    assert (w[unmask] <= floor * 1.05).all() # and close to the floor: the soft discount works
    # certain and wrong: the full task weight
    logits = torch.zeros(2, 4, V + 2)
    logits[..., 0] = 8.0
    logits[0, 0, 0] = 0.0 # (row 0 position 0 has target 1: keep the model wrong there too)
    logits[0, 0, 2] = 8.0
    w = effective_weights(logits, inputs, targets, rate)
    assert (w[unmask] >= 0.99 * P['weight_unmask_task']).all()
    # the keep weight is zero only when the penalty itself is (start of the curriculum)
    p0 = {**P, 'penalty_mask_correct': 0.0}
    loss, _ = task_weighted_loss(torch.randn(2, 4, V + 2), inputs, targets, rate, MASK, WRONG, **p0)
    assert loss.item() > 0


def test_loss_does_not_depend_on_argmax():
    """Same probability of the target, different argmax: same loss."""
    _, inputs, targets, rate, _ = hand_batch()
    B, T = targets.shape
    p_target = torch.tensor([[0.3, 0.4, 0.35, 0.2], [0.45, 0.3, 0.25, 0.4]])
    probs_a = torch.zeros(B, T, V + 2) # the rest on one other word: that word is the argmax
    probs_b = torch.zeros(B, T, V + 2) # the rest spread evenly: the target is the argmax
    for b in range(B):
        for i in range(T):
            tgt = targets[b, i].item()
            other = [c for c in range(V + 2) if c not in (tgt, MASK)]
            probs_a[b, i, other] = 1e-4
            probs_a[b, i, other[0]] = 1 - p_target[b, i] - 1e-4 * (len(other) - 1)
            probs_b[b, i, other] = (1 - p_target[b, i]) / len(other)
            probs_a[b, i, tgt] = probs_b[b, i, tgt] = p_target[b, i]
    la, lb = probs_a.log(), probs_b.log()
    la[..., MASK] = 5.0 # whatever the [MASK] logit is
    lb[..., MASK] = -3.0
    words = lambda lg: torch.cat([lg[..., :MASK], lg[..., MASK + 1:]], -1)
    assert (words(la).argmax(-1) != words(lb).argmax(-1)).all()
    loss_a, _ = task_weighted_loss(la, inputs, targets, rate, MASK, WRONG, **P)
    loss_b, _ = task_weighted_loss(lb, inputs, targets, rate, MASK, WRONG, **P)
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-5)


def test_mask_logit_gets_no_gradient():
    _, inputs, targets, rate, _ = hand_batch()
    logits = torch.randn(2, 4, V + 2, generator=gen(1)).requires_grad_(True)
    loss, _ = task_weighted_loss(logits, inputs, targets, rate, MASK, WRONG, **P)
    loss.backward()
    assert torch.equal(logits.grad[..., MASK], torch.zeros(2, 4))
    assert (logits.grad[..., :MASK].abs().sum(-1) > 0).all() # the words do get one
    assert (logits.grad[..., WRONG].abs() > 0).all() # and so does [WRONG]: it is a target
    # hence the [MASK] logit, or the bias on it, cannot change the loss
    shifted = logits.detach().clone()
    shifted[..., MASK] += 50
    loss2, _ = task_weighted_loss(shifted, inputs, targets, rate, MASK, WRONG, **P)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


def test_task_weighted_loss_without_some_tasks():
    """No [WRONG] in the batch (start of the curriculum): finite loss and stats."""
    x = clean(4, 16)
    inputs, targets, total = corrupt(x, gen(), MASK, WRONG, 0.0)
    loss, stats = task_weighted_loss(torch.randn(4, 16, V + 2), inputs, targets, total, MASK, WRONG, **P)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert stats['loss_remask'].item() == 0.0


# ----------------------------------------------------------------------------
# the ELBO loss and the masked validation CE

def test_elbo_loss_by_hand():
    x = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    inputs = torch.tensor([[MASK, 2, MASK, 4, 5], [MASK, MASK, MASK, MASK, 10]])
    t = torch.tensor([0.4, 0.8]) # the ELBO weights each row by 1/t
    weight = 1 / t
    logits = torch.randn(2, 5, V + 2, generator=gen(2)) * 3
    loss, stats = elbo_loss(logits, inputs, x, t, MASK, WRONG)
    # by hand: softmax over the words only ([MASK] and [WRONG] excluded), masked positions,
    # summed over the row, divided by T, times the row's weight, averaged over rows
    total, n, ce_sum = 0.0, 0, 0.0
    for b in range(2):
        row = 0.0
        for i in range(5):
            if inputs[b, i] == MASK:
                words = logits[b, i, :V].double()
                ce = (torch.logsumexp(words, 0) - words[x[b, i]]).item()
                row += ce
                ce_sum += ce
                n += 1
        total += weight[b].item() * row / 5
    assert loss.item() == pytest.approx(total / 2, rel=1e-5)
    assert stats['loss_unmask'].item() == pytest.approx(ce_sum / n, rel=1e-5)
    # the [MASK] and [WRONG] logits play no part
    other = logits.clone()
    other[..., V:] = torch.tensor([40.0, -7.0])
    assert elbo_loss(other, inputs, x, t, MASK, WRONG)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    # masked_cross_entropy is the unweighted mean over the masked positions
    assert masked_cross_entropy(logits, inputs, x, MASK, WRONG).item() == pytest.approx(ce_sum / n, rel=1e-5)


def test_elbo_of_a_uniform_model_is_log_V():
    """A model that knows nothing (uniform over the words) has, in expectation over t, an
    ELBO of log V nats per token: the weight 1/t cancels the masked fraction t."""
    B, T = 2000, 64
    x = clean(B, T)
    inputs, targets, t = corrupt_mask_only(x, gen(7), MASK)
    loss, _ = elbo_loss(torch.zeros(B, T, V + 2), inputs, targets, t, MASK, WRONG)
    assert loss.item() == pytest.approx(math.log(V), rel=0.05)


# ----------------------------------------------------------------------------
# [MASK] statistics and the bias controller

def test_mask_statistics_by_hand():
    logits = torch.zeros(1, 3, V + 2)
    logits[0, 0, :V] = torch.arange(V, dtype=torch.float) * 0.1 # best word: 1.0
    logits[0, 0, MASK] = 1.0 # raw: the bias of 2 makes it 3.0 for p([MASK])
    logits[0, 1, MASK] = 100.0 # not a masked position: ignored
    logits[0, 2, 4] = 2.0
    logits[0, 2, WRONG] = 9.0 # [WRONG] is not a word: not in the gap
    logits[0, 2, MASK] = 0.5
    inputs = torch.tensor([[MASK, 3, MASK]])
    p_mask, gap = mask_statistics(logits, inputs, MASK, torch.tensor(2.0))
    biased = logits.clone()
    biased[..., MASK] += 2.0
    p0 = biased[0, 0].softmax(-1)[MASK].item()
    p2 = biased[0, 2].softmax(-1)[MASK].item()
    assert p_mask.item() == pytest.approx((p0 + p2) / 2, rel=1e-5)
    assert gap.item() == pytest.approx(((1.0 - 1.0) + (0.5 - 2.0)) / 2, rel=1e-5)
    # no masked position at all: finite zeros, not NaN
    p_mask, gap = mask_statistics(logits, torch.tensor([[0, 1, 2]]), MASK, torch.tensor(0.0))
    assert p_mask.item() == 0.0 and gap.item() == 0.0


def toy_plant(d, bias):
    """mean p([MASK]) when every masked position's p is sigmoid(d_i + bias)."""
    return torch.sigmoid(d + bias).mean()


@pytest.mark.parametrize('target, gain', [(0.5, 0.1), (0.2, 0.5), (0.8, 1.0)])
def test_controller_converges_to_the_target(target, gain):
    d = torch.randn(4096, generator=gen(0)) * 1.5 - 4.0 # raw log-odds of [MASK], far below the target
    bias, limit = torch.tensor(0.0), 20.0
    history = []
    for _ in range(300):
        bias = update_mask_bias(bias, toy_plant(d, bias), target, gain, limit)
        history.append(toy_plant(d, bias).item())
    assert history[-1] == pytest.approx(target, abs=0.005)
    assert abs(bias.item()) <= limit
    # gain <= 1 approaches without overshooting
    assert all(p <= target + 1e-4 for p in history)


def test_controller_is_clamped_when_the_target_is_out_of_reach():
    d = torch.full((100,), -60.0) # would need a bias of 60
    bias = torch.tensor(0.0)
    for _ in range(200):
        bias = update_mask_bias(bias, toy_plant(d, bias), 0.5, 0.5, 20.0)
        assert -20.0 <= bias.item() <= 20.0
    assert bias.item() == 20.0
    # a broken statistic (no masked position: p = 0) moves the bias but never past the limit
    bias = update_mask_bias(torch.tensor(19.0), torch.tensor(0.0), 0.5, 1.0, 20.0)
    assert bias.item() == 20.0
    bias = update_mask_bias(torch.tensor(-19.0), torch.tensor(1.0), 0.5, 1.0, 20.0)
    assert bias.item() == -20.0


def test_controller_tracks_a_slowly_drifting_plant():
    """The seed's runaway: training pushes the raw [MASK] logit down step after step. While
    the drift is bounded, the bias follows it (bounded too) and p stays near the target."""
    d0 = torch.randn(2048, generator=gen(1)) - 1.0
    bias, target, gain, limit = torch.tensor(0.0), 0.5, 0.1, 20.0
    drift_per_step, steps = 0.01, 800 # the raw logits sink by 8 in all
    errors, biases = [], []
    for k in range(steps + 300):
        d = d0 - drift_per_step * min(k, steps)
        bias = update_mask_bias(bias, toy_plant(d, bias), target, gain, limit)
        errors.append(abs(toy_plant(d, bias).item() - target))
        biases.append(bias.item())
    # during the drift the lag is about drift/gain in log-odds: p within a few percent
    assert max(errors[100:steps]) < 0.05
    # after the drift stops, the target is reached again
    assert errors[-1] < 0.005
    # the bias moved by the drift, and no further
    assert max(abs(b) for b in biases) < 8 + 3
    assert biases[-1] == pytest.approx(biases[99] + drift_per_step * (steps - 100), abs=1.0)


def test_controller_keeps_tensor_type():
    out = update_mask_bias(torch.tensor(1.0), torch.tensor(0.5), 0.5, 0.1, 20.0)
    assert isinstance(out, torch.Tensor) and out.item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------
# train.py's loss of one micro-batch

SETTINGS = script_defaults(str(Path(__file__).resolve().parent.parent / 'train.py')) # train.py's defaults


def diffusion_model(block=0, causal_clean=False, bias=1.0):
    torch.manual_seed(0)
    model = GPT(GPTConfig(model_type='diffusion', n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=V + 2,
                          mask_token_id=MASK, wrong_token_id=WRONG, pos_encoding='rope', diffusion_block=block,
                          causal_clean=causal_clean))
    model.mask_logit_bias.fill_(bias)
    return model


class Wrapped(torch.nn.Module):
    """A stand-in for DDP: the GPT sits in .module."""
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@pytest.mark.parametrize('block', [0, 4])
def test_training_loss_elbo_is_the_elbo_of_each_noise_span(block):
    model, x = diffusion_model(block), clean(3, 16)
    settings = dict(SETTINGS, loss_type='elbo', loss_weighting='elbo', mask_rate_min=0.2, mask_rate_max=0.8)
    loss, stats = training_loss(Wrapped(model), x, x, gen(5), 0, settings)
    # by hand: one noise level per block (or row), in the training range, the bias only in p([MASK])
    span = block or 16
    inputs, targets, t = corrupt_mask_only(block_rows(x, span), gen(5), MASK, 0.2, 0.8)
    logits = block_rows(denoise(model, inputs.view_as(x), x)[:, :16], span)
    expected, _ = elbo_loss(logits, inputs, targets, t, MASK, WRONG)
    torch.testing.assert_close(loss, expected)
    p_mask, gap = mask_statistics(logits, inputs, MASK, model.mask_logit_bias)
    torch.testing.assert_close(stats['p_mask'], p_mask)
    torch.testing.assert_close(stats['logit_gap'], gap)
    assert set(stats) == {'loss_unmask', 'p_mask', 'logit_gap'}


def test_training_loss_seed_follows_the_curriculum():
    model, x = diffusion_model(), clean(3, 16)
    it = 250 # a quarter of the default ramps
    loss, stats = training_loss(model, x, x, gen(2), it, SETTINGS)
    penalty, remask_ratio = curriculum(it, 0.5, 1000, 1000)
    inputs, targets, rate = corrupt(x, gen(2), MASK, WRONG, remask_ratio)
    expected, _ = task_weighted_loss(model(inputs)[0], inputs, targets, rate, MASK, WRONG, 1.0, 1.0, penalty, 0.1)
    torch.testing.assert_close(loss, expected)
    assert {'loss_unmask', 'loss_remask', 'loss_keep', 'p_mask', 'logit_gap'} == set(stats)


def test_training_loss_adds_the_weighted_next_token_loss_of_the_clean_stream():
    model, x = diffusion_model(4, causal_clean=True), clean(3, 16)
    y = clean(3, 16, seed=1)
    settings = dict(SETTINGS, loss_type='elbo')
    without, _ = training_loss(model, x, y, gen(3), 0, dict(settings, ar_loss_weight=0.0))
    with_ar, stats = training_loss(model, x, y, gen(3), 0, dict(settings, ar_loss_weight=0.5))
    clean_logits = model(x, attn_mask=torch.ones(16, 16, dtype=torch.bool).tril())[0] # the clean stream alone, token-causal
    torch.testing.assert_close(stats['loss_ar'], next_token_loss(clean_logits, y, MASK, WRONG))
    torch.testing.assert_close(with_ar, without + 0.5 * stats['loss_ar'])
    assert not stats['loss_ar'].requires_grad and with_ar.requires_grad


def test_ar_input_masking_adds_a_weighted_loss_on_masked_inputs_in_training_only():
    """An AR model with [MASK] in its vocabulary: in training, model_loss adds weight x the
    next-token loss of the text with inputs replaced by [MASK] at a per-row rate in
    U(0, input_mask_rate); in eval (the val loss) it is the plain next-token loss."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=V + 2, mask_token_id=MASK,
                          wrong_token_id=WRONG))
    assert model.config.words == V
    x, y = clean(256, 64), clean(256, 64, seed=1)
    settings = dict(SETTINGS, input_mask_weight=0.4, input_mask_rate=0.5)
    plain = model(x, y)[1]
    model.eval()
    loss, stats = model_loss(model, x, y, gen(3), 0, settings)
    assert stats == {} and torch.equal(loss, plain)
    model.train()
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    loss, stats = model_loss(model, x, y, gen(3), 0, settings)
    masked_inputs = seen[-1]
    torch.testing.assert_close(stats['loss_masked_inputs'], model(masked_inputs, y)[1])
    torch.testing.assert_close(loss, plain + 0.4 * stats['loss_masked_inputs'])
    # only inputs change, to [MASK]; each row at its own rate, spread over U(0, 0.5)
    changed = masked_inputs != x
    assert (masked_inputs[changed] == MASK).all()
    rates = changed.float().mean(1)
    assert rates.max() < 0.75 and rates.min() < 0.05 and rates.mean().item() == pytest.approx(0.25, abs=0.04)
    assert model_loss(model, x, y, gen(3), 0, dict(settings, input_mask_weight=0.0))[1] == {}
