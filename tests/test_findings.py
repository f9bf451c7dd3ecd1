"""Findings study: config/findings.yaml meets every size floor of the issue "The first trustworthy findings", and
the published folder (cotmech.findings, scripts/publish_findings.py) is what the script writes: the Markdown equals
its regeneration from the folder's CSV, every figure is referenced, half-widths are (high - low) / 2, the wall time
per rule is read from Snakemake's log. The results tree is synthetic but laid out where the smoke DAG writes."""
from __future__ import annotations

import fnmatch
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cotmech import config as cfgmod
from cotmech import findings, report
from cotmech.io import write_json, write_table

from test_report import smoke_layout  # noqa: F401  (fixture: the smoke DAG's outputs)

REPO = Path(__file__).resolve().parents[1]
FINDINGS = REPO / "config" / "findings.yaml"
BASE = REPO / "config.yaml"
#: Share of examples the embedded model solves exactly (about a third; README's accuracy numbers).
SOLVE_RATE = 1 / 3
#: Heads of Qwen2.5-Coder-1.5B: 28 layers x 12 heads.
N_HEADS = 28 * 12


def floor_violations(cfg: dict) -> list[str]:
    """Every floor of the issue that ``cfg`` (merged, defaults filled) misses, one line each."""
    bad = []

    def need(ok, what):
        if not ok:
            bad.append(what)

    need(cfg["model"]["spec"] == "embedded:qwen2.5-coder-1.5b-instruct", "model: the embedded Qwen2.5-Coder-1.5B")
    need(cfg["model"]["dtype"] == "bfloat16", "model.dtype pinned to bfloat16")
    need(cfg["results"] == "results-findings", "results: results-findings")
    ds = cfg["datasets"]
    onts = {v["ontology"]: v["n"] for v in ds.values()}
    need(set(onts) == {"fictional", "false"}, "datasets: fictional and false ontology")
    for ont, n in onts.items():
        need(n >= 90, f"CoT accuracy: >= 90 examples ({ont})")
        # CI half-width of the accuracy at the expected rate (normal approximation)
        need(1.96 * math.sqrt(SOLVE_RATE * (1 - SOLVE_RATE) / n) <= 0.10, f"accuracy half-width <= 0.10 ({ont})")
    n_fict = ds[cfg["circuits"]["dataset"]]["n"]
    n_ref = ds[cfg["circuits"]["reference"]]["n"]
    p = cfg["patching"]
    need(p["subtasks"] == list(range(10)), "E2: all 10 subtasks patched")
    need(p["n_pairs"] is not None and p["n_pairs"] >= 20, "E2: >= 20 pairs per subtask")
    need(p["method"] == "exact" or (p["method"] == "screened" and p["screen"]["top_k"] >= 20),
         "E2: exact patching, or screened with an exact top 20")
    paper_path = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["patching"]["path"]["subtasks"]
    need(set(paper_path) <= set(p["path"]["subtasks"]), "E2: path patching on the paper's subtasks")
    need(p["path"]["n_pairs"] >= 20, "E2: path patching >= 20 pairs")
    need(p["induction"]["n"] >= 30, "E3: >= 30 cloze pairs per corruption")
    need(n_fict * SOLVE_RATE >= p["n_pairs"], "E2: enough correct examples for the pairs")
    c = cfg["circuits"]
    kinds = findings.subtask_kinds(2)
    need(set(c["subtasks"]) >= set(range(10)) or {kinds[k] for k in c["subtasks"]} >= set(findings.KNOCKOUT_KINDS),
         "E6: all 10 subtasks, or one subtask of each kind, knocked out")
    n_ex = c["n_examples"]
    need(n_ex is not None, "E6: n_examples set")
    if n_ex is not None:
        n_rank = min(max(1, int(round(c["rank_fraction"] * n_ex))), n_ex - 1)
        need(n_ex - n_rank >= 35, "E6: >= 35 held-out evaluation pairs per subtask")
        need(n_rank >= 35, "E6: >= 35 ranking pairs per subtask")
        need(n_fict * SOLVE_RATE >= n_ex, "E6: enough correct fictional examples")
    need(c["n_reference"] is not None and c["n_reference"] >= 30, "E6: >= 30 reference pairs")
    need(n_ref * SOLVE_RATE >= (c["n_reference"] or 0), "E6: enough correct false-ontology examples")
    steps = c["steps"]
    counts = (np.unique(np.round(np.linspace(0, N_HEADS, steps)).astype(int)) if isinstance(steps, int)
              else sorted(set(steps)))
    need(len([k for k in counts if k > 0]) >= 20, "E6: >= 20 removal steps")
    need(cfg["probing"]["n_questions"] >= 150, "E8: >= 150 questions (issue floor 120)")
    need(cfg["probing"]["shots"] == [0, 1, 2, 3, 4], "E8: shots 0-4")
    need(cfg["flow"]["n_examples"] >= 20, "E9: >= 20 traced examples")
    need(cfg["horizon"]["n_examples"] >= 34, "E12: >= 34 examples")
    need(n_fict * SOLVE_RATE >= cfg["horizon"]["n_examples"], "E12: enough correct examples")
    need(cfg["prior_shift"]["max_per_subtask"] is not None and cfg["prior_shift"]["max_per_subtask"] >= 30,
         "E10: >= 30 examples per dataset through the lenses")
    return bad


