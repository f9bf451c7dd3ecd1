"""Head patching: exact = naive, boundary cases (no head / every head), AtP exactness on a linear model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cotmech.models import build_random_hf, load_model, task_tokenizer, wrap
from cotmech import tracing
from cotmech.patching.atp import atp_sweep
from cotmech.patching.data import make_pair
from cotmech.patching.exact import exact_sweep, hook_sweep, naive_sweep, pair_runs, patch_suffix, shared_prefix
from cotmech.patching.metrics import METRICS

# init 0.2 (not 0.02): outputs far from uniform, so KL_noise is not tiny and normalised scores are well defined
SPECS = {"mha": "random:tiny-llama?initializer_range=0.2&num_hidden_layers=3",
         "gqa": "random:tiny-qwen2?initializer_range=0.2&num_hidden_layers=3"}


@pytest.fixture(scope="module", params=list(SPECS))
def model(request):
    return load_model(SPECS[request.param], dtype="float32", device="cpu")


def random_pairs(seed: int, shapes=((14, 6), (10, 0), (12, 10))):
    """Random sequences; corrupt = clean with 1–2 tokens replaced from first_diff on (never the last token)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (T, f) in enumerate(shapes):
        clean = torch.randint(3, 500, (T,), generator=g).tolist()
        bad = list(clean)
        for j in {f, min(f + 2, T - 2)}:
            bad[j] = 3 + (clean[j] + 5) % 497
        out.append(make_pair(f"r{seed}-{i}", clean, bad, answer_id=int(torch.randint(3, 500, (1,), generator=g)),
                             corrupt_answer_id=int(torch.randint(3, 500, (1,), generator=g))))
    return out


def plain_last_logits(model, ids):
    with torch.no_grad():
        return model.hf(torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_exact_equals_naive(model, direction):
    pairs = random_pairs(1)
    for metric in ("kl", "logit_diff"):
        a = naive_sweep(model, pairs, metric=metric, direction=direction, pair_batch=2, progress=False)
        b = exact_sweep(model, pairs, metric=metric, direction=direction, head_batch=5, progress=False)
        assert np.all(np.isfinite(a.per_pair_scores()))
        np.testing.assert_allclose(b.base, a.base, atol=1e-5)
        np.testing.assert_allclose(b.source, a.source, atol=1e-5)
        assert np.max(np.abs(a.per_pair_scores() - b.per_pair_scores())) <= 1e-4
        # the sweep is not trivially constant: heads differ
        assert np.ptp(a.per_pair_scores()) > 1e-2


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_hook_sweep_equals_naive(model, direction):
    """The plain-hook reference (the benchmarks' honest baseline) gives naive's numbers, head by head."""
    pairs = random_pairs(2)
    heads = [(0, 0), (1, model.n_heads - 1), (model.n_layers - 1, 1)]
    a = naive_sweep(model, pairs, metric="kl", direction=direction, heads=heads, pair_batch=2, progress=False)
    b = hook_sweep(model, pairs, metric="kl", direction=direction, heads=heads, progress=False)
    np.testing.assert_allclose(b.base, a.base, atol=1e-5)
    np.testing.assert_allclose(b.source, a.source, atol=1e-5)
    np.testing.assert_allclose(b.patched, a.patched, atol=1e-5, equal_nan=True)
    assert np.isnan(b.patched).sum() == len(pairs) * (model.n_layers * model.n_heads - len(heads))
    assert np.ptp(a.patched[np.isfinite(a.patched)]) > 1e-3


#: bf16 unit roundoff (8 significant bits): a correctly rounded value is within a relative 2^-8 of the exact one.
BF16_U = 2.0 ** -8


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_exact_equals_naive_in_bf16(spec):
    """The configs run bf16: exact (cached suffix, heads batched) = naive (one full forward per head) there too, to
    within bf16 precision. A logit carries ~4 roundings of relative size u = 2^-8 that the two paths do not share
    (the logits' own rounding, the final norm's output and weight product, the different summation order of the
    cached suffix), so |Δlogit| <= 4u·max|logit|; logit_diff subtracts two logits and -KL(P_clean||P) moves by at
    most 2·max|Δlogit| (log-softmax is 2-Lipschitz in the max norm): both metrics get 2·4u·max|logit|."""
    m = load_model(spec, dtype="bfloat16", device="cpu")
    assert m.dtype == torch.bfloat16
    pairs = random_pairs(1)
    max_logit = max(float(plain_last_logits(m, ids).abs().max()) for p in pairs for ids in (p.clean_ids, p.corrupt_ids))
    tol = 2 * 4 * BF16_U * max_logit
    for metric in ("kl", "logit_diff"):
        a = naive_sweep(m, pairs, metric=metric, pair_batch=2, progress=False)
        b = exact_sweep(m, pairs, metric=metric, head_batch=5, progress=False)
        np.testing.assert_allclose(b.base, a.base, rtol=0, atol=tol)
        np.testing.assert_allclose(b.source, a.source, rtol=0, atol=tol)
        np.testing.assert_allclose(b.patched, a.patched, rtol=0, atol=tol)
        assert np.ptp(a.patched, axis=(1, 2)).max() > 5 * tol  # heads differ by far more than the tolerance


def test_exact_is_invariant_to_head_batch_and_oom_backoff(model, monkeypatch):
    pairs = random_pairs(2, shapes=((11, 4),))
    ref = exact_sweep(model, pairs, head_batch=64, progress=False)
    real = tracing.run_trace

    def flaky(model_, ids, **kw):  # "out of memory" for more than 3 rows
        if ids.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model_, ids, **kw)

    monkeypatch.setattr("cotmech.patching.exact.run_trace", flaky)
    res = exact_sweep(model, pairs, head_batch=64, progress=False)
    assert res.info["head_batch"] == 2  # 64 -> 32 -> ... -> 2 (halving)
    np.testing.assert_allclose(res.patched, ref.patched, atol=1e-5)


