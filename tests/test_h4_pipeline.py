"""End to end on a tiny random model: activations -> tuned lens -> prior shift -> rift -> head roles (scripts)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cotmech.io import read_json, read_table, save_tensors, write_jsonl, write_table
from cotmech.models import task_tokenizer

REPO = Path(__file__).resolve().parents[1]
SPEC = "random:tiny-llama"
SETTINGS = {"model": {"spec": SPEC, "dtype": "float32", "device": "cpu"}, "seed": 11,
            "prior_shift": {"max_per_subtask": 3, "top_k": 5, "n_boot": 50, "ci": 0.9, "prior_batch_size": 4},
            "tuned_lens": {"rank": 2, "steps": 5, "batch": 4, "lr": 0.01, "val_frac": 0.34, "time_limit_s": 60},
            "roles": {"max_per_subtask": 2, "top_frac": 0.2, "n_boot": 20, "ci": 0.9}}
EXAMPLES = [("Carnivore is spicy. Vertebrates are carnivores. Rex is vertebrate.",
             "Rex is vertebrate. Vertebrates are carnivores. Rex is carnivore. Carnivore is spicy. Rex is spicy."),
            ("Cow is sour. Sheep are cows. Max is sheep.",
             "Max is sheep. Sheep are cows. Max is cow. Cow is sour. Max is sour."),
            ("Dog is blue. Mammals are dogs. Fae is mammal.",
             "Fae is mammal. Mammals are dogs. Fae is dog. Dog is blue. Fae is blue.")]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pairs():
    tok = task_tokenizer(512)
    out = []
    for e, (question, cot) in enumerate(EXAMPLES):
        prompt = f"### Input:\n{question} True or false: x. Let us think step by step.\n### Response:\n"
        words = cot.split()
        for k in (0, 2, 3, 5):
            prefix = " ".join(words[:k])
            clean = prompt + prefix
            ids = tok.encode(clean, add_special_tokens=False)
            target = words[k].rstrip(".")
            aid = tok.encode((" " if k else "") + target, add_special_tokens=False)[0]
            pos = max((i for i, t in enumerate(ids) if t == aid), default=None)
            out.append({"pair_id": f"ex{e}-k{k}", "example_id": f"ex{e}", "dataset": "toy", "ontology": "false",
                        "subtask": k, "kind": "copy", "clean": clean, "clean_ids": ids, "answer": target,
                        "answer_id": aid, "answer_pos": pos})
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, request):
    from cotmech.activations import extract_pairs
    from cotmech.models import load_model

    d = tmp_path_factory.mktemp("h4")
    pairs = _pairs()
    model = load_model(SPEC, dtype="float32", device="cpu")
    acts, index = extract_pairs(model, pairs, batch_size=4)
    write_jsonl(d / "pairs.jsonl", pairs)
    save_tensors(d / "acts.safetensors", acts)
    write_table(d / "acts.parquet", index)
    return d


def test_pipeline_end_to_end_and_seeded(inputs):
    d, s = inputs, json.dumps(SETTINGS)
    assert _script("train_tuned_lens").main(["--activations", str(d / "acts.safetensors"), "--index",
                                             str(d / "acts.parquet"), "--settings", s, "--out", str(d / "tl.safetensors"),
                                             "--report", str(d / "tl.json")]) == 0
    rep = read_json(d / "tl.json")
    assert rep["steps"] == 5 and rep["n_val_examples"] == 1 and len(rep["kl_tuned_val"]) == 5
    ps = _script("prior_shift")
    for run in ("a", "b"):
        args = ["dataset", "--pairs", str(d / "pairs.jsonl"), "--activations", str(d / "acts.safetensors"),
                "--index", str(d / "acts.parquet"), "--tuned-lens", str(d / "tl.safetensors"), "--dataset", "toy",
                "--settings", s, "--table", str(d / f"t{run}.parquet"), "--rows", str(d / f"r{run}.parquet"),
                "--figure", str(d / f"f{run}")]
        assert ps.main(args) == 0
    ta, tb = read_table(d / "ta.parquet"), read_table(d / "tb.parquet")
    pd.testing.assert_frame_equal(ta, tb)  # one seed -> identical tables
    assert set(ta["lens"]) == {"logit", "tuned"} and (d / "fa.png").exists() and (d / "fa.pdf").exists()
    rows = read_table(d / "ra.parquet")
    assert rows["pair_id"].nunique() == 12 and rows["layer"].max() == 4
    # real-world answers exist exactly for "Vertebrates are", "Sheep are", "Mammals are" (k = 5)
    real = rows[(rows.lens == "logit") & rows["p_real"].notna()]
    assert set(real["pair_id"]) == {"ex0-k5", "ex1-k5", "ex2-k5"}
    last = rows[rows.layer == 4]
    assert np.allclose(last["js_final"], 0.0, atol=1e-6)
    assert ps.main(["rift", "--rows", str(d / "ra.parquet"), "--settings", s, "--out", str(d / "rift.json"),
                    "--figure", str(d / "rift")]) == 0
    rift = read_json(d / "rift.json")
    assert set(rift["datasets"]) == {"all", "toy"} and set(rift["datasets"]["all"]) == {"logit", "tuned"}
    assert rift["datasets"]["all"]["logit"]["n_pairs"] == 12 and rift["n_layers"] == 4
    hr = _script("head_roles")
    assert hr.main(["--pairs", str(d / "pairs.jsonl"), "--activations", str(d / "acts.safetensors"), "--index",
                    str(d / "acts.parquet"), "--settings", s, "--outdir", str(d / "roles")]) == 0
    w, c = read_table(d / "roles/writers.parquet"), read_table(d / "roles/copy.parquet")
    for t in (w, c):
        assert {"subtask", "layer", "head", "score"} <= set(t.columns) and (t.subtask == -1).sum() == 16
    summ = read_json(d / "roles/summary.json")
    assert summ["k"] == 3 and 0.0 <= summ["writers"]["share_second_half"] <= 1.0 and summ["n_rows"] == 8


def test_bad_inputs_are_named(inputs, tmp_path, capsys):
    d = inputs
    bad = tmp_path / "idx.parquet"
    write_table(bad, read_table(d / "acts.parquet").drop(columns=["answer_pos"]))
    rc = _script("prior_shift").main(["dataset", "--pairs", str(d / "pairs.jsonl"), "--activations",
                                      str(d / "acts.safetensors"), "--index", str(bad), "--dataset", "toy",
                                      "--settings", json.dumps(SETTINGS), "--table", str(tmp_path / "t.parquet"),
                                      "--rows", str(tmp_path / "r.parquet"), "--figure", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert rc == 2 and "idx.parquet" in err and "answer_pos" in err
