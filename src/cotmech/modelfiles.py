"""Model files on disk: the error a bad model spec or damaged model file raises, and the files' checks.

Shared by model loading (:mod:`cotmech.models`) and the embedded-model cache (:mod:`cotmech.embedded`), which
each import this module and not each other's.
"""
from __future__ import annotations

import os
from pathlib import Path


class ModelSpecError(ValueError):
    """A model spec could not be parsed or loaded; the message names the spec and the cause."""


def check_safetensors_dir(directory: str | os.PathLike, spec: str) -> None:
    """Every ``*.safetensors`` file in ``directory`` has a readable header that covers the whole file (cheap: the
    header is parsed, no tensor is read); a truncated or damaged file raises :class:`ModelSpecError` naming it."""
    from safetensors import SafetensorError, safe_open

    for f in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise ModelSpecError(f"model spec {spec!r}: {f}: truncated or damaged safetensors file ({e})") from e


def check_gguf(path: str | os.PathLike, spec: str) -> None:
    """The GGUF file parses (header, metadata, tensor table within the file); else :class:`ModelSpecError`."""
    import gguf

    try:
        gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure of a damaged file (struct, overflow, decode ...)
        raise ModelSpecError(f"model spec {spec!r}: {path}: not a readable GGUF file "
                             f"({type(e).__name__}: {e})") from e
