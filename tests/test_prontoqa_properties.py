"""Property-based tests (hypothesis) of the task layer (#19 item 8).

- any generated record verifies (strict surface check included), whatever ontology, hops, style, distractors,
  ordering, step skipping and seed;
- any corruption keeps the token count, changes exactly the intended word (one span, same type, the target's
  lemma, at the §3 location) and never lands inside the exemplars or the masked phrases;
- import ∘ export is the identity on records, and parse ∘ render on sentences, for every sentence form.

Example counts are kept small (seconds per test); the strategies draw the dataset settings, not text, so every
example is a valid setting.
"""
from __future__ import annotations

import json
import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cotmech import vocab
from cotmech.models import task_tokenizer
from cotmech.prontoqa import generate
from cotmech.prontoqa.corrupt import Pair, Rejected, encode, make_pair
from cotmech.prontoqa.exporters import export_file
from cotmech.prontoqa.importers import import_file
from cotmech.prontoqa.logic import (GENERATOR_NONCE_NOUNS, GENERATOR_REAL_NOUNS, GENERATOR_TRUE_PROPERTIES, LEXICON,
                                    NUMBER_ENTITIES, Formula)
from cotmech.prontoqa.prompts import build_prompt
from cotmech.prontoqa.sentences import parse, render, unparse
from cotmech.prontoqa.subtasks import steps
from cotmech.prontoqa.verify import verify

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MASKED = ("Let us think step by step.", "True or false:")


@st.composite
def dataset_settings(draw):
    """Keyword arguments of :func:`generate` for one valid setting."""
    ontology = draw(st.sampled_from(["fictional", "false", "true"]))
    hops = draw(st.integers(1, 5 if ontology != "false" else 4))
    style = draw(st.sampled_from(["paper", "original"]))
    distractors = "none" if ontology == "true" else draw(st.sampled_from(["none", "relevant", "irrelevant"]))
    return {"ontology": ontology, "hops": hops, "style": style, "distractors": distractors,
            "ordering": draw(st.sampled_from(["preorder", "postorder", "random"])),
            "cot_skip": draw(st.integers(0, hops - 1)), "seed": draw(st.integers(0, 2**32 - 1))}


@FAST
@given(dataset_settings(), st.integers(1, 4))
def test_any_generated_record_verifies(kw, n):
    recs = generate(n=n, **kw)
    assert len(recs) == n
    for r in recs:
        v = verify(r, strict=True)
        assert v.ok, (kw, r["question"], r["cot"], v.reason)
        assert len(r["cot"]) == 2 * kw["hops"] + 1 - kw["cot_skip"]


_TOKENIZERS = {}


def _tokenizer(name):
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = task_tokenizer(300 if name == "bpe300" else 1000)
    return _TOKENIZERS[name]


def _blank(text: str) -> str:
    for m in MASKED:
        text = text.replace(m, " " * len(m))
    return text


def _phrase_lemmas(text: str) -> set[str]:
    """Lemmas of the noun phrases of ``text``: a known two-word concept counts as one phrase, not as its words."""
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9\-]*", text)
    out, i = set(), 0
    while i < len(words):
        if i + 1 < len(words) and LEXICON.concept(f"{words[i]} {words[i + 1]}"):
            out.add(LEXICON.lemma(f"{words[i]} {words[i + 1]}")[0])
            i += 2
        else:
            out.add(LEXICON.lemma(words[i])[0])
            i += 1
    return out


def _masked_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for p in MASKED for m in re.finditer(re.escape(p), text)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dataset_settings(), st.integers(0, 2**32 - 1), st.sampled_from(["bpe300", "bpe1000"]), st.integers(0, 3),
       st.data())
