"""Integration test against a REAL single-node SLURM on this machine.

The test installs slurm-wlm + munge if missing (apt-get, as root), starts a private munged/slurmctld/slurmd
(tests/slurm/start.sh: own key, socket, ports, spool and state under a temp dir), submits the smoke study through
the SLURM executor plugin with profiles/slurm, and checks that every non-local job ran as a SLURM job (external
job ids from Snakemake's log, each known to squeue as COMPLETED and launched by slurmd, each with its SLURM log
file) and that the tables equal those of a local run of the same config. The daemons are stopped at the end.
It skips (loudly) only where the packages cannot be installed.
"""
from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
import smokerun as sr  # noqa: E402

HERE = Path(__file__).parent / "slurm"
pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.xdist_group("smoke")]


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    inst = subprocess.run(["bash", str(HERE / "install.sh")], capture_output=True, text=True, timeout=900)
    if inst.returncode == 3:
        msg = ("!" * 20 + " SLURM INTEGRATION TEST SKIPPED: slurm-wlm/munge cannot be installed here ("
               + inst.stderr.strip()[-300:] + ") " + "!" * 20)
        warnings.warn(msg)
        print(msg, file=sys.stderr)
        pytest.skip(msg)
    assert inst.returncode == 0, f"tests/slurm/install.sh failed:\n{inst.stderr[-3000:]}"
    d = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(HERE / "start.sh"), str(d)], capture_output=True, text=True, timeout=120)
    try:
        assert start.returncode == 0, f"SLURM did not start:\n{start.stdout}\n{start.stderr}\n" + "\n".join(
            f"== {p}\n{p.read_text()[-2000:]}" for p in sorted((d / "log").glob("*.log")))
        yield d
    finally:
        subprocess.run(["bash", str(HERE / "stop.sh"), str(d)], capture_output=True, timeout=120)


def test_smoke_study_runs_as_slurm_jobs_and_matches_local_run(slurm_conf, tmp_path):
    local = sr.base_run()  # the same config run locally (shared with tests/test_workflow.py)
    wd = sr.copy_repo(tmp_path / "slurm-run")
    env = sr.env_for(wd, SLURM_CONF=str(slurm_conf / "slurm.conf"))
    env["PATH"] = f"{slurm_conf / 'bin'}:{env['PATH']}"  # srun shim that keeps the private config (start.sh)
    plan = sr.planned(wd)
    # this SLURM has no slurmdbd (no sacct, no accounts): poll squeue (MinJobAge is 3600 s there), no account
    run = sr.snakemake(wd, "--profile", "profiles/slurm", "--jobs", "4", "--slurm-no-account",
                       "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
                       env=env, timeout=3600)
    log = run.stdout + run.stderr
    local_rules = set(re.findall(r"^localrule (\w+):", log, re.M))
    ext_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    n_remote = sum(n for r, n in plan.items() if r not in local_rules)
    assert n_remote > 0 and len(ext_ids) == len(set(ext_ids)) == n_remote, \
        f"{len(ext_ids)} SLURM submissions for {n_remote} non-local jobs ({dict(plan)}; local {local_rules})"

    # every submitted job is known to SLURM as completed, was launched by slurmd and left its SLURM log
    q = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T"], env=env, capture_output=True,
                       text=True, check=True).stdout
    states = dict(line.split("|", 1) for line in q.split() if "|" in line)
    slurmd_log = (slurm_conf / "log" / "slurmd.log").read_text()
    slurm_logs = {p.stem for p in (wd / "results" / "logs" / "slurm").rglob("*.log")}
    for jid in ext_ids:
        assert states.get(jid) == "COMPLETED", f"SLURM job {jid}: state {states.get(jid)}"
        assert re.search(rf"batch job {jid}\b", slurmd_log), f"slurmd did not launch job {jid}"
        assert jid in slurm_logs, f"no SLURM log file for job {jid}"

    assert sr.planned(wd) == sr.Counter(), "after the SLURM run Snakemake still wants to run jobs"
    diffs = sr.compare_results(local, wd)
    assert not diffs, "SLURM results differ from the local run:\n" + "\n".join(diffs[:20])
