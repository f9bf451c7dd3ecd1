#!/usr/bin/env python
"""Run the study of a config at two commits and compare their tables: the "same tables as before" check of a
refactoring (a code change that must not change a number).

Each commit is exported (``git archive``) into its own folder under ``--workdir``, the study runs there with
``--cores`` (its scripts import that folder's ``src/``), and every table/tensor of the two results folders is
compared as the end-to-end tests compare runs (``tests/slurm/smokerun.py``: frames to 1e-6 relative, tensors to
1e-5, JSON as parsed records, wall-clock fields left out). Prints one line per difference and a summary; writes
``--out`` (CSV: file, status, detail). Exit 0 when the runs are equal, 1 when they differ.

  python dev/compare_study.py 7d331d8 HEAD                      # config/smoke.yaml (tiny random model), minutes
  python dev/compare_study.py v1 v2 --config config.yaml --cores 2
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "slurm"))

import smokerun as sr  # noqa: E402


def export(rev: str, dst: Path) -> str:
    """The tree of ``rev`` in ``dst``; returns the full commit hash."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    tar = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, check=True, capture_output=True).stdout
    dst.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(dst, filter="data")
    return commit


def results_dir(root: Path, config: str) -> str:
    import yaml

    merged = {}
    for f in (root / "config.yaml", root / config):
        merged.update(yaml.safe_load(f.read_text()) or {})
    return merged["results"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", help="commit (or any git revision) before the change")
    ap.add_argument("new", help="commit after the change")
    ap.add_argument("--config", default=sr.SMOKE, help="config file, relative to the repository (default: smoke)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="where the two runs go (default: a new temporary folder)")
    ap.add_argument("--out", default=None, help="CSV of the comparison (file, status, detail)")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cotmech-compare-"))
    runs, commits = {}, {}
    for side in ("old", "new"):
        wd = work / side
        commits[side] = export(getattr(args, side), wd)
        t0 = time.time()
        sr.snakemake(wd, "--cores", str(args.cores), config=args.config, timeout=6 * 3600)
        print(f"{side} {commits[side][:10]}: study ran in {time.time() - t0:.0f} s ({wd})", flush=True)
        runs[side] = wd
    res = results_dir(runs["new"], args.config)
    if res != results_dir(runs["old"], args.config):
        raise SystemExit(f"{args.config}: the two commits write to different results folders")
    files = sorted(set(sr.result_files(runs["old"], res)) | set(sr.result_files(runs["new"], res)))
    diffs = sr.compare_results(runs["old"], runs["new"], res)
    differing = {d.split(":")[0].replace("only in old: ", "").replace("only in new: ", ""): d for d in diffs}
    rows = [{"file": f, "status": "differs" if f in differing else "equal", "detail": differing.get(f, "")}
            for f in files]
    for d in diffs:
        print(d)
    print(f"{args.config}: {commits['old'][:10]} vs {commits['new'][:10]}: {len(files)} tables/tensors compared, "
          f"{len(diffs)} difference(s)")
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["file", "status", "detail"])
            w.writeheader()
            w.writerows(rows)
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
