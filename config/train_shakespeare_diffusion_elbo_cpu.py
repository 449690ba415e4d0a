# the ELBO-trained shakespeare diffusion model at laptop-CPU size
exec(open('config/train_shakespeare_diffusion_cpu.py').read())

out_dir = 'out-shakespeare-diffusion-elbo-cpu'
loss_type = 'elbo'
noise_schedule = 'linear'