def test_findings_config_meets_every_floor():
    cfg = cfgmod.load(FINDINGS, BASE)
    assert floor_violations(cfg) == []


@pytest.mark.parametrize("key, value, floor", [
    ("patching.n_pairs", 19, "E2: >= 20 pairs"), ("patching.induction.n", 29, "E3"),
    ("circuits.n_examples", 69, "E6: >= 35 ranking"), ("circuits.rank_fraction", 0.6, "E6: >= 35 held-out"),
    ("circuits.steps", 20, "E6: >= 20 removal steps"),
    ("circuits.subtasks", [0, 5], "E6: all 10 subtasks, or one"), ("probing.n_questions", 119, "E8"), ("flow.n_examples", 19, "E9"),
    ("horizon.n_examples", 33, "E12"), ("prior_shift.max_per_subtask", 29, "E10"), ("model.dtype", "float32", "dtype"),
    ("datasets.falseont.n", 80, "accuracy"), ("patching.path.subtasks", [0], "path patching"),
])
def test_floor_check_catches_a_config_below_a_floor(tmp_path, key, value, floor):
    """The floor check itself: each floor, broken in a copy of the config, is reported."""
    data = yaml.safe_load(FINDINGS.read_text())
    cur = data
    *parents, last = key.split(".")
    for k in parents:
        cur = cur.setdefault(k, {})
    cur[last] = value
    f = tmp_path / "findings.yaml"
    f.write_text(yaml.safe_dump(data))
    bad = floor_violations(cfgmod.load(f, BASE))
    assert any(floor in b for b in bad), bad


def test_findings_config_finds_operating_points_by_bisection():
    """The 2-hour budget rests on the knockout's bisection (bench_rules counts it); config.yaml keeps every step."""
    assert cfgmod.load(FINDINGS, BASE)["circuits"]["search"] == "bisection"
    assert cfgmod.load(BASE)["circuits"]["search"] == "exhaustive"


