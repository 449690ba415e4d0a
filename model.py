"""
One GPT class, two kinds of language model, chosen by config.model_type:
- 'gpt2': the classic autoregressive (causal) model, as in nanoGPT;
- 'diffusion': the same transformer with bidirectional attention, logits for every
  position and two extra tokens, [MASK] (still to be written) and [WRONG] (this token
  is incorrect). How those tokens are trained and sampled lives in diffusion.py:
  this file knows no training or sampling policy.
References: OpenAI's GPT-2 (tensorflow) and HuggingFace's transformers GPT-2, via nanoGPT.
"""

import math
import inspect
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


def rotary_tables(seq_len, head_dim, device, base=10000.0):
    """cos/sin tables for rotary position embeddings, shape (seq_len, head_dim/2)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate pairs (first half, second half) of the head dimension of x (B, nh, T, hs)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated * sin).type_as(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal for 'gpt2', bidirectional for 'diffusion'."""

    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.causal = config.model_type == 'gpt2'

    def forward(self, x, rotary=None, kv_cache=None, attn_mask=None, store=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        # the KV cache: keys/values of earlier positions are reused. AR generation stores
        # every new token; block diffusion stores a block once it is finished, and only reads
        # the cache while a block is still noisy: store = how many of the new tokens (the
        # leading ones) to append, None for all
        if kv_cache is not None:
            cached = 0 if kv_cache.get('k') is None else kv_cache['k'].size(2)
            if cached:
                k = torch.cat([kv_cache['k'], k], dim=2)
                v = torch.cat([kv_cache['v'], v], dim=2)
            if store is None or store > 0:
                end = k.size(2) if store is None else cached + store
                kv_cache['k'], kv_cache['v'] = k[:, :, :end], v[:, :, :end]
        # GPT.forward passes a mask whenever the pattern is not plain causal or plain full
        causal = self.causal and T > 1 and attn_mask is None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = SelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rotary=None, kv_cache=None, attn_mask=None, store=None):
        x = x + self.attn(self.ln_1(x), rotary, kv_cache, attn_mask, store)
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304 # GPT-2 vocab_size of 50257, padded up to nearest multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True # True: bias in Linears and LayerNorms, like GPT-2. False: a bit better and faster
    model_type: str = 'gpt2' # 'gpt2' (causal, next token) or 'diffusion' (bidirectional, every position)
    pos_encoding: str = 'learned' # 'learned' absolute positions (nanoGPT/GPT-2) or 'rope' (rotary on q/k)
    mask_token_id: int = -1 # diffusion only: id of [MASK] (= base vocab size)
    wrong_token_id: int = -1 # diffusion only: id of [WRONG] (= base vocab size + 1)
    time_conditioning: bool = False # diffusion only: add an embedding of the noise level to the input
    tie_embeddings: bool = True # one matrix for the token embedding and the output head (GPT-2); False: two
    embedding_init_std: float = 0.02 # std of the untied token embedding's init (1.0 = PyTorch's nn.Embedding default)
    diffusion_block: int = 0 # diffusion only: tokens denoised together (block diffusion, BD3-LM); attention is
                             # bidirectional inside a block, causal across blocks; 0 (or >= block_size) = whole sequence
    causal_clean: bool = False # block diffusion only: the clean text attends token by token (causally), so that its
                               # logits at position i also predict token i+1: one network drafts and verifies (TiDAR)

    def __post_init__(self):
        self.check()

    def check(self):
        """Raise ValueError, saying what to change, for a configuration no GPT can be built from."""
        for name in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        if self.model_type not in ('gpt2', 'diffusion'):
            raise ValueError(f"model_type must be 'gpt2' or 'diffusion', not {self.model_type!r}")
        if self.pos_encoding not in ('learned', 'rope'):
            raise ValueError(f"pos_encoding must be 'learned' or 'rope', not {self.pos_encoding!r}")
        if self.n_embd % self.n_head:
            below = self.n_embd - self.n_embd % self.n_head
            sizes = f"{below} or {below + self.n_head}" if below else f"{self.n_head}"
            raise ValueError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head} (every head gets "
                             f"n_embd/n_head channels): use n_embd={sizes}, or an n_head that divides {self.n_embd}")
        head_size = self.n_embd // self.n_head
        if self.pos_encoding == 'rope' and head_size % 2:
            sizes = ' or '.join(str(self.n_head * h) for h in (head_size - 1, head_size + 1) if h > 0)
            raise ValueError(f"pos_encoding='rope' needs an even head size, but n_embd/n_head = {self.n_embd}/{self.n_head} "
                             f"= {head_size}: use n_embd={sizes}, or pos_encoding='learned'")
        if isinstance(self.embedding_init_std, bool) or not (isinstance(self.embedding_init_std, (int, float)) and self.embedding_init_std > 0):
            raise ValueError(f"embedding_init_std must be a number > 0, not {self.embedding_init_std!r}")
        if self.tie_embeddings and self.embedding_init_std != 0.02: # the shared matrix is also the output head
            raise ValueError(f"embedding_init_std={self.embedding_init_std} needs tie_embeddings=False: a tied embedding "
                             f"is also the output head, which starts at std 0.02")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout!r}")
        if self.model_type == 'diffusion':
            ids = (self.mask_token_id, self.wrong_token_id)
            if not all(0 <= i < self.vocab_size for i in ids) or ids[0] == ids[1]:
                raise ValueError(f"a diffusion model needs two different token ids below vocab_size={self.vocab_size} "
                                 f"for [MASK] and [WRONG], not mask_token_id={ids[0]}, wrong_token_id={ids[1]}")
        elif self.time_conditioning:
            raise ValueError("time_conditioning is for diffusion models: set time_conditioning=False or model_type='diffusion'")
        if not isinstance(self.diffusion_block, int) or isinstance(self.diffusion_block, bool) or self.diffusion_block < 0:
            raise ValueError(f"diffusion_block must be an integer >= 0 (0 = the whole sequence), not {self.diffusion_block!r}")
        if self.model_type == 'diffusion' and 0 < self.diffusion_block < self.block_size:
            if self.block_size % self.diffusion_block: # blocks must tile the context: training cuts rows into them
                divisors = [d for d in range(1, self.block_size + 1) if self.block_size % d == 0]
                closest = min(divisors, key=lambda d: abs(d - self.diffusion_block))
                raise ValueError(f"diffusion_block={self.diffusion_block} does not divide block_size={self.block_size}: "
                                 f"use a divisor, e.g. diffusion_block={closest} (or 0 for the whole sequence)")
            if self.time_conditioning: # one noise level per row, where a block model has one per block
                raise ValueError(f"time_conditioning does not go with block diffusion (diffusion_block={self.diffusion_block} "
                                 f"< block_size={self.block_size}): set time_conditioning=False or diffusion_block=0")
        elif self.causal_clean:
            raise ValueError(f"causal_clean needs a block diffusion model (model_type='diffusion', 0 < diffusion_block < "
                             f"block_size), not model_type={self.model_type!r}, diffusion_block={self.diffusion_block}")


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        config.check() # again: the config may have been changed since it was made
        self.config = config

        self.transformer = nn.ModuleDict(dict(
            wte = nn.Embedding(config.vocab_size, config.n_embd),
            drop = nn.Dropout(config.dropout),
            h = nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f = LayerNorm(config.n_embd, bias=config.bias),
        ))
        if config.pos_encoding == 'learned':
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            cos, sin = rotary_tables(config.block_size, config.n_embd // config.n_head, 'cpu')
            self.register_buffer('rope_cos', cos, persistent=False)
            self.register_buffer('rope_sin', sin, persistent=False)
        if config.time_conditioning:
            # noise level t in [0,1] -> sinusoidal features -> a vector added to every position
            self.time_mlp = nn.Sequential(nn.Linear(64, config.n_embd), nn.GELU(), nn.Linear(config.n_embd, config.n_embd))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings: # weight tying: https://paperswithcode.com/method/weight-tying
            self.transformer.wte.weight = self.lm_head.weight
        # the [MASK] logit bias of the training controller, which sampling applies too
        # (diffusion.with_mask_bias): kept here only so that the state dict carries it with the
        # weights and DDP broadcasts it; forward never reads it
        self.register_buffer('mask_logit_bias', torch.tensor(0.0))

        self.apply(self._init_weights)
        # scaled init of the residual projections, per the GPT-2 paper
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02/math.sqrt(2 * config.n_layer))
        if not config.tie_embeddings: # an input embedding of its own may start larger (PyTorch's nn.Embedding default: N(0,1))
            torch.nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=config.embedding_init_std)

    def get_num_params(self, non_embedding=True):
        """Number of parameters, less the position embeddings by default (token embeddings count:
        tied, they are the output head; untied, they are as big as it)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pos_encoding == 'learned':
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def denoising_block(self):
        """Tokens a diffusion model denoises together when it is a block model (0 < diffusion_block
        < block_size), else None: a full-sequence model, or an AR model."""
        block = self.config.diffusion_block
        return block if self.config.model_type == 'diffusion' and 0 < block < self.config.block_size else None

    def attention_mask(self, t, pos_offset, cached, two_stream, device, store=None, copies=0, ar=False):
        """The (queries, keys) bool mask of t new tokens at positions pos_offset.., after
        `cached` keys of positions 0..cached-1 in the KV cache; None where SDPA's own
        is_causal (AR) or no mask (full-sequence diffusion) is the same thing. ar: token-causal
        (the clean stream of a causal_clean model); copies: see draft_verify_mask."""
        block = self.denoising_block
        if two_stream:
            return two_stream_mask(t, block, device, self.config.causal_clean)
        if copies:
            return draft_verify_mask(store, (t - store) // (copies + 1), copies, cached, device)
        if self.config.model_type == 'gpt2' or ar:
            if not cached and not ar:
                return None # SDPA's is_causal
            block = 1 # with a cache, the queries sit at the end of a longer key sequence
        if block is None or pos_offset // block == (pos_offset + t - 1) // block:
            return None # the queries share one block, and every key is in it or before it
        q_pos, k_pos = torch.arange(pos_offset, pos_offset + t, device=device), torch.arange(pos_offset + t, device=device)
        mask = block_causal_mask(q_pos, k_pos, block)
        if self.config.causal_clean and store: # the finished blocks riding along are clean text: token-causal
            mask[:store] &= block_causal_mask(q_pos[:store], k_pos, 1)
        return mask

    def forward(self, idx, targets=None, noise_level=None, kv_cache=None, pos_offset=0, clean=None, store=None,
                both_streams=False, ar=False, copies=0):
        """idx (B, T) token ids. Returns (logits, loss).
        gpt2: with targets, logits for every position and the next-token loss; without,
        logits of the last position only (inference), as in nanoGPT.
        diffusion: float32 logits (B, T, V) for every position, without the [MASK] bias (sampling
        and training policy, applied by diffusion.py); loss None (diffusion.py's business).
        noise_level (B,) in [0,1] feeds time_conditioning.
        A block diffusion model trained in one pass takes the clean text too, clean (B, T): it
        runs [idx ; clean] side by side (2T positions, both at 0..T-1, two_stream_mask) and returns
        the logits of the noisy half; a full-sequence model ignores clean. Without clean, a block
        model sees idx block-causally, as sampling needs: finished blocks clean, the last noisy.
        kv_cache: a list (one dict per layer) of the keys and values of positions 0..pos_offset-1;
        the new tokens are appended to it, or only the first `store` of them.
        both_streams: the two-stream pass returns the logits of both halves, (B, 2T, V), the clean
        half last. ar: the tokens attend token-causally, as the clean stream of a causal_clean
        model does, whose logits at position i predict token i+1. copies > 0: idx is [store clean
        tokens ; a block of L clean tokens ; `copies` noisy copies of that block] (draft_verify_mask)."""
        device = idx.device
        b, t = idx.size()
        length = (t - (store or 0)) // (copies + 1) # the block of the copies
        n_pos = t - copies * length # positions of the new tokens: the copies reuse the block's
        assert pos_offset + n_pos <= self.config.block_size, f"Cannot forward sequence of length {pos_offset + n_pos}, block size is only {self.config.block_size}"
        two_stream = clean is not None and self.denoising_block is not None
        pos = torch.arange(pos_offset, pos_offset + n_pos, dtype=torch.long, device=device)
        if copies:
            pos = torch.cat([pos, pos[n_pos - length:].repeat(copies)])
        if two_stream:
            assert kv_cache is None and pos_offset == 0 and clean.shape == idx.shape, "the two-stream pass takes whole rows, no cache"
            idx, pos = torch.cat([idx, clean], 1), pos.repeat(2)
        x = self.transformer.wte(idx)
        rotary = None
        if self.config.pos_encoding == 'learned':
            x = x + self.transformer.wpe(pos)
        else:
            rotary = (self.rope_cos[pos], self.rope_sin[pos])
        if self.config.time_conditioning:
            assert noise_level is not None, "time_conditioning needs the noise level of each row"
            x = x + self.time_mlp(timestep_features(noise_level, 64).to(x.dtype))[:, None, :]
        cached = 0 if kv_cache is None or kv_cache[0].get('k') is None else kv_cache[0]['k'].size(2)
        attn_mask = self.attention_mask(t, pos_offset, cached, two_stream, device, store, copies, ar)
        x = self.transformer.drop(x)
        for i, layer in enumerate(self.transformer.h):
            x = layer(x, rotary, None if kv_cache is None else kv_cache[i], attn_mask, store)
        x = self.transformer.ln_f(x if both_streams else x[:, :t]) # without both_streams, the noisy half of a two-stream pass

        if self.config.model_type == 'diffusion':
            return self.lm_head(x).float(), None # float32: every consumer needs them so
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            return logits, loss
        # inference-time mini-optimization: only forward the lm_head on the very last position
        return self.lm_head(x[:, [-1], :]), None

    def crop_block_size(self, block_size):
        """Model surgery to decrease the block size if necessary, e.g. to load the GPT-2
        checkpoint (block size 1024) and use a smaller one."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if self.config.pos_encoding == 'learned':
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        else:
            self.rope_cos, self.rope_sin = self.rope_cos[:block_size], self.rope_sin[:block_size]

    def to_diffusion(self, diffusion_block=0):
        """Model surgery that turns an autoregressive model into a diffusion model: attention
        becomes bidirectional (inside blocks of diffusion_block tokens, if > 0) and the embedding
        and head (tied or not) grow by two rows, [MASK] and [WRONG], after the vocabulary. They start
        at the mean of the old rows plus a little noise: typical tokens, not random directions."""
        assert self.config.model_type == 'gpt2', "already a diffusion model"
        def grown(old):
            new_rows = old.mean(0, keepdim=True) + 0.02 * torch.randn(2, old.size(1), device=old.device, dtype=old.dtype)
            return nn.Parameter(torch.cat([old, new_rows]))
        base = self.lm_head.weight.size(0)
        self.lm_head.weight = grown(self.lm_head.weight.data)
        self.transformer.wte.weight = self.lm_head.weight if self.config.tie_embeddings else grown(self.transformer.wte.weight.data)
        self.transformer.wte.num_embeddings = self.lm_head.out_features = self.config.vocab_size = base + 2
        self.config.mask_token_id, self.config.wrong_token_id = base, base + 1
        self.config.model_type = 'diffusion'
        self.config.diffusion_block = diffusion_block
        self.config.check()
        for layer in self.transformer.h:
            layer.attn.causal = False

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """Load OpenAI GPT-2 weights through HuggingFace transformers (imported lazily).
        model_type is 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' or a local path
        holding a HuggingFace GPT-2 checkpoint."""
        override_args = override_args or {}
        assert all(k in ('dropout',) for k in override_args), "only dropout can be overridden"
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ImportError("loading GPT-2 weights needs the transformers package: pip install transformers")
        print(f"loading weights from pretrained gpt: {model_type}")
        model_hf = GPT2LMHeadModel.from_pretrained(model_type)
        hf = model_hf.config
        config = GPTConfig(block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer,
                           n_head=hf.n_head, n_embd=hf.n_embd, bias=True, **override_args)
        model = GPT(config)
        sd = model.state_dict()
        sd_hf = model_hf.state_dict()
        # HF uses Conv1D modules for these, so their weights are transposed
        transposed = ['attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight']
        keys_hf = [k for k in sd_hf if not k.endswith('.attn.masked_bias') and not k.endswith('.attn.bias')]
        keys = [k for k in sd if k != 'mask_logit_bias']
        assert len(keys_hf) == len(keys), f"mismatched keys: {len(keys_hf)} != {len(keys)}"
        for k in keys_hf:
            with torch.no_grad():
                if any(k.endswith(w) for w in transposed):
                    assert sd_hf[k].shape[::-1] == sd[k].shape
                    sd[k].copy_(sd_hf[k].t())
                else:
                    assert sd_hf[k].shape == sd[k].shape
                    sd[k].copy_(sd_hf[k])
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        # 2D tensors (matmul weights, embeddings) decay; biases and layernorm gains don't
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [
            {'params': decay_params, 'weight_decay': weight_decay},
            {'params': nodecay_params, 'weight_decay': 0.0}
        ]
        num_decay_params = sum(p.numel() for p in decay_params)
        num_nodecay_params = sum(p.numel() for p in nodecay_params)
        print(f"num decayed parameter tensors: {len(decay_params)}, with {num_decay_params:,} parameters")
        print(f"num non-decayed parameter tensors: {len(nodecay_params)}, with {num_nodecay_params:,} parameters")
        # the fused AdamW is faster on CUDA
        fused_available = 'fused' in inspect.signature(torch.optim.AdamW).parameters
        use_fused = fused_available and device_type == 'cuda'
        extra_args = dict(fused=True) if use_fused else dict()
        optimizer = torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)
        print(f"using fused AdamW: {use_fused}")
        return optimizer

    def estimate_mfu(self, fwdbwd_per_iter, dt):
        """Model flops utilization in units of A100 bf16 peak FLOPS (312 TFLOPS), per the PaLM paper
        Appendix B; a block diffusion model trains on rows of 2T positions (noisy and clean text)."""
        N = self.get_num_params()
        cfg = self.config
        L, H, Q = cfg.n_layer, cfg.n_head, cfg.n_embd//cfg.n_head
        T = cfg.block_size * (2 if self.denoising_block else 1)
        flops_per_token = 6*N + 12*L*H*Q*T
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        flops_achieved = flops_per_iter * (1.0/dt)
        return flops_achieved / 312e12

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_kv_cache=True, generator=None):
        """Autoregressive sampling: extend idx (B, T) by max_new_tokens tokens.
        With use_kv_cache, each step feeds only the newest token and reuses the keys and
        values of earlier ones; the result equals the uncached path. Once the sequence
        outgrows block_size the context slides, every position moves, and the cache is
        rebuilt from the cropped context at each step (exactly what the uncached path does).
        A causal_clean block model samples its clean stream (AR mode), words only."""
        ar = self.config.causal_clean
        assert self.config.model_type == 'gpt2' or ar, "generate() is autoregressive; diffusion models sample with diffusion.py"
        kv_cache, cached_len = None, 0
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            if not use_kv_cache:
                logits, _ = self(idx_cond, ar=ar)
            elif kv_cache is not None and idx.size(1) <= self.config.block_size:
                logits, _ = self(idx_cond[:, cached_len:], kv_cache=kv_cache, pos_offset=cached_len, ar=ar)
            else:
                kv_cache = [{} for _ in self.transformer.h]
                logits, _ = self(idx_cond, kv_cache=kv_cache, ar=ar)
            cached_len = idx_cond.size(1)
            logits = logits[:, -1, :self.config.mask_token_id if ar else None] / temperature # [MASK], [WRONG] come last
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('Inf')
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def block_causal_mask(q_pos, k_pos, block):
    """(Tq, Tk) bool, True where a query may attend a key, from absolute positions: a key is
    visible when its block is not after the query's. block=1 is the causal mask of AR."""
    return k_pos[None, :] // block <= q_pos[:, None] // block


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


