"""Figures of study.md §7 not drawn by another analysis: F-task, F-depth, F-source, F-rift, F-flow, F-horizon, F-attn.

Every function takes tables written by the rules (never literals) and a file stem; it saves PNG + PDF through
:func:`cotmech.plotting.save_figure` and returns the paths. Layers are shown as relative depth (layer / n_layers)
where models of different depth could be compared (line plots); layer × head maps keep raw indices.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .plotting import KIND_COLOURS, figure, heatmap, save_figure

PART_COLOURS = {"none": "#f0f0f0", "fewshot": "#9467bd", "question": "#1f77b4", "generated": "#ff7f0e"}
PART_LABELS = {"none": "not traced", "fewshot": "few-shot", "question": "question context", "generated": "generated CoT"}


def _int_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _grid(df: Any, value: str, n_layers: int, n_heads: int, fill: float = 0.0) -> np.ndarray:
    m = np.full((n_layers, n_heads), fill, dtype=float)
    for layer, head, v in zip(df["layer"].astype(int), df["head"].astype(int), df[value].astype(float)):
        m[layer, head] = v
    return m


def empty(stem: str | Path, message: str) -> list[Path]:
    """A figure that only states why there is nothing to draw (e.g. no correctly solved example)."""
    fig, axes = figure(1, 1, width=4.0, height=1.5)
    axes[0][0].axis("off")
    axes[0][0].text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return save_figure(fig, stem)


# --------------------------------------------------------------------------------------------------
# F-task
# --------------------------------------------------------------------------------------------------
def task_example(generation: dict, pairs: Sequence[dict], stem: str | Path) -> list[Path]:
    """The worked example: question, query and the CoT with each subtask's target word coloured by its kind and
    numbered by its subtask index (from the example's generation record and its pairs)."""
    prompt = generation["prompt"]
    response = generation.get("answer") or " ".join(generation.get("cot", []))  # pairs follow the gold CoT
    marks = {}
    for p in pairs:
        if not p["clean"].startswith(prompt):
            raise ValueError(f"pair {p['pair_id']}: clean text does not start with the example's prompt")
        prefix = p["clean"][len(prompt):]
        start = len(prefix) + (1 if prefix else 0)
        marks[start] = (int(p["subtask"]), p.get("kind") or "label", p.get("answer", ""))
    fig, axes = figure(1, 1, width=7.5, height=2.2)
    ax = axes[0][0]
    ax.axis("off")
    ax.text(0, 0.95, f"Q: {generation['question']} {generation.get('query', '')}", fontsize=9, va="top",
            transform=ax.transAxes, wrap=True)
    # the CoT, word by word, wrapped; target words coloured
    renderer = fig.canvas.get_renderer()
    x, y, line_h = 0.0, 0.62, 0.16
    pos = 0
    for word in response.split(" "):
        mark = marks.get(pos)
        kw: dict[str, Any] = {"fontsize": 10, "va": "top", "transform": ax.transAxes}
        if mark:
            kw.update(color="white", fontweight="bold",
                      bbox={"boxstyle": "round,pad=0.15", "fc": KIND_COLOURS.get(mark[1], "#7f7f7f"), "ec": "none"})
        t = ax.text(x, y, word, **kw)
        if mark:
            ax.text(x, y + 0.1, str(mark[0]), fontsize=7, va="top", transform=ax.transAxes, color="#444444")
        w = t.get_window_extent(renderer).transformed(ax.transAxes.inverted()).width
        x += w + 0.012
        if x > 0.93:
            x, y = 0.0, y - line_h - 0.08
        pos += len(word) + 1
    handles = [__import__("matplotlib").patches.Patch(color=c, label=k) for k, c in KIND_COLOURS.items()
               if any(m[1] == k for m in marks.values())]
    ax.legend(handles=handles, loc="lower right", ncol=len(handles), fontsize=8)
    ax.set_title(f"Worked example {generation.get('id', '')}: {len(marks)} subtasks by kind")
    return save_figure(fig, stem)


# --------------------------------------------------------------------------------------------------
# F-depth, F-source, F-rift
# --------------------------------------------------------------------------------------------------
def depth_maps(maps: Any, summary: Any, n_layers: int, n_heads: int, stem: str | Path,
               depths: Sequence[int] = (0, 1, 2, 3)) -> list[Path]:
    """Layer × head frequency of traced heads at each depth (unique per example), titled with the depth's mean
    layer and share in the second half."""
    fig, axes = figure(1, len(depths), width=3.0, height=3.2)
    summ = summary.set_index("depth") if len(summary) else summary
    for ax, d in zip(axes[0], depths):
        sub = maps[maps["depth"] == d]
        m = _grid(sub, "count", n_layers, n_heads)
        title = f"depth {d}"
        if d in getattr(summ, "index", []):
            r = summ.loc[d]
            title += f"\nmean layer {r['mean_layer']:.1f}, ≥L/2 {r['share_second_half']:.0%} (n={int(r['n'])})"
        heatmap(ax, m, title=title, colorbar_label="examples")
        _int_ticks(ax)
    return save_figure(fig, stem)


def answer_sources(sources: Any, stem: str | Path) -> list[Path]:
    """Share of positions read by depth-0 writers in the few-shot / question / generated parts, per subtask
    (stacked bars; the "parallel pathways" of study.md E9b)."""
    fig, axes = figure(1, 1, width=max(3.5, 0.45 * len(sources) + 1.5), height=3.0)
    ax = axes[0][0]
    bottom = np.zeros(len(sources))
    x = np.arange(len(sources))
    for part in ("fewshot", "question", "generated"):
        vals = sources[part].to_numpy(float)
        ax.bar(x, vals, bottom=bottom, color=PART_COLOURS[part], label=PART_LABELS[part])
        bottom += vals
    kinds = sources["kind"].fillna("") if "kind" in sources else [""] * len(sources)
    ax.set_xticks(x, [f"{s}\n{str(k)[:3]}" for s, k in zip(sources["subtask"], kinds)])
    ax.set_xlabel("subtask")
    ax.set_ylabel("share of read positions")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, stem)


