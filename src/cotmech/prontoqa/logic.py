"""Logical forms of PrOntoQA sentences and the word lexicon (types, plurals) shared by the whole task layer.

A sentence means one :class:`Formula`:

- ``Formula("fact", "Max", "wumpus")``             "Max is a wumpus." / "Max is wumpus."
- ``Formula("fact", "Max", "floral", negated=True)`` "Max is not floral."
- ``Formula("rule", "wumpus", "dumpus")``          "Every wumpus is a dumpus." / "Wumpuses are dumpuses." / "Wumpus is dumpus."
- ``Formula("rule", "wumpus", "sweet", negated=True)`` "Every wumpus is not sweet." / "Wumpuses are not sweet."

Subjects of rules and objects that are concepts are stored in their *lemma* (singular, lexicon casing:
"wumpus", "real number", "Mersenne prime"); entities as written ("Max"); properties in lower case.
Deduction is modus ponens only (the ModusPonens rule of asaparov/prontoqa, study.md §2.1).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import vocab

#: Hand-written *correct* taxonomies for ``ontology="true"`` (our own; the generator's ``sample_real_ontology``
#: is not ported). Each is a chain from the most general concept down to the most specific, with one property per
#: concept that holds for every member to our knowledge (e.g. every Mersenne prime is odd). Six concepts allow 5 hops.
TRUE_TAXONOMIES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("animal", "multicellular"), ("vertebrate", "bony"), ("mammal", "furry"), ("carnivore", "predatory"),
     ("feline", "agile"), ("cat", "whiskered")),
    (("number", "abstract"), ("real number", "ordered"), ("integer", "rational"), ("natural number", "nonnegative"),
     ("prime number", "positive"), ("Mersenne prime", "odd")),
    (("organism", "living"), ("eukaryote", "nucleated"), ("plant", "photosynthetic"), ("tree", "woody"),
     ("conifer", "resinous"), ("pine", "evergreen")),
)
TRUE_CONCEPTS: tuple[str, ...] = tuple(c for tax in TRUE_TAXONOMIES for c, _ in tax)
TRUE_PROPERTIES: tuple[str, ...] = tuple(p for tax in TRUE_TAXONOMIES for _, p in tax)

FALSE_CONCEPTS: tuple[str, ...] = tuple(dict.fromkeys(c for lst in vocab.FALSE_ONTOLOGY_CONCEPTS for c in lst))
ONTOLOGIES = ("fictional", "false", "true")


def concept_vocabulary(ontology: str) -> tuple[str, ...]:
    """The concept words of one ontology kind (replacement candidates for corruption)."""
    if ontology == "fictional":
        return vocab.FICTIONAL_CONCEPTS
    if ontology == "false":
        return FALSE_CONCEPTS
    if ontology == "true":
        return TRUE_CONCEPTS
    raise ValueError(f"unknown ontology {ontology!r}; expected one of {', '.join(ONTOLOGIES)}")


def property_vocabulary(ontology: str) -> tuple[str, ...]:
    """The property words of one ontology kind (the 45 generator words; ``true`` adds its own)."""
    concept_vocabulary(ontology)  # validates the name
    return vocab.PROPERTIES + (TRUE_PROPERTIES if ontology == "true" else ())


def plural(concept: str) -> str:
    """Plural of a concept lemma; multi-word concepts pluralise their last word ("real numbers")."""
    head, _, last = concept.rpartition(" ")
    p = vocab.plural(last)
    return f"{head} {p}" if head else p


@dataclass(frozen=True)
class Formula:
    """One atomic statement: ``fact`` (entity is X) or ``rule`` (every A is X); X a concept or a property."""

    kind: str  # "fact" | "rule"
    subject: str  # entity name (fact) or concept lemma (rule)
    obj: str  # concept lemma or property
    negated: bool = False

    def negate(self) -> "Formula":
        return Formula(self.kind, self.subject, self.obj, not self.negated)


class Lexicon:
    """Word types and lemmas: concepts (all ontologies + fictional), properties, entities.

    Words outside the lexicon (the nonce distractors of the authors' template, "medium") are accepted by the parser
    with type ``"unknown"`` and a heuristic lemma, so foreign files still parse.
    """

    def __init__(self) -> None:
        concepts = list(vocab.FICTIONAL_CONCEPTS) + list(FALSE_CONCEPTS) + list(TRUE_CONCEPTS)
        self.concepts: tuple[str, ...] = tuple(dict.fromkeys(concepts))
        self.properties: tuple[str, ...] = tuple(dict.fromkeys(vocab.PROPERTIES + TRUE_PROPERTIES))
        self.entities: tuple[str, ...] = vocab.ENTITIES
        # surface (lower case) -> (lemma, is_plural)
        self._concept_forms: dict[str, tuple[str, bool]] = {}
        for c in self.concepts:
            self._concept_forms.setdefault(c.lower(), (c, False))
            self._concept_forms.setdefault(plural(c).lower(), (c, True))
        # longest multi-word surface first, for phrase matching
        self.max_words = max(len(s.split()) for s in self._concept_forms)

    def concept(self, surface: str) -> tuple[str, bool] | None:
        """(lemma, plural?) of a known concept surface form, case-insensitive; None if unknown."""
        return self._concept_forms.get(surface.lower())

    def word_type(self, lemma: str) -> str:
        """'entity' | 'property' | 'concept' | 'unknown' for a lemma (entities are case-sensitive)."""
        if lemma in self.entities:
            return "entity"
        if lemma.lower() in self.properties:
            return "property"
        if lemma.lower() in self._concept_forms:
            return "concept"
        return "unknown"

    def lemma(self, surface: str) -> tuple[str, bool]:
        """(lemma, plural?) of any noun phrase; unknown words get a suffix heuristic."""
        hit = self.concept(surface)
        if hit:
            return hit
        if surface in self.entities:
            return surface, False
        low = surface.lower()
        if low in self.properties:
            return low, False
        if low.endswith("uses"):
            return low[:-2], True
        if low.endswith("ies") and len(low) > 4:
            return low[:-3] + "y", True
        if low.endswith("s") and not low.endswith("ss") and not low.endswith("us"):
            return low[:-1], True
        return low, False


LEXICON = Lexicon()


def surface(lemma: str, plural_form: bool = False, capital: bool = False) -> str:
    """Render a lemma in the requested number and capitalisation ("wumpus" -> "Wumpuses")."""
    s = plural(lemma) if plural_form else lemma
    return s[:1].upper() + s[1:] if capital else s


def closure(facts: set[Formula], rules: set[Formula], entity: str) -> set[Formula]:
    """All facts about ``entity`` derivable from ``facts`` and ``rules`` by repeated modus ponens."""
    known = {f for f in facts if f.kind == "fact" and f.subject == entity}
    by_subject: dict[str, list[Formula]] = {}
    for r in rules:
        if r.kind == "rule" and not r.negated:
            by_subject.setdefault(r.subject, []).append(r)
    neg_rules: dict[str, list[Formula]] = {}
    for r in rules:
        if r.kind == "rule" and r.negated:
            neg_rules.setdefault(r.subject, []).append(r)
    frontier = [f for f in known if not f.negated]
    while frontier:
        f = frontier.pop()
        for r in by_subject.get(f.obj, []) + neg_rules.get(f.obj, []):
            g = Formula("fact", entity, r.obj, r.negated)
            if g not in known:
                known.add(g)
                if not g.negated:
                    frontier.append(g)
    return known
