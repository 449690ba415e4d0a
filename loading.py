"""
Loading and saving, in one place for every script: data splits and batches,
checkpoints (written atomically, read without executing code) and tokenizers
(the char vocabulary of meta.json, or GPT-2 BPE through tiktoken).
Every failure a user can cause is a UserError: one line that says what to do.
"""

import json
import os
import re
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from configurator import UserError
from model import GPT, GPTConfig, special_token_ids

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
CHECKPOINT_NAME = 'ckpt.pt' # the weights every script reads: the last eval's, or the best one's (always_save_checkpoint=False)
STOP_NAME = 'stop.pt' # where a stopped run saves when ckpt.pt holds its best: --init_from=resume prefers it
MASK_GLYPH, WRONG_GLYPH = '\u2591', '\u2717' # how [MASK] and [WRONG] are shown in decoded text

# ----------------------------------------------------------------------------
# device

def setup_device(device, dtype):
    """Resolve 'auto' device (cuda > mps > cpu) and dtype (bfloat16 on a GPU that has it in
    hardware, else float16 with a GradScaler; float32 elsewhere). bfloat16 autocast also runs
    on the CPU, where it is opt-in. Makes a CUDA device the current one, so that RNG state,
    synchronize() and memory statistics act on it. Returns (device, device_type, dtype name,
    autocast context: a no-op in float32). A device or dtype that this machine cannot give is
    a UserError, before anything is allocated."""
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
        raise UserError("device='mps' is not available (it needs Apple silicon and a PyTorch built with MPS): "
                        "use --device=cpu or --device=auto")
    if device_type == 'cuda':
        torch.cuda.set_device(device) # cuda:N, not cuda:0, for everything that uses "the current device"
    # V100, T4 and RTX 20xx emulate bfloat16 (slowly): only hardware support counts
    hardware_bf16 = device_type == 'cuda' and torch.cuda.is_bf16_supported(including_emulation=False)
    if dtype == 'auto':
        dtype = ('bfloat16' if hardware_bf16 else 'float16') if device_type == 'cuda' else 'float32'
    if device_type == 'mps' and dtype != 'float32':
        raise UserError(f"dtype={dtype!r} is not supported on mps here: use --dtype=float32 (or auto)")
    if device_type == 'cpu' and dtype == 'float16':
        raise UserError("dtype='float16' needs a GPU (its GradScaler is CUDA's): on the CPU use --dtype=bfloat16 or float32")
    if device_type == 'cuda' and dtype == 'bfloat16' and not hardware_bf16:
        raise UserError(f"dtype='bfloat16' is only emulated on this GPU ({torch.cuda.get_device_name(device)}), which is "
                        "slow: use --dtype=float16 (or auto)")
    torch.backends.cuda.matmul.allow_tf32 = True # allow tf32 on matmul
    torch.backends.cudnn.allow_tf32 = True # allow tf32 on cudnn
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    ctx = nullcontext() if dtype == 'float32' else torch.amp.autocast(device_type=device_type, dtype=ptdtype)
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

def split_path(dataset, split, min_tokens=1):
    """The path of the uint16 token file of a prepared dataset; a UserError if it is missing
    or holds fewer than min_tokens tokens (e.g. block_size + 1 for one training window)."""
    path = os.path.join(DATA_DIR, dataset, f'{split}.bin')
    if not os.path.isfile(path):
        raise UserError(f"no {split} data at {path}: run python data/{dataset}/prepare.py first")
    size = os.path.getsize(path)
    if size % 2:
        raise UserError(f"{path} is {size} bytes, not a whole number of 2-byte tokens: it was cut short; "
                        f"write it again with python data/{dataset}/prepare.py")
    tokens = size // 2
    if tokens < min_tokens:
        raise UserError(f"{path} holds {tokens} tokens, fewer than the {min_tokens} needed (block_size + 1): "
                        f"prepare more text with python data/{dataset}/prepare.py, or lower block_size")
    return path


def load_split(dataset, split):
    """The uint16 token file of a prepared dataset, memory-mapped."""
    return np.memmap(split_path(dataset, split), dtype=np.uint16, mode='r')


def dataset_vocab_size(dataset):
    """vocab_size from data/<dataset>/meta.json, or None if the dataset has none."""
    meta = read_meta(dataset)
    if meta is None:
        return None
    print(f"found vocab_size = {meta['vocab_size']} (inside {os.path.join(DATA_DIR, dataset, 'meta.json')})")
    return meta['vocab_size']


