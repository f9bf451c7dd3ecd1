"""Logit lens / tuned lens: exactness against the model, identity init, divergences, training, I/O."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import capture_resid

from cotmech.lens import TunedLens, load_tuned_lens, save_tuned_lens, train_tuned_lens
from cotmech.unembed import (LensError, Unembed, answer_rank, js_divergence, kl_divergence, lens_stats,
                             make_unembed)

SEQS = [[5, 17, 33, 8, 91, 12, 40], [7, 7, 120, 3], [200, 4, 19, 66, 2, 9]]


def _hf_logits(model, seq):
    with torch.no_grad():
        return model.hf(input_ids=torch.tensor([seq])).logits[0].float()


def test_lens_at_last_layer_equals_model_logits(tiny_model):
    lens = make_unembed(tiny_model)
    assert lens.fast
    for seq, res in zip(SEQS, capture_resid(tiny_model, SEQS, last_n=None, batch_size=2)):
        assert res.shape == (len(seq), tiny_model.n_layers + 1, tiny_model.d_model)
        torch.testing.assert_close(lens.logits(res[:, -1]), _hf_logits(tiny_model, seq), atol=2e-4, rtol=1e-4)
        # lens at every layer agrees with the model's own norm + unembedding modules
        torch.testing.assert_close(lens.logits(res), tiny_model.logits_from_resid(res).float(), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2"])
def test_lens_with_a_real_norm_gain_is_exact_and_leaves_the_model_untouched(preset):
    """Random-init norms have gain 1; a trained model's does not. Building the lens of an fp32 model with tied
    embeddings must not change any weight (it once scaled the shared unembedding in place)."""
    from cotmech.models import load_model

    m = load_model(f"random:{preset}?tie_word_embeddings=true", dtype="float32", device="cpu")
    with torch.no_grad():
        m.hf_final_norm().weight.uniform_(0.2, 3.0, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in m.hf.state_dict().items()}
    lens = make_unembed(m)
    assert lens.fast, "the linear lens fell back to the module path on an RMSNorm model"
    for k, v in m.hf.state_dict().items():
        assert torch.equal(v, before[k]), f"make_unembed changed the model weight {k}"
    for seq, res in zip(SEQS, capture_resid(m, SEQS, last_n=None, batch_size=2)):
        torch.testing.assert_close(lens.logits(res[:, -1]), _hf_logits(m, seq), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2"])
def test_lens_equals_bf16_model_logits_within_bf16_rounding(preset):
    """bf16 model (as the configs run it), fp32 lens on its bf16 residuals. The model's own last step rounds the
    norm output n to bf16 and again after the gain, and rounds every logit: with u = 2^-8 each logit is within
    2u·Σ_i|W_vi·n_i| + u·|logit_v| of the exact value (the unembedding accumulates in fp32). The lens must meet
    that elementwise bound, at the last layer against the model's logits and at every layer against its modules."""
    from cotmech.models import load_model

    u = 2.0 ** -8
    m = load_model(f"random:{preset}?initializer_range=0.2", dtype="bfloat16", device="cpu")
    with torch.no_grad():
        m.hf_final_norm().weight.uniform_(0.2, 3.0, generator=torch.Generator().manual_seed(2))
    lens = make_unembed(m)  # float32 lens; its own check runs at the bf16 model's tolerance
    assert lens.fast and lens.dtype == torch.float32
    W, norm = m.hf_unembed().weight.float(), m.hf_final_norm()
    for seq, res in zip(SEQS, capture_resid(m, SEQS, last_n=None, batch_size=2)):
        got = lens.logits(res)  # [seq, L+1, vocab]
        with torch.no_grad():
            n = norm(res.to(torch.bfloat16)).float()  # [seq, L+1, d]
        bound = 2 * u * (n.abs() @ W.abs().T) + u * got.abs() + 1e-6
        ref_modules = m.logits_from_resid(res.to(torch.bfloat16)).float()
        assert ((got - ref_modules).abs() <= bound).all()
        last = _hf_logits(m, seq)  # bf16 forward, the logits as the model computes them
        assert ((got[:, -1] - last).abs() <= bound[:, -1]).all()
        assert (got[:, -1] - last).abs().max() > 0  # bf16 really rounds: the comparison is not fp32 = fp32


def test_fast_and_module_paths_agree(tiny_llama):
    fast = make_unembed(tiny_llama)
    slow = Unembed(None, None, 0.0, False, torch.float32, model_fn=lambda v: tiny_llama.logits_from_resid(v))
    res = torch.stack([r[-1] for r in capture_resid(tiny_llama, SEQS)])
    ans = torch.tensor([3, 50, 7])
    ctx = [torch.tensor(s) for s in SEQS]
    a = lens_stats(fast, res, ans, ctx, top_k=5)
    b = lens_stats(slow, res, ans, ctx, top_k=5)
    for k in ("p_answer", "rank_answer", "top1_in_context", "js_final"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)


def test_gpt2_layernorm_lens_is_exact():
    from cotmech.models import load_model

    m = load_model("random:tiny-gpt2", dtype="float32", device="cpu")
    lens = make_unembed(m)
    assert lens.fast and lens.center
    v = torch.randn(3, m.d_model)
    torch.testing.assert_close(lens.logits(v), m.logits_from_resid(v).float(), atol=1e-4, rtol=1e-4)


