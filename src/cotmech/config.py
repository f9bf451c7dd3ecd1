"""The study configuration as the scripts read it: one section of ``--settings`` with every default of the schema.

The defaults live only in ``workflow/schemas/config.schema.yaml`` (where Snakemake reads and validates it); the
package ships an identical copy, ``cotmech/data/config.schema.yaml`` (``tests/test_config.py`` keeps the two equal),
so that scripts run standalone, benchmarks and an installed package fill in the same values as a workflow run.

- :func:`section` — ``settings[name]`` checked against the schema and completed with its defaults (read-only).
- :func:`value` — one value by dotted key (``seed``, ``pairs.require_correct``): the nested value, else the schema
  default. Rules pass whole sections (``settings()`` in ``workflow/rules/common.smk``), never dotted keys.
- :func:`dataset` — one entry of ``datasets`` completed with the defaults of a dataset.
- :func:`load` — a whole study configuration from its files, as a workflow run sees it (benchmarks).
"""
from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .configcheck import ConfigError, _key

SCHEMA_FILE = "config.schema.yaml"


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(resources.files("cotmech").joinpath("data", SCHEMA_FILE).read_text())


def schema() -> dict:
    """The study's config schema (a fresh copy)."""
    return copy.deepcopy(_schema())


def node(path: str) -> dict:
    """The schema of a dotted config key (``patching.path``; ``datasets.*`` is one dataset entry)."""
    node = _schema()
    for part in path.split("."):
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif part == "*" and isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            raise KeyError(f"config key {path!r} is not in {SCHEMA_FILE}")
    return node


def fill(value: Any, node: dict) -> Any:
    """A deep copy of ``value`` with every missing key that ``node`` (a schema) gives a default filled in, nested
    objects included (the values Snakemake's validation fills in)."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        props = node.get("properties", {})
        for k, sub in props.items():
            if k not in value and "default" in sub:
                value[k] = copy.deepcopy(sub["default"])
        extra = node.get("additionalProperties")
        for k in list(value):
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[k] = fill(value[k], sub)
    return value


def _check(value: Any, node: dict, where: str) -> None:
    import jsonschema

    cls = jsonschema.validators.validator_for(_schema())
    errors = sorted(cls(node).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        e = errors[0]
        key = ".".join(filter(None, [where, _key(e.absolute_path)]))
        raise ConfigError(f"config {key}: {e.message}")


def section(settings: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``settings[name]`` (a top-level section of the config, e.g. ``patching``) checked against the schema and
    with every schema default filled in; a missing or null section gives the defaults. Read-only."""
    sch = node(name)
    user = settings.get(name)
    user = {} if user is None else user
    _check(user, sch, name)
    return MappingProxyType(fill(user, sch))


def value(settings: Mapping[str, Any], key: str) -> Any:
    """One config value by dotted key: the nested value, else the schema default (the section's default filled
    in)."""
    sch = node(key)
    got: Any = settings
    for part in key.split("."):
        if not isinstance(got, Mapping) or part not in got:
            if "default" not in sch:
                raise ConfigError(f"config {key}: missing (the schema has no default)")
            return fill(sch["default"], sch)
        got = got[part]
    _check(got, sch, key)
    return fill(got, sch)


def dataset(spec: Mapping[str, Any], where: str = "datasets") -> dict:
    """One ``datasets`` entry checked and completed with the schema's dataset defaults (``n``, ``style``, ...)."""
    sch = node("datasets.*")
    _check(dict(spec), sch, where)
    return fill(dict(spec), sch)


def _merge(into: dict, new: Mapping) -> None:
    """Recursive update, as Snakemake merges config files (``snakemake.utils.update_config``)."""
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def load(path: str | os.PathLike, base: str | os.PathLike | None = None) -> dict:
    """The study configuration a workflow run with ``--configfile path`` on top of ``base`` (config.yaml) sees,
    without Snakemake: files merged key by key, checked against the schema (:mod:`cotmech.configcheck`, one line
    naming the key), every default filled in, datasets with ``enabled: false`` dropped, cross-key ranges checked."""
    from . import configcheck

    cfg: dict = {}
    files = [base] if base else []
    if not base or Path(path).resolve() != Path(base).resolve():
        files.append(path)
    for f in files:
        data = yaml.safe_load(Path(f).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{f}: not a mapping of config keys")
        _merge(cfg, data)
    configcheck.coerce(cfg, _schema())
    configcheck.check_schema(cfg, _schema())
    cfg = fill(cfg, _schema())
    cfg["datasets"] = configcheck.enabled_datasets(cfg)
    configcheck.check_cross(cfg)
    return cfg
