"""Attribution patching (AtP; Nanda 2023, Kramár et al. 2024): a first-order estimate of every head's patch.

For a pair batch, one forward of the base run with a zero offset on every layer's z (requires grad), one
backward of the metric, and per head

    m_patched ≈ m_base + Σ_pos (z_source - z_base) · ∂m/∂z |_base

which is exact when the metric is linear in z (tested on a model built to be linear). The result is a
:class:`~cotmech.patching.exact.PatchResult` like the exact sweeps', so it is normalised and tabulated the
same way; compare its ranking with ``exact`` (Spearman per subtask) before using it to screen heads.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..batching import left_pad
from .core import run_trace
from .data import Pair
from .exact import PatchResult, _check, _roles, pair_ref
from .metrics import get_metric


@contextlib.contextmanager
def frozen_weights(model) -> Iterator[None]:
    """Parameters stop requiring grad (so the backward computes only the activation gradients)."""
    params = [p for p in model.hf.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def atp_sweep(model, pairs: Sequence[Pair], metric: str = "kl", direction: str = "denoise", pair_batch: int = 4,
              progress: bool = True) -> PatchResult:
    """AtP estimate of every single-head patch; one forward + one backward per pair batch."""
    _check(direction)
    fn = get_metric(metric)
    b_name, s_name = _roles(direction)
    L, H, d = model.n_layers, model.n_heads, model.d_head
    patched = np.zeros((len(pairs), L, H))
    base_m, src_m = np.zeros(len(pairs)), np.zeros(len(pairs))
    zsites = [("z", lay) for lay in range(L)]
    for start in tqdm(range(0, len(pairs), pair_batch), desc="attribution patching", disable=not progress):
        group = list(pairs[start:start + pair_batch])
        batches = {w: left_pad([getattr(p, f"{w}_ids") for p in group], model.tokenizer.pad_token_id)
                   for w in ("clean", "corrupt")}
        src_b, base_b = batches[s_name], batches[b_name]
        src = run_trace(model, src_b.input_ids, attention_mask=src_b.attention_mask,
                        position_ids=src_b.position_ids, save=zsites)
        with frozen_weights(model):
            base = run_trace(model, base_b.input_ids, attention_mask=base_b.attention_mask,
                             position_ids=base_b.position_ids, save=zsites, grad=True)
            other = src.logits.detach()
            clean_lg, corrupt_lg = (other, base.logits.detach()) if direction == "denoise" else \
                (base.logits.detach(), other)
            refs = [pair_ref(p, clean_lg[i], corrupt_lg[i]) for i, p in enumerate(group)]
            m = torch.stack([fn(base.logits[i:i + 1], ref)[0] for i, ref in enumerate(refs)])
            grads = torch.autograd.grad(m.sum(), [base.deltas[lay] for lay in range(L)])
        for lay in range(L):
            g = grads[lay].detach().float().reshape(len(group), -1, H, d)
            dz = (src.saved[("z", lay)].float() - base.saved[("z", lay)].detach().float())
            attr = (g * dz).sum(dim=(1, 3))  # [rows, H]
            patched[start:start + len(group), lay] = attr.cpu().double().numpy()
        for i, ref in enumerate(refs):
            base_m[start + i] = float(m[i].detach())
            src_m[start + i] = float(fn(src.logits[i:i + 1], ref)[0])
            patched[start + i] += base_m[start + i]
    return PatchResult("atp", metric if isinstance(metric, str) else "custom", direction,
                       [p.pair_id for p in pairs], [p.subtask for p in pairs], patched, base_m, src_m)
