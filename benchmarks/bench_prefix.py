#!/usr/bin/env python
"""Benchmark of the shared few-shot prefix run once, one process, today's code against the previous one:

- ``cloze`` (E3, rule induction_cloze): the screen's top-1 forwards over the shared cloze exemplars
  (:func:`cotmech.tracing.prefixed_last_logits`) vs a plain left-padded forward of every whole prompt, the same
  seeded candidates. Prints whether both kept the same pairs (asserted unless ``--allow-flips``: top-1 tokens can
  differ in near-ties in bfloat16, which then keeps other pairs).
- ``probe`` (E8, rule probe): the residual stream at the pair tokens of ``--probe-questions`` probe prompts with
  ``--probe-shots`` exemplars (:func:`cotmech.probing.residuals_over_prefix`) vs every whole prompt
  (:func:`cotmech.probing.residuals_plain`); prints the largest difference of the residuals.
- ``means`` (E6/E7/E9 mean ablation, rules knockout_subtask, cross_subtask, trace_flow): the reference means of
  ``--means-refs`` false-ontology pairs of one subtask (6-shot prompt, gold CoT) over the exemplars they share
  (:func:`cotmech.ablation.head_means`, ``method="cached"``) vs every whole reference (``method="full"``); prints
  the largest difference of the means.

  bench_prefix.py                                                              # tiny random model, seconds
  bench_prefix.py --model embedded:qwen2.5-coder-1.5b-instruct --dtype bfloat16 --threads 2 --n 5 --allow-flips
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import torch

from benchargs import model_parser
from cotmech.provenance import cpu_model


def main(argv: list[str] | None = None) -> int:
    ap = model_parser(__doc__)
    ap.add_argument("--n", type=int, default=10, help="usable pairs per corruption to find")
    ap.add_argument("--shots", type=int, default=9, help="cloze exemplars (the findings config: 9)")
    ap.add_argument("--max-candidates", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--allow-flips", action="store_true", help="report, do not assert, differing kept pairs")
    ap.add_argument("--cases", nargs="+", default=["cloze", "probe", "means"], choices=["cloze", "probe", "means"])
    ap.add_argument("--means-refs", type=int, default=30, help="reference pairs (the findings config: 30)")
    ap.add_argument("--means-subtask", type=int, default=4)
    ap.add_argument("--probe-questions", type=int, default=8)
    ap.add_argument("--probe-shots", type=int, default=4)
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)

    from cotmech.batching import common_prefix_len, last_logits, left_pad
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

    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
            "dtype": args.dtype, "threads": torch.get_num_threads(), "cpu": cpu_model(), "torch": torch.__version__}
    print(f"{args.model} {args.dtype}, {info['threads']} threads, CPU {info['cpu']}")
    out, failed = {"info": info}, False
    if "cloze" in args.cases:
        ind.build_pairs(model, 1, shots=args.shots, seed=args.seed + 1, require_correct=True, max_candidates=2)
        t_plain, k_plain = screen(plain)
        t_new, k_new = screen(ind.prefixed_last_logits)
        same = k_plain == k_new
        differ = {k: sorted(set(k_plain[k]) ^ set(k_new[k])) for k in k_new}
        out["cloze"] = {"n": args.n, "shots": args.shots, "max_candidates": args.max_candidates,
                        "kept": {k: len(v) for k, v in k_new.items()}, "seconds_plain": t_plain,
                        "seconds_prefixed": t_new, "ratio": t_plain / t_new, "same_pairs": same,
                        "pairs_kept_by_one_screen_only": differ}
        print(f"cloze screen ({args.shots} shots, n {args.n}): kept {out['cloze']['kept']}\n"
              f"  plain (every whole prompt) {t_plain:8.2f} s\n  prefixed (today)          {t_new:8.2f} s\n"
              f"  ratio plain/prefixed      {t_plain / t_new:8.2f}×   same kept pairs: {same}")
        failed |= not same and not args.allow_flips
    if "probe" in args.cases:
        from cotmech import probing
        from cotmech.prontoqa.prompts import build_prompt

        cfg = {"ontology": "fictional", "hops": 2, "n_questions": args.probe_questions, "test_fraction": 0.3,
               "val_fraction": 0.2, "novel_words": False}
        records, _, samples, _ = probing.prepare(cfg, args.seed)
        prompts = [build_prompt(r, shots=args.probe_shots, header="probe", seed=args.seed) for r in records]
        tok = model.tokenizer
        ids = [tok(p).input_ids for p in prompts]
        pos = []
        for r, p in zip(records, prompts):
            offs = tok(p, return_offsets_mapping=True)["offset_mapping"]
            base = p.rfind(r["question"])
            chars = sorted(set(samples.loc[samples["qid"] == r["id"], ["a_char", "b_char"]].to_numpy().ravel()))
            pos.append([probing.token_index(offs, base + int(c)) for c in chars] or [len(ids[-1]) - 1])
        probing.residuals_at(model, prompts[:1], pos[:1], 4)  # warm-up
        t0 = time.perf_counter()
        ref = probing.residuals_plain(model, ids, pos, 4)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        new = probing.residuals_at(model, prompts, pos, 4)
        t_new = time.perf_counter() - t0
        diff = max(float((a - b).abs().max()) for a, b in zip(ref, new))
        scale = max(float(a.abs().max()) for a in ref)
        out["probe"] = {"questions": len(prompts), "shots": args.probe_shots,
                        "tokens_mean": sum(map(len, ids)) / len(ids), "seconds_plain": t_plain,
                        "seconds_prefixed": t_new, "ratio": t_plain / t_new, "max_abs_diff": diff,
                        "max_abs_residual": scale}
        print(f"probe residuals ({len(prompts)} prompts, {args.probe_shots} shots, "
              f"{out['probe']['tokens_mean']:.0f} tokens on average)\n"
              f"  plain (every whole prompt) {t_plain:8.2f} s\n  prefixed (today)          {t_new:8.2f} s\n"
              f"  ratio plain/prefixed      {t_plain / t_new:8.2f}×   max |Δresidual| {diff:.3g} (of {scale:.3g})")
    if "means" in args.cases:
        from bench_knockout import pairs_of
        from cotmech.ablation import head_means

        refs = [p["clean_ids"] for p in pairs_of(model, "falseont", "false", 2 * args.means_refs, args.seed)
                if int(p["subtask"]) == args.means_subtask][:args.means_refs]
        head_means(model, [r[:40] for r in refs[:2]], 2)  # warm-up
        t0 = time.perf_counter()
        ref = head_means(model, refs, 8, method="full")
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        new = head_means(model, refs, 8, method="cached")
        t_new = time.perf_counter() - t0
        diff = float((ref.by_end - new.by_end).abs().max())
        scale = float(ref.by_end.abs().max())
        lengths = [len(r) for r in refs]
        out["means"] = {"references": len(refs), "tokens_mean": sum(lengths) / len(refs),
                        "shared_tokens": common_prefix_len(refs), "seconds_plain": t_plain, "seconds_prefixed": t_new,
                        "ratio": t_plain / t_new, "max_abs_diff": diff, "max_abs_mean": scale}
        print(f"reference means ({len(refs)} references, {out['means']['tokens_mean']:.0f} tokens on average, "
              f"{out['means']['shared_tokens']} shared)\n"
              f"  plain (every whole reference) {t_plain:8.2f} s\n  prefixed (today)              {t_new:8.2f} s\n"
              f"  ratio plain/prefixed          {t_plain / t_new:8.2f}×   max |Δmean| {diff:.3g} (of {scale:.3g})")
    print(json.dumps(out))
    if args.out:
        from cotmech.io import write_json

        write_json(args.out, out)
    if failed:
        raise SystemExit("error: the two cloze screens kept different pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
