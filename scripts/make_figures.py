#!/usr/bin/env python
"""Cross-analysis figures from rule outputs (study.md §7; cotmech.figures), PNG + PDF.

  make_figures.py flow --flowdir D --pairs P --generations G --outdir O [--trees N]
      F-task (task.*), F-depth (depth.*), F-source (sources.*, source_heads.*), F-rift (rift_heads.*), F-attn (attention.*),
      F-flow (flow_tree_<i>.*, N trees: the first pairs of the first example)
  make_figures.py horizon --summary horizon.csv [--n-layers L] --out STEM
      F-horizon
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cotmech.cli import fail, parser


def _flow(args: argparse.Namespace) -> None:
    from cotmech import figures
    from cotmech.io import read_json, read_jsonl, read_table

    d, out = Path(args.flowdir), Path(args.outdir)
    traces = read_jsonl(d / "traces.jsonl")
    if not traces:
        msg = f"no traced pairs in {d} (no correctly solved example?)"
        for name in ("depth", "sources", "source_heads", "rift_heads", "attention", "task"):
            figures.empty(out / name, msg)
        for i in range(args.trees):
            figures.empty(out / f"flow_tree_{i}", msg)
        print(msg)
        return
    L, H = int(traces[0]["n_layers"]), int(traces[0]["n_heads"])
    summary = read_json(d / "summary.json")
    figures.depth_maps(read_table(d / "depth_maps.parquet"), read_table(d / "depth_summary.csv"), L, H, out / "depth")
    figures.answer_sources(read_table(d / "sources.csv"), out / "sources")
    figures.head_sources(read_table(d / "head_sources.parquet"), L, H, out / "source_heads")
    figures.rift(read_table(d / "head_context.parquet"), read_table(d / "context_layers.csv"), L, H,
                 out / "rift_heads", split=summary.get("split_layer"))
    figures.attention(read_table(d / "attention.parquet"), out / "attention")
    for i in range(args.trees):
        if i < len(traces):
            figures.flow_tree(traces[i], out / f"flow_tree_{i}")
        else:
            figures.empty(out / f"flow_tree_{i}", f"only {len(traces)} traces")
    ex = traces[0]["example_id"]
    gens = {r["id"]: r for r in read_jsonl(args.generations)}
    if ex not in gens:
        raise ValueError(f"{args.generations}: no generation record {ex!r}")
    pairs = [p for p in read_jsonl(args.pairs) if p["example_id"] == ex]
    figures.task_example(gens[ex], pairs, out / "task")
    print(f"figures for {len(traces)} traces written to {out}")


def _horizon(args: argparse.Namespace) -> None:
    from cotmech import figures
    from cotmech.io import read_table

    table = read_table(args.summary)
    n_layers = args.n_layers or (int(table["n_layers"].dropna().iloc[0]) if "n_layers" in table and
                                 table["n_layers"].notna().any() else None)
    if table.empty:
        figures.empty(args.out, f"no horizon examples in {args.summary} (no correctly solved example?)")
        return
    if not n_layers:
        raise ValueError(f"{args.summary}: no n_layers column; pass --n-layers")
    figures.horizon(table, n_layers, args.out)
    print(f"wrote {args.out}.png/.pdf")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flow", help="F-task, F-depth, F-source, F-rift, F-attn, F-flow")
    f.add_argument("--flowdir", required=True)
    f.add_argument("--pairs", required=True)
    f.add_argument("--generations", required=True)
    f.add_argument("--outdir", required=True)
    f.add_argument("--trees", type=int, default=3)
    h = sub.add_parser("horizon", help="F-horizon")
    h.add_argument("--summary", required=True)
    h.add_argument("--n-layers", type=int, help="default: the table's n_layers column")
    h.add_argument("--out", required=True, help="figure stem")
    args = ap.parse_args(argv)
    try:
        {"flow": _flow, "horizon": _horizon}[args.cmd](args)
    except (ValueError, KeyError, OSError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
