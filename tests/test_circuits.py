"""Mean ablation, knockout curves, operating points, splits and overlap (cotmech.circuits)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from cotmech import ablation as A
from cotmech import circuits as C
from cotmech.batching import last_logits, left_pad

TEXTS = ["Max is a wumpus. Wumpuses are dumpuses. Max is",
         "Rex is a yumpus. Each yumpus is sweet. Rex is",
         "Each jompus is fast. Sam is a jompus. Sam is",
         "Fae is a rompus. Rompuses are not blue. Fae"]


def _seqs(model, texts=TEXTS):
    return [model.tokenizer(t).input_ids for t in texts]


def _all_heads(model):
    return [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]


def test_no_ablation_is_the_plain_run(tiny_model):
    seqs = _seqs(tiny_model)
    means = C.head_means(tiny_model, seqs[:2])
    plain = last_logits(tiny_model, left_pad(seqs, tiny_model.tokenizer.pad_token_id)).argmax(-1)
    assert torch.equal(C.ablated_argmax(tiny_model, seqs, means, [], batch_size=3), plain)
    curve = C.knockout_curve(tiny_model, seqs, means, _all_heads(tiny_model), [0, 4], plain, batch_size=2)
    assert curve.n_removed.tolist() == [0, 4]
    # 4 heads removed: agreement with the plain run counted from the ablated predictions, Wilson 95% interval
    k = int((C.ablated_argmax(tiny_model, seqs, means, _all_heads(tiny_model)[:4], batch_size=1) == plain).sum())
    assert (curve.correct.iloc[1], curve.n.iloc[1], curve.acc.iloc[1]) == (k, len(seqs), k / len(seqs))
    from statsmodels.stats.proportion import proportion_confint
    assert (curve.ci_low.iloc[1], curve.ci_high.iloc[1]) == pytest.approx(
        proportion_confint(k, len(seqs), alpha=0.05, method="wilson"), abs=1e-12)
    assert (curve.ci_low <= curve.acc).all() and (curve.acc <= curve.ci_high).all()


def test_shared_removal_sets_are_run_once_and_give_the_same_curves(tiny_llama, monkeypatch):
    """Curves of two rankings share the full-removal run (same head set); cached = uncached, fewer forwards."""
    seqs = _seqs(tiny_llama)
    means = C.head_means(tiny_llama, seqs[:2])
    plain = C.ablated_argmax(tiny_llama, seqs, means, [], batch_size=4)
    heads = _all_heads(tiny_llama)
    orders = [heads, heads[::-1]]
    grid = [0, 5, len(heads)]
    want = [C.knockout_curve(tiny_llama, seqs, means, o, grid, plain, batch_size=4) for o in orders]
    calls = []
    real = C.ablated_argmax
    monkeypatch.setattr(C, "ablated_argmax", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache: dict = {}
    got = [C.knockout_curve(tiny_llama, seqs, means, o, grid, plain, batch_size=4, cache=cache) for o in orders]
    for g, w in zip(got, want):
        pd.testing.assert_frame_equal(g, w)
    assert len(calls) == 3  # 5 heads of each order + all heads once


def test_full_ablation_with_own_mean_reproduces_reference(tiny_model):
    """Reference set = one example: every head replaced by its own mean is the plain run of that example."""
    seq = _seqs(tiny_model)[1]
    means = C.head_means(tiny_model, [seq])
    batch = left_pad([seq], tiny_model.tokenizer.pad_token_id)
    ablated = C.ablated_last_logits(tiny_model, batch, means, _all_heads(tiny_model))
    torch.testing.assert_close(ablated, last_logits(tiny_model, batch), atol=1e-4, rtol=1e-4)
    # ... and the same ablation on a different input is not a no-op (it forces the reference's head outputs)
    other = left_pad([_seqs(tiny_model)[0]], tiny_model.tokenizer.pad_token_id)
    assert not torch.allclose(C.ablated_last_logits(tiny_model, other, means, _all_heads(tiny_model)),
                              last_logits(tiny_model, other), atol=1e-3)


def test_nnsight_ablation_matches_plain_torch_hook(tiny_model):
    """Independent implementation: a forward pre-hook on o_proj that overwrites the head's slice."""
    seqs = _seqs(tiny_model)
    means = C.head_means(tiny_model, seqs[2:])
    removed = [(0, 1), (2, 3), (2, 0)]
    batch = left_pad(seqs, tiny_model.tokenizer.pad_token_id)
    got = C.ablated_last_logits(tiny_model, batch, means, removed)
    width, dh = batch.input_ids.shape[1], tiny_model.d_head
    handles = []
    for layer, head in removed:
        rep = means.replacement(layer, width)

        def pre(mod, args, layer=layer, head=head, rep=rep):
            z = args[0].clone()
            z[..., head * dh:(head + 1) * dh] = rep[:, head * dh:(head + 1) * dh]
            return (z,)
        handles.append(tiny_model.hf_o_proj(layer).register_forward_pre_hook(pre))
    try:
        want = last_logits(tiny_model, batch)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, last_logits(tiny_model, batch), atol=1e-4)


def test_head_means_are_end_aligned(tiny_llama):
    seqs = _seqs(tiny_llama, TEXTS[:2])
    assert len(seqs[0]) != len(seqs[1])
    means = C.head_means(tiny_llama, seqs, batch_size=2)
    singles = [A._z_all_layers(tiny_llama, left_pad([s], 0)) for s in seqs]  # n_layers × [1, len, D]
    short = min(map(len, seqs))
    for layer in (0, 3):
        torch.testing.assert_close(means.by_end[layer, 0], (singles[0][layer][0, -1] + singles[1][layer][0, -1]) / 2,
                                   atol=1e-5, rtol=1e-5)
        longer = 0 if len(seqs[0]) > len(seqs[1]) else 1
        torch.testing.assert_close(means.by_end[layer, short], singles[longer][layer][0, -1 - short],
                                   atol=1e-5, rtol=1e-5)
    assert means.count[0] == 2 and means.count[short] == 1
    # positions beyond every reference fall back to the overall mean
    width = max(map(len, seqs)) + 3
    rep = means.replacement(1, width)
    torch.testing.assert_close(rep[0], means.overall[1])
    torch.testing.assert_close(rep[-1], means.by_end[1, 0])


