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

# --- Every word the original generator (asaparov/prontoqa, main and v1) can write, so that its files import.
#: Nonce nouns of its morphology: the "-pus" names and the nine --disjoint-concept-names blocks (plural "-es"/"-s"
#: except where GENERATOR_IRREGULAR says otherwise).
GENERATOR_NONCE_NOUNS: tuple[str, ...] = (
    "wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus", "tumpus", "vumpus", "impus", "jompus", "timpus",
    "yimpus", "carpus", "shumpus", "zhompus", "rempus", "fompus", "fimpus", "worpus", "sorpus", "terpus", "gerpus",
    "sterpus", "kerpus", "sherpus", "perpus", "bompus", "orpus", "welpus", "jelpus", "felpus", "dolpus", "sarpus",
    "irpus", "chorpus", "parpus", "arpus", "lempus", "hilpus", "gompus", "dalpus", "umpus", "rifpus", "storpus",
    "shalpus", "yerpus", "ilpus", "boompus", "scrompus", "phorpus", "prilpus", "gwompus", "urpus", "grimpus",
    "shilpus", "zhorpus", "rorpus", "dropus", "lerpus", "quimpus", "zilpus", "frompus", "stirpus", "porpus", "kurpus",
    "shampus", "werpus", "zhimpus", "yempus", "jempus", "folpus", "drompus", "delpus", "lompus", "wolpus", "gorpus",
    "shimpus", "rimpus", "twimpus", "serpus", "daumpus", "thorpus", "borpus", "rofpus", "bempus", "dulpus", "harpus",
    "lirpus", "yompus", "stopus", "lorpus", "brimpus",
    "timple", "yimple", "starple", "shumple", "zhomple", "remple", "fomple", "fimple", "worple", "sorple",
    "tergit", "gergit", "stergit", "kergit", "shergit", "pergit", "bongit", "orgit", "welgit", "jelgit",
    "felper", "dolper", "sarper", "irper", "chorper", "parper", "arper", "lemper", "hilper", "gomper",
    "dalpist", "umpist", "rifpist", "storpist", "shalpist", "yerpist", "ilpist", "boompist", "scrompist", "phorpist",
    "prilpant", "gwompant", "urpant", "grimpant", "shilpant", "zhorpant", "rorpant", "dropant", "lerpant", "quimpant",
    "zilpor", "frompor", "stirpor", "porpor", "kurpor", "shampor", "werpor", "zhimpor", "yempor", "jempor",
    "folpee", "drompee", "delpee", "lompee", "wolpee", "gorpee", "shimpee", "rimpee", "twimpee", "serpee",
    "daumpin", "thorpin", "borpin", "rofpin", "bempin", "dulpin", "harpin", "lirpin", "yompin", "stopin",
)
#: Real-word nouns of its morphology: the true ontology (``sample_real_ontology``), its distractor concepts and the
#: false-ontology lists.
GENERATOR_REAL_NOUNS: tuple[str, ...] = (
    "animal", "bilaterian", "chordate", "vertebrate", "mammal", "carnivore", "feline", "cat", "tabby", "bacteria",
    "insect", "reptile", "snake", "cow", "sheep", "dog", "invertebrate", "protostome", "arthropod", "lepidopteran",
    "butterfly", "painted lady", "mullosc", "nematode", "whale", "crustacean", "spider", "ant", "moth", "plant",
    "vascular plant", "angiosperm", "eudicot", "rosid", "rose", "fish", "moss", "conifer", "cabbage", "asterid",
    "carrot", "number", "real number", "integer", "natural number", "prime number", "Mersenne prime", "function",
    "imaginary number", "complex number", "fraction", "negative number", "composite number", "even number", "person",
    "object", "thing", "food", "bird", "leptopod", "cell", "figure", "cricket", "crow", "fruit", "spruce", "tree",
    "color", "herbivore", "shepherd", "icon", "bumblebee", "lemur", "flower", "fig", "positive number", "light",
    "word", "spice", "human", "material", "mouse", "armadillo", "creature", "dragonfly", "virus", "grape", "mineral",
)
#: Plurals of the generator that do not follow :func:`cotmech.vocab.plural`.
GENERATOR_IRREGULAR: dict[str, str] = {"worpus": "worpus", "sorpus": "sorpus", "bacteria": "bacteria",
                                       "person": "people", "food": "food", "mouse": "mice"}
#: Properties of the generator's true ontology (positive and negated forms).
GENERATOR_TRUE_PROPERTIES: tuple[str, ...] = (
    "multicellular", "unicellular", "furry", "warm-blooded", "cold-blooded", "carnivorous", "herbivorous",
    "segmented", "small", "bony", "six-legged", "eight-legged", "real", "imaginary", "positive", "negative", "prime",
    "composite",
)
#: Concepts that only its true ontology uses (never the false-ontology lists).
GENERATOR_TRUE_ONLY_CONCEPTS: tuple[str, ...] = ("bilaterian", "chordate", "tabby", "protostome", "painted lady")
#: Entities of its number taxonomy (the entity is a number written in digits: "127 is a Mersenne prime.").
NUMBER_ENTITIES: tuple[str, ...] = ("3", "7", "31", "127", "8191", "131071")
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
    """The property words of one ontology kind (the 45 generator words; ``true`` adds its own and the original
    generator's true-ontology properties)."""
    concept_vocabulary(ontology)  # validates the name
    if ontology != "true":
        return vocab.PROPERTIES
    return tuple(dict.fromkeys(vocab.PROPERTIES + TRUE_PROPERTIES + GENERATOR_TRUE_PROPERTIES))


def is_number_entity(word: str) -> bool:
    """Whether ``word`` is an entity of the generator's number taxonomy (a positive integer in digits)."""
    return word.isdigit() and not word.startswith("0")


def plural(concept: str) -> str:
    """Plural of a concept lemma; multi-word concepts pluralise their last word ("real numbers")."""
    if concept in GENERATOR_IRREGULAR:
        return GENERATOR_IRREGULAR[concept]
    head, _, last = concept.rpartition(" ")
    p = GENERATOR_IRREGULAR.get(last) or vocab.plural(last)
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
        self.properties: tuple[str, ...] = tuple(dict.fromkeys(vocab.PROPERTIES + TRUE_PROPERTIES
                                                               + GENERATOR_TRUE_PROPERTIES))
        self.entities: tuple[str, ...] = vocab.ENTITIES
        # surface (lower case) -> (lemma, is_plural); the generator's other nouns are known words, not vocabulary
        self._concept_forms: dict[str, tuple[str, bool]] = {}
        for c in self.concepts + GENERATOR_NONCE_NOUNS + GENERATOR_REAL_NOUNS:
            self._concept_forms.setdefault(c.lower(), (c, False))
            self._concept_forms.setdefault(plural(c).lower(), (c, True))
        # longest multi-word surface first, for phrase matching
        self.max_words = max(len(s.split()) for s in self._concept_forms)

    def concept(self, surface: str) -> tuple[str, bool] | None:
        """(lemma, plural?) of a known concept surface form, case-insensitive; None if unknown."""
        return self._concept_forms.get(surface.lower())

    def word_type(self, lemma: str) -> str:
        """'entity' | 'property' | 'concept' | 'unknown' for a lemma (entities are case-sensitive)."""
        if lemma in self.entities or is_number_entity(lemma):
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
        if surface in self.entities or is_number_entity(surface):
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
