#!/usr/bin/env python
"""Induction heads (E3): synthetic 1-hop cloze task, three corruptions, exact patching, merged score.

Modes:
  run    --raw-dir DIR [--corruption class subject property]   (writes DIR/<corruption>.safetensors and .jsonl)
  merge  --merge RAW... --out scores.parquet [--figure STEM]
(template and merge: cotmech.patching.induction)
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="{}", help="JSON with 'model', 'patching', 'seed'")
    ap.add_argument("--model")
    ap.add_argument("--dtype")
    ap.add_argument("--device")
    ap.add_argument("--corruption", nargs="+", choices=["class", "subject", "property"],
                    default=["class", "subject", "property"], help="run mode: corruption types")
    ap.add_argument("--raw-dir", help="run mode: folder for <corruption>.safetensors (per-pair values) and "
                                      "<corruption>.jsonl (the kept cloze pairs)")
    ap.add_argument("--merge", nargs="+", help="merge mode: raw files of the corruptions")
    ap.add_argument("--out", help="merge mode: scores table")
    ap.add_argument("--figure", help="merge mode: heat-map stem")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    from cotmech.io import RecordError, write_jsonl, write_table
    from cotmech.models import ModelSpecError, load_from_settings, set_threads
    from cotmech.patching import induction as ind
    from cotmech.patching.exact import exact_sweep
    from cotmech.patching.run import options, sub_seed
    from cotmech.patching.scores import heatmap_figure, load_raw, save_raw, score_table, to_matrix

    try:
        settings = json.loads(args.settings)
        opts = options(settings)
        io_ = opts["induction"]
        seed = int(settings.get("seed", 0))
        if args.merge:
            if not args.out:
                ap.error("--merge needs --out")
            tables, boots = {}, {}
            for path in args.merge:
                res = load_raw([path])
                kind = res.info.get("corruption")
                if kind not in ind.CORRUPTIONS:
                    raise RecordError(f"{path}: no corruption recorded in its metadata")
                if not res.pair_ids:
                    print(f"warning: {kind}: no usable pairs; left out of the merge", file=sys.stderr)
                    continue
                tables[kind] = score_table(res, -1, n_boot=0)
                boots[kind] = ind.draw_boot(res, opts["n_boot"], sub_seed(seed, "induction-boot", kind))
            df = ind.merge_scores(tables, boots)
            write_table(args.out, df)
            if args.figure:
                heatmap_figure(to_matrix(df), args.figure,
                               f"induction score (mean of {len(tables)} corruptions)", label="normalised KL score")
            print(df.sort_values("score", ascending=False).head(10).to_string(index=False))
            return 0
        if not args.raw_dir:
            ap.error("run mode needs --raw-dir")
        from pathlib import Path

        model_cfg = dict(settings.get("model") or {"spec": None})
        for key in ("model", "dtype", "device"):
            if getattr(args, key):
                model_cfg["spec" if key == "model" else key] = getattr(args, key)
        set_threads(args.threads)
        t0 = time.time()
        model = load_from_settings({"model": model_cfg}, where="--settings/--model")
        print(f"loaded {model.spec} in {time.time() - t0:.1f} s", flush=True)
        kept = ind.build_pairs(model, io_["n"], shots=io_["shots"], seed=sub_seed(seed, "induction"),
                               require_correct=io_["require_correct"], max_candidates=io_["max_candidates"])
        for kind in args.corruption:
            pairs = kept[kind]
            print(f"{kind}: kept {len(pairs)} of the requested {io_['n']} pairs", flush=True)
            write_jsonl(Path(args.raw_dir) / f"{kind}.jsonl",
                        [{"pair_id": p.pair_id, "clean_ids": p.clean_ids, "corrupt_ids": p.corrupt_ids,
                          "first_diff": p.first_diff, "answer_id": p.answer_id,
                          "corrupt_answer_id": p.corrupt_answer_id, **p.meta} for p in pairs])
            if pairs:
                res = exact_sweep(model, pairs, metric=opts["metric"], direction=opts["direction"],
                                  head_batch=opts["head_batch"])
            else:
                import numpy as np

                from cotmech.patching.exact import PatchResult
                res = PatchResult("exact", opts["metric"], opts["direction"], [], [],
                                  np.zeros((0, model.n_layers, model.n_heads)), np.zeros(0), np.zeros(0))
            res.info["corruption"] = kind
            save_raw(Path(args.raw_dir) / f"{kind}.safetensors", res)
    except (json.JSONDecodeError, RecordError, ModelSpecError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
