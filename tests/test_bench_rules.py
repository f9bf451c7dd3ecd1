"""benchmarks/bench_rules.py on a tiny random model and a tiny config: every rule gives rows with positive times,
unit counts equal to counts made independently from the config (and make_pairs' own functions), and
estimate = seconds per unit × units."""
from __future__ import annotations

import csv
import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "seed": 3,
    "model": {"name": "tiny", "spec": "random:tiny-llama", "dtype": "float32", "device": "cpu"},
    "datasets": {"fictional": {"ontology": "fictional", "hops": 2, "style": "paper", "n": 6},
                 "falseont": {"ontology": "false", "hops": 2, "style": "paper", "n": 4}},
    "prompt": {"shots": 1},
    "generation": {"max_new_tokens": 6, "batch_size": 4},
    "pairs": {"require_correct": False},
    "activations": {"batch_size": 4},
    "patching": {"subtasks": [0, 2], "n_pairs": 2, "shards": 2, "n_boot": 20, "head_batch": 8,
                 "path": {"subtasks": [2], "n_pairs": 2, "n_senders": 2, "n_receivers": 2},
                 "induction": {"n": 2, "shots": 1, "require_correct": False, "max_candidates": 20}},
    "prior_shift": {"max_per_subtask": 2, "n_boot": 20},
    "tuned_lens": {"steps": 3, "time_limit_s": None},
    "roles": {"max_per_subtask": 2, "n_boot": 20},
    "circuits": {"subtasks": [0, 2], "n_examples": 4, "n_reference": 3, "steps": 3, "batch_size": 4},
    "probing": {"n_questions": 12, "shots": [0, 1], "max_epochs": 7, "patience": 3},
    "flow": {"n_examples": 1, "subtasks": [0, 2]},
    "horizon": {"n_examples": 2, "sentences": [0, 2], "layer_stride": 2, "max_new_tokens": 12},
}
L_TINY, H_TINY = 4, 4  # random:tiny-llama


def _bench():
    if "bench_rules" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_rules", REPO / "benchmarks" / "bench_rules.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_rules"] = mod  # before exec: its dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules["bench_rules"]


