"""
The measurements of the evaluation script (bench.py), as plain functions on token
tensors, so that each one can be checked on a tiny input with a known answer:
- sample quality: NLL under an autoregressive judge (per token, or per character of text
  that the judge re-encodes with its own tokenizer), unigram entropy, repetition, and the
  temperature search that compares generators at one entropy;
- proofreading: random substitutions with a known truth mask, detection precision/recall/F1,
  the threshold that maximises F1 and its tuning for any detector ([WRONG] of a diffusion
  model, an AR model's token probabilities), the AR detector and rewriter, and the token
  (character) error rate;
- the benchmark's tables: its named rows (dicts) as markdown, with the notes that say how
  each number was measured.
"""

import math
import os
from contextlib import nullcontext

import torch
from torch.nn import functional as F

from diffusion import exact_fraction_positions, random_other_tokens

# ----------------------------------------------------------------------------
# sample quality

@torch.no_grad()
def judge_token_nlls(judge, tokens):
    """(B, L - 1): the negative log-likelihood (nats) of each of tokens[:, 1:] given all the
    tokens before it in its row, under an autoregressive judge (a GPT, or anything whose
    forward(idx, targets) returns logits for every position and whose config.block_size
    is its context). The first token of each row is context only, never scored.
    Rows longer than the judge's context are scored in windows of block_size tokens that
    slide by half a block, each scoring only the tokens no earlier window scored, so every
    token past the first window is predicted from at least half a block of context."""
    L = tokens.size(1)
    block = judge.config.block_size
    nlls = [tokens.new_zeros(tokens.size(0), 0, dtype=torch.float)] # (B, 0) when there is nothing to score
    start, scored_to = 0, 1 # the targets tokens[:, 1:scored_to] are scored
    while scored_to < L:
        window = tokens[:, start:start + block + 1]
        logits, _ = judge(window[:, :-1], window[:, 1:])
        # window[:, 1 + j] is token start + 1 + j: keep the ones from scored_to on
        ce = F.cross_entropy(logits.float().transpose(1, 2), window[:, 1:], reduction='none')
        nlls.append(ce[:, scored_to - start - 1:])
        scored_to = start + window.size(1)
        start += max(1, block // 2)
    return torch.cat(nlls, 1)


def judge_nll_per_char(judge, encode, decode, texts, device='cpu'):
    """Negative log-likelihood in nats per character of texts (a list of strings) under an
    autoregressive judge with its own tokenizer (encode: str -> ids, decode: ids -> str):
    each text is encoded, and every token after its first is scored given all the tokens
    before it (judge_token_nlls); the sum over all texts is divided by the characters those
    tokens hold (each text's length less its first token's). The text of any tokenizer is
    scored on one scale so, and with a char judge this is the mean NLL per token of the text's ids."""
    ids = [torch.tensor(encode(text), dtype=torch.long) for text in texts]
    lengths = torch.tensor([len(i) for i in ids], device=device)
    tokens = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True).to(device) # padded at the end: never context
    scored = torch.arange(1, tokens.size(1), device=device) < lengths[:, None] # real targets, not the padding
    chars = sum(len(text) - len(decode(i[:1].tolist())) for text, i in zip(texts, ids))
    if chars == 0:
        raise ValueError("the texts hold no characters after their first token: nothing to score")
    return judge_token_nlls(judge, tokens)[scored].sum().item() / chars


def unigram_entropy(tokens):
    """Entropy, in nats, of the token frequencies of all of tokens pooled together: 0 for
    a single repeated token, log 2 for two tokens equally often. A sampler that collapses
    onto a few frequent tokens scores low here however plausible each token is. It is an
    estimate from a finite sample, biased low, so compare it with the same number of
    tokens of real text."""
    counts = torch.bincount(tokens.flatten()).double()
    p = counts[counts > 0] / counts.sum()
    return -(p * p.log()).sum().item()


