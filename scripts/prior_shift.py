#!/usr/bin/env python
"""Layer-wise prior shift (study.md E10, C4): logit/tuned-lens curves per dataset, then the rift summary.

  prior_shift.py dataset --pairs P --activations A.safetensors --index A.parquet [--tuned-lens T --tuned-report R] \
      --settings JSON --dataset NAME --table OUT.parquet --rows OUT.rows.parquet --figure STEM
  prior_shift.py rift --rows D1.rows.parquet [D2.rows.parquet ...] [--tuned-report R] --settings JSON --out rift.json \
      --figure STEM

`dataset` reads each pair's residual stream at its predicting position through the logit lens (and the tuned
lens if given): answer probability and rank, context abidance, JS divergence to the final and to the
context-free prior, the lens's preference for the in-context answer over the prior's prediction, the real-world
answer on false-ontology prompts. `rift` finds the lens rift — our extension, not the paper's statistic (that is
the trace statistic of trace_flow.py) — with a cluster-bootstrap CI (definitions: cotmech.prior_shift). The tuned
lens is evaluated only on the examples held out from its training (--tuned-report, ``heldout_examples``).
"""
from __future__ import annotations

import argparse
import sys

from cotmech import config
from cotmech.cli import add_activation_args, add_model_args, check_tables, fail, load_from_args, parser, read_settings


def _dataset(args: argparse.Namespace, settings: dict) -> None:
    from cotmech.io import write_table
    from cotmech.lens import load_tuned_lens
    from cotmech.prior_shift import load_activations, plot_curves, run

    tensors, index = load_activations(args.pairs, args.activations, args.index, keys=("resid",))
    model = load_from_args(args, settings)
    tuned = load_tuned_lens(args.tuned_lens) if args.tuned_lens else None
    if tuned is not None and (tuned.n_layers, tuned.d_model) != (model.n_layers, model.d_model):
        raise ValueError(f"{args.tuned_lens}: tuned lens is for {tuned.n_layers} layers × d {tuned.d_model}, "
                         f"model has {model.n_layers} × {model.d_model}")
    frame, table = run(model, tensors["resid"], index, config.section(settings, "prior_shift"),
                       config.value(settings, "seed"), dataset=args.dataset, tuned=tuned,
                       heldout=_heldout(args.tuned_report) if tuned is not None else None, where=args.pairs)
    write_table(args.rows, frame)
    write_table(args.table, table)
    plot_curves(table, args.dataset, args.figure)


def _heldout(path: str | None) -> list[str]:
    """The examples held out from tuned-lens training (train_tuned_lens.py's report)."""
    from cotmech.io import RecordError, read_json

    if not path:
        raise ValueError("--tuned-lens needs --tuned-report (the examples held out from its training)")
    rep = read_json(path)
    if not isinstance(rep.get("heldout_examples"), list):
        raise RecordError(f"{path}: no 'heldout_examples' list (tuned lens trained by an older train_tuned_lens.py?)")
    return rep["heldout_examples"]


def _rift(args: argparse.Namespace, settings: dict) -> None:
    from cotmech.io import RecordError, read_table, write_json
    from cotmech.prior_shift import ROWS_COLUMNS, plot_curves, rift

    frames = []
    for p in args.rows:
        df = read_table(p)
        for col in ROWS_COLUMNS:
            if col not in df.columns:
                raise RecordError(f"{p}: missing column {col!r} (not a prior_shift rows table?)")
        frames.append(df)
    tuned = any((df["lens"] == "tuned").any() for df in frames)
    out, table = rift(frames, config.section(settings, "prior_shift"), config.value(settings, "seed"),
                      heldout=_heldout(args.tuned_report) if tuned else None)
    write_json(args.out, out)
    rifts = {lens: v["rift_layer"] for lens, v in out["datasets"]["all"].items()}
    plot_curves(table, "all datasets", args.figure, rifts)
    n_layers = out["n_layers"]
    for lens, v in out["datasets"]["all"].items():
        print(f"{lens} lens (extension): rift layer {v['rift_layer']} of {n_layers} "
              f"(CI {v['ci_low']}–{v['ci_high']}), "
              f"context abidance below/above: {v['context_abidance_rift']['below']['mean']} / "
              f"{v['context_abidance_rift']['above']['mean']}")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dataset", help="lens curves of one dataset")
    add_activation_args(d)
    d.add_argument("--tuned-lens", default=None, help="translators from train_tuned_lens.py (optional)")
    d.add_argument("--tuned-report", default=None, help="its report (tuned_lens.json: held-out examples)")
    d.add_argument("--dataset", required=True, help="dataset name (a column of the tables)")
    d.add_argument("--table", required=True, help="per-layer table (.parquet)")
    d.add_argument("--rows", required=True, help="per-(pair, layer) table (.parquet)")
    d.add_argument("--figure", required=True, help="figure stem (PNG + PDF)")
    add_model_args(d)
    r = sub.add_parser("rift", help="rift layer and context-abidance splits over datasets")
    r.add_argument("--rows", nargs="+", required=True, help="per-(pair, layer) tables of the datasets")
    r.add_argument("--tuned-report", default=None, help="tuned_lens.json (held-out examples); needed with tuned rows")
    r.add_argument("--out", required=True, help="rift.json")
    r.add_argument("--figure", required=True, help="figure stem (PNG + PDF)")
    for p in (d, r):
        p.add_argument("--settings", required=True, help="JSON with 'model', 'prior_shift', 'seed'")
    args = ap.parse_args(argv)

    from cotmech.io import RecordError
    from cotmech.unembed import LensError
    from cotmech.models import ModelSpecError

    try:
        if args.cmd == "dataset":
            check_tables(args, "--table", "--rows")
        settings = read_settings(args.settings)
        (_dataset if args.cmd == "dataset" else _rift)(args, settings)
    except (RecordError, ModelSpecError, LensError, ValueError, FileNotFoundError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
