"""The one generic head patcher: a single nnsight trace that overwrites per-head activations row by row.

Every patching method of :mod:`cotmech.patching` (naive, exact, AtP, path patching, induction heads) and the
mean-ablation knockout of :mod:`cotmech.circuits` are loops around :func:`run_trace`. A *site* is a per-head activation of one layer:

- ``z``: a head's output, its slice of the attention output projection's input (``hook_z``);
- ``q``, ``k``, ``v``: a head's query / key / value projection output (llama-family only; ``k``/``v`` are
  indexed by key-value head, so with grouped-query attention one k/v unit feeds n_heads/n_kv_heads query heads).

An :class:`Edit` replaces, in batch row r, the units u with ``mask[r, u]`` by ``value[r, :, u]`` at every
position of the traced sequence. :func:`run_trace` can start from a cached residual stream at
``start_layer`` (the layers below are skipped) and extend a shared prefix KV cache (:class:`PrefixCache`),
so only the part of the input after the first clean/corrupt difference is recomputed.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .batching import chunks, common_prefix_len, last_logits, left_pad

log = logging.getLogger(__name__)

SITE_ORDER = ("q", "k", "v", "z")  # order in which a layer computes them (nnsight needs access in order)
_PROJ = {"q": "q_proj", "k": "k_proj", "v": "v_proj"}


@dataclass
class Edit:
    """Overwrite units of one site in one layer: rows r, units u where ``mask[r, u]`` -> ``value[r, :, u]``."""

    site: str  # "z" | "q" | "k" | "v"
    layer: int
    mask: torch.Tensor  # [rows, units] bool
    value: torch.Tensor  # [rows | 1, pos, units, d_head]


@dataclass
class TraceOut:
    logits: torch.Tensor  # [rows, vocab] at the last position (float32; differentiable when grad=True)
    saved: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # (site|"resid", layer) -> tensor
    deltas: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> zero z-offset [rows, pos, H*d_head]


@dataclass
class PrefixCache:
    """Keys and values of a shared prefix, batch 1: per layer [1, n_kv_heads, length, d_head]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int
    ids: torch.Tensor | None = None  # [length] the prefix's tokens (checked when another cache continues this one)

    def dynamic(self, rows: int, hf_config: Any, shared: bool = False) -> Any:
        """A transformers ``DynamicCache`` that serves the prefix to ``rows`` batch rows without storing them.

        Each layer's ``update`` keeps nothing. With ``shared`` it returns the new keys/values alone (the
        attention function :func:`_shared_prefix_attention` reads the prefix from this object); otherwise it
        returns prefix (broadcast to the batch) + new keys/values, so one layer's concatenation
        [rows, n_kv_heads, length + pos, d_head] is alive at a time.
        """
        from transformers import DynamicCache

        cache = self.writable(hf_config)
        layers = getattr(cache, "layers", None)
        if layers is None:  # pragma: no cover - older transformers: materialise per row instead
            cache = DynamicCache(config=hf_config)
            for i, (k, v) in enumerate(zip(self.keys, self.values)):
                cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), i)
            return cache
        for lay in layers:
            lay.update = _read_only_update(lay, shared)
        return cache

    def writable(self, hf_config: Any) -> Any:
        """A plain transformers ``DynamicCache`` holding the prefix (batch 1) that a forward appends to (e.g. to
        continue the prefix with more tokens, :func:`prefix_cache` with ``root``)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=hf_config)
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            cache.update(k, v, i)
        return cache


def _read_only_update(layer: Any, shared: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def update(key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if shared:
            return key_states, value_states
        n = key_states.shape[0]
        return (torch.cat([layer.keys.expand(n, -1, -1, -1), key_states], dim=-2),
                torch.cat([layer.values.expand(n, -1, -1, -1), value_states], dim=-2))
    return update


# --------------------------------------------------------------------------------------------------
# attention over a shared prefix without copying it per batch row
# --------------------------------------------------------------------------------------------------
#: How :func:`run_trace` can attend over a :class:`PrefixCache` (its ``prefix_attention``): ``"shared"`` (one
#: product of every row's queries with the prefix keys, then one float32 softmax over each row's [prefix, causal
#: suffix] scores) or ``"concat"`` (copy the prefix into every row and call the model's own attention). Same numbers
#: up to float rounding. Models that :func:`shared_prefix_supported` rejects always use ``"concat"``.
PREFIX_ATTENTION_MODES = ("shared", "concat")
_SHARED_NAME = "cotmech_shared_prefix"
_active_prefix: list[PrefixCache] = []


def _shared_prefix_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                             **kwargs: Any) -> tuple[torch.Tensor, None]:
    """softmax([q·K_prefix, q·K_suffix]) · [V_prefix; V_suffix] with the prefix shared by all rows.

    query [B, Hq, S, d]; key/value [B, Hkv, S, d] (this call's suffix); the prefix [1, Hkv, P, d] comes from
    the active :class:`PrefixCache`. Query head h reads key/value head h // (Hq / Hkv) (HF's ``repeat_kv``).
    Suffix position s sees the whole prefix and suffix positions <= s (no padding: :func:`run_trace` forbids
    a mask with a prefix cache). Returns ([B, S, Hq, d], None) like the transformers attention functions.
    """
    cache = _active_prefix[-1]
    pk, pv = cache.keys[module.layer_idx], cache.values[module.layer_idx]  # [1, Hkv, P, d]
    B, Hq, S, d = query.shape
    Hkv, P = key.shape[1], pk.shape[-2]
    window = kwargs.get("sliding_window")
    if window is not None and P + S > window:
        raise ValueError(f"shared-prefix attention: sequence of {P + S} tokens exceeds the sliding window {window}")
    g = Hq // Hkv
    scale = scaling if scaling is not None else d ** -0.5
    q = (query * scale).reshape(B, Hkv, g * S, d)  # row j*S + s = query head kv*g + j at suffix position s
    # prefix: one product for all batch rows and grouped heads: [Hkv, B*g*S, d] @ [Hkv, d, P]
    s_pre = torch.matmul(q.transpose(0, 1).reshape(Hkv, B * g * S, d), pk[0].transpose(-1, -2))
    s_pre = s_pre.view(Hkv, B, g * S, P).transpose(0, 1)  # [B, Hkv, gS, P]
    s_suf = torch.matmul(q, key.transpose(-1, -2))  # [B, Hkv, gS, S]
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril().repeat(g, 1)  # [gS, S]
    s_suf = s_suf.masked_fill(~causal, float("-inf"))
    # softmax in float32 over prefix and suffix together, probabilities cast back (as eager attention does)
    w = torch.softmax(torch.cat([s_pre, s_suf], dim=-1), dim=-1, dtype=torch.float32).to(query.dtype)
    o_pre = torch.matmul(w[..., :P].transpose(0, 1).reshape(Hkv, B * g * S, P), pv[0])
    out = o_pre.view(Hkv, B, g * S, d).transpose(0, 1) + torch.matmul(w[..., P:], value)  # [B, Hkv, gS, d]
    return out.view(B, Hkv, g, S, d).reshape(B, Hq, S, d).transpose(1, 2).contiguous(), None


def shared_prefix_supported(model) -> bool:
    """Whether the model's attention can be served by :func:`_shared_prefix_attention`: llama-family blocks
    (q/k/v projections, ``layer_idx``, rotary positions) without logit soft-capping."""
    cfg = model.hf.config
    return (model.arch.layers == "model.layers" and getattr(cfg, "attn_logit_softcapping", None) is None
            and hasattr(getattr(model.hf_layers()[0], model.arch.attn), "layer_idx"))


def _shared_ok(model) -> bool:
    if "_shared_prefix_ok" not in model.info:
        model.info["_shared_prefix_ok"] = shared_prefix_supported(model)
    return model.info["_shared_prefix_ok"]


@contextlib.contextmanager
def _serve_prefix(model, cache: PrefixCache) -> Iterator[None]:
    """Use the shared-prefix attention for ``cache`` during the block; restore the model's own afterwards."""
    from transformers import AttentionInterface

    if _SHARED_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(_SHARED_NAME, _shared_prefix_attention)
    cfg = model.hf.config
    prev = cfg._attn_implementation
    _active_prefix.append(cache)
    cfg._attn_implementation = _SHARED_NAME
    try:
        yield
    finally:
        cfg._attn_implementation = prev
        _active_prefix.pop()


# --------------------------------------------------------------------------------------------------
# model facts
# --------------------------------------------------------------------------------------------------
def n_units(model, site: str) -> int:
    return model.n_kv_heads if site in ("k", "v") else model.n_heads


def _site_envoy(model, site: str, layer: int):
    if site == "z":
        return model.o_proj(layer)
    if model.arch.layers != "model.layers":
        raise ValueError(f"site {site!r} (q/k/v projections) is only supported for llama-family models, "
                         f"not {model.spec!r}")
    return getattr(model.attn(layer), _PROJ[site])


def _site_get(model, site: str, layer: int):
    env = _site_envoy(model, site, layer)
    return env.input if site == "z" else env.output


def _site_set(model, site: str, layer: int, value) -> None:
    env = _site_envoy(model, site, layer)
    if site == "z":
        env.input = value
    else:
        env.output = value


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.hf.forward).parameters
    return "cache" if "cache" in params else "past_key_values"




