"""Bad inputs stop with one `error: <file>: <record>: <problem>` line before any model work (issue 18, item 4), and
tensors are byte-stable across runs (item 7)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cotmech.io import RecordError, check_suffix, read_jsonl, write_jsonl
from cotmech.cli import check_token_ids
from cotmech.pairs import build_pairs
from cotmech.prontoqa.generator import generate
from cotmech.prontoqa.prompts import build_prompt

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"model": {"spec": "random:tiny-llama", "dtype": "float32", "device": "cpu"}, "seed": 1,
            "patching": {"n_pairs": 2, "n_boot": 0}, "activations": {"batch_size": 4},
            "flow": {"pruned": False}}  # the unpruned trace needs no knockout circuit (the schema's default is pruned)


def _module(name):
    spec = importlib.util.spec_from_file_location(f"bad_inputs_{name}", REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pairs(tiny_llama):
    recs = generate("fictional", 2, 2, seed=3)
    for r in recs:
        r["prompt"] = build_prompt(r, shots=1)
    out, _ = build_pairs(recs, tiny_llama.tokenizer, "fictional", seed=7)
    assert len(out) >= 4
    return out


# ---------------------------------------------------------------------------------------------- non-UTF-8 input
def test_read_jsonl_names_file_and_line_of_non_utf8(tmp_path, pairs):
    f = tmp_path / "pairs.jsonl"
    good = json.dumps(pairs[0]).encode()
    f.write_bytes(good + b"\n" + b'{"pair_id": "caf\xe9"}\n')  # latin-1, not UTF-8
    with pytest.raises(RecordError, match=rf"^{f}: line 2: not UTF-8 text: byte 16: invalid continuation byte$"):
        read_jsonl(f)
    f.write_bytes(good + b"\r\n\n" + good + b"\n")  # CRLF and blank lines as before
    assert read_jsonl(f) == [pairs[0], pairs[0]]


def test_script_reports_non_utf8_pairs_file(tmp_path, pairs, capsys):
    f = tmp_path / "pairs.jsonl"
    f.write_bytes(b"\n".join(json.dumps(p).encode() for p in pairs[:2]) + b"\n\xff\xfe\n")
    mod = _module("patch_heads")
    rc = mod.main(["--pairs", str(f), "--method", "exact", "--subtask", str(pairs[0]["subtask"]),
                   "--settings", json.dumps(SETTINGS), "--raw", str(tmp_path / "raw.safetensors")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {f}: line 3: not UTF-8 text: byte 0: invalid start byte"


# ---------------------------------------------------------------------------------------------- token ids
def test_check_token_ids_names_the_pair(pairs):
    vocab = 512
    check_token_ids(pairs, vocab, "p.jsonl")  # the tokenizer's own ids pass
    for field, value in [("clean_ids", 512), ("corrupt_ids", -1), ("answer_id", 99999), ("corrupt_answer_id", 600)]:
        bad = [dict(p) for p in pairs]
        p = bad[2]
        p[field] = (p[field][:3] + [value] + p[field][4:]) if isinstance(p[field], list) else value
        with pytest.raises(RecordError, match=rf"^p.jsonl: pair {p['pair_id']}: {field} holds {value}, "
                                              rf"not a token id .*\(0\.\.511\)"):
            check_token_ids(bad, vocab, "p.jsonl")
    check_token_ids([{**pairs[0], "corrupt_answer_id": None}], vocab, "p.jsonl")  # null is allowed


@pytest.mark.parametrize("script", ["patch_heads", "extract_activations", "knockout", "trace_flow"])
def test_scripts_reject_out_of_vocabulary_ids_before_the_forward(tmp_path, pairs, capsys, script):
    """Before: IndexError from the embedding (a device-side assert on a GPU). Now: one line naming the pair."""
    bad = [dict(p) for p in pairs]
    k = bad[1]["subtask"]
    for key in ("clean_ids", "corrupt_ids"):  # inside the shared prefix, so the pair is otherwise well formed
        bad[1][key] = bad[1][key][:1] + [70000] + bad[1][key][2:]
    f = tmp_path / "pairs.jsonl"
    write_jsonl(f, bad)
    s = json.dumps(SETTINGS)
    args = {
        "patch_heads": ["--pairs", str(f), "--method", "exact", "--settings", s, "--raw", str(tmp_path / "r.st")],
        "extract_activations": ["--pairs", str(f), "--settings", s, "--out", str(tmp_path / "a.safetensors"),
                                "--index", str(tmp_path / "a.parquet")],
        "knockout": ["--clean", str(f), "--reference", str(f), "--ranking", "direct=builtin", "--settings", s,
                     "--subtask", str(k), "--out-dir", str(tmp_path / "ko")],
        "trace_flow": ["--pairs", str(f), "--settings", s, "--outdir", str(tmp_path / "flow")],
    }[script]
    rc = _module(script).main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err and err[-1].startswith(f"error: {f}: pair {bad[1]['pair_id']}: clean_ids holds 70000"), err
    assert not [p for p in tmp_path.iterdir() if p.name != "pairs.jsonl"]  # nothing written


# ---------------------------------------------------------------------------------------------- output suffixes
def test_check_suffix():
    check_suffix("a/b.parquet", "--out")
    check_suffix(None, "--out")
    with pytest.raises(ValueError, match=r"^--out a/b.txt: unsupported suffix '.txt'; use .parquet, .csv, .tsv$"):
        check_suffix("a/b.txt", "--out")
    with pytest.raises(ValueError, match=r"unsupported suffix '\(none\)'"):
        check_suffix("a/b", "--rows")


SUFFIX_CASES = {
    "patch_heads": (["--pairs", "P", "--method", "exact", "--out", "T.txt"], "--out"),
    "path_patch": (["--pairs", "P", "--tables", "x.parquet", "--out", "T.txt"], "--out"),
    "extract_activations": (["--pairs", "P", "--out", "a.safetensors", "--index", "T.txt"], "--index"),
    "generate_cot": (["--tasks", "P", "--dataset", "d", "--out", "g.jsonl", "--accuracy", "T.txt"], "--accuracy"),
    "horizon": (["--generations", "P", "--table", "T.txt", "--summary", "s.csv", "--examples", "e.jsonl"], "--table"),
    "make_pairs": (["--generations", "P", "--dataset", "d", "--out", "p.jsonl", "--rejected", "T.txt"],
                   "--rejected"),
    "prior_shift": (["dataset", "--pairs", "P", "--activations", "a", "--index", "i.parquet", "--dataset", "d",
                     "--table", "t.parquet", "--rows", "T.txt", "--figure", "f"], "--rows"),
}


@pytest.mark.parametrize("script", sorted(SUFFIX_CASES))
def test_bad_output_suffix_is_rejected_before_any_model_work(tmp_path, pairs, capsys, monkeypatch, script):
    """Before, a table suffix was rejected by write_table after the sweep ran; now before the model loads."""
    f = tmp_path / "in.jsonl"
    write_jsonl(f, pairs)
    argv, flag = SUFFIX_CASES[script]
    argv = [str(f) if a == "P" else str(tmp_path / a) if a[:1] in "Tae" and "." in a else a for a in argv]
    mod = _module(script)

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the output suffix was checked")

    monkeypatch.setattr(mod, "load_from_args", no_model, raising=False)
    import cotmech.models

    monkeypatch.setattr(cotmech.models, "tokenizer_from_settings", no_model)
    rc = mod.main(argv + ["--settings", json.dumps(SETTINGS)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {flag} {tmp_path / 'T.txt'}: unsupported suffix '.txt'; " \
                              "use .parquet, .csv, .tsv", err


# ---------------------------------------------------------------------------------------------- byte-stable tensors
_SAVE = """
import sys, torch
from cotmech.io import save_tensors
meta = {k: k.upper() * 3 for k in ("spec", "dtype", "pairs", "zeta", "alpha", "mid", "n_layers", "format")}
save_tensors(sys.argv[1], {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.float64)}, meta)
"""


def test_save_tensors_is_byte_stable_across_processes(tmp_path):
    """safetensors writes its metadata map in a per-process random order; save_tensors sorts it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    outs = []
    for i in range(4):
        p = tmp_path / f"t{i}.safetensors"
        subprocess.run([sys.executable, "-c", _SAVE, str(p)], check=True, env={**os.environ})
        outs.append(p.read_bytes())
    assert len({hashlib.sha256(b).hexdigest() for b in outs}) == 1
    n = int.from_bytes(outs[0][:8], "little")
    header = json.loads(outs[0][8:8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"]) and n % 8 == 0
    with safe_open(str(tmp_path / "t0.safetensors"), "pt") as fh:  # still a valid file, metadata intact
        assert fh.metadata() == {k: k.upper() * 3 for k in ("spec", "dtype", "pairs", "zeta", "alpha", "mid",
                                                            "n_layers", "format")}
    t = load_file(str(tmp_path / "t0.safetensors"))
    assert t["b"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and t["a"].tolist() == [1.0] * 4


def test_activations_are_byte_identical_across_runs_and_results_folders(tmp_path, pairs):
    """Two runs of extract_activations, in two results folders given as absolute paths, write the same bytes."""
    outs = []
    for run in ("run-a", "run b"):
        root = tmp_path / run
        write_jsonl(root / "pairs" / "fictional.jsonl", pairs[:4])
        out = root / "activations" / "fictional.safetensors"
        p = subprocess.run([sys.executable, str(REPO / "scripts" / "extract_activations.py"),
                            "--pairs", str(root / "pairs" / "fictional.jsonl"), "--settings", json.dumps(SETTINGS),
                            "--out", str(out), "--index", str(root / "activations" / "fictional.parquet")],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        assert p.returncode == 0, p.stderr[-3000:]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    n = int.from_bytes(outs[0][:8], "little")
    meta = json.loads(outs[0][8:8 + n])["__metadata__"]
    assert meta["pairs"] == "../pairs/fictional.jsonl" and str(tmp_path) not in outs[0][8:8 + n].decode()
