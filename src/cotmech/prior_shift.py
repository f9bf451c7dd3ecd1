"""Layer-wise prior shift: does a layer's lens distribution follow the pretraining prior or the context?
(study.md E10, claim C4: the "functional rift" at decoder block 16 of 32 in Llama-2-7B).

Definitions (all per pair = one clean input, read at its predicting position):

- **Context-free prior** (:func:`context_free_ids`): the model's own next-token distribution for the
  *current sentence fragment alone*: the suffix of the clean ids after the last sentence boundary (a token
  whose text contains "." or a newline) that lies before the final token.  "Wren is impus. Impuses are"
  -> " Impuses are"; "… Wren is impus." -> " Wren is impus."; an empty response -> the response header
  (e.g. "### Response:\\n").  So the prior sees the same last words and *no token position of the
  question, the exemplars or the earlier CoT sentences* (a BOS token is kept if the clean ids start with one).
- **Divergence**: Jensen–Shannon divergence in bits (symmetric, bounded in [0, 1], defined when one
  distribution has zeros) between the lens distribution at layer ℓ and (a) the final distribution
  (lens at layer L = the model's output; D = 0 there) and (b) the context-free prior.
- **Lens rift** (our extension, not the paper's statistic; :func:`rift_summary`): per pair and layer,
  ``prefers_context`` = 1 if the lens gives the in-context answer a higher probability than the context-free
  prior's top-1 token (pairs where the two coincide are left out); the rift is the first residual layer ℓ where
  the mean over pairs is >= 0.5 (:func:`cotmech.stats.first_crossing`); relative depth = ℓ / L.  Both tokens are read off the
  same lens distribution, so a lens that becomes final-like only late does not move the crossing late by itself,
  and nothing makes it cross at all: if the model's own output preferred the prior's token, it never would.  The
  earlier definition — the first layer after which JS(lens‖final) < JS(lens‖prior) — is still reported as
  ``js_crossover_layer`` for reference only: JS(lens_L‖final) = 0 by construction, so that crossover is forced and
  late.  The paper's rift statistic is the trace statistic (cotmech.flow.rift_summary).
- **Context abidance**: the lens's top-1 token is one of the clean input ids (the paper's statistic, E10).
- **Real-world answer** (false ontology only, :func:`real_world_answer`): when the fragment is "<X> is" /
  "<X>s are" with X a false-ontology concept and the in-context answer a concept, the true taxonomic
  parent of X (:data:`REAL_PARENT`) in the answer's surface form (plural/capitalised like it); rows where
  the in-context parent is also the real one are excluded.
- **Uncertainty**: cluster bootstrap over examples (all pairs of an example resampled together), seeded.
"""
from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from .stats import bootstrap_weights, first_crossing
from .vocab import FALSE_ONTOLOGY_CONCEPTS, plural

RIFT_DEFINITION = ("our extension (not the paper's statistic): first residual layer l (0 = embeddings, L = output "
                   "of the last block) where the share of pairs whose lens gives the in-context answer a higher probability "
                   "than the context-free prior's top-1 token is >= 0.5 (pairs where the two tokens coincide left "
                   "out); None if no such layer; relative depth = l / L. The tuned lens is evaluated only on examples "
                   "held out from its training.")
JS_CROSSOVER_DEFINITION = ("reference only, forced by construction: first layer l such that mean JS(lens_l || final) < "
                           "mean JS(lens_l || context-free prior) for every layer >= l (JS(lens_L || final) = 0)")
RIFT_LEVEL = 0.5

#: True taxonomic parent of each false-ontology concept (cotmech.vocab.FALSE_ONTOLOGY_CONCEPTS).
REAL_PARENT: dict[str, str] = {
    "vertebrate": "animal", "mammal": "vertebrate", "carnivore": "mammal", "feline": "carnivore", "cat": "feline",
    "dog": "carnivore", "sheep": "mammal", "cow": "mammal", "snake": "vertebrate",
    "invertebrate": "animal", "arthropod": "invertebrate", "insect": "arthropod", "lepidopteran": "insect",
    "butterfly": "lepidopteran", "moth": "lepidopteran", "ant": "insect", "spider": "arthropod",
    "crustacean": "arthropod",
    "real number": "number", "integer": "real number", "natural number": "integer", "prime number": "natural number",
    "Mersenne prime": "prime number", "even number": "integer", "composite number": "natural number",
    "negative number": "real number", "fraction": "real number",
}
_CONCEPTS = [c for lst in FALSE_ONTOLOGY_CONCEPTS for c in lst]
#: lower-cased surface form -> (concept, is_plural)
_FORMS: dict[str, tuple[str, bool]] = {}
for _c in _CONCEPTS:
    _FORMS.setdefault(_c.lower(), (_c, False))
    _FORMS.setdefault(plural(_c).lower(), (_c, True))


