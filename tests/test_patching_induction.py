"""E3 cloze task: equal-length corruptions that differ where intended; seeded; merge = mean of scores."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cotmech import vocab
from cotmech.patching import induction as ind


@pytest.fixture(scope="module")
def tok():
    from cotmech.models import task_tokenizer

    return task_tokenizer()


def test_corruptions_equal_length_and_differ(tok):
    rng = np.random.default_rng(0)
    n = 0
    for i in range(12):
        ex = ind.build_example(tok, rng, shots=2, index=i)
        if ex is None:
            continue
        n += 1
        clean = ex["class"].clean_ids
        for kind, p in ex.items():
            assert p.clean_ids == clean
            assert len(p.corrupt_ids) == len(clean) and p.corrupt_ids != clean
            assert p.corrupt_ids[-1] == clean[-1]
            # the difference lies in the test block (after the exemplars)
            assert p.first_diff > len(clean) // 2
            assert p.meta["clean"].rsplit("\n", 1)[0] == p.meta["corrupt"].rsplit("\n", 1)[0]
            assert p.meta["corrupt"].endswith(" is")
            assert p.corrupt_answer_id is not None and p.corrupt_answer_id != p.answer_id
        test_line = ex["class"].meta["clean"].rsplit("\n", 1)[1]
        e = test_line.split(" ")[0]
        assert e in vocab.ENTITIES and test_line.endswith(f"{e} is")
        sub = ex["subject"].meta["corrupt"].rsplit("\n", 1)[1].split(". ")
        cls = ex["class"].meta["corrupt"].rsplit("\n", 1)[1].split(". ")
        prp = ex["property"].meta["corrupt"].rsplit("\n", 1)[1].split(". ")
        orig = test_line.split(". ")
        assert cls[0] != orig[0] and cls[1:] == orig[1:]            # entity's class replaced
        assert sub[2] != orig[2] and sub[2].split(" is ")[1] == orig[2].split(" is ")[1]  # rule subject
        assert prp[2].split(" is ")[0] == orig[2].split(" is ")[0] and prp[2] != orig[2]  # property
    assert n >= 8


def test_build_pairs_is_seeded():
    from cotmech.models import load_model

    m = load_model("random:tiny-llama?num_hidden_layers=1", dtype="float32", device="cpu")
    a = ind.build_pairs(m, 3, shots=1, seed=5, require_correct=False)
    b = ind.build_pairs(m, 3, shots=1, seed=5, require_correct=False)
    c = ind.build_pairs(m, 3, shots=1, seed=6, require_correct=False)
    assert all(len(v) == 3 for v in a.values())
    assert [p.corrupt_ids for p in a["class"]] == [p.corrupt_ids for p in b["class"]]
    assert [p.clean_ids for p in a["class"]] != [p.clean_ids for p in c["class"]]
    # a random model never gets them right
    kept = ind.build_pairs(m, 2, shots=1, seed=5, require_correct=True, max_candidates=8)
    assert all(len(v) <= 2 for v in kept.values())


def test_merge_is_mean_of_normalised_scores():
    rng = np.random.default_rng(0)
    tables, boots = {}, {}
    for k in ind.CORRUPTIONS:
        tables[k] = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "score": rng.normal(size=4),
                                  "n": [5] * 4})
        boots[k] = rng.normal(size=(50, 2, 2))
    df = ind.merge_scores(tables, boots)
    want = np.mean([tables[k]["score"].to_numpy() for k in ind.CORRUPTIONS], axis=0)
    np.testing.assert_allclose(df["score"].to_numpy(), want)
    assert (df["subtask"] == -1).all() and {"ci_low", "ci_high", "score_class"} <= set(df.columns)
    assert (df["ci_low"] <= df["ci_high"]).all()


def test_two_stage_screen_keeps_what_screening_everything_in_order_keeps(monkeypatch):
    """build_pairs screens clean inputs first and corrupt inputs only where needed; with a deterministic oracle
    for the model's top-1 token it must keep exactly the pairs that a plain in-order screen of every candidate
    and every corruption keeps."""
    import hashlib

    import torch

    from cotmech.models import load_model

    m = load_model("random:tiny-llama?num_hidden_layers=1", dtype="float32", device="cpu")
    n, shots, seed, max_cand = 3, 1, 11, 40
    rng = np.random.default_rng(seed)
    cands = [c for c in (ind.build_example(m.tokenizer, rng, shots, i) for i in range(max_cand)) if c is not None]
    answer = {}
    for c in cands:
        for k in ind.CORRUPTIONS:
            answer[tuple(c[k].clean_ids)] = c[k].answer_id
            answer[tuple(c[k].corrupt_ids)] = c[k].answer_id

    def right(ids) -> bool:  # the oracle: "correct" on about 60% of inputs, fixed per input
        return hashlib.sha256(str(ids).encode()).digest()[0] < 154

    calls = []

    def fake_last_logits(model, batch):
        calls.append(batch.input_ids.shape[0])
        out = torch.zeros(batch.input_ids.shape[0], m.hf.config.vocab_size)
        for i, ln in enumerate(batch.lengths):
            ids = tuple(batch.input_ids[i, -ln:].tolist())
            want = answer[ids]
            out[i, want if right(ids) else (want + 1) % out.shape[1]] = 1.0
        return out

    monkeypatch.setattr(ind, "last_logits", fake_last_logits)
    got = ind.build_pairs(m, n, shots=shots, seed=seed, require_correct=True, max_candidates=max_cand)
    ref = {k: [] for k in ind.CORRUPTIONS}
    for c in cands:
        for k in ind.CORRUPTIONS:
            if len(ref[k]) < n and right(tuple(c[k].clean_ids)) and not right(tuple(c[k].corrupt_ids)):
                ref[k].append(c[k])
    assert any(ref.values())
    for k in ind.CORRUPTIONS:
        assert [p.pair_id for p in got[k]] == [p.pair_id for p in ref[k]], k
    assert sum(calls) < len(cands) * 4  # fewer forwards than screening every row
