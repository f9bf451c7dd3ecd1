"""E3: induction heads on a synthetic 1-hop cloze task, through the same patcher (study.md E3).

Template = the form of the authors' ``Template_simple_1hop`` (``utilsFile/fewShotConstants.py``): blocks
``"### Input:\n<sentences> <E> is\n### Response:\n<answer>"`` separated by a blank line, the test block with
its response left empty; the model's next token is the answer's first token right after "### Response:\n".
All words come from :mod:`cotmech.vocab` (the authors used further nonce words); the exemplars are drawn once
per run (seeded) and shared by every example, as the authors' template is fixed.

Exemplars are of two kinds, in the authors' proportion (6 of their 9 are broken, :data:`BROKEN_SHARE`):

- complete chain: "<E> is <c>. <C> is <p>." + one distractor sentence, answer <p>;
- broken chain: "<E> is <c>." + two distractor sentences about other concepts, answer <c> — nothing follows
  from the class, so the class itself is the answer.

Sentences of an exemplar are shuffled (the authors' exemplars put facts, rules and distractors in any order).
Distractors are "<D> is <q>." (another concept's property) or "<D>s are <D2>s." (a subtype rule between two
other concepts). The broken-chain exemplars are what make the ``subject`` corruption answerable: once the rule
no longer starts from the entity's class, the template's own logic says the answer is the class.

Test block (no distractor, as in the authors' ``simple_1hop.json``)::

    Alex is sterpus. Sterpus is bitter. Alex is     ->  "bitter"

Corruptions of the test block (equal token length, everything else unchanged), each with its noise label:

- ``class``    (0): the entity's class        "Alex is gorpus."      -> noise label: gorpus
- ``subject``  (1): the rule's subject        "Lempus is bitter."   -> noise label: sterpus (the class)
- ``property`` (2): the rule's property       "Sterpus is loud."    -> noise label: loud

Selection (the authors' rule): per corruption the first ``n`` examples are kept whose clean top-1 token is the
answer's first token *and* whose corrupted top-1 token is the noise label's first token (the authors compared
decoded, stripped tokens by prefix, which also accepts whitespace-only tokens; we compare token ids).
``require_correct=False`` keeps the first ``n`` regardless, for random models. Each corruption's pairs are
patched with ``exact`` (denoising, KL); the induction score of a head is the mean of its three normalised scores
(its CI: percentiles of the mean of the three bootstrap draws).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import vocab
from ..prontoqa.corrupt import encode
from ..stats import resample_counts
from ..tracing import prefixed_last_logits
from .data import Pair, make_pair

CORRUPTIONS = ("class", "subject", "property")
#: Share of broken-chain exemplars (answer = the class): 6 of the 9 in the authors' template.
BROKEN_SHARE = 6 / 9


def block(text: str, answer: str | None = None) -> str:
    """One template block; ``answer=None`` leaves the response empty (the test block)."""
    return f"### Input:\n{text}\n### Response:\n" + ("" if answer is None else answer)


@dataclass
class Cloze:
    entity: str
    concept: str
    prop: str

    def text(self, concept: str | None = None, subject: str | None = None, prop: str | None = None) -> str:
        c, s, p = concept or self.concept, subject or self.concept, prop or self.prop
        return f"{self.entity} is {c}. {s.capitalize()} is {p}. {self.entity} is"


def _distractor(rng: np.random.Generator, avoid: Sequence[str]) -> str:
    pool = [c for c in vocab.FICTIONAL_CONCEPTS if c not in avoid]
    if rng.random() < 0.5:
        return f"{str(rng.choice(pool)).capitalize()} is {rng.choice(vocab.PROPERTIES)}."
    d, d2 = rng.choice(pool, size=2, replace=False)
    return f"{vocab.plural(str(d)).capitalize()} are {vocab.plural(str(d2))}."


def exemplar(rng: np.random.Generator, broken: bool) -> tuple[str, str]:
    """(input text, answer) of one exemplar (see module docstring)."""
    e = str(rng.choice(vocab.ENTITIES))
    c = str(rng.choice(vocab.FICTIONAL_CONCEPTS))
    fact = f"{e} is {c}."
    if broken:
        sents, answer = [fact, _distractor(rng, [c]), _distractor(rng, [c])], c
    else:
        p = str(rng.choice(vocab.PROPERTIES))
        sents, answer = [fact, f"{c.capitalize()} is {p}.", _distractor(rng, [c])], p
    sents = [sents[i] for i in rng.permutation(len(sents))]
    return " ".join(sents) + f" {e} is", answer


def exemplars(rng: np.random.Generator, shots: int) -> str:
    """The few-shot part of the prompt: ``shots`` blocks, ``round(BROKEN_SHARE·shots)`` broken, in seeded order."""
    n_broken = int(round(BROKEN_SHARE * shots))
    kinds = [True] * n_broken + [False] * (shots - n_broken)
    kinds = [kinds[i] for i in rng.permutation(shots)]
    return "".join(block(*exemplar(rng, b)) + "\n\n" for b in kinds)


def _draw(rng: np.random.Generator) -> Cloze:
    return Cloze(str(rng.choice(vocab.ENTITIES)), str(rng.choice(vocab.FICTIONAL_CONCEPTS)),
                 str(rng.choice(vocab.PROPERTIES)))


def _first_token(tokenizer, prefix_ids: list[int], prefix: str, word: str) -> int | None:
    """First token of ``word`` written right after ``prefix`` (which ends with the response's newline)."""
    full = encode(tokenizer, prefix + word)
    return full[len(prefix_ids)] if full[:len(prefix_ids)] == prefix_ids and len(full) > len(prefix_ids) else None


def build_example(tokenizer, rng: np.random.Generator, head: str, index: int, tries: int = 50
                  ) -> dict[str, Pair] | None:
    """One cloze example after the few-shot ``head`` with its three equal-length corruptions (``None`` if none
    could be aligned)."""
    test = _draw(rng)
    clean = head + block(test.text())
    clean_ids = encode(tokenizer, clean)
    answer_id = _first_token(tokenizer, clean_ids, clean, test.prop)
    if answer_id is None:
        return None
    out: dict[str, Pair] = {}
    for kind in CORRUPTIONS:
        for _ in range(tries):
            if kind == "property":
                new = str(rng.choice([p for p in vocab.PROPERTIES if p != test.prop]))
                text, noise = head + block(test.text(prop=new)), new
            else:
                new = str(rng.choice([c for c in vocab.FICTIONAL_CONCEPTS if c != test.concept]))
                text = head + block(test.text(**({"concept": new} if kind == "class" else {"subject": new})))
                noise = new if kind == "class" else test.concept
            ids = encode(tokenizer, text)
            if len(ids) != len(clean_ids) or ids == clean_ids or ids[-1] != clean_ids[-1]:
                continue
            noise_id = _first_token(tokenizer, ids, text, noise)
            if noise_id is None or noise_id == answer_id:  # the noise answer must be a different first token
                if kind == "subject":  # its noise answer is the class itself: redrawing cannot help
                    return None
                continue
            out[kind] = make_pair(f"cloze-{index:05d}-{kind}", clean_ids, ids, answer_id, noise_id,
                                  subtask=CORRUPTIONS.index(kind), corruption=kind, clean=clean, corrupt=text,
                                  answer=test.prop, noise_label=noise)
            break
        else:
            return None
    return out


def candidate_cap(n: int, max_candidates: int | None) -> int:
    """Candidates :func:`build_pairs` screens at most: ``max_candidates``, by default 20 per pair wanted."""
    return int(max_candidates or 20 * n)


def pair_seed(seed: int) -> int:
    """The seed of the cloze pairs (:func:`build_pairs`) of a run with ``seed``."""
    from .run import sub_seed

    return sub_seed(seed, "induction")


def build_pairs(model, n: int, shots: int = 4, seed: int = 0, require_correct: bool = True,
                max_candidates: int | None = None, batch_size: int = 16) -> dict[str, list[Pair]]:
    """The first ``n`` usable pairs per corruption (see module docstring), drawn from one seeded RNG
    (first the ``shots`` exemplars shared by every example, then the test blocks).

    Screening is two-stage and sized to what is missing: the clean inputs of a few candidates first
    (``2 × missing``, at most ``batch_size``), then the corrupt inputs only of candidates the model
    answers correctly, for corruptions still short of ``n``. The kept pairs are the same as screening
    every candidate with every corruption in order; only wasted forwards are skipped.
    """
    rng = np.random.default_rng(seed)
    head = exemplars(rng, shots)
    kept: dict[str, list[Pair]] = {k: [] for k in CORRUPTIONS}
    max_candidates = candidate_cap(n, max_candidates)
    index = 0

    def top1(seqs: list[list[int]]) -> list[int]:  # the shared exemplars run once per call
        return prefixed_last_logits(model, seqs, batch_size).argmax(-1).tolist() if seqs else []

    while min(len(v) for v in kept.values()) < n and index < max_candidates:
        missing = max(n - len(v) for v in kept.values())
        cands = []
        while len(cands) < min(batch_size, 2 * missing) and index < max_candidates:
            ex = build_example(model.tokenizer, rng, head, index)
            index += 1
            if ex is not None:
                cands.append(ex)
        if not cands:
            break
        if require_correct:
            clean_top = top1([c[CORRUPTIONS[0]].clean_ids for c in cands])
            rows = [(j, k) for j, c in enumerate(cands) for k in CORRUPTIONS
                    if len(kept[k]) < n and clean_top[j] == c[k].answer_id]
            corrupt_top = dict(zip(rows, top1([cands[j][k].corrupt_ids for j, k in rows])))
        for j, c in enumerate(cands):
            for k in CORRUPTIONS:
                if len(kept[k]) >= n:
                    continue
                if require_correct and corrupt_top.get((j, k)) != c[k].corrupt_answer_id:
                    continue  # clean wrong (not screened) or the corrupted run does not give the noise label
                kept[k].append(c[k])
    return kept


def merge_scores(tables: dict[str, pd.DataFrame], boots: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Induction score per head = mean of the corruptions' normalised scores (subtask -1 = merged rows).

    ``tables``: corruption -> head table (layer, head, score, n); ``boots``: corruption -> bootstrap draws
    [boot, n_layers, n_heads] from the same number of draws, giving the CI of the mean.
    """
    kinds = [k for k in CORRUPTIONS if k in tables]
    if not kinds:
        raise ValueError("merge_scores: no corruption tables")
    base = tables[kinds[0]][["layer", "head"]].copy()
    for k in kinds:
        t = tables[k].set_index(["layer", "head"]).reindex(pd.MultiIndex.from_frame(base))
        base[f"score_{k}"] = t["score"].to_numpy()
        base[f"n_{k}"] = t["n"].to_numpy()
    base["score"] = base[[f"score_{k}" for k in kinds]].mean(axis=1)
    if boots:
        mean_boot = np.mean([boots[k] for k in kinds], axis=0)  # [boot, L, H]
        lo, hi = np.nanpercentile(mean_boot, [2.5, 97.5], axis=0)
        base["ci_low"] = lo[base["layer"], base["head"]]
        base["ci_high"] = hi[base["layer"], base["head"]]
    else:
        base["ci_low"] = base["ci_high"] = np.nan
    base["n"] = base[[f"n_{k}" for k in kinds]].min(axis=1)
    base.insert(0, "subtask", -1)
    return base


def draw_boot(res, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap draws [boot, L, H] of the normalised score of one PatchResult (pairs resampled)."""
    N, L, H = res.patched.shape
    w = resample_counts(N, n_boot, seed) / N
    flat = res.patched.reshape(N, -1)
    b = ((w @ flat) - (w @ res.base)[:, None]) / ((w @ res.source) - (w @ res.base))[:, None]
    return b.reshape(n_boot, L, H)


def summary(pairs: dict[str, Sequence[Pair]]) -> pd.DataFrame:
    return pd.DataFrame([{"corruption": k, "pairs": len(v)} for k, v in pairs.items()])


# --------------------------------------------------------------------------------------------------
# Entry points (scripts/induction_heads.py: run mode -> run, merge mode -> merge)
# --------------------------------------------------------------------------------------------------
def run(model, cfg, seed: int, corruptions: Sequence[str] = CORRUPTIONS, *,
        log=None) -> dict[str, tuple[list[dict], Any]]:
    """Induction-head patching (study.md E3): per corruption of ``corruptions``, the kept cloze pairs (records of
    the pairs file) and the exact patching result over every head (``info["corruption"]`` set; empty without
    pairs).

    ``cfg`` the ``patching`` config section (:func:`cotmech.config.section`): pairs from ``cfg["induction"]``
    (:func:`build_pairs`, seed :func:`pair_seed`), the sweep's metric, direction and head batch.
    """
    from ..patch_results import PatchResult
    from .exact import exact_sweep

    log = log or (lambda msg: print(msg, flush=True))
    io_ = cfg["induction"]
    kept = build_pairs(model, io_["n"], shots=io_["shots"], seed=pair_seed(seed),
                       require_correct=io_["require_correct"], max_candidates=io_["max_candidates"])
    out = {}
    for kind in corruptions:
        pairs = kept[kind]
        log(f"{kind}: kept {len(pairs)} of the requested {io_['n']} pairs")
        records = [{"pair_id": p.pair_id, "clean_ids": p.clean_ids, "corrupt_ids": p.corrupt_ids,
                    "first_diff": p.first_diff, "answer_id": p.answer_id, "corrupt_answer_id": p.corrupt_answer_id,
                    **p.meta} for p in pairs]
        if pairs:
            res = exact_sweep(model, pairs, metric=cfg["metric"], direction=cfg["direction"],
                              head_batch=cfg["head_batch"], chunk_tokens=cfg["chunk_tokens"],
                              overhead=cfg["chunk_overhead"])
        else:
            res = PatchResult.empty("exact", cfg["metric"], cfg["direction"], model.n_layers, model.n_heads)
        res.info["corruption"] = kind
        out[kind] = (records, res)
    return out


def merge(results: dict[str, Any], cfg, seed: int, *, log=None) -> tuple[pd.DataFrame, list[str]]:
    """The merged induction scores (:func:`merge_scores`, bootstrap CI of the mean) of :func:`run`'s results
    ({where it came from: PatchResult}, as read back from the raw files) and the corruptions merged. A result
    without pairs is left out (with a warning); ``cfg`` the ``patching`` section (``n_boot``)."""
    import sys

    from ..io import RecordError
    from .run import sub_seed
    from .scores import score_table

    log = log or (lambda msg: print(msg, flush=True))
    tables, boots = {}, {}
    for where, res in results.items():
        kind = res.info.get("corruption")
        if kind not in CORRUPTIONS:
            raise RecordError(f"{where}: no corruption recorded in its metadata")
        if not res.pair_ids:
            print(f"warning: {kind}: no usable pairs; left out of the merge", file=sys.stderr)
            continue
        tables[kind] = score_table(res, -1, n_boot=0)
        boots[kind] = draw_boot(res, cfg["n_boot"], sub_seed(seed, "induction-boot", kind))
    df = merge_scores(tables, boots)
    log(df.sort_values("score", ascending=False).head(10).to_string(index=False))
    return df, list(tables)
