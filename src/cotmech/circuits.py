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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .batching import Batch, chunks, left_pad
from .patching.core import Edit, run_trace
from .stats import wilson

Head = tuple[int, int]
#: Subtask families with one knockout figure each (a ``label`` subtask, if present, is only in the tables).
FAMILIES = ("decision", "copy", "induction")


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
    """One forward saving every layer's o_proj input: n_layers × [batch, seq, n_heads*d_head] (float32, CPU)."""
    out = run_trace(model, batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    save=[("z", layer) for layer in range(model.n_layers)])
    return [out.saved[("z", layer)].float().cpu().flatten(2) for layer in range(model.n_layers)]


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
    """Logits at the predicting position with the ``removed`` heads mean-ablated at every position: [batch, vocab].

    One nnsight forward through the shared head patcher (:func:`cotmech.patching.core.run_trace`).
    """
    rows, width = batch.input_ids.shape
    edits = []
    for layer, heads in sorted(_by_layer(removed).items()):
        mask = torch.zeros(rows, model.n_heads, dtype=torch.bool)
        mask[:, heads] = True
        value = means.replacement(layer, width).reshape(1, width, model.n_heads, model.d_head)
        edits.append(Edit("z", layer, mask, value))
    out = run_trace(model, batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    edits=edits)
    return out.logits.float().cpu()


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


def knockout_curve(model, seqs: Sequence[Sequence[int]], means: HeadMeans, order: Sequence[Head],
                   steps: Sequence[int], baseline: torch.Tensor, batch_size: int = 8,
                   progress: bool = False, cache: dict | None = None) -> pd.DataFrame:
    """Accuracy after removing the first n heads of ``order`` for every n in ``steps``.

    ``baseline``: unablated argmax per sequence [n]. ``cache``: predictions per removed-head set, shared by the
    curves of one set of ``seqs`` (e.g. removing all heads is the same run for every ranking).
    Returns rows n_removed, n_kept, n, correct, acc, ci_low, ci_high.
    """
    rows = []
    cache = {} if cache is None else cache
    for n_rm in tqdm(steps, desc="knockout", disable=not progress, leave=False):
        key = frozenset(order[:n_rm])
        if n_rm == 0:
            pred = baseline
        elif key in cache:
            pred = cache[key]
        else:
            pred = cache[key] = ablated_argmax(model, seqs, means, list(order[:n_rm]), batch_size)
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


# --------------------------------------------------------------------------------------------------
# The knockout study: every subtask × ranking
# --------------------------------------------------------------------------------------------------
BUILTIN = "builtin"  # config value of a ranking computed here (the direct mean-ablation effect)


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


def _take(pairs: list[dict], n: int | None, rng: np.random.Generator) -> list[dict]:
    pairs = sorted(pairs, key=lambda p: p["pair_id"])
    if n is not None and len(pairs) > n:
        keep = sorted(rng.choice(len(pairs), size=n, replace=False))
        pairs = [pairs[i] for i in keep]
    return pairs


def _check_pairs(pairs: list[dict], where: str) -> None:
    for i, p in enumerate(pairs):
        for key in ("pair_id", "example_id", "subtask", "kind", "clean_ids"):
            if key not in p:
                raise ValueError(f"{where}: record {i} ({p.get('pair_id', '?')}) lacks {key!r}")
        if not p["clean_ids"]:
            raise ValueError(f"{where}: record {i} ({p['pair_id']}) has empty clean_ids")


