"""Generator ↔ verifier round trip, sentence self-test, structure and distributions (study.md §2.1–2.2)."""
from __future__ import annotations

import collections
import itertools

import pytest

from cotmech import vocab
from cotmech.prontoqa import generate
from cotmech.prontoqa.logic import LEXICON, TRUE_TAXONOMIES, Formula
from cotmech.prontoqa.sentences import parse, parse_query, render, split_sentences
from cotmech.prontoqa.verify import verify

COMBOS = [c for c in itertools.product(["fictional", "false", "true"], [1, 2, 3, 4, 5], ["paper", "original"],
                                       ["none", "relevant", "irrelevant"], ["preorder", "postorder", "random"])
          if not (c[0] == "true" and c[3] != "none")]


def test_round_trip_every_combination():
    """Every generated record of every setting (incl. step skipping) verifies: 3,000+ seeded examples."""
    total = 0
    for i, (ont, hops, style, dis, order) in enumerate(COMBOS):
        for skip in sorted({0, hops - 1}):
            recs = generate(ont, hops, 9, style=style, distractors=dis, ordering=order, seed=i, cot_skip=skip)
            for r in recs:
                v = verify(r, strict=True)
                assert v.ok, (r, v)
                assert len(r["cot"]) == 2 * hops + 1 - skip
                assert r["answer"] == " ".join(r["cot"]) + (" True" if r["label"] else " False")
            total += len(recs)
    assert total >= 3000


@pytest.mark.parametrize("style", ["paper", "original"])
def test_sentence_self_test(style):
    """Every sentence form renders and parses back to its logical form (the generator's built-in check)."""
    concepts = list(vocab.FICTIONAL_CONCEPTS[:3]) + ["real number", "Mersenne prime", "butterfly", "sheep"]
    for a, b in itertools.permutations(concepts, 2):
        for neg, pl, q in itertools.product([False, True], [False, True], ["Every", "Each"]):
            for f in (Formula("rule", a, b, neg), Formula("rule", a, "floral", neg), Formula("fact", "Max", b, neg),
                      Formula("fact", "Max", "floral", neg)):
                s = render(f, style, plural_form=pl, quantifier=q)
                assert parse(s).formula == f, s


def test_known_sentence_forms():
    cases = {
        "Every wumpus is a dumpus.": Formula("rule", "wumpus", "dumpus"),
        "Each impus is an yumpus.": Formula("rule", "impus", "yumpus"),
        "Wumpuses are dumpuses.": Formula("rule", "wumpus", "dumpus"),
        "Every wumpus is not sweet.": Formula("rule", "wumpus", "sweet", True),
        "Wumpuses are not sweet.": Formula("rule", "wumpus", "sweet", True),
        "Max is a wumpus.": Formula("fact", "Max", "wumpus"),
        "Max is not floral.": Formula("fact", "Max", "floral", True),
        "Jompus is fast.": Formula("rule", "jompus", "fast"),
        "Sam is tumpus.": Formula("fact", "Sam", "tumpus"),
        "Mersenne primes are real numbers.": Formula("rule", "Mersenne prime", "real number"),
        "Rex is a negative number.": Formula("fact", "Rex", "negative number"),
        "Butterflies are ants.": Formula("rule", "butterfly", "ant"),
        "Each sheep is an animal.": Formula("rule", "sheep", "animal"),
    }
    for s, f in cases.items():
        assert parse(s).formula == f, s
    q = parse_query("True or false: Max is not floral.")
    assert q.formula == Formula("fact", "Max", "floral", True)
    assert q.text[q.obj[0]:q.obj[1]] == "floral"
    assert render(Formula("fact", "Max", "impus"), "original") == "Max is an impus."


def test_label_balance_and_paper_style():
    recs = generate("fictional", 2, 301, seed=7)
    labels = collections.Counter(r["label"] for r in recs)
    assert labels == {True: 151, False: 150}
    assert len({(r["question"], r["query"]) for r in recs}) == 301
    forms = collections.Counter()
    for r in recs:
        text = r["question"] + " " + r["query"] + " " + r["answer"]
        assert " not " not in text and " a " not in text and "Every" not in text and "Each" not in text
        ctx = split_sentences(r["question"])
        assert len(ctx) == 3
        # preorder: property rule of the top concept, subtype rule, entity fact (study.md §2.2)
        top = r["logic"]["chain"][-1]
        assert parse(ctx[0]).formula == Formula("rule", top, r["logic"]["property"])
        assert parse(ctx[2]).formula.kind == "fact"
        q = parse_query(r["query"]).formula
        if not r["label"]:  # False = a non-derivable property from the other 44 words
            assert q.obj != r["logic"]["property"] and q.obj in vocab.PROPERTIES
        forms[parse(ctx[1]).form] += 1
    assert 0.35 < forms["plural"] / 301 < 0.65  # plural vs singular rendering, probability 1/2


