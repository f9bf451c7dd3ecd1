"""Batching token sequences of different lengths: left padding *with* an attention mask and position ids.

The original code left-padded with BOS and no mask (pads were attended and RoPE positions shifted);
here pads are masked out and every sequence's positions start at 0, so a padded row gives the same
last-position logits as the unpadded sequence (tested).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq], 0 on left pads
    position_ids: torch.Tensor  # [batch, seq]
    lengths: list[int]  # unpadded lengths

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                     self.lengths)

    def kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for an HF forward / nnsight trace."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def offset(self, i: int) -> int:
        """Number of left pads of row i: token j of sequence i sits at column offset(i) + j."""
        return self.input_ids.shape[1] - self.lengths[i]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Left-pad token-id lists into one :class:`Batch` (last position of every row = last real token)."""
    if not seqs:
        raise ValueError("left_pad: empty batch")
    lengths = [len(s) for s in seqs]
    width = max(lengths)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(ids, mask, pos, lengths)


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most ``size`` items."""
    if size < 1:
        raise ValueError("chunk size must be >= 1")
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def last_logits(model, batch: Batch) -> torch.Tensor:
    """Plain forward; logits at each row's last position, float32: [batch, vocab]."""
    b = batch.to(model.device)
    out = model.hf(**b.kwargs(), use_cache=False, logits_to_keep=1)
    return out.logits[:, -1].float()


def common_prefix_len(seqs: Iterable[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence (0 for none)."""
    seqs = list(seqs)
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n
