"""run_info (cotmech.provenance): the resolved dtype/device are those load_model really uses, the machine and
library facts match independent readings, and the summary page shows them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cotmech import provenance, report
from cotmech.models import load_model

ROOT = Path(__file__).resolve().parents[1]
TINY = "random:tiny-llama?num_hidden_layers=1"


def _proc_cpu_name() -> str:
    text = Path("/proc/cpuinfo").read_text()
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else ""


@pytest.mark.parametrize("dtype,env,want", [
    ("float32", None, torch.float32),
    ("bfloat16", None, torch.bfloat16),
    ("auto", "bf16", torch.bfloat16),   # auto on CPU follows COTMECH_CPU_AUTO_DTYPE
    ("auto", "fp32", torch.float32),
])
def test_run_info_dtype_and_device_are_what_load_model_uses(monkeypatch, dtype, env, want):
    if env is None:
        monkeypatch.delenv("COTMECH_CPU_AUTO_DTYPE", raising=False)
    else:
        monkeypatch.setenv("COTMECH_CPU_AUTO_DTYPE", env)
    info = provenance.run_info({"name": "tiny", "spec": TINY, "dtype": dtype, "device": "cpu"})
    m = load_model(TINY, dtype=dtype, device="cpu")
    assert next(m.hf.parameters()).dtype == want  # the oracle: the weights load_model really produced
    assert info["dtype"] == str(want).removeprefix("torch.") and info["dtype_requested"] == dtype
    assert info["device"] == "cpu" and info["gpu"] is None
    assert info["cpu_auto_dtype_env"] == env
    assert info["spec"] == TINY and info["model_name"] == "tiny"


def test_run_info_machine_and_library_facts():
    import numpy
    import transformers

    info = provenance.run_info({"spec": TINY, "dtype": "float32", "device": "cpu"})
    if Path("/proc/cpuinfo").exists() and _proc_cpu_name():
        assert info["cpu"] == _proc_cpu_name()
    assert info["cpu"] and info["cpu"] != "unknown"
    libs = info["libraries"]
    assert libs["torch"] == torch.__version__.split("+")[0] or libs["torch"] == torch.__version__
    assert libs["transformers"] == transformers.__version__ and libs["numpy"] == numpy.__version__
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["cuda"] == torch.version.cuda
    assert json.loads(json.dumps(info)) == info  # JSON-serialisable as written


def _mres(tmp_path: Path) -> Path:
    m = tmp_path / "results" / "m"
    m.mkdir(parents=True)
    pd.DataFrame({"dataset": ["fictional"], "ontology": ["fictional"], "hops": ["2"], "n": [4], "correct": [1],
                  "accuracy": [0.25], "ci_low": [0.05], "ci_high": [0.7]}).to_csv(m / "accuracy.csv", index=False)
    return m


def test_run_info_script_and_summary_page_show_the_facts(tmp_path):
    m = _mres(tmp_path)
    settings = json.dumps({"model": {"name": "m", "spec": TINY, "dtype": "float32", "device": "cpu"}})
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
           "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(ROOT / "scripts/run_info.py"), "--settings", settings,
                    "--out", str(m / "run_info.json")], check=True, env=env, capture_output=True)
    info = json.loads((m / "run_info.json").read_text())
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    page = tmp_path / "summary.html"
    subprocess.run([sys.executable, str(ROOT / "scripts/paper_table.py"), "--mres", str(m), "--datasets",
                    "fictional", "--model-name", "m", "--model-spec", TINY, "--csv", str(tmp_path / "t.csv"),
                    "--claims", str(tmp_path / "c.csv"), "--html", str(page)], check=True, env=env, capture_output=True)
    text = page.read_text()
    run = text[text.index("<h2>Run</h2>"):]
    for fact in ("float32", "cpu", info["cpu"], f"<th>torch</th><td>{info['libraries']['torch']}</td>",
                 f"<th>transformers</th><td>{info['libraries']['transformers']}</td>"):
        assert fact in run, fact
    assert text.rstrip().endswith("</body></html>")


def test_summary_says_when_run_info_is_absent_and_rejects_a_broken_one(tmp_path):
    m = _mres(tmp_path)
    assert report.read_run_info(m) is None
    assert "run_info.json absent" in report.with_provenance("<html><body></body></html>", None)
    (m / "run_info.json").write_text("{not json")
    with pytest.raises(ValueError, match="run_info.json: not valid JSON"):
        report.read_run_info(m)
