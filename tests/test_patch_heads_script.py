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


def test_run_equals_the_sweeps_and_score_table(pairs_file):
    """cotmech.patching.run.run (the script's entry point) against its steps called directly: the method's sweep
    (exact here; AtP on the same pairs on request), and the bootstrap head table seeded by (seed, subtask, method);
    an empty shard gives empty results of the model's shape."""
    import numpy as np
    import pandas as pd

    from cotmech import config
    from cotmech.models import load_model
    from cotmech.patching import atp_sweep, exact_sweep, load_pairs, score_table
    from cotmech.patching.run import run, sub_seed

    model = load_model(MODEL, dtype="float32", device="cpu")
    pairs = load_pairs(pairs_file, subtask=2, limit=5)
    cfg = config.section({"patching": {"n_boot": 30, "method": "exact"}}, "patching")
    res, atp, df = run(model, pairs, cfg, 9, subtask=2, atp=True, log=lambda m: None)
    kw = dict(metric=cfg["metric"], direction=cfg["direction"], progress=False)
    ref = exact_sweep(model, pairs, head_batch=cfg["head_batch"], **kw)
    ref_atp = atp_sweep(model, pairs, pair_batch=cfg["pair_batch"], **kw)
    assert res.method == "exact" and atp.method == "atp" and res.pair_ids == ref.pair_ids
    for a, b in ((res, ref), (atp, ref_atp)):
        for f in ("patched", "base", "source"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    pd.testing.assert_frame_equal(df, score_table(ref, 2, n_boot=30, seed=sub_seed(9, "boot", 2, "exact")))
    assert (df["n"] == 5).all() and len(df) == model.n_layers * model.n_heads
    # method override, no subtask -> table for subtask -1; no table when not asked
    res2, atp2, df2 = run(model, pairs[:2], cfg, 9, method="atp", table=False, log=lambda m: None)
    assert res2.method == "atp" and atp2 is None and df2 is None
    np.testing.assert_array_equal(res2.patched, ref_atp.patched[:2])
    _, _, df3 = run(model, pairs[:2], cfg, 9, method="atp", log=lambda m: None)
    pd.testing.assert_frame_equal(df3, score_table(res2, -1, n_boot=30, seed=sub_seed(9, "boot", -1, "atp")))
    empty, eatp, _ = run(model, [], cfg, 9, subtask=2, atp=True, table=False, log=lambda m: None)
    assert empty.patched.shape == (0, model.n_layers, model.n_heads) and eatp.patched.shape[0] == 0
    assert empty.method == "exact" and eatp.method == "atp"
