"""The GPT class in both modes: shapes, special tokens, attention direction and masks,
position encodings, the [MASK] bias, the KV cache, generation, model surgery, optimizer
groups, MFU and GPT-2 weight loading (against a tiny HuggingFace checkpoint made locally)."""
import copy
from dataclasses import asdict

import pytest
import torch

import diffusion
import sampling
from model import GPT, GPTConfig, KVCache, causal_mask, special_token_ids

V = 20 # base vocabulary of the tiny models


def tiny(model_type='gpt2', pos_encoding='learned', seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(block_size=16, vocab_size=V, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True,
                model_type=model_type, pos_encoding=pos_encoding)
    if model_type == 'diffusion':
        args.update(vocab_size=V + 2, mask_token_id=V, wrong_token_id=V + 1)
    args.update(kw)
    model = GPT(GPTConfig(**args))
    model.eval()
    return model


def tokens(B=3, T=16, vocab=V, seed=1):
    return torch.randint(vocab, (B, T), generator=torch.Generator().manual_seed(seed))


BOTH_POS = pytest.mark.parametrize('pos_encoding', ['learned', 'rope'])


# ----------------------------------------------------------------------------
# shapes and the basics

@BOTH_POS
def test_gpt2_shapes_train_and_inference(pos_encoding):
    model = tiny('gpt2', pos_encoding)
    x, y = tokens(), tokens(seed=2)
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, V)
    assert loss.dim() == 0 and torch.isfinite(loss)
    # the loss is the mean next-token cross-entropy of those logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    torch.testing.assert_close(loss, expected)
    # an untrained model is close to uniform: loss near log(V)
    assert abs(loss.item() - torch.log(torch.tensor(float(V))).item()) < 0.5
    # inference: logits of the last position only, equal to the training logits there
    logits_inf, loss_inf = model(x)
    assert logits_inf.shape == (3, 1, V) and loss_inf is None
    torch.testing.assert_close(logits_inf[:, 0], logits[:, -1])


def test_gpt2_targets_ignore_index():
    model = tiny('gpt2')
    x, y = tokens(), tokens(seed=2)
    y_ignored = y.clone()
    y_ignored[:, 8:] = -1
    logits, loss = model(x, y_ignored)
    expected = torch.nn.functional.cross_entropy(logits[:, :8].reshape(-1, V), y[:, :8].reshape(-1))
    torch.testing.assert_close(loss, expected)


@BOTH_POS
def test_diffusion_shapes(pos_encoding):
    model = tiny('diffusion', pos_encoding)
    x = tokens(vocab=V + 2)
    logits, loss = model(x)
    assert logits.shape == (3, 16, V + 2) and loss is None
    # targets, if given, change nothing: the loss belongs to diffusion.py
    logits2, loss2 = model(x, targets=tokens(seed=5))
    assert loss2 is None and torch.equal(logits, logits2)
    # shorter sequences work too
    assert model(x[:, :5])[0].shape == (3, 5, V + 2)


def test_special_tokens_are_the_last_two_ids():
    """[MASK] and [WRONG] come right after the words, so that every word keeps its tokenizer
    (and AR model) id; a diffusion config sets them from vocab_size."""
    assert special_token_ids(V) == (V, V + 1)
    config = GPTConfig(model_type='diffusion', vocab_size=V + 2, block_size=16, n_layer=1, n_head=2, n_embd=32)
    assert (config.mask_token_id, config.wrong_token_id, config.words) == (V, V + 1, V)
    assert GPTConfig(**asdict(config)) == config # rebuilt from its fields, as from a checkpoint
    assert GPTConfig(**{**asdict(config), 'mask_token_id': V, 'wrong_token_id': V + 1}) == config
    ar = GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=32)
    assert ar.words == V and (ar.mask_token_id, ar.wrong_token_id) == (-1, -1) # an AR model has none
    # a model made a diffusion model after its config was made gets no ids: GPT says so
    ar.model_type = 'diffusion'
    with pytest.raises(ValueError, match=r"last two ids, \(18, 19\) of vocab_size=20, not -1 and -1"):
        GPT(ar)
    # the model takes them as input and gives logits for the words and both specials
    model = tiny('diffusion')
    assert model.config.words == V and model.lm_head.out_features == V + 2
    x = tokens(B=2, vocab=V)
    x[:, 3], x[:, 5] = V, V + 1
    assert model(x)[0].shape == (2, 16, V + 2)


