"""Speculative sampling in one network (TiDAR): a block diffusion model whose clean stream is
causal (causal_clean) drafts by diffusion and verifies as an AR model in the same pass. The
attention patterns, the exactness of the sampler against the AR mode's probabilities
(enumerated), and training with ar_loss_weight. Tiny models, tiny data."""
import itertools
import math
import re
import runpy
import subprocess
import sys

import pytest
import torch

import diffusion
import sampling
from diffusion import two_stream_mask
from loading import load_checkpoint, model_from_checkpoint, save_checkpoint
from model import GPT, GPTConfig, KVCache, causal_mask
from sampling import block_causal_mask, draft_verify_mask
from test_train import one_line_error

ROOT = diffusion.__file__.rsplit('/', 1)[0]
T, BLOCK = 16, 4


def tiny(V=3, sharpen=6.0, seed=0, causal_clean=True):
    """A random block model over V words; sharpen scales its weights, so that the drafts and
    the AR mode disagree often (a rule that ignores p would show)."""
    torch.manual_seed(seed)
    config = GPTConfig(model_type='diffusion', n_layer=2, n_head=2, n_embd=32, block_size=T, vocab_size=V + 2,
                       mask_token_id=V, wrong_token_id=V + 1, diffusion_block=BLOCK, pos_encoding='rope',
                       causal_clean=causal_clean)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(sharpen)
    return model


def ar_probabilities(model, prompt, n, temperature=1.0, top_k=None):
    """{continuation: probability} of every n-token continuation of prompt under the AR mode,
    by enumeration, with the temperature and top_k the sampler applies."""
    V = model.config.mask_token_id
    seqs = torch.tensor([[*prompt, *s] for s in itertools.product(range(V), repeat=n)])
    logits, _ = model(seqs, attn_mask=causal_mask(seqs.size(1), 0, seqs.device))
    probs = sampling.sampling_probs(logits[:, len(prompt) - 1:-1], V, temperature, top_k, None)
    return probs.gather(-1, seqs[:, len(prompt):, None]).squeeze(-1).prod(1)


def empirical(y, prompt, n, V):
    codes = (y[:, len(prompt):] * V ** torch.arange(n - 1, -1, -1)).sum(1)
    return torch.bincount(codes, minlength=V ** n).float() / y.size(0)


def sample(model, x, seed=0, **kwargs):
    return sampling.generate(model, x, sampling.speculative_sample, generator=torch.Generator().manual_seed(seed), **kwargs)


# ----------------------------------------------------------------------------
# attention patterns

def test_causal_clean_two_stream_mask():
    m = two_stream_mask(8, 4, 'cpu', causal_clean=True)
    assert m.shape == (16, 16)
    noisy, clean = slice(0, 8), slice(8, 16)
    assert torch.equal(m[clean, clean], torch.ones(8, 8, dtype=torch.bool).tril()) # token by token
    assert not m[clean, noisy].any()
    assert torch.equal(m[noisy], two_stream_mask(8, 4, 'cpu')[noisy]) # the noisy half as before
    assert torch.equal(two_stream_mask(8, 4, 'cpu')[clean, clean], block_causal_mask(torch.arange(8), torch.arange(8), 4))


def test_draft_verify_mask():
    m = draft_verify_mask(2, 3, 5, 'cpu') # 5 cached, 2 pending, a block of 3, its noisy copy
    assert m.shape == (2 + 3 + 3, 5 + 2 + 3 + 3)
    assert m[:, :5].all() # everything sees the cache
    assert torch.equal(m[:5, 5:10], torch.ones(5, 5, dtype=torch.bool).tril()) and not m[:5, 10:].any()
    copy = slice(5, 8)
    assert m[copy, 5:7].all() and not m[copy, 7:10].any() # the pending tokens, not the block's clean ones
    assert m[copy, 10:].all() # itself, bidirectionally


