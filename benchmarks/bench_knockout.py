#!/usr/bin/env python
"""Benchmark of the knockout's ablated forwards (E6): today's code against the cached-prefix evaluation, one process.

Inputs: clean pairs of one subtask of the fictional 6-shot dataset and reference pairs of the same subtask of the
false-ontology dataset, built from our generator with the gold CoT (cotmech.pairs; real prompt lengths, ~570 tokens
with the embedded model's tokenizer), and ``--orders`` random head orderings removed at a ``--steps`` grid.

Three runs of the same knockout curves (every removed set of every ordering on every clean sequence):
  baseline  today's code: end-aligned reference means, every whole sequence run (``method="full"``);
  full-seg  the same full-sequence code with the segment-aligned means (start-aligned over the shared few-shot
            prefix): the exhaustive reference for the new path;
  cached    segment-aligned means, the ablated prefix run once per removed set and every suffix over it.
Asserts that ``cached`` gives the same predictions for every removed set (hence the same curves) as ``full-seg``;
prints seconds, the ratio baseline / cached, and how far the segment-aligned curves are from the end-aligned
ones (the documented change of the means, not an error).

``--search``: instead, the operating point of every ordering two ways, both with segment-aligned means and the
cached prefix: *exhaustive* (today's code: every step on every example, then ``operating_point``) and
*bisection* (``circuits.search_curve``: bisection over the steps with early threshold decisions). Prints seconds,
sequences run and the ratio; asserts equal operating points for every ordering whose exhaustive curve does not
rise (the case where bisection is exact; a rising curve is reported) and equal accuracies at every step the
bisection evaluated.

``--versus RESULTS``: one subtask of a finished study (``RESULTS``: its ``results/<model>`` folder, with ``--config``;
its pairs and ranking inputs) two ways: *today* (``cotmech.circuits.run_knockout`` with the config's settings,
what the rule ``knockout_subtask`` runs, timed whole: means, rankings, search, isolation, cross-removal) against
the *issue-filed algorithm* (every step of every ordering evaluated, every sequence run whole, no shared prefix:
``search: exhaustive`` with ``method="full"``), whose ablated forwards are timed on ``--sample-sets`` of its
removed sets over every evaluation sequence and multiplied by its distinct removed sets (the work per set does not
depend on which heads are removed). Like for like: the filed algorithm's work is the same job's, each part done the
filed way: its reference means over whole sequences (``head_means(method="full")``, timed), its rankings (timed,
with every writer component computed, as the filed code did), and its ablated forwards of every
distinct removed set of the curves *and* of the E7 isolation and cross-removal sets today's run evaluated (recorded
while it runs). Printed: the whole job and the curves alone (means, rankings, curves; today's phase times from the
knockout log).

  bench_knockout.py                                                      # tiny random model, seconds
  bench_knockout.py --model embedded:qwen2.5-coder-1.5b-instruct --n-examples 4 --steps 5 --dtype float32
  bench_knockout.py --search --model embedded:qwen2.5-coder-1.5b-instruct --n-examples 16 --steps 11 --dtype bfloat16
  bench_knockout.py --versus results-findings/qwen2.5-coder-1.5b --config config/findings.yaml --subtask 4 \
      --model embedded:qwen2.5-coder-1.5b-instruct --dtype bfloat16 --threads 2
"""
from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
import torch

from benchargs import model_parser
from cotmech.provenance import cpu_model


def pairs_of(model, name: str, ontology: str, n: int, seed: int) -> list[dict]:
    """Pairs of a generated paper-style 2-hop dataset with the 6-shot prompt and the gold CoT (cotmech.pairs)."""
    from cotmech.pairs import build_pairs
    from cotmech.prontoqa.datasets import build_dataset
    from cotmech.prontoqa.prompts import build_prompt

    recs = build_dataset(name, {"ontology": ontology, "hops": 2, "style": "paper", "n": n}, seed)
    for r in recs:
        r["prompt"] = build_prompt(r, shots=6)
    return build_pairs(recs, model.tokenizer, name, seed)[0]


