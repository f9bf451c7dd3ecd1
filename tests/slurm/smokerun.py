"""Helpers for the end-to-end tests: run the smoke study in a private copy of the repository and ask Snakemake
what it would (re)run.

A copy (not the checkout itself) is used so that touching a module or editing the config cannot disturb the
working tree; ``PYTHONPATH`` points the rules' scripts at the copy's ``src/``, so the copy is self-contained.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMOKE = "config/smoke.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
_SKIP_DIRS = {".git", ".venv", ".snakemake", ".pytest_cache", "__pycache__", ".cache", "build"}


def copy_repo(dst: Path) -> Path:
    """Copy the workflow's files (tracked and untracked-but-not-ignored, as Snakemake sees them) to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                             capture_output=True).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and not _SKIP_DIRS & set(p.relative_to(REPO).parts)
                 and not p.relative_to(REPO).parts[0].startswith("results")]
    for f in files:
        src = REPO / f
        if not src.is_file() or _SKIP_DIRS & set(Path(f).parts):
            continue
        target = dst / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dst


def env_for(workdir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(workdir / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(extra)
    return env


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 3600,
              env: dict[str, str] | None = None, config: str = SMOKE) -> subprocess.CompletedProcess:
    """Run Snakemake on the smoke config (or ``config``) in ``workdir`` (niced); raise with its output on failure."""
    cmd = ["nice", "-n", "5", *SNAKEMAKE, "--configfile", config, *args]
    p = subprocess.run(cmd, cwd=workdir, env=env or env_for(workdir), capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed in {workdir} (rc {p.returncode}):\n"
                             f"{p.stdout[-6000:]}\n{p.stderr[-8000:]}")
    return p


NOTHING = "Nothing to be done"


def planned(workdir: Path, *args: str, config: str = SMOKE) -> Counter:
    """Jobs per rule that ``snakemake --dry-run`` would run (the ``Job stats`` table); empty when nothing to do."""
    p = snakemake(workdir, "--dry-run", "--quiet", "rules", *args, config=config)
    text = p.stdout + p.stderr
    if NOTHING in text:
        return Counter()
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\s*total\s+(\d+)", text, re.S)
    if not m:
        raise AssertionError(f"no job stats in dry-run output:\n{text[-4000:]}")
    counts = Counter({name: int(n) for name, n in re.findall(r"^(\S+)\s+(\d+)\s*$", m.group(1), re.M)})
    assert sum(counts.values()) == int(m.group(2)), text
    return counts


@dataclass
class Job:
    rule: str
    outputs: list[str]
    inputs: list[str]
    shellcmd: str
    settings: dict = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)


def recorded_jobs(workdir: Path) -> list[Job]:
    """The jobs of the last run as Snakemake recorded them (``--detailed-summary``: outputs, inputs, shell)."""
    p = snakemake(workdir, "--detailed-summary")
    lines = [ln for ln in p.stdout.splitlines() if ln.count("\t") >= 7]
    assert lines and lines[0].startswith("output_file"), p.stdout[-3000:]
    jobs: dict[tuple, Job] = {}
    for ln in lines[1:]:
        out, _date, rule, logs, inputs, shellcmd, _status, _plan = ln.split("\t")[:8]
        ins = [] if inputs == "-" else inputs.split(",")
        key = (rule, inputs, shellcmd)
        if key not in jobs:
            jobs[key] = Job(rule, [], ins, shellcmd, _settings_of(shellcmd), [] if logs == "-" else logs.split(","))
        jobs[key].outputs.append(out)
    return list(jobs.values())


def _settings_of(shellcmd: str) -> dict:
    if "--settings" not in shellcmd:
        return {}
    for cmd in shellcmd.split(";"):
        try:
            toks = shlex.split(cmd)
        except ValueError:
            continue
        if "--settings" in toks:
            return json.loads(toks[toks.index("--settings") + 1])
    return {}


