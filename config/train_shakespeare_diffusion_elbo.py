# the shakespeare diffusion model trained with the masked-diffusion ELBO (mask-only
# corruption, t ~ U(0,1) per row, loss weighted 1/t): its val loss is an upper bound
# on the negative log-likelihood, in nats per character, comparable to the AR val loss
exec(open('config/train_shakespeare_diffusion.py').read())

out_dir = 'out-shakespeare-diffusion-elbo'
wandb_run_name = 'mini-diffusion-elbo'
loss_type = 'elbo'
noise_schedule = 'linear'
# the winner of the training ablation at CPU size (docs/results.md, Training ablation); not yet measured at this size
loss_weighting = 'token_mean'
mask_rate_min = 0.3
mask_rate_max = 0.8
