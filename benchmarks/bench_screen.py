#!/usr/bin/env python
"""AtP-screened exact patching (``patching.method: screened``) against a full exact sweep, one process.

Two parts, on the pairs a study's ``patch_heads`` rule used (``--results``: its results folder, which also gives the
full exact head tables of every patched subtask; without it, random pairs and a full exact sweep computed here):

- **recall** (every ``--subtasks``): AtP on the subtask's pairs, then :func:`cotmech.patching.screen.simulate` on the
  run's full exact table (computed here when the run has none, or a screened one) and AtP's: how deep in AtP's order
  the exact top-k lie (``recall_depth``), how many heads screening evaluates, and whether its top-k equals the full
  sweep's. Exact values of a subset of heads equal the full sweep's, so this is what a screened run of those pairs
  gives (``tests/test_patching_screen.py`` pins it).
- **time** (``--time-subtasks``): on the same pairs, the full exact sweep as the issue filed it (every pair's whole
  prefix run for it, ``head_batch`` heads per forward whatever the suffix), today's full exact sweep (``method:
  exact``) and the screened sweep, seconds and ratios (``--full``: which full sweeps); asserts the screened exact
  values equal the full sweep's (today's if timed: the same numerics) to ``--atol`` and the top-k equal.

  bench_screen.py                                                          # tiny random model, random pairs
  bench_screen.py --model embedded:qwen2.5-coder-1.5b-instruct --dtype bfloat16 --threads 2 \\
      --results results-findings/qwen2.5-coder-1.5b --config config/findings.yaml --time-subtasks 0 --out s.json
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from benchargs import model_parser
from cotmech.provenance import cpu_model


def main(argv: list[str] | None = None) -> int:
    ap = model_parser(__doc__)
    ap.add_argument("--results", help="a study's model results folder (results/<model>); default: random pairs")
    ap.add_argument("--config", default="config.yaml", help="the study's config (merged into config.yaml)")
    ap.add_argument("--dataset", default="fictional")
    ap.add_argument("--subtasks", type=int, nargs="+", help="default: the config's patching.subtasks")
    ap.add_argument("--time-subtasks", type=int, nargs="*", default=None,
                    help="subtasks timed exact vs screened (default: the first of --subtasks)")
    ap.add_argument("--top-k", type=int, help="default: config patching.screen.top_k")
    ap.add_argument("--candidates", type=int, help="default: config patching.screen.candidates")
    ap.add_argument("--block", type=int, help="default: config patching.screen.block")
    ap.add_argument("--atol", type=float, default=1e-6, help="screened vs full exact values (use ~1e-2 in bf16)")
    ap.add_argument("--full", choices=["both", "filed", "today"], default="both",
                    help="full sweeps timed (the reference of the equality checks: today's if timed, else the filed)")
    ap.add_argument("--out", help="also write the result as JSON here")
    args = ap.parse_args(argv)

    from cotmech import config
    from cotmech.io import read_table
    from cotmech.models import load_model
    from cotmech.patching.atp import atp_sweep
    from cotmech.patching.exact import exact_sweep
    from cotmech.patching.scores import to_matrix
    from cotmech.patching.screen import exact_mask, mean_scores, ranking, screened_sweep, simulate, top_heads
    from scipy.stats import spearmanr

    cfg = config.load(args.config, Path(__file__).resolve().parents[1] / "config.yaml") if args.results else {}
    pc = config.section(cfg, "patching")
    top_k = args.top_k or pc["screen"]["top_k"]
    cand = args.candidates or pc["screen"]["candidates"]
    block = args.block or pc["screen"]["block"]
    subtasks = args.subtasks if args.subtasks is not None else (list(pc["subtasks"]) if args.results else [0])
    timed = args.time_subtasks if args.time_subtasks is not None else subtasks[:1]
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    kw = dict(metric=pc["metric"], direction=pc["direction"])
    ex_kw = dict(head_batch=pc["head_batch"], chunk_tokens=pc["chunk_tokens"], overhead=pc["chunk_overhead"])

    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
            "dtype": args.dtype, "threads": torch.get_num_threads(), "cpu": cpu_model(), "torch": torch.__version__,
            "results": args.results, "top_k": top_k, "candidates": cand, "block": block}
    print(f"{args.model} {args.dtype}, {info['threads']} threads, CPU {info['cpu']}; top_k {top_k}, candidates "
          f"{cand}, block {block}")
    rows, timing, failed = [], [], False
    for k in subtasks:
        pairs = _pairs(args, pc, model, k)
        t0 = time.perf_counter()
        atp = atp_sweep(model, pairs, progress=False, **kw)
        t_atp = time.perf_counter() - t0
        full = exact = None
        if k in timed:
            old = full = None
            t_old = t_full = float("nan")
            if args.full in ("both", "filed"):
                # the code the issue filed: every pair's whole prefix run for it, head_batch heads per forward
                t0 = time.perf_counter()
                old = filed_sweep(model, pairs, head_batch=pc["head_batch"], **kw)
                t_old = time.perf_counter() - t0
            if args.full in ("both", "today"):
                t0 = time.perf_counter()
                full = exact_sweep(model, pairs, progress=False, **kw, **ex_kw)
                t_full = time.perf_counter() - t0
            full = full if full is not None else old
            old = old if old is not None else full
            t0 = time.perf_counter()
            scr, _ = screened_sweep(model, pairs, top_k=top_k, candidates=cand, block=block, progress=False, **kw,
                                    **ex_kw)
            t_scr = time.perf_counter() - t0
            m = exact_mask(scr)
            diff = float(np.max(np.abs(scr.patched[:, m] - full.patched[:, m])))
            s_scr = mean_scores(scr)
            got = top_heads({(int(a), int(b)): float(s_scr[a, b]) for a, b in zip(*np.nonzero(m))}, top_k)
            same_top = set(got) == set(ranking(mean_scores(full))[:top_k])
            old_top = set(ranking(mean_scores(old))[:top_k]) == set(ranking(mean_scores(full))[:top_k])
            timing.append({"subtask": k, "pairs": len(pairs), "exact_filed_s": round(t_old, 2),
                           "exact_s": round(t_full, 2), "screened_s": round(t_scr, 2),
                           "ratio": round(t_full / t_scr, 2), "ratio_filed": round(t_old / t_scr, 2),
                           "exact_heads": int(m.sum()), "max_abs_diff": diff, "top_k_equal": same_top,
                           "filed_top_k_equal": old_top})
            print(f"  time: full exact as filed {t_old:.1f} s, full exact today {t_full:.1f} s, screened "
                  f"{t_scr:.1f} s ({int(m.sum())} heads exact): {t_old / t_scr:.2f}× / {t_full / t_scr:.2f}×; "
                  f"max |Δ| on its exact heads {diff:.2e}; top-{top_k} equal {same_top} (filed sweep's top-{top_k} "
                  f"= today's: {old_top})", flush=True)
            failed |= diff > args.atol or not same_top
            exact = mean_scores(full)
        else:
            path = Path(args.results or ".") / "patching" / args.dataset / f"subtask{k}.parquet"
            table = read_table(path) if args.results and path.exists() else None
            if table is not None and ("exact" not in table or table["exact"].all()):
                exact = to_matrix(table)
            else:  # random pairs, or the run has no full exact table (none, or a screened one)
                if args.results:
                    print(f"subtask {k}: no full exact table in the run: full exact sweep here", flush=True)
                exact = mean_scores(exact_sweep(model, pairs, progress=False, **kw, **ex_kw))
        sim = simulate(exact, mean_scores(atp), top_k, cand, block)
        rho = float(spearmanr(exact.ravel(), mean_scores(atp).ravel()).statistic)
        rows.append({"subtask": k, "pairs": len(pairs), "atp_s": round(t_atp, 2), "spearman": round(rho, 3), **sim})
        print(f"subtask {k}: {len(pairs)} pairs, AtP {t_atp:.1f} s, Spearman {rho:.3f}, exact top-{top_k} within "
              f"AtP's first {sim['recall_depth']}; screening evaluates {sim['evaluated']} heads in {sim['rounds']} "
              f"rounds, top-{top_k} equal: {sim['equal']}", flush=True)
        failed |= not sim["equal"]
    out = {"info": info, "recall": rows, "timing": timing}
    if timing:
        tot_full = sum(t["exact_s"] for t in timing)
        tot_scr = sum(t["screened_s"] for t in timing)
        tot_old = sum(t["exact_filed_s"] for t in timing)
        out["ratio"], out["ratio_filed"] = tot_full / tot_scr, tot_old / tot_scr
        print(f"timed subtasks {[t['subtask'] for t in timing]}: full exact as filed {tot_old:.1f} s, today "
              f"{tot_full:.1f} s, screened {tot_scr:.1f} s: {tot_old / tot_scr:.2f}× / {tot_full / tot_scr:.2f}×")
    print(f"top-{top_k} equal on {sum(r['equal'] for r in rows)} of {len(rows)} subtasks")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 1 if failed else 0


def filed_sweep(model, pairs, metric: str, direction: str, head_batch: int):
    """The full exact sweep as the issue filed it (2026-12-06): per pair its whole prefix's KV cache and reference
    runs, then the sorted heads in flat chunks of ``head_batch`` per forward, whatever the suffix."""
    from cotmech.patch_results import PatchResult
    from cotmech.patching.exact import _roles, all_heads, pair_runs, patch_suffix
    from cotmech.patching.metrics import get_metric

    fn, (b_name, s_name), heads = get_metric(metric), _roles(direction), all_heads(model)
    patched = np.full((len(pairs), model.n_layers, model.n_heads), np.nan)
    base, source = np.zeros(len(pairs)), np.zeros(len(pairs))
    for i, pair in enumerate(pairs):
        pr = pair_runs(model, pair)
        base[i], source[i] = (float(fn(pr.runs[w].logits, pr.ref)[0]) for w in (b_name, s_name))
        for at in range(0, len(heads), head_batch):
            chunk = heads[at:at + head_batch]
            vals = fn(patch_suffix(model, pr, chunk, direction), pr.ref).detach().double().numpy()
            for (lay, h), v in zip(chunk, vals):
                patched[i, lay, h] = v
    return PatchResult("exact", metric, direction, [p.pair_id for p in pairs], [p.subtask for p in pairs], patched,
                       base, source)


def _pairs(args, pc, model, k: int):
    """The rule's pairs of subtask ``k`` (the first ``patching.n_pairs``), or random pairs on a random model."""
    from cotmech.patching.data import load_pairs, make_pair

    if args.results:
        pairs = load_pairs(Path(args.results) / "pairs" / f"{args.dataset}.jsonl", subtask=k, limit=pc["n_pairs"])
        if not pairs:
            raise SystemExit(f"{args.results}: no pairs of subtask {k}")
        return pairs
    g = torch.Generator().manual_seed(k)
    V = min(500, model.vocab_size)
    out = []
    for i in range(6):
        T, f = 40 + 3 * i, 30 + i
        clean = torch.randint(3, V, (T,), generator=g).tolist()
        bad = list(clean)
        bad[f] = 3 + (clean[f] + 5) % (V - 3)
        out.append(make_pair(f"r{k}-{i}", clean, bad, answer_id=int(torch.randint(3, V, (1,), generator=g))))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