def main(argv: list[str] | None = None) -> int:
    ap = model_parser(__doc__)
    ap.add_argument("--subtask", type=int, default=4, help="subtask of the pairs (later subtasks: longer inputs)")
    ap.add_argument("--n-examples", type=int, default=6, help="clean sequences evaluated")
    ap.add_argument("--n-reference", type=int, default=4, help="reference sequences for the means")
    ap.add_argument("--orders", type=int, default=2, help="random head orderings")
    ap.add_argument("--steps", type=int, default=5, help="grid points over 0..all heads (step_grid)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search", action="store_true", help="exhaustive vs bisection operating points (see above)")
    ap.add_argument("--threshold", type=float, default=0.9, help="operating-point threshold (--search)")
    ap.add_argument("--versus", metavar="RESULTS", help="a finished study's results/<model> folder (see above)")
    ap.add_argument("--config", default="config.yaml", help="--versus: the study's config (merged into config.yaml)")
    ap.add_argument("--sample-sets", type=int, default=3, help="--versus: removed sets timed the filed way")
    args = ap.parse_args(argv)
    if args.versus:
        return versus(args)

    from cotmech import circuits as C
    from cotmech.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    n_rec = max(args.n_examples, args.n_reference) + 2
    clean_all = pairs_of(model, "fictional", "fictional", n_rec, args.seed)
    ref_all = pairs_of(model, "falseont", "false", n_rec, args.seed)
    clean = [p["clean_ids"] for p in clean_all if p["subtask"] == args.subtask][:args.n_examples]
    refs = [p["clean_ids"] for p in ref_all if p["subtask"] == args.subtask][:args.n_reference]
    if not clean or not refs:
        raise SystemExit(f"error: no pairs of subtask {args.subtask} (clean {len(clean)}, reference {len(refs)})")
    prefix = C.alignment_prefix(clean_all, "segment")
    L, H = model.n_layers, model.n_heads
    rng = np.random.default_rng(args.seed)
    grid = C.step_grid(L * H, args.steps)
    sets, plans = [], []
    for _ in range(args.orders):
        scores = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                               "score": rng.random(L * H)})
        plans.append(C.sorted_plan(scores, L, H, grid).sets)
        sets += plans[-1]
    distinct = len({frozenset(s) for s in sets if s})
    print(f"model {args.model} ({args.dtype}, {args.device}, {torch.get_num_threads()} threads), CPU {cpu_model()}")
    print(f"{len(clean)} clean sequences of {min(map(len, clean))}-{max(map(len, clean))} tokens (shared prefix "
          f"{prefix}), {len(refs)} references; {args.orders} orderings × grid {grid}: {distinct} distinct removed "
          f"sets + the unablated baseline")

    if args.search:
        return search(args, model, C, clean, refs, prefix, plans, L * H)
    end_means = C.head_means(model, refs, args.batch_size)
    seg_means = C.head_means(model, refs, args.batch_size, prefix_len=prefix)
    # warm-up (kernels, allocator, nnsight) on short inputs of both paths
    C.ablated_argmax(model, [clean[0][:prefix + 4]], seg_means, sets[1], 1, method="full")
    C.ablated_argmax(model, [clean[0][:prefix + 4]], seg_means, sets[1], 1, method="cached")

    def run(means, method):
        cache: dict = {}
        t0 = time.perf_counter()
        base = C.ablated_argmax(model, clean, means, [], args.batch_size, method)
        curve = C.curve_for_sets(model, clean, means, sets, base, L * H, args.batch_size, cache=cache, method=method)
        return time.perf_counter() - t0, base, curve, cache

    t_base, _, c_base, _ = run(end_means, "full")
    t_full, b_full, c_full, p_full = run(seg_means, "full")
    t_new, b_new, c_new, p_new = run(seg_means, "cached")
    assert torch.equal(b_new, b_full), "unablated predictions differ between cached and full-sequence runs"
    for key, pred in p_full.items():
        assert torch.equal(p_new[key], pred), f"predictions differ for a removed set of {len(key)} heads"
    pd.testing.assert_frame_equal(c_new, c_full)
    n_runs = len(clean) * (1 + distinct)
    print(f"{'run':<10}{'seconds':>10}{'s per seq×set':>16}")
    for name, t in (("baseline", t_base), ("full-seg", t_full), ("cached", t_new)):
        print(f"{name:<10}{t:>10.2f}{t / n_runs:>16.4f}")
    print(f"speed-up baseline / cached: {t_base / t_new:.1f}×; full-seg / cached: {t_full / t_new:.1f}×")
    print(f"equal: cached predictions = full-sequence predictions (segment means) for all {distinct} removed sets")
    print(f"segment vs end alignment: max |Δacc| over the curves {float((c_full.acc - c_base.acc).abs().max()):.3f}")
    return 0


