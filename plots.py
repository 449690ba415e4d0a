"""
The benchmark's PNG plots, built from its named table rows (dicts), never from their
positions, so any mix of models plots: matplotlib is optional and imported here only.
"""

import itertools
import os

MARKERS = ('-o', '--s', ':^', '-.D', '-P', '--X', ':v') # one per sampler, cycled
DASHES = ('--', ':', '-.') # the reference lines (real text, AR), one style each


def pyplot():
    """matplotlib.pyplot on a backend that needs no display, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_plots(out, fixed, matched, proofreading, dataset_of, temperature, repetition_n):
    """Write sample_quality.png, matched_diversity.png and proofreading.png to out and return
    their names, or [] when matplotlib is not installed.
    fixed, matched: sample-quality rows with name, sampler, steps, passes, nll, entropy, rep and
    model (None for real text), and matched (matched only); real text and AR rows are drawn as
    reference lines, every diffusion (name, sampler) as a curve over forward passes.
    proofreading: rows with name, detector, rate, prf (precision, recall, F1), before, after.
    dataset_of: {generator name: its dataset}."""
    plt = pyplot()
    if plt is None:
        return []
    is_reference = lambda r: r['model'] is None or r['sampler'] == 'autoregressive'
    cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
    names = list(dict.fromkeys(r['name'] for r in [*fixed, *matched, *proofreading] if r.get('model', 1) is not None))
    colours = {name: cycle[i % len(cycle)] for i, name in enumerate(names)}
    curves = list(dict.fromkeys((r['name'], r['sampler']) for r in fixed if not is_reference(r)))
    markers = dict(zip(dict.fromkeys(sampler for _, sampler in curves), itertools.cycle(MARKERS)))

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.5), layout='constrained')
    for ax, key, label in zip(axes, ('nll', 'entropy', 'rep'),
                              ('judge NLL (nats/char)', 'unigram entropy (nats)', f'repeated {repetition_n}-grams')):
        for name, sampler in curves:
            points = sorted((r['passes'], r[key]) for r in fixed if (r['name'], r['sampler']) == (name, sampler))
            ax.plot(*zip(*points), markers[sampler], color=colours[name], label=f"{name} {sampler}")
        for r, style in zip([r for r in fixed if is_reference(r)], itertools.cycle(DASHES)):
            ax.axhline(r[key], color=colours.get(r['name'], 'grey') if r['model'] is not None else 'grey',
                       linestyle=style, label=f"{r['name']} ({r['sampler']})")
        ax.set_xscale('log', base=2)
        ax.set_xlabel('forward passes')
        ax.set_ylabel(label)
    fig.legend(*axes[0].get_legend_handles_labels(), loc='outside lower center', ncol=3, fontsize=8)
    fig.suptitle(f'sample quality at temperature {temperature}: read the judge NLL next to entropy and repetition')
    fig.savefig(os.path.join(out, 'sample_quality.png'), dpi=100)

    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.3 * len(matched)), layout='constrained')
    for i, r in enumerate(matched): # the table's order, best first; a cross where the band was missed
        ax.plot(r['nll'], i, 'o' if r['matched'] else 'x', color=colours[r['name']])
    ax.set_yticks(range(len(matched)), [f"{r['name']} {r['sampler']} {r['steps']}" for r in matched], fontsize=8)
    ax.invert_yaxis()
    for r, style in zip([r for r in fixed if r['model'] is None], itertools.cycle(DASHES)):
        ax.axvline(r['nll'], color='k', linestyle=style, label=r['name'])
    ax.set_xlabel('judge NLL (nats/char) at the unigram entropy of real text (x: not matched)')
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, 'matched_diversity.png'), dpi=100)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout='constrained')
    detectors = list(dict.fromkeys((r['name'], r['detector']) for r in proofreading))
    for (name, detector), style in zip(detectors, itertools.cycle(('-o', '--s'))):
        points = sorted((r['rate'] * 100, r['prf'][2], r['after']) for r in proofreading
                        if (r['name'], r['detector']) == (name, detector))
        rates, f1, after = zip(*points)
        axes[0].plot(rates, f1, style, color=colours[name], label=f"{name} {detector}")
        axes[1].plot(rates, after, style, color=colours[name], label=f"{name} {detector}: after proofread")
    for dataset, style in zip(dict.fromkeys(dataset_of[r['name']] for r in proofreading), itertools.cycle(DASHES)):
        before = dict(sorted((r['rate'] * 100, r['before']) for r in proofreading if dataset_of[r['name']] == dataset))
        axes[1].plot(list(before), list(before.values()), color='grey', linestyle=style, label=f'before ({dataset})')
    for ax, label in zip(axes, ('detection F1 ([WRONG], or AR p<threshold)', 'token error rate')):
        ax.set_xlabel('substituted tokens (%)')
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, 'proofreading.png'), dpi=100)
    plt.close('all')
    return ['sample_quality.png', 'matched_diversity.png', 'proofreading.png']


def write_scarce_plot(path, rows):
    """Write the best val against the size of the training text to path (a PNG) and return it, or None
    when matplotlib is not installed. rows: dicts with model (its label), chars (the training text's
    characters) and best (the best val of each seed, nats/char): every seed a point, one line per model
    through the means."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 5), layout='constrained')
    for model, style in zip(dict.fromkeys(r['model'] for r in rows), itertools.cycle(MARKERS)):
        mine = sorted((r['chars'], r['best']) for r in rows if r['model'] == model and r['best'])
        line, = ax.plot([c for c, _ in mine], [sum(b) / len(b) for _, b in mine], style, label=model)
        for chars, best in mine:
            ax.plot([chars] * len(best), best, '.', color=line.get_color())
    ax.set_xscale('log')
    ax.set_xlabel('training text (characters; the val text is the same for all)')
    ax.set_ylabel('best val: AR NLL or diffusion bound (nats/char)')
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
