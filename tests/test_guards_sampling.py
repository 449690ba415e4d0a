"""What the samplers write, pass by pass, with a stand-in model whose logits are known: the
positions each order and commit rule commits, the [WRONG] path of refine_sample, what the
evaluations mask, the windows and KV cache of generate() when the context slides, and the
proofreading mode of generate_diffusion.py."""
import re
import runpy
import sys
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch

import diffusion
import loading
import sampling
from conftest import ROOT
from model import GPT, GPTConfig

V = 10 # base vocabulary
MASK, WRONG = V, V + 1
# the logit of the word proposed at positions 0..7 (word j % V at position j): the surest proposal
# is at 5, then 1, 3, 7, 4, 0, 2, 6. Confidence e^s / (e^s + 9): 0.997, 0.978, 0.943, 0.859, 0.691,
# 0.451, 0.332, 0.232
WORD = [2.0, 6.0, 1.5, 5.0, 3.0, 8.0, 1.0, 4.0]
FIXED = (1, 5) # the fixed tokens of the second row: its two surest positions


class Denoiser(torch.nn.Module):
    """A diffusion model with known logits. At absolute position j (pos, by default right after
    the cached ones): the word j % V has logit word[j] and every other word 0; [MASK] has logit
    defer[j]; [WRONG] has logit doubt[j] where the input is a written token, and -30 at a [MASK].
    It records the input of every pass."""

    def __init__(self, word=WORD, defer=None, doubt=None):
        super().__init__()
        n = len(word)
        self.word = torch.tensor(word)
        self.defer = torch.full((n,), -30.0) if defer is None else torch.tensor(defer)
        self.doubt = torch.full((n,), -30.0) if doubt is None else torch.tensor(doubt)
        self.config = SimpleNamespace(model_type='diffusion', mask_token_id=MASK, wrong_token_id=WRONG,
                                      block_size=n, diffusion_block=0)
        self.denoising_block = None # a full-sequence model: generate() gives it no cache
        self.register_buffer('mask_logit_bias', torch.tensor(0.0)) # the samplers add it to defer
        self.inputs = []

    def forward(self, idx, targets=None, kv_cache=None, attn_mask=None, pos=None):
        self.inputs.append(idx.clone())
        B, t = idx.shape
        if pos is None:
            cached = 0 if kv_cache is None else kv_cache.length
            pos = torch.arange(cached, cached + t)
        logits = torch.zeros(B, t, V + 2)
        logits[:, torch.arange(t), pos % V] = self.word[pos]
        logits[..., MASK] = self.defer[pos]
        logits[..., WRONG] = torch.where(idx == MASK, -30.0, self.doubt[pos])
        return logits, None


def two_rows():
    """Row 0 all masked; row 1 with its two surest positions given (token 9)."""
    x = torch.full((2, len(WORD)), MASK)
    x[1, list(FIXED)] = 9
    return x


def trajectory(sample_fn, model, x, *args, **kwargs):
    """(per pass: per row, the set of non-fixed positions written after it), tokens, passes."""
    fixed = x != MASK
    written = []
    tokens, passes = sample_fn(model, x, *args, on_step=lambda step, t: written.append(
        [set(torch.nonzero(row).flatten().tolist()) for row in (t != MASK) & ~fixed]), **kwargs)
    return written, tokens, passes


def cumulative(*per_pass):
    """The written sets after each pass, from the sets each pass adds."""
    out, done = [], set()
    for new in per_pass:
        done = done | new
        out.append(done)
    return out


def check_words(x, tokens):
    """Every written position holds its greedy word (j % V), every fixed one its given token."""
    words = torch.arange(x.size(1)).expand_as(x) % V
    assert torch.equal(tokens, torch.where(x == MASK, words, x))


# ----------------------------------------------------------------------------
# commit='schedule': which positions, per order