# --------------------------------------------------------------------------------------------------
# Context-free prior
# --------------------------------------------------------------------------------------------------
class _Boundary:
    """Cache of "is this token a sentence boundary" (its text contains '.' or a newline) per tokenizer."""

    def __init__(self, tokenizer: Any):
        self.tok, self.cache = tokenizer, {}

    def __call__(self, tid: int) -> bool:
        if tid not in self.cache:
            text = self.tok.decode([tid])
            self.cache[tid] = ("." in text) or ("\n" in text)
        return self.cache[tid]


def context_free_ids(clean_ids: Sequence[int], tokenizer: Any, boundary: _Boundary | None = None) -> list[int]:
    """The suffix of ``clean_ids`` after the last sentence boundary before the final token (see module doc)."""
    ids = [int(t) for t in clean_ids]
    if not ids:
        raise ValueError("context_free_ids: empty input")
    is_b = boundary or _Boundary(tokenizer)
    j = len(ids) - 2
    while j >= 0 and not is_b(ids[j]):
        j -= 1
    out = ids[j + 1:]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids[0] == bos and out[0] != bos:
        out = [bos] + out
    return out


@torch.no_grad()
def prior_logprobs(model: Any, prior_ids: Sequence[Sequence[int]], batch_size: int = 16) -> torch.Tensor:
    """Next-token log-probabilities [N, vocab] (float32, CPU) of the context-free inputs (plain forwards)."""
    from .batching import chunks, last_logits, left_pad

    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out = []
    order = sorted(range(len(prior_ids)), key=lambda i: len(prior_ids[i]))  # similar lengths together
    for idx in chunks(order, batch_size):
        logits = last_logits(model, left_pad([prior_ids[i] for i in idx], pad))
        out.append((idx, torch.log_softmax(logits.float(), -1).cpu()))
    res = torch.empty(len(prior_ids), out[0][1].shape[-1]) if out else torch.empty(0, model.vocab_size)
    for idx, lp in out:
        res[list(idx)] = lp
    return res


# --------------------------------------------------------------------------------------------------
# Real-world answers on false-ontology prompts
# --------------------------------------------------------------------------------------------------
def _render(concept: str, is_plural: bool, like: str) -> str:
    word = plural(concept) if is_plural else concept
    return word[0].upper() + word[1:] if like[:1].isupper() else word


def real_world_word(fragment: str, answer: str) -> str | None:
    """The true parent of the fragment's subject, in the answer's form; None if the rule does not apply.

    ``fragment`` ends with "<X> is" / "<X> are" (X a false-ontology concept, singular or plural) and
    ``answer`` (the in-context next word) is a concept form; None also when the in-context parent is
    the real one.
    """
    m = re.search(r"([A-Za-z]+(?: [A-Za-z]+)?)\s+(?:is|are)\s*$", fragment.strip())
    ans = _FORMS.get(answer.strip().rstrip(".").lower())
    if m is None or ans is None:
        return None
    words = m.group(1).split()
    subj = None
    for cand in ([" ".join(words[-2:])] if len(words) > 1 else []) + [words[-1]]:
        if cand.lower() in _FORMS:
            subj = _FORMS[cand.lower()][0]
            break
    if subj is None or subj not in REAL_PARENT or REAL_PARENT[subj] == ans[0]:
        return None
    return _render(REAL_PARENT[subj], ans[1], answer.strip())


