#!/usr/bin/env python
"""Benchmark of the induction cloze screen (E3, rule induction_cloze): the shared few-shot exemplars run once per
screening call (:func:`cotmech.tracing.prefixed_last_logits`, today's code) against a plain left-padded forward of
every whole prompt (the previous screen), one process, the same seeded candidates.

Prints seconds of each screen, the ratio, and whether both kept the same pairs (asserted unless ``--allow-flips``:
top-1 tokens can differ in near-ties in bfloat16, which then keeps other pairs).

  bench_cloze.py                                                              # tiny random model, seconds
  bench_cloze.py --model embedded:qwen2.5-coder-1.5b-instruct --dtype bfloat16 --threads 2 --n 10
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone

import torch


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:tiny-llama")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--n", type=int, default=10, help="usable pairs per corruption to find")
    ap.add_argument("--shots", type=int, default=9, help="cloze exemplars (the findings config: 9)")
    ap.add_argument("--max-candidates", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--allow-flips", action="store_true", help="report, do not assert, differing kept pairs")
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)

    from cotmech.batching import last_logits, left_pad
    from cotmech.models import load_model
    from cotmech.patching import induction as ind

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    pad = model.tokenizer.pad_token_id

    def plain(model_, seqs, batch_size):  # the previous screen: every whole prompt, left-padded
        return last_logits(model_, left_pad(seqs, pad)).cpu()

    def screen(fn):
        real = ind.prefixed_last_logits
        ind.prefixed_last_logits = fn
        try:
            t0 = time.perf_counter()
            kept = ind.build_pairs(model, args.n, shots=args.shots, seed=args.seed, require_correct=True,
                                   max_candidates=args.max_candidates)
            return time.perf_counter() - t0, {k: [p.pair_id for p in v] for k, v in kept.items()}
        finally:
            ind.prefixed_last_logits = real

    ind.build_pairs(model, 1, shots=args.shots, seed=args.seed + 1, require_correct=True, max_candidates=2)  # warm-up
    t_plain, k_plain = screen(plain)
    t_new, k_new = screen(ind.prefixed_last_logits)
    same = k_plain == k_new
    differ = {k: sorted(set(k_plain[k]) ^ set(k_new[k])) for k in k_new}
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
           "dtype": args.dtype, "threads": torch.get_num_threads(), "cpu": cpu_model(), "torch": torch.__version__,
           "n": args.n, "shots": args.shots, "max_candidates": args.max_candidates,
           "kept": {k: len(v) for k, v in k_new.items()}, "seconds_plain": t_plain, "seconds_prefixed": t_new,
           "ratio": t_plain / t_new, "same_pairs": same, "pairs_kept_by_one_screen_only": differ}
    print(f"cloze screen, {args.model} {args.dtype}, {out['threads']} threads, CPU {out['cpu']}: kept {out['kept']}")
    print(f"plain (every whole prompt) {t_plain:8.2f} s\nprefixed (today)          {t_new:8.2f} s\n"
          f"ratio plain/prefixed      {t_plain / t_new:8.2f}×   same kept pairs: {same}")
    print(json.dumps(out))
    if args.out:
        from cotmech.io import write_json

        write_json(args.out, out)
    if not same and not args.allow_flips:
        raise SystemExit("error: the two screens kept different pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