# per pass, the positions a row commits (linear: 2, 2, 2, 2 of 8 and 2, 2, 1, 1 of 6;
# cosine: 1, 2, 3, 2 of 8 and 1, 2, 2, 1 of 6)
SCHEDULED = {
    ('confidence', 'linear'): ([{5, 1}, {3, 7}, {4, 0}, {2, 6}], [{3, 7}, {4, 0}, {2}, {6}]),
    ('confidence', 'cosine'): ([{5}, {1, 3}, {7, 4, 0}, {2, 6}], [{3}, {7, 4}, {0, 2}, {6}]),
    ('left_to_right', 'linear'): ([{0, 1}, {2, 3}, {4, 5}, {6, 7}], [{0, 2}, {3, 4}, {6}, {7}]),
    ('left_to_right', 'cosine'): ([{0}, {1, 2}, {3, 4, 5}, {6, 7}], [{0}, {2, 3}, {4, 6}, {7}]),
}


@pytest.mark.parametrize('order, schedule', SCHEDULED)
def test_scheduled_orders_commit_these_positions(order, schedule):
    x = two_rows()
    written, tokens, passes = trajectory(sampling.confidence_sample, Denoiser(), x, 4, schedule=schedule,
                                         order=order, temperature=0)
    assert passes == 4
    assert [w[0] for w in written] == cumulative(*SCHEDULED[order, schedule][0])
    assert [w[1] for w in written] == cumulative(*SCHEDULED[order, schedule][1])
    check_words(x, tokens)


def test_default_commits_the_surest_first():
    """The defaults: order 'confidence' on a cosine schedule."""
    written, tokens, _ = trajectory(sampling.confidence_sample, Denoiser(), two_rows(), 4, temperature=0)
    assert [w[0] for w in written] == cumulative(*SCHEDULED['confidence', 'cosine'][0])
    assert [w[1] for w in written] == cumulative(*SCHEDULED['confidence', 'cosine'][1])


def test_random_order_ignores_the_confidence():
    """MDLM's ancestral order: every masked position is as likely to go first, whatever the
    model's confidence; fixed positions are never chosen; the generator decides."""
    x = torch.full((800, len(WORD)), MASK)
    x[400:, list(FIXED)] = 9
    def first_pass(seed):
        states = []
        sampling.confidence_sample(Denoiser(), x, 4, schedule='linear', order='random', temperature=0,
                                    generator=torch.Generator().manual_seed(seed), on_step=lambda step, t: states.append(t))
        return (states[0] != MASK) & (x == MASK)
    first = first_pass(0)
    assert (first[:400].sum(1) == 2).all() and (first[400:].sum(1) == 2).all() # linear: 2 of 8, 2 of 6
    assert not first[400:, list(FIXED)].any()
    # 2 of 8 positions: each one first in a quarter of the rows (std 0.022), the least sure as often as the surest
    assert torch.allclose(first[:400].float().mean(0), torch.full((8,), 0.25), atol=0.08)
    others = [j for j in range(len(WORD)) if j not in FIXED] # 2 of 6
    assert torch.allclose(first[400:, others].float().mean(0), torch.full((6,), 1 / 3), atol=0.09)
    assert not torch.equal(first, first_pass(1))


# ----------------------------------------------------------------------------
# the adaptive commit rules: their own choice, whatever the order

ORDERS = ['confidence', 'random', 'left_to_right']


@pytest.mark.parametrize('order', ORDERS)
def test_threshold_commits_the_sure_proposals_or_the_surest(order):
    # above 0.9: positions 5, 1, 3 (row 1: only 3); then the surest one per pass
    x = two_rows()
    written, tokens, passes = trajectory(sampling.confidence_sample, Denoiser(), x, 10, commit='threshold',
                                         threshold=0.9, order=order, temperature=0,
                                         generator=torch.Generator().manual_seed(0))
    assert passes == 6
    assert [w[0] for w in written] == cumulative({5, 1, 3}, {7}, {4}, {0}, {2}, {6})
    assert [w[1] for w in written] == cumulative({3}, {7}, {4}, {0}, {2}, {6})
    check_words(x, tokens)
    # the cap: whatever is left goes at the last allowed pass
    written, tokens, passes = trajectory(sampling.confidence_sample, Denoiser(), x, 3, commit='threshold',
                                         threshold=0.9, order=order, temperature=0)
    assert passes == 3 and [w[0] for w in written] == cumulative({5, 1, 3}, {7}, {4, 0, 2, 6})
    check_words(x, tokens)


