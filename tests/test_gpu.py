"""Checks that need a CUDA device (skipped without one; run on a GPU machine, see BENCHMARKS.md).

The same computation on the GPU and on the CPU must agree: exact patching with the shared-prefix attention
against naive patching, and the answer-writer / copy components with the lens on the model's device.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cotmech.unembed import make_unembed
from cotmech.models import load_model, wrap
from cotmech.patching.exact import exact_sweep, naive_sweep
from cotmech.heads import copy_components, writer_components

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SPECS = {"mha": "random:tiny-llama?initializer_range=0.2&num_hidden_layers=3",
         "gqa": "random:tiny-qwen2?initializer_range=0.2&num_hidden_layers=3"}


@pytest.fixture(scope="module", params=list(SPECS))
def models(request):
    """The same weights on the CPU and on the GPU (a random model initialised on the GPU draws other weights)."""
    import copy

    cpu = load_model(SPECS[request.param], dtype="float32", device="cpu")
    return cpu, wrap(cpu.spec, copy.deepcopy(cpu.hf).to("cuda"), cpu.tokenizer)


def test_exact_equals_naive_on_gpu_both_prefix_attentions(models):
    from test_patching import random_pairs

    cpu, gpu = models
    assert gpu.device.type == "cuda"
    pairs = random_pairs(5)
    ref = naive_sweep(cpu, pairs, progress=False)
    for mode in ("shared", "concat"):
        got = exact_sweep(gpu, pairs, head_batch=7, progress=False, prefix_attention=mode)
        assert np.max(np.abs(got.per_pair_scores() - ref.per_pair_scores())) <= 1e-4, mode


def test_writer_and_copy_components_gpu_lens_equal_cpu(models):
    cpu, gpu = models
    g = torch.Generator().manual_seed(0)
    N, L, H, dh, d = 5, cpu.n_layers, cpu.n_heads, cpu.d_head, cpu.d_model
    resid = torch.randn(N, L + 1, d, generator=g) * 2
    attn_out = torch.randn(N, L, d, generator=g)
    z = torch.randn(N, L, H, dh, generator=g)
    ans = torch.randint(0, cpu.vocab_size, (N,), generator=g)
    lens_c, lens_g = make_unembed(cpu), make_unembed(gpu, device=gpu.device)
    assert lens_g.G.device.type == "cuda"
    a = writer_components(lens_c, cpu, resid, attn_out, z, ans)
    b = writer_components(lens_g, gpu, resid, attn_out, z, ans)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
    S = 6
    attn = torch.rand(N, L, H, S, generator=g)
    length, pos = np.full(N, S), np.array([1, 2, None, 0, 3], dtype=object)
    ca = copy_components(lens_c, cpu, z, attn, length, pos, ans)
    cb = copy_components(lens_g, gpu, z, attn, length, pos, ans)
    np.testing.assert_allclose(cb["proj"], ca["proj"], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(cb["attn"]), np.isnan(ca["attn"]))


def test_flow_trace_on_gpu_equals_cpu(models):
    """Information-flow tracing with the unembedding products on the GPU gives the CPU's probabilities and
    the same traced graph."""
    from cotmech import flow

    cpu, gpu = models
    ids = torch.randint(3, 400, (14,), generator=torch.Generator().manual_seed(1)).tolist()
    cfg = flow.FlowConfig()
    out = {}
    for name, m in (("cpu", cpu), ("gpu", gpu)):
        acts = flow.capture(m, ids)
        scorer = flow.WriterScorer(m, acts, chunk=5)
        out[name] = (scorer.probs(13, ids[5], below=m.n_layers), flow.trace(scorer, 13, ids[5], cfg))
    torch.testing.assert_close(out["gpu"][0], out["cpu"][0], rtol=1e-4, atol=1e-7, equal_nan=True)
    assert [(n["layer"], n["head"], n["pos"]) for n in out["gpu"][1]] == \
        [(n["layer"], n["head"], n["pos"]) for n in out["cpu"][1]]


def test_tuned_lens_training_on_gpu_matches_cpu(models):
    """The tuned lens trains on the lens's device; a few seeded steps give the CPU's lens up to float rounding,
    and the returned lens is on the CPU."""
    from cotmech.lens import train_tuned_lens

    cpu, gpu = models
    g = torch.Generator().manual_seed(2)
    train = torch.randn(12, cpu.n_layers + 1, cpu.d_model, generator=g) * 2
    res = {}
    for name, (m, dev) in {"cpu": (cpu, "cpu"), "gpu": (gpu, gpu.device)}.items():
        res[name] = train_tuned_lens(make_unembed(m, device=dev), train[:9], train[9:], rank=4, steps=5, batch=4)
    assert all(p.device.type == "cpu" for p in res["gpu"][0].parameters())
    for k in ("loss", "kl_tuned_train", "kl_tuned_val", "kl_logit_val"):
        np.testing.assert_allclose(res["gpu"][1][k], res["cpu"][1][k], rtol=1e-3, atol=1e-5, err_msg=k)
    for (k, a), b in zip(res["cpu"][0].state_dict().items(), res["gpu"][0].state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=k)


def test_atp_on_gpu_equals_cpu_suffix_and_full(models):
    """AtP on the GPU (suffix with the shared prefix cache, and whole inputs) gives the CPU's attributions."""
    from test_patching import random_pairs

    from cotmech.patching.atp import atp_sweep

    cpu, gpu = models
    pairs = random_pairs(6)
    ref = atp_sweep(cpu, pairs, progress=False, suffix=False)
    for suffix in (True, False):
        got = atp_sweep(gpu, pairs, progress=False, suffix=suffix)
        np.testing.assert_allclose(got.patched, ref.patched, atol=1e-4, err_msg=f"suffix={suffix}")
        np.testing.assert_allclose(got.base, ref.base, atol=1e-5)
