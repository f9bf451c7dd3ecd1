"""Pairs validation, score tables + bootstrap, raw shards, and the patch_heads script end to end."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cotmech.io import RecordError, read_table, write_jsonl
from cotmech.patching.data import load_pairs, make_pair, pair_from_record
from cotmech.patch_results import PatchResult, aggregate, load_raw, save_raw
from cotmech.patching.scores import score_table, spearman_table

REPO = Path(__file__).resolve().parents[1]


def test_make_pair_validates():
    p = make_pair("a", [1, 2, 3, 4], [1, 2, 9, 4], answer_id=5)
    assert p.first_diff == 2 and p.corrupt_answer_id is None
    with pytest.raises(RecordError, match="differ in length"):
        make_pair("b", [1, 2, 3], [1, 2], answer_id=1)
    with pytest.raises(RecordError, match="identical"):
        make_pair("c", [1, 2, 3], [1, 2, 3], answer_id=1)
    with pytest.raises(RecordError, match="last"):
        make_pair("d", [1, 2, 3], [1, 2, 4], answer_id=1)
    with pytest.raises(RecordError, match="first_diff is 1"):
        pair_from_record({"pair_id": "e", "clean_ids": [1, 2, 3, 4], "corrupt_ids": [1, 2, 5, 4], "answer_id": 3,
                          "first_diff": 1}, where="x.jsonl: ")
    with pytest.raises(RecordError, match="missing key 'answer_id'"):
        pair_from_record({"pair_id": "f", "clean_ids": [1, 2], "corrupt_ids": [1, 3]})


def test_load_pairs_shards_partition(tmp_path):
    recs = [{"pair_id": f"p{i}", "subtask": i % 2, "clean_ids": [1, 2, 3, 4], "corrupt_ids": [1, 5 + i, 3, 4],
             "first_diff": 1, "answer_id": 7} for i in range(9)]
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, recs)
    everything = [p.pair_id for p in load_pairs(path, subtask=0)]
    assert everything == ["p0", "p2", "p4", "p6", "p8"]
    parts = [[p.pair_id for p in load_pairs(path, subtask=0, shard=(i, 3))] for i in range(3)]
    assert sum(parts, []) == everything and all(parts)
    assert [p.pair_id for p in load_pairs(path, subtask=1, limit=2)] == ["p1", "p3"]


def _result(rng, n=6, L=2, H=3, method="exact"):
    return PatchResult(method, "kl", "denoise", [f"p{i}" for i in range(n)], [0] * n, rng.normal(-1, 0.3, (n, L, H)),
                       rng.normal(-2, 0.1, n), np.zeros(n))


def test_aggregate_ratio_of_means_and_seeded_ci():
    rng = np.random.default_rng(0)
    r = _result(rng)
    s, lo, hi = aggregate(r.patched, r.base, r.source, n_boot=300, seed=3)
    want = (r.patched.mean(0) - r.base.mean()) / (r.source.mean() - r.base.mean())
    np.testing.assert_allclose(s, want)
    assert np.all(lo <= s + 1e-12) and np.all(s <= hi + 1e-12) and np.all(hi > lo)
    s2, lo2, hi2 = aggregate(r.patched, r.base, r.source, n_boot=300, seed=3)
    np.testing.assert_array_equal(lo, lo2)
    _, lo3, _ = aggregate(r.patched, r.base, r.source, n_boot=300, seed=4)
    assert not np.array_equal(lo, lo3)


def test_raw_shards_merge_equals_whole(tmp_path):
    rng = np.random.default_rng(1)
    r = _result(rng)
    a = PatchResult(r.method, r.metric, r.direction, r.pair_ids[:2], r.subtasks[:2], r.patched[:2], r.base[:2],
                    r.source[:2])
    b = PatchResult(r.method, r.metric, r.direction, r.pair_ids[2:], r.subtasks[2:], r.patched[2:], r.base[2:],
                    r.source[2:])
    save_raw(tmp_path / "a.safetensors", a)
    save_raw(tmp_path / "b.safetensors", b)
    m = load_raw([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert m.pair_ids == r.pair_ids
    pd.testing.assert_frame_equal(score_table(m, 0, n_boot=50, seed=1), score_table(r, 0, n_boot=50, seed=1))
    save_raw(tmp_path / "c.safetensors", _result(rng, method="atp"))
    with pytest.raises(ValueError, match="disagree"):
        load_raw([tmp_path / "a.safetensors", tmp_path / "c.safetensors"])


def test_spearman_table():
    rng = np.random.default_rng(2)
    ex = score_table(_result(rng), 4, n_boot=0)
    at = ex.copy()
    at["score"] = ex["score"] * 2 + 1  # monotone: rho = 1
    df = spearman_table({4: ex}, {4: at})
    assert df.loc[0, "spearman"] == pytest.approx(1.0) and df.loc[0, "n"] == 6


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_patch_heads_script_standalone(tmp_path):
    import torch

    g = torch.Generator().manual_seed(0)
    recs = []
    for i in range(3):
        c = torch.randint(3, 500, (10,), generator=g).tolist()
        k = list(c)
        k[6] = 3 + (c[6] + 1) % 497
        recs.append({"pair_id": f"x{i}", "subtask": 2, "clean_ids": c, "corrupt_ids": k, "first_diff": 6,
                     "answer_id": c[-1], "corrupt_answer_id": k[6]})
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, recs)
    mod = _script("patch_heads")
    settings = json.dumps({"patching": {"n_boot": 20}, "seed": 1})
    model = "random:tiny-llama?num_hidden_layers=2&initializer_range=0.2"
    out = tmp_path / "t.parquet"
    assert mod.main(["--model", model, "--dtype", "float32", "--device", "cpu", "--pairs", str(pairs),
                     "--method", "exact", "--subtask", "2", "--settings", settings, "--out", str(out),
                     "--figure", str(tmp_path / "fig"), "--raw", str(tmp_path / "r.safetensors"),
                     "--atp-raw", str(tmp_path / "a.safetensors")]) == 0
    atp = load_raw([tmp_path / "a.safetensors"])
    assert atp.method == "atp" and atp.pair_ids == ["x0", "x1", "x2"]
    df = read_table(out)
    assert list(df.columns) == ["subtask", "layer", "head", "score", "ci_low", "ci_high", "n"]
    assert len(df) == 8 and (df["n"] == 3).all() and (df["subtask"] == 2).all()
    assert (tmp_path / "fig.png").exists() and (tmp_path / "fig.pdf").exists()
    # merge of the raw file reproduces the table
    out2 = tmp_path / "m.parquet"
    assert mod.main(["--merge", str(tmp_path / "r.safetensors"), "--subtask", "2", "--settings", settings,
                     "--out", str(out2)]) == 0
    pd.testing.assert_frame_equal(read_table(out2), df)
    # bad input: a clear error and exit code 2
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [dict(recs[0], corrupt_ids=recs[0]["clean_ids"])])
    assert mod.main(["--model", model, "--pairs", str(bad), "--method", "exact", "--out", str(out)]) == 2


def test_induction_script_run_and_merge(tmp_path):
    mod = _script("induction_heads")
    settings = json.dumps({"patching": {"n_boot": 20, "induction": {"n": 2, "shots": 1, "require_correct": False}},
                           "seed": 3})
    model = "random:tiny-llama?num_hidden_layers=2&initializer_range=0.2"
    assert mod.main(["--model", model, "--dtype", "float32", "--device", "cpu", "--settings", settings,
                     "--raw-dir", str(tmp_path)]) == 0
    raws = [str(tmp_path / f"{k}.safetensors") for k in ("class", "subject", "property")]
    assert mod.main(["--merge", *raws, "--settings", settings, "--out", str(tmp_path / "s.parquet"),
                     "--figure", str(tmp_path / "s")]) == 0
    df = read_table(tmp_path / "s.parquet")
    assert len(df) == 8 and (df["subtask"] == -1).all()
    want = df[["score_class", "score_subject", "score_property"]].mean(axis=1)
    np.testing.assert_allclose(df["score"], want)
    assert (tmp_path / "s.png").exists()