def test_chunk_rows_sizes_forwards_to_the_suffix_in_whole_layers(model):
    """chunk_rows: about chunk_tokens suffix tokens per forward in whole layers (12 heads), at least one layer, at
    most head_batch; None = head_batch. Sized as measured on the embedded model (BENCHMARKS.md)."""
    from cotmech.patching.exact import chunk_rows

    assert [chunk_rows(12, s, 128, 640) for s in (55, 38, 25, 13, 4, 1)] == [12, 12, 24, 48, 128, 128]
    assert chunk_rows(12, 13, 40, 640) == 40 and chunk_rows(12, 13, 7, 640) == 7 and chunk_rows(12, 5, 64, None) == 64
    assert chunk_rows(4, 3, 64, 20) == 8  # 20 / 3 / 4 = 1.67 layers -> 2 layers of 4 heads
    # a sweep with a token budget gives the numbers of fixed batches (fp32 tiny model)
    pairs = random_pairs(5, shapes=((14, 6), (12, 10)))
    ref = exact_sweep(model, pairs, head_batch=64, progress=False)
    res = exact_sweep(model, pairs, head_batch=64, chunk_tokens=10, progress=False)
    np.testing.assert_allclose(res.patched, ref.patched, atol=1e-5)
    assert res.info["chunk_tokens"] == 10 and res.info["head_batch"] < 64


