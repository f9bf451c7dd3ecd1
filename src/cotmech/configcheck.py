"""The study configuration checked before any job starts (``workflow/rules/common.smk``).

Three passes around Snakemake's own schema validation (which fills in the defaults):

1. :func:`coerce` — values given on the command line inside a nested ``--config`` value arrive as strings
   (Snakemake parses them with YAML's BaseLoader: ``--config 'patching={n_pairs: 2}'`` gives ``"2"``); a string
   where the schema wants a number, boolean, null or list is read as YAML, as it would be from a config file.
2. :func:`check_schema` — every schema violation as one line naming the key (``config patching.n_pairs: ...``).
3. :func:`check_cross` — ranges that depend on other keys: subtask indices against the hops of the datasets
   they index, ``cot_skip`` against ``hops``, dataset names that must be datasets of the study.

:func:`enabled_datasets` drops the datasets marked ``enabled: false`` (how an overlay removes a dataset of
``config.yaml``: Snakemake merges config files key by key, so ``datasets: {}`` removes nothing).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the key."""


_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None), "array": list,
          "object": dict, "string": str}


def _types(schema: dict) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _is(value: Any, t: str) -> bool:
    if t in ("integer", "number") and isinstance(value, bool):
        return False
    if t == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[t])


def _coerce_value(value: Any, schema: dict) -> Any:
    types = _types(schema)
    if isinstance(value, str) and types and "string" not in types:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if any(_is(parsed, t) for t in types):
            value = parsed
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k in list(value):
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[k] = _coerce_value(value[k], sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [_coerce_value(v, schema["items"]) for v in value]
    return value


def coerce(config: dict, schema: dict) -> dict:
    """Convert, in place, strings where ``schema`` wants a non-string (read as YAML); returns ``config``."""
    return _coerce_value(config, schema)


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _key(path: Iterable) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def check_schema(config: dict, schema: dict) -> None:
    """:class:`ConfigError` naming the key of the first schema violation (in key order)."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        e = errors[0]
        where = _key(e.absolute_path)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"config {where or '(top level)'}: {e.message}{more}")


def n_subtasks(hops: int, cot_skip: int = 0, include_label: bool = False) -> int:
    """Number of subtasks of an n-hop CoT (:func:`cotmech.prontoqa.subtasks.steps`): two per CoT sentence, 2n+1
    sentences, minus one sentence per skipped derived fact, plus the True/False step with ``include_label``."""
    return 2 * (2 * int(hops) + 1) - 2 * int(cot_skip) + (1 if include_label else 0)


def enabled_datasets(config: dict) -> dict:
    """``config['datasets']`` without the ones marked ``enabled: false`` (the ``enabled`` key is dropped from all,
    so the settings the rules pass on are unchanged)."""
    out = {}
    for name, ds in config["datasets"].items():
        ds = dict(ds)
        if ds.pop("enabled", True):
            out[name] = ds
    if not out:
        raise ConfigError("config datasets: every dataset has enabled: false")
    return out


def _datasets(config: dict, key: str, names: Any) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    known = list(config["datasets"])
    for n in names:
        if n not in known:
            raise ConfigError(f"config {key}: {n!r} is not an enabled dataset of config 'datasets' "
                              f"({', '.join(known)})")
    return names


def _subtasks(config: dict, key: str, subtasks: Any, datasets: list[str]) -> None:
    label = bool(config["pairs"]["include_label"])
    for d in datasets:
        ds = config["datasets"][d]
        n = n_subtasks(ds["hops"], ds["cot_skip"], label)
        bad = [k for k in subtasks if not 0 <= int(k) < n]
        if bad:
            raise ConfigError(f"config {key}: subtask {bad[0]} does not exist for dataset {d!r} ({ds['hops']} hops, "
                              f"cot_skip {ds['cot_skip']}{', include_label' if label else ''}: "
                              f"subtasks 0..{n - 1})")


def check_cross(config: dict) -> None:
    """Constraints between keys (after the schema's defaults are filled in and disabled datasets dropped)."""
    for name, ds in config["datasets"].items():
        if ds["cot_skip"] > ds["hops"] - 1:
            raise ConfigError(f"config datasets.{name}.cot_skip: {ds['cot_skip']} skipped facts need at least "
                              f"{ds['cot_skip'] + 1} hops, the dataset has {ds['hops']}")
    all_ds = list(config["datasets"])
    first = all_ds[:1]
    patch = config["patching"]
    pds = _datasets(config, "patching.datasets", patch["datasets"])
    _subtasks(config, "patching.subtasks", patch["subtasks"], pds)
    _subtasks(config, "patching.path.subtasks", patch["path"]["subtasks"], pds)
    if patch["method"] == "screened" and patch["shards"] != 1:
        raise ConfigError(f"config patching.shards: {patch['shards']} with method screened; screening chooses its "
                          "heads from all pairs of a subtask at once, so it needs shards: 1")
    circ = config["circuits"]
    cds = _datasets(config, "circuits.dataset", circ["dataset"])
    rds = _datasets(config, "circuits.reference", circ["reference"])
    _subtasks(config, "circuits.subtasks", circ["subtasks"], cds + rds)
    for section in ("flow", "horizon", "roles"):
        chosen = config[section]["datasets"]
        if chosen:
            _datasets(config, f"{section}.datasets", chosen)
    flow = config["flow"]
    if flow["subtasks"]:
        _subtasks(config, "flow.subtasks", flow["subtasks"], _datasets(config, "flow.datasets",
                                                                        flow["datasets"] or first))
