"""
Prepare OpenWebText with the GPT-2 BPE tokenizer, as in nanoGPT.
Writes train.bin and val.bin (uint16 ids) and meta.json to this folder.
Needs `pip install datasets`, internet, and ~54GB of HuggingFace cache; train.bin is ~17GB.
"""
import json
import os
import sys

import numpy as np
import tiktoken

# number of workers in .map() call; good number to use is ~number of cpu cores // 2
num_proc = max(1, (os.cpu_count() or 1) // 2)
# number of workers in load_dataset() call; best number also depends on network speed
num_proc_load_dataset = num_proc

if __name__ == '__main__': # .map() with num_proc starts worker processes, which import this file
    if len(sys.argv) > 1:
        print(f'error: data/openwebtext/prepare.py takes no options (got {" ".join(sys.argv[1:])}): '
              'run it as python data/openwebtext/prepare.py', file=sys.stderr)
        sys.exit(2)
    try:
        from datasets import load_dataset # huggingface datasets, only needed for this data set
    except ImportError:
        print('error: OpenWebText needs the HuggingFace datasets package: pip install datasets', file=sys.stderr)
        sys.exit(2)
    from tqdm import tqdm # a dependency of datasets

    enc = tiktoken.get_encoding('gpt2')

    # takes 54GB in huggingface .cache dir, about 8M documents (8,013,769)
    dataset = load_dataset('openwebtext', num_proc=num_proc_load_dataset)

    # owt by default only contains the 'train' split, so create a val split (4,007 documents)
    split_dataset = dataset['train'].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split_dataset['val'] = split_dataset.pop('test')

    # tokenize with gpt2 bpe, ending each document with the end of text token (50256)
    def process(example):
        ids = enc.encode_ordinary(example['text']) # encode_ordinary ignores any special tokens
        ids.append(enc.eot_token)
        return {'ids': ids, 'len': len(ids)}

    tokenized = split_dataset.map(process, remove_columns=['text'], desc='tokenizing the splits', num_proc=num_proc)

    # concatenate all the ids in each split into one large array we can use for training
    for split, dset in tokenized.items():
        arr_len = np.sum(dset['len'], dtype=np.uint64)
        filename = os.path.join(os.path.dirname(__file__), f'{split}.bin')
        arr = np.memmap(filename, dtype=np.uint16, mode='w+', shape=(arr_len,)) # enc.max_token_value 50256 < 2**16
        total_batches = 1024
        idx = 0
        for batch_idx in tqdm(range(total_batches), desc=f'writing {filename}'):
            # batch together samples into a larger batch for faster writes
            batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format('numpy')
            arr_batch = np.concatenate(batch['ids'])
            arr[idx : idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()

    with open(os.path.join(os.path.dirname(__file__), 'meta.json'), 'w', encoding='utf-8') as f:
        json.dump({'tokenizer': 'gpt2', 'vocab_size': 50257}, f)

    # train.bin is ~17GB with ~9B tokens (9,035,582,198), val.bin ~8.5MB with ~4M tokens (4,434,897)
    # to read the bin files later, e.g. with numpy: m = np.memmap('train.bin', dtype=np.uint16, mode='r')
