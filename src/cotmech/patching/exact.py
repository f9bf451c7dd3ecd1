"""Head-level activation patching over all heads: ``naive`` (the reference) and ``exact`` (same numbers, fast).

Both return a :class:`PatchResult` holding, per pair, the metric of every single-head patch plus the
metric of the base and source runs; :mod:`cotmech.patching.scores` turns it into a head-score table
(:class:`PatchResult` is defined in :mod:`cotmech.patch_results`).

``exact`` uses that clean and corrupt inputs are token-aligned and identical before ``first_diff``:
every activation there is identical in both runs, so patching it changes nothing. Per pair it computes
the shared prefix's KV cache once, runs the clean and corrupt suffixes once (saving every head's z and
the residual stream after every block), and then, for batches of heads (one batch row per head, sorted
by layer), recomputes only the suffix and only from the lowest patched layer on: the residual stream
entering that layer is the base run's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..batching import left_pad
from ..patch_results import PatchResult
from ..tracing import Edit, PrefixCache, TraceOut, common_prefix_cache, prefix_cache, run_in_batches, run_trace
from .data import Pair
from .metrics import PairRef, get_metric

DIRECTIONS = ("denoise", "noise")


def _check(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"patching direction {direction!r}: use one of {', '.join(DIRECTIONS)}")


def all_heads(model) -> list[tuple[int, int]]:
    return [(lay, h) for lay in range(model.n_layers) for h in range(model.n_heads)]


def pair_ref(pair: Pair, clean_logits: torch.Tensor, corrupt_logits: torch.Tensor) -> PairRef:
    """Reference for the metrics; a missing corrupt answer becomes the corrupt run's top token."""
    cor = pair.corrupt_answer_id
    if cor is None:
        cor = int(corrupt_logits.argmax())
    return PairRef(torch.log_softmax(clean_logits.float(), -1).cpu(), pair.answer_id, int(cor))


def _roles(direction: str) -> tuple[str, str]:
    """(base, source) input names for a direction."""
    return ("corrupt", "clean") if direction == "denoise" else ("clean", "corrupt")


# --------------------------------------------------------------------------------------------------
# naive: one full forward per head and pair batch
# --------------------------------------------------------------------------------------------------
def _sweep_start(model, pairs: Sequence[Pair], metric, direction: str, heads):
    """What a one-forward-per-head reference starts from: metric function, heads, (base, source) names, the
    patched-metric array [pairs, layers, heads] (NaN = not run) and the base/source metric arrays [pairs]."""
    _check(direction)
    heads = list(heads) if heads is not None else all_heads(model)
    patched = np.full((len(pairs), model.n_layers, model.n_heads), np.nan)
    return get_metric(metric), heads, _roles(direction), patched, np.zeros(len(pairs)), np.zeros(len(pairs))


def naive_sweep(model, pairs: Sequence[Pair], metric: str = "kl", direction: str = "denoise",
                heads: Sequence[tuple[int, int]] | None = None, pair_batch: int = 4,
                progress: bool = True) -> PatchResult:
    """Reference: for every head, one forward of the (left-padded) base inputs with that head's z replaced
    by the source run's at every position. Unlisted heads are NaN."""
    fn, heads, (b_name, s_name), patched, base_m, src_m = _sweep_start(model, pairs, metric, direction, heads)
    H, d = model.n_heads, model.d_head
    bar = tqdm(total=len(pairs) * len(heads), desc="naive patching", disable=not progress)
    for start in range(0, len(pairs), pair_batch):
        group = list(pairs[start:start + pair_batch])
        batches = {w: left_pad([getattr(p, f"{w}_ids") for p in group], model.tokenizer.pad_token_id)
                   for w in ("clean", "corrupt")}
        runs = {w: run_trace(model, b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                             save=[("z", lay) for lay in range(model.n_layers)]) for w, b in batches.items()}
        refs = [pair_ref(p, runs["clean"].logits[i], runs["corrupt"].logits[i]) for i, p in enumerate(group)]
        for i, ref in enumerate(refs):
            base_m[start + i] = float(fn(runs[b_name].logits[i:i + 1], ref)[0])
            src_m[start + i] = float(fn(runs[s_name].logits[i:i + 1], ref)[0])
        b = batches[b_name]
        for lay, h in heads:
            mask = torch.zeros(len(group), H, dtype=torch.bool)
            mask[:, h] = True
            out = run_trace(model, b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                            edits=[Edit("z", lay, mask, runs[s_name].saved[("z", lay)])])
            for i, ref in enumerate(refs):
                patched[start + i, lay, h] = float(fn(out.logits[i:i + 1], ref)[0])
            bar.update(len(group))
    bar.close()
    return PatchResult("naive", metric if isinstance(metric, str) else "custom", direction,
                       [p.pair_id for p in pairs], [p.subtask for p in pairs], patched, base_m, src_m)


