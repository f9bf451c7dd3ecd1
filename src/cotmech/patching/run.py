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
from .screen import screened_sweep

METHODS = ("naive", "exact", "atp", "screened")


def sub_seed(seed: int, *parts: Any) -> int:
    """A stable seed for one (seed, parts...) combination."""
    return zlib.crc32(repr((int(seed),) + parts).encode()) & 0x7FFFFFFF


def sweep(model, pairs: Sequence[Pair], method: str, opts: Mapping[str, Any], progress: bool = True) -> PatchResult:
    """One patching method over ``pairs`` (``opts``: the ``patching`` config section)."""
    return _sweep(model, pairs, method, opts, progress)[0]


def _sweep(model, pairs: Sequence[Pair], method: str, opts: Mapping[str, Any], progress: bool = True
           ) -> tuple[PatchResult, PatchResult | None]:
    """(result, the AtP result computed on the way: screened's, else None)."""
    if method not in METHODS:
        raise ValueError(f"patching method {method!r}: use one of {', '.join(METHODS)}")
    kw = dict(metric=opts["metric"], direction=opts["direction"], progress=progress)
    if method == "naive":
        return naive_sweep(model, pairs, pair_batch=opts["pair_batch"], **kw), None
    if method == "exact":
        return exact_sweep(model, pairs, head_batch=opts["head_batch"], chunk_tokens=opts["chunk_tokens"],
                           overhead=opts["chunk_overhead"], **kw), None
    if method == "screened":
        scr = opts["screen"]
        return screened_sweep(model, pairs, top_k=scr["top_k"], candidates=scr["candidates"], block=scr["block"],
                              head_batch=opts["head_batch"], chunk_tokens=opts["chunk_tokens"],
                              overhead=opts["chunk_overhead"], **kw)
    return atp_sweep(model, pairs, pair_batch=opts["pair_batch"], **kw), None


def scores(res: PatchResult, subtask: int, n_boot: int, seed: int) -> Any:
    """The head table of one subtask's result (bootstrap seeded by ``seed``, the subtask and the method)."""
    return score_table(res, subtask, n_boot=n_boot, seed=sub_seed(seed, "boot", subtask, res.method))


def write_scores(res: PatchResult, subtask: int, out: str | os.PathLike, figure: str | os.PathLike | None,
                 n_boot: int, seed: int, title: str = "", df: Any = None) -> Any:
    """Head table (parquet/CSV by suffix; :func:`scores` unless ``df`` is given) and optional layer × head heat-map
    of one subtask."""
    if df is None:
        df = scores(res, subtask, n_boot, seed)
    io.write_table(out, df)
    if figure:
        if not title:
            title = f"{res.method} patching, subtask {subtask} (n={len(res.pair_ids)})"
            if "exact_heads" in res.info:
                title += f"\n{len(res.info['exact_heads'])} heads exact, the rest AtP estimates"
        heatmap_figure(to_matrix(df), figure, title, label=f"normalised {res.metric} score")
    return df


def run(model, pairs: Sequence[Pair], cfg: Mapping[str, Any], seed: int, *, method: str | None = None,
        subtask: int | None = None, atp: bool = False, table: bool = True,
        log: Any = None) -> tuple[PatchResult, PatchResult | None, Any]:
    """Head-level patching of ``pairs`` (study.md E2): the sweep's result, the AtP result on the same pairs (with
    ``atp``; else None) and the head table (:func:`scores`, subtask -1 when ``subtask`` is None; None unless
    ``table``). ``cfg`` the ``patching`` config section (:func:`cotmech.config.section`); ``method`` defaults to
    ``cfg["method"]``. Without pairs (an empty shard) the results are empty.
    """
    import time

    log = log or (lambda msg: print(msg, flush=True))
    method = method or cfg["method"]

    def one(m: str) -> tuple[PatchResult, PatchResult | None]:
        return _sweep(model, pairs, m, cfg) if pairs else (PatchResult.empty(
            m, cfg["metric"], cfg["direction"], model.n_layers, model.n_heads), None)

    t1 = time.time()
    res, atp_res = one(method)
    exact_heads = f", {len(res.info['exact_heads'])} of them exact in {res.info['rounds']} rounds" \
        if "exact_heads" in res.info else ""
    log(f"{method}: {len(pairs)} pairs x {model.n_layers * model.n_heads} heads{exact_heads} in "
        f"{time.time() - t1:.1f} s")
    if not atp:
        atp_res = None
    elif atp_res is None:
        t2 = time.time()
        atp_res = one("atp")[0]
        log(f"atp: {len(pairs)} pairs in {time.time() - t2:.1f} s")
    df = scores(res, subtask if subtask is not None else -1, cfg["n_boot"], seed) if table else None
    return res, atp_res, df
