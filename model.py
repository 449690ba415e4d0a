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

    def forward(self, x, rotary=None, kv_cache=None, layer=0, attn_mask=None, is_causal=False):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if kv_cache is not None: # the keys and values of earlier positions, reused
            k, v = kv_cache.append(layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
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

    def forward(self, x, rotary, kv_cache, layer, attn_mask, is_causal):
        x = x + self.attn(self.ln_1(x), rotary, kv_cache, layer, attn_mask, is_causal)
        return x + self.mlp(self.ln_2(x))


def special_token_ids(words):
    """The ids of [MASK] and [WRONG] in a diffusion model's vocabulary: right after its `words`
    ordinary tokens, so that every word keeps the id it has in the tokenizer and an AR model."""
    return words, words + 1


class KVCache:
    """The keys and values of positions 0..length-1, per layer. AR sampling keeps every new
    token; a block sampler runs a noisy block against the cache and crops it back afterwards,
    keeping a block only once it is finished (clean)."""

    def __init__(self):
        self.k, self.v = {}, {}

    @property
    def length(self):
        return self.k[0].size(2) if self.k else 0

    def append(self, layer, k, v):
        """The layer's cached keys and values followed by the new ones, which are kept."""
        if layer in self.k:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def crop(self, length):
        """Forget every position from `length` on."""
        for layer in self.k:
            self.k[layer], self.v[layer] = self.k[layer][:, :, :length], self.v[layer][:, :, :length]


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
    mask_token_id: int = -1 # diffusion, or AR trained on masked inputs: [MASK] and [WRONG] are the last two ids,
    wrong_token_id: int = -1 # after the words (-1: none for AR, set from vocab_size for diffusion)
    diffusion_block: int = 0 # diffusion only: tokens denoised together (block diffusion, BD3-LM), attending
                             # bidirectionally inside a block and causally across blocks; 0 (or >= block_size) = whole sequence
    causal_clean: bool = False # block diffusion only: the clean text attends token by token (causally), so that its
                               # logits at position i also predict token i+1: one network drafts and verifies (TiDAR)

    def __post_init__(self):
        if self.model_type == 'diffusion' and self.mask_token_id == self.wrong_token_id == -1:
            self.mask_token_id, self.wrong_token_id = special_token_ids(self.words)
        self.check()

    @property
    def words(self):
        """Number of ordinary tokens: the ids below [MASK] and [WRONG] (every id of an AR model)."""
        return self.vocab_size - 2 if self.model_type == 'diffusion' or self.mask_token_id >= 0 else self.vocab_size

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
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout!r}")
        if (self.model_type == 'diffusion' or self.mask_token_id >= 0) and (self.mask_token_id, self.wrong_token_id) != special_token_ids(self.words):
            raise ValueError(f"a model's [MASK] and [WRONG] are its last two ids, {special_token_ids(self.words)} "
                             f"of vocab_size={self.vocab_size}, not {self.mask_token_id} and {self.wrong_token_id}")
        if not isinstance(self.diffusion_block, int) or isinstance(self.diffusion_block, bool) or self.diffusion_block < 0:
            raise ValueError(f"diffusion_block must be an integer >= 0 (0 = the whole sequence), not {self.diffusion_block!r}")
        if self.model_type == 'diffusion' and 0 < self.diffusion_block < self.block_size:
            if self.block_size % self.diffusion_block: # blocks must tile the context: training cuts rows into them
                divisors = [d for d in range(1, self.block_size + 1) if self.block_size % d == 0]
                closest = min(divisors, key=lambda d: abs(d - self.diffusion_block))
                raise ValueError(f"diffusion_block={self.diffusion_block} does not divide block_size={self.block_size}: "
                                 f"use a divisor, e.g. diffusion_block={closest} (or 0 for the whole sequence)")
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
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight # https://paperswithcode.com/method/weight-tying
        # the [MASK] logit bias of the training controller, which sampling applies too
        # (diffusion.with_mask_bias): kept here only so that the state dict carries it with the
        # weights and DDP broadcasts it; forward never reads it
        self.register_buffer('mask_logit_bias', torch.tensor(0.0))

        self.apply(self._init_weights)
        # scaled init of the residual projections, per the GPT-2 paper
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02/math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        """Number of parameters, less the position embeddings by default (the token embeddings
        count: they are also the output head)."""
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

    def forward(self, idx, targets=None, kv_cache=None, attn_mask=None, pos=None):
        """idx (B, T) token ids at positions pos (T,), by default right after the kv_cache's.
        attn_mask (T, cached + T) bool, True where a query may attend a key; None: the model's own
        pattern, causal for 'gpt2' and full for 'diffusion'. kv_cache (a KVCache) gets the new keys.
        gpt2: with targets, logits for every position and the next-token loss; without,
        logits of the last position only (inference), as in nanoGPT.
        diffusion: float32 logits (B, T, V) for every position; the losses are diffusion.py's."""
        b, t = idx.size()
        cached = 0 if kv_cache is None else kv_cache.length
        if pos is None:
            assert cached + t <= self.config.block_size, f"Cannot forward sequence of length {cached + t}, block size is only {self.config.block_size}"
            pos = torch.arange(cached, cached + t, dtype=torch.long, device=idx.device)
        causal = self.config.model_type == 'gpt2' and attn_mask is None and t > 1
        if causal and cached: # the queries sit at the end of a longer key sequence
            attn_mask, causal = causal_mask(t, cached, idx.device), False
        x = self.transformer.wte(idx)
        rotary = None
        if self.config.pos_encoding == 'learned':
            x = x + self.transformer.wpe(pos)
        else:
            rotary = (self.rope_cos[pos], self.rope_sin[pos])
        x = self.transformer.drop(x)
        for i, layer in enumerate(self.transformer.h):
            x = layer(x, rotary, kv_cache, i, attn_mask, causal)
        x = self.transformer.ln_f(x)
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
        grows by two rows, [MASK] and [WRONG], after the vocabulary. They start at the mean of
        the old rows plus a little noise: typical tokens, not random directions."""
        assert self.config.model_type == 'gpt2', "already a diffusion model"
        old = self.lm_head.weight.data[:self.config.words] # an AR model trained on masked inputs has the rows already
        new_rows = old.mean(0, keepdim=True) + 0.02 * torch.randn(2, old.size(1), device=old.device, dtype=old.dtype)
        self.lm_head.weight = self.transformer.wte.weight = nn.Parameter(torch.cat([old, new_rows]))
        self.transformer.wte.num_embeddings = self.lm_head.out_features = self.config.vocab_size = old.size(0) + 2
        self.config.mask_token_id, self.config.wrong_token_id = special_token_ids(old.size(0))
        self.config.model_type = 'diffusion'
        self.config.diffusion_block = diffusion_block
        self.config.check()

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
        A causal_clean block model samples its clean stream token-causally (its AR mode), words only."""
        ar_mode = self.config.causal_clean
        assert self.config.model_type == 'gpt2' or ar_mode, "generate() is autoregressive; diffusion models sample with sampling.py"
        kv_cache = None
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            if use_kv_cache and kv_cache is not None and idx.size(1) <= self.config.block_size:
                idx_cond = idx_cond[:, kv_cache.length:] # the new token
            else: # the first step, a slide, or no cache: the whole context
                kv_cache = KVCache() if use_kv_cache else None
            cached = 0 if kv_cache is None else kv_cache.length
            mask = causal_mask(idx_cond.size(1), cached, idx.device) if ar_mode else None
            logits, _ = self(idx_cond, kv_cache=kv_cache, attn_mask=mask)
            logits = logits[:, -1, :self.config.words] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('Inf')
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def causal_mask(t, cached, device):
    """(t, cached + t) bool: t new tokens after `cached` ones, each attending to itself and
    everything before it."""
    return torch.ones(t, cached + t, dtype=torch.bool, device=device).tril(cached)
