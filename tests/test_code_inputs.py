"""Each rule's code inputs are exactly the package files its script imports, directly or transitively.

`code_inputs` in workflow/rules/common.smk computes them from the script's import graph (an AST scan). Two independent
oracles check every job of the smoke DAG:
- the standard library's ``modulefinder`` (a bytecode scan, imports inside functions included) must find the same set
  of ``cotmech`` files;
- actually importing the script (without running it) must load no ``cotmech`` file that is not an input.
Editing a file that is an input reruns the rule (Snakemake's input trigger; tests/test_workflow.py checks that on a
real run), so together these say: editing a module reruns exactly the rules whose scripts import it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from modulefinder import ModuleFinder
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
import smokerun as sr  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


@pytest.fixture(scope="module")
def script_inputs() -> dict[str, set[str]]:
    """script -> the package files every job running it lists as inputs (the same for every job of a script)."""
    out: dict[str, set[str]] = {}
    for j in sr.dry_run_jobs("config/smoke.yaml"):
        scripts = [i for i in j["inputs"] if i.startswith("scripts/")]
        if not scripts:
            continue
        code = {i for i in j["inputs"] if i.startswith("src/cotmech/")}
        assert out.setdefault(scripts[0], code) == code, f"{j['rule']}: code inputs differ between jobs of {scripts[0]}"
    assert len(out) >= 15, sorted(out)
    return out


def _modulefinder(script: str) -> set[str]:
    finder = ModuleFinder(path=[str(SRC)])  # only our package is searched: third-party imports stay unresolved
    finder.run_script(str(REPO / script))
    return {str(Path(m.__file__).relative_to(REPO)) for name, m in finder.modules.items()
            if m.__file__ and name.split(".")[0] == "cotmech"}


def _imported(script: str) -> set[str]:
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('_rule_script', {str(REPO / script)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items()\n"
        "                        if n.split('.')[0] == 'cotmech' and getattr(m, '__file__', None))))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**sr.env_for(REPO), "PYTHONPATH": str(SRC)})
    assert p.returncode == 0, p.stderr[-3000:]
    return {str(Path(f).resolve().relative_to(REPO)) for f in json.loads(p.stdout.strip().splitlines()[-1])}


def test_code_inputs_equal_the_import_graph_of_each_script(script_inputs):
    for script, code in sorted(script_inputs.items()):
        modules = {c for c in code if c.endswith(".py")}
        assert modules == _modulefinder(script), (
            f"{script}: inputs {sorted(modules ^ _modulefinder(script))} differ from modulefinder's import graph")


def test_importing_a_script_loads_only_its_inputs(script_inputs):
    for script in ("scripts/probe.py", "scripts/knockout.py", "scripts/paper_table.py", "scripts/make_tasks.py"):
        missing = _imported(script) - script_inputs[script]
        assert not missing, f"{script} imports {sorted(missing)}, which are not inputs of its rule"


def test_package_data_files_are_inputs_of_the_rules_that_read_them(script_inputs):
    assert "src/cotmech/data/paper_numbers.yaml" in script_inputs["scripts/paper_table.py"]
    # make_tasks reads the config schema (dataset defaults, cotmech.config), not the paper's numbers
    assert {c for c in script_inputs["scripts/make_tasks.py"] if "/data/" in c} == {"src/cotmech/data/config.schema.yaml"}


def test_results_folders_are_ignored_as_folders_files_or_symlinks():
    """A results folder is often a symlink to scratch storage: git must ignore it in every form. A directory-only
    pattern (``/results-*/``) lets ``git add -A`` commit the symlink, and a later checkout of that commit deletes the
    real (ignored, hence expendable) results folder in another worktree."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("the repository's git metadata is needed to check .gitignore")
    for name in ("results", "results-findings", "results-validate"):
        got = subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=REPO)
        assert got.returncode == 0, f"{name} (as a file or symlink) is not ignored by .gitignore"