def test_operating_point_rule():
    n = [0, 50, 100, 150, 200]
    assert C.operating_point(n, [1.0, 0.95, 0.92, 0.6, 0.1], 0.9) == 2  # nearest 0.9
    assert C.operating_point(n, [1.0, 0.95, 0.85, 0.6, 0.1], 0.9) == 2  # tie 0.95/0.85 -> more removal
    assert C.operating_point(n, [1.0, 1.0, 1.0, 1.0, 1.0], 0.9) == 4  # all equal -> most removal
    assert C.operating_point(n, [0.2, 0.1, 0.1, 0.0, 0.0], 0.9) == 0
    with pytest.raises(ValueError):
        C.operating_point([0, 1], [1.0], 0.9)


def test_split_never_shares_examples_and_is_seeded():
    ids = [f"ex-{i}" for i in range(25)] * 3  # several pairs per example
    a, b = C.split_examples(ids, 0.4, seed=7)
    assert not set(a) & set(b) and set(a) | set(b) == set(ids) and len(a) == 10
    assert (a, b) == C.split_examples(list(reversed(ids)), 0.4, seed=7)
    assert a != C.split_examples(ids, 0.4, seed=8)[0]


def test_removal_order_and_grid():
    df = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "score": [0.5, -1.0, 2.0]})
    order = C.removal_order(df, 2, 2)
    assert order == [(1, 1), (0, 1), (0, 0), (1, 0)]  # missing head first, then ascending score
    with pytest.raises(ValueError, match="outside"):
        C.removal_order(pd.DataFrame({"layer": [5], "head": [0], "score": [1.0]}), 2, 2)
    assert C.step_grid(336, 9) == [0, 42, 84, 126, 168, 210, 252, 294, 336]
    assert C.step_grid(10, [5, 0, 5]) == [0, 5]


def test_direct_scores_vanish_when_the_reference_is_the_example(tiny_model):
    seqs = _seqs(tiny_model)
    means = C.head_means(tiny_model, [seqs[0]])
    s = C.direct_scores(tiny_model, seqs[:2], means, batch_size=2)
    assert s.shape == (2, tiny_model.n_layers, tiny_model.n_heads)
    assert s[0].abs().max() < 1e-4 * max(1.0, s[1].abs().max())
    assert s[1].abs().max() > 0


def test_direct_scores_equal_the_exact_direct_logit_drop_on_a_linear_model():
    """Oracle: on a model whose logits are linear in every head's z (tests/test_patching.py), the first-order score
    is exact. Reference = two plain forwards per head: clean, and with the head's z replaced by its reference mean at
    the last position only (o_proj pre-hook) while every later layer's attention output is frozen to its clean value
    (direct path only); score = clean top logit - ablated top logit."""
    from test_patching import linear_model

    m = linear_model()
    seqs = _seqs(m)
    means = C.head_means(m, seqs[2:])
    got = C.direct_scores(m, seqs[:2], means, batch_size=2)  # two lengths: left padding in the batch
    dh = m.d_head
    for i, seq in enumerate(seqs[:2]):
        ids = torch.tensor([seq])
        clean_out = {}
        hooks = [m.hf_o_proj(l).register_forward_hook(lambda mod, a, o, l=l: clean_out.__setitem__(l, o.detach()))
                 for l in range(m.n_layers)]
        with torch.no_grad():
            clean = m.hf(ids).logits[0, -1]
        for h in hooks:
            h.remove()
        t = int(clean.argmax())
        for layer in range(m.n_layers):
            mean = means.replacement(layer, 1)[0]
            for head in range(m.n_heads):
                def pre(mod, args, head=head, mean=mean):
                    z = args[0].clone()
                    z[:, -1, head * dh:(head + 1) * dh] = mean[head * dh:(head + 1) * dh]
                    return (z,)
                hooks = [m.hf_o_proj(layer).register_forward_pre_hook(pre)]
                hooks += [m.hf_o_proj(l).register_forward_hook(lambda mod, a, o, l=l: clean_out[l])
                          for l in range(layer + 1, m.n_layers)]
                with torch.no_grad():
                    ablated = m.hf(ids).logits[0, -1]
                for hk in hooks:
                    hk.remove()
                drop = float(clean[t] - ablated[t])
                assert float(got[i, layer, head]) == pytest.approx(drop, abs=1e-4, rel=1e-4), (i, layer, head)
    assert got.abs().max() > 1e-2  # the heads matter: the comparison is not 0 = 0


def test_overlap_and_reuse():
    sets = {(1, "r"): {(0, 0), (0, 1)}, (3, "r"): {(0, 1), (1, 1)}, (5, "r"): {(2, 2)}}
    ov = C.overlap_table(sets, n_total=16)
    row = ov[(ov.subtask_a == 1) & (ov.subtask_b == 3)].iloc[0]
    assert (row.intersection, row.union, row.jaccard) == (1, 3, pytest.approx(1 / 3))
    assert row.jaccard_random == pytest.approx((4 / 16) / (4 - 4 / 16))
    reuse = C.reuse_summary(ov, [[1, 3], [5, 9]])
    assert reuse.group.tolist() == ["1&3"] and bool(reuse.reuse.iloc[0])


def _pairs(model, texts, ontology, kinds=("decision", "copy")):
    out = []
    for i, t in enumerate(texts):
        ids = model.tokenizer(t).input_ids
        for k, kind in enumerate(kinds):
            cut = len(ids) - k  # a shorter prefix per subtask
            out.append(dict(pair_id=f"{ontology}-{i}-k{k}", example_id=f"{ontology}-{i}", subtask=k, kind=kind,
                            clean_ids=ids[:cut]))
    return out


