"""cotmech.config: the defaults live only in workflow/schemas/config.schema.yaml; a script run without a key uses the
schema's value (what a workflow run, whose settings Snakemake fills in, uses)."""
from __future__ import annotations

import ast
import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from cotmech import circuits, config, horizon
from cotmech.configcheck import ConfigError

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SECTIONS = [k for k, v in yaml.safe_load(WORKFLOW_SCHEMA.read_text())["properties"].items()
            if v.get("type") == "object" and "properties" in v]


def _snakemake_filled() -> dict:
    """The config Snakemake's own validation fills in from the schema (the oracle), for a minimal config."""
    from snakemake.utils import validate

    cfg = {"model": {}, "datasets": {"d": {"ontology": "fictional", "hops": 2}}}
    validate(cfg, str(WORKFLOW_SCHEMA), set_default=True)
    return cfg


def test_packaged_schema_is_the_workflow_schema():
    packaged = REPO / "src" / "cotmech" / "data" / config.SCHEMA_FILE
    assert packaged.read_text() == WORKFLOW_SCHEMA.read_text(), \
        "copy workflow/schemas/config.schema.yaml to src/cotmech/data/ (the scripts read the packaged copy)"


@pytest.mark.parametrize("name", SECTIONS)
def test_section_without_keys_is_what_snakemake_fills_in(name):
    filled = _snakemake_filled()
    assert dict(config.section({}, name)) == filled[name]
    assert dict(config.section({name: None}, name)) == filled[name]


def test_every_section_default_is_covered_and_validates():
    assert {"patching", "circuits", "probing", "horizon", "flow", "prior_shift", "roles", "tuned_lens"} <= set(SECTIONS)
    whole = {name: dict(config.section({}, name)) for name in SECTIONS}
    whole.update({k: config.value({}, k) for k in ("seed", "results")})
    whole["datasets"] = {"d": config.dataset({"ontology": "fictional", "hops": 2})}
    schema = yaml.safe_load(WORKFLOW_SCHEMA.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(whole)  # raises on a default the schema rejects
    assert whole == _snakemake_filled()


def test_a_given_key_wins_and_nested_sections_keep_their_other_defaults():
    filled = _snakemake_filled()["patching"]
    got = config.section({"patching": {"n_pairs": 7, "path": {"n_senders": 2}}}, "patching")
    assert got["n_pairs"] == 7 and got["path"]["n_senders"] == 2
    assert got["path"]["paths"] == filled["path"]["paths"] and got["metric"] == filled["metric"]
    with pytest.raises(TypeError):
        got["n_pairs"] = 3  # read-only


def test_value_nested_then_default_and_explicit_null_kept():
    default = _snakemake_filled()
    assert config.value({}, "seed") == default["seed"]
    assert config.value({"seed": 5}, "seed") == 5
    assert config.value({"pairs.require_correct": False}, "pairs.require_correct") is True  # dotted keys are not read
    assert config.value({"pairs": {"require_correct": False}}, "pairs.require_correct") is False
    assert config.value({}, "circuits.reuse_groups") == default["circuits"]["reuse_groups"]
    assert default["prior_shift"]["max_per_subtask"] is not None
    assert config.section({"prior_shift": {"max_per_subtask": None}}, "prior_shift")["max_per_subtask"] is None


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"^config patching\.metric: 'x' is not one of"):
        config.section({"patching": {"metric": "x"}}, "patching")
    with pytest.raises(ConfigError, match=r"^config probing: Additional properties .*'shot'"):
        config.section({"probing": {"shot": [0]}}, "probing")
    with pytest.raises(KeyError, match="not in config.schema.yaml"):
        config.section({}, "nonsense")


def test_library_readers_use_the_schema_defaults():
    default = _snakemake_filled()
    cc = default["circuits"]
    opts = circuits.knockout_options(config.section({}, "circuits"))
    assert opts == {**{k: cc[k] for k in circuits.KNOCKOUT_KEYS}, "isolation_spec": cc["isolation"],
                    "cross_spec": cc["cross_removal"]}
    assert circuits.knockout_options(config.section({}, "circuits"), [3])["subtasks"] == [3]
    hs = default["horizon"]
    assert horizon.choose_layers(None, hs["layer_stride"], 9) == list(range(0, 9, hs["layer_stride"]))
    with pytest.raises(ValueError, match=r"horizon.layers \[9\] outside 0..8"):
        horizon.choose_layers([0, 9], 1, 9)
    assert hs["require_correct"] is None
    assert horizon.require_correct({}) is default["pairs"]["require_correct"]
    assert horizon.require_correct({"pairs": {"require_correct": False}}) is False
    assert horizon.require_correct({"pairs": {"require_correct": False}, "horizon": {"require_correct": True}}) is True


def _schema_keys(node: dict, out: set) -> set:
    for k, sub in (node.get("properties") or {}).items():
        out.add(k)
        _schema_keys(sub, out)
    if isinstance(node.get("additionalProperties"), dict):
        _schema_keys(node["additionalProperties"], out)
    return out


def _literal(node: ast.AST) -> bool:
    try:
        return ast.literal_eval(node) is not None
    except ValueError:
        return False


def test_no_defaults_outside_the_schema():
    """No DEFAULTS dict anywhere, and no script reads a config key with a literal fallback (`.get("n_boot", 1000)`)
    or a section with `.get("<section>", {})`: every script reads its settings through cotmech.config."""
    keys = _schema_keys(yaml.safe_load(WORKFLOW_SCHEMA.read_text()), set())
    bad = []
    files = sorted((REPO / "scripts").glob("*.py")) + sorted((REPO / "src").rglob("*.py")) + \
        sorted((REPO / "benchmarks").glob("*.py"))
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                bad += [f"{f.name}:{node.lineno}: DEFAULTS" for t in targets
                        if isinstance(t, ast.Name) and t.id == "DEFAULTS"]
            if f.parent.name == "scripts" and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "get" and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).split(".")[-1] in keys and _literal(node.args[1]):
                bad.append(f"{f.name}:{node.lineno}: .get({node.args[0].value!r}, <literal>)")
    assert not bad, bad


