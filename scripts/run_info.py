#!/usr/bin/env python
"""Provenance of one model's runs (cotmech.provenance.run_info): resolved dtype and device, CPU/GPU model,
library versions; written as JSON (results/<model>/run_info.json) and shown on the summary page. Example:
  run_info.py --settings '{"model": {"spec": "random:tiny-llama", "dtype": "auto", "device": "cpu"}}' --out ri.json
"""
from __future__ import annotations

import json
import sys

from cotmech.cli import fail, parser, read_settings


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--settings", required=True, help="JSON with 'model' (what the rule passes)")
    ap.add_argument("--out", required=True, help="output JSON")
    args = ap.parse_args(argv)
    from cotmech.io import RecordError, write_json
    from cotmech.models import ModelSpecError, model_settings
    from cotmech.provenance import run_info

    try:
        info = run_info(model_settings(read_settings(args.settings)))
    except (RecordError, ModelSpecError, ValueError) as e:
        return fail(e)
    write_json(args.out, info)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
