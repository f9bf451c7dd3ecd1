"""One plotting style for every figure; figures are saved as PNG + PDF side by side, atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path  # noqa: E402

STYLE: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "pdf.fonttype": 42,
}
#: Colours for the subtask kinds, used consistently across figures.
KIND_COLOURS = {"decision": "#1f77b4", "copy": "#2ca02c", "induction": "#d62728", "label": "#7f7f7f"}
#: Sequential colour map for scores, diverging for signed quantities.
SEQ_CMAP = "viridis"
DIV_CMAP = "RdBu_r"


def figure(nrows: int = 1, ncols: int = 1, width: float = 4.0, height: float = 3.2, **kw: Any):
    """A figure with the project style; ``width``/``height`` are per panel, in inches."""
    plt.rcParams.update(STYLE)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
    return fig, axes


def save_figure(fig: Any, stem: str | os.PathLike, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` (atomically) and close it; returns the paths.

    ``stem`` may also be given with a suffix (``x.png``); the suffix is replaced.
    """
    stem = Path(stem)
    if stem.suffix in (".png", ".pdf"):
        stem = stem.with_suffix("")
    fig.tight_layout()
    paths = []
    for fmt in formats:
        path = stem.with_name(stem.name + "." + fmt)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def heatmap(ax: Any, matrix: np.ndarray, title: str = "", cmap: str | None = None, center: float | None = None,
            xlabel: str = "head", ylabel: str = "layer", colorbar_label: str = "score") -> Any:
    """A layer × head map (rows = layers from 0 at the top). ``center`` makes a symmetric diverging scale."""
    m = np.asarray(matrix, dtype=float)
    kw: dict[str, Any] = {"cmap": cmap or (DIV_CMAP if center is not None else SEQ_CMAP)}
    if center is not None:
        finite = m[np.isfinite(m)]
        span = float(np.max(np.abs(finite - center))) if finite.size else 1.0
        kw.update(vmin=center - span, vmax=center + span)
    im = ax.imshow(m, aspect="auto", interpolation="nearest", **kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label(colorbar_label)
    return im
