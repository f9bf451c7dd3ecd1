#!/usr/bin/env python
"""Information-flow tracing of answer-writer pathways on clean pair inputs (study.md E9, E10).

Reads the pairs (and generation records, for the prompt parts) of one dataset, traces the first
``flow.n_examples`` examples (all their subtasks share one forward) and writes, under --outdir:
traces.jsonl, depth_maps.parquet, depth_summary.csv, sources.csv, head_sources.parquet, context_layers.csv,
head_context.parquet, attention.parquet, summary.json (see cotmech.flow).
"""
from __future__ import annotations

import sys
import time

from cotmech.cli import add_model_args, check_pair_ids, fail, load_from_args, parser, read_settings


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--pairs", required=True, help="results/<model>/pairs/<dataset>.jsonl")
    ap.add_argument("--generations", help="results/<model>/generations/<dataset>.jsonl (prompt parts); optional")
    ap.add_argument("--ranking", help="head-score table (layer, head, score[, subtask]); default: all heads")
    ap.add_argument("--settings", default="{}", help="JSON with 'model' and 'flow' sections (what the rule passes)")
    add_model_args(ap)
    ap.add_argument("--outdir", required=True, help="output folder")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    from cotmech import flow
    from cotmech.io import RecordError, read_jsonl, read_table
    from cotmech.models import ModelSpecError

    try:
        settings = read_settings(args.settings)
        fs = settings.get("flow", {})
        cfg = flow.FlowConfig(**{k: fs[k] for k in ("l", "k", "p", "decay", "max_depth", "skip_first", "min_prob",
                                                       "prefilter")
                                 if k in fs})
        pairs = read_jsonl(args.pairs)
        chosen = flow.select_examples(pairs, int(fs.get("n_examples", 1)), fs.get("subtasks"))
        gens = {r["id"]: r for r in read_jsonl(args.generations)} if args.generations else {}
        ranking = read_table(args.ranking) if args.ranking else None
        model = load_from_args(args, settings)
        check_pair_ids(model, pairs, args.pairs)
    except (RecordError, ModelSpecError, ValueError, TypeError, OSError) as e:
        return fail(e)
    important = None
    if ranking is not None:
        top_k = int(fs.get("top_k") or model.n_total_heads)
        cache: dict = {}

        def important(k: int):  # noqa: F811 - per-subtask mask, cached
            if k not in cache:
                cache[k] = flow.important_mask(ranking, model.n_layers, model.n_heads, top_k, subtask=k)
            return cache[k]
    t1 = time.time()
    traces = []
    for ex_id, ex_pairs in tqdm(chosen.items(), desc="trace", unit="ex"):
        try:
            traces += flow.trace_example(model, ex_pairs, cfg, gens.get(ex_id), important)
        except ValueError as e:
            return fail(f"example {ex_id}: {e}")
    meta = {"model": model.spec, "pairs": args.pairs, "ranking": args.ranking, "config": flow.config_dict(cfg),
            "top_k": fs.get("top_k") if ranking is not None else None, "seconds": round(time.time() - t1, 1)}
    summary = flow.write_outputs(traces, args.outdir, model.tokenizer, {p["pair_id"]: p for p in pairs}, meta)
    if not traces:
        print(f"warning: {args.pairs}: no pairs (no correctly solved example?); wrote empty tables")
        return 0
    print(f"traced {len(traces)} pairs of {len(chosen)} examples in {time.time() - t1:.1f} s; "
          f"writers in 2nd half {summary['writers']['share_second_half']:.3f}; context share "
          f"<{summary['split_layer']}: {summary['context_below']['share']:.3f}, "
          f">={summary['split_layer']}: {summary['context_above']['share']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