# --------------------------------------------------------------------------------------------------
# Snakemake log -> wall time per rule
# A log as Snakemake 9 writes it (copied from a run of a two-rule workflow), plus an unfinished job.
LOG = """Building DAG of jobs...
Select jobs to execute...
Execute 2 jobs...

[Sun Dec  6 19:38:35 2026]
localrule a:
    output: out/0.txt
    log: logs/a/0.log
    jobid: 1
    reason: Missing output files: out/0.txt
    wildcards: i=0
    resources: tmpdir=/tmp
[Sun Dec  6 19:38:36 2026]
localrule a:
    output: out/1.txt
    jobid: 2
    wildcards: i=1
[Sun Dec  6 19:38:37 2026]
Finished jobid: 2 (Rule: a)
1 of 4 steps (25%) done
[Sun Dec  6 19:38:37 2026]
Finished jobid: 1 (Rule: a)
2 of 4 steps (50%) done

[Sun Dec  6 19:38:37 2026]
rule b:
    input: out/0.txt
    output: b.txt
    jobid: 3
[Sun Dec  6 19:38:39 2026]
Finished jobid: 3 (Rule: b)
[Sun Dec  6 19:38:39 2026]
rule c:
    output: c.txt
    jobid: 4
[Sun Dec  6 19:38:39 2026]
localrule all:
    input: out/0.txt, out/1.txt, b.txt
    jobid: 0
[Sun Dec  6 19:38:40 2026]
Finished jobid: 0 (Rule: all)
"""
# A second sitting (resumed run), in Snakemake 8's wording, across midnight.
LOG2 = """[Mon Dec  7 23:59:58 2026]
rule c:
    output: c.txt
    jobid: 1
[Tue Dec  8 00:01:03 2026]
Finished job 1.
"""


def test_rule_times_from_snakemake_logs():
    jobs, span = findings.parse_snakemake_log(LOG)
    got = {(j["rule"], j["jobid"]): j["seconds"] for j in jobs}
    assert got == {("a", 1): 2.0, ("a", 2): 1.0, ("b", 3): 2.0, ("c", 4): None, ("all", 0): 1.0}
    assert span == 5.0
    rows, wall = findings.rule_times([LOG, LOG2])
    assert wall == 5.0 + 65.0
    assert rows == [
        {"rule": "c", "jobs": 1, "unfinished": 1, "total_s": 65.0, "max_s": 65.0},
        {"rule": "a", "jobs": 2, "unfinished": 0, "total_s": 3.0, "max_s": 2.0},
        {"rule": "b", "jobs": 1, "unfinished": 0, "total_s": 2.0, "max_s": 2.0},
    ]


# --------------------------------------------------------------------------------------------------
# Publishing a synthetic results tree
@pytest.fixture()
def run_tree(tmp_path, smoke_layout):  # noqa: F811
    """results/<model> with the real table formats (cotmech.report, cotmech.io) and a PNG wherever the smoke DAG
    writes one; planted rows: (id, ours, ci_low, ci_high, n)."""
    dag_mres, datasets, outputs = smoke_layout
    mres = tmp_path / "results-findings" / "m"
    pngs = sorted(o[len(dag_mres) + 1:] for o in outputs
                  if o.startswith(dag_mres + "/") and o.endswith(".png") and "/gallery/" not in o)
    for i, rel in enumerate(pngs):
        (mres / rel).parent.mkdir(parents=True, exist_ok=True)
        (mres / rel).write_bytes(b"\x89PNG\r\n\x1a\n" + str(i).encode())
    table = report.paper_vs_run(tmp_path / "empty", datasets, "m")
    planted = [(0, 0.35, 0.30, 0.42, 300), (1, 0.812, 0.70, 0.95, 34), (2, 12.0, None, None, 20)]
    for i, ours, lo, hi, n in planted:
        table.loc[i, ["ours", "ci_low", "ci_high", "n", "status"]] = [ours, lo, hi, n, "ok"]
        table.loc[i, "verdict"] = report.row_verdict(table.loc[i, "paper"], ours, lo, hi, n=n)
    table.loc[3, "note"] = "a | in a note"
    write_table(mres / "report" / "paper_vs_run.csv", table)
    write_table(mres / "report" / "claims.csv", report.claim_verdicts(table))
    write_json(mres / "run_info.json", {"dtype": "bfloat16", "dtype_requested": "bfloat16", "device": "cpu",
                                        "cpu": "Test CPU 9000", "cpu_count": 2, "cpu_native_bf16": True,
                                        "gpu": None, "libraries": {"torch": "2.13.0"}})
    # accuracy.csv and operating_points.csv as their rules write them; subtask 3's held-out split falls short
    from cotmech.generation import ACCURACY_COLUMNS, accuracy_row
    recs = {"fictional": [{"correct": i % 3 == 0, "ontology": "fictional", "hops": 2} for i in range(300)],
            "falseont": [{"correct": i % 4 == 0, "ontology": "false", "hops": 2} for i in range(200)]}
    write_table(mres / "accuracy.csv", pd.DataFrame([accuracy_row(d, r) for d, r in recs.items()],
                                                    columns=ACCURACY_COLUMNS))
    kinds = findings.subtask_kinds(2)
    ops = [dict(subtask=k, kind=kinds[k], ranking=r, scope="heldout", heldout=True, n_removed=100, n_kept=236,
                acc=0.9, ci_low=0.8, ci_high=0.95, n=35, threshold=0.9,
                n_rank_examples=35 if r != "induction" else None,
                n_eval_examples=30 if k == 3 else 35, n_reference=30, note="", procedure="lowest", step=3,
                n_available=70, primary=r == "induction") for k in (3, 4, 5) for r in ("decision", "induction")]
    write_table(mres / "circuits" / "operating_points.csv", pd.DataFrame(ops))
    return mres, table, planted, pngs