# ----------------------------------------------------------------------------
# [WRONG]: self-correction in the samplers

def test_refine_defers_at_mask_and_rewrites_at_wrong():
    """Greedy refine: position 2 samples [MASK] (defer) at every step; position 6 is written,
    then flagged [WRONG] and sent back, then written again; the final pass fills both."""
    defer, doubt = [-30.0] * 8, [-30.0] * 8
    defer[2], doubt[6] = 20.0, 20.0
    x = two_rows()
    x[1, 6] = 9 # a fixed token the model doubts is kept
    model = Denoiser(defer=defer, doubt=doubt)
    written, tokens, passes = trajectory(sampling.refine_sample, model, x, max_steps=4, temperature=0)
    assert passes == 5 == len(model.inputs)
    most = {0, 1, 3, 4, 5, 7}
    assert [w[0] for w in written] == [most | {6}, most, most | {6}, most, set(range(8))]
    assert [w[1] for w in written] == [most - {1, 5}] * 4 + [{0, 2, 3, 4, 7}]
    check_words(x, tokens)


# ----------------------------------------------------------------------------
# the evaluations: what they mask

def test_evaluations_mask_what_they_say():
    """masked_val_loss masks exactly its fraction of every row; elbo_bound feeds the model the
    mask-only corruption that its generator draws."""
    x = torch.randint(V, (6, 8), generator=torch.Generator().manual_seed(0))
    model = Denoiser()
    diffusion.masked_val_loss(model, [x], 0.25, torch.Generator().manual_seed(0))
    assert len(model.inputs) == 1 and ((model.inputs[0] == MASK).sum(1) == 2).all()
    assert torch.equal(model.inputs[0][model.inputs[0] != MASK], x[model.inputs[0] != MASK])
    model = Denoiser()
    diffusion.elbo_bound(model, [x], torch.Generator().manual_seed(3))
    inputs, _, _ = diffusion.corrupt_mask_only(x, torch.Generator().manual_seed(3), MASK)
    assert len(model.inputs) == 1 and torch.equal(model.inputs[0], inputs)


# ----------------------------------------------------------------------------
# generate(): windows of a full-sequence model, the KV cache of a block model when the context slides

def test_full_sequence_windows_slide_by_half():
    """Past block_size (16), windows of 16 tokens end every 8 tokens; each one's first half is
    the text written so far, its second half the masks to write."""
    model = Denoiser(word=[float(j % 5 + 1) for j in range(16)])
    x = torch.full((2, 40), MASK)
    spans = []
    y, passes = sampling.generate(model, x, sampling.confidence_sample, steps=2, temperature=0,
                                   on_step=lambda step, tokens, span, cached: spans.append(span))
    assert spans == [(0, 16)] * 2 + [(8, 24)] * 2 + [(16, 32)] * 2 + [(24, 40)] * 2 and passes == 8
    firsts = model.inputs[::2] # the first pass of each window
    assert all(idx.shape == (2, 16) for idx in model.inputs)
    assert (firsts[0] == MASK).all()
    for idx in firsts[1:]:
        assert not (idx[:, :8] == MASK).any() and (idx[:, 8:] == MASK).all()
    # each window writes its second half: the words of window positions 8..15
    pos = torch.arange(40)
    assert torch.equal(y, torch.where(pos < 16, pos, 8 + pos % 8).expand(2, 40) % V)