def downstream(jobs: list[Job], seeds: list[Job]) -> list[Job]:
    """``seeds`` and every job that consumes (transitively) one of their outputs."""
    by_output = {o: j for j in jobs for o in j.outputs}
    children: dict[int, list[Job]] = {id(j): [] for j in jobs}
    for j in jobs:
        for i in j.inputs:
            if i in by_output and by_output[i] is not j:
                children[id(by_output[i])].append(j)
    seen: dict[int, Job] = {}
    stack = list(seeds)
    while stack:
        j = stack.pop()
        if id(j) in seen:
            continue
        seen[id(j)] = j
        stack.extend(children[id(j)])
    return list(seen.values())


def uses_key(job: Job, key: str) -> bool:
    """Whether the job's settings (its params) include config ``key`` (dotted), or a section that contains it."""
    return any(k == key or key.startswith(k + ".") or k.startswith(key + ".") for k in job.settings)


def rule_counts(jobs: list[Job]) -> Counter:
    return Counter(j.rule for j in jobs)


def step_of_rules(root: Path) -> dict[str, str]:
    """rule name -> step (its rule file's stem), read from workflow/rules/*.smk."""
    out = {}
    for f in sorted((root / "workflow" / "rules").glob("*.smk")):
        for name in re.findall(r"^(?:rule|checkpoint)\s+(\w+)\s*:", f.read_text(), re.M):
            out[name] = f.stem
    return out


_BASE: dict[str, Path] = {}


def base_run() -> Path:
    """A copy of the repository with the whole smoke study run locally once (cached for the test session)."""
    if "base" not in _BASE:
        tmp = Path(tempfile.mkdtemp(prefix="cotmech-smoke-"))
        atexit.register(shutil.rmtree, tmp, True)
        wd = copy_repo(tmp / "base")
        snakemake(wd, "--cores", "2")
        _BASE["base"] = wd
    return _BASE["base"]


def clone_run(name: str) -> Path:
    """A fresh copy of the finished base run (files, mtimes and Snakemake's records) to modify."""
    base = base_run()
    dst = base.parent / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(base, dst, symlinks=True)
    return dst


def result_files(root: Path, results: str = "results-smoke") -> dict[str, Path]:
    """Tables and tensors of a run, by path relative to the results folder (logs and figures excluded)."""
    base = root / results
    keep = {".parquet", ".csv", ".tsv", ".json", ".jsonl", ".safetensors"}
    return {str(p.relative_to(base)): p for p in sorted(base.rglob("*"))
            if p.is_file() and p.suffix in keep and "logs" not in p.relative_to(base).parts}


def smoke_results_dir() -> str:
    import yaml

    return yaml.safe_load((REPO / SMOKE).read_text())["results"]


_CLOCK = re.compile(r"(time|elapsed|seconds|duration|wall|timestamp|date|host|pid|_s$)", re.I)


def _no_clock(obj):
    """Drop wall-clock and machine fields (they differ between any two runs) from parsed JSON."""
    if isinstance(obj, dict):
        return {k: _no_clock(v) for k, v in obj.items() if not _CLOCK.search(str(k))}
    if isinstance(obj, list):
        return [_no_clock(v) for v in obj]
    return obj


