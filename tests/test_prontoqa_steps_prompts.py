"""Prompts (study.md §2.3, §2.5) and CoT subtasks (§3) against the authors' clean patching records."""
from __future__ import annotations

import json

import pytest

from cotmech.prontoqa import generate
from cotmech.prontoqa.importers import import_file
from cotmech.prontoqa.prompts import build_prompt, default_exemplars, input_text
from cotmech.prontoqa.subtasks import steps
from cotmech.prontoqa.verify import verify

# study.md §3 worked example: (prefix ends with, target, kind, source)
WORKED = [
    ("", "Wren", "decision", "query"),
    ("Wren is", "impus", "copy", "question"),
    ("Wren is impus.", "Impuses", "decision", "question"),
    ("Impuses are", "sterpuses", "copy", "question"),
    ("are sterpuses.", "Wren", "decision", "generated"),
    ("Wren is", "sterpus", "induction", "generated"),
    ("Wren is sterpus.", "Sterpuses", "decision", "question"),
    ("Sterpuses are", "earthy", "copy", "question"),
    ("are earthy.", "Wren", "decision", "generated"),
    ("Wren is", "earthy", "induction", "generated"),
]


@pytest.fixture(scope="module")
def clean(fixtures_dir):
    path = fixtures_dir / "authors/activation_patching_clean_sample.json"
    return import_file(path), json.loads(path.read_text())


def test_worked_example(clean):
    recs, raw = clean
    st = steps(recs[0])
    assert len(st) == 10
    assert [s.index for s in st] == list(range(10))
    for s, (end, target, kind, source) in zip(st, WORKED):
        assert s.prefix.endswith(end) and (s.target, s.kind, s.source) == (target, kind, source)
    assert st[9].prefix == "Wren is impus. Impuses are sterpuses. Wren is sterpus. Sterpuses are earthy. Wren is"
    assert [s.index for s in st if s.kind == "decision"] == [0, 2, 4, 6, 8]
    assert [s.index for s in st if s.kind == "copy"] == [1, 3, 7]
    assert [s.index for s in st if s.kind == "induction"] == [5, 9]


def test_steps_agree_with_authors_fields(clean):
    """response_k == prefix of step k, and the authors' first sub-token answer_token_k starts the target word."""
    recs, raw = clean
    for rec, r in zip(recs, raw):
        st = steps(rec, include_label=True)
        assert len(st) == 11 and st[10].kind == "label" and st[10].target == r["label"]
        for k in range(11):
            assert st[k].prefix == r[f"response_{k}"], (k, rec["id"])
        for k in range(10):
            assert st[k].target.startswith(r[f"answer_token_{k}"].lstrip("\u2581")), (k, rec["id"])
        assert rec["question"] + " " + rec["query"] + " Let us think step by step." == r["prompt"]
        assert input_text(rec) == r["prompt"]


@pytest.mark.parametrize("kw, n_steps", [
    (dict(ontology="fictional", hops=1), 6), (dict(ontology="fictional", hops=3), 14),
    (dict(ontology="false", hops=5), 22), (dict(ontology="fictional", hops=3, cot_skip=1), 12),
    (dict(ontology="fictional", hops=4, cot_skip=2, style="original", distractors="relevant"), 14),
    (dict(ontology="false", hops=2, style="original", distractors="irrelevant", ordering="random"), 10),
])
def test_steps_generalise(kw, n_steps):
    for r in generate(n=12, seed=4, **kw):
        st = steps(r)
        assert len(st) == n_steps
        response = " ".join(r["cot"])
        for s in st:
            assert not s.prefix.endswith(" ")
            tail = response[len(s.prefix) + (1 if s.prefix else 0):]
            assert response.startswith(s.prefix) and tail.startswith(s.target)
            assert s.target.isalpha() and s.kind in ("decision", "copy", "induction")
            assert s.word_type in ("entity", "concept", "property")
        # per-sentence pattern: subject is decision; object is copy (rules, premise) or induction (derived facts)
        assert st[0].source == "query" and all(s.source != "query" for s in st[1:])
        assert [s.kind for s in st[-2:]] == ["decision", "induction"]
        assert sum(s.kind == "induction" for s in st) == kw["hops"] - kw.get("cot_skip", 0)


def test_paper_template_verbatim():
    rec = generate("fictional", 2, 1, seed=9)[0]
    p = build_prompt(rec)
    # study.md §2.3: exemplar 2 verbatim, trailing space after "step." in exemplars 2 and 3 only
    ex2 = ("### Input:\nGorpuses are discordant. Max is zumpus. Zumpus is shampor. Zumpus is gorpus. Gorpus is earthy. "
           "True or false: Max is small. Let us think step by step. \n### Response:\nMax is zumpus. Zumpus is gorpus. "
           "Max is gorpus. Gorpuses are discordant. Max is discordant. False\n\n### Input:\nBorpin are wumpus.")
    assert ex2 in p
    assert p.count("step. \n") == 2 and p.count("step.\n") == 5
    assert p.startswith("### Input:\nGorpus is twimpus. Alex is rompus.")
    assert p.endswith("\n\n### Input:\n" + input_text(rec) + "\n### Response:\n")
    assert "Wren is dull. False\n\n### Input:\n" in p
    assert p.count("### Input:\n") == 7 and p.count("\n\n") == 6


def test_k_shot_variants():
    rec = generate("fictional", 2, 1, seed=9)[0]
    full = build_prompt(rec, shots=6)
    for k in range(9):
        p = build_prompt(rec, shots=k)
        assert p.count("### Input:\n") == k + 1 and p.endswith("### Response:\n")
        if k <= 6:
            head = full[: [i for i in range(len(full)) if full.startswith("### Input:\n", i)][k]] if k else ""
            assert p == head + "### Input:\n" + input_text(rec) + "\n### Response:\n"
    with pytest.raises(ValueError, match="shots"):
        build_prompt(rec, shots=9)
    with pytest.raises(ValueError, match="exemplars given"):
        build_prompt(rec, shots=3, exemplars=generate("fictional", 2, 2, seed=1))


def test_probe_header():
    rec = generate("fictional", 2, 1, seed=9, style="original")[0]
    p = build_prompt(rec, shots=2, header="probe")
    assert p.startswith("### Input: \n") and p.count("### Response: \n") == 2
    assert p.endswith("\n\n### Input : \n" + input_text(rec) + "\n### Response :\n")


@pytest.mark.parametrize("ontology, style, hops", [("false", "paper", 2), ("true", "paper", 3),
                                                    ("fictional", "original", 2), ("fictional", "paper", 3)])
def test_generated_exemplars(ontology, style, hops):
    ex = default_exemplars(ontology, hops, 8, seed=0, style=style)
    assert len(ex) == 8 and all(verify(e).ok for e in ex)
    assert all(e["ontology"] == ontology and e["style"] == style and e["hops"] == hops for e in ex)
    assert sum(e["label"] for e in ex) == 4
    assert ex == default_exemplars(ontology, hops, 8, seed=0, style=style)
    assert ex != default_exemplars(ontology, hops, 8, seed=1, style=style)
    # a test record equal to an exemplar never meets itself in its prompt
    rec = dict(ex[0], id="test-0")
    p = build_prompt(rec, shots=8, seed=0)
    assert p.count(rec["question"] + " " + rec["query"]) == 1
    # the exemplar stream is separate from the dataset stream with the same seed
    data = generate(ontology, hops, 50, style=style, seed=0)
    assert not {(e["question"], e["query"]) for e in ex} & {(r["question"], r["query"]) for r in data}
