# the ELBO-trained shakespeare diffusion model at laptop-CPU size
exec(open('config/train_shakespeare_diffusion_cpu.py').read())

out_dir = 'out-shakespeare-diffusion-elbo-cpu'
loss_type = 'elbo'
noise_schedule = 'linear'
# the winner of the training ablation (docs/results.md, Training ablation: bound 2.250 -> 2.098, mean of two seeds)
loss_weighting = 'token_mean' # mean CE over a row's masked positions, not the 1/t-weighted bound
mask_rate_min = 0.3 # train on mask rates in [0.3, 0.8] only (BD3-LM's clipping); the bound still covers all
mask_rate_max = 0.8
