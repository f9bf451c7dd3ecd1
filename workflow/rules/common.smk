# Shared helpers for all step files (config validation, paths, code dependencies, params as JSON).
import ast
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # this checkout's cotmech (as the jobs use, see below)
from cotmech import configcheck  # noqa: E402


# Checked before any job starts: nested --config strings read as YAML, one line naming the key for a schema
# violation, then Snakemake's validation (fills in defaults), datasets with enabled: false dropped, cross-key ranges.
_SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
configcheck.coerce(config, configcheck.load_schema(_SCHEMA))
configcheck.check_schema(config, configcheck.load_schema(_SCHEMA))
validate(config, "../schemas/config.schema.yaml")
config["datasets"] = configcheck.enabled_datasets(config)
configcheck.check_cross(config)

RESULTS = config["results"]
MODEL = config["model"]["name"]
MRES = f"{RESULTS}/{MODEL}"  # per-model results folder
DATASETS = list(config["datasets"])
MODEL_THREADS = int(config["cluster"]["threads"])  # threads of each model-running job


# One set of wildcard constraints for every rule: dataset names as the schema allows them, subtask (k) and shard (i)
# indices as integers. (report_gallery adds its own: `name` is one of the gallery's figures.)
wildcard_constraints:
    dataset=r"[A-Za-z0-9_\-]+",
    k=r"[0-9]+",
    i=r"[0-9]+",

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


def _interpreter_first_on_path():
    """Shell commands call `python`: put the bin folder of the interpreter running Snakemake (this .venv) first on
    PATH, and this checkout's src/ first on PYTHONPATH, so every job - local, or on SLURM, whose jobs inherit the
    environment - runs this workflow's code under the same interpreter. With --sdm conda, Snakemake activates the
    rule's env inside the job, whose `python` then comes first."""
    env = os.environ
    for var, path in (("PATH", os.path.dirname(sys.executable)), ("PYTHONPATH", str(Path(workflow.basedir) / "src"))):
        parts = [p for p in env.get(var, "").split(os.pathsep) if p]
        if not parts or parts[0] != path:
            env.update({var: os.pathsep.join([path] + [p for p in parts if p != path])})


_interpreter_first_on_path()


