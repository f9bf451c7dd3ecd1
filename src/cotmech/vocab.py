"""Vocabularies of the PrOntoQA generator (asaparov/prontoqa, main branch), as described in study.md §2.1.

Plain data shared by the task generator, the corruption step and the tokenizer used for random-weight models.
"""
from __future__ import annotations

#: Fictional concept names; the first 10 also exist in the v1 branch.
FICTIONAL_CONCEPTS: tuple[str, ...] = (
    "wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus", "tumpus", "vumpus", "impus", "jompus",
    "gorpus", "shumpus", "lempus", "sterpus", "grimpus", "lorpus", "brimpus",
)

#: Entity names (both branches).
ENTITIES: tuple[str, ...] = ("Fae", "Rex", "Sally", "Max", "Alex", "Sam", "Polly", "Stella", "Wren")

#: Property families; one family is used per ontology level. v1 has the first 10, main all 13.
PROPERTY_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("blue", "red", "brown", "orange"),
    ("small", "large"),
    ("metallic", "wooden", "luminous", "liquid"),
    ("transparent", "opaque"),
    ("nervous", "happy", "feisty", "shy"),
    ("bright", "dull"),
    ("sweet", "sour", "spicy", "bitter"),
    ("floral", "fruity", "earthy"),
    ("hot", "cold", "temperate"),
    ("kind", "mean", "angry", "amenable", "aggressive"),
    ("melodic", "muffled", "discordant", "loud"),
    ("slow", "moderate", "fast"),
    ("windy", "sunny", "overcast", "rainy", "snowy"),
)

#: All 45 property words of the main branch, in family order.
PROPERTIES: tuple[str, ...] = tuple(p for fam in PROPERTY_FAMILIES for p in fam)

#: Real-word concept lists used for the false ontology (one list drawn per question).
FALSE_ONTOLOGY_CONCEPTS: tuple[tuple[str, ...], ...] = (
    ("animal", "vertebrate", "mammal", "carnivore", "feline", "cat", "dog", "sheep", "cow", "snake"),
    ("animal", "invertebrate", "arthropod", "insect", "lepidopteran", "butterfly", "moth", "ant", "spider", "crustacean"),
    ("number", "real number", "integer", "natural number", "prime number", "Mersenne prime", "even number",
     "composite number", "negative number", "fraction"),
)

#: Irregular plurals of real-word concepts (everything else takes "s", fictional concepts take "es").
IRREGULAR_PLURALS: dict[str, str] = {
    "sheep": "sheep",
    "moth": "moths",
    "butterfly": "butterflies",
    "cat": "cats",
    "mammal": "mammals",
    "fraction": "fractions",
}


def plural(concept: str) -> str:
    """Plural form used by the generator: "wumpus" -> "wumpuses", "cat" -> "cats", "real number" -> "real numbers"."""
    if concept in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[concept]
    if concept.endswith("us") or concept.endswith("s") or concept.endswith("sh") or concept.endswith("ch"):
        return concept + "es"
    if concept.endswith("y") and concept[-2:-1] not in "aeiou":
        return concept[:-1] + "ies"
    return concept + "s"


def corpus_sentences() -> list[str]:
    """A small text corpus covering every vocabulary word in the sentence forms of the task.

    Used to train a deterministic tokenizer for random-weight models (no hub access needed).
    """
    concepts = list(FICTIONAL_CONCEPTS) + [c for lst in FALSE_ONTOLOGY_CONCEPTS for c in lst]
    out: list[str] = []
    for i, c in enumerate(concepts):
        d = concepts[(i + 1) % len(concepts)]
        p = PROPERTIES[i % len(PROPERTIES)]
        e = ENTITIES[i % len(ENTITIES)]
        out += [
            f"{c.capitalize()} is {d}. {plural(c).capitalize()} are {plural(d)}. Every {c} is a {d}.",
            f"Each {c} is {p}. {e} is a {c}. {e} is not {p}. True or false: {e} is {p}.",
        ]
    for p in PROPERTIES:
        out.append(f"{p.capitalize()} {p} is {p}.")
    out += [
        "### Input:\n### Response:\nLet us think step by step. True False",
        "### Input :\n### Response :\n",
    ]
    return out
