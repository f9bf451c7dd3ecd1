"""Published findings of one run: ``docs/findings/<model>/`` (scripts/publish_findings.py, ``make publish-findings``).

The folder holds files copied or derived from a finished run's results tree and nothing typed by hand:

- ``paper_vs_run.csv``, ``claims.csv`` — the run's ``report/`` tables (rule ``paper_table``, :mod:`cotmech.report`);
- ``run_info.json`` — the machine and dtype of the run (rule ``run_info``, :mod:`cotmech.provenance`);
- ``config.yaml`` — the exact merged configuration (config.yaml + the findings overlay, defaults filled in);
- ``run.json`` — the commit(s) the run was made from and its wall time;
- ``sizes.csv`` — the issue's size floors, the configured sizes and those the run reached (:func:`sizes`);
- ``rule_times.csv`` — wall time per rule, from the Snakemake logs of the run (:func:`rule_times`);
- ``figures/*.png`` — the key figures (:data:`FIGURES`);
- ``README.md`` — written by :func:`render` from the files above only, so regenerating it from the folder gives the
  same text (tests/test_findings.py checks that, and that every figure is referenced).
"""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .io import number

#: Key figures: (section title, globs relative to results/<model>/). A file matched by an earlier section is not
#: repeated in a later one (prior_shift/rift.png belongs to context abidance, not to the lens curves).
FIGURES: list[tuple[str, list[str]]] = [
    ("Head patching (E2, E3)", ["patching/*/subtask*.png", "patching/*/atp/subtask*.png",
                                "patching/*/path/path_patching.png", "induction/scores.png"]),
    ("Knockout curves and overlap (E6, E7)", ["circuits/knockout_decision.png", "circuits/knockout_copy.png",
                                              "circuits/knockout_induction.png", "circuits/overlap.png"]),
    ("Probing (E8)", ["probing/accuracy.png"]),
    ("Context abidance per layer (E9c, E10)", ["figures/*/rift_heads.png", "prior_shift/rift.png"]),
    ("Answer sources per subtask (E9b)", ["figures/*/sources.png"]),
    ("Lens curves (E10)", ["prior_shift/*.png"]),
    ("Answer writers and copy heads (E4, E5)", ["roles/*/writers.png", "roles/*/copy.png"]),
    ("Horizon (E12)", ["figures/*/horizon.png"]),
]
#: Half-width of a 95% CI of a share at or below which the issue's floors count a headline number as measured.
HALF_WIDTH_TARGET = 0.10
MARKDOWN = "README.md"
TABLE, CLAIMS, RUN_INFO, CONFIG, RUN, RULE_TIMES, SIZES, FIGDIR = (
    "paper_vs_run.csv", "claims.csv", "run_info.json", "config.yaml", "run.json", "rule_times.csv", "sizes.csv",
    "figures")
SIZE_COLUMNS = ["analysis", "setting", "floor", "configured", "reached", "status", "source"]


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------
def half_width(ci_low: Any, ci_high: Any) -> float | None:
    """Half the width of the interval [ci_low, ci_high]; None when either end is missing."""
    lo, hi = number(ci_low), number(ci_high)
    if lo is None or hi is None:
        return None
    return (hi - lo) / 2


def _fmt(x: Any) -> str:
    """A table cell: numbers as integers when whole, else 3 decimals; text as is (``|`` escaped)."""
    v = number(x)
    if v is None:
        return "" if x is None or str(x).strip().lower() in ("", "nan") else str(x).replace("|", "\\|")
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.3f}"


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# --------------------------------------------------------------------------------------------------
# Wall time per rule from Snakemake's log
# --------------------------------------------------------------------------------------------------
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d{1,2} \d{2}:\d{2}:\d{2} \d{4})\]$")
_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_DONE = re.compile(r"^Finished job(?:id:)? (\d+)")


def _stamp(s: str) -> datetime:
    return datetime.strptime(" ".join(s.split()), "%a %b %d %H:%M:%S %Y")