def head_sources(head_sources: Any, n_layers: int, n_heads: int, stem: str | Path, ncols: int = 5) -> list[Path]:
    """For each subtask, the majority source of each depth-0 head (categorical layer × head maps, study.md F-source)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    subtasks = sorted(head_sources["subtask"].unique().tolist())
    if not subtasks:
        raise ValueError("head_sources: empty table")
    ncols = min(ncols, len(subtasks))
    nrows = math.ceil(len(subtasks) / ncols)
    fig, axes = figure(nrows, ncols, width=2.2, height=2.4)
    order = ["none", "fewshot", "question", "generated"]
    cmap = ListedColormap([PART_COLOURS[p] for p in order])
    flat = [a for row in axes for a in row]
    for a, k in zip(flat, subtasks):
        sub = head_sources[head_sources["subtask"] == k]
        m = np.zeros((n_layers, n_heads))
        for layer, head, maj in zip(sub["layer"], sub["head"], sub["majority"]):
            m[int(layer), int(head)] = order.index(maj)
        a.imshow(m, cmap=cmap, vmin=-0.5, vmax=3.5, aspect="auto", interpolation="nearest")
        _int_ticks(a)
        a.set_title(f"subtask {k}")
        a.set_xlabel("head")
        a.set_ylabel("layer")
    for a in flat[len(subtasks):]:
        a.axis("off")
    fig.legend(handles=[Patch(color=PART_COLOURS[p], label=PART_LABELS[p]) for p in order], loc="lower center",
               ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.04))
    return save_figure(fig, stem)


def rift(head_context: Any, context_layers: Any, n_layers: int, n_heads: int, stem: str | Path,
         split: int | None = None) -> list[Path]:
    """Left: P(traced token is in the context) per head, −0.5 where the head was never traced (study.md F-rift).
    Right: share per layer (relative depth), with and without depth-0 writers; the split at n_layers/2 dashed."""
    split = n_layers // 2 if split is None else split
    fig, axes = figure(1, 2, width=3.6, height=3.2)
    m = _grid(head_context, "p_context", n_layers, n_heads, fill=-0.5)
    im = axes[0][0].imshow(m, cmap="RdYlBu_r", vmin=-0.5, vmax=1.0, aspect="auto", interpolation="nearest")
    axes[0][0].set_xlabel("head")
    axes[0][0].set_ylabel("layer")
    axes[0][0].set_title("P(carried token in context)")
    from matplotlib.ticker import MaxNLocator

    axes[0][0].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes[0][0], fraction=0.046, pad=0.04).set_label("−0.5 = not traced")
    ax = axes[0][1]
    x = context_layers["layer"].to_numpy(float) / n_layers
    ax.plot(x, context_layers["share"], "o-", ms=3, label="all traced heads")
    ax.plot(x, context_layers["share_without_writers"], "s--", ms=3, label="without depth-0 writers")
    ax.axvline(split / n_layers, color="k", lw=0.8, ls=":", label=f"layer {split}")
    ax.set_xlabel("relative depth (layer / n_layers)")
    ax.set_ylabel("share found in context")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return save_figure(fig, stem)


# --------------------------------------------------------------------------------------------------
# F-flow
# --------------------------------------------------------------------------------------------------
def flow_tree(trace: dict, stem: str | Path, max_nodes: int = 60) -> list[Path]:
    """One traced information-flow tree (networkx): node = head "L.H 'token'", y = layer, edges parent -> child,
    edge label = the read position; the root is the answer token at the predicting position."""
    import networkx as nx

    g = nx.DiGraph()
    root = "answer"
    g.add_node(root, layer=trace["n_layers"], label=f"{trace.get('answer', '')!s}\n@{trace['length'] - 1}")
    nodes = trace["nodes"][:max_nodes]
    for nd in nodes:
        name = f"n{nd['id']}"
        g.add_node(name, layer=nd["layer"], label=f"L{nd['layer']}.H{nd['head']}\n{nd['text']!r}")
        parent = root if nd["parent"] < 0 else f"n{nd['parent']}"
        if parent in g:
            g.add_edge(parent, name, pos=nd["pos"])
    by_layer: dict[int, list[str]] = {}
    for n, d in g.nodes(data=True):
        by_layer.setdefault(d["layer"], []).append(n)
    xy = {}
    for layer, names in by_layer.items():
        for i, n in enumerate(names):
            xy[n] = ((i + 1) / (len(names) + 1), layer)
    fig, axes = figure(1, 1, width=7.0, height=max(3.0, 0.22 * trace["n_layers"]))
    ax = axes[0][0]
    nx.draw_networkx_edges(g, xy, ax=ax, arrows=True, arrowsize=8, edge_color="#888888", width=0.8)
    colours = [KIND_COLOURS["decision"] if n == root else ("#d62728" if g.nodes[n]["layer"] >= trace["n_layers"] // 2
                                                            else "#2ca02c") for n in g.nodes]
    nx.draw_networkx_nodes(g, xy, ax=ax, node_size=60, node_color=colours)
    for n, (px, py) in xy.items():
        ax.annotate(g.nodes[n]["label"], (px, py), xytext=(4, 2), textcoords="offset points", fontsize=6)
    ax.set_ylabel("layer")
    ax.set_xticks([])
    ax.tick_params(left=True, labelleft=True)
    ax.set_yticks(range(0, trace["n_layers"] + 1, max(1, trace["n_layers"] // 8)))
    ax.set_ylim(-1, trace["n_layers"] + 1.5)
    ax.axhline(trace["n_layers"] // 2 - 0.5, color="k", lw=0.6, ls=":")
    ax.set_title(f"{trace['pair_id']} (subtask {trace['subtask']}, {trace.get('kind')}): {len(nodes)} traced heads")
    return save_figure(fig, stem)


# --------------------------------------------------------------------------------------------------
# F-horizon, F-attn
# --------------------------------------------------------------------------------------------------
def horizon(summary: Any, n_layers: int, stem: str | Path, metric: str = "exact") -> list[Path]:
    """Share of examples whose greedy continuation survives the patch unchanged (``exact``) and mean token
    agreement to the first divergence (``agree``), vs patched layer (relative depth), one line per s."""
    fig, axes = figure(1, 2, width=3.6, height=3.0, sharey=True)
    patched = summary[summary["layer"] >= 0]
    base = summary[summary["layer"] < 0]
    cmap = __import__("matplotlib").colormaps["viridis"]
    ss = sorted(patched["s"].unique().tolist())
    for ax, col, name in ((axes[0][0], "exact", "continuation unchanged"),
                          (axes[0][1], "agree", "token agreement to 1st divergence")):
        for i, s in enumerate(ss):
            d = patched[patched["s"] == s].sort_values("layer")
            c = cmap(i / max(1, len(ss) - 1) * 0.85)
            ax.plot(d["layer"] / n_layers, d[col], "o-", ms=3, color=c, label=f"s={s} (n={int(d['n'].max())})")
            if col == "exact":
                ax.fill_between(d["layer"] / n_layers, d["exact_ci_low"], d["exact_ci_high"], color=c, alpha=0.1)
        if len(base):
            ax.axhline(float(base[col].mean()), color="grey", lw=0.8, ls="--", label="no patch")
        ax.set_xlabel("patched layer / n_layers")
        ax.set_title(name)
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("share / mean")
    axes[0][1].legend(fontsize=7)
    return save_figure(fig, stem)


def attention(profile: Any, stem: str | Path, example_id: str | None = None, last: int = 80) -> list[Path]:
    """Mean attention of the important heads from each subtask's predicting position over the input tokens of
    one example (the last ``last`` positions of its longest input: test block + response), subtask × token."""
    if example_id is None:
        example_id = profile["example_id"].iloc[0]
    df = profile[profile["example_id"] == example_id]
    longest = df.loc[df.groupby("subtask")["pos"].idxmax()]
    n = int(longest["pos"].max()) + 1
    lo = max(0, n - last)
    subtasks = sorted(df["subtask"].unique().tolist())
    m = np.full((len(subtasks), n - lo), math.nan)
    for i, k in enumerate(subtasks):
        d = df[(df["subtask"] == k) & (df["pos"] >= lo)]
        m[i, d["pos"].to_numpy(int) - lo] = d["attn"].to_numpy(float)
    toks = df[df["subtask"] == subtasks[-1]].set_index("pos")["token"]
    labels = [str(toks.get(p, "")) if toks.get(p) is not None else str(p) for p in range(lo, n)]
    fig, axes = figure(1, 1, width=min(14.0, 0.12 * (n - lo) + 2), height=0.25 * len(subtasks) + 1.8)
    ax = axes[0][0]
    heatmap(ax, m, title=f"{example_id}: attention from the predicting position (mean of important heads)",
            xlabel="input token", ylabel="subtask", colorbar_label="attention")
    ax.set_yticks(range(len(subtasks)), [str(k) for k in subtasks])
    ax.set_xticks(range(n - lo), [s.replace("\n", "\\n") for s in labels], rotation=90, fontsize=5)
    return save_figure(fig, stem)
