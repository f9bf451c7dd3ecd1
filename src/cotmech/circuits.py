"""Knockout circuits (study.md E6/E7, §5, §9 weaknesses 2 and 10): mean ablation of attention heads through
nnsight, knockout curves, operating points and the overlap of the kept ("important") head sets.

Mean ablation. A removed head's output z_h (its slice of the o_proj input, ``hook_z``) is replaced at *every*
position by its mean over reference runs (false-ontology pairs of the same subtask). Position handling, per prompt
segment (``circuits.mean_alignment: segment``, :func:`alignment_prefix`): over the few-shot prefix that every clean
input of the dataset shares (its longest common token prefix, the same for every subtask and sample), positions
are aligned **from the start** (the mean at p averages the references' p-th tokens): those exemplar tokens sit at
the same absolute positions in every prompt, whatever the question's length. After it (the test question and the
CoT so far) they are aligned **from the end** (position j = j-th token before the predicting position), which is
what left padding does, so the mean at j averages the references that are longer than j. Where no reference
reaches a position the head's overall mean over all reference tokens is used. ``end`` aligns every position from
the end (the earlier alignment). The original averaged per padded position over 40–50 BOS-padded references (pads
included, i.e. end-aligned); here pads are masked out of the mean and the reference set is the subtask's
false-ontology pairs.

Cached evaluation. With start-aligned means the ablated prefix is the same input with the same replacement for
every clean example, so its keys/values are computed once per removed head set (:func:`ablated_prefix_cache`) and
each example runs only its suffix over them (:func:`cached_ablated_logits`; equal to the full-sequence forward up to
float rounding, ``method="full"`` keeps the latter). ``end`` alignment runs every whole sequence.

Accuracy. Share of evaluation examples whose ablated argmax next token equals the *unablated* argmax at the
predicting position (§5), with a Wilson 95% interval over examples.

Operating-point search (``circuits.search``). ``exhaustive`` evaluates every step of every curve. ``bisection``
(:func:`search_curve`, :func:`bisect_operating_point`) bisects over the steps on "accuracy ≥ threshold", each
decision running examples batch by batch only until they fix it (:class:`LazyPredictions`, exact), evaluates in
full the steps around the crossing it finds, and returns the nearest of them: the exhaustive operating point
whenever accuracy does not rise along the steps, otherwise one crossing (docs/DEVIATIONS.md). Its curves mark the
measured steps (``evaluated``).

Rankings and procedures (E6). Any head-score table (higher = more important) orders the heads. As the authors'
scripts: decision/copy-type rankings remove the n lowest scores for every n of a grid (:func:`sorted_plan`); the
induction ranking removes the heads inside a widening window around the modal Freedman–Diaconis bin of its scores
(:func:`fd_windows`, :func:`window_plan`), keeping both tails.

Held out. The examples are split once for the whole dataset (:func:`split_examples`), so an example ranks heads
for every subtask or evaluates them for every subtask. Every ranking is computed on the ranking split and its
curve measured on the evaluation split (scope ``rank_split``): the built-in direct mean-ablation effect, the E4
answer-writer and E5 copy scores (:mod:`cotmech.roles`, ``builtin:writers`` / ``builtin:copy``), raw per-pair
patching shards and per-example tables; a table computed on other data (the induction cloze) is ``other_data``.
The in-sample curve (ranked on the evaluation split itself, as the original did) is a second line, ``eval_split``.

E7. :func:`isolation` keeps only categories of several head types' circuits (``isolatedHeadsAccuracy.py``),
:func:`cross_removal` removes another type's heads from a circuit (``removeCopyHeads.py``), :func:`cross_subtask`
keeps or removes one subtask's circuit on another subtask, and the union / intersection of all
(``combinedHeadsAccuracy.py``). Each row has a Wilson interval over the evaluation examples.

The circuit of subtask k (the operating point of the ``primary`` ranking at its held-out scope): the rows of
heads.parquet with ``subtask == k``, ``primary`` and ``kept`` (:func:`primary_circuits`).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .ablation import (ALIGNMENTS, HELDOUT_PREFERENCE, METHODS, Head, HeadMeans, alignment_prefix, circuit_sets,
                       head_means, sample_pairs)
from .batching import Batch, chunks, common_prefix_len, left_pad
from .stats import wilson
from .tracing import (PREFIX_ATTENTION_MODES, Edit, PrefixCache,
                      by_length, prefix_cache, run_trace, suffix_last_logits)
#: Subtask families with one knockout figure each (a ``label`` subtask, if present, is only in the tables).
FAMILIES = ("decision", "copy", "induction")


# --------------------------------------------------------------------------------------------------
# Ablated forward
# --------------------------------------------------------------------------------------------------
def _by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return out


def ablated_last_logits(model, batch: Batch, means: HeadMeans, removed: Iterable[Head]) -> torch.Tensor:
    """Logits at the predicting position with the ``removed`` heads mean-ablated at every position: [batch, vocab].

    One nnsight forward through the shared head patcher (:func:`cotmech.tracing.run_trace`).
    """
    rows, width = batch.input_ids.shape
    edits = []
    for layer, heads in sorted(_by_layer(removed).items()):
        mask = torch.zeros(rows, model.n_heads, dtype=torch.bool)
        mask[:, heads] = True
        if means.prefix_len:
            lengths = batch.attention_mask.sum(1).tolist()
            value = means.left_padded(layer, lengths, width).reshape(rows, width, model.n_heads, model.d_head)
        else:
            value = means.replacement(layer, width).reshape(1, width, model.n_heads, model.d_head)
        edits.append(Edit("z", layer, mask, value))
    out = run_trace(model, batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    edits=edits)
    return out.logits.float().cpu()


def cacheable_prefix(seqs: Sequence[Sequence[int]], means: HeadMeans) -> int:
    """Prefix length whose mean-ablated keys/values are the same for every sequence of ``seqs`` (so computed
    once per removed set): shared tokens whose means are start-aligned, leaving at least one token per sequence."""
    if not seqs or means.prefix_len == 0:
        return 0
    return max(0, min(common_prefix_len(seqs), means.prefix_len, min(len(s) for s in seqs) - 1))


@contextlib.contextmanager
def _z_hooks(model, removed: Iterable[Head], value_of) -> Iterator[None]:
    """Forward pre-hooks on every o_proj that set the ``removed`` heads' z to ``value_of(layer)``
    [rows | 1, pos, n_heads*d_head] (the same replacement as the nnsight edit of :func:`ablated_last_logits`)."""
    handles = []
    dh = model.d_head
    try:
        for layer, heads in sorted(_by_layer(removed).items()):
            cols = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in sorted(heads)]).to(model.device)
            val = value_of(layer)[..., cols.cpu()].to(model.device, model.dtype)

            def pre(mod, args, cols=cols, val=val):
                x = args[0].clone()
                x[..., cols] = val.expand(x.shape[0], -1, -1)
                return (x,) + tuple(args[1:])
            handles.append(model.hf_o_proj(layer).register_forward_pre_hook(pre))
        yield
    finally:
        for h in handles:
            h.remove()


def ablated_prefix_cache(model, prefix: Sequence[int], means: HeadMeans, removed: Sequence[Head]) -> PrefixCache:
    """Keys/values of ``prefix`` (start-aligned means: the same for every sequence that begins with it) with the
    ``removed`` heads mean-ablated at every prefix position."""
    P = len(prefix)
    if P > means.prefix_len:
        raise ValueError(f"ablated_prefix_cache: prefix of {P} tokens is longer than the start-aligned segment "
                         f"({means.prefix_len})")
    pos, n = torch.arange(P)[None], torch.tensor([P])
    with _z_hooks(model, removed, lambda layer: means.values_at(layer, pos, n)):
        return prefix_cache(model, torch.as_tensor(list(prefix), dtype=torch.long))


def cached_ablated_logits(model, seqs: Sequence[Sequence[int]], means: HeadMeans, removed: Sequence[Head],
                          batch_size: int = 8, prefix_attention: str = "shared") -> torch.Tensor:
    """Logits at the predicting position of every sequence with ``removed`` mean-ablated: [n, vocab] (input order).

    The shared prefix (:func:`cacheable_prefix`) is run once (:func:`ablated_prefix_cache`); each sequence's
    suffix is then run over it, right-padded in batches of similar length (pads come after every real token, so
    causal attention never sees them), the suffix's means end-aligned per row as in the full forward. Equals
    :func:`ablated_last_logits` on the whole sequences up to float rounding. ``prefix_attention`` as in
    :func:`cotmech.tracing.run_trace` (``"shared"``: the prefix attended by all rows at once)."""
    if prefix_attention not in PREFIX_ATTENTION_MODES:
        raise ValueError(f"prefix_attention {prefix_attention!r}: use one of {', '.join(PREFIX_ATTENTION_MODES)}")
    P = cacheable_prefix(seqs, means)
    if P == 0:
        raise ValueError("cached_ablated_logits: no shared start-aligned prefix (means.prefix_len = 0 or none shared)")
    cache = ablated_prefix_cache(model, seqs[0][:P], means, removed)
    return by_length(seqs, batch_size,
                     lambda idx: _suffix_logits(model, seqs, idx, P, cache, means, removed, prefix_attention))


def _suffix_logits(model, seqs: Sequence[Sequence[int]], idx: Sequence[int], P: int, cache: PrefixCache,
                   means: HeadMeans, removed: Sequence[Head], prefix_attention: str = "shared") -> torch.Tensor:
    """One batch of :func:`cached_ablated_logits`: the suffixes of ``seqs[i]`` for i in ``idx`` over the ablated
    prefix ``cache`` of P tokens, the suffix's means end-aligned per row; logits at each predicting position
    [len(idx), vocab]."""
    return suffix_last_logits(
        model, [list(seqs[i][P:]) for i in idx], cache, prefix_attention=prefix_attention,
        hooks=lambda pos, n: _z_hooks(model, removed, lambda layer: means.values_at(layer, pos, n)))


def ablated_argmax(model, seqs: Sequence[Sequence[int]], means: HeadMeans, removed: Sequence[Head],
                   batch_size: int = 8, method: str = "auto") -> torch.Tensor:
    """Argmax next token of every sequence with ``removed`` heads mean-ablated: [n] (input order).

    ``method``: ``full`` runs every whole sequence (:func:`ablated_last_logits`, left-padded batches);
    ``cached`` / ``auto`` run the shared start-aligned prefix once (:func:`cached_ablated_logits`) where there is
    one, else ``full``."""
    if method not in METHODS:
        raise ValueError(f"ablated_argmax: method must be one of {METHODS}, got {method!r}")
    return LazyPredictions(model, seqs, means, removed, batch_size, method).all()


# --------------------------------------------------------------------------------------------------
# Rankings
# --------------------------------------------------------------------------------------------------
def removal_order(scores: pd.DataFrame, n_layers: int, n_heads: int) -> list[Head]:
    """Heads from least to most important (ascending ``score``; ties by (layer, head)).

    Heads missing from the table (e.g. a layer subset) count as least important and come first.
    """
    for col in ("layer", "head", "score"):
        if col not in scores.columns:
            raise ValueError(f"head-score table lacks column {col!r} (has {list(scores.columns)})")
    s = scores.groupby(["layer", "head"], as_index=False)["score"].mean()
    bad = s[(s["layer"] < 0) | (s["layer"] >= n_layers) | (s["head"] < 0) | (s["head"] >= n_heads)]
    if len(bad):
        raise ValueError(f"head-score table has heads outside {n_layers}×{n_heads}: {bad[['layer', 'head']].values[:3]}")
    full = pd.DataFrame([(l, h) for l in range(n_layers) for h in range(n_heads)], columns=["layer", "head"])
    full = full.merge(s, on=["layer", "head"], how="left")
    full["score"] = full["score"].astype(float).fillna(-np.inf)
    full = full.sort_values(["score", "layer", "head"], kind="mergesort")
    return [(int(l), int(h)) for l, h in zip(full["layer"], full["head"])]


def head_score_matrix(scores: pd.DataFrame, n_layers: int, n_heads: int) -> np.ndarray:
    """[n_layers, n_heads] mean score per head of a head-score table; NaN for heads missing from it."""
    removal_order(scores.iloc[:0], n_layers, n_heads)  # column check
    s = scores.groupby(["layer", "head"])["score"].mean()
    m = np.full((n_layers, n_heads), np.nan)
    for (layer, head), v in s.items():
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"head-score table has heads outside {n_layers}×{n_heads}: ({layer}, {head})")
        m[int(layer), int(head)] = v
    return m


def fd_edges(scores: np.ndarray) -> np.ndarray:
    """The authors' histogram edges (E6): Freedman–Diaconis width w = 2·IQR / n^(1/3) over the finite scores,
    ``int(range / w)`` equal-width bins over [min, max] (at least one).

    numpy's ``bins='fd'`` uses the same width but rounds the bin count *up*: it has one bin more whenever
    range / w is not a whole number. The authors' scripts truncate (``int``), which this follows.
    """
    x = np.asarray(scores, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("fd_edges: no finite scores")
    q75, q25 = np.percentile(x, [75, 25])
    width = 2.0 * (q75 - q25) / x.size ** (1 / 3)
    n_bins = int((x.max() - x.min()) / width) if width > 0 else 1
    return np.histogram_bin_edges(x, bins=max(1, n_bins))


def fd_windows(scores: np.ndarray, widths: int) -> list[tuple[float, float]]:
    """The authors' removal windows around the modal Freedman–Diaconis bin (E6, induction scores).

    With edges e (:func:`fd_edges`), B bins and m the modal bin (``np.argmax`` of the counts: the first on ties),
    window i = 0 … widths−1 is [e[max(m−i, 0)], e[min(m+i, B−1)]]; heads whose score lies in it (both ends
    included) are removed, the others are the circuit. As in ``IndividualHeadAccuracy_histogram_reason.py`` the
    right end is the *left* edge of bin m+i (window i spans bins m−i … m+i−1; window 0 is the single point e[m])
    and is clamped at the left edge of the last bin, so heads in the top bin are never removed.
    """
    if widths < 1:
        raise ValueError(f"fd_windows: widths must be >= 1, got {widths}")
    edges = fd_edges(scores)
    x = np.asarray(scores, dtype=float).ravel()
    hist, _ = np.histogram(x[np.isfinite(x)], edges)
    m, n_bins = int(np.argmax(hist)), len(hist)
    return [(float(edges[max(m - i, 0)]), float(edges[min(m + i, n_bins - 1)])) for i in range(widths)]


PROCEDURES = ("sorted", "fd_window")


@dataclass
class Plan:
    """The removed-head sets of one ranking, step by step (nested), and every head's removal order."""

    procedure: str  # "sorted" (remove the n least important) or "fd_window" (remove the heads in a window)
    sets: list[list[Head]]  # removed heads per step
    order: list[Head]  # every head: earlier-removed first (ties: ascending score, layer, head)
    step_of: dict[Head, int]  # first step that removes the head (absent: never removed)
    windows: list[tuple[float, float]] | None = None  # score window per step (fd_window only)


