"""Atomic, pickle-free I/O: JSON, JSONL, parquet/CSV tables, safetensors.

Every writer goes through :func:`atomic_path`: the data is written to a temporary file in the
target directory and renamed into place, so a killed job never leaves a truncated output behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)


class RecordError(ValueError):
    """A malformed input record; the message names the file, the record and the problem."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600; give the output the mode a plain open() would (umask)
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Deterministic JSON (sorted keys, 2-space indent, trailing newline)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: not UTF-8 text: byte {e.start}: {e.reason}") from e


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line (keys in insertion order); returns the number of records."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, default=_json_default) + "\n")
            n += 1
    return n


def number(x: Any) -> float | None:
    """A table or JSON cell as a float; None when missing, not a number, or NaN."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if v != v else v


def json_object(text: str, where: str) -> dict[str, Any]:
    """Parse a JSON object; anything else raises :class:`RecordError` naming ``where``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file; a bad line (not JSON, not an object, not UTF-8) raises :class:`RecordError` naming file
    and line."""
    with open(path, "rb") as f:
        raw = f.read()
    out = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"{path}: line {lineno}: not UTF-8 text: byte {e.start}: {e.reason}") from e
        if text.strip():
            out.append(json_object(text, f"{path}: line {lineno}"))
    return out


TABLE_SUFFIXES = (".parquet", ".csv", ".tsv")


def check_suffix(path: str | os.PathLike | None, flag: str, suffixes: tuple[str, ...] = TABLE_SUFFIXES) -> None:
    """Raise ``ValueError`` naming ``flag`` unless ``path`` (None = not given) ends in one of ``suffixes``: scripts
    call it on their output options before any model work, so a typo does not surface after the run."""
    if path is not None and Path(path).suffix not in suffixes:
        raise ValueError(f"{flag} {path}: unsupported suffix {Path(path).suffix or '(none)'!r}; "
                         f"use {', '.join(suffixes)}")


def write_table(path: str | os.PathLike, df: Any) -> None:
    """Write a pandas DataFrame as parquet or CSV, chosen by the file suffix."""
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: unsupported table format (use .parquet, .csv or .tsv)")
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, sep="\t" if path.suffix == ".tsv" else ",", float_format="%.6g")


def read_table(path: str | os.PathLike, dtype: Any = None) -> Any:
    """A parquet/CSV/TSV table; ``dtype`` (pandas) pins text columns of CSVs, e.g. the ontology "false", which
    pandas would otherwise read as a boolean."""
    import pandas as pd

    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=dtype)


def save_tensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Save a dict of torch tensors as safetensors (contiguous CPU copies), byte-stable: the same tensors and
    metadata give the same bytes in every process (safetensors writes its metadata map in a random order)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        if metadata:
            _sort_safetensors_metadata(tmp)


def _sort_safetensors_metadata(path: Path) -> None:
    """Rewrite the header of a safetensors file with its ``__metadata__`` keys sorted (data offsets are relative
    to the end of the header, so only the header changes; it is padded with spaces to a multiple of 8 bytes)."""
    import shutil
    import struct

    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None) or {}
        ordered = {"__metadata__": dict(sorted(meta.items())), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)
        if len(text) <= n:  # the usual case: same length, rewrite the header in place
            f.seek(8)
            f.write(text + b" " * (n - len(text)))
            return
        with open(str(path) + ".sorted", "wb") as out:
            out.write(struct.pack("<Q", len(text)) + text)
            f.seek(8 + n)
            shutil.copyfileobj(f, out, 1 << 22)
    os.replace(str(path) + ".sorted", path)


def load_tensors(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
