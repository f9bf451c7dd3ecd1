"""Knockout circuits (study.md E6/E7, §5, §9 weaknesses 2 and 10): mean ablation of attention heads through
nnsight, knockout curves, operating points and the overlap of the kept ("important") head sets.

Mean ablation. A removed head's output z_h (its slice of the o_proj input, ``hook_z``) is replaced at *every*
position by its mean over reference runs (false-ontology pairs of the same subtask). Position handling: sequences
are aligned **from the end** (position j = j-th token before the predicting position, j = 0 the last token), which
is what left padding does, so the mean at j averages the references that are longer than j; where no reference
reaches j (a clean input longer than every reference) the head's overall mean over all reference tokens is used.
The original averaged per padded position over 40–50 BOS-padded references (pads included); here pads are
masked out of the mean and the reference set is the whole false-ontology pair set of the subtask.

Accuracy. Share of evaluation examples whose ablated argmax next token equals the *unablated* argmax at the
predicting position (§5), with a Wilson 95% interval over examples.

Rankings. Any head-score table (higher = more important) orders the heads; the least important are removed first.
The built-in ranking ``direct`` (direct mean-ablation effect) is computed here per example, so it can be ranked on
one split and evaluated on the other (held out) or on the evaluation split itself (in sample, as the original did).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .batching import Batch, chunks, left_pad

Head = tuple[int, int]


# --------------------------------------------------------------------------------------------------
# Reference means
# --------------------------------------------------------------------------------------------------
@dataclass
class HeadMeans:
    """Mean head outputs over reference runs, aligned from the end of the sequence."""

    by_end: torch.Tensor  # [n_layers, P, n_heads*d_head] float32; [:, j] = mean at the j-th position from the end
    count: torch.Tensor  # [P] number of references that reach position j from the end
    overall: torch.Tensor  # [n_layers, n_heads*d_head] mean over every reference token (fallback)

    def replacement(self, layer: int, width: int) -> torch.Tensor:
        """Mean z for a left-padded batch of ``width`` columns: [width, n_heads*d_head] (same for every row)."""
        j = torch.arange(width - 1, -1, -1)  # column c is position width-1-c from the end
        jj = j.clamp(max=self.by_end.shape[1] - 1)
        use = (j < self.by_end.shape[1]) & (self.count[jj] > 0)
        return torch.where(use[:, None], self.by_end[layer, jj], self.overall[layer][None])


def _z_all_layers(model, batch: Batch) -> list[torch.Tensor]:
    """One nnsight forward saving every layer's o_proj input: n_layers × [batch, seq, n_heads*d_head]."""
    b = batch.to(model.device)
    saved = []
    with torch.no_grad(), model.lm.trace(**b.kwargs()):
        for layer in range(model.n_layers):
            saved.append(model.o_proj(layer).input.save())
    return [s.float().cpu() for s in saved]


def head_means(model, seqs: Sequence[Sequence[int]], batch_size: int = 8, progress: bool = False) -> HeadMeans:
    """Mean z of every head over the reference token sequences (pads excluded), end-aligned (module docstring)."""
    if not seqs:
        raise ValueError("head_means: the reference set is empty")
    width_max = max(len(s) for s in seqs)
    dim = model.n_heads * model.d_head
    sums = torch.zeros(model.n_layers, width_max, dim)
    count = torch.zeros(width_max)
    total = torch.zeros(model.n_layers, dim)
    n_tok = 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for idx in tqdm(list(chunks(order, batch_size)), desc="reference means", disable=not progress):
        batch = left_pad([seqs[i] for i in idx], model.tokenizer.pad_token_id)
        width = batch.input_ids.shape[1]
        mask_rev = batch.attention_mask.flip(1).float()  # [batch, width]; column j = position j from the end
        zs = _z_all_layers(model, batch)
        for layer, z in enumerate(zs):
            z_rev = z.flip(1) * mask_rev[..., None]
            sums[layer, :width] += z_rev.sum(0)
            total[layer] += z_rev.sum((0, 1))
        count[:width] += mask_rev.sum(0)
        n_tok += int(batch.attention_mask.sum())
    by_end = sums / count.clamp(min=1)[None, :, None]
    return HeadMeans(by_end=by_end, count=count, overall=total / n_tok)


# --------------------------------------------------------------------------------------------------
# Ablated forward
# --------------------------------------------------------------------------------------------------
def _by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return out