def sorted_plan(scores: pd.DataFrame, n_layers: int, n_heads: int, steps: Sequence[int]) -> Plan:
    """Decision/copy procedure (E6): remove the n lowest-scoring heads for every n in ``steps``."""
    order = removal_order(scores, n_layers, n_heads)
    sets = [order[:int(n)] for n in steps]
    step_of: dict[Head, int] = {}
    for i, removed in enumerate(sets):
        for h in removed:
            step_of.setdefault(h, i)
    return Plan("sorted", sets, order, step_of)


def window_plan(scores: pd.DataFrame, n_layers: int, n_heads: int, widths: int) -> Plan:
    """Induction procedure (E6): remove the heads inside each :func:`fd_windows` window (heads missing from the
    table count as least important and are removed at every step). Windows that remove the same heads as the
    previous one (clamped at both ends) are dropped."""
    m = head_score_matrix(scores, n_layers, n_heads)
    heads = [(l, h) for l in range(n_layers) for h in range(n_heads)]
    sets, wins = [], []
    for lo, hi in fd_windows(m, widths):
        removed = [(l, h) for l, h in heads if not np.isfinite(m[l, h]) or lo <= m[l, h] <= hi]
        if not sets or removed != sets[-1]:
            sets.append(removed)
            wins.append((lo, hi))
    step_of: dict[Head, int] = {}
    for i, removed in enumerate(sets):
        for h in removed:
            step_of.setdefault(h, i)
    big = len(sets)
    order = sorted(heads, key=lambda lh: (step_of.get(lh, big), np.nan_to_num(m[lh], nan=-np.inf), lh))
    return Plan("fd_window", sets, order, step_of, wins)


def direct_scores(model, seqs: Sequence[Sequence[int]], means: HeadMeans, batch_size: int = 8) -> torch.Tensor:
    """Direct mean-ablation effect of every head on the unablated top logit, per example: [n, n_layers, n_heads].

    score = ∇_x logit_t(unembed(norm(x))) · ((z_h − mean_h) W_O,h) at the predicting position, with x the final
    residual (before the final norm) and t the unablated argmax; i.e. the first-order drop of the top logit through
    the head's direct path when the head is mean-ablated. Higher = more important.
    """
    L, H, dh = model.n_layers, model.n_heads, model.d_head
    w_o = torch.stack([model.w_o(l).detach().float().cpu() for l in range(L)])  # [L, H, d_head, d_model]
    mean_last = torch.stack([means.replacement(l, 1)[0] for l in range(L)]).reshape(L, H, dh)
    out = torch.empty(len(seqs), L, H)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    norm, unembed = model.hf_final_norm(), model.hf_unembed()
    for idx in chunks(order, batch_size):
        batch = left_pad([seqs[i] for i in idx], model.tokenizer.pad_token_id)
        run = run_trace(model, batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                        save=[("z", layer) for layer in range(L)] + [("resid", L - 1)])
        z = torch.stack([run.saved[("z", layer)][:, -1].float().cpu() for layer in range(L)], 1)  # [b, L, H, dh]
        x_s = run.saved[("resid", L - 1)][:, -1]  # final residual, before the final norm: [b, d_model]
        x = x_s.detach().to(model.dtype).clone().requires_grad_(True)
        with torch.enable_grad():
            logits = unembed(norm(x)).float()
            t = logits.argmax(-1)
            logits.gather(1, t[:, None]).sum().backward()
        g = x.grad.detach().float().cpu()  # [b, d_model]
        delta = torch.einsum("blhd,lhdm->blhm", z - mean_last[None], w_o)  # [b, L, H, d_model]
        out[list(idx)] = torch.einsum("blhm,bm->blh", delta, g)
    return out


