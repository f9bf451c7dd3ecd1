"""Workflow guarantees on the smoke study (config/smoke.yaml): it runs end to end, an unchanged second invocation
does nothing, and a change reruns exactly the jobs that depend on it (and nothing else).

The expected job sets are computed independently of Snakemake's rerun logic: from the jobs Snakemake recorded
(``--detailed-summary``: each job's inputs, outputs and shell command, whose ``--settings`` JSON names the config
keys the job reads), we take the jobs that read the changed module / config key and everything downstream of them,
and compare with what ``snakemake --dry-run`` plans.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
import smokerun as sr  # noqa: E402



def e2e(f):
    """End-to-end test on the smoke run: slow, and on the xdist worker that holds the shared local run."""
    return pytest.mark.slow(pytest.mark.xdist_group("smoke")(f))

# modules every rule reads (a change there reruns everything by design)
SHARED_MODULES = {"src/cotmech/__init__.py", "src/cotmech/io.py"}


EDIT = "\n# edited by tests/test_workflow.py\n"


def _shared(path: str) -> bool:
    return any(path.endswith(m) for m in SHARED_MODULES)


def _without_all(c: Counter) -> Counter:
    return Counter({k: v for k, v in c.items() if k != "all"})


def _expected(jobs, seeds) -> Counter:
    return sr.rule_counts(sr.downstream(jobs, seeds))


def _set_key(cfg: dict, dotted: str, value) -> None:
    cur = cfg
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def _with_config_change(wd: Path, dotted: str, value) -> str:
    """Write config/smoke-changed.yaml = smoke config with one key changed; return its relative path."""
    cfg = yaml.safe_load((wd / sr.SMOKE).read_text())
    _set_key(cfg, dotted, value)
    rel = "config/smoke-changed.yaml"
    (wd / rel).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return rel


# --------------------------------------------------------------------------------------------------
@e2e
def test_smoke_study_completes_and_unchanged_rerun_does_nothing():
    wd = sr.base_run()
    jobs = sr.recorded_jobs(wd)
    assert jobs, "the smoke run recorded no jobs"
    for j in jobs:  # every recorded output exists and is non-empty
        for o in j.outputs:
            p = wd / o
            assert p.exists(), f"{j.rule}: output {o} missing after a successful run"
    assert sr.planned(wd) == Counter(), "an unchanged second invocation wants to rerun jobs"
    # every non-local rule follows the conventions: script input, settings param, code_inputs() code inputs
    steps = sr.step_of_rules(wd)
    for j in jobs:
        if steps.get(j.rule) is None or "scripts/" not in j.shellcmd:
            continue
        assert any(i.startswith("scripts/") for i in j.inputs), f"rule {j.rule} does not list its script as input"
        assert any("src/cotmech/" in i for i in j.inputs), f"rule {j.rule} does not depend on package sources (code_inputs())"


@e2e
def test_editing_a_module_reruns_exactly_its_dependents():
    wd = sr.clone_run("touch")
    jobs = sr.recorded_jobs(wd)
    modules = sorted({i for j in jobs for i in j.inputs if "src/cotmech/" in i and not _shared(i)})
    used = {m: [j for j in jobs if m in j.inputs] for m in modules}
    analysis = [m for m in modules if 0 < len(used[m]) < len(jobs)]
    assert analysis, f"no module is read by only part of the DAG: {modules}"
    # a bare touch (same content) reruns nothing: Snakemake 9 compares the recorded checksums of small inputs
    path = wd / analysis[0]
    os.utime(path, (path.stat().st_atime, time.time() + 5))
    assert sr.planned(wd) == Counter(), f"touching {analysis[0]} without changing it reruns jobs"
    # one module per distinct set of readers (modules read by the same jobs have the same expectation)
    by_readers = {}
    for m in analysis:
        by_readers.setdefault(frozenset(id(j) for j in used[m]), m)
    for m in by_readers.values():
        path = wd / m
        st, text = path.stat(), path.read_text()
        path.write_text(text + EDIT)  # an edit: Snakemake 9 ignores a bare touch when the checksum is unchanged
        try:
            got = _without_all(sr.planned(wd))
        finally:
            path.write_text(text)
            os.utime(path, (st.st_atime, st.st_mtime))
        want = _expected(jobs, used[m])
        assert got == want, f"touching {m}: snakemake plans {dict(got)}, dependents are {dict(want)}"
    assert sr.planned(wd) == Counter()


@e2e
def test_changing_the_number_of_examples_reruns_from_the_tasks_on():
    wd = sr.clone_run("n")
    cfg = yaml.safe_load((wd / sr.SMOKE).read_text())
    ds = sorted(cfg["datasets"])[0]
    changed = _with_config_change(wd, f"datasets.{ds}.n", int(cfg["datasets"][ds]["n"]) - 1)
    got = _without_all(sr.planned(wd, config=changed))
    want = sr.affected_by_config_change(wd, sr.SMOKE, changed)
    assert got == want, f"changing datasets.{ds}.n: plans {dict(got)}, dependents are {dict(want)}"
    assert got["make_tasks"] == 1, f"only the {ds} tasks should be remade: {dict(got)}"


@e2e
def test_changing_a_plotting_option_reruns_only_figures_and_report():
    wd = sr.clone_run("plot")
    steps = sr.step_of_rules(wd)
    cfg = yaml.safe_load((wd / sr.SMOKE).read_text())
    if "figures" not in cfg or not {"figures", "report"} & set(steps.values()):
        pytest.skip("LOUD: no figures step/config in the DAG - plotting-option rerun guarantee not checked")
    key, val = next((f"figures.{k}", v) for k, v in sorted(cfg["figures"].items())
                    if isinstance(v, int) and not isinstance(v, bool))
    changed = _with_config_change(wd, key, val + 1)
    got = _without_all(sr.planned(wd, config=changed))
    want = sr.affected_by_config_change(wd, sr.SMOKE, changed)
    assert got == want, f"changing {key}: plans {dict(got)}, dependents are {dict(want)}"
    assert got, f"changing {key} reruns nothing"
    assert {steps.get(r) for r in got} <= {"figures", "report"}, f"{key} reruns {dict(got)}"


def _shard_jobs(jobs):
    """Jobs of the sharded rule: among rules whose jobs are independent of each other, the one whose outputs are
    named shards (`...shard<i>...`, as patch_heads writes), else the one with most jobs."""
    by_rule: dict[str, list] = {}
    for j in jobs:
        by_rule.setdefault(j.rule, []).append(j)
    cands = []
    for rule, js in by_rule.items():
        outs = {o for j in js for o in j.outputs}
        if len(js) >= 2 and not any(i in outs for j in js for i in j.inputs):
            named = any(re.search(r"shard\d", o) for o in outs)
            cands.append((named, len(js), rule))
    if not cands:
        return None, []
    *_, rule = max(cands)
    return rule, by_rule[rule]


def _remove_outputs(wd: Path, jobs) -> None:
    for j in jobs:
        for o in j.outputs:
            (wd / o).unlink(missing_ok=True)


def _kill_job_process(proc: subprocess.Popen, workdir: Path, marker: str, timeout: float = 1200) -> bool:
    """SIGKILL the Python process of the job (running in ``workdir``) whose command line contains ``marker`` as soon
    as it runs, as the kernel's OOM killer would; False if ``proc`` ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
                here = os.readlink(d / "cwd") == str(workdir.resolve())
            except OSError:
                continue
            if here and argv and Path(argv[0]).name.startswith("python") and any(marker in a for a in argv):
                try:
                    os.kill(int(d.name), signal.SIGKILL)
                    return True
                except ProcessLookupError:
                    continue
        time.sleep(0.05)
    return False


