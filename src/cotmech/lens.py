"""Logit lens and tuned lens over residual-stream vectors (study.md E4, E10; Belrose et al. 2023).

The logit lens reads a residual vector ``v: [..., d_model]`` through the model's final norm and
unembedding.  For RMSNorm / LayerNorm models that map is ``logits(v) = G · c(v) / s(v) + b`` with
``G = W_U · diag(gain)`` [vocab, d_model], ``c`` the centering (identity for RMSNorm), ``s(v) =
sqrt(mean(c(v)²) + eps)`` and ``b`` the norm-bias/unembedding-bias term.  :class:`Unembed` extracts
``G, b, eps`` from the model once (float32 by default, which is exact for fp32 models and ~4× faster
than emulated bf16 on CPUs without AVX512-BF16), checks them against ``LoadedModel.logits_from_resid``
on random vectors, and falls back to calling the model's own modules when the norm is of another kind.

Because ``c`` is linear, ``G · c(v)`` is linear in ``v``: :mod:`cotmech.roles` uses that to score a
head's output alone and added to the residual stream with one unembedding.

The tuned lens adds a learned affine translator per layer, ``v + v·A_ℓ + b_ℓ`` (A full, low-rank
``U_ℓ V_ℓ``, or absent = bias only), initialised at the identity, trained to minimise
KL(final ‖ lens_ℓ) (:func:`train_tuned_lens`).
"""
from __future__ import annotations

import math
import time
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

    Callers keep their inputs on ``device`` too (``lens.device``); :func:`cotmech.roles.writer_components`
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
               translator: "TunedLens | None" = None, chunk: int = 2, progress: str | None = None
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
    Returns arrays [N, L+1] (float64; NaN where undefined). ``translator`` switches to the tuned lens.
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


# --------------------------------------------------------------------------------------------------
# Tuned lens
# --------------------------------------------------------------------------------------------------
class TunedLens(nn.Module):
    """Per-layer affine translators ``v + v·A_ℓ + b_ℓ`` for layers 0..L-1; layer L is the identity.

    ``rank=None``: A_ℓ full [d, d]; ``rank=r>0``: A_ℓ = U_ℓ V_ℓ ([d, r]·[r, d]); ``rank=0``: bias only.
    At initialisation every translator is the identity (A = 0 / V = 0, b = 0), so the tuned lens equals
    the logit lens.
    """

    def __init__(self, n_layers: int, d_model: int, rank: int | None = 8, seed: int = 0):
        super().__init__()
        self.n_layers, self.d_model, self.rank = n_layers, d_model, rank
        self.bias = nn.Parameter(torch.zeros(n_layers, d_model))
        gen = torch.Generator().manual_seed(seed)
        if rank is None:
            self.A = nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        elif rank > 0:
            self.U = nn.Parameter(torch.randn(n_layers, d_model, rank, generator=gen) / math.sqrt(d_model))
            self.V = nn.Parameter(torch.zeros(n_layers, rank, d_model))
        elif rank < 0:
            raise LensError(f"tuned lens rank must be null or >= 0, got {rank}")

    def translate(self, v: torch.Tensor, layer: int) -> torch.Tensor:
        """Translator of one layer: v [..., d_model] -> [..., d_model]."""
        if layer >= self.n_layers:
            return v
        out = v + self.bias[layer]
        if self.rank is None:
            out = out + v @ self.A[layer]
        elif self.rank > 0:
            out = out + (v @ self.U[layer]) @ self.V[layer]
        return out

    def translate_all(self, resid: torch.Tensor) -> torch.Tensor:
        """All layers at once: resid [n, L+1, d_model] -> [n, L+1, d_model] (layer L unchanged)."""
        L = self.n_layers
        head, last = resid[:, :L], resid[:, L:]
        out = head + self.bias
        if self.rank is None:
            out = out + torch.einsum("nld,lde->nle", head, self.A)
        elif self.rank > 0:
            out = out + torch.einsum("nlr,lre->nle", torch.einsum("nld,ldr->nlr", head, self.U), self.V)
        return torch.cat([out, last], dim=1)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def metadata(self) -> dict[str, str]:
        return {"n_layers": str(self.n_layers), "d_model": str(self.d_model),
                "rank": "full" if self.rank is None else str(self.rank), "format": "cotmech.tuned_lens/1"}


def save_tuned_lens(path: Any, tl: TunedLens, extra: dict[str, str] | None = None) -> None:
    from .io import save_tensors

    save_tensors(path, tl.state(), metadata={**tl.metadata(), **(extra or {})})


