# the quick start's second step: a block diffusion model (blocks of 4) adapted from the short AR
# run of the first step, `python train.py config/train_shakespeare_ar_cpu.py --max_iters=1500
# --lr_decay_iters=1500 --out_dir=out-quickstart-ar`. Adapting a trained AR model measured better
# than a block model from scratch on the same total time (docs/results.md, Benchmark)
exec(open('config/train_shakespeare_block_diffusion_cpu.py').read())

out_dir = 'out-quickstart'
init_from = 'out-quickstart-ar'
max_iters = 500
lr_decay_iters = 500
