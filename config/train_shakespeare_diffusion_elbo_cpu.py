# the shakespeare diffusion model of train_shakespeare_diffusion_cpu.py trained with the
# masked-diffusion ELBO instead (mask-only corruption, t ~ U(0,1) per row): its val bound is an upper
# bound on the negative log-likelihood, in nats per character, comparable to the AR val loss. The
# seed recipe's settings of that config (wrong_share, the curriculum) go unused.
exec(open('config/train_shakespeare_diffusion_cpu.py').read())

out_dir = 'out-shakespeare-diffusion-elbo-cpu'
loss_type = 'elbo'
# the winner of the training ablation (docs/results.md, Training ablation: bound 2.250 -> 2.098, mean of two seeds)
loss_weighting = 'token_mean' # mean CE over a row's masked positions, not the 1/t-weighted bound
mask_rate_min = 0.3 # train on mask rates in [0.3, 0.8] only (BD3-LM's clipping); the bound still covers all
mask_rate_max = 0.8
