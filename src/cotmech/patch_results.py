"""Head-patching results as data: the per-pair values of single-head patches (:class:`PatchResult`), their raw
shard files (:func:`save_raw`, :func:`load_raw`) and their aggregation into head scores (:func:`aggregate`).

The patching methods of :mod:`cotmech.patching` write them; the knockout (:mod:`cotmech.circuits`) ranks heads
by them. Aggregation (as the paper averages KL over the batch before normalising, study.md §5): the score of a
head is the normalised *mean* metric, (mean m_patched - mean m_base) / (mean m_source - mean m_base); the
95% CI resamples pairs with replacement (percentile bootstrap, ``n_boot`` draws from ``seed``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import io
from .stats import resample_counts


@dataclass
class PatchResult:
    """Metric values of single-head patches. Arrays are float64; rows follow ``pair_ids``."""

    method: str
    metric: str
    direction: str
    pair_ids: list[str]
    subtasks: list[int]
    patched: np.ndarray  # [pairs, n_layers, n_heads]
    base: np.ndarray  # [pairs] metric of the run that is patched into (corrupt when denoising)
    source: np.ndarray  # [pairs] metric of the run the activations come from (clean when denoising)
    info: dict = field(default_factory=dict)

    def per_pair_scores(self) -> np.ndarray:
        """Normalised score per pair and head [pairs, n_layers, n_heads]."""
        return (self.patched - self.base[:, None, None]) / (self.source - self.base)[:, None, None]

    @staticmethod
    def empty(method: str, metric: str, direction: str, n_layers: int, n_heads: int) -> "PatchResult":
        """A result without pairs (an empty shard or corruption still writes its part)."""
        return PatchResult(method, metric, direction, [], [], np.zeros((0, n_layers, n_heads)), np.zeros(0),
                           np.zeros(0))

    @staticmethod
    def concat(parts: Sequence["PatchResult"]) -> "PatchResult":
        p0 = parts[0]
        return PatchResult(p0.method, p0.metric, p0.direction, [i for p in parts for i in p.pair_ids],
                           [s for p in parts for s in p.subtasks], np.concatenate([p.patched for p in parts]),
                           np.concatenate([p.base for p in parts]), np.concatenate([p.source for p in parts]),
                           dict(p0.info))


def aggregate(patched: np.ndarray, base: np.ndarray, source: np.ndarray, n_boot: int = 1000, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """score, ci_low, ci_high [n_layers, n_heads] from per-pair arrays (patched [pairs, L, H], base/source [pairs])."""
    N, L, H = patched.shape
    flat = patched.reshape(N, L * H)
    denom = source.mean() - base.mean()
    score = (flat.mean(0) - base.mean()) / denom
    if n_boot <= 0 or N < 2:
        nan = np.full(L * H, np.nan)
        return score.reshape(L, H), nan.reshape(L, H), nan.reshape(L, H)
    w = resample_counts(N, n_boot, seed) / N  # [boot, pairs] resampling weights
    boot = ((w @ np.nan_to_num(flat)) - (w @ base)[:, None]) / ((w @ source) - (w @ base))[:, None]
    boot[:, np.isnan(flat).any(0)] = np.nan
    lo, hi = np.nanpercentile(boot, [2.5, 97.5], axis=0) if np.isfinite(boot).any() else (boot[0], boot[0])
    return score.reshape(L, H), lo.reshape(L, H), hi.reshape(L, H)


# --------------------------------------------------------------------------------------------------
# raw shards (per-pair metric values) <-> PatchResult
# --------------------------------------------------------------------------------------------------
def save_raw(path: str | os.PathLike, res: PatchResult) -> None:
    """Per-pair values as safetensors (+ ids and settings in the metadata); shards merge with :func:`load_raw`."""
    import json

    import torch

    io.save_tensors(path, {"patched": torch.from_numpy(res.patched), "base": torch.from_numpy(res.base),
                           "source": torch.from_numpy(res.source)},
                    metadata={"method": res.method, "metric": res.metric, "direction": res.direction,
                              "pair_ids": json.dumps(res.pair_ids), "subtasks": json.dumps(res.subtasks),
                              "info": json.dumps(res.info)})


def load_raw(paths: Sequence[str | os.PathLike]) -> PatchResult:
    """Concatenate raw shards (in the given order); they must agree on method, metric and direction."""
    import json

    from safetensors import safe_open

    parts = []
    for p in paths:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k).numpy() for k in f.keys()}
        parts.append(PatchResult(meta["method"], meta["metric"], meta["direction"], json.loads(meta["pair_ids"]),
                                 json.loads(meta["subtasks"]), t["patched"], t["base"], t["source"],
                                 json.loads(meta.get("info", "{}"))))
    keys = {(p.method, p.metric, p.direction) for p in parts}
    if len(keys) > 1:
        raise ValueError(f"raw shards disagree on (method, metric, direction): {sorted(keys)}: {list(map(str, paths))}")
    parts = [p for p in parts if p.pair_ids] or parts[:1]
    return PatchResult.concat(parts)
