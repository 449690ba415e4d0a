"""
Sample from a trained autoregressive model, as in nanoGPT:
$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --init_from=gpt2 --start="What is the answer to life?" --num_samples=2
Diffusion checkpoints are sampled with generate_diffusion.py.
"""

import importlib.util

import torch

from configurator import UserError, configure, require_range
from loading import gpt2_tokenizer, load_model, load_tokenizer, read_text, setup_device, timed
from model import GPT

# -----------------------------------------------------------------------------
init_from = 'resume' # either 'resume' (from an out_dir) or a gpt2 variant (e.g. 'gpt2-xl')
out_dir = 'out' # ignored if init_from is not 'resume'
start = "\n" # or "<|endoftext|>" or etc. Can also specify a file, use as: "FILE:prompt.txt"
num_samples = 10 # number of samples to draw
max_new_tokens = 500 # number of tokens generated in each sample
temperature = 0.8 # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, in predictions
top_k = 200 # retain only the top_k most likely tokens, clamp others to have 0 probability
seed = 1337
device = 'auto' # 'auto' (cuda > mps > cpu), or 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto' # 'auto': bfloat16 on CUDA if supported else float16; float32 elsewhere
compile = False # use PyTorch 2.0 to compile the model to be faster
use_kv_cache = True # reuse the keys and values of earlier tokens: one new token per forward pass
# -----------------------------------------------------------------------------
configure(globals())
# -----------------------------------------------------------------------------
if temperature <= 0:
    raise UserError(f"temperature must be > 0, not {temperature}")
if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
    raise UserError(f"top_k must be a positive integer or None, not {top_k!r}")
if num_samples < 1 or max_new_tokens < 1:
    raise UserError("num_samples and max_new_tokens must be at least 1")
require_range('seed', seed, low=0, high=2**63, high_open=True, integer=True)
if init_from not in ('resume', 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'):
    raise UserError(f"init_from must be 'resume' or a GPT-2 model ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'), not {init_from!r}")
if init_from != 'resume' and importlib.util.find_spec('transformers') is None:
    raise UserError(f"init_from={init_from!r} loads OpenAI's weights with the transformers package: pip install transformers")

device, device_type, dtype, ctx = setup_device(device, dtype)
torch.manual_seed(seed)

# model and tokenizer
if init_from == 'resume':
    model, checkpoint = load_model(out_dir, device, 'gpt2', 'sample.py')
    encode, decode = load_tokenizer(checkpoint['config']['dataset'])
else:
    model = GPT.from_pretrained(init_from, dict(dropout=0.0)).to(device).eval()
    encode, decode = gpt2_tokenizer()
if compile:
    # generate() calls forward with a growing KV cache: compile forward itself, for any length
    model.forward = torch.compile(model.forward, dynamic=True)

# encode the beginning of the prompt
start = read_text(start, 'start')
start_ids = encode(start)
if not start_ids:
    raise UserError("the prompt is empty: an autoregressive model needs at least one token to continue (e.g. --start='\\n')")

# run generation: all samples in one batch
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None].repeat(num_samples, 1)
generator = torch.Generator(device=device).manual_seed(seed)
with ctx:
    y, elapsed = timed(lambda: model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k,
                                              use_kv_cache=use_kv_cache, generator=generator), device_type)
for row in y.tolist():
    print(decode(row))
    print('---------------')
print(f"{num_samples} samples of {max_new_tokens} new tokens in {elapsed:.2f}s: "
      f"{num_samples * max_new_tokens / elapsed:,.0f} tokens/s")