def repetition(tokens, n=4):
    """Mean over rows of the fraction of a row's n-grams that repeat an n-gram seen
    earlier in the same row (1 - distinct/total): 0 when all n-grams differ, close to 1
    for text stuck in a loop. Natural text repeats some n-grams too (for characters,
    ' the' ...), so compare it with real text of the same length."""
    B, L = tokens.shape
    if L < n:
        raise ValueError(f"rows of {L} tokens have no {n}-grams")
    grams = tokens.unfold(1, n, 1) # (B, G, n)
    G = grams.size(1)
    # prefix each n-gram with its row, so that one unique() counts distinct n-grams per row
    rows = torch.arange(B, device=tokens.device).repeat_interleave(G)
    keyed = torch.cat([rows[:, None], grams.reshape(B * G, n)], dim=1)
    distinct = torch.bincount(torch.unique(keyed, dim=0)[:, 0], minlength=B)
    return (1 - distinct.double() / G).mean().item()


def written_chars(tokens, decode):
    """The characters of every row of tokens (B, L), decoded, but those of its first token (given, not written)."""
    return sum(len(decode(row)) - len(decode(row[:1])) for row in tokens.tolist())


def copied_share(texts, source, n=8):
    """The share of the character n-grams of texts found verbatim in source (a training text): an
    overfit model recites its training text, which a judge's NLL rewards."""
    grams = [text[i:i + n] for text in texts for i in range(len(text) - n + 1)]
    return sum(gram in source for gram in grams) / max(1, len(grams))


def sample_metrics(tokens, decode, judge, judge_encode, judge_decode, repetition_n=4, unknown=None, source=None):
    """The sample-quality metrics of samples (B, L) that decode writes as text: the judge NLL per
    character (judge_nll_per_char of the text stripped of the characters that the regex unknown
    matches, those a char judge has no token for, which are counted), unigram entropy and
    repetition in the generator's own tokens, the share of newlines among the characters (a
    sampler that writes many short lines, e.g. speaker names, scores a low NLL), the share of
    8-grams copied from the training text source (copied_share; None without one), the characters
    written per sample (written_chars), and the first sample decoded."""
    rows = [decode(row) for row in tokens.tolist()]
    stripped, dropped = (rows, [0]) if unknown is None else zip(*(unknown.subn('', r) for r in rows))
    return dict(nll=judge_nll_per_char(judge, judge_encode, judge_decode, stripped, tokens.device),
                unknown=sum(dropped), entropy=unigram_entropy(tokens), rep=repetition(tokens, repetition_n),
                newlines=sum(r.count('\n') for r in rows) / max(1, sum(map(len, rows))),
                copied=None if source is None else copied_share(rows, source),
                chars=written_chars(tokens, decode) / len(rows), text=rows[0])


def closest_try(tries, target):
    return min(tries, key=lambda r: abs(r['entropy'] - target))


def at_target(below, above, key, target):
    """r[key] interpolated linearly in entropy between two tries, at the target entropy."""
    share = (target - below['entropy']) / (above['entropy'] - below['entropy'])
    return below[key] + share * (above[key] - below[key])


