"""The study configuration is checked before any job starts, and no config value reaches the shell unquoted
(issue 18, items 2, 3 and 6): library checks against explicit expectations, then Snakemake itself on a private
copy of the repository (dry runs, and the cheap make_tasks rule for real)."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cotmech import configcheck
from cotmech.configcheck import ConfigError

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
import smokerun as sr  # noqa: E402

SCHEMA = configcheck.load_schema(sr.REPO / "workflow" / "schemas" / "config.schema.yaml")


def _base() -> dict:
    """config.yaml with the schema's defaults filled in (what common.smk checks), via Snakemake's validate."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((sr.REPO / "config.yaml").read_text())
    validate(cfg, str(sr.REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return cfg


# ---------------------------------------------------------------------------------------------- library
def test_coerce_reads_nested_command_line_strings_per_schema():
    # what `--config 'patching={n_pairs: 3, subtasks: [0, 5], atp: false, n_boot: null}'` etc. deliver
    cfg = {"model": {}, "seed": 5, "patching": {"n_pairs": "3", "subtasks": ["0", "5"], "atp": "false", "metric": "kl",
                                   "path": {"n_senders": "2"}},
           "circuits": {"steps": "9", "rank_fraction": "0.25", "reuse_groups": [["1", "3"]]},
           "datasets": {"f": {"ontology": "false", "hops": "3", "n": "7"}},
           "tuned_lens": {"rank": "null"}, "flow": {"ranking": "null", "subtasks": ["x"]}}
    configcheck.coerce(cfg, SCHEMA)
    assert cfg == {"model": {}, "seed": 5, "patching": {"n_pairs": 3, "subtasks": [0, 5], "atp": False, "metric": "kl",
                                           "path": {"n_senders": 2}},
                   "circuits": {"steps": 9, "rank_fraction": 0.25, "reuse_groups": [[1, 3]]},
                   "datasets": {"f": {"ontology": "false", "hops": 3, "n": 7}},  # "false" is an ontology name
                   "tuned_lens": {"rank": None},
                   "flow": {"ranking": "null", "subtasks": ["x"]}}  # a string key stays; "x" is no integer
    with pytest.raises(ConfigError, match=r"^config flow\.subtasks\[0\]: 'x' is not of type 'integer'$"):
        configcheck.check_schema(cfg, SCHEMA)


@pytest.mark.parametrize("change,message", [
    ({"seed": -1}, r"^config seed: -1 is less than the minimum of 0$"),
    ({"model": {"device": "gpu"}}, r"^config model\.device: 'gpu' does not match"),
    ({"results": "out\nx"}, r"^config results: 'out\\nx' does not match"),
    ({"results": "{model}/x"}, r"^config results: '\{model\}/x' does not match"),
    ({"results": "--help"}, r"^config results: '--help' does not match"),
    ({"patching": {"n_pairs": "many"}}, r"^config patching\.n_pairs: 'many' is not of type 'integer', 'null'$"),
])
def test_schema_errors_name_the_key(change, message):
    cfg = yaml.safe_load((sr.REPO / "config.yaml").read_text())
    for k, v in change.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    configcheck.coerce(cfg, SCHEMA)
    with pytest.raises(ConfigError, match=message):
        configcheck.check_schema(cfg, SCHEMA)


def test_results_paths_with_space_quote_semicolon_are_valid():
    for path in ["out dir;touch PWNED;echo 'x", 'a"b', "/tmp/x y/r"]:
        configcheck.check_schema({**yaml.safe_load((sr.REPO / "config.yaml").read_text()), "results": path}, SCHEMA)


def test_n_subtasks_matches_the_steps_of_generated_records():
    from cotmech.prontoqa.generator import generate
    from cotmech.prontoqa.subtasks import steps

    for hops in range(1, 6):
        for skip in range(0, min(hops, 3)):
            for style in ("paper", "original"):
                recs = generate("fictional", hops, 3, style=style, cot_skip=skip, seed=hops)
                for label in (False, True):
                    want = {len(steps(r, include_label=label)) for r in recs}
                    assert want == {configcheck.n_subtasks(hops, skip, label)}, (hops, skip, style, label)


def test_cross_checks_name_the_key_and_the_dataset():
    cfg = _base()  # two 2-hop datasets: subtasks 0..9
    configcheck.check_cross(cfg)
    for key, value, msg in [
        ("patching.subtasks", [2, 12], r"config patching\.subtasks: subtask 12 does not exist for dataset "
                                       r"'fictional' \(2 hops, cot_skip 0: subtasks 0\.\.9\)"),
        ("patching.path.subtasks", [10], r"config patching\.path\.subtasks: subtask 10 does not exist"),
        ("circuits.subtasks", [0, 11], r"config circuits\.subtasks: subtask 11 does not exist for dataset 'fict"),
        ("circuits.reference", "truthful", r"config circuits\.reference: 'truthful' is not an enabled dataset"),
        ("roles.datasets", ["nope"], r"config roles\.datasets: 'nope' is not an enabled dataset"),
        ("flow.subtasks", [0, 10], r"config flow\.subtasks: subtask 10 does not exist for dataset 'fictional'"),
        ("datasets.fictional.cot_skip", 2, r"config datasets\.fictional\.cot_skip: 2 skipped facts need at least "
                                           r"3 hops, the dataset has 2"),
    ]:
        bad = _base()
        cur = bad
        *head, last = key.split(".")
        for h in head:
            cur = cur[h]
        cur[last] = value
        with pytest.raises(ConfigError, match=msg):
            configcheck.check_cross(bad)
    ok = _base()
    ok["pairs"]["include_label"] = True  # the True/False step is subtask 10
    ok["patching"]["subtasks"] = [10]
    configcheck.check_cross(ok)
    ok["datasets"]["fictional"]["hops"] = 3  # 3 hops: 0..13 (the reference falseont still has 2)
    ok["circuits"]["subtasks"] = [13]
    with pytest.raises(ConfigError, match=r"circuits\.subtasks: subtask 13 does not exist for dataset 'falseont'"):
        configcheck.check_cross(ok)


def test_screened_patching_needs_one_shard():
    cfg = _base()
    cfg["patching"].update(method="screened", shards=1)
    configcheck.check_cross(cfg)
    cfg["patching"]["shards"] = 2
    with pytest.raises(ConfigError, match=r"^config patching\.shards: 2 with method screened; .* needs shards: 1$"):
        configcheck.check_cross(cfg)


def test_enabled_false_drops_a_dataset():
    cfg = _base()
    cfg["datasets"]["falseont"]["enabled"] = False
    out = configcheck.enabled_datasets(cfg)
    assert list(out) == ["fictional"] and "enabled" not in out["fictional"]
    cfg["datasets"]["fictional"]["enabled"] = False
    with pytest.raises(ConfigError, match="every dataset has enabled: false"):
        configcheck.enabled_datasets(cfg)


# ---------------------------------------------------------------------------------------------- Snakemake
@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return sr.copy_repo(tmp_path_factory.mktemp("cfg") / "repo")


def _smk(wd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*sr.SNAKEMAKE, *args], cwd=wd, env=sr.env_for(wd), capture_output=True, text=True,
                          timeout=timeout)


def _overlay(wd: Path, name: str, **changes) -> str:
    cfg = yaml.safe_load((wd / sr.SMOKE).read_text())
    cfg.update(changes)
    (wd / "config" / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return f"config/{name}"


HOSTILE = "res dir;touch PWNED;echo 'q\""


def test_every_shell_command_quotes_a_hostile_results_path(repo):
    """A results path with a space, quotes and a semicolon: every job's shell command, split as the shell splits
    it, keeps each path whole (no token 'touch', every token naming a result starts with the whole path)."""
    jobs = sr.dry_run_jobs(_overlay(repo, "hostile.yaml", results=HOSTILE), repo)
    assert len({j["rule"] for j in jobs}) > 20
    for j in jobs:
        if not j["shellcmd"]:
            continue
        toks = shlex.split(j["shellcmd"])
        assert "touch" not in toks and "PWNED" not in toks, j["shellcmd"]
        named = [t for t in toks if "PWNED" in t]
        # each path whole (whatever option it is part of) and alone (a list of files is not one joined token)
        assert all(t.count(HOSTILE) == 1 for t in named), toks
        assert all(o in toks for o in j["outputs"] if f"{o}" in j["shellcmd"] or shlex.quote(o) in j["shellcmd"])


def test_hostile_results_path_runs_make_tasks_and_executes_nothing(repo):
    """The issue's example, `--config 'results=out;touch PWNED;echo'`, and a path with a space and quotes: the
    make_tasks job runs, writes under that exact folder, and no command named in the path is executed."""
    # (Snakemake's --config parser drops a trailing '"', so the second path comes in a config file)
    issue = "out;touch PWNED;echo"
    for results, how in [(issue, ["--configfile", sr.SMOKE, "--config", f"results={issue}"]),
                         (HOSTILE, ["--configfile", _overlay(repo, "hostile.yaml", results=HOSTILE)])]:
        target = f"{results}/tasks/fictional.jsonl"
        p = _smk(repo, *how, "--cores", "1", target)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert (repo / target).stat().st_size > 0
        assert not list(repo.rglob("PWNED")), "a command from the results path ran"
        assert not (repo / "res").exists() and not (repo / "out").exists()


@pytest.mark.parametrize("overlay,message", [
    ({"seed": -1}, "config seed: -1 is less than the minimum of 0"),
    ({"model": {"device": "gpu"}}, "config model.device: 'gpu' does not match"),
    ({"patching": {"subtasks": [12]}}, "config patching.subtasks: subtask 12 does not exist for dataset 'fictional'"),
])
def test_bad_values_stop_snakemake_before_any_job(repo, overlay, message):
    """Not a dry run: Snakemake stops while reading the config, so no job runs and no results folder appears."""
    cfg = _overlay(repo, "bad.yaml", results="results-bad")
    extra = [f"{k}={json.dumps(v)}" for k, v in overlay.items()]
    p = _smk(repo, "--configfile", cfg, "--config", *extra, "--cores", "1")
    out = p.stdout + p.stderr
    assert p.returncode != 0 and message in out, out[-3000:]
    assert not (repo / "results-bad").exists()


def test_nested_config_numbers_arrive_as_numbers(repo):
    cfg = _overlay(repo, "nested.yaml")
    p = _smk(repo, "--configfile", cfg, "--config", "patching={n_pairs: 3, subtasks: [0, 5], shards: 1}",
             "--dry-run", "--forceall", "--printshellcmds", "--nolock")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    settings = [sr._settings_of(line) for line in out.splitlines() if "scripts/patch_heads.py --pairs" in line]
    assert settings and all(s["patching"]["n_pairs"] == 3 and s["patching"]["subtasks"] == [0, 5] for s in settings)
    p = _smk(repo, "--configfile", cfg, "--config", "patching={n_pairs: lots}", "--dry-run", "--nolock")
    msg = "config patching.n_pairs: 'lots' is not of type 'integer', 'null'"
    assert p.returncode != 0 and msg in p.stdout + p.stderr


def test_an_overlay_removes_a_dataset_with_enabled_false(repo):
    (repo / "config" / "drop.yaml").write_text("datasets:\n  falseont:\n    enabled: false\n"
                                               "circuits:\n  reference: fictional\n")
    jobs = sr.dry_run_jobs("config/drop.yaml", repo)  # merged over config.yaml (default study)
    tasks = [o for j in jobs if j["rule"] == "make_tasks" for o in j["outputs"]]
    assert tasks == ["results/tasks/fictional.jsonl"]
    assert not [j for j in jobs if any("falseont" in x for x in j["outputs"] + j["inputs"])]
    # still referenced by circuits.reference: named before anything runs
    (repo / "config" / "drop2.yaml").write_text("datasets:\n  falseont:\n    enabled: false\n")
    p = _smk(repo, "--configfile", "config/drop2.yaml", "--dry-run", "--nolock")
    msg = "config circuits.reference: 'falseont' is not an enabled dataset"
    assert p.returncode != 0 and msg in p.stdout + p.stderr
