#!/usr/bin/env python
"""Clean/corrupt pairs for every subtask of the (correctly solved) examples of one dataset (study.md §4, E1).

Writes the pairs (pairs contract of docs/DESIGN.md) as JSONL and the rejected-step counts (subtask, reason,
count) as CSV. Only the model's tokenizer is loaded.
"""
from __future__ import annotations

import sys
import time

from cotmech import config
from cotmech.cli import check_tables, fail, parser, read_settings


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--generations", required=True, help="generation records (results/<model>/generations/<d>.jsonl)")
    ap.add_argument("--dataset", required=True, help="dataset name (part of every pair's seed)")
    ap.add_argument("--settings", required=True, help="JSON with 'model', 'pairs' and 'seed' (what the rule passes)")
    ap.add_argument("--out", required=True, help="pairs (JSONL)")
    ap.add_argument("--rejected", required=True, help="rejected-step counts (CSV)")
    args = ap.parse_args(argv)
    import pandas as pd

    import cotmech.pairs
    from cotmech.io import RecordError, read_jsonl, write_jsonl, write_table
    from cotmech.models import ModelSpecError, tokenizer_from_settings

    t0 = time.time()
    try:
        check_tables(args, "--rejected")
        settings = read_settings(args.settings)
        cfg = config.section(settings, "pairs")
        records = read_jsonl(args.generations)
        tok = tokenizer_from_settings(settings)
        pairs, rejected = cotmech.pairs.run(records, tok, cfg, config.value(settings, "seed"), dataset=args.dataset,
                                          where=args.generations)
    except (RecordError, ModelSpecError, ValueError) as e:
        return fail(e)
    write_jsonl(args.out, pairs)
    write_table(args.rejected, pd.DataFrame(rejected, columns=["subtask", "reason", "count"]))
    print(f"done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
