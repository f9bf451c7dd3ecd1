"""Patching metrics at the predicting position, and their normalisation to a head score.

A metric maps last-position logits ``[rows, vocab]`` of one pair to a value per row where *higher means
closer to the clean behaviour*. Every metric is normalised the same way (study.md §5):

    score = (m_patched - m_base) / (m_source - m_base)

Denoising (clean activations into the corrupted run): base = corrupt, source = clean, so 1 = full
recovery, 0 = none. Noising (corrupt activations into the clean run): base = clean, source = corrupt, so
1 = the head alone does all the damage of the corruption. Scores may leave [0, 1].

- ``kl`` (the paper's): m = -KL(P_clean || P); with denoising the score is (KL_noise - KL_patched) / KL_noise.
- ``logit_diff``: m = logit[answer] - logit[corrupt_answer] (TransformerLens' normalised logit difference).
- ``prob``: m = P(answer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class PairRef:
    """What a metric needs to know about one pair."""

    clean_logprobs: torch.Tensor  # [vocab] float32, log P_clean at the predicting position
    answer_id: int
    corrupt_answer_id: int


MetricFn = Callable[[torch.Tensor, PairRef], torch.Tensor]  # logits [rows, vocab] -> [rows]


def kl_metric(logits: torch.Tensor, ref: PairRef) -> torch.Tensor:
    """-KL(P_clean || P) per row (0 for the clean run; differentiable)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    lpc = ref.clean_logprobs.to(logp.device)
    return -(lpc.exp() * (lpc - logp)).sum(-1)


def logit_diff_metric(logits: torch.Tensor, ref: PairRef) -> torch.Tensor:
    """logit[answer] - logit[corrupt answer] per row."""
    lg = logits.float()
    return lg[:, ref.answer_id] - lg[:, ref.corrupt_answer_id]


def prob_metric(logits: torch.Tensor, ref: PairRef) -> torch.Tensor:
    """Probability of the clean answer token per row."""
    return torch.softmax(logits.float(), dim=-1)[:, ref.answer_id]


METRICS: dict[str, MetricFn] = {"kl": kl_metric, "logit_diff": logit_diff_metric, "prob": prob_metric}


def get_metric(name: str | MetricFn) -> MetricFn:
    if callable(name):
        return name
    if name not in METRICS:
        raise ValueError(f"unknown patching metric {name!r}; use one of {', '.join(METRICS)}")
    return METRICS[name]