def get_batch(data, batch_size, block_size, generator, device):
    """batch_size random windows of block_size + 1 tokens from data, drawn with generator
    (a CPU torch.Generator, saved in checkpoints so a resumed run draws the same
    batches). Returns (x, y): inputs and next-token targets, int64, on device."""
    if len(data) <= block_size:
        raise UserError(f"the data has {len(data)} tokens, fewer than block_size+1={block_size + 1}: lower block_size")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    windows = torch.from_numpy(data[ix.numpy()[:, None] + np.arange(block_size + 1)].astype(np.int64)) # one gather, no loop over rows
    if torch.device(device).type == 'cuda':
        # pinned memory lets the copy to the GPU run asynchronously (non_blocking=True); one
        # contiguous copy of the windows, cut into inputs and targets on the GPU
        windows = windows.pin_memory().to(device, non_blocking=True)
    else:
        windows = windows.to(device)
    return windows[:, :-1], windows[:, 1:]


# ----------------------------------------------------------------------------
# checkpoints

def save_checkpoint(checkpoint, out_dir, name=CHECKPOINT_NAME):
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
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


def random_states(generators, device_type, world_size):
    """The state of every random stream of a training run on every process, for its checkpoint:
    generators {name: torch.Generator} beside PyTorch's own (and CUDA's). With world_size > 1
    the states are gathered, so every process must call this; a resumed run restores each
    rank's own (restore_random_states)."""
    def gather(state):
        if world_size == 1:
            return [state]
        states = [None] * world_size
        torch.distributed.all_gather_object(states, state.cpu())
        return states
    states = {name: gather(g.get_state()) for name, g in generators.items()}
    return dict(states, torch=gather(torch.get_rng_state()),
                cuda=gather(torch.cuda.get_rng_state()) if device_type == 'cuda' else None,
                device_type=device_type) # a generator's state only fits its device kind


def restore_random_states(saved, generators, device_type, rank, world_size, reseed):
    """Continue the random streams of a checkpoint (random_states) on process rank. On the same
    device kind and number of processes the streams go on as if the run had never stopped.
    Elsewhere (a generator's state belongs to its device kind, and each rank had its own) they
    restart from reseed, a number the caller derives from the seed, the iteration and the rank,
    with the generators i * 1000 apart: the run continues with fresh batches and noise,
    reproducibly but not bit for bit. Returns None, or (device kind, processes) of the save."""
    saved_on = (saved.get('device_type', 'cpu'), len(saved['torch']))
    if saved_on != (device_type, world_size):
        for i, g in enumerate(generators.values()):
            g.manual_seed(reseed + 1000 * i)
        torch.manual_seed(reseed)
        return saved_on
    for name, g in generators.items():
        g.set_state(saved[name][rank].cpu())
    torch.set_rng_state(saved['torch'][rank].cpu())
    if device_type == 'cuda' and saved.get('cuda') is not None:
        torch.cuda.set_rng_state(saved['cuda'][rank].cpu())
    return None


# ----------------------------------------------------------------------------
# the training log: train.py's printed lines are for people; scripts read this

LOG_NAME = 'log.jsonl'


def log_records(out_dir):
    """Every record of out_dir/log.jsonl, oldest first ([] before the first run). A cut-off
    last line, all a killed run can leave, is dropped with a warning; other damage is an error."""
    path = os.path.join(out_dir, LOG_NAME)
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if line.endswith('\n'): # a whole line, or a cut-off one that later lines were appended to
                    raise UserError(f"{path} line {n} is not JSON: the log was damaged; delete it, or train again into that out_dir") from None
                # a run killed mid-write leaves its last line unfinished: every line before it is whole
                print(f"warning: {path} ended in a cut-off line (a run stopped mid-write); dropped it", file=sys.stderr)
    return records


def start_log(out_dir, keep_until):
    """Begin out_dir/log.jsonl for a run: a fresh run (keep_until None) starts it empty; a resumed
    run keeps the records up to its checkpoint's iteration, whose later ones it is about to redo."""
    kept = [] if keep_until is None else [r for r in log_records(out_dir) if r.get('iter', 0) <= keep_until]
    path = os.path.join(out_dir, LOG_NAME)
    # written aside, then renamed: a run killed mid-rewrite leaves the old log, not part of it
    with open(path + '.tmp', 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in kept)
    os.replace(path + '.tmp', path)


