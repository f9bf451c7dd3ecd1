"""Mean ablation's shared pieces: the knockout (study.md E6/E7, :mod:`cotmech.circuits`) and the pruned trace
(E9, :mod:`cotmech.flow`) use the same reference means, the same seeded reference samples and the same kept-head
sets.

- :class:`HeadMeans` / :func:`head_means`: mean z of every head over reference runs, end-aligned and, over the
  shared few-shot prefix, start-aligned (the alignment is explained in :mod:`cotmech.circuits`);
- :func:`alignment_prefix`: the length of that shared prefix (config ``circuits.mean_alignment``);
- :func:`sample_pairs`: a seeded sample of at most n pairs (sorted by pair id first);
- :func:`circuit_sets`: the kept heads per (subtask, ranking) at the operating point of a knockout heads table.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .batching import Batch, chunks, common_prefix_len, left_pad
from .tracing import prefix_cache, run_trace, suffix_last_logits

Head = tuple[int, int]


# --------------------------------------------------------------------------------------------------
# Reference means
# --------------------------------------------------------------------------------------------------
@dataclass
class HeadMeans:
    """Mean head outputs over reference runs, aligned from the end of the sequence and, over the first
    ``prefix_len`` positions (the few-shot prefix shared by every clean input), from the start (module docstring).
    """

    by_end: torch.Tensor  # [n_layers, P, n_heads*d_head] float32; [:, j] = mean at the j-th position from the end
    count: torch.Tensor  # [P] number of references that reach position j from the end
    overall: torch.Tensor  # [n_layers, n_heads*d_head] mean over every reference token (fallback)
    prefix_len: int = 0  # positions p < prefix_len use by_start (0: end-aligned everywhere, the old alignment)
    by_start: torch.Tensor | None = None  # [n_layers, prefix_len, n_heads*d_head]; [:, p] = mean at position p
    count_start: torch.Tensor | None = None  # [prefix_len] number of references that reach position p

    def replacement(self, layer: int, width: int) -> torch.Tensor:
        """End-aligned mean z for a left-padded batch of ``width`` columns: [width, n_heads*d_head] (same for
        every row; the whole replacement when ``prefix_len`` is 0, else see :meth:`values_at`)."""
        j = torch.arange(width - 1, -1, -1)  # column c is position width-1-c from the end
        jj = j.clamp(max=self.by_end.shape[1] - 1)
        use = (j < self.by_end.shape[1]) & (self.count[jj] > 0)
        return torch.where(use[:, None], self.by_end[layer, jj], self.overall[layer][None])

    def values_at(self, layer: int, pos: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean z at absolute positions ``pos`` [rows, S] of sequences of ``lengths`` [rows]: [rows, S, dim].

        Position p < ``prefix_len`` takes the start-aligned mean at p; any other position the end-aligned mean
        at j = length − 1 − p; the overall mean where no reference reaches. Positions outside 0 … length−1
        (pads) get some value (pads are never attended to)."""
        j = lengths[:, None] - 1 - pos
        ne = self.by_end.shape[1]
        jj = j.clamp(0, ne - 1)
        use = (j >= 0) & (j < ne) & (self.count[jj] > 0)
        out = torch.where(use[..., None], self.by_end[layer][jj], self.overall[layer])
        if self.prefix_len > 0:
            pp = pos.clamp(0, self.prefix_len - 1)
            start = (pos >= 0) & (pos < self.prefix_len)
            val = torch.where((self.count_start[pp] > 0)[..., None], self.by_start[layer][pp], self.overall[layer])
            out = torch.where(start[..., None], val, out)
        return out

    def left_padded(self, layer: int, lengths: Sequence[int], width: int) -> torch.Tensor:
        """Mean z for a left-padded batch of rows of ``lengths``: [rows, width, dim]."""
        n = torch.as_tensor(list(lengths))
        pos = torch.arange(width)[None] - (width - n)[:, None]
        return self.values_at(layer, pos, n)


def _z_all_layers(model, batch: Batch) -> list[torch.Tensor]:
    """One forward saving every layer's o_proj input: n_layers × [batch, seq, n_heads*d_head] (float32, CPU)."""
    out = run_trace(model, batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    save=[("z", layer) for layer in range(model.n_layers)])
    return [out.saved[("z", layer)].float().cpu().flatten(2) for layer in range(model.n_layers)]