def match_entropy(measure, target, start_temperature, tolerance, max_tries, min_temperature, max_temperature):
    """A generator's metrics at exactly the target unigram entropy. measure(temperature) generates
    at that temperature and returns a dict of at least 'entropy', 'temperature', 'nll', 'rep' and
    'newlines'. Entropy rises with the temperature: starting at start_temperature, each try steps the
    temperature by 25 % toward the target until two tries bracket it, then takes the secant between
    the bracketing pair, until both ends of the bracket lie within tolerance (a fraction of the
    target) of the target (at most max_tries calls of measure, in [min_temperature, max_temperature]),
    or until one try lands within a twentieth of the band. 'nll', 'rep', 'newlines', 'copied' (if
    measured) and 'temperature' are then interpolated linearly in entropy between those two tries, at the target itself: a band
    alone is not enough, since the NLL moves fast with the entropy (a row at the top of a 2 % band
    pays ~0.1 nats). Returns the try closest to the target with tries= (the calls of measure) and
    matched=True, its interpolated keys and entropy=target, or that try as it is when it lies within
    a twentieth of the band. Without such a bracket: the try closest to the target, matched=False."""
    tries = [measure(min(max(start_temperature, min_temperature), max_temperature))]
    in_band = lambda r: abs(r['entropy'] - target) <= tolerance * target
    while True:
        below = max((r for r in tries if r['entropy'] <= target), key=lambda r: r['entropy'], default=None)
        above = min((r for r in tries if r['entropy'] > target), key=lambda r: r['entropy'], default=None)
        # a try within a twentieth of the band is taken as it is (the NLL moves < 0.01 nats there): the
        # secant can creep onto the target from one side and never bracket it from within the band
        exact = abs(closest_try(tries, target)['entropy'] - target) <= tolerance * target / 20
        bracketed = exact or (below is not None and above is not None and in_band(below) and in_band(above))
        if bracketed or len(tries) == max_tries:
            break
        if below is not None and above is not None: # the secant
            temp = at_target(below, above, 'temperature', target)
        else:
            temp = min(max(tries[-1]['temperature'] * (1.25 if above is None else 0.8), min_temperature), max_temperature)
        if any(r['temperature'] == temp for r in tries): # stuck at a temperature limit, or converged
            break
        tries.append(measure(temp))
    closest = closest_try(tries, target)
    if not bracketed or exact:
        return dict(closest, tries=len(tries), matched=bracketed)
    interpolated = {key: at_target(below, above, key, target) for key in ('nll', 'rep', 'newlines', 'copied', 'temperature')
                    if below.get(key) is not None}
    return dict(closest, **interpolated, entropy=target, tries=len(tries), matched=True)


# ----------------------------------------------------------------------------
# proofreading

def substitute_tokens(x, rate, vocab, generator):
    """x (B, T) with exactly int(T * rate) random positions of every row replaced by a random other token of the
    base vocabulary, and the (B, T) bool truth mask of those positions."""
    truth = exact_fraction_positions(x, rate, generator)
    return torch.where(truth, random_other_tokens(x, vocab, generator), x), truth


def detection_prf(flags, truth):
    """Precision, recall and F1 of the flagged positions against the true ones (bool tensors of one shape), over
    all positions together (micro-average). A ratio with nothing to count is 0, as is F1 when both are 0."""
    tp = (flags & truth).sum().item()
    n_flags, n_truth = flags.sum().item(), truth.sum().item()
    precision = tp / n_flags if n_flags else 0.0
    recall = tp / n_truth if n_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def best_threshold(scores, truth):
    """(threshold, F1) of the detector that flags the positions whose score is below a threshold,
    at the threshold that maximises F1 against truth (bool, the shape of scores; F1 as
    detection_prf). Every cut between two consecutive distinct finite scores is tried (a tie is
    flagged whole or not at all): the threshold is the midpoint of the cut, which generalises
    to other scores best, or the smallest score when no cut has F1 > 0 (nothing flagged).
    An infinite score is never flagged."""
    scores, order = scores.flatten().double().sort()
    hits = truth.flatten()[order].double().cumsum(0) # true positives when the k + 1 lowest scores are flagged
    flagged = torch.arange(1, len(scores) + 1, device=scores.device, dtype=torch.double)
    f1 = 2 * hits / (flagged + truth.sum()) # = 2PR / (P + R)
    # a cut lies after the last of a tie, and below an infinite score
    cut = torch.cat([scores[:-1] < scores[1:], scores.new_ones(1, dtype=torch.bool)]) & scores.isfinite()
    f1 = f1.masked_fill(~cut, -1.0)
    k = int(f1.argmax())
    if f1[k] <= 0:
        return scores[0].item(), 0.0
    above = scores[k + 1] if k + 1 < len(scores) else scores[k] + 1 # nothing above: any higher value
    return ((scores[k] + above) / 2).item(), f1[k].item()


@torch.no_grad()
def tuned_threshold(score, batches, rate, vocab, generator):
    """The F1-best threshold (best_threshold) of a detector that flags the tokens whose score(tokens) (B, T) is
    below it, on clean batches (B, T) of ids below vocab with a share rate substituted (substitute_tokens, batch
    after batch with generator). Any detector: 1 - p([WRONG]) of a diffusion model (whose [WRONG] argmax rarely
    wins when it was trained with few random tokens), or an AR model's token probabilities (ar_token_probs)."""
    corrupted = [substitute_tokens(x, rate, vocab, generator) for x in batches]
    scores = torch.cat([score(tokens) for tokens, _ in corrupted])
    return best_threshold(scores, torch.cat([truth for _, truth in corrupted]))[0]


