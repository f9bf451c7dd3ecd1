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
    from cotmech.patching import induction as ind
    from cotmech.patch_results import PatchResult, load_raw, save_raw
    from cotmech.patching.exact import exact_sweep
    from cotmech.patching.run import sub_seed
    from cotmech.patching.scores import heatmap_figure, score_table, to_matrix

    try:
        check_tables(args, "--out")
        settings = read_settings(args.settings)
        opts = config.section(settings, "patching")
        io_ = opts["induction"]
        seed = config.value(settings, "seed")
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
        model = load_from_args(args, settings)
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
                res = PatchResult.empty("exact", opts["metric"], opts["direction"], model.n_layers, model.n_heads)
            res.info["corruption"] = kind
            save_raw(Path(args.raw_dir) / f"{kind}.safetensors", res)
    except (RecordError, ModelSpecError, ValueError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