def scores_frame(per_example: torch.Tensor, rows: Sequence[int]) -> pd.DataFrame:
    """Head-score table (layer, head, score) from per-example scores [n, L, H] averaged over ``rows``."""
    m = per_example[list(rows)].mean(0).numpy()
    L, H = m.shape
    return pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                         "score": m.reshape(-1)})


# --------------------------------------------------------------------------------------------------
# Curves, operating points, splits
# --------------------------------------------------------------------------------------------------
def step_grid(n_total: int, steps: int | Sequence[int]) -> list[int]:
    """Numbers of heads to remove: ``steps`` evenly spaced points over 0…n_total, or an explicit list."""
    if isinstance(steps, int):
        if steps < 2:
            raise ValueError(f"circuits.steps must be >= 2 grid points, got {steps}")
        grid = np.unique(np.round(np.linspace(0, n_total, steps)).astype(int))
    else:
        grid = np.unique(np.asarray(list(steps), dtype=int))
        if len(grid) == 0 or grid.min() < 0 or grid.max() > n_total:
            raise ValueError(f"circuits.steps {list(steps)} must lie in 0..{n_total}")
    return [int(g) for g in grid]


def _acc_row(pred: torch.Tensor, baseline: torch.Tensor) -> dict:
    """Agreement of ``pred`` with the unablated argmax: n, correct, acc and its Wilson 95% interval."""
    k, n = int((pred == baseline).sum()), len(baseline)
    lo, hi = wilson(k, n)
    return dict(n=n, correct=k, acc=k / n if n else float("nan"), ci_low=lo, ci_high=hi)


def predictions(model, seqs: Sequence[Sequence[int]], means: HeadMeans, removed: Sequence[Head],
                baseline: torch.Tensor, batch_size: int = 8, cache: dict | None = None,
                method: str = "auto") -> torch.Tensor:
    """Argmax of every sequence with ``removed`` mean-ablated [n]; the baseline when nothing is removed; runs
    shared through ``cache`` (removed-head set -> predictions) for one set of ``seqs``."""
    if not removed:
        return baseline
    key = frozenset(removed)
    if cache is not None and key in cache:
        return cache[key]
    pred = ablated_argmax(model, seqs, means, list(removed), batch_size, method)
    if cache is not None:
        cache[key] = pred
    return pred


def curve_for_sets(model, seqs: Sequence[Sequence[int]], means: HeadMeans, sets: Sequence[Sequence[Head]],
                   baseline: torch.Tensor, n_total: int, batch_size: int = 8, progress: bool = False,
                   cache: dict | None = None, method: str = "auto") -> pd.DataFrame:
    """Accuracy with each removed-head set of ``sets`` mean-ablated: rows n_removed, n_kept, n, correct, acc,
    ci_low, ci_high (Wilson 95% over sequences). ``baseline``: unablated argmax per sequence [n]; ``method`` as
    :func:`ablated_argmax`."""
    cache = {} if cache is None else cache
    rows = []
    for removed in tqdm(sets, desc="knockout", disable=not progress, leave=False):
        pred = predictions(model, seqs, means, removed, baseline, batch_size, cache, method)
        rows.append(dict(n_removed=len(removed), n_kept=n_total - len(removed), **_acc_row(pred, baseline)))
    return pd.DataFrame(rows, columns=["n_removed", "n_kept", "n", "correct", "acc", "ci_low", "ci_high"])


def knockout_curve(model, seqs: Sequence[Sequence[int]], means: HeadMeans, order: Sequence[Head],
                   steps: Sequence[int], baseline: torch.Tensor, batch_size: int = 8,
                   progress: bool = False, cache: dict | None = None, method: str = "auto") -> pd.DataFrame:
    """Accuracy after removing the first n heads of ``order`` for every n in ``steps`` (:func:`curve_for_sets`).

    ``cache``: predictions per removed-head set, shared by the curves of one set of ``seqs`` (e.g. removing all
    heads is the same run for every ranking).
    """
    return curve_for_sets(model, seqs, means, [list(order[:n]) for n in steps], baseline, len(order), batch_size,
                          progress, cache, method)


def operating_point(n_removed: Sequence[int], acc: Sequence[float], threshold: float = 0.9) -> int:
    """Index of the step whose accuracy is nearest ``threshold``; ties go to more removal (the paper's rule, E6)."""
    if len(n_removed) != len(acc) or not len(acc):
        raise ValueError("operating_point: n_removed and acc must be non-empty and of equal length")
    best = None
    for i, (n, a) in enumerate(zip(n_removed, acc)):
        key = (round(abs(float(a) - threshold), 12), -int(n))
        if best is None or key < best[0]:
            best = (key, i)
    return best[1]


SEARCHES = ("exhaustive", "bisection")


class LazyPredictions:
    """Ablated argmax of every sequence for one removed set (what :func:`ablated_argmax` returns), computed batch
    by batch on demand, so that a threshold decision can stop as soon as it is fixed (:meth:`decide`) and a later
    full evaluation (:meth:`all`) continues where it stopped."""

    def __init__(self, model, seqs: Sequence[Sequence[int]], means: HeadMeans, removed: Sequence[Head],
                 batch_size: int = 8, method: str = "auto"):
        if method not in METHODS:
            raise ValueError(f"LazyPredictions: method must be one of {METHODS}, got {method!r}")
        self.model, self.seqs, self.means, self.removed = model, seqs, means, list(removed)
        self.P = cacheable_prefix(seqs, means) if method != "full" else 0
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        self.batches = [list(idx) for idx in chunks(order, batch_size)]
        self.pred = torch.full((len(seqs),), -1, dtype=torch.long)  # -1: not run yet
        self.next = 0  # next batch to run
        self.n_run = 0  # sequences run so far
        self._cache: PrefixCache | None = None

    @property
    def complete(self) -> bool:
        return self.next == len(self.batches)

    def _step(self) -> None:
        idx = self.batches[self.next]
        if self.P > 0:
            if self._cache is None:
                self._cache = ablated_prefix_cache(self.model, self.seqs[0][:self.P], self.means, self.removed)
            logits = _suffix_logits(self.model, self.seqs, idx, self.P, self._cache, self.means, self.removed)
        else:
            batch = left_pad([self.seqs[i] for i in idx], self.model.tokenizer.pad_token_id)
            logits = ablated_last_logits(self.model, batch, self.means, self.removed)
        self.pred[idx] = logits.argmax(-1)
        self.next += 1
        self.n_run += len(idx)
        if self.complete:
            self._cache = None

    def all(self) -> torch.Tensor:
        """Every prediction [n] (equal to :func:`ablated_argmax` with the same arguments)."""
        while not self.complete:
            self._step()
        return self.pred

    def decide(self, baseline: torch.Tensor, k: int) -> bool:
        """Whether at least ``k`` predictions equal ``baseline``: runs batches only until the answer is fixed
        by the predictions seen so far (exact)."""
        while True:
            ran = self.pred >= 0
            correct = int((self.pred[ran] == baseline[ran]).sum())
            if correct >= k:
                return True
            if correct + int((~ran).sum()) < k:
                return False
            self._step()


def threshold_count(n: int, threshold: float) -> int:
    """Smallest number of agreeing examples k out of ``n`` with k / n >= ``threshold`` (the float comparison of
    the accuracy column); n + 1 if none."""
    return next((k for k in range(n + 1) if k / n >= threshold), n + 1)