def draft_verify_mask(n_pending, length, copies, cached, device):
    """The mask of one speculative pass of a causal_clean block model, its new tokens laid out
    as [pending ; block ; copy 1 .. copy `copies`]: n_pending clean tokens of finished blocks,
    the `length` clean tokens of the block being written (written and drafted ones, to verify),
    and noisy copies of that block at its positions (each with some tokens given and [MASK]
    elsewhere, to draft the rest), after `cached` keys of earlier blocks. Clean tokens attend
    token-causally to the cache and the clean tokens; a copy attends to the cache, the pending
    tokens and itself, as a noisy block does in training (two_stream_mask)."""
    n_clean, n_copies = n_pending + length, copies * length
    clean = torch.ones(n_clean, n_clean, dtype=torch.bool, device=device).tril()
    copy_id = torch.arange(n_copies, device=device) // length
    sees_clean = (torch.arange(n_clean, device=device) < n_pending).expand(n_copies, n_clean)
    rows = torch.cat([torch.cat([clean, torch.zeros(n_clean, n_copies, dtype=torch.bool, device=device)], 1),
                      torch.cat([sees_clean, copy_id[:, None] == copy_id[None, :]], 1)], 0)
    return torch.cat([torch.ones(n_clean + n_copies, cached, dtype=torch.bool, device=device), rows], 1)


def timestep_features(t, dim):
    """Sinusoidal features of a noise level t (B,) in [0,1], shape (B, dim)."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(dim // 2, device=t.device, dtype=torch.float32) / (dim // 2))
    angles = 1000.0 * t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
