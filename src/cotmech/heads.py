"""Per-head role components from cached activations, and the per-subtask head scores built from them.

The answer-writer components (``p_head``, ``p_pre``, ``p_mid``, ``p_alone``, ``dla``; study.md E4) and the
copy-head components (``attn``, ``proj``; E5) are defined in :mod:`cotmech.roles`, which reports them; the
knockout's ``builtin:writers`` and ``builtin:copy`` rankings (:mod:`cotmech.circuits`) score heads with the
same functions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .unembed import Unembed


WRITER_COMPONENTS = ("p_head", "p_pre", "p_mid", "p_alone", "dla")


COPY_COMPONENTS = ("attn", "proj")


def head_outputs(z: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """Per-head outputs x_h = z_h W_O,h: z [..., H, d_head], w_o [H, d_head, d_model] -> [..., H, d_model]."""
    return torch.einsum("...hk,hkd->...hd", z.float(), w_o.float())


def o_bias(model: Any, layer: int) -> torch.Tensor | None:
    """The attention output projection's bias [d_model] (float32, CPU), or None."""
    b = getattr(model.hf_o_proj(layer), "bias", None)
    return None if b is None else b.detach().float().cpu()


def _np(t: torch.Tensor) -> np.ndarray:
    """float64 numpy copy of a tensor on any device."""
    return t.detach().double().cpu().numpy()


