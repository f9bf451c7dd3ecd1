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


def _resolve(text: str) -> str:
    """Reference answer of one cloze input under the template's logic, written independently of the module:
    the entity's class, unless a property sentence starts from that class (then that property)."""
    sents = [s.strip() for s in text.rsplit(" is", 1)[0].split(".") if s.strip()]
    entity = text.rsplit(" is", 1)[0].rsplit(". ", 1)[-1].strip()
    cls = [s.split(" is ")[1] for s in sents if s.startswith(entity + " is ")]
    assert len(cls) == 1, text
    rules = [s.split(" is ")[1] for s in sents if s.lower().startswith(cls[0].lower() + " is ")]
    return rules[0] if rules else cls[0]


def _blocks(prompt: str) -> list[tuple[str, str]]:
    """(input, response) of every block of a template prompt, checking the authors' block syntax."""
    out = []
    for b in prompt.split("\n\n"):
        assert b.startswith("### Input:\n") and b.count("\n### Response:\n") == 1, b
        inp, resp = b[len("### Input:\n"):].split("\n### Response:\n")
        out.append((inp, resp))
    return out


def test_template_has_the_authors_form(tok):
    """study.md E3/§2.3: blocks "### Input:" / "### Response:", the test block ends "<E> is" with an empty
    response; exemplars mix complete chains (answer = the property) with broken ones (answer = the class) as
    in the authors' Template_simple_1hop (6 of 9 broken); every exemplar's answer is the one the template's
    logic gives (independent resolver)."""
    rng = np.random.default_rng(3)
    head = ind.exemplars(rng, 9)
    ex = None
    while ex is None:
        ex = ind.build_example(tok, rng, head, 0)
    blocks = _blocks(ex["class"].meta["clean"])
    assert len(blocks) == 10 and blocks[-1][1] == ""
    shots = blocks[:-1]
    for inp, resp in shots:
        assert resp == _resolve(inp)
        assert resp in vocab.PROPERTIES or resp in vocab.FICTIONAL_CONCEPTS
        assert len(inp.split(". ")) == 4  # fact + (rule or distractor) + distractor + the query "<E> is"
    broken = [resp in vocab.FICTIONAL_CONCEPTS for _, resp in shots]
    assert sum(broken) == 6
    # the exemplars are drawn once and shared by every example of a run
    ex2 = None
    while ex2 is None:
        ex2 = ind.build_example(tok, rng, head, 1)
    assert ex2["class"].meta["clean"].startswith(head) and ex["class"].meta["clean"].startswith(head)
    # the test block: "E is c. C is p. E is" (no distractor), answer p
    test = blocks[-1][0]
    e, _, c = test.split(". ")[0].partition(" is ")
    assert e in vocab.ENTITIES and test == f"{e} is {c}. {c.capitalize()} is {ex['class'].meta['answer']}. {e} is"


def test_corruptions_equal_length_and_answerable(tok):
    rng = np.random.default_rng(0)
    head = ind.exemplars(rng, 3)
    n = 0
    for i in range(12):
        ex = ind.build_example(tok, rng, head, index=i)
        if ex is None:
            continue
        n += 1
        clean = ex["class"].clean_ids
        for kind, p in ex.items():
            assert p.clean_ids == clean
            assert len(p.corrupt_ids) == len(clean) and p.corrupt_ids != clean
            assert p.corrupt_ids[-1] == clean[-1]
            # the difference lies in the test block (after the exemplars)
            assert p.first_diff >= len(ind.encode(tok, head))
            assert p.meta["corrupt"].startswith(head) and p.meta["corrupt"].endswith(" is\n### Response:\n")
            assert p.corrupt_answer_id is not None and p.corrupt_answer_id != p.answer_id
            # every corruption is answerable under the template's logic, and its noise label is that answer
            c_inp = _blocks(p.meta["corrupt"])[-1][0]
            assert _resolve(c_inp) == p.meta["noise_label"], (kind, c_inp)
            assert _resolve(_blocks(p.meta["clean"])[-1][0]) == p.meta["answer"]
            want = ind.encode(tok, p.meta["corrupt"] + p.meta["noise_label"])
            assert want[:len(p.corrupt_ids)] == p.corrupt_ids and want[len(p.corrupt_ids)] == p.corrupt_answer_id
        orig = _blocks(ex["class"].meta["clean"])[-1][0].split(". ")
        sub = _blocks(ex["subject"].meta["corrupt"])[-1][0].split(". ")
        cls = _blocks(ex["class"].meta["corrupt"])[-1][0].split(". ")
        prp = _blocks(ex["property"].meta["corrupt"])[-1][0].split(". ")
        assert cls[0] != orig[0] and cls[1:] == orig[1:]            # entity's class replaced
        assert sub[1] != orig[1] and sub[1].split(" is ")[1] == orig[1].split(" is ")[1]  # rule subject
        assert sub[0] == orig[0] and ex["subject"].meta["noise_label"] == orig[0].split(" is ")[1]
        assert prp[1].split(" is ")[0] == orig[1].split(" is ")[0] and prp[1] != orig[1]  # property
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
    and every corruption keeps under the authors' rule: clean top-1 = answer and corrupt top-1 = noise label
    (an oracle that is wrong on a corrupt input answers neither the answer nor the noise label)."""
    import hashlib

    import torch

    from cotmech.models import load_model

    m = load_model("random:tiny-llama?num_hidden_layers=1", dtype="float32", device="cpu")
    n, shots, seed, max_cand = 3, 1, 11, 40
    rng = np.random.default_rng(seed)
    head = ind.exemplars(rng, shots)
    cands = [c for c in (ind.build_example(m.tokenizer, rng, head, i) for i in range(max_cand)) if c is not None]
    answer = {}  # the label a "right" run gives: the answer for clean inputs, the noise label for corrupt ones
    for c in cands:
        for k in ind.CORRUPTIONS:
            answer[tuple(c[k].clean_ids)] = c[k].answer_id
            answer[tuple(c[k].corrupt_ids)] = c[k].corrupt_answer_id
    clean_answer = {ids: next(c[k].answer_id for c in cands for k in ind.CORRUPTIONS
                              if ids in (tuple(c[k].clean_ids), tuple(c[k].corrupt_ids))) for ids in answer}

    def right(ids) -> bool:  # the oracle: "correct" on about 60% of inputs, fixed per input
        return hashlib.sha256(str(ids).encode()).digest()[0] < 154

    calls = []

    def fake_last_logits(model, seqs, batch_size):
        calls.append(len(seqs))
        out = torch.zeros(len(seqs), m.hf.config.vocab_size)
        for i, ids in enumerate(map(tuple, seqs)):
            want = answer[ids]
            wrong = next(t for t in range(out.shape[1]) if t not in (want, clean_answer[ids]))
            out[i, want if right(ids) else wrong] = 1.0
        return out

    monkeypatch.setattr(ind, "prefixed_last_logits", fake_last_logits)
    got = ind.build_pairs(m, n, shots=shots, seed=seed, require_correct=True, max_candidates=max_cand)
    ref = {k: [] for k in ind.CORRUPTIONS}
    for c in cands:
        for k in ind.CORRUPTIONS:
            if len(ref[k]) < n and right(tuple(c[k].clean_ids)) and right(tuple(c[k].corrupt_ids)):
                ref[k].append(c[k])
    assert any(ref.values())
    for k in ind.CORRUPTIONS:
        assert [p.pair_id for p in got[k]] == [p.pair_id for p in ref[k]], k
    assert sum(calls) < len(cands) * 4  # fewer forwards than screening every row