def test_run_knockout_and_scripts(tiny_llama, tmp_path):
    import json

    from cotmech.io import read_table, write_jsonl, write_table

    clean = _pairs(tiny_llama, TEXTS * 2, "fictional")
    for i, p in enumerate(clean):  # 8 distinct examples (TEXTS twice, different ids)
        p["example_id"] = f"fictional-{i // 2}"
        p["pair_id"] = f"{p['example_id']}-k{p['subtask']}"
    ref = _pairs(tiny_llama, TEXTS[:2], "falseont")
    table = pd.DataFrame([dict(subtask=k, layer=l, head=h, score=float((l * 7 + h * 3 + k) % 5))
                          for k in (0, 1) for l in range(4) for h in range(4)])
    per_ex = pd.DataFrame([dict(example_id=f"fictional-{e}", layer=l, head=h, score=float((e + l + h) % 3))
                           for e in range(8) for l in range(4) for h in range(4)])
    write_table(tmp_path / "t.parquet", table)
    write_table(tmp_path / "pe1.parquet", per_ex.assign(subtask=1))
    rankings = {"direct": C.BUILTIN, "table": str(tmp_path / "t.parquet"), "perex": str(tmp_path / "pe{subtask}.parquet")}
    out = C.run_knockout(tiny_llama, clean, ref, {k: v for k, v in rankings.items() if k != "perex"},
                         steps=5, seed=3, batch_size=4, progress=False, log=lambda *a: None)
    cur, ops, heads = out["curves"], out["operating_points"], out["heads"]
    assert set(cur.subtask) == {0, 1} and set(cur.kind) == {"decision", "copy"}
    assert set(zip(cur.ranking, cur.scope, cur.heldout)) == {("direct", "rank_split", True),
                                                            ("direct", "eval_split", False),
                                                            ("table", "all_pairs", False)}
    assert (cur.n == 4).all()  # evaluation split = half of 8 examples
    kept = heads[heads.kept].groupby(["subtask", "ranking", "scope"]).size()
    for r in ops.itertuples():
        assert kept.get((r.subtask, r.ranking, r.scope), 0) == r.n_kept == 16 - r.n_removed
    again = C.run_knockout(tiny_llama, clean, ref, {"direct": C.BUILTIN}, subtasks=[0], steps=5, seed=3,
                           batch_size=2, progress=False, log=lambda *a: None)  # other batching, same seed
    first = cur[(cur.subtask == 0) & (cur.ranking == "direct")].reset_index(drop=True)
    pd.testing.assert_frame_equal(again["curves"], first)
    # per-example table: re-ranked on each split (subtask 1 only has such a file)
    pe = C.run_knockout(tiny_llama, clean, ref, {"perex": rankings["perex"]}, subtasks=[1], steps=3, seed=3,
                        progress=False, log=lambda *a: None)["curves"]
    assert set(pe.scope) == {"rank_split", "eval_split"}

    # the two scripts end to end
    import importlib.util
    from pathlib import Path

    def script(name):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    write_jsonl(tmp_path / "clean.jsonl", clean)
    write_jsonl(tmp_path / "ref.jsonl", ref)
    e7 = {"isolation": {"main": "direct", "others": ["table"]},
          "cross_removal": {"base": "direct", "others": ["table"], "steps": [2, 4], "stop": 0.0}}
    settings = json.dumps({"model": {"spec": "random:tiny-llama", "dtype": "float32", "device": "cpu"},
                           "circuits": {"steps": 3, "batch_size": 4, "primary": "direct", **e7}, "seed": 3})
    common = ["--clean", str(tmp_path / "clean.jsonl"), "--reference", str(tmp_path / "ref.jsonl"),
              "--ranking", "direct=builtin", "--ranking", f"table={tmp_path / 't.parquet'}", "--settings", settings]
    assert script("knockout").main(common + ["--out-dir", str(tmp_path)]) == 0
    iso, cross = read_table(tmp_path / "isolation.csv"), read_table(tmp_path / "cross_removal.csv")
    assert len(iso) == 2 * len(C.ISOLATION_CATEGORIES) and set(iso.scope) == {"rank_split+all_pairs"}
    assert set(zip(cross.subtask, cross.direction)) == {(k, d) for k in (0, 1) for d in ("ascending", "descending")}
    heads_all = read_table(tmp_path / "heads.parquet")
    prim = heads_all[heads_all.primary]
    assert set(zip(prim.ranking, prim.scope)) == {("direct", "rank_split")} and len(prim) == 2 * 16
    # the workflow's sharding: one job per subtask (5 has no pairs: empty tables), merged = the single run above
    parts = []
    for k in (1, 5, 0):
        parts += ["--part", str(tmp_path / f"part{k}")]
        assert script("knockout").main(common + ["--subtask", str(k), "--out-dir", str(tmp_path / f"part{k}")]) == 0
    assert script("knockout_merge").main(parts + ["--out-dir", str(tmp_path / "merged")]) == 0
    for f in C.KNOCKOUT_FILES.values():
        pd.testing.assert_frame_equal(read_table(tmp_path / "merged" / f), read_table(tmp_path / f))
    # E7 across subtasks from the merged circuits
    assert script("knockout").main(common[:4] + ["--settings", settings, "--circuits",
                                                 str(tmp_path / "merged" / "heads.parquet"), "--out-dir",
                                                 str(tmp_path / "x")]) == 0
    xs = read_table(tmp_path / "x" / "cross_subtask.csv")
    assert sorted(set(xs.subtask)) == [0, 1] and len(xs) == 2 * (2 * 2 + 2)
    own = xs[(xs["mode"] == "isolate") & (xs.source == xs.subtask)].set_index("subtask")
    ops_m = read_table(tmp_path / "merged" / "operating_points.csv")
    for r in ops_m[ops_m.primary].itertuples():  # a subtask's own circuit isolated = its operating point
        assert own.loc[r.subtask, "acc"] == pytest.approx(r.acc) and own.loc[r.subtask, "n_kept"] == r.n_kept
    assert script("knockout_merge").main(["--part", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path)]) == 2
    assert script("overlap").main(["--dir", str(tmp_path), "--n-heads-total", "16"]) == 0
    ov = read_table(tmp_path / "overlap.parquet")
    assert len(ov) == 6 and ((0 <= ov.jaccard) & (ov.jaccard <= 1)).all()  # 2 subtasks × 2 rankings
    for stem in ("knockout_decision", "knockout_copy", "knockout_induction", "overlap"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0 and (tmp_path / f"{stem}.pdf").exists()
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"pair_id": "x"}])
    assert script("knockout").main(["--clean", str(bad), "--reference", str(tmp_path / "ref.jsonl"), "--ranking",
                                    "d=builtin", "--settings", settings, "--out-dir", str(tmp_path / "b")]) == 2


