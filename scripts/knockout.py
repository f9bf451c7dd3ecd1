#!/usr/bin/env python
"""Knockout curves (E6): mean-ablate the least important heads of each ranking, per subtask, and record
next-token agreement with the unablated run; operating point nearest the threshold.

Writes into --out-dir: curves.parquet, operating_points.csv, heads.parquet (removal order + kept flag per
operating point; the rows with primary = True and kept = True are the subtask's circuit), isolation.csv and
cross_removal.csv (E7, within the subtask); empty tables for a subtask without enough pairs. The workflow runs one job per subtask
(--subtask K) and merges them with knockout_merge.py. Example (standalone, every subtask in one job):
  knockout.py --clean results/M/pairs/fictional.jsonl --reference results/M/pairs/falseont.jsonl \
      --ranking direct=builtin --ranking patching='results/M/patching/fictional/subtask{subtask}.parquet' \
      --settings '{"model": {"spec": "random:tiny-llama", "dtype": "float32", "device": "cpu"}}' --out-dir out/
"""
from __future__ import annotations

import sys
import time

from cotmech import circuits, config
from cotmech.cli import add_model_args, check_pair_ids, fail, load_from_args, parser, read_settings
from cotmech.io import RecordError, read_jsonl, read_table, write_table
from cotmech.models import ModelSpecError


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--clean", required=True, help="clean pairs JSONL (pairs contract)")
    ap.add_argument("--reference", required=True, help="mean-ablation reference pairs JSONL (false ontology)")
    ap.add_argument("--ranking", action="append", default=[], metavar="NAME=SOURCE",
                    help="'builtin' (direct mean-ablation effect), 'builtin:writers' / 'builtin:copy' (E4/E5 scores on "
                         "each split), a head-score table path or a raw patching shard (.safetensors; a NAME given "
                         "several times reads all its shards); '{subtask}' allowed")
    ap.add_argument("--skipped", action="append", default=[], metavar="NAME", help="rankings skipped upstream (logged)")
    ap.add_argument("--settings", default="{}", help="JSON with 'model', 'circuits', 'seed' (what the rule passes)")
    ap.add_argument("--subtask", type=int, action="append", default=None, metavar="K",
                    help="knock out only these subtasks (the workflow runs one job per subtask); default: "
                         "circuits.subtasks of --settings, else every subtask in --clean")
    ap.add_argument("--circuits", metavar="HEADS", help="cross-subtask mode (E7): heads.parquet of the merged "
                    "knockout; writes --out-dir/cross_subtask.csv (every subtask's circuit isolated / removed, "
                    "evaluated on each subtask's evaluation split) instead of the knockout tables")
    add_model_args(ap)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    t0 = time.time()
    rankings = {}
    for r in args.ranking:
        name, sep, source = r.partition("=")
        if not sep or not name or not source:
            ap.error(f"--ranking {r!r}: expected NAME=SOURCE")
        if name in rankings:  # a ranking given several times: its files (e.g. the shards of raw patching scores)
            prev = rankings[name]
            rankings[name] = (prev if isinstance(prev, list) else [prev]) + [source]
        else:
            rankings[name] = source
    if not rankings and not args.circuits:
        ap.error("give at least one --ranking")
    for name in args.skipped:
        print(f"note: ranking {name!r} skipped: its upstream rule is not in the workflow")
    try:
        s = read_settings(args.settings)
        cfg = config.section(s, "circuits")
        clean, ref = read_jsonl(args.clean), read_jsonl(args.reference)
        model = load_from_args(args, s)
        check_pair_ids(model, clean, args.clean)
        check_pair_ids(model, ref, args.reference)
        tables = circuits.run(model, clean, ref, cfg, config.value(s, "seed"), rankings=rankings,
                              circuits=read_table(args.circuits) if args.circuits else None, subtasks=args.subtask)
    except (RecordError, ModelSpecError, ValueError, FileNotFoundError) as e:
        return fail(e)
    for file, table in tables.items():
        write_table(f"{args.out_dir}/{file}", table)
    print(f"done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
