"""Attribution patching (AtP; Nanda 2023, Kramár et al. 2024): a first-order estimate of every head's patch.

Per pair, one forward of the base run with a zero offset on every layer's z (requires grad) over the suffix after
the first clean/corrupt difference (the prefix's KV cache is shared and constant), one backward of the metric,
and per head

    m_patched ≈ m_base + Σ_pos (z_source - z_base) · ∂m/∂z |_base

which is exact when the metric is linear in z (tested on a model built to be linear). The result is a
:class:`~cotmech.patch_results.PatchResult` like the exact sweeps', so it is normalised and tabulated the
same way; compare its ranking with ``exact`` (Spearman per subtask) before using it to screen heads.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..batching import left_pad
from ..patch_results import PatchResult
from ..tracing import TraceOut, prefix_cache, run_trace
from .data import Pair
from .exact import PairRuns, _check, _roles, pair_ref, shared_prefix
from .metrics import PairRef, get_metric


def _attribute(model, fn, src: TraceOut, base: TraceOut, refs: Sequence[PairRef]) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """First-order estimates for the rows of one forward pair: (patched [rows, L, H], m_base [rows],
    m_source [rows]). ``base`` was traced with ``grad=True``; positions are those the two traces share."""
    L, H, d = model.n_layers, model.n_heads, model.d_head
    rows = len(refs)
    m = torch.stack([fn(base.logits[i:i + 1], ref)[0] for i, ref in enumerate(refs)])
    grads = torch.autograd.grad(m.sum(), [base.deltas[lay] for lay in range(L)])
    patched = np.zeros((rows, L, H))
    for lay in range(L):
        g = grads[lay].detach().float().reshape(rows, -1, H, d)
        dz = src.saved[("z", lay)].float() - base.saved[("z", lay)].detach().float()
        patched[:, lay] = (g * dz).sum(dim=(1, 3)).cpu().double().numpy()  # [rows, H]
    m_base = m.detach().double().cpu().numpy()
    m_src = np.array([float(fn(src.logits[i:i + 1], ref)[0]) for i, ref in enumerate(refs)])
    return patched + m_base[:, None, None], m_base, m_src


def atp_sweep(model, pairs: Sequence[Pair], metric: str = "kl", direction: str = "denoise", pair_batch: int = 4,
              progress: bool = True, suffix: bool = True, runs: Sequence[PairRuns] | None = None) -> PatchResult:
    """AtP estimate of every single-head patch.

    ``suffix`` (default): per pair, the shared prefix's KV cache once and the two suffixes after ``first_diff``
    (z_source − z_base is zero before it, so only suffix positions contribute, and their gradients do not need
    the prefix's): the same numbers as the full-sequence AtP at the cost of one prefix forward plus the suffix
    (the tokens all pairs share run once per sweep: :func:`~cotmech.patching.exact.shared_prefix`).
    ``suffix=False``: one forward + one backward of the whole left-padded inputs per ``pair_batch`` pairs.
    ``runs``: the pairs' :func:`~cotmech.patching.exact.pair_runs` when the caller already has them (screened
    patching): their prefix caches, source runs and metric references are used, so only the base run with gradients
    is traced here; computed here otherwise.
    """
    _check(direction)
    fn = get_metric(metric)
    b_name, s_name = _roles(direction)
    L, H = model.n_layers, model.n_heads
    patched = np.zeros((len(pairs), L, H))
    base_m, src_m = np.zeros(len(pairs)), np.zeros(len(pairs))
    zsites = [("z", lay) for lay in range(L)]
    step = 1 if suffix else max(1, int(pair_batch))
    if runs is not None and not suffix:
        raise ValueError("atp_sweep: runs (prefix caches) need suffix=True")
    root = shared_prefix(model, pairs) if suffix and runs is None else None
    for start in tqdm(range(0, len(pairs), step), desc="attribution patching", disable=not progress):
        group = list(pairs[start:start + step])
        if runs is not None or suffix:
            p = group[0].first_diff
            cache = runs[start].cache if runs is not None else prefix_cache(model, group[0].ids(b_name)[:p],
                                                                            root=root)
            kw = {w: dict(ids=group[0].ids(w)[p:][None], cache=cache) for w in (b_name, s_name)}
        else:
            kw = {}
            for w in (b_name, s_name):
                b = left_pad([getattr(q, f"{w}_ids") for q in group], model.tokenizer.pad_token_id)
                kw[w] = dict(ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
        # the weights keep requires_grad (autograd.grad computes only the deltas' gradients): with frozen weights
        # the embedded model's bf16 CPU trace of a 15-token suffix took 1.8 s instead of 0.3 s (2026-12-07)
        base = run_trace(model, kw[b_name].pop("ids"), save=zsites, grad=True, **kw[b_name])
        if runs is not None:  # the source run and references are the caller's; only the base run is traced here
            src, refs = runs[start].runs[s_name], [runs[start].ref]
        else:
            src = run_trace(model, kw[s_name].pop("ids"), save=zsites, **kw[s_name])
            other = src.logits.detach()
            clean_lg, corrupt_lg = (other, base.logits.detach()) if direction == "denoise" else \
                (base.logits.detach(), other)
            refs = [pair_ref(q, clean_lg[i], corrupt_lg[i]) for i, q in enumerate(group)]
        rows = slice(start, start + len(group))
        patched[rows], base_m[rows], src_m[rows] = _attribute(model, fn, src, base, refs)
    return PatchResult("atp", metric if isinstance(metric, str) else "custom", direction,
                       [p.pair_id for p in pairs], [p.subtask for p in pairs], patched, base_m, src_m,
                       {"suffix": suffix})
