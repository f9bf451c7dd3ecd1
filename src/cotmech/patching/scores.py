"""Head-score tables from patching results: aggregate over pairs, seeded bootstrap CI, heat-maps, merging.

Aggregation (as the paper averages KL over the batch before normalising, study.md §5): the score of a
head is the normalised *mean* metric, (mean m_patched - mean m_base) / (mean m_source - mean m_base); the
95% CI resamples pairs with replacement (percentile bootstrap, ``n_boot`` draws from ``seed``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import io
from ..stats import resample_counts
from .exact import PatchResult

TABLE_COLUMNS = ["subtask", "layer", "head", "score", "ci_low", "ci_high", "n"]


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


def score_table(res: PatchResult, subtask: int, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Long table ``subtask, layer, head, score, ci_low, ci_high, n`` (heads that were not patched are dropped)."""
    if not res.pair_ids:
        raise ValueError(f"subtask {subtask}: no pairs to score")
    score, lo, hi = aggregate(res.patched, res.base, res.source, n_boot, seed)
    L, H = score.shape
    layer, head = np.divmod(np.arange(L * H), H)
    df = pd.DataFrame({"subtask": int(subtask), "layer": layer, "head": head, "score": score.ravel(),
                       "ci_low": lo.ravel(), "ci_high": hi.ravel(), "n": len(res.pair_ids)})
    done = ~np.isnan(res.patched).all(0).ravel()
    return df[done].reset_index(drop=True)


def to_matrix(df: pd.DataFrame, column: str = "score") -> np.ndarray:
    """[n_layers, n_heads] matrix of a head table (NaN where missing)."""
    L, H = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    m = np.full((L, H), np.nan)
    m[df["layer"].to_numpy(), df["head"].to_numpy()] = df[column].to_numpy()
    return m


def heatmap_figure(matrix: np.ndarray, stem: str | os.PathLike, title: str, label: str = "score") -> None:
    """Layer × head heat-map (diverging around 0), PNG + PDF."""
    from ..plotting import figure, heatmap, save_figure

    L, H = matrix.shape
    fig, axes = figure(width=max(3.5, 0.16 * H + 1.5), height=max(3.0, 0.12 * L + 1.0))
    heatmap(axes[0, 0], matrix, title=title, center=0.0, colorbar_label=label)
    save_figure(fig, stem)


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


def spearman_table(exact: dict[int, pd.DataFrame], atp: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per subtask: Spearman rank correlation of AtP and exact head scores (``subtask, spearman, n``)."""
    from scipy.stats import spearmanr

    rows = []
    for k in sorted(exact):
        a = exact[k].merge(atp[k], on=["layer", "head"], suffixes=("_exact", "_atp"))
        rho = spearmanr(a["score_exact"], a["score_atp"]).statistic if len(a) > 1 else np.nan
        rows.append({"subtask": k, "spearman": float(rho), "n": int(exact[k]["n"].iloc[0]), "heads": len(a)})
    return pd.DataFrame(rows)
