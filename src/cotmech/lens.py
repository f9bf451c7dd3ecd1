"""Tuned lens over residual-stream vectors (study.md E10; Belrose et al. 2023).

The tuned lens adds a learned affine translator per layer, ``v + v·A_ℓ + b_ℓ`` (A full, low-rank
``U_ℓ V_ℓ``, or absent = bias only), initialised at the identity, trained to minimise
KL(final ‖ lens_ℓ) (:func:`train_tuned_lens`) through the logit lens of :mod:`cotmech.unembed`.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .unembed import LensError, Unembed, kl_divergence


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




def n_heldout(n_examples: int, val_frac: float) -> int:
    """How many of ``n_examples`` examples are held out from tuned-lens training (none of a single example)."""
    return int(round(float(val_frac) * n_examples)) if n_examples > 1 else 0


def tuned_lens_split(groups: Any, val_frac: float, seed: int) -> set[str]:
    """The examples (keys "dataset/example_id") held out from tuned-lens training: a seeded ``val_frac`` share."""
    uniq = np.unique(np.asarray(groups, dtype=str))
    n_val = n_heldout(len(uniq), val_frac)
    rng = np.random.default_rng(seed)
    return set(rng.choice(uniq, n_val, replace=False).tolist()) if n_val else set()


# --------------------------------------------------------------------------------------------------
# Entry point (scripts/train_tuned_lens.py)
# --------------------------------------------------------------------------------------------------
def run(model: Any, resid: torch.Tensor, groups: list[str], cfg: Any, seed: int, *,
        log: Any = None) -> tuple[TunedLens, dict[str, Any]]:
    """Train the tuned lens (study.md E10) on residual rows ``resid`` [N, L+1, d] of the examples ``groups`` (one
    key "dataset/example_id" per row): the translators and the training report (held-out examples, sizes, the
    settings and :func:`train_tuned_lens`'s history).

    ``cfg`` the ``tuned_lens`` config section (:func:`cotmech.config.section`); the examples of
    :func:`tuned_lens_split` are held out (validation rows); the lens trains where the model runs (its GPU, if any).
    """
    import json

    from .unembed import make_unembed

    log = log or (lambda msg: print(msg, flush=True))
    uniq = np.unique(groups)
    val_ex = tuned_lens_split(groups, float(cfg["val_frac"]), seed)
    is_val = torch.tensor([g in val_ex for g in groups])
    lens = make_unembed(model, device=model.device)
    if not lens.fast:
        raise LensError(f"{model.spec}: the final norm is not RMSNorm/LayerNorm-shaped; tuned lens not supported")
    t0 = time.time()
    rank = cfg["rank"]
    tl, hist = train_tuned_lens(lens, resid[~is_val], resid[is_val], rank=rank, steps=int(cfg["steps"]),
                                batch=int(cfg["batch"]), lr=float(cfg["lr"]), seed=seed,
                                time_limit_s=cfg["time_limit_s"], eval_rows=cfg["eval_rows"])
    report = {"n_train": int((~is_val).sum()), "n_val": int(is_val.sum()), "n_examples": int(len(uniq)),
              "n_val_examples": len(val_ex), "heldout_examples": sorted(val_ex),
              "rank": "full" if rank is None else rank, "settings": dict(cfg),
              "data": "residual stream at the predicting positions of the task inputs (one per pair)",
              "note": "trained on few positions: biased towards these inputs, indicative only", **hist}
    kl = {k: float(np.mean(hist[k][:-1])) for k in hist if k.startswith("kl_")}
    log(f"{hist['steps']} steps in {time.time() - t0:.1f} s (time limit hit: {hist['time_limit_hit']}); "
        f"mean KL over layers: {json.dumps(kl)}")
    return tl, report