@e2e
def test_a_failed_shard_reruns_alone():
    """A run has to make every shard (their outputs and everything downstream are not there yet); one shard's process
    is killed (a real job failure) and, with --keep-going, the others finish. The failed shard leaves no output, the
    finished ones are kept, and the next run plans exactly the failed shard and what depends on it.

    (Deleting one finished shard of a complete run is not the same situation: Snakemake 9 does not remake a missing
    intermediate file whose consumers are up to date. After a real failure, the shard's dependents have not run.)"""
    wd = sr.clone_run("shard")
    jobs = sr.recorded_jobs(wd)
    rule, shards = _shard_jobs(jobs)
    assert rule and len(shards) >= 2, "no rule with several independent jobs in the smoke DAG"
    victim = shards[len(shards) // 2]
    _remove_outputs(wd, sr.downstream(jobs, shards))
    assert _without_all(sr.planned(wd)) == _expected(jobs, shards)
    log = wd / "failing-run.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(["nice", "-n", "5", *sr.SNAKEMAKE, "--configfile", sr.SMOKE, "--cores", "2",
                                 "--keep-going"], cwd=wd, env=sr.env_for(wd), stdout=fh, stderr=subprocess.STDOUT)
        try:
            killed = _kill_job_process(proc, wd, victim.outputs[0])
            rc = proc.wait(timeout=3600)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = log.read_text()
    assert killed, f"the {rule} job writing {victim.outputs[0]} never ran:\n{out[-3000:]}"
    assert rc != 0 and f"Error in rule {rule}" in out, out[-4000:]
    assert not any((wd / o).exists() for o in victim.outputs), "a failed shard left output behind"
    others = [j for j in shards if j is not victim]
    assert all((wd / o).exists() for j in others for o in j.outputs), "the shards that did not fail are incomplete"
    got = _without_all(sr.planned(wd))
    want = _expected(jobs, [victim])
    assert got == want, f"after one {rule} job failed: plans {dict(got)}, expected {dict(want)}"
    assert got[rule] == 1


