"""Information-flow tracing of answer-writer pathways (study.md E9), the data behind E9a–c and the rift (E10).

For a start token ``t`` at position ``pos`` (the answer token at the predicting position of a clean pair input):

- **Stage I (writers)**: every *important* head in layers below the current one is scored by
  ``softmax(W_U · norm_final(z_h[pos] W_O,h))[t]``, the probability its own output alone gives ``t`` — computed only
  at the traced position (the per-head log-normaliser over the vocabulary is cached per position); keep the top ``l``.
- **Stage II**: in that head's attention row at ``pos``, keep the top ``k`` key positions above the row median.
- **Stage III**: logit lens of the block input (resid_pre) at that head's layer and key position; keep the top ``p``
  tokens above the median; each becomes the new ``t`` for Stage I at the key position, in lower layers only.

``l, k, p`` shrink by ``decay`` per depth (minimum 1); a branch ends at a head in layer 0. One nnsight forward per
input captures what the recursion needs (z, resid_pre, attention patterns of every layer, the argmax next token).

Model state (study.md E9). The paper traces the **pruned circuit** of the subtask: every head outside the circuit
(the knockout operating point, E6) is mean-ablated at every position — its z replaced by the reference means of
:func:`cotmech.ablation.head_means`, aligned as in the knockout (``circuits.mean_alignment``) — and the search
starts from that pruned model's argmax next token and visits only circuit heads (:class:`Circuit`, :func:`trace_example` with ``circuit``). The
unablated model (every head eligible, or the top heads of a ranking) is kept as an option; there all subtasks of an
example whose clean inputs are prefixes of the longest one share one forward (causal model: same activations), and
those with the same important heads are traced together.

The search runs one depth level at a time (over all traces of a forward): every full-vocabulary product a level
needs (normalisers, lens) is issued in a few large matmuls instead of one per position or read — each reads the
whole unembedding. The result is that of the one-call-at-a-time search (same nodes, order and tokens) up to the
last float32 bits of the probabilities: a BLAS product of many rows need not round like a product of one.

Deviation (documented): ``skip_first`` ignores key position 0 in Stage II — it is an attention sink in models without
BOS (Qwen2.5) and would otherwise absorb most traces.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .ablation import alignment_prefix, circuit_sets, head_means, sample_pairs
from .models import eager_attention
from .stats import bootstrap_weights, first_crossing, percentile_interval, wilson

PARTS = ("fewshot", "question", "generated")
START_TOKENS = ("argmax", "answer")


@dataclass(frozen=True)
class FlowConfig:
    """Search hyper-parameters (study.md E9: l=4, k=1, p=1, each reduced by 1 per depth, min 1)."""

    l: int = 4  # noqa: E741 - the paper's name
    k: int = 1
    p: int = 1
    decay: int = 1
    max_depth: int = 32
    skip_first: bool = True
    min_prob: float = 0.0
    prefilter: int | None = None  # normalisers only for the top-M heads by raw logit (None = exact)
    start: str = "argmax"  # start token: the (pruned) model's argmax next token (paper) or the gold "answer"

    def __post_init__(self) -> None:
        for name in ("l", "k", "p"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"flow: {name} must be >= 1, got {getattr(self, name)}")
        if self.start not in START_TOKENS:
            raise ValueError(f"flow: start must be one of {START_TOKENS}, got {self.start!r}")
        if self.decay < 0 or self.max_depth < 0:
            raise ValueError("flow: decay and max_depth must be >= 0")

    def at_depth(self, depth: int) -> tuple[int, int, int]:
        r = depth * self.decay
        return max(1, self.l - r), max(1, self.k - r), max(1, self.p - r)


@dataclass
class Acts:
    """Activations of one clean input (batch 1)."""

    ids: list[int]  # [S]
    z: torch.Tensor  # [L, S, H, d_head] per-head o_proj input
    resid: torch.Tensor  # [L, S, d_model] block input (resid_pre)
    attn: torch.Tensor  # [L, H, S, S] attention probabilities
    argmax: torch.Tensor | None = None  # [S] argmax next token at every position (of the model as run)


@dataclass
class Circuit:
    """A pruned model state (study.md E6/E9): the ``kept`` heads [L, H] bool run normally, every other head's z is
    replaced at every position by its reference mean (``means``, end-aligned as in the knockout)."""

    kept: torch.Tensor  # [L, H] bool
    means: Any  # cotmech.ablation.HeadMeans
    note: str = ""


@torch.no_grad()
def capture(model: Any, ids: Sequence[int], circuit: Circuit | None = None) -> Acts:
    """One nnsight forward over ``ids`` saving z, resid_pre, attention patterns of every layer and the argmax next
    token at every position. With ``circuit`` the heads outside ``circuit.kept`` are mean-ablated (their saved z is
    the mean that replaced them, and everything downstream sees the pruned model)."""
    L, H, dh = model.n_layers, model.n_heads, model.d_head
    S = len(ids)
    x = torch.tensor([list(ids)], device=model.device)
    edits: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (mask [1, S, H*dh], value [1, S, H*dh])
    if circuit is not None:
        if tuple(circuit.kept.shape) != (L, H):
            raise ValueError(f"circuit mask has shape {tuple(circuit.kept.shape)}, expected {(L, H)}")
        for i in range(L):
            removed = ~circuit.kept[i].bool().cpu()
            if removed.any():
                mask = removed.repeat_interleave(dh)[None, None].expand(1, S, H * dh)
                value = circuit.means.left_padded(i, [S], S)  # [1, S, H*dh]
                edits[i] = (mask.to(model.device), value.to(model.device, model.dtype))
    saved: list[tuple[Any, Any, Any]] = []
    with eager_attention(model), model.lm.trace(x):
        for i in range(L):  # nnsight 0.8 needs accesses in execution order
            r = model.layer(i).input.save()
            if i in edits:
                mask, value = edits[i]
                new = torch.where(mask, value, model.o_proj(i).input)
                model.o_proj(i).input = new
                z = new.save()
            else:
                z = model.o_proj(i).input.save()
            a = model.attn(i).output[1].save()
            saved.append((r, z, a))
        top = model.unembed().output[0].argmax(-1).save()
    resid = torch.stack([r[0] for r, _, _ in saved]).cpu()  # [L, S, D]
    z = torch.stack([z[0].reshape(S, H, dh) for _, z, _ in saved]).cpu()  # [L, S, H, dh]
    attn = torch.stack([a[0] for _, _, a in saved]).cpu()  # [L, H, S, S]
    return Acts(list(ids), z, resid, attn, top.cpu())


CHUNK_BYTES = 256 << 20  # one unembedding matmul's [rows, vocab] float32 output stays under this


class WriterScorer:
    """Stage I scores ``softmax(W_U norm(z_h W_O))[t]`` at one position for all heads, with cached normalisers,
    and the Stage III logit lens.

    ``prefilter=M`` computes the (expensive, full-vocabulary) normaliser only for the M eligible heads with the
    largest raw logit of ``t`` (the normed outputs all have the same RMS, so raw logits are comparable); others get
    NaN. ``None`` = exact over every eligible head.

    Every full-vocabulary product reads the whole unembedding, so :meth:`prefetch` and :meth:`lens_top` take many
    requests at once and issue one matmul per ``chunk`` rows (default: as many rows as keep a [rows, vocab] float32
    block under :data:`CHUNK_BYTES`). Counters: ``n_lse`` normaliser rows, ``n_lens`` lens rows, ``n_matmuls``
    unembedding matmuls.
    """

    def __init__(self, model: Any, acts: Acts, important: torch.Tensor | None = None, chunk: int | None = None,
                 prefilter: int | None = None) -> None:
        L, H = model.n_layers, model.n_heads
        self.model, self.acts, self.prefilter = model, acts, prefilter
        self.important = torch.ones(L, H, dtype=torch.bool) if important is None else important.bool().cpu()
        if tuple(self.important.shape) != (L, H):
            raise ValueError(f"important-head mask has shape {tuple(self.important.shape)}, expected {(L, H)}")
        self.w_o = torch.stack([model.w_o(i).detach().cpu() for i in range(L)])  # [L, H, dh, D]
        unembed = model.hf_unembed()
        # the full-vocabulary products run where the model is (its GPU, if any); results come back to the CPU
        self.w_u = unembed.weight.detach()  # [V, D] on the model's device
        self.b_u = None if getattr(unembed, "bias", None) is None else unembed.bias.detach().float()  # [V]
        self.chunk = int(chunk) if chunk else max(1, CHUNK_BYTES // (4 * self.w_u.shape[0]))
        self._normed: dict[int, torch.Tensor] = {}  # pos -> [L, H, D]
        self._lse: dict[int, torch.Tensor] = {}  # pos -> [L, H], NaN = not computed yet
        self._tops: dict[tuple[int, int, int], list[tuple[int, float]]] = {}  # (layer, pos, p) -> lens top-p
        self.n_lse = 0  # normalisers computed (cost counter)
        self.n_lens = 0  # lens distributions computed
        self.n_matmuls = 0  # full-vocabulary matmuls issued

    @torch.no_grad()
    def _normed_at(self, pos: int) -> torch.Tensor:
        if pos not in self._normed:
            out = torch.einsum("lhd,lhdm->lhm", self.acts.z[:, pos].to(self.w_o.dtype), self.w_o)  # [L, H, D]
            norm = self.model.hf_final_norm()
            self._normed[pos] = norm(out.to(self.model.device, self.model.dtype)).cpu()
            self._lse[pos] = torch.full(out.shape[:2], math.nan)
        return self._normed[pos]

    @torch.no_grad()
    def _fill_lse(self, want: Sequence[tuple[int, int]]) -> None:
        """Log-normalisers of the (pos, flat head index) pairs ``want`` (positions already normed), ``chunk`` rows
        per matmul, rows of several positions sharing one."""
        for c in range(0, len(want), self.chunk):
            sel = want[c:c + self.chunk]
            groups: dict[int, list[int]] = {}
            for q, h in sel:
                groups.setdefault(q, []).append(h)
            x = torch.cat([self._normed[q].reshape(-1, self._normed[q].shape[-1])[hs] for q, hs in groups.items()])
            logits = (x.to(self.w_u.device, self.w_u.dtype) @ self.w_u.T).float()  # [rows, V]
            if self.b_u is not None:
                logits = logits + self.b_u
            lse = torch.logsumexp(logits, dim=-1).cpu()
            del logits
            i = 0
            for q, hs in groups.items():
                self._lse[q].view(-1)[hs] = lse[i:i + len(hs)]
                i += len(hs)
            self.n_lse += len(sel)
            self.n_matmuls += 1

    @torch.no_grad()
    def _ensure_lse(self, pos: int, heads: torch.Tensor) -> torch.Tensor:
        """Log-normalisers [L, H] at ``pos``, computed for the flat head indices ``heads`` if missing."""
        self._normed_at(pos)
        lse = self._lse[pos].reshape(-1)
        self._fill_lse([(pos, h) for h in heads[torch.isnan(lse[heads])].tolist()])
        return self._lse[pos]

    @torch.no_grad()
    def _candidates(self, pos: int, token: int, below: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw logits of ``token`` [L, H] at ``pos`` and the flat indices of the heads that get a probability."""
        normed = self._normed_at(pos)
        logit = normed.float() @ self.w_u[token].float().cpu()  # [L, H]
        if self.b_u is not None:
            logit = logit + float(self.b_u[token])
        eligible = self.important.clone()
        eligible[below:] = False
        cand = torch.nonzero(eligible.reshape(-1)).flatten()
        if self.prefilter is not None and len(cand) > self.prefilter:
            cand = cand[torch.topk(logit.reshape(-1)[cand], self.prefilter).indices]
        return logit, cand

    @torch.no_grad()
    def prefetch(self, requests: Iterable[tuple[int, int, int]]) -> None:
        """Compute, all at once, the normalisers that ``probs(pos, token, below)`` needs for each request."""
        want: dict[tuple[int, int], None] = {}
        for pos, token, below in requests:
            _, cand = self._candidates(pos, token, below)
            lse = self._lse[pos].reshape(-1)
            want.update(dict.fromkeys((pos, h) for h in cand[torch.isnan(lse[cand])].tolist()))
        self._fill_lse(list(want))

    @torch.no_grad()
    def probs(self, pos: int, token: int, below: int) -> torch.Tensor:
        """P(token) from each head's own output at ``pos``: [L, H]; NaN for unimportant heads, layers >= below
        and (with ``prefilter``) heads outside the pre-selection."""
        logit, cand = self._candidates(pos, token, below)
        lse = self._ensure_lse(pos, cand)
        p = torch.full_like(logit, math.nan).reshape(-1)
        p[cand] = torch.exp(logit.reshape(-1)[cand] - lse.reshape(-1)[cand])
        return p.reshape(logit.shape)

    @torch.no_grad()
    def _lens_rows(self, keys: Sequence[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], torch.Tensor]]:
        """Logit-lens distributions of resid_pre at the (layer, pos) ``keys``, ``chunk`` rows per matmul."""
        for c in range(0, len(keys), self.chunk):
            sel = keys[c:c + self.chunk]
            x = self.acts.resid[[k[0] for k in sel], [k[1] for k in sel]]  # [rows, D]
            dist = torch.softmax(self.model.logits_from_resid(x.to(self.model.device)).float().cpu(), dim=-1)
            self.n_lens += len(sel)
            self.n_matmuls += 1
            yield from zip(sel, dist)

    @torch.no_grad()
    def lens(self, layer: int, pos: int) -> torch.Tensor:
        """Logit-lens distribution of resid_pre of ``layer`` at ``pos``: [V] float32."""
        return next(self._lens_rows([(layer, pos)]))[1]

    @torch.no_grad()
    def lens_top(self, requests: Sequence[tuple[int, int, int]]) -> list[list[tuple[int, float]]]:
        """For each (layer, pos, p): the top ``p`` lens tokens above the median, ``[(token, prob)]``. Distributions
        missing from the (small) result cache are computed together."""
        need: dict[tuple[int, int], set[int]] = {}
        for layer, pos, p in requests:
            if (layer, pos, p) not in self._tops:
                need.setdefault((layer, pos), set()).add(p)
        for (layer, pos), dist in self._lens_rows(list(need)):
            for p in need[(layer, pos)]:
                self._tops[(layer, pos, p)] = _above_median_top(dist, p)
        return [self._tops[r] for r in requests]