def layer_returns_tuple(model) -> bool:
    """Whether a decoder block returns a tuple (older transformers / GPT-2) rather than a tensor."""
    key = "_layer_returns_tuple"
    if key not in model.info:
        seen: list[Any] = []
        h = model.hf_layers()[0].register_forward_hook(lambda mod, args, out: seen.append(out))
        try:
            with torch.no_grad():
                model.hf(torch.zeros(1, 1, dtype=torch.long, device=model.device), use_cache=False)
        finally:
            h.remove()
        model.info[key] = isinstance(seen[0], tuple)
    return model.info[key]


def prefix_cache(model, ids: torch.Tensor, root: PrefixCache | None = None) -> PrefixCache | None:
    """KV cache of ``ids`` [pos] (one sequence); ``None`` for an empty prefix. ``root``: the cache of a prefix of
    ``ids`` (e.g. :func:`common_prefix_cache` of many pairs: the few-shot exemplars), continued by a forward of the
    remaining tokens only (the same keys and values up to float rounding)."""
    ids = torch.as_tensor(ids, dtype=torch.long).cpu()
    if ids.numel() == 0:
        return None
    kwargs: dict[str, Any] = {}
    start = 0
    if root is not None:
        if root.ids is None or root.length > ids.numel() or not torch.equal(ids[:root.length], root.ids):
            raise ValueError(f"prefix_cache: root ({root.length} tokens) is not a recorded prefix of the "
                             f"{ids.numel()} tokens to cache")
        if root.length == ids.numel():
            return root
        past = root.writable(model.hf.config)
        start = root.length
        kwargs = {_cache_kwarg(model): past, "attention_mask": torch.ones(1, ids.numel(), dtype=torch.long,
                                                                          device=model.device),
                  "position_ids": torch.arange(start, ids.numel(), device=model.device)[None]}
    with torch.no_grad():
        out = model.hf(input_ids=ids[None, start:].to(model.device), use_cache=True, logits_to_keep=1, **kwargs)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values")
    if hasattr(cache, "layers"):
        keys = [lay.keys for lay in cache.layers]
        vals = [lay.values for lay in cache.layers]
    else:  # pragma: no cover - older transformers
        keys, vals = list(cache.key_cache), list(cache.value_cache)
    return PrefixCache(keys, vals, int(ids.numel()), ids)