def ar_token_probs(model, tokens, ctx=nullcontext()):
    """(B, T): an AR model's probability of each token given the tokens before it; +inf at the first
    position, which has no text before it to be judged by (so never below a threshold)."""
    with ctx:
        probs = (-judge_token_nlls(model, tokens)).exp()
    return torch.cat([torch.full_like(probs[:, :1], float('inf')), probs], 1)


@torch.no_grad()
def ar_rewrite(model, tokens, flags, vocab, ctx=nullcontext()):
    """tokens with the flagged positions rewritten left to right, each by the AR model's argmax (over
    the vocab real tokens) given the text before it as corrected so far; the first position, with no
    text before it, stays. Pass k rewrites the k-th flag of every row: a pass per flag of the most
    flagged row."""
    nth = flags[:, 1:].cumsum(1) * flags[:, 1:] # k at the k-th flag of a row, after its first position
    for k in range(1, int(nth.max()) + 1):
        with ctx:
            logits, _ = model(tokens[:, :-1], tokens[:, 1:])
        tokens = torch.cat([tokens[:, :1], torch.where(nth == k, logits[..., :vocab].argmax(-1), tokens[:, 1:])], 1)
    return tokens


def char_error_rate(pred, ref):
    """Fraction of positions where pred differs from ref (one shape): the character error rate of texts that
    stay aligned (substitutions only, as here); not an edit distance (an insertion would shift all)."""
    return (pred != ref).double().mean().item()


# ----------------------------------------------------------------------------
# the benchmark's tables, from bench.py's named rows; settings: bench.py's settings by name, as it
# parsed them (the notes quote them)

def report_header(datasets, judge_dataset, settings):
    """The head of results.md: where the benchmark ran, and every setting (what reruns it)."""
    # timings are only meaningful on an otherwise idle machine: say how busy it was
    busy = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, 'getloadavg') else ''
    return ["# nanoGPT-diffusion benchmark\n",
            f"datasets {', '.join(f'`{d}`' for d in datasets)}, judge on `{judge_dataset}`, device "
            f"`{settings['device']}` ({settings['dtype']}), {os.cpu_count()} CPU cores{busy}, torch "
            f"{torch.__version__}. Settings: " + ', '.join(f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
                                     for key, value in settings.items()) + '.\n']


def fmt(v, digits=3):
    return '-' if v is None or math.isnan(v) else f"{v:.{digits}f}" # NaN: e.g. the standard error of one batch


def markdown(title, notes, header, rows):
    """A markdown table, with its title and notes, as lines."""
    return [f"## {title}\n", *(note + '\n' for note in notes), '| ' + ' | '.join(header) + ' |',
            '|' + '---|' * len(header), *('| ' + ' | '.join(str(v) for v in row) + ' |' for row in rows), '']


def objective(checkpoint):
    """A checkpoint's training objective: 'next token' for AR; for diffusion its loss_type and, for the
    ELBO, its weighting and its clipped range of mask rates where they are not the bound's own."""
    config = checkpoint['config']
    if checkpoint['model_args'].get('model_type', 'gpt2') == 'gpt2':
        return 'next token'
    if config.get('loss_type', 'seed') != 'elbo':
        return 'seed'
    parts, low, high = ['elbo'], config.get('mask_rate_min', 0.0), config.get('mask_rate_max', 1.0)
    if config.get('loss_weighting', 'elbo') != 'elbo':
        parts.append(config['loss_weighting'])
    if (low, high) != (0, 1):
        parts.append(f"mask rate in [{low:g}, {high:g}]")
    return ', '.join(parts)


def block_label(model):
    """The denoising block of a model as the tables show it: '-' for AR, 'full' for full-sequence diffusion."""
    return '-' if model.config.model_type == 'gpt2' else model.denoising_block or 'full'


