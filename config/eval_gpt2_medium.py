# evaluate the base gpt2-medium
# n_layer=24, n_head=16, n_embd=1024
# 350M params
batch_size = 8
eval_iters = 500 # use more iterations to get good estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-medium'
