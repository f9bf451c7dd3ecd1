#!/usr/bin/env python
"""A real rule's work in bf16 both ways (``model.bf16_matmul``: native kernels and float32 products), one process.

Runs the configured patching method (``patching.method``, e.g. screened) on the pairs a study's ``patch_heads`` used
for one subtask (``--results``: its results folder), once per way, and prints seconds, the ratio native / float32,
and how far the two bf16 results differ: overlap of the top-k heads (among heads with exact values in both) and the
largest score difference over the common top-k. Both ways are bf16 runs; they differ by the order of fp32 sums.

  bench_bf16_matmul.py --model embedded:qwen2.5-coder-1.5b-instruct --threads 2 \\
      --results results-findings/qwen2.5-coder-1.5b --config config/findings.yaml --subtask 4 --out m.json
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchargs import model_parser
from cotmech.provenance import cpu_model


def main(argv: list[str] | None = None) -> int:
    ap = model_parser(__doc__, dtype="bfloat16")
    ap.add_argument("--results", required=True, help="a study's model results folder (results/<model>)")
    ap.add_argument("--config", default="config.yaml", help="the study's config (merged into config.yaml)")
    ap.add_argument("--dataset", default="fictional")
    ap.add_argument("--subtask", type=int, required=True)
    ap.add_argument("--out", help="also write the result as JSON here")
    args = ap.parse_args(argv)
    from cotmech import config
    from cotmech.models import load_model
    from cotmech.patching.data import load_pairs
    from cotmech.patching.run import sweep
    from cotmech.patching.screen import exact_mask, mean_scores, top_heads

    if args.dtype != "bfloat16":
        raise SystemExit("--dtype: the two ways differ only for bfloat16")
    if args.threads:
        torch.set_num_threads(args.threads)
    pc = config.load(args.config, "config.yaml")["patching"]
    k_top = pc["screen"]["top_k"]
    pairs = load_pairs(Path(args.results) / "pairs" / f"{args.dataset}.jsonl", subtask=args.subtask,
                       limit=pc["n_pairs"])
    runs = {}
    for way in ("float32", "native"):
        model = load_model(args.model, dtype="bfloat16", device=args.device, bf16_matmul=way)
        t0 = time.perf_counter()
        res = sweep(model, pairs, pc["method"], pc, progress=False)
        seconds = time.perf_counter() - t0
        scores, mask = mean_scores(res), exact_mask(res)
        runs[way] = {"seconds": seconds, "scores": scores, "mask": mask, "resolved": model.info["bf16_matmul"]}
        print(f"{way:8s} {seconds:8.1f} s  {int(mask.sum())} heads with exact values", flush=True)
        del model
    a, b = runs["float32"], runs["native"]
    both = a["mask"] & b["mask"]
    L, H = both.shape
    top = {w: top_heads({(lay, h): float(r["scores"][lay, h]) for lay in range(L) for h in range(H) if both[lay, h]},
                        k_top) for w, r in runs.items()}
    common = set(top["float32"]) & set(top["native"])
    diff = max(abs(float(a["scores"][h] - b["scores"][h])) for h in common) if common else float("nan")
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "model": args.model,
           "method": pc["method"], "subtask": args.subtask, "pairs": len(pairs),
           "seconds": {w: round(r["seconds"], 2) for w, r in runs.items()},
           "resolved": {w: r["resolved"] for w, r in runs.items()},
           "native_over_float32": round(b["seconds"] / a["seconds"], 3),
           "top_k": k_top, "top_k_overlap": len(common), "top_k_same_order": top["float32"] == top["native"],
           "max_abs_score_diff_common_top_k": round(diff, 5),
           "max_abs_score_top_k": round(max(abs(float(a["scores"][h])) for h in top["float32"]), 5),
           "top": {w: [list(h) for h in t] for w, t in top.items()}}
    print(f"native / float32 time {out['native_over_float32']}; top-{k_top} overlap {len(common)} "
          f"(same order: {out['top_k_same_order']}); max |Δscore| over the common top-{k_top} {diff:.4g} "
          f"(scores up to {out['max_abs_score_top_k']:.3g})")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