# --------------------------------------------------------------------------------------------------
# E6: the authors' FD window (induction) and sorted (decision/copy) procedures
# --------------------------------------------------------------------------------------------------
def test_fd_edges_match_numpy_fd_width_with_truncated_bin_count():
    """Same Freedman–Diaconis width as numpy's bins='fd'; the authors truncate the bin count, numpy rounds up."""
    import numpy as np

    rng = np.random.default_rng(0)
    for x in (rng.normal(size=336), rng.standard_t(3, size=1024), rng.random(50)):
        np_edges = np.histogram_bin_edges(x, bins="fd")
        ratio = np.ptp(x) / (2 * (np.percentile(x, 75) - np.percentile(x, 25)) / x.size ** (1 / 3))
        assert ratio % 1 != 0 and len(np_edges) - 1 == int(np.ceil(ratio))  # numpy: ceil(range / w) bins
        ours = C.fd_edges(x)
        assert len(ours) - 1 == len(np_edges) - 2  # int(range / w) = one bin fewer
        np.testing.assert_allclose(ours, np.histogram_bin_edges(x, bins=len(np_edges) - 2))


def test_fd_window_hand_computed():
    """x (10 heads): IQR = 3 − 1.25 = 1.75, w = 3.5/10^(1/3) = 1.6245, range 8 → int(4.92) = 4 bins of width 2:
    counts [3, 5, 1, 1], modal bin 1. Windows [e1, e1] = [2, 2], [e0, e2] = [0, 4], then [e0, e3] = [0, 6]
    (right end clamped at the last bin's left edge, so the score 8 is never removed)."""
    import numpy as np

    x = np.array([0, 1, 1, 2, 2, 2, 3, 3, 4, 8.0])
    np.testing.assert_allclose(C.fd_edges(x), [0, 2, 4, 6, 8])
    assert C.fd_windows(x, 4) == [(2.0, 2.0), (0.0, 4.0), (0.0, 6.0), (0.0, 6.0)]
    table = pd.DataFrame({"layer": [0] * 5 + [1] * 5, "head": list(range(5)) * 2, "score": x})
    plan = C.window_plan(table, 2, 5, 4)
    assert plan.procedure == "fd_window"
    assert plan.sets == [[(0, 3), (0, 4), (1, 0)], [(l, h) for l in range(2) for h in range(5) if (l, h) != (1, 4)]]
    assert plan.windows == [(2.0, 2.0), (0.0, 4.0)]  # the repeated window is dropped
    assert plan.order[:3] == [(0, 3), (0, 4), (1, 0)] and plan.order[-1] == (1, 4)
    assert plan.step_of[(0, 0)] == 1 and (1, 4) not in plan.step_of
    s = C.sorted_plan(table, 2, 5, [0, 3, 10])
    assert [len(r) for r in s.sets] == [0, 3, 10] and s.sets[1] == [(0, 0), (0, 1), (0, 2)]


# --------------------------------------------------------------------------------------------------
# Held-out rankings, isolation and cross-removal
# --------------------------------------------------------------------------------------------------
WORDS = ["wumpus", "yumpus", "jompus", "rompus", "dumpus", "tumpus", "vumpus", "zumpus", "numpus", "lempus"]


def _distinct_pairs(model, n_examples: int, ontology: str, subtasks=(0, 1)):
    """Pairs with distinct token sequences (one per example and subtask); answer = first token at position 0."""
    out = []
    for e in range(n_examples):
        w, v = WORDS[e % len(WORDS)], WORDS[(3 * e + 1) % len(WORDS)]
        ids = model.tokenizer(f"{'Max' if e % 2 else 'Rex'} is a {w}. Every {w} is a {v}. {'Sam' if e > 4 else 'Fae'}"
                              f" is {e}. Max is").input_ids
        for k in subtasks:
            cut = len(ids) - k
            out.append(dict(pair_id=f"{ontology}-{e}-k{k}", example_id=f"{ontology}-{e}", subtask=k,
                            kind=("decision", "copy")[k % 2], clean_ids=ids[:cut], answer_id=ids[0], answer_pos=0))
    return out


def test_split_is_dataset_wide_and_sized_by_what_exists():
    clean = [dict(pair_id=f"e{e}-k{k}", example_id=f"e{e}", subtask=k, kind="x") for e in range(30) for k in (0, 1)
             if not (k == 1 and e >= 12)]  # subtask 1 has only 12 examples
    rank_ids = set(C.split_examples([p["example_id"] for p in clean], 0.5, 4)[0])
    for k in (0, 1):
        d = C.subtask_data(clean, [dict(subtask=k, pair_id="r")], k, rank_ids, n_examples=200, n_reference=None,
                           rank_fraction=0.5, seed=4)
        r, e = {p["example_id"] for p in d.rank}, {p["example_id"] for p in d.eval}
        assert not r & e and r <= rank_ids and not e & rank_ids
        assert len(d.rank) + len(d.eval) == d.n_available == (30 if k == 0 else 12)  # 200 asked: all that exist
    d = C.subtask_data(clean, [], 0, rank_ids, n_examples=6, n_reference=None, rank_fraction=0.5, seed=4)
    assert (len(d.rank), len(d.eval)) == (3, 3)


