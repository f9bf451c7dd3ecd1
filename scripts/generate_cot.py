#!/usr/bin/env python
"""Greedy CoT generation for one task dataset (study.md §2.4, E1).

Writes the generation records (task record + prompt, generated, correct, valid_proof) as JSONL and a one-row
accuracy table (dataset, ontology, hops, n, correct, accuracy, ci_low, ci_high; Wilson 95% CI) as CSV.
Also aggregates per-dataset accuracy tables with --aggregate.
"""
from __future__ import annotations

import sys

from cotmech import config
from cotmech.cli import add_model_args, check_tables, fail, load_from_args, parser, read_settings
from cotmech.io import RecordError, read_jsonl, read_table, write_jsonl, write_table


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--tasks", help="task records (results/tasks/<dataset>.jsonl)")
    ap.add_argument("--dataset", help="dataset name (column 'dataset' of the accuracy table)")
    ap.add_argument("--settings", default="{}",
                    help="JSON with 'model', 'prompt', 'generation' sections (what the rule passes)")
    ap.add_argument("--out", help="generation records (JSONL)")
    ap.add_argument("--accuracy", help="one-row accuracy table (CSV)")
    add_model_args(ap)
    ap.add_argument("--aggregate", nargs="+", metavar="CSV", help="concatenate these accuracy tables into --accuracy")
    args = ap.parse_args(argv)
    import pandas as pd

    from cotmech.generation import ACCURACY_COLUMNS, ACCURACY_DTYPES

    if args.aggregate:
        if not args.accuracy:
            ap.error("--aggregate needs --accuracy")
        df = pd.concat([read_table(p, dtype=ACCURACY_DTYPES) for p in args.aggregate], ignore_index=True)
        write_table(args.accuracy, df[ACCURACY_COLUMNS])
        print(df.to_string(index=False))
        return 0
    if not (args.tasks and args.dataset and args.out and args.accuracy):
        ap.error("give --tasks, --dataset, --out and --accuracy (or --aggregate)")
    from cotmech import generation
    from cotmech.models import ModelSpecError

    try:
        check_tables(args, "--accuracy")
        settings = read_settings(args.settings)
        records = read_jsonl(args.tasks)
        if not records:
            raise RecordError(f"{args.tasks}: no task records")
        shots = config.section(settings, "prompt")["shots"]
        gen = config.section(settings, "generation")
        model = load_from_args(args, settings)
    except (RecordError, ModelSpecError, ValueError, TypeError) as e:
        return fail(e)
    out, accuracy = generation.run(model, records, gen, shots=shots, dataset=args.dataset)
    write_jsonl(args.out, out)
    write_table(args.accuracy, accuracy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