def test_sequence_longer_than_block_size_is_refused():
    model = tiny('gpt2')
    with pytest.raises(AssertionError, match='block size'):
        model(tokens(T=17))


def test_weight_tying():
    model = tiny('diffusion')
    assert model.transformer.wte.weight is model.lm_head.weight
    assert len({p.data_ptr() for p in model.parameters()}) == len(list(model.parameters())) # counted once
    # changing the head changes the embedding: one tensor
    with torch.no_grad():
        model.lm_head.weight[3].zero_()
    assert torch.equal(model.transformer.wte.weight[3], torch.zeros(32))
    # learned positions are excluded from get_num_params by default, rope has none
    learned = tiny('gpt2', 'learned')
    assert learned.get_num_params(False) - learned.get_num_params() == 16 * 32
    rope = tiny('gpt2', 'rope')
    assert rope.get_num_params(False) == rope.get_num_params()
    assert learned.get_num_params() == rope.get_num_params()


def test_unknown_model_type_or_pos_encoding():
    with pytest.raises(ValueError, match="model_type must be 'gpt2' or 'diffusion'"):
        tiny('bert')
    with pytest.raises(ValueError, match="pos_encoding must be 'learned' or 'rope'"):
        tiny('gpt2', 'alibi')


@pytest.mark.parametrize('kw, message', [
    (dict(n_head=3), 'n_embd=32 is not a multiple of n_head=3.*use n_embd=30 or 33'),
    (dict(n_embd=30, n_head=2, pos_encoding='rope'), 'needs an even head size.*use n_embd=28 or 32'),
    (dict(n_layer=0), 'n_layer must be an integer >= 1, not 0'),
    (dict(block_size=None), 'block_size must be an integer >= 1, not None'),
    (dict(dropout=1.0), r'dropout must be in \[0, 1\)'),
    (dict(model_type='diffusion', mask_token_id=0, wrong_token_id=1),
     r"a model's \[MASK\] and \[WRONG\] are its last two ids, \(18, 19\) of vocab_size=20, not 0 and 1"),
    (dict(model_type='diffusion', mask_token_id=19, wrong_token_id=18), r'last two ids, \(18, 19\).*not 19 and 18'),
    (dict(model_type='diffusion', mask_token_id=20, wrong_token_id=21), r'last two ids, \(18, 19\).*not 20 and 21'),
    (dict(diffusion_block=-1), 'diffusion_block must be an integer >= 0'),
    (dict(model_type='diffusion', diffusion_block=5, mask_token_id=18, wrong_token_id=19),
     'diffusion_block=5 does not divide block_size=16: use a divisor, e.g. diffusion_block=4'),
    (dict(causal_clean=True), "causal_clean needs a block diffusion model"),
])
def test_impossible_configs_are_refused_with_what_to_change(kw, message):
    """A user of GPT from Python gets the same clear ValueError that train.py turns into one line."""
    base = dict(block_size=16, vocab_size=V, n_layer=2, n_head=2, n_embd=32)
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**base, **kw})
    config = GPTConfig(**base)
    for key, value in kw.items():
        setattr(config, key, value) # changed after it was made: GPT checks it again
    with pytest.raises(ValueError, match=message):
        GPT(config)


# ----------------------------------------------------------------------------
# attention direction and position encodings

@BOTH_POS
def test_gpt2_is_causal(pos_encoding):
    model = tiny('gpt2', pos_encoding)
    x = tokens(B=1)
    x2 = x.clone()
    x2[0, 10] = (x[0, 10] + 1) % V
    a, _ = model(x, x)
    b, _ = model(x2, x2)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-6) # earlier positions don't see it
    assert (a[:, 10:] - b[:, 10:]).abs().amax() > 1e-4 # later ones do


@BOTH_POS
def test_diffusion_is_bidirectional(pos_encoding):
    model = tiny('diffusion', pos_encoding)
    x = tokens(B=1, vocab=V)
    x2 = x.clone()
    x2[0, 15] = (x[0, 15] + 1) % V # change the last token
    a, _ = model(x)
    b, _ = model(x2)
    # every earlier position sees the change
    assert ((a[0, :15] - b[0, :15]).abs().amax(-1) > 1e-5).all()


