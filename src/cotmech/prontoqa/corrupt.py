"""Clean/corrupt input pairs for one subtask, corrupted at the logical level (study.md §4, "suggested fix").

:func:`make_pair` is pure: the same (record, step, prompt, tokenizer, rng state) gives the same pair.

- clean = prompt + step.prefix; the answer token is the first token of the target word as it follows the clean text
  (" " + target after a non-empty prefix, the target directly after the prompt's final "\\n" otherwise). If the
  tokenizer merges across that boundary (tokenize(clean + sep + target) does not extend tokenize(clean)) the step is
  rejected.
- Where the corruption goes follows the paper's table (study.md §3, "corruption location"), read as a logical rule:

  * the *subject of a rule* (the decision steps that start a CoT rule: k = 2 "Impuses", k = 6 "Sterpuses" of the
    2-hop CoT, and every such step of an n-hop CoT) is corrupted where the rule is stated, i.e. the subject of the
    (last) context sentence of the test block whose formula is that rule ("Impuses are sterpuses." in the question;
    authors: prompt 413/415 for k = 2, 410/415 for k = 6). The authors got there by a case-sensitive scan for the
    target's first sub-token ("Imp" does not match the earlier "Wren is impus."); we take the rule's statement from
    the proof structure, so a sub-token that happens to match another word cannot move it.
  * every other step: the lexical item behind the target (entity, concept lemma in any number/case, property) at
    its most recent occurrence: in the generated prefix if it occurs there, else in the prompt's test block (after
    the last "### Input"; never in the exemplars, never inside "Let us think step by step." or "True or false:").
    This gives the query entity (k = 0), the premise class (k = 1), the rule object (k = 3) and the query property
    (k = 7) in the prompt, and the generated entity (k = 4, 8), rule object (k = 5) and property (k = 9) in the
    response, as in §3. For the label step the item is the CoT's final property (it is in the prefix).
- That occurrence is replaced by another word of the same type from the record's ontology vocabulary (same
  capitalisation and number), not occurring anywhere in the test block or prefix, drawn uniformly with ``rng`` among
  the candidates that keep the *whole* corrupt text at exactly the clean token count (candidates are tried in a
  random permutation and the first that fits is taken — a uniform draw among those that fit, with few
  tokenisations); none → ``Rejected``.
- Every tokenisation goes through :func:`encode` (the single BOS decision for the project).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import vocab
from .logic import (LEXICON, NUMBER_ENTITIES, concept_vocabulary, is_number_entity, property_vocabulary,
                    surface)
from .sentences import ParseError, parse, split_sentences
from .subtasks import Step

_MASKED = ("Let us think step by step.", "True or false:")


def adds_bos(tokenizer: Any) -> bool:
    """Whether the model expects a BOS token in front (Llama-2: yes; Qwen2.5: no BOS; task BPE: no)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    flag = getattr(tokenizer, "add_bos_token", None)
    if flag is not None:
        return bool(flag)
    probe = list(tokenizer("a").input_ids)
    return bool(probe) and probe[0] == bos


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as every analysis feeds it to the model (BOS prepended iff :func:`adds_bos`)."""
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    return [tokenizer.bos_token_id] + ids if adds_bos(tokenizer) else ids


@dataclass(frozen=True)
class Pair:
    """One clean/corrupt pair; fields = DESIGN.md pairs contract (minus the ids added by the pairs step)."""

    clean: str
    corrupt: str
    clean_ids: list[int]
    corrupt_ids: list[int]
    first_diff: int
    answer: str
    answer_id: int
    corrupt_answer_id: int | None
    answer_pos: int | None
    replaced: dict = field(default_factory=dict)  # {"from", "to", "where": "prompt"|"response"}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Rejected:
    """A step for which no valid pair exists; ``reason`` names why."""

    reason: str


def _forms(lemma: str, word_type: str) -> list[str]:
    if word_type == "concept":
        forms = {surface(lemma, pl, cap) for pl in (False, True) for cap in (False, True)}
    elif word_type == "property":
        forms = {lemma, lemma.capitalize()}
    else:
        forms = {lemma}
    return sorted(forms, key=len, reverse=True)


def _masked(text: str) -> str:
    for m in _MASKED:
        text = text.replace(m, " " * len(m))
    return text


def _occurrences(text: str, lemma: str, word_type: str) -> list[tuple[int, int]]:
    """Spans of whole-phrase occurrences of a lexical item (not inside a longer known concept phrase)."""
    pat = re.compile(r"(?<![A-Za-z])(" + "|".join(map(re.escape, _forms(lemma, word_type))) + r")(?![A-Za-z])")
    out = []
    for m in pat.finditer(_masked(text)):
        before = re.search(r"([A-Za-z]+) $", text[:m.start()])
        after = re.match(r" ([A-Za-z]+)", text[m.end():])
        if before and LEXICON.concept(f"{before.group(1)} {m.group(1)}"):
            continue
        if after and LEXICON.concept(f"{m.group(1)} {after.group(1)}"):
            continue
        out.append((m.start(), m.end()))
    return out


def _candidates(record: dict, word_type: str, lemma: str, region: str) -> list[str]:
    ontology = record.get("ontology", "fictional")
    if word_type == "entity":
        pool = NUMBER_ENTITIES if is_number_entity(lemma) else vocab.ENTITIES  # "127" -> another number
    elif word_type == "concept":
        pool = concept_vocabulary(ontology)
    elif word_type == "property":
        pool = property_vocabulary(ontology)
    else:
        return []
    return [c for c in pool if c != lemma and not _occurrences(region, c, word_type)]


def _rule_of_subject_step(record: dict, step: Step):
    """The CoT rule whose subject ``step`` predicts (a decision step that starts a rule sentence), else None."""
    if step.kind != "decision" or not 0 <= step.sentence < len(record["cot"]):
        return None
    try:
        f = parse(record["cot"][step.sentence]).formula
    except ParseError:
        return None
    return f if f.kind == "rule" else None


def _rule_statement(prompt: str, block: int, record: dict, rule) -> list[tuple[int, int]]:
    """Span (in ``prompt``) of the subject of the last test-block context sentence stating ``rule``; [] if none."""
    q = prompt.find(record["question"], block)
    if q < 0:
        return []
    spans, pos = [], q
    for sent in split_sentences(record["question"]):
        pos = prompt.index(sent, pos)
        try:
            p = parse(sent)
        except ParseError:
            p = None
        if p is not None and p.formula == rule:
            spans.append((pos + p.subj[0], pos + p.subj[1]))
        pos += len(sent)
    return spans[-1:]


def _first_token_after(tokenizer: Any, text: str, ids: list[int], sep: str, word: str) -> int | None:
    full = encode(tokenizer, text + sep + word)
    if len(full) <= len(ids) or full[:len(ids)] != ids:
        return None
    return full[len(ids)]


def make_pair(record: dict, step: Step, prompt: str, tokenizer: Any, rng: np.random.Generator) -> Pair | Rejected:
    """Clean/corrupt pair for ``step`` of ``record`` under ``prompt`` (see module docstring)."""
    clean = prompt + step.prefix
    clean_ids = encode(tokenizer, clean)
    sep = " " if step.prefix else ""
    answer_id = _first_token_after(tokenizer, clean, clean_ids, sep, step.target)
    if answer_id is None:
        return Rejected("tokenizer merges across the answer boundary")
    word_type = "property" if step.kind == "label" else (step.word_type or LEXICON.word_type(step.lemma))
    lemma = step.lemma or LEXICON.lemma(step.target)[0]
    if word_type not in ("entity", "concept", "property"):
        return Rejected(f"untyped target word {step.target!r}")
    block = prompt.rfind("### Input")
    if block < 0:
        raise ValueError("make_pair: the prompt has no '### Input' block (build it with prompts.build_prompt)")
    start = len(prompt)
    rule = _rule_of_subject_step(record, step)
    if rule is not None:
        spans, where = _rule_statement(prompt, block, record, rule), "prompt"
        if not spans:
            return Rejected(f"the rule {record['cot'][step.sentence]!r} is not stated in the test block")
    else:
        spans = [(start + s, start + e) for s, e in _occurrences(step.prefix, lemma, word_type)]
        where = "response"
    if not spans:
        spans = [(block + s, block + e) for s, e in _occurrences(prompt[block:], lemma, word_type)]
        where = "prompt"
    if not spans:
        return Rejected(f"target {lemma!r} occurs neither in the prefix nor in the test block")
    s, e = spans[-1]
    old = clean[s:e]
    _, is_plural = LEXICON.lemma(old)
    # number-ambiguous words ("sheep"): plural when they are the subject of "are" or follow "are"
    is_plural = is_plural or clean[e:].startswith(" are ") or re.search(r"\bare (not )?$", clean[:s]) is not None
    capital = old[:1].isupper()
    region = clean[block:]
    # a uniform draw among the equal-length candidates: visit them in a random order, take the first that fits
    cands = _candidates(record, word_type, lemma, region)
    chosen = None
    for i in rng.permutation(len(cands)):
        cand = cands[int(i)]
        new = surface(cand, is_plural, capital) if word_type == "concept" else (
            cand.capitalize() if (capital and word_type == "property") else cand)
        corrupt = clean[:s] + new + clean[e:]
        corrupt_ids = encode(tokenizer, corrupt)
        if len(corrupt_ids) == len(clean_ids) and corrupt_ids != clean_ids:
            chosen = cand
            break
    if chosen is None:
        return Rejected("no equal-length replacement")
    cand = chosen
    assert corrupt != clean and corrupt_ids != clean_ids
    first_diff = next(i for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids)) if a != b)
    corrupt_answer_id = None
    if step.kind != "label":
        _, t_plural = LEXICON.lemma(step.term or step.target)
        t_cap = step.target[:1].isupper()
        alt = surface(cand, t_plural, t_cap) if word_type == "concept" else (
            cand.capitalize() if (t_cap and word_type == "property") else cand)
        corrupt_answer_id = _first_token_after(tokenizer, corrupt, corrupt_ids, sep, alt.split()[0])
        if corrupt_answer_id == answer_id:
            corrupt_answer_id = None
    earlier = [i for i, t in enumerate(clean_ids[:-1]) if t == answer_id]
    return Pair(clean=clean, corrupt=corrupt, clean_ids=clean_ids, corrupt_ids=corrupt_ids, first_diff=first_diff,
                answer=step.target, answer_id=answer_id, corrupt_answer_id=corrupt_answer_id,
                answer_pos=earlier[-1] if earlier else None,
                replaced={"from": old, "to": new, "where": where})
