# the quick start's second step: the autoregressive model of quickstart_ar_cpu.py turned into a
# block diffusion model (blocks of 4 subword tokens) and trained for 500 iterations on the
# [MASK]/[WRONG] seed recipe. Adapting a trained AR model measured better than a block model
# from scratch on the same total time, and subwords better than characters (docs/results.md)
exec(open('config/train_shakespeare_block_seed_cpu.py').read())

out_dir = 'out-quickstart'
dataset = 'shakespeare_bpe'
init_from = 'out-quickstart-ar'
max_iters = 500
lr_decay_iters = 500
