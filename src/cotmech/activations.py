"""Activations of each pair's clean input at its predicting position (activations contract of DESIGN.md).

Row i of every tensor is pair i; the reading itself (residual stream, attention output, head outputs z and
attention rows at the last position, with the shared prefix and prefix inputs run once) is
:func:`cotmech.readout.extract`. The index table (:func:`pair_index`) names each row's pair.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .readout import extract

INDEX_COLUMNS = ["row", "pair_id", "example_id", "subtask", "kind", "length", "answer_id", "answer_pos"]


def pair_index(pairs: Sequence[dict]) -> Any:
    """The index table of an activations file: one row per pair, in tensor row order."""
    import pandas as pd

    return pd.DataFrame([{"row": i, "pair_id": p["pair_id"], "example_id": p["example_id"], "subtask": p["subtask"],
                          "kind": p["kind"], "length": len(p["clean_ids"]), "answer_id": p["answer_id"],
                          "answer_pos": p["answer_pos"]} for i, p in enumerate(pairs)],
                        columns=INDEX_COLUMNS).astype({"answer_pos": "Int64"})


def extract_pairs(model: Any, pairs: Sequence[dict], batch_size: int = 8, desc: str = "activations"
                  ) -> tuple[dict[str, torch.Tensor], Any]:
    """Activations of every pair's clean input (row i = pair i) and the index table."""
    if not pairs:
        raise ValueError("extract_pairs: no pairs")
    for k, p in enumerate(pairs):
        for key in ("pair_id", "example_id", "subtask", "kind", "clean_ids", "answer_id", "answer_pos"):
            if key not in p:
                raise ValueError(f"pair {k} ({p.get('pair_id', '?')}): missing field {key!r}")
    acts = extract(model, [p["clean_ids"] for p in pairs], groups=[p["example_id"] for p in pairs],
                   batch_size=batch_size, desc=desc)
    return acts, pair_index(pairs)


# --------------------------------------------------------------------------------------------------
# Entry point (scripts/extract_activations.py)
# --------------------------------------------------------------------------------------------------
def run(model: Any, pairs: Sequence[dict], cfg: Any, *, where: object = "pairs",
        log: Any = None) -> tuple[dict[str, torch.Tensor], Any]:
    """Activations of every pair's clean input at its predicting position (activations contract of DESIGN.md):
    the tensors and the index table (:func:`extract_pairs`). ``cfg`` the ``activations`` config section
    (``batch_size``); ``where`` names the pairs in token-id errors."""
    import time

    from .cli import check_pair_ids

    log = log or (lambda msg: print(msg, flush=True))
    check_pair_ids(model, pairs, where)
    t1 = time.time()
    acts, index = extract_pairs(model, pairs, batch_size=int(cfg["batch_size"]))
    log(f"{len(pairs)} pairs: " + ", ".join(f"{k} {list(v.shape)}" for k, v in acts.items())
        + f"; {time.time() - t1:.1f} s")
    return acts, index
