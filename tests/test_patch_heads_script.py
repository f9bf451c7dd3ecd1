"""scripts/patch_heads.py standalone uses every pair unless --n-pairs is given; the workflow passes patching.n_pairs
(#14 item 10)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from cotmech.io import read_table, write_jsonl

REPO = Path(__file__).resolve().parents[1]
MODEL = "random:tiny-llama?num_hidden_layers=2&initializer_range=0.2"


def _main():
    spec = importlib.util.spec_from_file_location("patch_heads", REPO / "scripts" / "patch_heads.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """7 pairs of subtask 2 (more than patching.n_pairs' default of 4) and 2 of subtask 3."""
    g = torch.Generator().manual_seed(0)
    recs = []
    for i in range(9):
        c = torch.randint(3, 500, (10,), generator=g).tolist()
        k = list(c)
        k[6] = 3 + (c[6] + 1) % 497
        recs.append({"pair_id": f"x{i}", "subtask": 2 if i < 7 else 3, "clean_ids": c, "corrupt_ids": k,
                     "first_diff": 6, "answer_id": c[-1], "corrupt_answer_id": k[6]})
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(path, recs)
    return path


@pytest.mark.parametrize("extra, used", [([], 7), (["--n-pairs", "3"], 3), (["--n-pairs", "all"], 7),
                                         (["--n-pairs", "50"], 7)])
def test_standalone_uses_every_pair_unless_asked(pairs_file, tmp_path, capsys, extra, used):
    out = tmp_path / "t.csv"
    settings = json.dumps({"patching": {"n_boot": 10}, "seed": 1})
    assert _main()(["--model", MODEL, "--dtype", "float32", "--device", "cpu", "--pairs", str(pairs_file),
                    "--method", "exact", "--subtask", "2", "--settings", settings, "--out", str(out), *extra]) == 0
    assert (read_table(out)["n"] == used).all()
    log = capsys.readouterr().out
    assert f"pairs: {used} of the 7 pairs of subtask 2 in {pairs_file}" in log
    assert f"exact: {used} pairs x 8 heads" in log


@pytest.mark.parametrize("bad", ["0", "-2", "four"])
def test_bad_n_pairs(pairs_file, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:
        _main()(["--model", MODEL, "--pairs", str(pairs_file), "--method", "exact", "--n-pairs", bad,
                 "--out", str(tmp_path / "t.csv")])
    assert e.value.code == 2 and "--n-pairs: expected a positive integer or 'all'" in capsys.readouterr().err


def test_workflow_passes_the_configs_n_pairs():
    """Every patch_heads job of the smoke config passes patching.n_pairs explicitly."""
    sys.path.insert(0, str(REPO / "tests" / "slurm"))
    import smokerun as sr

    import yaml

    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    want = (cfg.get("patching") or {}).get("n_pairs", 4)
    jobs = [j for j in sr.dry_run_jobs("config/smoke.yaml") if j["rule"] == "patch_heads"]
    assert jobs
    for j in jobs:
        assert f" --n-pairs {want if want else 'all'} " in j["shellcmd"], j["shellcmd"]
        assert j["settings"]["patching"]["n_pairs"] == want