def append_log(out_dir, record):
    """Add one record (a dict of numbers and strings, with a 'kind') to out_dir/log.jsonl, a JSON line."""
    with open(os.path.join(out_dir, LOG_NAME), 'a') as f:
        f.write(json.dumps(record) + '\n')


def read_log(out_dir, kind):
    """The records of one kind ('start', 'iter' or 'eval') of a run's log, oldest first."""
    if not os.path.isfile(os.path.join(out_dir, LOG_NAME)):
        raise UserError(f"no training log at {os.path.join(out_dir, LOG_NAME)}: train.py writes it in its out_dir; train there first")
    return [r for r in log_records(out_dir) if r.get('kind') == kind]


def checkpoint_path(out_dir, key='out_dir', name=CHECKPOINT_NAME):
    """The path of out_dir's checkpoint; a UserError that names the option key if there is none."""
    path = os.path.join(out_dir, name)
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train one with python train.py ... or fix --{key}")
    return path


def load_checkpoint(out_dir, device='cpu', key='out_dir', name=CHECKPOINT_NAME):
    """Read out_dir/ckpt.pt (or name) with weights_only=True: loading never executes code."""
    path = checkpoint_path(out_dir, key, name)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}): it is corrupt or not a checkpoint; retrain or restore it")


def model_from_checkpoint(checkpoint, device='cpu'):
    """Rebuild the GPT of a checkpoint (loaded by load_checkpoint). Checkpoints written before
    time_conditioning, tie_embeddings and embedding_init_std were retired load when they used
    the settings that stayed (docs/design.md); the others cannot be rebuilt."""
    args = dict(checkpoint['model_args'])
    retired = {'time_conditioning': False, 'tie_embeddings': True, 'embedding_init_std': 0.02}
    for key, kept in retired.items():
        value = args.pop(key, kept)
        if value != kept:
            raise UserError(f"this checkpoint was trained with {key}={value!r}, which this version no longer has: "
                            f"retrain it with python train.py, or sample it with an older version")
    args.pop('mask_logit_bias', None) # older checkpoints also hold it here: the state dict's copy is the one used
    model = GPT(GPTConfig(**args))
    # torch.compile prefixes parameter names with _orig_mod.
    state_dict = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}
    model.load_state_dict(state_dict)
    return model.to(device)


def require_vocab(model, dataset, source, fix):
    """model (from source) must read dataset's token ids: on another vocabulary every id
    would be a different token; fix says what to do. A dataset without a meta.json (GPT-2
    BPE) is taken as it is."""
    meta = read_meta(dataset)
    if meta is not None and meta['vocab_size'] != model.config.words:
        raise UserError(f"{source} has a vocabulary of {model.config.words} tokens but data/{dataset}/meta.json has {meta['vocab_size']}: {fix}")


def load_model(out_dir, device, model_type, script):
    """(model in eval mode, checkpoint without its optimizer state) from out_dir, refusing the
    other model type with a message that names the script that handles it. The checkpoint is
    read into CPU memory: only the model goes to the device."""
    checkpoint = load_checkpoint(out_dir, 'cpu')
    checkpoint.pop('optimizer', None) # twice the model's size, and sampling has no use for it
    found = checkpoint['model_args'].get('model_type', 'gpt2')
    if found != model_type:
        other = 'generate_diffusion.py' if found == 'diffusion' else 'sample.py'
        raise UserError(f"{out_dir} holds a '{found}' model but {script} needs a '{model_type}' model: use {other}")
    model = model_from_checkpoint(checkpoint, device)
    dataset = checkpoint['config']['dataset']
    require_vocab(model, dataset, os.path.join(out_dir, CHECKPOINT_NAME), f"the data was prepared again since it was trained: "
                  f"prepare it as it was (python data/{dataset}/prepare.py), or retrain the model")
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
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"--{name}: {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None


def gpt2_tokenizer(vocab_size=50257):
    """(encode, decode) of GPT-2 BPE through tiktoken; decode shows ids from vocab_size on
    ([MASK], [WRONG] of a diffusion model) as visible glyphs."""
    import tiktoken
    try:
        enc = tiktoken.get_encoding('gpt2')
    except Exception as e:
        raise UserError(f"tiktoken could not load the GPT-2 vocabulary ({type(e).__name__}): it downloads it once, "
                        "so run once with internet or set TIKTOKEN_CACHE_DIR to a folder that holds it")
    return (lambda s: enc.encode(s, allowed_special={'<|endoftext|>'})), with_glyphs(enc.decode, vocab_size)


