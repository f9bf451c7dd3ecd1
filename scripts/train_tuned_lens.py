#!/usr/bin/env python
"""Train tuned-lens translators (Belrose et al. 2023) on the model's own residual streams.

  train_tuned_lens.py --activations A1.safetensors [A2 ...] --index A1.parquet [A2 ...] --settings JSON \
      --out tuned_lens.safetensors --report tuned_lens.json

Training data: the residual stream (all layers) at the predicting positions of the task inputs of every
given activations file (every pair of every subtask; one position per pair). Examples are split (seeded) into
a training and a held-out part (keys "<dataset>/<example_id>", listed in the report as ``heldout_examples``: the
prior-shift analysis evaluates the tuned lens on those only); the report gives per-layer KL(final ‖ lens) of the
logit lens and the tuned lens on both. With little data (CPU budget) the translators are biased towards these
positions: indicative only.
"""
from __future__ import annotations

import sys
from pathlib import Path

from cotmech import config
from cotmech.cli import add_model_args, fail, load_from_args, parser, read_settings


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--activations", nargs="+", required=True, help="activation tensors (.safetensors)")
    ap.add_argument("--index", nargs="+", required=True, help="their index tables (.parquet), same order")
    ap.add_argument("--datasets", nargs="+", help="their dataset names, same order (keys of the held-out examples); "
                                                  "default: the activation file names without extension")
    ap.add_argument("--settings", required=True, help="JSON with 'model', 'tuned_lens', 'seed'")
    ap.add_argument("--out", required=True, help="translators (.safetensors)")
    ap.add_argument("--report", required=True, help="training report (.json)")
    add_model_args(ap)
    args = ap.parse_args(argv)

    import torch

    from cotmech import lens
    from cotmech.io import RecordError, load_tensors, read_table, write_json
    from cotmech.unembed import LensError
    from cotmech.models import ModelSpecError

    try:
        settings = read_settings(args.settings)
        cfg, seed = config.section(settings, "tuned_lens"), config.value(settings, "seed")
        names = args.datasets or [Path(a).name.split(".")[0] for a in args.activations]
        if not (len(args.activations) == len(args.index) == len(names)):
            raise ValueError("--activations, --index (and --datasets) need the same number of entries")
        resid, groups = [], []
        for a, i, dataset in zip(args.activations, args.index, names):
            t, idx = load_tensors(a), read_table(i)
            if "resid" not in t or t["resid"].shape[0] != len(idx) or "example_id" not in idx:
                raise RecordError(f"{a} / {i}: need tensor 'resid' with one row per index row and column example_id")
            resid.append(t["resid"].float())
            groups += [f"{dataset}/{e}" for e in idx["example_id"]]
        model = load_from_args(args, settings)
        tl, report = lens.run(model, torch.cat(resid), groups, cfg, seed)
    except (RecordError, ModelSpecError, LensError, ValueError, FileNotFoundError) as e:
        return fail(e)
    lens.save_tuned_lens(args.out, tl, extra={"spec": model.spec, "seed": str(seed)})
    write_json(args.report, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
