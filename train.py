"""
Training script for both kinds of model. Runs on a single device:
$ python train.py config/train_shakespeare_diffusion_cpu.py
or with DDP (NCCL on GPUs, gloo on CPUs), e.g. 8 GPUs on 1 node:
$ torchrun --standalone --nproc_per_node=8 train.py config/train_shakespeare_diffusion.py
or 2 nodes of 8 GPUs (run this on the master node, with node_rank=1 on the other):
$ torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=123.456.123.456 --master_port=1234 train.py ...
Ctrl-C or SIGTERM saves a checkpoint after the step in progress; --init_from=resume continues.
model_type='gpt2' trains the autoregressive model exactly as nanoGPT does;
model_type='diffusion' trains the bidirectional model to repair corrupted text, with
loss_type='seed' (the [MASK]/[WRONG] task-weighted recipe) or 'elbo' (masked diffusion).
"""

import importlib.util
import math
import os
import signal
import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import UserError, configure, require, require_choice, require_range
import diffusion
from loading import (CHECKPOINT_NAME, STOP_NAME, append_log, checkpoint_path, chars_per_token, dataset_vocab_size, get_batch,
                     load_checkpoint, load_split, model_from_checkpoint, random_states, require_vocab, restore_random_states,
                     save_checkpoint, setup_device, split_path, start_log)
from model import GPT, GPTConfig, special_token_ids

# -----------------------------------------------------------------------------
# default config values designed to train a gpt2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000 # evaluate (and maybe checkpoint) every this many iterations
log_interval = 1 # print a log line every this many iterations
eval_iters = 200 # batches per split for each evaluation
eval_only = False # if True, script exits right after the first eval
always_save_checkpoint = True # if True, always save a checkpoint after each eval, else only when val improves (a diffusion model's val: its bound);
                              # then a stop by Ctrl-C saves beside that best checkpoint, in stop.pt, which --init_from=resume prefers
patience = 0 # stop once val has not improved for this many evals (early stopping; 0 = train to max_iters)
init_from = 'scratch' # 'scratch', 'resume' (from out_dir), 'gpt2*' (OpenAI weights) or a directory with an AR checkpoint of this project
# wandb logging
wandb_log = False # disabled by default
wandb_project = 'owt'
wandb_run_name = 'gpt2' # 'run' + str(time.time())
# data
dataset = 'openwebtext'
gradient_accumulation_steps = 5 * 8 # micro-batches per optimizer step, summed over all processes
batch_size = 12 # rows per micro-batch
block_size = 1024
# model
model_type = 'gpt2' # 'gpt2' (autoregressive) or 'diffusion'
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0 # for pretraining 0 is good, for finetuning try 0.1+
input_mask_weight = 0.0 # AR: weight of a next-token loss on inputs partly replaced by [MASK] (a regulariser for scarce data)
input_mask_rate = 0.5 # AR: that loss's share of masked inputs is drawn per row from U(0, input_mask_rate)
bias = False # do we use bias inside LayerNorm and Linear layers?
pos_encoding = 'learned' # 'learned' (nanoGPT/GPT-2) or 'rope'; diffusion wants 'rope' (docs/design.md)
diffusion_block = 0 # diffusion: tokens denoised together (block diffusion); attention is bidirectional inside a block and causal across blocks; 0 = block_size (full-sequence diffusion), 1 = next-token
# diffusion objective
loss_type = 'seed' # 'seed': [MASK] + random tokens -> [WRONG], task-weighted; 'elbo': mask-only, ELBO-weighted
loss_weighting = 'token_mean' # elbo objective: 'token_mean' (mean CE over a row's masked positions: lower variance) or 'elbo' (each masked CE weighted 1/t, the bound itself)
mask_rate_min = 0.0 # training draws mask rates (elbo) or corruption rates (seed) only in [mask_rate_min, mask_rate_max] (BD3-LM's clipping); the reported bound always uses the full range
mask_rate_max = 1.0
penalty_mask_correct = 0.5 # seed: final weight of keeping a correct token right (destructive-edit penalty)
masking_warmup_iters = 1000 # seed: iterations over which that penalty ramps from 0
proofreading_warmup_iters = 1000 # seed: iterations over which the random-token ([WRONG]) share ramps from 0 to 1
weight_unmask_task = 1.0 # seed: weight of filling in a [MASK]
weight_remask_task = 1.0 # seed: weight of flagging a random token as [WRONG]
wrong_share = 1.0 # seed: final remask_ratio; on average wrong_share/2 of the corruption is random tokens to flag as [WRONG]
reward_correct_unmask = 0.1 # seed: smallest weight of an un-masking position the model already gets right
ar_loss_weight = 0.0 # block diffusion: weight of a next-token loss on the clean stream, made token-causal (causal_clean):
                     # > 0 trains one network that drafts by diffusion and verifies as an AR model (speculative
                     # sampling, TiDAR); 0 keeps the clean stream block-causal, BD3-LM's model