def ablated_last_logits(model, batch: Batch, means: HeadMeans, removed: Iterable[Head]) -> torch.Tensor:
    """Logits at the predicting position with the ``removed`` heads mean-ablated at every position: [batch, vocab]."""
    b = batch.to(model.device)
    width = b.input_ids.shape[1]
    plan = []
    for layer, heads in sorted(_by_layer(removed).items()):
        cols = torch.zeros(model.n_heads, model.d_head, dtype=torch.bool)
        cols[heads] = True
        rep = means.replacement(layer, width).to(model.device, model.dtype)
        plan.append((layer, cols.reshape(-1).to(model.device), rep))
    with torch.no_grad(), model.lm.trace(**b.kwargs()):
        for layer, cols, rep in plan:
            z = model.o_proj(layer).input
            model.o_proj(layer).input = torch.where(cols, rep, z)
        logits = model.unembed().output[:, -1].save()
    return logits.float().cpu()


def ablated_argmax(model, seqs: Sequence[Sequence[int]], means: HeadMeans, removed: Sequence[Head],
                   batch_size: int = 8) -> torch.Tensor:
    """Argmax next token of every sequence with ``removed`` heads mean-ablated: [n] (input order)."""
    out = torch.empty(len(seqs), dtype=torch.long)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for idx in chunks(order, batch_size):
        batch = left_pad([seqs[i] for i in idx], model.tokenizer.pad_token_id)
        out[list(idx)] = ablated_last_logits(model, batch, means, removed).argmax(-1)
    return out


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


def direct_scores(model, seqs: Sequence[Sequence[int]], means: HeadMeans, batch_size: int = 8) -> torch.Tensor:
    """Direct mean-ablation effect of every head on the unablated top logit, per example: [n, n_layers, n_heads].

    score = ∇_x logit_t(unembed(norm(x))) · ((z_h − mean_h) W_O,h) at the predicting position, with x the final
    residual (before the final norm) and t the unablated argmax; i.e. the first-order drop of the top logit through
    the head's direct path when the head is mean-ablated. Higher = more important.
    """
    L, H, dh = model.n_layers, model.n_heads, model.d_head
    w_o = torch.stack([model.w_o(l).float().cpu() for l in range(L)])  # [L, H, d_head, d_model]
    mean_last = torch.stack([means.replacement(l, 1)[0] for l in range(L)]).reshape(L, H, dh)
    out = torch.empty(len(seqs), L, H)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    norm, unembed = model.hf_final_norm(), model.hf_unembed()
    for idx in chunks(order, batch_size):
        batch = left_pad([seqs[i] for i in idx], model.tokenizer.pad_token_id).to(model.device)
        saved = []
        with torch.no_grad(), model.lm.trace(**batch.kwargs()):
            for layer in range(L):
                saved.append(model.o_proj(layer).input[:, -1].save())
            x_s = model.final_norm().input[:, -1].save()
        z = torch.stack([s.float().cpu() for s in saved], 1).reshape(len(idx), L, H, dh)
        x = x_s.detach().to(model.dtype).clone().requires_grad_(True)
        with torch.enable_grad():
            logits = unembed(norm(x)).float()
            t = logits.argmax(-1)
            logits.gather(1, t[:, None]).sum().backward()
        g = x.grad.float().cpu()  # [b, d_model]
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
def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (0.0 if k == 0 else max(0.0, c - h)), (1.0 if k == n else min(1.0, c + h))


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


def knockout_curve(model, seqs: Sequence[Sequence[int]], means: HeadMeans, order: Sequence[Head],
                   steps: Sequence[int], baseline: torch.Tensor, batch_size: int = 8,
                   progress: bool = False) -> pd.DataFrame:
    """Accuracy after removing the first n heads of ``order`` for every n in ``steps``.

    ``baseline``: unablated argmax per sequence [n]. Returns rows n_removed, n_kept, n, correct, acc, ci_low, ci_high.
    """
    rows = []
    for n_rm in tqdm(steps, desc="knockout", disable=not progress, leave=False):
        if n_rm == 0:
            pred = baseline
        else:
            pred = ablated_argmax(model, seqs, means, list(order[:n_rm]), batch_size)
        k = int((pred == baseline).sum())
        lo, hi = wilson(k, len(seqs))
        rows.append(dict(n_removed=int(n_rm), n_kept=len(order) - int(n_rm), n=len(seqs), correct=k,
                         acc=k / len(seqs), ci_low=lo, ci_high=hi))
    return pd.DataFrame(rows)


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