def test_every_ranking_is_computed_on_the_ranking_split_only(tiny_llama, tmp_path, monkeypatch):
    """Oracle: each ranking's scores recomputed in the test from the ranking-split examples alone (direct effect,
    E4/E5 scores, per-pair patching, per-example table); the curves' sequences are the evaluation split's."""
    import numpy as np

    from cotmech.io import write_table
    from cotmech.patch_results import PatchResult, aggregate, save_raw
    from cotmech.heads import SCORERS

    L, H = tiny_llama.n_layers, tiny_llama.n_heads
    clean, ref = _distinct_pairs(tiny_llama, 8, "fictional"), _distinct_pairs(tiny_llama, 2, "falseont")
    rng = np.random.default_rng(1)
    k_pairs = [p for p in clean if p["subtask"] == 0]
    res = PatchResult("exact", "kl", "denoise", [p["pair_id"] for p in k_pairs], [0] * len(k_pairs),
                      rng.normal(size=(len(k_pairs), L, H)), rng.normal(size=len(k_pairs)) - 3,
                      rng.normal(size=len(k_pairs)) + 3)
    save_raw(tmp_path / "raw0.safetensors", res)
    half = len(k_pairs) // 2  # the same scores as two shards, given as a list of files (the rule's sharding)
    for i, sl in enumerate((slice(0, half), slice(half, None))):
        save_raw(tmp_path / f"shard{i}-raw0.safetensors",
                 PatchResult("exact", "kl", "denoise", res.pair_ids[sl], res.subtasks[sl], res.patched[sl],
                             res.base[sl], res.source[sl]))
    perex = pd.DataFrame([dict(example_id=f"fictional-{e}", layer=l, head=h, score=rng.normal())
                          for e in range(8) for l in range(L) for h in range(H)])
    write_table(tmp_path / "pe.parquet", perex)
    induction = pd.DataFrame(dict(layer=np.repeat(np.arange(L), H), head=np.tile(np.arange(H), L),
                                  score=rng.normal(size=L * H)))
    write_table(tmp_path / "ind.parquet", induction)
    rankings = {"direct": "builtin", "decision": "builtin:writers", "copy": "builtin:copy",
                "patching": str(tmp_path / "raw{subtask}.safetensors"), "perex": str(tmp_path / "pe.parquet"),
                "sharded": [str(tmp_path / f"shard{i}-raw{{subtask}}.safetensors") for i in range(2)],
                "induction": str(tmp_path / "ind.parquet")}
    seen_eval = []
    real = C.curve_for_sets
    monkeypatch.setattr(C, "curve_for_sets", lambda m, seqs, *a, **k: seen_eval.append(seqs) or real(m, seqs, *a, **k))
    out = C.run_knockout(tiny_llama, clean, ref, rankings, subtasks=[0], steps=3, seed=5, batch_size=4,
                         window_rankings=["induction"], other_data=["induction"], primary="induction",
                         progress=False, log=lambda *a: None)
    rank_ids = set(C.split_examples([p["example_id"] for p in clean], 0.5, 5)[0])
    rank = [p for p in k_pairs if p["example_id"] in rank_ids]
    ev = [p for p in k_pairs if p["example_id"] not in rank_ids]
    assert rank and ev
    ev_seqs = {tuple(p["clean_ids"]) for p in ev}
    assert all({tuple(s) for s in seqs} == ev_seqs for seqs in seen_eval)
    assert not ev_seqs & {tuple(p["clean_ids"]) for p in rank}
    # the oracle scores of the ranking split
    means = C.head_means(tiny_llama, [p["clean_ids"] for p in ref if p["subtask"] == 0])
    want = {"direct": C.direct_scores(tiny_llama, [p["clean_ids"] for p in rank], means).mean(0).numpy()}
    comp = C.role_components(tiny_llama, rank)
    want["decision"] = SCORERS["writers"][0](comp["writers"], np.arange(len(rank)))
    want["copy"] = SCORERS["copy"][0](comp["copy"], np.arange(len(rank)))
    idx = [i for i, p in enumerate(k_pairs) if p["example_id"] in rank_ids]
    want["patching"] = aggregate(res.patched[idx], res.base[idx], res.source[idx], n_boot=0)[0]
    want["sharded"] = want["patching"]
    want["perex"] = (perex[perex.example_id.isin(rank_ids)].groupby(["layer", "head"])["score"].mean()
                     .to_numpy().reshape(L, H))
    heads, ops = out["heads"], out["operating_points"]
    for name, m in want.items():
        got = heads[(heads.ranking == name) & (heads.scope == "rank_split")].sort_values(["layer", "head"])
        np.testing.assert_allclose(got.score.to_numpy(), m.reshape(-1), rtol=1e-4, atol=1e-6, err_msg=name)
        op = ops[(ops.ranking == name) & (ops.scope == "rank_split")].iloc[0]
        assert bool(op.heldout) and op.n_eval_examples == len(ev) and op.n_rank_examples == len(rank)
    ind = ops[ops.ranking == "induction"]
    assert ind.scope.tolist() == ["other_data"] and ind.procedure.tolist() == ["fd_window"] and ind.primary.all()
    assert ops.primary.sum() == 1 and heads[heads.primary].ranking.unique().tolist() == ["induction"]
    # the in-sample line exists for every ranking with per-example scores, labelled
    assert set(ops[ops.scope == "eval_split"].ranking) == {"direct", "decision", "copy", "patching", "sharded",
                                                            "perex"}
    assert not ops[ops.scope == "eval_split"].heldout.any()


def _hook_argmax(model, seqs, means, removed):
    """Reference: plain torch pre-hooks on o_proj overwrite the removed heads with the reference mean, one
    unpadded sequence at a time."""
    from cotmech.batching import last_logits

    out = []
    dh = model.d_head
    for s in seqs:
        batch = left_pad([s], model.tokenizer.pad_token_id)
        width = batch.input_ids.shape[1]
        handles = []
        for layer in range(model.n_layers):
            heads = [h for (l, h) in removed if l == layer]
            if not heads:
                continue
            rep = means.replacement(layer, width)

            def pre(mod, args, heads=heads, rep=rep):
                z = args[0].clone()
                for h in heads:
                    z[..., h * dh:(h + 1) * dh] = rep[:, h * dh:(h + 1) * dh]
                return (z,)
            handles.append(model.hf_o_proj(layer).register_forward_pre_hook(pre))
        try:
            out.append(int(last_logits(model, batch).argmax(-1)[0]))
        finally:
            for hd in handles:
                hd.remove()
    return torch.tensor(out)


