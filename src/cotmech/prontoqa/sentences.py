"""Render logical forms as PrOntoQA sentences and parse sentences back (both styles, study.md §2.1–2.2).

Original style (asaparov/prontoqa ``syntax.py`` forms): "Every wumpus is a dumpus." / "Each wumpus is a dumpus." /
"Wumpuses are dumpuses." / "Each wumpus is sweet." / "Every wumpus is not sweet." / "Wumpuses are not sweet." /
"Max is a wumpus." / "Max is not floral.".
Paper style (the authors' simplification): quantifiers and articles removed, the next word capitalised:
"Wumpus is dumpus." / "Wumpuses are dumpuses." / "Max is wumpus." / "Max is floral.".
The parser accepts both, plus the loose forms of the authors' template ("Borpin are wumpus.").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .logic import LEXICON, Formula, is_number_entity, surface

QUERY_PREFIX = "True or false: "
QUANTIFIERS = ("Every", "Each")
_SENT_SPLIT = re.compile(r"(?<=\.)\s+")


class ParseError(ValueError):
    """A sentence is not in any PrOntoQA form; the message quotes it."""


@dataclass(frozen=True)
class Parsed:
    """A parsed sentence: its formula plus where its subject and object phrases sit in the text."""

    text: str
    formula: Formula
    subj: tuple[int, int]  # char span of the subject phrase (without quantifier)
    obj: tuple[int, int]  # char span of the object phrase (without "not"/article/".")
    form: str  # "fact" | "quantified" | "plural" | "bare"
    quantifier: str = ""  # "Every" | "Each" for the quantified form


def split_sentences(text: str) -> list[str]:
    """Split a context or CoT string into sentences (each ends with ".")."""
    text = text.strip()
    return [s for s in _SENT_SPLIT.split(text) if s] if text else []


def article(word: str) -> str:
    """The generator's indefinite article: "an" before a vowel letter, except "eu" ("a eudicot")."""
    return "an" if word[:1].lower() in "aeiou" and not word.lower().startswith("eu") else "a"


def render(f: Formula, style: str = "original", plural_form: bool = False, quantifier: str = "Every",
           is_concept: bool | None = None) -> str:
    """One sentence for ``f``. ``plural_form`` picks "As are Bs." for rules; ``quantifier`` Every/Each (original)."""
    if style not in ("original", "paper"):
        raise ValueError(f"unknown style {style!r}; expected 'original' or 'paper'")
    if is_concept is None:
        is_concept = LEXICON.word_type(f.obj) == "concept"
    neg = "not " if f.negated else ""
    if f.kind == "fact":
        obj = f"{article(f.obj)} {f.obj}" if (is_concept and style == "original") else f.obj
        return f"{f.subject} is {neg}{obj}."
    if plural_form:
        obj = surface(f.obj, plural_form=True) if is_concept else f.obj
        return f"{surface(f.subject, True, True)} are {neg}{obj}."
    if style == "paper":
        return f"{surface(f.subject, False, True)} is {neg}{f.obj}."
    obj = f"{article(f.obj)} {f.obj}" if is_concept else f.obj
    return f"{quantifier} {f.subject} is {neg}{obj}."


def render_query(f: Formula, style: str = "original") -> str:
    return QUERY_PREFIX + render(f, style)


def parse(sentence: str) -> Parsed:
    """Parse one sentence into its :class:`Parsed` form; raises :class:`ParseError`."""
    text = sentence
    s = sentence.rstrip()
    if not s.endswith("."):
        raise ParseError(f"sentence does not end with '.': {sentence!r}")
    body = s[:-1]
    m = re.fullmatch(r"(?:(Every|Each) )?(.+?) (is|are) (not )?(?:(a|an) )?(.+)", body)
    if not m:
        raise ParseError(f"not a PrOntoQA sentence: {sentence!r}")
    quant, subj, verb, neg, art, obj = m.groups()
    if not (re.fullmatch(r"[A-Za-z][A-Za-z\-]*( [A-Za-z][A-Za-z\-]*)*", subj) or is_number_entity(subj)) or \
            not re.fullmatch(r"[A-Za-z][A-Za-z\-]*( [A-Za-z][A-Za-z\-]*)*", obj):
        raise ParseError(f"not a PrOntoQA sentence: {sentence!r}")
    subj_span = (m.start(2), m.end(2))
    obj_span = (m.start(6), m.end(6))
    obj_lemma, _ = LEXICON.lemma(obj)
    entity = subj in LEXICON.entities or is_number_entity(subj)
    if quant is None and verb == "is" and entity:
        return Parsed(text, Formula("fact", subj, obj_lemma, neg is not None), subj_span, obj_span, "fact")
    if entity:
        raise ParseError(f"entity {subj!r} used as a class in {sentence!r}")
    subj_lemma, _ = LEXICON.lemma(subj)
    form = "quantified" if quant else ("plural" if verb == "are" else "bare")
    return Parsed(text, Formula("rule", subj_lemma, obj_lemma, neg is not None), subj_span, obj_span, form,
                  quant or "")


def unparse(p: Parsed, style: str) -> str:
    """The sentence of ``p``'s formula in ``p``'s surface form (fact / Every-Each / plural / bare) and ``style``:
    the exporter's inverse of :func:`parse` (``unparse(parse(s), style) == s`` for every generator sentence)."""
    return render(p.formula, style, plural_form=p.form == "plural", quantifier=p.quantifier or "Every")


def parse_query(query: str) -> Parsed:
    """Parse "True or false: <fact>." (the fact part; spans are relative to the whole query string)."""
    if not query.startswith(QUERY_PREFIX):
        raise ParseError(f"query does not start with {QUERY_PREFIX!r}: {query!r}")
    p = parse(query[len(QUERY_PREFIX):])
    if p.formula.kind != "fact":
        raise ParseError(f"query is not about an entity: {query!r}")
    k = len(QUERY_PREFIX)
    return Parsed(query, p.formula, (p.subj[0] + k, p.subj[1] + k), (p.obj[0] + k, p.obj[1] + k), p.form,
                  p.quantifier)


def style_of(sentences: list[str]) -> str:
    """'original' if any sentence has a quantifier, an article or a negation, else 'paper'."""
    for s in sentences:
        words = s.rstrip(".").split()
        if words and words[0] in QUANTIFIERS:
            return "original"
        if any(w in ("a", "an", "not") for w in words):
            return "original"
    return "paper"
