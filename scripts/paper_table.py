#!/usr/bin/env python
"""Paper-vs-run table (CSV) and HTML summary page for one model's results (cotmech.report).

Every headline number of study.md §1.4 and the E-sections: the paper's value with its evidence tag (from
cotmech/data/paper_numbers.yaml) next to ours with its CI, read from the result files under --mres, whether ours is
the same quantity, our extension or a different one, and a verdict from the CI; rows whose result file is absent
say "not run". --claims gets one verdict per claim C1-C6 (from the same-quantity rows). The HTML page shows both,
links every PNG figure found under --mres and lists the run's dtype, device, CPU/GPU and library versions
(--mres/run_info.json, rule run_info).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cotmech.cli import check_tables, fail, parser


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--mres", required=True, help="results/<model> folder")
    ap.add_argument("--datasets", nargs="+", required=True, help="dataset names, in preference order")
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--model-spec", default="")
    ap.add_argument("--csv", required=True, help="output table (paper_vs_run.csv)")
    ap.add_argument("--claims", required=True, help="output claim verdicts (claims.csv)")
    ap.add_argument("--html", required=True, help="output page (summary.html)")
    args = ap.parse_args(argv)
    from cotmech import report
    from cotmech.io import write_table, write_text

    try:
        check_tables(args, "--csv")
        table = report.paper_vs_run(args.mres, args.datasets, args.model_name)
        claims = report.claim_verdicts(table)
        info = report.read_run_info(args.mres)
    except (ValueError, OSError) as e:
        return fail(e)
    html_dir = Path(args.html).parent
    figs = sorted(os.path.relpath(p, html_dir) for p in Path(args.mres).rglob("*.png"))
    write_table(args.csv, table)
    write_table(args.claims, claims)
    write_text(args.html, report.with_provenance(
        report.summary_html(table, args.model_name, args.model_spec, figs, claims), info))
    counts = table["status"].value_counts().to_dict()
    print(f"{len(table)} rows: {counts}; {len(figs)} figures linked")
    for c in claims.itertuples(index=False):
        print(f"{c.claim_id}: {c.verdict} ({c.n_rows} same-quantity rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
