"""Block diffusion (BD3-LM): the attention patterns, the two-stream training pass, the KV
cache of block sampling, the causal clean stream, text of any length, and one block being
today's full-sequence model exactly. Tiny random models on CPU."""
import re

import pytest
import torch

import diffusion
import sampling
from diffusion import two_stream_mask
from model import GPT, GPTConfig, KVCache, causal_mask
from sampling import block_causal_mask
from test_sampling import count_passes

V = 10 # base vocabulary
MASK, WRONG = V, V + 1
T = 32 # block_size


def tiny(block=0, model_type='diffusion', pos_encoding='rope', seed=0, causal_clean=False):
    torch.manual_seed(seed)
    specials = dict(mask_token_id=MASK, wrong_token_id=WRONG) if model_type == 'diffusion' else {}
    config = GPTConfig(model_type=model_type, n_layer=2, n_head=2, n_embd=32, block_size=T, vocab_size=V + 2,
                       pos_encoding=pos_encoding, diffusion_block=block, causal_clean=causal_clean, **specials)
    return GPT(config).eval()


def block_causal(model, idx):
    """Logits of idx (B, t) at positions 0..t-1 seen block-causally: each block itself and the blocks before it."""
    pos = torch.arange(idx.size(1))
    return model(idx, attn_mask=block_causal_mask(pos, pos, model.config.diffusion_block))[0]


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
    # the causal clean stream: token by token, the noisy half as before
    c = two_stream_mask(8, 4, 'cpu', causal_clean=True)
    assert torch.equal(c[clean, clean], block_causal_mask(torch.arange(8), torch.arange(8), 1))
    assert torch.equal(c[noisy], m[noisy]) and not c[clean, noisy].any()


def test_block_causal_mask_from_absolute_positions():
    """Queries after a cache: keys 0..cached+t-1, each query sees its block and those before it."""
    q, k = torch.arange(6, 10), torch.arange(10)
    m = block_causal_mask(q, k, 4) # queries 6,7 in block 1, 8,9 in block 2
    assert m[:2, :8].all() and not m[:2, 8:].any()
    assert m[2:].all()
    assert torch.equal(block_causal_mask(q, k, 1), causal_mask(4, 6, 'cpu')) # block 1: the AR pattern


def test_block_one_is_the_causal_model():
    """diffusion_block=1 sees exactly what an AR model sees: the same weights give the same logits."""
    ar, block1 = tiny(model_type='gpt2'), tiny(block=1)
    block1.load_state_dict(ar.state_dict())
    x, _ = noisy_and_clean()
    logits_ar, _ = ar(x, targets=x) # targets: logits at every position
    torch.testing.assert_close(block_causal(block1, x), logits_ar, rtol=0, atol=1e-5)
    # the samplers' view of a block model is the same (its [MASK] bias is 0)
    torch.testing.assert_close(sampling.denoiser_logits(block1, x), logits_ar, rtol=0, atol=1e-5)


@pytest.mark.parametrize('pos_encoding', ['rope', 'learned'])
def test_one_block_is_the_full_sequence_model(pos_encoding):
    """diffusion_block = block_size is today's model bit for bit, clean text or not."""
    full, one_block = tiny(pos_encoding=pos_encoding), tiny(block=T, pos_encoding=pos_encoding)
    assert one_block.denoising_block is None and full.denoising_block is None
    x, clean = noisy_and_clean()
    reference, _ = full(x)
    assert torch.equal(one_block(x)[0], reference)
    assert torch.equal(diffusion.denoise(one_block, x, clean), reference) # the clean text is not used
    assert torch.equal(diffusion.denoise(full, x, clean), reference)
    assert torch.equal(sampling.denoiser_logits(one_block, x), reference)


