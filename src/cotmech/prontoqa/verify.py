"""Proof checker for task records: is the CoT a valid modus-ponens proof from the context that decides the query?

Checks, in order (the first failure is the verdict's reason):

1. every context, query and CoT sentence parses (:mod:`.sentences`);
2. every CoT rule is a context rule; every CoT fact is a context fact or follows from the CoT's earlier facts by a
   chain of modus ponens through rules stated earlier in the CoT (one rule normally; more when derived facts were
   skipped, E13);
3. the last CoT sentence is a fact about the query's entity that decides the query: equal to it (True), its negation
   (False), or — closed world, positive query — another property while the query is not derivable (False);
4. the label follows from the context alone (query derivable → True; negation derivable → False; neither → False
   only for a positive query under the closed-world reading of the paper style) and agrees with (3);
5. ``answer`` equals the CoT joined by spaces plus " True"/" False".

``strict=True`` also checks the surface: every CoT rule repeats a context sentence verbatim and every other CoT
sentence is the canonical rendering of its fact in the record's style ("Max is a wumpus." / "Max is wumpus."), so
number or article slips ("Sam is vumpuses.") that keep the logic intact are rejected too.
"""
from __future__ import annotations

from dataclasses import dataclass

from .logic import Formula, closure
from .sentences import ParseError, parse, parse_query, render, split_sentences


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str | None = None


def _fail(reason: str) -> Verdict:
    return Verdict(False, reason)


def parse_record(record: dict) -> tuple[list[Formula], Formula, list[Formula]]:
    """(context formulas, query formula, CoT formulas); raises :class:`ParseError` naming the sentence."""
    context = [parse(s).formula for s in split_sentences(record["question"])]
    query = parse_query(record["query"]).formula
    cot = [parse(s).formula for s in record["cot"]]
    return context, query, cot


def verify(record: dict, strict: bool = False) -> Verdict:
    """Check ``record`` (task-record contract) as described in the module docstring."""
    try:
        context, query, cot = parse_record(record)
    except ParseError as e:
        return _fail(f"unparsable: {e}")
    if not cot:
        return _fail("empty CoT")
    if strict:
        ctx_text = set(split_sentences(record["question"]))
        style = record.get("style", "paper")
        for i, (f, text) in enumerate(zip(cot, record["cot"])):
            if f.kind == "rule" and text not in ctx_text:
                return _fail(f"CoT step {i} does not repeat a context sentence verbatim: {text!r}")
            if f.kind == "fact" and text not in ctx_text and text != render(f, style):
                return _fail(f"CoT step {i} is not the canonical sentence {render(f, style)!r}: {text!r}")
    ctx_facts = {f for f in context if f.kind == "fact"}
    ctx_rules = {f for f in context if f.kind == "rule"}
    known: set[Formula] = set()
    stated_rules: set[Formula] = set()
    for i, f in enumerate(cot):
        if f.kind == "rule":
            if f not in ctx_rules:
                return _fail(f"CoT step {i} states a rule that is not in the context: {record['cot'][i]!r}")
            stated_rules.add(f)
            continue
        if f not in ctx_facts and f not in closure(known, stated_rules, f.subject):
            return _fail(f"CoT step {i} does not follow from earlier steps: {record['cot'][i]!r}")
        known.add(f)
    last = cot[-1]
    label = record["label"]
    if last.kind != "fact" or last.subject != query.subject:
        return _fail("the CoT does not end with a fact about the query's entity")
    if last == query:
        cot_label = True
    elif last == query.negate():
        cot_label = False
    elif (not query.negated and not last.negated and last.obj != query.obj
          and last.obj not in {r.subject for r in ctx_rules}):
        cot_label = False  # closed world: the CoT derives a different property
    else:
        return _fail("the CoT's conclusion does not decide the query")
    derivable = closure(ctx_facts, ctx_rules, query.subject)
    pos, neg = query in derivable, query.negate() in derivable
    if pos and neg:
        return _fail("the context is contradictory about the query")
    if pos:
        ctx_label = True
    elif neg or not query.negated:
        ctx_label = False
    else:
        return _fail("the query is not decided by the context")
    if cot_label != ctx_label:
        return _fail(f"the CoT concludes {cot_label} but the context entails {ctx_label}")
    if label != ctx_label:
        return _fail(f"label {label} does not follow from the context (expected {ctx_label})")
    expected = " ".join(record["cot"]) + (" True" if label else " False")
    if record.get("answer", expected) != expected:
        return _fail("answer is not the CoT joined by spaces followed by the label")
    return Verdict(True)