# [MASK] logit-bias controller
target_mask_prob = 0.5 # the mean p([MASK]) at masked positions the controller steers toward
mask_bias_gain = 0.1 # controller gain in log-odds per step (0 switches it off)
mask_bias_limit = 20.0 # guard clamp on the bias
# adamw optimizer
learning_rate = 6e-4 # max learning rate
max_iters = 600000 # total number of training iterations
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0 # clip gradients at this value, or disable if == 0.0
# learning rate decay settings
decay_lr = True # whether to decay the learning rate
warmup_iters = 2000 # how many steps to warm up for
lr_decay_iters = 600000 # should be ~= max_iters per Chinchilla
min_lr = 6e-5 # minimum learning rate, should be ~= learning_rate/10 per Chinchilla
# system
backend = 'auto' # DDP backend: 'auto' picks nccl on CUDA and gloo otherwise
device = 'auto' # 'auto' (cuda > mps > cpu), or 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto' # 'auto': bfloat16 on CUDA if supported else float16; float32 elsewhere
compile = True # use PyTorch 2.0 to compile the model to be faster
seed = 1337
# -----------------------------------------------------------------------------
config = configure(globals()) # overrides from command line or config file
# -----------------------------------------------------------------------------
# every setting checked before any data, model or output is touched: a mistake is one line
GPT2_MODELS = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')
for key in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters', 'log_interval'):
    require_range(key, globals()[key], low=1, integer=True)
for key in ('max_iters', 'warmup_iters', 'lr_decay_iters', 'masking_warmup_iters', 'proofreading_warmup_iters', 'diffusion_block',
            'patience'):
    require_range(key, globals()[key], low=0, integer=True)
for key in ('learning_rate', 'min_lr', 'weight_decay', 'grad_clip', 'penalty_mask_correct', 'weight_unmask_task',
            'weight_remask_task', 'mask_bias_gain', 'ar_loss_weight', 'input_mask_weight'): # learning_rate=0 keeps the weights: the tests use it
    require_range(key, globals()[key], low=0)
require_range('mask_bias_limit', mask_bias_limit, low=0, low_open=True)
for key in ('beta1', 'beta2'):
    require_range(key, globals()[key], low=0, high=1, high_open=True)
require_range('reward_correct_unmask', reward_correct_unmask, low=0, high=1)
require_range('wrong_share', wrong_share, low=0, high=1)
require_range('input_mask_rate', input_mask_rate, low=0, high=1)
require(input_mask_weight == 0 or (model_type == 'gpt2' and init_from in ('scratch', 'resume')), f"input_mask_weight="
        f"{input_mask_weight} trains an AR model from scratch on inputs with [MASK] in them: set --model_type=gpt2 "
        "--init_from=scratch, or --input_mask_weight=0")
require_range('target_mask_prob', target_mask_prob, low=0, high=1, low_open=True, high_open=True)
require_range('mask_rate_min', mask_rate_min, low=0, high=1)
require_range('mask_rate_max', mask_rate_max, low=0, high=1)
require(mask_rate_min < mask_rate_max, f"mask_rate_min={mask_rate_min} must be below mask_rate_max={mask_rate_max}: "
        "e.g. --mask_rate_min=0.0 --mask_rate_max=1.0 (the defaults)")
