"""CoT next-token subtasks (study.md §3): one step per content word of the gold CoT.

For the 2-hop paper-style CoT "Wren is impus. Impuses are sterpuses. Wren is sterpus. Sterpuses are earthy. Wren is
earthy." the steps are exactly the 10 of §3 (every word start except "is"/"are"). The generalisation, per CoT sentence
pattern (n hops, step skipping, original style), gives two steps per sentence — the subject phrase's first word and
the object phrase's first word; quantifiers ("Every"/"Each"), articles and "not" stay inside the prefixes:

=====================================  ======================  =========================
sentence                               subject step            object step
=====================================  ======================  =========================
premise "x is A" (first sentence)      decision, query         copy, question
rule "A is B" / "As are Bs" / "A is p" decision, question      copy, question
derived fact "x is B" / "x is p"       decision, generated     induction, generated
=====================================  ======================  =========================

A fact is a *premise* if it is stated in the context, else *derived* (the conclusion included); the first
sentence's subject reads the entity from the query (``source="query"``), later premises read ``question``.
With ``include_label`` a last step predicts "True"/"False" (``kind="label"``, ``source="generated"``: its corruption
replaces the CoT's final property, study.md §3 row 10). An n-hop CoT without skipping has 2(2n+1) steps; each skipped
derived fact removes two.
"""
from __future__ import annotations

from dataclasses import dataclass

from .logic import LEXICON
from .sentences import parse, split_sentences


@dataclass(frozen=True)
class Step:
    """One next-token subtask: given ``prefix`` (response text so far) predict ``target``'s first token."""

    index: int
    prefix: str  # response text before the target word, no trailing space ("" at the start)
    target: str  # the next word as it appears, without punctuation ("Impuses")
    kind: str  # "decision" | "copy" | "induction" | "label"
    source: str  # "query" | "question" | "generated"
    term: str = ""  # the whole phrase the word starts ("real numbers"); "True"/"False" for the label
    lemma: str = ""  # its lemma ("real number"); for the label step the CoT's final property
    word_type: str = ""  # "entity" | "concept" | "property" | "unknown" | "label"
    sentence: int = -1  # index of the CoT sentence


def steps(record: dict, include_label: bool = False) -> list[Step]:
    """All subtasks of ``record``'s gold CoT (see module docstring)."""
    cot = record["cot"]
    context = {parse(s).formula for s in split_sentences(record["question"])}
    response = ""
    out: list[Step] = []
    for si, sent in enumerate(cot):
        start = len(response) + (1 if response else 0)
        response = f"{response} {sent}" if response else sent
        p = parse(sent)
        f = p.formula
        if f.kind == "rule":
            roles = (("decision", "question"), ("copy", "question"))
        elif f in context:
            roles = (("decision", "query" if si == 0 else "question"), ("copy", "question"))
        else:
            roles = (("decision", "generated"), ("induction", "generated"))
        for (s, e), (kind, source) in zip((p.subj, p.obj), roles):
            term = sent[s:e]
            lemma, _ = LEXICON.lemma(term)
            out.append(Step(len(out), response[:start + s].rstrip(), term.split()[0], kind, source, term, lemma,
                            LEXICON.word_type(lemma), si))
    if include_label:
        last = parse(cot[-1]).formula
        label = "True" if record["label"] else "False"
        out.append(Step(len(out), response, label, "label", "generated", label, last.obj, "label", len(cot)))
    return out
