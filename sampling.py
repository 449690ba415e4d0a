"""
Writing with a diffusion model of nanoGPT-diffusion: the samplers, their one table of
presets and option rules, generate() (any length, block by block with a KV cache) and
proofread(). A sampler gets x (B, T): [MASK] at the positions to write, fixed tokens (a
prompt or a template) everywhere else, which it never changes. It returns the written
tokens, with no [MASK] or [WRONG] left, and the number of forward passes it used.
Everything is vectorised over the batch: no Python loop over rows, no host sync per row.
"""

import math

import torch

from diffusion import forbid, with_mask_bias
from model import KVCache

# ----------------------------------------------------------------------------
# drawing tokens

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


def block_causal_mask(q_pos, k_pos, block):
    """(Tq, Tk) bool, True where a query may attend a key, from absolute positions: a key is
    visible when its block is not after the query's. block=1 is the causal mask of AR."""
    return k_pos[None, :] // block <= q_pos[:, None] // block


def denoiser_logits(model, x, context=None):
    """Float logits of a diffusion model on x, with its [MASK] bias (with_mask_bias). A block
    model sees x block-causally: each block itself and the blocks before it. context, from
    generate(), is a dict: x is then one block that sees the clean blocks before it through the
    KV cache context['cache'], which it reads without extending. Finished blocks not yet in
    the cache (context['pending'], the tokens right before x) ride along in the first pass,
    which stores them: no pass of their own."""
    pending, cache = (context.pop('pending', x[:, :0]), context['cache']) if context else (x[:, :0], None)
    P, cached, block = pending.size(1), 0 if cache is None else cache.length, model.denoising_block
    t = P + x.size(1)
    mask = None # a full-sequence model, or queries that share one block and see every key
    if block is not None and cached // block != (cached + t - 1) // block:
        q_pos, k_pos = torch.arange(cached, cached + t, device=x.device), torch.arange(cached + t, device=x.device)
        mask = block_causal_mask(q_pos, k_pos, block)
        if model.config.causal_clean and P: # the finished blocks riding along are clean text: token-causal
            mask[:P] &= block_causal_mask(q_pos[:P], k_pos, 1)
    logits, _ = model(torch.cat([pending, x], 1), kv_cache=cache, attn_mask=mask)
    if cache is not None:
        cache.crop(cached + P) # keep the clean blocks, not the noisy one
    return with_mask_bias(logits[:, P:], model.config.mask_token_id, model.mask_logit_bias)


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
                      generator=None, order='confidence', commit='schedule', threshold=0.9, on_step=None, context=None):
    """MaskGIT/LLaDA-style sampling. Each step proposes a word at every masked position
    ([MASK] and [WRONG] forbidden) and commits some of the proposals. How many, per row:
      commit='schedule'   the share of the schedule: a row with n masked positions at step s
                          keeps floor(n * m((s+1)/steps) / m(s/steps)) masked, 0 at the last
                          step, so exactly `steps` passes;
      commit='threshold'  every proposal whose confidence exceeds threshold, and at least
                          the surest one (Fast-dLLM): easy stretches go fast, hard ones slow;
                          it stops when nothing is masked, and commits everything left at
                          pass `steps` (its cap).
    Confidence is the model's probability of the proposed word at temperature 1, so that
    greedy sampling still ranks it. Which proposals, on the schedule: order='confidence', the
    surest first; order='random', a random choice: the ancestral sampler of masked diffusion
    (MDLM), which keeps the model's diversity where committing the surest tokens first
    drifts toward frequent words; order='left_to_right', the leftmost masked positions
    (inside a small block: next-token order, each token written with all the clean text
    before it, which measured best at matched diversity).
    on_step(step, tokens) is called after each pass; context: see denoiser_logits.
    Returns (tokens, forward_passes)."""
    check_options('confidence', dict(steps=steps, schedule=schedule, commit=commit, threshold=threshold,
                                     **({'order': order} if commit == 'schedule' else {}))) # threshold: its own order
    mask_id, wrong_id = model.config.mask_token_id, model.config.wrong_token_id
    passes = 0
    for step in range(steps):
        masked = x == mask_id
        if not masked.any(): # one host sync per step, not per row
            break
        words = forbid(denoiser_logits(model, x, context), mask_id, wrong_id)
        proposal = sample_tokens(words, temperature, top_k, top_p, generator)
        n_masked = masked.sum(1)
        # which proposals (score, highest first) and how many (n_commit) per row
        if commit == 'threshold':
            score = token_probs(words, proposal)
            n_commit = ((score > threshold) & masked).sum(1).clamp(min=1)
        else:
            # floor(n * ratio) stay masked, nudged up so that float rounding cannot take an exact
            # integer one below it, and at least one token written per step
            ratio = masked_fraction((step + 1) / steps, schedule) / masked_fraction(step / steps, schedule)
            n_commit = n_masked - torch.minimum((n_masked * (ratio * (1 + 1e-6))).long(), n_masked - 1).clamp(min=0)
            if order == 'random':
                score = torch.rand(x.shape, generator=generator, device=x.device)
            elif order == 'left_to_right':
                score = -torch.arange(x.size(1), device=x.device).expand(x.shape).float()
            else:
                score = token_probs(words, proposal)
        if step == steps - 1:
            n_commit = n_masked
        commit_now = masked & (rank_descending(score.masked_fill(~masked, float('-inf'))) < n_commit[:, None])
        x = torch.where(commit_now, proposal, x)
        passes += 1
        if on_step is not None:
            on_step(passes, x)
    return x, passes


