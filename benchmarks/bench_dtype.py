#!/usr/bin/env python
"""bf16 against fp32 on this machine, one process: what ``model.dtype: auto`` should pick.

Times, in each dtype, a forward of the model over ``--tokens`` random tokens (no KV cache, last-position logits, as
the patching and knockout forwards) and one product of the model's MLP shape ([tokens, d_model] x [d_model, d_mlp]),
best of ``--repeat``; prints seconds, GFLOP/s of the product, the ratio bf16 / fp32, and what ``auto`` picks here
(:func:`cotmech.models.cpu_has_native_bf16`).

  bench_dtype.py --model embedded:qwen2.5-coder-1.5b-instruct --threads 2 --out dtype.json
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchargs import model_parser
from bench_patching import sync
from cotmech.provenance import cpu_model


def best(model, fn, repeat: int) -> float:
    """Seconds of ``fn()``, the fastest of ``repeat`` runs after one warm-up (the device synchronised around each)."""
    fn()
    times = []
    for _ in range(repeat):
        sync(model)
        t0 = time.perf_counter()
        fn()
        sync(model)
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = model_parser(__doc__)
    ap.add_argument("--tokens", type=int, nargs="+", default=[25, 150, 560])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    from cotmech.models import cpu_has_native_bf16, load_model, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for dtype in ("bfloat16", "float32"):
        model = load_model(args.model, dtype=dtype, device=args.device)
        cfg = model.hf.config
        d, d_mlp = cfg.hidden_size, cfg.intermediate_size
        g = torch.Generator().manual_seed(0)
        for n in args.tokens:
            ids = torch.randint(0, model.vocab_size, (1, n), generator=g).to(model.device)
            x = torch.randn(n, d, generator=g).to(model.device, model.dtype)
            w = torch.randn(d_mlp, d, generator=g).to(model.device, model.dtype)
            with torch.inference_mode():
                t_fwd = best(model, lambda: model.hf(input_ids=ids, use_cache=False, logits_to_keep=1), args.repeat)
                t_mm = best(model, lambda: torch.nn.functional.linear(x, w), args.repeat)
            rows.append({"dtype": dtype, "tokens": n, "forward_s": t_fwd, "product_s": t_mm,
                         "product_gflops": round(2 * n * d * d_mlp / t_mm / 1e9, 1)})
            print(f"{dtype:9s} {n:4d} tokens: forward {t_fwd:.3f} s, product [{n}, {d}] x [{d}, {d_mlp}] "
                  f"{t_mm * 1e3:.1f} ms ({rows[-1]['product_gflops']} GFLOP/s)", flush=True)
        del model
    by = {(r["dtype"], r["tokens"]): r for r in rows}
    for n in args.tokens:
        b, f = by[("bfloat16", n)], by[("float32", n)]
        print(f"{n:4d} tokens: bf16 / fp32 time: forward {b['forward_s'] / f['forward_s']:.2f}, product "
              f"{b['product_s'] / f['product_s']:.2f}")
    auto = resolve_dtype("auto", torch.device(args.device))
    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
            "threads": torch.get_num_threads(), "cpu": cpu_model(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_matrix_units": cpu_has_native_bf16(),
            "auto_picks": str(auto).removeprefix("torch.")}
    print(f"CPU {info['cpu']} ({info['cpu_capability']}), {info['threads']} threads; bf16 matrix units: "
          f"{info['bf16_matrix_units']}; dtype auto picks {info['auto_picks']} on {args.device}")
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
