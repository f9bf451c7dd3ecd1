#!/usr/bin/env python
"""Probing for token mixing along ontology relations (E8): generate original-style 2-hop questions with relevant
distractors, build k-shot probe prompts, take the residual stream at the pair tokens (one forward per prompt,
batched), and train linear and MLP probes per layer on the real and the control task.

Writes --out-dir/accuracy.parquet (the whole curve: shots, layer, probe, task, test acc with CI, val_acc, n_*),
selected.csv (per shots and probe: the layer chosen on validation accuracy, the test accuracy there, the control
task and the word-type-only baseline), samples.parquet (the balanced pairs with split, labels and word types)
and accuracy.png/.pdf (F-probe). Validation and test questions use novel concept words. Example:
  probe.py --settings '{"model": {"spec": "random:tiny-llama", "dtype": "float32", "device": "cpu"},
                        "probing": {"n_questions": 12, "shots": [0, 1]}, "seed": 1}' --out-dir out/
"""
from __future__ import annotations

import sys
import time

from cotmech import config, probing
from cotmech.cli import add_model_args, fail, load_from_args, parser, read_settings
from cotmech.io import RecordError, write_table
from cotmech.models import ModelSpecError


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--settings", default="{}", help="JSON with 'model', 'probing', 'seed' (what the rule passes)")
    add_model_args(ap)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        s = read_settings(args.settings)
        cfg, seed = config.section(s, "probing"), config.value(s, "seed")
        prepared = probing.prepare(cfg, seed)
        model = load_from_args(args, s)
    except (RecordError, ModelSpecError, ValueError) as e:
        return fail(e)
    acc, selected = probing.run(model, prepared, cfg, seed)
    write_table(f"{args.out_dir}/accuracy.parquet", acc)
    write_table(f"{args.out_dir}/selected.csv", selected)
    write_table(f"{args.out_dir}/samples.parquet", prepared[2])
    probing.plot_accuracy(acc, model.n_layers, f"{args.out_dir}/accuracy", selected)
    print(f"done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
