#!/usr/bin/env python
"""Activations of every pair's clean input at its predicting position (activations contract of docs/DESIGN.md).

Writes <out>.safetensors (resid [N, L+1, d_model], attn_out [N, L, d_model], z [N, L, H, d_head],
attn [N, L, H, S]; float32) and the index table (row, pair_id, example_id, subtask, kind, length, answer_id,
answer_pos) as parquet; row i of every tensor is row i of the index.
"""
from __future__ import annotations

import os
import sys

from cotmech import config
from cotmech.cli import add_model_args, check_tables, fail, load_from_args, parser, read_settings


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--pairs", required=True, help="pairs (results/<model>/pairs/<dataset>.jsonl)")
    ap.add_argument("--settings", required=True, help="JSON with 'model' and 'activations' (what the rule passes)")
    ap.add_argument("--out", required=True, help="tensors (.safetensors)")
    ap.add_argument("--index", required=True, help="index table (.parquet)")
    add_model_args(ap)
    args = ap.parse_args(argv)

    from cotmech import activations
    from cotmech.io import RecordError, read_jsonl, save_tensors, write_table
    from cotmech.models import ModelSpecError

    try:
        check_tables(args, "--index")
        settings = read_settings(args.settings)
        cfg = config.section(settings, "activations")
        pairs = read_jsonl(args.pairs)
        if not pairs:
            raise RecordError(f"{args.pairs}: no pairs (no example was solved exactly? see the make_pairs log)")
        model = load_from_args(args, settings)
        acts, index = activations.run(model, pairs, cfg, where=args.pairs)
    except (RecordError, ModelSpecError, ValueError) as e:
        return fail(e)
    # the pairs file relative to the output's folder: the same bytes wherever the results folder lies
    meta = {"spec": model.spec, "dtype": str(model.dtype),
            "pairs": os.path.relpath(os.path.abspath(args.pairs), os.path.dirname(os.path.abspath(args.out)))}
    save_tensors(args.out, acts, metadata=meta)
    write_table(args.index, index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