require_range('seed', seed, low=0, high=2**63, high_open=True, integer=True)
require(ar_loss_weight == 0 or (model_type == 'diffusion' and 0 < diffusion_block < block_size),
        f"ar_loss_weight={ar_loss_weight} trains the clean stream of a block diffusion model: add --model_type=diffusion "
        f"--diffusion_block=4 (any divisor of block_size below it), or set --ar_loss_weight=0")
require_choice('model_type', model_type, ('gpt2', 'diffusion'))
require_choice('loss_type', loss_type, ('seed', 'elbo'))
require_choice('loss_weighting', loss_weighting, ('elbo', 'token_mean'))
require_choice('backend', backend, ('auto', 'nccl', 'gloo'))
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias, dropout=dropout,
                  pos_encoding=pos_encoding, diffusion_block=diffusion_block if model_type == 'diffusion' else 0,
                  causal_clean=ar_loss_weight > 0, model_type=model_type)
try: # model.py's own checks of the shape asked for (the vocabulary comes from the data, later)
    GPTConfig(**model_args, vocab_size=3)
except ValueError as e:
    raise UserError(str(e)) from None
require(not decay_lr or lr_decay_iters > warmup_iters,
        f"lr_decay_iters={lr_decay_iters} must be greater than warmup_iters={warmup_iters} when decay_lr=True: "
        f"e.g. --lr_decay_iters={max(max_iters, warmup_iters + 1)} (about max_iters), or --decay_lr=False")
device, device_type, dtype, ctx = setup_device(device, dtype)
require(backend != 'nccl' or device_type == 'cuda', f"backend='nccl' needs CUDA GPUs, and the device is {device_type}: use --backend=gloo or auto")
require(out_dir != '' and not os.path.isfile(out_dir), f"out_dir={out_dir!r} is {'a file' if out_dir else 'empty'}: "
        "give the folder for checkpoints, e.g. --out_dir=out")
if init_from == 'resume':
    resume_from = STOP_NAME if os.path.isfile(os.path.join(out_dir, STOP_NAME)) else CHECKPOINT_NAME # the later state
    checkpoint_path(out_dir, name=resume_from) # there is one to resume from
elif init_from.startswith('gpt2'):
    require(init_from in GPT2_MODELS, f"init_from={init_from!r} is not a GPT-2 model: use {', '.join(GPT2_MODELS)}"
            + (f"; for the folder, write --init_from=./{init_from}" if os.path.isdir(init_from) else ''))
    require(importlib.util.find_spec('transformers') is not None,
            f"init_from={init_from!r} loads OpenAI's weights with the transformers package: pip install transformers")
elif init_from != 'scratch':
    require(os.path.isdir(init_from), f"init_from must be 'scratch', 'resume', a GPT-2 model ({', '.join(GPT2_MODELS)}) "
            f"or a folder with an autoregressive checkpoint of this project, not {init_from!r}")
    checkpoint_path(init_from, 'init_from')
require(not wandb_log or importlib.util.find_spec('wandb') is not None,
        "wandb_log=True needs the wandb package: pip install wandb, or set --wandb_log=False")
for split in ('train', 'val'):
    split_path(dataset, split, block_size + 1) # the data is there, one window at least (it is read later)
val_chars_per_token = chars_per_token(dataset, 'val') # reads meta.json; nats/char = nats/token / this

# various inits, derived attributes, I/O setup
ddp = int(os.environ.get('RANK', -1)) != -1 # is this a ddp run?
if ddp:
    if backend == 'auto':
        backend = 'nccl' if device_type == 'cuda' else 'gloo'
    dist.init_process_group(backend=backend)
    ddp_rank = int(os.environ['RANK'])
    ddp_local_rank = int(os.environ['LOCAL_RANK'])
    ddp_world_size = int(os.environ['WORLD_SIZE'])
    if device_type == 'cuda':
        device = f'cuda:{ddp_local_rank}'
        torch.cuda.set_device(device)
    master_process = ddp_rank == 0 # this process will do logging, checkpointing etc.
    seed_offset = ddp_rank # each process gets a different seed
else:
    ddp_rank, ddp_world_size, master_process, seed_offset = 0, 1, True, 0
