#!/usr/bin/env python
"""Head-level activation patching (E2): every head of the model, per subtask (study.md E2, §5).

Three modes:
  run    --pairs PAIRS.jsonl --method naive|exact|atp|screened [--subtask K] [--shard I/N]
         (--out TABLE.parquet [--figure STEM]) and/or (--raw SHARD.safetensors)
  merge  --merge SHARD... --subtask K --out TABLE.parquet [--figure STEM]
  compare --exact TABLE... --atp TABLE... --out atp_vs_exact.csv     (Spearman per subtask)

Standalone example (every pair of subtask 0 in the file unless --n-pairs N is given; the table's column ``n`` and
the log say how many were used):
  scripts/patch_heads.py --model random:tiny-llama --pairs results/m/pairs/fictional.jsonl --method exact \
      --subtask 0 --out /tmp/subtask0.parquet
"""
from __future__ import annotations

import sys

from cotmech import config
from cotmech.cli import add_model_args, check_pair_ids, check_tables, fail, load_from_args, parser, read_settings


def _n_pairs(text: str) -> int | None:
    import argparse

    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--settings", default="{}", help="JSON with 'model', 'patching', 'seed' (what the rule passes)")
    add_model_args(ap, overrides=True)
    ap.add_argument("--pairs", help="pairs JSONL in the make_pairs format")
    ap.add_argument("--method", choices=["naive", "exact", "atp", "screened"], help="default: settings patching.method")
    ap.add_argument("--subtask", type=int, help="only pairs of this subtask (also the table's subtask)")
    ap.add_argument("--n-pairs", type=_n_pairs, default=None, metavar="N|all",
                    help="use the first N pairs of the subtask (default: every pair in --pairs; the workflow passes "
                         "patching.n_pairs)")
    ap.add_argument("--shard", default="0/1", help="I/N: the I-th of N contiguous ranges of the selected pairs")
    ap.add_argument("--raw", help="write per-pair metric values here (.safetensors) for a later merge")
    ap.add_argument("--atp-raw", help="also run AtP on the same pairs (same model load) and write its raw values here")
    ap.add_argument("--out", help="head table (.parquet or .csv)")
    ap.add_argument("--figure", help="heat-map stem (PNG + PDF)")
    ap.add_argument("--merge", nargs="+", help="merge raw shards instead of running a model")
    ap.add_argument("--exact", nargs="+", help="compare mode: exact head tables")
    ap.add_argument("--atp", nargs="+", help="compare mode: AtP head tables")
    args = ap.parse_args(argv)

    from cotmech.io import RecordError, read_jsonl, read_table, write_table
    from cotmech.models import ModelSpecError
    from cotmech.patching.data import load_pairs
    from cotmech.patch_results import load_raw, save_raw
    from cotmech.patching.run import run, write_scores
    from cotmech.patching.scores import spearman_table

    try:
        check_tables(args, "--out")
        settings = read_settings(args.settings)
        opts = config.section(settings, "patching")
        seed = config.value(settings, "seed")
        if args.exact or args.atp:
            if not (args.exact and args.atp and args.out):
                ap.error("compare mode needs --exact, --atp and --out")
            ex = {int(t["subtask"].iloc[0]): t for t in map(read_table, args.exact)}
            at = {int(t["subtask"].iloc[0]): t for t in map(read_table, args.atp)}
            if set(ex) != set(at):
                raise ValueError(f"exact tables cover subtasks {sorted(ex)}, AtP tables {sorted(at)}")
            df = spearman_table(ex, at)
            write_table(args.out, df)
            print(df.to_string(index=False))
            return 0
        if args.merge:
            if args.subtask is None or not args.out:
                ap.error("--merge needs --subtask and --out")
            res = load_raw(args.merge)
            write_scores(res, args.subtask, args.out, args.figure, opts["n_boot"], seed)
            print(f"merged {len(args.merge)} shard(s): {len(res.pair_ids)} pairs -> {args.out}")
            return 0
        if not args.pairs or not (args.out or args.raw):
            ap.error("run mode needs --pairs and --out and/or --raw")
        try:
            i, n = (int(x) for x in args.shard.split("/"))
        except ValueError:
            ap.error(f"--shard {args.shard!r}: expected I/N")
        method = args.method or opts["method"]
        pairs = load_pairs(args.pairs, subtask=args.subtask, limit=args.n_pairs, shard=(i, n))
        if not pairs and not args.raw:
            raise RecordError(f"{args.pairs}: no pairs for subtask {args.subtask}")
        available = sum(args.subtask is None or int(r.get("subtask", -1)) == args.subtask
                        for r in read_jsonl(args.pairs))
        used = available if args.n_pairs is None else min(args.n_pairs, available)
        print(f"pairs: {used} of the {available} pairs{'' if args.subtask is None else f' of subtask {args.subtask}'}"
              f" in {args.pairs} ({'every pair' if args.n_pairs is None else f'--n-pairs {args.n_pairs}'}); "
              f"shard {i}/{n}: {len(pairs)} of them", flush=True)
        model = load_from_args(args, settings)
        check_pair_ids(model, pairs, args.pairs)
        res, atp, df = run(model, pairs, opts, seed, method=method, subtask=args.subtask,
                           atp=bool(args.atp_raw), table=bool(args.out))
        if args.raw:
            save_raw(args.raw, res)
        if args.atp_raw:
            save_raw(args.atp_raw, atp)
        if args.out:
            write_scores(res, args.subtask if args.subtask is not None else -1, args.out, args.figure,
                         opts["n_boot"], seed, df=df)
    except (RecordError, ModelSpecError, ValueError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
