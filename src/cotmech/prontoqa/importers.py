"""Import foreign PrOntoQA files as task records (study.md §2.1 generator JSON, §2.2 the authors' records).

Two layouts are recognised:

- generator JSON (asaparov/prontoqa v1 and main): ``{"example1": {"in_context_example0": {...}, …, "test_example":
  {...}}, …}``, each example ``{question, query, chain_of_thought: [str], answer: "True"|"False"}``. In-context
  examples are imported too (``in_context=True``); ``record["source"]["in_context"]`` marks them.
- the authors' processed records: a JSON array of ``{question, query, answer, label}`` where ``answer`` is the CoT
  joined by spaces plus " True"/" False" (extra keys allowed: ``tree``, ``prompt``, ``generated`` and the per-subtask
  keys of ``activationPatching_llama2_clean.json``: ``response_k``, ``noise_prompt_k``, ``noise_response_k``,
  ``answer_token_k``, ``answer_token_id_k``, ``answer_token_pos_k`` (int or "NONE"), ``end_token_pos_k``,
  ``end_token_id_k``). Extra keys are type-checked, then dropped.

Structural problems (bad JSON, unknown layout, a missing key, a wrong type) raise :class:`cotmech.io.RecordError`
naming the file, the record and the problem — before any record is returned, so a file is never half-imported.
Content problems (a sentence that does not parse, an invalid proof) are left to :func:`.verify.verify`; such records
get ``logic = None`` when their proof structure cannot be read.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..io import RecordError, read_json
from .. import vocab
from .logic import (FALSE_CONCEPTS, GENERATOR_NONCE_NOUNS, GENERATOR_TRUE_ONLY_CONCEPTS, GENERATOR_TRUE_PROPERTIES,
                    LEXICON, TRUE_CONCEPTS, TRUE_PROPERTIES, Formula, is_number_entity)
from .sentences import ParseError, parse, split_sentences, style_of
from .verify import parse_record

_EXTRA_STR = re.compile(r"(response|noise_prompt|noise_response|answer_token)_\d+|tree|prompt|generated")
_EXTRA_INT = re.compile(r"(answer_token_id|end_token_pos|end_token_id)_\d+")
_EXTRA_POS = re.compile(r"answer_token_pos_\d+")


def logic_of(record: dict) -> dict:
    """The ``logic`` field (entity, concept chain, property, query, skipped steps) read off a record's proof."""
    context, query, cot = parse_record(record)
    rule_subjects = {f.subject for f in context if f.kind == "rule"}
    rules = [f for f in cot if f.kind == "rule"]
    derived = [f for f in cot[1:] if f.kind == "fact" and f.obj in rule_subjects]
    chain = [cot[0].obj] + [r.obj for r in rules if r.obj in rule_subjects]
    last_rule = rules[-1] if rules else Formula("rule", "", "")
    concepts = sorted(rule_subjects | {f.obj for f in context if f.kind == "fact"}
                      | {f.obj for f in context if f.kind == "rule" and f.obj in rule_subjects})
    properties = sorted({f.obj for f in context if f.kind == "rule" and f.obj not in rule_subjects
                         and LEXICON.word_type(f.obj) != "concept"} | {query.obj})
    return {"entity": query.subject, "chain": chain, "property": last_rule.obj, "negated": last_rule.negated,
            "query_property": query.obj, "query_negated": query.negated,
            "cot_skip": max(0, len(rules) - 1 - len(derived)), "concepts": concepts, "properties": properties}


def _ontology(question: str, cot: list[str]) -> str:
    """Which of the generator's three ontologies a record comes from, read off its words: nonce nouns → fictional;
    a number entity, or a property or concept that only the generator's true ontology uses → true; else false.
    (A true-ontology record using none of those — e.g. 1 hop, "Every arthropod is small." — reads as false: give
    the ontology explicitly, ``--ontology`` / the dataset's ``ontology``, for such files.)"""
    try:
        formulas = [parse(t).formula for t in split_sentences(question) + cot]
    except ParseError:
        formulas = []
    words = {w for f in formulas for w in (f.subject, f.obj)}
    if any(LEXICON.lemma(w)[0] in _NONCE for w in words):
        return "fictional"
    if any(is_number_entity(w) for w in words) or words & _TRUE_ONLY:
        return "true"
    return "false"


_NONCE = frozenset(GENERATOR_NONCE_NOUNS)
# words only a true ontology uses (the original generator's and our own TRUE_TAXONOMIES)
_TRUE_ONLY = frozenset((set(GENERATOR_TRUE_PROPERTIES) | set(TRUE_PROPERTIES)) - set(vocab.PROPERTIES)) | \
    frozenset((set(GENERATOR_TRUE_ONLY_CONCEPTS) | set(TRUE_CONCEPTS)) - set(FALSE_CONCEPTS))