def load_tuned_lens(path: Any) -> TunedLens:
    """Load a translator file written by :func:`save_tuned_lens`; a malformed file raises LensError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise LensError(f"{path}: cannot read tuned lens: {e}") from e
    if meta.get("format") != "cotmech.tuned_lens/1":
        raise LensError(f"{path}: not a cotmech tuned-lens file (metadata {meta})")
    rank = None if meta["rank"] == "full" else int(meta["rank"])
    tl = TunedLens(int(meta["n_layers"]), int(meta["d_model"]), rank)
    tl.load_state_dict(tensors)
    return tl


def _layer_kl(lens: Unembed, tl: TunedLens, resid: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """KL(final ‖ tuned lens_ℓ) per layer 0..L-1, mean over rows: resid [n, L+1, d] -> [L]."""
    L = tl.n_layers
    tr = tl.translate_all(resid.float())[:, :L]
    logq = torch.log_softmax(lens.logits(tr), -1)  # [n, L, vocab]
    return kl_divergence(target_logp.unsqueeze(1).expand_as(logq), logq).mean(0)


@torch.no_grad()
def eval_kl(lens: Unembed, tl: TunedLens, resid: torch.Tensor, chunk: int = 4) -> np.ndarray:
    """Mean KL(final ‖ lens_ℓ) in nats per layer 0..L on ``resid`` [N, L+1, d] (0 at layer L)."""
    tot = torch.zeros(tl.n_layers, dtype=torch.float64)
    dev = lens.device
    for s in range(0, resid.shape[0], chunk):
        r = resid[s:s + chunk].float().to(dev)
        target = torch.log_softmax(lens.logits(r[:, -1]), -1)
        tot += _layer_kl(lens, tl, r, target).double().cpu() * r.shape[0]
    return np.append((tot / resid.shape[0]).numpy(), 0.0)


def train_tuned_lens(lens: Unembed, train: torch.Tensor, val: torch.Tensor | None = None, rank: int | None = 8,
                     steps: int = 100, batch: int = 8, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                     time_limit_s: float | None = None, eval_rows: int | None = None
                     ) -> tuple[TunedLens, dict[str, Any]]:
    """Fit translators on residuals ``train`` [N, L+1, d_model] (Adam, fixed number of steps, seeded).

    Loss per step = mean over layers and a random batch of rows of KL(final ‖ tuned lens_ℓ), where
    final = the logit lens at layer L (the model's own output distribution). ``time_limit_s`` is only a
    safety stop (it makes the result depend on machine speed; the history says whether it fired).
    Returns the lens and a history: per-layer KL of the identity (logit lens) and the tuned lens on
    ``train`` and ``val`` (their first ``eval_rows`` rows; None = all), the loss curve, steps done and wall time.
    Runs on the lens's device (batches move there; ``train``/``val`` stay where they are); the lens returned is
    on the CPU.
    """
    if train.ndim != 3 or train.shape[0] < 1:
        raise LensError(f"tuned lens: training residuals must be [N>0, L+1, d_model], got {tuple(train.shape)}")
    n_layers, d_model = train.shape[1] - 1, train.shape[2]
    torch.manual_seed(seed)
    dev = lens.device
    tl = TunedLens(n_layers, d_model, rank, seed=seed).to(dev)
    gen = torch.Generator().manual_seed(seed)
    ev_train = train[:eval_rows]
    ev_val = val[:eval_rows] if val is not None and len(val) else None
    hist: dict[str, Any] = {"kl_logit_train": eval_kl(lens, tl, ev_train).tolist(), "eval_rows": len(ev_train)}
    if ev_val is not None:
        hist["kl_logit_val"] = eval_kl(lens, tl, ev_val).tolist()
    with torch.no_grad():
        targets = torch.cat([torch.log_softmax(lens.logits(train[s:s + 16, -1].float().to(dev)), -1)
                             for s in range(0, train.shape[0], 16)])  # [N, vocab] on dev
    opt = torch.optim.Adam(tl.parameters(), lr=lr, weight_decay=weight_decay)
    losses, t0, stopped = [], time.time(), False
    for _ in tqdm(range(steps), desc="tuned lens", leave=False):
        idx = torch.randint(0, train.shape[0], (min(batch, train.shape[0]),), generator=gen)
        loss = _layer_kl(lens, tl, train[idx].to(dev), targets[idx.to(dev)]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if time_limit_s is not None and time.time() - t0 > time_limit_s:
            stopped = True
            break
    tl.eval()
    hist.update(loss=losses, steps=len(losses), time_limit_hit=stopped, wall_s=time.time() - t0,
                kl_tuned_train=eval_kl(lens, tl, ev_train).tolist())
    if ev_val is not None:
        hist["kl_tuned_val"] = eval_kl(lens, tl, ev_val).tolist()
    tl = tl.cpu()
    for p in tl.parameters():
        p.requires_grad_(False)
    return tl, hist


# --------------------------------------------------------------------------------------------------
# Residual capture (nnsight)
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def capture_resid(model: Any, seqs: list[list[int]], last_n: int | None = 1, batch_size: int = 4,
                  progress: str | None = None) -> list[torch.Tensor]:
    """Residual stream before the final norm at the last ``last_n`` positions (None = all) of each sequence.

    Returns one float32 CPU tensor [P_i, L+1, d_model] per sequence: index 0 = block 0's input
    (embeddings), index ℓ+1 = block ℓ's output. Sequences are left-padded with a mask (cotmech.batching).
    """
    from .batching import chunks, left_pad

    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out: list[torch.Tensor] = []
    for idx in tqdm(list(chunks(list(range(len(seqs))), batch_size)), desc=progress, disable=progress is None,
                    leave=False):
        batch = left_pad([seqs[i] for i in idx], pad).to(model.device)
        saved: list[Any] = []
        with model.lm.trace(**batch.kwargs()):
            saved.append(model.layer(0).input.save())
            for i in range(model.n_layers):
                saved.append(model.layer(i).output.save())
        hs = torch.stack([s[0] if isinstance(s, tuple) else s for s in saved], dim=2).float().cpu()  # [B, T, L+1, d]
        for j, length in enumerate(batch.lengths):
            n = length if last_n is None else min(last_n, length)
            out.append(hs[j, hs.shape[1] - n:])
    return out