def sampling_probs(logits, words, temperature, top_k, top_p):
    """The distribution over the words (the ids below [MASK] and [WRONG]) that sample_tokens
    draws from, as probabilities: one-hot at temperature 0."""
    return filter_logits(logits[..., :words], temperature, top_k, top_p).softmax(-1)


def draw(probs, generator):
    """One token per position from probabilities (..., V)."""
    return torch.multinomial(probs.reshape(-1, probs.size(-1)), 1, generator=generator).view(probs.shape[:-1])


def draft_verify_mask(n_pending, length, cached, device):
    """The mask of one speculative pass, its new tokens laid out as [pending ; block ; copy]:
    n_pending clean tokens of finished blocks, the `length` clean tokens of the block being
    written (written and drafted ones, to verify), and a noisy copy of that block at its
    positions (some tokens given, [MASK] elsewhere, to draft the rest), after `cached` keys of
    earlier blocks. Clean tokens attend token-causally to the cache and the clean tokens; the
    copy attends to the cache, the pending tokens and itself, as a noisy block does in
    training (diffusion.two_stream_mask)."""
    n_clean = n_pending + length
    clean = torch.ones(n_clean, n_clean, dtype=torch.bool, device=device).tril()
    sees_clean = (torch.arange(n_clean, device=device) < n_pending).expand(length, n_clean)
    rows = torch.cat([torch.cat([clean, torch.zeros(n_clean, length, dtype=torch.bool, device=device)], 1),
                      torch.cat([sees_clean, torch.ones(length, length, dtype=torch.bool, device=device)], 1)], 0)
    return torch.cat([torch.ones(n_clean + length, cached, dtype=torch.bool, device=device), rows], 1)


@torch.no_grad()
def speculative_sample(model, x, temperature=1.0, top_k=None, top_p=None, generator=None, on_step=None, context=None):
    """Speculative sampling in one network (TiDAR, Liu et al. 2025): a block model trained with
    a causal clean stream (causal_clean) drafts tokens by diffusion and verifies them as an AR
    model, in the same forward pass. x is one block (generate() calls it block by block), its
    positions written left to right. Each pass runs [pending ; block ; copy] (draft_verify_mask):
    - the clean block holds the written tokens and the drafts of the last pass; its logits at
      position i give the AR distribution p of token i+1. The drafts are checked in order
      (Leviathan et al. 2023): draft d, drawn from q, is kept with probability min(1, p(d)/q(d));
      at the first rejection the token is drawn from max(0, p - q), normalised, and after the
      last draft from p. Every pass writes one token or more, each distributed exactly as the
      AR mode would write it: the drafts change the speed, never the text's distribution;
    - a noisy copy of the block drafts the next tokens, q, with every draft of this pass given
      as if it were kept (the token written from p or from the residual is not known before
      the pass); after a rejection, the drafts of the last pass after it are still drafts (none
      of them was read), and the copy's drafts go after them.
    The token at the start of the text, which no clean token comes before, is the draft's.
    Rows accept different numbers of drafts; the block is done when every row is.
    Temperature, top_k and top_p shape p and q alike; fixed positions are kept and not drawn.
    on_step(passes, tokens) sees the drafts too: a rejected one is replaced in place.
    Returns (tokens, forward_passes)."""
    if not model.config.causal_clean:
        raise ValueError("the speculative sampler needs a block model with a causal clean stream: "
                         "train one with --ar_loss_weight>0")
    mask_id, words = model.config.mask_token_id, model.config.words
    R, L = x.shape
    if context is None: # a block at the start of the text
        context = {'cache': KVCache(), 'offset': 0}
    pending, cache = context.pop('pending', x[:, :0]), context['cache']
    pos = torch.arange(L, device=x.device)
    fixed = x != mask_id
    tokens = x.clone() # written tokens, then drafts, then [MASK] (or fixed tokens)
    written = torch.zeros(R, dtype=torch.long, device=x.device) # leading positions written, per row
    drafted = torch.zeros(R, L, dtype=torch.bool, device=x.device)
    q = torch.zeros(R, L, words, device=x.device) # the draft distribution at each drafted position
    passes = 0
    while ((pos >= written[:, None]) & ~fixed).any(): # one host sync per pass, not per row
        end = written + drafted.sum(1) # drafts run from written to end
        copy = torch.where((pos < end[:, None]) | fixed, tokens, mask_id)
        P, cached = pending.size(1), cache.length
        positions = torch.cat([torch.arange(cached, cached + P + L, device=x.device), context['offset'] + pos])
        logits, _ = model(torch.cat([pending, tokens, copy], 1), kv_cache=cache, pos=positions,
                          attn_mask=draft_verify_mask(P, L, cached, x.device))
        cache.crop(cached + P) # the finished blocks stay, the block being written does not
        passes += 1
        clean, copy_logits = logits[:, :P + L], logits[:, P + L:]
        first = clean[:, P - 1] if P else copy_logits[:, 0] # what comes before position 0
        p = sampling_probs(torch.cat([first[:, None], clean[:, P:P + L - 1]], 1), words, temperature, top_k, top_p)
        pending = pending[:, :0] # stored in the cache now
        # verify: fixed and written positions pass, a draft with probability min(1, p/q)
        p_token, q_token = (dist.gather(-1, tokens.clamp(max=words - 1)[..., None]).squeeze(-1) for dist in (p, q))
        u = torch.rand(R, L, generator=generator, device=x.device)
        ok = fixed | (pos < written[:, None]) | (drafted & (u * q_token < p_token))
        stop = torch.where(ok.all(1), L, (~ok).long().argmax(1)) # the first position that fails, per row
        at = stop.clamp(max=L - 1)[:, None, None].expand(R, 1, words)
        residual = (p.gather(1, at) - q.gather(1, at) * drafted.gather(1, at[..., 0])[..., None]).clamp(min=0).squeeze(1)
        new = draw(residual + (residual.sum(-1, keepdim=True) == 0) * 1.0, generator) # rows with stop == L draw a filler
        tokens = torch.where(pos == stop[:, None], new[:, None], tokens)
        # the next drafts, after the drafts of the last pass that are still unread
        q_copy = sampling_probs(copy_logits, words, temperature, top_k, top_p)
        after = (pos > stop[:, None]) & ~fixed
        from_copy = after & (pos >= end[:, None])
        tokens = torch.where(from_copy, draw(q_copy, generator), tokens)
        q = torch.where(from_copy[..., None], q_copy, q)
        drafted, written = after, (stop + 1).clamp(max=L)
        if on_step is not None: # the written tokens and the drafts the next pass verifies
            on_step(passes, torch.where((pos < written[:, None]) | fixed | drafted, tokens, mask_id))
    return tokens, passes