def _publish(tmp_path, mres, logs=()):
    cfg = cfgmod.load(FINDINGS, BASE)
    paths = []
    for i, text in enumerate(logs):
        p = tmp_path / f"log{i}.log"
        p.write_text(text)
        paths.append(p)
    return findings.publish(mres, tmp_path / "docs" / "findings" / "m", cfg, paths, ["abc123", "def456 (dirty)"])


def _md_rows(md: str) -> dict[str, list[str]]:
    """Rows of the Markdown's paper-vs-run table by id: the cells."""
    part = md.split("## Paper vs run", 1)[1].split("## Figures", 1)[0]
    rows = {}
    for line in part.splitlines():
        if line.startswith("| ") and not line.startswith("| id ") and not line.startswith("|---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0]] = cells
    return rows


def test_published_markdown_is_the_script_output_of_the_csv(tmp_path, run_tree):
    mres = run_tree[0]
    md = _publish(tmp_path, mres, [LOG])
    out = md.parent
    text = md.read_text()
    assert text == findings.render(out)
    assert (out / "paper_vs_run.csv").read_bytes() == (mres / "report" / "paper_vs_run.csv").read_bytes()
    assert (out / "claims.csv").read_bytes() == (mres / "report" / "claims.csv").read_bytes()
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfgmod.load(FINDINGS, BASE)
    # a hand edit is caught
    md.write_text(text.replace("| 0.350 |", "| 0.351 |"))
    assert md.read_text() != findings.render(out)
    # a changed CSV changes the page (it is rendered from the CSV, not from the results tree)
    edited = run_tree[1].copy()
    edited.loc[0, "ours"] = 0.25
    write_table(out / "paper_vs_run.csv", edited)
    assert "| 0.250 |" in findings.render(out) and "| 0.350 |" not in findings.render(out)
    assert "| abc123" not in text and "`abc123`, `def456 (dirty)`" in text
    assert "Test CPU 9000" in text and "bfloat16" in text
    # the page says how heads were patched, from the published config (screened: which cells are exact)
    assert "head patching (E2): `screened`: exact values for the heads screening evaluated (at least each " \
           "subtask's exact top 20" in text
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["patching"]["method"] = "exact"
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "head patching (E2): `exact`, every head of every pair" in findings.render(out)


def test_every_published_figure_is_referenced(tmp_path, run_tree):
    mres, _, _, pngs = run_tree
    md = _publish(tmp_path, mres)
    out = md.parent
    figs = {f"figures/{p.name}" for p in (out / "figures").glob("*.png")}
    refs = findings.referenced_figures(md.read_text())
    assert figs and figs == refs
    # the key figures of the issue, where the smoke DAG writes them, are all published
    for want in ("patching__fictional__subtask0.png", "patching__fictional__subtask5.png",
                 "circuits__knockout_decision.png", "circuits__knockout_copy.png",
                 "circuits__knockout_induction.png", "probing__accuracy.png", "figures__fictional__rift_heads.png",
                 "figures__fictional__sources.png", "prior_shift__fictional.png", "prior_shift__falseont.png"):
        assert f"figures/{want}" in figs, want
    # order and sections follow FIGURES: exact heat-maps before AtP, the lens rift under context abidance
    text = md.read_text()
    assert text.index("subtask5.png") < text.index("atp__subtask0.png") < text.index("### Knockout")
    assert text.index("### Context abidance") < text.index("prior_shift__rift.png") < text.index("### Lens curves")
    assert text.index("### Lens curves") < text.index("prior_shift__fictional.png")
    # an extra figure dropped into the folder is referenced too (under "Other figures")
    (out / "figures" / "extra.png").write_bytes(b"x")
    assert "figures/extra.png" in findings.referenced_figures(findings.render(out))


def test_figure_globs_match_what_the_workflow_writes(smoke_layout):  # noqa: F811
    dag_mres, _, outputs = smoke_layout
    rels = [o[len(dag_mres) + 1:] for o in outputs if o.startswith(dag_mres + "/")]
    for title, globs in findings.FIGURES:
        for g in globs:
            assert any(fnmatch.fnmatchcase(r, g) for r in rels), f"{title}: {g} matches no output of the DAG"


def test_half_widths_are_half_the_ci(tmp_path, run_tree):
    mres, table, planted, _ = run_tree
    md = _publish(tmp_path, mres).read_text()
    rows = _md_rows(md)
    assert len(rows) == len(table)
    for i, ours, lo, hi, n in planted:
        cells = rows[table.loc[i, "id"]]
        hw = cells[7]
        if lo is None:
            assert hw == "" and cells[6] == ""
        else:
            assert float(hw) == pytest.approx((hi - lo) / 2, abs=5e-4)
            assert cells[6] == f"[{lo:.3f}, {hi:.3f}]"
        assert cells[8] == str(n)
    # rows without a value say so
    assert all(rows[table.loc[i, "id"]][5] == "*not run*" for i in range(3, len(table)))
    assert findings.half_width("0.1", "0.4") == pytest.approx(0.15)
    assert findings.half_width(None, 0.4) is None and findings.half_width(float("nan"), 0.4) is None
    # the summary counts rows with a CI and those within 0.10: (0.42-0.30)/2 = 0.06 yes, (0.95-0.70)/2 = 0.125 no
    assert "2 have a 95% CI, 1 of them with a half-width <= 0.10" in md


def test_publish_wall_time_per_rule(tmp_path, run_tree):
    md = _publish(tmp_path, run_tree[0], [LOG, LOG2]).read_text()
    part = md.split("## Wall time per rule", 1)[1]
    assert "| c | 1 | 1 | 65 | 65 |" in part and "| a | 2 | 0 | 3 | 2 |" in part
    assert "wall time: 70 s (0.02 h) over 2 Snakemake log(s)" in md


def test_publish_script_without_a_finished_run_fails(tmp_path):
    cfg = tmp_path / "f.yaml"
    cfg.write_text(FINDINGS.read_text().replace("results: results-findings", f"results: {tmp_path / 'r'}"))
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "publish_findings.py"), "--config", str(cfg),
                        "--base", str(BASE), "--out", str(tmp_path / "docs")], capture_output=True, text=True)
    assert r.returncode == 2 and "paper_vs_run.csv" in r.stderr
    assert not (tmp_path / "docs").exists()


