"""Few-shot CoT prompts (study.md §2.3 ``TemplateCOT_fictional``, §2.5 probing spelling).

Block format (``header="paper"``)::

    ### Input:\\n<question> <query> Let us think step by step.\\n### Response:\\n<cot> <label>

blocks joined by a blank line; the test block ends with ``"### Response:\\n"`` (the model continues there).
The six exemplars of the paper's fictional 2-hop template are reproduced verbatim, including the trailing space
after "step." in exemplars 2 and 3. ``header="probe"`` gives the probing spelling: exemplars
``"### Input: \\n…\\n### Response: \\n<answer>"``, test block ``"### Input : \\n…\\n### Response :\\n"``.

Exemplar choice (``exemplars=None``): paper-style fictional 2-hop records without step skipping use the paper's six
exemplars (k ≤ 6; for k = 7, 8 generated exemplars are appended). Every other setting (false/true ontology, other hop
counts, original style, step skipping) draws exemplars from our own generator with the record's ontology, hops, style
and ``cot_skip``, no distractors, from a seed stream separate from any dataset's (seed derived from
"exemplars/<ontology>/<hops>/<style>/<skip>/<seed>"), skipping any exemplar whose question and query equal the test
record's; generated exemplars alternate True/False labels. Exemplars are therefore the same for every record of a
setting except in that (rare) collision case.
"""
from __future__ import annotations

import hashlib

from .generator import generate

INSTRUCTION = " Let us think step by step."
MAX_SHOTS = 8

#: TemplateCOT_fictional (study.md §2.3): (context, query, CoT, label, trailing space after "step.").
PAPER_FICTIONAL: tuple[tuple[str, str, str, bool, bool], ...] = (
    ("Gorpus is twimpus. Alex is rompus. Rompus is gorpus. Gorpus is small. Rompus is mean.",
     "Alex is small.", "Alex is rompus. Rompus is gorpus. Alex is gorpus. Gorpus is small. Alex is small.", True, False),
    ("Gorpuses are discordant. Max is zumpus. Zumpus is shampor. Zumpus is gorpus. Gorpus is earthy.",
     "Max is small.", "Max is zumpus. Zumpus is gorpus. Max is gorpus. Gorpuses are discordant. Max is discordant.",
     False, True),
    ("Borpin are wumpus. Wumpuses are angry. Wumpus is jempor. Sally is lempus. Lempus is wumpus.",
     "Sally is floral.", "Sally is lempus. Lempus is wumpus. Sally is wumpus. Wumpuses are angry. Sally is angry.",
     False, True),
    ("Gorpus is jelgit. Yumpuses are loud. Gorpus is yumpus. Yumpus is orange. Rex is gorpus.",
     "Rex is loud.", "Rex is gorpus. Gorpus is yumpus. Rex is yumpus. Yumpuses are loud. Rex is loud.", True, False),
    ("Lempus is tumpus. Max is lempus. Tumpus is fruity. Tumpus is bright. Lempus is dropant.",
     "Max is bright.", "Max is lempus. Lempus is tumpus. Max is tumpus. Tumpus is bright. Max is bright.", True, False),
    ("Sterpuses are dull. Impus is medium. Impuses are sterpuses. Wren is impus. Sterpus is daumpin.",
     "Wren is melodic.", "Wren is impus. Impuses are sterpuses. Wren is sterpus. Sterpuses are dull. Wren is dull.",
     False, False),
)


def paper_exemplars() -> list[dict]:
    """The six exemplars of ``TemplateCOT_fictional`` as records (key ``trailing_space`` marks the quirk)."""
    out = []
    for i, (q, query, cot, label, trailing) in enumerate(PAPER_FICTIONAL):
        sents = [s + "." for s in cot.rstrip(".").split(". ")]
        out.append({"id": f"paper-exemplar-{i}", "question": q, "query": "True or false: " + query, "cot": sents,
                    "label": label, "hops": 2, "ontology": "fictional", "style": "paper",
                    "answer": cot + (" True" if label else " False"), "trailing_space": trailing})
    return out


def input_text(record: dict) -> str:
    """The text put into the template: question + " " + query + " Let us think step by step."."""
    return f"{record['question']} {record['query']}{INSTRUCTION}"


def _answer(record: dict) -> str:
    if "answer" in record:
        return record["answer"]
    return " ".join(record["cot"]) + (" True" if record["label"] else " False")


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def default_exemplars(ontology: str, hops: int, shots: int, seed: int = 0, style: str = "paper",
                      cot_skip: int = 0, exclude: set[tuple[str, str]] | frozenset = frozenset()) -> list[dict]:
    """``shots`` exemplar records for a setting (see module docstring); none has (question, query) in ``exclude``."""
    if not 0 <= shots <= MAX_SHOTS:
        raise ValueError(f"shots must be in 0..{MAX_SHOTS}, got {shots}")
    out: list[dict] = []
    if ontology == "fictional" and hops == 2 and style == "paper" and cot_skip == 0:
        out = [e for e in paper_exemplars() if (e["question"], e["query"]) not in exclude][:shots]
    if len(out) < shots:
        pool = generate(ontology, hops, shots + 8, style=style, seed=_seed("exemplars", ontology, hops, style,
                                                                            cot_skip, seed),
                        cot_skip=cot_skip, id_prefix="exemplar-")
        pool = [e for e in pool if (e["question"], e["query"]) not in exclude]
        trues, falses = [e for e in pool if e["label"]], [e for e in pool if not e["label"]]
        # labels alternate, starting with the label the chosen exemplars so far have fewer of
        first, second = (falses, trues) if sum(e["label"] for e in out) * 2 > len(out) else (trues, falses)
        mixed = [e for pair in zip(first, second) for e in pair]
        out += mixed[:shots - len(out)]
    return out


def build_prompt(record: dict, shots: int = 6, exemplars: list[dict] | None = None, header: str = "paper",
                 seed: int = 0) -> str:
    """Full k-shot prompt for ``record``; ends with "### Response:\\n" ("### Response :\\n" for ``header="probe"``)."""
    if header not in ("paper", "probe"):
        raise ValueError(f"unknown prompt header {header!r}; expected 'paper' or 'probe'")
    key = (record["question"], record["query"])
    if exemplars is None:
        exemplars = default_exemplars(record.get("ontology", "fictional"), int(record.get("hops", 2)), shots, seed,
                                      style=record.get("style", "paper"),
                                      cot_skip=int((record.get("logic") or {}).get("cot_skip", 0)),
                                      exclude={key})
    if len(exemplars) < shots:
        raise ValueError(f"build_prompt: {shots} shots requested but only {len(exemplars)} exemplars given")
    exemplars = exemplars[:shots]
    for e in exemplars:
        if (e["question"], e["query"]) == key:
            raise ValueError(f"build_prompt: exemplar {e.get('id')!r} equals the test record {record.get('id')!r}")
    blocks = []
    for e in exemplars:
        if header == "paper":
            sp = " " if e.get("trailing_space") else ""
            blocks.append(f"### Input:\n{input_text(e)}{sp}\n### Response:\n{_answer(e)}")
        else:
            blocks.append(f"### Input: \n{input_text(e)}\n### Response: \n{_answer(e)}")
    if header == "paper":
        blocks.append(f"### Input:\n{input_text(record)}\n### Response:\n")
    else:
        blocks.append(f"### Input : \n{input_text(record)}\n### Response :\n")
    return "\n\n".join(blocks)
