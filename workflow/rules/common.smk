# Shared helpers for all step files (config validation, paths, code dependencies, params as JSON).
import json
import math
import os
import re
import sys
from pathlib import Path

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")

RESULTS = config["results"]
MODEL = config["model"]["name"]
MRES = f"{RESULTS}/{MODEL}"  # per-model results folder
DATASETS = list(config["datasets"])

# Rule files after tasks.smk, in DAG order; a step whose file exists is included by the Snakefile.
STEPS = [
    "generation",
    "activations",
    "patching",
    "prior_shift",
    "circuits",
    "probing",
    "flow",
    "horizon",
    "figures",
    "report",
]

_TARGETS = []


def register_targets(*paths):
    """Add final outputs of a step to `rule all`."""
    for p in paths:
        if isinstance(p, (list, tuple)):
            _TARGETS.extend(p)
        else:
            _TARGETS.append(p)


def all_targets():
    return list(dict.fromkeys(_TARGETS))


def python():
    """The interpreter rules run under: this venv's, or the conda env's `python` with --sdm conda."""
    try:
        from snakemake.settings.types import DeploymentMethod

        if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
            return "python"
    except Exception:  # pragma: no cover - older snakemake
        pass
    return sys.executable


PY = python()


def src(*modules):
    """Package sources a rule's script imports, as inputs, so editing one reruns the rule.

    (Snakemake's `code` trigger only sees the rule's own script, not the modules it imports.)
    Paths are relative to the working directory when the sources lie below it (the usual case), so that
    Snakemake's records stay valid when the checkout is moved or copied. A module that does not exist is
    returned as `src/cotmech/<name>.py`, so the rule fails with a missing-input error naming it.
    """
    base = Path(workflow.basedir) / "src" / "cotmech"
    files = [base / "__init__.py", base / "io.py"]
    for m in modules:
        p = base / f"{m}.py"
        pkg = sorted((base / m).glob("*.py")) if (base / m).is_dir() else []
        files.extend(pkg or [p])
    here = Path.cwd().resolve()
    out = []
    for f in files:
        f = f.resolve()
        out.append(str(f.relative_to(here)) if f.is_relative_to(here) else str(f))
    return out


def settings(*keys, **extra):
    """The config values a rule depends on, as one JSON string (a param, so a change reruns the rule)."""
    out = {}
    for k in keys:
        cur = config
        for part in k.split("."):
            cur = cur[part]
        out[k] = cur
    out.update(extra)
    return json.dumps(out, sort_keys=True)


def logpath(rule, *parts):
    return os.path.join(RESULTS, "logs", MODEL, rule, *parts) + ".log"


# --------------------------------------------------------------------------------------------------
# Cluster resources (read by executors such as profiles/slurm; ignored by a local run without limits)
# --------------------------------------------------------------------------------------------------
_SIZE_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)([bm])(?![a-z])", re.IGNORECASE)


def model_params_b():
    """Model size in billions of parameters: `cluster.params_b`, else read from the spec name
    (`...-7b...` -> 7, `...-135m...` -> 0.135, `random:tiny-*` -> 0.001), else 8 (a 7B-class guess)."""
    given = config["cluster"].get("params_b")
    if given is not None:
        return float(given)
    spec = config["model"]["spec"]
    if re.match(r"^random:tiny-", spec):
        return 0.001
    hits = _SIZE_RE.findall(spec.split("?")[0])
    if hits:
        num, unit = hits[-1]
        return float(num) * (1.0 if unit.lower() == "b" else 1e-3)
    return 8.0


def model_resources(weight=1.0):
    """Resources of a job that loads the model: `resources: **model_resources()`.

    gpu: `cluster.gpus`, default 1 unless `model.device` is cpu (then 0, so a CPU run asks for no GPU).
    mem_mb: host memory to load the weights (params x bytes per dtype x 1.3 + 3 GB), or `cluster.mem_mb`.
    runtime (minutes): (`cluster.runtime_base_min` + `cluster.runtime_per_b_min` x params_b) x weight,
    so heavy rules pass weight > 1; or `cluster.runtime_min` if set.
    """
    cl = config["cluster"]
    gpus = cl.get("gpus")
    if gpus is None:
        gpus = 0 if str(config["model"]["device"]).startswith("cpu") else 1
    size_b = model_params_b()
    bytes_per = 4 if config["model"]["dtype"] == "float32" else 2
    mem_mb = cl.get("mem_mb") or int(math.ceil((size_b * bytes_per * 1.3 + 3.0) * 1024))
    runtime = cl.get("runtime_min") or int(
        math.ceil((cl["runtime_base_min"] + cl["runtime_per_b_min"] * size_b) * weight)
    )
    return {"gpu": int(gpus), "mem_mb": int(mem_mb), "runtime": int(runtime)}
