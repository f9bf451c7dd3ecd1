"""Mutation testing of the analysis modules (``make mutants``; not part of CI). See docs/MUTATION.md.

Each module is mutated on its own, in its own copy of the tracked tree (``mutants-work/<module>/``), against its
fast test subset: mutmut records which of those tests call each mutated function and runs only them per mutant.
The shared pytest options come from ``[tool.mutmut]`` in pyproject.toml; this script sets ``only_mutate`` and the
test selection per module, runs ``mutmut run``, and writes ``mutants-work/<module>/summary.json`` (counts, score,
surviving mutants with their diffs) and a markdown row per module to stdout.

    python dev/mutants.py [--jobs N] [--only GLOB ...] [module ...]   # default: every module in MODULES

``--only`` limits a run to mutants whose names match (mutmut's names: ``cotmech.<module>.x_<function>__mutmut_<n>``,
e.g. ``'cotmech.prior_shift.x_boot_mean*'``); the rest stay "not checked" and out of the score.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: module -> (files to mutate, fast tests that exercise them)
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "stats": (["src/cotmech/stats.py"], ["tests/test_stats.py"]),
    "prior_shift": (["src/cotmech/prior_shift.py"], ["tests/test_prior_shift.py", "tests/test_stats.py"]),
    "roles": (["src/cotmech/roles.py"], ["tests/test_roles.py", "tests/test_stats.py"]),
    "report": (["src/cotmech/report.py"], ["tests/test_report.py"]),
    "lens": (["src/cotmech/lens.py"], ["tests/test_lens.py"]),
    "circuits": (["src/cotmech/circuits.py"], ["tests/test_circuits.py", "tests/test_config.py"]),
    "probing": (["src/cotmech/probing.py"], ["tests/test_probing.py"]),
    "flow": (["src/cotmech/flow.py"], ["tests/test_flow.py"]),
    "patching": (["src/cotmech/patching/*"], ["tests/test_patching.py", "tests/test_patching_data_scores.py",
                                               "tests/test_patching_induction.py", "tests/test_patching_path.py"]),
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def _toml_section(cfg: dict) -> str:
    lines = ["[tool.mutmut]"]
    for k, v in cfg.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def prepare(module: str, work: Path, keep: bool = False) -> None:
    """A fresh copy of the tracked tree with [tool.mutmut] narrowed to ``module`` and its tests. ``keep`` updates an
    existing copy in place instead, so mutmut resumes with its verdicts (it does not re-check them when only the
    tests changed: use it to continue an interrupted run, not after editing tests)."""
    files, tests = MODULES[module]
    if work.exists() and not keep:
        shutil.rmtree(work)
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, tracked):
        src = REPO / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    # the tests look for ../shared beside the checkout; from a git worktree, beside the main checkout
    common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.strip()
    for shared in (REPO.parent / "shared", Path(common).parent.parent / "shared"):
        if shared.is_dir() and not (work / "shared").exists():
            os.symlink(shared.resolve(), work / "shared")
    pyproject = (work / "pyproject.toml").read_text()
    cfg = tomllib.loads(pyproject)["tool"]["mutmut"]
    cfg["only_mutate"] = files
    cfg["pytest_add_cli_args_test_selection"] = tests
    head, sep, tail = pyproject.partition("[tool.mutmut]")
    rest = tail.split("\n[", 1)
    (work / "pyproject.toml").write_text(head + _toml_section(cfg) + ("\n[" + rest[1] if len(rest) > 1 else ""))


def summarise(module: str, work: Path, seconds: float) -> dict:
    counts: dict[str, int] = {}
    survivors = []
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        for name, code in data["exit_code_by_key"].items():
            status = STATUS.get(code, "suspicious")
            counts[status] = counts.get(status, 0) + 1
            if status == "survived":
                survivors.append(name)
    diffs = {}
    for name in survivors:
        r = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True)
        diffs[name] = r.stdout
    killed, survived = counts.get("killed", 0) + counts.get("timeout", 0), counts.get("survived", 0)
    out = {"module": module, "counts": counts, "score": killed / (killed + survived) if killed + survived else None,
           "seconds": round(seconds), "survivors": diffs}
    (work / "summary.json").write_text(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", default=list(MODULES))
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel (mutmut --max-children)")
    ap.add_argument("--work", type=Path, default=REPO / "mutants-work")
    ap.add_argument("--only", nargs="+", default=[], metavar="GLOB", help="mutant-name globs (see above)")
    ap.add_argument("--keep", action="store_true", help="resume in the existing work copies (see prepare)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="time budget per module: stop mutmut then and score the mutants checked so far")
    a = ap.parse_args(argv)
    bad = [m for m in a.modules if m not in MODULES]
    if bad:
        ap.error(f"unknown module(s) {bad}; choose from {', '.join(MODULES)}")
    print("| module | mutants | checked | killed | timeout | survived | no tests | score | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for module in a.modules:
        work = a.work / module
        prepare(module, work, a.keep)
        t0 = time.time()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
        with open(work / "mutmut.log", "w") as log:
            only = [g for g in a.only if g.startswith(f"cotmech.{module}.")]
            if a.only and not only:
                continue
            proc = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children", str(a.jobs), *only],
                                    cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=None if a.minutes is None else 60 * a.minutes)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)  # mutmut and its workers (their own session)
                proc.wait()
        s = summarise(module, work, time.time() - t0)
        c = s["counts"]
        score = "n/a" if s["score"] is None else f"{100 * s['score']:.0f}%"
        checked = sum(c.values()) - c.get("not checked", 0)
        print(f"| {module} | {sum(c.values())} | {checked} | {c.get('killed', 0)} | {c.get('timeout', 0)} "
              f"| {c.get('survived', 0)} | {c.get('no tests', 0)} | {score} | {s['seconds'] / 60:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