def test_tuned_lens_at_identity_equals_logit_lens(tiny_qwen2):
    lens = make_unembed(tiny_qwen2)
    res = torch.stack([r[-1] for r in capture_resid(tiny_qwen2, SEQS)])
    ans, ctx = torch.tensor([1, 2, 3]), [torch.tensor(s) for s in SEQS]
    for rank in (None, 0, 4):
        tl = TunedLens(tiny_qwen2.n_layers, tiny_qwen2.d_model, rank=rank)
        torch.testing.assert_close(tl.translate_all(res), res)
        a = lens_stats(lens, res, ans, ctx)
        b = lens_stats(lens, res, ans, ctx, translator=tl)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_divergences_and_rank():
    g = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(5, 50, generator=g), -1)
    q = torch.log_softmax(torch.randn(5, 50, generator=g), -1)
    torch.testing.assert_close(js_divergence(p, q), js_divergence(q, p))
    assert torch.all(js_divergence(p, p).abs() < 1e-6)
    assert torch.all((js_divergence(p, q) > 0) & (js_divergence(p, q) <= 1))
    disjoint_p = torch.log(torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    disjoint_q = torch.log(torch.tensor([[0.0, 0.0, 0.3, 0.7]]))
    assert js_divergence(disjoint_p, disjoint_q).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(kl_divergence(p, q) >= 0)
    logits = torch.randn(4, 30, generator=g)
    ids = torch.tensor([0, 5, 29, 13])
    ref = [int((torch.argsort(logits[i], descending=True) == ids[i]).nonzero()) for i in range(4)]
    assert answer_rank(logits, ids).tolist() == ref


def test_lens_stats_context_measures_by_hand(tiny_llama):
    lens = make_unembed(tiny_llama)
    res = torch.stack([r[-1] for r in capture_resid(tiny_llama, SEQS)])
    logp = torch.log_softmax(lens.logits(res), -1)
    top5 = logp.topk(5, -1)
    ctx = [top5.indices[0, 2, :1], torch.tensor([511]), top5.indices[2, 1, 1:3]]  # planted memberships
    st = lens_stats(lens, res, torch.tensor([0, 0, 0]), ctx, top_k=5, chunk=2)
    assert st["top1_in_context"][0, 2] == 1.0
    assert st["topk_context_mass"][0, 2] == pytest.approx(float(top5.values[0, 2, 0].exp()), rel=1e-5)
    assert st["topk_context_mass"][2, 1] == pytest.approx(float(top5.values[2, 1, 1:3].exp().sum()), rel=1e-5)
    assert np.all(st["js_final"][:, -1] < 1e-6)
    assert np.all(np.isnan(st["js_prior"])) and np.all(np.isnan(st["p_real"]))
    assert np.all(np.isnan(st["prefers_context"]))  # no prior given
    # prefers_context: lens P(answer) > lens P(prior's top-1), by explicit loops; NaN where the two tokens coincide
    g = torch.Generator().manual_seed(3)
    prior = torch.log_softmax(torch.randn(3, logp.shape[-1], generator=g), -1)
    answer = torch.tensor([5, 17, int(prior[2].argmax())])
    st = lens_stats(lens, res, answer, ctx, prior_logp=prior, top_k=5, chunk=2)
    for i in range(3):
        top = int(prior[i].argmax())
        for layer in range(logp.shape[1]):
            want = float("nan") if top == int(answer[i]) else float(logp[i, layer, answer[i]] > logp[i, layer, top])
            got = st["prefers_context"][i, layer]
            assert (np.isnan(got) and np.isnan(want)) or got == want, (i, layer)
    assert np.isfinite(st["prefers_context"][:2]).all() and np.isnan(st["prefers_context"][2]).all()
    assert 0 < np.nansum(st["prefers_context"]) < 2 * logp.shape[1]  # both outcomes occur


def test_tuned_lens_training_and_roundtrip(tiny_llama, tmp_path):
    lens = make_unembed(tiny_llama)
    seqs = [[(7 * i + 3 * j) % 500 + 3 for j in range(12)] for i in range(6)]
    res = torch.cat(capture_resid(tiny_llama, seqs, last_n=None))
    train, val = res[:50], res[50:]
    tl, hist = train_tuned_lens(lens, train, val, rank=4, steps=12, batch=8, lr=2e-2, seed=3)
    assert hist["steps"] == 12 and not hist["time_limit_hit"]
    assert np.mean(hist["kl_tuned_train"][:-1]) < np.mean(hist["kl_logit_train"][:-1])
    tl2, hist2 = train_tuned_lens(lens, train, val, rank=4, steps=12, batch=8, lr=2e-2, seed=3)
    assert hist2["loss"] == hist["loss"]  # seeded
    path = tmp_path / "tl.safetensors"
    save_tuned_lens(path, tl)
    back = load_tuned_lens(path)
    torch.testing.assert_close(back.translate_all(val), tl.translate_all(val))
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(LensError, match="bad.safetensors"):
        load_tuned_lens(tmp_path / "bad.safetensors")