def test_publish_script_writes_the_folder(tmp_path, run_tree):
    mres = run_tree[0]
    res = mres.parent
    (res / "snakemake-logs").mkdir()
    (res / "snakemake-logs" / "20261206T193835Z.log").write_text(LOG)
    (res / "run_commits.txt").write_text("2026-12-06T19:38:35Z abc123 clean\n2026-12-07T10:00:00Z abc123 clean\n")
    cfg = tmp_path / "f.yaml"
    cfg.write_text(FINDINGS.read_text().replace("results: results-findings", f"results: {res}")
                   .replace("name: qwen2.5-coder-1.5b ", "name: m "))
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "publish_findings.py"), "--config", str(cfg),
                        "--base", str(BASE), "--out", str(tmp_path / "docs")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "docs" / "m"
    md = (out / "README.md").read_text()
    assert md == findings.render(out)
    assert "- commit: `abc123`\n" in md and "over 1 Snakemake log(s)" in md


# --------------------------------------------------------------------------------------------------
# What is published in the repository
PUBLISHED = sorted(p for p in (REPO / "docs" / "findings").glob("*") if p.is_dir()) \
    if (REPO / "docs" / "findings").is_dir() else []


@pytest.mark.skipif(not PUBLISHED, reason="no findings published yet (make findings; make publish-findings)")
@pytest.mark.parametrize("folder", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_published_findings_in_the_repository(folder):
    md = (folder / findings.MARKDOWN).read_text()
    assert md == findings.render(folder), "README.md differs from what publish_findings.py writes from the CSV"
    figs = {f"figures/{p.name}" for p in (folder / findings.FIGDIR).glob("*.png")}
    assert findings.referenced_figures(md) == figs
    # the repository README's per-claim block is the script's output for the newest published folder
    readme = (REPO / "README.md").read_text()
    i, j = readme.index(findings.README_BEGIN), readme.index(findings.README_END) + len(findings.README_END)
    if folder == PUBLISHED[-1]:
        assert readme[i:j] == findings.claims_block(folder, f"docs/findings/{folder.name}")


def test_readme_block_is_empty_until_a_run_is_published():
    """The repository README's per-claim block holds nothing but what publish_findings.py wrote from a published
    folder (the other test): before any, it is empty (no test run or synthetic data may write it)."""
    readme = (REPO / "README.md").read_text()
    i = readme.index(findings.README_BEGIN) + len(findings.README_BEGIN)
    j = readme.index(findings.README_END)
    if not PUBLISHED:
        assert readme[i:j].strip() == ""
    else:
        assert "pytest" not in readme[i:j] and f"docs/findings/{PUBLISHED[-1].name}" in readme[i:j]


def test_readme_claims_block_sets_paper_beside_ours_with_the_verdict(tmp_path, run_tree):
    """claims_block: one row per claim C1–C6; a claim's planted same-quantity row shows the paper's value and ours
    with its CI and n, the verdict of claims.csv and why; the README is rewritten only between the markers."""
    mres, table, planted, _ = run_tree
    folder = _publish(tmp_path, mres).parent
    block = findings.claims_block(folder, "docs/findings/m")
    lines = [ln for ln in block.splitlines() if ln.startswith("| C")]
    assert [ln.split()[1] for ln in lines] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    claims = {r["claim_id"]: r for r in findings._read_csv(folder / findings.CLAIMS)}
    free = next(ln for ln in block.splitlines() if ln.startswith("| rows of no claim"))
    for i, ours, lo, hi, n in planted:
        row = table.loc[i]
        line = next((ln for ln in lines if ln.split()[1] == row["claim_id"]), free)
        if row["comparison"] != "same":
            assert f"{row['id']} ({row['comparison']})" in line  # named as not counted
            continue
        num = (lambda v: str(int(v)) if float(v).is_integer() else f"{v:.3f}")  # whole numbers as integers
        want = f"{row['id']}: {num(ours)}" + (f" [{num(lo)}, {num(hi)}]" if lo is not None else "") + f", n={n}"
        assert want in line, (want, line)
        assert (claims[row["claim_id"]]["verdict"] if row["claim_id"] in claims else row["verdict"]) in line
    empty = [ln for ln in lines if ln.split()[1] not in {table.loc[i, "claim_id"] for i, *_ in planted}]
    assert all("no row of the paper's quantity has a value" in ln for ln in empty)
    text = "intro\n" + findings.README_BEGIN + "\nold\n" + findings.README_END + "\noutro\n"
    assert findings.replace_block(text, "NEW") == "intro\nNEW\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        findings.replace_block("no markers here", "NEW")


def test_publish_script_rewrites_the_readme_block(tmp_path, run_tree):
    """scripts/publish_findings.py --readme: the block between the markers becomes claims_block; the rest stays."""
    mres = run_tree[0]
    cfg_file = tmp_path / "findings.yaml"
    data = yaml.safe_load(FINDINGS.read_text())
    data["results"] = str(tmp_path / "results-findings")
    data["model"]["name"] = "m"
    cfg_file.write_text(yaml.safe_dump(data))
    readme = tmp_path / "README.md"
    readme.write_text("# T\n\n" + findings.README_BEGIN + "\n" + findings.README_END + "\n\nend\n")
    out = tmp_path / "docs" / "findings"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "publish_findings.py"), "--config", str(cfg_file),
                        "--base", str(BASE), "--out", str(out), "--readme", str(readme), "--logs"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = readme.read_text()
    assert text.startswith("# T\n\n") and text.endswith("\n\nend\n")
    assert findings.claims_block(out / "m", "docs/findings/m") in text