def validation_table(rows, settings):
    """rows, the AR baseline first: name, dataset, cpt (its characters per token, or None), block, objective, loss
    (nats/token), error (its standard error, or None) and masked ({masked share in %: masked CE in nats/token, or None})."""
    shares, s, ar = list(rows[0]['masked']), settings, rows[0]
    per_char = lambda nats, r: None if nats is None or r['cpt'] is None else nats / r['cpt']

    def vs_ar(r):
        """Relative to the AR baseline, per character so that tokenizers compare (on its own dataset: per token, the
        same ratio); None when a dataset does not count its characters."""
        if r['dataset'] == ar['dataset']:
            return r['loss'] / ar['loss']
        mine, base = per_char(r['loss'], r), per_char(ar['loss'], ar)
        return None if mine is None or base is None else mine / base

    return markdown('Validation loss', [
        f"{s['eval_batches']} val batches of {s['batch_size']} rows of each model's block_size (fixed seed) of its "
        "own dataset.",
        "AR: mean next-token NLL. Diffusion: diffusion.elbo_bound, the continuous-time ELBO of masked diffusion over "
        "the full range of noise levels t (one t per row, or per block of a block model: stratified, fixed seed; a "
        "block is denoised seeing the clean blocks before it). It is an upper bound on the NLL for any denoiser, in "
        "nats per token like the AR loss, so it is reported for every model, whatever its objective; it is tight only "
        "for a model trained on it (`elbo`; `token_mean` weighting and a clipped range of mask rates train on a "
        "reweighting of it, a `seed`-trained model never saw mask-only inputs at every t). Per character: nats/token "
        "divided by the characters per token of the dataset's val split (its meta.json; `-` where it has no counts), "
        f"the unit that compares tokenizers; s.e.: the bound's standard error over the val batches (each draws its own "
        "noise levels; AR: `-`). `vs AR` = loss / the val NLL of {ar['name']}, per character when "
        "the datasets differ (1 would be AR's likelihood). Diffusion block: tokens denoised together (BD3-LM), `full` "
        f"= the whole sequence. Masked CE: mean CE over the words at exactly {'/'.join(shares)} % masked positions "
        "(the fill-in-the-blank loss, comparable across objectives), per token, then per character."],
        ['model', 'diffusion block', 'objective', 'nats/token', 'bits/token', 'nats/char', 's.e./char', 'bits/char', 'vs AR']
        + [f"masked CE {share}%" for share in shares] + [f"masked CE/char {share}%" for share in shares],
        [[r['name'], r['block'], r['objective'], fmt(r['loss'], 4), fmt(r['loss'] / math.log(2), 4),
          fmt(per_char(r['loss'], r), 4), fmt(per_char(r['error'], r), 4), fmt(None if r['cpt'] is None else r['loss'] / r['cpt'] / math.log(2), 4),
          fmt(vs_ar(r))] + [fmt(r['masked'][share]) for share in shares]
         + [fmt(per_char(r['masked'][share], r)) for share in shares] for r in rows])


def chars_per_pass(r):
    """Characters each forward pass of a generator wrote, per sample."""
    return '-' if r['passes'] == '-' else fmt(r['chars'] / r['passes'], 2)


def unknown_note(rows, judge):
    """What a char judge dropped from these rows' text (nothing to say for another judge)."""
    if judge.unknown is None:
        return ''
    return (f" The judge has no token for {sum(r['unknown'] for r in rows)} of the characters in these rows (a BPE "
            "can write any byte): they are dropped before scoring.")