def real_world_answer(fragment: str, answer: str, answer_id: int, tokenizer: Any) -> int:
    """First token id of :func:`real_world_word`, tokenised like the answer (with or without a leading
    space, whichever reproduces ``answer_id``); -1 if not applicable or not alignable."""
    word = real_world_word(fragment, answer)
    if word is None:
        return -1
    for pre in (" ", ""):
        ids = tokenizer.encode(pre + answer.strip(), add_special_tokens=False)
        if ids and ids[0] == answer_id:
            rid = tokenizer.encode(pre + word, add_special_tokens=False)
            return int(rid[0]) if rid and rid[0] != answer_id else -1
    return -1


# --------------------------------------------------------------------------------------------------
# Crossover and bootstrap
# --------------------------------------------------------------------------------------------------
def crossover_layer(in_context: np.ndarray, prior: np.ndarray) -> int | None:
    """First index ℓ with in_context[ℓ'] < prior[ℓ'] for all ℓ' ≥ ℓ; None if not at the last index (NaN = False)."""
    a, b = np.asarray(in_context, float), np.asarray(prior, float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"crossover_layer: need two equal 1-D curves, got {a.shape} and {b.shape}")
    below = a < b
    if not below[-1]:
        return None
    i = below.size - 1
    while i > 0 and below[i - 1]:
        i -= 1
    return int(i)