def test_clean_stream_is_the_ar_mode_and_copies_are_noisy_blocks():
    """One speculative pass gives the clean tokens the logits of the AR mode (uncached, and
    through the KV cache) and the copy those of the training pass's noisy block; cropped back,
    the cache holds the finished tokens as the AR mode computes them."""
    model = tiny(V=6)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(6, (2, 8), generator=g)
    copy = torch.where(torch.rand(2, 4, generator=g) < 0.5, 6, clean[:, 4:]) # the second block, partly masked
    ar, _ = model(clean, attn_mask=causal_mask(8, 0, 'cpu'))
    two_stream = diffusion.denoise(model, clean, clean)
    torch.testing.assert_close(two_stream[:, 8:], ar, rtol=0, atol=1e-5)
    cache = KVCache()
    model(clean[:, :1], kv_cache=cache)
    # 1 cached, 3 pending (the rest of the first block), the second block, its copy at its positions
    positions = torch.cat([torch.arange(1, 8), torch.arange(4, 8)])
    logits, _ = model(torch.cat([clean[:, 1:], copy], 1), kv_cache=cache, pos=positions,
                      attn_mask=draft_verify_mask(3, 4, 1, 'cpu'))
    torch.testing.assert_close(logits[:, :7], ar[:, 1:], rtol=0, atol=1e-5)
    noisy = diffusion.denoise(model, torch.cat([clean[:, :4], copy], 1), clean)
    torch.testing.assert_close(logits[:, 7:], noisy[:, 4:8], rtol=0, atol=1e-5)
    cache.crop(4) # the finished first block stays, the block being written and its copy go
    assert cache.length == 4
    rest, _ = model(clean[:, 4:], kv_cache=cache, attn_mask=causal_mask(4, 4, 'cpu'))
    torch.testing.assert_close(rest, ar[:, 4:], rtol=0, atol=1e-5)
    # the cached AR pass, token by token, and AR sampling through it
    cache = KVCache()
    steps = [model(clean[:, i:i + 1], kv_cache=cache)[0] for i in range(8)]
    assert cache.length == 8
    torch.testing.assert_close(torch.cat(steps, 1), ar, rtol=0, atol=1e-5)
    y = model.generate(clean[:, :2], 20, top_k=1)
    assert y.shape == (2, 22) and (y < 6).all()


# ----------------------------------------------------------------------------
# the sampler

@pytest.mark.parametrize('temperature,top_k', [(1.0, None), (0.7, 2)])
def test_samples_follow_the_ar_distribution_exactly(temperature, top_k):
    """8,000 samples of 3 tokens after a prompt of 2 (crossing a block boundary, so the cache
    and the pending tokens are used): their distribution is the AR mode's, enumerated. Keeping
    every draft (no acceptance rule) measured a total variation of 0.37 here, drawing a rejected
    token from p instead of the residual max(0, p - q) 0.09-0.16."""
    model, prompt, n, N = tiny(), [2, 0], 3, 8000
    x = torch.full((N, len(prompt) + n), model.config.mask_token_id)
    x[:, :len(prompt)] = torch.tensor(prompt)
    y, passes = sample(model, x, temperature=temperature, top_k=top_k)
    exact = ar_probabilities(model, prompt, n, temperature, top_k)
    tv = 0.5 * (empirical(y, prompt, n, 3) - exact).abs().sum().item()
    assert tv < 0.05, tv
    assert passes <= n + 1


def force_rejections(model, token):
    """Drafts always `token` (q puts all its mass there), which the AR mode never writes (p = 0)."""
    forward = model.forward
    def forced(idx, targets=None, kv_cache=None, attn_mask=None, pos=None):
        logits, loss = forward(idx, targets, kv_cache, attn_mask, pos)
        copy = attn_mask[:, -1] # the rows of the noisy copy: the only ones that see its last token
        is_token = torch.arange(logits.size(-1)) == token
        return logits + 1e4 * (copy[:, None] & is_token) - 1e4 * (~copy[:, None] & is_token), loss
    model.forward = forced
    return model


def test_rejected_drafts_still_give_the_ar_sample():
    model, prompt, n, N = force_rejections(tiny(), 1), [2, 0], 3, 4000
    x = torch.full((N, len(prompt) + n), model.config.mask_token_id)
    x[:, :len(prompt)] = torch.tensor(prompt)
    y, passes = sample(model, x)
    assert not (y[:, len(prompt):] == 1).any() and passes == n # one token per pass, from the residual
    tv = 0.5 * (empirical(y, prompt, n, 3) - ar_probabilities(model, prompt, n)).abs().sum().item()
    assert tv < 0.05, tv


def test_prompt_template_long_text_and_rows_that_accept_differently():
    model = tiny(V=6, sharpen=3.0)
    MASK, WRONG = 6, 7
    x = torch.full((4, 45), MASK) # nearly three contexts of 16: the window slides block by block
    x[:, :3] = torch.tensor([1, 2, 3])
    x[1, 20:23] = 5 # fixed tokens in the middle
    x[2, -2:] = 4 # and at the end
    frames = []
    y, passes = sample(model, x, temperature=0.8, on_step=lambda step, tokens, span, cached: frames.append(tokens))
    fixed = x != MASK
    assert torch.equal(y[fixed], x[fixed]) and not ((y == MASK) | (y == WRONG)).any()
    assert passes == len(frames) < (~fixed).sum(1).max() and torch.equal(frames[-1], y) # several tokens in some passes
    frames = torch.stack(frames)
    gains = (frames != MASK).sum(2).diff(dim=0)
    assert (gains != gains[:, :1]).any() # rows moved on by different numbers of tokens in the same pass
    # each frame shows the drafts the next pass verifies: some are rejected and replaced in place
    assert ((frames[1:] != frames[:-1]) & (frames[:-1] != MASK) & (frames[1:] != MASK)).any()


