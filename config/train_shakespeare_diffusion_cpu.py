# the shakespeare diffusion model at laptop-CPU size: trains in a few minutes on 2 cores
exec(open('config/train_shakespeare_diffusion.py').read())

out_dir = 'out-shakespeare-diffusion-cpu'
device = 'cpu'
compile = False
eval_iters = 20
eval_interval = 500
log_interval = 100
block_size = 128
batch_size = 16
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
max_iters = 2500
lr_decay_iters = 2500
masking_warmup_iters = 500
proofreading_warmup_iters = 500
