#!/usr/bin/env python
"""Publish a finished findings run into the repository: docs/findings/<model>/ (cotmech.findings).

Copies the run's paper-vs-run table and claim verdicts (results/<model>/report/), its run_info.json (machine,
dtype) and the key figures (PNG), writes the exact merged configuration, the commit(s) the run was made from
(<results>/run_commits.txt, written by `make findings`), the wall time per rule (from the Snakemake logs that
`make findings` saves under <results>/snakemake-logs/), and the Markdown page written from these files; then the
per-claim block of README.md (between its findings markers, `cotmech.findings.claims_block`). Example:
  publish_findings.py --config config/findings.yaml --base config.yaml --out docs/findings
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cotmech.cli import fail, parser
from cotmech.io import write_text


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--config", required=True, help="the run's overlay config (config/findings.yaml)")
    ap.add_argument("--base", default="config.yaml", help="the base config it merges into")
    ap.add_argument("--out", default="docs/findings", help="folder that gets <model>/")
    ap.add_argument("--logs", nargs="*", default=None,
                    help="Snakemake logs of the run (default: <results>/snakemake-logs/*.log)")
    ap.add_argument("--readme", default=None,
                    help="also rewrite this file's generated claims block (between its findings markers; "
                         "make publish-findings passes README.md)")
    args = ap.parse_args(argv)
    from cotmech import config as cfgmod
    from cotmech import findings
    from cotmech.configcheck import ConfigError

    try:
        cfg = cfgmod.load(args.config, args.base)
        results = Path(cfg["results"])
        model = cfg["model"]["name"]
        logs = args.logs if args.logs is not None else sorted((results / "snakemake-logs").glob("*.log"))
        md = findings.publish(results / model, Path(args.out) / model, cfg, logs,
                              findings.read_commits(results / "run_commits.txt"))
        if args.readme:
            readme = Path(args.readme)
            link = os.path.relpath(md.parent, readme.resolve().parent if readme.exists() else Path.cwd())
            text = findings.replace_block(readme.read_text(), findings.claims_block(md.parent, link))
            write_text(readme, text)
    except (ConfigError, FileNotFoundError, ValueError, OSError) as e:
        return fail(e)
    figs = list((md.parent / findings.FIGDIR).glob("*.png"))
    mb = sum(f.stat().st_size for f in md.parent.rglob("*") if f.is_file()) / 2**20
    print(f"wrote {md.parent}: {len(figs)} figures, {mb:.1f} MiB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