def test_fill_does_not_touch_its_input():
    given = {"path": {"n_pairs": 1}}
    before = copy.deepcopy(given)
    config.fill(given, config.node("patching"))
    assert given == before


def test_ranking_sources_skips_a_table_that_is_not_made_for_every_subtask():
    """circuits.ranking_sources (through knockout_rankings: common.smk's circuit_rankings and bench_rules): the
    explicit expected result."""
    rankings = {"direct": "builtin", "copy": "builtin:copy", "raw": "{mres}/p/{dataset}/{method}/s{subtask}.{shard}.st",
                "ind": "{results}/{model}/ind.parquet", "gone": "{mres}/missing.parquet"}
    made = {"R/M/p/fic/exact/s1.0.st", "R/M/p/fic/exact/s1.1.st", "R/M/p/fic/exact/s2.0.st",
            "R/M/p/fic/exact/s2.1.st", "R/M/ind.parquet"}
    fields = dict(results="R", model="M", mres="R/M", method="exact")
    src, skipped = circuits.ranking_sources(rankings, "fic", [1, 2], fields, 2, made.__contains__)
    assert src == {"direct": "builtin", "copy": "builtin:copy", "ind": ["R/M/ind.parquet"],
                   "raw": ["R/M/p/fic/exact/s{subtask}.0.st", "R/M/p/fic/exact/s{subtask}.1.st"]}
    assert skipped == ["gone"]
    src, skipped = circuits.ranking_sources(rankings, "fic", [1, 2, 3], fields, 2, made.__contains__)
    assert skipped == ["raw", "gone"] and "raw" not in src
    # circuits.knockout_rankings (what both call): the same from the config sections
    circ, patching = {"rankings": rankings, "dataset": "fic", "subtasks": [1, 2]}, {"method": "exact", "shards": 2}
    paths = dict(results="R", model="M", mres="R/M")
    assert circuits.knockout_rankings(circ, patching, paths, made.__contains__) == (
        circuits.ranking_sources(rankings, "fic", [1, 2], fields, 2, made.__contains__))
    assert circuits.knockout_rankings(circ, patching, paths, made.__contains__, subtasks=[1, 2, 3])[1] == ["raw", "gone"]
    # an overlay's null drops a ranking of the base config: neither run nor reported as skipped
    over = {**rankings, "direct": None, "gone": None}
    src, skipped = circuits.ranking_sources(over, "fic", [1, 2], fields, 2, made.__contains__)
    assert sorted(src) == ["copy", "ind", "raw"] and skipped == []


def test_an_overlay_drops_a_knockout_ranking_with_null(tmp_path):
    """config.load merges an overlay's ``circuits.rankings.direct: null`` (the schema accepts it) and the
    rule's ranking_sources leaves that ranking out."""
    over = tmp_path / "o.yaml"
    over.write_text("circuits:\n  rankings:\n    direct: null\n")
    cfg = config.load(over, REPO / "config.yaml")
    assert cfg["circuits"]["rankings"]["direct"] is None and cfg["circuits"]["rankings"]["copy"] == "builtin:copy"
    fields = dict(results="R", model="M", mres="R/M", method="exact")
    src, _ = circuits.ranking_sources(cfg["circuits"]["rankings"], "fictional", [2], fields, 1, lambda p: True)
    assert "direct" not in src and "copy" in src


def settings_calls(text: str) -> list[ast.Call]:
    """Every ``settings(...)`` call in a rule's params (``lambda w: settings(...)``) of a rule file (the .smk text
    around it is not Python; each call is)."""
    import re

    calls = []
    for m in re.finditer(r"lambda[^:\n]*:\s*(settings)\(", text):
        start = j = m.start(1)
        depth = 0
        while True:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
            if depth == 0 and text[j - 1] == ")":
                break
        calls.append(ast.parse(text[start:j], mode="eval").body)
    return calls


def test_rules_pass_whole_sections():
    """Every rule's settings are whole top-level config sections (``settings("model", "circuits")``), never dotted
    keys; one dataset's entry goes nested (``datasets={name: entry}``). Scripts read them with config.section."""
    top = set(config.schema()["properties"])
    calls = [c for f in sorted((REPO / "workflow" / "rules").glob("*.smk")) for c in settings_calls(f.read_text())]
    assert len(calls) >= 20, len(calls)
    for c in calls:
        names = [a.value for a in c.args if isinstance(a, ast.Constant)]
        assert len(names) == len(c.args), f"settings(): a positional argument that is not a literal: {ast.unparse(c)}"
        assert set(names) <= top, f"{ast.unparse(c)}: {sorted(set(names) - top)} are not whole config sections"
        assert {k.arg for k in c.keywords} <= {"datasets"}, ast.unparse(c)


def test_settings_calls_are_found_and_dotted_keys_fail():
    text = ('s=lambda w: settings("model", "seed"),\ndef settings(*a):\n    f"settings({a!r})"\n'
            't=lambda w, input: settings("circuits.reuse_groups",\n  k=(1, 2)),\n')
    got = [ast.unparse(c) for c in settings_calls(text)]
    assert got == ["settings('model', 'seed')", "settings('circuits.reuse_groups', k=(1, 2))"]
    top = set(config.schema()["properties"])
    assert "circuits.reuse_groups" not in top and {"model", "seed", "circuits", "datasets"} <= top
