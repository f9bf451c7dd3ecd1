"""Build one task dataset from its config entry (generate or import), keeping verified records only."""
from __future__ import annotations

import collections
import hashlib
import sys
from typing import Any

from ..io import RecordError
from .generator import generate
from .importers import duplicates, import_file, record_name
from .verify import verify

_KEYS = {"ontology", "hops", "style", "n", "distractors", "ordering", "import", "cot_skip"}


def dataset_seed(master_seed: int, name: str) -> int:
    """Seed of dataset ``name``: a stable hash of (master seed, name), independent of other datasets."""
    return int.from_bytes(hashlib.sha256(f"{int(master_seed)}/tasks/{name}".encode()).digest()[:8], "little")


def verify_records(records: list[dict], strict: bool = True) -> tuple[list[dict], dict[str, list[dict]]]:
    """(verified records, rejected records by reason); ``strict`` also checks the sentence surface."""
    kept, rejected = [], collections.defaultdict(list)
    for r in records:
        v = verify(r, strict=strict)
        if v.ok:
            kept.append(r)
        else:
            rejected[v.reason].append(r)
    return kept, dict(rejected)


def verify_all(records: list[dict], strict: bool = True) -> tuple[list[dict], collections.Counter]:
    """(verified records, tally of rejection reasons); ``strict`` also checks the sentence surface."""
    kept, rejected = verify_records(records, strict)
    return kept, collections.Counter({why: len(rs) for why, rs in rejected.items()})


def rejection_lines(rejected: dict[str, list[dict]], show: int = 3) -> list[str]:
    """One line per rejection reason, most frequent first, naming the first ``show`` records it rejected."""
    out = []
    for why, rs in sorted(rejected.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        more = f"; and {len(rs) - show} more" if len(rs) > show else ""
        names = "; ".join(record_name(r) for r in rs[:show]) + more
        out.append(f"rejected {len(rs)}: {names}: {why}")
    return out


def drop_duplicates(records: list[dict]) -> tuple[list[dict], list[str]]:
    """(records without later duplicates of (question, query), one warning line per dropped record)."""
    dups = duplicates(records)
    later = {id(b) for _, b in dups}
    warnings = [f"warning: {record_name(b)} duplicates {record_name(a)} (same question and query); dropped"
                for a, b in dups]
    return [r for r in records if id(r) not in later], warnings


def check_hops(records: list[dict], hops: int, where: str) -> None:
    """Raise :class:`RecordError` naming both hop counts if any record has other than ``hops`` hops."""
    other = [r for r in records if r["hops"] != hops]
    if other:
        found = sorted({r["hops"] for r in other})
        raise RecordError(f"{where}: declared hops {hops} but the file holds {len(other)} record(s) with "
                          f"{'/'.join(map(str, found))} hops (first: {record_name(other[0])})")


def build_dataset(name: str, spec: dict[str, Any], master_seed: int, where: str = "config") -> list[dict]:
    """Records of dataset ``name`` (config ``datasets.<name>`` = ``spec``); every returned record verifies."""
    if not isinstance(spec, dict):
        raise RecordError(f"{where}: datasets.{name} must be a mapping, got {type(spec).__name__}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise RecordError(f"{where}: datasets.{name}: unknown keys {sorted(unknown)}")
    from .. import config

    spec = config.fill(spec, config.node("datasets.*"))  # the schema's dataset defaults (n, style, ...)
    n = spec["n"]
    if spec["import"]:
        records = import_file(spec["import"])
        if "hops" in spec:
            check_hops(records, spec["hops"], f"{where}: datasets.{name} (import {spec['import']})")
        records, warnings = drop_duplicates(records)
        for w in warnings:
            print(w, file=sys.stderr)
        want = spec.get("ontology")
        if want:
            found = sorted({r["ontology"] for r in records})
            # real-word records without a word only the true ontology has read as 'false': accepted as 'true'
            if not set(found) <= ({"true", "false"} if want == "true" else {want}):
                raise RecordError(f"{where}: datasets.{name}: ontology {want!r} but {spec['import']} holds "
                                  f"{', '.join(found)} records")
            for r in records:  # real-word concepts read as 'false' unless the config says 'true'
                r["ontology"] = want
        kept, rejected = verify_records(records)
        print(f"[make_tasks] {name}: imported {len(records)} records from {spec['import']}: "
              f"{len(kept)} verified, {sum(map(len, rejected.values()))} rejected; keeping the first "
              f"{min(n, len(kept))}", file=sys.stderr)
        for line in rejection_lines(rejected):
            print(f"[make_tasks] {name}: {line}", file=sys.stderr)
        kept = kept[:n]
        for i, r in enumerate(kept):  # dataset-style ids; the file's own key stays in record["source"]
            r["id"] = f"{name}-{i:04d}"
        return kept
    missing = [k for k in ("ontology", "hops") if k not in spec]
    if missing:
        raise RecordError(f"{where}: datasets.{name}: missing keys {missing}")
    try:
        records = generate(spec["ontology"], spec["hops"], n, style=spec["style"],
                           distractors=spec["distractors"], ordering=spec["ordering"],
                           seed=dataset_seed(master_seed, name), cot_skip=spec["cot_skip"],
                           id_prefix=f"{name}-")
    except ValueError as e:
        raise RecordError(f"{where}: datasets.{name}: {e}") from e
    kept, rejected = verify_all(records)
    if rejected:  # a generator bug, never expected
        raise RuntimeError(f"dataset {name}: generated records failed verification: {dict(rejected)}")
    return kept