def parse_snakemake_log(text: str) -> tuple[list[dict], float | None]:
    """Jobs of one Snakemake log (what ``snakemake`` prints, also saved under ``.snakemake/log/``): one dict per
    started job ``{rule, jobid, start, end, seconds}`` (``end``/``seconds`` None when it never finished), and the
    log's span in seconds (first to last time stamp; None without stamps). Time stamps have 1 s resolution."""
    jobs: dict[int, dict] = {}
    stamp: datetime | None = None
    first = last = None
    pending: str | None = None
    for line in text.splitlines():
        m = _STAMP.match(line.strip())
        if m:
            stamp = _stamp(m.group(1))
            first = first or stamp
            last = stamp
            continue
        m = _START.match(line)
        if m and stamp is not None:
            pending = m.group(1)
            continue
        m = _JOBID.match(line)
        if m and pending is not None:
            jobs[int(m.group(1))] = {"rule": pending, "jobid": int(m.group(1)), "start": stamp, "end": None,
                                     "seconds": None}
            pending = None
            continue
        m = _DONE.match(line.strip())
        if m and int(m.group(1)) in jobs and stamp is not None:
            j = jobs[int(m.group(1))]
            j["end"] = stamp
            j["seconds"] = (stamp - j["start"]).total_seconds()
    span = (last - first).total_seconds() if first is not None else None
    return list(jobs.values()), span


def rule_times(texts: Iterable[str], skip: Sequence[str] = ("all",)) -> tuple[list[dict], float]:
    """Wall time per rule over the logs of one run (several when it was resumed): rows ``{rule, jobs, unfinished,
    total_s, max_s}`` sorted by total time (longest first), and the run's wall time (sum of the logs' spans)."""
    per: dict[str, dict] = {}
    wall = 0.0
    for text in texts:
        jobs, span = parse_snakemake_log(text)
        wall += span or 0.0
        for j in jobs:
            if j["rule"] in skip:
                continue
            r = per.setdefault(j["rule"], {"rule": j["rule"], "jobs": 0, "unfinished": 0, "total_s": 0.0,
                                           "max_s": 0.0})
            if j["seconds"] is None:
                r["unfinished"] += 1
                continue
            r["jobs"] += 1
            r["total_s"] += j["seconds"]
            r["max_s"] = max(r["max_s"], j["seconds"])
    rows = sorted(per.values(), key=lambda r: (-r["total_s"], r["rule"]))
    return rows, wall


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def published_name(rel: str) -> str:
    """File name of a figure in ``figures/``: its path under results/<model>/ with ``/`` as ``__``."""
    return "__".join(Path(rel).parts)


def collect_figures(mres: str | Path) -> list[tuple[str, list[str]]]:
    """(section, [paths relative to mres]) for :data:`FIGURES` that exist under ``mres`` (each file once)."""
    mres = Path(mres)
    seen: set[str] = set()
    out = []
    for title, globs in FIGURES:
        rels = []
        for g in globs:
            for p in sorted(mres.glob(g), key=lambda p: _natural(str(p))):
                rel = p.relative_to(mres).as_posix()
                if rel not in seen:
                    seen.add(rel)
                    rels.append(rel)
        out.append((title, rels))
    return out


def _figure_sections(folder: Path) -> list[tuple[str, list[str]]]:
    """Published figures of ``folder/figures`` grouped by :data:`FIGURES` section (names map back to their
    results paths); figures of no section come last under "Other figures"."""
    names = sorted((p.name for p in (folder / FIGDIR).glob("*.png")), key=_natural) \
        if (folder / FIGDIR).is_dir() else []
    rest = list(names)
    out = []
    for title, globs in FIGURES:
        # a glob's * stands for one path part, i.e. never spans the "__" that joins parts
        pats = [re.compile("^" + re.escape(published_name(g)).replace(r"\*", "(?:(?!__).)*") + "$") for g in globs]
        mine = []
        for pat in pats:
            for n in rest:
                if n not in mine and pat.match(n):
                    mine.append(n)
        rest = [n for n in rest if n not in mine]
        out.append((title, mine))
    if rest:
        out.append(("Other figures", rest))
    return out


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text))) if text.strip() else []


def patching_method(config_path: Path) -> str:
    """One phrase on how the published config patches heads (exact everywhere, or screened: which cells are
    exact), from its ``config.yaml``."""
    import yaml

    if not config_path.exists():
        return "not recorded"
    p = (yaml.safe_load(config_path.read_text()) or {}).get("patching") or {}
    method = p.get("method", "exact")
    if method != "screened":
        return f"`{method}`, every head of every pair"
    top = (p.get("screen") or {}).get("top_k")
    return (f"`screened`: exact values for the heads screening evaluated (at least each subtask's exact top {top}; "
            "their number is in each heat-map's title), AtP estimates for the rest (docs/DEVIATIONS.md, "
            "\"E2 screened patching\")")


