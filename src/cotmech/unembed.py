"""The logit lens: reading residual-stream vectors through the model's final norm and unembedding (study.md E4).

For RMSNorm / LayerNorm models that map is ``logits(v) = G · c(v) / s(v) + b`` with
``G = W_U · diag(gain)`` [vocab, d_model], ``c`` the centering (identity for RMSNorm), ``s(v) =
sqrt(mean(c(v)²) + eps)`` and ``b`` the norm-bias/unembedding-bias term.  :class:`Unembed` extracts
``G, b, eps`` from the model once (float32 by default, which is exact for fp32 models and ~4× faster
than emulated bf16 on CPUs without AVX512-BF16), checks them against ``LoadedModel.logits_from_resid``
on random vectors, and falls back to calling the model's own modules when the norm is of another kind.

Because ``c`` is linear, ``G · c(v)`` is linear in ``v``: :mod:`cotmech.heads` uses that to score a
head's output alone and added to the residual stream with one unembedding. :func:`lens_stats` gives the
per-layer statistics of the lens distribution (through a tuned lens of :mod:`cotmech.lens` when given one).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

LOG2 = math.log(2.0)


class LensError(ValueError):
    """A lens could not be built or loaded; the message names the cause."""


# --------------------------------------------------------------------------------------------------
# Final norm + unembedding
# --------------------------------------------------------------------------------------------------
@dataclass
class Unembed:
    """``logits(v) = G · c(v) / s(v) + bias`` (fast path) or the model's own modules (``model_fn``)."""

    G: torch.Tensor | None  # [vocab, d_model] = W_U · diag(gain), or None on the fallback path
    bias: torch.Tensor | None  # [vocab] or None
    eps: float
    center: bool  # LayerNorm (True) or RMSNorm (False)
    dtype: torch.dtype
    model_fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # fallback: resid -> logits

    @property
    def vocab_size(self) -> int:
        return int(self.G.shape[0]) if self.G is not None else -1

    @property
    def device(self) -> torch.device:
        """Where the lens computes (its matrices' device; the CPU on the fallback path)."""
        return self.G.device if self.G is not None else torch.device("cpu")

    @property
    def fast(self) -> bool:
        return self.G is not None

    def prep(self, v: torch.Tensor) -> torch.Tensor:
        """c(v): centering for LayerNorm, identity for RMSNorm; float in the lens dtype."""
        v = v.to(self.dtype)
        return v - v.mean(-1, keepdim=True) if self.center else v

    def scale(self, v: torch.Tensor) -> torch.Tensor:
        """s(v): [...] the norm's denominator."""
        c = self.prep(v)
        return torch.sqrt(c.pow(2).mean(-1) + self.eps)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """G · c(x): [..., d_model] -> [..., vocab] (linear in x; no norm scale, no bias)."""
        return self.prep(x) @ self.G.T

    def from_linear(self, lin: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Logits from the linear part and the norm scale: lin [..., vocab], scale [...]."""
        out = lin / scale.unsqueeze(-1)
        return out + self.bias if self.bias is not None else out

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        """Logit lens: [..., d_model] -> [..., vocab] (float)."""
        if not self.fast:
            return self.model_fn(v).to(self.dtype)
        return self.from_linear(self.linear(v), self.scale(v))

    def direction(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Rows of G for ``token_ids`` [n] -> [n, d_model] (answer directions through the norm gain)."""
        return self.G[token_ids]


def _norm_eps(norm: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps", "epsilon"):
        val = getattr(norm, name, None)
        if isinstance(val, (int, float)):
            return float(val)
    return None


@torch.no_grad()
def make_unembed(model: Any, dtype: torch.dtype = torch.float32, check: bool = True,
                 device: str | torch.device = "cpu") -> Unembed:
    """Build the logit lens of a :class:`~cotmech.models.LoadedModel`, its matrices on ``device``.

    Callers keep their inputs on ``device`` too (``lens.device``); :func:`cotmech.heads.writer_components`
    does, so the answer-writer scan runs on the model's GPU where there is one.

    The gain and bias of the final norm are read off the module by probing it with ±1 vectors, so
    variants such as Gemma's ``(1 + w)`` need no special case; the result is verified against
    ``model.logits_from_resid`` (tolerance scaled to the model dtype). If the norm is neither RMSNorm-
    nor LayerNorm-shaped, the lens calls the model's own modules instead (slower, same numbers).
    """
    norm, unemb = model.hf_final_norm(), model.hf_unembed()
    fallback = Unembed(None, None, 0.0, False, dtype,
                       model_fn=lambda v: model.logits_from_resid(v.to(model.device)).to(dtype).cpu())
    eps = _norm_eps(norm)
    name = type(norm).__name__.lower()
    if eps is None or not ("rms" in name or "layernorm" in name) or model.d_model % 2:
        return fallback
    center = "rms" not in name
    d = model.d_model
    pm = torch.ones(d, dtype=torch.float32)
    pm[1::2] = -1.0  # mean 0, mean square 1
    p = pm.to(model.dtype).to(model.device)
    a, b = norm(p.unsqueeze(0))[0].float().cpu(), norm(-p.unsqueeze(0))[0].float().cpu()
    gain = (a - b) / 2 * math.sqrt(1.0 + eps) * pm
    nbias = (a + b) / 2
    # a copy: on a float32 CPU model .float().cpu() would alias the weights (tied to the embedding in many
    # models), and the in-place gain below would corrupt the model itself
    W = unemb.weight.detach().to("cpu", torch.float32, copy=True)  # [vocab, d_model]
    bias = W @ nbias
    G = W.mul_(gain).to(dtype)  # in place: no second vocab × d_model copy
    del W
    ub = getattr(unemb, "bias", None)
    if ub is not None:
        bias = bias + ub.detach().float().cpu()
    has_bias = bool(bias.abs().max() > 0)
    dev = torch.device(device)
    lens = Unembed(G.to(dev), bias.to(dev, dtype) if has_bias else None, eps, center, dtype)
    if check:
        gen = torch.Generator().manual_seed(0)
        v = torch.randn(4, d, generator=gen) * 3.0
        ref = model.logits_from_resid(v.to(model.device)).float().cpu()
        got = lens.logits(v.to(model.dtype).float().to(dev)).float().cpu()
        tol = 1e-3 if model.dtype == torch.float32 else 0.1
        err = float((ref - got).abs().max() / ref.abs().max().clamp(min=1e-6))
        if err > tol:
            return fallback
    return lens


# --------------------------------------------------------------------------------------------------
# Distribution statistics
# --------------------------------------------------------------------------------------------------
def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence in bits (∈ [0, 1]) between log-distributions [..., vocab] -> [...].

    ``logq`` may broadcast against ``logp`` (e.g. one reference distribution for all layers); terms with
    zero probability contribute 0.
    """
    p, q = logp.exp(), logq.exp()
    logm = (p + q).mul_(0.5).clamp_(min=1e-38).log_()
    kl_pm = torch.sub(logp, logm).mul_(p).nan_to_num_(nan=0.0).sum(-1)  # 0 · log 0 = 0
    kl_qm = torch.sub(logq, logm).mul_(q).nan_to_num_(nan=0.0).sum(-1)
    return ((kl_pm + kl_qm) / (2 * LOG2)).clamp(min=0.0)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) in nats for log-distributions [..., vocab] -> [...]."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def answer_rank(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``ids`` [...] in ``logits`` [..., vocab]: the number of strictly larger logits."""
    target = logits.gather(-1, ids.unsqueeze(-1))
    return (logits > target).sum(-1, dtype=torch.int32)


#: Per-(row, layer) statistics returned by :func:`lens_stats`.
LENS_METRICS = ("p_answer", "rank_answer", "top1_in_context", "topk_context_mass", "js_final", "js_prior",
                "prefers_context", "p_real", "p_real_minus_answer")


@torch.no_grad()
def lens_stats(lens: Unembed, resid: torch.Tensor, answer_id: torch.Tensor, context_ids: list[torch.Tensor],
               prior_logp: torch.Tensor | None = None, real_id: torch.Tensor | None = None, top_k: int = 10,
               translator: Any = None, chunk: int = 2, progress: str | None = None
               ) -> dict[str, np.ndarray]:
    """Per row and layer statistics of the lens distribution of ``resid`` [N, L+1, d_model].

    - ``p_answer``/``rank_answer``: probability / 0-based rank of ``answer_id`` [N];
    - ``top1_in_context``: the lens's top-1 token is one of the row's prompt ids ``context_ids[i]``;
    - ``topk_context_mass``: probability mass of the top-``top_k`` tokens that are prompt ids;
    - ``js_final``: JS(lens_ℓ ‖ lens_L) in bits — lens_L is the model's own final distribution;
    - ``js_prior``: JS(lens_ℓ ‖ prior) against ``prior_logp`` [N, vocab] (NaN if not given);
    - ``prefers_context``: 1 if the lens gives the in-context answer a higher probability than the context-free
      prior's top-1 token, else 0 (NaN without a prior or where the prior's top-1 *is* the answer);
    - ``p_real``: probability of ``real_id`` [N] (-1 = none -> NaN), ``p_real_minus_answer`` = p_real − p_answer.
    Returns arrays [N, L+1] (float64; NaN where undefined). ``translator`` (a :class:`cotmech.lens.TunedLens`)
    switches to the tuned lens.
    """
    N, Lp1, _ = resid.shape
    out = {k: np.full((N, Lp1), np.nan) for k in LENS_METRICS}
    it = range(0, N, chunk)
    for s in tqdm(it, desc=progress, disable=progress is None, leave=False):
        r = resid[s:s + chunk].float()
        n = r.shape[0]
        if translator is not None:
            r = translator.translate_all(r)
        logp = torch.log_softmax(lens.logits(r), -1)  # [n, L+1, vocab]
        a = answer_id[s:s + n].long()
        out["p_answer"][s:s + n] = logp.gather(-1, a[:, None, None].expand(n, Lp1, 1))[..., 0].exp().double().numpy()
        out["rank_answer"][s:s + n] = answer_rank(logp, a[:, None].expand(n, Lp1)).double().numpy()
        top_p, top_i = logp.topk(top_k, dim=-1)  # [n, L+1, k]
        for j in range(n):
            ctx = context_ids[s + j].long()
            member = torch.isin(top_i[j], ctx)  # [L+1, k]
            out["top1_in_context"][s + j] = member[:, 0].double().numpy()
            out["topk_context_mass"][s + j] = (top_p[j].exp() * member).sum(-1).double().numpy()
        out["js_final"][s:s + n] = js_divergence(logp, logp[:, -1:]).double().numpy()
        if prior_logp is not None:
            out["js_prior"][s:s + n] = js_divergence(logp, prior_logp[s:s + n].float().unsqueeze(1)).double().numpy()
            top = prior_logp[s:s + n].argmax(-1).long()  # [n] the context-free prior's prediction
            lp_top = logp.gather(-1, top[:, None, None].expand(n, Lp1, 1))[..., 0]
            lp_ans = logp.gather(-1, a[:, None, None].expand(n, Lp1, 1))[..., 0]
            pref = (lp_ans > lp_top).double()
            pref[top == a] = float("nan")
            out["prefers_context"][s:s + n] = pref.numpy()
        if real_id is not None:
            rid = real_id[s:s + n].long()
            ok = rid >= 0
            pr_real = logp.gather(-1, rid.clamp(min=0)[:, None, None].expand(n, Lp1, 1))[..., 0].exp().double()
            pr_real[~ok] = float("nan")
            out["p_real"][s:s + n] = pr_real.numpy()
    out["p_real_minus_answer"] = out["p_real"] - out["p_answer"]
    return out
