#!/usr/bin/env python
"""Head-level activation patching (E2): every head of the model, per subtask (study.md E2, §5).

Three modes:
  run    --pairs PAIRS.jsonl --method naive|exact|atp [--subtask K] [--shard I/N]
         (--out TABLE.parquet [--figure STEM]) and/or (--raw SHARD.safetensors)
  merge  --merge SHARD... --subtask K --out TABLE.parquet [--figure STEM]
  compare --exact TABLE... --atp TABLE... --out atp_vs_exact.csv     (Spearman per subtask)

Standalone example:
  scripts/patch_heads.py --model random:tiny-llama --pairs results/m/pairs/fictional.jsonl --method exact \
      --subtask 0 --out /tmp/subtask0.parquet
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="{}", help="JSON with 'model', 'patching', 'seed' (what the rule passes)")
    ap.add_argument("--model", help="model spec (overrides settings model.spec)")
    ap.add_argument("--dtype", help="model dtype (overrides settings)")
    ap.add_argument("--device", help="model device (overrides settings)")
    ap.add_argument("--pairs", help="pairs JSONL in the make_pairs format")
    ap.add_argument("--method", choices=["naive", "exact", "atp"], help="default: settings patching.method")
    ap.add_argument("--subtask", type=int, help="only pairs of this subtask (also the table's subtask)")
    ap.add_argument("--shard", default="0/1", help="I/N: the I-th of N contiguous ranges of the selected pairs")
    ap.add_argument("--raw", help="write per-pair metric values here (.safetensors) for a later merge")
    ap.add_argument("--atp-raw", help="also run AtP on the same pairs (same model load) and write its raw values here")
    ap.add_argument("--out", help="head table (.parquet or .csv)")
    ap.add_argument("--figure", help="heat-map stem (PNG + PDF)")
    ap.add_argument("--merge", nargs="+", help="merge raw shards instead of running a model")
    ap.add_argument("--exact", nargs="+", help="compare mode: exact head tables")
    ap.add_argument("--atp", nargs="+", help="compare mode: AtP head tables")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    from cotmech.io import RecordError, read_table, write_table
    from cotmech.models import ModelSpecError, load_from_settings, set_threads
    from cotmech.patching.data import load_pairs
    from cotmech.patching.run import options, sweep, write_scores
    from cotmech.patching.scores import load_raw, save_raw, spearman_table

    try:
        settings = json.loads(args.settings)
        opts = options(settings)
        seed = int(settings.get("seed", 0))
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
        pairs = load_pairs(args.pairs, subtask=args.subtask, limit=opts["n_pairs"], shard=(i, n))
        if not pairs and not args.raw:
            raise RecordError(f"{args.pairs}: no pairs for subtask {args.subtask}")
        model_cfg = dict(settings.get("model") or {"spec": None})
        for key in ("model", "dtype", "device"):
            if getattr(args, key):
                model_cfg["spec" if key == "model" else key] = getattr(args, key)
        set_threads(args.threads)
        t0 = time.time()
        model = load_from_settings({"model": model_cfg}, where="--settings/--model")
        print(f"loaded {model.spec} ({model.dtype}, {model.device}) in {time.time() - t0:.1f} s", flush=True)
        t1 = time.time()
        if pairs:
            res = sweep(model, pairs, method, opts)
        else:  # an empty shard still writes its (empty) part
            import numpy as np

            from cotmech.patching.exact import PatchResult
            L, H = model.n_layers, model.n_heads
            res = PatchResult(method, opts["metric"], opts["direction"], [], [], np.zeros((0, L, H)),
                              np.zeros(0), np.zeros(0))
        print(f"{method}: {len(pairs)} pairs x {model.n_layers * model.n_heads} heads in {time.time() - t1:.1f} s",
              flush=True)
        if args.raw:
            save_raw(args.raw, res)
        if args.atp_raw:
            t2 = time.time()
            atp = sweep(model, pairs, "atp", opts) if pairs else type(res)("atp", res.metric, res.direction, [], [],
                                                                               res.patched, res.base, res.source)
            save_raw(args.atp_raw, atp)
            print(f"atp: {len(pairs)} pairs in {time.time() - t2:.1f} s", flush=True)
        if args.out:
            write_scores(res, args.subtask if args.subtask is not None else -1, args.out, args.figure,
                         opts["n_boot"], seed)
    except (json.JSONDecodeError, RecordError, ModelSpecError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
