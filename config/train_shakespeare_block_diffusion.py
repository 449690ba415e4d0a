# block diffusion (BD3-LM) at nanoGPT's shakespeare_char GPU size (6 layers, 6 heads, 384 wide,
# block_size 256): blocks of diffusion_block characters, each denoised with the clean blocks
# before it as context; the ELBO objective on the token mean, the full bound reported. The seed
# recipe's settings of train_shakespeare_diffusion.py (wrong_share, the curriculum) go unused.
exec(open('config/train_shakespeare_diffusion.py').read())

out_dir = 'out-shakespeare-block'
wandb_run_name = 'mini-block-diffusion'
diffusion_block = 4
loss_type = 'elbo'
loss_weighting = 'token_mean'
mask_rate_min = 0.0 # the full range, as the CPU block configs (clipping measured worse there, seed recipe)
mask_rate_max = 1.0