def _incomplete_outputs(wd: Path) -> set[str]:
    import base64

    d = wd / ".snakemake" / "incomplete"
    out = set()
    for f in d.rglob("*") if d.exists() else []:
        if f.is_file():  # Snakemake's record path: urlsafe base64 of the output, long ids split as @part/.../last
            b64 = "".join(part.lstrip("@") for part in f.relative_to(d).parts)
            try:
                out.add(base64.urlsafe_b64decode(b64.encode()).decode())
            except Exception:  # noqa: BLE001 - a foreign file (e.g. migration_underway)
                continue
    return out


@e2e
def test_sigkill_mid_run_is_recovered_by_rerun_incomplete():
    """Kill Snakemake and its running job with SIGKILL while the sharded rule runs: the interrupted job's output
    is not trusted (a partial output makes a plain run refuse; with atomic writes there is usually none and a plain
    run redoes the job), --rerun-incomplete redoes it, finished shards are kept, and the recovered results equal the
    uninterrupted run's."""
    wd = sr.clone_run("kill")
    jobs = sr.recorded_jobs(wd)
    rule, shards = _shard_jobs(jobs)
    assert rule and len(shards) >= 2
    # all shards must be made, as in a first run: their outputs and everything downstream of them are not there yet
    # (Snakemake 9 would not remake the shards' outputs alone while their consumers are up to date)
    want_all = _expected(jobs, shards)
    _remove_outputs(wd, sr.downstream(jobs, shards))
    env = sr.env_for(wd)
    proc = subprocess.Popen(["nice", "-n", "5", *sr.SNAKEMAKE, "--configfile", sr.SMOKE, "--cores", "1"], cwd=wd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def done_shards():
        return [j for j in shards if all((wd / o).exists() for o in j.outputs)
                and not set(j.outputs) & _incomplete_outputs(wd)]

    try:
        deadline = time.time() + 1200
        while time.time() < deadline and proc.poll() is None:
            if done_shards() and _incomplete_outputs(wd):
                break  # at least one shard finished and another job is running
            time.sleep(0.2)
        assert proc.poll() is None, "snakemake finished before it could be interrupted"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    sr.snakemake(wd, "--unlock")  # a killed Snakemake leaves its lock (the documented way to lift it)
    incomplete = _incomplete_outputs(wd)
    finished = done_shards()
    assert incomplete, "the interrupted job left no incomplete marker"
    assert finished, "no shard finished before the kill"

    # the interrupted job's outputs: a partial one on disk must make a plain run refuse; outputs are written
    # atomically (temporary file + rename), so usually there is none, and a plain run simply makes them
    interrupted = [j for j in jobs if set(j.outputs) & incomplete]
    assert interrupted, f"incomplete markers {sorted(incomplete)} belong to no job"
    plain = sr.snakemake(wd, "--dry-run", check=False)
    plain_out = plain.stdout + plain.stderr
    if any((wd / o).exists() for o in incomplete):
        assert plain.returncode != 0 and "incomplete" in plain_out.lower(), \
            "a plain run trusts the partial output of a killed job"
    else:
        assert plain.returncode == 0, plain_out[-4000:]
        for j in interrupted:
            assert re.search(rf"^\s+output: .*{re.escape(j.outputs[0])}", plain_out, re.M), \
                f"a plain run does not redo the killed {j.rule} job:\n{plain_out[-4000:]}"
    got = _without_all(sr.planned(wd, "--rerun-incomplete"))
    assert got[rule] == len(shards) - len(finished), \
        f"{len(finished)} of {len(shards)} {rule} jobs finished, but {got[rule]} would rerun"
    assert set(got) <= set(want_all), dict(got)
    sr.snakemake(wd, "--cores", "2", "--rerun-incomplete")
    assert sr.planned(wd) == Counter()
    diffs = sr.compare_results(sr.base_run(), wd)
    assert not diffs, "results after recovery differ from the uninterrupted run:\n" + "\n".join(diffs[:20])


# --------------------------------------------------------------------------------------------------
# Configs and cluster resources (forced dry runs; no job runs)
CONFIGS = ["config.yaml", "config/smoke.yaml", "config/paper.yaml", "config/scale.yaml", "config/findings.yaml"]


@pytest.fixture(scope="module")
def dags():
    return {c: sr.dry_run_jobs(c) for c in CONFIGS}


def test_every_config_validates_and_smoke_covers_the_whole_dag(dags):
    for c, jobs in dags.items():
        assert any(j["rule"] == "make_tasks" for j in jobs), f"{c}: no task jobs in the DAG"
    full = {j["rule"] for j in dags["config.yaml"]}
    from cotmech import config as cfgmod

    for c in CONFIGS[1:]:
        # patching.atp: false switches off AtP and its comparison with exact patching (and nothing else)
        off = set() if cfgmod.load(sr.REPO / c, sr.REPO / "config.yaml")["patching"]["atp"] else {"merge_atp",
                                                                                               "atp_vs_exact"}
        assert {j["rule"] for j in dags[c]} == full - off, f"{c} does not run the same rules as the default study"


def _model_jobs(jobs):
    """Jobs that run the model: they read the model settings and declare a GPU or take 2 threads (DESIGN.md);
    jobs that only need its tokenizer (e.g. pairs) declare neither."""
    return [j for j in jobs if not j["local"] and any(k == "model" or k.startswith("model.") for k in j["settings"])
            and ("gpu" in j["resources"] or j["threads"] >= 2)]


@pytest.mark.parametrize("config,params_b,bytes_per,gpu", [
    ("config/paper.yaml", 6.7, 4, 1),      # Llama-2-7B (6.74e9 parameters), fp32, GPU
    ("config/scale.yaml", 6.7, 4, 1),      # the same shape, random weights
    ("config.yaml", 1.5, 4, 1),            # Qwen2.5-Coder-1.5B, fp32 (pinned for comparability)
    ("config/smoke.yaml", 0.0, 4, 0),      # tiny random model on the CPU: no GPU
    ("config/findings.yaml", 1.5, 2, 1),   # Qwen2.5-Coder-1.5B, bf16 (pinned), device auto
])
def test_model_jobs_ask_for_gpu_memory_and_time_from_the_model_size(dags, config, params_b, bytes_per, gpu):
    jobs = _model_jobs(dags[config])
    if not jobs:
        pytest.skip(f"LOUD: no model-running rule in the DAG yet ({config}) - cluster resources not checked")
    for j in jobs:
        res = j["resources"]
        where = f"{config}: rule {j['rule']} resources {res}"
        assert res.get("gpu", 0) == gpu, where
        assert "mem_mb" in res and res["mem_mb"] * 2**20 >= params_b * 1e9 * bytes_per, where
        assert "runtime" in res and res["runtime"] >= 1, where
        if gpu:  # and within one 80 GB node's share for a 7B model
            assert res["mem_mb"] < 80_000, where


# --------------------------------------------------------------------------------------------------
# The interpreter of the jobs
def test_jobs_run_under_snakemakes_interpreter_whatever_the_path(tmp_path):
    """Shell commands call `python`: the workflow puts the bin folder of the interpreter running Snakemake first on
    PATH (and the checkout's src/ on PYTHONPATH), so a job runs this environment's Python even when the caller's PATH
    holds no or another Python (here: only the system folders)."""
    wd = sr.copy_repo(tmp_path / "repo")
    env = {k: v for k, v in sr.env_for(wd).items() if k != "PYTHONPATH"}
    env["PATH"] = "/usr/bin:/bin"
    target = f"{sr.smoke_results_dir()}/tasks/fictional.jsonl"
    p = subprocess.run([*sr.SNAKEMAKE, "--configfile", sr.SMOKE, "--cores", "1", target], cwd=wd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"the job did not run under {sys.executable}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "Shell command: python scripts/make_tasks.py" in p.stdout + p.stderr
    assert (wd / target).stat().st_size > 0


# --------------------------------------------------------------------------------------------------
# snakemake --lint
def _lint(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*sr.SNAKEMAKE, "--lint", "--nolock"], cwd=workdir, env=sr.env_for(workdir),
                          capture_output=True, text=True, timeout=300)


def test_lint_is_clean_on_the_default_config():
    p = _lint(sr.REPO)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "Lints for" not in out, f"snakemake --lint reports findings:\n{out[-6000:]}"
    assert "in a good condition" in out, out[-3000:]


def test_lint_check_sees_a_linted_rule_file(tmp_path):
    """The check above can fail: a rule file that mixes a function with rules and a rule that uses a global in its
    shell command and has no conda env make --lint exit non-zero, naming them."""
    wd = sr.copy_repo(tmp_path / "repo")
    f = wd / "workflow" / "rules" / "probing.smk"
    f.write_text(f.read_text() + '\n\ndef _helper(w):\n    return []\n\n\nrule linted:\n    output:\n'
                 '        "x.txt",\n    log:\n        "x.log",\n    shell:\n        "echo {MODEL} > {output}"\n')
    p = _lint(wd)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out[-3000:]
    for finding in ("Mixed rules and functions in same snakefile", "Shell command directly uses variable MODEL",
                    "Specify a conda environment or container for each rule"):
        assert finding in out, f"--lint did not report {finding!r}:\n{out[-3000:]}"


# --------------------------------------------------------------------------------------------------
# The helpers the guarantees rest on
def test_compare_results_finds_differences_and_ignores_wall_clock(tmp_path):
    import json

    import pandas as pd

    for name, secs in [("a", 1.0), ("b", 9.0)]:
        r = tmp_path / name / "res"
        r.mkdir(parents=True)
        pd.DataFrame({"layer": [0, 1], "score": [0.5, 0.25], "elapsed_s": [secs, secs]}).to_parquet(r / "t.parquet")
        (r / "m.json").write_text(json.dumps({"n": 3, "wall_time": secs}))
        (r / "logs").mkdir()
        (r / "logs" / "x.json").write_text(json.dumps({"n": secs}))  # logs are not results
    assert sr.compare_results(tmp_path / "a", tmp_path / "b", "res") == []
    pd.DataFrame({"layer": [0, 1], "score": [0.5, 0.3], "elapsed_s": [1.0, 1.0]}).to_parquet(
        tmp_path / "b" / "res" / "t.parquet")
    (tmp_path / "b" / "res" / "extra.csv").write_text("x\n1\n")
    diffs = sr.compare_results(tmp_path / "a", tmp_path / "b", "res")
    assert len(diffs) == 2 and any("t.parquet" in d for d in diffs) and any("only in b: extra.csv" in d for d in diffs)


def test_downstream_follows_outputs_to_consumers():
    jobs = [sr.Job("tasks", ["t"], [], ""), sr.Job("gen", ["g"], ["t"], ""), sr.Job("shard", ["s0"], ["g"], ""),
            sr.Job("shard", ["s1"], ["g"], ""), sr.Job("merge", ["m"], ["s0", "s1"], ""), sr.Job("other", ["o"], ["t"], "")]
    assert sr.rule_counts(sr.downstream(jobs, [jobs[2]])) == Counter({"shard": 1, "merge": 1})
    assert sr.rule_counts(sr.downstream(jobs, [jobs[1]])) == Counter({"gen": 1, "shard": 2, "merge": 1})
    assert sr.rule_counts(sr.downstream(jobs, [jobs[0]])) == Counter(r.rule for r in jobs)
    assert sr.uses_key(sr.Job("x", [], [], "", {"figures": {}}), "figures.flow_trees")
    assert not sr.uses_key(sr.Job("x", [], [], "", {"datasets.a": {}}), "datasets.ab.n")


def test_shard_detection_prefers_shard_named_outputs():
    jobs = [sr.Job("report_gallery", [f"g{i}.png"], ["x"], "") for i in range(10)]
    jobs += [sr.Job("patch_heads", [f"p/subtask{k}.shard{i}.safetensors"], ["pairs"], "") for k in (0, 5) for i in (0, 1)]
    rule, shards = _shard_jobs(jobs)
    assert rule == "patch_heads" and len(shards) == 4
    assert _shard_jobs(jobs[:10])[0] == "report_gallery"
    assert _shard_jobs([sr.Job("a", ["x"], [], ""), sr.Job("a", ["y"], ["x"], "")]) == (None, [])