def run_knockout(model, clean: list[dict], reference: list[dict], rankings: dict[str, str], *,
                 subtasks: Sequence[int] | None = None, steps: int | Sequence[int] = 9, threshold: float = 0.9,
                 rank_fraction: float = 0.5, seed: int = 0, n_examples: int | None = None,
                 n_reference: int | None = None, batch_size: int = 8, progress: bool = True,
                 log=print) -> dict[str, pd.DataFrame]:
    """Knockout curves for every subtask and ranking (E6).

    ``rankings``: name -> :data:`BUILTIN` or a table path with an optional ``{subtask}`` placeholder.
    Subtasks are independent (each draws its samples from its own seed ``[seed, k]``), so the workflow runs one
    job per subtask and concatenates the tables (:func:`merge_knockout`).
    Curves are measured on the evaluation split; ``scope`` says what the ranking was computed on:
    ``rank_split`` (held out), ``eval_split`` (in sample) or ``all_pairs`` (an upstream table computed on every
    pair, so the evaluation examples were part of it: not held out). Returns tables ``curves``,
    ``operating_points`` and ``heads`` (removal order and kept flag of every head at each operating point).
    """
    _check_pairs(clean, "clean pairs")
    _check_pairs(reference, "reference pairs")
    have = sorted({int(p["subtask"]) for p in clean})
    subtasks = have if subtasks is None else [int(k) for k in subtasks]
    n_total = model.n_total_heads
    grid = step_grid(n_total, steps)
    curves, ops, heads = [], [], []
    for k in subtasks:
        rng = np.random.default_rng([seed, k])  # per subtask: a subtask's sample does not depend on the others
        ck = _take([p for p in clean if int(p["subtask"]) == k], n_examples, rng)
        rk = _take([p for p in reference if int(p["subtask"]) == k], n_reference, rng)
        if len(ck) < 2 or not rk:
            log(f"subtask {k}: skipped ({len(ck)} clean pairs, {len(rk)} reference pairs)")
            continue
        kind = ck[0]["kind"]
        rank_ids, eval_ids = split_examples([p["example_id"] for p in ck], rank_fraction, seed + k)
        rank_rows = [i for i, p in enumerate(ck) if p["example_id"] in set(rank_ids)]
        eval_rows = [i for i, p in enumerate(ck) if p["example_id"] in set(eval_ids)]
        seqs = [p["clean_ids"] for p in ck]
        eval_seqs = [seqs[i] for i in eval_rows]
        log(f"subtask {k} ({kind}): {len(ck)} clean pairs ({len(rank_rows)} ranking / {len(eval_rows)} evaluation), "
            f"{len(rk)} reference pairs")
        means = head_means(model, [p["clean_ids"] for p in rk], batch_size, progress)
        baseline = ablated_argmax(model, eval_seqs, means, [], batch_size)
        orders: list[tuple[str, str, bool, list[Head], str]] = []
        for name, source in rankings.items():
            if source == BUILTIN:
                per = direct_scores(model, seqs, means, batch_size)
                for scope, rows, held in (("rank_split", rank_rows, True), ("eval_split", eval_rows, False)):
                    orders.append((name, scope, held, removal_order(scores_frame(per, rows), model.n_layers,
                                                                     model.n_heads), "direct mean-ablation effect"))
                continue
            table, note = load_ranking(source.format(subtask=k), k)
            if "example_id" in table.columns:  # per-example scores: re-rank on each split
                for scope, ids, held in (("rank_split", rank_ids, True), ("eval_split", eval_ids, False)):
                    sub = table[table["example_id"].isin(ids)]
                    if sub.empty:
                        raise ValueError(f"{source}: no per-example scores for the {scope} of subtask {k}")
                    orders.append((name, scope, held, removal_order(sub, model.n_layers, model.n_heads), note))
            else:
                orders.append((name, "all_pairs", False, removal_order(table, model.n_layers, model.n_heads),
                               note + "; scores over all pairs, not held out"))
        seen: dict = {}  # removed-head set -> predictions on eval_seqs, shared by this subtask's curves
        for name, scope, held, order, note in orders:
            c = knockout_curve(model, eval_seqs, means, order, grid, baseline, batch_size, progress, cache=seen)
            c.insert(0, "heldout", held)
            c.insert(0, "scope", scope)
            c.insert(0, "ranking", name)
            c.insert(0, "kind", kind)
            c.insert(0, "subtask", k)
            curves.append(c)
            i = operating_point(c.n_removed.tolist(), c.acc.tolist(), threshold)
            op = c.iloc[i]
            ops.append(dict(subtask=k, kind=kind, ranking=name, scope=scope, heldout=held,
                            n_removed=int(op.n_removed), n_kept=int(op.n_kept), acc=float(op.acc),
                            ci_low=float(op.ci_low), ci_high=float(op.ci_high), n=int(op.n), threshold=threshold,
                            n_rank_examples=len(rank_ids), n_eval_examples=len(eval_ids), n_reference=len(rk),
                            note=note))
            kept = set(order[int(op.n_removed):])
            heads += [dict(subtask=k, ranking=name, scope=scope, layer=l, head=h, removal_rank=r,
                           kept=(l, h) in kept) for r, (l, h) in enumerate(order)]
            log(f"  {name}/{scope}: operating point {int(op.n_removed)} removed, acc {op.acc:.2f}")
    return {"curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
            "operating_points": pd.DataFrame(ops), "heads": pd.DataFrame(heads)}


KNOCKOUT_TABLES = ("curves", "operating_points", "heads")


def merge_knockout(parts: Sequence[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Concatenate per-subtask :func:`run_knockout` results (empty parts = skipped subtasks), ordered by subtask."""
    out = {}
    for name in KNOCKOUT_TABLES:
        frames = [p[name] for p in parts if name in p and len(p[name])]
        t = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        out[name] = t.sort_values("subtask", kind="stable", ignore_index=True) if "subtask" in t else t
    return out


def circuit_sets(heads: pd.DataFrame, prefer: Sequence[str] = ("rank_split", "all_pairs")) -> dict[tuple, set[Head]]:
    """Kept-head set per (subtask, ranking) at the operating point, using the first available scope in ``prefer``."""
    out: dict[tuple, set[Head]] = {}
    for (k, name), df in heads.groupby(["subtask", "ranking"]):
        for scope in prefer:
            d = df[df["scope"] == scope]
            if len(d):
                out[(int(k), str(name))] = {(int(l), int(h)) for l, h in zip(d["layer"][d["kept"]], d["head"][d["kept"]])}
                break
    return out


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