def token_probs(logits, tokens):
    """softmax(logits) at the given tokens, (B, T), without a (B, T, V) softmax."""
    return (logits.gather(-1, tokens[..., None]).squeeze(-1) - logits.logsumexp(-1)).exp()


def rank_descending(scores):
    """Rank of each entry within its row, 0 for the largest: comparing it with a (B, 1)
    tensor of counts selects a different number of top entries in each row."""
    return scores.argsort(-1, descending=True).argsort(-1)


@torch.no_grad()
def generate(model, x, sample_fn, on_step=None, **sampler_kwargs):
    """Fill every [MASK] of x (B, N), N of any length, with sample_fn (one of SAMPLERS, with
    sampler_kwargs); every other position stays as given.
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
                cache, cache_start, cache_end = KVCache(), window, window
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


# ----------------------------------------------------------------------------
# the samplers by name, their options and the named settings the benchmark compares

SAMPLERS = {'confidence': confidence_sample, 'refine': refine_sample, 'speculative': speculative_sample}
OPTIONS = {'confidence': ('steps', 'schedule', 'order', 'commit', 'threshold'), 'refine': ('max_steps',), 'speculative': ()}
CHOICES = {'schedule': ('cosine', 'linear'), 'order': ('confidence', 'random', 'left_to_right'), 'commit': ('schedule', 'threshold')}
# (sampler, its options beyond the defaults), by the name bench.py, gpu_check.py and --preset give them
PRESETS = {'refine': ('refine', {}),
           'confidence': ('confidence', dict(order='confidence')),
           'ancestral': ('confidence', dict(order='random')),
           'left_to_right': ('confidence', dict(order='left_to_right')),
           'threshold': ('confidence', dict(commit='threshold'))}


def check_options(sampler, options):
    """ValueError, saying what to change, for a sampler's options: one it does not take, a
    choice it does not know, or a count or threshold out of range."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (use {', '.join(map(repr, SAMPLERS))})")
    for key, value in options.items():
        if key not in OPTIONS[sampler]:
            takes = [s for s in SAMPLERS if key in OPTIONS[s]]
            raise ValueError(f"--{key} works with {' or '.join(f'--sampler={s}' for s in takes) or 'no sampler'}, not --sampler={sampler}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ValueError(f"unknown {key} {value!r} (use {', '.join(map(repr, CHOICES[key]))})")
    for key, low in (('steps', 1), ('max_steps', 0)):
        if options.get(key, low) < low:
            raise ValueError(f"{key} must be at least {low}, not {options[key]}")
    if not 0 < options.get('threshold', 0.5) <= 1:
        raise ValueError(f"threshold must be in (0, 1], not {options['threshold']}")
    if options.get('commit', 'schedule') != 'schedule' and options.get('order', 'confidence') != 'confidence':
        raise ValueError(f"commit={options['commit']!r} picks the surest proposals itself: it does not go with order={options['order']!r}")