def code_inputs(script):
    """The package files a rule's script imports, directly or transitively, as inputs, so that editing one reruns
    exactly the rules whose scripts import it (Snakemake's `code` trigger sees only the script itself).

    Computed, not listed: a static scan of the script's `cotmech` imports (function bodies included, relative imports
    resolved), followed through every imported module; importing `a.b.c` adds the `__init__.py` of `a` and `a.b`;
    a package data file (`src/cotmech/data/*`) is added when a module names it in a string. Paths are relative to
    the working directory when they lie below it, so Snakemake's records stay valid when the checkout moves.
    """
    root = Path(workflow.basedir)
    pkg = root / "src" / "cotmech"
    data = {p.name: p for p in (pkg / "data").glob("*") if p.is_file()}

    def module_file(dotted):
        parts = dotted.split(".")
        base = pkg.joinpath(*parts[1:])
        if parts[0] != "cotmech":
            return None
        return next((c for c in (base.with_suffix(".py"), base / "__init__.py") if c.is_file()), None)

    def imported(path):
        """Dotted names a file imports (each `from m import x` also as `m.x`, which may be a module) and the names
        of the package data files it mentions."""
        here = list(path.relative_to(pkg.parent).with_suffix("").parts) if path.is_relative_to(pkg) else []
        here = here[:-1]  # the package holding the file (for a package's __init__: the package itself)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                yield from (a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                mod = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                yield mod
                yield from (f"{mod}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in data:
                yield data[node.value]

    seen, todo = set(), [root / script]
    while todo:
        for name in imported(todo.pop()):
            if isinstance(name, Path):
                seen.add(name)
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                m = module_file(".".join(parts[:i]))
                if m is not None and m not in seen:
                    seen.add(m)
                    todo.append(m)
    here = Path.cwd().resolve()
    return sorted(str(f.resolve().relative_to(here)) if f.resolve().is_relative_to(here) else str(f.resolve())
                  for f in seen)


def settings(*sections, **extra):
    """The config sections a rule depends on (whole top-level keys, read by `cotmech.config.section`/`value`), as one
    JSON string (a param, so a change reruns the rule); `extra` adds nested values (one dataset's entry)."""
    out = {}
    for k in sections:
        if "." in k:
            raise ValueError(f"settings({k!r}): pass the whole section {k.split('.')[0]!r}, not a dotted key")
        out[k] = config[k]
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
    mem_mb: host memory to load the weights (params x bytes per dtype x 1.3 + 3 GB; a bf16 model on the CPU with
    `model.bf16_matmul: float32` adds 4 bytes per parameter for its float32 copies - `auto` makes them only where
    they fit the job's memory), or `cluster.mem_mb`.
    runtime (minutes): (`cluster.runtime_base_min` + `cluster.runtime_per_b_min` x params_b) x weight,
    so heavy rules pass weight > 1; or `cluster.runtime_min` if set.
    """
    cl = config["cluster"]
    gpus = cl.get("gpus")
    if gpus is None:
        gpus = 0 if str(config["model"]["device"]).startswith("cpu") else 1
    size_b = model_params_b()
    bytes_per = 4 if config["model"]["dtype"] == "float32" else 2
    if config["model"]["dtype"] == "bfloat16" and not gpus and config["model"]["bf16_matmul"] == "float32":
        bytes_per += 4
    mem_mb = cl.get("mem_mb") or int(math.ceil((size_b * bytes_per * 1.3 + 3.0) * 1024))
    runtime = cl.get("runtime_min") or int(
        math.ceil((cl["runtime_base_min"] + cl["runtime_per_b_min"] * size_b) * weight)
    )
    return {"gpu": int(gpus), "mem_mb": int(mem_mb), "runtime": int(runtime)}


# --------------------------------------------------------------------------------------------------
# Input functions and target helpers of the step files (kept here: a rule file holds rules only)
# --------------------------------------------------------------------------------------------------
def task_import(w):
    """The foreign file a dataset imports (config datasets.<name>.import), if any."""
    path = config["datasets"][w.dataset].get("import")
    return [path] if path else []


def patch_raw(method, shards):
    """Input function: the raw shard files of one dataset and subtask for a patching method."""
    return lambda w: expand(
        f"{MRES}/patching/{w.dataset}/raw/{method}/subtask{w.k}.shard{{i}}.safetensors", i=range(shards)
    )


def producible(path):
    """Whether `path` exists or a rule defined so far writes it."""
    return os.path.exists(path) or any(r.is_producer(path) for r in workflow.rules)


def circuit_rankings(circ):
    """Knockout rankings of config section `circ`: (name -> source for knockout.py, skipped names).
    '{subtask}' stays a placeholder in the sources; a ranking whose table no rule produces for every subtask is
    skipped. `circuit_ranking_files` gives one subtask's input files.
    '{shard}' expands to every shard of config patching (a list of files: raw per-pair patching scores), '{method}' to
    patching.method."""
    from cotmech.circuits import knockout_rankings

    return knockout_rankings(circ, config["patching"], dict(results=RESULTS, model=MODEL, mres=MRES), producible)


def circuit_ranking_files(sources, k):
    """The ranking tables (of `circuit_rankings`' sources) that the knockout of subtask `k` reads."""
    return [f.format(subtask=k) if "{subtask}" in f else f
            for s in sources.values() if not isinstance(s, str) for f in s]


def first_datasets(section):
    """config <section>.datasets, default the first dataset; unknown names are an error."""
    chosen = config[section].get("datasets") or DATASETS[:1]
    unknown = [d for d in chosen if d not in DATASETS]
    if unknown:
        raise ValueError(f"config {section}.datasets: unknown dataset(s) {unknown}; known: {DATASETS}")
    return chosen


def flow_ranking(w):
    """Input function: the head ranking file of config flow.ranking for the dataset, if set."""
    r = config["flow"].get("ranking")
    return [r.format(results=RESULTS, model=MODEL, dataset=w.dataset)] if r else []


def png_pdf(stem, caption, category, subcategory=None):
    """A figure's PNG (registered in the Snakemake report) and PDF outputs."""
    return [report(f"{stem}.png", caption=caption, category=category, subcategory=subcategory), f"{stem}.pdf"]


def other_figures(targets, exclude):
    """name -> PNG path for the .png outputs of the rules not in `exclude` that are part of the DAG: a rule's PNG
    (with its {dataset} wildcard filled in) is taken only when one of that rule's outputs, for the same dataset, is
    one of `targets` (so the gallery never adds jobs to the study)."""
    targets = [str(t) for t in targets]
    out = {}
    for r in workflow.rules:
        if r.name in exclude:
            continue
        outs = [str(f) for f in r.output]
        pngs = [f for f in outs if f.endswith(".png")]
        if not pngs or any(set(re.findall(r"{(\w+)", f)) - {"dataset"} for f in outs):
            continue
        for d in DATASETS:
            filled = [re.sub(r"{dataset(,[^}]*)?}", d, f) for f in outs]
            if not any(f in targets for f in filled):
                continue
            for f in pngs:
                p = re.sub(r"{dataset(,[^}]*)?}", d, f)
                rel = Path(p).relative_to(MRES) if Path(p).is_relative_to(MRES) else Path(p)
                out["__".join(rel.with_suffix("").parts)] = p
    return out
