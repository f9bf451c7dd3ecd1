"""Verifier (accepts valid proofs, rejects broken ones with a reason) and importers on every fixture file."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from cotmech import vocab
from cotmech.io import RecordError
from cotmech.prontoqa import generate
from cotmech.prontoqa.exporters import to_authors_json, to_generator_json
from cotmech.prontoqa.importers import import_file
from cotmech.prontoqa.logic import GENERATOR_NONCE_NOUNS, LEXICON, Formula, plural
from cotmech.prontoqa.sentences import parse, split_sentences, unparse
from cotmech.prontoqa.verify import verify

# file -> (records imported incl. in-context examples, verified, rejected); computed once, asserted exactly
FIXTURE_COUNTS = {
    "authors/fewShotPrompts.json": (8, 8, 0),
    "authors/2hop_fictional_sample.json": (200, 200, 0),
    "authors/2hop_falseontology_sample.json": (100, 100, 0),
    "authors/activation_patching_clean_sample.json": (20, 20, 0),
    "prontoqa/main_1hop_fictional.json": (20, 20, 0),
    "prontoqa/main_3hop_fictional.json": (20, 20, 0),
    "prontoqa/main_2hop_fictional_preorder_nodistractor.json": (20, 20, 0),
    "prontoqa/v1_2hop_falseontology.json": (20, 20, 0),
}


@pytest.mark.parametrize("name", sorted(FIXTURE_COUNTS))
def test_fixture_counts(fixtures_dir, name):
    recs = import_file(fixtures_dir / name)
    verdicts = [verify(r, strict=True) for r in recs]
    n, ok, bad = FIXTURE_COUNTS[name]
    assert [v.ok for v in verdicts] == [verify(r).ok for r in recs]
    assert (len(recs), sum(v.ok for v in verdicts), sum(not v.ok for v in verdicts)) == (n, ok, bad)
    assert all(v.reason for v in verdicts if not v.ok)
    for r in recs:
        assert r["logic"] is not None and r["answer"].endswith(" True" if r["label"] else " False")
    if name.startswith("prontoqa/"):
        tests = import_file(fixtures_dir / name, in_context=False)
        assert len(tests) == 5 and all(not r["source"]["in_context"] for r in tests)


def test_fixture_fields(fixtures_dir):
    """The §2.2 example record and the properties of each layout."""
    r = import_file(fixtures_dir / "authors/2hop_fictional_sample.json")[0]
    assert r["question"] == "Jompus is fast. Tumpuses are jompuses. Sam is tumpus."
    assert r["query"] == "True or false: Sam is loud."
    assert r["cot"] == ["Sam is tumpus.", "Tumpuses are jompuses.", "Sam is jompus.", "Jompus is fast.",
                        "Sam is fast."]
    assert r["label"] is False and (r["hops"], r["ontology"], r["style"]) == (2, "fictional", "paper")
    assert r["logic"]["chain"] == ["tumpus", "jompus"] and r["logic"]["query_property"] == "loud"
    labels = [x["label"] for x in import_file(fixtures_dir / "authors/2hop_fictional_sample.json")]
    assert (labels.count(False), labels.count(True)) == (104, 96)  # README: False 104 / True 96
    for name, hops, ont in [("main_1hop_fictional.json", 1, "fictional"), ("main_3hop_fictional.json", 3, "fictional"),
                            ("v1_2hop_falseontology.json", 2, "false")]:
        recs = import_file(fixtures_dir / "prontoqa" / name)
        assert {(x["hops"], x["ontology"], x["style"]) for x in recs} == {(hops, ont, "original")}
    fs = import_file(fixtures_dir / "authors/fewShotPrompts.json")
    assert [x["label"] for x in fs].count(True) == 4


def _broken(r: dict) -> dict[str, dict]:
    out = {}
    x = copy.deepcopy(r)
    x["label"] = not x["label"]
    x["answer"] = " ".join(x["cot"]) + (" True" if x["label"] else " False")
    out["flipped label"] = x
    x = copy.deepcopy(r)
    x["cot"][1], x["cot"][2] = x["cot"][2], x["cot"][1]
    out["derived fact before its rule"] = x
    x = copy.deepcopy(r)
    x["cot"] = x["cot"][:-1]
    out["no conclusion"] = x
    x = copy.deepcopy(r)
    x["cot"][1] = x["cot"][1].replace(r["logic"]["chain"][1], "wumpus" if "wumpus" not in x["question"] else "yumpus")
    out["rule not in context"] = x
    x = copy.deepcopy(r)
    x["answer"] = x["answer"].replace(". ", ", ", 1)
    out["answer mismatch"] = x
    x = copy.deepcopy(r)
    x["cot"][0] = "Sentence without a verb."
    out["unparsable"] = x
    return out


@pytest.mark.parametrize("style", ["paper", "original"])
def test_verifier_rejects_broken_proofs(style):
    for r in generate("fictional", 2, 20, style=style, seed=5):
        assert verify(r).ok
        for what, x in _broken(r).items():
            v = verify(x)
            assert not v.ok and v.reason, what


def test_strict_surface():
    r = generate("fictional", 2, 1, seed=5)[0]
    x = copy.deepcopy(r)
    c1 = r["logic"]["chain"][1]
    x["cot"][2] = x["cot"][2].replace(c1 + ".", c1 + "es.")  # "Sam is vumpuses." keeps the logic
    x["answer"] = " ".join(x["cot"]) + (" True" if x["label"] else " False")
    assert x["cot"] != r["cot"] and verify(x).ok
    v = verify(x, strict=True)
    assert not v.ok and "canonical sentence" in v.reason
    y = copy.deepcopy(r)
    y["cot"][1] = y["cot"][1].replace(" are ", " is ") if " are " in y["cot"][1] else y["cot"][1].replace(" is ", " are ")
    y["answer"] = " ".join(y["cot"]) + (" True" if y["label"] else " False")
    assert verify(y).ok and "verbatim" in verify(y, strict=True).reason


def test_verifier_rejects_broken_fixture_records(fixtures_dir):
    recs = import_file(fixtures_dir / "authors/activation_patching_clean_sample.json")
    for r in recs:
        for what, x in _broken(r).items():
            assert not verify(x).ok, what


def _write(tmp_path, obj, raw: str | None = None):
    p = tmp_path / "bad.json"
    p.write_text(raw if raw is not None else json.dumps(obj))
    return p


GOOD_AUTHORS = {"question": "Jompus is fast. Tumpuses are jompuses. Sam is tumpus.", "query": "True or false: Sam is fast.",
                "answer": "Sam is tumpus. Tumpuses are jompuses. Sam is jompus. Jompus is fast. Sam is fast. True",
                "label": "True"}
GOOD_GEN = {"question": "Dumpuses are wooden. Wumpuses are dumpuses. Max is a wumpus.",
            "query": "True or false: Max is wooden.",
            "chain_of_thought": ["Max is a wumpus.", "Wumpuses are dumpuses.", "Max is a dumpus.",
                                 "Dumpuses are wooden.", "Max is wooden."], "answer": "True"}


def test_importer_good_minimal(tmp_path):
    assert verify(import_file(_write(tmp_path, [GOOD_AUTHORS]))[0]).ok
    assert verify(import_file(_write(tmp_path, {"example1": {"test_example": GOOD_GEN}}))[0]).ok


@pytest.mark.parametrize("obj, raw, match", [
    (None, '[{"question": ', r"bad\.json: not valid JSON"),
    ("text", None, "unrecognised layout"),
    ([GOOD_AUTHORS, {k: v for k, v in GOOD_AUTHORS.items() if k != "query"}], None, r"record 1: missing key 'query'"),
    ([GOOD_AUTHORS, dict(GOOD_AUTHORS, label=True)], None, r"record 1: key 'label' must be str, got bool"),
    ([dict(GOOD_AUTHORS, label="Maybe")], None, r"record 0: label must be 'True' or 'False'"),
    ([dict(GOOD_AUTHORS, answer="Sam is fast.")], None, r"record 0: answer must end with"),
    ([dict(GOOD_AUTHORS, answer_token_pos_3=[1])], None, r"record 0: key 'answer_token_pos_3' must be an int or 'NONE'"),
    ([dict(GOOD_AUTHORS, response_2=5)], None, r"record 0: key 'response_2' must be str"),
    ([3], None, r"record 0: expected an object, got int"),
    ({"example1": {"test_example": GOOD_GEN}, "example2": {}}, None, r"record 'example2': missing key 'test_example'"),
    ({"example1": {"test_example": dict(GOOD_GEN, chain_of_thought="Max is a wumpus.")}}, None,
     r"example1'/test_example: key 'chain_of_thought' must be list"),
    ({"example1": {"test_example": dict(GOOD_GEN, answer="Yes")}}, None, r"answer must be 'True' or 'False'"),
    ({"sample1": {"test_example": GOOD_GEN}}, None, r"record 'sample1': unexpected top-level key"),
])
def test_importer_bad_input(tmp_path, obj, raw, match):
    with pytest.raises(RecordError, match=match):
        import_file(_write(tmp_path, obj, raw))


def test_importer_missing_file(tmp_path):
    with pytest.raises(RecordError, match="no such file"):
        import_file(tmp_path / "absent.json")


GENERATOR_DATA = Path(__file__).parent / "data" / "prontoqa_generator"
GENERATOR_FILES = sorted(p.name for p in GENERATOR_DATA.glob("*.json"))


def _expected(name: str) -> tuple[int, str]:
    """(hops, ontology) of a generator output, read off its file name (the generator's own naming)."""
    hops = int(re.search(r"(\d)hop", name).group(1))
    ontology = "true" if "trueontology" in name else "false" if "falseontology" in name else "fictional"
    return hops, ontology


def test_generator_data_complete():
    """The committed generator outputs cover both branches, all three ontologies and 1-5 hops."""
    cover = {(n.split("_")[0],) + _expected(n) for n in GENERATOR_FILES}
    for branch in ("main", "v1"):
        assert {(branch, h, "true") for h in range(1, 6)} <= cover
        assert {b for b, _, o in cover if o == "false"} == {"main", "v1"}
        assert any(b == branch and o == "fictional" for b, _, o in cover)


@pytest.mark.parametrize("name", GENERATOR_FILES)
def test_generator_outputs_import_and_verify(name):
    """Every record the original generator writes imports, verifies strictly, with its file's hops and ontology."""
    recs = import_file(GENERATOR_DATA / name)
    assert len(recs) == 6  # 3 examples x (1 in-context + 1 test)
    hops, ontology = _expected(name)
    for r in recs:
        v = verify(r, strict=True)
        assert v.ok, (r["id"], v.reason)
        assert (r["hops"], r["ontology"], r["style"]) == (hops, ontology, "original"), r["id"]
        assert len(r["cot"]) == 2 * hops + 1


def _sentence_features(text: str) -> set[str]:
    p = parse(text)
    f = p.formula
    out = {p.form + (f" {p.quantifier}" if p.quantifier else "")}
    words = (f.subject, f.obj)
    if f.negated:
        out.add(f"negated {f.kind}")
    if f.kind == "fact" and f.subject.isdigit():
        out.add("number entity")
    if any(" " in w for w in words):
        out.add("multi-word concept")
    if any("-" in w for w in words):
        out.add("hyphenated property")
    if f.kind == "fact" and re.search(r" is (not )?an? ", text):
        out.add("fact with article")
    if p.form == "plural" and any(plural(w) != w + "es" and plural(w) != w + "s" for w in words
                                  if LEXICON.word_type(w) == "concept"):
        out.add("irregular plural")
    if any(w in GENERATOR_NONCE_NOUNS and w not in vocab.FICTIONAL_CONCEPTS for w in words):
        out.add("disjoint nonce noun")
    return out


def test_every_generator_sentence_form_round_trips(fixtures_dir):
    """Each sentence the generator writes is re-rendered from its logical form exactly (exporter ∘ parser = id),
    and the files hold every sentence form: fact with article, Every/Each, plural, negated rules and facts, number
    entities, multi-word concepts, hyphenated properties, irregular plurals, the nonce nouns."""
    files = [GENERATOR_DATA / n for n in GENERATOR_FILES] + sorted((fixtures_dir / "prontoqa").glob("*.json"))
    seen: set[str] = set()
    for path in files:
        for r in import_file(path):
            for s in split_sentences(r["question"]) + r["cot"] + [r["query"][len("True or false: "):]]:
                assert unparse(parse(s), r["style"]) == s, (path.name, s)
                seen |= _sentence_features(s)
    assert seen >= {"fact", "fact with article", "quantified Every", "quantified Each", "plural", "negated fact",
                    "negated rule", "number entity", "multi-word concept", "hyphenated property", "irregular plural",
                    "disjoint nonce noun"}, seen


@pytest.mark.parametrize("source", ["generator", "authors", "fixtures"])
def test_import_export_identity_on_files(fixtures_dir, source):
    """export(import(file)) is the file's data, for the generator outputs and the authors' records."""
    if source == "generator":
        paths = [GENERATOR_DATA / n for n in GENERATOR_FILES]
    else:
        paths = sorted((fixtures_dir / ("authors" if source == "authors" else "prontoqa")).glob("*.json"))
    for path in paths:
        raw = json.loads(path.read_text())
        recs = import_file(path)
        if isinstance(raw, dict):
            assert to_generator_json(recs) == raw, path.name
        else:
            assert to_authors_json(recs) == [{k: x[k] for k in ("question", "query", "answer", "label")}
                                             for x in raw], path.name


def test_true_ontology_sentences():
    """The issue's examples: number entities and multi-word concepts of the true ontology."""
    p = parse("127 is a Mersenne prime.")
    assert p.formula == Formula("fact", "127", "Mersenne prime") and p.form == "fact"
    assert parse("Every Mersenne prime is a prime number.").formula == Formula("rule", "Mersenne prime",
                                                                               "prime number")
    assert parse("Mersenne primes are not composite.").formula == Formula("rule", "Mersenne prime", "composite",
                                                                          True)
    assert parse("Painted ladies are butterflies.").formula == Formula("rule", "painted lady", "butterfly")
    assert parse("Each mammal is warm-blooded.").formula == Formula("rule", "mammal", "warm-blooded")
    assert parse("Bacteria are not multicellular.").formula == Formula("rule", "bacteria", "multicellular", True)


# plurals the original generator's morphology gives that no regular rule does (its add_noun table)
GENERATOR_PLURALS = {"person": "people", "mouse": "mice", "food": "food", "bacteria": "bacteria", "sheep": "sheep",
                     "worpus": "worpus", "sorpus": "sorpus", "painted lady": "painted ladies", "tabby": "tabbies",
                     "butterfly": "butterflies", "dragonfly": "dragonflies", "fish": "fishes", "moss": "mosses",
                     "virus": "viruses", "Mersenne prime": "Mersenne primes", "wumpus": "wumpuses", "timple": "timples"}


@pytest.mark.parametrize("lemma, plural_form", sorted(GENERATOR_PLURALS.items()))
def test_generator_plurals(lemma, plural_form):
    assert plural(lemma) == plural_form
    cap = plural_form[0].upper() + plural_form[1:]
    assert parse(f"{cap} are animals.").formula == Formula("rule", lemma, "animal")
