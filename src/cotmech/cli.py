"""Shared pieces of the scripts' argparse front ends (scripts/<rule>.py).

Importing this module is cheap (no torch), so ``--help`` stays fast; the model is imported only when loaded.
Nothing here changes what a rule computes: the settings JSON and the model it names come from the rule, and the
``--model/--dtype/--device`` overrides are for standalone use (rules never pass them).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

#: flag (``--bf16-matmul`` for bf16_matmul) -> key of the settings' ``model``
OVERRIDES = {"model": "spec", "dtype": "dtype", "device": "device", "bf16_matmul": "bf16_matmul"}


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose description is the script's docstring, line breaks kept."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def read_settings(text: str, where: str = "--settings") -> dict[str, Any]:
    """The settings JSON object a rule passes; :class:`cotmech.io.RecordError` naming ``where`` if it is not one."""
    from .io import json_object

    return json_object(text, where)


def fail(problem: object) -> int:
    """Report a bad input (an exception or a message) on stderr as ``error: ...``; the exit status for it (2)."""
    print(f"error: {problem}", file=sys.stderr)
    return 2


def add_model_args(ap: argparse.ArgumentParser, overrides: bool = False) -> None:
    """``--threads`` and, with ``overrides``, ``--model/--dtype/--device/--bf16-matmul`` (override the settings'
    ``model``)."""
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    if overrides:
        for flag, key in OVERRIDES.items():
            ap.add_argument(f"--{flag.replace('_', '-')}", dest=flag,
                            help=f"model {key} (overrides settings model.{key})")


def add_activation_args(ap: argparse.ArgumentParser) -> None:
    """The inputs of a script that reads one dataset's activations: ``--pairs``, ``--activations``, ``--index``."""
    ap.add_argument("--pairs", required=True, help="results/<model>/pairs/<dataset>.jsonl")
    ap.add_argument("--activations", required=True, help="results/<model>/activations/<dataset>.safetensors")
    ap.add_argument("--index", required=True, help="results/<model>/activations/<dataset>.parquet")


def load_from_args(args: argparse.Namespace, settings: dict[str, Any]) -> Any:
    """The settings' model (:func:`cotmech.models.load_from_settings`) with the :func:`add_model_args` overrides,
    on ``args.threads`` CPU threads; prints what was loaded and how long it took."""
    from .models import load_from_settings, set_threads

    model_cfg, where = settings.get("model"), "--settings"
    if any(hasattr(args, flag) for flag in OVERRIDES):
        where = "--settings/--model"
        given = {key: getattr(args, flag) for flag, key in OVERRIDES.items() if getattr(args, flag, None)}
        if given:
            model_cfg = {**(model_cfg if isinstance(model_cfg, dict) else {}), **given}
    set_threads(getattr(args, "threads", 0))
    t0 = time.time()
    model = load_from_settings({"model": model_cfg}, where)
    print(f"loaded {model.spec} ({model.dtype}, {model.device}) in {time.time() - t0:.1f} s", flush=True)
    from .provenance import loaded_info

    print(f"provenance: {json.dumps(loaded_info(model))}", flush=True)
    return model


_ID_FIELDS = ("clean_ids", "corrupt_ids", "answer_id", "corrupt_answer_id")


def check_token_ids(pairs: Sequence[Any], vocab_size: int, where: str) -> None:
    """Every token id of ``pairs`` (records of the pairs contract or :class:`cotmech.patching.data.Pair`s) lies in
    ``0..vocab_size-1``; else :class:`RecordError` naming ``where`` and the pair. An id outside the vocabulary would
    raise an ``IndexError`` on a CPU, and a device-side assert on a GPU, deep inside the first forward."""
    import numpy as np

    from .io import RecordError

    for i, p in enumerate(pairs):
        get = p.get if isinstance(p, dict) else (lambda k, _p=p: getattr(_p, k, None))
        for field in _ID_FIELDS:
            val = get(field)
            if val is None:
                continue
            ids = val if isinstance(val, (list, tuple)) else [val]
            bad = [t for t in ids if not isinstance(t, (int, np.integer)) or isinstance(t, bool)
                   or not 0 <= t < vocab_size]
            if bad:
                raise RecordError(f"{where}: pair {get('pair_id') or i}: {field} holds {bad[0]!r}, not a token id of "
                                  f"the model's vocabulary (0..{vocab_size - 1}); the pairs were made with another "
                                  "tokenizer?")


def check_pair_ids(model: Any, pairs: Any, where: object) -> None:
    """Stop with a :class:`cotmech.io.RecordError` naming ``where`` and the pair if a token id of ``pairs`` is not
    in the vocabulary of ``model`` (input embeddings and unembedding); call it before the first forward."""
    n_in = model.hf.get_input_embeddings().weight.shape[0]
    check_token_ids(pairs, min(int(model.vocab_size), int(n_in)), str(where))


def check_tables(args: argparse.Namespace, *flags: str) -> None:
    """``ValueError`` naming the option unless each given table output (``--out`` etc., attribute names of
    ``args``) ends in .parquet, .csv or .tsv: checked before any model work, not when the table is written."""
    from .io import check_suffix

    for flag in flags:
        check_suffix(getattr(args, flag.lstrip("-").replace("-", "_"), None), flag)
