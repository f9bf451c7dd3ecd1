"""Reading a model's internals at each input's predicting position, through nnsight (:func:`extract`).

Per input, at the last position: the residual stream before block 0 and after every block (before the final
norm), each layer's attention output (after o_proj), every head's output z (o_proj input, split per head) and
each head's attention row. Full attention matrices are never kept — only the predicting position's row is
gathered inside the trace (the pass runs with eager attention, which returns the weights; the previous
implementation is restored afterwards).

Work is shared twice: the few-shot prefix common to all inputs is run once and its KV cache reused
(as in :mod:`cotmech.decoding`), and an input that is a token prefix of a longer input of the same example
(subtask k's clean input is a prefix of subtask k+1's) is read off the longer input's forward pass at its own
last position — exact under causal attention (:func:`assign_hosts`).

Used by the activations step (:mod:`cotmech.activations`, which writes them per pair) and by the knockout's
builtin writer/copy rankings (:mod:`cotmech.circuits`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from .batching import common_prefix_len, left_pad
from .decoding import expand_cache, prefill
from .models import eager_attention


def assign_hosts(seqs: Sequence[Sequence[int]], groups: Sequence[Any] | None = None) -> list[int]:
    """For each sequence, the index of a sequence (of the same group) it is a token prefix of; hosts host themselves.

    Hosts are the longest sequences first, so every sequence is read off the longest available run.
    """
    groups = list(groups) if groups is not None else [None] * len(seqs)
    host = [-1] * len(seqs)
    by_group: dict[Any, list[int]] = {}
    for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i])):
        s = seqs[i]
        for h in by_group.get(groups[i], []):
            if len(seqs[h]) >= len(s) and list(seqs[h][:len(s)]) == list(s):
                host[i] = h
                break
        else:
            host[i] = i
            by_group.setdefault(groups[i], []).append(i)
    return host


def _hidden(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


@torch.no_grad()
def extract(model: Any, seqs: Sequence[Sequence[int]], groups: Sequence[Any] | None = None, batch_size: int = 8,
            desc: str = "activations") -> dict[str, torch.Tensor]:
    """Activations at the last position of every token sequence (float32).

    Returns ``resid [N, L+1, d_model]``, ``attn_out [N, L, d_model]``, ``z [N, L, H, d_head]`` and
    ``attn [N, L, H, S]`` (the last position's attention row over its own tokens, right-aligned in S = max length,
    zeros on the left). ``groups`` (e.g. example ids) restricts which sequences may share a forward pass.
    """
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("extract: empty input or empty sequence")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seqs = [list(s) for s in seqs]
    n, L, H, dh, dm = len(seqs), model.n_layers, model.n_heads, model.d_head, model.d_model
    S = max(len(s) for s in seqs)
    host = assign_hosts(seqs, groups)
    hosts = sorted({h for h in host}, key=lambda h: len(seqs[h]))
    members: dict[int, list[int]] = {}
    for i, h in enumerate(host):
        members.setdefault(h, []).append(i)
    p_len = max(0, min(common_prefix_len([seqs[h] for h in hosts]), min(len(s) for s in seqs) - 1))
    cache = prefill(model, seqs[hosts[0]][:p_len]) if p_len > 0 else None
    out = {"resid": torch.zeros(n, L + 1, dm), "attn_out": torch.zeros(n, L, dm), "z": torch.zeros(n, L, H, dh),
           "attn": torch.zeros(n, L, H, S)}
    dev = model.device
    with eager_attention(model), tqdm(total=n, desc=desc, unit="seq") as bar:
        for start in range(0, len(hosts), batch_size):
            hb = hosts[start:start + batch_size]
            b = left_pad([seqs[h][p_len:] for h in hb], model.tokenizer.pad_token_id).to(dev)
            mask = torch.cat([torch.ones(len(hb), p_len, dtype=b.attention_mask.dtype, device=dev),
                              b.attention_mask], dim=1)  # [hosts, prefix + width]
            # (pair, batch row, column of its last token in the batch's suffix coordinates)
            picks = [(i, j, b.offset(j) + len(seqs[i]) - 1 - p_len) for j, h in enumerate(hb) for i in members[h]]
            rows = torch.tensor([r for _, r, _ in picks], device=dev)
            cols = torch.tensor([c for _, _, c in picks], device=dev)
            saved: dict[str, list] = {"resid": [], "z": [], "attn_out": [], "attn": []}
            with model.lm.trace(input_ids=b.input_ids, attention_mask=mask, position_ids=b.position_ids + p_len,
                                cache=expand_cache(cache, len(hb)), use_cache=True):
                saved["resid"].append(_hidden(model.layer(0).input)[rows, cols].save())
                for layer in range(L):
                    saved["z"].append(model.o_proj(layer).input[rows, cols].save())
                    saved["attn_out"].append(model.o_proj(layer).output[rows, cols].save())
                    saved["attn"].append(model.attn(layer).output[1][rows, :, cols].save())  # [picks, H, kv]
                    saved["resid"].append(_hidden(model.layer(layer).output)[rows, cols].save())
            idx = torch.tensor([i for i, _, _ in picks])
            out["resid"][idx] = torch.stack([t.float().cpu() for t in saved["resid"]], dim=1)
            out["attn_out"][idx] = torch.stack([t.float().cpu() for t in saved["attn_out"]], dim=1)
            out["z"][idx] = torch.stack([t.float().cpu() for t in saved["z"]], dim=1).reshape(len(picks), L, H, dh)
            rows_kv = torch.stack([t.float().cpu() for t in saved["attn"]], dim=1)  # [picks, L, H, prefix + width]
            for k, (i, j, _) in enumerate(picks):
                m = len(seqs[i])  # keys of pair i: prefix, then its own suffix tokens after the row's pads
                o = p_len + b.offset(j)
                row = torch.cat([rows_kv[k, :, :, :p_len], rows_kv[k, :, :, o:o + m - p_len]], dim=-1)
                out["attn"][i, :, :, S - m:] = row
            bar.update(len(picks))
    return out