def bisect_operating_point(n_removed: Sequence[int], n: int, decide, count, threshold: float = 0.9
                           ) -> tuple[int, dict[int, int]]:
    """Operating point of a curve over steps 0…S−1 (``n_removed`` increasing) by bisection, from threshold
    decisions ``decide(i, k)`` (at least k of the n examples agree at step i) and full counts ``count(i)``.

    1. Bisection on "acc ≥ threshold" finds a crossing: steps c−1 (passes) and c (fails; c = S if every probed
       step passes, c = 0 if step 0 fails). 2. Steps c−1 and c are counted in full. 3. If c is at least as near
       the threshold as c−1 (ties go to more removal), a second bisection on "correct ≥ correct(c)" finds the end
       e of c's plateau, counted in full. Returns (the :func:`operating_point` among the fully counted steps,
       {step: count} of those steps). When accuracy is non-increasing along the steps this is the exhaustive
       :func:`operating_point` of the whole curve (the nearest step is c−1, or the last step with c's accuracy);
       otherwise it is the nearest counted step around the crossing that the bisection found."""
    S = len(n_removed)
    if S == 0 or n < 1:
        raise ValueError("bisect_operating_point: need at least one step and one example")
    if any(a >= b for a, b in zip(n_removed, n_removed[1:])):
        raise ValueError("bisect_operating_point: n_removed must increase from step to step")
    counts: dict[int, int] = {}

    def op() -> int:
        ev = sorted(counts)
        return ev[operating_point([n_removed[i] for i in ev], [counts[i] / n for i in ev], threshold)]

    k_thr = threshold_count(n, threshold)
    lo, hi = -1, S
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if decide(mid, k_thr):
            lo = mid
        else:
            hi = mid
    for i in (lo, hi):
        if 0 <= i < S:
            counts[i] = count(i)
    if hi < S and op() == hi:
        a, b = hi, S  # decide(a, counts[hi]) holds; the last step with at least c's count
        while b - a > 1:
            mid = (a + b) // 2
            if decide(mid, counts[hi]):
                a = mid
            else:
                b = mid
        if a not in counts:
            counts[a] = count(a)
    return op(), counts


def search_curve(model, seqs: Sequence[Sequence[int]], means: HeadMeans, sets: Sequence[Sequence[Head]],
                 baseline: torch.Tensor, n_total: int, threshold: float = 0.9, batch_size: int = 8,
                 cache: dict | None = None, method: str = "auto") -> tuple[pd.DataFrame, int]:
    """The operating point of the removed-head ``sets`` (nested steps) by :func:`bisect_operating_point`, each
    threshold decision stopping as soon as it is fixed (:meth:`LazyPredictions.decide`). Returns (curve, index
    of the operating point): the curve has a row per step as :func:`curve_for_sets` plus ``evaluated`` (True:
    every example run, its accuracy is measured; False: correct, acc and the interval are NaN) and ``n_run``
    (sequences run for the step by this search; 0 where ``cache`` or the baseline had it). Fully evaluated sets
    go into ``cache``."""
    cache = {} if cache is None else cache
    n = len(seqs)
    lazy: dict[frozenset, LazyPredictions] = {}

    def unit(i):
        key = frozenset(sets[i])
        if not key or key in cache:
            return None
        if key not in lazy:
            lazy[key] = LazyPredictions(model, seqs, means, sets[i], batch_size, method)
        return lazy[key]

    def full(i) -> torch.Tensor:
        u = unit(i)
        if u is None:
            return baseline if not sets[i] else cache[frozenset(sets[i])]
        pred = u.all()
        cache[frozenset(sets[i])] = pred
        return pred

    def decide(i, k) -> bool:
        u = unit(i)
        if u is None:
            return int((full(i) == baseline).sum()) >= k
        return u.decide(baseline, k)

    count = lambda i: int((full(i) == baseline).sum())  # noqa: E731
    i_op, counts = bisect_operating_point([len(s) for s in sets], n, decide, count, threshold)
    rows = []
    for i, removed in enumerate(sets):
        r = dict(n_removed=len(removed), n_kept=n_total - len(removed))
        if i in counts:
            r.update(_acc_row(full(i), baseline), evaluated=True)
        else:
            r.update(n=n, correct=np.nan, acc=np.nan, ci_low=np.nan, ci_high=np.nan, evaluated=False)
        u = lazy.get(frozenset(removed))
        r["n_run"] = u.n_run if u is not None else 0
        rows.append(r)
    cols = ["n_removed", "n_kept", "n", "correct", "acc", "ci_low", "ci_high", "evaluated", "n_run"]
    return pd.DataFrame(rows, columns=cols), i_op