@BOTH_POS
def test_positions_matter(pos_encoding):
    """Both encodings tell positions apart: in 'a b b ... b' the b next to the a and the b
    far from it get different outputs (without position information a bidirectional
    model could not tell them apart)."""
    model = tiny('diffusion', pos_encoding)
    with torch.no_grad(): # sharper attention than at init, so that positions show clearly
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(20)
    x = torch.full((1, 16), 3)
    x[0, 0] = 5
    logits, _ = model(x)
    assert (logits[0, 1] - logits[0, 15]).abs().amax() > 1e-3
    if pos_encoding == 'learned': # without the position embeddings they would be equal
        model.transformer.wpe.weight.data.zero_()
        logits, _ = model(x)
        torch.testing.assert_close(logits[0, 1], logits[0, 15])


def test_rope_is_relative():
    """With rotary embeddings, attention scores depend only on relative positions: a causal
    model fed a sequence at positions 0.. and, via pos, at positions 5.. gives the same logits."""
    model = tiny('gpt2', 'rope')
    x = tokens(B=2, T=8)
    a, _ = model(x, x)
    b, _ = model(x, x, pos=torch.arange(5, 13))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the default positions are 0..T-1
    assert torch.equal(model(x, x, pos=torch.arange(8))[0], a)
    # learned positions are absolute: the same shift changes the output
    learned = tiny('gpt2', 'learned')
    c, _ = learned(x, x)
    d, _ = learned(x, x, pos=torch.arange(5, 13))
    assert (c - d).abs().amax() > 1e-4


# ----------------------------------------------------------------------------
# the [MASK] bias

def test_forward_returns_plain_logits_and_the_bias_is_added_by_diffusion():
    model = tiny('diffusion')
    x = tokens(vocab=V + 2)
    base, _ = model(x)
    model.mask_logit_bias.fill_(3.5)
    assert torch.equal(model(x)[0], base) # the model never reads its bias
    biased = diffusion.with_mask_bias(base, V, model.mask_logit_bias)
    diff = biased - base
    torch.testing.assert_close(diff[..., V], torch.full_like(diff[..., V], 3.5))
    assert torch.equal(diff[..., :V], torch.zeros_like(diff[..., :V]))
    assert torch.equal(diff[..., V + 1], torch.zeros_like(diff[..., V + 1]))
    # the samplers read the model's own bias
    torch.testing.assert_close(sampling.denoiser_logits(model, x), biased)
    # the bias is a buffer saved in the state dict, not a model setting
    assert model.state_dict()['mask_logit_bias'].item() == 3.5
    assert 'mask_logit_bias' not in asdict(model.config)


def test_mask_logit_bias_is_autograd_safe():
    model = tiny('diffusion')
    model.mask_logit_bias.fill_(1.0)
    logits, _ = model(tokens(vocab=V + 2))
    diffusion.with_mask_bias(logits, V, model.mask_logit_bias).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------
# generation

@BOTH_POS
@pytest.mark.parametrize('top_k', [None, 5])
def test_kv_cache_generation_equals_uncached(pos_encoding, top_k):
    model = tiny('gpt2', pos_encoding, seed=3)
    prompt = tokens(B=2, T=5, seed=4)
    # 5 + 20 tokens > block_size 16: the sliding-window path is used too
    out = {}
    for use_cache in (False, True):
        g = torch.Generator().manual_seed(123)
        out[use_cache] = model.generate(prompt, 20, temperature=1.3, top_k=top_k, use_kv_cache=use_cache, generator=g)
    assert out[True].shape == (2, 25)
    assert torch.equal(out[True][:, :5], prompt)
    assert torch.equal(out[True], out[False])
    # a different seed gives a different sample (the generator is really used)
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(model.generate(prompt, 20, top_k=top_k, generator=g), out[True])


@BOTH_POS
def test_kv_cache_logits_match_full_forward(pos_encoding):
    """Feeding tokens one by one through the cache gives the logits of a full forward."""
    model = tiny('gpt2', pos_encoding)
    x = tokens(B=2, T=12)
    full, _ = model(x, x)
    cache = KVCache()
    assert cache.length == 0
    first, _ = model(x[:, :4], kv_cache=cache)
    assert cache.length == 4 and set(cache.k) == set(cache.v) == {0, 1} # every layer keeps its keys
    torch.testing.assert_close(first[:, -1], full[:, 3], rtol=1e-4, atol=1e-5)
    for i in range(4, 12): # the positions follow the cache's
        step, _ = model(x[:, i:i + 1], kv_cache=cache)
        assert cache.length == i + 1
        torch.testing.assert_close(step[:, -1], full[:, i], rtol=1e-4, atol=1e-5)
    # several new tokens at once (bottom-right causal mask), after cropping the cache back
    cache.crop(4)
    assert cache.length == 4 and all(k.size(2) == 4 for k in list(cache.k.values()) + list(cache.v.values()))
    chunk, _ = model(x[:, 4:9], x[:, 4:9], kv_cache=cache)
    assert cache.length == 9
    torch.testing.assert_close(chunk, full[:, 4:9], rtol=1e-4, atol=1e-5)
    # the same with the mask given: causal_mask is the pattern the model builds itself
    cache.crop(4)
    masked, _ = model(x[:, 4:9], x[:, 4:9], kv_cache=cache, attn_mask=causal_mask(5, 4, 'cpu'))
    torch.testing.assert_close(masked, chunk, rtol=0, atol=1e-6)