def test_greedy_equals_ar_greedy():
    """top_k=1 (and temperature 0) applied to p and q: the text of greedy AR decoding."""
    model = tiny(V=6, sharpen=3.0)
    x = torch.full((3, 16), 6)
    x[:, :2] = torch.tensor([[1, 2], [3, 4], [5, 0]])
    reference = model.generate(x[:, :2], 14, top_k=1)
    for kwargs in (dict(top_k=1), dict(temperature=0)):
        assert torch.equal(sample(model, x, **kwargs)[0], reference)


def test_refuses_a_model_without_causal_clean():
    with pytest.raises(ValueError, match='--ar_loss_weight>0'):
        sample(tiny(causal_clean=False), torch.full((1, 8), 3))
    with pytest.raises(ValueError, match='causal_clean needs a block diffusion model'):
        GPTConfig(model_type='diffusion', vocab_size=5, mask_token_id=3, wrong_token_id=4, causal_clean=True)


# ----------------------------------------------------------------------------
# training and checkpoints

@pytest.mark.slow
def test_ar_loss_trains_logs_and_resumes(training_runs, run_iters):
    """--ar_loss_weight (with gradient accumulation) logs loss_ar and the AR-mode val loss,
    finite; a resumed run ends where the straight one does; the checkpoint round-trips."""
    runs = training_runs('causal')
    out_dir, r = runs['straight']
    losses = [float(v) for v in re.findall(r'loss_ar ([\d.]+)', r.stdout)]
    assert len(losses) == run_iters and all(math.isfinite(v) for v in losses)
    ar_val = [float(v) for v in re.findall(r'AR-mode val loss ([\d.]+)', r.stdout)]
    assert len(ar_val) == 3 and ar_val[-1] < ar_val[0]
    straight, resumed = load_checkpoint(out_dir), load_checkpoint(runs['resumed'][0])
    for k in straight['model']:
        assert torch.equal(straight['model'][k], resumed['model'][k]), k
    assert straight['model_args']['causal_clean'] is True
    model = model_from_checkpoint(straight).eval()
    assert model.config.causal_clean and model.denoising_block == 8


@pytest.mark.slow
def test_old_checkpoint_without_causal_clean_loads(training_runs, tmp_path):
    checkpoint = load_checkpoint(training_runs('block')['straight'][0])
    del checkpoint['model_args']['causal_clean']
    save_checkpoint(checkpoint, tmp_path)
    model = model_from_checkpoint(load_checkpoint(tmp_path))
    assert model.config.causal_clean is False and model.denoising_block == 8


@pytest.mark.slow
def test_one_line_errors(run_train, tiny_args, training_runs, tmp_path):
    r = run_train(*tiny_args, '--model_type=gpt2', '--ar_loss_weight=1.0', f'--out_dir={tmp_path}')
    assert 'ar_loss_weight=1.0 trains the clean stream of a block diffusion model' in one_line_error(r)
    block_dir = training_runs('block')['straight'][0]
    r = subprocess.run([sys.executable, 'generate_diffusion.py', f'--out_dir={block_dir}', '--sampler=speculative',
                        '--device=cpu'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert 'train one with --ar_loss_weight>0' in one_line_error(r)
    r = subprocess.run([sys.executable, 'generate_diffusion.py', f'--out_dir={block_dir}', '--sampler=speculative',
                        '--order=random', '--device=cpu'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert '--order works with --sampler=confidence, not --sampler=speculative' in one_line_error(r)


@pytest.mark.slow
def test_generate_diffusion_speculative(training_runs, monkeypatch, capsys, tmp_path):
    out_dir = training_runs('causal')['straight'][0]
    monkeypatch.setattr(sys, 'argv', ['generate_diffusion.py', f'--out_dir={out_dir}', '--sampler=speculative',
                                      '--start=ROMEO:', '--length=40', '--num_samples=2', '--device=cpu',
                                      f'--output={tmp_path / "s.txt"}'])
    runpy.run_path(f'{ROOT}/generate_diffusion.py', run_name='__main__')
    out = capsys.readouterr().out
    assert re.search(r'2 samples of 40 tokens \(speculative\): \d+ forward passes .* tokens per pass per sample', out)
    samples = (tmp_path / 's.txt').read_text(encoding='utf-8').split('\n---------------\n')[:-1]
    assert len(samples) == 2 and all(s.startswith('ROMEO:') and len(s) == 40 for s in samples)