def split_examples(example_ids: Iterable[str], rank_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split unique example ids into (ranking split, evaluation split), seeded; both non-empty when ≥ 2 ids."""
    ids = sorted(set(example_ids))
    if not 0 < rank_fraction < 1:
        raise ValueError(f"circuits.rank_fraction must be in (0, 1), got {rank_fraction}")
    if len(ids) < 2:
        raise ValueError(f"need at least 2 examples to split into ranking and evaluation sets, got {len(ids)}")
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_rank = min(len(ids) - 1, max(1, int(round(rank_fraction * len(ids)))))
    rank = sorted(ids[i] for i in perm[:n_rank])
    ev = sorted(ids[i] for i in perm[n_rank:])
    return rank, ev


# --------------------------------------------------------------------------------------------------
# Overlap
# --------------------------------------------------------------------------------------------------
def overlap_table(circuits: dict[tuple, set[Head]], n_total: int) -> pd.DataFrame:
    """Pairwise overlap of kept-head sets keyed by (subtask, ranking): intersection, union, Jaccard, and the
    Jaccard expected for random sets of the same sizes (E[|A∩B|] = |A||B|/N)."""
    keys = sorted(circuits)
    rows = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            A, B = circuits[a], circuits[b]
            inter, union = len(A & B), len(A | B)
            e_inter = len(A) * len(B) / n_total
            e_union = len(A) + len(B) - e_inter
            rows.append(dict(subtask_a=a[0], ranking_a=a[1], subtask_b=b[0], ranking_b=b[1], n_a=len(A), n_b=len(B),
                             intersection=inter, union=union, jaccard=inter / union if union else float("nan"),
                             jaccard_random=e_inter / e_union if e_union else float("nan")))
    return pd.DataFrame(rows, columns=["subtask_a", "ranking_a", "subtask_b", "ranking_b", "n_a", "n_b",
                                       "intersection", "union", "jaccard", "jaccard_random"])


def reuse_summary(overlap: pd.DataFrame, groups: Sequence[Sequence[int]]) -> pd.DataFrame:
    """Per ranking and reported group (e.g. subtasks 1&3, 2&4&8, 5&9): mean Jaccard of subtask pairs inside the
    group vs all other subtask pairs of the same ranking, and the random-set expectation."""
    same = overlap[overlap.ranking_a == overlap.ranking_b]
    rows = []
    for ranking, df in same.groupby("ranking_a"):
        for g in groups:
            g = set(int(x) for x in g)
            inside = df.subtask_a.isin(g) & df.subtask_b.isin(g)
            if inside.sum() == 0:
                continue
            rows.append(dict(ranking=ranking, group="&".join(map(str, sorted(g))), n_pairs=int(inside.sum()),
                             jaccard_within=float(df[inside].jaccard.mean()),
                             jaccard_other=float(df[~inside].jaccard.mean()) if (~inside).any() else float("nan"),
                             jaccard_random=float(df[inside].jaccard_random.mean()),
                             reuse=bool(df[inside].jaccard.mean() > df[~inside].jaccard.mean())
                             if (~inside).any() else None))
    return pd.DataFrame(rows, columns=["ranking", "group", "n_pairs", "jaccard_within", "jaccard_other",
                                       "jaccard_random", "reuse"])


# --------------------------------------------------------------------------------------------------
# E7: isolation and cross-removal
# --------------------------------------------------------------------------------------------------
ISOLATION_CATEGORIES = ("main", "common", "only_main", "only_other", "other", "common_only_main")


def isolation_sets(main: set[Head], others: Sequence[set[Head]]) -> dict[str, set[Head]]:
    """The head sets ``isolatedHeadsAccuracy.py`` keeps (E7): main circuit, common to all, only in main, only in the
    others, the others' union, and common ∪ only-main."""
    union = set().union(*others) if others else set()
    common = set(main).intersection(*others) if others else set(main)
    return {"main": set(main), "common": common, "only_main": set(main) - union, "only_other": union - set(main),
            "other": union, "common_only_main": common | (set(main) - union)}


def kept_accuracy(model, seqs: Sequence[Sequence[int]], means: HeadMeans, kept: set[Head], baseline: torch.Tensor,
                  all_heads: Sequence[Head], batch_size: int = 8, cache: dict | None = None) -> dict:
    """Agreement with every head outside ``kept`` mean-ablated (isolation): n_kept, n_removed, n, correct, acc,
    ci_low, ci_high."""
    removed = [h for h in all_heads if h not in kept]
    pred = predictions(model, seqs, means, removed, baseline, batch_size, cache)
    return dict(n_kept=len(all_heads) - len(removed), n_removed=len(removed), **_acc_row(pred, baseline))


def isolation(model, seqs: Sequence[Sequence[int]], means: HeadMeans, baseline: torch.Tensor,
              circuits: dict[str, set[Head]], main: str, others: Sequence[str], all_heads: Sequence[Head],
              batch_size: int = 8, cache: dict | None = None) -> pd.DataFrame:
    """E7 isolation: accuracy keeping only each :func:`isolation_sets` category of the circuits (kept-head sets
    by ranking name) of ``main`` and ``others``; rows category, main, others, n_kept, n_removed, n, correct, acc,
    ci_low, ci_high."""
    cats = isolation_sets(circuits[main], [circuits[o] for o in others])
    rows = [dict(category=c, main=main, others="+".join(others),
                 **kept_accuracy(model, seqs, means, cats[c], baseline, all_heads, batch_size, cache))
            for c in ISOLATION_CATEGORIES]
    return pd.DataFrame(rows)


def cross_removal(model, seqs: Sequence[Sequence[int]], means: HeadMeans, baseline: torch.Tensor,
                  base_kept: set[Head], order: Sequence[Head], steps: Sequence[int], stop: float,
                  all_heads: Sequence[Head], batch_size: int = 8, cache: dict | None = None) -> pd.DataFrame:
    """E7 cross-removal (``removeCopyHeads.py``): from the ``base_kept`` circuit, also ablate the first i heads of
    ``order`` (another head type's ranking) for every i in ``steps``; stop after the first accuracy below
    ``stop``. Rows n_other, n_kept, n_removed, n, correct, acc, ci_low, ci_high."""
    rows = []
    for i in steps:
        drop = set(order[:int(i)])
        r = kept_accuracy(model, seqs, means, base_kept - drop, baseline, all_heads, batch_size, cache)
        rows.append(dict(n_other=int(i), **r))
        if r["acc"] < stop:
            break
    return pd.DataFrame(rows, columns=["n_other", "n_kept", "n_removed", "n", "correct", "acc", "ci_low", "ci_high"])


def cross_subtask(model, seqs: Sequence[Sequence[int]], means: HeadMeans, baseline: torch.Tensor,
                  circuits: dict[int, set[Head]], all_heads: Sequence[Head], batch_size: int = 8,
                  cache: dict | None = None) -> pd.DataFrame:
    """E7 across subtasks, evaluated on one subtask's sequences: per source subtask A, ``isolate`` (keep only A's
    circuit) and ``remove`` (ablate A's circuit, keep the rest); and, as ``combinedHeadsAccuracy.py``, keep only
    the ``union`` / ``intersection`` of all the circuits. Rows mode, source, n_kept, n_removed, n, correct, acc,
    ci_low, ci_high (source -1 = every circuit)."""
    rows = []
    for a in sorted(circuits):
        rows.append(dict(mode="isolate", source=int(a), **kept_accuracy(model, seqs, means, circuits[a], baseline,
                                                                        all_heads, batch_size, cache)))
        rest = set(all_heads) - circuits[a]
        rows.append(dict(mode="remove", source=int(a), **kept_accuracy(model, seqs, means, rest, baseline,
                                                                       all_heads, batch_size, cache)))
    if circuits:
        sets = list(circuits.values())
        for mode, kept in (("union", set().union(*sets)), ("intersection", set(sets[0]).intersection(*sets[1:]))):
            rows.append(dict(mode=mode, source=-1, **kept_accuracy(model, seqs, means, kept, baseline, all_heads,
                                                                   batch_size, cache)))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# The knockout study: every subtask × ranking
# --------------------------------------------------------------------------------------------------
BUILTIN = "builtin"  # config value of the direct mean-ablation ranking computed here
#: builtin ranking sources -> what is computed on the examples of each split (module docstring)
BUILTINS = {"builtin": "direct", "builtin:direct": "direct", "builtin:writers": "writers", "builtin:copy": "copy"}
#: scope -> held out. rank_split: ranked on the ranking split; other_data: a table computed on other data
#: (e.g. the induction cloze); eval_split: ranked on the evaluation split itself (in sample, as the paper);
#: all_pairs: a table over every pair of the dataset (the evaluation examples were part of it).
SCOPES = {"rank_split": True, "other_data": True, "eval_split": False, "all_pairs": False}


@dataclass
class Ranking:
    """One head ordering to knock out: its name, scope (:data:`SCOPES`), head scores and provenance."""

    name: str
    scope: str
    scores: pd.DataFrame  # layer, head, score (higher = more important)
    note: str
    n_rank_examples: int | None  # examples the scores were computed on (None: other data / unknown)

    @property
    def heldout(self) -> bool:
        return SCOPES[self.scope]


def load_ranking(path: str, subtask: int) -> tuple[pd.DataFrame, str]:
    """Head scores for one subtask from a head-score table (DESIGN.md contract) and a note on what was used.

    A ``subtask`` column is filtered to the subtask (falling back to the merged rows, subtask −1); a table without
    it (induction scores) ranks every subtask the same way.
    """
    from .io import read_table

    df = read_table(path)
    for col in ("layer", "head", "score"):
        if col not in df.columns:
            raise ValueError(f"{path}: head-score table lacks column {col!r} (has {list(df.columns)})")
    if "subtask" not in df.columns:
        return df, "table without subtask column: same ranking for every subtask"
    if (df["subtask"] == subtask).any():
        return df[df["subtask"] == subtask], f"subtask {subtask} rows"
    if (df["subtask"] == -1).any():
        return df[df["subtask"] == -1], f"no rows for subtask {subtask}: merged rows (subtask -1)"
    raise ValueError(f"{path}: no rows for subtask {subtask} and no merged rows (subtask -1)")


def _frame(m: np.ndarray) -> pd.DataFrame:
    """Head-score table from an [L, H] matrix."""
    L, H = m.shape
    return pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                         "score": np.asarray(m, dtype=float).reshape(-1)})


def patching_rankings(paths: Sequence[str], example_of: dict[str, str], splits: dict[str, set[str]],
                      n_layers: int, n_heads: int) -> list[tuple[str, pd.DataFrame, int]]:
    """Patching scores (raw per-pair shards of ``patch_heads.py --raw``) aggregated over the pairs of each split
    as the merged table does (normalised mean metric, :func:`cotmech.patch_results.aggregate`).

    ``example_of``: pair id -> example id; ``splits``: scope -> example ids. Returns (scope, table, n examples)
    for every split that has patched pairs."""
    from .patch_results import aggregate, load_raw

    res = load_raw(list(paths))
    unknown = [p for p in res.pair_ids if p not in example_of]
    if unknown:
        raise ValueError(f"{paths[0]}: patched pair {unknown[0]!r} is not in the clean pairs")
    if res.patched.shape[1:] != (n_layers, n_heads):
        raise ValueError(f"{paths[0]}: scores of {res.patched.shape[1:]} heads, model has {(n_layers, n_heads)}")
    ex = np.array([example_of[p] for p in res.pair_ids], dtype=object)
    out = []
    for scope, ids in splits.items():
        idx = np.flatnonzero([e in ids for e in ex])
        if len(idx):
            score = aggregate(res.patched[idx], res.base[idx], res.source[idx], n_boot=0)[0]
            out.append((scope, _frame(score), len(set(ex[idx]))))
    return out


def role_components(model, pairs: Sequence[dict], batch_size: int = 8) -> dict[str, dict[str, np.ndarray]]:
    """E4 answer-writer and E5 copy components (:mod:`cotmech.roles`) of every pair's clean input at its
    predicting position: {"writers": ..., "copy": ...}, rows in ``pairs`` order."""
    from .readout import extract
    from .unembed import make_unembed
    from .heads import WRITER_SCORE_PARTS, copy_components, writer_components

    for i, p in enumerate(pairs):
        for key in ("answer_id", "answer_pos"):
            if key not in p:
                raise ValueError(f"clean pairs: record {i} ({p['pair_id']}) lacks {key!r} (writers/copy rankings)")
    acts = extract(model, [p["clean_ids"] for p in pairs], groups=[p["example_id"] for p in pairs],
                   batch_size=batch_size, desc="role activations")
    lens = make_unembed(model, device=model.device)
    aid = torch.tensor([int(p["answer_id"]) for p in pairs])
    pos = np.array([None if p["answer_pos"] is None else int(p["answer_pos"]) for p in pairs], dtype=object)
    length = np.array([len(p["clean_ids"]) for p in pairs])
    return {"writers": writer_components(lens, model, acts["resid"], acts["attn_out"], acts["z"], aid,
                                         parts=WRITER_SCORE_PARTS),
            "copy": copy_components(lens, model, acts["z"], acts["attn"], length, pos, aid)}


def _check_pairs(pairs: list[dict], where: str) -> None:
    for i, p in enumerate(pairs):
        for key in ("pair_id", "example_id", "subtask", "kind", "clean_ids"):
            if key not in p:
                raise ValueError(f"{where}: record {i} ({p.get('pair_id', '?')}) lacks {key!r}")
        if not p["clean_ids"]:
            raise ValueError(f"{where}: record {i} ({p['pair_id']}) has empty clean_ids")