def common_prefix_cache(model, seqs: Sequence[torch.Tensor]) -> PrefixCache | None:
    """KV cache of the longest token prefix every sequence of ``seqs`` (1-D token tensors, e.g. each pair's ids
    before its first difference) starts with; ``None`` when they share no token. Continue it per sequence with
    ``prefix_cache(model, seq, root=...)``: the exemplars of a few-shot prompt then run once per sweep."""
    seqs = [torch.as_tensor(x, dtype=torch.long).cpu() for x in seqs]
    if not seqs:
        return None
    return prefix_cache(model, seqs[0][:common_prefix_len(x.tolist() for x in seqs)])


def suffix_last_logits(model, suffixes: Sequence[Sequence[int]], cache: PrefixCache, *,
                       hooks: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
                       prefix_attention: str = "shared") -> torch.Tensor:
    """Plain forward of every ``suffixes[i]`` continuing the ``cache`` prefix; logits at each row's last token,
    float32 [rows, vocab]. Rows are right-padded (pads follow every real token, so causal attention never sees
    them). ``hooks(pos [rows, S], lengths [rows])`` (positions and whole-sequence lengths, prefix included) may
    return a context manager active during the forward (the knockout's mean-ablation hooks). Equals the last-token
    logits of the whole sequences up to float rounding."""
    if prefix_attention not in PREFIX_ATTENTION_MODES:
        raise ValueError(f"prefix_attention {prefix_attention!r}: use one of {', '.join(PREFIX_ATTENTION_MODES)}")
    if not suffixes or min(len(x) for x in suffixes) == 0:
        raise ValueError("suffix_last_logits: every row needs at least one token after the prefix")
    P = cache.length
    shared = prefix_attention == "shared" and _shared_ok(model)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    R, S = len(suffixes), max(len(x) for x in suffixes)
    ids = torch.tensor([list(x) + [pad] * (S - len(x)) for x in suffixes], dtype=torch.long)
    n = torch.tensor([P + len(x) for x in suffixes])
    pos = P + torch.arange(S)[None].expand(R, -1)
    last = [len(x) - 1 for x in suffixes]
    keep = sorted(set(last))
    kwargs = {"input_ids": ids.to(model.device), "position_ids": pos.to(model.device), "use_cache": True,
              "attention_mask": torch.ones(R, P + S, dtype=torch.long, device=model.device),
              "logits_to_keep": torch.tensor(keep, device=model.device),
              _cache_kwarg(model): cache.dynamic(R, model.hf.config, shared=shared)}
    serve = _serve_prefix(model, cache) if shared else contextlib.nullcontext()
    hooked = hooks(pos, n) if hooks is not None else contextlib.nullcontext()
    with torch.no_grad(), serve, hooked:
        logits = model.hf(**kwargs).logits  # [R, len(keep), vocab]
    return logits[torch.arange(R), torch.tensor([keep.index(j) for j in last])].float().cpu()


