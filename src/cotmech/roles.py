"""Head roles from cached activations: answer writers (study.md E4) and copy heads (E5); claim C5.

A head's output is ``x_h = z_h W_O,h`` [d_model] (its slice of the o_proj input times its block of W_O;
o_proj's bias b_O, if any, is not part of any head).  ``Σ_h x_h + b_O`` = the attention output (tested).

**Answer writers** (per row = pair at its predicting position, answer token a, layer ℓ of the head):
- ``p_pre`` / ``p_mid``: logit-lens probability of a at resid_pre_ℓ / resid_mid_ℓ = resid_pre_ℓ + attn_out_ℓ;
- ``p_head``: the E4 probability — lens of the rebuilt ``resid_pre_ℓ + x_h + b_O``;
- ``p_alone``: the head's output alone through the final norm and unembedding (the E9 Stage-I statistic);
- ``dla``: direct logit attribution, ``(G_a − mean_v G_v) · c(x_h) / s(resid_L)`` — the head's additive share
  of the final (vocab-centred) answer logit with the final norm's scale frozen at the last residual.
- ``score = (mean p_head − mean p_pre) / mean p_mid`` (means over rows of a subtask).  The original E4 score is
  ``(p_mid − p_head)/p_mid``; ours is E4(head that writes nothing) − E4(h): 0 for a head that adds nothing,
  ≈ (p_mid − p_pre)/p_mid for the layer's only writer, higher = more important.
- ``p_head`` and ``p_alone`` share one unembedding per head: G·c(·) is linear (see :mod:`cotmech.unembed`).

**Copy heads**: ``attn`` = attention of the predicting position to ``answer_pos`` (the most recent earlier
occurrence of the answer token in the clean ids; rows with ``answer_pos`` null are excluded and counted);
``proj`` = ``G_a · c(x_h) / ‖G_a‖`` (the head's output projected on the answer's unembedding direction through
the final-norm gain); ``score = mean(attn · proj)`` — reads from the answer's position *and* writes the answer.

**Merged** (``subtask = -1``): writers — plain mean over subtasks of the score (already normalised by p_mid);
copy — mean over subtasks of score / max_h |score| in that subtask, so each subtask weighs the same.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from .heads import COPY_COMPONENTS, SCORERS, WRITER_COMPONENTS, copy_components, writer_components
from .stats import bootstrap_weights, percentile_interval, select_rows
from .unembed import Unembed


# --------------------------------------------------------------------------------------------------
# Scores per subtask, merges, bootstrap of the top-k share
# --------------------------------------------------------------------------------------------------
def merge(per_subtask: list[np.ndarray], maxabs: bool) -> np.ndarray:
    """Mean over subtasks of [L, H] maps, each divided by its max |score| first if ``maxabs``."""
    maps = []
    for m in per_subtask:
        if not np.isfinite(m).any():
            continue
        if maxabs:
            den = np.nanmax(np.abs(m))
            m = m / den if den > 0 else m
        maps.append(m)
    return np.nanmean(np.stack(maps), 0) if maps else np.full_like(per_subtask[0], np.nan)


def score_table(kind: str, comp: dict[str, np.ndarray], subtasks: np.ndarray) -> pd.DataFrame:
    """Head-score table (DESIGN.md contract): subtask (-1 = merged), layer, head, score, components, n."""
    scorer, maxabs = SCORERS[kind]
    comps = WRITER_COMPONENTS if kind == "writers" else COPY_COMPONENTS
    frames, maps = [], []
    L, H = comp[comps[0]].shape[1:3]
    lay, head = np.repeat(np.arange(L), H), np.tile(np.arange(H), L)
    for st in sorted(np.unique(subtasks).tolist()):
        idx = np.flatnonzero(subtasks == st)
        score = scorer(comp, idx)
        maps.append(score)
        df = pd.DataFrame({"subtask": int(st), "layer": lay, "head": head, "score": score.reshape(-1)})
        for k in comps:
            v = comp[k][idx]
            m = np.nanmean(v, 0) if np.isfinite(v).any() else np.full(v.shape[1:], np.nan)
            df[k] = (m[:, None] * np.ones((1, H)) if m.ndim == 1 else m).reshape(-1)
        if kind == "copy":
            n_ok = int(np.isfinite(comp["attn"][idx][:, 0, 0]).sum())
            df["n"], df["n_excluded"] = n_ok, len(idx) - n_ok
        else:
            df["n"] = len(idx)
        frames.append(df)
    merged = pd.DataFrame({"subtask": -1, "layer": lay, "head": head, "score": merge(maps, maxabs).reshape(-1)})
    merged["n"] = len(subtasks)
    return pd.concat(frames + [merged], ignore_index=True)


def top_k_share(merged: np.ndarray, k: int, n_layers: int) -> tuple[float, list[tuple[int, int]]]:
    """Share of the top-k heads of a merged [L, H] map in the second half (layer ≥ n_layers/2), and the heads."""
    flat = np.where(np.isfinite(merged), merged, -np.inf).reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))[:k]  # score desc, ties by index
    H = merged.shape[1]
    heads = [(int(i // H), int(i % H)) for i in order]
    return float(np.mean([lay >= n_layers / 2 for lay, _ in heads])), heads


def bootstrap_share(kind: str, comp: dict[str, np.ndarray], subtasks: np.ndarray, groups: np.ndarray, k: int,
                    n_layers: int, n_boot: int, seed: int, ci: float = 0.95) -> dict[str, Any]:
    """Top-k second-half share with a cluster bootstrap over examples (``groups``), seeded."""
    scorer, maxabs = SCORERS[kind]
    inv, W = bootstrap_weights(groups, n_boot, seed)
    sts = sorted(np.unique(subtasks).tolist())
    full = merge([scorer(comp, np.flatnonzero(subtasks == s)) for s in sts], maxabs)
    share, heads = top_k_share(full, k, n_layers)
    boots = []
    for wb in W:
        wrow = wb[inv]
        maps = []
        for s in sts:
            idx = np.flatnonzero(subtasks == s)
            if wrow[idx].sum() > 0:
                maps.append(scorer(comp, idx, wrow[idx]))
        if maps:
            boots.append(top_k_share(merge(maps, maxabs), k, n_layers)[0])
    boots = np.asarray(boots)
    lo, hi = percentile_interval(boots, ci) if boots.size else (np.nan, np.nan)
    return {"k": k, "share_second_half": share, "ci_low": float(lo), "ci_high": float(hi), "n_boot": int(boots.size),
            "top_heads": [list(h) for h in heads], "n_rows": int(len(subtasks)), "n_examples": int(W.shape[1])}


def plot_maps(table: pd.DataFrame, title: str, stem: Any) -> list:
    """Layer × head maps: merged score first, then one panel per subtask."""
    from .plotting import figure, heatmap, save_figure

    sts = [-1] + sorted(s for s in table["subtask"].unique() if s != -1)
    ncols = min(4, len(sts))
    nrows = math.ceil(len(sts) / ncols)
    fig, axes = figure(nrows, ncols, width=3.0, height=2.6)
    for i, st in enumerate(sts):
        ax = axes[i // ncols][i % ncols]
        d = table[table["subtask"] == st]
        m = d.pivot(index="layer", columns="head", values="score").to_numpy(float)
        heatmap(ax, m, title=f"{title}: " + ("merged" if st == -1 else f"subtask {st}"), center=0.0)
    for j in range(len(sts), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    return save_figure(fig, stem)


PAPER_WRITERS = {"share_second_half": 0.991, "n": 856,
                 "source": "study.md E10: depth-0 answer writers of the shipped traces, layers >= 16 of 32 [R]"}


def run_roles(model: Any, lens: Unembed, tensors: dict[str, torch.Tensor], index: pd.DataFrame,
              max_per_subtask: int | None, seed: int, top_frac: float = 0.05, n_boot: int = 200,
              ci: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Writer and copy tables and the summary (top-k second-half shares with bootstrap CIs) for one dataset."""
    rows = select_rows(index, max_per_subtask, seed)
    sel = index.iloc[rows].reset_index(drop=True)
    t = {k: tensors[k][torch.as_tensor(rows)] for k in ("resid", "attn_out", "z", "attn")}
    aid = torch.tensor(sel["answer_id"].to_numpy(np.int64))
    wcomp = writer_components(lens, model, t["resid"], t["attn_out"], t["z"], aid, progress=True)
    pos = np.array([None if pd.isna(p) else int(p) for p in sel["answer_pos"]], dtype=object)
    ccomp = copy_components(lens, model, t["z"], t["attn"], sel["length"].to_numpy(), pos, aid)
    subtasks, groups = sel["subtask"].to_numpy(), sel["example_id"].astype(str).to_numpy()
    k = max(1, int(round(top_frac * model.n_layers * model.n_heads)))
    summary: dict[str, Any] = {
        "n_layers": model.n_layers, "n_heads": model.n_heads, "second_half": f"layer >= {model.n_layers / 2:g}",
        "top_frac": top_frac, "k": k, "n_rows": int(len(sel)), "n_examples": int(len(set(groups))),
        "max_per_subtask": max_per_subtask, "paper": PAPER_WRITERS,
        "copy_rows_without_answer_pos": int(sum(p is None for p in pos)),
    }
    tables = {}
    for kind, comp in (("writers", wcomp), ("copy", ccomp)):
        tables[kind] = score_table(kind, comp, subtasks)
        summary[kind] = bootstrap_share(kind, comp, subtasks, groups, k, model.n_layers, n_boot, seed, ci)
        per = {}
        for st in sorted(np.unique(subtasks).tolist()):
            m = tables[kind][tables[kind].subtask == st].pivot(index="layer", columns="head", values="score")
            if np.isfinite(m.to_numpy(float)).any():
                per[str(st)] = top_k_share(m.to_numpy(float), k, model.n_layers)[0]
        summary[kind]["per_subtask_share"] = per
    return tables["writers"], tables["copy"], summary


