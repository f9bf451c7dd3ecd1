"""E3: induction heads on a synthetic 1-hop cloze task, through the same patcher (study.md E3).

Template (one line per block, few-shot exemplars first, all words from :mod:`cotmech.vocab`)::

    <E> is <a>. <E2> is <d>. <A> is <p>. <E> is <p>.        (x shots; E2/d: a distractor fact)
    Alex is sterpus. Max is lorpus. Sterpus is bitter. Alex is   ->  " bitter"

E = entity, a = fictional concept (A capitalised), p = property; the distractor names another entity
and concept. Corruptions of the test block (equal token length, everything else unchanged):

- ``class``    (0): the entity's class        "Alex is gorpus."      -> noise answer: gorpus
- ``subject``  (1): the rule's subject        "Lempus is bitter."   -> noise answer: sterpus
- ``property`` (2): the rule's property       "Sterpus is loud."    -> noise answer: loud

Per corruption the first ``n`` examples are kept whose clean top-1 token is the answer and whose corrupt
top-1 token is not (``require_correct=False`` keeps the first ``n`` regardless, for random models). Each
corruption's pairs are patched with ``exact`` (denoising, KL); the induction score of a head is the mean
of its three normalised scores (its CI: percentiles of the mean of the three bootstrap draws).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import vocab
from ..batching import left_pad, last_logits
from ..prontoqa.corrupt import encode
from ..stats import resample_counts
from .data import Pair, make_pair

CORRUPTIONS = ("class", "subject", "property")


@dataclass
class Cloze:
    entity: str
    concept: str
    prop: str
    distractor: tuple[str, str]  # (entity, concept)

    def block(self, concept: str | None = None, subject: str | None = None, prop: str | None = None,
              with_answer: bool = True) -> str:
        c, s, p = concept or self.concept, subject or self.concept, prop or self.prop
        de, dc = self.distractor
        text = f"{self.entity} is {c}. {de} is {dc}. {s.capitalize()} is {p}. {self.entity} is"
        return text + (f" {p}." if with_answer else "")


def _draw(rng: np.random.Generator) -> Cloze:
    e, e2 = rng.choice(vocab.ENTITIES, size=2, replace=False)
    c, d = rng.choice(vocab.FICTIONAL_CONCEPTS, size=2, replace=False)
    return Cloze(str(e), str(c), str(rng.choice(vocab.PROPERTIES)), (str(e2), str(d)))


def _first_token(tokenizer, prefix_ids: list[int], prefix: str, word: str) -> int | None:
    full = encode(tokenizer, prefix + " " + word)
    return full[len(prefix_ids)] if full[:len(prefix_ids)] == prefix_ids and len(full) > len(prefix_ids) else None


def build_example(tokenizer, rng: np.random.Generator, shots: int, index: int, tries: int = 50
                  ) -> dict[str, Pair] | None:
    """One cloze example with its three equal-length corruptions (``None`` if none could be aligned)."""
    shots_text = [_draw(rng).block() for _ in range(shots)]
    test = _draw(rng)
    head = "\n".join(shots_text + [""])
    clean = head + test.block(with_answer=False)
    clean_ids = encode(tokenizer, clean)
    answer_id = _first_token(tokenizer, clean_ids, clean, test.prop)
    if answer_id is None:
        return None
    out: dict[str, Pair] = {}
    for kind in CORRUPTIONS:
        for _ in range(tries):
            if kind == "property":
                new = str(rng.choice([p for p in vocab.PROPERTIES if p != test.prop]))
                text, noise = head + test.block(prop=new, with_answer=False), new
            else:
                new = str(rng.choice([c for c in vocab.FICTIONAL_CONCEPTS if c not in (test.concept,
                                                                                     test.distractor[1])]))
                text = head + test.block(**({"concept": new} if kind == "class" else {"subject": new}),
                                         with_answer=False)
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
                                  subtask=CORRUPTIONS.index(kind), corruption=kind, clean=clean, corrupt=text)
            break
        else:
            return None
    return out


def build_pairs(model, n: int, shots: int = 4, seed: int = 0, require_correct: bool = True,
                max_candidates: int | None = None, batch_size: int = 16) -> dict[str, list[Pair]]:
    """The first ``n`` usable pairs per corruption (see module docstring), drawn from one seeded RNG.

    Screening is two-stage and sized to what is missing: the clean inputs of a few candidates first
    (``2 × missing``, at most ``batch_size``), then the corrupt inputs only of candidates the model
    answers correctly, for corruptions still short of ``n``. The kept pairs are the same as screening
    every candidate with every corruption in order; only wasted forwards are skipped.
    """
    rng = np.random.default_rng(seed)
    kept: dict[str, list[Pair]] = {k: [] for k in CORRUPTIONS}
    max_candidates = max_candidates or 20 * n
    index = 0
    pad = model.tokenizer.pad_token_id

    def top1(seqs: list[list[int]]) -> list[int]:
        return last_logits(model, left_pad(seqs, pad)).argmax(-1).tolist() if seqs else []

    while min(len(v) for v in kept.values()) < n and index < max_candidates:
        missing = max(n - len(v) for v in kept.values())
        cands = []
        while len(cands) < min(batch_size, 2 * missing) and index < max_candidates:
            ex = build_example(model.tokenizer, rng, shots, index)
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
                if require_correct and corrupt_top.get((j, k), c[k].answer_id) == c[k].answer_id:
                    continue  # clean wrong (not screened) or corruption does not change the answer
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
