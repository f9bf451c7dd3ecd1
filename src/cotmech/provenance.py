"""Where and how a model run was computed: dtype, device, CPU/GPU model, library versions (issue 14 item 11).

:func:`run_info` resolves the model settings exactly as :func:`cotmech.models.load_model` does (``dtype: auto``
depends on the device and, on CPU, on native bf16 instructions; ``COTMECH_CPU_AUTO_DTYPE`` overrides), without
loading weights. The workflow writes it once per model (``results/<model>/run_info.json``, rule ``run_info``, run
with the resources of a model job), every model-loading script prints it into its log
(:func:`cotmech.cli.load_from_args`), and the summary page shows it (:func:`cotmech.report.provenance_html`).
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions change numerics or behaviour.
LIBRARIES = ("torch", "transformers", "nnsight", "numpy", "tokenizers", "gguf", "safetensors", "pandas")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` "model name", else :func:`platform.processor`, else "unknown")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - non-Linux
        pass
    return platform.processor() or "unknown"


def versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` if absent)."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def run_info(model: dict[str, Any]) -> dict[str, Any]:
    """Provenance of runs with config section ``model`` (keys spec, dtype, device, name).

    Returns ``{model_name, spec, dtype_requested, dtype, device, cpu, cpu_native_bf16, cpu_count, gpu,
    cuda, cpu_auto_dtype_env, python, platform, libraries}``; ``dtype``/``device`` are the resolved values.
    """
    import torch

    from .models import cpu_has_native_bf16, resolve_device, resolve_dtype

    from . import config

    model = config.fill(dict(model), config.node("model"))
    device = resolve_device(str(model["device"]))
    dtype = resolve_dtype(str(model["dtype"]), device)
    gpu = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    return {
        "model_name": model.get("name"),
        "spec": model.get("spec"),
        "dtype_requested": str(model["dtype"]),
        "dtype": str(dtype).removeprefix("torch."),
        "bf16_matmul_requested": str(model["bf16_matmul"]),
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "cpu_auto_dtype_env": os.environ.get("COTMECH_CPU_AUTO_DTYPE"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": versions(),
    }


def loaded_info(loaded: Any) -> dict[str, Any]:
    """The few facts of an already loaded :class:`cotmech.models.LoadedModel` plus the machine (for job logs)."""
    import torch

    dev = loaded.device
    return {"spec": loaded.spec, "dtype": str(loaded.dtype).removeprefix("torch."),
            "bf16_matmul": loaded.info.get("bf16_matmul", "native"), "device": str(dev),
            "cpu": cpu_model(), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "torch": versions(("torch",))["torch"], "transformers": versions(("transformers",))["transformers"]}