def fixed_table(rows, judge, settings):
    """rows (sample_metrics with name, block, sampler, steps_label, passes), real text first; judge: its
    name, model, dataset, unknown (the regex of the characters a char judge has no token for, else None)
    and baseline (whether it is the AR baseline)."""
    s, length = settings, settings['sample_length']
    judge_note = ("The judge is the AR baseline itself, so the AR samples are scored by the model that wrote them "
                  "(at temperature 1 their NLL is its own entropy rate: a favourable reference); pass judge_dir for an "
                  "independent judge." if judge.baseline else f"The judge is {judge.name}.")
    return markdown('Sample quality at a fixed temperature', [
        f"{s['num_samples']} samples of {length} tokens (of each generator's own tokenizer) per generator, "
        f"temperature {s['temperature']}; the first token of each sample is the first token of a random val window of "
        "the generator's dataset, the same for every generator of that dataset, and the rest is generated. "
        "Chars/pass: characters written per sample / forward passes.",
        f"Judge NLL: nats per character. Each sample is decoded to text and re-encoded with the tokenizer of the AR "
        f"judge (dataset `{judge.dataset}`); every judge token after the first is scored given all the tokens "
        "before it, and the sum is divided by the characters of the scored tokens, so generators of any tokenizer "
        f"are scored alike (for a char generator and a char judge: tokens 2..{length}). The judge's context is its "
        f"block_size of {judge.model.config.block_size} tokens: longer texts are scored in windows sliding by half a "
        "block. " + judge_note + unknown_note(rows, judge),
        "Entropy: unigram entropy (nats) of all generated tokens pooled; repeated n-grams: mean over samples of the "
        f"fraction of a sample's {s['repetition_n']}-grams that repeat an earlier one in it; both in the generator's "
        "own tokens, so compare them with the `val text` row of its dataset; newlines: the share of newline "
        "characters in the decoded text; copied 8-grams: the share of the character 8-grams of the text found verbatim in "
        "the generator's training text (an overfit model recites it, and the judge rewards that). **Read the judge "
        "NLL next to all four**: a low NLL with a collapsed entropy "
        "or a high repetition is a degenerate sampler (repeating frequent tokens), and one with many more newlines "
        "than real text writes short lines (speaker names) that are easy to predict; neither is a good one. The next "
        "table compares generators at the entropy of real text. The `val text` row is real text of the same size, "
        "the reference for all four.",
        "Samplers (sampling.PRESETS, all through sampling.generate): `refine` is the seed's loop (steps = max_steps; "
        "it may stop early), `confidence` commits the most confident proposals on a cosine schedule, `ancestral` "
        "commits a random choice of proposals on the same schedule (MDLM's ancestral order, the model's own "
        "distribution), `left_to_right` the leftmost masked positions (next-token order inside a block), `threshold` "
        f"every proposal more probable than {s['threshold']} (Fast-dLLM): it sets its own number of passes, the step "
        "count (`<=`) is only its cap. Steps count denoising passes over the whole sample: a block model (diffusion "
        f"block < block_size) writes block after block, each in max(1, round(steps x block / {length - 1})) passes "
        "(`/block`), seeing the finished blocks through a KV cache; forward passes are all the passes "
        "sampling.generate used. The first sample of each row is in samples.txt."],
        ['model', 'diffusion block', 'sampler', 'steps', 'forward passes', 'chars/pass', 'judge nats/char', 'entropy',
         f"repeated {s['repetition_n']}-grams", 'newlines', 'copied 8-grams'],
        [[r['name'], r['block'], r['sampler'], r['steps_label'], r['passes'], chars_per_pass(r), fmt(r['nll']),
          fmt(r['entropy']), fmt(r['rep']), fmt(r['newlines']), fmt(r['copied'])] for r in rows])