def render(folder: str | Path) -> str:
    """The Markdown page of a published findings folder, from its files only (see the module docstring)."""
    folder = Path(folder)
    table = _read_csv(folder / TABLE)
    claims = _read_csv(folder / CLAIMS) if (folder / CLAIMS).exists() else []
    info = json.loads((folder / RUN_INFO).read_text()) if (folder / RUN_INFO).exists() else None
    run = json.loads((folder / RUN).read_text()) if (folder / RUN).exists() else {}
    times = _read_csv(folder / RULE_TIMES) if (folder / RULE_TIMES).exists() else []
    model = run.get("model_name") or (table[0].get("model") if table else folder.name)
    L: list[str] = [f"# Findings: {model}", ""]
    L += ["Generated by `scripts/publish_findings.py` from the files of this folder (never edited by hand). "
          "Paper: Dutta et al. (TMLR 2024), Llama-2-7B. Rows, verdicts and claims: `cotmech.report` "
          f"(`{TABLE}`, `{CLAIMS}`); the exact configuration: `{CONFIG}`.", ""]
    # Run
    L += ["## Run", ""]
    commits = run.get("commits") or []
    L.append(f"- commit: {', '.join(f'`{c}`' for c in commits) if commits else 'not recorded'}")
    if info is not None:
        L.append(f"- dtype: {info.get('dtype')} (requested {info.get('dtype_requested')}); device: "
                 f"{info.get('device')}")
        L.append(f"- CPU: {info.get('cpu')} ({info.get('cpu_count')} logical cores, native bf16: "
                 f"{info.get('cpu_native_bf16')}); GPU: {info.get('gpu') or 'none'}")
        libs = info.get("libraries") or {}
        if libs:
            L.append("- libraries: " + ", ".join(f"{k} {v}" for k, v in libs.items()))
    else:
        L.append(f"- machine: not recorded (`{RUN_INFO}` absent)")
    wall = number(run.get("wall_s"))
    L.append(f"- wall time: {_fmt(wall)} s ({wall / 3600:.2f} h) over {run.get('n_logs', 0)} Snakemake log(s)"
             if wall is not None else "- wall time: not recorded")
    L.append(f"- head patching (E2): {patching_method(folder / CONFIG)}")
    L.append("")
    # Claims
    if claims:
        L += ["## Claims", "", "| claim | | verdict | agree | differ | inconclusive |", "|---|---|---|---|---|---|"]
        for c in claims:
            L.append("| " + " | ".join(_fmt(c.get(k)) for k in ("claim_id", "claim", "verdict", "agree", "differ",
                                                                   "inconclusive")) + " |")
        L.append("")
    # Sizes
    size_rows = _read_csv(folder / SIZES) if (folder / SIZES).exists() else []
    if size_rows:
        below = [r["analysis"] for r in size_rows if r.get("status") == "below floor"]
        L += ["## Sizes", "", "The issue's floors (independent units), what the config asks and what the run reached "
              "where a result file records it. " + (f"Below a floor: {'; '.join(below)}." if below
                                                    else "No size is below its floor."), "",
              "| analysis | setting | floor | configured | reached | status | source |",
              "|---|---|---|---|---|---|---|"]
        for r in size_rows:
            L.append("| " + " | ".join(_fmt(r.get(k)) for k in SIZE_COLUMNS) + " |")
        L.append("")
    # Table
    hws = [half_width(r.get("ci_low"), r.get("ci_high")) for r in table]
    with_ci = [h for h in hws if h is not None]
    within = sum(h <= HALF_WIDTH_TARGET + 1e-12 for h in with_ci)
    L += ["## Paper vs run", "",
          f"{sum(r.get('status') == 'ok' for r in table)} of {len(table)} rows have a value; {len(with_ci)} have a "
          f"95% CI, {within} of them with a half-width <= {HALF_WIDTH_TARGET:.2f}. n = independent units (examples, "
          "pairs or questions) behind the row; half-width = (CI high - CI low) / 2.", "",
          "| id | claim | section | quantity | paper | ours | 95% CI | half-width | n | verdict | note |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, hw in zip(table, hws):
        ok = r.get("status") == "ok"
        ci = f"[{_fmt(r.get('ci_low'))}, {_fmt(r.get('ci_high'))}]" if hw is not None else ""
        ours = _fmt(r.get("ours")) if ok else f"*{_fmt(r.get('status'))}*"
        L.append("| " + " | ".join([_fmt(r.get("id")), _fmt(r.get("claim_id")), _fmt(r.get("section")),
                                    _fmt(r.get("comparison")), _fmt(r.get("paper")), ours, ci,
                                    f"{hw:.3f}" if hw is not None else "", _fmt(r.get("n")),
                                    _fmt(r.get("verdict")), _fmt(r.get("note"))]) + " |")
    L.append("")
    # Figures
    L += ["## Figures", ""]
    for title, names in _figure_sections(folder):
        if not names:
            continue
        L += [f"### {title}", ""]
        for n in names:
            L += [f"![{n}]({FIGDIR}/{n})", ""]
    # Times
    L += ["## Wall time per rule", ""]
    if times:
        L += ["| rule | jobs | unfinished | total (s) | longest job (s) |", "|---|---|---|---|---|"]
        for t in times:
            L.append("| " + " | ".join(_fmt(t.get(k)) for k in ("rule", "jobs", "unfinished", "total_s", "max_s"))
                     + " |")
    else:
        L.append("Not recorded (no Snakemake log of the run).")
    L.append("")
    return "\n".join(L)


#: Markers of the generated claims block in the repository's README.md (``scripts/publish_findings.py --readme``).
README_BEGIN, README_END = "<!-- findings:begin (generated by scripts/publish_findings.py) -->", \
    "<!-- findings:end -->"


def _value(r: dict) -> str:
    ci = f" [{_fmt(number(r.get('ci_low')))}, {_fmt(number(r.get('ci_high')))}]" \
        if number(r.get("ci_low")) is not None else ""
    n = number(r.get("n"))
    return f"{_fmt(number(r.get('ours')))}{ci}" + (f", n={int(n)}" if n is not None else "")


def claims_block(folder: str | Path, link: str) -> str:
    """The README's per-claim summary of a published folder: for C1–C6 the paper (Llama-2-7B) beside ours, the
    verdict of :func:`cotmech.report.claim_verdicts` and one sentence saying why (the same-quantity rows that
    decided it, each with both values, CI and n; rows of another quantity or our extensions are named as not
    counted). ``link``: the folder's path from the README."""
    folder = Path(folder)
    table = _read_csv(folder / TABLE)
    claims = _read_csv(folder / CLAIMS)
    run = json.loads((folder / RUN).read_text()) if (folder / RUN).exists() else {}
    model = run.get("model_name") or folder.name
    L = [README_BEGIN, "",
         f"Published run: [`{link}`]({link}/README.md) ({model}; its README has every row, n, CI, figures, machine "
         "and wall time). Verdicts count only rows that measure the paper's quantity.", "",
         "| claim | paper (Llama-2-7B) | ours | verdict | why |", "|---|---|---|---|---|"]
    for c in claims:
        cid = c.get("claim_id")
        rows = [r for r in table if r.get("claim_id") == cid]
        same = [r for r in rows if r.get("comparison") == "same" and r.get("status") == "ok"]
        paper = "; ".join(f"{r.get('id')}: {_fmt(r.get('paper'))}" for r in same)
        ours = "; ".join(f"{r.get('id')}: {_value(r)}" for r in same)
        verdict = c.get("verdict") or ""
        if not same:
            why = "no row of the paper's quantity has a value in this run"
        else:
            parts = [f"{k} {c.get(k)}" for k in ("agree", "differ", "inconclusive") if c.get(k)]
            why = f"{verdict}: " + "; ".join(parts)
        if c.get("not_counted"):
            why += f" (not counted: {c.get('not_counted')})"
        L.append("| " + " | ".join([f"{_fmt(cid)} {_fmt(c.get('claim'))}", paper, ours, _fmt(verdict),
                                    _fmt(why)]) + " |")
    free = [r for r in table if r.get("claim_id") not in {c.get("claim_id") for c in claims}
            and r.get("comparison") == "same" and r.get("status") == "ok"]
    if free:  # headline rows of no claim (the CoT accuracy, E1)
        L.append("| " + " | ".join(["rows of no claim", "; ".join(f"{r.get('id')}: {_fmt(r.get('paper'))}" for r in free),
                                    "; ".join(f"{r.get('id')}: {_value(r)}" for r in free), "",
                                    _fmt("; ".join(f"{r.get('id')} {r.get('verdict')}" for r in free))]) + " |")
    L += ["", README_END]
    return "\n".join(L)


def replace_block(text: str, block: str) -> str:
    """``text`` with the part from :data:`README_BEGIN` to :data:`README_END` (both included) replaced by ``block``;
    ValueError when the markers are missing or out of order."""
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        raise ValueError(f"README: markers {README_BEGIN!r} ... {README_END!r} not found in order")
    return text[:i] + block + text[j + len(README_END):]


def referenced_figures(markdown: str) -> set[str]:
    """Figure paths (``figures/<name>``) that a Markdown page links or embeds."""
    return set(re.findall(r"\]\((" + FIGDIR + r"/[^)\s]+)\)", markdown))


# --------------------------------------------------------------------------------------------------
# Sizes: the floors, what the config asks, what the run reached (where a result file says)
# --------------------------------------------------------------------------------------------------
def _removal_steps(steps: Any) -> int:
    """Removal counts above 0 of circuits.steps: a list's distinct positive counts, or ``steps`` - 1 for a number
    of evenly spaced counts over 0..all heads (distinct while there are at least as many heads as steps)."""
    if isinstance(steps, list):
        return len({s for s in steps if s > 0})
    return int(steps) - 1


#: Subtask kinds the knockout must cover when not every subtask is knocked out (the findings issue's cut).
KNOCKOUT_KINDS = ("decision", "copy", "induction")


def subtask_kinds(hops: int) -> dict[int, str]:
    """Subtask index -> kind (decision / copy / induction / label) of a ``hops``-hop paper-style CoT (the kinds do
    not depend on the example: :func:`cotmech.prontoqa.subtasks.steps` on one generated record)."""
    from .prontoqa.datasets import build_dataset
    from .prontoqa.subtasks import steps

    rec = build_dataset("kinds", {"ontology": "fictional", "hops": int(hops), "style": "paper", "n": 1}, 0)[0]
    return {s.index: s.kind for s in steps(rec)}


def sizes(mres: str | Path, cfg: dict) -> list[dict]:
    """One row per size floor of the findings issue: ``{analysis, setting, floor, configured, reached, status,
    source}``. ``reached`` is read from the run where a result file records it (accuracy.csv: examples and correct
    CoTs per dataset; circuits/operating_points.csv: the fewest held-out / ranking pairs of any knocked-out subtask),
    else empty; ``status`` is "below floor" when the reached (else the configured) size is under the floor."""
    import pandas as pd

    mres = Path(mres)
    acc = {}
    if (mres / "accuracy.csv").exists():
        df = pd.read_csv(mres / "accuracy.csv", dtype={"dataset": str, "ontology": str})
        acc = {str(r.dataset): r for r in df.itertuples(index=False)}
    ops = pd.read_csv(mres / "circuits" / "operating_points.csv") \
        if (mres / "circuits" / "operating_points.csv").exists() else None
    c, p = cfg["circuits"], cfg["patching"]
    n_ex = c["n_examples"]
    n_rank = min(max(1, int(round(c["rank_fraction"] * n_ex))), n_ex - 1) if n_ex else None
    steps = c["steps"]
    rows: list[dict] = []

    def add(analysis, setting, floor, configured, reached=None, source=""):
        size = reached if reached is not None else configured
        status = "below floor" if size is not None and floor is not None and size < floor else "ok"
        rows.append({"analysis": analysis, "setting": setting, "floor": floor, "configured": configured,
                     "reached": reached, "status": status if size is not None else "unknown", "source": source})

    for name, d in cfg["datasets"].items():
        r = acc.get(name)
        add(f"CoT accuracy ({name}): examples", f"datasets.{name}.n", 90, d["n"],
            int(r.n) if r is not None else None, "accuracy.csv" if r is not None else "")
        need = n_ex if name == c["dataset"] else (c["n_reference"] if name == c["reference"] else None)
        add(f"correct CoTs ({name})", "-", need, None, int(r.correct) if r is not None else None,
            "accuracy.csv" if r is not None else "")
    add("E2 head patching: subtasks", "patching.subtasks", 10, len(p["subtasks"]))
    add("E2 head patching: pairs per subtask", "patching.n_pairs", 20, p["n_pairs"])
    add("E2 path patching: pairs per subtask", "patching.path.n_pairs", 20, p["path"]["n_pairs"])
    add("E3 induction cloze: pairs per corruption", "patching.induction.n", 30, p["induction"]["n"])
    add("E6 knockout: subtasks", "circuits.subtasks", 10, len(c["subtasks"]),
        int(ops["subtask"].nunique()) if ops is not None and len(ops) else None,
        "circuits/operating_points.csv" if ops is not None else "")
    kinds = subtask_kinds(cfg["datasets"][c["dataset"]]["hops"])
    want = set(KNOCKOUT_KINDS)
    configured = want & {kinds.get(int(k)) for k in c["subtasks"]}
    got = want & set(ops["kind"].astype(str)) if ops is not None and "kind" in ops and len(ops) else None
    add("E6 knockout: subtask kinds (decision, copy, induction)", "circuits.subtasks", len(want), len(configured),
        len(got) if got is not None else None, "circuits/operating_points.csv" if got is not None else "")
    if rows[-2]["status"] == "below floor" and rows[-1]["status"] == "ok":
        rows[-2]["status"] = "one per kind (the issue's cut)"
    for col, what, conf in (("n_eval_examples", "held-out evaluation", None if n_ex is None else n_ex - n_rank),
                            ("n_rank_examples", "ranking", n_rank)):
        got = None
        if ops is not None and col in ops and ops[col].notna().any():
            got = int(ops[col].dropna().min())
        add(f"E6 knockout: {what} pairs per subtask (fewest)", "circuits.n_examples", 35, conf, got,
            "circuits/operating_points.csv" if got is not None else "")
    add("E6 knockout: reference pairs", "circuits.n_reference", 30, c["n_reference"])
    add("E6 knockout: removal steps", "circuits.steps", 20, _removal_steps(steps))
    add("E8 probing: questions", "probing.n_questions", 120, cfg["probing"]["n_questions"])
    add("E8 probing: shot counts", "probing.shots", 5, len(cfg["probing"]["shots"]))
    add("E9 traces: examples", "flow.n_examples", 20, cfg["flow"]["n_examples"])
    add("E10 lenses: examples per subtask and dataset", "prior_shift.max_per_subtask", 30,
        cfg["prior_shift"]["max_per_subtask"])
    add("E12 horizon: examples", "horizon.n_examples", 34, cfg["horizon"]["n_examples"])
    return rows


# --------------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------------
def read_commits(path: str | Path) -> list[str]:
    """Commits recorded by ``make findings`` (one line per start: ``<UTC time> <commit> <clean|dirty>``), distinct,
    in order, as ``<commit>`` or ``<commit> (dirty)``."""
    out: list[str] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            c = parts[1] + (" (dirty)" if len(parts) > 2 and parts[2] == "dirty" else "")
            if c not in out:
                out.append(c)
    return out


def publish(mres: str | Path, out: str | Path, config: dict, logs: Sequence[str | Path] = (),
            commits: Sequence[str] = ()) -> Path:
    """Write the findings folder ``out`` from the finished run under ``mres`` (results/<model>); returns the
    Markdown's path. Raises FileNotFoundError naming the file when the run's table is absent."""
    import yaml

    mres, out = Path(mres), Path(out)
    src = mres / "report" / TABLE
    if not src.exists():
        raise FileNotFoundError(f"{src}: no paper-vs-run table (the run has not finished its paper_table rule)")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out / TABLE)
    for name, dst in ((mres / "report" / CLAIMS, CLAIMS), (mres / RUN_INFO, RUN_INFO)):
        if name.exists():
            shutil.copyfile(name, out / dst)
        elif (out / dst).exists():
            (out / dst).unlink()
    (out / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    rows, wall = rule_times(Path(p).read_text(errors="replace") for p in logs)
    with open(out / RULE_TIMES, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["rule", "jobs", "unfinished", "total_s", "max_s"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    with open(out / SIZES, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SIZE_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(sizes(mres, config))
    run = {"model_name": config["model"]["name"], "commits": list(commits),
           "wall_s": wall if logs else None, "n_logs": len(logs)}
    (out / RUN).write_text(json.dumps(run, indent=1) + "\n")
    figdir = out / FIGDIR
    if figdir.exists():
        shutil.rmtree(figdir)
    figdir.mkdir()
    for _, rels in collect_figures(mres):
        for rel in rels:
            shutil.copyfile(mres / rel, figdir / published_name(rel))
    md = out / MARKDOWN
    md.write_text(render(out))
    return md
