"""Paper-vs-run table: rows are filled from result files (fake ones written here), absent files give "not run"."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from cotmech import flow, report
from cotmech.io import write_json, write_table

from test_flow import _fake_traces


@pytest.fixture()
def mres(tmp_path):
    m = tmp_path / "results" / "m"
    write_table(m / "accuracy.csv", pd.DataFrame(
        {"dataset": ["fictional", "falseont"], "ontology": ["fictional", "false"], "hops": ["2", "2"], "n": [40, 20],
         "correct": [10, 15], "accuracy": [0.25, 0.75], "ci_low": [0.1, 0.5], "ci_high": [0.4, 0.9]}))
    write_json(m / "prior_shift" / "rift.json", {"n_layers": 28, "datasets": {"all": {"logit": {
        "rift_layer": 13, "rel_depth": 13 / 28, "rel_ci_low": 0.4, "rel_ci_high": 0.55, "n_examples": 9, "n_pairs": 80,
        "context_abidance_rift": {"below": {"mean": 0.12, "ci_low": 0.1, "ci_high": 0.14},
                                  "above": {"mean": 0.66, "ci_low": 0.6, "ci_high": 0.7}}}}}})
    flow.write_outputs(_fake_traces(), m / "flow" / "fictional")
    write_json(m / "roles" / "fictional" / "summary.json",
               {"k": 34, "n_examples": 9, "writers": {"share_second_half": 0.8, "ci_low": 0.7, "ci_high": 0.9}})
    write_table(m / "probing" / "accuracy.parquet", pd.DataFrame(
        {"layer": [0, 7, 14, 28, 7], "probe": ["mlp"] * 4 + ["linear"], "task": ["real"] * 5, "shots": [0] * 5,
         "acc": [0.5, 0.68, 0.6, 0.55, 0.9], "ci_low": [0.4, 0.6, 0.5, 0.45, 0.8], "ci_high": [0.6, 0.75, 0.7, 0.65, 1],
         "n": [100] * 5}))
    write_table(m / "circuits" / "fictional" / "operating_points.csv", pd.DataFrame(
        {"subtask": [0, 1], "ranking": ["induction", "induction"], "n_removed": [200, 100], "n_kept": [136, 236],
         "acc": [0.9, 0.8]}))
    write_table(m / "horizon" / "fictional" / "horizon.csv", pd.DataFrame(
        {"layer": [-1, 0, 4], "s": [0, 0, 0], "n": [2, 2, 2], "exact": [1.0, 0.5, 1.0], "exact_ci_low": [.3, .1, .3],
         "exact_ci_high": [1, .9, 1], "agree": [1, .6, 1], "first_div": [30, 10, 30]}))
    return m


def test_rows_are_read_from_result_files(mres):
    t = report.paper_vs_run(mres, ["fictional", "falseont"], "m").set_index("id")
    not_ok = set(t.index[t["status"] != "ok"])
    # the fake traces cover subtask 0 only (27 source rows), depths 0-2, and no non-writer head in layers >= 2
    assert not_ok - {i for i in not_ok if i.startswith("source_") and not i.endswith("_k0")} == {
        "rift_layer_rel_tuned", "trace_context_above_wo_writers", "depth3_rel_layer", "depth3_second_half"}
    assert t.loc["accuracy_fictional", "ours"] == 0.25 and t.loc["accuracy_false", "ours"] == 0.75
    assert t.loc["accuracy_fictional", "paper"] == 0.359 and t.loc["accuracy_fictional", "tag"] == "S"
    assert math.isclose(t.loc["rift_layer_rel", "ours"], 13 / 28)
    assert t.loc["rift_layer_rel_tuned", "status"] == report.NOT_RUN  # no tuned lens in the file
    assert t.loc["lens_context_above", "ours"] == 0.66
    assert t.loc["trace_writers_second_half", "ours"] == 1.0
    assert math.isclose(t.loc["trace_context_below", "ours"], 1 / 3)
    assert math.isclose(t.loc["source_question_k0", "ours"], 2 / 3, rel_tol=1e-5)
    assert t.loc["source_question_k5", "status"] == "no value"  # subtask 5 not traced
    assert t.loc["roles_writers_second_half", "ours"] == 0.8
    assert t.loc["probe_peak_acc", "ours"] == 0.68 and t.loc["probe_peak_rel_layer", "ours"] == 7 / 28
    assert math.isclose(t.loc["knockout_kept_share", "ours"], (136 / 336 + 236 / 336) / 2, rel_tol=1e-5)
    assert t.loc["horizon_layer0_s0", "ours"] == 0.5
    assert set(t["model"]) == {"m"}


def test_absent_file_gives_not_run(mres):
    (mres / "accuracy.csv").unlink()
    (mres / "flow" / "fictional" / "summary.json").unlink()
    t = report.paper_vs_run(mres, ["fictional"], "m").set_index("id")
    assert t.loc["accuracy_fictional", "status"] == report.NOT_RUN and pd.isna(t.loc["accuracy_fictional", "ours"])
    assert t.loc["trace_context_above", "status"] == report.NOT_RUN
    assert t.loc["depth0_rel_layer", "status"] == "ok"  # depth_summary.csv is still there
    html = report.summary_html(t.reset_index(), "m", "random:tiny-llama", ["figures/x.png"])
    assert "not run" in html and "random:tiny-llama" in html and "figures/x.png" in html


def test_paper_numbers_are_well_formed(tmp_path):
    entries = report.load_paper_numbers()
    assert len({e["id"] for e in entries}) == len(entries)
    assert all(e["tag"] in "PSCR" for e in entries)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {id: x, claim: c, paper: 1, tag: Q, section: s, reader: accuracy}\n")
    with pytest.raises(ValueError, match="evidence tag"):
        report.load_paper_numbers(bad)


def test_false_ontology_accuracy_survives_the_csv_round_trip(tmp_path):
    """The aggregated accuracy.csv must keep the ontology "false" as text (pandas reads it as a boolean), and the
    paper table must find the false-ontology row."""
    import subprocess
    import sys
    from pathlib import Path

    parts = []
    for ds, ont, k in (("fictional", "fictional", 3), ("falseont", "false", 5)):
        p = tmp_path / f"{ds}.accuracy.csv"
        write_table(p, pd.DataFrame([dict(dataset=ds, ontology=ont, hops=2, n=8, correct=k, accuracy=k / 8,
                                          ci_low=0.1, ci_high=0.9)]))
        parts.append(str(p))
    mres = tmp_path / "m"
    script = Path(__file__).parents[1] / "scripts" / "generate_cot.py"
    subprocess.run([sys.executable, str(script), "--aggregate", *parts, "--accuracy", str(mres / "accuracy.csv")],
                   check=True, capture_output=True)
    assert "false," in (mres / "accuracy.csv").read_text()
    row = report.read_accuracy(mres, ["fictional", "falseont"], "false")
    assert row is not None and row["n"] == 8 and row["ours"] == 5 / 8


def test_probe_row_reads_the_validation_selected_layer(mres):
    """With selected.csv (rule probe) the row is the test accuracy at the validation-chosen layer of the shot
    count with the best validation accuracy, not the maximum of the test curve (0.68 in the fixture)."""
    write_table(mres / "probing" / "selected.csv", pd.DataFrame(
        {"shots": [0, 2, 0], "probe": ["mlp", "mlp", "linear"], "layer": [5, 9, 3], "n_layers": [28] * 3,
         "val_acc": [0.6, 0.7, 0.9], "acc": [0.65, 0.62, 0.8], "ci_low": [0.5, 0.57, 0.7],
         "ci_high": [0.6, 0.67, 0.9], "n_test": [90] * 3, "control_acc": [0.3] * 3, "test_max": [0.66, 0.68, 0.8],
         "test_max_layer": [7, 7, 3], "type_acc": [0.69] * 3, "type_ci_low": [0.6] * 3, "type_ci_high": [0.78] * 3}))
    t = report.paper_vs_run(mres, ["fictional"], "m").set_index("id")
    assert t.loc["probe_peak_acc", "ours"] == 0.62 and t.loc["probe_peak_acc", "ci_low"] == 0.57
    assert t.loc["probe_peak_rel_layer", "ours"] == 9 / 28
    assert "word type only 0.69" in t.loc["probe_peak_acc", "note"] and "2-shot" in t.loc["probe_peak_acc", "note"]