def matched_table(references, rows, generations, ar_name, judge, settings):
    """references: the real-text rows of fixed_table, by dataset; rows: match_entropy's results (as fixed_table's
    rows, with tries and matched), best first; generations: every try; ar_name: the AR baseline."""
    s = settings
    ar = next(r for r in rows if r['name'] == ar_name)
    return markdown('Sample quality at matched diversity', [
        f"The headline comparison. For AR and for every diffusion model x sampler at step counts "
        f"{', '.join(map(str, s['match_step_counts']))} (as in the table above), the temperature is searched so that "
        "the unigram entropy of the samples equals that of the `val text` row of the generator's dataset ("
        + ', '.join(f"{r['entropy']:.3f} nats for `{d}`" for d, r in references.items()) + ": real text of the "
        f"same number of tokens, {s['num_samples']} x {s['sample_length']}, since the estimate depends on the sample "
        f"size). From temperature {s['temperature']}, the search steps the temperature (in [{s['min_temperature']}, "
        f"{s['max_temperature']}]) until two tries within {s['match_tolerance'] * 100:g} % of the target entropy lie "
        f"one on each side of it, at most {s['match_tries']} tries (`tries`) of {s['num_samples']} samples each, with "
        "the same seed at every temperature; the judge NLL, repetition, newline and copied shares and temperature "
        "are interpolated linearly in entropy between those two, at the target exactly (a row anywhere in a 2 % band "
        "could be ~0.1 nats better or worse), or a single try within a twentieth of the band is taken as it is. A "
        "generator with neither shows its try closest to the target, `not matched`, at the bottom. Rows sorted by "
        "judge NLL (nats/char: comparable across tokenizers), `vs AR` = judge NLL / the matched judge NLL of "
        f"{ar_name} ({ar['nll']:.3f}). Forward passes and chars/pass: the try closest to the target; every try's "
        "first sample is in samples.txt." + unknown_note(generations, judge)],
        ['model', 'diffusion block', 'sampler', 'steps', 'temperature', 'tries', 'judge nats/char', 'vs AR', 'entropy',
         f"repeated {s['repetition_n']}-grams", 'newlines', 'copied 8-grams', 'forward passes', 'chars/pass', 'matched'],
        [[r['name'], r['block'], r['sampler'], r['steps_label'],
          r['temperature'] if r['model'] is None else fmt(r['temperature']), r.get('tries', '-'), fmt(r['nll']),
          fmt(r['nll'] / ar['nll']), fmt(r['entropy']), fmt(r['rep']), fmt(r['newlines']), fmt(r['copied']), r['passes'],
          chars_per_pass(r), 'reference' if r['model'] is None else 'yes' if r['matched'] else 'not matched']
         for r in [*references.values()] + rows])


def proofreading_table(rows, settings):
    """rows: label, block, objective, rate, prf (precision, recall, F1), and the error rates before, after
    and oracle (after, with perfect detection)."""
    s = settings
    return markdown('Proofreading', [
        f"{s['eval_batches']} val batches of {s['batch_size']} rows of each model's block_size of its dataset; in "
        "every row exactly int(rate * block_size) positions get a random different token; the models of one dataset "
        "and block_size see the same corrupted batches. Diffusion detection: the positions sampling.wrong_flags flags "
        "[WRONG] against the substituted ones, counted over all positions (precision, recall, F1 micro-averaged): "
        "first where [WRONG] is the argmax over everything but [MASK], then (`p([WRONG])>threshold`) where p([WRONG]) "
        "exceeds the F1-best threshold on the tuning draw of batches (metrics.tuned_threshold), as for the AR rows. "
        f"Correction: sampling.proofread sends the flagged tokens back to [MASK] and rewrites them in "
        f"{s['proofread_steps']} confidence steps at temperature {s['proofread_temperature']}. Both see the whole row "
        "at once: a block model with its block-causal attention (each block sees itself and the blocks before it). "
        "Error rate: fraction of tokens that differ from the clean text (substitution only, so the texts stay "
        "aligned: Hamming = character error rate for char data). `after, perfect detection`: the same rewrite of "
        "exactly the substituted positions, the error rate a perfect detector would leave with this model's "
        "corrections (it separates detection from correction). A model trained with the `elbo` objective never saw "
        "[WRONG] as a target: its detection measures an untrained head.",
        "AR rows (`AR p<threshold`): an AR model as a detector of the same budget. It flags a token when its "
        "probability given the text before it is below the threshold, the F1-maximising one (metrics.tuned_threshold) "
        f"on another draw of {s['eval_batches']} corrupted val batches at the same rate; the first position of a row, "
        "with no text before it, is never flagged (its substitutions count as misses). Correction: the flagged tokens "
        "are rewritten left to right, each by the AR argmax given the corrected text before it (one forward pass per "
        "flag of the most flagged row), never seeing the text after it; `after, perfect detection` rewrites the "
        "substituted positions so."],
        ['model', 'diffusion block', 'objective', 'substituted', 'precision', 'recall', 'F1', 'error rate before',
         'error rate after', 'after, perfect detection'],
        [[r['label'], r['block'], r['objective'], f"{r['rate'] * 100:g}%", *map(fmt, r['prf']), fmt(r['before'], 4),
          fmt(r['after'], 4), fmt(r['oracle'], 4)] for r in rows])