def test_original_style_distributions():
    recs = generate("fictional", 3, 400, style="original", distractors="relevant", ordering="postorder", seed=3)
    neg = sum(r["logic"]["negated"] for r in recs) / len(recs)
    assert 0.25 < neg < 0.42  # negated property with weight 0.5 against 1 (probability 1/3)
    quants = collections.Counter(s.split()[0] for r in recs for s in split_sentences(r["question"])
                                 if s.split()[0] in ("Every", "Each"))
    assert quants["Every"] > 100 and quants["Each"] > 100
    for r in recs:
        ctx = [parse(s).formula for s in split_sentences(r["question"])]
        assert [f.kind for f in ctx[-2:]] == ["fact", "fact"] and all(f.kind == "rule" for f in ctx[:-2])
        # postorder: the leaf concept's group comes before its parent's
        first = {f.subject: i for i, f in reversed(list(enumerate(ctx))) if f.kind == "rule"}
        chain = r["logic"]["chain"]
        assert all(first[chain[i]] < first[chain[i + 1]] for i in range(len(chain) - 1))
        q = parse_query(r["query"]).formula
        conclusion = parse(r["cot"][-1]).formula
        assert q == (conclusion if r["label"] else conclusion.negate())
        # the relevant distractor: a rule with the opposite polarity on a concept outside the proof
        assert any(f.kind == "rule" and f.obj == r["logic"]["property"] and f.negated != r["logic"]["negated"]
                   for f in ctx)


def test_false_and_true_ontologies():
    for r in generate("false", 3, 60, seed=1):
        lists = [set(lst) for lst in vocab.FALSE_ONTOLOGY_CONCEPTS]
        assert any(set(r["logic"]["chain"]) <= lst for lst in lists)
    pairs = {(tax[i + 1][0], tax[i][0]) for tax in TRUE_TAXONOMIES for i in range(len(tax) - 1)}
    props = {c: p for tax in TRUE_TAXONOMIES for c, p in tax}
    for r in generate("true", 4, 40, seed=2, style="original"):
        for s in split_sentences(r["question"]):
            f = parse(s).formula
            if f.kind == "rule" and LEXICON.word_type(f.obj) == "concept":
                assert (f.subject, f.obj) in pairs, s  # every subtype rule is true
            elif f.kind == "rule":
                assert props[f.subject] == f.obj and not f.negated, s


def test_step_skipping_semantics():
    r = generate("fictional", 3, 1, seed=0, cot_skip=1)[0]
    x, (c0, c1, c2) = r["logic"]["entity"], r["logic"]["chain"]
    f = [parse(s).formula for s in r["cot"]]
    assert f == [Formula("fact", x, c0), Formula("rule", c0, c1), Formula("rule", c1, c2), Formula("fact", x, c2),
                 Formula("rule", c2, r["logic"]["property"]), Formula("fact", x, r["logic"]["property"])]
    with pytest.raises(ValueError, match="cot_skip"):
        generate("fictional", 2, 1, cot_skip=2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown ontology 'alien'"):
        generate("alien", 2, 3)
    with pytest.raises(ValueError, match="hops"):
        generate("fictional", 6, 3)
    with pytest.raises(ValueError, match="distractors"):
        generate("true", 2, 3, distractors="relevant")
    with pytest.raises(ValueError, match="ordering"):
        generate("fictional", 2, 3, ordering="inorder")


def test_seeded():
    a = generate("false", 2, 30, style="original", distractors="irrelevant", ordering="random", seed=11)
    b = generate("false", 2, 30, style="original", distractors="irrelevant", ordering="random", seed=11)
    c = generate("false", 2, 30, style="original", distractors="irrelevant", ordering="random", seed=12)
    assert a == b and a != c
