#!/usr/bin/env python
"""Induction heads (E3): synthetic 1-hop cloze task, three corruptions, exact patching, merged score.

Modes:
  run    --raw-dir DIR [--corruption class subject property]   (writes DIR/<corruption>.safetensors and .jsonl)
  merge  --merge RAW... --out scores.parquet [--figure STEM]
(template and merge: cotmech.patching.induction)
"""
from __future__ import annotations

import sys
from pathlib import Path

from cotmech import config
from cotmech.cli import add_model_args, check_tables, fail, load_from_args, parser, read_settings


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--settings", default="{}", help="JSON with 'model', 'patching', 'seed'")
    add_model_args(ap, overrides=True)
    ap.add_argument("--corruption", nargs="+", choices=["class", "subject", "property"],
                    default=["class", "subject", "property"], help="run mode: corruption types")
    ap.add_argument("--raw-dir", help="run mode: folder for <corruption>.safetensors (per-pair values) and "
                                      "<corruption>.jsonl (the kept cloze pairs)")
    ap.add_argument("--merge", nargs="+", help="merge mode: raw files of the corruptions")
    ap.add_argument("--out", help="merge mode: scores table")
    ap.add_argument("--figure", help="merge mode: heat-map stem")
    args = ap.parse_args(argv)

    from cotmech.io import RecordError, write_jsonl, write_table
    from cotmech.models import ModelSpecError
    from cotmech.patching import induction
    from cotmech.patch_results import load_raw, save_raw
    from cotmech.patching.scores import heatmap_figure, to_matrix

    try:
        check_tables(args, "--out")
        settings = read_settings(args.settings)
        cfg, seed = config.section(settings, "patching"), config.value(settings, "seed")
        if args.merge:
            if not args.out:
                ap.error("--merge needs --out")
            df, kinds = induction.merge({path: load_raw([path]) for path in args.merge}, cfg, seed)
            write_table(args.out, df)
            if args.figure:
                heatmap_figure(to_matrix(df), args.figure,
                               f"induction score (mean of {len(kinds)} corruptions)", label="normalised KL score")
            return 0
        if not args.raw_dir:
            ap.error("run mode needs --raw-dir")
        model = load_from_args(args, settings)
        for kind, (records, res) in induction.run(model, cfg, seed, args.corruption).items():
            write_jsonl(Path(args.raw_dir) / f"{kind}.jsonl", records)
            save_raw(Path(args.raw_dir) / f"{kind}.safetensors", res)
    except (RecordError, ModelSpecError, ValueError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
