import math

import pytest
import torch

from cotmech.batching import common_prefix_len
from cotmech.decoding import greedy_generate, greedy_reference
from cotmech.generation import accuracy_row, is_correct, response_text
from cotmech.stats import wilson

SHARED = "### Input:\nWumpus is fast. Max is wumpus. True or false: Max is fast.\n### Response:\n"
TESTS = ["Rex is yumpus.", "Jompus is shy. Tumpuses are jompuses. Sam is tumpus. True or false:",
         "Fae is zumpus. Zumpus is dull.", "Polly is", "Wren is impus. Impuses are sterpuses. Wren is sterpus."]


_REF: dict = {}


def _prompts(tok):
    return [tok(SHARED + "\n### Input:\n" + t).input_ids for t in TESTS]


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3], [1, 2, 4, 5], [1, 2]]) == 2
    assert common_prefix_len([[1], [2]]) == 0
    assert common_prefix_len([[7, 8]]) == 2


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_batched_cached_equals_naive(tiny_model, batch_size):
    """The key correctness test: batched, prefix-cached, left-padded decoding == one-at-a-time no-cache greedy."""
    prompts = _prompts(tiny_model.tokenizer)
    assert common_prefix_len(prompts) > 10  # the shared prefix really is cached
    key = id(tiny_model)  # the naive reference is computed once per model, not per batch size
    if key not in _REF:
        _REF[key] = [greedy_reference(tiny_model, p, max_new_tokens=12) for p in prompts]
    ref = _REF[key]
    got = greedy_generate(tiny_model, prompts, max_new_tokens=12, batch_size=batch_size)
    assert [g.ids for g in got] == [r.ids for r in ref]
    assert [g.stop for g in got] == [r.stop for r in ref]
    assert all(len(r.ids) > 0 for r in ref)


def test_rows_stopping_at_different_steps(tiny_llama, monkeypatch):
    """Rows that hit EOS early are dropped from the batch and its cache; the others must be unaffected."""
    prompts = _prompts(tiny_llama.tokenizer)
    free = [greedy_reference(tiny_llama, p, max_new_tokens=10).ids for p in prompts]
    # Make a token that row 0 emits (but some other row never does) the EOS: rows emitting it stop early,
    # the others run on to the length limit.
    stop_tok = next(t for t in free[0] if any(t not in f for f in free[1:]))
    monkeypatch.setattr(tiny_llama.hf.generation_config, "eos_token_id", stop_tok)
    ref = [greedy_reference(tiny_llama, p, max_new_tokens=10) for p in prompts]
    got = greedy_generate(tiny_llama, prompts, max_new_tokens=10, batch_size=5)
    assert ref[0].stop == "eos" and len(ref[0].ids) < 10
    assert any(r.stop == "length" for r in ref), "test needs rows that do not stop"
    assert [(g.ids, g.stop) for g in got] == [(r.ids, r.stop) for r in ref]


def test_newline_stop(tiny_llama, monkeypatch):
    """A token whose text contains a newline ends the row and is kept; the response text is cut before it."""
    tok = tiny_llama.tokenizer
    prompts = _prompts(tok)
    free = greedy_reference(tiny_llama, prompts[1], max_new_tokens=8).ids
    target = free[2]
    real_decode = tok.decode

    def decode(ids, **kw):
        if list(ids) == [target]:
            return "x\n"
        return real_decode(ids, **kw)

    monkeypatch.setattr(tok, "decode", decode)
    got = greedy_generate(tiny_llama, [prompts[1]], max_new_tokens=8)[0]
    assert got.stop == "newline" and got.ids == free[:free.index(target) + 1]
    ref = greedy_reference(tiny_llama, prompts[1], max_new_tokens=8)
    assert (ref.ids, ref.stop) == (got.ids, got.stop)


def test_deterministic(tiny_qwen2):
    prompts = _prompts(tiny_qwen2.tokenizer)
    a = greedy_generate(tiny_qwen2, prompts, max_new_tokens=6, batch_size=3)
    b = greedy_generate(tiny_qwen2, prompts, max_new_tokens=6, batch_size=2)
    assert [g.ids for g in a] == [g.ids for g in b]


def test_bad_arguments(tiny_llama):
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(tiny_llama, [[1, 2]], max_new_tokens=0)
    with pytest.raises(ValueError, match="empty prompt"):
        greedy_generate(tiny_llama, [[1, 2], []], max_new_tokens=2)


