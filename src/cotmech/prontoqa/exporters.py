"""Write task records back in the two foreign layouts that :mod:`.importers` reads (the inverse of the importers).

- :func:`to_generator_json`: asaparov/prontoqa's JSON (``{"example1": {"in_context_example0": …, "test_example":
  …}}``). Records imported from such a file go back to their own keys (``record["source"]["key"]``); any other
  record becomes the ``test_example`` of an example of its own.
- :func:`to_authors_json`: the authors' records (``[{question, query, answer, label}]``).

Every sentence is written from its logical form (:func:`.sentences.unparse` of the parsed sentence in the record's
style), not copied, so ``import_file(export(records))`` giving back the records checks parser and renderer against
each other on every sentence form.
"""
from __future__ import annotations

import os

from ..io import write_json
from .sentences import QUERY_PREFIX, parse, parse_query, split_sentences, unparse


def _text(sentences: list[str], style: str) -> list[str]:
    return [unparse(parse(s), style) for s in sentences]


def _fields(record: dict) -> tuple[str, str, list[str], str]:
    style = record.get("style", "paper")
    question = " ".join(_text(split_sentences(record["question"]), style))
    query = QUERY_PREFIX + unparse(parse(record["query"][len(QUERY_PREFIX):]), style)
    parse_query(query)
    cot = _text(record["cot"], style)
    return question, query, cot, "True" if record["label"] else "False"


def to_generator_json(records: list[dict]) -> dict:
    """The generator's JSON object for ``records`` (see module docstring)."""
    out: dict[str, dict] = {}
    for r in records:
        question, query, cot, label = _fields(r)
        key = (r.get("source") or {}).get("key", "")
        example, _, sub = key.partition("/")
        if not (example.startswith("example") and sub):
            example, sub = f"example{len(out) + 1}", "test_example"
        block = out.setdefault(example, {})
        if sub in block:
            raise ValueError(f"record {r.get('id')!r}: {example}/{sub} given twice")
        block[sub] = {"question": question, "query": query, "chain_of_thought": cot, "answer": label}
    return out


def to_authors_json(records: list[dict]) -> list[dict]:
    """The authors' record array for ``records``: answer = CoT joined by spaces + " True"/" False"."""
    out = []
    for r in records:
        question, query, cot, label = _fields(r)
        out.append({"question": question, "query": query, "answer": " ".join(cot) + " " + label, "label": label})
    return out


def export_file(records: list[dict], path: str | os.PathLike, layout: str) -> None:
    """Write ``records`` to ``path`` in ``layout`` ("generator" or "authors"), atomically."""
    if layout == "generator":
        write_json(path, to_generator_json(records))
    elif layout == "authors":
        write_json(path, to_authors_json(records))
    else:
        raise ValueError(f"unknown layout {layout!r}; expected 'generator' or 'authors'")
