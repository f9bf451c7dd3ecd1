"""Clean/corrupt pairs in the make_pairs contract (docs/DESIGN.md, "Pairs"), validated on load."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..io import RecordError, read_jsonl


@dataclass
class Pair:
    """One clean/corrupt input pair; predicting position = last token."""

    pair_id: str
    subtask: int
    clean_ids: list[int]
    corrupt_ids: list[int]
    first_diff: int
    answer_id: int
    corrupt_answer_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.clean_ids)

    def ids(self, which: str) -> torch.Tensor:
        """``"clean"`` or ``"corrupt"`` ids as a LongTensor [pos]."""
        return torch.tensor(self.clean_ids if which == "clean" else self.corrupt_ids, dtype=torch.long)


def make_pair(pair_id: str, clean_ids: Sequence[int], corrupt_ids: Sequence[int], answer_id: int,
              corrupt_answer_id: int | None = None, subtask: int = 0, where: str = "", **meta: Any) -> Pair:
    """Build and validate a :class:`Pair`; ``first_diff`` is computed. Raises RecordError naming ``where``."""
    clean, corrupt = [int(t) for t in clean_ids], [int(t) for t in corrupt_ids]
    loc = f"{where}pair {pair_id!r}"
    if len(clean) != len(corrupt):
        raise RecordError(f"{loc}: clean_ids ({len(clean)}) and corrupt_ids ({len(corrupt)}) differ in length")
    diffs = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
    if not diffs:
        raise RecordError(f"{loc}: clean and corrupt ids are identical (no-op corruption)")
    if diffs[0] == len(clean) - 1 or diffs[-1] == len(clean) - 1:
        raise RecordError(f"{loc}: the predicting (last) token differs between clean and corrupt")
    return Pair(str(pair_id), int(subtask), clean, corrupt, diffs[0], int(answer_id),
                None if corrupt_answer_id is None else int(corrupt_answer_id), dict(meta))


def pair_from_record(rec: dict[str, Any], where: str = "") -> Pair:
    """A make_pairs JSONL record -> :class:`Pair` (checks the recorded ``first_diff`` too)."""
    for key in ("pair_id", "clean_ids", "corrupt_ids", "answer_id"):
        if key not in rec:
            raise RecordError(f"{where}record {rec.get('pair_id', '?')!r}: missing key {key!r}")
    meta = {k: rec[k] for k in ("example_id", "dataset", "kind", "label") if k in rec}
    p = make_pair(rec["pair_id"], rec["clean_ids"], rec["corrupt_ids"], rec["answer_id"],
                  rec.get("corrupt_answer_id"), rec.get("subtask", 0), where=where, **meta)
    if rec.get("first_diff") is not None and int(rec["first_diff"]) != p.first_diff:
        raise RecordError(f"{where}pair {p.pair_id!r}: first_diff is {rec['first_diff']} but the ids first "
                          f"differ at {p.first_diff}")
    return p


def load_pairs(path: str | os.PathLike, subtask: int | None = None, limit: int | None = None,
               shard: tuple[int, int] = (0, 1)) -> list[Pair]:
    """Pairs of one subtask (or all) from a make_pairs JSONL, first ``limit`` of them, then shard ``(i, n)``.

    Shard i of n is the i-th of n contiguous, near-equal ranges of the selected pairs.
    """
    recs = read_jsonl(path)
    if subtask is not None:
        recs = [r for r in recs if int(r.get("subtask", -1)) == int(subtask)]
    if limit is not None:
        recs = recs[:limit]
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard {i} of {n}: need 0 <= shard < n_shards")
    lo, hi = len(recs) * i // n, len(recs) * (i + 1) // n
    return [pair_from_record(r, where=f"{path}: ") for r in recs[lo:hi]]


def select(pairs: Iterable[Pair], subtask: int) -> list[Pair]:
    return [p for p in pairs if p.subtask == subtask]
