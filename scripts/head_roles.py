#!/usr/bin/env python
"""Answer-writer (study.md E4) and copy (E5) head scores of one dataset, from its activations (claim C5).

  head_roles.py --pairs P --activations A.safetensors --index A.parquet --settings JSON --outdir DIR

Writes DIR/writers.parquet and DIR/copy.parquet (subtask, layer, head, score + components; subtask -1 =
merged; higher = more important), DIR/summary.json (share of the top-k heads in the second half, with a
cluster-bootstrap CI, next to the paper's 99.1%) and layer × head maps DIR/writers.{png,pdf}, DIR/copy.{png,pdf}.
Definitions: cotmech.roles.
"""
from __future__ import annotations

import sys
from pathlib import Path

from cotmech import config
from cotmech.cli import add_activation_args, add_model_args, fail, load_from_args, parser, read_settings


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_activation_args(ap)
    ap.add_argument("--settings", required=True, help="JSON with 'model', 'roles', 'seed'")
    ap.add_argument("--outdir", required=True, help="output folder (results/<model>/roles/<dataset>)")
    add_model_args(ap)
    args = ap.parse_args(argv)

    from cotmech import roles
    from cotmech.io import RecordError, write_json, write_table
    from cotmech.unembed import LensError
    from cotmech.models import ModelSpecError
    from cotmech.prior_shift import load_activations

    try:
        settings = read_settings(args.settings)
        tensors, index = load_activations(args.pairs, args.activations, args.index,
                                          keys=("resid", "attn_out", "z", "attn"))
        model = load_from_args(args, settings)
        writers, copy, summary = roles.run(model, tensors, index, config.section(settings, "roles"),
                                           config.value(settings, "seed"), where=args.pairs)
    except (RecordError, ModelSpecError, LensError, ValueError, FileNotFoundError) as e:
        return fail(e)
    out = Path(args.outdir)
    write_table(out / "writers.parquet", writers)
    write_table(out / "copy.parquet", copy)
    write_json(out / "summary.json", summary)
    roles.plot_maps(writers, "answer writers", out / "writers")
    roles.plot_maps(copy, "copy heads", out / "copy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
