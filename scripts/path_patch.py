#!/usr/bin/env python
"""Path patching (Wang et al. 2022): do first-half heads feed second-half answer writers? (study.md C5, E2)

Senders = the top first-half heads of a subtask's activation-patching table, receivers = its top second-half
heads; per sender the normalised score of the path to the logits (all other heads frozen) and of the paths
into the receivers' queries, keys, values (and all three). Writes one long table and a sender × path figure.
"""
from __future__ import annotations

import sys

from cotmech import config
from cotmech.cli import add_model_args, check_tables, fail, load_from_args, parser, read_settings


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--settings", default="{}", help="JSON with 'model', 'patching', 'seed'")
    add_model_args(ap, overrides=True)
    ap.add_argument("--pairs", required=True, help="pairs JSONL (make_pairs format)")
    ap.add_argument("--tables", nargs="+", required=True,
                    help="activation-patching head tables, one per subtask (their 'subtask' column is used)")
    ap.add_argument("--out", required=True, help="path-patching table (.parquet / .csv)")
    ap.add_argument("--figure", help="figure stem (PNG + PDF)")
    args = ap.parse_args(argv)

    from cotmech.io import RecordError, read_table, write_table
    from cotmech.models import ModelSpecError
    from cotmech.patching import path
    from cotmech.patching.data import load_pairs

    try:
        check_tables(args, "--out")
        settings = read_settings(args.settings)
        cfg = config.section(settings, "patching")
        tables = {int(t["subtask"].iloc[0]): t for t in map(read_table, args.tables)}
        pairs = {k: load_pairs(args.pairs, subtask=k, limit=cfg["path"]["n_pairs"]) for k in tables}
        model = load_from_args(args, settings)
        df = path.run(model, pairs, tables, cfg, config.value(settings, "seed"), where=args.pairs)
        write_table(args.out, df)
        if args.figure:
            path.path_figure(df, args.figure, "path patching")
    except (RecordError, ModelSpecError, ValueError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
