"""Head-score tables from patching results: the aggregate over pairs with its seeded bootstrap CI
(:func:`cotmech.patch_results.aggregate`) as a long table, heat-maps, AtP-vs-exact Spearman.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..patch_results import PatchResult, aggregate


def score_table(res: PatchResult, subtask: int, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Long table ``subtask, layer, head, score, ci_low, ci_high, n`` (heads that were not patched are dropped); a
    screened result (:mod:`cotmech.patching.screen`) adds ``exact``: False where the score is AtP's estimate."""
    if not res.pair_ids:
        raise ValueError(f"subtask {subtask}: no pairs to score")
    score, lo, hi = aggregate(res.patched, res.base, res.source, n_boot, seed)
    L, H = score.shape
    layer, head = np.divmod(np.arange(L * H), H)
    df = pd.DataFrame({"subtask": int(subtask), "layer": layer, "head": head, "score": score.ravel(),
                       "ci_low": lo.ravel(), "ci_high": hi.ravel(), "n": len(res.pair_ids)})
    if res.method == "screened":
        from .screen import exact_mask

        df["exact"] = exact_mask(res).ravel()
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


def spearman_table(exact: dict[int, pd.DataFrame], atp: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per subtask: Spearman rank correlation of AtP and exact head scores (``subtask, spearman, n``)."""
    from scipy.stats import spearmanr

    rows = []
    for k in sorted(exact):
        a = exact[k].merge(atp[k], on=["layer", "head"], suffixes=("_exact", "_atp"))
        rho = spearmanr(a["score_exact"], a["score_atp"]).statistic if len(a) > 1 else np.nan
        rows.append({"subtask": k, "spearman": float(rho), "n": int(exact[k]["n"].iloc[0]), "heads": len(a)})
    return pd.DataFrame(rows)