@dataclass
class SubtaskData:
    """The pairs of one subtask that the knockout uses: ranking split, evaluation split, references."""

    subtask: int
    kind: str
    rank: list[dict]
    eval: list[dict]
    reference: list[dict]
    n_available: int  # clean pairs of the subtask before sampling


def subtask_data(clean: list[dict], reference: list[dict], k: int, rank_ids: set[str], *, n_examples: int | None,
                 n_reference: int | None, rank_fraction: float, seed: int) -> SubtaskData:
    """Subtask k's pairs, split by the dataset-wide example split (``rank_ids``: the ranking examples; an example
    is on the same side for every subtask, so a circuit of one subtask is held out for every other subtask too).
    ``n_examples`` caps the pairs per subtask: round(rank_fraction · n) from the ranking side and the rest from the
    evaluation side (seeded by [seed, k]); fewer where fewer exist (the numbers used are reported)."""
    rng = np.random.default_rng([seed, k])
    ck = [p for p in clean if int(p["subtask"]) == k]
    rank = [p for p in ck if p["example_id"] in rank_ids]
    ev = [p for p in ck if p["example_id"] not in rank_ids]
    n_rank = n_eval = None
    if n_examples is not None:
        n_rank = min(max(1, int(round(rank_fraction * n_examples))), n_examples - 1)
        n_eval = n_examples - n_rank
    rk = sample_pairs([p for p in reference if int(p["subtask"]) == k], n_reference, rng)
    kind = ck[0]["kind"] if ck else ""
    return SubtaskData(k, kind, sample_pairs(rank, n_rank, rng), sample_pairs(ev, n_eval, rng), rk, len(ck))


def _rankings_for(model, d: SubtaskData, rankings: dict[str, str | list[str]], means: HeadMeans,
                  example_of: dict[str, str],
                  other_data: Sequence[str], batch_size: int, log) -> list[Ranking]:
    """Every ranking of subtask ``d`` on the ranking split (held out) and, where per-example scores exist, on the
    evaluation split (in sample)."""
    L, H = model.n_layers, model.n_heads
    pairs = d.rank + d.eval
    rank_rows, eval_rows = list(range(len(d.rank))), list(range(len(d.rank), len(pairs)))
    splits = {"rank_split": {p["example_id"] for p in d.rank}, "eval_split": {p["example_id"] for p in d.eval}}
    out: list[Ranking] = []
    roles = None
    for name, source in rankings.items():
        if isinstance(source, str) and source.startswith("builtin") and source not in BUILTINS:
            raise ValueError(f"ranking {name!r}: unknown built-in {source!r} (known: {', '.join(BUILTINS)})")
        if isinstance(source, str) and source in BUILTINS:
            what = BUILTINS[source]
            if what == "direct":
                per = direct_scores(model, [p["clean_ids"] for p in pairs], means, batch_size)
                for scope, rows in (("rank_split", rank_rows), ("eval_split", eval_rows)):
                    out.append(Ranking(name, scope, scores_frame(per, rows), "direct mean-ablation effect",
                                       len(rows)))
                continue
            from .heads import SCORERS

            roles = roles or role_components(model, pairs, batch_size)
            scorer = SCORERS[what][0]
            label = {"writers": "E4 answer-writer score", "copy": "E5 copy score"}[what]
            for scope, rows in (("rank_split", rank_rows), ("eval_split", eval_rows)):
                m = scorer(roles[what], np.asarray(rows))
                out.append(Ranking(name, scope, _frame(m), f"{label} (cotmech.roles) on the {scope}", len(rows)))
            continue
        paths = [p.format(subtask=d.subtask) for p in ([source] if isinstance(source, str) else source)]
        if paths[0].endswith(".safetensors"):
            got = patching_rankings(paths, example_of, splits, L, H)
            for scope, table, n in got:
                out.append(Ranking(name, scope, table, f"per-pair patching scores of the {scope}", n))
            if not any(s == "rank_split" for s, _, _ in got):
                log(f"  {name}: no patched pair on the ranking split of subtask {d.subtask}: no held-out curve")
            continue
        table, note = load_ranking(paths[0], d.subtask)
        if "example_id" in table.columns:  # per-example scores: re-rank on each split
            for scope, ids in splits.items():
                sub = table[table["example_id"].isin(ids)]
                if sub.empty:
                    log(f"  {name}: no per-example scores for the {scope} of subtask {d.subtask}")
                    continue
                out.append(Ranking(name, scope, sub, note, int(sub["example_id"].nunique())))
        elif name in other_data:
            out.append(Ranking(name, "other_data", table, note + "; computed on other data (held out)", None))
        else:
            out.append(Ranking(name, "all_pairs", table, note + "; scores over all pairs, not held out", None))
    return out


