"""cotmech.cli: the shared pieces of the scripts' front ends (settings, errors, model options, model loading)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cotmech import cli
from cotmech.io import RecordError
from cotmech.models import ModelSpecError, eager_attention
from cotmech.patch_results import PatchResult

REPO = Path(__file__).resolve().parents[1]
TINY = {"model": {"spec": "random:tiny-llama", "dtype": "float32", "device": "cpu"}}


def test_read_settings_accepts_an_object_and_names_the_argument_otherwise():
    assert cli.read_settings('{"seed": 3, "model": {"spec": "x"}}') == {"seed": 3, "model": {"spec": "x"}}
    with pytest.raises(RecordError, match=r"^--settings: not valid JSON: "):
        cli.read_settings("{seed: 3}")
    with pytest.raises(RecordError, match=r"^--config: expected a JSON object, got list$"):
        cli.read_settings("[1, 2]", where="--config")


def test_fail_reports_on_stderr_and_returns_2(capsys):
    assert cli.fail(ValueError("pairs.jsonl: line 3: missing key 'clean_ids'")) == 2
    assert cli.fail("horizon.layers [9] outside 0..3") == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == "error: pairs.jsonl: line 3: missing key 'clean_ids'\nerror: horizon.layers [9] outside 0..3\n"


def test_model_args_and_overrides():
    ap = cli.parser("doc")
    cli.add_model_args(ap)
    assert vars(ap.parse_args([])) == {"threads": 0}
    ap = cli.parser("doc")
    cli.add_model_args(ap, overrides=True)
    args = ap.parse_args(["--threads", "2", "--model", "random:x", "--dtype", "bfloat16"])
    assert vars(args) == {"threads": 2, "model": "random:x", "dtype": "bfloat16", "device": None, "bf16_matmul": None}


def test_load_from_args_uses_settings_then_overrides(capsys):
    threads = torch.get_num_threads()
    try:
        m = cli.load_from_args(argparse.Namespace(threads=1), TINY)
        assert (m.spec, m.n_layers, m.dtype) == ("random:tiny-llama", 4, torch.float32)
        assert torch.get_num_threads() == 1
        assert capsys.readouterr().out.startswith("loaded random:tiny-llama (torch.float32, cpu) in ")
        over = argparse.Namespace(threads=0, model="random:tiny-llama?num_hidden_layers=2", dtype="bfloat16",
                                  device=None)
        m = cli.load_from_args(over, TINY)
        assert (m.spec, m.n_layers, m.dtype) == ("random:tiny-llama?num_hidden_layers=2", 2, torch.bfloat16)
        # --model alone is enough (standalone use without a model in the settings)
        m = cli.load_from_args(argparse.Namespace(threads=0, model="random:tiny-llama", dtype=None, device="cpu"), {})
        assert m.n_layers == 4
    finally:
        torch.set_num_threads(threads)


def test_load_from_args_errors_name_where_the_model_comes_from():
    with pytest.raises(ModelSpecError, match=r"^--settings: missing 'model.spec'"):
        cli.load_from_args(argparse.Namespace(threads=0), {"seed": 1})
    with pytest.raises(ModelSpecError, match=r"^--settings/--model: missing 'model.spec'"):
        cli.load_from_args(argparse.Namespace(threads=0, model=None, dtype="float32", device=None), {})
    with pytest.raises(ModelSpecError, match=r"unknown key\(s\) in 'model': colour"):
        cli.load_from_args(argparse.Namespace(threads=0), {"model": {"spec": "random:tiny-llama", "colour": 1}})


def test_eager_attention_switches_and_restores(tiny_llama):
    cfg = tiny_llama.hf.config
    cfg_prev = cfg._attn_implementation
    tiny_llama.hf.set_attn_implementation("sdpa")
    try:
        with eager_attention(tiny_llama):
            assert cfg._attn_implementation == "eager"
        assert cfg._attn_implementation == "sdpa"
        with pytest.raises(RuntimeError), eager_attention(tiny_llama):
            raise RuntimeError("restored on errors too")
        assert cfg._attn_implementation == "sdpa"
    finally:
        tiny_llama.hf.set_attn_implementation(cfg_prev)


def test_empty_patch_result_has_the_model_shape_and_no_pairs():
    r = PatchResult.empty("exact", "kl", "denoise", 3, 5)
    assert (r.method, r.metric, r.direction, r.pair_ids, r.subtasks) == ("exact", "kl", "denoise", [], [])
    assert r.patched.shape == (0, 3, 5) and r.base.shape == (0,) and r.source.shape == (0,)
    assert r.per_pair_scores().shape == (0, 3, 5)


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_every_script_help_works_without_loading_a_model(script):
    run = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: {script}")