def _run(tmp_path: Path, cfg: dict, *extra: str) -> dict[tuple[str, str], dict]:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "rules.csv"
    assert _bench().main(["--config", str(path), "--threads", "1", "--out", str(out), *extra]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # estimate = per unit × units (per unit = seconds / units measured × scale); metadata present
        per, units, est = float(r["seconds_per_unit"]), float(r["units_at_scale"]), float(r["estimated_seconds"])
        assert float(r["seconds_measured"]) > 0 and float(r["units_measured"]) > 0, r
        assert per == pytest.approx(float(r["seconds_measured"]) / float(r["units_measured"]) * float(r["scale"]),
                                    rel=1e-9)
        assert est == pytest.approx(per * units, rel=1e-9, abs=1e-12)
        assert r["torch"] and r["dtype"] == "float32" and r["machine"] and r["date"] and "bench_rules" in r["command"]
    keyed = {(r["rule"], r["part"]): r for r in rows}
    assert len(keyed) == len(rows)
    return keyed


def _pair_counts(cfg: dict) -> dict[str, Counter]:
    """Pairs per subtask of every dataset, built as make_pairs does (gold CoTs: pairs.require_correct false)."""
    from cotmech.models import load_tokenizer
    from cotmech.pairs import build_pairs
    from cotmech.prontoqa.datasets import build_dataset
    from cotmech.prontoqa.prompts import build_prompt

    tok = load_tokenizer(cfg["model"]["spec"])
    out = {}
    for name, spec in cfg["datasets"].items():
        recs = [{**r, "prompt": build_prompt(r, shots=cfg["prompt"]["shots"])}
                for r in build_dataset(name, spec, cfg["seed"])]
        pairs, _ = build_pairs(recs, tok, name, cfg["seed"])
        out[name] = Counter(int(p["subtask"]) for p in pairs)
    return out


def test_every_rule_on_a_tiny_model(tmp_path):
    rows = _run(tmp_path, TINY)
    rules = {r for r, _ in rows}
    assert rules == set(_bench().RULES)

    def units(rule: str, part: str) -> float:
        return float(rows[(rule, part)]["units_at_scale"])

    c = _pair_counts(TINY)
    pc, cc = TINY["patching"], TINY["circuits"]
    assert all(c["fictional"][k] >= pc["n_pairs"] for k in pc["subtasks"])  # else the counts below need min()
    assert units("generate_cot", "generate") == sum(math.ceil(d["n"] / 4) for d in TINY["datasets"].values())
    assert units("extract_activations", "extract") == sum(sum(x.values()) for x in c.values())
    assert units("patch_heads", "exact") == units("patch_heads", "atp") == len(pc["subtasks"]) * pc["n_pairs"]
    assert units("path_patch", "path_patch") == len(pc["path"]["subtasks"]) * pc["path"]["n_pairs"]
    assert units("induction_cloze", "exact") == 3 * min(pc["induction"]["n"], pc["induction"]["max_candidates"])
    assert ("induction_cloze", "screen") not in rows  # require_correct false: no screening forwards
    # knockout: 4 clean pairs per subtask, split 2 ranking / 2 evaluation; 3 reference pairs per subtask;
    # rankings of config.yaml: direct, decision, copy (builtins) and patching (per-pair shards): 2 orderings each
    # (ranking and evaluation split) + induction (FD windows: at most window_widths 10 removed sets);
    # grid 0, 8, 16 of 16 heads -> 1 inner step per sorted ordering + "all heads" once = 8 + 10 + 1 removed sets
    # + 1 baseline
    assert units("knockout", "reference means") == len(cc["subtasks"]) * cc["n_reference"]
    assert units("knockout", "direct scores") == len(cc["subtasks"]) * cc["n_examples"]
    assert units("knockout", "writer/copy rankings") == len(cc["subtasks"]) * cc["n_examples"]  # once per subtask
    # segment-aligned means (the default): each removed set's shared prefix once, each evaluation suffix per set
    assert units("knockout", "ablated prefixes") == len(cc["subtasks"]) * (1 + 8 * 1 + 10 + 1)
    assert units("knockout", "ablated suffixes") == len(cc["subtasks"]) * 2 * (1 + 8 * 1 + 10 + 1)
    assert ("knockout", "ablated forwards") not in rows
    assert units("head_roles", "run_roles") == sum(min(2, n) for n in c["fictional"].values())
    assert units("prior_shift", "run_lenses") == sum(min(2, n) for x in c.values() for n in x.values())
    assert units("trace_flow", "trace_example") == 1
    assert units("horizon", "divergence_table") == 2
    n_shots, max_ep = len(TINY["probing"]["shots"]), TINY["probing"]["max_epochs"]
    assert units("probe", "fit linear") == units("probe", "fit mlp") == n_shots * (L_TINY + 1) * 2 * max_ep
    q = units("probe", "forwards")
    assert q % n_shots == 0 and 0 < q <= TINY["probing"]["n_questions"] * n_shots
    assert units("train_tuned_lens", "train") == 1  # measured at full size
    assert units("train_tuned_lens", "make_unembed") == 1 and units("prior_shift", "make_unembed") == 2
    # one load per job: 2 generate + 2 extract + 2 subtasks × 2 shards + path + induction + knockout (1 job per
    # subtask, + 1 cross_subtask) + roles (fictional) + flow + probe + horizon + tuned lens + 2 prior_shift
    n_ko = len(TINY["circuits"]["subtasks"]) + 1
    assert units("load_model", "load") == 2 + 2 + 4 + 1 + 1 + n_ko + 1 + 1 + 1 + 1 + 1 + 2
    peak = {r["peak_gpu_gib"] for r in rows.values()}
    assert peak == {""}  # CPU run: no GPU memory column


def test_knockout_units_under_bisection(tmp_path):
    """circuits.search: bisection counts, per ordering, ceil(log2(steps + 1)) decisions + 3 full evaluations over
    the non-baseline steps (capped by the exhaustive count); exhaustive counts every step."""
    def ablated(search: str, steps: int) -> float:
        cfg = {**TINY, "circuits": {**TINY["circuits"], "steps": steps, "search": search}}
        rows = _run(tmp_path, cfg, "--rules", "knockout")
        assert float(rows[("knockout", "ablated prefixes")]["units_at_scale"]) * n_eval == pytest.approx(
            float(rows[("knockout", "ablated suffixes")]["units_at_scale"]))
        return float(rows[("knockout", "ablated suffixes")]["units_at_scale"])

    n_sub, n_eval = len(TINY["circuits"]["subtasks"]), 2  # 4 clean pairs per subtask, half evaluated
    # 16 heads, 9 steps: grid 0, 2, ..., 16 -> 8 non-baseline steps per sorted ordering (7 inner + all heads);
    # 8 sorted orderings (4 rankings × 2 splits), induction: 10 FD windows
    assert ablated("exhaustive", 9) == n_sub * n_eval * (1 + 8 * 7 + 10 + 1)
    probes = lambda n: min(n, math.ceil(math.log2(n + 1)) + 3)  # noqa: E731
    assert probes(8) == 7 and probes(10) == 7
    assert ablated("bisection", 9) == n_sub * n_eval * (1 + 8 * probes(8) + probes(10))


def test_end_aligned_knockout_prices_whole_sequences(tmp_path):
    """circuits.mean_alignment: end runs every whole sequence per removed set (no shared ablated prefix): one
    "ablated forwards" row with the same sequence count as the suffix row of segment alignment."""
    cfg = {**TINY, "circuits": {**TINY["circuits"], "mean_alignment": "end"}}
    rows = _run(tmp_path, cfg, "--rules", "knockout")
    assert ("knockout", "ablated prefixes") not in rows and ("knockout", "ablated suffixes") not in rows
    assert float(rows[("knockout", "ablated forwards")]["units_at_scale"]) == len(cfg["circuits"]["subtasks"]) * 2 * (
        1 + 8 * 1 + 10 + 1)


def test_counts_scale_with_the_correct_share(tmp_path):
    """require_correct: --correct 0.5 keeps 3 of 6 examples; pairs built for 2 (--count-examples) and scaled."""
    cfg = {**TINY, "pairs": {"require_correct": True},
           "patching": {**TINY["patching"], "n_pairs": 5, "atp": False, "head_batch": 16}}
    rows = _run(tmp_path, cfg, "--rules", "patch_heads", "--correct", "fictional=0.5", "falseont=0.25",
                "--count-examples", "2", "--sample", "1")
    assert set(rows) == {("patch_heads", "exact")}
    c = _pair_counts(TINY)
    assert all(c["fictional"][k] == 6 for k in cfg["patching"]["subtasks"])  # one pair per example
    # min(n_pairs 5, 3 correct examples × 1 pair) per subtask
    assert float(rows[("patch_heads", "exact")]["units_at_scale"]) == 2 * 3
    assert float(rows[("patch_heads", "exact")]["units_measured"]) == 1


@pytest.mark.parametrize("config", ["config/paper.yaml", "config/scale.yaml", "config/smoke.yaml", "config.yaml",
                                    "config/findings.yaml"])
def test_config_without_snakemake_is_snakemakes(config):
    """The benchmark's config (cotmech.config.load, no Snakemake: the GPU image has none) is what Snakemake's own
    merge and schema validation give (the oracle), disabled datasets dropped as the workflow does."""
    import yaml
    from snakemake.utils import update_config, validate

    from cotmech import config as C
    from cotmech.configcheck import enabled_datasets

    want = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(want, yaml.safe_load((REPO / config).read_text()) or {})
    validate(want, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    want["datasets"] = enabled_datasets(want)
    assert C.load(REPO / config, REPO / "config.yaml") == want


def test_suffix_scale_against_an_explicit_fit():
    """bench_rules.suffix_scale: seconds 1, 2, 3 at suffixes 10, 20, 30 (a = 0, b = 0.1 s per token); the patched
    pairs have suffixes 5 and 50 -> predicted 0.5 -> floored at the cheapest sample (1.0) and 5.0, mean 3.0 over
    the sample's mean 2.0 = 1.5; one sample suffix: proportional."""
    br = _bench()

    assert br.suffix_scale([1.0, 2.0, 3.0], [10, 20, 30], [5, 50]) == pytest.approx(1.5)
    assert br.suffix_scale([1.0, 2.0, 3.0], [10, 20, 30], [10, 20, 30]) == pytest.approx(1.0)
    assert br.suffix_scale([2.0], [10], [5, 25]) == pytest.approx(1.5)
