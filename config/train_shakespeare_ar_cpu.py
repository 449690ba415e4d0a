# the autoregressive twin of train_shakespeare_diffusion_cpu.py: same size, context,
# batch, iterations and learning rate, so the two compare on an equal budget (bench.py);
# it is also bench.py's default judge of sample quality

out_dir = 'out-shakespeare-ar-cpu'
eval_interval = 500
eval_iters = 20
log_interval = 100

# we expect to overfit on this small dataset, so only save when val improves
always_save_checkpoint = False

wandb_log = False # override via command line if you like
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 16
block_size = 128 # context of up to 128 previous characters

# nanoGPT README's CPU model (4 layers, 4 heads, 128 wide, no dropout)
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
pos_encoding = 'rope' # as the diffusion configs; it also helps AR here (val 1.60 vs 1.72 learned, docs/results.md)

learning_rate = 1e-3 # with baby networks can afford to go a bit higher
max_iters = 2500
lr_decay_iters = 2500 # make equal to max_iters usually
min_lr = 1e-4 # learning_rate / 10 usually
beta2 = 0.99 # make a bit bigger because number of tokens per iter is small
warmup_iters = 100

device = 'cpu'
compile = False # so a run starts at once
