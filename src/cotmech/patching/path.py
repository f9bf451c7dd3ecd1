"""Path patching (Wang et al. 2022, IOI): a sender head's effect along chosen paths only.

For each sender head s (denoising: base = corrupt, source = clean):

1. Run the base input with s's z taken from the source run and every other head's z frozen at the base
   run (``frozen="all"``; MLPs and norms are recomputed, as in Wang et al. and TransformerLens' ARENA code).
   The logits of this run measure the path s -> logits (direct, and through MLPs only). The receivers'
   query/key/value projection outputs of this run are cached.
2. Run the base input again with only the receivers' q, k or v (one channel, or all three) replaced by
   the cached ones; nothing is frozen. Its metric measures the path s -> receivers' channel -> logits.

``frozen="none"`` opens all paths: step 1 is then plain activation patching of s. Everything runs on the
suffix after ``first_diff`` with the shared prefix's KV cache, as in :mod:`cotmech.patching.exact`.
With grouped-query attention a key/value unit is shared by n_heads/n_kv_heads query heads; patching a
receiver's k or v patches its whole key-value group (reported in the table as ``kv_head``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..patch_results import aggregate
from ..tracing import Edit, run_trace
from .data import Pair
from .exact import _check, _roles, pair_runs, shared_prefix
from .metrics import get_metric

PATHS = ("logits", "q", "k", "v", "qkv")


def _unit(model, site: str, head: int) -> int:
    return head // (model.n_heads // model.n_kv_heads) if site in ("k", "v") else head


def path_patch(model, pairs: Sequence[Pair], senders: Sequence[tuple[int, int]],
               receivers: Sequence[tuple[int, int]], paths: Sequence[str] = PATHS, metric: str = "kl",
               direction: str = "denoise", frozen: str = "all", progress: bool = True) -> dict[str, np.ndarray]:
    """Per-pair metric values: ``{"patched": [pairs, senders, paths], "base": [pairs], "source": [pairs]}``."""
    _check(direction)
    bad = [p for p in paths if p not in PATHS]
    if bad:
        raise ValueError(f"unknown path(s) {bad}; use {', '.join(PATHS)}")
    if frozen not in ("all", "none"):
        raise ValueError(f"frozen={frozen!r}: use 'all' or 'none'")
    if not senders:
        raise ValueError("path_patch: no sender heads")
    fn = get_metric(metric)
    b_name, s_name = _roles(direction)
    L, H, d = model.n_layers, model.n_heads, model.d_head
    S_n = len(senders)
    chans = sorted({c for p in paths if p != "logits" for c in (("q", "k", "v") if p == "qkv" else (p,))},
                   key="qkv".index)
    rec_layers = sorted({lay for lay, _ in receivers})
    out = np.zeros((len(pairs), S_n, len(paths)))
    base_m, src_m = np.zeros(len(pairs)), np.zeros(len(pairs))
    root = shared_prefix(model, pairs)
    for i, pair in enumerate(tqdm(pairs, desc="path patching", disable=not progress)):
        pr = pair_runs(model, pair, root=root)
        base, src = pr.runs[b_name], pr.runs[s_name]
        base_m[i] = float(fn(base.logits, pr.ref)[0])
        src_m[i] = float(fn(src.logits, pr.ref)[0])
        ids = pair.ids(b_name)[pair.first_diff:][None]
        # step 1: sender from source, the rest frozen at base (one row per sender)
        edits = []
        for lay in range(L):
            mask = torch.zeros(S_n, H, dtype=torch.bool)
            value = base.saved[("z", lay)].expand(S_n, -1, -1, -1).clone()
            for r, (sl, sh) in enumerate(senders):
                if sl == lay:
                    mask[r, sh] = True
                    value[r, :, sh] = src.saved[("z", lay)][0, :, sh]
            if frozen == "all":
                mask[:] = True
            if mask.any():
                edits.append(Edit("z", lay, mask, value))
        step1 = run_trace(model, ids.expand(S_n, -1), cache=pr.cache, edits=edits,
                          save=[(c, lay) for c in chans for lay in rec_layers])
        m1 = fn(step1.logits, pr.ref).cpu().double().numpy()
        # step 2: receivers' channel(s) from step 1, one row per (sender, channel path)
        chan_paths = [p for p in paths if p != "logits"]
        if chan_paths and receivers:
            R = S_n * len(chan_paths)
            edits = []
            for c in chans:
                U = model.n_kv_heads if c in ("k", "v") else H
                for lay in rec_layers:
                    mask = torch.zeros(R, U, dtype=torch.bool)
                    for j, p in enumerate(chan_paths):
                        if c in (("q", "k", "v") if p == "qkv" else (p,)):
                            for rl, rh in receivers:
                                if rl == lay:
                                    mask[j * S_n:(j + 1) * S_n, _unit(model, c, rh)] = True
                    if mask.any():
                        value = step1.saved[(c, lay)].repeat(len(chan_paths), 1, 1, 1)
                        edits.append(Edit(c, lay, mask, value))
            step2 = run_trace(model, ids.expand(R, -1), cache=pr.cache, edits=edits)
            m2 = fn(step2.logits, pr.ref).cpu().double().numpy().reshape(len(chan_paths), S_n)
        for j, p in enumerate(paths):
            out[i, :, j] = m1 if p == "logits" else (
                m2[chan_paths.index(p)] if receivers else base_m[i])
    return {"patched": out, "base": base_m, "source": src_m}


def path_table(values: dict[str, np.ndarray], senders: Sequence[tuple[int, int]], paths: Sequence[str],
               subtask: int, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Long table: subtask, sender_layer, sender_head, path, score, ci_low, ci_high, n."""
    score, lo, hi = aggregate(values["patched"], values["base"], values["source"], n_boot, seed)
    rows = []
    for s, (lay, h) in enumerate(senders):
        for j, p in enumerate(paths):
            rows.append({"subtask": int(subtask), "sender_layer": lay, "sender_head": h, "path": p,
                         "score": score[s, j], "ci_low": lo[s, j], "ci_high": hi[s, j],
                         "n": len(values["base"])})
    return pd.DataFrame(rows)


