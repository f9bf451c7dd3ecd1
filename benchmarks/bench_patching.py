#!/usr/bin/env python
"""Benchmark of head-level activation patching: naive vs exact vs AtP on the same inputs, one process.

Prints, per method, seconds per full head sweep (per pair), the ratio to the baseline and max |Δscore| vs naive
(per-pair normalised KL scores, over the heads naive ran). The baseline (``× base``) is ``hook`` when it runs:
the fastest honest one-forward-per-head loop (plain forward pre-hook on o_proj, the model's own attention,
last-position logits, same dtype; :func:`cotmech.patching.exact.hook_sweep`), else ``naive`` (one nnsight
trace per head, the reference numbers). ``--naive-heads N`` times naive and hook on N heads spread evenly over
the layers and extrapolates to all heads (documented in the output); 0 = all heads.
``exact`` attends over the shared prefix with one product for all batch rows (``prefix_attention=
"shared"``, the default); ``exact-concat`` is the same sweep with the prefix copied into every row and the
model's own attention (the previous implementation), for comparison in the same run; ``exact-tokens`` sizes
each forward to the pair's suffix (``--chunk-tokens``, whole layers, at most ``--head-batch`` heads; the workflow's
``patching.chunk_tokens``) where ``exact`` always patches ``--head-batch`` heads per forward; likewise ``atp`` works on
the suffix with the shared prefix cache and ``atp-full`` on the whole inputs (the previous implementation).

Cases (see BENCHMARKS.md):
  CPU:  --model embedded:qwen2.5-coder-1.5b-instruct --source paper          (~600-token paper prompts)
  GPU:  --model random:llama-2-7b --source random --tokens 512 1024 --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch


def paper_pairs(model, n: int, min_tokens: int, seed: int) -> list:
    """Pairs from our PrOntoQA generator + the paper's 6-shot prompt (gold CoT), longest-context subtasks first."""
    from cotmech.pairs import build_pairs
    from cotmech.patching.data import pair_from_record
    from cotmech.prontoqa.datasets import build_dataset
    from cotmech.prontoqa.prompts import build_prompt

    recs = build_dataset("fictional", {"ontology": "fictional", "hops": 2, "style": "paper", "n": 4}, seed)
    for r in recs:
        r["prompt"] = build_prompt(r, shots=6)
    raw, _ = build_pairs(recs, model.tokenizer, "fictional", seed)
    pairs = [pair_from_record(r) for r in raw if len(r["clean_ids"]) >= min_tokens]
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)
    return [pairs[i] for i in sorted(idx)]


def random_pairs(model, n: int, tokens: int, diff_from_end: int, seed: int) -> list:
    """Random token sequences; the corrupt one differs at one position ``diff_from_end`` tokens before the end."""
    from cotmech.patching.data import make_pair

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(3, model.vocab_size, (tokens,), generator=g).tolist()
        bad = list(ids)
        f = tokens - diff_from_end
        bad[f] = 3 + (ids[f] + 1 - 3) % (model.vocab_size - 3)
        out.append(make_pair(f"rand-{tokens}-{i}", ids, bad, answer_id=ids[-1], corrupt_answer_id=bad[f]))
    return out


def spread_heads(model, k: int) -> list[tuple[int, int]]:
    heads = [(lay, h) for lay in range(model.n_layers) for h in range(model.n_heads)]
    if k <= 0 or k >= len(heads):
        return heads
    idx = np.linspace(0, len(heads) - 1, k).round().astype(int)
    return [heads[i] for i in sorted(set(idx.tolist()))]


def sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def profile_exact(model, pairs, head_batch: int, rows: int = 25) -> None:
    """One more exact sweep under torch.profiler (not timed): the operators that take the time."""
    from torch.profiler import ProfilerActivity, profile

    from cotmech.patching.exact import exact_sweep

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        exact_sweep(model, pairs, head_batch=head_batch, progress=False)
        sync(model)
    if model.device.type == "cuda":  # where the host waits for the GPU during one exact batch
        import warnings
        from collections import Counter

        from cotmech.patching.exact import all_heads

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                exact_sweep(model, pairs[:1], heads=all_heads(model)[:head_batch], head_batch=head_batch,
                            progress=False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        where = Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
        print(f"-- host-device synchronisations in one exact batch incl. its pair runs: {sum(where.values())}; "
              f"by caller: {where.most_common(12)}")
    key = "cuda_time_total" if model.device.type == "cuda" else "cpu_time_total"
    print(f"-- profile of one exact sweep (head batch {head_batch}), top {rows} by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60))


def bench_case(model, pairs, args, label: str) -> dict:
    from cotmech.patching.atp import atp_sweep
    from cotmech.patching.exact import all_heads, exact_sweep, hook_sweep, naive_sweep

    n_heads = model.n_layers * model.n_heads
    sample = spread_heads(model, args.naive_heads)
    # warm-up (kernels, allocator, nnsight) on the first pair: two naive heads, one full exact batch, AtP
    naive_sweep(model, pairs[:1], heads=sample[:2], progress=False)
    hook_sweep(model, pairs[:1], heads=sample[:2], progress=False)
    exact_sweep(model, pairs[:1], heads=all_heads(model)[:max(args.head_batch)], head_batch=max(args.head_batch),
                progress=False)
    atp_sweep(model, pairs[:1], pair_batch=1, progress=False)
    runs = []  # (label, method, head batch)
    for m in args.methods:
        if m.startswith("exact"):  # exact-tokens: --head-batch is its cap
            runs += [(m if len(args.head_batch) == 1 else f"{m}/b{hb}", m, hb) for hb in args.head_batch]
        else:
            runs.append((m, m, None))
    res, secs = {}, {}
    for name, method, hb in runs:
        sync(model)
        t0 = time.perf_counter()
        if method == "naive":
            res[name] = naive_sweep(model, pairs, heads=sample, pair_batch=1, progress=False)
        elif method == "hook":
            res[name] = hook_sweep(model, pairs, heads=sample, progress=False)
        elif method in ("exact", "exact-concat", "exact-tokens"):
            res[name] = exact_sweep(model, pairs, head_batch=hb, progress=False,
                                    prefix_attention="concat" if method == "exact-concat" else "shared",
                                    chunk_tokens=args.chunk_tokens if method == "exact-tokens" else None)
        else:  # atp: on the suffix after first_diff (the default); atp-full: the whole inputs
            res[name] = atp_sweep(model, pairs, pair_batch=1, progress=False, suffix=method == "atp")
        sync(model)
        dt = time.perf_counter() - t0
        per_pair = dt / len(pairs)
        secs[name] = per_pair * (n_heads / len(sample) if name in ("naive", "hook") else 1.0)
    lengths = [p.length for p in pairs]
    suffix = [p.length - p.first_diff for p in pairs]
    out = {"case": label, "model": model.spec, "dtype": str(model.dtype).replace("torch.", ""),
           "device": torch.cuda.get_device_name() if model.device.type == "cuda" else platform.processor() or "cpu",
           "pairs": len(pairs), "tokens_mean": float(np.mean(lengths)), "suffix_mean": float(np.mean(suffix)),
           "n_heads": n_heads, "naive_heads_timed": len(sample), "methods": {}}
    ref = res.get("naive")
    mask = np.zeros((model.n_layers, model.n_heads), dtype=bool)
    for lay, h in sample:
        mask[lay, h] = True
    print(f"\n== {label}: {model.spec} {out['dtype']} on {out['device']}; {len(pairs)} pair(s), "
          f"{out['tokens_mean']:.0f} tokens, suffix {out['suffix_mean']:.0f}; naive timed on {len(sample)}/"
          f"{n_heads} heads and extrapolated")
    base = "hook" if "hook" in secs else "naive"
    out["baseline"] = base
    norm = float(np.min(np.abs(next(iter(res.values())).source - next(iter(res.values())).base)))
    out["min_abs_normaliser"] = norm
    print(f"smallest |m_source - m_base| (score normaliser, KL_noise for kl): {norm:.3e}")
    print(f"{'method':16s} {'s/sweep':>10s} {'× ' + base:>9s} {'max|Δscore|':>12s} {'max|Δmetric|':>13s}")
    for name, r in res.items():
        delta = dmetric = float("nan")
        if ref is not None:
            d = np.abs(r.per_pair_scores() - ref.per_pair_scores())[:, mask]
            delta = float(np.nanmax(d))
            dmetric = float(np.nanmax(np.abs(r.patched - ref.patched)[:, mask]))
        speed = secs[base] / secs[name] if base in secs else float("nan")
        out["methods"][name] = {"seconds_per_sweep": secs[name], f"speedup_vs_{base}": speed, "max_abs_dscore": delta,
                                "max_abs_dmetric": dmetric, "head_batch": r.info.get("head_batch")}
        print(f"{name:16s} {secs[name]:10.3f} {speed:9.1f} {delta:12.2e} {dmetric:13.2e}")
    exact_key = next((k for k in res if k.split("/")[0] == "exact"), None)
    if args.profile and exact_key:
        profile_exact(model, pairs, next(hb for k, _, hb in runs if k == exact_key))
    if exact_key and "atp" in res:
        from scipy.stats import spearmanr

        rho = spearmanr(res[exact_key].per_pair_scores().mean(0).ravel(), res["atp"].per_pair_scores().mean(0).ravel())
        out["atp_spearman_vs_exact"] = float(rho.statistic)
        print(f"AtP vs exact Spearman (mean per-pair score): {rho.statistic:.3f}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--source", choices=["paper", "random"], default="paper",
                    help="paper: our generator + 6-shot paper prompt; random: random tokens")
    ap.add_argument("--tokens", type=int, nargs="+", default=[512], help="random source: sequence lengths")
    ap.add_argument("--diff-from-end", type=int, nargs="+", default=[40],
                    help="random source: corruption offset(s) from the end (the suffix exact recomputes)")
    ap.add_argument("--min-tokens", type=int, default=560, help="paper source: shortest pair kept")
    ap.add_argument("--pairs", type=int, default=1, help="pairs per case")
    ap.add_argument("--naive-heads", type=int, default=0, help="heads naive and hook are timed on (0 = all)")
    ap.add_argument("--head-batch", type=int, nargs="+", default=[64],
                    help="heads per exact forward; several values time exact once per value (labelled /bN)")
    ap.add_argument("--methods", nargs="+", default=["hook", "naive", "exact", "atp"],
                    choices=["hook", "naive", "exact", "exact-concat", "exact-tokens", "atp", "atp-full"])
    ap.add_argument("--chunk-tokens", type=int, default=640,
                    help="exact-tokens: suffix tokens per forward (patching.chunk_tokens), at most --head-batch heads")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one exact sweep per case")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from cotmech.models import load_model

    t0 = time.perf_counter()
    model = load_model(args.model, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s", flush=True)
    results = []
    if args.source == "paper":
        results.append(bench_case(model, paper_pairs(model, args.pairs, args.min_tokens, args.seed), args, "paper"))
    else:
        for d in args.diff_from_end:
            for T in args.tokens:
                pairs = random_pairs(model, args.pairs, T, d, args.seed)
                results.append(bench_case(model, pairs, args, f"random-{T}-suffix{d}"))
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    if args.out:
        from cotmech.io import write_json

        write_json(args.out, {"meta": meta, "results": results})
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