def prefixed_last_logits(model, seqs: Sequence[Sequence[int]], batch_size: int = 16) -> torch.Tensor:
    """Last-token logits of every sequence, float32 [n, vocab] (input order): the prefix all of them share is run
    once (:func:`prefix_cache`) and the rest of each sequence over it (:func:`suffix_last_logits`, batches of
    similar length). Equals a plain forward of each whole sequence up to float rounding."""
    seqs = [list(s) for s in seqs]
    if not seqs:
        return torch.empty(0, model.vocab_size)
    P = min(common_prefix_len(seqs), min(len(s) for s in seqs) - 1)
    if P <= 0:
        pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        rows = [last_logits(model, left_pad([seqs[i] for i in idx], pad)).cpu()
                for idx in chunks(range(len(seqs)), batch_size)]
        return torch.cat(rows)
    cache = prefix_cache(model, torch.as_tensor(seqs[0][:P], dtype=torch.long))
    return by_length(seqs, batch_size, lambda idx: suffix_last_logits(model, [seqs[i][P:] for i in idx], cache))


def by_length(seqs: Sequence[Sequence[int]], batch_size: int,
              run: Callable[[Sequence[int]], torch.Tensor]) -> torch.Tensor:
    """``run(idx)`` -> rows [len(idx), ...] on batches of indices of similar length (sorted by length, so little
    padding); the rows stacked in input order [len(seqs), ...]."""
    out: torch.Tensor | None = None
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for idx in chunks(order, batch_size):
        rows = run(idx)
        if out is None:
            out = torch.empty(len(seqs), *rows.shape[1:], dtype=rows.dtype)
        out[list(idx)] = rows
    return out