def compare_results(a: Path, b: Path, results: str | None = None) -> list[str]:
    """Differences between the tables/tensors of two runs (empty list = equal). Parquet/CSV compare as frames
    (floats to 1e-6 relative), JSON/JSONL as parsed records, safetensors tensor by tensor; wall-clock fields
    (names with time/elapsed/seconds/..., see _CLOCK) are left out."""
    import numpy as np
    import pandas as pd

    results = results or smoke_results_dir()
    fa, fb = result_files(a, results), result_files(b, results)
    diffs = [f"only in {a.name}: {k}" for k in sorted(set(fa) - set(fb))]
    diffs += [f"only in {b.name}: {k}" for k in sorted(set(fb) - set(fa))]
    for k in sorted(set(fa) & set(fb)):
        pa, pb = fa[k], fb[k]
        try:
            if pa.suffix in {".parquet", ".csv", ".tsv"}:
                reader = {".parquet": pd.read_parquet, ".csv": pd.read_csv,
                          ".tsv": lambda p: pd.read_csv(p, sep="\t")}[pa.suffix]

                def read(p):
                    try:
                        return reader(p)
                    except pd.errors.EmptyDataError:  # a CSV table with neither rows nor columns
                        return pd.DataFrame()

                da, db = read(pa), read(pb)
                da = da[[c for c in da.columns if not _CLOCK.search(str(c))]]
                db = db[[c for c in db.columns if not _CLOCK.search(str(c))]]
                pd.testing.assert_frame_equal(da, db, check_exact=False, rtol=1e-6, atol=1e-9)
            elif pa.suffix == ".safetensors":
                from safetensors.numpy import load_file

                ta, tb = load_file(str(pa)), load_file(str(pb))
                assert ta.keys() == tb.keys(), f"tensor names {sorted(ta)} vs {sorted(tb)}"
                for name in ta:
                    np.testing.assert_allclose(ta[name].astype(np.float64), tb[name].astype(np.float64),
                                               rtol=1e-5, atol=1e-7, err_msg=name)
            elif pa.suffix == ".jsonl":
                ra = [_no_clock(json.loads(x)) for x in pa.read_text().splitlines() if x.strip()]
                rb = [_no_clock(json.loads(x)) for x in pb.read_text().splitlines() if x.strip()]
                assert ra == rb, f"{len(ra)} vs {len(rb)} records, first differing index " \
                                 f"{next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), None)}"
            else:
                assert _no_clock(json.loads(pa.read_text())) == _no_clock(json.loads(pb.read_text()))
        except AssertionError as e:
            diffs.append(f"{k}: {str(e)[:500]}")
    return diffs


def dry_run_jobs(config: str, workdir: Path = REPO) -> list[dict]:
    """Every job of the DAG for ``config`` (a forced dry run): rule, resources and the settings it passes."""
    p = subprocess.run([*SNAKEMAKE, "--configfile", config, "--dry-run", "--forceall", "--nolock",
                        "--printshellcmds"], cwd=workdir, env=env_for(workdir), capture_output=True, text=True,
                       timeout=600)
    text = p.stdout + p.stderr
    if p.returncode != 0:
        raise AssertionError(f"dry run with {config} failed:\n{text[-5000:]}")
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?(?:rule|checkpoint) \w+:\n)", text)[1:]:
        m = re.search(r"^(local)?(?:rule|checkpoint) (\w+):", block, re.M)
        if not m:
            continue
        res = {}
        r = re.search(r"^\s+resources: (.*)$", block, re.M)
        for item in (r.group(1).split(", ") if r else []):
            k, _, v = item.partition("=")
            try:
                res[k] = int(v)
            except ValueError:
                res[k] = v
        t = re.search(r"^\s+threads: (\d+)$", block, re.M)
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        field = {k: (v.group(1) if v else "") for k in ("input", "output", "wildcards")
                 for v in [re.search(rf"^\s+{k}: (.*)$", block, re.M)]}
        jobs.append({"rule": m.group(2), "local": bool(m.group(1)), "resources": res,
                     "threads": int(t.group(1)) if t else 1, "wildcards": field["wildcards"],
                     "inputs": [x for x in field["input"].split(", ") if x],
                     "outputs": [x for x in field["output"].split(", ") if x],
                     "shellcmd": cmd.group(1) if cmd else "",
                     "settings": _settings_of(cmd.group(1)) if cmd else {}})
    return jobs


def affected_by_config_change(workdir: Path, old: str, new: str) -> Counter:
    """Jobs per rule that must rerun when the config changes from ``old`` to ``new``: the jobs whose command or
    outputs differ (or that are new) in forced dry runs of the two configs, and everything downstream of them."""
    before = {(j["rule"], j["wildcards"]): j for j in dry_run_jobs(old, workdir)}
    after = dry_run_jobs(new, workdir)
    seeds = [j for j in after if (j["rule"], j["wildcards"]) not in before
             or before[(j["rule"], j["wildcards"])]["shellcmd"] != j["shellcmd"]
             or before[(j["rule"], j["wildcards"])]["outputs"] != j["outputs"]]
    graph = [Job(j["rule"], j["outputs"], j["inputs"], j["shellcmd"]) for j in after]
    index = {id(j): g for j, g in zip(after, graph)}
    return Counter(g.rule for g in downstream(graph, [index[id(j)] for j in seeds]) if g.rule != "all")
