"""Prior shift: context-free prior, real-world answers, crossover detector, seeded cluster bootstrap."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cotmech.batching import last_logits, left_pad
from cotmech.io import read_json, read_table, save_tensors, write_jsonl, write_table
from cotmech.models import task_tokenizer
from cotmech.prior_shift import (RIFT_LEVEL, boot_mean, bootstrap_weights, context_free_ids, crossover_layer,
                                 layer_table, prior_logprobs, real_world_answer, real_world_word, rift_summary)
from cotmech.stats import first_crossing

QUESTION = "Jompus is fast. Tumpuses are jompuses. Sam is tumpus."
PROMPT = f"### Input:\n{QUESTION} True or false: Sam is fast. Let us think step by step.\n### Response:\n"


@pytest.mark.parametrize("response, expected", [
    ("", "### Response:\n"),
    ("Sam is", "Sam is"),
    ("Sam is tumpus.", "Sam is tumpus."),
    ("Sam is tumpus. Tumpuses are", " Tumpuses are"),
])
def test_context_free_prior_contains_no_context_tokens(response, expected):
    tok = task_tokenizer(512)
    clean = tok.encode(PROMPT + response, add_special_tokens=False)
    prior = context_free_ids(clean, tok)
    assert tok.decode(prior) == expected
    assert clean[len(clean) - len(prior):] == prior  # the same last tokens, nothing else
    # no token position of the question (or anything before the current sentence) is included
    q_end = len(tok.encode(PROMPT[:PROMPT.index("True or false")], add_special_tokens=False))
    assert len(clean) - len(prior) >= q_end
    assert not any(w in tok.decode(prior) for w in ("Jompus", "fast", "True or false", "step"))


def test_context_free_prior_keeps_bos():
    tok = task_tokenizer(512)
    ids = [tok.bos_token_id] + tok.encode("Sam is tumpus. Tumpuses are", add_special_tokens=False)
    prior = context_free_ids(ids, tok)
    assert prior[0] == tok.bos_token_id and tok.decode(prior[1:]) == " Tumpuses are"


def test_prior_logprobs_match_unpadded_forwards(tiny_qwen2):
    seqs = [[5, 9, 11], [4, 4, 7, 100, 3], [42]]
    lp = prior_logprobs(tiny_qwen2, seqs, batch_size=2)
    for i, s in enumerate(seqs):
        ref = torch.log_softmax(last_logits(tiny_qwen2, left_pad([s], 0)), -1)[0]
        torch.testing.assert_close(lp[i], ref, atol=1e-4, rtol=1e-4)


def test_real_world_answer_rule():
    assert real_world_word("Vertebrates are", "carnivores") == "animals"
    assert real_world_word("Rex is cow. Cows are", "felines") == "mammals"
    assert real_world_word("Cat is", "dog") == "feline"
    assert real_world_word("Cats are", "felines") is None  # the in-context fact is true in reality
    assert real_world_word("Rex is", "carnivore") is None  # subject is an entity
    assert real_world_word("Carnivore is", "spicy") is None  # property answer
    assert real_world_word("Integers are", "negative numbers") == "real numbers"
    tok = task_tokenizer(512)
    aid = tok.encode(" carnivores", add_special_tokens=False)[0]
    rid = real_world_answer("Vertebrates are", "carnivores", aid, tok)
    assert rid == tok.encode(" animals", add_special_tokens=False)[0]
    assert real_world_answer("Rex is", "carnivore", aid, tok) == -1


def test_crossover_detector_on_synthetic_curves():
    L = 20
    x = np.arange(L + 1)
    in_ctx = 1.0 - x / L            # falls to 0 at the last layer
    prior = 0.2 + 0.6 * x / L       # rises
    expected = int(np.argmax(in_ctx < prior))
    assert crossover_layer(in_ctx, prior) == expected == 11  # 1 - x/20 < 0.2 + 0.03x  <=>  x > 10
    wobble = in_ctx.copy()
    wobble[15] = 0.99                # crosses back above once: the sustained crossover is after it
    assert crossover_layer(wobble, prior) == 16
    assert crossover_layer(prior + 1.0, prior) is None  # never below
    assert crossover_layer(np.r_[in_ctx[:-1], np.nan], prior) is None
    with pytest.raises(ValueError):
        crossover_layer(in_ctx, prior[:-1])


def test_bootstrap_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"ex{i}" for i in range(30)], 3)
    vals = rng.normal(1.0, 1.0, size=(90, 4))
    a = boot_mean(vals, *bootstrap_weights(groups, 200, seed=7))
    b = boot_mean(vals, *bootstrap_weights(groups, 200, seed=7))
    c = boot_mean(vals, *bootstrap_weights(groups, 200, seed=8))
    np.testing.assert_array_equal(a["ci_low"], b["ci_low"])
    np.testing.assert_array_equal(a["ci_high"], b["ci_high"])
    assert not np.array_equal(a["ci_low"], c["ci_low"])
    np.testing.assert_allclose(a["mean"], vals.mean(0))
    assert np.all((a["ci_low"] < a["mean"]) & (a["mean"] < a["ci_high"]))


def _synthetic_rows(rift: int, L: int, n_ex: int, seed: int, prefer=(0.15, 0.85)) -> pd.DataFrame:
    """Per-pair curves: the lens prefers the in-context answer over the prior's token with probability prefer[0]
    below ``rift`` and prefer[1] from it on; the in-context divergence JS(lens || final) falls to 0 at the last
    layer (lens convergence) and drops below the prior one at ``rift``."""
    rng = np.random.default_rng(seed)
    recs = []
    for e in range(n_ex):
        for st in range(2):
            noise = rng.normal(0, 0.02, size=(2, L + 1))
            x = np.arange(L + 1)
            js_final = np.clip(0.9 - 0.9 * x / L + noise[0], 0, 1)
            js_final[-1] = 0.0
            js_prior = np.clip(js_final + np.where(x < rift, -0.15, 0.15) + noise[1], 0, 1)
            top1 = (x >= rift).astype(float)
            pref = (rng.random(L + 1) < np.where(x >= rift, prefer[1], prefer[0])).astype(float)
            for layer in x:
                recs.append(dict(lens="logit", pair_id=f"e{e}-k{st}", example_id=f"e{e}", subtask=st, layer=layer,
                                 js_final=js_final[layer], js_prior=js_prior[layer], top1_in_context=top1[layer],
                                 prefers_context=pref[layer], p_answer=0.1, rank_answer=3.0, topk_context_mass=0.5,
                                 p_real=np.nan, p_real_minus_answer=np.nan))
    return pd.DataFrame(recs)


def test_first_crossing_on_synthetic_curves():
    nan = float("nan")
    assert RIFT_LEVEL == 0.5
    assert first_crossing([0.2, 0.4, 0.55, 0.3, 0.9], RIFT_LEVEL) == 2  # the first layer at or above 0.5, not the sustained one
    assert first_crossing([nan, 0.5], RIFT_LEVEL) == 1 and first_crossing([0.1, nan, 0.49], RIFT_LEVEL) is None


def test_rift_summary_finds_planted_rift_with_ci():
    rows = _synthetic_rows(rift=11, L=24, n_ex=25, seed=1)
    s = rift_summary(rows, n_layers=24, n_boot=200, seed=5)
    wide = rows.pivot(index="pair_id", columns="layer", values="prefers_context").to_numpy()
    curve = wide.mean(0)  # explicit mean over pairs
    assert s["prefers_context"] == pytest.approx(curve.tolist())
    assert s["rift_layer"] == 11 == next(i for i, v in enumerate(curve) if v >= 0.5)
    assert s["rel_depth"] == pytest.approx(11 / 24)
    assert s["ci_low"] <= 11 <= s["ci_high"] and s["ci_high"] - s["ci_low"] <= 4
    assert s["n_examples"] == 25 and s["n_pairs"] == 50
    assert s["context_abidance_rift"]["below"]["mean"] == 0.0
    assert s["context_abidance_rift"]["above"]["mean"] == 1.0
    mid = s["context_abidance_midpoint"]
    assert mid["below"]["mean"] == pytest.approx(1 / 12) and mid["above"]["mean"] == 1.0
    assert s["js_crossover_layer"] == 11  # the old definition, reported for reference
    assert rift_summary(rows, n_layers=24, n_boot=200, seed=5) == s  # seeded


def test_lens_rift_is_not_forced_by_convergence_to_the_final_layer():
    """The lens converges to the final distribution (JS(lens || final) -> 0 at L, below the prior divergence from
    the middle on) but never prefers the in-context answer over the prior's prediction: the old JS crossover still
    reports a 'rift', the lens rift does not."""
    rows = _synthetic_rows(rift=12, L=24, n_ex=20, seed=3, prefer=(0.1, 0.2))
    s = rift_summary(rows, n_layers=24, n_boot=100, seed=5)
    assert s["js_crossover_layer"] == 12  # forced: the in-context divergence is 0 at the last layer
    assert s["rift_layer"] is None and s["n_boot_no_crossover"] > 50  # resamples cross only by noise
    assert max(s["prefers_context"]) < 0.5
    # a late but genuine preference is found where it is planted, not where the lens converges
    late = _synthetic_rows(rift=20, L=24, n_ex=20, seed=3)
    assert rift_summary(late, n_layers=24, n_boot=50, seed=5)["rift_layer"] == 20


def test_layer_table_shape():
    rows = _synthetic_rows(rift=5, L=8, n_ex=6, seed=2)
    t = layer_table(rows, n_layers=8, n_boot=50, seed=0)
    assert set(t["subtask"]) == {-1, 0, 1}
    one = t[(t.subtask == -1) & (t.metric == "top1_in_context")].sort_values("layer")
    np.testing.assert_array_equal(one["mean"], (np.arange(9) >= 5).astype(float))
    assert (one["n"] == 12).all() and np.allclose(one["rel_depth"], np.arange(9) / 8)


# --------------------------------------------------------------------------------------------------
# End to end on a tiny random model: activations -> tuned lens -> prior shift -> rift -> head roles (scripts)
# --------------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
SPEC = "random:tiny-llama"
SETTINGS = {"model": {"spec": SPEC, "dtype": "float32", "device": "cpu"}, "seed": 11,
            "prior_shift": {"max_per_subtask": 3, "top_k": 5, "n_boot": 50, "ci": 0.9, "prior_batch_size": 4},
            "tuned_lens": {"rank": 2, "steps": 5, "batch": 4, "lr": 0.01, "val_frac": 0.34, "time_limit_s": 60},
            "roles": {"max_per_subtask": 2, "top_frac": 0.2, "n_boot": 20, "ci": 0.9}}
EXAMPLES = [("Carnivore is spicy. Vertebrates are carnivores. Rex is vertebrate.",
             "Rex is vertebrate. Vertebrates are carnivores. Rex is carnivore. Carnivore is spicy. Rex is spicy."),
            ("Cow is sour. Sheep are cows. Max is sheep.",
             "Max is sheep. Sheep are cows. Max is cow. Cow is sour. Max is sour."),
            ("Dog is blue. Mammals are dogs. Fae is mammal.",
             "Fae is mammal. Mammals are dogs. Fae is dog. Dog is blue. Fae is blue.")]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pairs():
    tok = task_tokenizer(512)
    out = []
    for e, (question, cot) in enumerate(EXAMPLES):
        prompt = f"### Input:\n{question} True or false: x. Let us think step by step.\n### Response:\n"
        words = cot.split()
        for k in (0, 2, 3, 5):
            prefix = " ".join(words[:k])
            clean = prompt + prefix
            ids = tok.encode(clean, add_special_tokens=False)
            target = words[k].rstrip(".")
            aid = tok.encode((" " if k else "") + target, add_special_tokens=False)[0]
            pos = max((i for i, t in enumerate(ids) if t == aid), default=None)
            out.append({"pair_id": f"ex{e}-k{k}", "example_id": f"ex{e}", "dataset": "toy", "ontology": "false",
                        "subtask": k, "kind": "copy", "clean": clean, "clean_ids": ids, "answer": target,
                        "answer_id": aid, "answer_pos": pos})
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, request):
    from cotmech.activations import extract_pairs
    from cotmech.models import load_model

    d = tmp_path_factory.mktemp("h4")
    pairs = _pairs()
    model = load_model(SPEC, dtype="float32", device="cpu")
    acts, index = extract_pairs(model, pairs, batch_size=4)
    write_jsonl(d / "pairs.jsonl", pairs)
    save_tensors(d / "acts.safetensors", acts)
    write_table(d / "acts.parquet", index)
    return d


def test_pipeline_end_to_end_and_seeded(inputs):
    d, s = inputs, json.dumps(SETTINGS)
    assert _script("train_tuned_lens").main(["--activations", str(d / "acts.safetensors"), "--index",
                                             str(d / "acts.parquet"), "--datasets", "toy", "--settings", s,
                                             "--out", str(d / "tl.safetensors"), "--report", str(d / "tl.json")]) == 0
    rep = read_json(d / "tl.json")
    assert rep["steps"] == 5 and rep["n_val_examples"] == 1 and len(rep["kl_tuned_val"]) == 5
    ps = _script("prior_shift")
    for run in ("a", "b"):
        args = ["dataset", "--pairs", str(d / "pairs.jsonl"), "--activations", str(d / "acts.safetensors"),
                "--index", str(d / "acts.parquet"), "--tuned-lens", str(d / "tl.safetensors"),
                "--tuned-report", str(d / "tl.json"), "--dataset", "toy",
                "--settings", s, "--table", str(d / f"t{run}.parquet"), "--rows", str(d / f"r{run}.parquet"),
                "--figure", str(d / f"f{run}")]
        assert ps.main(args) == 0
    ta, tb = read_table(d / "ta.parquet"), read_table(d / "tb.parquet")
    pd.testing.assert_frame_equal(ta, tb)  # one seed -> identical tables
    assert set(ta["lens"]) == {"logit", "tuned"} and (d / "fa.png").exists() and (d / "fa.pdf").exists()
    rows = read_table(d / "ra.parquet")
    assert rows["pair_id"].nunique() == 12 and rows["layer"].max() == 4
    # the tuned lens is evaluated on the example held out from its training only; the logit lens on all
    held = rep["heldout_examples"]
    assert len(held) == 1 and held[0].startswith("toy/")  # keys "<dataset>/<example>"
    assert set("toy/" + rows[rows.lens == "tuned"]["example_id"]) == set(held)
    assert rows[rows.lens == "logit"]["example_id"].nunique() == 3
    # real-world answers exist exactly for "Vertebrates are", "Sheep are", "Mammals are" (k = 5)
    real = rows[(rows.lens == "logit") & rows["p_real"].notna()]
    assert set(real["pair_id"]) == {"ex0-k5", "ex1-k5", "ex2-k5"}
    last = rows[rows.layer == 4]
    assert np.allclose(last["js_final"], 0.0, atol=1e-6)
    assert ps.main(["rift", "--rows", str(d / "ra.parquet"), "--settings", s, "--out", str(d / "rift.json"),
                    "--figure", str(d / "rift")]) == 2  # tuned rows need the report naming the held-out examples
    assert ps.main(["rift", "--rows", str(d / "ra.parquet"), "--tuned-report", str(d / "tl.json"), "--settings", s,
                    "--out", str(d / "rift.json"), "--figure", str(d / "rift")]) == 0
    rift = read_json(d / "rift.json")
    assert set(rift["datasets"]) == {"all", "toy"} and set(rift["datasets"]["all"]) == {"logit", "tuned"}
    assert rift["datasets"]["all"]["logit"]["n_pairs"] == 12 and rift["n_layers"] == 4
    assert rift["datasets"]["all"]["tuned"]["n_examples"] == 1 and "extension" in rift["label"]
    hr = _script("head_roles")
    assert hr.main(["--pairs", str(d / "pairs.jsonl"), "--activations", str(d / "acts.safetensors"), "--index",
                    str(d / "acts.parquet"), "--settings", s, "--outdir", str(d / "roles")]) == 0
    w, c = read_table(d / "roles/writers.parquet"), read_table(d / "roles/copy.parquet")
    for t in (w, c):
        assert {"subtask", "layer", "head", "score"} <= set(t.columns) and (t.subtask == -1).sum() == 16
    summ = read_json(d / "roles/summary.json")
    assert summ["k"] == 3 and 0.0 <= summ["writers"]["share_second_half"] <= 1.0 and summ["n_rows"] == 8


def test_bad_inputs_are_named(inputs, tmp_path, capsys):
    d = inputs
    bad = tmp_path / "idx.parquet"
    write_table(bad, read_table(d / "acts.parquet").drop(columns=["answer_pos"]))
    rc = _script("prior_shift").main(["dataset", "--pairs", str(d / "pairs.jsonl"), "--activations",
                                      str(d / "acts.safetensors"), "--index", str(bad), "--dataset", "toy",
                                      "--settings", json.dumps(SETTINGS), "--table", str(tmp_path / "t.parquet"),
                                      "--rows", str(tmp_path / "r.parquet"), "--figure", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert rc == 2 and "idx.parquet" in err and "answer_pos" in err


def test_real_world_word_two_word_subjects_and_final_period():
    # two-word concepts are looked up whole ("real number" -> number, not "number" -> its parent), and the answer
    # may carry the sentence's final period; the form (plural/singular) follows the answer
    assert real_world_word("Real numbers are", "carnivores") == "numbers"
    assert real_world_word("Max is cat. Natural numbers are", "mammals") == "integers"
    assert real_world_word("Mersenne primes are", "felines") == "prime numbers"
    assert real_world_word("Each real number is", "mammal") == "number"
    assert real_world_word("Vertebrates are", "carnivores.") == "animals"


def test_split_without_a_rift_layer_reports_empty_halves():
    """No rift layer (the curve never crosses): both halves of the context-abidance split are exactly the empty
    result (mean and interval bounds None, no per-layer means), from ``_split`` and inside ``rift_summary``; a split
    at layer 0 has an empty "below" half and a computed "above" half."""
    from cotmech.prior_shift import _split

    empty = {"mean": None, "ci_low": None, "ci_high": None}
    values = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    inv, W = bootstrap_weights(np.array(["a", "b"]), 20, 0)
    assert _split(values, None, inv, W, 0.95) == {"below": empty, "above": empty}
    at0 = _split(values, 0, inv, W, 0.95)
    assert at0["below"] == empty
    assert at0["above"]["mean"] == pytest.approx(4 / 6)  # pooled over (pair, layer) cells
    assert at0["above"]["per_layer_mean"] == pytest.approx([0.5, 0.5, 1.0])
    rows = _synthetic_rows(rift=12, L=24, n_ex=20, seed=3, prefer=(0.1, 0.2))
    s = rift_summary(rows, n_layers=24, n_boot=50, seed=5)
    assert s["rift_layer"] is None
    assert s["context_abidance_rift"] == {"below": empty, "above": empty}
    assert s["context_abidance_midpoint"]["below"]["mean"] is not None


def test_run_and_rift_equal_the_lower_level_steps(inputs):
    # cotmech.prior_shift.run / rift (the scripts' entry points) against the steps called one by one: seeded row
    # draw, both lenses, held-out filter of the tuned rows, per-layer table; then the rift's pooled rows by hand
    from cotmech import config
    from cotmech.lens import TunedLens
    from cotmech.models import load_model
    from cotmech.prior_shift import (heldout_rows, layer_table, load_activations, rift, rift_summary, run,
                                     run_lenses)
    from cotmech.stats import select_rows
    from cotmech.unembed import make_unembed

    d = inputs
    settings = {**SETTINGS, "prior_shift": {**SETTINGS["prior_shift"], "max_per_subtask": 2}}
    cfg, seed = config.section(settings, "prior_shift"), 5
    model = load_model(SPEC, dtype="float32", device="cpu")
    tl = TunedLens(model.n_layers, model.d_model, rank=2, seed=3)
    with torch.no_grad():
        for p in tl.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    tensors, index = load_activations(d / "pairs.jsonl", d / "acts.safetensors", d / "acts.parquet")
    held = ["toy/ex1", "toy/ex2"]
    frame, table = run(model, tensors["resid"], index, cfg, seed, dataset="toy", tuned=tl, heldout=held,
                       log=lambda msg: None)

    keep = select_rows(index, 2, seed)
    assert len(keep) == 8  # 4 subtasks x 2 of 3 examples
    sub = index.iloc[keep].reset_index(drop=True)
    ref, _ = run_lenses(model, make_unembed(model), tensors["resid"][torch.as_tensor(keep)], sub, tl, top_k=5,
                        prior_batch_size=4)
    ref.insert(0, "dataset", "toy")
    ref = heldout_rows(ref, held)
    pd.testing.assert_frame_equal(frame, ref)
    assert set(frame[frame.lens == "tuned"]["example_id"]) <= {"ex1", "ex2"}
    assert set(frame[frame.lens == "logit"]["pair_id"]) == set(sub["pair_id"])
    ref_table = layer_table(ref, model.n_layers, cfg["n_boot"], seed, cfg["ci"])
    ref_table.insert(0, "dataset", "toy")
    pd.testing.assert_frame_equal(table, ref_table)

    other = frame.assign(dataset="two")
    held = held + ["two/ex2"]
    out, t = rift([frame, other], cfg, seed, heldout=held)
    rows = pd.concat([frame, other], ignore_index=True)
    rows = rows[(rows.lens != "tuned") | (rows.dataset + "/" + rows.example_id).isin(held)]  # keys "<dataset>/<ex>"
    rows = rows.assign(example_id=rows.dataset + "/" + rows.example_id, pair_id=rows.dataset + "/" + rows.pair_id)
    rows = rows.reset_index(drop=True)
    assert out["n_layers"] == model.n_layers and set(out["datasets"]) == {"all", "toy", "two"}
    for name, part in (("all", rows), ("toy", rows[rows.dataset == "toy"]), ("two", rows[rows.dataset == "two"])):
        for lens in ("logit", "tuned"):
            assert out["datasets"][name][lens] == rift_summary(part[part.lens == lens], model.n_layers,
                                                               cfg["n_boot"], seed, cfg["ci"])
    pd.testing.assert_frame_equal(t, layer_table(rows, model.n_layers, cfg["n_boot"], seed, cfg["ci"]))
    with pytest.raises(ValueError, match="held out"):
        rift([frame], cfg, seed)
    with pytest.raises(ValueError, match="held out"):
        run(model, tensors["resid"], index, cfg, seed, dataset="toy", tuned=tl)