# --------------------------------------------------------------------------------------------------
# the trace
# --------------------------------------------------------------------------------------------------
def run_trace(model, ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
              position_ids: torch.Tensor | None = None, cache: PrefixCache | None = None, start_layer: int = 0,
              start_resid: torch.Tensor | None = None, edits: Sequence[Edit] = (),
              save: Iterable[tuple[str, int]] = (), grad: bool = False,
              prefix_attention: str = "shared") -> TraceOut:
    """One nnsight forward of ``ids`` [rows, pos] with per-head edits; logits at the last position.

    - ``cache``: a shared prefix; ``ids`` then continue it (positions start at ``cache.length``).
    - ``start_layer`` > 0: layers below are skipped and ``start_resid`` [rows | 1, pos, d_model] (the residual
      stream entering ``start_layer``) is used instead; ``start_layer == n_layers`` reads logits off it directly.
    - ``save``: ``(site, layer)`` pairs to return, site in q/k/v/z (as [rows, pos, units, d_head]) or
      ``"resid"`` (block output [rows, pos, d_model]).
    - ``grad``: add a zero offset to every layer's z that requires grad (returned in ``deltas``), for AtP.
    - ``prefix_attention``: how the suffix attends over ``cache`` (:data:`PREFIX_ATTENTION_MODES`).
    """
    if prefix_attention not in PREFIX_ATTENTION_MODES:
        raise ValueError(f"prefix_attention {prefix_attention!r}: use one of {', '.join(PREFIX_ATTENTION_MODES)}")
    R, S = ids.shape
    dev = model.device
    save = set(save)
    kwargs: dict[str, Any] = {"input_ids": ids.to(dev), "logits_to_keep": 1, "use_cache": cache is not None}
    shared = cache is not None and prefix_attention == "shared" and _shared_ok(model)
    if cache is not None:
        kwargs[_cache_kwarg(model)] = cache.dynamic(R, model.hf.config, shared=shared)
        if position_ids is None:
            position_ids = torch.arange(cache.length, cache.length + S, device=dev)[None].expand(R, -1)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids.to(dev)
    if cache is not None:
        if attention_mask is not None:
            raise ValueError("run_trace: attention_mask together with a prefix cache is not supported")
        # explicit mask over prefix + suffix (nnsight would otherwise add a suffix-only mask)
        attention_mask = torch.ones(R, cache.length + S, dtype=torch.long, device=dev)
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(dev)
    if start_layer > 0:
        if start_resid is None:
            raise ValueError("run_trace: start_layer > 0 needs start_resid")
        skip_value = start_resid.to(dev, model.dtype).expand(R, -1, -1)
        if layer_returns_tuple(model):
            skip_value = (skip_value,)
    # every tensor goes to the device before the forward: a host-to-device copy inside it would stall the host
    # until the GPU has caught up (no overlap of kernel launches and kernels)
    by_key: dict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}  # -> [(mask [R,1,U,1], value)]
    for e in edits:
        if e.layer < start_layer:
            raise ValueError(f"edit at layer {e.layer} lies below start_layer {start_layer}")
        by_key.setdefault((e.site, e.layer), []).append((e.mask.to(dev)[:, None, :, None], e.value.to(dev)))
    deltas = {}
    if grad:
        for layer in range(start_layer, model.n_layers):
            deltas[layer] = torch.zeros(R, S, model.n_heads * model.d_head, device=dev, dtype=model.dtype,
                                        requires_grad=True)
    saved: dict[tuple[str, int], Any] = {}
    ctx = torch.enable_grad() if grad else torch.no_grad()
    serve = _serve_prefix(model, cache) if shared else contextlib.nullcontext()
    with ctx, serve, model.lm.trace(**kwargs):
        for layer in range(model.n_layers):
            if layer < start_layer:
                model.layer(layer).skip(skip_value)
                continue
            for site in SITE_ORDER:
                key = (site, layer)
                if key not in by_key and key not in save and not (grad and site == "z"):
                    continue
                U = n_units(model, site)
                cur = _site_get(model, site, layer)
                shape = cur.shape
                new = cur
                if key in by_key:
                    new = cur.reshape(R, S, U, model.d_head)
                    for m, value in by_key[key]:
                        new = torch.where(m, value.to(new.dtype), new)
                    new = new.reshape(shape)
                if grad and site == "z":
                    new = new + deltas[layer]
                if new is not cur:
                    _site_set(model, site, layer, new)
                if key in save:
                    saved[key] = new.reshape(R, S, U, model.d_head).save()
            if ("resid", layer) in save:
                out = model.layer(layer).output
                saved[("resid", layer)] = (out[0] if isinstance(out, tuple) else out).save()
        logits = model.unembed().output.save()
    return TraceOut(logits=logits[:, -1].float(), saved=dict(saved), deltas=deltas)


# --------------------------------------------------------------------------------------------------
# batching with out-of-memory back-off
# --------------------------------------------------------------------------------------------------
def is_oom(err: BaseException) -> bool:
    """CUDA or CPU allocator out-of-memory (also when nnsight re-raises it wrapped)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return any(s in msg for s in ("out of memory", "can't allocate memory", "not enough memory"))


def run_in_batches(fn: Callable[[Sequence[Any]], None], items: Sequence[Any], batch: int) -> int:
    """Call ``fn`` on consecutive chunks of ``items``; on out-of-memory halve the chunk and retry.

    Returns the chunk size that worked last (callers may reuse it for the next pair).
    """
    i = 0
    batch = max(1, int(batch))
    while i < len(items):
        chunk = items[i:i + batch]
        try:
            fn(chunk)
        except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(e) or batch == 1:
                raise
            batch = max(1, batch // 2)
            log.warning("out of memory with %d rows; retrying with %d", len(chunk), batch)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        i += len(chunk)
    return batch
