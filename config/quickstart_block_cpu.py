# the quick start's second step: the AR model of quickstart_ar_cpu.py turned into a block diffusion
# model (blocks of 4 subword tokens) and trained for 500 iterations on the [MASK]/[WRONG] seed recipe.
# Every setting it trains with is here; the measurements quoted are in docs/results.md.

# model: the AR model, adapted
init_from = 'out-quickstart-ar' # adapting a trained AR model beat a block model from scratch in the same time
model_type = 'diffusion' # bidirectional attention inside each block, causal across blocks
diffusion_block = 4 # tokens per block: the best bound of 4, 8, 16 and the full sequence
n_layer = 4 # the AR model's shape, which init_from brings
n_head = 4 # as the AR model
n_embd = 128 # as the AR model
pos_encoding = 'rope' # as the AR model: learned positions leave a small diffusion model at unigram level
dropout = 0.0 # none at this size, as in nanoGPT's CPU run

# data
dataset = 'shakespeare_bpe' # 1,024 subword tokens: block bound 1.758 nats/char vs 2.101 on characters
block_size = 128 # context of 128 tokens, as the AR model
batch_size = 16 # rows per iteration, as the AR model
gradient_accumulation_steps = 1 # one micro-batch per step

# objective: the seed recipe, its curriculum and the [MASK] bias controller
loss_type = 'seed' # [MASK] to fill in, random tokens to flag as [WRONG]: F1 0.73 at 5 % vs 0.66 for AR
wrong_share = 0.2 # a fifth of the random tokens: bound 2.199 vs 2.276 in full rows, best of 0.2/0.5/1 in blocks
mask_rate_min = 0.0 # corruption rates over the full range: BD3-LM's [0.45, 0.95] measured worse (1.785 vs 1.779)
mask_rate_max = 1.0 # the other end of that range
penalty_mask_correct = 0.5 # weight of keeping a correct token: a destructive edit is the worst mistake
masking_warmup_iters = 100 # that penalty ramps in over 100 iterations: short ramps for an adapted model
proofreading_warmup_iters = 100 # the share of random tokens ramps in as fast
target_mask_prob = 0.5 # the controller steers mean p([MASK]) to 0.5: refine defers about half a block a pass

# optimizer and iterations
learning_rate = 1e-3 # with baby networks can afford to go a bit higher (nanoGPT)
min_lr = 1e-4 # learning_rate / 10
beta2 = 0.99 # a bit bigger because the number of tokens per iteration is small (nanoGPT)
warmup_iters = 100 # learning-rate warm-up, as the AR model
max_iters = 500 # after the AR model's 1,500; about 190 ms an iteration on 2 cores
lr_decay_iters = 500 # = max_iters

# eval, checkpoints, logs, machine
eval_interval = 500 # evals at iterations 0 and 500: a diffusion eval runs 6 forward passes per batch
eval_iters = 20 # batches per split
log_interval = 100 # a log line every 100 iterations
always_save_checkpoint = True # the diffusion loss keeps improving: keep the last model
out_dir = 'out-quickstart' # the quick start samples it: generate_diffusion.py --out_dir=out-quickstart
wandb_log = False # override via command line if you like
wandb_project = 'shakespeare-char' # used only with wandb_log
wandb_run_name = 'mini-diffusion' # used only with wandb_log
device = 'cpu' # laptop size
compile = False # so a run starts at once