# each optimizer step sees gradient_accumulation_steps * batch_size rows in all; the
# processes share them out: whole micro-batches when they divide evenly (nanoGPT), else
# every process runs one micro-batch of a share of the rows (e.g. 1 x 64 rows on 8 GPUs)
total_rows = gradient_accumulation_steps * batch_size
if gradient_accumulation_steps % ddp_world_size == 0:
    gradient_accumulation_steps //= ddp_world_size
elif total_rows % ddp_world_size == 0 and ddp_world_size % gradient_accumulation_steps == 0:
    gradient_accumulation_steps, batch_size = 1, total_rows // ddp_world_size
else:
    raise UserError(f"{gradient_accumulation_steps} micro-batches of {batch_size} rows cannot be shared by "
                    f"{ddp_world_size} processes: make gradient_accumulation_steps or batch_size*gradient_accumulation_steps a multiple of it")
tokens_per_iter = total_rows * block_size
if master_process:
    print(f"tokens per iteration will be: {tokens_per_iter:,}")
    print(f"device {device} x {ddp_world_size}, dtype {dtype}" + (", GradScaler on" if dtype == 'float16' else ''))
    os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(seed + seed_offset)

# data: batches are drawn with our own generators, saved in checkpoints for exact resume
train_data, val_data = load_split(dataset, 'train'), load_split(dataset, 'val')
data_generator = torch.Generator().manual_seed(seed + seed_offset)
noise_generator = torch.Generator(device=device).manual_seed(seed + 1000 + seed_offset) # corruption noise
random_streams = {'data': data_generator, 'noise': noise_generator} # saved in checkpoints, for exact resume
meta_vocab_size = dataset_vocab_size(dataset)

# model init
iter_num = 0
best_val_loss, best_iter = 1e9, 0
checkpoint = None
if init_from == 'scratch':
    print("Initializing a new model from scratch")
    base_vocab = meta_vocab_size if meta_vocab_size is not None else 50304
    if meta_vocab_size is None:
        print("defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)")
    specials = model_type == 'diffusion' or input_mask_weight > 0 # [MASK] and [WRONG] after the words
    mask_id, wrong_id = special_token_ids(base_vocab) if specials else (-1, -1)
    model = GPT(GPTConfig(**model_args, vocab_size=base_vocab + 2 * specials, mask_token_id=mask_id, wrong_token_id=wrong_id))
elif init_from == 'resume':
    print(f"Resuming training from {os.path.join(out_dir, resume_from)}")
    checkpoint = load_checkpoint(out_dir, device, name=resume_from)
    # the architecture comes from the checkpoint; the rest of the config can change
    model_args = checkpoint['model_args']
    if model_args['model_type'] != model_type:
        raise UserError(f"{out_dir} holds a '{model_args['model_type']}' model but model_type is '{model_type}': set --model_type={model_args['model_type']}")
    model = model_from_checkpoint(checkpoint)
    require_vocab(model, dataset, out_dir, f"resume on the data it was trained on ({checkpoint['config']['dataset']}, "
                  "prepared as it was), or train a new model in another out_dir")
    require(input_mask_weight == 0 or model.config.mask_token_id >= 0, f"{out_dir} holds an AR model without a [MASK] "
            "token (trained with input_mask_weight=0): resume it with --input_mask_weight=0")
    require(ar_loss_weight == 0 or model.config.causal_clean, f"{out_dir} holds a model whose clean stream is not "
            f"causal (trained with ar_loss_weight=0): resume it with --ar_loss_weight=0")
    iter_num = checkpoint['iter_num']
    best_val_loss, best_iter = checkpoint['best_val_loss'], checkpoint.get('best_iter', iter_num)