def training_table(rows, arch_name, arch, settings):
    """rows, AR first: label, block, objective, parameters, seconds (per iteration) and tokens_per_s of fresh
    models of the architecture arch (a GPTConfig as a dict) of the checkpoint arch_name."""
    s = settings
    return markdown('Training speed', [
        f"Fresh models of the architecture of {arch_name} ({arch['n_layer']} layers, {arch['n_head']} heads, "
        f"{arch['n_embd']} wide, block_size {arch['block_size']}, {arch['pos_encoding']} positions), batch "
        f"{s['batch_size']}, eager (no torch.compile), {s['speed_iters']} timed iterations of train.py's step "
        "(diffusion.train_step) with its default settings: forward, loss, backward, gradient clipping, AdamW through "
        "the GradScaler (on for float16 only); for diffusion the `elbo` objective, its mask-only corruption (one "
        "noise level per row, or per block) and the [MASK] bias controller. A block model (one per diffusion block "
        "among the checkpoints) runs the two-stream pass of BD3-LM: the noisy and the clean text side by side, "
        "twice the positions. tokens/s counts the text tokens of a batch; `vs AR` is tokens/s relative to AR."],
        ['model', 'diffusion block', 'objective', 'parameters', 'ms/iteration', 'tokens/s', 'vs AR'],
        [[r['label'], r['block'], r['objective'], f"{r['parameters']:,}", fmt(r['seconds'] * 1000, 1),
          f"{r['tokens_per_s']:,.0f}", fmt(r['tokens_per_s'] / rows[0]['tokens_per_s'], 2)] for r in rows])


def generation_table(rows, settings):
    """rows, the AR baseline first: name, block, sampler, steps_label, temperature, and (tokens/s, chars/s,
    forward passes, chars per pass) at batch 1 (one) and at batch num_samples (many)."""
    s, n = settings, settings['num_samples']
    ar = rows[0] # the AR baseline, with its KV cache
    return markdown('Generation speed', [
        f"{s['sample_length'] - 1} tokens (of each generator's tokenizer) written after a given first one, by one "
        f"sample (batch 1) and by a batch of {n}; tokens/s and chars/s = generated tokens or characters / wall time of "
        "the generation alone (after an untimed warm-up run at batch 1). AR: each trained checkpoint with its KV "
        "cache (model.generate) at its matched temperature. Diffusion: each trained checkpoint through "
        "sampling.generate (block models block by block with their KV cache), at the sampler, steps and temperature "
        "of its best row at matched diversity (its lowest judge NLL; marked if it did not reach the band), then every "
        "block model with the `left_to_right` sampler at "
        f"{', '.join(map(str, s['speed_block_passes']))} passes per block, temperature {s['temperature']}, and every "
        "block model trained with ar_loss_weight > 0 with the `speculative` sampler (TiDAR: it drafts by diffusion "
        "and verifies with its AR mode in the same pass, so its text is distributed as the AR mode's, in as many "
        "passes as its drafts need). Forward passes and chars/pass at batch 1 / at the batch: `refine`, the "
        "adaptive samplers (`<=`) and `speculative` stop when every sample of the batch is done. `vs AR`: chars/s / "
        f"that of {ar['name']} at the same batch size (characters compare across tokenizers)."],
        ['generator', 'diffusion block', 'sampler', 'steps', 'temperature', 'forward passes', 'chars/pass',
         'tokens/s batch 1', 'chars/s batch 1', f'tokens/s batch {n}', f'chars/s batch {n}', 'vs AR batch 1',
         f'vs AR batch {n}'],
        [[r['name'], r['block'], r['sampler'], r['steps_label'], fmt(r['temperature']),
          f"{r['one'][2]} / {r['many'][2]}", f"{r['one'][3]:.2f} / {r['many'][3]:.2f}", f"{r['one'][0]:,.0f}",
          f"{r['one'][1]:,.0f}", f"{r['many'][0]:,.0f}", f"{r['many'][1]:,.0f}", fmt(r['one'][1] / ar['one'][1], 2),
          fmt(r['many'][1] / ar['many'][1], 2)] for r in rows])
