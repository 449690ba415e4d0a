"""
Loading and saving, in one place for every script: data splits and batches,
checkpoints (written atomically, read without executing code) and tokenizers
(the char vocabulary of meta.json, or GPT-2 BPE through tiktoken).
Every failure a user can cause is a UserError: one line that says what to do.
"""

import json
import os
import re
import time
from contextlib import nullcontext

import numpy as np
import torch

from configurator import UserError
from model import GPT, GPTConfig

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
CHECKPOINT_NAME = 'ckpt.pt'
MASK_GLYPH, WRONG_GLYPH = '\u2591', '\u2717' # how [MASK] and [WRONG] are shown in decoded text

# ----------------------------------------------------------------------------
# device

def setup_device(device, dtype):
    """Resolve 'auto' device (cuda > mps > cpu) and dtype (bfloat16 on CUDA if supported,
    else float16; float32 elsewhere). Returns (device, device_type, dtype name, autocast
    context: mixed precision on CUDA only, a no-op elsewhere). A device or dtype that this
    machine cannot give is a UserError, before anything is allocated."""
    if not re.fullmatch(r'auto|cpu|mps|cuda(:\d+)?', device):
        raise UserError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' (N = GPU index) or 'mps', not {device!r}")
    if dtype not in ('auto', 'float32', 'bfloat16', 'float16'):
        raise UserError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', not {dtype!r}")
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    device_type = 'cuda' if 'cuda' in device else 'mps' if 'mps' in device else 'cpu'
    if device_type == 'cuda':
        if not torch.cuda.is_available():
            why = 'this PyTorch is built without CUDA' if torch.version.cuda is None else 'no CUDA GPU is visible'
            raise UserError(f"device={device!r} is not available ({why}): use --device=cpu or --device=auto")
        index = int(device.split(':')[1]) if ':' in device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device={device!r} is not available: this machine has {torch.cuda.device_count()} CUDA "
                            f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device_type == 'mps' and not torch.backends.mps.is_available():
        raise UserError(f"device='mps' is not available (it needs Apple silicon and a PyTorch built with MPS): "
                        "use --device=cpu or --device=auto")
    if dtype == 'auto':
        dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if device_type == 'cuda' else 'float32'
    if dtype != 'float32' and device_type != 'cuda':
        raise UserError(f"dtype={dtype!r} has no effect on {device_type}: mixed precision runs on CUDA only, "
                        "so use --dtype=float32 (or auto)")
    if dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
        raise UserError(f"dtype='bfloat16' is not supported by this GPU ({torch.cuda.get_device_name(device)}): "
                        "use --dtype=float16 (or auto)")
    torch.backends.cuda.matmul.allow_tf32 = True # allow tf32 on matmul
    torch.backends.cudnn.allow_tf32 = True # allow tf32 on cudnn
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    ctx = nullcontext() if device_type != 'cuda' else torch.amp.autocast(device_type=device_type, dtype=ptdtype)
    return device, device_type, dtype, ctx


def timed(fn, device_type):
    """(fn(), wall seconds), with the CUDA queue drained on both sides so that the
    asynchronous work fn launched is counted."""
    if device_type == 'cuda':
        torch.cuda.synchronize()
    t0 = time.time()
    result = fn()
    if device_type == 'cuda':
        torch.cuda.synchronize()
    return result, time.time() - t0


# ----------------------------------------------------------------------------
# data

def split_path(dataset, split):
    """The path of the uint16 token file of a prepared dataset; a UserError if it is missing."""
    path = os.path.join(DATA_DIR, dataset, f'{split}.bin')
    if not os.path.isfile(path):
        raise UserError(f"no {split} data at {path}: run python data/{dataset}/prepare.py first")
    return path


def load_split(dataset, split):
    """The uint16 token file of a prepared dataset, memory-mapped."""
    return np.memmap(split_path(dataset, split), dtype=np.uint16, mode='r')


def dataset_vocab_size(dataset):
    """vocab_size from data/<dataset>/meta.json, or None if the dataset has none."""
    path = os.path.join(DATA_DIR, dataset, 'meta.json')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        vocab_size = json.load(f)['vocab_size']
    print(f"found vocab_size = {vocab_size} (inside {path})")
    return vocab_size


def get_batch(data, batch_size, block_size, generator, device):
    """batch_size random windows of block_size + 1 tokens from data, drawn with generator
    (a CPU torch.Generator, saved in checkpoints so a resumed run draws the same
    batches). Returns (x, y): inputs and next-token targets, int64, on device."""
    if len(data) <= block_size:
        raise UserError(f"the data has {len(data)} tokens, fewer than block_size+1={block_size + 1}: lower block_size")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    windows = torch.from_numpy(data[ix.numpy()[:, None] + np.arange(block_size + 1)].astype(np.int64)) # one gather, no loop over rows
    x, y = windows[:, :-1], windows[:, 1:]
    if torch.device(device).type == 'cuda':
        # pin arrays x,y, which allows us to move them to GPU asynchronously (non_blocking=True)
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------
# checkpoints