else:
    if init_from.startswith('gpt2'):
        print(f"Initializing from OpenAI GPT-2 weights: {init_from}")
        model = GPT.from_pretrained(init_from, dict(dropout=dropout))
    else:
        print(f"Initializing from the autoregressive checkpoint in {init_from}")
        source = load_checkpoint(init_from, key='init_from')
        if source['model_args']['model_type'] != 'gpt2':
            raise UserError(f"{init_from} holds a '{source['model_args']['model_type']}' model; init_from a directory needs an autoregressive one (to continue a run use init_from='resume')")
        source['model_args']['dropout'] = dropout
        model = model_from_checkpoint(source)
    require_vocab(model, dataset, init_from, "train on the same tokenizer")
    if model_type == 'diffusion':
        model.to_diffusion(diffusion_block) # bidirectional attention (in blocks), embedding grown by [MASK] and [WRONG]
        model.config.causal_clean = ar_loss_weight > 0
if block_size < model.config.block_size:
    model.crop_block_size(block_size) # model surgery to a smaller context
elif block_size > model.config.block_size:
    raise UserError(f"the model from init_from='{init_from}' has block_size {model.config.block_size}: set --block_size={model.config.block_size} or less")
model.to(device)
diffusion_mode = model.config.model_type == 'diffusion'

# initialize a GradScaler. If enabled=False scaler is a no-op
scaler = torch.amp.GradScaler('cuda', enabled=(dtype == 'float16'))

# optimizer
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint['optimizer'])
    if 'scaler' in checkpoint:
        scaler.load_state_dict(checkpoint['scaler'])
    saved_on = restore_random_states(checkpoint['rng'], random_streams, device_type, seed_offset, ddp_world_size,
                                     seed + seed_offset + 1_000_003 * iter_num)
    if saved_on and master_process:
        print(f"resuming on {device_type} x {ddp_world_size} a checkpoint saved on {saved_on[0]} x {saved_on[1]}: "
              f"random streams re-derived from seed {seed}, iteration {iter_num} and rank")
checkpoint = None # free up memory

# compile the model
raw_model = model
if compile:
    print("compiling the model... (takes a ~minute)")
    model = torch.compile(model) # requires PyTorch 2.0
if ddp:
    model = DDP(model, device_ids=[ddp_local_rank] if device_type == 'cuda' else None)


@torch.no_grad()
def estimate_loss():
    """Mean loss on fixed batches of each split (same seeds at every eval, so evals are
    comparable). Diffusion adds the masked val CE at fixed masking fractions and the ELBO
    bound (whatever the training objective: the number to compare with AR's val loss); the
    seed objective is evaluated at the end of its curriculum."""
    out, end_of_curriculum = {}, max(max_iters, masking_warmup_iters, proofreading_warmup_iters)
    model.eval()
    for split, data in (('train', train_data), ('val', val_data)):
        batch_generator = torch.Generator().manual_seed(seed + seed_offset)
        batches = [get_batch(data, batch_size, block_size, batch_generator, device) for _ in range(eval_iters)]
        eval_noise = torch.Generator(device=device).manual_seed(seed + 1 + seed_offset)
        out[split] = torch.stack([diffusion.model_loss(model, x, y, eval_noise, end_of_curriculum, config, ctx)[0].detach()
                                  for x, y in batches]).mean().item() # one sync per split, not per batch
    if diffusion_mode: # on the val batches
        out.update(diffusion.val_metrics(model, [x for x, _ in batches], seed + seed_offset, ctx))
    if raw_model.config.causal_clean: # the clean stream as an AR model, to compare with an AR model's val loss
        out['ar'] = diffusion.ar_val_loss(model, batches, ctx)
    model.train()
    return out


def get_lr(it):
    """learning rate decay scheduler (cosine with warmup)"""
    if it < warmup_iters: # 1) linear warmup for warmup_iters steps
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters: # 2) if it > lr_decay_iters, return min learning rate
        return min_lr
    # 3) in between, use cosine decay down to min learning rate
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) # coeff ranges 0..1
    return min_lr + coeff * (learning_rate - min_lr)


def save(name=CHECKPOINT_NAME):
    rng = random_states(random_streams, device_type, ddp_world_size) # every rank's
    if master_process:
        print(f"saving checkpoint to {out_dir}" + (f"/{name}" if name != CHECKPOINT_NAME else ''))
        save_checkpoint({'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(),
                         'scaler': scaler.state_dict(), 'model_args': asdict(raw_model.config), 'iter_num': iter_num,
                         'best_val_loss': best_val_loss, 'best_iter': best_iter, 'config': config, 'rng': rng}, out_dir, name)
        if name == CHECKPOINT_NAME and os.path.isfile(os.path.join(out_dir, STOP_NAME)):
            os.remove(os.path.join(out_dir, STOP_NAME)) # older than this state: resume from this one


