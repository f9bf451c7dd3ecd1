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
from cotmech.circuits import alignment_prefix
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
    from tqdm import tqdm

    from cotmech import flow
    from cotmech.io import RecordError, read_jsonl, read_table
    from cotmech.models import ModelSpecError

    try:
        settings = read_settings(args.settings)
        fs = config.section(settings, "flow")
        cfg = flow.FlowConfig(**{k: fs[k] for k in ("l", "k", "p", "decay", "max_depth", "skip_first", "min_prob",
                                                       "prefilter", "start")})
        pruned = bool(fs["pruned"])
        if pruned and not (args.circuit_heads and args.reference):
            raise ValueError("flow.pruned needs --circuit-heads and --reference")
        cs = config.section(settings, "circuits")
        subtasks = fs["subtasks"]
        if pruned and subtasks is None:
            subtasks = cs["subtasks"]
        pairs = read_jsonl(args.pairs)
        chosen = flow.select_examples(pairs, int(fs["n_examples"]), subtasks)
        gens = {r["id"]: r for r in read_jsonl(args.generations)} if args.generations else {}
        ranking = read_table(args.ranking) if args.ranking and not pruned else None
        heads = read_table(args.circuit_heads) if pruned else None
        reference = read_jsonl(args.reference) if pruned else None
        model = load_from_args(args, settings)
        check_pair_ids(model, pairs, args.pairs)
    except (RecordError, ModelSpecError, ValueError, TypeError, OSError) as e:
        return fail(e)
    important = circuit = None
    t1 = time.time()
    if pruned:
        want = sorted({int(p["subtask"]) for ps in chosen.values() for p in ps})
        try:
            circuits = flow.pruned_circuits(model, heads, fs["circuit_ranking"], reference, want,
                                            cs["n_reference"], config.value(settings, "seed"), int(cs["batch_size"]),
                                            alignment_prefix(pairs, cs["mean_alignment"]))
        except ValueError as e:
            return fail(f"{args.circuit_heads}: {e}")
        for k, c in circuits.items():
            print(f"subtask {k}: pruned circuit, {c.note}")
        circuit = circuits.__getitem__
    elif ranking is not None:
        top_k = int(fs["top_k"] or model.n_total_heads)
        cache: dict = {}

        def important(k: int):  # noqa: F811 - per-subtask mask, cached
            if k not in cache:
                cache[k] = flow.important_mask(ranking, model.n_layers, model.n_heads, top_k, subtask=k)
            return cache[k]
    traces = []
    for ex_id, ex_pairs in tqdm(chosen.items(), desc="trace", unit="ex"):
        try:
            traces += flow.trace_example(model, ex_pairs, cfg, gens.get(ex_id), important, circuit)
        except ValueError as e:
            return fail(f"example {ex_id}: {e}")
    meta = {"model": model.spec, "pairs": args.pairs, "config": flow.config_dict(cfg),
            "model_state": (f"pruned: {fs['circuit_ranking']} knockout circuit, other heads "
                            "mean-ablated" if pruned else "unpruned (all heads run)"),
            "pruned": pruned, "circuit_heads": args.circuit_heads if pruned else None,
            "ranking": args.ranking if ranking is not None else None,
            "top_k": fs["top_k"] if ranking is not None else None,
            "argmax_is_answer": sum(t["argmax_is_answer"] for t in traces), "seconds": round(time.time() - t1, 1)}
    summary = flow.write_outputs(traces, args.outdir, model.tokenizer, {p["pair_id"]: p for p in pairs}, meta,
                                 n_boot=int(fs["n_boot"]), seed=config.value(settings, "seed"),
                                 ci=float(fs["ci"]))
    if not traces:
        print(f"warning: {args.pairs}: no pairs (no correctly solved example?); wrote empty tables")
        return 0
    c = summary["crossing"]
    print(f"traced {len(traces)} pairs of {len(chosen)} examples in {time.time() - t1:.1f} s ({meta['model_state']}); "
          f"writers in 2nd half {summary['writers']['share_second_half']:.3f}; context share "
          f"<{summary['split_layer']}: {summary['context_below']['share']:.3f}, "
          f">={summary['split_layer']}: {summary['context_above']['share']:.3f}; crosses 0.5 at layer {c['layer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
