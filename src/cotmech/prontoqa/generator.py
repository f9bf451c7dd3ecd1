"""Seeded PrOntoQA-style generator with the semantics of asaparov/prontoqa (ModusPonens; study.md §2.1–2.2).

Not an RNG-exact port: the same structures and distributions, drawn from one ``numpy`` generator per dataset.

Ontology per question (``hops`` = h): a chain of h concepts c_0 (the entity's class) → … → c_{h-1}; c_{h-1} carries
the queried property p (original style: negated with probability 1/3, i.e. weight 0.5 against weight 1 for a positive
value). CoT (2h+1 sentences): "x is c_0", then for i = 1…h-1 the rule "c_{i-1} is c_i" and the derived fact
"x is c_i", then the property rule and the conclusion "x is (not) p".

Distractors (the proof width is fixed at the generator's default 2, i.e. one property per concept):

- ``none``: the context is exactly the proof's formulas (h+1 sentences), as main prunes it.
- ``relevant``: every chain concept gets its own property (one unused family per level), each c_i (i < h-1) a
  distractor parent d_i with a property, a separate two-node ontology e_0 → e_1 with properties plus the premise
  "x is e_0", and one rule on a fresh concept z that looks like an answer: original style "z is (not) p" with the
  opposite polarity; paper style "z is p'" with p' another value of p's family.
- ``irrelevant``: the same shape, but z's property comes from a family that occurs nowhere else.

Orderings: each concept owns a group [its property rule, its parent rules]; ``preorder`` emits groups from the root
c_{h-1} down to c_0 (distractor parents after their child, the distractor ontology root first), ``postorder`` the
reverse, ``random`` shuffles all rule sentences. Entity premises always come last (their order drawn at random).

Labels: original style False = the query negates the conclusion; paper style False = the query asks a property drawn
uniformly from the 45 generator words that is not derivable for x (no negation anywhere, as in the authors' files).
A dataset of n records has exactly ceil(n/2) True and floor(n/2) False labels in a seeded random order.
Rules are rendered plural ("As are Bs.") with probability 1/2, else singular with Every/Each drawn 50/50 (original)
or bare ("A is B.", paper). Records within one dataset have distinct (question, query).

Step skipping (E13, ``cot_skip`` = s ≥ 1): the first s derived membership facts "x is c_1" … "x is c_s" are left out
of the CoT (everything else unchanged), so after the premise the CoT states s+1 consecutive rules before the next
derived fact — exactly the authors' ``_1step``/``_2step`` templates. Requires s ≤ h-1.
"""
from __future__ import annotations

import math

import numpy as np

from .. import vocab
from .logic import (FALSE_CONCEPTS, ONTOLOGIES, TRUE_TAXONOMIES, Formula, closure, concept_vocabulary)
from .sentences import parse, render, render_query

STYLES = ("paper", "original")
DISTRACTORS = ("none", "relevant", "irrelevant")
ORDERINGS = ("preorder", "postorder", "random")
NEGATION_P = 1 / 3