def test_isolation_and_cross_removal_match_reference_loops(tiny_llama):
    import numpy as np

    seqs = [p["clean_ids"] for p in _distinct_pairs(tiny_llama, 6, "x", subtasks=(0,))]
    means = C.head_means(tiny_llama, seqs[:2])
    heads = _all_heads(tiny_llama)
    base = C.ablated_argmax(tiny_llama, seqs, means, [])
    # all heads kept = the unablated run
    full = C.kept_accuracy(tiny_llama, seqs, means, set(heads), base, heads)
    assert full["acc"] == 1.0 and full["n_removed"] == 0
    rng = np.random.default_rng(3)
    circ = {n: {heads[i] for i in rng.choice(16, size=9, replace=False)} for n in ("ind", "dec", "copy")}

    def ref_acc(kept):
        removed = [h for h in heads if h not in kept]
        return float((_hook_argmax(tiny_llama, seqs, means, removed) == base).float().mean())

    iso = C.isolation(tiny_llama, seqs, means, base, circ, "ind", ["dec", "copy"], heads).set_index("category")
    m, a, b = circ["ind"], circ["dec"], circ["copy"]
    ref_sets = {"main": [h for h in heads if h in m],
                "common": [h for h in heads if h in m and h in a and h in b],
                "only_main": [h for h in heads if h in m and h not in a and h not in b],
                "only_other": [h for h in heads if (h in a or h in b) and h not in m],
                "other": [h for h in heads if h in a or h in b],
                "common_only_main": [h for h in heads if h in m and ((h in a and h in b) or (h not in a and h not in b))]}
    for cat, kept in ref_sets.items():
        assert iso.loc[cat, "n_kept"] == len(kept), cat
        assert iso.loc[cat, "acc"] == pytest.approx(ref_acc(set(kept))), cat
    # cross-removal: base circuit minus the first i heads of another ranking's order, stop below `stop`
    order = [heads[i] for i in rng.permutation(16)]
    steps, stop = [2, 4, 8, 12, 16], 0.7
    got = C.cross_removal(tiny_llama, seqs, means, base, m, order, steps, stop, heads)
    want = []
    for i in steps:
        kept = [h for h in heads if h in m and h not in order[:i]]
        want.append((i, len(kept), ref_acc(set(kept))))
        if want[-1][2] < stop:
            break
    assert [(int(r.n_other), int(r.n_kept)) for r in got.itertuples()] == [w[:2] for w in want]
    np.testing.assert_allclose(got.acc, [w[2] for w in want])
    lo, hi = C.wilson(int(got.correct.iloc[-1]), len(seqs))
    assert (got.ci_low.iloc[-1], got.ci_high.iloc[-1]) == (lo, hi)
    # across subtasks: isolate / remove each circuit, union / intersection
    cs = C.cross_subtask(tiny_llama, seqs, means, base, {0: m, 3: a}, heads).set_index(["mode", "source"])
    for (mode, src), kept in {("isolate", 0): m, ("remove", 0): set(heads) - m, ("isolate", 3): a,
                              ("remove", 3): set(heads) - a, ("union", -1): m | a,
                              ("intersection", -1): m & a}.items():
        assert cs.loc[(mode, src), "n_kept"] == len(kept)
        assert cs.loc[(mode, src), "acc"] == pytest.approx(ref_acc(kept)), (mode, src)


def test_operating_point_default_threshold_is_the_papers_90_percent():
    # the documented default is the paper's rule (E6: the step whose accuracy is nearest 90%)
    assert C.operating_point([0, 50, 100], [1.0, 0.91, 0.5]) == 1
    assert C.operating_point([0, 50, 100], [1.0, 0.75, 0.5]) == 0  # |1 - 0.9| < |0.75 - 0.9|


# --------------------------------------------------------------------------------------------------
# Segment-aligned means and the cached-prefix evaluation
# --------------------------------------------------------------------------------------------------
PREFIX = ("Each wumpus is a dumpus. Max is a wumpus. Max is a dumpus. True\n"
          "Rompuses are not blue. Fae is a rompus. Fae is not blue. False\n")


def _prefixed(model, prefix=PREFIX):
    seqs = _seqs(model, [prefix + t for t in TEXTS + ["Sam is a jompus. Sam"]])
    # references: one with a shorter, partly shared prefix, the others longer than the prefix with other words
    refs = _seqs(model, [prefix[:40] + TEXTS[3]] + [prefix.replace("wumpus", "yumpus") + t for t in TEXTS[:3]])
    return seqs, refs


def _segment_knockout(model):
    """The prefixed sequences, their segment-aligned reference means, the unablated argmax and every head."""
    seqs, refs = _prefixed(model)
    means = C.head_means(model, refs, batch_size=2, prefix_len=C.common_prefix_len(seqs))
    return seqs, means, C.ablated_argmax(model, seqs, means, [], 2), _all_heads(model)


def _single_z(model, seq):
    return A._z_all_layers(model, left_pad([seq], model.tokenizer.pad_token_id))  # n_layers × [1, n, dim]