def test_shared_prefix_attention_equals_concatenated_prefix(model, monkeypatch):
    """The shared-prefix attention (one product of all rows' queries with the prefix keys, log-sum-exp merge)
    gives the numbers of copying the prefix into every row and calling the model's own attention, per row,
    with edits in some rows (MHA and GQA); it is really the function that ran."""
    assert tracing.shared_prefix_supported(model)
    calls = []
    real = tracing._shared_prefix_attention
    monkeypatch.setattr(tracing, "_shared_prefix_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    from transformers import AttentionInterface
    monkeypatch.setitem(AttentionInterface._global_mapping, tracing._SHARED_NAME, tracing._shared_prefix_attention)
    for pair in random_pairs(4, shapes=((13, 3), (9, 7))):
        pr = pair_runs(model, pair)
        heads = [(lay, h) for lay in range(model.n_layers) for h in (0, model.n_heads - 1)]
        out = {}
        for mode in ("concat", "shared"):
            n0 = len(calls)
            out[mode] = patch_suffix(model, pr, heads, prefix_attention=mode)
            assert (len(calls) > n0) == (mode == "shared")
        torch.testing.assert_close(out["shared"], out["concat"], atol=2e-5, rtol=2e-5)
        # and the shared path reproduces the plain corrupt run when nothing is patched
        plain = plain_last_logits(model, pair.corrupt_ids)
        none = tracing.run_trace(model, pair.ids("corrupt")[pair.first_diff:][None], cache=pr.cache)
        torch.testing.assert_close(none.logits[0], plain, atol=1e-4, rtol=1e-4)
    assert tracing._SHARED_NAME != model.hf.config._attn_implementation  # restored after every trace


@pytest.mark.parametrize("hq, hkv", [(4, 4), (6, 2)])
def test_shared_prefix_attention_equals_explicit_softmax(hq, hkv):
    """The shared-prefix attention equals an explicit per-row softmax over [prefix; causal suffix] with HF's
    repeat_kv grouping (query head h reads kv head h // (hq / hkv)), in values and in the gradient AtP takes."""
    g = torch.Generator().manual_seed(3)
    B, S, P, d = 3, 5, 7, 8
    q, k, v = (torch.randn(B, h, S, d, generator=g, dtype=torch.float64) for h in (hq, hkv, hkv))
    pk, pv = (torch.randn(1, hkv, P, d, generator=g, dtype=torch.float64) for _ in range(2))
    rep = hq // hkv
    K = torch.cat([pk.expand(B, -1, -1, -1), k], 2).repeat_interleave(rep, 1)  # [B, hq, P+S, d]
    V = torch.cat([pv.expand(B, -1, -1, -1), v], 2).repeat_interleave(rep, 1)
    visible = torch.ones(S, P + S, dtype=torch.bool)
    visible[:, P:] = torch.ones(S, S, dtype=torch.bool).tril()

    def explicit(query):
        return ((query @ K.transpose(-1, -2) * 0.3).masked_fill(~visible, float("-inf")).softmax(-1) @ V).transpose(1, 2)

    class Mod:
        layer_idx = 0
    tracing._active_prefix.append(tracing.PrefixCache([pk], [pv], P))
    try:
        q1, q2 = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
        out, _ = tracing._shared_prefix_attention(Mod(), q1, k, v, None, scaling=0.3)
        want = explicit(q2)
        torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-6)  # its softmax runs in float32
        w = torch.arange(d, dtype=torch.float64)
        (grad,) = torch.autograd.grad((out * w).sum(), q1)
        (grad_ref,) = torch.autograd.grad((want * w).sum(), q2)
        torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-5)
    finally:
        tracing._active_prefix.pop()


def test_prefixed_last_logits_equal_each_whole_sequence(model):
    """tracing.prefixed_last_logits (shared prefix run once, right-padded suffixes over it; the cloze screen)
    equals a plain forward of each whole sequence alone, in input order, for any batch size; with no shared
    prefix it runs the plain left-padded forward."""
    g = torch.Generator().manual_seed(7)
    head = torch.randint(3, model.vocab_size, (9,), generator=g).tolist()
    seqs = [head + torch.randint(3, model.vocab_size, (k,), generator=g).tolist() for k in (5, 1, 8, 3, 5)]
    want = torch.stack([plain_last_logits(model, s) for s in seqs])
    for bs in (1, 2, 16):
        torch.testing.assert_close(tracing.prefixed_last_logits(model, seqs, bs), want, atol=2e-5, rtol=2e-5)
    other = [torch.randint(3, model.vocab_size, (k,), generator=g).tolist() for k in (4, 6)]
    other[1][0] = other[0][0] + 1 if other[0][0] + 1 < model.vocab_size else 3
    torch.testing.assert_close(tracing.prefixed_last_logits(model, other, 2),
                               torch.stack([plain_last_logits(model, s) for s in other]), atol=2e-5, rtol=2e-5)
    assert tracing.prefixed_last_logits(model, []).shape == (0, model.vocab_size)


def test_prefix_attention_mode_is_checked(model):
    pair = random_pairs(1)[0]
    with pytest.raises(ValueError, match=r"prefix_attention 'copy': use one of shared, concat"):
        tracing.run_trace(model, pair.ids("clean")[None], prefix_attention="copy")


def test_run_in_batches_reraises_other_errors():
    with pytest.raises(RuntimeError, match="boom"):
        tracing.run_in_batches(lambda c: (_ for _ in ()).throw(RuntimeError("boom")), [1, 2, 3], 2)
    seen = []
    assert tracing.run_in_batches(seen.extend, list(range(7)), 3) == 3 and seen == list(range(7))