def _check(ontology: str, hops: int, n: int, style: str, distractors: str, ordering: str, cot_skip: int) -> None:
    if ontology not in ONTOLOGIES:
        raise ValueError(f"unknown ontology {ontology!r}; expected one of {', '.join(ONTOLOGIES)}")
    if not isinstance(hops, int) or not 1 <= hops <= 5:
        raise ValueError(f"hops must be an integer in 1..5, got {hops!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    if distractors not in DISTRACTORS:
        raise ValueError(f"unknown distractors {distractors!r}; expected one of {', '.join(DISTRACTORS)}")
    if ordering not in ORDERINGS:
        raise ValueError(f"unknown ordering {ordering!r}; expected one of {', '.join(ORDERINGS)}")
    if ontology == "true" and distractors != "none":
        raise ValueError("ontology 'true' requires distractors 'none' (as in asaparov/prontoqa main)")
    if not isinstance(cot_skip, int) or not 0 <= cot_skip <= hops - 1:
        raise ValueError(f"cot_skip must be an integer in 0..hops-1 = 0..{hops - 1}, got {cot_skip!r}")


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _one(rng: np.random.Generator, ontology: str, hops: int, style: str, distractors: str, ordering: str,
         cot_skip: int, label: bool) -> tuple[str, str, list[str], dict]:
    """One question: (question, query, cot, logic)."""
    h = hops
    n_extra = 0 if distractors == "none" else (h - 1) + 2 + 1  # d_i, e_0, e_1, z
    # --- concepts
    if ontology == "true":
        tax = TRUE_TAXONOMIES[int(rng.integers(len(TRUE_TAXONOMIES)))]
        start = int(rng.integers(len(tax) - h + 1))
        top_down = tax[start:start + h]  # general -> specific
        chain = [c for c, _ in reversed(top_down)]
        extra: list[str] = []
    else:
        if ontology == "fictional":
            pool = list(vocab.FICTIONAL_CONCEPTS)
        else:
            pool = list(vocab.FALSE_ONTOLOGY_CONCEPTS[int(rng.integers(len(vocab.FALSE_ONTOLOGY_CONCEPTS)))])
        perm = [pool[i] for i in rng.permutation(len(pool))]
        chain = perm[:h]
        rest = perm[h:]
        if len(rest) < n_extra:  # false ontology: distractor concepts may come from the other lists
            others = [c for c in FALSE_CONCEPTS if c not in pool]
            rest += [others[i] for i in rng.permutation(len(others))]
        extra = rest[:n_extra]
    entity = _pick(rng, vocab.ENTITIES)
    # --- properties: one unused family per node
    fams = [vocab.PROPERTY_FAMILIES[i] for i in rng.permutation(len(vocab.PROPERTY_FAMILIES))]
    if ontology == "true":
        prop, neg = top_down[0][1], False
        fam_p: tuple[str, ...] = (prop,)
    else:
        fam_p = fams.pop()
        prop = _pick(rng, fam_p)
        neg = style == "original" and bool(rng.random() < NEGATION_P)
    sing = lambda: bool(rng.random() < 0.5)  # noqa: E731 - plural rendering coin
    quant = lambda: "Every" if rng.random() < 0.5 else "Each"  # noqa: E731

    rules: dict[str, list[Formula]] = {}  # concept -> its group (property rule first, then parent rules)
    chain_rules = [Formula("rule", chain[i - 1], chain[i]) for i in range(1, h)]
    prop_rule = Formula("rule", chain[-1], prop, neg)
    for c in chain:
        rules[c] = []
    rules[chain[-1]].append(prop_rule)
    for r in chain_rules:
        rules[r.subject].append(r)
    premises = [Formula("fact", entity, chain[0])]
    group_order = list(reversed(chain))  # preorder: root first
    if distractors != "none":
        d = extra[:h - 1]
        e0, e1, z = extra[h - 1:h + 2]
        for i, c in enumerate(chain[:-1]):  # own properties of the non-top chain concepts
            rules[c].insert(0, Formula("rule", c, _pick(rng, fams.pop()), style == "original" and bool(rng.random() < NEGATION_P)))
        for i, di in enumerate(d):
            rules[chain[i]].append(Formula("rule", chain[i], di))
            rules[di] = [Formula("rule", di, _pick(rng, fams.pop()))]
        rules[e1] = [Formula("rule", e1, _pick(rng, fams.pop()))]
        rules[e0] = [Formula("rule", e0, _pick(rng, fams.pop())), Formula("rule", e0, e1)]
        if distractors == "relevant":
            if style == "original":
                zr = Formula("rule", z, prop, not neg)
            else:
                sib = [p for p in fam_p if p != prop]
                zr = Formula("rule", z, _pick(rng, sib) if sib else prop)
        else:
            zr = Formula("rule", z, _pick(rng, fams.pop()))
        rules[z] = [zr]
        premises.append(Formula("fact", entity, e0))
        group_order = []
        for c in reversed(chain):
            group_order.append(c)
            if c in chain[:-1]:
                group_order.append(d[chain.index(c)])
        group_order += [e1, e0, z]
    if ordering == "postorder":
        group_order = list(reversed(group_order))
    context_rules = [r for c in group_order for r in rules[c]]
    if ordering == "random":
        context_rules = [context_rules[i] for i in rng.permutation(len(context_rules))]
    premises = [premises[i] for i in rng.permutation(len(premises))]
    # --- rendering (each rule keeps one surface form in context and CoT)
    surface: dict[Formula, str] = {}
    for r in context_rules:
        surface[r] = render(r, style, plural_form=sing(), quantifier=quant())
    for f in premises:
        surface[f] = render(f, style)
    for f, text in surface.items():  # the generator's built-in self-test: every sentence parses back
        if parse(text).formula != f:
            raise RuntimeError(f"generated sentence {text!r} does not parse back to {f}")
    question = " ".join(surface[f] for f in context_rules + premises)
    # --- CoT
    cot_f: list[Formula] = [premises[premises.index(Formula("fact", entity, chain[0]))]]
    for i, r in enumerate(chain_rules, start=1):
        cot_f.append(r)
        if i > cot_skip:
            cot_f.append(Formula("fact", entity, chain[i]))
    conclusion = Formula("fact", entity, prop, neg)
    cot_f += [prop_rule, conclusion]
    cot = [surface.get(f) or render(f, style) for f in cot_f]
    # --- query
    if label:
        qf = conclusion
    elif style == "original":
        qf = conclusion.negate()
    else:
        facts = closure(set(premises), set(context_rules), entity)
        derivable = {f.obj for f in facts}
        qf = Formula("fact", entity, _pick(rng, [p for p in vocab.PROPERTIES if p not in derivable]))
    query = render_query(qf, style)
    logic = {
        "entity": entity, "chain": chain, "property": prop, "negated": neg,
        "query_property": qf.obj, "query_negated": qf.negated, "cot_skip": cot_skip,
        "distractors": distractors, "ordering": ordering,
        "concepts": sorted({w for f in context_rules for w in (f.subject, f.obj) if w in rules}),
        "properties": sorted({f.obj for f in context_rules if f.obj not in rules} | {qf.obj}),
    }
    return question, query, cot, logic


def generate(ontology: str, hops: int, n: int, style: str = "paper", distractors: str = "none",
             ordering: str = "preorder", seed: int = 0, cot_skip: int = 0, id_prefix: str = "") -> list[dict]:
    """``n`` task records (DESIGN.md task-record contract), label-balanced, deterministic in ``seed``."""
    _check(ontology, hops, n, style, distractors, ordering, cot_skip)
    concept_vocabulary(ontology)
    rng = np.random.default_rng(seed)
    labels = [True] * math.ceil(n / 2) + [False] * (n // 2)
    labels = [labels[i] for i in rng.permutation(n)]
    seen: set[tuple[str, str]] = set()
    out = []
    for i, label in enumerate(labels):
        for _ in range(200):
            question, query, cot, logic = _one(rng, ontology, hops, style, distractors, ordering, cot_skip, label)
            if (question, query) not in seen:
                break
        else:
            raise ValueError(f"could not draw {n} distinct questions for ontology={ontology}, hops={hops}")
        seen.add((question, query))
        out.append({
            "id": f"{id_prefix or ontology + '-'}{i:04d}",
            "question": question, "query": query, "cot": cot, "label": label, "hops": hops,
            "ontology": ontology, "style": style,
            "answer": " ".join(cot) + (" True" if label else " False"),
            "logic": logic,
        })
    return out