def test_any_corruption_changes_only_the_intended_word(kw, rng_seed, tok_name, shots, data):
    rec = generate(n=1, **kw)[0]
    tok = _tokenizer(tok_name)
    prompt = build_prompt(rec, shots=shots)
    all_steps = steps(rec, include_label=True)
    step = data.draw(st.sampled_from(all_steps))
    pair = make_pair(rec, step, prompt, tok, np.random.default_rng(rng_seed))
    if isinstance(pair, Rejected):
        assert pair.reason in ("no equal-length replacement", "tokenizer merges across the answer boundary")
        return
    assert isinstance(pair, Pair)
    # the same token count, the ids are the tokenisation of the texts, and they differ
    assert len(pair.clean_ids) == len(pair.corrupt_ids) and pair.clean_ids != pair.corrupt_ids
    assert pair.clean_ids == encode(tok, pair.clean) and pair.corrupt_ids == encode(tok, pair.corrupt)
    # exactly one span differs: clean = head + from + tail, corrupt = head + to + tail
    frm, to = pair.replaced["from"], pair.replaced["to"]
    head = next(i for i, (a, b) in enumerate(zip(pair.clean, pair.corrupt)) if a != b)
    starts = [s for s in range(max(0, head - len(frm)), head + 1) if pair.clean[s:s + len(frm)] == frm
              and pair.corrupt[s:s + len(to)] == to and pair.clean[s + len(frm):] == pair.corrupt[s + len(to):]
              and pair.clean[:s] == pair.corrupt[:s]]
    assert starts, (frm, to)
    s = starts[-1]
    e = s + len(frm)
    # the intended word: whole words, the target's lemma (the final property for the label), another word of its type
    assert not pair.clean[e:e + 1].isalpha() and not pair.clean[s - 1:s].isalpha()
    (lf, _), (lt, _) = LEXICON.lemma(frm), LEXICON.lemma(to)
    want = step.lemma if step.kind != "label" else parse(rec["cot"][-1]).formula.obj
    assert lf == want and lt != lf and LEXICON.word_type(lt) == LEXICON.word_type(lf)
    # at the §3 location: question/query-sourced answers in the prompt's test block, generated ones in the response
    assert pair.replaced["where"] == ("response" if step.source == "generated" else "prompt")
    assert (s >= len(prompt)) == (pair.replaced["where"] == "response")
    assert s > prompt.rfind("### Input")  # never in the exemplars
    # which occurrence: a rule's subject where the rule is stated in the question, else the most recent one
    rule = parse(rec["cot"][step.sentence]).formula if step.kind == "decision" else None
    if rule is not None and rule.kind == "rule":
        sent_start = pair.clean.rfind(". ", 0, s) + 2 if pair.clean.rfind(". ", 0, s) > pair.clean.rfind("\n", 0, s) \
            else pair.clean.rfind("\n", 0, s) + 1
        sent = pair.clean[sent_start:pair.clean.index(".", s) + 1]
        assert parse(sent).formula == rule and sent in rec["question"], sent
        assert parse(sent).subj[0] == s - sent_start
    else:
        end = len(prompt) if pair.replaced["where"] == "prompt" else len(pair.clean)
        later = _blank(pair.clean[e:end])
        assert want not in _phrase_lemmas(later), (want, later)
    for a, b in _masked_spans(pair.clean):  # never inside the masked phrases
        assert e <= a or s >= b, (frm, pair.clean[a:b])
    assert pair.corrupt.count(MASKED[0]) == pair.clean.count(MASKED[0])
    assert pair.corrupt.count(MASKED[1]) == pair.clean.count(MASKED[1])


_CORE = ("entity", "chain", "property", "negated", "query_property", "query_negated", "cot_skip")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(dataset_settings(), st.integers(1, 3), st.sampled_from(["generator", "authors"]))
def test_import_export_identity(tmp_path, kw, n, layout):
    recs = generate(n=n, **kw)
    path = tmp_path / f"{layout}.json"
    export_file(recs, path, layout)
    back = import_file(path)
    assert len(back) == len(recs)
    for a, b in zip(recs, back):
        for key in ("question", "query", "cot", "label", "answer", "hops", "style", "ontology"):
            assert a[key] == b[key], (key, kw)
        assert {k: a["logic"][k] for k in _CORE} == {k: b["logic"][k] for k in _CORE}
    # and export ∘ import is the identity on the file
    again = tmp_path / f"again-{layout}.json"
    export_file(back, again, layout)
    assert json.loads(again.read_text()) == json.loads(path.read_text())


_CONCEPTS = sorted(set(LEXICON.concepts) | set(GENERATOR_NONCE_NOUNS) | set(GENERATOR_REAL_NOUNS))
_PROPERTIES = sorted(set(LEXICON.properties) | set(GENERATOR_TRUE_PROPERTIES))
_ENTITIES = list(vocab.ENTITIES) + list(NUMBER_ENTITIES)


@st.composite
def sentences(draw):
    """(formula, style, plural_form, quantifier) for any sentence form the generator (or the paper style) writes."""
    kind = draw(st.sampled_from(["fact", "rule"]))
    style = draw(st.sampled_from(["original", "paper"]))
    negated = style == "original" and draw(st.booleans())
    obj = draw(st.sampled_from(_CONCEPTS + _PROPERTIES))
    subject = draw(st.sampled_from(_ENTITIES if kind == "fact" else _CONCEPTS))
    return (Formula(kind, subject, obj, negated), style, kind == "rule" and draw(st.booleans()),
            draw(st.sampled_from(["Every", "Each"])))


@settings(max_examples=200, deadline=None)
@given(sentences())
def test_every_sentence_form_round_trips(case):
    f, style, plural_form, quantifier = case
    text = render(f, style, plural_form=plural_form, quantifier=quantifier)
    p = parse(text)
    assert p.formula == f, text
    assert unparse(p, style) == text
    s, e = p.subj
    assert LEXICON.lemma(text[s:e])[0] == f.subject