def tiny_block_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(model_type='diffusion', n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=V + 2,
                         mask_token_id=MASK, wrong_token_id=WRONG, pos_encoding='rope', diffusion_block=8)).eval()


def test_block_cache_follows_the_sliding_context():
    """75 tokens with blocks of 8 and a context of 32: each block is written seeing the 24
    tokens before it (the last 3 blocks, once the context slides), exactly as an uncached pass
    over that window computes it; a block costs exactly its sampler's passes, and every pass
    sees the window up to its block: cached keys and new tokens together."""
    model = tiny_block_model()
    x = torch.full((3, 75), MASK)
    x[:, :5] = torch.arange(5)
    x[1, 40:44] = 7
    calls = []
    forward = model.forward
    def counted(idx, targets=None, kv_cache=None, attn_mask=None, pos=None):
        calls.append(kv_cache.length + idx.size(1)) # the keys this pass attends over
        return forward(idx, targets, kv_cache, attn_mask, pos)
    model.forward = counted
    y, passes = sampling.generate(model, x, sampling.confidence_sample, steps=3, temperature=0)
    model.forward = forward
    assert passes == len(calls) == 3 * 10 # 10 blocks, 3 passes each: the cache rides along
    assert calls == [min(s + 8, 75) - max(0, s + 8 - 32) for s in range(0, 75, 8) for _ in range(3)]
    reference = x.clone()
    for s in range(0, 75, 8):
        e, window = min(s + 8, 75), max(0, s + 8 - 32)
        written, _ = sampling.confidence_sample(model, reference[:, window:e], 3, temperature=0)
        reference[:, s:e] = written[:, s - window:]
    assert torch.equal(y, reference)


# ----------------------------------------------------------------------------
# generate_diffusion.py: the sampling it names, and proofreading

@pytest.fixture(scope='module')
def script_checkpoints(tiny_dataset, tmp_path_factory):
    """{block: folder} of tiny random diffusion checkpoints on the tiny dataset: full sequence (0)
    and blocks of 8."""
    name, meta = tiny_dataset
    dirs = {}
    for block in (0, 8):
        torch.manual_seed(0)
        model = GPT(GPTConfig(model_type='diffusion', n_layer=1, n_head=2, n_embd=16, block_size=32,
                              vocab_size=meta['vocab_size'] + 2, mask_token_id=meta['vocab_size'],
                              wrong_token_id=meta['vocab_size'] + 1, pos_encoding='rope', diffusion_block=block))
        dirs[block] = tmp_path_factory.mktemp(f'block{block}')
        loading.save_checkpoint({'model': model.state_dict(), 'model_args': asdict(model.config),
                                 'config': {'dataset': name}}, dirs[block])
    return dirs


def run_generate(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, 'argv', ['generate_diffusion.py', '--device=cpu', *args])
    runpy.run_path(str(ROOT / 'generate_diffusion.py'), run_name='__main__')
    return capsys.readouterr().out


@pytest.mark.parametrize('block, order', [(0, 'random'), (8, 'left_to_right')])
def test_generate_diffusion_samples_with_the_options_it_names(script_checkpoints, tiny_dataset, tmp_path, monkeypatch,
                                                              capsys, block, order):
    """order=auto picks `order` for the model; the samples are sampling.generate's with the
    script's options and seed, and no other order gives them."""
    prompt = ''.join(tiny_dataset[1]['itos'][-2:]) # two letters
    out = run_generate(monkeypatch, capsys, f'--out_dir={script_checkpoints[block]}', f'--start={prompt}', '--length=40',
                       '--steps=3', '--schedule=linear', '--temperature=1.0', '--num_samples=2',
                       f'--output={tmp_path / "s.txt"}')
    assert f'(confidence, order {order}, commit schedule): ' in out
    samples = (tmp_path / 's.txt').read_text(encoding='utf-8').split('\n---------------\n')[:-1]
    encode, _ = loading.load_tokenizer(tiny_dataset[0])
    model, _ = loading.load_model(str(script_checkpoints[block]), 'cpu', 'diffusion', 'test')
    x = torch.tensor(encode(prompt) + [model.config.mask_token_id] * 38).expand(2, 40)
    def sample(order):
        return sampling.generate(model, x, sampling.confidence_sample, steps=3, schedule='linear', order=order,
                                  temperature=1.0, generator=torch.Generator().manual_seed(1337))[0]
    assert [encode(s) for s in samples] == sample(order).tolist()
    assert all(not torch.equal(sample(other), sample(order)) for other in ORDERS if other != order)


