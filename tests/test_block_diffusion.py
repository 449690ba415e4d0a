"""Block diffusion (BD3-LM): the attention patterns, the two-stream training pass, the KV
cache of block sampling, text of any length, and one block being today's full-sequence
model exactly. Tiny random models on CPU."""
import re

import pytest
import torch

import diffusion
from model import GPT, GPTConfig, block_causal_mask, two_stream_mask
from test_sampling import count_passes

V = 10 # base vocabulary
MASK, WRONG = V, V + 1
T = 32 # block_size


def tiny(block=0, model_type='diffusion', pos_encoding='rope', seed=0):
    torch.manual_seed(seed)
    specials = dict(mask_token_id=MASK, wrong_token_id=WRONG) if model_type == 'diffusion' else {}
    config = GPTConfig(model_type=model_type, n_layer=2, n_head=2, n_embd=32, block_size=T, vocab_size=V + 2,
                       pos_encoding=pos_encoding, diffusion_block=block, **specials)
    return GPT(config).eval()


def noisy_and_clean(batch=3, length=T, seed=1):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(V, (batch, length), generator=g)
    return torch.where(torch.rand(batch, length, generator=g) < 0.5, MASK, clean), clean


# ----------------------------------------------------------------------------
# attention patterns

def test_block_causal_mask_from_causal_to_full():
    pos = torch.arange(8)
    assert torch.equal(block_causal_mask(pos, pos, 1), torch.ones(8, 8, dtype=torch.bool).tril())
    assert block_causal_mask(pos, pos, 8).all()
    blocks = block_causal_mask(pos, pos, 4)
    assert blocks[:4, :4].all() and not blocks[:4, 4:].any() and blocks[4:].all()


def test_two_stream_mask():
    m = two_stream_mask(8, 4, 'cpu') # rows/columns 0..7 noisy, 8..15 clean
    noisy, clean = slice(0, 8), slice(8, 16)
    assert not m[clean, noisy].any() # the clean half never sees the noisy one
    assert torch.equal(m[clean, clean], block_causal_mask(torch.arange(8), torch.arange(8), 4))
    assert m[0:4, 0:4].all() and not m[0:4, 4:8].any() and not m[0:4, 8:16].any() # block 0: itself only
    assert m[4:8, 4:8].all() and not m[4:8, 0:4].any() # block 1: its own noisy tokens,
    assert m[4:8, 8:12].all() and not m[4:8, 12:16].any() # and the clean block before it, not its own clean text


def test_block_one_is_the_causal_model():
    """diffusion_block=1 sees exactly what an AR model sees: the same weights give the same logits."""
    ar, block1 = tiny(model_type='gpt2'), tiny(block=1)
    block1.load_state_dict(ar.state_dict())
    x, _ = noisy_and_clean()
    logits_ar, _ = ar(x, targets=x) # targets: logits at every position
    logits_block, _ = block1(x)
    torch.testing.assert_close(logits_block, logits_ar, rtol=0, atol=1e-5)


@pytest.mark.parametrize('pos_encoding', ['rope', 'learned'])
def test_one_block_is_the_full_sequence_model(pos_encoding):
    """diffusion_block = block_size is today's model bit for bit, clean text or not."""
    full, one_block = tiny(pos_encoding=pos_encoding), tiny(block=T, pos_encoding=pos_encoding)
    assert one_block.denoising_block is None and full.denoising_block is None
    x, clean = noisy_and_clean()
    reference, _ = full(x)
    assert torch.equal(one_block(x)[0], reference)
    assert torch.equal(one_block(x, clean=clean)[0], reference)