def test_causal_mask():
    assert torch.equal(causal_mask(4, 0, 'cpu'), torch.ones(4, 4, dtype=torch.bool).tril())
    m = causal_mask(3, 5, 'cpu') # 3 new tokens after 5 cached ones
    assert m.shape == (3, 8) and m[:, :5].all()
    assert torch.equal(m[:, 5:], torch.ones(3, 3, dtype=torch.bool).tril())


@BOTH_POS
def test_attn_mask_replaces_the_default_pattern(pos_encoding):
    """attn_mask overrides the model's own pattern: a causal mask makes a diffusion model
    causal, a full one makes an AR model see every position."""
    x = tokens(B=2, T=10)
    diff = tiny('diffusion', pos_encoding)
    causal, _ = diff(x, attn_mask=causal_mask(10, 0, 'cpu'))
    x2 = x.clone()
    x2[:, 6:] = (x[:, 6:] + 1) % V # a change from position 6 on is not seen before it
    changed, _ = diff(x2, attn_mask=causal_mask(10, 0, 'cpu'))
    torch.testing.assert_close(changed[:, :6], causal[:, :6], rtol=0, atol=1e-6)
    assert ((changed[:, 6:] - causal[:, 6:]).abs().amax(-1) > 1e-5).all()
    assert ((diff(x2)[0][:, :6] - diff(x)[0][:, :6]).abs().amax(-1) > 1e-5).all() # the default: full
    ar = tiny('gpt2', pos_encoding)
    full, _ = ar(x, x, attn_mask=torch.ones(10, 10, dtype=torch.bool))
    assert ((full[:, :-1] - ar(x, x)[0][:, :-1]).abs().amax(-1) > 1e-5).all()


def test_greedy_top_k_1():
    model = tiny('gpt2')
    prompt = tokens(B=1, T=3)
    out = model.generate(prompt, 4, top_k=1)
    # top_k=1 is greedy decoding: each new token is the argmax of the uncached logits
    idx = prompt
    for _ in range(4):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, idx)


def test_generate_refuses_diffusion():
    with pytest.raises(AssertionError, match='autoregressive'):
        tiny('diffusion').generate(tokens(B=1, T=2), 1)


# ----------------------------------------------------------------------------
# model surgery

@BOTH_POS
def test_crop_block_size(pos_encoding):
    model = tiny('gpt2', pos_encoding)
    x = tokens(B=2, T=8)
    before, _ = model(x, x)
    model.crop_block_size(8)
    assert model.config.block_size == 8
    if pos_encoding == 'learned':
        assert model.transformer.wpe.weight.shape == (8, 32)
    else:
        assert model.rope_cos.shape[0] == 8 and model.rope_sin.shape[0] == 8
    after, _ = model(x, x)
    torch.testing.assert_close(before, after) # the first 8 positions are unchanged
    with pytest.raises(AssertionError):
        model(tokens(B=2, T=9))
    with pytest.raises(AssertionError):
        model.crop_block_size(12) # can only shrink
    # still trainable and generating within the new block size
    assert model.generate(x[:, :2], 10).shape == (2, 12)


