"""Greedy chain-of-thought generation (study.md §2.4, E1): task records -> generation records, accuracy.

The decoding itself (batched, shared-prefix KV cache, newline/EOS stop) is :func:`cotmech.decoding.greedy_generate`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .decoding import greedy_generate
from .stats import wilson


def response_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decoded continuation up to (not including) the first newline, stripped."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).split("\n", 1)[0].strip()


# --------------------------------------------------------------------------------------------------
# Task records -> generation records, accuracy
# --------------------------------------------------------------------------------------------------
def is_correct(record: dict, generated: str) -> bool:
    """Exact match of the generated response with the gold CoT + label (study.md §2.4)."""
    return generated.strip() == str(record["answer"]).strip()


def valid_proof(record: dict, generated: str) -> bool:
    """Whether the generated text is a valid proof for the record (gold text counts as valid)."""
    if is_correct(record, generated):
        return True
    from .prontoqa import sentences, verify

    words = generated.strip().rsplit(" ", 1)
    if len(words) != 2 or words[1] not in ("True", "False"):
        return False
    cot = sentences.split_sentences(words[0])
    proof = {**record, "cot": cot, "label": words[1] == "True", "answer": generated.strip()}
    return verify.verify(proof).ok


def generate_records(model: Any, records: Sequence[dict], shots: int = 6, max_new_tokens: int = 64,
                     batch_size: int = 8, desc: str = "generate") -> list[dict]:
    """Generate the CoT of every task record with the paper's prompt; returns the generation records."""
    from .prontoqa import corrupt, prompts

    texts = [prompts.build_prompt(r, shots=shots) for r in records]
    ids = [corrupt.encode(model.tokenizer, t) for t in texts]
    gens = greedy_generate(model, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc)
    out = []
    for rec, prompt, g in zip(records, texts, gens):
        text = response_text(model.tokenizer, g.ids)
        out.append({**rec, "prompt": prompt, "generated": text, "correct": is_correct(rec, text),
                    "valid_proof": valid_proof(rec, text), "stop": g.stop, "n_generated": len(g.ids)})
    return out


ACCURACY_COLUMNS = ["dataset", "ontology", "hops", "n", "correct", "accuracy", "ci_low", "ci_high"]
#: Text columns of accuracy CSVs, pinned when reading: pandas would read the ontology "false" as a boolean.
ACCURACY_DTYPES = {"dataset": str, "ontology": str}


def accuracy_row(dataset: str, records: Sequence[dict]) -> dict:
    """One accuracy-table row for a dataset's generation records."""
    n = len(records)
    k = sum(bool(r["correct"]) for r in records)
    lo, hi = wilson(k, n)
    ontologies = sorted({str(r.get("ontology")) for r in records})
    hops = sorted({int(r.get("hops", 0)) for r in records})
    return {"dataset": dataset, "ontology": ",".join(ontologies), "hops": ",".join(map(str, hops)), "n": n,
            "correct": k, "accuracy": k / n if n else math.nan, "ci_low": lo, "ci_high": hi}


# --------------------------------------------------------------------------------------------------
# Entry point (scripts/generate_cot.py)
# --------------------------------------------------------------------------------------------------
def run(model: Any, records: Sequence[dict], cfg: Any, *, shots: int, dataset: str,
        log: Any = None) -> tuple[list[dict], Any]:
    """Greedy CoT generation for one task dataset (study.md §2.4, E1): the generation records and the one-row
    accuracy table (:data:`ACCURACY_COLUMNS`, Wilson 95% CI).

    ``cfg`` the ``generation`` config section (:func:`cotmech.config.section`); ``shots`` config ``prompt.shots``.
    """
    import time

    import pandas as pd

    log = log or (lambda msg: print(msg, flush=True))
    t1 = time.time()
    out = generate_records(model, records, shots=shots, max_new_tokens=cfg["max_new_tokens"],
                           batch_size=cfg["batch_size"], desc=dataset)
    row = accuracy_row(dataset, out)
    log(f"{dataset}: {row['correct']}/{row['n']} exactly correct = {row['accuracy']:.3f} "
        f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]; valid proofs {sum(r['valid_proof'] for r in out)}; "
        f"generation {time.time() - t1:.1f} s")
    return out, pd.DataFrame([row], columns=ACCURACY_COLUMNS)