def search(args, model, C, clean, refs, prefix, plans, n_total) -> int:
    """--search: exhaustive curves + operating_point against search_curve, same means, same process."""
    means = C.head_means(model, refs, args.batch_size, prefix_len=prefix)
    C.ablated_argmax(model, [clean[0][:prefix + 4]], means, plans[0][1], 1)  # warm-up
    print("means and warm-up done", flush=True)
    thr = args.threshold

    t0 = time.perf_counter()
    base = C.ablated_argmax(model, clean, means, [], args.batch_size)
    t_base = time.perf_counter() - t0
    seen: dict = {}
    t0 = time.perf_counter()
    ex = []
    for sets in plans:
        c = C.curve_for_sets(model, clean, means, sets, base, n_total, args.batch_size, cache=seen)
        ex.append((c, C.operating_point(c.n_removed.tolist(), c.acc.tolist(), thr)))
    t_ex = time.perf_counter() - t0
    print(f"exhaustive: {t_ex:.1f} s (baseline {t_base:.1f} s)", flush=True)
    n_ex = len(clean) * len(seen)
    seen_b: dict = {}
    t0 = time.perf_counter()
    bi = [C.search_curve(model, clean, means, sets, base, n_total, thr, args.batch_size, seen_b) for sets in plans]
    t_bi = time.perf_counter() - t0
    n_bi = 0
    done: set = set()
    for sets, (c, _) in zip(plans, bi):  # sequences run per distinct removed set (a set shared by orderings once)
        for s, r in zip(sets, c.n_run):
            if frozenset(s) not in done:
                done.add(frozenset(s))
                n_bi += int(r)
    rising = same_op = 0
    for j, ((ce, ie), (cb, ib)) in enumerate(zip(ex, bi)):
        ev = cb[cb.evaluated]
        same = (ev.correct.astype(int).values == ce.correct[cb.evaluated].values).all()
        assert same, f"ordering {j}: accuracies differ"
        mono = bool((np.diff(ce.correct.values) <= 0).all())
        rising += not mono
        same_op += ib == ie
        print(f"ordering {j}: exhaustive correct {ce.correct.tolist()} (n {len(clean)}); operating point "
              f"exhaustive step {ie} ({ce.n_removed[ie]} removed), bisection step {ib} ({cb.n_removed[ib]} removed); "
              f"bisection evaluated steps {ev.index.tolist()}, sequences run per step {cb.n_run.tolist()}")
        if mono:
            assert ib == ie, f"ordering {j}: operating points differ on a non-rising curve"
    print(f"{'run':<12}{'seconds':>10}{'sequences':>11}")
    print(f"{'baseline':<12}{t_base:>10.2f}{len(clean):>11}")
    print(f"{'exhaustive':<12}{t_ex:>10.2f}{n_ex:>11}")
    print(f"{'bisection':<12}{t_bi:>10.2f}{n_bi:>11}")
    print(f"speed-up exhaustive / bisection: {t_ex / t_bi:.1f}× (sequences {n_ex / max(n_bi, 1):.1f}×); with the "
          f"shared unablated baseline: {(t_ex + t_base) / (t_bi + t_base):.1f}×")
    print(f"equal operating points: {same_op} of {len(plans)} orderings (asserted for the {len(plans) - rising} "
          f"non-rising curve(s); {rising} rising, where bisection returns a crossing); evaluated accuracies equal")
    return 0