def _task_record(rid: str, question: str, query: str, cot: list[str], label: bool, answer: str,
                 source: dict, ontology: str | None) -> dict:
    rec = {"id": rid, "question": question, "query": query, "cot": cot, "label": label, "hops": 0,
           "ontology": ontology or _ontology(question, cot),
           "style": style_of(split_sentences(question) + [query] + cot),
           "answer": answer, "logic": None, "source": source}
    try:
        rec["logic"] = logic_of(rec)
        rec["hops"] = sum(f.kind == "rule" for f in parse_record(rec)[2])
    except (ParseError, IndexError):
        rec["hops"] = max(1, (len(cot) - 1) // 2)
    return rec


def _need(obj: dict, key: str, typ: type, where: str):
    if key not in obj:
        raise RecordError(f"{where}: missing key {key!r}")
    val = obj[key]
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        raise RecordError(f"{where}: key {key!r} must be {typ.__name__}, got {type(val).__name__}")
    return val


def _label(val: str, where: str, key: str) -> bool:
    if val not in ("True", "False"):
        raise RecordError(f"{where}: {key} must be 'True' or 'False', got {val!r}")
    return val == "True"


def _generator_example(ex, where: str) -> tuple[str, str, list[str], bool]:
    if not isinstance(ex, dict):
        raise RecordError(f"{where}: expected an object, got {type(ex).__name__}")
    question = _need(ex, "question", str, where)
    query = _need(ex, "query", str, where)
    cot = _need(ex, "chain_of_thought", list, where)
    if not cot or not all(isinstance(s, str) for s in cot):
        raise RecordError(f"{where}: 'chain_of_thought' must be a non-empty list of strings")
    label = _label(_need(ex, "answer", str, where), where, "answer")
    return question, query, cot, label


def _import_generator(data: dict, path: str, stem: str, in_context: bool, ontology: str | None) -> list[dict]:
    out = []
    for key in data:
        m = re.fullmatch(r"example(\d+)", key)
        where = f"{path}: record {key!r}"
        if not m:
            raise RecordError(f"{where}: unexpected top-level key (expected example1, example2, ...)")
        block = data[key]
        if not isinstance(block, dict):
            raise RecordError(f"{where}: expected an object, got {type(block).__name__}")
        if "test_example" not in block:
            raise RecordError(f"{where}: missing key 'test_example'")
        for sub in block:
            if sub != "test_example" and not re.fullmatch(r"in_context_example\d+", sub):
                raise RecordError(f"{where}: unexpected key {sub!r}")
            if sub != "test_example" and not in_context:
                continue
            q, query, cot, label = _generator_example(block[sub], f"{where}/{sub}")
            tag = "test" if sub == "test_example" else "ic" + sub[len("in_context_example"):]
            out.append(_task_record(f"{stem}-{key}-{tag}", q, query, cot, label,
                                    " ".join(cot) + (" True" if label else " False"),
                                    {"file": os.path.basename(path), "key": f"{key}/{sub}",
                                     "in_context": sub != "test_example"}, ontology))
    return out


def _import_authors(data: list, path: str, stem: str, ontology: str | None) -> list[dict]:
    out = []
    for i, item in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(item, dict):
            raise RecordError(f"{where}: expected an object, got {type(item).__name__}")
        question = _need(item, "question", str, where)
        query = _need(item, "query", str, where)
        answer = _need(item, "answer", str, where)
        label = _label(_need(item, "label", str, where), where, "label")
        for k, v in item.items():
            if k in ("question", "query", "answer", "label"):
                continue
            if _EXTRA_STR.fullmatch(k) and not isinstance(v, str):
                raise RecordError(f"{where}: key {k!r} must be str, got {type(v).__name__}")
            if _EXTRA_INT.fullmatch(k) and (not isinstance(v, int) or isinstance(v, bool)):
                raise RecordError(f"{where}: key {k!r} must be int, got {type(v).__name__}")
            if _EXTRA_POS.fullmatch(k) and not (v == "NONE" or (isinstance(v, int) and not isinstance(v, bool))):
                raise RecordError(f"{where}: key {k!r} must be an int or 'NONE', got {v!r}")
        body, _, last = answer.rstrip().rpartition(" ")
        if last not in ("True", "False"):
            raise RecordError(f"{where}: answer must end with ' True' or ' False': {answer[-40:]!r}")
        out.append(_task_record(f"{stem}-{i:04d}", question, query, split_sentences(body), label, answer,
                                {"file": os.path.basename(path), "key": str(i), "in_context": False}, ontology))
    return out


def import_file(path: str | os.PathLike, in_context: bool = True, ontology: str | None = None) -> list[dict]:
    """Task records of a foreign file (either layout); raises :class:`RecordError` on any structural problem."""
    path = str(path)
    if not Path(path).is_file():
        raise RecordError(f"{path}: no such file")
    try:
        data = read_json(path)
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})") from None
    stem = re.sub(r"[^A-Za-z0-9_\-]", "_", Path(path).stem)
    if isinstance(data, dict):
        if not data:
            raise RecordError(f"{path}: empty object (expected example1, example2, ...)")
        return _import_generator(data, path, stem, in_context, ontology)
    if isinstance(data, list):
        return _import_authors(data, path, stem, ontology)
    raise RecordError(f"{path}: unrecognised layout: top level is {type(data).__name__}, expected an object "
                      f"(generator JSON) or an array (the authors' records)")


def record_name(record: dict) -> str:
    """How messages name an imported record: its place in the file ("example3/test_example", "17"), else its id."""
    src = record.get("source") or {}
    return f"{src['file']}: record {src['key']}" if "key" in src and "file" in src else f"record {record.get('id')}"


def duplicates(records: list[dict]) -> list[tuple[dict, dict]]:
    """(first, later) pairs of records with the same question and query; the later one adds nothing."""
    first: dict[tuple[str, str], dict] = {}
    out = []
    for r in records:
        key = (r["question"], r["query"])
        if key in first:
            out.append((first[key], r))
        else:
            first[key] = r
    return out
