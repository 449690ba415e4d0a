"""The GPU code paths, run on the CPU through their stand-ins: bfloat16 autocast (CUDA's
mixed precision has the same code path), torch.compile with Inductor, and multi-process
training with gloo where a GPU machine would use NCCL: a block model, a resume onto another
number of processes, and a NaN on one rank only."""
import math
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import diffusion
import loading
import sampling
from conftest import ROOT, _env
from model import GPT, GPTConfig, KVCache
from test_errors import one_line_error
from test_train import ckpt, iter_lines

pytestmark = pytest.mark.slow

KINDS = { # the model kinds a user trains, each on top of tiny_args
    'ar': ['--model_type=gpt2', '--pos_encoding=rope'],
    'seed': ['--model_type=diffusion', '--pos_encoding=rope', '--loss_type=seed', '--masking_warmup_iters=2',
             '--proofreading_warmup_iters=3', '--mask_bias_gain=0.3'],
    'elbo': ['--model_type=diffusion', '--pos_encoding=rope', '--loss_type=elbo', '--mask_rate_min=0.3', '--mask_rate_max=0.8'],
    'block': ['--model_type=diffusion', '--pos_encoding=rope', '--loss_type=elbo', '--diffusion_block=8',
              '--loss_weighting=token_mean'],
}


def losses(stdout):
    """Every loss and bound value train.py logged."""
    return [float(v) for v in re.findall(r'(?:loss|bound|CE 15/50/90%:) ([-\d.naif]+)', stdout)]


# ----------------------------------------------------------------------------
# bfloat16 autocast

def test_setup_device_gives_cpu_bfloat16_autocast():
    device, device_type, dtype, ctx = loading.setup_device('cpu', 'bfloat16')
    assert (device, device_type, dtype) == ('cpu', 'cpu', 'bfloat16')
    with ctx:
        assert torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') == torch.bfloat16
    assert not torch.is_autocast_enabled('cpu')
    assert loading.setup_device('cpu', 'auto')[2] == 'float32' # opt-in on the CPU: float32 measured faster


def test_auto_dtype_ignores_emulated_bfloat16(monkeypatch):
    """A GPU that only emulates bfloat16 (V100, T4, RTX 20xx) gets float16 + GradScaler, and an
    explicit bfloat16 is refused there; the device asked for becomes the current one."""
    calls = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda d: calls.append(d))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda d=None: 'Tesla T4')
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.amp, 'autocast', lambda device_type, dtype: (device_type, dtype))
    assert loading.setup_device('cuda:1', 'auto')[1:] == ('cuda', 'float16', ('cuda', torch.float16))
    assert calls == ['cuda:1']
    with pytest.raises(loading.UserError, match="only emulated on this GPU .Tesla T4.*--dtype=float16"):
        loading.setup_device('cuda', 'bfloat16')
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)
    assert loading.setup_device('cuda', 'auto')[2] == 'bfloat16'


@pytest.mark.parametrize('kind', list(KINDS))
def test_bfloat16_training_on_cpu(run_train, tiny_args, tmp_path, kind):
    r = run_train(*tiny_args, *KINDS[kind], '--dtype=bfloat16', '--max_iters=4', '--eval_interval=2',
                  '--warmup_iters=1', '--lr_decay_iters=4', f'--out_dir={tmp_path}')
    assert r.returncode == 0, r.stderr[-3000:]
    values = losses(r.stdout)
    assert len(values) >= 4 and all(math.isfinite(v) for v in values), r.stdout[-2000:]
    c = ckpt(tmp_path)
    assert c['iter_num'] == 4 and all(v.dtype != torch.bfloat16 for v in c['model'].values()) # fp32 master weights


def tiny_diffusion(block=0, **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=12, model_type='diffusion',
                         mask_token_id=10, wrong_token_id=11, pos_encoding='rope', diffusion_block=block, **kw)).eval()


@pytest.mark.parametrize('block', [0, 8])
@pytest.mark.parametrize('sampler', ['refine', 'confidence'])
def test_bfloat16_sampling_keeps_the_invariants(block, sampler):
    """Under bfloat16 autocast the diffusion logits come out in float32 with the [MASK] bias
    added exactly, and the samplers keep the prompt and leave no special token."""
    model = tiny_diffusion(block)
    model.mask_logit_bias.fill_(1.2345)
    x = torch.full((3, 40), 10)
    x[:, :5] = torch.arange(5)
    with torch.amp.autocast('cpu', dtype=torch.bfloat16):
        logits = sampling.denoiser_logits(model, x[:, :32])
        fn, kw = {'refine': (sampling.refine_sample, dict(max_steps=6)),
                  'confidence': (sampling.confidence_sample, dict(steps=6))}[sampler]
        out, passes = sampling.generate(model, x, fn, generator=torch.Generator().manual_seed(0), **kw)
    assert logits.dtype == torch.float32
    pos = torch.arange(32) # a block model's samplers see the text block-causally
    mask = sampling.block_causal_mask(pos, pos, block) if block else None
    with torch.amp.autocast('cpu', dtype=torch.bfloat16):
        unbiased, _ = model(x[:, :32], attn_mask=mask)
    assert torch.equal(logits[..., 10] - unbiased[..., 10], torch.full_like(logits[..., 10], 1.2345))
    assert torch.equal(logits[..., :10], unbiased[..., :10])
    assert torch.equal(out[:, :5], x[:, :5]) and out.max() < 10 and out.min() >= 0 and passes > 0