@pytest.mark.parametrize("subtasks, status", [([3, 4, 5], "one per kind (the issue's cut)"),
                                              ([4, 6, 9], "below floor"), (list(range(10)), "ok")])
def test_knockout_subtask_floor_allows_one_per_kind_only(tmp_path, subtasks, status):
    """All 10 subtasks, or (the issue's cut) at least one decision, copy and induction subtask; 4, 6, 9 lack a
    copy subtask (kinds of the 2-hop CoT: 1, 3, 7 copy; 5, 9 induction; the rest decision)."""
    kinds = findings.subtask_kinds(2)
    assert [k for k, v in kinds.items() if v == "copy"] == [1, 3, 7]
    assert [k for k, v in kinds.items() if v == "induction"] == [5, 9]
    cfg = cfgmod.load(FINDINGS, BASE)
    cfg["circuits"]["subtasks"] = subtasks
    rows = {r["analysis"]: r for r in findings.sizes(tmp_path, cfg)}
    assert rows["E6 knockout: subtasks"]["status"] == status
    assert rows["E6 knockout: subtask kinds (decision, copy, induction)"]["status"] == \
        ("below floor" if status == "below floor" else "ok")


def test_sizes_say_which_floor_the_run_missed(tmp_path, run_tree):
    md = _publish(tmp_path, run_tree[0]).read_text()
    rows = {r["analysis"]: r for r in findings._read_csv(tmp_path / "docs" / "findings" / "m" / "sizes.csv")}
    # reached sizes from the run's files (oracle: the planted records)
    assert rows["CoT accuracy (fictional): examples"]["reached"] == "300"
    assert rows["correct CoTs (fictional)"]["reached"] == "100"            # every third of 300
    assert rows["correct CoTs (falseont)"]["reached"] == "50"              # every fourth of 200
    assert rows["correct CoTs (falseont)"]["floor"] == "30"                # the knockout's reference pairs
    held = rows["E6 knockout: held-out evaluation pairs per subtask (fewest)"]
    assert (held["configured"], held["reached"], held["status"]) == ("35", "30", "below floor")
    assert rows["E6 knockout: ranking pairs per subtask (fewest)"]["reached"] == "35"
    knocked = rows["E6 knockout: subtasks"]
    assert (knocked["reached"], knocked["status"]) == ("3", "one per kind (the issue's cut)")
    assert rows["E6 knockout: subtask kinds (decision, copy, induction)"]["reached"] == "3"
    assert rows["E6 knockout: removal steps"]["configured"] == "20"
    assert rows["E2 head patching: pairs per subtask"]["status"] == "ok"
    assert [r for r, v in rows.items() if v["status"] == "below floor"] == [held["analysis"]]
    assert f"Below a floor: {held['analysis']}." in md
    assert md == findings.render(tmp_path / "docs" / "findings" / "m")