@pytest.mark.parametrize('pos_encoding', ['rope', 'learned'])
def test_two_stream_pass_equals_block_causal_and_cached_passes(pos_encoding):
    """Training's [x_t ; x_0] pass gives block b the logits that sampling computes: on the
    clean blocks before it followed by the noisy block, uncached, or through the KV cache;
    its clean half is the clean text seen block-causally."""
    model = tiny(block=8, pos_encoding=pos_encoding)
    x, clean = noisy_and_clean()
    both = diffusion.denoise(model, x, clean)
    assert both.shape == (3, 2 * T, V + 2) # the noisy half, then the clean half
    two_stream = both[:, :T]
    # by hand: [x ; clean] at positions 0..T-1 twice, under the two-stream mask
    by_hand, _ = model(torch.cat([x, clean], 1), attn_mask=two_stream_mask(T, 8, 'cpu'), pos=torch.arange(T).repeat(2))
    assert torch.equal(both, by_hand)
    torch.testing.assert_close(both[:, T:], block_causal(model, clean), rtol=0, atol=1e-5)
    for b in range(T // 8):
        s, e = 8 * b, 8 * b + 8
        single = block_causal(model, torch.cat([clean[:, :s], x[:, s:e]], 1))
        cache = KVCache()
        if s:
            model(clean[:, :s], kv_cache=cache, attn_mask=block_causal_mask(torch.arange(s), torch.arange(s), 8))
        assert cache.length == s
        cached, _ = model(x[:, s:e], kv_cache=cache) # at positions s..e-1, after the cache; sees all of it
        assert cache.length == e
        cache.crop(s) # the noisy block is not kept
        assert cache.length == s
        torch.testing.assert_close(two_stream[:, s:e], single[:, s:], rtol=0, atol=1e-5)
        torch.testing.assert_close(cached, single[:, s:], rtol=0, atol=1e-5)
        # the samplers' path: the clean blocks ride along in the first pass, which stores them
        cache = KVCache()
        context = {'cache': cache, 'offset': s, 'pending': clean[:, :s]}
        for _ in range(2): # the first pass with the pending blocks, the second on the cache alone
            torch.testing.assert_close(sampling.denoiser_logits(model, x[:, s:e], context), single[:, s:], rtol=0, atol=1e-5)
            assert cache.length == s and 'pending' not in context


def test_causal_clean_stream_is_the_ar_mode():
    """A causal_clean model's clean stream in the two-stream pass is its AR mode: the clean text
    under a causal mask, uncached or token by token through the cache, as generate() runs it."""
    model = tiny(block=8, causal_clean=True)
    x, clean = noisy_and_clean(batch=2)
    both = diffusion.denoise(model, x, clean)
    ar, _ = model(clean, attn_mask=causal_mask(T, 0, 'cpu'))
    torch.testing.assert_close(both[:, T:], ar, rtol=0, atol=1e-5)
    cache = KVCache()
    steps = torch.cat([model(clean[:, i:i + 1], kv_cache=cache, attn_mask=causal_mask(1, i, 'cpu'))[0] for i in range(T)], 1)
    torch.testing.assert_close(steps, ar, rtol=0, atol=1e-5)
    # a noisy block sees the clean blocks before it, as the AR mode computed them, and itself
    for s in range(0, T, 8):
        cache = KVCache()
        if s:
            model(clean[:, :s], kv_cache=cache, attn_mask=causal_mask(s, 0, 'cpu'))
        noisy, _ = model(x[:, s:s + 8], kv_cache=cache)
        torch.testing.assert_close(both[:, s:s + 8], noisy, rtol=0, atol=1e-5)
    # generate(), greedy, writes the argmax of the AR mode over the words
    prompt = clean[:, :3]
    out = model.generate(prompt, 4, top_k=1)
    idx = prompt
    for _ in range(4):
        logits, _ = model(idx, attn_mask=causal_mask(idx.size(1), 0, 'cpu'))
        idx = torch.cat([idx, logits[:, -1, :V].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, idx)


def test_corruption_draws_one_noise_level_per_block():
    x = torch.randint(V, (4, T))
    rows = diffusion.block_rows(x, 8)
    assert rows.shape == (16, 8) and torch.equal(rows.reshape(4, T), x)
    inputs, targets, t = diffusion.corrupt_mask_only(rows, torch.Generator().manual_seed(0), MASK)
    assert t.shape == (16,) and torch.equal(targets, rows)
    assert torch.equal(inputs[inputs != MASK], rows[inputs != MASK])
    # stratified over batch x blocks: one draw in each sixteenth of [0, 1]
    assert torch.equal((t.sort().values * 16).long().clamp(max=15), torch.arange(16))
    # and the clipped training range
    _, _, t = diffusion.corrupt_mask_only(rows, torch.Generator().manual_seed(0), MASK, 0.45, 0.95)
    assert t.min() >= 0.45 and t.max() <= 0.95


# ----------------------------------------------------------------------------
# sampling block by block

def greedy_uncached(model, x, steps):
    """The reference of block sampling: each block written by confidence_sample on the whole
    text so far, no cache (the model's block-causal attention gives the block the same view)."""
    block = model.denoising_block
    for s in range(0, x.size(1), block):
        e = min(s + block, x.size(1))
        x = torch.cat([sampling.confidence_sample(model, x[:, :e], steps, temperature=0)[0], x[:, e:]], 1)
    return x


def test_cached_block_sampling_equals_the_uncached_computation():
    model = tiny(block=8)
    x = torch.full((3, T), MASK)
    x[:, :5] = torch.arange(5) # a prompt that ends inside the first block
    cached, _ = sampling.generate(model, x, sampling.confidence_sample, steps=4, temperature=0)
    assert torch.equal(cached, greedy_uncached(model, x, 4))


SAMPLERS = {
    'confidence': (sampling.confidence_sample, dict(steps=4)),
    'ancestral': (sampling.confidence_sample, dict(steps=4, order='random')),
    'left_to_right': (sampling.confidence_sample, dict(steps=4, order='left_to_right')),
    'threshold': (sampling.confidence_sample, dict(steps=8, commit='threshold', threshold=0.5)),
    'refine': (sampling.refine_sample, dict(max_steps=4)),
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
    y, passes = sampling.generate(model, x, sample_fn, generator=torch.Generator().manual_seed(0),
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
    sampling.confidence_sample(model, x, 8, commit='threshold', threshold=0.9, order=order,
                                generator=torch.Generator().manual_seed(0),
                                on_step=lambda step, tokens: first.append(tokens.clone()) if step == 1 else None)
    assert torch.equal(first[0][:, :3], torch.full((2, 3), 4)) and (first[0][:, 3:] == MASK).all()
    # nothing sure at all: one token per pass
    x = torch.full((2, 8), MASK)
    _, passes = sampling.confidence_sample(tiny(block=8), x, 20, commit='threshold', threshold=0.99, order=order,
                                            generator=torch.Generator().manual_seed(0))
    assert passes == 8


def test_left_to_right_commits_the_leftmost_masks():
    x = torch.full((2, 8), MASK)
    x[1, 1] = 3 # a fixed token is skipped, not counted
    seen = []
    sampling.confidence_sample(tiny(block=8), x, 4, schedule='linear', order='left_to_right',
                                generator=torch.Generator().manual_seed(0), on_step=lambda step, tokens: seen.append(tokens != MASK))
    assert seen[0][0].tolist() == [True, True] + [False] * 6
    assert seen[0][1].tolist() == [True, True, True] + [False] * 5 # 7 masks: the first 2 written, around the fixed one
    assert all(row.tolist() == sorted(row.tolist(), reverse=True) for written in seen for row in written) # a prefix


def test_commit_rules_refuse_conflicting_options():
    with pytest.raises(ValueError, match="commit='threshold' picks the surest proposals itself: it does not go with order='random'"):
        sampling.check_options('confidence', dict(steps=4, commit='threshold', order='random'))
    with pytest.raises(ValueError, match=r"unknown commit 'sometimes' \(use 'schedule', 'threshold'\)"):
        sampling.confidence_sample(tiny(), torch.full((1, 8), MASK), 4, commit='sometimes')


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
