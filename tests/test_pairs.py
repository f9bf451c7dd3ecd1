import json

import pandas as pd
import pytest

from cotmech.io import RecordError, read_jsonl, read_table, write_jsonl
from cotmech.pairs import PAIR_COLUMNS, build_pairs, check_pair, pair_rng, select_examples
from cotmech.prontoqa.corrupt import encode
from cotmech.prontoqa.generator import generate
from cotmech.prontoqa.prompts import build_prompt
from cotmech.prontoqa.subtasks import steps


def load_script(name):
    """``main`` of scripts/<name>.py (scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _records(ontology="fictional", n=4, seed=3):
    recs = generate(ontology, 2, n, seed=seed)
    for i, r in enumerate(recs):
        r["prompt"] = build_prompt(r, shots=2)
        r["generated"] = r["answer"] if i % 2 == 0 else "Wren is"
        r["correct"] = i % 2 == 0
        r["valid_proof"] = r["correct"]
    return recs


@pytest.fixture(scope="module")
def built(tiny_llama):
    recs = _records()
    return recs, build_pairs(recs, tiny_llama.tokenizer, "fictional", seed=7)


def test_pair_invariants(built, tiny_llama):
    recs, (pairs, rejected) = built
    tok = tiny_llama.tokenizer
    n_steps = sum(len(steps(r)) for r in recs)
    assert len(pairs) + sum(r["count"] for r in rejected) == n_steps
    assert len(pairs) >= 0.8 * n_steps
    by_id = {r["id"]: r for r in recs}
    for p in pairs:
        check_pair(p)
        assert list(p)[:len(PAIR_COLUMNS)] == PAIR_COLUMNS
        assert p["pair_id"] == f"{p['example_id']}-k{p['subtask']}"
        assert len(p["clean_ids"]) == len(p["corrupt_ids"]) and p["clean"] != p["corrupt"]
        assert p["clean_ids"] == encode(tok, p["clean"]) and p["corrupt_ids"] == encode(tok, p["corrupt"])
        rec = by_id[p["example_id"]]
        assert p["label"] == rec["label"] and p["ontology"] == "fictional"
        # teacher forcing: the gold response continues the clean input with answer_id
        full = encode(tok, rec["prompt"] + rec["answer"])
        n = len(p["clean_ids"])
        assert full[:n] == p["clean_ids"], p["pair_id"]
        assert full[n] == p["answer_id"], p["pair_id"]
        assert p["clean"].startswith(rec["prompt"])
    kinds = {(p["subtask"], p["kind"]) for p in pairs}
    assert (0, "decision") in kinds and (1, "copy") in kinds and (5, "induction") in kinds


def test_seed_is_per_pair_not_per_order(built, tiny_llama):
    recs, (pairs, _) = built
    again, _ = build_pairs(list(reversed(recs[1:])), tiny_llama.tokenizer, "fictional", seed=7)
    by_id = {p["pair_id"]: p for p in pairs}
    assert again and all(p == by_id[p["pair_id"]] for p in again)
    other, _ = build_pairs(recs, tiny_llama.tokenizer, "fictional", seed=8)
    assert [p["corrupt"] for p in other] != [p["corrupt"] for p in pairs]
    a, b = pair_rng(1, "d", "x-1", 3), pair_rng(1, "d", "x-1", 3)
    assert a.integers(1 << 30) == b.integers(1 << 30)
    assert pair_rng(1, "d", "x-1", 3).integers(1 << 30) != pair_rng(1, "e", "x-1", 3).integers(1 << 30)


def test_select_examples():
    recs = _records()
    assert [r["id"] for r in select_examples(recs)] == [recs[0]["id"], recs[2]["id"]]
    assert len(select_examples(recs, require_correct=False)) == 4
    assert len(select_examples(recs, require_correct=False, max_examples=3)) == 3
    bad = [dict(recs[0])]
    del bad[0]["prompt"]
    with pytest.raises(RecordError, match="record 0 .*missing field.*prompt"):
        select_examples(bad, where="gen.jsonl")
    with pytest.raises(ValueError, match="max_examples"):
        select_examples(recs, max_examples=0)


def test_check_pair_catches_broken_pairs(built):
    _, (pairs, _) = built
    p = dict(pairs[0])
    with pytest.raises(RecordError, match="tokens"):
        check_pair({**p, "corrupt_ids": p["corrupt_ids"][:-1]})
    with pytest.raises(RecordError, match="equals the clean"):
        check_pair({**p, "corrupt_ids": p["clean_ids"], "corrupt": p["clean"]})
    with pytest.raises(RecordError, match="first_diff"):
        check_pair({**p, "first_diff": p["first_diff"] + 1})
    with pytest.raises(RecordError, match="missing"):
        check_pair({k: v for k, v in p.items() if k != "answer_pos"})


def test_make_pairs_script(tmp_path):
    recs = _records(n=3)
    gen = tmp_path / "gen.jsonl"
    write_jsonl(gen, recs)
    out, rej = tmp_path / "pairs.jsonl", tmp_path / "rej.csv"
    settings = {"model": {"spec": "random:tiny-llama"}, "pairs": {"require_correct": True}, "seed": 1}
    main = load_script("make_pairs")
    assert main(["--generations", str(gen), "--dataset", "fictional", "--settings", json.dumps(settings),
                 "--out", str(out), "--rejected", str(rej)]) == 0
    pairs = read_jsonl(out)
    assert {p["example_id"] for p in pairs} == {recs[0]["id"], recs[2]["id"]}
    table = read_table(rej)
    assert list(table.columns) == ["subtask", "reason", "count"]
    # a broken record is a clear error, not a traceback
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{k: v for k, v in recs[0].items() if k != "cot"}])
    assert main(["--generations", str(bad), "--dataset", "x", "--settings", json.dumps(settings),
                 "--out", str(out), "--rejected", str(rej)]) == 2
    assert isinstance(table, pd.DataFrame)