def pick_heads(table: pd.DataFrame, n_layers: int, n_senders: int, n_receivers: int
               ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Senders = top first-half heads, receivers = top second-half heads by activation-patching score."""
    half = n_layers // 2
    t = table.sort_values(["score", "layer", "head"], ascending=[False, True, True])
    first = t[t["layer"] < half].head(n_senders)
    second = t[t["layer"] >= half].head(n_receivers)
    return ([(int(a), int(b)) for a, b in zip(first["layer"], first["head"])],
            [(int(a), int(b)) for a, b in zip(second["layer"], second["head"])])


def path_figure(df: pd.DataFrame, stem, title: str) -> None:
    """Sender × path heat-map per subtask (rows = senders 'L<layer>H<head>', columns = paths)."""
    from ..plotting import figure, heatmap, save_figure

    subtasks = sorted(df["subtask"].unique())
    paths = list(dict.fromkeys(df["path"]))
    fig, axes = figure(1, len(subtasks), width=0.5 * len(paths) + 2.2,
                       height=0.28 * df.groupby("subtask").size().max() / len(paths) + 1.6)
    for ax, k in zip(axes[0], subtasks):
        d = df[df["subtask"] == k]
        senders = list(dict.fromkeys(zip(d["sender_layer"], d["sender_head"])))
        m = d.pivot_table(index=["sender_layer", "sender_head"], columns="path", values="score", sort=False)
        m = m.reindex(index=pd.MultiIndex.from_tuples(senders), columns=paths)
        heatmap(ax, m.to_numpy(), title=f"{title} k={k}", center=0.0, xlabel="path", ylabel="sender head")
        ax.set_xticks(range(len(paths)), paths)
        ax.set_yticks(range(len(senders)), [f"L{a}H{b}" for a, b in senders])
    save_figure(fig, stem)


# --------------------------------------------------------------------------------------------------
# Entry point (scripts/path_patch.py)
# --------------------------------------------------------------------------------------------------
def run(model, pairs: dict[int, Sequence[Pair]], tables: dict[int, pd.DataFrame], cfg, seed: int, *,
        where: object = "pairs", log=None) -> pd.DataFrame:
    """Path patching (study.md C5, E2) of every subtask of ``tables`` (its activation-patching head table): one long
    table of :func:`path_table` rows with each sender's activation-patching score and the receivers.

    Senders / receivers: :func:`pick_heads` of the subtask's table; ``pairs``: subtask -> its pairs (the first
    ``cfg["path"]["n_pairs"]``); ``cfg`` the ``patching`` config section (:func:`cotmech.config.section`).
    ``where`` names the pairs in errors.
    """
    from ..cli import check_pair_ids
    from ..io import RecordError
    from .run import sub_seed

    log = log or (lambda msg: print(msg, flush=True))
    po = cfg["path"]
    parts = []
    for k in sorted(tables):
        ps = pairs.get(k)
        if not ps:
            raise RecordError(f"{where}: no pairs for subtask {k}")
        check_pair_ids(model, ps, where)
        senders, receivers = pick_heads(tables[k], model.n_layers, po["n_senders"], po["n_receivers"])
        log(f"subtask {k}: senders {senders}, receivers {receivers}")
        vals = path_patch(model, ps, senders, receivers, paths=po["paths"], metric=cfg["metric"],
                          direction=cfg["direction"], frozen=po["frozen"])
        df = path_table(vals, senders, po["paths"], k, n_boot=cfg["n_boot"], seed=sub_seed(seed, "path", k))
        act = tables[k].set_index(["layer", "head"])["score"]
        df["sender_activation_score"] = [act.get((a, b)) for a, b in zip(df["sender_layer"], df["sender_head"])]
        df["receivers"] = ";".join(f"L{a}H{b}" for a, b in receivers)
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    log(df.to_string(index=False))
    return df
