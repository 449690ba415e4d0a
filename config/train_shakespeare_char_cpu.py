# the character-level shakespeare AR model at laptop-CPU size: nanoGPT README's CPU
# settings (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iters; val ~1.88)
exec(open('config/train_shakespeare_char.py').read())

out_dir = 'out-shakespeare-char-cpu'
device = 'cpu'
compile = False
eval_iters = 20
eval_interval = 250
log_interval = 50
block_size = 64
batch_size = 12
n_layer = 4
n_head = 4
n_embd = 128
max_iters = 2000
lr_decay_iters = 2000
dropout = 0.0