def test_no_patch_is_corrupt_and_all_heads_is_clean(model):
    L, H = model.n_layers, model.n_heads
    for pair in random_pairs(3):
        clean_ref = plain_last_logits(model, pair.clean_ids)
        corrupt_ref = plain_last_logits(model, pair.corrupt_ids)
        ids = {w: pair.ids(w)[None] for w in ("clean", "corrupt")}
        # no edit: the traced corrupt run is the plain corrupt run
        none = tracing.run_trace(model, ids["corrupt"])
        torch.testing.assert_close(none.logits[0], corrupt_ref, atol=1e-5, rtol=1e-5)
        # every head of every layer from the clean run: the clean run at the last position
        clean = tracing.run_trace(model, ids["clean"], save=[("z", lay) for lay in range(L)])
        edits = [tracing.Edit("z", lay, torch.ones(1, H, dtype=torch.bool), clean.saved[("z", lay)]) for lay in range(L)]
        allp = tracing.run_trace(model, ids["corrupt"], edits=edits)
        torch.testing.assert_close(allp.logits[0], clean_ref, atol=1e-4, rtol=1e-4)
        # suffix machinery: starting above the last layer from the cached residual = corrupt logits
        pr = pair_runs(model, pair)
        top = tracing.run_trace(model, ids["corrupt"][:, pair.first_diff:], cache=pr.cache, start_layer=L,
                             start_resid=pr.runs["corrupt"].saved[("resid", L - 1)])
        torch.testing.assert_close(top.logits[0], corrupt_ref, atol=1e-4, rtol=1e-4)
        for name, fn in METRICS.items():
            ref = pr.ref
            m_clean, m_cor = fn(clean_ref[None], ref), fn(corrupt_ref[None], ref)
            # normalised score (m_patched - m_base) / (m_source - m_base): 1 with every head patched, 0 with none
            assert float((fn(allp.logits, ref) - m_cor) / (m_clean - m_cor)) == pytest.approx(1.0, abs=1e-3), name
            assert float((fn(none.logits, ref) - m_cor) / (m_clean - m_cor)) == pytest.approx(0.0, abs=1e-3), name


def linear_model():
    """A 2-layer llama in which the logits are *linear* in every head's z.

    q and k weights are zero (uniform causal attention, so z is linear in the values), the MLPs output zero
    (down_proj = 0) and every RMSNorm is replaced by the identity; llama has no biases. With a metric linear
    in the logits (logit difference) the first-order AtP estimate is then exact for every head.
    """
    hf = build_random_hf("tiny-llama", {"initializer_range": 0.2, "num_hidden_layers": 2})
    for lay in hf.model.layers:
        lay.self_attn.q_proj.weight.data.zero_()
        lay.self_attn.k_proj.weight.data.zero_()
        lay.mlp.down_proj.weight.data.zero_()
        lay.input_layernorm = torch.nn.Identity()
        lay.post_attention_layernorm = torch.nn.Identity()
    hf.model.norm = torch.nn.Identity()
    return wrap("random:tiny-llama(linear)", hf, task_tokenizer())


def test_atp_exact_on_linear_model():
    m = linear_model()
    pairs = random_pairs(4, shapes=((12, 5), (9, 2)))
    ex = exact_sweep(m, pairs, metric="logit_diff", progress=False)
    effect = np.abs(ex.patched - ex.base[:, None, None]).max()
    assert effect > 1e-2
    for suffix in (True, False):
        at = atp_sweep(m, pairs, metric="logit_diff", pair_batch=2, progress=False, suffix=suffix)
        assert np.abs(at.patched - ex.patched).max() <= 1e-4 * max(1.0, effect), suffix
    # for a non-linear metric AtP is only first order: it must differ somewhere
    ex_kl = exact_sweep(m, pairs, metric="kl", progress=False)
    at_kl = atp_sweep(m, pairs, metric="kl", pair_batch=2, progress=False)
    assert np.abs(at_kl.patched - ex_kl.patched).max() > 1e-4


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_atp_suffix_equals_full_sequence_and_batching(model, direction):
    """AtP on the suffix after first_diff (shared prefix cache) = AtP on the whole left-padded inputs, batched
    or not: z_source - z_base vanishes before first_diff; also over the reference runs screening passes in."""
    pairs = random_pairs(5)
    a = atp_sweep(model, pairs, direction=direction, pair_batch=3, progress=False, suffix=False)
    b = atp_sweep(model, pairs, direction=direction, pair_batch=1, progress=False, suffix=False)
    c = atp_sweep(model, pairs, direction=direction, progress=False)  # suffix (the default)
    root = shared_prefix(model, pairs)  # screening's: the source runs and prefix caches of pair_runs
    d = atp_sweep(model, pairs, direction=direction, progress=False, runs=[pair_runs(model, p, root=root)
                                                                           for p in pairs])
    assert c.info["suffix"] and not a.info["suffix"]
    for r in (b, c, d):
        np.testing.assert_allclose(r.patched, a.patched, atol=1e-4)
        np.testing.assert_allclose(r.base, a.base, atol=1e-5)
        np.testing.assert_allclose(r.source, a.source, atol=1e-5)
    effect = np.abs(a.patched - a.base[:, None, None]).max()
    if direction == "denoise":
        assert effect > 1e-3  # attributions are not all zero
    else:  # noising: base = clean, where -KL(clean || .) is at its maximum, so its gradient (and AtP) vanishes
        assert effect < 1e-6