stop_signal = 0 # the SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) this process got, if any


def on_stop_signal(signum, frame):
    """Only take note: the run stops between two steps, where a checkpoint is whole. Later
    signals change nothing (torchrun passes a terminal's Ctrl-C on to its workers, a second
    time), so a save in progress is never cut short."""
    global stop_signal
    stop_signal = signum


def check_stop(nonfinite):
    """Stop every process at the same iteration, with the same one line, if any process saw a
    NaN/inf loss (keeping the last good checkpoint) or was asked to stop by a signal (saving
    this iteration's state first, as an eval does). One all-reduce carries both flags: a
    decision one rank took alone would leave the others waiting in the next all-reduce."""
    flags = torch.stack([nonfinite.float(), torch.tensor(float(stop_signal), device=device)]) # gloo reduces no bools
    if ddp:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX) # any rank's NaN; the signal of any rank that got one
    nonfinite, signum = flags.tolist()
    if nonfinite:
        if ddp:
            dist.destroy_process_group()
        raise UserError(f"the loss became NaN/inf before iteration {iter_num}: lower learning_rate or use dtype=float32; "
                        f"the last good checkpoint in {out_dir} was kept")
    if signum:
        keep_best = not always_save_checkpoint and best_iter > 0 # ckpt.pt holds the best eval's weights: keep them
        save(STOP_NAME if keep_best else CHECKPOINT_NAME)
        if master_process:
            print(f"stopped at iter {iter_num}: checkpoint saved to {out_dir}" + (f"/{STOP_NAME} (ckpt.pt keeps the best, "
                  f"iteration {best_iter})" if keep_best else '') + "; --init_from=resume continues", flush=True)
        if ddp:
            dist.destroy_process_group()
        sys.exit(128 + int(signum)) # the shell's status for a process ended by that signal


# logging
if wandb_log and master_process:
    import wandb
    wandb.init(project=wandb_project, name=wandb_run_name, config=config)

# training loop
signal.signal(signal.SIGINT, on_stop_signal)
signal.signal(signal.SIGTERM, on_stop_signal)
if master_process:
    start_log(out_dir, iter_num if init_from == 'resume' else None)
    append_log(out_dir, dict(kind='start', iter=iter_num, device=str(device), world_size=ddp_world_size, dtype=dtype,
                             tokens_per_iter=tokens_per_iter, model_type=model_type, loss_type=loss_type))