# --------------------------------------------------------------------------------------------------
# Entry point (scripts/head_roles.py)
# --------------------------------------------------------------------------------------------------
def run(model: Any, tensors: dict[str, torch.Tensor], index: pd.DataFrame, cfg: Any, seed: int, *,
        where: object = "pairs", log: Any = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Answer-writer (study.md E4) and copy (E5) head scores of one dataset (claim C5): :func:`run_roles`'s
    writer and copy tables and summary.

    ``tensors`` (resid, attn_out, z, attn) and ``index`` as :func:`cotmech.prior_shift.load_activations` returns
    them; ``cfg`` the ``roles`` config section (:func:`cotmech.config.section`). The logit lens is built on the
    model's device (the writer scan runs where the model runs). ``where`` names the pairs in token-id errors.
    """
    import time

    from .cli import check_pair_ids
    from .unembed import make_unembed

    log = log or (lambda msg: print(msg, flush=True))
    check_pair_ids(model, index.to_dict("records"), where)
    lens = make_unembed(model, device=model.device)
    t0 = time.time()
    writers, copy, summary = run_roles(model, lens, tensors, index, cfg["max_per_subtask"], seed,
                                       float(cfg["top_frac"]), int(cfg["n_boot"]), float(cfg["ci"]))
    log(f"{summary['n_rows']} rows in {time.time() - t0:.1f} s; top-{summary['k']} second-half share: writers "
        f"{summary['writers']['share_second_half']:.3f} [{summary['writers']['ci_low']:.3f}, "
        f"{summary['writers']['ci_high']:.3f}], copy {summary['copy']['share_second_half']:.3f} (paper 0.991)")
    return writers, copy, summary
