"""Horizon experiment (study.md E12): how far a corrupted middle rule reaches when one layer's attention output
(all heads, all positions: the o_proj input z) is replaced by the corrupted run's while the rest of the CoT is
generated greedily.

Metric (the original's is not recoverable, §6 E12 / §9 #13): for a response prefix cut after ``s`` sentences of the
clean greedy CoT, the reference is the clean greedy continuation from there (to its newline). For each patched layer:
``first_div`` = number of continuation tokens the patched greedy generation reproduces before its first different
token; ``agree = first_div / len(reference)`` (token agreement up to the first divergence) and ``exact`` =
(continuation identical, stop token included). Table rows are (example, s, layer) and an aggregate per (layer, s).

Two implementations of the same quantity:
- :func:`divergence_table` (fast, used by the rule): greedy patched generation equals the clean continuation up to
  the first divergence, and until then both runs (patched and corrupted) read exactly the clean tokens; so one
  teacher-forced forward of the corrupted text saves z, and one batched forward (one row per patched layer, the shared
  few-shot prefix from a KV cache) gives every row's argmax at every position — and all ``s`` at once.
- :func:`patched_generate`: real step-by-step greedy decoding with a KV cache for both runs, the layer's z replaced
  at every step (the reference implementation; tests check both agree).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

NO_PATCH = -1  # layer id of the unpatched baseline row
TABLE_COLUMNS = ["example_id", "s", "layer", "n_ref", "n_text", "first_div", "agree", "exact"]


# --------------------------------------------------------------------------------------------------
# Corrupted prompt: the middle rule
# --------------------------------------------------------------------------------------------------
def corrupt_middle_rule(record: dict, prompt: str, tokenizer: Any, rng: np.random.Generator) -> tuple[str, dict]:
    """Replace both concept words of the middle subtype rule of the test question in ``prompt`` ("Impuses are
    sterpuses." -> "Shumpuses are numpuses.", study.md E12) by other concepts of the record's ontology in the same
    number/case, absent from the test question, such that the whole prompt keeps its token count.

    Returns (corrupt prompt, info). Raises ValueError naming the record when no such replacement exists.
    """
    from .prontoqa.corrupt import encode
    from .prontoqa.logic import LEXICON, concept_vocabulary, surface
    from .prontoqa.sentences import ParseError, parse, split_sentences

    rid = record.get("id", "?")
    question = record["question"]
    q0 = prompt.rfind(question)
    if q0 < 0:
        raise ValueError(f"horizon: record {rid}: question not found in its prompt")
    rules = []
    pos = 0
    for s in split_sentences(question):
        start = question.index(s, pos)
        pos = start + len(s)
        try:
            p = parse(s)
        except ParseError:
            continue
        if p.formula.kind == "rule" and LEXICON.word_type(p.formula.obj) == "concept":
            rules.append((start, p))
    if not rules:
        raise ValueError(f"horizon: record {rid}: no subtype rule (A is B) in the question {question!r}")
    start, p = rules[len(rules) // 2]
    spans = [p.subj, p.obj]
    words = [p.text[a:b] for a, b in spans]
    used = {c.lower() for c in LEXICON.concepts if c.lower() in question.lower()}
    pool = [c for c in concept_vocabulary(record.get("ontology", "fictional")) if c.lower() not in used]
    n_clean = len(encode(tokenizer, prompt))
    at = q0 + start
    sent = p.text
    chosen: dict[str, str] = {}
    # replace the object first, then the subject (spans stay valid right to left); each word keeps the token count
    for (a, b), w in sorted(zip(spans, words), reverse=True):
        _, is_plural = LEXICON.lemma(w)
        for lem in rng.permutation(pool):
            nw = surface(str(lem), plural_form=is_plural, capital=w[:1].isupper())
            if nw.lower() in {v.lower() for v in chosen.values()}:
                continue
            trial = sent[:a] + nw + sent[b:]
            if len(encode(tokenizer, prompt[:at] + trial + prompt[at + len(p.text):])) == n_clean:
                sent, chosen[w] = trial, nw
                break
        else:
            break
    if len(chosen) == 2:
        corrupt = prompt[:at] + sent + prompt[at + len(p.text):]
        return corrupt, {"rule": p.text, "corrupt_rule": sent, "replaced": {w: chosen[w] for w in words}}
    raise ValueError(f"horizon: record {rid}: no equal-token-count replacement for the rule {p.text!r}")


def sentence_cuts(tokenizer: Any, gen_ids: Sequence[int], max_s: int) -> dict[int, int]:
    """s -> number of generated tokens covering the first s sentences (a token whose text completes a "." ends one)."""
    cuts = {0: 0}
    text = ""
    n_dots = 0
    for i, t in enumerate(gen_ids):
        piece = tokenizer.decode([t])
        text += piece
        n_new = piece.count(".")
        if n_new:
            n_dots += n_new
            if n_dots not in cuts and n_dots <= max_s:
                cuts[n_dots] = i + 1
    return {s: c for s, c in cuts.items() if s <= max_s}


# --------------------------------------------------------------------------------------------------
# Patched forwards
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def _suffix_trace(model: Any, ids: torch.Tensor, prefix_len: int, cache: Any, patches: dict[int, list[tuple]] | None,
                  save_z: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """nnsight forward of ``ids`` [B, T] after a cached prefix; ``patches``: layer -> [(row, z [T, n_heads*d_head])].
    Returns (argmax ids [B, T], saved z per layer [B, T, H*dh] if ``save_z``)."""
    B, T = ids.shape
    pos = torch.arange(prefix_len, prefix_len + T, device=model.device)[None].expand(B, T)
    kw: dict[str, Any] = {"position_ids": pos, "use_cache": True}
    if cache is not None:
        kw["past_key_values"] = cache
    zs = []
    with model.lm.trace(ids.to(model.device), **kw):
        for layer in range(model.n_layers):
            if patches and layer in patches:
                z = model.o_proj(layer).input
                for row, val in patches[layer]:
                    z[row] = val
            if save_z:
                zs.append(model.o_proj(layer).input.save())
        out = model.lm.output.logits.argmax(-1).save()
    return out.cpu(), [z.detach() for z in zs]


def _prefix(model: Any, ids: Sequence[int]) -> Any:
    from .decoding import prefill

    return prefill(model, ids) if len(ids) else None


def _expand(cache: Any, batch: int) -> Any:
    from .decoding import expand_cache

    return expand_cache(cache, batch)


@torch.no_grad()
def patched_predictions(model: Any, clean_ids: Sequence[int], corrupt_ids: Sequence[int], layers: Sequence[int],
                        prefix_len: int, prefix_cache: Any = None) -> torch.Tensor:
    """Teacher-forced argmax next tokens of ``clean_ids`` with each layer in ``layers`` (``NO_PATCH`` = none)
    getting the corrupted run's z at every position: [len(layers), len(clean_ids) - prefix_len].

    Positions < ``prefix_len`` must be shared by both inputs (``prefix_cache`` their KV cache, or None to compute it).
    """
    if len(clean_ids) != len(corrupt_ids):
        raise ValueError(f"horizon: clean and corrupt inputs differ in length ({len(clean_ids)} vs {len(corrupt_ids)})")
    if list(clean_ids[:prefix_len]) != list(corrupt_ids[:prefix_len]):
        raise ValueError("horizon: clean and corrupt inputs differ inside the shared prefix")
    if prefix_len >= len(clean_ids):
        raise ValueError("horizon: nothing after the shared prefix")
    if prefix_cache is None and prefix_len:
        prefix_cache = _prefix(model, clean_ids[:prefix_len])
    corr = torch.tensor([list(corrupt_ids[prefix_len:])])
    _, z_corr = _suffix_trace(model, corr, prefix_len, _expand(prefix_cache, 1), None, save_z=True)
    patches: dict[int, list[tuple]] = {}
    for row, layer in enumerate(layers):
        if layer != NO_PATCH:
            if not 0 <= layer < model.n_layers:
                raise ValueError(f"horizon: layer {layer} out of range 0..{model.n_layers - 1}")
            patches.setdefault(layer, []).append((row, z_corr[layer][0]))
    clean = torch.tensor([list(clean_ids[prefix_len:])] * len(layers))
    pred, _ = _suffix_trace(model, clean, prefix_len, _expand(prefix_cache, len(layers)), patches, save_z=False)
    return pred


def _stop(tokenizer: Any, token: int, eos: set[int]) -> str | None:
    if token in eos:
        return "eos"
    return "newline" if "\n" in tokenizer.decode([token]) else None


def _eos(model: Any) -> set[int]:
    out: set[int] = set()
    for src in (model.tokenizer.eos_token_id, getattr(getattr(model.hf, "generation_config", None), "eos_token_id",
                                                              None)):
        if isinstance(src, int):
            out.add(src)
        elif isinstance(src, (list, tuple)):
            out.update(int(x) for x in src)
    return out


@torch.no_grad()
def patched_generate(model: Any, clean_ids: Sequence[int], corrupt_ids: Sequence[int], layer: int,
                     max_new_tokens: int, source: str = "corrupt") -> list[int]:
    """Greedy decoding of ``clean_ids`` with ``layer``'s z replaced at every position and step (KV cache for both
    runs; both continue with the patched run's tokens). ``source="clean"`` patches in the clean run's own z (a
    no-op check); ``layer=NO_PATCH`` decodes unpatched. Returns the new tokens (stop token kept, EOS dropped)."""
    if len(clean_ids) != len(corrupt_ids):
        raise ValueError("horizon: clean and corrupt inputs differ in length")
    from transformers import DynamicCache

    eos = _eos(model)
    ids = torch.tensor([list(clean_ids), list(corrupt_ids if source == "corrupt" else clean_ids)])  # [2, S]
    cache = DynamicCache()
    out: list[int] = []
    start = 0
    for _ in range(max_new_tokens):
        T = ids.shape[1]
        pos = torch.arange(start, start + T)[None].expand(2, T).to(model.device)
        with model.lm.trace(ids.to(model.device), position_ids=pos, past_key_values=cache, use_cache=True):
            if layer != NO_PATCH:
                z = model.o_proj(layer).input
                z[0] = z[1]
            nxt = model.lm.output.logits[0, -1].argmax().save()
        start += T
        t = int(nxt)
        why = _stop(model.tokenizer, t, eos)
        if why == "eos":
            break
        out.append(t)
        if why == "newline":
            break
        ids = torch.tensor([[t], [t]])
    return out


def first_divergence(pred: Sequence[int], ref: Sequence[int]) -> int:
    """Number of leading positions where ``pred`` equals ``ref``."""
    n = 0
    for a, b in zip(pred, ref):
        if a != b:
            break
        n += 1
    return n


# --------------------------------------------------------------------------------------------------
# Dataset driver
# --------------------------------------------------------------------------------------------------
def prepare_examples(model: Any, records: Sequence[dict], n_examples: int, seed: int, max_new_tokens: int = 64,
                     require_correct: bool = True) -> list[dict]:
    """Pick ``n_examples`` generation records (correct ones if required), build the corrupted prompt and the clean
    greedy continuation ids. Records without an equal-length corruption are skipped (logged in ``skipped``) and
    do not count towards ``n_examples``: the result holds ``n_examples`` usable examples when the records allow."""
    from .decoding import greedy_generate
    from .prontoqa.corrupt import encode

    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for i, r in enumerate(records):
        for key in ("prompt", "question", "generated"):
            if key not in r:
                raise ValueError(f"generation record {i} ({r.get('id', '?')}): missing field {key!r}")
        if sum("skipped" not in e for e in out) >= n_examples:
            break
        if require_correct and not r.get("correct", False):
            continue
        try:
            corrupt_prompt, info = corrupt_middle_rule(r, r["prompt"], model.tokenizer, rng)
        except ValueError as e:
            out.append({"id": r.get("id"), "skipped": str(e)})
            continue
        prompt_ids = encode(model.tokenizer, r["prompt"])
        corrupt_ids = encode(model.tokenizer, corrupt_prompt)
        full = encode(model.tokenizer, r["prompt"] + r["generated"])
        gen = full[len(prompt_ids):] if r.get("correct") and full[:len(prompt_ids)] == prompt_ids else None
        if gen is None:  # not the model's own greedy text: generate it
            gen = greedy_generate(model, [prompt_ids], max_new_tokens, batch_size=1, desc="reference")[0].ids
        out.append({"id": r.get("id"), "prompt_ids": prompt_ids, "corrupt_prompt_ids": corrupt_ids, "gen_ids": gen,
                    **info})
    return out


def divergence_table(model: Any, examples: Sequence[dict], layers: Sequence[int], sentences: Sequence[int]) -> Any:
    """Per (example, s, layer incl. ``NO_PATCH``): reference length, first_div, agree, exact (see module doc).

    The reference is cut where the unpatched row first departs from the stored continuation (``n_ref`` vs
    ``n_text``), so the unpatched row is exact by construction and mismatches of a re-tokenised text cannot count
    as effects of the patch."""
    import pandas as pd

    from .batching import common_prefix_len

    usable = [e for e in examples if "skipped" not in e]
    rows = []
    if not usable:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    seqs = [e["prompt_ids"] for e in usable] + [e["corrupt_prompt_ids"] for e in usable]
    shared = common_prefix_len(seqs)
    cache = _prefix(model, usable[0]["prompt_ids"][:shared]) if shared else None
    rows_layers = [NO_PATCH] + [int(x) for x in layers]
    for e in tqdm(usable, desc="horizon", unit="ex"):
        clean = e["prompt_ids"] + e["gen_ids"]
        corrupt = e["corrupt_prompt_ids"] + e["gen_ids"]
        pred = patched_predictions(model, clean, corrupt, rows_layers, shared, cache)  # [R, T]
        cuts = sentence_cuts(model.tokenizer, e["gen_ids"], max(sentences))
        for s in sentences:
            if s not in cuts or cuts[s] >= len(e["gen_ids"]):
                continue
            full_ref = e["gen_ids"][cuts[s]:]
            # prediction for clean[j] sits at row position j - 1 - shared
            first = len(e["prompt_ids"]) + cuts[s] - 1 - shared
            # the reference is the unpatched greedy continuation: the stored text only as far as the unpatched
            # row reproduces it (a re-tokenised text can differ from the generated ids at its end)
            base = first_divergence(pred[0, first:first + len(full_ref)].tolist(), full_ref)
            ref = full_ref[:base]
            if not ref:
                continue
            for row, layer in enumerate(rows_layers):
                p = pred[row, first:first + len(ref)].tolist()
                fd = first_divergence(p, ref)
                rows.append({"example_id": e["id"], "s": s, "layer": layer, "n_ref": len(ref),
                             "n_text": len(full_ref), "first_div": fd, "agree": fd / len(ref),
                             "exact": fd == len(ref)})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)  # the columns also when no reference is left


def aggregate(table: Any, n_layers: int | None = None) -> Any:
    """Per (layer, s): n examples, exact-match share (Wilson 95% CI), mean token agreement to first divergence
    (+ the model's ``n_layers`` as a column, for relative depth in figures)."""
    import pandas as pd

    from .stats import wilson

    rows = []
    for (layer, s), g in table.groupby(["layer", "s"]):
        k, n = int(g["exact"].sum()), len(g)
        lo, hi = wilson(k, n)
        rows.append({"layer": int(layer), "s": int(s), "n": n, "exact": k / n, "exact_ci_low": lo,
                     "exact_ci_high": hi, "agree": float(g["agree"].mean()),
                     "first_div": float(g["first_div"].mean()), "n_layers": n_layers})
    return pd.DataFrame(rows, columns=["layer", "s", "n", "exact", "exact_ci_low", "exact_ci_high", "agree",
                                       "first_div", "n_layers"])


def require_correct(settings: dict[str, Any]) -> bool:
    """Config ``horizon.require_correct``, or ``pairs.require_correct`` when that is null."""
    from . import config

    v = config.section(settings, "horizon")["require_correct"]
    return bool(config.section(settings, "pairs")["require_correct"] if v is None else v)


def choose_layers(layers: Sequence[int] | None, layer_stride: int, n_layers: int) -> list[int]:
    """The layers patched: config ``horizon.layers``, or every ``layer_stride``-th layer from 0 when null;
    ``ValueError`` naming the layers outside the model."""
    chosen = list(range(0, n_layers, int(layer_stride))) if layers is None else [int(x) for x in layers]
    bad = [x for x in chosen if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"horizon.layers {bad} outside 0..{n_layers - 1}")
    return chosen


# --------------------------------------------------------------------------------------------------
# Entry point (scripts/horizon.py)
# --------------------------------------------------------------------------------------------------
def run(model: Any, records: Sequence[dict], cfg: Any, seed: int, *, require_correct: bool,
        log: Any = None) -> tuple[Any, Any, list[dict]]:
    """The horizon experiment (study.md E12) on one dataset's generation ``records``: the per-(example, s, layer)
    table (:func:`divergence_table`), its per-(layer, s) summary (:func:`aggregate`) and the examples file's
    records (the corruptions used, without token ids, then ``{"verify": [...]}`` when ``cfg["verify"]`` > 0).

    ``cfg`` the ``horizon`` config section (:func:`cotmech.config.section`); ``require_correct`` as
    :func:`require_correct` decides it. The first ``cfg["verify"]`` examples are re-run with real KV-cached
    patched decoding (:func:`patched_generate`) at s = 0 and compared with the teacher-forced first divergence.
    """
    import time

    log = log or (lambda msg: print(msg, flush=True))
    sentences = [int(s) for s in cfg["sentences"]]
    layers = choose_layers(cfg["layers"], cfg["layer_stride"], model.n_layers)
    t1 = time.time()
    examples = prepare_examples(model, records, int(cfg["n_examples"]), seed, int(cfg["max_new_tokens"]),
                                require_correct)
    for e in examples:
        if "skipped" in e:
            log(f"skipped {e['id']}: {e['skipped']}")
    table = divergence_table(model, examples, layers, sentences)
    summary = aggregate(table, model.n_layers)
    checks = []
    for e in [x for x in examples if "skipped" not in x][:int(cfg["verify"])]:
        clean, corrupt = e["prompt_ids"], e["corrupt_prompt_ids"]
        for layer in layers:
            gen = patched_generate(model, clean, corrupt, int(layer), len(e["gen_ids"]) + 1)
            fd = first_divergence(gen, e["gen_ids"])
            fast = table[(table.example_id == e["id"]) & (table.s == 0) & (table.layer == int(layer))]["first_div"]
            checks.append({"example_id": e["id"], "layer": int(layer), "generate": fd,
                           "teacher_forced": int(fast.iloc[0]) if len(fast) else None})
    for c in checks:
        log(f"verify {c}" + ("" if c["generate"] == c["teacher_forced"] else "  MISMATCH"))
    rows = [{k: v for k, v in e.items() if not k.endswith("_ids")} | (
        {"n_gen": len(e["gen_ids"])} if "gen_ids" in e else {}) for e in examples] + (
        [{"verify": checks}] if checks else [])
    log(f"horizon: {sum('skipped' not in e for e in examples)} examples, layers {layers}, s {sentences} in "
        f"{time.time() - t1:.1f} s")
    if len(summary):
        log(summary.to_string(index=False))
    return table, summary, rows
