# the quick start's first step: a small autoregressive model of Tiny Shakespeare in subword
# tokens (a byte-level BPE of 1,024 tokens trained offline: python data/shakespeare_bpe/prepare.py),
# 1,500 iterations; the second step (quickstart_block_cpu.py) turns it into a block diffusion model
exec(open('config/train_shakespeare_ar_cpu.py').read())

out_dir = 'out-quickstart-ar'
dataset = 'shakespeare_bpe'
max_iters = 1500
lr_decay_iters = 1500
