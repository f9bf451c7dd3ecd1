"""Paper-vs-run table: rows are read from result files laid out where the workflow's rules write them (paths taken
from the smoke DAG), absent files give "not run", verdicts follow the CIs, and every paper value equals the value in
study.md's tables (parsed here)."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from cotmech import flow, report
from cotmech.io import write_json, write_table

from test_flow import _fake_traces

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
import smokerun as sr  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Where the workflow writes each result file: the smoke DAG's outputs (not hand-typed paths)
@pytest.fixture(scope="module")
def smoke_layout():
    """(mres, datasets, outputs) of the smoke study's DAG: the paper_table job's --mres and --datasets and every
    output file of the DAG."""
    jobs = sr.dry_run_jobs(sr.SMOKE)
    table = next(j for j in jobs if j["rule"] == "paper_table")
    mres = re.search(r"--mres (\S+)", table["shellcmd"]).group(1)
    datasets = re.search(r"--datasets (.+?) --model-name", table["shellcmd"]).group(1).split()
    outputs = {o for j in jobs for o in j["outputs"]}
    return mres, datasets, outputs


def _dag_file(layout, under: str, name: str) -> str:
    """The DAG output ``<mres>/<under>.../<name>`` with the shortest path (the merged table, not per-part ones),
    relative to mres."""
    mres, _, outputs = layout
    hits = sorted((o for o in outputs if o.startswith(f"{mres}/{under}") and o.endswith("/" + name)), key=len)
    assert hits, f"no DAG output {under}…/{name}"
    return hits[0][len(mres) + 1:]


def test_every_reader_reads_a_file_the_workflow_writes(smoke_layout):
    mres, datasets, outputs = smoke_layout
    for key, rel in report.RESULT_FILES.items():
        paths = {f"{mres}/{rel.format(dataset=d)}" for d in datasets}
        assert paths & outputs, f"{key}: {rel} is not written by any rule (for datasets {datasets})"


@pytest.fixture()
def mres(tmp_path, smoke_layout):
    """Result files with planted values, each written where the smoke DAG puts it."""
    m = tmp_path / "results" / "m"

    def at(under, name):
        return m / _dag_file(smoke_layout, under, name)

    write_table(at("", "accuracy.csv"), pd.DataFrame(
        {"dataset": ["fictional", "falseont"], "ontology": ["fictional", "false"], "hops": ["2", "2"], "n": [40, 20],
         "correct": [10, 15], "accuracy": [0.25, 0.75], "ci_low": [0.1, 0.5], "ci_high": [0.4, 0.9]}))
    write_json(at("prior_shift", "rift.json"), {"n_layers": 28, "datasets": {"all": {"logit": {
        "rift_layer": 13, "rel_depth": 13 / 28, "rel_ci_low": 0.4, "rel_ci_high": 0.55, "n_examples": 9, "n_pairs": 80,
        "context_abidance_rift": {"below": {"mean": 0.12, "ci_low": 0.1, "ci_high": 0.14},
                                  "above": {"mean": 0.66, "ci_low": 0.6, "ci_high": 0.7}}}}}})
    flow_dir = at("flow", "summary.json").parent
    flow.write_outputs(_fake_traces(), flow_dir, meta={"pruned": True}, n_boot=200, seed=1)
    write_json(at("roles", "summary.json"),
               {"k": 34, "n_examples": 9, "writers": {"share_second_half": 0.8, "ci_low": 0.7, "ci_high": 0.9}})
    write_table(at("probing", "accuracy.parquet"), pd.DataFrame(
        {"layer": [0, 7, 14, 28, 7], "probe": ["mlp"] * 4 + ["linear"], "task": ["real"] * 5, "shots": [0] * 5,
         "acc": [0.5, 0.68, 0.6, 0.55, 0.9], "ci_low": [0.4, 0.6, 0.5, 0.45, 0.8], "ci_high": [0.6, 0.75, 0.7, 0.65, 1],
         "n": [100] * 5}))
    write_table(at("circuits", "operating_points.csv"), pd.DataFrame(
        {"subtask": [0, 0, 1, 1], "ranking": ["induction", "induction", "induction", "direct"],
         "scope": ["all_pairs", "rank_split", "all_pairs", "rank_split"], "n_removed": [200, 10, 100, 300],
         "n_kept": [136, 326, 236, 36], "acc": [0.9, 0.2, 0.8, 0.1]}))
    write_table(at("horizon", "horizon.csv"), pd.DataFrame(
        {"layer": [-1, 0, 4], "s": [0, 0, 0], "n": [2, 2, 2], "exact": [1.0, 0.5, 1.0], "exact_ci_low": [.3, .1, .3],
         "exact_ci_high": [1, .9, 1], "agree": [1, .6, 1], "first_div": [30, 10, 30]}))
    return m


def test_rows_are_read_from_result_files(mres, smoke_layout):
    _, datasets, _ = smoke_layout
    t = report.paper_vs_run(mres, datasets, "m").set_index("id")
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
    # by hand from _fake_traces: below layer 2, 1 of 3 entries is in context; the crossing (share >= 0.5) is layer 1
    assert math.isclose(t.loc["trace_context_below", "ours"], 1 / 3)
    assert math.isclose(t.loc["trace_crossing_rel", "ours"], 1 / 4)
    assert math.isclose(t.loc["source_question_k0", "ours"], 2 / 3, rel_tol=1e-5)
    assert t.loc["source_question_k5", "status"] == "no value"  # subtask 5 not traced
    assert t.loc["roles_writers_second_half", "ours"] == 0.8
    assert t.loc["probe_peak_acc", "ours"] == 0.68 and t.loc["probe_peak_rel_layer", "ours"] == 7 / 28
    # no primary column: induction rows only, one scope per subtask (held out preferred): subtasks 0 and 1
    assert math.isclose(t.loc["knockout_kept_share", "ours"], (326 / 336 + 236 / 336) / 2, rel_tol=1e-5)
    assert math.isclose(t.loc["knockout_acc", "ours"], (0.2 + 0.8) / 2)
    assert t.loc["horizon_layer0_s0", "ours"] == 0.5
    assert set(t["model"]) == {"m"}
    # the quantity column: the trace rows are the paper's, the lens rows our extension, E4 top-k a different one
    assert t.loc["trace_context_above", "comparison"] == "same"
    assert t.loc["rift_layer_rel", "comparison"] == "extension"
    assert t.loc["roles_writers_second_half", "comparison"] == "different"


def test_an_unpruned_trace_is_a_different_quantity(mres, smoke_layout):
    _, datasets, _ = smoke_layout
    d = mres / _dag_file(smoke_layout, "flow", "summary.json")
    flow.write_outputs(_fake_traces(), d.parent, meta={"pruned": False}, n_boot=50)
    t = report.paper_vs_run(mres, datasets, "m").set_index("id")
    for i in ("trace_context_below", "trace_crossing_rel", "trace_writers_second_half", "depth0_rel_layer",
              "source_question_k0"):
        assert t.loc[i, "comparison"] == "different", i
    assert "unpruned" in t.loc["trace_context_below", "note"]
    v = report.claim_verdicts(t.reset_index()).set_index("claim_id")
    assert "trace_context_below" not in v.loc["C4", "agree"] + v.loc["C4", "differ"] + v.loc["C4", "inconclusive"]


def test_absent_file_gives_not_run(mres, smoke_layout):
    (mres / _dag_file(smoke_layout, "", "accuracy.csv")).unlink()
    (mres / _dag_file(smoke_layout, "flow", "summary.json")).unlink()
    t = report.paper_vs_run(mres, ["fictional"], "m").set_index("id")
    assert t.loc["accuracy_fictional", "status"] == report.NOT_RUN and pd.isna(t.loc["accuracy_fictional", "ours"])
    assert t.loc["trace_context_above", "status"] == report.NOT_RUN
    assert t.loc["depth0_rel_layer", "status"] == "ok"  # depth_summary.csv is still there
    html = report.summary_html(t.reset_index(), "m", "random:tiny-llama", ["figures/x.png"])
    assert "not run" in html and "random:tiny-llama" in html and "figures/x.png" in html


# --------------------------------------------------------------------------------------------------
# Verdicts
@pytest.mark.parametrize("paper, ours, lo, hi, tol, rng, n, want", [
    (0.5, 0.52, 0.45, 0.60, 0.1, False, 40, report.AGREES),        # inside, half-width 0.075
    (0.5, 0.70, 0.62, 0.78, 0.1, False, 40, report.DIFFERS),       # outside above
    (0.5, 0.30, 0.20, 0.499, 0.1, False, None, report.DIFFERS),    # outside below, just
    (0.5, 0.50, 0.20, 0.80, 0.1, False, 40, report.INCONCLUSIVE),  # inside but half-width 0.3 > 0.1
    (0.5, 0.50, 0.20, 0.80, 0.35, False, 40, report.AGREES),       # the entry's own tolerance
    (0.5, 0.50, None, None, 0.1, False, 40, report.INCONCLUSIVE),  # no CI
    (0.5, 0.90, 0.85, 0.95, 0.1, True, 40, report.INCONCLUSIVE),   # a min-max range is not a CI
    (0.07, 0.13, 0.13, 0.13, 0.1, False, 1, report.INCONCLUSIVE),  # one example: a zero-width bootstrap CI
    (0.07, 0.13, 0.12, 0.14, 0.1, False, 5, report.DIFFERS),       # MIN_N examples suffice
    (0.5, None, None, None, 0.1, False, 40, report.NO_VALUE),
])
def test_row_verdict(paper, ours, lo, hi, tol, rng, n, want):
    assert report.MIN_N == 5
    assert report.row_verdict(paper, ours, lo, hi, tol, rng, n) == want


def test_row_verdict_boundaries_and_defaults():
    """The interval is closed (the paper's value on a bound is inside), a half-width equal to the tolerance agrees
    (binary-exact numbers), the half-width is (hi - lo) / 2, a missing paper value or a one-sided interval is
    inconclusive, and by default the interval is a CI, not a range."""
    A, I, D = report.AGREES, report.INCONCLUSIVE, report.DIFFERS
    assert report.row_verdict(0.25, 0.5, 0.25, 0.75, 0.25) == A  # on the lower bound, half-width = tolerance
    assert report.row_verdict(0.75, 0.5, 0.25, 0.75, 0.25) == A  # on the upper bound
    assert report.row_verdict(0.75 + 2 ** -20, 0.5, 0.25, 0.75, 0.25) == D
    assert report.row_verdict(0.5, 0.5, 0.0, 0.5, 0.2) == I  # half-width 0.25 > 0.2 (a third of it would not be)
    assert report.row_verdict(0.5, 0.5, 0.45, 0.55) == A  # defaults: tolerance 0.1, a CI, n unknown
    assert report.row_verdict(0.5, 0.5, None, 0.6) == I and report.row_verdict(0.5, 0.5, 0.4, None) == I
    assert report.row_verdict(None, 0.5, 0.4, 0.6) == I


def test_claim_verdicts_count_only_same_quantity_rows():
    def row(i, cid, comp, verdict, status="ok"):
        return {"id": i, "claim_id": cid, "comparison": comp, "verdict": verdict, "status": status}

    t = pd.DataFrame([row("a", "C4", "same", report.AGREES), row("b", "C4", "same", report.AGREES),
                      row("c", "C4", "extension", report.DIFFERS),  # an extension never decides a claim
                      row("d", "C5", "same", report.AGREES), row("e", "C5", "same", report.DIFFERS),
                      row("f", "C6", "same", report.AGREES), row("g", "C6", "same", report.INCONCLUSIVE),
                      row("h", "C3", "same", report.NOT_RUN, status=report.NOT_RUN),
                      row("i", "C2", "different", report.AGREES)])
    v = report.claim_verdicts(t).set_index("claim_id")
    assert list(v.index) == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert v.loc["C4", "verdict"] == report.AGREES and v.loc["C4", "agree"] == "a, b"
    assert v.loc["C4", "not_counted"] == "c (extension)"
    assert v.loc["C5", "verdict"] == report.DIFFERS and v.loc["C5", "differ"] == "e"
    assert v.loc["C6", "verdict"] == report.INCONCLUSIVE
    for c in ("C1", "C2", "C3"):
        assert v.loc[c, "verdict"] == "not assessed" and v.loc[c, "n_rows"] == 0


def test_paper_numbers_are_well_formed(tmp_path):
    entries = report.load_paper_numbers()
    assert len({e["id"] for e in entries}) == len(entries)
    assert all(e["tag"] in "PSCR" for e in entries)
    assert all(e["comparison"] in report.COMPARISONS and (e["claim_id"] in report.CLAIMS or e["claim_id"] == "-")
               for e in entries)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {id: x, claim: c, paper: 1, tag: Q, section: s, reader: accuracy, claim_id: C1, "
                   "comparison: same}\n")
    with pytest.raises(ValueError, match="evidence tag"):
        report.load_paper_numbers(bad)
    bad.write_text("- {id: x, claim: c, paper: 1, tag: P, section: s, reader: accuracy, claim_id: C1, "
                   "comparison: similar}\n")
    with pytest.raises(ValueError, match="comparison"):
        report.load_paper_numbers(bad)


# --------------------------------------------------------------------------------------------------
# Every paper value against study.md's tables (../shared/study.md, present in CI)
def _study() -> str:
    p = REPO.parent / "shared" / "study.md"
    assert p.exists(), f"{p} not found (CI clones the repository beside ../shared)"
    return p.read_text(encoding="utf-8")


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    """The rows (cells, bold marks removed) of the markdown table whose header row starts with ``header_start``."""
    lines = text.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith(header_start))
    rows = []
    for ln in lines[i:]:
        if not ln.startswith("|"):
            break
        if not re.match(r"^\|[\s|:-]+\|$", ln):
            rows.append([c.strip().replace("**", "") for c in ln.strip().strip("|").split("|")])
    return rows


def study_values(text: str) -> dict[str, float]:
    """Each reference number, computed from study.md (§1.2, §1.4, E6, E8, E9, E10, E12)."""
    n_layers = int(re.search(r"(\d+) decoder blocks × \d+ heads", text).group(1))
    n_heads_total = int(re.search(r"= ([\d,]+) heads", text).group(1).replace(",", ""))
    v: dict[str, float] = {}
    fic, fal = re.search(r"fictional / false ontology \| ([\d.]+)% / ([\d.]+)%", text).groups()
    v["accuracy_fictional"], v["accuracy_false"] = float(fic) / 100, float(fal) / 100
    below, above, wo = re.search(r"layers < 16 vs ≥ 16 \| ([\d.]+)% vs ([\d.]+)% \(([\d.]+)% without writers\)",
                                 text).groups()
    for prefix in ("trace_context", "lens_context"):
        v[f"{prefix}_below"], v[f"{prefix}_above"] = float(below) / 100, float(above) / 100
    v["trace_context_above_wo_writers"] = float(wo) / 100
    writers = float(re.search(r"answer-writer heads in layers ≥ 16 \| ([\d.]+)% of", text).group(1)) / 100
    v["trace_writers_second_half"] = v["roles_writers_second_half"] = writers
    block = int(re.search(r"phase shift location \| decoder block (\d+)", text).group(1))
    v["rift_layer_rel"] = v["rift_layer_rel_tuned"] = block / n_layers
    # E10 per-layer table: the first layer whose share (upper end of a range) reaches 0.5
    layers, shares = _table_rows(text, "| layer | 0 |")
    first = next(lab for lab, sh in zip(layers[1:], shares[1:]) if float(sh.split("–")[-1]) >= 0.5)
    v["trace_crossing_rel"] = int(first.split("–")[0]) / n_layers
    # E9a depth maps
    means = dict(re.findall(r"d(\d) ([\d.]+)", re.search(r"Mean layer by depth: ([^;]+);", text).group(1)))
    halves = re.search(r"share in\s+layers ≥ 16: ([\d%, ]+)", text).group(1)
    halves = [float(x) / 100 for x in re.findall(r"(\d+)%", halves)]
    for d in range(4):
        v[f"depth{d}_rel_layer"] = float(means[str(d)]) / n_layers
        v[f"depth{d}_second_half"] = halves[d]
    # E8 probe peak: ≈value at layers a–b -> value and the middle of the layer range
    acc, a, b = re.search(r"probe accuracy peak[^|]*\| ≈([\d.]+) at layers (\d+)–(\d+)", text).groups()
    v["probe_peak_acc"], v["probe_peak_rel_layer"] = float(acc), (int(a) + int(b)) / 2 / n_layers
    # E6 operating points, induction column: mean kept share and mean accuracy over the subtasks
    ops = [r for r in _table_rows(text, "| k | induction: removed / acc |")[1:]]
    removed = [int(re.match(r"(\d+) /", r[1]).group(1)) for r in ops]
    accs = [float(re.match(r"\d+ / ([\d.]+)", r[1]).group(1)) for r in ops]
    v["knockout_kept_share"] = sum(n_heads_total - x for x in removed) / len(removed) / n_heads_total
    v["knockout_acc"] = sum(accs) / len(accs)
    v["horizon_layer0_s0"] = float(re.search(r"s=0 ≈([\d.]+) at\s+L0", text).group(1))
    # E9b answer sources
    parts = {"few-shot": "fewshot", "question context": "question", "generated CoT": "generated"}
    src = _table_rows(text, "| k | 0 | 1 | 2 |")
    ks = [int(k) for k in src[0][1:]]
    for r in src[1:]:
        for k, x in zip(ks, r[1:]):
            v[f"source_{parts[r[0]]}_k{k}"] = float(x)
    return v


def test_every_paper_value_matches_study_md():
    got = study_values(_study())
    entries = report.load_paper_numbers()
    missing = [e["id"] for e in entries if e["id"] not in got]
    assert not missing, f"no study.md value parsed for {missing}"
    wrong = {e["id"]: (e["paper"], round(got[e["id"]], 4)) for e in entries
             if not math.isclose(float(e["paper"]), got[e["id"]], abs_tol=6e-4)}
    assert not wrong, f"paper_numbers.yaml differs from study.md (yaml, study): {wrong}"
    assert len(entries) == len(got)  # and no study number without its row


# --------------------------------------------------------------------------------------------------
def test_false_ontology_accuracy_survives_the_csv_round_trip(tmp_path):
    """The aggregated accuracy.csv must keep the ontology "false" as text (pandas reads it as a boolean), and the
    paper table must find the false-ontology row."""
    import subprocess

    parts = []
    for ds, ont, k in (("fictional", "fictional", 3), ("falseont", "false", 5)):
        p = tmp_path / f"{ds}.accuracy.csv"
        write_table(p, pd.DataFrame([dict(dataset=ds, ontology=ont, hops=2, n=8, correct=k, accuracy=k / 8,
                                          ci_low=0.1, ci_high=0.9)]))
        parts.append(str(p))
    mres = tmp_path / "m"
    script = REPO / "scripts" / "generate_cot.py"
    subprocess.run([sys.executable, str(script), "--aggregate", *parts, "--accuracy", str(mres / "accuracy.csv")],
                   check=True, capture_output=True)
    assert "false," in (mres / "accuracy.csv").read_text()
    row = report.read_accuracy(mres, ["fictional", "falseont"], "false")
    assert row is not None and row["n"] == 8 and row["ours"] == 5 / 8


# --------------------------------------------------------------------------------------------------
# The table a real smoke run writes (end to end: slow, on the worker holding the shared smoke run)
def check_smoke_table(wd: Path) -> None:
    """The paper-vs-run table and claim verdicts of the smoke run in ``wd``, against values recomputed here by
    explicit loops over the raw result files the run wrote (and the pruned trace against its circuit)."""
    import json

    from cotmech.io import read_table

    import yaml

    cfg = yaml.safe_load((wd / sr.SMOKE).read_text())
    mres = wd / cfg["results"] / cfg["model"]["name"]
    t = pd.read_csv(mres / "report" / "paper_vs_run.csv").set_index("id")  # floats as written: 6 digits
    claims = pd.read_csv(mres / "report" / "claims.csv").set_index("claim_id")
    # every reader found its file where the rules wrote it
    assert (t["status"] != report.NOT_RUN).all(), t.index[t["status"] == report.NOT_RUN].tolist()
    # the trace headline, recomputed from traces.jsonl
    ds = re.search(r"flow/([^/]+)/", t.loc["trace_context_below", "source"]).group(1)
    summary = json.loads((mres / "flow" / ds / "summary.json").read_text())
    assert summary["pruned"] is True
    traces = [json.loads(x) for x in (mres / "flow" / ds / "traces.jsonl").read_text().splitlines()]
    L = traces[0]["n_layers"]
    n, k = [0] * L, [0] * L
    for tr in traces:
        for nd in tr["nodes"]:
            n[nd["layer"]] += 1
            k[nd["layer"]] += int(nd["depth"] == 0 or nd["in_context"])
    assert t.loc["trace_context_below", "ours"] == pytest.approx(sum(k[:L // 2]) / sum(n[:L // 2]), abs=1e-5)
    assert t.loc["trace_context_above", "ours"] == pytest.approx(sum(k[L // 2:]) / sum(n[L // 2:]), abs=1e-5)
    cross = next((i for i in range(L) if n[i] and k[i] / n[i] >= 0.5), None)
    assert (pd.isna(t.loc["trace_crossing_rel", "ours"]) if cross is None
            else t.loc["trace_crossing_rel", "ours"] == pytest.approx(cross / L, abs=1e-5))
    # the pruned trace visits only the heads its subtask's induction circuit kept
    heads = read_table(mres / "circuits" / "heads.parquet")
    for tr in traces:
        h = heads[(heads.subtask == tr["subtask"]) & (heads.ranking == "induction")]
        h = h[h.scope == next(sc for sc in ("rank_split", "other_data", "all_pairs") if (h.scope == sc).any())]
        kept = {(int(a), int(b)) for a, b, c in zip(h["layer"], h["head"], h["kept"]) if c}
        assert {(nd["layer"], nd["head"]) for nd in tr["nodes"]} <= kept, tr["pair_id"]
        assert tr["n_circuit_heads"] == len(kept)
    # the knockout row, from operating_points.csv
    ops = pd.read_csv(mres / "circuits" / "operating_points.csv")
    ops = ops[ops.primary.astype(bool)]  # each subtask's circuit: the primary ranking at its held-out scope
    from cotmech import config

    primary = config.load(wd / sr.SMOKE, wd / "config.yaml")["circuits"]["primary"]
    assert (ops.ranking == primary).all() and ops.heldout.astype(bool).all()
    shares = []
    for sub in sorted(set(ops.subtask)):
        o = ops[ops.subtask == sub]
        assert len(o) == 1
        shares.append(float(o.n_kept.iloc[0]) / float(o.n_kept.iloc[0] + o.n_removed.iloc[0]))
    assert t.loc["knockout_kept_share", "ours"] == pytest.approx(sum(shares) / len(shares), abs=1e-5)
    # verdicts: each same-quantity row by the rule, each claim from its rows
    for i, r in t.iterrows():
        if r["status"] != "ok" or r["comparison"] != "same":
            assert r["verdict"] == (report.NO_VALUE if r["comparison"] == "same" else report.NOT_COMPARED), i
            continue
        if pd.isna(r["ci_low"]) or i.startswith("knockout") or (pd.notna(r["n"]) and r["n"] < 5):
            want = report.INCONCLUSIVE
        elif not r["ci_low"] <= r["paper"] <= r["ci_high"]:
            want = report.DIFFERS
        else:
            want = report.AGREES if (r["ci_high"] - r["ci_low"]) / 2 <= report.TOLERANCE else report.INCONCLUSIVE
        assert r["verdict"] == want, i
    for cid in report.CLAIMS:
        v = t[(t.claim_id == cid) & (t.comparison == "same") & (t.status == "ok")]["verdict"].tolist()
        want = ("not assessed" if not v else report.DIFFERS if report.DIFFERS in v
                else report.AGREES if set(v) == {report.AGREES} else report.INCONCLUSIVE)
        assert claims.loc[cid, "verdict"] == want, cid


@pytest.mark.slow
@pytest.mark.xdist_group("smoke")
def test_the_table_of_a_real_smoke_run():
    check_smoke_table(sr.base_run())


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


def test_knockout_row_reads_each_subtasks_primary_circuit(mres):
    """With the primary column (run_knockout), the row is the mean over subtasks of the primary rows' operating
    points, whatever ranking or scope they are (here the direct ranking, and the induction rows are not primary)."""
    write_table(mres / "circuits" / "operating_points.csv", pd.DataFrame(
        {"subtask": [0, 0, 1, 1, 1], "ranking": ["induction", "direct", "induction", "direct", "direct"],
         "scope": ["other_data", "rank_split", "other_data", "rank_split", "eval_split"],
         "primary": [False, True, False, True, False], "n_removed": [200, 30, 100, 60, 90],
         "n_kept": [136, 306, 236, 276, 246], "acc": [0.9, 0.95, 0.8, 0.85, 0.7]}))
    t = report.paper_vs_run(mres, ["fictional"], "m").set_index("id")
    assert math.isclose(t.loc["knockout_kept_share", "ours"], (306 / 336 + 276 / 336) / 2, rel_tol=1e-5)
    assert math.isclose(t.loc["knockout_acc", "ours"], (0.95 + 0.85) / 2)
    assert t.loc["knockout_acc", "n"] == 2
