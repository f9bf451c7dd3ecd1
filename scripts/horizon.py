#!/usr/bin/env python
"""Horizon experiment (study.md E12): patch one layer's attention output (all heads, all positions) with the run on
a prompt whose middle rule is corrupted, while the rest of the CoT is generated greedily from a prefix cut after s
sentences; measure how much of the clean continuation survives (first divergence, exact match; cotmech.horizon).

Writes --table (per example, s, layer; layer -1 = unpatched), --summary (per layer and s) and --examples (the
corrupted rules). --verify N re-runs N examples with real KV-cached patched decoding and checks agreement.
"""
from __future__ import annotations

import sys
import time

from cotmech import config
from cotmech.cli import add_model_args, check_tables, fail, load_from_args, parser, read_settings


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--generations", required=True, help="results/<model>/generations/<dataset>.jsonl")
    ap.add_argument("--settings", default="{}", help="JSON with 'model', 'horizon', 'seed', 'pairs' (what the rule "
                                                     "passes)")
    add_model_args(ap)
    ap.add_argument("--table", required=True, help="per-example table (.parquet)")
    ap.add_argument("--summary", required=True, help="per layer and s (.csv)")
    ap.add_argument("--examples", required=True, help="corruptions used (.jsonl)")
    args = ap.parse_args(argv)
    from cotmech import horizon
    from cotmech.io import RecordError, read_jsonl, write_jsonl, write_table
    from cotmech.models import ModelSpecError

    try:
        check_tables(args, "--table", "--summary")
        settings = read_settings(args.settings)
        hs = config.section(settings, "horizon")
        records = read_jsonl(args.generations)
        sentences = [int(s) for s in hs["sentences"]]
        model = load_from_args(args, settings)
        layers = horizon.choose_layers(hs["layers"], hs["layer_stride"], model.n_layers)
    except (RecordError, ModelSpecError, ValueError, TypeError, OSError) as e:
        return fail(e)
    t1 = time.time()
    try:
        examples = horizon.prepare_examples(model, records, int(hs["n_examples"]), config.value(settings, "seed"),
                                            int(hs["max_new_tokens"]), horizon.require_correct(settings))
    except ValueError as e:
        return fail(e)
    for e in examples:
        if "skipped" in e:
            print(f"skipped {e['id']}: {e['skipped']}")
    table = horizon.divergence_table(model, examples, layers, sentences)
    summary = horizon.aggregate(table, model.n_layers)
    n_verify = int(hs["verify"])
    checks = []
    for e in [x for x in examples if "skipped" not in x][:n_verify]:
        clean, corrupt = e["prompt_ids"], e["corrupt_prompt_ids"]
        for layer in layers:
            gen = horizon.patched_generate(model, clean, corrupt, int(layer), len(e["gen_ids"]) + 1)
            fd = horizon.first_divergence(gen, e["gen_ids"])
            fast = table[(table.example_id == e["id"]) & (table.s == 0) & (table.layer == int(layer))]["first_div"]
            checks.append({"example_id": e["id"], "layer": int(layer), "generate": fd,
                           "teacher_forced": int(fast.iloc[0]) if len(fast) else None})
    for c in checks:
        print(f"verify {c}" + ("" if c["generate"] == c["teacher_forced"] else "  MISMATCH"))
    write_table(args.table, table)
    write_table(args.summary, summary)
    write_jsonl(args.examples, [{k: v for k, v in e.items() if not k.endswith("_ids")} | (
        {"n_gen": len(e["gen_ids"])} if "gen_ids" in e else {}) for e in examples] + (
        [{"verify": checks}] if checks else []))
    print(f"horizon: {sum('skipped' not in e for e in examples)} examples, layers {layers}, s {sentences} in "
          f"{time.time() - t1:.1f} s")
    if len(summary):
        print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
