#!/usr/bin/env python
"""Information-flow tracing of answer-writer pathways on clean pair inputs (study.md E9, E10).

Reads the pairs (and generation records, for the prompt parts) of one dataset, traces the first
``flow.n_examples`` examples and writes, under --outdir: traces.jsonl, depth_maps.parquet, depth_summary.csv,
sources.csv, head_sources.parquet, context_layers.csv, head_context.parquet, attention.parquet, summary.json
(see cotmech.flow).

Default (``flow.pruned``, the paper's model state): each subtask's knockout circuit (--circuit-heads, the
``circuits/heads.parquet`` of the knockout, ranking ``flow.circuit_ranking``) with every other head mean-ablated
(means over --reference pairs of the same subtask); the search starts from the pruned model's argmax. With
``pruned: false`` the unablated model is traced (heads from --ranking, or all).
"""
from __future__ import annotations

import sys
import time

from cotmech import config
from cotmech.cli import add_model_args, check_pair_ids, fail, load_from_args, parser, read_settings


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--pairs", required=True, help="results/<model>/pairs/<dataset>.jsonl")
    ap.add_argument("--generations", help="results/<model>/generations/<dataset>.jsonl (prompt parts); optional")
    ap.add_argument("--circuit-heads", help="knockout kept-head table (circuits/heads.parquet); needed when pruned")
    ap.add_argument("--reference", help="mean-ablation reference pairs (pairs/<circuits.reference>.jsonl); "
                                        "needed when pruned")
    ap.add_argument("--ranking", help="unpruned only: head-score table (layer, head, score[, subtask]); "
                                      "default: all heads")
    ap.add_argument("--settings", default="{}", help="JSON with 'model', 'flow', 'seed' and 'circuits' "
                                                     "(what the rule passes)")
    add_model_args(ap)
    ap.add_argument("--outdir", required=True, help="output folder")
    args = ap.parse_args(argv)
    from cotmech import flow
    from cotmech.io import RecordError, read_jsonl, read_table
    from cotmech.models import ModelSpecError

    try:
        settings = read_settings(args.settings)
        fs, cs = config.section(settings, "flow"), config.section(settings, "circuits")
        pruned = bool(fs["pruned"])
        if pruned and not (args.circuit_heads and args.reference):
            raise ValueError("flow.pruned needs --circuit-heads and --reference")
        pairs = read_jsonl(args.pairs)
        gens = read_jsonl(args.generations) if args.generations else []
        ranking = read_table(args.ranking) if args.ranking and not pruned else None
        heads = read_table(args.circuit_heads) if pruned else None
        reference = read_jsonl(args.reference) if pruned else None
        model = load_from_args(args, settings)
        check_pair_ids(model, pairs, args.pairs)
    except (RecordError, ModelSpecError, ValueError, TypeError, OSError) as e:
        return fail(e)
    t1 = time.time()
    try:
        traces, frames, summary = flow.run(model, pairs, fs, config.value(settings, "seed"), circuits_cfg=cs,
                                           generations=gens, heads=heads, reference=reference, ranking=ranking,
                                           names={"pairs": args.pairs, "ranking": args.ranking,
                                                  "circuit_heads": args.circuit_heads})
    except ValueError as e:
        return fail(e)
    flow.write_all(args.outdir, traces, frames, summary)
    if not traces:
        print(f"warning: {args.pairs}: no pairs (no correctly solved example?); wrote empty tables")
        return 0
    c = summary["crossing"]
    print(f"traced {len(traces)} pairs of {summary['n_examples']} examples in {time.time() - t1:.1f} s "
          f"({summary['model_state']}); writers in 2nd half {summary['writers']['share_second_half']:.3f}; "
          f"context share <{summary['split_layer']}: {summary['context_below']['share']:.3f}, "
          f">={summary['split_layer']}: {summary['context_above']['share']:.3f}; crosses 0.5 at layer {c['layer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