@BOTH_POS
def test_to_diffusion(pos_encoding):
    model = tiny('gpt2', pos_encoding)
    old = copy.deepcopy(model.state_dict())
    model.to_diffusion()
    cfg = model.config
    assert cfg.model_type == 'diffusion'
    assert cfg.vocab_size == V + 2 and cfg.mask_token_id == V and cfg.wrong_token_id == V + 1
    assert model.lm_head.weight.shape == (V + 2, 32)
    assert model.transformer.wte.weight is model.lm_head.weight # still tied
    assert model.transformer.wte.num_embeddings == V + 2 and model.lm_head.out_features == V + 2
    new = model.state_dict()
    assert set(new) == set(old)
    for k, v in old.items():
        if k in ('lm_head.weight', 'transformer.wte.weight'):
            assert torch.equal(new[k][:V], v) # old rows kept
            assert torch.isfinite(new[k][V:]).all()
        else:
            assert torch.equal(new[k], v), k
    # it now behaves as a diffusion model: logits everywhere, bidirectional, the new tokens usable
    x = tokens(B=1, vocab=V + 2)
    x2 = x.clone()
    x2[0, -1] = V # [MASK] at the end
    a, loss = model(x)
    b, _ = model(x2)
    assert a.shape == (1, 16, V + 2) and loss is None
    assert ((a[0, :-1] - b[0, :-1]).abs().amax(-1) > 1e-6).all()
    # the new rows start near the mean embedding, so [MASK]/[WRONG] logits are of ordinary size
    assert a[..., V:].abs().max() < 10 * a[..., :V].abs().max() + 1
    with pytest.raises(AssertionError):
        model.to_diffusion()
    # the surgery survives a state-dict round trip into a model built from its config
    rebuilt = GPT(GPTConfig(**{**cfg.__dict__}))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(x)[0], a)


def test_to_diffusion_trains():
    model = tiny('gpt2')
    model.to_diffusion()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = tokens(B=2)
    logits, _ = model(torch.where(x % 2 == 0, V, x))
    torch.nn.functional.cross_entropy(logits.reshape(-1, V + 2), x.reshape(-1)).backward()
    assert model.lm_head.weight.grad.shape == (V + 2, 32)
    opt.step()


# ----------------------------------------------------------------------------
# optimizer and MFU

def test_configure_optimizers_groups():
    model = tiny('diffusion', 'learned')
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type='cpu')
    assert isinstance(opt, torch.optim.AdamW)
    decay, nodecay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and nodecay['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in decay['params'])
    assert all(p.dim() < 2 for p in nodecay['params'])
    # every parameter exactly once (the tied embedding/head included once)
    ids = [id(p) for p in decay['params'] + nodecay['params']]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert any(p is model.lm_head.weight for p in decay['params'])
    assert any(p is model.transformer.ln_f.weight for p in nodecay['params'])
    assert opt.defaults['lr'] == 1e-3 and opt.defaults['betas'] == (0.9, 0.95)
    # no buffer (the [MASK] bias, rope tables) is optimised
    assert all(p is not model.mask_logit_bias for p in decay['params'] + nodecay['params'])


def test_estimate_mfu():
    model = tiny('gpt2')
    mfu = model.estimate_mfu(fwdbwd_per_iter=4, dt=0.1)
    assert mfu > 0
    # twice the time, half the utilisation
    assert model.estimate_mfu(4, 0.2) == pytest.approx(mfu / 2)
    cfg = model.config
    N = model.get_num_params()
    flops = (6 * N + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * cfg.block_size) * cfg.block_size * 4
    assert mfu == pytest.approx(flops / 0.1 / 312e12)


# ----------------------------------------------------------------------------
# GPT-2 weights through HuggingFace transformers (offline: a tiny checkpoint made here)

def test_from_pretrained_matches_huggingface(tmp_path):
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=100)
    hf = transformers.GPT2LMHeadModel(hf_config)
    # larger weights than the default init, so that a transposed or misplaced tensor shows
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith('weight') and p.dim() == 2:
                p.normal_(0, 0.2)
            elif 'ln' not in name:
                p.normal_(0, 0.05)
    hf.eval()
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path))
    model.eval()
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (2, 2, 32, 32, 100)
    assert cfg.bias and cfg.model_type == 'gpt2' and cfg.pos_encoding == 'learned'
    x = torch.randint(100, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(x, x)
        theirs = hf(x).logits
    # HF GPT-2 uses the tanh approximation of GELU, nanoGPT the exact one: close, not equal
    torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-3)
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.95
    # the last-position inference path agrees too
    torch.testing.assert_close(model(x)[0][:, 0], theirs[:, -1], rtol=0, atol=5e-3)
    # dropout is the one override allowed
    assert GPT.from_pretrained(str(tmp_path), dict(dropout=0.1)).config.dropout == 0.1
    with pytest.raises(AssertionError):
        GPT.from_pretrained(str(tmp_path), dict(n_layer=3))
