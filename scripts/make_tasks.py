#!/usr/bin/env python
"""Create one verified PrOntoQA task dataset (JSONL, task-record contract of docs/DESIGN.md).

Two modes:
  --dataset NAME --settings JSON --out PATH   generate (or import) config entry ``datasets.NAME``; the dataset's
                                              seed is derived from the master ``seed`` and NAME
  --import FILE --out PATH                    read a foreign file (generator JSON or the authors' records), verify
                                              every record, write the verified ones, print verified/rejected counts
"""
from __future__ import annotations

import sys
import time

from cotmech import config
from cotmech.cli import fail, parser, read_settings
from cotmech.io import RecordError, write_jsonl
from cotmech.prontoqa.datasets import build_dataset, drop_duplicates, rejection_lines, verify_records
from cotmech.prontoqa.importers import import_file


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--dataset", help="dataset name (a key of config 'datasets')")
    ap.add_argument("--settings", help="JSON with 'datasets': {NAME: entry} and 'seed' (what the rule passes)")
    ap.add_argument("--import", dest="import_file", metavar="FILE", help="foreign file to import and verify")
    ap.add_argument("--ontology", choices=["fictional", "false", "true"], help="override ontology detection (import)")
    ap.add_argument("--no-in-context", action="store_true", help="import only test examples of generator files")
    ap.add_argument("--out", required=True, help="output JSONL")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        if args.import_file:
            records = import_file(args.import_file, in_context=not args.no_in_context, ontology=args.ontology)
            records, warnings = drop_duplicates(records)
            for w in warnings:
                print(w, file=sys.stderr)
            kept, rejected = verify_records(records)
            print(f"{args.import_file}: {len(records) + len(warnings)} records, {len(warnings)} duplicates dropped, "
                  f"{len(kept)} verified, {sum(map(len, rejected.values()))} rejected")
            for line in rejection_lines(rejected):
                print(f"  {line}")
        else:
            if not (args.dataset and args.settings):
                ap.error("give --dataset and --settings, or --import FILE")
            settings = read_settings(args.settings)
            spec = (settings.get("datasets") or {}).get(args.dataset)
            if spec is None:
                raise RecordError(f"--settings: missing key 'datasets.{args.dataset}'")
            kept = build_dataset(args.dataset, spec, config.value(settings, "seed"), where="--settings")
            labels = sum(r["label"] for r in kept)
            print(f"{args.dataset}: {len(kept)} verified records (True {labels} / False {len(kept) - labels})")
    except RecordError as e:
        return fail(e)
    write_jsonl(args.out, kept)
    print(f"wrote {args.out} in {time.time() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