t0 = t_start = time.time()
iter_start = iter_num
local_iter_num = 0 # number of iterations in the lifetime of this process
running_mfu = -1.0
nonfinite = torch.zeros((), dtype=torch.bool, device=device) # checked without a sync at every step
step_settings = dict(config, gradient_accumulation_steps=gradient_accumulation_steps) # this process's share
while True:
    # determine and set the learning rate for this iteration
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr

    # evaluate the loss on train/val sets and write checkpoints
    if iter_num % eval_interval == 0 or iter_num == max_iters:
        check_stop(nonfinite)
        losses = estimate_loss()
        if ddp: # every rank evaluated its own batches: report their mean
            values = torch.tensor(list(losses.values()), device=device)
            dist.all_reduce(values) # a sum: gloo has no average
            losses = dict(zip(losses, (values / ddp_world_size).tolist()))
        if not all(math.isfinite(v) for k, v in losses.items() if k != 'bound_se'): # one eval batch has no error
            raise UserError(f"the evaluation loss is NaN/inf at iteration {iter_num}: lower learning_rate; the last good checkpoint in {out_dir} was kept")
        if master_process:
            extra = ''
            if diffusion_mode:
                extra = (f", masked val CE 15/50/90%: {'/'.join(f'{losses[k]:.4f}' for k in diffusion.MASKED_METRICS)}"
                         f", val bound {losses['bound']:.4f} nats/token = {losses['bound'] / math.log(2):.4f} bits/token")
            if val_chars_per_token not in (None, 1.0): # the bound (diffusion) or the val loss (AR) per character
                extra += f" = {losses['bound' if diffusion_mode else 'val'] / val_chars_per_token:.4f} nats/char"
            if 'ar' in losses:
                extra += f", AR-mode val loss {losses['ar']:.4f}" + (f" = {losses['ar'] / val_chars_per_token:.4f} nats/char"
                                                                   if val_chars_per_token not in (None, 1.0) else '')
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{extra}")
            append_log(out_dir, dict(kind='eval', iter=iter_num, **losses, val_chars_per_token=val_chars_per_token))
            if wandb_log:
                wandb.log({"iter": iter_num, "train/loss": losses['train'], "val/loss": losses['val'], "lr": lr,
                           "mfu": running_mfu*100, **{f"val/{k}": v for k, v in losses.items() if k not in ('train', 'val')}})
        score = losses.get('bound', losses['val']) # a diffusion model's val loss is its training objective, not its NLL
        best_iter = iter_num if score < best_val_loss else best_iter
        if score < best_val_loss or always_save_checkpoint:
            best_val_loss = min(best_val_loss, score)
            if iter_num > 0:
                save()
    if iter_num >= max_iters or eval_only:
        break
    if patience and iter_num - best_iter >= patience * eval_interval:
        print(f"stopping early at iteration {iter_num}: val has not improved for {patience} evals, since iteration {best_iter}")
        break

    # forward backward update, with gradient accumulation and the GradScaler (float16), then the controller
    loss, stat_sums, step_nonfinite = diffusion.train_step(
        model, optimizer, scaler, lambda: get_batch(train_data, batch_size, block_size, data_generator, device),
        noise_generator, iter_num, step_settings, ctx, ddp_world_size)
    nonfinite |= step_nonfinite

    # timing and logging
    t1 = time.time()
    dt = t1 - t0
    t0 = t1
    iter_num += 1
    local_iter_num += 1
    # the flags are read where the log syncs anyway; a single process also reads its own stop
    # signal at once (under DDP the processes must agree, at the same iterations)
    if iter_num % log_interval == 0 or (stop_signal and not ddp):
        check_stop(nonfinite)
    if iter_num % log_interval == 0 and master_process:
        # get loss as float. note: this is a CPU-GPU sync point
        lossf = loss.item()
        if local_iter_num >= 5: # let the training loop settle a bit
            mfu = raw_model.estimate_mfu(batch_size * gradient_accumulation_steps, dt)
            running_mfu = mfu if running_mfu == -1.0 else 0.9*running_mfu + 0.1*mfu
        elapsed = t1 - t_start
        eta = elapsed / (iter_num - iter_start) * (max_iters - iter_num)
        line = (f"iter {iter_num}: loss {lossf:.4f}, time {dt*1000:.2f}ms, {tokens_per_iter / dt:,.0f} tok/s, "
                f"mfu {running_mfu*100:.2f}%, eta {eta / 60:.1f}min")
        record = dict(kind='iter', iter=iter_num, loss=lossf, ms=dt * 1000, tok_s=tokens_per_iter / dt, mfu=running_mfu * 100)
        if device_type == 'cuda':
            record['peak_memory_gib'] = torch.cuda.max_memory_allocated() / 2**30
            line += f", peak memory {record['peak_memory_gib']:.2f}GiB"
        if stat_sums: # one host copy of each statistic, for the line and the record
            record.update({k: v.item() for k, v in stat_sums.items()})
            line += ' | ' + ', '.join(f"{k} {record[k]:.3f}" for k in stat_sums)
        if diffusion_mode:
            record['bias'] = raw_model.mask_logit_bias.item()
            line += f", bias {record['bias']:.3f}"
            if loss_type == 'seed':
                penalty, remask_ratio = diffusion.curriculum(iter_num, penalty_mask_correct, masking_warmup_iters,
                                                             proofreading_warmup_iters, wrong_share)
                line += f", penalty {penalty:.2f}, remask_ratio {remask_ratio:.2f}"
        print(line)
        append_log(out_dir, record)

if ddp:
    dist.destroy_process_group()
