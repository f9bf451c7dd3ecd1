#!/usr/bin/env python
"""Wall time of every model-running rule at the sizes of a config, measured on a small sample of its work units.

For each rule the script runs the rule's own core function (the one its ``cotmech.<module>.run`` calls) on a
few work units - pairs, generation batches, traced examples, knockout batches, ... - after a warm-up, divides the
time by the units measured and multiplies by the number of units the config implies, derived as the rule derives
them (datasets' n, subtasks, n_pairs, max_per_subtask, steps, ...). Counts that depend on model outputs (how many
examples are solved exactly, how many cloze candidates are usable) come from explicit assumptions printed next to
each row. Inputs are built with the package itself: task records from the generator, the config's few-shot prompts,
pairs from make_pairs' logic with the model's tokenizer, and gold CoTs in place of generations (a random model
solves nothing), so sequence lengths are those of the study's prompts *in this tokenizer's tokens*.

Output: one row per rule part (rule, part, unit, units measured, seconds measured, seconds per unit, units at config
scale, estimated seconds, assumption, peak GPU memory), printed and written with --out (CSV), plus the machine, torch
version, dtype, date and command line (columns of the CSV). Estimates add up sequential work; Snakemake runs jobs in
parallel where resources allow.

Cases (see BENCHMARKS.md, "Per-rule time at paper scale"):
  GPU:  --config config/paper.yaml --model random:llama-2-7b --device cuda --dtype bfloat16   (or float32, the paper's)
  CPU:  --config config/paper.yaml --model embedded:qwen2.5-coder-1.5b-instruct --rules knockout --threads 2
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import re
import shlex
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

RULES = ("load_model", "generate_cot", "extract_activations", "patch_heads", "path_patch", "induction_cloze",
         "knockout", "head_roles", "trace_flow", "probe", "horizon", "train_tuned_lens", "prior_shift")
#: sample size per rule, in that rule's sampling unit (see SAMPLE_UNIT)
DEFAULT_SAMPLE = {"generate_cot": 1, "extract_activations": 1, "patch_heads": 3, "path_patch": 1,
                  "induction_cloze": 3, "knockout": 0, "head_roles": 8, "trace_flow": 1, "probe": 1, "horizon": 1,
                  "train_tuned_lens": 1, "prior_shift": 16}
SAMPLE_UNIT = {"generate_cot": "generation batches", "extract_activations": "forward batches",
               "patch_heads": "pairs (exact and AtP on the same sample)", "path_patch": "pairs",
               "induction_cloze": "cloze pairs (screening: batches of 16 candidates)",
               "knockout": "sequences per part (default 0 = one batch of circuits.batch_size)", "head_roles": "rows",
               "trace_flow": "examples", "probe": "batches per shot count (fits: 5 epochs per sample)",
               "horizon": "examples", "train_tuned_lens": "(whole run; see --max-lens-gib)", "prior_shift": "rows"}
WARM = 32  # tokens of the short inputs some warm-ups run on
COLUMNS = ["rule", "part", "unit", "units_measured", "seconds_measured", "scale", "seconds_per_unit", "units_at_scale",
           "estimated_seconds", "assumption", "peak_gpu_gib", "machine", "torch", "dtype", "date", "command"]


# --------------------------------------------------------------------------------------------------
# Rows, timing
# --------------------------------------------------------------------------------------------------
@dataclass
class Row:
    rule: str
    part: str
    unit: str
    measured: float  # units measured
    seconds: float  # seconds for them (after warm-up)
    units: float  # units at config scale
    assumption: str
    peak_gib: float | None = None
    scale: float = 1.0  # the sample's mean cost per unit -> the config's (e.g. suffix_scale)

    @property
    def per_unit(self) -> float:
        return self.seconds / self.measured * self.scale

    @property
    def estimated(self) -> float:
        return self.per_unit * self.units


def timed(model: Any, fn: Callable[[], Any]) -> tuple[float, Any]:
    from bench_patching import sync

    sync(model)
    t0 = time.perf_counter()
    out = fn()
    sync(model)
    return time.perf_counter() - t0, out


def suffix_scale(seconds: Sequence[float], suffixes: Sequence[float], at_scale: Sequence[float]) -> float:
    """Mean cost per pair of the pairs ``at_scale`` (their suffix lengths after first_diff) over the sample's mean:
    the sample's ``seconds`` fitted as a + b · suffix (least squares; proportional to the suffix when the sample
    has one suffix length), each prediction at least the sample's cheapest pair. A patching sweep recomputes the
    suffix for every head, so its cost grows with the suffix, which differs by subtask (5 to 60 tokens)."""
    import numpy as np

    t, x, y = np.asarray(seconds, float), np.asarray(suffixes, float), np.asarray(at_scale, float)
    if len(set(x.tolist())) >= 2:
        b, a = np.polyfit(x, t, 1)
        pred = np.maximum(a + b * y, t.min())
    else:
        pred = t.mean() * y / x.mean()
    return float(pred.mean() / t.mean())


def spread(items: Sequence[dict], subtasks: Sequence[int] | None, k: int) -> list[dict]:
    """``k`` pair records whose subtasks are spread evenly over ``subtasks`` (file order within a subtask)."""
    import numpy as np

    by: dict[int, list[dict]] = {}
    for p in items:
        by.setdefault(int(p["subtask"]), []).append(p)
    keys = [int(s) for s in (subtasks if subtasks is not None else sorted(by)) if by.get(int(s))]
    if not keys or k < 1:
        return []
    want = [keys[i] for i in np.linspace(0, len(keys) - 1, min(k, len(keys))).round().astype(int)]
    want += [keys[i % len(keys)] for i in range(k - len(want))]
    used: Counter = Counter()
    out = []
    for s in want:
        if used[s] < len(by[s]):
            out.append(by[s][used[s]])
            used[s] += 1
    return out


# --------------------------------------------------------------------------------------------------
# Config and inputs
# --------------------------------------------------------------------------------------------------
class Study:
    """Sample inputs of every dataset and the unit counts the config implies.

    Per dataset: ``n`` task records; ``used`` = examples make_pairs keeps (correct share × n, or n with
    ``pairs.require_correct: false``, capped by ``pairs.max_examples``); pairs are built for the first
    ``m = min(used, count_examples)`` of them, and the count of subtask k at scale is
    round(pairs of k in the sample × used / m) (exact when m = used).
    """

    def __init__(self, model: Any, cfg: dict, correct: dict[str, float], count_examples: int, log=print):
        from cotmech.pairs import build_pairs
        from cotmech.prontoqa.datasets import build_dataset
        from cotmech.prontoqa.prompts import build_prompt

        self.cfg, self.seed = cfg, int(cfg["seed"])
        self.datasets = list(cfg["datasets"])
        shots, pc = int(cfg["prompt"]["shots"]), cfg["pairs"]
        bs = int(cfg["generation"]["batch_size"])
        self.n, self.used, self.m, self.frac, self.correct = {}, {}, {}, {}, {}
        self.tasks, self.gens, self.pairs = {}, {}, {}
        self.per_subtask: dict[str, Counter] = {}
        self.ex_subtasks: dict[str, list[set]] = {}
        for name, spec in cfg["datasets"].items():
            n_cfg = int(spec["n"])
            if spec.get("import"):
                recs = build_dataset(name, spec, self.seed)
                n = len(recs)
            else:
                n = n_cfg
                recs = build_dataset(name, {**spec, "n": min(n, max(count_examples, bs))}, self.seed)
            f = correct.get(name, correct.get("*", 1.0))
            self.correct[name] = round(f * n)
            used = self.correct[name] if pc["require_correct"] else n
            if pc.get("max_examples") is not None:
                used = min(used, int(pc["max_examples"]))
            m = min(used, count_examples, len(recs))
            gens = [{**r, "prompt": build_prompt(r, shots=shots), "generated": r["answer"], "correct": True,
                     "valid_proof": True} for r in recs]
            pairs, _ = build_pairs(gens[:m], model.tokenizer, name, self.seed,
                                   include_label=bool(pc["include_label"]))
            self.n[name], self.used[name], self.m[name], self.frac[name] = n, used, m, f
            self.tasks[name], self.gens[name], self.pairs[name] = recs, gens, pairs
            self.per_subtask[name] = Counter(int(p["subtask"]) for p in pairs)
            by_ex: dict[str, set] = {}
            for p in pairs:
                by_ex.setdefault(p["example_id"], set()).add(int(p["subtask"]))
            self.ex_subtasks[name] = list(by_ex.values())
            lens = [len(p["clean_ids"]) for p in pairs] or [0]
            log(f"{name}: n {n}, examples used by make_pairs {used} (correct share {f:g}"
                f"{'' if pc['require_correct'] else ', ignored: pairs.require_correct false'}); pairs built for {m} "
                f"({'exact counts' if m == used else f'counts scaled by {used}/{m}'}): {len(pairs)} pairs, "
                f"clean input {min(lens)}-{max(lens)} tokens (mean {sum(lens) / len(lens):.0f})")

    def pairs_k(self, d: str, k: int) -> int:
        """Pairs of subtask ``k`` of dataset ``d`` at config scale."""
        m = self.m[d]
        return round(self.per_subtask[d][int(k)] * self.used[d] / m) if m else 0

    def total_pairs(self, d: str) -> int:
        return sum(self.pairs_k(d, k) for k in self.per_subtask[d])

    def subtasks(self, d: str) -> list[int]:
        return sorted(self.per_subtask[d])

    def examples_with(self, d: str, subtasks: Sequence[int] | None = None) -> int:
        """Examples of ``d`` with at least one pair (of ``subtasks``) at config scale."""
        m = self.m[d]
        if not m:
            return 0
        want = None if subtasks is None else {int(s) for s in subtasks}
        hit = sum(1 for s in self.ex_subtasks[d] if want is None or s & want)
        return round(hit * self.used[d] / m)

    def capped(self, datasets: Sequence[str], subtasks: Sequence[int] | None, cap: int | None) -> int:
        """Σ over datasets and subtasks of min(cap, pairs of the subtask)."""
        tot = 0
        for d in datasets:
            for k in (subtasks if subtasks is not None else self.subtasks(d)):
                c = self.pairs_k(d, int(k))
                tot += c if cap is None else min(int(cap), c)
        return tot


class Bench:
    def __init__(self, model: Any, study: Study, args: argparse.Namespace):
        self.model, self.study, self.cfg, self.args = model, study, study.cfg, args
        self.seed = study.seed
        self._lens: dict[str, tuple[Any, float]] = {}
        self._acts: dict[str, tuple[list[str], dict, Any]] = {}

    # shared pieces -------------------------------------------------------------------------------
    def lens(self, device: str = "cpu") -> tuple[Any, float]:
        """The logit lens (make_unembed) on ``device`` and the seconds it took (built once per device, timed
        once): head_roles builds it on the model's device, the other lens rules on the CPU, as their run functions do."""
        key = str(device)
        if key not in self._lens:
            from cotmech.unembed import make_unembed

            self._lens[key] = timed(self.model, lambda: make_unembed(self.model, device=device))[::-1]
        return self._lens[key]

    def activations(self, d: str, recs: list[dict]) -> tuple[dict, Any]:
        """Activations and the joined index (as prior_shift.load_activations returns) of pair records ``recs``;
        reuses the extract_activations sample where it covers them. Not timed."""
        import torch

        from cotmech.activations import extract_pairs

        ids = [p["pair_id"] for p in recs]
        have = self._acts.get(d)
        if have is None or not set(ids) <= set(have[0]):
            acts, index = extract_pairs(self.model, recs, batch_size=int(self.cfg["activations"]["batch_size"]))
            have = self._acts[d] = ([p["pair_id"] for p in recs], acts, index)
        pos = [have[0].index(i) for i in ids]
        index = have[2].iloc[pos].reset_index(drop=True)
        index["row"] = range(len(index))
        by_id = {p["pair_id"]: p for p in recs}
        for f in ("clean_ids", "answer", "ontology"):
            index[f] = [by_id[i].get(f) for i in index["pair_id"]]
        return {k: v[torch.as_tensor(pos)] for k, v in have[1].items()}, index

    def lens_row(self, rule: str, jobs: int, device: str = "cpu") -> Row:
        _, s = self.lens(device)
        return Row(rule, "make_unembed", "job (lens built once per job)", 1, s, jobs,
                   f"final norm + unembedding copied to a float32 lens on {device}, once per job")

    # rules ---------------------------------------------------------------------------------------
    def generate_cot(self, s: int) -> list[Row]:
        from cotmech.generation import generate_records

        g, st = self.cfg["generation"], self.study
        bs, mx, shots = int(g["batch_size"]), int(g["max_new_tokens"]), int(self.cfg["prompt"]["shots"])
        recs = st.tasks[st.datasets[0]][:bs * s]
        generate_records(self.model, recs[:2], shots=shots, max_new_tokens=2, batch_size=2, desc="warm-up")
        t, out = timed(self.model, lambda: generate_records(self.model, recs, shots=shots, max_new_tokens=mx,
                                                            batch_size=bs, desc="generate"))
        units = sum(math.ceil(st.n[d] / bs) for d in st.datasets)
        new = sum(r["n_generated"] for r in out) / len(out)
        return [Row("generate_cot", "generate", f"batch of {bs} prompts", len(recs) / bs, t, units,
                    f"every task record of {', '.join(f'{d} (n={st.n[d]})' for d in st.datasets)} in batches of "
                    f"{bs}: {units} batches; sample: {len(recs)} {st.datasets[0]} prompts, decoded {new:.0f} tokens "
                    f"per row (max_new_tokens {mx}; a random model never emits the newline stop, a real one stops "
                    f"after its CoT)")]

    def extract_activations(self, s: int) -> list[Row]:
        from cotmech.activations import extract_pairs
        from cotmech.readout import assign_hosts

        st = self.study
        bs = int(self.cfg["activations"]["batch_size"])
        d = st.datasets[0]
        chosen: list[dict] = []
        hosts = 0
        if not st.pairs[d]:
            raise ValueError(f"extract_activations: no sample pairs in {d}")
        for ex in dict.fromkeys(p["example_id"] for p in st.pairs[d]):
            chosen += [p for p in st.pairs[d] if p["example_id"] == ex]
            hosts = len(set(assign_hosts([p["clean_ids"] for p in chosen], [p["example_id"] for p in chosen])))
            if hosts >= bs * s:
                break
        extract_pairs(self.model, [{**chosen[0], "clean_ids": chosen[0]["clean_ids"][:WARM]}], batch_size=1)
        t, (acts, index) = timed(self.model, lambda: extract_pairs(self.model, chosen, batch_size=bs))
        self._acts[d] = ([p["pair_id"] for p in chosen], acts, index)
        units = sum(st.total_pairs(x) for x in st.datasets)
        return [Row("extract_activations", "extract", "pair (an example's pairs share forwards)", len(chosen), t,
                    units, f"all pairs of every dataset: {units}; sample: {len(chosen)} pairs = {hosts} forward rows "
                           f"(batch {bs})")]

    def _patch_pairs(self, subtasks: Sequence[int], k: int, cap: int | None = None) -> tuple[list, list[float]]:
        """``k`` sample pairs at evenly spaced quantiles of the suffix length (after first_diff) of the pairs the
        rule patches (the first ``cap`` of each subtask), and all those suffix lengths."""
        import numpy as np

        from cotmech.patching.data import pair_from_record

        d = self.cfg["patching"]["datasets"][0]
        by: dict[int, list] = {}
        for r in self.study.pairs[d]:
            if int(r["subtask"]) in subtasks and (cap is None or len(by.get(int(r["subtask"]), [])) < int(cap)):
                by.setdefault(int(r["subtask"]), []).append(pair_from_record(r))
        pool = sorted((p for ps in by.values() for p in ps), key=lambda p: (p.length - p.first_diff, p.pair_id))
        if not pool or k < 1:
            return [], []
        idx = sorted(set(np.linspace(0, len(pool) - 1, min(k, len(pool))).round().astype(int).tolist()))
        return [pool[i] for i in idx], [float(p.length - p.first_diff) for p in pool]

    def patch_heads(self, s: int) -> list[Row]:
        import numpy as np

        from cotmech.patching.atp import atp_sweep
        from cotmech.patching.exact import exact_sweep, naive_sweep
        from cotmech import config
        from cotmech.patching.run import sweep

        opts = config.section(self.cfg, "patching")
        L, H = self.model.n_layers, self.model.n_heads
        subtasks, ds = [int(k) for k in opts["subtasks"]], list(opts["datasets"])
        pairs, suffixes = self._patch_pairs(subtasks, s, opts["n_pairs"])
        if not pairs:
            raise ValueError("patch_heads: no sample pairs for the configured subtasks")
        warm = naive_sweep if opts["method"] == "naive" else exact_sweep
        kw = {} if opts["method"] == "naive" else {"head_batch": 2}
        warm(self.model, pairs[:1], heads=[(0, 0), (L - 1, H - 1)], progress=False, **kw)
        units = self.study.capped(ds, subtasks, opts["n_pairs"])
        where = (f"Σ over {ds} × subtasks {subtasks} of min(n_pairs {opts['n_pairs']}, pairs of the subtask) = "
                 f"{units}")
        suf = [float(p.length - p.first_diff) for p in pairs]
        tokens = sum(p.length for p in pairs) / len(pairs)
        rows = []
        for method in [opts["method"]] + (["atp"] if opts["atp"] else []):
            if method == "atp":
                atp_sweep(self.model, pairs[:1], progress=False)
            times = [timed(self.model, lambda p=p: sweep(self.model, [p], method, opts, progress=False))[0]
                     for p in pairs]
            scale = suffix_scale(times, suf, suffixes)
            unit = {"atp": "pair", "screened": "pair (AtP, then exact on the heads screening picks for it alone)"}
            rows.append(Row("patch_heads", method, unit.get(method, "pair (all heads)"), len(pairs),
                            sum(times), units,
                            f"{where}; sample: {len(pairs)} pairs at suffix quantiles (subtasks "
                            f"{[p.subtask for p in pairs]}, {tokens:.0f} tokens, suffix after first_diff "
                            f"{[int(x) for x in suf]}: {[round(t, 2) for t in times]} s), scaled × {scale:.2f} to "
                            f"the mean suffix {np.mean(suffixes):.1f} of the patched pairs (fit a + b·suffix)"
                            + (f", head_batch {opts['head_batch']}" if method != "atp" else ""), scale=scale))
        return rows

    def path_patch(self, s: int) -> list[Row]:
        import numpy as np
        import pandas as pd

        from cotmech.patching.path import path_patch, pick_heads
        from cotmech import config

        opts = config.section(self.cfg, "patching")
        po = opts["path"]
        L, H = self.model.n_layers, self.model.n_heads
        if not po["subtasks"]:
            return []
        rng = np.random.default_rng(self.seed)
        table = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                              "score": rng.random(L * H)})
        senders, receivers = pick_heads(table, L, po["n_senders"], po["n_receivers"])
        from cotmech.patching.data import pair_from_record

        pairs = [pair_from_record(r) for r in spread(self.study.pairs[self.cfg["patching"]["datasets"][0]],
                                                     po["subtasks"], s)]
        kw = dict(metric=opts["metric"], direction=opts["direction"], frozen=po["frozen"], progress=False)
        path_patch(self.model, pairs[:1], senders[:1], receivers[:1], paths=["logits"], **kw)
        t, _ = timed(self.model, lambda: path_patch(self.model, pairs, senders, receivers, paths=po["paths"], **kw))
        units = self.study.capped(opts["datasets"], po["subtasks"], po["n_pairs"])
        return [Row("path_patch", "path_patch", f"pair ({len(senders)} senders × paths {po['paths']})", len(pairs),
                    t, units, f"Σ over {list(opts['datasets'])} × path subtasks {po['subtasks']} of min(path.n_pairs "
                              f"{po['n_pairs']}, pairs) = {units}; senders/receivers: top first/second-half heads "
                              f"of a random score table (frozen={po['frozen']})")]

    def induction_cloze(self, s: int) -> list[Row]:
        from cotmech.patching import induction as ind
        from cotmech.patching.exact import exact_sweep
        from cotmech import config

        opts = config.section(self.cfg, "patching")
        io_ = opts["induction"]
        n, shots = int(io_["n"]), int(io_["shots"])
        maxc, seed = ind.candidate_cap(n, io_["max_candidates"]), ind.pair_seed(self.seed)
        kept = min(n, int(maxc))
        rows = []
        if io_["require_correct"]:
            cand = 16 * s
            ind.build_pairs(self.model, 1, shots=shots, seed=seed, require_correct=True, max_candidates=2)
            t, _ = timed(self.model, lambda: ind.build_pairs(self.model, cand, shots=shots, seed=seed,
                                                             require_correct=True, max_candidates=cand))
            rows.append(Row("induction_cloze", "screen", "candidate (top-1 forwards, batches of 16)", cand, t,
                            int(maxc), f"max_candidates {maxc} screened (upper bound: screening stops once n {n} "
                                       f"pairs per corruption are kept); sample: " + (
                                           "clean forwards only (a random model answers no candidate)"
                                           if self.model.spec.startswith("random:") else
                                           "clean forwards + corrupt forwards of the candidates answered")))
        per = math.ceil(s / len(ind.CORRUPTIONS))
        got = ind.build_pairs(self.model, per, shots=shots, seed=seed, require_correct=False, max_candidates=None)
        pairs = [got[k][i] for i in range(per) for k in ind.CORRUPTIONS if i < len(got[k])][:s]
        L, H = self.model.n_layers, self.model.n_heads
        exact_sweep(self.model, pairs[:1], heads=[(0, 0), (L - 1, H - 1)], head_batch=2, progress=False)
        t, _ = timed(self.model, lambda: exact_sweep(self.model, pairs, metric=opts["metric"],
                                                     direction=opts["direction"], head_batch=opts["head_batch"],
                                                     chunk_tokens=opts["chunk_tokens"],
                                                     overhead=opts["chunk_overhead"], progress=False))
        units = len(ind.CORRUPTIONS) * kept
        rows.append(Row("induction_cloze", "exact", "cloze pair (all heads)", len(pairs), t, units,
                        f"{len(ind.CORRUPTIONS)} corruptions × min(n {n}, max_candidates {maxc}) = {units} (every "
                        f"candidate usable; fewer with a model that fails the screen); {shots} shots, "
                        f"{sum(p.length for p in pairs) / len(pairs):.0f} tokens, suffix "
                        f"{sum(p.length - p.first_diff for p in pairs) / len(pairs):.0f}"))
        return rows

    def knockout(self, s: int) -> list[Row]:
        import numpy as np
        import pandas as pd

        from cotmech import circuits as C
        from cotmech.ablation import head_means

        from cotmech import config

        st, model = self.study, self.model
        cc = config.section(self.cfg, "circuits")
        clean_d, ref_d, bs = cc["dataset"], cc["reference"], int(cc["batch_size"])
        subtasks = [int(k) for k in (cc["subtasks"] if cc["subtasks"] is not None else st.subtasks(clean_d))]
        n_total = model.n_total_heads
        # rankings: builtin = 2 orderings (ranking and evaluation split); a table = 1 (no per-example scores), if
        # the rule producing it is in the workflow: circuits.knockout_rankings, as the workflow's circuit_rankings
        # calls it, with `made` standing in for the workflow's rule graph
        pcfg = self.cfg["patching"]
        # builtins and per-pair patching shards rank on each split (2 orderings); the FD-window rankings have at
        # most window_widths removed sets, the others the inner grid steps
        raw = re.compile(r"(?:^|/)patching/([^/]+)/raw/[^/]+/subtask(\d+)\.")

        def made(path: str) -> bool:  # the patching rules write raw shards for patching.datasets × subtasks only
            m = raw.search(path)
            return m is None or (m[1] in pcfg["datasets"] and int(m[2]) in pcfg["subtasks"])

        sources, skipped = C.knockout_rankings(cc, pcfg, dict(results="results", model="model", mres="results/model"),
                                               made, subtasks)
        builtin, tables, n_direct, n_window, n_roles = 0, [], 0, 0, 0
        for name, src in sources.items():
            if isinstance(src, str):
                builtin += 1
                n_direct += C.BUILTINS.get(src) == "direct"
                n_roles += C.BUILTINS.get(src) in ("writers", "copy")
            else:
                tables += [name] * (2 if "{shard}" in cc["rankings"][name] else 1)
                n_window += name in cc["window_rankings"]
        n_orders = 2 * builtin + len(tables)
        grid = C.step_grid(n_total, cc["steps"])
        inner = [g for g in grid if 0 < g < n_total]
        distinct = ((n_orders - n_window) * len(inner) + n_window * int(cc["window_widths"])
                    + (1 if n_total in grid else 0))
        search_note = "every step evaluated (circuits.search: exhaustive)"
        if cc["search"] == "bisection":  # per ordering: the bisection's decisions + at most 3 full evaluations
            def probes(n_sets: int) -> int:
                return min(n_sets, math.ceil(math.log2(n_sets + 1)) + 3)
            distinct = min(distinct, (n_orders - n_window) * probes(len(inner) + 1)
                           + n_window * probes(int(cc["window_widths"])))
            search_note = (f"circuits.search: bisection: per ordering at most ceil(log2(steps + 1)) threshold "
                           f"decisions + 3 full evaluations of {len(grid)} steps, every decision counted in full "
                           f"(upper bound: decisions stop early, the plateau search runs only sometimes)")
        u_means = u_direct = u_ablate = u_roles = u_sets = 0
        for k in subtasks:
            ck = st.pairs_k(clean_d, k) if cc["n_examples"] is None else min(cc["n_examples"], st.pairs_k(clean_d, k))
            rk = st.pairs_k(ref_d, k) if cc["n_reference"] is None else min(cc["n_reference"], st.pairs_k(ref_d, k))
            if ck < 2 or rk == 0:
                continue
            _, ev = C.split_examples([f"e{i}" for i in range(ck)], cc["rank_fraction"], self.seed + k)
            u_means += rk
            u_direct += ck * n_direct
            u_roles += ck if n_roles else 0
            u_ablate += len(ev) * (1 + distinct)
            u_sets += 1 + distinct
        clean_pairs = spread(st.pairs[clean_d], subtasks, s or bs)
        clean = [p["clean_ids"] for p in clean_pairs]
        ref = [p["clean_ids"] for p in spread(st.pairs[ref_d], subtasks, s or bs)]
        if not clean or not ref:
            raise ValueError(f"knockout: no sample pairs of subtasks {subtasks} in {clean_d} / {ref_d}")
        rng = np.random.default_rng(self.seed)
        L, H = model.n_layers, model.n_heads
        order = C.removal_order(pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                                              "score": rng.random(L * H)}), L, H)
        removed = order[:n_total // 2]
        w = head_means(model, [ref[0][:WARM]], 1)  # warm-up on a short input
        C.ablated_argmax(model, [clean[0][:WARM]], w, removed, 1)
        prefix = C.alignment_prefix(st.pairs[clean_d], cc["mean_alignment"])  # as run_knockout
        t_m, means = timed(model, lambda: head_means(model, ref, bs, prefix_len=prefix))
        rows = [Row("knockout", "reference means", "reference sequence", len(ref), t_m, u_means,
                    f"Σ over subtasks {subtasks} of {ref_d} pairs (n_reference {cc['n_reference']}) = {u_means}")]
        if n_direct:
            C.direct_scores(model, [clean[0][:WARM]], w, 1)
            t_d, _ = timed(model, lambda: C.direct_scores(model, clean, means, bs))
            rows.append(Row("knockout", "direct scores", "clean sequence", len(clean), t_d, u_direct,
                            f"builtin direct ranking on every clean pair: Σ min(n_examples {cc['n_examples']}, "
                            f"{clean_d} pairs of the subtask) × {n_direct} = {u_direct}"))
        if n_roles:
            C.role_components(model, clean_pairs[:1], 1)
            t_r, _ = timed(model, lambda: C.role_components(model, clean_pairs, bs))
            rows.append(Row("knockout", "writer/copy rankings", "clean sequence", len(clean_pairs), t_r, u_roles,
                            f"builtin writers/copy rankings: activations and components of every clean pair, "
                            f"Σ min(n_examples {cc['n_examples']}, {clean_d} pairs of the subtask) = {u_roles}"))
        counted = (f"per subtask: evaluation split × (1 baseline + {distinct} distinct removed sets = {n_orders} "
                   f"orderings [rankings {list(sources)}{f', skipped {skipped}' if skipped else ''}] × "
                   f"{len(inner)} inner steps + all heads once) = {u_ablate} (identical sets share a run); "
                   f"{search_note}; not counted: the E7 sets (isolation, cross-removal until accuracy < its "
                   f"stop, the cross_subtask job's), whose number depends on the curves; sample: "
                   f"{n_total // 2} heads removed, batch {bs}")
        P = C.cacheable_prefix(clean, means)
        t_a, _ = timed(model, lambda: C.ablated_argmax(model, clean, means, removed, bs))
        if not P:  # end-aligned means: every sequence runs whole
            rows.append(Row("knockout", "ablated forwards", "evaluation sequence × removed set", len(clean), t_a,
                            u_ablate, counted))
            return rows
        # segment-aligned means: a removed set runs its ablated shared prefix once (circuits.LazyPredictions),
        # then every evaluation sequence's suffix over it; the two are priced apart, as a set's decisions run a
        # varying number of sequences over one prefix
        t_p, cache = timed(model, lambda: C.ablated_prefix_cache(model, clean[0][:P], means, removed))
        order = sorted(range(len(clean)), key=lambda i: len(clean[i]))
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        t_s, _ = timed(model, lambda: [C._suffix_logits(model, clean, idx, P, cache, means, removed)
                                       for idx in batches])
        rows.append(Row("knockout", "ablated prefixes", f"removed set (its ablated shared prefix, {P} tokens)", 1,
                        t_p, u_sets, f"per subtask: 1 baseline + {distinct} distinct removed sets = {u_sets} "
                        f"({search_note}); sample: {n_total // 2} heads removed"))
        rows.append(Row("knockout", "ablated suffixes", "evaluation sequence × removed set", len(clean), t_s,
                        u_ablate, f"{counted}; suffixes of {sum(len(c) - P for c in clean) / len(clean):.0f} tokens "
                        f"on average over the {P}-token prefix; the sample's whole ablated_argmax (prefix + "
                        f"suffixes) took {t_a:.2f} s against {t_p + t_s:.2f} s for the two parts"))
        return rows

    def head_roles(self, s: int) -> list[Row]:
        from cotmech.roles import run_roles

        st, rc = self.study, self.cfg["roles"]
        dsets = list(rc["datasets"] or st.datasets)
        recs = spread(st.pairs[dsets[0]], None, s)
        if not recs:
            raise ValueError(f"head_roles: no sample pairs in {dsets[0]}")
        tensors, index = self.activations(dsets[0], recs)
        dev = str(self.model.device)
        lens, _ = self.lens(dev)
        args = (self.seed, float(rc["top_frac"]))
        run_roles(self.model, lens, {k: v[:1] for k, v in tensors.items()}, index.iloc[:1], None, *args, n_boot=2)
        t, _ = timed(self.model, lambda: run_roles(self.model, lens, tensors, index, None, *args,
                                                   n_boot=int(rc["n_boot"]), ci=float(rc["ci"])))
        units = st.capped(dsets, None, rc["max_per_subtask"])
        return [self.lens_row("head_roles", len(dsets), dev),
                Row("head_roles", "run_roles", "row (pair)", len(recs), t, units,
                    f"Σ over {dsets} and subtasks of min(max_per_subtask {rc['max_per_subtask']}, pairs) = {units}; "
                    f"includes the {rc['n_boot']}-draw bootstrap; lens on {dev}")]

    def trace_flow(self, s: int) -> list[Row]:
        import numpy as np
        import pandas as pd

        from cotmech import flow

        st, fs = self.study, self.cfg["flow"]
        fds = list(fs.get("datasets") or st.datasets[:1])
        fcfg = flow.flow_config(fs)
        chosen = flow.select_examples(st.pairs[fds[0]], s, fs.get("subtasks"))
        gens = {r["id"]: r for r in st.gens[fds[0]]}
        L, H = self.model.n_layers, self.model.n_heads
        important, note = None, "all heads (flow.ranking null)"
        if fs.get("ranking") and fs.get("top_k"):
            rng = np.random.default_rng(self.seed)
            table = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                                  "score": rng.random(L * H)})
            important = flow.important_mask(table, L, H, int(fs["top_k"]))
            note = f"top_k {fs['top_k']} heads of a random ranking"
        first = next(iter(chosen.values()))
        flow.capture(self.model, first[0]["clean_ids"][:WARM])

        def run():
            return [tr for ex, ps in chosen.items() for tr in flow.trace_example(self.model, ps, fcfg, gens.get(ex),
                                                                                  important)]
        t, traces = timed(self.model, run)
        units = sum(min(int(fs["n_examples"]), st.examples_with(d, fs.get("subtasks"))) for d in fds)
        nodes = sum(len(tr["nodes"]) for tr in traces) / max(1, len(traces))
        return [Row("trace_flow", "trace_example", "example (all its subtasks)", len(chosen), t, units,
                    f"Σ over {fds} of min(n_examples {fs['n_examples']}, examples with pairs) = {units}; {note}; "
                    f"sample: {len(traces)} traced pairs, {nodes:.0f} nodes each (the tree depends on the model's "
                    f"scores); l={fcfg.l} k={fcfg.k} p={fcfg.p} prefilter={fcfg.prefilter}")]

    def probe(self, s: int) -> list[Row]:
        import torch

        from cotmech import config, probing

        cfg = config.section(self.cfg, "probing")
        model, seed, bs = self.model, self.seed, int(cfg["batch_size"])
        records, _, samples, _ = probing.prepare(cfg, seed)
        qids = list(dict.fromkeys(samples["qid"]))
        shots = [int(k) for k in cfg["shots"]]
        sub = [r for r in records if r["id"] in set(qids[:bs * s])]
        samp = samples[samples["qid"].isin({r["id"] for r in sub})]
        w = [r for r in sub[:1]]
        probing.pair_features(model, w, probing.shot_prompts(w, shots[-1], seed), samples[samples["qid"] == w[0]["id"]],
                              1)
        t_f = 0.0
        for k in shots:
            prompts = probing.shot_prompts(sub, k, seed)
            dt, feats = timed(model, lambda: probing.pair_features(model, sub, prompts, samp, bs))
            t_f += dt
        rows = [Row("probe", "forwards", "prompt", len(sub) * len(shots), t_f, len(qids) * len(shots),
                    f"{len(qids)} questions with balanced pairs (of n_questions {cfg['n_questions']}) × shots "
                    f"{shots}; batch {bs}; sample: {len(sub)} questions at every shot count")]
        n_layers = feats.shape[1]
        n_tr, n_va = int((samples["split"] == "train").sum()), int((samples["split"] == "val").sum())
        g = torch.Generator().manual_seed(seed)
        d_in = feats.shape[2]
        x_tr, x_va = torch.randn(n_tr, d_in, generator=g), torch.randn(n_va, d_in, generator=g)
        y_tr, y_va = torch.randint(0, 3, (n_tr,), generator=g), torch.randint(0, 3, (n_va,), generator=g)
        epochs = 5 * s
        units = len(shots) * n_layers * 2 * int(cfg["max_epochs"])
        for kind in cfg["probes"]:
            kw = dict(seed=seed, hidden=cfg["hidden"], lr=cfg["lr"], weight_decay=cfg["weight_decay"])
            probing.train_probe(kind, x_tr[:8], y_tr[:8], x_va[:4], y_va[:4], max_epochs=1, patience=2, **kw)
            t, _ = timed(model, lambda: probing.train_probe(kind, x_tr, y_tr, x_va, y_va, max_epochs=epochs,
                                                            patience=epochs + 1, **kw))
            rows.append(Row("probe", f"fit {kind}", "epoch (full batch)", epochs, t, units,
                            f"{len(shots)} shot counts × {n_layers} layers × 2 tasks × max_epochs "
                            f"{cfg['max_epochs']} = {units} epochs (upper bound: early stopping, patience "
                            f"{cfg['patience']}, ends most fits sooner); {n_tr} train / {n_va} val samples of "
                            f"{d_in} features (random values); CPU"))
        return rows

    def horizon(self, s: int) -> list[Row]:
        from cotmech import horizon as hz

        st, hs = self.study, self.cfg["horizon"]
        hds = list(hs.get("datasets") or st.datasets[:1])
        req = hz.require_correct(self.cfg)
        layers = hz.choose_layers(hs["layers"], hs["layer_stride"], self.model.n_layers)
        sentences = [int(x) for x in hs["sentences"]]
        mx = int(hs["max_new_tokens"])
        # the sample: the first s records that give an example (records without an equal-token-count corruption
        # are skipped by the rule and cost nothing); found untimed
        pool = st.gens[hds[0]][:max(40, 4 * s)]
        ok = {e["id"] for e in hz.prepare_examples(self.model, pool, len(pool), self.seed, mx, req) if "skipped" not in e}
        recs = [r for r in pool if r.get("id") in ok][:s]
        if not recs:
            raise ValueError(f"horizon: none of the first {len(pool)} records of {hds[0]} gives an example")
        ex = hz.prepare_examples(self.model, recs[:1], 1, self.seed, mx, req)
        hz.divergence_table(self.model, ex, layers[:1], sentences)

        def run():
            e = hz.prepare_examples(self.model, recs, s, self.seed, mx, req)
            return e, hz.divergence_table(self.model, e, layers, sentences)
        t, (examples, _) = timed(self.model, run)
        skipped = [e["skipped"] for e in examples if "skipped" in e]
        if len(examples) - len(skipped) < 1:
            raise ValueError(f"horizon: none of the {len(recs)} sample record(s) gave an example "
                             f"({len(examples)} prepared, skipped: {skipped or 'none'}); nothing was timed")
        units = sum(min(int(hs["n_examples"]), st.correct[d] if req else st.n[d]) for d in hds)
        rows = [Row("horizon", "divergence_table", f"example ({len(layers) + 1} patched rows)", len(recs), t, units,
                    f"Σ over {hds} of min(n_examples {hs['n_examples']}, {'correct' if req else 'all'} examples) = "
                    f"{units} (none skipped); the shared prefix is prefilled once per run, here once per sample")]
        n_verify = int(hs["verify"])
        use = [e for e in examples if "skipped" not in e]
        if n_verify and use:
            e = use[0]
            n_new = len(e["gen_ids"]) + 1
            t, _ = timed(self.model, lambda: hz.patched_generate(self.model, e["prompt_ids"], e["corrupt_prompt_ids"],
                                                                 layers[0], n_new))
            v = min(n_verify, units) * len(layers)
            rows.append(Row("horizon", "verify", "patched greedy decoding (one layer)", 1, t, v,
                            f"verify {n_verify} examples × {len(layers)} layers"))
        return rows

    def train_tuned_lens(self, s: int) -> list[Row]:
        import torch

        from cotmech.lens import n_heldout, train_tuned_lens

        st, tl = self.study, self.cfg["tuned_lens"]
        if not tl["enabled"]:
            return []
        model = self.model
        dev = str(model.device)
        lens, _ = self.lens(dev)
        L, d = model.n_layers, model.d_model
        n_rows = sum(st.total_pairs(x) for x in st.datasets)
        n_ex = sum(st.used[x] for x in st.datasets)
        n_val_ex = n_heldout(n_ex, tl["val_frac"])  # as lens.tuned_lens_split holds out examples
        n_val = round(n_rows * n_val_ex / n_ex) if n_ex else 0
        n_train = n_rows - n_val
        fit = max(2, int(self.args.max_lens_gib * 2**30 // ((L + 1) * d * 4)))
        scale = min(1.0, fit / max(1, n_rows))
        tr, va = max(1, int(n_train * scale)), int(n_val * scale)
        g = torch.Generator(device=model.device).manual_seed(self.seed)  # drawn on the device: faster; not timed
        train, val = (torch.randn(r, L + 1, d, generator=g, device=model.device).cpu() for r in (tr, va))
        kw = dict(rank=tl["rank"], batch=int(tl["batch"]), lr=float(tl["lr"]), seed=self.seed)
        train_tuned_lens(lens, train[:2], val[:1], steps=1, eval_rows=1, **kw)
        t, (_, hist) = timed(model, lambda: train_tuned_lens(lens, train, val if va else None, steps=int(tl["steps"]),
                                                            time_limit_s=tl["time_limit_s"],
                                                            eval_rows=tl["eval_rows"], **kw))
        note = (f"{n_train} train / {n_val} held-out residual rows (all pairs of every dataset), {tl['steps']} steps "
                f"of batch {tl['batch']}, {hist['steps']} done (time_limit_s {tl['time_limit_s']}"
                f"{': hit' if hist['time_limit_hit'] else ''}); random residuals; lens on {dev}; loading the activation files "
                f"not timed")
        if scale < 1:
            return [self.lens_row("train_tuned_lens", 1, dev),
                    Row("train_tuned_lens", "train", "residual row", tr + va, t, n_rows,
                        note + f"; measured on {tr + va} rows (--max-lens-gib {self.args.max_lens_gib}) and scaled "
                               f"by rows (overestimate: steps and evaluations do not grow with rows)")]
        return [self.lens_row("train_tuned_lens", 1, dev),
                Row("train_tuned_lens", "train", "run at config scale", 1, t, 1, note + "; measured at full size")]

    def prior_shift(self, s: int) -> list[Row]:
        from cotmech.lens import TunedLens
        from cotmech.prior_shift import run_lenses

        st, ps, tl = self.study, self.cfg["prior_shift"], self.cfg["tuned_lens"]
        d0 = st.datasets[0]
        recs = spread(st.pairs[d0], None, s)
        if not recs:
            raise ValueError(f"prior_shift: no sample pairs in {d0}")
        tensors, index = self.activations(d0, recs)
        resid = tensors["resid"]
        lens, _ = self.lens()
        model = self.model
        tuned = TunedLens(model.n_layers, model.d_model, tl["rank"], seed=self.seed) if tl["enabled"] else None
        kw = dict(top_k=int(ps["top_k"]), prior_batch_size=int(ps["prior_batch_size"]))
        run_lenses(model, lens, resid[:1], index.iloc[:1], tuned, **kw)
        t, _ = timed(model, lambda: run_lenses(model, lens, resid, index, tuned, **kw))
        units = st.capped(st.datasets, None, ps["max_per_subtask"])
        return [self.lens_row("prior_shift", len(st.datasets)),
                Row("prior_shift", "run_lenses", "row (pair)", len(recs), t, units,
                    f"Σ over {st.datasets} and subtasks of min(max_per_subtask {ps['max_per_subtask']}, pairs) = "
                    f"{units}; context-free prior forwards + logit{' and tuned' if tuned else ''} lens statistics "
                    f"(lens on the CPU, as scripts/prior_shift.py builds it); bootstrap tables not timed")]

    def jobs(self, rules: Sequence[str]) -> dict[str, int]:
        """Model-loading jobs of each selected rule at config scale (one load per job)."""
        st, cfg, pc = self.study, self.cfg, self.cfg["patching"]
        n = {"generate_cot": len(st.datasets), "extract_activations": len(st.datasets),
             "patch_heads": len(pc["datasets"]) * len(pc["subtasks"]) * int(pc["shards"]),
             "path_patch": len(pc["datasets"]) if pc["path"]["subtasks"] else 0, "induction_cloze": 1,
             "knockout": len(cfg["circuits"]["subtasks"]) + bool(cfg["circuits"].get("cross_subtask")), "head_roles": len(cfg["roles"]["datasets"] or st.datasets),
             "trace_flow": len(cfg["flow"].get("datasets") or st.datasets[:1]), "probe": 1,
             "horizon": len(cfg["horizon"].get("datasets") or st.datasets[:1]),
             "train_tuned_lens": 1 if cfg["tuned_lens"]["enabled"] else 0, "prior_shift": len(st.datasets)}
        return {r: n[r] for r in rules if r in n}


# --------------------------------------------------------------------------------------------------
# Front end
# --------------------------------------------------------------------------------------------------
def parse_pairs(items: Sequence[str], conv: Callable[[str], Any], what: str, names: Sequence[str] | None = None
                ) -> dict[str, Any]:
    """``["2"]`` -> {"*": 2}; ``["patch_heads=3", "knockout=2"]`` -> per-name values."""
    out: dict[str, Any] = {}
    for it in items:
        key, sep, val = it.rpartition("=")
        if sep and names is not None and key not in names:
            raise SystemExit(f"{what}: unknown name {key!r}; known: {', '.join(names)}")
        out[key if sep else "*"] = conv(val)
    return out


def machine_name(model: Any) -> str:
    import torch

    if model.device.type == "cuda":
        return torch.cuda.get_device_name(model.device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def fmt_s(x: float) -> str:
    return f"{x / 3600:.2f} h" if x >= 3600 else f"{x / 60:.1f} min" if x >= 60 else f"{x:.1f} s"


def print_table(rows: Sequence[Row]) -> None:
    print(f"\n{'rule':19s} {'part':17s} {'measured':>9s} {'s':>9s} {'s/unit':>10s} {'units':>10s} "
          f"{'estimate':>10s}  unit")
    for r in rows:
        print(f"{r.rule:19s} {r.part:17s} {r.measured:9.3g} {r.seconds:9.2f} {r.per_unit:10.4g} {r.units:10.6g} "
              f"{fmt_s(r.estimated):>10s}  {r.unit}")
    print("\nper rule (sequential work; jobs of a rule may run in parallel):")
    total: dict[str, float] = {}
    for r in rows:
        total[r.rule] = total.get(r.rule, 0.0) + r.estimated
    for rule, est in total.items():
        print(f"  {rule:19s} {fmt_s(est):>10s}")
    print(f"  {'all':19s} {fmt_s(sum(total.values())):>10s}")
    print("\nassumptions:")
    for r in rows:
        print(f"  {r.rule}/{r.part}: {r.assumption}")


def write_csv(path: str | os.PathLike, rows: Sequence[Row], meta: dict[str, str]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.rule, r.part, r.unit, r.measured, r.seconds, r.scale, r.per_unit, r.units, r.estimated,
                        r.assumption,
                        "" if r.peak_gib is None else round(r.peak_gib, 3), *meta.values()])


def main(argv: list[str] | None = None) -> int:
    from cotmech.cli import add_model_args, load_from_args, parser

    ap = parser(__doc__)
    ap.add_argument("--config", default=str(REPO / "config" / "paper.yaml"), help="config merged into --base")
    ap.add_argument("--base", default=str(REPO / "config.yaml"), help="base config (Snakefile's configfile)")
    add_model_args(ap, overrides=True)
    ap.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES), help="rules to time (default: all)")
    ap.add_argument("--sample", nargs="+", default=[], metavar="[RULE=]N",
                    help="units per rule: N for every rule or RULE=N; units: " +
                         "; ".join(f"{k}: {v}" for k, v in SAMPLE_UNIT.items()))
    ap.add_argument("--correct", nargs="+", default=["1.0"], metavar="[DATASET=]FRAC",
                    help="share of examples solved exactly (pairs.require_correct: true), e.g. 'fictional=0.359 "
                         "falseont=0.525' (Llama-2-7B in the paper); default 1.0 = all (upper bound)")
    ap.add_argument("--count-examples", type=int, default=40,
                    help="examples per dataset whose pairs are built to count pairs per subtask (exact if >= used)")
    ap.add_argument("--max-lens-gib", type=float, default=8.0,
                    help="train_tuned_lens: largest random residual tensor; above it the run is scaled by rows")
    ap.add_argument("--progress", action="store_true", help="show the package's progress bars")
    ap.add_argument("--out", help="write the table here (CSV)")
    args = ap.parse_args(argv)
    if not args.progress:
        os.environ["TQDM_DISABLE"] = "1"
    sample = {**DEFAULT_SAMPLE}
    given = parse_pairs(args.sample, int, "--sample", RULES)
    for r in sample:
        sample[r] = int(given.get(r, given.get("*", sample[r])))
    if min(v for r, v in sample.items() if r != "knockout") < 1 or sample["knockout"] < 0:
        raise SystemExit("--sample: values must be >= 1 (knockout: >= 0)")
    correct = parse_pairs(args.correct, float, "--correct")

    import torch

    from cotmech import config

    cfg = config.load(args.config, args.base)  # as the workflow sees it (merged, checked, defaults filled)
    t0 = time.perf_counter()
    model = load_from_args(args, {"model": cfg["model"]})
    t_load = time.perf_counter() - t0
    dtype = str(model.dtype).replace("torch.", "")
    print(f"config {args.config}: model {model.spec} ({model.n_layers} layers × {model.n_heads} heads, d_model "
          f"{model.d_model}, vocab {model.vocab_size}), {dtype} on {model.device}", flush=True)
    meta = {"machine": machine_name(model), "torch": torch.__version__, "dtype": dtype,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, *sys.argv] if argv is None else ["bench_rules.py", *argv])}
    study = Study(model, cfg, correct, args.count_examples)
    bench = Bench(model, study, args)
    rows: list[Row] = []
    failed: list[str] = []
    rules = [r for r in RULES if r in args.rules]
    if "load_model" in rules:
        jobs = bench.jobs(rules)
        rows.append(Row("load_model", "load", "job", 1, t_load, sum(jobs.values()),
                        f"one load per model-running job of the selected rules ({jobs}); "
                        + ("random weights are initialised on the device, a checkpoint is read from disk instead"
                           if model.spec.startswith("random:") else "this spec's load, page cache warm or cold")))
    for rule in rules:
        if rule == "load_model":
            continue
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(model.device)
        t1 = time.perf_counter()
        try:
            got = getattr(bench, rule)(sample[rule])
        except Exception:  # noqa: BLE001 - one rule's failure must not lose the others' measurements
            failed.append(rule)
            print(f"{rule}: FAILED after {time.perf_counter() - t1:.1f} s\n{traceback.format_exc()}", flush=True)
            continue
        finally:
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
        peak = torch.cuda.max_memory_allocated(model.device) / 2**30 if model.device.type == "cuda" else None
        for r in got:
            r.peak_gib = peak
        rows += got
        print(f"{rule}: {fmt_s(sum(r.estimated for r in got))} estimated at config scale (benchmark took "
              f"{time.perf_counter() - t1:.1f} s)", flush=True)
        if args.out:  # after every rule, so a run cut short keeps what it measured
            write_csv(args.out, rows, meta)
    print_table(rows)
    print(f"\nmachine {meta['machine']}, torch {meta['torch']}, {dtype}, {torch.get_num_threads()} threads, "
          f"{meta['date']}\ncommand: {meta['command']}")
    if args.out:
        write_csv(args.out, rows, meta)
        print(f"wrote {args.out}")
    if failed:
        print(f"FAILED rules (not in the table): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
