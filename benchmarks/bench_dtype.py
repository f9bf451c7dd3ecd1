#!/usr/bin/env python
"""bf16 against fp32 on this machine, one process: what ``model.dtype: auto`` and ``model.bf16_matmul: auto``
should pick.

Times, in each dtype (bf16 twice: torch's bf16 kernels, ``bf16_matmul: native``, and linear layers multiplied in
float32, ``bf16_matmul: float32``), a forward of the model over ``--tokens`` random tokens (no KV cache, last-position logits, as
the patching and knockout forwards) and one product of the model's MLP shape ([tokens, d_model] x [d_model, d_mlp]),
best of ``--repeat``; prints seconds, GFLOP/s of the product, the ratios to fp32, the largest logit difference of
the two bf16 ways, and what ``auto`` picks here (:func:`cotmech.models.cpu_has_native_bf16`).

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
    from cotmech.models import cpu_has_native_bf16, float32_linears, load_model, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, logits = [], {}
    variants = [("bfloat16", "native"), ("bfloat16", "float32"), ("float32", "native")]
    for dtype, matmul in variants:
        name = dtype if dtype == "float32" else f"bfloat16/{matmul}"
        model = load_model(args.model, dtype=dtype, device=args.device, bf16_matmul=matmul)
        cfg = model.hf.config
        d, d_mlp = cfg.hidden_size, cfg.intermediate_size
        g = torch.Generator().manual_seed(0)
        for n in args.tokens:
            ids = torch.randint(0, model.vocab_size, (1, n), generator=g).to(model.device)
            x = torch.randn(n, d, generator=g).to(model.device, model.dtype)
            lin = torch.nn.Linear(d, d_mlp, bias=False).to(model.device, model.dtype)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(d_mlp, d, generator=g))
            if model.info["bf16_matmul"] == "float32":  # the product as the model's linear layers compute it
                float32_linears(lin)
            with torch.inference_mode():
                t_fwd = best(model, lambda: model.hf(input_ids=ids, use_cache=False, logits_to_keep=1), args.repeat)
                t_mm = best(model, lambda: lin(x), args.repeat)
                logits[(name, n)] = model.hf(input_ids=ids, use_cache=False, logits_to_keep=1).logits.float().cpu()
            rows.append({"dtype": name, "tokens": n, "forward_s": t_fwd, "product_s": t_mm,
                         "product_gflops": round(2 * n * d * d_mlp / t_mm / 1e9, 1)})
            print(f"{name:17s} {n:4d} tokens: forward {t_fwd:.3f} s, product [{n}, {d}] x [{d}, {d_mlp}] "
                  f"{t_mm * 1e3:.1f} ms ({rows[-1]['product_gflops']} GFLOP/s)", flush=True)
        del model
    by = {(r["dtype"], r["tokens"]): r for r in rows}
    for n in args.tokens:
        f = by[("float32", n)]
        for name in ("bfloat16/native", "bfloat16/float32"):
            b = by[(name, n)]
            print(f"{n:4d} tokens: {name} / fp32 time: forward {b['forward_s'] / f['forward_s']:.2f}, product "
                  f"{b['product_s'] / f['product_s']:.2f}")
        a, b = logits[("bfloat16/native", n)], logits[("bfloat16/float32", n)]
        diff = {"tokens": n, "max_abs_logit_diff": float((a - b).abs().max()), "max_abs_logit": float(a.abs().max()),
                "same_argmax": bool(torch.equal(a.argmax(-1), b.argmax(-1))),
                "max_abs_logit_diff_vs_fp32": float((a - logits[("float32", n)]).abs().max())}
        rows.append(diff)
        print(f"{n:4d} tokens: bf16 native vs float32 matmul: max |Δlogit| {diff['max_abs_logit_diff']:.3g} (of "
              f"{diff['max_abs_logit']:.3g}; native bf16 vs fp32: {diff['max_abs_logit_diff_vs_fp32']:.3g}), "
              f"same argmax {diff['same_argmax']}")
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
