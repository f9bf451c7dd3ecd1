"""Mean ablation, knockout curves, operating points, splits and overlap (cotmech.circuits)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

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
    singles = [C._z_all_layers(tiny_llama, left_pad([s], 0)) for s in seqs]  # n_layers × [1, len, D]
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
    settings = json.dumps({"model": {"spec": "random:tiny-llama", "dtype": "float32", "device": "cpu"},
                           "circuits": {"steps": 3, "batch_size": 4}, "seed": 3})
    rc = script("knockout").main(["--clean", str(tmp_path / "clean.jsonl"), "--reference", str(tmp_path / "ref.jsonl"),
                                  "--ranking", "direct=builtin", "--settings", settings, "--out-dir", str(tmp_path)])
    assert rc == 0
    # the workflow's sharding: one job per subtask (5 has no pairs: empty tables), merged = the single run above
    common = ["--clean", str(tmp_path / "clean.jsonl"), "--reference", str(tmp_path / "ref.jsonl"),
              "--ranking", "direct=builtin", "--settings", settings]
    parts = []
    for k in (1, 5, 0):
        parts += ["--part", str(tmp_path / f"part{k}")]
        assert script("knockout").main(common + ["--subtask", str(k), "--out-dir", str(tmp_path / f"part{k}")]) == 0
    assert script("knockout_merge").main(parts + ["--out-dir", str(tmp_path / "merged")]) == 0
    for f in ("curves.parquet", "operating_points.csv", "heads.parquet"):
        pd.testing.assert_frame_equal(read_table(tmp_path / "merged" / f), read_table(tmp_path / f))
    assert script("knockout_merge").main(["--part", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path)]) == 2
    assert script("overlap").main(["--dir", str(tmp_path), "--n-heads-total", "16"]) == 0
    ov = read_table(tmp_path / "overlap.parquet")
    assert len(ov) == 1 and 0 <= ov.jaccard.iloc[0] <= 1
    for stem in ("knockout_decision", "knockout_copy", "knockout_induction", "overlap"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0 and (tmp_path / f"{stem}.pdf").exists()
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"pair_id": "x"}])
    assert script("knockout").main(["--clean", str(bad), "--reference", str(tmp_path / "ref.jsonl"), "--ranking",
                                    "d=builtin", "--settings", settings, "--out-dir", str(tmp_path / "b")]) == 2


def test_operating_point_default_threshold_is_the_papers_90_percent():
    # the documented default is the paper's rule (E6: the step whose accuracy is nearest 90%)
    assert C.operating_point([0, 50, 100], [1.0, 0.91, 0.5]) == 1
    assert C.operating_point([0, 50, 100], [1.0, 0.75, 0.5]) == 0  # |1 - 0.9| < |0.75 - 0.9|