def load_tokenizer(dataset):
    """(encode, decode) for a prepared dataset, from data/<dataset>/meta.json (plain JSON,
    never pickle), and its tokenizer.json for a BPE trained by data/shakespeare_bpe/prepare.py.
    decode shows [MASK] and [WRONG] as visible glyphs."""
    meta = read_meta(dataset)
    if meta is None:
        raise UserError(f"no tokenizer metadata at {os.path.join(DATA_DIR, dataset, 'meta.json')}: "
                        f"run python data/{dataset}/prepare.py first")
    vocab_size = meta['vocab_size']
    if meta['tokenizer'] == 'bpe':
        return bpe_tokenizer(dataset, vocab_size)
    if meta['tokenizer'] == 'char':
        itos = meta['itos']
        stoi = {ch: i for i, ch in enumerate(itos)}

        def encode(text):
            unknown = sorted(set(text) - set(stoi))
            if unknown:
                raise UserError(f"characters {''.join(unknown)!r} are not in the {dataset} vocabulary: remove or replace them")
            return [stoi[c] for c in text]
        return encode, with_glyphs(lambda ids: ''.join(itos[i] for i in ids), vocab_size)
    return gpt2_tokenizer(vocab_size)


# ----------------------------------------------------------------------------
# dataset metadata, the trained BPE and characters per token

def read_meta(dataset):
    """data/<dataset>/meta.json as a dict, or None if the dataset has none."""
    path = os.path.join(DATA_DIR, dataset, 'meta.json')
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except (ValueError, UnicodeDecodeError) as e: # json's errors are ValueErrors
        raise UserError(f"{path} is not valid JSON ({type(e).__name__}): prepare the dataset again to rewrite it") from None
    if not isinstance(meta, dict):
        meta = {} # JSON, but not an object: every key is missing
    needed = ['tokenizer', 'vocab_size'] + (['itos'] if meta.get('tokenizer') == 'char' else [])
    missing = [key for key in needed if key not in meta]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: write it again with python data/{dataset}/prepare.py")
    return meta


def with_glyphs(decode, vocab_size):
    """decode (ids -> text) extended to a diffusion model's ids: [MASK] and [WRONG] (after the
    vocab_size words) shown as MASK_GLYPH and WRONG_GLYPH. The ordinary ids between them are
    decoded as whole runs: in a BPE, one character can span tokens."""
    glyphs = dict(zip(special_token_ids(vocab_size), (MASK_GLYPH, WRONG_GLYPH)))

    def decode_with_glyphs(ids):
        out, run = [], []
        for i in ids:
            if i >= vocab_size:
                out += [decode(run), glyphs[i]]
                run = []
            else:
                run.append(i)
        return ''.join(out + [decode(run)])
    return decode_with_glyphs


def bpe_tokenizer(dataset, vocab_size):
    """(encode, decode) of the byte-level BPE in data/<dataset>/tokenizer.json (HuggingFace
    tokenizers, written by data/shakespeare_bpe/prepare.py); decode shows ids from
    vocab_size on as glyphs."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError(f"the {dataset} dataset is tokenized by a BPE of HuggingFace tokenizers: pip install tokenizers") from None
    path = os.path.join(DATA_DIR, dataset, 'tokenizer.json')
    redo = (f"run python data/shakespeare_bpe/prepare.py --out_dir=data/{dataset} --vocab_size={vocab_size} "
            "(the same text gives the same BPE)")
    if not os.path.isfile(path):
        raise UserError(f"no BPE tokenizer at {path}: {redo}")
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as e: # the Rust side raises a bare Exception, e.g. for a file cut short or not JSON
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} cannot be read as a tokenizer ({why}): {redo}") from None
    if tokenizer.get_vocab_size() != vocab_size:
        raise UserError(f"{path} has {tokenizer.get_vocab_size()} tokens but meta.json beside it says {vocab_size}: {redo}")
    return (lambda text: tokenizer.encode(text).ids), with_glyphs(tokenizer.decode, vocab_size)


def chars_per_token(dataset, split):
    """Characters per token of a split of a prepared dataset, from its meta.json: 1.0 for
    a char dataset, None when unknown (no meta.json, or no counts in it). A loss in nats
    per token divided by this is nats per character, comparable across tokenizers."""
    meta = read_meta(dataset)
    if meta is None:
        return None
    if meta['tokenizer'] == 'char':
        return 1.0
    if 'chars' not in meta:
        return None
    return meta['chars'][split] / meta['tokens'][split]