def versus(args) -> int:
    """--versus: today's knockout of one subtask of a finished study against the issue-filed algorithm."""
    import os
    from pathlib import Path

    from cotmech import circuits as C
    from cotmech import config
    from cotmech.io import read_jsonl
    from cotmech.models import load_model

    cfg = config.load(args.config, Path(__file__).resolve().parents[1] / "config.yaml")
    circ, patching = config.section(cfg, "circuits"), config.section(cfg, "patching")
    seed, mres = int(config.value(cfg, "seed")), Path(args.versus)
    clean = read_jsonl(mres / "pairs" / f"{circ['dataset']}.jsonl")
    ref = read_jsonl(mres / "pairs" / f"{circ['reference']}.jsonl")
    fields = {"results": str(cfg["results"]), "model": mres.name, "mres": str(mres)}
    rankings, skipped = C.knockout_rankings(circ, patching, fields, os.path.exists, [args.subtask])
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    opts = C.knockout_options(circ, [args.subtask])
    bs = opts["batch_size"]
    print(f"model {args.model} ({args.dtype}, {torch.get_num_threads()} threads), CPU {cpu_model()}; subtask "
          f"{args.subtask}; rankings {sorted(rankings)} (skipped {skipped}); search {opts['search']}", flush=True)

    import re

    lines: list[str] = []
    e7_sets: set[frozenset] = set()
    predictions = C.predictions

    def recording(model_, seqs_, means_, removed, *a, **k):  # E7 sets (isolation, cross-removal) go through here
        e7_sets.add(frozenset(removed))
        return predictions(model_, seqs_, means_, removed, *a, **k)

    C.predictions = recording
    try:
        t0 = time.perf_counter()
        out = C.run_knockout(model, clean, ref, rankings, seed=seed, progress=False, log=lines.append, **opts)
        t_new = time.perf_counter() - t0
    finally:
        C.predictions = predictions
    phase = {}
    for line in lines:
        m = re.match(r"\s*(.+?)(?: \(.*\))?(?:;.*)?: ([\d.]+) s$", line)
        if m:
            phase[m[1].strip()] = phase.get(m[1].strip(), 0.0) + float(m[2])
            print("  " + line.strip(), flush=True)
    t_means = next(v for k, v in phase.items() if k.startswith("reference means"))
    t_rank = next(v for k, v in phase.items() if k.startswith("rankings"))
    t_e7 = sum(v for k, v in phase.items() if k.startswith(("isolation", "cross-removal")))
    t_curves = t_new - t_means - t_rank - t_e7
    curves = out["curves"]
    n_new = int(curves["n_run"].sum()) if "n_run" in curves else None
    print(f"today: {t_new:.1f} s for the whole subtask (means + baseline {t_means:.1f}, rankings {t_rank:.1f}, "
          f"curves {t_curves:.1f}, isolation + cross-removal {t_e7:.1f}; curve sequences run: {n_new})", flush=True)

    # the filed algorithm: the same plans, every step evaluated on every sequence, whole sequences
    rank_ids = set(C.split_examples([p["example_id"] for p in clean], opts["rank_fraction"], seed)[0])
    d = C.subtask_data(clean, ref, args.subtask, rank_ids, n_examples=opts["n_examples"],
                       n_reference=opts["n_reference"], rank_fraction=opts["rank_fraction"], seed=seed)
    prefix = C.alignment_prefix(clean, opts["mean_alignment"])
    t0 = time.perf_counter()
    means = C.head_means(model, [p["clean_ids"] for p in d.reference], bs, False, prefix, method="full")
    t_means_old = time.perf_counter() - t0
    example_of = {p["pair_id"]: p["example_id"] for p in clean}
    L, H = model.n_layers, model.n_heads
    grid = C.step_grid(L * H, opts["steps"])
    from cotmech import heads

    score_parts, heads.WRITER_SCORE_PARTS = heads.WRITER_SCORE_PARTS, heads.WRITER_COMPONENTS  # the filed code
    try:  # computed every writer component
        t0 = time.perf_counter()
        ranked = C._rankings_for(model, d, rankings, means, example_of, opts["other_data"], bs, lambda m: None)
        t_rank_old = time.perf_counter() - t0
    finally:
        heads.WRITER_SCORE_PARTS = score_parts
    plans = [C.window_plan(r.scores, L, H, opts["window_widths"]) if r.name in opts["window_rankings"]
             else C.sorted_plan(r.scores, L, H, grid) for r in ranked]
    curve_sets = {frozenset(x) for p in plans for x in p.sets} | {frozenset()}
    distinct = sorted(curve_sets | e7_sets, key=len)
    seqs = [p["clean_ids"] for p in d.eval]
    nonempty = [x for x in distinct if x]
    pick = [nonempty[i] for i in np.linspace(0, len(nonempty) - 1, min(args.sample_sets, len(nonempty))).round()
            .astype(int)]
    C.ablated_argmax(model, seqs[:1], means, list(pick[0]), bs, method="full")  # warm-up
    t0 = time.perf_counter()
    for x in pick:
        C.ablated_argmax(model, seqs, means, sorted(x), bs, method="full")
    per = (time.perf_counter() - t0) / (len(pick) * len(seqs))
    t_fwd_curves = per * len(curve_sets) * len(seqs)
    t_fwd = per * len(distinct) * len(seqs)
    t_old = t_means_old + t_rank_old + t_fwd
    t_old_curves = t_means_old + t_rank_old + t_fwd_curves
    print(f"filed algorithm: reference means over whole sequences {t_means_old:.1f} s; rankings with every writer "
          f"component {t_rank_old:.1f} s; {len(plans)} orderings, {len(curve_sets)} distinct curve sets "
          f"(unablated included) + "
          f"{len(distinct) - len(curve_sets)} other E7 sets, × {len(seqs)} evaluation sequences, {per:.3f} s per "
          f"whole sequence (timed on {len(pick)} sets of {[len(x) for x in pick]} heads) = {t_fwd:.1f} s of "
          f"ablated forwards ({t_fwd_curves:.1f} s for the curves)")
    print(f"ratio filed / today, the whole job: {t_old:.1f} / {t_new:.1f} s = {t_old / t_new:.1f}×")
    print(f"ratio filed / today, means + rankings + curves: {t_old_curves:.1f} / {t_new - t_e7:.1f} s = "
          f"{t_old_curves / (t_new - t_e7):.1f}×")
    return 0

if __name__ == "__main__":
    sys.exit(main())