def _answer_prob(logits: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[..., a] for logits [N, ..., V] and answer ids a [N] -> [N, ...] (float64)."""
    idx = a.view(-1, *([1] * (logits.dim() - 1))).expand(*logits.shape[:-1], 1)
    return (logits.gather(-1, idx)[..., 0] - torch.logsumexp(logits, -1)).exp().double()


@torch.no_grad()
def writer_components(lens: Unembed, model: Any, resid: torch.Tensor, attn_out: torch.Tensor, z: torch.Tensor,
                      answer_id: torch.Tensor, progress: bool = False,
                      max_bytes: int | None = None, parts: Sequence[str] = WRITER_COMPONENTS) -> dict[str, np.ndarray]:
    """Answer-writer components per row, layer and head (module doc).

    resid [N, L+1, d], attn_out [N, L, d], z [N, L, H, d_head], answer_id [N] ->
    ``p_head, p_alone, dla``: [N, L, H]; ``p_pre, p_mid``: [N, L] (only those in ``parts``; the writer score
    needs p_head, p_pre and p_mid).
    Per layer, resid_pre, resid_mid and every head's output go through the unembedding in one matrix product
    (the product reads the whole [vocab, d_model] matrix, so one product per vector would be memory-bound);
    rows are chunked so one chunk's logits stay under ``max_bytes`` (default 256 MiB on the CPU, 2 GiB on a GPU).
    Runs on the lens's device (``lens.device``).
    """
    if not lens.fast:
        raise ValueError("writer scores need the linear (RMSNorm/LayerNorm) lens; this model's norm is not supported")
    if not parts or set(parts) - set(WRITER_COMPONENTS):
        raise ValueError(f"writer_components: parts must be among {WRITER_COMPONENTS}, got {list(parts)}")
    parts = set(parts)
    unembedded = bool(parts - {"dla"})  # every part but dla needs the unembedding product
    N, L, H, _ = z.shape
    dev = lens.device  # inputs move there chunk by chunk; results come back as numpy
    a = answer_id.long().to(dev)
    g_a = lens.direction(a).float()  # [N, d]
    g_centred = g_a - lens.G.float().mean(0)
    s_final = lens.scale(resid[:, L].float().to(dev))  # [N]
    out = {k: np.zeros((N, L, H)) for k in ("p_head", "p_alone", "dla") if k in parts}
    out.update({k: np.zeros((N, L)) for k in ("p_pre", "p_mid") if k in parts})
    if max_bytes is None:
        max_bytes = (256 if dev.type == "cpu" else 2048) * 2**20
    step = max(1, int(max_bytes // (3 * (H + 2) * lens.vocab_size * 4)))  # rows per chunk (lin + 2 logit tensors)
    for layer in tqdm(range(L), desc="writers", disable=not progress, leave=False):
        w_o = model.w_o(layer).detach().to(dev)
        b = o_bias(model, layer)
        b = b.to(dev) if b is not None else None
        lin_b = lens.linear(b) if b is not None else None  # [V]
        for r0 in range(0, N, step):
            r = slice(r0, min(N, r0 + step))
            pre = resid[r, layer].float().to(dev)  # [n, d]
            mid = pre + attn_out[r, layer].float().to(dev)
            x = head_outputs(z[r, layer].to(dev), w_o)  # [n, H, d]
            if "dla" in parts:
                out["dla"][r, layer] = _np(torch.einsum("nhd,nd->nh", lens.prep(x), g_centred[r]) / s_final[r, None])
            if not unembedded:
                continue
            lin = lens.linear(torch.cat([pre[:, None], mid[:, None], x], 1))  # [n, H+2, V]: pre, mid, heads
            lin_x = lin[:, 2:]
            if "p_pre" in parts:
                out["p_pre"][r, layer] = _np(_answer_prob(lens.from_linear(lin[:, 0], lens.scale(pre)), a[r]))
            if "p_mid" in parts:
                out["p_mid"][r, layer] = _np(_answer_prob(lens.from_linear(lin[:, 1], lens.scale(mid)), a[r]))
            if "p_alone" in parts:
                out["p_alone"][r, layer] = _np(_answer_prob(lens.from_linear(lin_x, lens.scale(x)), a[r]))
            if "p_head" in parts:
                lin_pre = lin[:, 0] if lin_b is None else lin[:, 0] + lin_b
                rebuilt_scale = lens.scale(pre[:, None] + x + (b if b is not None else 0.0))  # [n, H]
                logits = lin_x.add_(lin_pre[:, None]).div_(rebuilt_scale[..., None])  # in place: lin is not reused
                if lens.bias is not None:
                    logits.add_(lens.bias)
                out["p_head"][r, layer] = _np(_answer_prob(logits, a[r]))
    return out


@torch.no_grad()
def copy_components(lens: Unembed, model: Any, z: torch.Tensor, attn: torch.Tensor, length: np.ndarray,
                    answer_pos: np.ndarray, answer_id: torch.Tensor) -> dict[str, np.ndarray]:
    """Copy-head components per row, layer and head: ``attn``, ``proj`` [N, L, H]; ``attn`` is NaN for rows
    without an answer position.  attn [N, L, H, S] is left-padded: token j of row i is column S − length_i + j."""
    N, L, H, S = attn.shape
    a_col = np.full((N, L, H), np.nan)
    for i in range(N):
        pos = answer_pos[i]
        if pos is None or (isinstance(pos, float) and math.isnan(pos)) or int(pos) < 0:
            continue
        col = S - int(length[i]) + int(pos)
        if not 0 <= col < S or int(pos) >= int(length[i]) - 1:
            raise ValueError(f"row {i}: answer_pos {pos} is outside the clean input (length {length[i]})")
        a_col[i] = attn[i, :, :, col].double().numpy()
    dev = lens.device
    g_a = lens.direction(answer_id.long().to(dev)).float()
    unit = g_a / g_a.norm(dim=-1, keepdim=True)
    proj = np.zeros((N, L, H))
    for layer in range(L):
        x = head_outputs(z[:, layer].to(dev), model.w_o(layer).detach().to(dev))
        proj[:, layer] = _np(torch.einsum("nhd,nd->nh", lens.prep(x), unit))
    return {"attn": a_col, "proj": proj}


# --------------------------------------------------------------------------------------------------
# Head scores of one subtask's rows (optionally weighted: the bootstrap)
# --------------------------------------------------------------------------------------------------
#: the writer components :func:`_writer_score` reads
WRITER_SCORE_PARTS = ("p_head", "p_pre", "p_mid")


def _writer_score(comp: dict[str, np.ndarray], idx: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(mean p_head − mean p_pre)/mean p_mid over rows ``idx`` (optionally weighted) -> [L, H]."""
    w = np.ones(len(idx)) if w is None else w
    ws = w.sum()
    m = {k: np.tensordot(w, comp[k][idx], 1) / ws for k in ("p_head", "p_pre", "p_mid")}
    return (m["p_head"] - m["p_pre"][:, None]) / m["p_mid"][:, None]


def _copy_score(comp: dict[str, np.ndarray], idx: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """mean(attn · proj) over rows ``idx`` with an answer position -> [L, H] (NaN if none)."""
    prod = comp["attn"][idx] * comp["proj"][idx]  # [n, L, H]
    ok = np.isfinite(prod[:, 0, 0])
    w = np.ones(len(idx)) if w is None else w
    w = w * ok
    if w.sum() == 0:
        return np.full(prod.shape[1:], np.nan)
    return np.tensordot(w, np.where(np.isfinite(prod), prod, 0.0), 1) / w.sum()


SCORERS = {"writers": (_writer_score, False), "copy": (_copy_score, True)}
