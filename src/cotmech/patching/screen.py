"""Exact patching screened by attribution patching: the exact top-k heads at a fraction of a full sweep's cost.

AtP (:func:`cotmech.patching.atp.atp_sweep`) estimates every head's patch on every pair; its aggregate score orders
the heads. Exact patching (:func:`cotmech.patching.exact.exact_sweep`, same numbers as a full sweep for every head
it evaluates) then runs on all pairs for

1. the first ``candidates`` heads of that order, and
2. further blocks of ``block`` heads in that order, until a whole block adds no head to the exact top ``top_k``
   (:func:`screen`).

Heads never evaluated keep their AtP estimate, marked in the result (``info["exact_heads"]``) and in the head table
(column ``exact``). The stopping rule is a heuristic, not a bound: a head whose AtP estimate ranks it below every
evaluated block (an AtP false negative, e.g. a saturated attention pattern) is missed. How deep in the AtP order the
exact top-k heads of real pairs lie is what :func:`recall_depth` measures from a full exact and an AtP table
(``benchmarks/bench_screen.py``); docs/DEVIATIONS.md lists the method.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..patch_results import PatchResult, aggregate
from .atp import atp_sweep
from .data import Pair
from .exact import exact_sweep, pair_runs, shared_prefix

Head = tuple[int, int]


def ranking(scores: np.ndarray) -> list[Head]:
    """Heads by score, highest first (ties: lower layer, then lower head; NaN last) from ``scores`` [L, H]."""
    L, H = scores.shape
    flat = np.where(np.isnan(scores), -np.inf, scores).ravel()
    order = np.lexsort((np.arange(L * H), -flat))
    return [(int(i // H), int(i % H)) for i in order]


def mean_scores(res: PatchResult) -> np.ndarray:
    """Normalised aggregate score [L, H] (:func:`cotmech.patch_results.aggregate` without the bootstrap)."""
    return aggregate(res.patched, res.base, res.source, n_boot=0)[0]


def screen(order: Sequence[Head], evaluate: Callable[[list[Head]], dict[Head, float]], top_k: int,
           candidates: int, block: int) -> tuple[dict[Head, float], int]:
    """Exact scores of the heads :mod:`this module <cotmech.patching.screen>` evaluates, and the number of rounds.

    ``order``: the heads, AtP's best first; ``evaluate(heads)`` their exact aggregate scores. Round 1 evaluates the
    first ``max(candidates, top_k)``; every later round the next ``block``, stopping after the first block none of
    whose scores reaches the current k-th best exact score (or when ``order`` is exhausted)."""
    if top_k < 1 or block < 1:
        raise ValueError(f"screen: top_k and block must be >= 1 (got {top_k}, {block})")
    pos = min(len(order), max(candidates, top_k))
    got = dict(evaluate(list(order[:pos])))
    rounds = 1
    while pos < len(order):
        kth = sorted(got.values(), reverse=True)[min(top_k, len(got)) - 1]
        new = dict(evaluate(list(order[pos:pos + block])))
        got.update(new)
        pos += block
        rounds += 1
        if max(new.values()) < kth:
            break
    return got, rounds


def top_heads(scores: dict[Head, float], k: int) -> list[Head]:
    """The ``k`` best heads of ``scores`` (ties: lower layer, then head)."""
    return sorted(scores, key=lambda h: (-scores[h], h))[:k]


def recall_depth(exact: np.ndarray, atp: np.ndarray, top_k: int) -> int:
    """How many heads of AtP's order (by ``atp`` [L, H]) contain the exact top ``top_k`` (by ``exact`` [L, H]):
    the ``candidates`` at which round 1 of :func:`screen` alone would already find them."""
    want = set(ranking(exact)[:top_k])
    order = ranking(atp)
    return max(order.index(h) for h in want) + 1


def simulate(exact: np.ndarray, atp: np.ndarray, top_k: int, candidates: int, block: int) -> dict:
    """:func:`screen` on full tables (exact [L, H] from a full sweep, atp [L, H]): evaluated heads, rounds and
    whether its top-k equals the full sweep's. Exact scores of a subset equal the full sweep's, so this is what a
    screened run on the same pairs finds (per-pair values do not depend on which other heads are evaluated)."""
    got, rounds = screen(ranking(atp), lambda hs: {h: float(exact[h]) for h in hs}, top_k, candidates, block)
    full = set(ranking(exact)[:top_k])
    return {"evaluated": len(got), "rounds": rounds, "equal": set(top_heads(got, top_k)) == full,
            "recall_depth": recall_depth(exact, atp, top_k)}


def screened_sweep(model, pairs: Sequence[Pair], metric: str = "kl", direction: str = "denoise", top_k: int = 20,
                   candidates: int = 60, block: int = 10, head_batch: int = 64, chunk_tokens: int | None = None,
                   overhead: float = 4.0, progress: bool = True) -> tuple[PatchResult, PatchResult]:
    """(screened result, the AtP result it used). The screened result holds exact per-pair values for the heads
    :func:`screen` evaluated (``info["exact_heads"]``) and AtP's for the others; base and source metrics are the
    exact runs'. Each pair's prefix cache and reference runs are computed once, for AtP and every round."""
    root = shared_prefix(model, pairs)
    runs = [pair_runs(model, p, root=root) for p in pairs]
    atp = atp_sweep(model, pairs, metric=metric, direction=direction, progress=progress, runs=runs)
    patched = atp.patched.copy()
    base = source = None
    done: list[Head] = []

    def evaluate(heads: list[Head]) -> dict[Head, float]:
        nonlocal base, source
        res = exact_sweep(model, pairs, metric=metric, direction=direction, heads=heads, head_batch=head_batch,
                          chunk_tokens=chunk_tokens, overhead=overhead, progress=progress, runs=runs)
        base, source = res.base, res.source
        for lay, h in heads:
            patched[:, lay, h] = res.patched[:, lay, h]
        done.extend(heads)
        s = mean_scores(res)
        return {(lay, h): float(s[lay, h]) for lay, h in heads}

    _, rounds = screen(ranking(mean_scores(atp)), evaluate, top_k, candidates, block)
    info = {"top_k": top_k, "candidates": candidates, "block": block, "rounds": rounds,
            "exact_heads": sorted([list(h) for h in done]), "head_batch": head_batch, "chunk_tokens": chunk_tokens,
            "overhead": overhead}
    res = PatchResult("screened", atp.metric, direction, list(atp.pair_ids), list(atp.subtasks), patched, base,
                      source, info)
    return res, atp


def exact_mask(res: PatchResult) -> np.ndarray:
    """[L, H] True where ``res`` holds exact values: every head but for a screened result the evaluated ones."""
    L, H = res.patched.shape[1:]
    if res.method != "screened":
        return np.full((L, H), res.method != "atp")
    mask = np.zeros((L, H), dtype=bool)
    for lay, h in res.info.get("exact_heads", []):
        mask[lay, h] = True
    return mask


__all__ = ["exact_mask", "mean_scores", "ranking", "recall_depth", "screen", "screened_sweep", "simulate",
           "top_heads"]