def run_knockout(model, clean: list[dict], reference: list[dict], rankings: dict[str, str | list[str]], *,
                 subtasks: Sequence[int] | None = None, steps: int | Sequence[int] = 9, threshold: float = 0.9,
                 rank_fraction: float = 0.5, seed: int = 0, n_examples: int | None = None,
                 n_reference: int | None = None, batch_size: int = 8, window_rankings: Sequence[str] = (),
                 window_widths: int = 10, other_data: Sequence[str] = (), primary: str | None = None,
                 isolation_spec: dict | None = None, cross_spec: dict | None = None,
                 mean_alignment: str = "segment", search: str = "exhaustive", progress: bool = True,
                 log=print) -> dict[str, pd.DataFrame]:
    """Knockout curves for every subtask and ranking (E6) and the within-subtask E7 experiments.

    ``rankings``: name -> a :data:`BUILTINS` key, or a table path with an optional ``{subtask}`` placeholder, or a
    list of such ``.safetensors`` paths (raw per-pair patching shards). Rankings named in
    ``window_rankings`` use the FD-window procedure (:func:`window_plan`, ``window_widths`` windows), the others
    remove the lowest scores first at the ``steps`` grid (:func:`sorted_plan`). Examples are split once for the
    whole dataset (:func:`split_examples`, ``seed``); every curve is measured on the evaluation split; ``scope``
    (:data:`SCOPES`) says what its ranking was computed on. ``primary``: the ranking whose held-out circuit is
    the subtask's circuit (column ``primary``; default the first ranking). ``isolation_spec`` {main, others} and
    ``cross_spec`` {base, others, steps, stop} run :func:`isolation` and :func:`cross_removal` on the held-out
    circuits. ``mean_alignment`` (:data:`ALIGNMENTS`, :func:`alignment_prefix`): the reference means' alignment.
    ``search`` (:data:`SEARCHES`): ``exhaustive`` evaluates every step of every curve; ``bisection`` finds each
    operating point by :func:`search_curve` and evaluates only the steps it needs (column ``evaluated``).
    Returns tables ``curves``, ``operating_points``, ``heads``, ``isolation``, ``cross_removal``.
    Subtasks are independent given the split, so the workflow runs one job per subtask (:func:`merge_knockout`).
    """
    _check_pairs(clean, "clean pairs")
    _check_pairs(reference, "reference pairs")
    if search not in SEARCHES:
        raise ValueError(f"circuits.search must be one of {SEARCHES}, got {search!r}")
    have = sorted({int(p["subtask"]) for p in clean})
    subtasks = have if subtasks is None else [int(k) for k in subtasks]
    n_total = model.n_total_heads
    L, H = model.n_layers, model.n_heads
    all_heads = [(l, h) for l in range(L) for h in range(H)]
    grid = step_grid(n_total, steps)
    rank_ids = set(split_examples([p["example_id"] for p in clean], rank_fraction, seed)[0])
    example_of = {p["pair_id"]: p["example_id"] for p in clean}
    primary = primary if primary in rankings else next(iter(rankings), None)
    prefix_len = alignment_prefix(clean, mean_alignment)
    curves, ops, heads, iso, cross = [], [], [], [], []
    for k in subtasks:
        d = subtask_data(clean, reference, k, rank_ids, n_examples=n_examples, n_reference=n_reference,
                         rank_fraction=rank_fraction, seed=seed)
        if not d.rank or not d.eval or not d.reference:
            log(f"subtask {k}: skipped ({len(d.rank)} ranking / {len(d.eval)} evaluation clean pairs, "
                f"{len(d.reference)} reference pairs)")
            continue
        asked = "all" if n_examples is None else n_examples
        log(f"subtask {k} ({d.kind}): n_examples {asked}, {d.n_available} clean pairs exist; using "
            f"{len(d.rank)} ranking / {len(d.eval)} evaluation examples, {len(d.reference)} reference pairs")
        clock = time.perf_counter()

        def lap() -> float:  # seconds since the previous lap (the log's per-phase times)
            nonlocal clock
            now = time.perf_counter()
            took, clock = now - clock, now
            return took

        means = head_means(model, [p["clean_ids"] for p in d.reference], batch_size, progress, prefix_len)
        eval_seqs = [p["clean_ids"] for p in d.eval]
        baseline = ablated_argmax(model, eval_seqs, means, [], batch_size)
        log(f"  reference means and unablated baseline: {lap():.1f} s")
        seen: dict = {}  # removed-head set -> predictions on eval_seqs, shared by this subtask's curves
        circuits: dict[str, dict[str, set[Head]]] = {}  # ranking -> scope -> kept heads at the operating point
        plans: dict[tuple[str, str], Plan] = {}
        ranked = _rankings_for(model, d, rankings, means, example_of, other_data, batch_size, log)
        log(f"  rankings ({', '.join(sorted({r.name for r in ranked}))}): {lap():.1f} s")
        for r in ranked:
            plan = (window_plan(r.scores, L, H, window_widths) if r.name in window_rankings
                    else sorted_plan(r.scores, L, H, grid))
            plans[(r.name, r.scope)] = plan
            if search == "bisection":
                c, i = search_curve(model, eval_seqs, means, plan.sets, baseline, n_total, threshold, batch_size,
                                    seen)
            else:
                c = curve_for_sets(model, eval_seqs, means, plan.sets, baseline, n_total, batch_size, progress, seen)
                c["evaluated"] = True
                i = operating_point(c.n_removed.tolist(), c.acc.tolist(), threshold)
            c.insert(0, "step", range(len(c)))
            lo_hi = plan.windows or [(np.nan, np.nan)] * len(c)
            c["window_low"], c["window_high"] = [w[0] for w in lo_hi], [w[1] for w in lo_hi]
            for col, v in (("procedure", plan.procedure), ("heldout", r.heldout), ("scope", r.scope),
                           ("ranking", r.name), ("kind", d.kind), ("subtask", k)):
                c.insert(0, col, v)
            curves.append(c)
            op = c.iloc[i]
            ops.append(dict(subtask=k, kind=d.kind, ranking=r.name, scope=r.scope, heldout=r.heldout,
                            n_removed=int(op.n_removed), n_kept=int(op.n_kept), acc=float(op.acc),
                            ci_low=float(op.ci_low), ci_high=float(op.ci_high), n=int(op.n), threshold=threshold,
                            n_rank_examples=r.n_rank_examples, n_eval_examples=len(d.eval),
                            n_reference=len(d.reference), note=r.note, procedure=plan.procedure, step=i,
                            n_available=d.n_available, primary=False))
            removed = set(plan.sets[i])
            kept = {h for h in plan.order if h not in removed}
            circuits.setdefault(r.name, {})[r.scope] = kept
            score = head_score_matrix(r.scores, L, H)
            heads += [dict(subtask=k, ranking=r.name, scope=r.scope, layer=l, head=h, removal_rank=j,
                           kept=(l, h) in kept, removal_step=plan.step_of.get((l, h), -1), score=score[l, h],
                           primary=False) for j, (l, h) in enumerate(plan.order)]
            n_run = f", {int(c['n_run'].sum())} sequences run" if "n_run" in c else ""
            log(f"  {r.name}/{r.scope} ({plan.procedure}): operating point {int(op.n_removed)} removed, "
                f"acc {op.acc:.2f} (n {int(op.n)}); {int(c['evaluated'].sum())} of {len(c)} steps evaluated"
                f"{n_run}: {lap():.1f} s")
        held = {name: next(sc[s] for s in HELDOUT_PREFERENCE + ("eval_split",) if s in sc)
                for name, sc in circuits.items()}
        held_scope = {name: next(s for s in HELDOUT_PREFERENCE + ("eval_split",) if s in sc)
                      for name, sc in circuits.items()}
        if primary in held_scope:
            for row in ops[-len(plans):]:
                row["primary"] = row["ranking"] == primary and row["scope"] == held_scope[primary]
            for row in heads[-len(plans) * n_total:]:
                row["primary"] = row["ranking"] == primary and row["scope"] == held_scope[primary]
        if isolation_spec and isolation_spec.get("main") in held:
            main, others = isolation_spec["main"], [o for o in isolation_spec.get("others", []) if o in held]
            t = isolation(model, eval_seqs, means, baseline, held, main, others, all_heads, batch_size, seen)
            t.insert(0, "scope", "+".join(held_scope[x] for x in [main] + others))
            t.insert(0, "subtask", k)
            iso.append(t)
            log(f"  isolation ({len(t)} kept sets): {lap():.1f} s")
        if cross_spec and cross_spec.get("base") in held:
            base = cross_spec["base"]
            for other in [o for o in cross_spec.get("others", []) if o in held]:
                order = plans[(other, held_scope[other])].order
                for direction, o in (("ascending", order), ("descending", order[::-1])):
                    t = cross_removal(model, eval_seqs, means, baseline, held[base], o,
                                      [s for s in cross_spec.get("steps", []) if s <= n_total],
                                      float(cross_spec.get("stop", 0.5)), all_heads, batch_size, seen)
                    for col, v in (("direction", direction), ("other", other), ("base", base), ("subtask", k)):
                        t.insert(0, col, v)
                    cross.append(t)
                    log(f"  cross-removal of {other} ({direction}, {len(t)} steps): {lap():.1f} s")
    cat = lambda fr: pd.concat(fr, ignore_index=True) if fr else pd.DataFrame()  # noqa: E731
    return {"curves": cat(curves), "operating_points": pd.DataFrame(ops), "heads": pd.DataFrame(heads),
            "isolation": cat(iso), "cross_removal": cat(cross)}


KNOCKOUT_TABLES = ("curves", "operating_points", "heads", "isolation", "cross_removal")
KNOCKOUT_FILES = dict(zip(KNOCKOUT_TABLES, ("curves.parquet", "operating_points.csv", "heads.parquet",
                                            "isolation.csv", "cross_removal.csv")))