def hook_sweep(model, pairs: Sequence[Pair], metric: str = "kl", direction: str = "denoise",
               heads: Sequence[tuple[int, int]] | None = None, progress: bool = True) -> PatchResult:
    """Second reference, and the honest speed baseline: one plain forward of the whole base input per head
    and pair, the head's z set to the source run's by a forward pre-hook on ``o_proj`` (no nnsight, the
    model's own attention implementation, last-position logits only). Same numbers as :func:`naive_sweep`."""
    fn, heads, (b_name, s_name), patched, base_m, src_m = _sweep_start(model, pairs, metric, direction, heads)
    dh, dev = model.d_head, model.device

    def forward(ids: list[int], pre_hooks: dict) -> torch.Tensor:
        handles = [model.hf_o_proj(lay).register_forward_pre_hook(f) for lay, f in pre_hooks.items()]
        try:
            with torch.inference_mode():
                out = model.hf(input_ids=torch.tensor([ids], device=dev), use_cache=False, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        return out.logits[:, -1].float()

    bar = tqdm(total=len(pairs) * len(heads), desc="hook patching", disable=not progress)
    for i, p in enumerate(pairs):
        z: dict[str, dict[int, torch.Tensor]] = {"clean": {}, "corrupt": {}}
        logits = {}
        for w in ("clean", "corrupt"):
            def keep(lay, store=z[w]):
                def pre(mod, args):
                    store[lay] = args[0].detach().clone()
                return pre
            logits[w] = forward(getattr(p, f"{w}_ids"), {lay: keep(lay) for lay in range(model.n_layers)})
        ref = pair_ref(p, logits["clean"][0], logits["corrupt"][0])
        base_m[i] = float(fn(logits[b_name], ref)[0])
        src_m[i] = float(fn(logits[s_name], ref)[0])
        base_ids = getattr(p, f"{b_name}_ids")
        for lay, h in heads:
            value = z[s_name][lay][..., h * dh:(h + 1) * dh]

            def patch(mod, args, value=value, h=h):
                x = args[0].clone()
                x[..., h * dh:(h + 1) * dh] = value
                return (x,) + tuple(args[1:])
            patched[i, lay, h] = float(fn(forward(base_ids, {lay: patch}), ref)[0])
            bar.update(1)
    bar.close()
    return PatchResult("hook", metric if isinstance(metric, str) else "custom", direction,
                       [p.pair_id for p in pairs], [p.subtask for p in pairs], patched, base_m, src_m)


# --------------------------------------------------------------------------------------------------
# exact: shared-prefix KV cache, suffix only, from the patched layer on, many heads per forward
# --------------------------------------------------------------------------------------------------
@dataclass
class PairRuns:
    """Reference runs of one pair over its suffix (positions >= first_diff)."""

    pair: Pair
    cache: object  # PrefixCache | None
    runs: dict  # "clean"/"corrupt" -> TraceOut with z at every layer and resid after every block
    ref: PairRef


def pair_runs(model, pair: Pair, prefix_attention: str = "shared", root: PrefixCache | None = None) -> PairRuns:
    """Prefix KV cache (once; continuing ``root``, the pairs' :func:`shared_prefix`, when given) plus the clean and
    corrupt suffixes in one 2-row forward saving z and the residual stream (``runs[w]``: a batch-1
    :class:`TraceOut` per input); ``prefix_attention`` as in :func:`run_trace`."""
    p = pair.first_diff
    cache = prefix_cache(model, pair.ids("clean")[:p], root=root)
    want = [("z", lay) for lay in range(model.n_layers)] + [("resid", lay) for lay in range(model.n_layers)]
    names = ("clean", "corrupt")
    both = run_trace(model, torch.stack([pair.ids(w)[p:] for w in names]), cache=cache, save=want,
                     prefix_attention=prefix_attention)
    runs = {w: TraceOut(both.logits[i:i + 1], {k: v[i:i + 1] for k, v in both.saved.items()})
            for i, w in enumerate(names)}
    return PairRuns(pair, cache, runs, pair_ref(pair, runs["clean"].logits[0], runs["corrupt"].logits[0]))


def shared_prefix(model, pairs: Sequence[Pair]) -> PrefixCache | None:
    """KV cache of the tokens every pair shares before its first difference (a few-shot prompt's exemplars, ~500
    of a real pair's ~550 tokens): computed once per sweep, each pair's prefix continues it."""
    return common_prefix_cache(model, [p.ids("clean")[:p.first_diff] for p in pairs])


def patch_suffix(model, pr: PairRuns, heads: Sequence[tuple[int, int]], direction: str = "denoise",
                 extra_edits: Sequence[Edit] = (), prefix_attention: str = "shared") -> torch.Tensor:
    """Last-position logits [len(heads), vocab]: row r = base run with head ``heads[r]``'s z from the source run
    (``prefix_attention`` as in :func:`run_trace`)."""
    b_name, s_name = _roles(direction)
    base, src = pr.runs[b_name], pr.runs[s_name]
    start = min(lay for lay, _ in heads)
    R, H = len(heads), model.n_heads
    edits = []
    for lay in sorted({lay for lay, _ in heads}):
        mask = torch.zeros(R, H, dtype=torch.bool)
        for r, (hl, h) in enumerate(heads):
            if hl == lay:
                mask[r, h] = True
        edits.append(Edit("z", lay, mask, src.saved[("z", lay)]))
    ids = pr.pair.ids(b_name)[pr.pair.first_diff:][None].expand(R, -1)
    resid = base.saved[("resid", start - 1)] if start > 0 else None
    out = run_trace(model, ids, cache=pr.cache, start_layer=start, start_resid=resid,
                    edits=list(edits) + list(extra_edits), prefix_attention=prefix_attention)
    return out.logits


def chunk_rows(n_heads: int, suffix: int, head_batch: int, chunk_tokens: int | None) -> int:
    """Heads patched per forward for a pair whose suffix (after first_diff) has ``suffix`` tokens: about
    ``chunk_tokens`` suffix tokens per forward in whole layers of ``n_heads`` (at least one layer), at most
    ``head_batch``; ``chunk_tokens`` None: ``head_batch``. A chunk recomputes every row from its lowest layer, so
    whole-layer chunks sized to the suffix waste least (measured in BENCHMARKS.md)."""
    if chunk_tokens is None:
        return max(1, head_batch)
    layers = max(1, round(chunk_tokens / max(1, suffix) / n_heads))
    return max(1, min(head_batch, layers * n_heads))


FORWARD_LAYERS = 3
"""A forward's fixed cost (embedding, unembedding, trace set-up) in layers of per-layer fixed cost (:func:`plan_chunks`;
≈ 3.4 measured on the embedded model, BENCHMARKS.md)."""


def chunk_cost(start: int, rows: int, n_layers: int, overhead: float) -> float:
    """Cost, in row-layers, of one forward patching ``rows`` heads from layer ``start``: every row runs the
    ``n_layers - start`` layers, and each layer (plus :data:`FORWARD_LAYERS` per forward) has a fixed cost worth
    ``overhead`` rows (reading the weights, launching the kernels)."""
    return (n_layers - start + FORWARD_LAYERS) * overhead + (n_layers - start) * rows


def plan_chunks(heads: Sequence[tuple[int, int]], n_layers: int, max_rows: int,
                overhead: float) -> list[list[tuple[int, int]]]:
    """``heads`` (sorted) in consecutive chunks of at most ``max_rows``, one forward each, at the least total
    :func:`chunk_cost` (dynamic programme over the sorted heads). A forward recomputes all its rows from their lowest
    layer, so scattered heads (screened patching) weigh that waste against the fixed cost of one more forward; a
    full sweep gets whole-layer chunks (``max_rows`` a multiple of the heads per layer, :func:`chunk_rows`), fewer
    layers each near the top when ``max_rows`` spans several."""
    heads = list(heads)
    n = len(heads)
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of heads[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max(1, max_rows)), j):
            c = best[i] + chunk_cost(heads[i][0], j - i, n_layers, overhead)
            if c < best[j]:
                best[j], cut[j] = c, i
    chunks, j = [], n
    while j > 0:
        chunks.append(heads[cut[j]:j])
        j = cut[j]
    return chunks[::-1]


