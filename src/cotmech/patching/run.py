"""What the patching scripts call: settings -> sweeps -> tables, raw shards and figures."""
from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from .. import io
from ..patch_results import PatchResult
from .atp import atp_sweep
from .data import Pair
from .exact import exact_sweep, naive_sweep
from .scores import heatmap_figure, score_table, to_matrix

METHODS = ("naive", "exact", "atp")

def sub_seed(seed: int, *parts: Any) -> int:
    """A stable seed for one (seed, parts...) combination."""
    return zlib.crc32(repr((int(seed),) + parts).encode()) & 0x7FFFFFFF


def sweep(model, pairs: Sequence[Pair], method: str, opts: Mapping[str, Any], progress: bool = True) -> PatchResult:
    if method not in METHODS:
        raise ValueError(f"patching method {method!r}: use one of {', '.join(METHODS)}")
    kw = dict(metric=opts["metric"], direction=opts["direction"], progress=progress)
    if method == "naive":
        return naive_sweep(model, pairs, pair_batch=opts["pair_batch"], **kw)
    if method == "exact":
        return exact_sweep(model, pairs, head_batch=opts["head_batch"], **kw)
    return atp_sweep(model, pairs, pair_batch=opts["pair_batch"], **kw)


def write_scores(res: PatchResult, subtask: int, out: str | os.PathLike, figure: str | os.PathLike | None,
                 n_boot: int, seed: int, title: str = "") -> Any:
    """Head table (parquet/CSV by suffix) and optional layer × head heat-map of one subtask."""
    df = score_table(res, subtask, n_boot=n_boot, seed=sub_seed(seed, "boot", subtask, res.method))
    io.write_table(out, df)
    if figure:
        heatmap_figure(to_matrix(df), figure, title or f"{res.method} patching, subtask {subtask} (n={len(res.pair_ids)})",
                       label=f"normalised {res.metric} score")
    return df