def test_segment_means_and_cached_prefix_equal_an_explicit_full_sequence_loop(tiny_model):
    """(a) Oracle: means by an explicit per-reference loop (start-aligned on the shared prefix, end-aligned after),
    applied by plain o_proj hooks to every whole sequence, one at a time. The cached-prefix evaluation and the
    full left-padded forward both equal it to fp32 tolerance."""
    m = tiny_model
    seqs, refs = _prefixed(m)
    P = C.common_prefix_len(seqs)
    assert 10 < P < min(len(s) for s in seqs)
    means = C.head_means(m, refs, batch_size=2, prefix_len=P)
    zr = [_single_z(m, r) for r in refs]
    removed = _all_heads(m)[1::3]
    dh = m.d_head
    for seq in seqs:
        n = len(seq)
        handles = []
        for layer, head in removed:
            rep = torch.zeros(n, m.n_heads * dh)
            for p in range(n):
                if p < P:
                    got = [z[layer][0, p] for z, r in zip(zr, refs) if len(r) > p]
                else:
                    j = n - 1 - p
                    got = [z[layer][0, len(r) - 1 - j] for z, r in zip(zr, refs) if len(r) > j]
                rep[p] = torch.stack(got).mean(0) if got else means.overall[layer]

            def pre(mod, args, head=head, rep=rep):
                x = args[0].clone()
                x[0, :, head * dh:(head + 1) * dh] = rep[:, head * dh:(head + 1) * dh]
                return (x,) + args[1:]
            handles.append(m.hf_o_proj(layer).register_forward_pre_hook(pre))
        try:
            with torch.no_grad():
                want = m.hf(torch.tensor([seq])).logits[0, -1].float()
        finally:
            for h in handles:
                h.remove()
        cached = C.cached_ablated_logits(m, [seq] + [s for s in seqs if s is not seq], means, removed, 3)[0]
        full = C.ablated_last_logits(m, left_pad(seqs, m.tokenizer.pad_token_id), means, removed)[seqs.index(seq)]
        torch.testing.assert_close(cached, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(full, want, atol=1e-4, rtol=1e-4)
    # the prefix values do not depend on the sequence (what makes the prefix cacheable); prefix_len 0 = end-aligned
    v = means.values_at(0, torch.arange(P)[None].expand(2, -1), torch.tensor([P + 3, P + 9]))
    torch.testing.assert_close(v[0], v[1])
    end = C.head_means(m, refs, batch_size=2)
    torch.testing.assert_close(end.left_padded(2, [len(seqs[0])], len(seqs[0]))[0], end.replacement(2, len(seqs[0])))
    assert C.cacheable_prefix(seqs, end) == 0


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen2"])
def sensitive_model(request):
    """A tiny model with larger random weights, so that removing heads changes its argmax (MHA and GQA)."""
    from cotmech.models import load_model

    return load_model(f"random:{request.param}?initializer_range=0.15", dtype="float32", device="cpu")


def test_cached_knockout_curves_equal_the_exhaustive_full_forward(sensitive_model):
    """(b) Predictions and argmax agreement curves of the cached-prefix path equal the full-sequence path
    (same segment-aligned means) for every removed set of three orders."""
    m = sensitive_model
    seqs, refs = _prefixed(m)
    means = C.head_means(m, refs, batch_size=2, prefix_len=C.common_prefix_len(seqs))
    base_full = C.ablated_argmax(m, seqs, means, [], 2, method="full")
    assert torch.equal(C.ablated_argmax(m, seqs, means, [], 2), base_full)
    heads = _all_heads(m)
    grid = list(range(len(heads) + 1))
    accs = set()
    for order in (heads, heads[::-1], heads[1::2] + heads[::2]):
        full_cache, cached_cache = {}, {}
        full = C.knockout_curve(m, seqs, means, order, grid, base_full, 2, cache=full_cache, method="full")
        cached = C.knockout_curve(m, seqs, means, order, grid, base_full, 4, cache=cached_cache, method="cached")
        pd.testing.assert_frame_equal(cached, full)
        for key, pred in full_cache.items():
            assert torch.equal(cached_cache[key], pred)
        accs |= set(full.acc)
    assert len(accs) > 2  # removals change predictions: the comparison is not vacuous


# --------------------------------------------------------------------------------------------------
# Operating point by bisection with early threshold decisions (circuits.search: bisection)
# --------------------------------------------------------------------------------------------------
def _nearest(n_removed, counts, n, threshold):
    """Oracle: the paper's rule by an explicit loop (nearest the threshold, ties to more removal)."""
    d = [abs(c / n - threshold) for c in counts]
    best = min(round(x, 12) for x in d)
    return max((i for i in range(len(counts)) if round(d[i], 12) == best), key=lambda i: n_removed[i])


def _bisect_on(counts, n, threshold, n_removed=None):
    n_removed = list(range(len(counts))) if n_removed is None else n_removed
    calls = {"decide": [], "count": []}

    def decide(i, k):
        calls["decide"].append(i)
        return counts[i] >= k

    def count(i):
        calls["count"].append(i)
        return counts[i]
    i, got = C.bisect_operating_point(n_removed, n, decide, count, threshold)
    return i, got, calls


def test_bisection_equals_the_exhaustive_operating_point_on_monotone_curves():
    """Every non-increasing count curve (plateaus, all above, all below, exact hits of the threshold): the
    bisection's operating point is the explicit-loop nearest step of the whole curve; counted steps are true."""
    import numpy as np

    rng = np.random.default_rng(0)
    n_cases = 0
    for n in (1, 4, 10, 35):
        for S in (1, 2, 3, 9, 21):
            for _ in range(60):
                counts = sorted(rng.integers(0, n + 1, S).tolist(), reverse=True)
                if rng.random() < 0.3:
                    counts[0] = n
                n_removed = np.cumsum(rng.integers(1, 4, S)).tolist()  # increasing, as every plan's steps
                for thr in (0.9, 0.5, 0.0, 1.0, float(rng.choice(counts)) / n):
                    i, got, calls = _bisect_on(counts, n, thr, n_removed)
                    assert i == _nearest(n_removed, counts, n, thr), (counts, n_removed, thr)
                    assert all(counts[j] == c for j, c in got.items()) and i in got
                    assert len(calls["count"]) <= 3 and len(calls["decide"]) <= 2 * (int(np.log2(S)) + 2)
                    n_cases += 1
    assert n_cases > 5000


def test_bisection_on_a_non_monotone_curve_returns_a_counted_crossing():
    """Accuracy that rises again: the result is the nearest among the counted steps, which bracket a crossing
    (documented in docs/DEVIATIONS.md); here it differs from the exhaustive point (the test is not vacuous)."""
    n, thr = 10, 0.9
    counts = [10, 9, 3, 3, 9, 9, 2, 9, 0]  # exhaustive: ties at 0.0 distance -> the last 9 (step 7)
    i, got, _ = _bisect_on(counts, n, thr)
    assert _nearest(list(range(9)), counts, n, thr) == 7
    ev = sorted(got)
    assert i == ev[C.operating_point(ev, [got[j] / n for j in ev], thr)]
    passes = [j for j in ev if got[j] / n >= thr]
    fails = [j for j in ev if got[j] / n < thr]
    assert any(f == p + 1 for p in passes for f in fails)  # a crossing c-1 -> c among the counted steps
    assert i != 7


def test_early_decisions_equal_the_full_evaluation(sensitive_model):
    """LazyPredictions.decide(k) = (full agreement count >= k) for every k, both paths, batch sizes 1 and 2;
    its predictions equal ablated_argmax's; some decisions stop early (fewer sequences run)."""
    m = sensitive_model
    seqs, means, base, heads = _segment_knockout(m)
    early = 0
    for removed in (heads[:1], heads[5:9], heads[::3]):
        for method, bs in (("full", 2), ("cached", 1)):
            want = C.ablated_argmax(m, seqs, means, removed, bs, method)
            correct = int((want == base).sum())
            for k in sorted({0, 1, correct, correct + 1, len(seqs), len(seqs) + 1}):  # every boundary
                u = C.LazyPredictions(m, seqs, means, removed, bs, method)
                assert u.decide(base, k) == (correct >= k), (removed, method, bs, k)
                early += u.n_run < len(seqs)
                assert torch.equal(u.all(), want) and u.n_run == len(seqs)
    assert early > 0


def _monotone(counts):
    return all(a >= b for a, b in zip(counts, counts[1:]))


def test_search_curve_equals_the_exhaustive_curve_on_a_real_knockout(sensitive_model):
    """Real mean-ablation curves of three orders over every step: evaluated steps' accuracies equal the
    exhaustive curve's; the operating point equals the exhaustive one where the curve is monotone (some are),
    else it is the nearest evaluated step; fewer sequences run than the exhaustive sweep."""
    m = sensitive_model
    seqs, means, base, heads = _segment_knockout(m)
    n_mono = 0
    for order in (heads, heads[::-1], heads[1::2] + heads[::2]):
        sets = [order[:n] for n in range(0, len(heads) + 1, 2)]
        want = C.curve_for_sets(m, seqs, means, sets, base, len(heads), 2)
        cache: dict = {}
        got, i = C.search_curve(m, seqs, means, sets, base, len(heads), 0.9, 2, cache)
        ev = got[got.evaluated]
        pd.testing.assert_frame_equal(ev[want.columns].reset_index(drop=True),
                                      want[got.evaluated].reset_index(drop=True), check_dtype=False)
        assert got[~got.evaluated].acc.isna().all() and bool(got.evaluated.iloc[i])
        assert got.n_run.sum() < len(seqs) * (len(sets) - 1)
        key = max(cache, key=len)  # only complete predictions are shared
        assert torch.equal(cache[key], C.ablated_argmax(m, seqs, means, list(key), 2))
        exhaustive = C.operating_point(want.n_removed.tolist(), want.acc.tolist(), 0.9)
        if _monotone(want.correct.tolist()):
            assert i == exhaustive
            n_mono += 1
        else:
            j = C.operating_point(ev.n_removed.tolist(), ev.acc.tolist(), 0.9)
            assert i == ev.index[j]
    assert n_mono >= 1


def test_run_knockout_bisection_matches_exhaustive():
    """run_knockout with search='bisection': same operating points and kept heads as 'exhaustive' for every
    monotone curve, evaluated steps equal, un-evaluated steps marked; an unknown search is refused."""
    from cotmech.models import load_model

    tiny_llama = load_model("random:tiny-llama?initializer_range=0.15", dtype="float32", device="cpu")
    clean = _pairs(tiny_llama, TEXTS * 2, "fictional")
    for i, p in enumerate(clean):
        p["example_id"] = f"fictional-{i // 2}"
        p["pair_id"] = f"{p['example_id']}-k{p['subtask']}"
    ref = _pairs(tiny_llama, TEXTS[:2], "falseont")
    kw = dict(steps=17, seed=3, batch_size=4, progress=False, log=lambda *a: None)
    ex = C.run_knockout(tiny_llama, clean, ref, {"direct": C.BUILTIN}, **kw)
    bi = C.run_knockout(tiny_llama, clean, ref, {"direct": C.BUILTIN}, search="bisection", **kw)
    assert ex["curves"].evaluated.all() and not bi["curves"].evaluated.all()
    keys = ["subtask", "ranking", "scope", "step"]
    merged = ex["curves"].merge(bi["curves"], on=keys, suffixes=("", "_b"))
    ev = merged[merged.evaluated_b]
    assert (ev.acc == ev.acc_b).all() and (ev.correct == ev.correct_b).all()
    n_mono = n_inner = 0
    for (k, r, s), c in ex["curves"].groupby(["subtask", "ranking", "scope"]):
        if not _monotone(c.correct.tolist()):
            continue
        n_mono += 1
        n_inner += 0 < C.operating_point(c.n_removed.tolist(), c.acc.tolist()) < len(c) - 1
        sel = lambda t: t[(t.subtask == k) & (t.ranking == r) & (t.scope == s)]  # noqa: E731
        pd.testing.assert_frame_equal(sel(bi["operating_points"]).reset_index(drop=True),
                                      sel(ex["operating_points"]).reset_index(drop=True))
        pd.testing.assert_frame_equal(sel(bi["heads"]).reset_index(drop=True), sel(ex["heads"]).reset_index(drop=True))
    assert n_mono >= 1 and n_inner >= 1  # an operating point inside the curve: not vacuous
    with pytest.raises(ValueError, match="circuits.search"):
        C.run_knockout(tiny_llama, clean, ref, {"direct": C.BUILTIN}, search="golden", **kw)


def test_alignment_prefix_is_the_prefix_every_clean_input_shares():
    """ablation.alignment_prefix (the knockout's and the pruned trace's start-aligned segment)."""
    from cotmech.ablation import alignment_prefix

    clean = [{"clean_ids": [1, 2, 3, 4]}, {"clean_ids": [1, 2, 5]}, {"clean_ids": [1, 2, 3]}]
    assert alignment_prefix(clean, "segment") == 2 and alignment_prefix(clean, "end") == 0
    assert C.alignment_prefix is alignment_prefix
    with pytest.raises(ValueError, match="mean_alignment"):
        alignment_prefix(clean, "start")


def test_reference_means_over_the_shared_exemplars_equal_whole_sequences(tiny_model):
    """head_means runs the tokens every reference shares once and each rest over their cache: every field equals
    the whole-sequence means (fp32), and no forward after the shared one sees the shared tokens again."""
    m = tiny_model
    seqs, _ = _prefixed(m)
    refs = _seqs(m, [PREFIX + t for t in TEXTS[:3]] + [PREFIX + "Sam is a jompus. Sam is"])
    Q = C.common_prefix_len(refs)
    assert Q > 20 and len({len(r) for r in refs}) > 1
    P = C.common_prefix_len(seqs)
    widths: list[int] = []
    emb = m.hf.get_input_embeddings().register_forward_hook(lambda mod, a, out: widths.append(a[0].shape[1]))
    try:
        cached = C.head_means(m, refs, batch_size=3, prefix_len=P)
    finally:
        emb.remove()
    full = C.head_means(m, refs, batch_size=3, prefix_len=P, method="full")
    assert widths[0] == Q and max(widths[1:]) == max(len(r) for r in refs) - Q  # shared tokens run once
    for f in ("by_end", "count", "overall", "by_start", "count_start"):
        torch.testing.assert_close(getattr(cached, f), getattr(full, f), atol=1e-5, rtol=1e-5)
    assert cached.prefix_len == full.prefix_len == P
    with pytest.raises(ValueError, match="method"):
        C.head_means(m, refs, method="fast")

