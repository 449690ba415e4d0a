"""plots.write_plots on named rows: any mix of models plots (one AR, two diffusion models, a
model without proofreading rows, detectors with a different number of rates), and the module
needs no matplotlib to import."""
import pytest

from plots import write_plots, write_scarce_plot

NAMES = ('val text', 'ar', 'block', 'full')


def quality_row(name, sampler, steps, passes, nll, model=object()):
    return dict(name=name, sampler=sampler, steps=steps, passes=passes, nll=nll, entropy=3.0, rep=0.1,
                model=None if name == 'val text' else model, matched=nll < 2)


def test_plots_of_an_unusual_mix(tmp_path):
    pytest.importorskip('matplotlib', reason='plots need matplotlib (pip install matplotlib)')
    fixed = [quality_row('val text', 'reference', '-', '-', 1.6), quality_row('ar', 'autoregressive', '-', 127, 1.7),
             *(quality_row('block', sampler, steps, steps, 2.0 + 1 / steps)
               for sampler in ('left_to_right', 'refine') for steps in (32, 128)),
             quality_row('full', 'confidence', 64, 64, 3.0)] # one point only
    matched = [quality_row('ar', 'autoregressive', '-', 127, 1.5), quality_row('block', 'refine', 128, 128, 2.1)]
    proofreading = [dict(name=name, detector=detector, rate=rate, prf=(0.5, 0.5, 0.5), before=rate, after=rate / 2)
                    for name, detectors, rates in (('ar', ['threshold'], (0.02, 0.05, 0.1)),
                                                   ('block', ['argmax', 'threshold'], (0.05, 0.1)))
                    for detector in detectors for rate in rates] # 'full' has no proofreading rows
    dataset_of = {'ar': 'bpe', 'block': 'bpe', 'full': 'char'}
    written = write_plots(str(tmp_path), fixed, matched, proofreading, dataset_of, 0.8, 4)
    assert written == ['sample_quality.png', 'matched_diversity.png', 'proofreading.png']
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_scarce_plot_of_uneven_seeds(tmp_path):
    """Best val against the training text: a model with two seeds at one size and one at another, and a
    model without any finished run at one size (left out, not drawn as zero)."""
    pytest.importorskip('matplotlib', reason='plots need matplotlib (pip install matplotlib)')
    rows = [dict(model='AR', chars=10_000, best=[2.5, 2.52]), dict(model='AR', chars=25_000, best=[2.3]),
            dict(model='ELBO', chars=10_000, best=[]), dict(model='ELBO', chars=25_000, best=[2.36, 2.37])]
    path = write_scarce_plot(str(tmp_path / 'scarce.png'), rows)
    assert path == str(tmp_path / 'scarce.png') and (tmp_path / 'scarce.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
