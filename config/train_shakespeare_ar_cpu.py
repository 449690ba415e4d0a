# the autoregressive twin of train_shakespeare_diffusion_cpu.py: same size, context,
# batch, iterations and learning rate, so the two compare on an equal budget (bench.py);
# it is also bench.py's default judge of sample quality
exec(open('config/train_shakespeare_char_cpu.py').read())

out_dir = 'out-shakespeare-ar-cpu'
pos_encoding = 'rope' # as the diffusion configs; it also helps AR here (val 1.60 vs 1.72 learned, docs/results.md)
log_interval = 100
eval_interval = 500
block_size = 128
batch_size = 16
max_iters = 2500
lr_decay_iters = 2500
