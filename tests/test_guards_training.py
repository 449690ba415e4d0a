"""Values the training and evaluation side must keep: the token-mean weighting by hand, the
bound and the masked val CE of a block model computed block by block with its clean prefix in
the KV cache, checkpoints written atomically and read without running code, and the context
the AR judge gets."""
import math
import re
from types import SimpleNamespace

import pytest
import torch

import diffusion
import loading
from metrics import judge_token_nlls
from model import GPT, GPTConfig, KVCache
from sampling import block_causal_mask

V = 10 # base vocabulary
MASK, WRONG = V, V + 1
T, BLOCK = 32, 8


def test_token_mean_by_hand():
    """The mean CE over each row's masked positions, averaged over rows; a row without a mask
    adds 0 (and still counts as a row)."""
    x = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 1, 2]])
    inputs = torch.tensor([[MASK, 2, 3, 4], [MASK, MASK, 7, MASK], [9, 0, 1, 2]])
    logits = torch.randn(3, 4, V + 2, generator=torch.Generator().manual_seed(0)) * 3
    t = torch.tensor([0.2, 0.5, 0.7]) # the ELBO's 1/t weights: ignored by the token mean
    ce = [[(torch.logsumexp(logits[b, i, :V].double(), 0) - logits[b, i, x[b, i]]).item() for i in range(4)]
          for b in range(3)]
    rows = [ce[0][0], (ce[1][0] + ce[1][1] + ce[1][3]) / 3, 0.0]
    loss, stats = diffusion.elbo_loss(logits, inputs, x, t, MASK, WRONG, weighting='token_mean')
    assert loss.item() == pytest.approx(sum(rows) / 3, rel=1e-5)
    assert stats['loss_unmask'].item() == pytest.approx((ce[0][0] + ce[1][0] + ce[1][1] + ce[1][3]) / 4, rel=1e-5)


def tiny_block_model(pos_encoding='rope'):
    torch.manual_seed(0)
    return GPT(GPTConfig(model_type='diffusion', n_layer=2, n_head=2, n_embd=32, block_size=T, vocab_size=V + 2,
                         mask_token_id=MASK, wrong_token_id=WRONG, pos_encoding=pos_encoding,
                         diffusion_block=BLOCK)).eval()


def blockwise_logits(model, noisy, clean):
    """Logits of each noisy block seeing the clean blocks before it, from the KV cache."""
    out = []
    for s in range(0, T, BLOCK):
        cache, prefix = KVCache(), torch.arange(s)
        if s: # the clean blocks before it, block-causally
            model(clean[:, :s], kv_cache=cache, attn_mask=block_causal_mask(prefix, prefix, BLOCK))
        out.append(model(noisy[:, s:s + BLOCK], kv_cache=cache)[0])
    return torch.cat(out, 1)


def masked_word_ce(logits, inputs, targets):
    """(B, T) cross-entropy over the words, 0 where the input is not masked."""
    logp = logits.double()[..., :V].log_softmax(-1)
    return -logp.gather(-1, targets[..., None]).squeeze(-1) * (inputs == MASK)


@pytest.mark.parametrize('pos_encoding', ['rope', 'learned'])
def test_block_bound_sees_the_clean_prefix(pos_encoding):
    """elbo_bound of a block model = per block, weight x summed masked CE of the block seeing
    the clean text before it, over T, summed over blocks and averaged over rows and batches; its
    error is the standard error of that mean over the batches (none for one batch)."""
    model = tiny_block_model(pos_encoding)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(V, (3, T), generator=g) for _ in range(2)]
    bound, error = diffusion.elbo_bound(model, batches, torch.Generator().manual_seed(2))
    noise, expected = torch.Generator().manual_seed(2), []
    for x in batches:
        inputs, _, t = diffusion.corrupt_mask_only(diffusion.block_rows(x, BLOCK), noise, MASK)
        weight = 1 / t
        inputs = inputs.view_as(x)
        ce = masked_word_ce(blockwise_logits(model, inputs, x), inputs, x).view(-1, BLOCK).sum(1)
        expected.append((weight.double() * ce).view(3, -1).sum(1).mean() / T)
    assert bound == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert error == pytest.approx(abs(expected[0] - expected[1]).item() / 2, rel=1e-4) # the std of two over sqrt(2)
    assert math.isnan(diffusion.elbo_bound(model, batches[:1], torch.Generator().manual_seed(2))[1])


def test_val_metrics_is_the_bound_and_the_masked_ce_on_their_seeds():
    """The one function train.py and bench.py both call: the bound on noise seed + 1 and the masked
    CE at 15/50/90 % on seed + 2, each fraction drawn from a fresh generator."""
    model = tiny_block_model()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(V, (3, T), generator=g) for _ in range(2)]
    found = diffusion.val_metrics(model, batches, seed=40)
    assert list(found) == list(diffusion.VAL_METRICS) == ['bound', 'bound_se', 'masked15', 'masked50', 'masked90']
    assert (found['bound'], found['bound_se']) == diffusion.elbo_bound(model, batches, torch.Generator().manual_seed(41))
    for fraction in diffusion.VAL_FRACTIONS:
        assert found[f'masked{round(fraction * 100)}'] == diffusion.masked_val_loss(
            model, batches, fraction, torch.Generator().manual_seed(42))


