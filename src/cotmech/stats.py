"""The study's interval estimates, in one place: the Wilson score interval of a binomial proportion (accuracy,
knockout, probe and flow counts) and the cluster bootstrap over examples (lens curves, rift layer, head-role shares);
the first crossing of a level along a curve, and a seeded per-subtask row cap.

Both are checked against independent references in ``tests/test_stats.py`` (statsmodels, an explicit resampling
loop over example ids, coverage on planted data).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _z(ci: float) -> float:
    """Two-sided standard-normal quantile for a central interval of level ``ci``."""
    from scipy.stats import norm

    if not 0.0 < ci < 1.0:
        raise ValueError(f"interval level must lie in (0, 1), got {ci}")
    return float(norm.ppf(0.5 + ci / 2))


def wilson(k: int, n: int, ci: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of level ``ci`` for k successes out of n; (nan, nan) for n = 0.

    The bounds at k = 0 and k = n are exactly 0 and 1 (the closed form gives them up to rounding).
    """
    if n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    z = _z(ci)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] how often each of n units is drawn when drawing n with replacement (the bootstrap), seeded."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def bootstrap_weights(groups: Sequence[Any], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-bootstrap weights over the distinct ``groups`` (example ids), seeded.

    Returns (inv [n_rows] index of each row's group in the sorted distinct groups, W [n_boot, n_groups] how often
    each group is drawn when drawing n_groups groups with replacement). A replicate's statistic weights every row of
    a group by its group's count, so all rows of an example enter or leave together.
    """
    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return inv, resample_counts(len(uniq), n_boot, seed).astype(float)


def percentile_interval(boots: np.ndarray, ci: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Central percentile interval of level ``ci`` of bootstrap replicates along ``axis`` (NaN replicates ignored;
    an all-NaN slice gives NaN)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (e.g. layers never traced)
        return tuple(np.nanquantile(boots, [(1 - ci) / 2, (1 + ci) / 2], axis=axis))


def first_crossing(curve: Sequence[float], level: float) -> int | None:
    """First index whose value is >= ``level`` (NaN skipped); None if none."""
    for i, v in enumerate(np.asarray(curve, float)):
        if np.isfinite(v) and v >= level:
            return int(i)
    return None


def select_rows(index: Any, max_per_subtask: int | None, seed: int) -> np.ndarray:
    """Row positions of a table with a ``subtask`` column, at most ``max_per_subtask`` per subtask, drawn with a
    seeded RNG (sorted)."""
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    sub = index["subtask"].to_numpy()
    for st in np.unique(sub):
        pos = np.flatnonzero(sub == st)
        if max_per_subtask is not None and len(pos) > max_per_subtask:
            pos = rng.choice(pos, max_per_subtask, replace=False)
        keep.extend(int(p) for p in pos)
    return np.array(sorted(keep), dtype=int)