def save_checkpoint(checkpoint, out_dir):
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(out_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd) # make the rename itself durable
    finally:
        os.close(dir_fd)


def checkpoint_path(out_dir, key='out_dir'):
    """The path of out_dir's checkpoint; a UserError that names the option key if there is none."""
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train one with python train.py ... or fix --{key}")
    return path


def load_checkpoint(out_dir, device='cpu', key='out_dir'):
    """Read out_dir/ckpt.pt with weights_only=True: loading never executes code."""
    path = checkpoint_path(out_dir, key)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}): it is corrupt or not a checkpoint; retrain or restore it")


def model_from_checkpoint(checkpoint, device='cpu'):
    """Rebuild the GPT of a checkpoint (loaded by load_checkpoint)."""
    model = GPT(GPTConfig(**checkpoint['model_args']))
    # torch.compile prefixes parameter names with _orig_mod.
    state_dict = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}
    model.load_state_dict(state_dict)
    return model.to(device)


def load_model(out_dir, device, model_type, script):
    """(model in eval mode, checkpoint) from out_dir, refusing the other model type with a
    message that names the script that handles it."""
    checkpoint = load_checkpoint(out_dir, device)
    found = checkpoint['model_args'].get('model_type', 'gpt2')
    if found != model_type:
        other = 'generate_diffusion.py' if found == 'diffusion' else 'sample.py'
        raise UserError(f"{out_dir} holds a '{found}' model but {script} needs a '{model_type}' model: use {other}")
    model = model_from_checkpoint(checkpoint, device)
    model.eval()
    return model, checkpoint


# ----------------------------------------------------------------------------
# prompts and tokenizers

def read_text(value, name):
    """The text of an option: the contents of FILE:path, or as typed, where \\n stands for
    a newline (a shell passes "\\n" on as a backslash and an n)."""
    if not value.startswith('FILE:'):
        return value.replace('\\n', '\n')
    path = value[len('FILE:'):]
    if not os.path.isfile(path):
        raise UserError(f"--{name}: no file at {path}")
    with open(path, encoding='utf-8') as f:
        return f.read()


def gpt2_tokenizer(vocab_size=50257):
    """(encode, decode) of GPT-2 BPE through tiktoken; decode shows ids from vocab_size on
    ([MASK], [WRONG] of a diffusion model) as visible glyphs."""
    import tiktoken
    try:
        enc = tiktoken.get_encoding('gpt2')
    except Exception as e:
        raise UserError(f"tiktoken could not load the GPT-2 vocabulary ({type(e).__name__}): it downloads it once, "
                        "so run once with internet or set TIKTOKEN_CACHE_DIR to a folder that holds it")
    specials = {vocab_size: MASK_GLYPH, vocab_size + 1: WRONG_GLYPH}

    def decode(ids):
        # decode runs of ordinary tokens, and show the special tokens between them
        out, run = [], []
        for i in ids:
            if i >= vocab_size:
                out += [enc.decode(run), specials[i]]
                run = []
            else:
                run.append(i)
        return ''.join(out + [enc.decode(run)])
    return (lambda s: enc.encode(s, allowed_special={'<|endoftext|>'})), decode


def load_tokenizer(dataset):
    """(encode, decode) for a prepared dataset, from data/<dataset>/meta.json (plain JSON,
    never pickle). decode shows [MASK] and [WRONG] as visible glyphs."""
    path = os.path.join(DATA_DIR, dataset, 'meta.json')
    if not os.path.isfile(path):
        raise UserError(f"no tokenizer metadata at {path}: run python data/{dataset}/prepare.py first")
    with open(path) as f:
        meta = json.load(f)
    vocab_size = meta['vocab_size']
    specials = {vocab_size: MASK_GLYPH, vocab_size + 1: WRONG_GLYPH}
    if meta['tokenizer'] == 'char':
        itos = meta['itos']
        stoi = {ch: i for i, ch in enumerate(itos)}

        def encode(text):
            unknown = sorted(set(text) - set(stoi))
            if unknown:
                raise UserError(f"characters {''.join(unknown)!r} are not in the {dataset} vocabulary: remove or replace them")
            return [stoi[c] for c in text]

        def decode(ids):
            return ''.join(specials[i] if i >= vocab_size else itos[i] for i in ids)
        return encode, decode
    return gpt2_tokenizer(vocab_size)