def test_generate_diffusion_proofread_rewrites_the_flagged_tokens(script_checkpoints, tiny_dataset, tmp_path,
                                                                 monkeypatch, capsys):
    name, meta = tiny_dataset
    encode, decode = loading.load_tokenizer(name)
    ids = [i for i, c in enumerate(meta['itos']) if c != '\n'][:20] # one line of text
    text = decode(ids)
    flagged_at = [3, 7, 12]
    thresholds = []

    def flags_at(model, tokens, fixed=None, threshold=None): # the detector's verdict, so that the rewrite can be checked
        thresholds.append(threshold)
        flags = torch.zeros_like(tokens, dtype=torch.bool)
        flags[:, flagged_at] = True
        return flags
    monkeypatch.setattr(sampling, 'wrong_flags', flags_at)
    out = run_generate(monkeypatch, capsys, f'--out_dir={script_checkpoints[0]}', f'--proofread={text}', '--steps=2',
                       '--num_samples=3', f'--output={tmp_path / "s.txt"}', '--wrong_threshold=0.25')
    assert thresholds == [0.25]
    shown = ''.join(loading.WRONG_GLYPH if i in flagged_at else c for i, c in enumerate(text))
    assert f"flagged 3 of 20 tokens as [WRONG] (shown as {loading.WRONG_GLYPH}):\n{shown}\n" in out
    samples = (tmp_path / 's.txt').read_text(encoding='utf-8').split('\n---------------\n')[:-1]
    assert len(samples) == 3
    for sample in samples:
        written = encode(sample)
        assert len(written) == 20 and all(written[i] == ids[i] for i in range(20) if i not in flagged_at)
    # 3 masks in 2 cosine passes, after the detection pass; 3 samples x 3 tokens written
    assert re.search(r'3 samples of 20 tokens \(confidence, order random, commit schedule\): 3 forward passes', out)


def test_wrong_flags_by_argmax_or_by_threshold():
    """Argmax: [WRONG] must beat every word. Threshold: p([WRONG]) over everything but [MASK] above it,
    which also flags a doubt that a likelier word outvotes; fixed positions never."""
    n = len(WORD)
    doubt = torch.full((n,), -30.0)
    doubt[1], doubt[2] = 10.0, 0.0 # position 1: [WRONG] is the argmax; position 2: a real but outvoted doubt
    model = Denoiser(doubt=doubt.tolist())
    tokens = torch.zeros(1, n, dtype=torch.long)
    p = sampling.wrong_probs(model, tokens)[0]
    words = torch.zeros(V + 1)
    words[:V], words[V] = 0.0, doubt[2] # the logits at position 2 without [MASK]: word 2 % V has WORD[2]
    words[2 % V] = WORD[2]
    assert p[2].item() == pytest.approx(words.softmax(0)[V].item())
    assert sampling.wrong_flags(model, tokens)[0].nonzero().flatten().tolist() == [1]
    assert sampling.wrong_flags(model, tokens, threshold=p[2].item() / 2)[0].nonzero().flatten().tolist() == [1, 2]
    fixed = torch.zeros(1, n, dtype=torch.bool)
    fixed[0, 1] = True
    assert sampling.wrong_flags(model, tokens, fixed, threshold=p[2].item() / 2)[0].nonzero().flatten().tolist() == [2]
