"""Greedy decoding with a shared-prefix KV cache, batched (used by E1 generation and the E8 horizon).

Every prompt starts with the same few-shot block, so the longest common *token* prefix of all prompts is
run once (:func:`prefill`); its KV cache is copied into each batch (:func:`expand_cache`), whose rows then only
prefill their own test block. Rows are left-padded *between* the shared prefix and their suffix:
``[prefix | pads | suffix]`` with an attention mask that hides the pads and position ids that continue from the
prefix, so every row sees exactly the positions and keys of its own unpadded prompt. Decoding stops per row at
the first token whose text contains a newline, or at EOS; finished rows are dropped from the batch (and its cache).

:func:`greedy_reference` is the naive one-example, no-cache loop of the original code; the tests check
that :func:`greedy_generate` reproduces it token for token.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from .batching import common_prefix_len, left_pad


@dataclass
class Generated:
    """One greedy continuation: token ids (including a newline stop token, excluding EOS) and why it stopped."""

    ids: list[int]
    stop: str  # "newline" | "eos" | "length"


class _Stopper:
    """Per-token stop rule shared by both generators: EOS ends without the token, a newline-containing token
    ends with it."""

    def __init__(self, model: Any) -> None:
        tok = model.tokenizer
        eos: set[int] = set()
        for src in (tok.eos_token_id, getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, (list, tuple)):
                eos.update(int(x) for x in src)
        self.eos = eos
        self._tok = tok
        self._newline: dict[int, bool] = {}

    def __call__(self, token_id: int) -> str | None:
        if token_id in self.eos:
            return "eos"
        nl = self._newline.get(token_id)
        if nl is None:
            nl = self._newline[token_id] = "\n" in self._tok.decode([token_id])
        return "newline" if nl else None


@torch.no_grad()
def greedy_reference(model: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> Generated:
    """Naive greedy decoding: one full forward over the whole sequence per new token, no cache, no batch."""
    stopper = _Stopper(model)
    seq = list(prompt_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        ids = torch.tensor([seq], device=model.device)
        nxt = int(model.hf(input_ids=ids, use_cache=False).logits[0, -1].argmax())
        why = stopper(nxt)
        if why == "eos":
            return Generated(out, "eos")
        out.append(nxt)
        seq.append(nxt)
        if why == "newline":
            return Generated(out, "newline")
    return Generated(out, "length")


@torch.no_grad()
def prefill(model: Any, prefix_ids: Sequence[int]) -> Any:
    """KV cache of a shared prefix (batch 1), or ``None`` for an empty prefix."""
    if not prefix_ids:
        return None
    ids = torch.tensor([list(prefix_ids)], device=model.device)
    return model.hf(input_ids=ids, use_cache=True, logits_to_keep=1).cache


def expand_cache(cache: Any, batch: int) -> Any:
    """A private copy of a batch-1 cache, repeated to ``batch`` rows."""
    from transformers import DynamicCache

    if cache is None:
        return DynamicCache()
    c = copy.deepcopy(cache)
    c.batch_repeat_interleave(batch)
    return c


@torch.no_grad()
def _generate_batch(model: Any, suffixes: list[list[int]], prefix_len: int, prefix_cache: Any,
                    max_new_tokens: int, stopper: _Stopper) -> list[Generated]:
    b = left_pad(suffixes, model.tokenizer.pad_token_id).to(model.device)
    n = len(suffixes)
    cache = expand_cache(prefix_cache, n)
    mask = torch.cat([torch.ones(n, prefix_len, dtype=b.attention_mask.dtype, device=model.device),
                      b.attention_mask], dim=1)  # [n, prefix + width]
    logits = model.hf(input_ids=b.input_ids, attention_mask=mask, position_ids=b.position_ids + prefix_len,
                      cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # [n, vocab]
    next_pos = torch.tensor([prefix_len + L for L in b.lengths], device=model.device)  # [n]
    rows = list(range(n))  # active row -> original row
    out: list[list[int]] = [[] for _ in range(n)]
    stops = ["length"] * n
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1).tolist()  # [active]
        keep = []
        for j, (r, t) in enumerate(zip(rows, nxt)):
            why = stopper(t)
            if why != "eos":
                out[r].append(t)
            if why is None:
                keep.append(j)
            else:
                stops[r] = why
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            idx = torch.tensor(keep, device=model.device)
            cache.batch_select_indices(idx)
            mask, next_pos = mask[idx], next_pos[idx]
            rows = [rows[j] for j in keep]
            nxt = [nxt[j] for j in keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = model.hf(input_ids=torch.tensor(nxt, device=model.device)[:, None], attention_mask=mask,
                          position_ids=next_pos[:, None], cache=cache, use_cache=True).logits[:, -1]
        next_pos = next_pos + 1
    return [Generated(o, s) for o, s in zip(out, stops)]


@torch.no_grad()
def greedy_generate(model: Any, prompts_ids: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int = 8,
                    share_prefix: bool = True, desc: str = "generate") -> list[Generated]:
    """Greedy continuations of many prompts (token-id lists), batched, with the shared prefix cached once."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts_ids):
        raise ValueError("greedy_generate: empty prompt")
    prompts = [list(p) for p in prompts_ids]
    # Keep at least one token per row outside the prefix: the batch forward needs a last position.
    p_len = min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1) if share_prefix and prompts else 0
    cache = prefill(model, prompts[0][:p_len]) if p_len > 0 else None
    stopper = _Stopper(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths -> little padding
    results: list[Generated | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="ex") as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            gens = _generate_batch(model, [prompts[i][p_len:] for i in idx], p_len, cache, max_new_tokens, stopper)
            for i, g in zip(idx, gens):
                results[i] = g
            bar.update(len(idx))
    return results  # type: ignore[return-value]
