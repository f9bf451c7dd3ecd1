# Shared helpers for every rule file: config validation, paths, code dependencies, params as JSON.
import json
import os
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
    """
    base = Path(workflow.basedir) / "src" / "cotmech"
    files = [base / "__init__.py", base / "io.py"]
    for m in modules:
        p = base / f"{m}.py"
        files.extend([p] if p.exists() else sorted((base / m).glob("*.py")))
    return [str(f) for f in files]


def settings(*keys, **extra):
    """The config values a rule depends on, as one JSON string (a param: a change reruns the rule)."""
    out = {}
    for k in keys:
        cur = config
        for part in k.split("."):
            cur = cur[part]
        out[k] = cur
    out.update(extra)
    return json.dumps(out, sort_keys=True)


def logpath(rule, *parts):
    return f"{RESULTS}/logs/{MODEL}/{rule}" + ("/" + "/".join(parts) if parts else "") + ".log"