def test_response_text_and_correct(tiny_llama):
    tok = tiny_llama.tokenizer
    ids = tok("Sam is tumpus. Sam is fast. True\n### Input:").input_ids
    assert response_text(tok, ids) == "Sam is tumpus. Sam is fast. True"
    rec = {"answer": "Sam is tumpus. Sam is fast. True"}
    assert is_correct(rec, " Sam is tumpus. Sam is fast. True ")
    assert not is_correct(rec, "Sam is tumpus. Sam is fast. False")


def test_wilson_against_closed_form():
    # Wilson interval for 0/n has lower bound 0 and upper z^2/(n+z^2).
    z = 1.959963984540054
    lo, hi = wilson(0, 10)
    assert lo == 0 and math.isclose(hi, z * z / (10 + z * z))
    lo, hi = wilson(10, 10)
    assert hi == 1 and math.isclose(lo, 10 / (10 + z * z))
    # symmetric around 1/2 for k = n/2, and contains the point estimate
    lo, hi = wilson(20, 40)
    assert math.isclose(lo + hi, 1.0) and lo < 0.5 < hi
    # agrees with scipy's binomtest Wilson interval
    from scipy.stats import binomtest

    ci = binomtest(13, 37).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson(13, 37)
    assert math.isclose(lo, ci.low, rel_tol=1e-6) and math.isclose(hi, ci.high, rel_tol=1e-6)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_accuracy_row():
    recs = [{"correct": c, "ontology": "fictional", "hops": 2} for c in (True, False, True, True)]
    row = accuracy_row("fictional", recs)
    assert (row["n"], row["correct"], row["accuracy"]) == (4, 3, 0.75)
    assert row["ci_low"] < 0.75 < row["ci_high"]
    assert row["ontology"] == "fictional" and row["hops"] == "2"


def _task_records(n=3):
    from cotmech.prontoqa.generator import generate

    return generate("fictional", 2, n, seed=5)


def test_valid_proof():
    from cotmech.generation import valid_proof

    rec = _task_records(1)[0]
    assert valid_proof(rec, rec["answer"])
    wrong_label = rec["answer"].rsplit(" ", 1)[0] + (" False" if rec["label"] else " True")
    assert not valid_proof(rec, wrong_label)
    assert not valid_proof(rec, "Wren is")  # truncated
    # the same proof without its derived middle fact is still a valid (step-skipping) proof
    cot = rec["cot"]
    skipped = " ".join(cot[:2] + cot[3:]) + (" True" if rec["label"] else " False")
    assert valid_proof(rec, skipped) and not is_correct(rec, skipped)


def test_generate_cot_script(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    from cotmech.io import read_jsonl, read_table, write_jsonl

    path = Path(__file__).resolve().parents[1] / "scripts" / "generate_cot.py"
    spec = importlib.util.spec_from_file_location("generate_cot_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    recs = _task_records(3)
    tasks = tmp_path / "tasks.jsonl"
    write_jsonl(tasks, recs)
    settings = {"model": {"spec": "random:tiny-llama", "dtype": "float32", "device": "cpu"},
                "prompt": {"shots": 2}, "generation": {"max_new_tokens": 4, "batch_size": 2}}
    out, acc = tmp_path / "gen.jsonl", tmp_path / "acc.csv"
    assert mod.main(["--tasks", str(tasks), "--dataset", "fictional", "--settings", json.dumps(settings),
                     "--out", str(out), "--accuracy", str(acc)]) == 0
    gens = read_jsonl(out)
    assert [g["id"] for g in gens] == [r["id"] for r in recs]
    for g, r in zip(gens, recs):
        assert g["prompt"].endswith("### Response:\n") and g["question"] in g["prompt"]
        assert g["correct"] is False and g["valid_proof"] is False and g["n_generated"] <= 4
        assert {k: g[k] for k in r} == r
    table = read_table(acc)
    assert table.to_dict("records")[0]["n"] == 3 and list(table.columns)[:3] == ["dataset", "ontology", "hops"]
    both = tmp_path / "all.csv"
    assert mod.main(["--aggregate", str(acc), str(acc), "--accuracy", str(both)]) == 0
    assert len(read_table(both)) == 2
    bad = dict(settings, model={"spec": "random:no-such"})
    assert mod.main(["--tasks", str(tasks), "--dataset", "fictional", "--settings", json.dumps(bad),
                     "--out", str(out), "--accuracy", str(acc)]) == 2
