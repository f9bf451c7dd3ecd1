#!/usr/bin/env python
"""Greedy CoT generation for one task dataset (study.md §2.4, E1).

Writes the generation records (task record + prompt, generated, correct, valid_proof) as JSONL and a one-row
accuracy table (dataset, ontology, hops, n, correct, accuracy, ci_low, ci_high; Wilson 95% CI) as CSV.
Also aggregates per-dataset accuracy tables with --aggregate.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from cotmech.io import RecordError, read_jsonl, read_table, write_jsonl, write_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", help="task records (results/tasks/<dataset>.jsonl)")
    ap.add_argument("--dataset", help="dataset name (column 'dataset' of the accuracy table)")
    ap.add_argument("--settings", default="{}",
                    help="JSON with 'model', 'prompt', 'generation' sections (what the rule passes)")
    ap.add_argument("--out", help="generation records (JSONL)")
    ap.add_argument("--accuracy", help="one-row accuracy table (CSV)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--aggregate", nargs="+", metavar="CSV", help="concatenate these accuracy tables into --accuracy")
    args = ap.parse_args(argv)
    import pandas as pd

    from cotmech.generation import ACCURACY_COLUMNS

    if args.aggregate:
        if not args.accuracy:
            ap.error("--aggregate needs --accuracy")
        df = pd.concat([read_table(p) for p in args.aggregate], ignore_index=True)
        write_table(args.accuracy, df[ACCURACY_COLUMNS])
        print(df.to_string(index=False))
        return 0
    if not (args.tasks and args.dataset and args.out and args.accuracy):
        ap.error("give --tasks, --dataset, --out and --accuracy (or --aggregate)")
    from cotmech.generation import accuracy_row, generate_records
    from cotmech.models import ModelSpecError, load_from_settings, set_threads

    try:
        settings = json.loads(args.settings)
        records = read_jsonl(args.tasks)
        if not records:
            raise RecordError(f"{args.tasks}: no task records")
        shots = int(settings.get("prompt", {}).get("shots", 6))
        gen = settings.get("generation", {})
        max_new, batch = int(gen.get("max_new_tokens", 64)), int(gen.get("batch_size", 48))
    except (json.JSONDecodeError, RecordError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    set_threads(args.threads)
    t0 = time.time()
    try:
        model = load_from_settings(settings)
    except ModelSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"loaded {model.spec} ({model.dtype}, {model.device}) in {time.time() - t0:.1f} s", flush=True)
    t1 = time.time()
    out = generate_records(model, records, shots=shots, max_new_tokens=max_new, batch_size=batch, desc=args.dataset)
    write_jsonl(args.out, out)
    row = accuracy_row(args.dataset, out)
    write_table(args.accuracy, pd.DataFrame([row], columns=ACCURACY_COLUMNS))
    print(f"{args.dataset}: {row['correct']}/{row['n']} exactly correct = {row['accuracy']:.3f} "
          f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]; valid proofs {sum(r['valid_proof'] for r in out)}; "
          f"generation {time.time() - t1:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