def group_sums(values: np.ndarray, inv: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group nan-sums and non-NaN counts of ``values`` [n_rows, ...] -> ([G, ...], [G, ...])."""
    ok = np.isfinite(values)
    S = np.zeros((n_groups,) + values.shape[1:])
    C = np.zeros_like(S)
    np.add.at(S, inv, np.where(ok, values, 0.0))
    np.add.at(C, inv, ok.astype(float))
    return S, C


def boot_mean(values: np.ndarray, inv: np.ndarray, W: np.ndarray, ci: float = 0.95) -> dict[str, np.ndarray]:
    """Mean over rows and its cluster-bootstrap percentile CI; values [n_rows, ...] -> each [...]."""
    S, C = group_sums(values, inv, W.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = S.sum(0) / C.sum(0)
        bm = np.tensordot(W, S, 1) / np.tensordot(W, C, 1)  # [B, ...]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (e.g. p_real off false ontology)
        lo, hi = np.nanquantile(bm, [(1 - ci) / 2, (1 + ci) / 2], axis=0) if len(W) else (mean * np.nan,) * 2
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": C.sum(0)}


# --------------------------------------------------------------------------------------------------
# Tables and the rift summary
# --------------------------------------------------------------------------------------------------
METRICS = ("p_answer", "rank_answer", "top1_in_context", "topk_context_mass", "js_final", "js_prior",
           "prefers_context", "p_real", "p_real_minus_answer")


def rows_frame(stats: dict[str, np.ndarray], index: pd.DataFrame, lens_name: str) -> pd.DataFrame:
    """Long per-(row, layer) frame from :func:`cotmech.unembed.lens_stats` output and the row index."""
    N, Lp1 = stats["p_answer"].shape
    base = index.reset_index(drop=True).loc[np.repeat(np.arange(N), Lp1)].reset_index(drop=True)
    base.insert(0, "lens", lens_name)
    base["layer"] = np.tile(np.arange(Lp1), N)
    for k in METRICS:
        base[k] = stats[k].reshape(-1)
    return base


def _curves(rows: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """rows (one lens) -> (values [n_pairs, L+1], example ids [n_pairs])."""
    wide = rows.pivot(index="pair_id", columns="layer", values=metric)
    ex = rows.drop_duplicates("pair_id").set_index("pair_id")["example_id"]
    return wide.to_numpy(float), ex.loc[wide.index].to_numpy()


def layer_table(rows: pd.DataFrame, n_layers: int, n_boot: int, seed: int, ci: float = 0.95) -> pd.DataFrame:
    """Per lens, subtask (-1 = all) and metric: mean per layer with a cluster-bootstrap CI."""
    out = []
    for lens_name, rl in rows.groupby("lens", sort=False):
        for st in [-1] + sorted(rl["subtask"].unique().tolist()):
            sub = rl if st == -1 else rl[rl["subtask"] == st]
            for metric in METRICS:
                vals, ex = _curves(sub, metric)
                inv, W = bootstrap_weights(ex, n_boot, seed)
                r = boot_mean(vals, inv, W, ci)
                L1 = vals.shape[1]
                out.append(pd.DataFrame({
                    "lens": lens_name, "subtask": int(st), "metric": metric, "layer": np.arange(L1),
                    "rel_depth": np.arange(L1) / n_layers, "mean": r["mean"], "ci_low": r["ci_low"],
                    "ci_high": r["ci_high"], "n": r["n"].astype(int), "n_examples": int(W.shape[1])}))
    return pd.concat(out, ignore_index=True)


def _split(values: np.ndarray, layer: int | None, inv: np.ndarray, W: np.ndarray, ci: float) -> dict[str, Any]:
    """Mean of ``values`` [n_pairs, L+1] over layers < layer and >= layer, with bootstrap CIs."""
    res = {}
    for name, sl in (("below", slice(0, layer)), ("above", slice(layer, None))):
        if layer is None or values[:, sl].shape[1] == 0:
            res[name] = {"mean": None, "ci_low": None, "ci_high": None}
            continue
        part = values[:, sl]
        r = boot_mean(np.where(np.isfinite(part), part, np.nan), inv, W, ci)
        # pooled over (pair, layer) cells: ratio of summed values to summed counts
        S, C = group_sums(part, inv, W.shape[1])
        S, C = S.sum(1), C.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            bm = (W @ S) / (W @ C)
        lo, hi = np.nanquantile(bm, [(1 - ci) / 2, (1 + ci) / 2])
        res[name] = {"mean": float(S.sum() / C.sum()), "ci_low": float(lo), "ci_high": float(hi),
                     "per_layer_mean": [float(x) for x in r["mean"]]}
    return res


def rift_summary(rows: pd.DataFrame, n_layers: int, n_boot: int, seed: int, ci: float = 0.95) -> dict[str, Any]:
    """The lens rift (our extension, :data:`RIFT_DEFINITION`) of the rows of one lens: the crossing layer of the
    mean ``prefers_context`` curve with a cluster-bootstrap CI over examples, the context abidance (lens top-1 in
    the prompt) split at that layer and at the midpoint, and the JS crossover for reference only."""
    pref, ex = _curves(rows, "prefers_context")
    js_f, _ = _curves(rows, "js_final")
    js_p, _ = _curves(rows, "js_prior")
    top1, _ = _curves(rows, "top1_in_context")
    inv, W = bootstrap_weights(ex, n_boot, seed)
    G = W.shape[1]
    Sq, Cq = group_sums(pref, inv, G)
    Sf, Cf = group_sums(js_f, inv, G)
    Sp, Cp = group_sums(js_p, inv, G)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = Sq.sum(0) / Cq.sum(0)
        layer = first_crossing(curve, RIFT_LEVEL)
        bq = (W @ Sq) / (W @ Cq)  # [B, L+1]
        js_cross = crossover_layer(Sf.sum(0) / Cf.sum(0), Sp.sum(0) / Cp.sum(0))
    boots = np.array([np.nan if (c := first_crossing(q, RIFT_LEVEL)) is None else c for q in bq], float)
    ok = np.isfinite(boots)
    lo, hi = (np.quantile(boots[ok], [(1 - ci) / 2, (1 + ci) / 2]) if ok.any() else (np.nan, np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        qlo, qhi = np.nanquantile(bq, [(1 - ci) / 2, (1 + ci) / 2], axis=0) if len(W) else (curve * np.nan,) * 2
    mid = n_layers // 2 if n_layers % 2 == 0 else (n_layers + 1) // 2

    def opt(x: Any) -> float | None:
        return None if x is None or not np.isfinite(x) else float(x)

    return {
        "definition": RIFT_DEFINITION, "label": "extension (not the paper's statistic)",
        "rift_layer": layer, "rel_depth": None if layer is None else layer / n_layers,
        "ci_low": opt(lo) if ok.any() else None, "ci_high": opt(hi) if ok.any() else None,
        "rel_ci_low": None if not ok.any() else float(lo) / n_layers,
        "rel_ci_high": None if not ok.any() else float(hi) / n_layers,
        "n_boot": int(len(W)), "n_boot_no_crossover": int((~ok).sum()), "ci": ci,
        "n_pairs": int(pref.shape[0]), "n_pairs_compared": int(np.isfinite(pref).any(1).sum()),
        "n_examples": int(G), "n_layers": n_layers, "midpoint_layer": mid,
        "prefers_context": [opt(x) for x in curve], "prefers_context_ci_low": [opt(x) for x in qlo],
        "prefers_context_ci_high": [opt(x) for x in qhi],
        "js_crossover_layer": js_cross, "js_crossover_definition": JS_CROSSOVER_DEFINITION,
        "mean_js_final": [float(x) for x in Sf.sum(0) / np.maximum(Cf.sum(0), 1)],
        "mean_js_prior": [float(x) for x in Sp.sum(0) / np.maximum(Cp.sum(0), 1)],
        "context_abidance_rift": _split(top1, layer, inv, W, ci),
        "context_abidance_midpoint": _split(top1, mid, inv, W, ci),
    }


PAPER_RIFT = {"rift_layer": 16, "n_layers": 32, "rel_depth": 0.5, "context_share_below": 0.074,
              "context_share_above": 0.842, "context_share_above_without_writers": 0.779,
              "source": "study.md E10: layer 16 [P]; shares from the shipped traces (E9c statistic) [R]; the paper's "
                        "statistic is the trace statistic (flow/<dataset>/summary.json), not this lens one"}


def heldout_rows(rows: pd.DataFrame, heldout: Sequence[str], lens_name: str = "tuned") -> pd.DataFrame:
    """``rows`` with the ``lens_name`` rows kept only for examples in ``heldout`` (keys "dataset/example_id", as
    :func:`cotmech.lens.tuned_lens_split` writes them): a trained lens is evaluated on examples it was not trained on."""
    key = rows["dataset"].astype(str) + "/" + rows["example_id"].astype(str)
    keep = (rows["lens"] != lens_name) | key.isin(set(heldout))
    return rows[keep].reset_index(drop=True)


def plot_curves(table: pd.DataFrame, title: str, stem: Any, rifts: dict[str, int | None] | None = None) -> list:
    """Lens curves with CI bands (x = relative depth), one column per lens: divergences, context abidance,
    answer probability (and the real-world answer where present). Saves PNG + PDF."""
    from .plotting import figure, save_figure

    lenses = list(dict.fromkeys(table["lens"]))
    panels = [("divergence (JS, bits)", [("js_final", "to final (in-context)"), ("js_prior", "to context-free prior")]),
              ("context abidance", [("top1_in_context", "top-1 is a prompt token"),
                                    ("topk_context_mass", "top-k mass on prompt tokens"),
                                    ("prefers_context", "answer > prior's top-1 (rift, ours)")]),
              ("answer probability", [("p_answer", "in-context answer"), ("p_real", "real-world answer")])]
    fig, axes = figure(len(panels), len(lenses), width=3.6, height=2.5, sharex=True)
    t = table[table["subtask"] == -1]
    for c, lens_name in enumerate(lenses):
        for r, (ylabel, series) in enumerate(panels):
            ax = axes[r][c]
            for metric, label in series:
                d = t[(t["lens"] == lens_name) & (t["metric"] == metric)].sort_values("layer")
                if d.empty or not np.isfinite(d["mean"]).any():
                    continue
                ax.plot(d["rel_depth"], d["mean"], label=label)
                ax.fill_between(d["rel_depth"], d["ci_low"], d["ci_high"], alpha=0.25)
            ax.axvline(0.5, color="0.6", lw=0.8, ls=":")
            rift = (rifts or {}).get(lens_name)
            if rift is not None:
                L = t["layer"].max()
                ax.axvline(rift / L, color="k", lw=0.9, ls="--", label="lens rift (ours)")
            if r == 0:
                ax.set_title(f"{lens_name} lens — {title}")
            if r == len(panels) - 1:
                ax.set_xlabel("relative depth (layer / n_layers)")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=6)
    return save_figure(fig, stem)


# --------------------------------------------------------------------------------------------------
# Inputs and the per-dataset pipeline
# --------------------------------------------------------------------------------------------------
def load_activations(pairs_path: Any, tensors_path: Any, index_path: Any,
                     keys: Sequence[str] = ("resid",)) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Read an activations file + index and join the pairs (by pair_id); errors name the file and problem.

    Returns the requested tensors and the index with the pair fields ``clean_ids, answer, ontology``.
    """
    from .io import RecordError, load_tensors, read_jsonl, read_table

    tensors = load_tensors(tensors_path)
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise RecordError(f"{tensors_path}: missing tensor(s) {missing}; has {sorted(tensors)}")
    index = read_table(index_path)
    need = {"row", "pair_id", "example_id", "subtask", "length", "answer_id", "answer_pos"}
    if need - set(index.columns):
        raise RecordError(f"{index_path}: missing column(s) {sorted(need - set(index.columns))}")
    n = len(index)
    for k in keys:
        if tensors[k].shape[0] != n:
            raise RecordError(f"{tensors_path}: tensor {k} has {tensors[k].shape[0]} rows, index {index_path} has {n}")
    if not np.array_equal(index["row"].to_numpy(), np.arange(n)):
        raise RecordError(f"{index_path}: column 'row' must be 0..{n - 1} in order")
    pairs = {p["pair_id"]: p for p in read_jsonl(pairs_path)}
    absent = [pid for pid in index["pair_id"] if pid not in pairs]
    if absent:
        raise RecordError(f"{index_path}: {len(absent)} pair_id(s) not in {pairs_path}, e.g. {absent[0]!r}")
    index = index.copy()
    for f in ("clean_ids", "answer", "ontology"):
        index[f] = [pairs[pid].get(f) for pid in index["pair_id"]]
    bad = [pid for pid, ids, ln in zip(index["pair_id"], index["clean_ids"], index["length"])
           if not isinstance(ids, list) or len(ids) != ln]
    if bad:
        raise RecordError(f"{pairs_path}: pair {bad[0]!r}: clean_ids missing or not of the indexed length")
    return {k: tensors[k] for k in keys}, index


def prior_inputs(index: pd.DataFrame, tokenizer: Any) -> tuple[list[list[int]], np.ndarray, list[str]]:
    """Unique context-free inputs, the row -> input map [N], and each row's fragment text."""
    is_b = _Boundary(tokenizer)
    uniq: dict[tuple[int, ...], int] = {}
    which, frags = [], []
    for ids in index["clean_ids"]:
        p = tuple(context_free_ids(ids, tokenizer, is_b))
        which.append(uniq.setdefault(p, len(uniq)))
        frags.append(tokenizer.decode(list(p), skip_special_tokens=True))
    return [list(p) for p in uniq], np.asarray(which), frags


def run_lenses(model: Any, lens: Any, resid: torch.Tensor, index: pd.DataFrame, tuned: Any = None,
               top_k: int = 10, prior_batch_size: int = 16) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Both lenses on ``resid`` [N, L+1, d] (rows of ``index``): the long per-(row, layer) frame and facts."""
    from .unembed import lens_stats

    tok = model.tokenizer
    uniq, which, frags = prior_inputs(index, tok)
    prior = prior_logprobs(model, uniq, batch_size=prior_batch_size)[torch.as_tensor(which)]
    real = torch.tensor([real_world_answer(f, str(a), int(aid), tok) if o == "false" else -1
                         for f, a, aid, o in zip(frags, index["answer"], index["answer_id"], index["ontology"])])
    ctx = [torch.as_tensor(ids) for ids in index["clean_ids"]]
    aid = torch.tensor(index["answer_id"].to_numpy(np.int64))
    keep = index[["pair_id", "example_id", "subtask"] + (["kind"] if "kind" in index else [])]
    frames = []
    for name, tr in (("logit", None), ("tuned", tuned)):
        if name == "tuned" and tr is None:
            continue
        st = lens_stats(lens, resid, aid, ctx, prior, real, top_k=top_k, translator=tr, progress=f"{name} lens")
        frames.append(rows_frame(st, keep, name))
    facts = {"n_rows": int(len(index)), "n_prior_inputs": len(uniq), "n_real_world": int((real >= 0).sum()),
             "prior_examples": sorted(set(frags))[:10]}
    return pd.concat(frames, ignore_index=True), facts


# --------------------------------------------------------------------------------------------------
# Entry points (scripts/prior_shift.py: dataset -> run, rift -> rift)
# --------------------------------------------------------------------------------------------------
ROWS_COLUMNS = ("dataset", "lens", "pair_id", "example_id", "layer", "js_final", "js_prior", "top1_in_context",
                "prefers_context")


def run(model: Any, resid: torch.Tensor, index: pd.DataFrame, cfg: Any, seed: int, *, dataset: str,
        tuned: Any = None, heldout: Sequence[str] | None = None, where: object = "pairs",
        log: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One dataset's lens curves (study.md E10): the per-(pair, layer) rows frame and the per-layer table.

    ``resid`` [N, L+1, d] and ``index`` as :func:`load_activations` returns them; ``cfg`` the ``prior_shift``
    config section (:func:`cotmech.config.section`); at most ``cfg["max_per_subtask"]`` rows per subtask are drawn
    with ``seed``. With a tuned lens ``tuned``, its rows are kept for the examples ``heldout`` from its training
    only (required then). ``where`` names the pairs in token-id errors.
    """
    import time

    from .cli import check_pair_ids
    from .stats import select_rows
    from .unembed import make_unembed

    log = log or (lambda msg: print(msg, flush=True))
    if tuned is not None and heldout is None:
        raise ValueError("a tuned lens needs the examples held out from its training (heldout)")
    rows = select_rows(index, cfg["max_per_subtask"], seed)
    index = index.iloc[rows].reset_index(drop=True)
    resid = resid[torch.as_tensor(rows)]
    check_pair_ids(model, index.to_dict("records"), where)
    lens = make_unembed(model)
    log(f"lens fast path: {lens.fast}; {len(index)} of {len(rows)} rows")
    t1 = time.time()
    frame, facts = run_lenses(model, lens, resid, index, tuned, top_k=int(cfg["top_k"]),
                              prior_batch_size=int(cfg["prior_batch_size"]))
    frame.insert(0, "dataset", dataset)
    if tuned is not None:
        frame = heldout_rows(frame, heldout)
    log(f"lenses done in {time.time() - t1:.1f} s: {json.dumps(facts)}")
    table = layer_table(frame, model.n_layers, int(cfg["n_boot"]), seed, float(cfg["ci"]))
    table.insert(0, "dataset", dataset)
    return frame, table


def rift(frames: Sequence[pd.DataFrame], cfg: Any, seed: int,
         heldout: Sequence[str] | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """The lens rift over datasets (our extension): the summary (rift.json) and the per-layer table of all rows.

    ``frames`` are :func:`run`'s rows frames (one per dataset); rows of the tuned lens need ``heldout``.
    """
    n_boot, ci = int(cfg["n_boot"]), float(cfg["ci"])
    rows = pd.concat(frames, ignore_index=True)
    if (rows["lens"] == "tuned").any():
        if heldout is None:
            raise ValueError("tuned-lens rows need the examples held out from its training (heldout)")
        rows = heldout_rows(rows, heldout)
    n_layers = int(rows["layer"].max())
    rows["example_id"] = rows["dataset"].astype(str) + "/" + rows["example_id"].astype(str)
    rows["pair_id"] = rows["dataset"].astype(str) + "/" + rows["pair_id"].astype(str)
    out = {"label": "extension (not the paper's statistic; the paper's is flow/<dataset>/summary.json)",
           "definition": RIFT_DEFINITION, "divergence": "Jensen-Shannon, bits", "n_layers": n_layers,
           "tuned_lens_rows": "examples held out from tuned-lens training only",
           "context_abidance": "share of (pair, layer) cells whose lens top-1 token is a prompt token",
           "bootstrap": f"{n_boot} cluster resamples of examples, seed {seed}, {ci:.0%} percentile CI",
           "paper": PAPER_RIFT, "datasets": {}}
    for name, part in [("all", rows)] + list(rows.groupby("dataset", sort=True)):
        out["datasets"][name] = {lens: rift_summary(r, n_layers, n_boot, seed, ci)
                                 for lens, r in part.groupby("lens", sort=False)}
    return out, layer_table(rows, n_layers, n_boot, seed, ci)