def test_block_masked_val_loss_sees_the_clean_prefix():
    model = tiny_block_model()
    x = torch.randint(V, (3, T), generator=torch.Generator().manual_seed(1))
    loss = diffusion.masked_val_loss(model, [x], 0.5, torch.Generator().manual_seed(2))
    inputs = diffusion.corrupt_fixed_fraction(x, torch.Generator().manual_seed(2), MASK, 0.5)
    ce = masked_word_ce(blockwise_logits(model, inputs, x), inputs, x)
    assert loss == pytest.approx((ce.sum() / (T // 2 * 3)).item(), rel=1e-5)


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    """A save that dies halfway leaves the previous checkpoint whole and loadable."""
    loading.save_checkpoint({'iter_num': 1, 'w': torch.arange(1000)}, tmp_path)
    before = (tmp_path / loading.CHECKPOINT_NAME).read_bytes()
    real_save = torch.save
    def dies_halfway(obj, f):
        real_save(obj, f)
        f.truncate(100)
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', dies_halfway)
    with pytest.raises(OSError):
        loading.save_checkpoint({'iter_num': 2, 'w': torch.zeros(1000)}, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / loading.CHECKPOINT_NAME).read_bytes() == before
    assert loading.load_checkpoint(str(tmp_path))['iter_num'] == 1
    loading.save_checkpoint({'iter_num': 3}, tmp_path) # the next save replaces it
    assert loading.load_checkpoint(str(tmp_path))['iter_num'] == 3
    assert not (tmp_path / (loading.CHECKPOINT_NAME + '.tmp')).exists()


class LeavesAMark:
    """Unpickling this calls open(path, 'w'): a checkpoint that runs code when it is read."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


def test_loading_a_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / 'ran'
    torch.save({'model': LeavesAMark(str(marker))}, tmp_path / loading.CHECKPOINT_NAME)
    with pytest.raises(loading.UserError, match='cannot be read'):
        loading.load_checkpoint(str(tmp_path))
    assert not marker.exists()


def seed_val_loss(out_dir, it):
    """train.py's val loss of a full-sequence seed-objective checkpoint, recomputed: its eval
    batches and noise seeds, the curriculum at iteration it."""
    checkpoint = loading.load_checkpoint(str(out_dir))
    cfg, model = checkpoint['config'], loading.model_from_checkpoint(checkpoint).eval()
    mask_id, wrong_id = model.config.mask_token_id, model.config.wrong_token_id
    val = loading.load_split(cfg['dataset'], 'val')
    batches, noise = torch.Generator().manual_seed(cfg['seed']), torch.Generator().manual_seed(cfg['seed'] + 1)
    penalty, remask_ratio = diffusion.curriculum(it, cfg['penalty_mask_correct'], cfg['masking_warmup_iters'],
                                                               cfg['proofreading_warmup_iters'])
    losses = []
    for _ in range(cfg['eval_iters']):
        x, _ = loading.get_batch(val, cfg['batch_size'], cfg['block_size'], batches, 'cpu')
        inputs, targets, rate = diffusion.corrupt(x, noise, mask_id, wrong_id, remask_ratio, cfg['mask_rate_min'], cfg['mask_rate_max'])
        with torch.no_grad():
            logits = diffusion.denoise(model, inputs, x)
        losses.append(diffusion.task_weighted_loss(logits, inputs, targets, rate, mask_id, wrong_id, cfg['weight_unmask_task'],
                                                   cfg['weight_remask_task'], penalty, cfg['reward_correct_unmask'])[0])
    return torch.stack(losses).mean().item()


@pytest.mark.slow
def test_seed_objective_is_evaluated_at_the_end_of_its_curriculum(training_runs, run_iters):
    """The seed run's last eval (iteration 6, mid-way through its 8-iteration proofreading ramp)
    uses the corruption of the finished curriculum, so evals stay comparable along the run."""
    out_dir, r = training_runs('seed')['straight']
    cfg = loading.load_checkpoint(str(out_dir))['config']
    end = max(cfg['max_iters'], cfg['masking_warmup_iters'], cfg['proofreading_warmup_iters'])
    assert run_iters < end
    val_loss = float(re.search(rf'^step {run_iters}: train loss [\d.]+, val loss ([\d.]+)', r.stdout, re.M)[1])
    assert val_loss == pytest.approx(seed_val_loss(out_dir, end), abs=6e-5)
    assert val_loss != pytest.approx(seed_val_loss(out_dir, run_iters), abs=1e-3)


class ContextJudge(torch.nn.Module):
    """An AR judge that is sure of the next token (it peeks at the targets) once it has seen at
    least `needs` tokens of its window, and uniform over V words before that."""

    def __init__(self, block_size, needs):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)
        self.needs = needs

    def forward(self, idx, targets):
        assert idx.size(1) <= self.config.block_size
        seen = torch.arange(1, idx.size(1) + 1)[None, :, None] # tokens of context of each prediction
        sure = torch.nn.functional.one_hot(targets, V) * 50.0
        return torch.where(seen >= self.needs, sure, torch.zeros_like(sure)), None


@pytest.mark.parametrize('block', [8, 9])
def test_judge_scores_every_token_after_the_first_window_with_half_a_block_of_context(block):
    """Only the first window's tokens with fewer than block // 2 tokens before them are scored
    with less context: 40 tokens, the first block // 2 - 1 targets uniform, the rest sure."""
    tokens = torch.randint(V, (2, 40), generator=torch.Generator().manual_seed(0))
    nll = judge_token_nlls(ContextJudge(block, block // 2), tokens).mean().item()
    assert nll == pytest.approx((block // 2 - 1) * math.log(V) / 39, abs=1e-6)