def exact_sweep(model, pairs: Sequence[Pair], metric: str = "kl", direction: str = "denoise",
                heads: Sequence[tuple[int, int]] | None = None, head_batch: int = 64,
                progress: bool = True, prefix_attention: str = "shared",
                chunk_tokens: int | None = None, runs: Sequence[PairRuns] | None = None,
                overhead: float = 4.0) -> PatchResult:
    """Same numbers as :func:`naive_sweep` (up to float rounding), computed per pair on the suffix only
    (``prefix_attention`` as in :func:`run_trace`), at most :func:`chunk_rows` heads per forward (halved on
    out-of-memory, and kept at most that for the next pairs) in the chunks of :func:`plan_chunks` (``overhead``:
    a layer's fixed cost in rows). ``runs``: the pairs' :func:`pair_runs` when the caller reuses them across calls
    (screened patching); computed per pair otherwise."""
    _check(direction)
    fn = get_metric(metric)
    heads = sorted(heads if heads is not None else all_heads(model))
    b_name, s_name = _roles(direction)
    patched = np.full((len(pairs), model.n_layers, model.n_heads), np.nan)
    base_m, src_m = np.zeros(len(pairs)), np.zeros(len(pairs))
    bar = tqdm(total=len(pairs) * len(heads), desc="exact patching", disable=not progress)
    cap = head_batch
    used: list[int] = []
    root = shared_prefix(model, pairs) if runs is None else None
    for i, pair in enumerate(pairs):
        pr = runs[i] if runs is not None else pair_runs(model, pair, prefix_attention, root)
        base_m[i] = float(fn(pr.runs[b_name].logits, pr.ref)[0])
        src_m[i] = float(fn(pr.runs[s_name].logits, pr.ref)[0])

        def do(chunk, i=i, pr=pr):
            vals = fn(patch_suffix(model, pr, chunk, direction, prefix_attention=prefix_attention), pr.ref).detach().cpu().double().numpy()
            for (lay, h), v in zip(chunk, vals):
                patched[i, lay, h] = v
            bar.update(len(chunk))

        start = got = chunk_rows(model.n_heads, pair.length - pair.first_diff, cap, chunk_tokens)
        for group in plan_chunks(heads, model.n_layers, start, overhead):
            got = run_in_batches(do, group, got)
        if got < start:  # out of memory: never start above what worked
            cap = got
        used.append(got)
    bar.close()
    return PatchResult("exact", metric if isinstance(metric, str) else "custom", direction,
                       [p.pair_id for p in pairs], [p.subtask for p in pairs], patched, base_m, src_m,
                       {"head_batch": max(used) if used else cap, "chunk_tokens": chunk_tokens, "overhead": overhead})


__all__ = ["naive_sweep", "exact_sweep", "chunk_cost", "chunk_rows", "plan_chunks", "pair_runs", "patch_suffix",
           "all_heads", "shared_prefix"]
