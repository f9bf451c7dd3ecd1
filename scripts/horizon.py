#!/usr/bin/env python
"""Horizon experiment (study.md E12): patch one layer's attention output (all heads, all positions) with the run on
a prompt whose middle rule is corrupted, while the rest of the CoT is generated greedily from a prefix cut after s
sentences; measure how much of the clean continuation survives (first divergence, exact match; cotmech.horizon).

Writes --table (per example, s, layer; layer -1 = unpatched), --summary (per layer and s) and --examples (the
corrupted rules). --verify N re-runs N examples with real KV-cached patched decoding and checks agreement.
"""
from __future__ import annotations

import sys

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
        records = read_jsonl(args.generations)
        model = load_from_args(args, settings)
        table, summary, examples = horizon.run(model, records, config.section(settings, "horizon"),
                                               config.value(settings, "seed"),
                                               require_correct=horizon.require_correct(settings))
    except (RecordError, ModelSpecError, ValueError, TypeError, OSError) as e:
        return fail(e)
    write_table(args.table, table)
    write_table(args.summary, summary)
    write_jsonl(args.examples, examples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