def test_bfloat16_ar_generation_with_cache_matches_without():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=12, pos_encoding='rope')).eval()
    idx = torch.zeros(2, 3, dtype=torch.long)
    with torch.amp.autocast('cpu', dtype=torch.bfloat16):
        a = model.generate(idx, 20, generator=torch.Generator().manual_seed(1), use_kv_cache=True)
        b = model.generate(idx, 20, generator=torch.Generator().manual_seed(1), use_kv_cache=False)
    assert a.shape == (2, 23) and a.max() < 12
    assert (a == b).float().mean() > 0.9 # bfloat16 rounding may flip a near-tie, not the whole text


# ----------------------------------------------------------------------------
# no host syncs in the hot paths

def test_forward_and_forbid_make_no_tensor_from_host_data(monkeypatch):
    """GPT.forward, the masks of training and sampling and diffusion.forbid are built on the device:
    on a GPU, torch.tensor() of a Python value, or indexing with a Python list, is a blocking copy
    at every pass."""
    model = tiny_diffusion(8)
    x = torch.randint(0, 12, (2, 32))
    ar = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=12)).eval()
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, 'tensor', lambda *a, **k: made.append(a) or real(*a, **k))
    logits = diffusion.denoise(model, x, x) # the two-stream pass
    sampling.denoiser_logits(model, x) # block-causal, with the [MASK] bias
    cache = KVCache()
    sampling.denoiser_logits(model, x[:, 8:16], {'cache': cache, 'offset': 8, 'pending': x[:, :8]})
    cache = KVCache()
    ar(x[:, :4], kv_cache=cache) # AR with a cache
    ar(x[:, 4:7], x[:, 4:7], kv_cache=cache) # several new tokens after the cache: causal_mask
    words = diffusion.forbid(logits, 10, 11)
    assert made == []
    assert torch.isinf(words[..., 10:]).all() and torch.equal(words[..., :10], logits[..., :10])


def test_mfu_counts_the_two_stream_pass_of_a_block_model():
    full, block = tiny_diffusion(0), tiny_diffusion(8)
    cfg, N = full.config, full.get_num_params()
    L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
    assert full.estimate_mfu(4, 1.0) == pytest.approx((6 * N + 12 * L * H * Q * T) * T * 4 / 312e12)
    # the block model runs [noisy ; clean], 2T positions over 2T keys, per row
    assert block.estimate_mfu(4, 1.0) == pytest.approx((6 * N + 12 * L * H * Q * 2 * T) * 2 * T * 4 / 312e12)


# ----------------------------------------------------------------------------
# torch.compile (Inductor on the CPU)