def merge_knockout(parts: Sequence[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Concatenate per-subtask :func:`run_knockout` results (empty parts = skipped subtasks), ordered by subtask."""
    out = {}
    for name in KNOCKOUT_TABLES:
        frames = [p[name] for p in parts if name in p and len(p[name])]
        t = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        out[name] = t.sort_values("subtask", kind="stable", ignore_index=True) if "subtask" in t else t
    return out


def primary_circuits(heads: pd.DataFrame) -> dict[int, set[Head]]:
    """The circuit of every subtask (kept heads of the ``primary`` rows of heads.parquet)."""
    if "primary" not in heads.columns:
        raise ValueError("heads table lacks column 'primary' (written by run_knockout)")
    p = heads[heads["primary"].astype(bool) & heads["kept"].astype(bool)]
    out: dict[int, set[Head]] = {int(k): set() for k in heads.loc[heads["primary"].astype(bool), "subtask"]}
    for k, l, h in zip(p["subtask"], p["layer"], p["head"]):
        out[int(k)].add((int(l), int(h)))
    return out


def run_cross_subtask(model, clean: list[dict], reference: list[dict], heads: pd.DataFrame, *,
                      subtasks: Sequence[int] | None = None, rank_fraction: float = 0.5, seed: int = 0,
                      n_examples: int | None = None, n_reference: int | None = None, batch_size: int = 8,
                      mean_alignment: str = "segment", progress: bool = True, log=print) -> pd.DataFrame:
    """:func:`cross_subtask` for every evaluated subtask B, with every subtask's primary circuit (heads.parquet of
    :func:`run_knockout`) and B's evaluation split and reference means exactly as in :func:`run_knockout` (same
    settings). Circuits are ranked on the ranking split, which holds the same examples for every subtask, so
    every row is held out. Columns subtask (B), mode, source (A), n_kept, …, ci_high."""
    _check_pairs(clean, "clean pairs")
    _check_pairs(reference, "reference pairs")
    circuits = primary_circuits(heads)
    subtasks = sorted(circuits) if subtasks is None else [int(k) for k in subtasks]
    rank_ids = set(split_examples([p["example_id"] for p in clean], rank_fraction, seed)[0])
    all_heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    prefix_len = alignment_prefix(clean, mean_alignment)
    out = []
    for k in subtasks:
        d = subtask_data(clean, reference, k, rank_ids, n_examples=n_examples, n_reference=n_reference,
                         rank_fraction=rank_fraction, seed=seed)
        if not d.eval or not d.reference:
            log(f"subtask {k}: skipped ({len(d.eval)} evaluation pairs, {len(d.reference)} reference pairs)")
            continue
        means = head_means(model, [p["clean_ids"] for p in d.reference], batch_size, progress, prefix_len)
        seqs = [p["clean_ids"] for p in d.eval]
        baseline = ablated_argmax(model, seqs, means, [], batch_size)
        t = cross_subtask(model, seqs, means, baseline, circuits, all_heads, batch_size, {})
        t.insert(0, "kind", d.kind)
        t.insert(0, "subtask", k)
        out.append(t)
        log(f"subtask {k}: {len(t)} rows on {len(seqs)} evaluation examples")
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
_STYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "x"]


def plot_curves(curves: pd.DataFrame, ops: pd.DataFrame, kind: str, n_total: int, stem) -> list:
    """F-knock for one subtask family: a panel per subtask, a line per ranking/scope with its CI band and
    operating point (star), colour = the family's colour."""
    from .plotting import KIND_COLOURS, figure, save_figure

    df = curves[curves["kind"] == kind]
    ks = sorted(df["subtask"].unique())
    fig, axes = figure(1, max(1, len(ks)), width=3.0, height=2.6, sharey=True)
    if not ks:
        axes[0][0].text(0.5, 0.5, f"no {kind} subtasks in the pairs", ha="center", va="center")
        axes[0][0].set_axis_off()
        return save_figure(fig, stem)
    colour = KIND_COLOURS.get(kind, "#333333")
    combos = list(dict.fromkeys(zip(df["ranking"], df["scope"])))
    for ax, k in zip(axes[0], ks):
        for i, (name, scope) in enumerate(combos):
            c = df[(df["subtask"] == k) & (df["ranking"] == name) & (df["scope"] == scope)]
            if "evaluated" in c:  # bisection: only the measured steps (NaN in older tables = measured)
                c = c[c["evaluated"].fillna(True).astype(bool)]
            if c.empty:
                continue
            ls = "--" if scope == "eval_split" else _STYLES[(i // len(_MARKERS)) % len(_STYLES)]
            ax.plot(c["n_removed"], c["acc"], ls, marker=_MARKERS[i % len(_MARKERS)], ms=3, color=colour,
                    alpha=0.55 if scope == "eval_split" else 1.0, label=f"{name} ({scope})")
            ax.fill_between(c["n_removed"], c["ci_low"], c["ci_high"], color=colour, alpha=0.08)
            o = ops[(ops["subtask"] == k) & (ops["ranking"] == name) & (ops["scope"] == scope)]
            ax.plot(o["n_removed"], o["acc"], "*", color="black", ms=7)
        thr = ops["threshold"].iloc[0] if len(ops) else 0.9
        ax.axhline(thr, color="grey", lw=0.6, ls=":")
        ax.set_xlim(0, n_total)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"subtask {k} ({kind})")
        ax.set_xlabel("heads removed")
    axes[0][0].set_ylabel("next-token agreement")
    axes[0][-1].legend(fontsize=6, loc="lower left")
    return save_figure(fig, stem)


def plot_overlap(overlap: pd.DataFrame, subtasks: Sequence[int], stem) -> list:
    """F-overlap: Jaccard of the kept-head sets across subtasks, one panel per ranking."""
    from .plotting import figure, heatmap, save_figure

    same = overlap[overlap["ranking_a"] == overlap["ranking_b"]]
    names = sorted(same["ranking_a"].unique()) or ["(none)"]
    ks = list(subtasks)
    fig, axes = figure(1, len(names), width=3.6, height=3.2)
    for ax, name in zip(axes[0], names):
        m = np.full((len(ks), len(ks)), np.nan)
        np.fill_diagonal(m, 1.0)
        for r in same[same["ranking_a"] == name].itertuples():
            if r.subtask_a in ks and r.subtask_b in ks:
                i, j = ks.index(r.subtask_a), ks.index(r.subtask_b)
                m[i, j] = m[j, i] = r.jaccard
        heatmap(ax, m, title=f"kept-head Jaccard: {name}", xlabel="subtask", ylabel="subtask",
                colorbar_label="Jaccard")
        ax.set_xticks(range(len(ks)), ks)
        ax.set_yticks(range(len(ks)), ks)
    return save_figure(fig, stem)


#: keys of config section ``circuits`` that are :func:`run_knockout` keyword arguments of the same name
KNOCKOUT_KEYS = ("subtasks", "steps", "threshold", "rank_fraction", "n_examples", "n_reference", "batch_size",
                 "window_rankings", "window_widths", "other_data", "primary", "mean_alignment", "search")
#: the keys of :func:`run_cross_subtask`
CROSS_SUBTASK_KEYS = ("subtasks", "rank_fraction", "n_examples", "n_reference", "batch_size", "mean_alignment")


def knockout_options(section, subtasks: Sequence[int] | None = None) -> dict:
    """Config section ``circuits`` (every default filled in: :func:`cotmech.config.section`) as the keyword
    arguments of :func:`run_knockout`; ``subtasks`` given replaces ``circuits.subtasks`` (one job per subtask)."""
    out = {k: section[k] for k in KNOCKOUT_KEYS}
    out["isolation_spec"], out["cross_spec"] = section["isolation"], section["cross_removal"]
    if subtasks is not None:
        out["subtasks"] = list(subtasks)
    return out


def run(model, clean: list[dict], reference: list[dict], cfg, seed: int, *,
        rankings: dict[str, str | list[str]] | None = None, circuits: pd.DataFrame | None = None,
        subtasks: Sequence[int] | None = None, log=None) -> dict[str, pd.DataFrame]:
    """Knockout circuits (study.md E6, E7) of the ``clean`` pairs with means over the ``reference`` pairs: the
    tables by file name (:data:`KNOCKOUT_FILES`).

    ``cfg`` the ``circuits`` config section (:func:`cotmech.config.section`); ``subtasks`` given replaces
    ``cfg["subtasks"]`` (the workflow's one job per subtask). With ``rankings`` (name -> source, as
    :func:`run_knockout` takes them): the knockout tables of :func:`run_knockout`. With ``circuits`` (heads.parquet
    of a merged knockout) instead: the cross-subtask table ``cross_subtask.csv`` (:func:`run_cross_subtask`).
    """
    log = log or (lambda msg: print(msg, flush=True))
    opts = knockout_options(cfg, subtasks)
    if circuits is not None:
        t = run_cross_subtask(model, clean, reference, circuits, seed=seed,
                              **{k: opts[k] for k in CROSS_SUBTASK_KEYS})
        log(t.to_string(index=False) if len(t) else "no subtask evaluated")
        return {"cross_subtask.csv": t}
    log(f"model {model.spec}: {model.n_layers}×{model.n_heads} heads; "
        f"{len(clean)} clean / {len(reference)} reference pairs; rankings {rankings}")
    out = run_knockout(model, clean, reference, rankings or {}, seed=seed, **opts)
    ops = out["operating_points"]
    log(ops.to_string(index=False) if len(ops) else "no subtask knocked out")
    return {file: out[name] for name, file in KNOCKOUT_FILES.items()}


def overlap(heads: pd.DataFrame, cfg, n_total: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Overlap of the kept-head sets (study.md E7) of a merged knockout's ``heads`` table: the pairwise table
    (:func:`overlap_table`), the reuse summary (:func:`reuse_summary` of ``cfg["reuse_groups"]``, ``cfg`` the
    ``circuits`` section) and the model's head count used (``n_total``, default read from ``heads``)."""
    n_total = n_total or int(heads.groupby(["subtask", "ranking", "scope"]).size().max())
    ov = overlap_table(circuit_sets(heads), n_total)
    return ov, reuse_summary(ov, cfg["reuse_groups"]), n_total


def knockout_rankings(circ, patching, fields: dict[str, str], producible,
                      subtasks: Sequence[int] | None = None) -> tuple[dict[str, str | list[str]], list[str]]:
    """:func:`ranking_sources` of config section ``circuits`` (``circ``: rankings, dataset, subtasks unless
    ``subtasks`` is given): '{method}' is ``patching.method``, '{shard}' every shard of ``patching.shards``.
    ``fields``: results, model, mres. What the workflow (common.smk ``circuit_rankings``) and bench_rules run."""
    return ranking_sources(circ["rankings"], circ["dataset"], circ["subtasks"] if subtasks is None else subtasks,
                           {**fields, "method": patching["method"]}, patching["shards"], producible)


def ranking_sources(rankings: dict[str, str | None], dataset: str, subtasks: Sequence[int], fields: dict[str, str],
                    shards: int, producible) -> tuple[dict[str, str | list[str]], list[str]]:
    """Knockout rankings of config ``circuits.rankings`` that can run: (name -> 'builtin…' or its files, skipped
    names). A table pattern is filled with ``fields`` (results, model, mres, method) and ``dataset``; '{shard}'
    expands to ``shards`` files, '{subtask}' stays a placeholder; the ranking is skipped unless
    ``producible(path)`` holds for every file of every subtask (the workflow: a rule writes it). A null pattern
    (an overlay dropping a ranking of the base config) is left out and not reported as skipped."""
    sources: dict[str, str | list[str]] = {}
    skipped: list[str] = []
    for name, pattern in rankings.items():
        if pattern is None:
            continue
        if pattern == "builtin" or pattern.startswith("builtin:"):
            sources[name] = pattern
            continue
        path = pattern.format(**fields, dataset=dataset, subtask="{subtask}", shard="{shard}")
        files = [path.replace("{shard}", str(i)) for i in range(int(shards))] if "{shard}" in path else [path]
        need = [f.format(subtask=k) for f in files for k in subtasks] if "{subtask}" in path else files
        if all(producible(p) for p in need):
            sources[name] = files
        else:
            skipped.append(name)
    return sources, skipped