@contextlib.contextmanager
def _recording_z(model, store: dict[int, torch.Tensor]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward pre-hooks on every o_proj that record its input z into ``store[layer]`` [rows, pos,
    n_heads*d_head] (float32, CPU) during the forwards inside the block."""
    handles = []
    try:
        for layer in range(model.n_layers):
            def pre(mod, args, layer=layer):
                store[layer] = args[0].detach().float().cpu()
            handles.append(model.hf_o_proj(layer).register_forward_pre_hook(pre))
        yield store
    finally:
        for h in handles:
            h.remove()


def _z_over_prefix(model, seqs: Sequence[Sequence[int]], Q: int, z_prefix: list[torch.Tensor], cache) -> list[
        torch.Tensor]:
    """Every layer's z of the whole ``seqs`` (which share their first ``Q`` tokens), left-padded to the longest as
    :func:`_z_all_layers` returns it: n_layers × [batch, width, n_heads*d_head]. The shared tokens' z
    (``z_prefix``: n_layers × [Q, dim], recorded while ``cache`` was built) is the same for every sequence; each
    sequence's rest runs over ``cache`` (:func:`cotmech.tracing.suffix_last_logits`)."""
    store: dict[int, torch.Tensor] = {}
    suffix_last_logits(model, [list(s[Q:]) for s in seqs], cache, hooks=lambda pos, n: _recording_z(model, store))
    lengths = [len(s) for s in seqs]
    width = max(lengths)
    out = []
    for layer in range(model.n_layers):
        z = torch.zeros(len(seqs), width, z_prefix[layer].shape[-1])
        for r, n in enumerate(lengths):
            z[r, width - n:width - n + Q] = z_prefix[layer]
            z[r, width - n + Q:] = store[layer][r, :n - Q]
        out.append(z)
    return out


#: how sequences that share a prefix run (head_means here, the knockout's ablated evaluation in circuits):
#: ``full`` every whole sequence; ``cached`` / ``auto`` the shared tokens once, each rest over their KV cache
METHODS = ("auto", "full", "cached")


def head_means(model, seqs: Sequence[Sequence[int]], batch_size: int = 8, progress: bool = False,
               prefix_len: int = 0, method: str = "auto") -> HeadMeans:
    """Mean z of every head over the reference token sequences (pads excluded): end-aligned, and start-aligned
    over the first ``prefix_len`` positions (module docstring; 0 = end-aligned everywhere).

    ``method``: ``full`` runs every whole sequence; ``auto`` / ``cached`` run the tokens every reference shares
    (the few-shot exemplars) once and each reference's rest over their KV cache (:func:`_z_over_prefix`; equal up
    to float rounding), ``full`` where they share none."""
    if not seqs:
        raise ValueError("head_means: the reference set is empty")
    if method not in METHODS:
        raise ValueError(f"head_means: method must be one of {METHODS}, got {method!r}")
    Q = 0 if method == "full" else max(0, min(common_prefix_len(seqs), min(len(s) for s in seqs) - 1))
    if Q > 0:
        store: dict[int, torch.Tensor] = {}
        with _recording_z(model, store):
            cache = prefix_cache(model, torch.as_tensor(list(seqs[0][:Q]), dtype=torch.long))
        z_prefix = [store[layer][0] for layer in range(model.n_layers)]  # [Q, dim] each
    width_max = max(len(s) for s in seqs)
    dim = model.n_heads * model.d_head
    sums = torch.zeros(model.n_layers, width_max, dim)
    count = torch.zeros(width_max)
    P = int(prefix_len)
    sums_start = torch.zeros(model.n_layers, P, dim)
    count_start = torch.zeros(P)
    total = torch.zeros(model.n_layers, dim)
    n_tok = 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for idx in tqdm(list(chunks(order, batch_size)), desc="reference means", disable=not progress):
        batch = left_pad([seqs[i] for i in idx], model.tokenizer.pad_token_id)
        width = batch.input_ids.shape[1]
        mask_rev = batch.attention_mask.flip(1).float()  # [batch, width]; column j = position j from the end
        zs = (_z_over_prefix(model, [seqs[i] for i in idx], Q, z_prefix, cache) if Q > 0
              else _z_all_layers(model, batch))
        lengths = [len(seqs[i]) for i in idx]
        for layer, z in enumerate(zs):
            z_rev = z.flip(1) * mask_rev[..., None]
            sums[layer, :width] += z_rev.sum(0)
            total[layer] += z_rev.sum((0, 1))
            for r, n in enumerate(lengths):
                m = min(n, P)
                sums_start[layer, :m] += z[r, width - n:width - n + m]
        for n in lengths:
            count_start[:min(n, P)] += 1
        count[:width] += mask_rev.sum(0)
        n_tok += int(batch.attention_mask.sum())
    by_end = sums / count.clamp(min=1)[None, :, None]
    by_start = sums_start / count_start.clamp(min=1)[None, :, None]
    return HeadMeans(by_end=by_end, count=count, overall=total / n_tok, prefix_len=P, by_start=by_start,
                     count_start=count_start)


#: reference-mean alignments: ``segment`` (start-aligned over the few-shot prefix every clean input shares,
#: end-aligned after it) or ``end`` (end-aligned everywhere, the earlier alignment)
ALIGNMENTS = ("segment", "end")


def alignment_prefix(clean: Sequence[dict], mean_alignment: str) -> int:
    """Length of the start-aligned segment: the token prefix shared by every clean input of the dataset (every
    subtask, so the boundary does not depend on the sampled examples) for ``segment``, 0 for ``end``."""
    if mean_alignment not in ALIGNMENTS:
        raise ValueError(f"circuits.mean_alignment must be one of {ALIGNMENTS}, got {mean_alignment!r}")
    return common_prefix_len(p["clean_ids"] for p in clean) if mean_alignment == "segment" else 0


#: held-out knockout scopes (:data:`cotmech.circuits.SCOPES`), most preferred first
HELDOUT_PREFERENCE = ("rank_split", "other_data", "all_pairs")


def sample_pairs(pairs: list[dict], n: int | None, rng: np.random.Generator) -> list[dict]:
    """The pairs sorted by pair id; if more than ``n``, a sample of ``n`` of them drawn with ``rng`` (order kept)."""
    pairs = sorted(pairs, key=lambda p: p["pair_id"])
    if n is not None and len(pairs) > n:
        keep = sorted(rng.choice(len(pairs), size=n, replace=False))
        pairs = [pairs[i] for i in keep]
    return pairs


def circuit_sets(heads: pd.DataFrame, prefer: Sequence[str] = HELDOUT_PREFERENCE) -> dict[tuple, set[Head]]:
    """Kept-head set per (subtask, ranking) at the operating point, using the first available scope in ``prefer``."""
    out: dict[tuple, set[Head]] = {}
    for (k, name), df in heads.groupby(["subtask", "ranking"]):
        for scope in prefer:
            d = df[df["scope"] == scope]
            if len(d):
                out[(int(k), str(name))] = {(int(l), int(h)) for l, h in zip(d["layer"][d["kept"]], d["head"][d["kept"]])}
                break
    return out