@pytest.mark.parametrize('kind', ['ar', 'seed', 'block'])
def test_compiled_training_recompiles_only_for_eval(run_train, tiny_args, tmp_path, kind):
    """A compiled run trains through changing iterations, learning rates, curriculum and
    controller bias with one graph for training and one for evaluation: a recompile per step
    would make compile=True far slower than eager. Evaluation at 0 and 6 switches modes twice."""
    args = [a for a in tiny_args if a != '--compile=False']
    r = run_train(*args, *KINDS[kind], '--compile=True', '--max_iters=6', '--eval_interval=3', '--warmup_iters=2',
                  '--lr_decay_iters=6', f'--out_dir={tmp_path}', env={'TORCH_LOGS': 'recompiles'}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(math.isfinite(v) for v in losses(r.stdout))
    recompiles = re.findall(r'Recompiling function (\w+)', r.stderr)
    assert len(recompiles) <= 1, r.stderr[-3000:]
    assert set(iter_lines(r.stdout)) == set(range(1, 7))


# ----------------------------------------------------------------------------
# several processes (gloo, as NCCL would on GPUs)

def test_torchrun_block_model(run_train, tiny_args, tmp_path):
    r = run_train(*tiny_args, *KINDS['block'], '--gradient_accumulation_steps=2', '--max_iters=2', '--eval_interval=2',
                  f'--out_dir={tmp_path}', nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('val bound') == 2 and all(math.isfinite(v) for v in losses(r.stdout))
    assert len(ckpt(tmp_path)['rng']['data']) == 2


def test_resume_a_one_process_checkpoint_with_two(run_train, tiny_args, tmp_path):
    """Each rank's random streams are re-derived from seed, iteration and rank (the saved ones
    belong to one process), and the run goes on to the end."""
    common = [*tiny_args, *KINDS['seed'], '--gradient_accumulation_steps=2', '--eval_interval=2', '--warmup_iters=1',
              '--lr_decay_iters=4', f'--out_dir={tmp_path}']
    r = run_train(*common, '--max_iters=2')
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_train(*common, '--max_iters=4', '--init_from=resume', nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resuming on cpu x 2 a checkpoint saved on cpu x 1: random streams re-derived' in r.stdout
    assert set(iter_lines(r.stdout)) == {3, 4}
    c = ckpt(tmp_path)
    assert c['iter_num'] == 4 and len(c['rng']['data']) == 2 and c['rng']['device_type'] == 'cpu'
    assert not torch.equal(c['rng']['data'][0], c['rng']['data'][1])


def test_resume_onto_another_device_kind_rederives_the_streams(run_train, tiny_args, tmp_path):
    """A noise generator state saved on a GPU (16 bytes) cannot be loaded into a CPU generator:
    the streams are re-derived instead of failing with a raw RuntimeError."""
    common = [*tiny_args, *KINDS['elbo'], '--eval_interval=2', '--warmup_iters=1', '--lr_decay_iters=4',
              f'--out_dir={tmp_path}']
    assert run_train(*common, '--max_iters=2').returncode == 0
    c = ckpt(tmp_path)
    c['rng']['device_type'] = 'cuda'
    c['rng']['noise'] = [torch.zeros(16, dtype=torch.uint8)]
    loading.save_checkpoint(c, str(tmp_path))
    r = run_train(*common, '--max_iters=4', '--init_from=resume')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'saved on cuda x 1: random streams re-derived' in r.stdout and ckpt(tmp_path)['iter_num'] == 4


SITECUSTOMIZE = '''
import os
if os.environ.get('RANK') == '1':
    # rank 1 alone gets a NaN loss once training starts (after the 4 calls of the first eval)
    import torch.nn.functional as F
    real, calls = F.cross_entropy, [0]
    def cross_entropy(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * float('nan') if calls[0] > 4 else loss
    F.cross_entropy = cross_entropy
'''


def test_nan_on_one_rank_stops_every_rank(run_train_ranks, tiny_args, tmp_path, monkeypatch):
    (tmp_path / 'hook').mkdir()
    (tmp_path / 'hook' / 'sitecustomize.py').write_text(textwrap.dedent(SITECUSTOMIZE))
    monkeypatch.setenv('PYTHONPATH', str(tmp_path / 'hook')) # the processes inherit it
    results = run_train_ranks(*tiny_args, '--model_type=gpt2', '--gradient_accumulation_steps=2', '--max_iters=20',
                              '--eval_interval=100', f'--out_dir={tmp_path / "run"}', world_size=2, timeout=120)
    lines = [one_line_error(r) for r in results] # no hang (the timeout), no traceback on either rank
    assert lines[0] == lines[1] and 'NaN' in lines[0] and 'before iteration 1' in lines[0]


def test_gpu_check_runs_its_steps_on_the_cpu(tiny_args, tiny_dataset, tmp_path):
    """gpu_check.py, as a smoke test on the CPU with a tiny model: the training and generation
    tables come out with a row per run, from the logs of real runs."""
    small = ' '.join(a for a in tiny_args if a not in ('--device=cpu', '--log_interval=1')) + ' --warmup_iters=2 --compile=False'
    r = subprocess.run([sys.executable, 'gpu_check.py', '--device=cpu', '--iters=20', '--kinds=ar,block',
                        '--samplers=refine,threshold', f'--out_root={tmp_path}/out', f'--log_dir={tmp_path}/logs',
                        f'--train_args={small}'], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = {line.split(' | ')[0] + ' | ' + line.split(' | ')[1]: line for line in r.stdout.splitlines() if line.startswith('| ')}
    assert re.search(r"\| ar \| float32 \| [\d.]+ \| [\d,]+ \| [-\d.]+ \| nan \| val loss [\d.]+ \|", r.stdout)
    assert re.search(r"\| block \| float32 \| .* \| val bound [\d.]+ \|", r.stdout)
    assert {'| ar | autoregressive, KV cache', '| block | refine', '| block | threshold'} <= set(rows)


def test_gpu_check_needs_a_gpu():
    r = subprocess.run([sys.executable, 'gpu_check.py'], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    assert one_line_error(r) == ("error: gpu_check.py needs a CUDA GPU: none is visible (use --device=cpu for a "
                                 "smoke test of the steps)")
