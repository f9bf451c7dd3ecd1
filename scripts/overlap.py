#!/usr/bin/env python
"""Overlap of the kept-head sets (E7) and the knockout figures (F-knock, F-overlap).

Reads --dir/{curves.parquet, operating_points.csv, heads.parquet} (written by knockout.py) and writes
overlap.parquet (pairwise intersection/union/Jaccard across subtasks and rankings, with the random-set
expectation), reuse.csv (the paper's reported reuse groups vs other subtask pairs), knockout_<kind>.png/.pdf
per subtask family (decision, copy, induction) and overlap.png/.pdf.
"""
from __future__ import annotations

import sys

from cotmech import circuits, config
from cotmech.cli import fail, parser, read_settings
from cotmech.io import RecordError, read_table, write_table


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--dir", required=True, help="folder with knockout.py's outputs; outputs go here too")
    ap.add_argument("--n-heads-total", type=int, help="heads of the model (default: read from heads.parquet)")
    ap.add_argument("--settings", default="{}", help="JSON with the 'circuits' section (what the rule passes)")
    args = ap.parse_args(argv)
    try:
        cfg = config.section(read_settings(args.settings), "circuits")
    except (RecordError, ValueError) as e:
        return fail(e)
    curves = read_table(f"{args.dir}/curves.parquet")
    ops = read_table(f"{args.dir}/operating_points.csv")
    heads = read_table(f"{args.dir}/heads.parquet")
    if curves.empty:
        return fail(f"{args.dir}/curves.parquet is empty (no subtask had pairs)")
    ov, reuse, n_total = circuits.overlap(heads, cfg, args.n_heads_total)
    write_table(f"{args.dir}/overlap.parquet", ov)
    write_table(f"{args.dir}/reuse.csv", reuse)
    for kind in circuits.FAMILIES:
        circuits.plot_curves(curves, ops, kind, n_total, f"{args.dir}/knockout_{kind}")
    circuits.plot_overlap(ov, sorted(curves["subtask"].unique()), f"{args.dir}/overlap")
    print(reuse.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