def test_atp_leaves_the_weights_as_they_were(model):
    """AtP takes gradients of the z offsets only: no parameter gains a .grad or changes requires_grad."""
    before = {n: q.requires_grad for n, q in model.hf.named_parameters()}
    atp_sweep(model, random_pairs(5), progress=False)
    assert {n: q.requires_grad for n, q in model.hf.named_parameters()} == before
    assert all(q.grad is None for q in model.hf.parameters())


def _contiguous_partitions(n: int):
    """Every split of range(n) into consecutive non-empty runs, as lists of (start, stop)."""
    for mask in range(1 << max(0, n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        yield list(zip(cuts[:-1], cuts[1:]))


def test_plan_chunks_is_the_least_cost_split():
    """plan_chunks (dynamic programme) = the cheapest of every split of the sorted heads into consecutive chunks of
    at most max_rows (brute force), on random head sets; a full sweep with max_rows a multiple of the heads per layer
    gets whole-layer chunks (of max_rows for one or two layers, as before)."""
    from cotmech.patching import exact as ex

    rng = np.random.default_rng(3)
    L, H = 9, 4
    for trial in range(60):
        heads = sorted({(int(rng.integers(L)), int(rng.integers(H))) for _ in range(rng.integers(1, 12))})
        max_rows, overhead = int(rng.integers(1, 6)), float(rng.choice([0.0, 0.5, 2.0, 7.0]))
        got = ex.plan_chunks(heads, L, max_rows, overhead)
        assert [h for c in got for h in c] == heads and all(1 <= len(c) <= max_rows for c in got)
        cost = sum(ex.chunk_cost(c[0][0], len(c), L, overhead) for c in got)
        best = min(sum(ex.chunk_cost(heads[a][0], b - a, L, overhead) for a, b in split)
                   for split in _contiguous_partitions(len(heads)) if all(b - a <= max_rows for a, b in split))
        assert cost == pytest.approx(best)
    full = [(lay, h) for lay in range(28) for h in range(12)]
    for layers in (1, 2):
        assert ex.plan_chunks(full, 28, 12 * layers, 4.0) == [full[i:i + 12 * layers]
                                                              for i in range(0, len(full), 12 * layers)]
    for layers in (3, 4, 10):  # fewer layers per chunk near the top, where a row's waste weighs most
        assert all(len(c) % 12 == 0 and len(c) <= 12 * layers for c in ex.plan_chunks(full, 28, 12 * layers, 4.0))


def test_exact_forwards_follow_plan_chunks(model, monkeypatch):
    """A forward recomputes every row from its lowest layer: with no fixed cost per layer (overhead 0) heads from the
    first and last layer (a screened subset) go in separate forwards, with a large one in a single forward; the values
    are the full sweep's either way."""
    from cotmech.patching import exact as ex

    L, H = model.n_layers, model.n_heads
    pairs = random_pairs(7, shapes=((13, 5), (11, 8)))
    ref = exact_sweep(model, pairs, head_batch=64, progress=False)
    seen = []
    real = ex.patch_suffix

    def spy(model_, pr, heads, *a, **k):
        seen.append([lay for lay, _ in heads])
        return real(model_, pr, heads, *a, **k)

    monkeypatch.setattr(ex, "patch_suffix", spy)
    heads = [(0, 1), (0, H - 1), (L - 1, 0), (L - 1, 2)]
    for overhead, want in ((0.0, [[0, 0], [L - 1, L - 1]]), (100.0, [[0, 0, L - 1, L - 1]])):
        seen.clear()
        res = exact_sweep(model, pairs, heads=heads, head_batch=H, overhead=overhead, progress=False)
        assert seen == want * len(pairs)
        for lay, h in heads:
            np.testing.assert_allclose(res.patched[:, lay, h], ref.patched[:, lay, h], atol=1e-6)


def shared_exemplar_pairs(seed: int, n_shared: int = 9):
    """random_pairs behind one common token prefix (a few-shot prompt's exemplars)."""
    g = torch.Generator().manual_seed(seed + 100)
    common = torch.randint(3, 500, (n_shared,), generator=g).tolist()
    out = []
    for p in random_pairs(seed):
        out.append(make_pair(p.pair_id, common + p.ids("clean").tolist(), common + p.ids("corrupt").tolist(),
                             answer_id=p.answer_id, corrupt_answer_id=p.corrupt_answer_id))
    return out, common


def test_prefix_cache_continued_from_a_root_equals_the_whole_prefix(model):
    ids = torch.randint(3, 500, (15,), generator=torch.Generator().manual_seed(3))
    whole = tracing.prefix_cache(model, ids)
    root = tracing.prefix_cache(model, ids[:6])
    cont = tracing.prefix_cache(model, ids, root=root)
    assert cont.length == whole.length == 15 and torch.equal(cont.ids, ids)
    for a, b in zip(cont.keys + cont.values, whole.keys + whole.values):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert tracing.prefix_cache(model, ids[:6], root=root) is root
    with pytest.raises(ValueError, match="not a recorded prefix"):
        tracing.prefix_cache(model, torch.cat([ids[:5], ids[:1] + 1, ids[6:]]), root=root)


def test_sweeps_run_the_shared_exemplars_once_with_the_same_numbers(model, monkeypatch):
    """exact, AtP and path patching compute the tokens all pairs share once (shared_prefix) and continue each
    pair's prefix from it: the numbers of per-pair prefixes (fp32), one forward of the shared tokens per sweep."""
    from cotmech.patching import exact as ex
    from cotmech.patching.path import path_patch

    pairs, common = shared_exemplar_pairs(4)
    root = ex.shared_prefix(model, pairs)
    assert root.ids.tolist() == pairs[0].ids("clean")[:root.length].tolist() and root.length >= len(common)
    per_pair = [ex.pair_runs(model, p) for p in pairs]  # no root: each pair's whole prefix
    ref = exact_sweep(model, pairs, head_batch=64, progress=False, runs=per_pair)
    lengths = []
    real = tracing.prefix_cache

    def spy(model_, ids, root=None):
        lengths.append(len(ids) - (root.length if root is not None else 0))
        return real(model_, ids, root=root)

    for mod in ("cotmech.tracing", "cotmech.patching.exact", "cotmech.patching.atp"):
        monkeypatch.setattr(f"{mod}.prefix_cache", spy)
    res = exact_sweep(model, pairs, head_batch=64, progress=False)
    np.testing.assert_allclose(res.patched, ref.patched, atol=1e-5)
    np.testing.assert_allclose(res.base, ref.base, atol=1e-5)
    # one forward of the shared tokens, then each pair's own tokens only
    assert lengths == [root.length] + [p.first_diff - root.length for p in pairs]
    lengths.clear()
    a = atp_sweep(model, pairs, progress=False)
    b = atp_sweep(model, pairs, progress=False, runs=per_pair)
    np.testing.assert_allclose(a.patched, b.patched, atol=1e-5)
    np.testing.assert_allclose([a.base, a.source], [b.base, b.source], atol=1e-5)
    assert lengths == [root.length] + [p.first_diff - root.length for p in pairs]
    senders = [(0, 0), (model.n_layers - 1, 1)]
    receivers = [(model.n_layers - 1, 0)]
    got = path_patch(model, pairs, senders, receivers, paths=("logits", "q"), progress=False)
    monkeypatch.setattr("cotmech.patching.path.shared_prefix", lambda m, ps: None)
    want = path_patch(model, pairs, senders, receivers, paths=("logits", "q"), progress=False)
    for key in ("patched", "base", "source"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-5)