def _above_median_top(values: torch.Tensor, n: int, exclude: Sequence[int] = ()) -> list[tuple[int, float]]:
    """Indices of the top ``n`` entries strictly above the median of ``values`` (minus ``exclude``)."""
    v = values.float().clone()
    med = float(v.median())
    for e in exclude:
        if 0 <= e < len(v):
            v[e] = -math.inf
    vals, idx = torch.topk(v, min(n, len(v)))
    return [(int(i), float(x)) for x, i in zip(vals, idx) if x > med]


def trace(scorer: WriterScorer, pos: int, token: int, cfg: FlowConfig, decode: Any = None) -> list[dict]:
    """Recursive Stage I–III search from ``token`` at ``pos``; returns the nodes (traced heads), parents first.

    Node: ``{id, parent, depth, layer, head, pos, token, text, prob, reads: [{pos, attn, tokens: [{id, text, prob}]}]}``
    where ``token`` is the token the head is found to write at ``pos`` (the carried token). Nodes are numbered
    depth by depth, each depth in the order of its frontier. See :func:`trace_many` for how it is computed.
    """
    return trace_many(scorer, [(pos, token)], cfg, decode)[0]


def trace_many(scorer: WriterScorer, starts: Sequence[tuple[int, int]], cfg: FlowConfig,
               decode: Any = None) -> list[list[dict]]:
    """:func:`trace` from each (pos, token) of ``starts`` (same scorer), computed together; one node list each,
    the same as tracing them one by one.

    One depth at a time over all traces: first the normalisers every frontier entry needs
    (:meth:`WriterScorer.prefetch`), then the nodes and reads in frontier order, then the lens distributions of all
    reads (:meth:`WriterScorer.lens_top`), whose top tokens form the next frontier in the same order. So each
    full-vocabulary product is batched over a whole depth level instead of issued per position or read.
    """
    acts = scorer.acts
    L = acts.z.shape[0]
    decode = decode or (lambda t: str(t))
    out: list[list[dict]] = [[] for _ in starts]
    frontiers = [[(pos, token, L, -1, 0)] for pos, token in starts]
    while any(frontiers):
        live = [[f for f in fr if f[2] > 0 and f[4] <= cfg.max_depth] for fr in frontiers]
        scorer.prefetch([(q_pos, t, below) for fr in live for q_pos, t, below, _, _ in fr])
        pending: list[tuple[int, dict, int, int, int, int, int]] = []  # (trace, read, layer, pos, p, node, depth)
        for j, fr in enumerate(live):
            nodes = out[j]
            for q_pos, t, below, parent, depth in fr:
                l_d, k_d, p_d = cfg.at_depth(depth)
                pr = scorer.probs(q_pos, t, below)  # [L, H]
                flat = torch.nan_to_num(pr, nan=-1.0).reshape(-1)
                vals, idx = torch.topk(flat, min(l_d, flat.numel()))
                for val, i in zip(vals.tolist(), idx.tolist()):
                    if val < 0 or val < cfg.min_prob:
                        continue
                    layer, head = divmod(i, pr.shape[1])
                    node = {"id": len(nodes), "parent": parent, "depth": depth, "layer": layer, "head": head,
                            "pos": q_pos, "token": int(t), "text": decode(t), "prob": float(val), "reads": []}
                    nodes.append(node)
                    row = acts.attn[layer, head, q_pos, :q_pos + 1]  # [q_pos+1]
                    excl = (0,) if cfg.skip_first and q_pos > 0 else ()
                    for k_pos, a in _above_median_top(row, k_d, exclude=excl):
                        read = {"pos": k_pos, "attn": a, "tokens": []}
                        if layer > 0:
                            pending.append((j, read, layer, k_pos, p_d, node["id"], depth + 1))
                        node["reads"].append(read)
        tops = scorer.lens_top([(layer, k_pos, p_d) for _, _, layer, k_pos, p_d, _, _ in pending])
        frontiers = [[] for _ in starts]
        for (j, read, layer, k_pos, _, node_id, depth), top in zip(pending, tops):
            for tok, pv in top:
                read["tokens"].append({"id": tok, "text": decode(tok), "prob": pv})
                frontiers[j].append((k_pos, tok, layer, node_id, depth))
    return out


