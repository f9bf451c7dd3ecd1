"""The scripts of the model-running rules without a test of their own (probe, head_roles, induction_heads,
path_patch) end to end on a tiny random model: each parses, reads, calls its module's ``run`` and writes the
outputs the rule declares. What ``run`` computes is tested in the modules' own test files."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cotmech.io import read_json, read_jsonl, read_table, save_tensors, write_jsonl, write_table

REPO = Path(__file__).resolve().parents[1]
MODEL = {"spec": "random:tiny-llama", "dtype": "float32", "device": "cpu"}


def _main(name):
    spec = importlib.util.spec_from_file_location(f"entry_{name}", REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _settings(**sections) -> str:
    return json.dumps({"model": MODEL, "seed": 3, **sections})


@pytest.fixture(scope="module")
def pairs_file(tiny_llama, tmp_path_factory):
    from cotmech.pairs import build_pairs
    from cotmech.prontoqa.generator import generate
    from cotmech.prontoqa.prompts import build_prompt

    recs = [dict(r, prompt=build_prompt(r, shots=1)) for r in generate("fictional", 2, 3, seed=3)]
    pairs, _ = build_pairs(recs, tiny_llama.tokenizer, "fictional", seed=7)
    path = tmp_path_factory.mktemp("pairs") / "fictional.jsonl"
    write_jsonl(path, pairs)
    return path


def test_probe_script(tmp_path):
    s = _settings(probing={"n_questions": 12, "shots": [0], "max_epochs": 2, "patience": 1})
    assert _main("probe")(["--settings", s, "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    acc, sel = read_table(tmp_path / "accuracy.parquet"), read_table(tmp_path / "selected.csv")
    assert set(acc["shots"]) == {0} and set(sel["probe"]) == {"linear", "mlp"}
    assert len(read_table(tmp_path / "samples.parquet")) and (tmp_path / "accuracy.png").exists()


def test_head_roles_script(tiny_llama, pairs_file, tmp_path):
    from cotmech.activations import extract_pairs

    acts, index = extract_pairs(tiny_llama, read_jsonl(pairs_file), batch_size=4)
    save_tensors(tmp_path / "a.safetensors", acts)
    write_table(tmp_path / "a.parquet", index)
    out = tmp_path / "roles"
    assert _main("head_roles")(["--pairs", str(pairs_file), "--activations", str(tmp_path / "a.safetensors"),
                                "--index", str(tmp_path / "a.parquet"), "--threads", "1", "--outdir", str(out),
                                "--settings", _settings(roles={"max_per_subtask": 2, "n_boot": 5})]) == 0
    for kind in ("writers", "copy"):
        t = read_table(out / f"{kind}.parquet")
        assert -1 in set(t["subtask"]) and (out / f"{kind}.png").exists()
    assert read_json(out / "summary.json")["n_rows"] > 0


def test_induction_heads_script_run_and_merge(tmp_path):
    s = _settings(patching={"n_boot": 5, "head_batch": 8,
                            "induction": {"n": 1, "shots": 1, "require_correct": False, "max_candidates": 10}})
    main = _main("induction_heads")
    assert main(["--settings", s, "--threads", "1", "--raw-dir", str(tmp_path / "raw")]) == 0
    raws = [str(tmp_path / "raw" / f"{k}.safetensors") for k in ("class", "subject", "property")]
    assert all(len(read_jsonl(tmp_path / "raw" / f"{k}.jsonl")) == 1 for k in ("class", "subject", "property"))
    assert main(["--settings", s, "--merge", *raws, "--out", str(tmp_path / "ind.parquet")]) == 0
    df = read_table(tmp_path / "ind.parquet")
    assert len(df) == 16 and {"score_class", "score_subject", "score_property", "ci_low"} <= set(df.columns)


def test_path_patch_script(pairs_file, tmp_path):
    k = int(read_jsonl(pairs_file)[0]["subtask"])
    rng = np.random.default_rng(0)
    write_table(tmp_path / "t.parquet", pd.DataFrame({"subtask": k, "layer": np.repeat(np.arange(4), 4),
                                                      "head": np.tile(np.arange(4), 4), "score": rng.random(16)}))
    s = _settings(patching={"n_boot": 5, "path": {"n_pairs": 2, "n_senders": 2, "n_receivers": 1}})
    assert _main("path_patch")(["--settings", s, "--threads", "1", "--pairs", str(pairs_file), "--tables",
                                str(tmp_path / "t.parquet"), "--out", str(tmp_path / "path.parquet")]) == 0
    df = read_table(tmp_path / "path.parquet")
    assert set(df["subtask"]) == {k} and len(df) == 2 * 5 and df["sender_activation_score"].notna().all()
