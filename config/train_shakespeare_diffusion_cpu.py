# the shakespeare diffusion model of train_shakespeare_diffusion.py at laptop-CPU size (4 layers,
# 4 heads, 128 wide, block 128): trains in a few minutes on 2 cores. The seed recipe of [MASK] +
# random tokens flagged as [WRONG], with the dual curriculum and the [MASK] bias controller

out_dir = 'out-shakespeare-diffusion-cpu'
eval_interval = 500
eval_iters = 20 # a diffusion eval runs 6 forward passes per batch
log_interval = 100
always_save_checkpoint = True # the diffusion loss keeps improving long after AR starts to overfit

wandb_log = False # override via command line if you like
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-diffusion'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 16
block_size = 128 # context of 128 characters

# nanoGPT README's CPU model (4 layers, 4 heads, 128 wide, no dropout), with bidirectional attention
model_type = 'diffusion'
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
pos_encoding = 'rope' # learned absolute positions leave a small diffusion model at unigram level (docs/results.md)

# the seed recipe: [MASK] to fill in and random tokens to flag as [WRONG]
loss_type = 'seed'
# a fifth of the original recipe's random tokens: with fewer of them the model can trust the text
# it sees, which every un-masking depends on (bound 2.199 vs 2.276, docs/results.md)
wrong_share = 0.2
# corruption rates clipped to [0.3, 0.8] (BD3-LM's clipping): with the share above, bound 2.148
# against 2.199 over the full range; the reported bound still covers every rate
mask_rate_min = 0.3
mask_rate_max = 0.8
penalty_mask_correct = 0.5 # final weight of keeping a correct token: a destructive edit is the worst mistake
masking_warmup_iters = 500 # the curriculum: that penalty ramps in over a fifth of the run
proofreading_warmup_iters = 500 # and so does the share of random tokens
target_mask_prob = 0.5 # the controller steers the mean p([MASK]) at masked positions to this

learning_rate = 1e-3 # with baby networks can afford to go a bit higher
max_iters = 2500
lr_decay_iters = 2500 # make equal to max_iters usually
min_lr = 1e-4 # learning_rate / 10 usually
beta2 = 0.99 # make a bit bigger because number of tokens per iter is small
warmup_iters = 100

device = 'cpu'
compile = False # so a run starts at once