@pytest.mark.parametrize('pos_encoding', ['rope', 'learned'])
def test_two_stream_pass_equals_block_causal_and_cached_passes(pos_encoding):
    """Training's [x_t ; x_0] pass gives block b the logits that sampling computes: on the
    clean blocks before it followed by the noisy block, uncached, or through the KV cache."""
    model = tiny(block=8, pos_encoding=pos_encoding)
    x, clean = noisy_and_clean()
    two_stream, _ = model(x, clean=clean)
    assert two_stream.shape == (3, T, V + 2)
    for b in range(T // 8):
        s, e = 8 * b, 8 * b + 8
        single, _ = model(torch.cat([clean[:, :s], x[:, s:e]], 1))
        cache = [{} for _ in model.transformer.h]
        if s:
            model(clean[:, :s], kv_cache=cache)
        cached, _ = model(x[:, s:e], kv_cache=cache, pos_offset=s, store=0)
        assert cache[0].get('k') is None or cache[0]['k'].size(2) == s # reading did not extend the cache
        torch.testing.assert_close(two_stream[:, s:e], single[:, s:], rtol=0, atol=1e-5)
        torch.testing.assert_close(cached, single[:, s:], rtol=0, atol=1e-5)


def test_corruption_draws_one_noise_level_per_block():
    x = torch.randint(V, (4, T))
    rows = diffusion.block_rows(x, 8)
    assert rows.shape == (16, 8) and torch.equal(rows.reshape(4, T), x)
    inputs, targets, t, weight, m = diffusion.corrupt_mask_only(rows, torch.Generator().manual_seed(0), MASK, 'linear')
    assert t.shape == (16,) and torch.equal(targets, rows)
    # stratified over batch x blocks: one draw in each sixteenth of [0, 1]
    assert torch.equal((t.sort().values * 16).long().clamp(max=15), torch.arange(16))
    # and the clipped training range
    _, _, t, _, _ = diffusion.corrupt_mask_only(rows, torch.Generator().manual_seed(0), MASK, 'linear', 0.45, 0.95)
    assert t.min() >= 0.45 and t.max() <= 0.95


# ----------------------------------------------------------------------------
# sampling block by block

def greedy_uncached(model, x, steps):
    """The reference of block sampling: each block written by confidence_sample on the whole
    text so far, no cache (the model's block-causal attention gives the block the same view)."""
    block = model.denoising_block
    for s in range(0, x.size(1), block):
        e = min(s + block, x.size(1))
        x = torch.cat([diffusion.confidence_sample(model, x[:, :e], steps, temperature=0)[0], x[:, e:]], 1)
    return x


def test_cached_block_sampling_equals_the_uncached_computation():
    model = tiny(block=8)
    x = torch.full((3, T), MASK)
    x[:, :5] = torch.arange(5) # a prompt that ends inside the first block
    cached, _ = diffusion.generate(model, x, diffusion.confidence_sample, steps=4, temperature=0)
    assert torch.equal(cached, greedy_uncached(model, x, 4))


SAMPLERS = {
    'confidence': (diffusion.confidence_sample, dict(steps=4)),
    'ancestral': (diffusion.confidence_sample, dict(steps=4, order='random')),
    'left_to_right': (diffusion.confidence_sample, dict(steps=4, order='left_to_right')),
    'remask_wrong': (diffusion.confidence_sample, dict(steps=4, remask='wrong')),
    'low_confidence': (diffusion.confidence_sample, dict(steps=4, remask='low_confidence')),
    'threshold': (diffusion.confidence_sample, dict(steps=8, commit='threshold', threshold=0.5)),
    'entropy': (diffusion.confidence_sample, dict(steps=8, commit='entropy', entropy_budget=2.0)),
    'refine': (diffusion.refine_sample, dict(max_steps=4)),
}


@pytest.mark.parametrize('length', [T, 75]) # one context, and text that slides past block_size
@pytest.mark.parametrize('block', [8, 0])
@pytest.mark.parametrize('sampler', SAMPLERS)
def test_prompt_kept_no_specials_any_length(sampler, block, length):
    sample_fn, kwargs = SAMPLERS[sampler]
    model = count_passes(tiny(block=block))
    x = torch.full((3, length), MASK)
    x[:, :5] = torch.arange(5)
    x[1, 20:26] = 7 # a template: fixed tokens in the middle
    x[2, length - 3:] = 9 # and at the end
    steps = []
    y, passes = diffusion.generate(model, x, sample_fn, generator=torch.Generator().manual_seed(0),
                                   on_step=lambda step, tokens, span, cached: steps.append((step, span, cached)), **kwargs)
    fixed = x != MASK
    assert y.shape == x.shape and torch.equal(y[fixed], x[fixed])
    assert not ((y == MASK) | (y == WRONG)).any()
    assert passes == model.passes # cache passes counted too
    assert [s for s, _, _ in steps] == sorted(s for s, _, _ in steps)
    if block:
        # block by block, the context never longer than block_size, whole blocks in the cache
        assert all(e - s <= 8 and s % 8 == 0 and c % 8 == 0 and c + (e - s) <= T for _, (s, e), c in steps)
    else:
        assert all(e - s <= T and c == 0 for _, (s, e), c in steps)
    assert max(e for _, (_, e), _ in steps) == length


@pytest.mark.parametrize('order', ['confidence', 'random', 'left_to_right']) # the rule picks, whatever the order
def test_threshold_commits_every_sure_proposal_and_at_least_one(order):
    model = tiny(block=8)
    forward = model.forward
    def sure_of_the_first_three(idx, **kwargs):
        logits, loss = forward(idx, **kwargs)
        boost = torch.zeros_like(logits)
        boost[:, :3, 4] = 50.0 # the first three positions of every block: token 4, surely
        return logits + boost, loss
    model.forward = sure_of_the_first_three
    first = []
    x = torch.full((2, 8), MASK)
    diffusion.confidence_sample(model, x, 8, commit='threshold', threshold=0.9, order=order,
                                generator=torch.Generator().manual_seed(0),
                                on_step=lambda step, tokens: first.append(tokens.clone()) if step == 1 else None)
    assert torch.equal(first[0][:, :3], torch.full((2, 3), 4)) and (first[0][:, 3:] == MASK).all()
    # nothing sure at all: one token per pass
    x = torch.full((2, 8), MASK)
    _, passes = diffusion.confidence_sample(tiny(block=8), x, 20, commit='threshold', threshold=0.99, order=order,
                                            generator=torch.Generator().manual_seed(0))
    assert passes == 8


def test_left_to_right_commits_the_leftmost_masks():
    x = torch.full((2, 8), MASK)
    x[1, 1] = 3 # a fixed token is skipped, not counted
    seen = []
    diffusion.confidence_sample(tiny(block=8), x, 4, schedule='linear', order='left_to_right',
                                generator=torch.Generator().manual_seed(0), on_step=lambda step, tokens: seen.append(tokens != MASK))
    assert seen[0][0].tolist() == [True, True] + [False] * 6
    assert seen[0][1].tolist() == [True, True, True] + [False] * 5 # 7 masks: the first 2 written, around the fixed one
    assert all(row.tolist() == sorted(row.tolist(), reverse=True) for written in seen for row in written) # a prefix


def test_entropy_budget_sets_the_commits_per_pass():
    x = torch.full((2, 16), MASK)
    # a budget below any single entropy: one per pass; a huge one: everything in one pass
    assert diffusion.confidence_sample(tiny(), x, 50, commit='entropy', entropy_budget=1e-6,
                                       generator=torch.Generator().manual_seed(0))[1] == 16
    assert diffusion.confidence_sample(tiny(), x, 50, commit='entropy', entropy_budget=1e6,
                                       generator=torch.Generator().manual_seed(0))[1] == 1
    # the cap: all that is left goes at the last allowed pass
    y, passes = diffusion.confidence_sample(tiny(), x, 3, commit='entropy', entropy_budget=1e-6,
                                            generator=torch.Generator().manual_seed(0))
    assert passes == 3 and not (y == MASK).any()


def test_commit_rules_refuse_conflicting_options():
    with pytest.raises(ValueError, match='goes with'):
        diffusion.confidence_sample(tiny(), torch.full((1, 8), MASK), 4, commit='threshold', remask='low_confidence')
    with pytest.raises(ValueError, match='unknown commit rule'):
        diffusion.confidence_sample(tiny(), torch.full((1, 8), MASK), 4, commit='sometimes')


# ----------------------------------------------------------------------------
# training

def loss_lines(stdout):
    return re.findall(r'iter \d+: loss ([\d.]+)', stdout) + re.findall(r'val bound ([\d.]+)', stdout)


def test_train_one_block_is_todays_model(run_train, tiny_args, tmp_path):
    """--diffusion_block=block_size trains exactly as the default (full-sequence) model."""
    common = [*tiny_args, '--model_type=diffusion', '--pos_encoding=rope', '--loss_type=elbo', '--max_iters=3',
              '--eval_interval=3']
    runs = [run_train(*common, f'--out_dir={tmp_path / str(block)}', f'--diffusion_block={block}') for block in (0, 32)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:] + runs[1].stderr[-2000:]
    assert loss_lines(runs[0].stdout) == loss_lines(runs[1].stdout) and len(loss_lines(runs[0].stdout)) == 5


def test_train_block_model_elbo_options(run_train, tiny_args, tmp_path):
    """A block model on the ELBO with the token-mean weighting and a clipped mask-rate range
    trains, and reports the full bound."""
    r = run_train(*tiny_args, '--model_type=diffusion', '--pos_encoding=rope', '--loss_type=elbo', '--diffusion_block=4',
                  '--loss_weighting=token_mean', '--mask_rate_min=0.3', '--mask_rate_max=0.8', '--max_iters=4',
                  '--eval_interval=4', f'--out_dir={tmp_path}')
    assert r.returncode == 0, r.stderr[-2000:]
    bounds = [float(b) for b in re.findall(r'val bound ([\d.]+)', r.stdout)]
    assert len(bounds) == 2 and bounds[1] < bounds[0]
