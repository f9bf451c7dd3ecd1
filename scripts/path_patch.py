#!/usr/bin/env python
"""Path patching (Wang et al. 2022): do first-half heads feed second-half answer writers? (study.md C5, E2)

Senders = the top first-half heads of a subtask's activation-patching table, receivers = its top second-half
heads; per sender the normalised score of the path to the logits (all other heads frozen) and of the paths
into the receivers' queries, keys, values (and all three). Writes one long table and a sender × path figure.
"""
from __future__ import annotations

import sys

from cotmech import config
from cotmech.cli import add_model_args, check_pair_ids, check_tables, fail, load_from_args, parser, read_settings


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

    import pandas as pd

    from cotmech.io import RecordError, read_table, write_table
    from cotmech.models import ModelSpecError
    from cotmech.patching.data import load_pairs
    from cotmech.patching.path import path_figure, path_patch, path_table, pick_heads
    from cotmech.patching.run import sub_seed

    try:
        check_tables(args, "--out")
        settings = read_settings(args.settings)
        opts = config.section(settings, "patching")
        po = opts["path"]
        seed = config.value(settings, "seed")
        tables = {int(t["subtask"].iloc[0]): t for t in map(read_table, args.tables)}
        model = load_from_args(args, settings)
        parts = []
        for k in sorted(tables):
            pairs = load_pairs(args.pairs, subtask=k, limit=po["n_pairs"])
            if not pairs:
                raise RecordError(f"{args.pairs}: no pairs for subtask {k}")
            check_pair_ids(model, pairs, args.pairs)
            senders, receivers = pick_heads(tables[k], model.n_layers, po["n_senders"], po["n_receivers"])
            print(f"subtask {k}: senders {senders}, receivers {receivers}", flush=True)
            vals = path_patch(model, pairs, senders, receivers, paths=po["paths"], metric=opts["metric"],
                              direction=opts["direction"], frozen=po["frozen"])
            df = path_table(vals, senders, po["paths"], k, n_boot=opts["n_boot"], seed=sub_seed(seed, "path", k))
            act = tables[k].set_index(["layer", "head"])["score"]
            df["sender_activation_score"] = [act.get((a, b)) for a, b in zip(df["sender_layer"], df["sender_head"])]
            df["receivers"] = ";".join(f"L{a}H{b}" for a, b in receivers)
            parts.append(df)
        df = pd.concat(parts, ignore_index=True)
        write_table(args.out, df)
        if args.figure:
            path_figure(df, args.figure, "path patching")
        print(df.to_string(index=False))
    except (RecordError, ModelSpecError, ValueError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
