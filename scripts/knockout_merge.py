#!/usr/bin/env python
"""Merge the per-subtask knockout results (one knockout.py job per subtask) into one set of tables.

Reads curves.parquet, operating_points.csv, heads.parquet, isolation.csv and cross_removal.csv from every --part
folder (a subtask without enough pairs left empty tables) and writes them, ordered by subtask, into --out-dir:
  knockout_merge.py --part results/M/circuits/parts/subtask0 --part results/M/circuits/parts/subtask1 \
      --out-dir results/M/circuits
"""
from __future__ import annotations

import sys
from pathlib import Path

from cotmech import circuits
from cotmech.cli import fail, parser
from cotmech.io import write_table

FILES = circuits.KNOCKOUT_FILES


def read_part(folder: Path) -> dict:
    """One subtask's tables; an empty CSV (a skipped subtask) reads as an empty table."""
    import pandas as pd

    out = {}
    for name, file in FILES.items():
        path = folder / file
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (knockout.py writes it for every subtask)")
        if path.suffix == ".parquet":
            out[name] = pd.read_parquet(path)
        else:
            try:
                out[name] = pd.read_csv(path)
            except pd.errors.EmptyDataError:
                out[name] = pd.DataFrame()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--part", action="append", required=True, help="folder of one subtask's knockout.py outputs")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    try:
        merged = circuits.merge_knockout([read_part(Path(p)) for p in args.part])
    except (FileNotFoundError, ValueError) as e:
        return fail(e)
    for name, file in FILES.items():
        write_table(f"{args.out_dir}/{file}", merged[name])
    ops = merged["operating_points"]
    print(f"{len(args.part)} part(s), {ops['subtask'].nunique() if len(ops) else 0} subtask(s) with curves")
    if len(ops):
        print(ops.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
