"""Clean/corrupt input pairs for every subtask of every usable example (study.md §3, §4, E1).

The subtasks come from :func:`cotmech.prontoqa.subtasks.steps` and each pair from
:func:`cotmech.prontoqa.corrupt.make_pair`, tokenised with the model's tokenizer. Each pair's RNG is derived
from (config seed, dataset, example id, subtask) alone, so a pair does not depend on which other examples or
subtasks were built, nor on their order.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .io import RecordError

PAIR_COLUMNS = ["pair_id", "example_id", "dataset", "ontology", "label", "subtask", "kind", "source", "clean",
                "corrupt", "clean_ids", "corrupt_ids", "first_diff", "answer", "answer_id", "corrupt_answer_id",
                "answer_pos", "replaced"]
_REQUIRED = ("id", "question", "query", "cot", "label", "answer", "prompt")


def pair_rng(seed: int, dataset: str, example_id: str, subtask: int) -> np.random.Generator:
    """Independent, order-free generator for one (dataset, example, subtask)."""
    h = hashlib.sha256(f"{dataset}\0{example_id}".encode()).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(h[:8], "little"), int(subtask)])


def pair_id(example_id: str, subtask: int) -> str:
    return f"{example_id}-k{subtask}"


def select_examples(records: Sequence[dict], require_correct: bool = True, max_examples: int | None = None,
                    where: str = "generations") -> list[dict]:
    """Examples to build pairs from: exactly-correct ones (or all, using the gold CoT), at most ``max_examples``."""
    for i, r in enumerate(records):
        missing = [k for k in _REQUIRED if k not in r]
        if missing or (require_correct and "correct" not in r):
            miss = missing or ["correct"]
            raise RecordError(f"{where}: record {i} ({r.get('id', '?')}): missing field(s) {', '.join(miss)}")
    chosen = [r for r in records if r.get("correct")] if require_correct else list(records)
    if max_examples is not None:
        if max_examples < 1:
            raise ValueError(f"pairs.max_examples must be >= 1 or null, got {max_examples}")
        chosen = chosen[:max_examples]
    return chosen


def build_pairs(records: Sequence[dict], tokenizer: Any, dataset: str, seed: int, include_label: bool = False
                ) -> tuple[list[dict], list[dict]]:
    """Pairs (pairs contract of DESIGN.md) and rejected-count rows (subtask, reason, count) for ``records``."""
    from .prontoqa import corrupt, subtasks

    pairs: list[dict] = []
    rejected: collections.Counter = collections.Counter()
    for rec in records:
        for step in subtasks.steps(rec, include_label=include_label):
            res = corrupt.make_pair(rec, step, rec["prompt"], tokenizer, pair_rng(seed, dataset, rec["id"], step.index))
            if isinstance(res, corrupt.Rejected):
                rejected[(step.index, res.reason)] += 1
                continue
            pairs.append({"pair_id": pair_id(rec["id"], step.index), "example_id": rec["id"], "dataset": dataset,
                          "ontology": rec.get("ontology"), "label": rec["label"], "subtask": step.index,
                          "kind": step.kind, "source": step.source, **dataclasses.asdict(res)})
    rows = [{"subtask": k, "reason": why, "count": n} for (k, why), n in sorted(rejected.items())]
    return pairs, rows


def check_pair(p: dict) -> None:
    """Invariants every pair must satisfy; raises :class:`RecordError` naming the pair."""
    def bad(msg: str) -> RecordError:
        return RecordError(f"pair {p.get('pair_id', '?')}: {msg}")

    missing = [c for c in PAIR_COLUMNS if c not in p]
    if missing:
        raise bad(f"missing field(s) {', '.join(missing)}")
    c, x = p["clean_ids"], p["corrupt_ids"]
    if len(c) != len(x):
        raise bad(f"clean and corrupt have {len(c)} and {len(x)} tokens")
    if c == x or p["clean"] == p["corrupt"]:
        raise bad("corrupt input equals the clean input")
    fd = p["first_diff"]
    if not (0 <= fd < len(c)) or c[:fd] != x[:fd] or c[fd] == x[fd]:
        raise bad(f"first_diff {fd} is not the first differing position")
    ap = p["answer_pos"]
    if ap is not None and (not 0 <= ap < len(c) - 1 or c[ap] != p["answer_id"] or p["answer_id"] in c[ap + 1:-1]):
        raise bad(f"answer_pos {ap} is not the most recent earlier occurrence of answer_id")
    if ap is None and p["answer_id"] in c[:-1]:
        raise bad("answer_pos is null but answer_id occurs earlier in the clean input")




# --------------------------------------------------------------------------------------------------
# Entry point (scripts/make_pairs.py)
# --------------------------------------------------------------------------------------------------
def run(records: Sequence[dict], tokenizer: Any, cfg: Any, seed: int, *, dataset: str, where: str = "generations",
        log: Any = None) -> tuple[list[dict], list[dict]]:
    """Pairs of one dataset's generation ``records`` (study.md §4, E1): the pairs (each checked by
    :func:`check_pair`) and the rejected-step rows (subtask, reason, count).

    ``cfg`` the ``pairs`` config section (:func:`cotmech.config.section`): the examples of
    :func:`select_examples` (``require_correct``, ``max_examples``), pairs built by :func:`build_pairs`
    (``include_label``) with ``tokenizer``. ``where`` names the records in errors.
    """
    log = log or (lambda msg: print(msg, flush=True))
    chosen = select_examples(records, bool(cfg["require_correct"]), cfg["max_examples"], where=where)
    pairs, rejected = build_pairs(chosen, tokenizer, dataset, seed, include_label=bool(cfg["include_label"]))
    for p in pairs:
        check_pair(p)
    log(f"{dataset}: {len(records)} generations, {len(chosen)} used "
        f"({'exactly correct' if cfg['require_correct'] else 'gold CoT'}), {len(pairs)} pairs, "
        f"{sum(r['count'] for r in rejected)} steps rejected")
    for r in rejected:
        log(f"  subtask {r['subtask']}: {r['count']} x {r['reason']}")
    return pairs, rejected
