"""Build one task dataset from its config entry (generate or import), keeping verified records only."""
from __future__ import annotations

import collections
import hashlib
import sys
from typing import Any

from ..io import RecordError
from .generator import generate
from .importers import import_file
from .verify import verify

_KEYS = {"ontology", "hops", "style", "n", "distractors", "ordering", "import", "cot_skip"}


def dataset_seed(master_seed: int, name: str) -> int:
    """Seed of dataset ``name``: a stable hash of (master seed, name), independent of other datasets."""
    return int.from_bytes(hashlib.sha256(f"{int(master_seed)}/tasks/{name}".encode()).digest()[:8], "little")


def verify_all(records: list[dict], strict: bool = True) -> tuple[list[dict], collections.Counter]:
    """(verified records, tally of rejection reasons); ``strict`` also checks the sentence surface."""
    kept, rejected = [], collections.Counter()
    for r in records:
        v = verify(r, strict=strict)
        if v.ok:
            kept.append(r)
        else:
            rejected[v.reason] += 1
    return kept, rejected


def build_dataset(name: str, spec: dict[str, Any], master_seed: int, where: str = "config") -> list[dict]:
    """Records of dataset ``name`` (config ``datasets.<name>`` = ``spec``); every returned record verifies."""
    if not isinstance(spec, dict):
        raise RecordError(f"{where}: datasets.{name} must be a mapping, got {type(spec).__name__}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise RecordError(f"{where}: datasets.{name}: unknown keys {sorted(unknown)}")
    n = spec.get("n", 100)
    if spec.get("import"):
        records = import_file(spec["import"])
        want = spec.get("ontology")
        if want:
            found = sorted({r["ontology"] for r in records})
            if found not in ([want], ["false"] if want == "true" else [want]):
                raise RecordError(f"{where}: datasets.{name}: ontology {want!r} but {spec['import']} holds "
                                  f"{', '.join(found)} records")
            for r in records:  # real-word concepts read as 'false' unless the config says 'true'
                r["ontology"] = want
        kept, rejected = verify_all(records)
        print(f"[make_tasks] {name}: imported {len(records)} records from {spec['import']}: "
              f"{len(kept)} verified, {sum(rejected.values())} rejected {dict(rejected)}; keeping the first "
              f"{min(n, len(kept))}", file=sys.stderr)
        kept = kept[:n]
        for i, r in enumerate(kept):  # dataset-style ids; the file's own key stays in record["source"]
            r["id"] = f"{name}-{i:04d}"
        return kept
    missing = [k for k in ("ontology", "hops") if k not in spec]
    if missing:
        raise RecordError(f"{where}: datasets.{name}: missing keys {missing}")
    try:
        records = generate(spec["ontology"], spec["hops"], n, style=spec.get("style", "paper"),
                           distractors=spec.get("distractors", "none"), ordering=spec.get("ordering", "preorder"),
                           seed=dataset_seed(master_seed, name), cot_skip=spec.get("cot_skip", 0),
                           id_prefix=f"{name}-")
    except ValueError as e:
        raise RecordError(f"{where}: datasets.{name}: {e}") from e
    kept, rejected = verify_all(records)
    if rejected:  # a generator bug, never expected
        raise RuntimeError(f"dataset {name}: generated records failed verification: {dict(rejected)}")
    return kept