# --------------------------------------------------------------------------------------------------
# Prompt parts (answer sources)
# --------------------------------------------------------------------------------------------------
def part_bounds(tokenizer: Any, ids: Sequence[int], text: str, prompt: str, question: str) -> tuple[int, int]:
    """Token indices (test_start, response_start) splitting ``ids`` into few-shot / question / generated parts.

    Character boundaries come from the prompt parts: the test block starts after the last blank line before the
    final occurrence of the test ``question`` in ``prompt`` (0 with no exemplars); the response starts at
    ``len(prompt)``. They are mapped to tokens with the tokenizer's offsets (a token belongs to the part where it
    starts). ``text`` must start with ``prompt``; ``ids`` must be the encoding of ``text`` (with an optional BOS).
    """
    if not text.startswith(prompt):
        raise ValueError("part_bounds: the clean text does not start with the prompt")
    q = prompt.rfind(question)
    if q < 0:
        raise ValueError(f"part_bounds: question {question[:40]!r}… not found in the prompt")
    blank = prompt.rfind("\n\n", 0, q)
    c_test, c_resp = (blank + 2 if blank >= 0 else 0), len(prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    shift = len(ids) - len(enc.input_ids)
    if shift not in (0, 1) or list(ids[shift:]) != list(enc.input_ids):
        raise ValueError("part_bounds: clean ids are not the encoding of the clean text")
    starts = [s for s, _ in enc.offset_mapping]

    def tok_at(c: int) -> int:
        return shift + next((i for i, s in enumerate(starts) if s >= c), len(starts))

    return tok_at(c_test), tok_at(c_resp)


def part_of(pos: int, bounds: tuple[int, int]) -> str:
    return PARTS[0] if pos < bounds[0] else PARTS[1] if pos < bounds[1] else PARTS[2]


# --------------------------------------------------------------------------------------------------
# Driver over pairs
# --------------------------------------------------------------------------------------------------
def important_mask(table: Any, n_layers: int, n_heads: int, top_k: int, subtask: int | None = None) -> torch.Tensor:
    """Top-``top_k`` heads of a head-score table (``layer, head, score`` [, ``subtask``]) as a [L, H] bool mask.

    With a ``subtask`` column the scores of ``subtask`` are used if present, else the mean over subtasks.
    """
    for c in ("layer", "head", "score"):
        if c not in table.columns:
            raise ValueError(f"head ranking table lacks column {c!r} (has {list(table.columns)})")
    df = table
    if "subtask" in df.columns:
        sub = df[df["subtask"] == subtask] if subtask is not None else df.iloc[0:0]
        df = sub if len(sub) else df.groupby(["layer", "head"], as_index=False)["score"].mean()
    df = df.dropna(subset=["score"]).sort_values("score", ascending=False).head(top_k)
    m = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for layer, head in zip(df["layer"].astype(int), df["head"].astype(int)):
        if 0 <= layer < n_layers and 0 <= head < n_heads:
            m[layer, head] = True
    return m


def select_examples(pairs: Sequence[dict], n_examples: int, subtasks: Sequence[int] | None = None) -> dict[str, list]:
    """First ``n_examples`` example ids (file order) -> their pairs (optionally only ``subtasks``)."""
    out: dict[str, list] = {}
    for i, p in enumerate(pairs):
        for key in ("pair_id", "example_id", "subtask", "clean_ids", "answer_id"):
            if key not in p:
                raise ValueError(f"pairs record {i} ({p.get('pair_id', '?')}): missing field {key!r}")
        if subtasks is not None and int(p["subtask"]) not in set(subtasks):
            continue
        if p["example_id"] not in out:
            if len(out) >= n_examples:
                continue
            out[p["example_id"]] = []
        out[p["example_id"]].append(p)
    return out


def _forward_groups(pairs: Sequence[dict]) -> list[tuple[list[int], list[dict]]]:
    """Group pairs whose clean ids are prefixes of a longer one (one forward each group)."""
    groups: list[tuple[list[int], list[dict]]] = []
    for p in sorted(pairs, key=lambda q: -len(q["clean_ids"])):
        ids = list(p["clean_ids"])
        for full, members in groups:
            if full[:len(ids)] == ids:
                members.append(p)
                break
        else:
            groups.append((ids, [p]))
    return groups


def _start_token(acts: Acts, pair: dict, cfg: FlowConfig) -> int:
    """The token the search starts from: the argmax next token of the model as run (``cfg.start == "argmax"``,
    the paper's patched argmax) or the gold answer token."""
    if cfg.start == "answer" or acts.argmax is None:
        return int(pair["answer_id"])
    return int(acts.argmax[len(pair["clean_ids"]) - 1])


def trace_example(model: Any, pairs: Sequence[dict], cfg: FlowConfig, generation: dict | None = None,
                  important: Any = None, circuit: Any = None) -> list[dict]:
    """Trace every pair of one example; returns one trace record per pair (see :func:`trace`).

    ``circuit``: a callable subtask -> :class:`Circuit` — the pruned model of the paper (E9): each pair gets its own
    forward with the heads outside its subtask's circuit mean-ablated, and only circuit heads are traced
    (``important`` is then ignored). ``None`` = the unablated model, where ``important`` (None = all heads, a [L, H]
    mask, or a callable subtask -> mask) selects the traced heads. ``generation``: the example's generation record
    (``prompt``, ``question``) for the answer-source parts; without it parts are omitted.
    """
    tok = model.tokenizer
    out = []
    if circuit is not None:
        units = []
        for p in sorted(pairs, key=lambda q: int(q["subtask"])):
            c = circuit(int(p["subtask"]))
            units.append((capture(model, p["clean_ids"], c), [p], lambda k, c=c: c.kept))
    else:
        units = [(capture(model, ids), sorted(members, key=lambda q: int(q["subtask"])), important)
                 for ids, members in _forward_groups(pairs)]
    for acts, members, imp in units:
        scorers: dict[Any, WriterScorer] = {}
        masks, keys, bounds_of = [], [], []
        for p in members:
            mask = imp(int(p["subtask"])) if callable(imp) else imp
            key = None if mask is None else tuple(mask.flatten().tolist())
            if key not in scorers:
                scorers[key] = WriterScorer(model, acts, mask, prefilter=cfg.prefilter)
            masks.append(mask)
            keys.append(key)
            bounds_of.append(None if generation is None else part_bounds(
                tok, p["clean_ids"], p["clean"], generation["prompt"], generation["question"]))
        starts_of = [_start_token(acts, p, cfg) for p in members]
        traced: dict[int, list[dict]] = {}
        for key, scorer in scorers.items():  # the pairs sharing a scorer are traced together
            idx = [i for i, k in enumerate(keys) if k == key]
            starts = [(len(members[i]["clean_ids"]) - 1, starts_of[i]) for i in idx]
            traced.update(zip(idx, trace_many(scorer, starts, cfg, decode=lambda t: tok.decode([t]))))
        for i, p in enumerate(members):
            n, mask, bounds, nodes = len(p["clean_ids"]), masks[i], bounds_of[i], traced[i]
            context = set(int(t) for t in p["clean_ids"])
            for nd in nodes:
                nd["in_context"] = nd["token"] in context
                for r in nd["reads"]:
                    r["part"] = part_of(r["pos"], bounds) if bounds else None
            attn_mean = acts.attn[:, :, n - 1, :n].float()  # [L, H, n]
            m = torch.ones(attn_mean.shape[:2], dtype=torch.bool) if mask is None else mask
            argmax = None if acts.argmax is None else int(acts.argmax[n - 1])
            out.append({
                "pair_id": p["pair_id"], "example_id": p["example_id"], "dataset": p.get("dataset"),
                "subtask": int(p["subtask"]), "kind": p.get("kind"), "source": p.get("source"),
                "answer": p.get("answer"), "answer_id": int(p["answer_id"]), "length": n,
                "n_layers": model.n_layers, "n_heads": model.n_heads,
                "pruned": circuit is not None, "n_circuit_heads": int(m.sum()),
                "start_id": starts_of[i], "argmax_id": argmax, "argmax_is_answer": argmax == int(p["answer_id"]),
                "bounds": list(bounds) if bounds else None,
                "attention": attn_mean[m].mean(0).tolist(),  # [n] mean attention row of the important heads
                "nodes": nodes,
            })
    return out


def load_circuits(heads: Any, ranking: str, n_layers: int, n_heads: int) -> dict[int, torch.Tensor]:
    """Kept-head masks [L, H] per subtask of one knockout ranking, from ``circuits/heads.parquet`` (the operating
    point's kept set, scope chosen by :func:`cotmech.ablation.circuit_sets`)."""
    for c in ("subtask", "ranking", "scope", "layer", "head", "kept"):
        if c not in heads.columns:
            raise ValueError(f"knockout heads table lacks column {c!r} (has {list(heads.columns)})")
    sets = circuit_sets(heads[heads["ranking"].astype(str) == ranking])
    out = {}
    for (k, _), kept in sets.items():
        m = torch.zeros(n_layers, n_heads, dtype=torch.bool)
        for layer, head in kept:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(f"knockout heads table: head ({layer}, {head}) outside the model's "
                                 f"{n_layers} x {n_heads}")
            m[layer, head] = True
        out[int(k)] = m
    return out


def pruned_circuits(model: Any, heads: Any, ranking: str, reference: Sequence[dict], subtasks: Sequence[int],
                    n_reference: int | None = None, seed: int = 0, batch_size: int = 8,
                    prefix_len: int = 0) -> dict[int, Circuit]:
    """The pruned model state of each subtask (study.md E9): the kept heads of ``ranking`` at the knockout operating
    point (:func:`load_circuits` of ``circuits/heads.parquet``) and the mean z of every head over the ``reference``
    pairs of the same subtask (:func:`cotmech.ablation.head_means`, as the knockout; at most ``n_reference`` of
    them, a seeded sample; start-aligned over the first ``prefix_len`` positions, as the knockout's
    ``circuits.mean_alignment`` does: :func:`cotmech.ablation.alignment_prefix`). Errors name the subtask without a
    circuit or without reference pairs."""
    masks = load_circuits(heads, ranking, model.n_layers, model.n_heads)
    out = {}
    for k in subtasks:
        if k not in masks:
            raise ValueError(f"no knockout circuit for subtask {k} with ranking {ranking!r} (circuits for subtasks "
                             f"{sorted(masks)}); add it to circuits.subtasks or trace unpruned (flow.pruned: false)")
        ref = sample_pairs([p for p in reference if int(p["subtask"]) == k], n_reference, np.random.default_rng([seed, k]))
        if not ref:
            raise ValueError(f"no reference pairs of subtask {k} for the mean ablation")
        means = head_means(model, [p["clean_ids"] for p in ref], batch_size, prefix_len=prefix_len)
        kept = masks[k]
        out[k] = Circuit(kept, means, f"ranking {ranking}: {int(kept.sum())} of {kept.numel()} heads kept, "
                                      f"means over {len(ref)} reference pairs")
    return out


def config_dict(cfg: FlowConfig) -> dict:
    return asdict(cfg)


# --------------------------------------------------------------------------------------------------
# Summaries (pure functions of trace records)
# --------------------------------------------------------------------------------------------------
def _dims(traces: Sequence[dict]) -> tuple[int, int]:
    if not traces:
        raise ValueError("no traces")
    return int(traces[0]["n_layers"]), int(traces[0]["n_heads"])


def depth_maps(traces: Sequence[dict]) -> Any:
    """Long table ``depth, layer, head, count``: unique (layer, head, depth) per example, summed over examples."""
    import pandas as pd

    seen = {(t["example_id"], nd["depth"], nd["layer"], nd["head"]) for t in traces for nd in t["nodes"]}
    cnt: dict[tuple[int, int, int], int] = defaultdict(int)
    for _, d, layer, head in seen:
        cnt[(d, layer, head)] += 1
    rows = [{"depth": d, "layer": layer, "head": h, "count": c} for (d, layer, h), c in sorted(cnt.items())]
    return pd.DataFrame(rows, columns=["depth", "layer", "head", "count"])


def depth_summary(traces: Sequence[dict]) -> Any:
    """Per depth: entries, mean layer, mean relative layer (layer / n_layers), share in the second half."""
    import pandas as pd

    L, _ = _dims(traces)
    dm = depth_maps(traces)
    rows = []
    for d, g in dm.groupby("depth"):
        n = int(g["count"].sum())
        second = int(g.loc[g["layer"] >= L // 2, "count"].sum())
        lo, hi = wilson(second, n)
        mean_layer = float((g["layer"] * g["count"]).sum() / n)
        rows.append({"depth": int(d), "n": n, "mean_layer": mean_layer, "mean_rel_layer": mean_layer / L,
                     "share_second_half": second / n, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["depth", "n", "mean_layer", "mean_rel_layer", "share_second_half",
                                       "ci_low", "ci_high"])


def _reads(traces: Sequence[dict], depth: int = 0) -> Iterator[tuple[dict, dict, dict]]:
    for t in traces:
        for nd in t["nodes"]:
            if nd["depth"] == depth:
                for r in nd["reads"]:
                    if r.get("part"):
                        yield t, nd, r


def answer_sources(traces: Sequence[dict]) -> Any:
    """Per subtask: shares of positions read by depth-0 writers in few-shot / question / generated parts."""
    import pandas as pd

    cnt: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(PARTS, 0))
    meta: dict[int, tuple] = {}
    for t, _, r in _reads(traces):
        cnt[t["subtask"]][r["part"]] += 1
        meta[t["subtask"]] = (t.get("kind"), t.get("source"))
    rows = []
    for k in sorted(cnt):
        n = sum(cnt[k].values())
        rows.append({"subtask": k, "kind": meta[k][0], "source": meta[k][1], "n": n,
                     **{part: cnt[k][part] / n for part in PARTS}})
    return pd.DataFrame(rows, columns=["subtask", "kind", "source", "n", *PARTS])


def head_sources(traces: Sequence[dict]) -> Any:
    """Per subtask and depth-0 head: read counts per part and the majority part (ties: earliest in PARTS)."""
    import pandas as pd

    cnt: dict[tuple[int, int, int], dict[str, int]] = defaultdict(lambda: dict.fromkeys(PARTS, 0))
    for t, nd, r in _reads(traces):
        cnt[(t["subtask"], nd["layer"], nd["head"])][r["part"]] += 1
    rows = []
    for (k, layer, h), c in sorted(cnt.items()):
        rows.append({"subtask": k, "layer": layer, "head": h, **c, "majority": max(PARTS, key=lambda p: c[p])})
    return pd.DataFrame(rows, columns=["subtask", "layer", "head", *PARTS, "majority"])


RIFT_LEVEL = 0.5
TRACE_RIFT_DEFINITION = (
    "E9c trace statistic (the paper's): a traced head entry counts as 'context' if the token it carries occurs among "
    "the input ids (depth-0 answer writers count as context, as in the original; also reported without them); "
    "share per layer pooled over entries; split at n_layers // 2; crossing layer = first layer whose share is >= "
    "0.5 (layers without entries skipped); cluster bootstrap over examples (all traces of an example resampled "
    "together), percentile CIs")


def _layer_counts(traces: Sequence[dict]) -> tuple[list[str], np.ndarray]:
    """Per example and layer: counts [G, L, 4] = (n, context with writers as context, n without writers,
    context without writers); example ids in first-seen order."""
    L, _ = _dims(traces)
    ex: dict[str, int] = {}
    for t in traces:
        ex.setdefault(str(t["example_id"]), len(ex))
    a = np.zeros((len(ex), L, 4))
    for t in traces:
        g = ex[str(t["example_id"])]
        for nd in t["nodes"]:
            ctx = int(bool(nd["in_context"]))
            a[g, nd["layer"], 0] += 1
            a[g, nd["layer"], 1] += 1 if nd["depth"] == 0 else ctx
            if nd["depth"] > 0:
                a[g, nd["layer"], 2] += 1
                a[g, nd["layer"], 3] += ctx
    return list(ex), a


def _boot(counts: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Cluster-bootstrap resamples of per-example counts [G, ...] -> summed counts [B, ...] (examples resampled
    with replacement, seeded)."""
    _, W = bootstrap_weights(np.arange(counts.shape[0]), n_boot, seed)
    return np.tensordot(W, counts, 1)


def _ratio(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, k / np.where(n > 0, n, 1), np.nan)


def crossing_layer(share: Sequence[float], level: float = RIFT_LEVEL) -> int | None:
    """First layer whose ``share`` is >= ``level`` (NaN = no traced entry there, skipped); None if none."""
    return first_crossing(share, level)


def context_by_layer(traces: Sequence[dict], n_boot: int = 0, seed: int = 0, ci: float = 0.95) -> Any:
    """Per layer: share of carried tokens found in the input ids (E9c); depth-0 writers counted as context
    (as in the original) and, separately, left out; with ``n_boot`` > 0 cluster-bootstrap CIs over examples."""
    import pandas as pd

    L, _ = _dims(traces)
    _, a = _layer_counts(traces)
    tot = a.sum(0)  # [L, 4]
    df = pd.DataFrame({"layer": np.arange(L), "n": tot[:, 0].astype(int), "context": tot[:, 1].astype(int),
                       "share": _ratio(tot[:, 1], tot[:, 0]), "n_without_writers": tot[:, 2].astype(int),
                       "context_without_writers": tot[:, 3].astype(int),
                       "share_without_writers": _ratio(tot[:, 3], tot[:, 2])})
    if n_boot > 0:
        b = _boot(a, n_boot, seed)  # [B, L, 4]
        df["ci_low"], df["ci_high"] = percentile_interval(_ratio(b[..., 1], b[..., 0]), ci)
        df["ci_low_without_writers"], df["ci_high_without_writers"] = percentile_interval(_ratio(b[..., 3], b[..., 2]), ci)
    return df


def head_context(traces: Sequence[dict]) -> Any:
    """Per head: n traced entries and P(context) (depth-0 writers count as context) — the F-rift map."""
    import pandas as pd

    cnt: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for t in traces:
        for nd in t["nodes"]:
            c = cnt[(nd["layer"], nd["head"])]
            c[0] += 1
            c[1] += 1 if nd["depth"] == 0 or nd["in_context"] else 0
    rows = [{"layer": layer, "head": h, "n": n, "p_context": k / n} for (layer, h), (n, k) in sorted(cnt.items())]
    return pd.DataFrame(rows, columns=["layer", "head", "n", "p_context"])


def rift_summary(traces: Sequence[dict], split: int | None = None, n_boot: int = 1000, seed: int = 0,
                 ci: float = 0.95) -> dict:
    """The paper-comparable functional-rift headline (study.md §1.4, E10) from the traces: context abidance of the
    traced heads pooled below / at-or-above ``split`` (default n_layers // 2), with and without depth-0 writers;
    the crossing layer (:func:`crossing_layer` of the per-layer share) and the depth-0 writers' share in the second
    half — each with a cluster-bootstrap percentile CI over examples (:data:`TRACE_RIFT_DEFINITION`)."""
    L, _ = _dims(traces)
    split = L // 2 if split is None else split
    examples, a = _layer_counts(traces)
    b = _boot(a, n_boot, seed) if n_boot > 0 else np.zeros((0,) + a.shape[1:])  # [B, L, 4]
    tot = a.sum(0)

    def share(cols: tuple[int, int], sl: slice) -> dict:
        n, k = tot[sl, cols[0]].sum(), tot[sl, cols[1]].sum()
        bs = _ratio(b[:, sl, cols[1]].sum(1), b[:, sl, cols[0]].sum(1))
        lo, hi = percentile_interval(bs, ci) if len(bs) else (math.nan, math.nan)
        return {"n": int(n), "k": int(k), "share": float(k / n) if n else math.nan,
                "ci_low": float(lo), "ci_high": float(hi)}

    per_layer = _ratio(tot[:, 1], tot[:, 0])
    cross = crossing_layer(per_layer)
    boots = np.array([np.nan if (c := crossing_layer(_ratio(x[:, 1], x[:, 0]))) is None else c for x in b], float)
    ok = np.isfinite(boots)
    clo, chi = percentile_interval(boots[ok], ci) if ok.any() else (math.nan, math.nan)
    # depth-0 writers per example: [G, 2] = (n, in the second half)
    ex_idx = {e: i for i, e in enumerate(examples)}
    w = np.zeros((len(examples), 2))
    for t in traces:
        for nd in t["nodes"]:
            if nd["depth"] == 0:
                w[ex_idx[str(t["example_id"])]] += (1, int(nd["layer"] >= split))
    bw = _boot(w, n_boot, seed) if n_boot > 0 else np.zeros((0, 2))
    wlo, whi = percentile_interval(_ratio(bw[:, 1], bw[:, 0]), ci) if n_boot > 0 else (math.nan, math.nan)
    return {
        "definition": TRACE_RIFT_DEFINITION, "n_layers": L, "split_layer": split, "n_traces": len(traces),
        "n_examples": len(examples), "n_boot": int(n_boot), "ci": ci, "seed": int(seed),
        "context_below": share((0, 1), slice(0, split)), "context_above": share((0, 1), slice(split, None)),
        "context_below_without_writers": share((2, 3), slice(0, split)),
        "context_above_without_writers": share((2, 3), slice(split, None)),
        "crossing": {"level": RIFT_LEVEL, "layer": cross, "rel_depth": None if cross is None else cross / L,
                     "ci_low": None if not ok.any() else float(clo), "ci_high": None if not ok.any() else float(chi),
                     "rel_ci_low": None if not ok.any() else float(clo) / L,
                     "rel_ci_high": None if not ok.any() else float(chi) / L,
                     "n_boot_no_crossing": int((~ok).sum())},
        "context_by_layer": [None if not np.isfinite(v) else float(v) for v in per_layer],
        "writers": {"n": int(w[:, 0].sum()), "k": int(w[:, 1].sum()),
                    "share_second_half": float(w[:, 1].sum() / w[:, 0].sum()) if w[:, 0].sum() else math.nan,
                    "ci_low": float(wlo), "ci_high": float(whi)},
    }


def attention_profile(traces: Sequence[dict], tokenizer: Any = None, pairs: dict[str, dict] | None = None) -> Any:
    """Long table of the mean attention row of the important heads at each pair's predicting position:
    ``pair_id, example_id, subtask, pos, rel_pos (pos - length), part, token, attn``."""
    import pandas as pd

    rows = []
    for t in traces:
        ids = (pairs or {}).get(t["pair_id"], {}).get("clean_ids")
        b = t.get("bounds")
        for pos, a in enumerate(t["attention"]):
            tok = tokenizer.decode([ids[pos]]) if (tokenizer is not None and ids) else None
            rows.append({"pair_id": t["pair_id"], "example_id": t["example_id"], "subtask": t["subtask"],
                         "pos": pos, "rel_pos": pos - t["length"], "part": part_of(pos, b) if b else None,
                         "token": tok, "attn": float(a)})
    return pd.DataFrame(rows, columns=["pair_id", "example_id", "subtask", "pos", "rel_pos", "part", "token", "attn"])


TABLES = ("depth_maps.parquet", "depth_summary.csv", "sources.csv", "head_sources.parquet", "context_layers.csv",
          "head_context.parquet", "attention.parquet")


def tables(traces: Sequence[dict], tokenizer: Any = None, pairs: dict[str, dict] | None = None,
           meta: dict | None = None, n_boot: int = 1000, seed: int = 0,
           ci: float = 0.95) -> tuple[dict[str, Any], dict]:
    """Every flow table of ``traces`` ({file name: frame}, the names of :data:`TABLES`) and the summary dict
    (``n_boot``, ``seed``, ``ci``: the cluster bootstrap of the rift headline and the per-layer shares)."""
    import pandas as pd

    if not traces:  # e.g. no correctly solved example: empty tables, the summary says why
        return {name: pd.DataFrame() for name in TABLES}, {**(meta or {}), "n_traces": 0, "note": "no pairs to trace"}
    out = dict(zip(TABLES, (depth_maps(traces), depth_summary(traces), answer_sources(traces), head_sources(traces),
                            context_by_layer(traces, n_boot, seed, ci), head_context(traces),
                            attention_profile(traces, tokenizer, pairs))))
    summary = {**(meta or {}), **rift_summary(traces, n_boot=n_boot, seed=seed, ci=ci),
               "depth": out["depth_summary.csv"].to_dict(orient="records"),
               "sources": out["sources.csv"].to_dict(orient="records")}
    return out, summary


def write_outputs(traces: Sequence[dict], outdir: Any, tokenizer: Any = None,
                  pairs: dict[str, dict] | None = None, meta: dict | None = None, n_boot: int = 1000,
                  seed: int = 0, ci: float = 0.95) -> dict:
    """Write every flow table of ``traces`` under ``outdir`` (:func:`tables`; see the rule's docs) and traces.jsonl,
    summary.json; returns the summary dict."""
    frames, summary = tables(traces, tokenizer, pairs, meta, n_boot, seed, ci)
    write_all(outdir, traces, frames, summary)
    return summary


def write_all(outdir: Any, traces: Sequence[dict], frames: dict[str, Any], summary: dict) -> None:
    """traces.jsonl, the tables ``frames`` and summary.json under ``outdir``."""
    from pathlib import Path

    from .io import write_json, write_jsonl, write_table

    out = Path(outdir)
    write_jsonl(out / "traces.jsonl", traces)
    for name, frame in frames.items():
        write_table(out / name, frame)
    write_json(out / "summary.json", summary)


def flow_config(cfg: Any) -> FlowConfig:
    """The search hyper-parameters of config section ``flow`` (:func:`cotmech.config.section`)."""
    return FlowConfig(**{k: cfg[k] for k in ("l", "k", "p", "decay", "max_depth", "skip_first", "min_prob",
                                              "prefilter", "start")})


def run(model: Any, pairs: Sequence[dict], cfg: Any, seed: int, *, circuits_cfg: Any,
        generations: Sequence[dict] = (), heads: Any = None, reference: Sequence[dict] | None = None,
        ranking: Any = None, alignment: int | None = None, names: dict[str, Any] | None = None,
        log: Any = None) -> tuple[list[dict], dict[str, Any], dict]:
    """Trace the answer-writer pathways of one dataset's pairs (study.md E9, E10): the traces, the tables
    ({file name: frame}) and the summary dict.

    ``cfg`` the ``flow`` config section, ``circuits_cfg`` the ``circuits`` section (:func:`cotmech.config.section`).
    Pruned (``cfg["pruned"]``): each subtask's knockout circuit from the kept-head table ``heads`` with the other
    heads mean-ablated over ``reference`` pairs (``alignment``: the start-aligned prefix; by default, as the
    knockout, :func:`cotmech.ablation.alignment_prefix` of ``pairs`` and ``circuits_cfg["mean_alignment"]``);
    unpruned: heads from the score table ``ranking`` (top ``cfg["top_k"]``), or all. ``generations``: the dataset's generation records (prompt parts). ``names`` ({"pairs", "circuit_heads",
    "ranking"}: where the inputs came from) go to the summary and error messages.
    """
    import time

    from tqdm import tqdm

    names = names or {}
    log = log or print
    fcfg = flow_config(cfg)
    pruned = bool(cfg["pruned"])
    if pruned and (heads is None or reference is None):
        raise ValueError("flow.pruned needs the knockout heads table and the reference pairs")
    if pruned and alignment is None:
        alignment = alignment_prefix(pairs, circuits_cfg["mean_alignment"])
    ranking = None if pruned else ranking
    subtasks = cfg["subtasks"]
    if pruned and subtasks is None:
        subtasks = circuits_cfg["subtasks"]
    chosen = select_examples(pairs, int(cfg["n_examples"]), subtasks)
    gens = {r["id"]: r for r in generations}
    important = circuit = None
    t1 = time.time()
    if pruned:
        want = sorted({int(p["subtask"]) for ps in chosen.values() for p in ps})
        try:
            circuits = pruned_circuits(model, heads, cfg["circuit_ranking"], reference, want,
                                       circuits_cfg["n_reference"], seed, int(circuits_cfg["batch_size"]), alignment)
        except ValueError as e:
            raise ValueError(f"{names.get('circuit_heads')}: {e}") from e
        for k, c in circuits.items():
            log(f"subtask {k}: pruned circuit, {c.note}")
        circuit = circuits.__getitem__
    elif ranking is not None:
        top_k = int(cfg["top_k"] or model.n_total_heads)
        cache: dict = {}

        def important(k: int):  # noqa: F811 - per-subtask mask, cached
            if k not in cache:
                cache[k] = important_mask(ranking, model.n_layers, model.n_heads, top_k, subtask=k)
            return cache[k]
    traces = []
    for ex_id, ex_pairs in tqdm(chosen.items(), desc="trace", unit="ex"):
        try:
            traces += trace_example(model, ex_pairs, fcfg, gens.get(ex_id), important, circuit)
        except ValueError as e:
            raise ValueError(f"example {ex_id}: {e}") from e
    meta = {"model": model.spec, "pairs": names.get("pairs"), "config": config_dict(fcfg),
            "model_state": (f"pruned: {cfg['circuit_ranking']} knockout circuit, other heads "
                            "mean-ablated" if pruned else "unpruned (all heads run)"),
            "pruned": pruned, "circuit_heads": names.get("circuit_heads") if pruned else None,
            "ranking": names.get("ranking") if ranking is not None else None,
            "top_k": cfg["top_k"] if ranking is not None else None,
            "argmax_is_answer": sum(t["argmax_is_answer"] for t in traces), "seconds": round(time.time() - t1, 1)}
    frames, summary = tables(traces, model.tokenizer, {p["pair_id"]: p for p in pairs}, meta,
                             n_boot=int(cfg["n_boot"]), seed=seed, ci=float(cfg["ci"]))
    return traces, frames, summary
