"""Probing for token mixing along ontology relations (study.md E8, §9 weakness 3).

Pairs. Over the *context* tokens of a question (the query is excluded), with the first sub-token of each word and
plurals mapped to their singular lemma (via :mod:`cotmech.prontoqa.sentences`):

- ``related`` (0): the two nouns of one sentence that states a positive relation: subtype rule (child, parent),
  property rule (concept, property) or entity fact (entity, concept/property);
- ``negated`` (1): a node and a property it is said *not* to have, in the same sentence ("Every A is not p");
- ``unrelated`` (2): two concepts with no path between them in the ontology graph (subtype edges, undirected);
  each at its first occurrence in the context. (Unlike the other classes they are not in one sentence, as in the
  original; a probe may partly read sentence distance.)

Representation: the pair vector is the concatenation [h_a; h_b] (2·d_model) of the residual stream at the two
tokens (a = the earlier token), per layer: embeddings (layer 0) and the output of every block (1…L), before the
final norm. One pair = one sample (the original used the two vectors as separate samples).

Protocol: questions are split into train / validation / test (seeded, by question: no question in two splits);
validation and test questions have their concept words replaced by nonce words never seen in training
(:func:`novel_words`; one pool for validation, a disjoint one for test), as the authors' test file used novel
words; each split is class-balanced by down-sampling to its minority class (seeded); exact duplicates are removed;
features are standardised with train statistics; a linear probe and an MLP probe are trained with Adam and early
stopping on *validation* loss (best weights restored); test accuracy gets a Wilson 95% interval.

Reported number: the layer is chosen on *validation* accuracy (:func:`select_layers`) and the test accuracy is
reported at that layer, next to the whole curve (the maximum of test accuracy over layers is biased upward).

Controls. (1) Word type: unrelated pairs are concept–concept only, related pairs also entity–concept and
concept–property, negated pairs node–property; so the two words' types alone partly give the class.
:func:`type_baseline` is the best a reader of word types only can do: the majority class of each (type a,
type b) cell on the training split, scored on the test split. (2) The control task (Hewitt & Liang 2019) gives
every (word a, word b) type pair a fixed random class, so a probe can only solve it by memorising word
identities; selectivity = real − control accuracy.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .batching import chunks, common_prefix_len, left_pad
from .stats import wilson
from .models import _getattr_path
from .tracing import prefix_cache, suffix_last_logits

LABELS = ("related", "negated", "unrelated")

#: Our own nonce concept words for validation and test questions (none is a generator word; all pluralise with
#: "s" and parse back to themselves). The first half is the validation pool, the second the test pool.
NOVEL_CONCEPTS: tuple[str, ...] = (
    "blicket", "dorvin", "fennock", "grubbin", "hembar", "jorrick", "kestle", "lumbit", "morgle", "nubbet",
    "plimsor", "quaffin", "rundle", "snibbet",
    "tazzel", "velpin", "wuggle", "yorrel", "zaffer", "crundle", "bolkin", "fimble", "gantor", "hobbin",
    "kippet", "mabbet", "norvel", "trumbit",
)
NOVEL_POOLS: dict[str, tuple[str, ...]] = {"val": NOVEL_CONCEPTS[:14], "test": NOVEL_CONCEPTS[14:]}


@dataclass(frozen=True)
class TokenPair:
    """Two words of a question (char offsets of their first letters in the question) and the relation class."""

    a: str  # lemma of the earlier word
    b: str
    a_char: int
    b_char: int
    label: int  # index into LABELS
    relation: str  # subtype | property | member | negated | unrelated


# --------------------------------------------------------------------------------------------------
# Pairs from the question text
# --------------------------------------------------------------------------------------------------
def _sentences_with_offsets(question: str) -> list[tuple[int, str]]:
    from .prontoqa.sentences import split_sentences

    out, pos = [], 0
    for s in split_sentences(question):
        i = question.find(s, pos)
        if i < 0:  # pragma: no cover - split_sentences returns substrings
            raise ValueError(f"sentence {s!r} not found in question {question!r}")
        out.append((i, s))
        pos = i + len(s)
    return out


def question_pairs(question: str) -> list[TokenPair]:
    """All related / negated / unrelated pairs of one context (see module docstring); raises on a bad sentence."""
    import networkx as nx

    from .prontoqa.logic import LEXICON
    from .prontoqa.sentences import ParseError, parse

    pairs: list[TokenPair] = []
    first: dict[str, int] = {}  # concept lemma -> char of its first occurrence
    graph = nx.Graph()
    for off, sent in _sentences_with_offsets(question):
        try:
            p = parse(sent)
        except ParseError as e:
            raise ValueError(f"probing: cannot parse context sentence {sent!r} of question {question!r}") from e
        f = p.formula
        a_char, b_char = off + p.subj[0], off + p.obj[0]
        obj_is_property = LEXICON.word_type(f.obj) == "property"
        if f.kind == "rule":
            first.setdefault(f.subject, a_char)
            graph.add_node(f.subject)
        if not obj_is_property:
            first.setdefault(f.obj, b_char)
            graph.add_node(f.obj)
            if f.kind == "rule":
                graph.add_edge(f.subject, f.obj)
        if f.negated:
            relation = "negated"
        elif f.kind == "fact":
            relation = "member"
        else:
            relation = "property" if obj_is_property else "subtype"
        pairs.append(TokenPair(f.subject, f.obj, a_char, b_char, LABELS.index("negated" if f.negated else "related"),
                               relation))
    comp = {n: i for i, c in enumerate(nx.connected_components(graph)) for n in c}
    nodes = sorted(first, key=first.get)
    for i, x in enumerate(nodes):
        for y in nodes[i + 1:]:
            if comp[x] != comp[y]:
                pairs.append(TokenPair(x, y, first[x], first[y], LABELS.index("unrelated"), "unrelated"))
    seen, out = set(), []
    for p in pairs:
        if (p.a_char, p.b_char) not in seen:
            seen.add((p.a_char, p.b_char))
            out.append(p)
    return out


def token_index(offsets: Sequence[tuple[int, int]], char: int) -> int:
    """Index of the token whose character span covers ``char`` (the first sub-token of the word there)."""
    for i, (s, e) in enumerate(offsets):
        if s <= char < e and e > s:
            return i
    raise ValueError(f"no token covers character {char}")


# --------------------------------------------------------------------------------------------------
# Novel words for held-out questions
# --------------------------------------------------------------------------------------------------
def relexicalise(record: dict, mapping: dict[str, str]) -> dict:
    """A copy of a task record with every concept lemma of ``mapping`` replaced (singular and plural, any case)
    in question, query, CoT and answer; ``logic`` chain/concepts mapped too."""
    import re

    from .prontoqa.logic import plural

    from .prontoqa.sentences import article

    def sub(text: str) -> str:
        for old, new in mapping.items():
            forms = {plural(old): plural(new), old: new}
            pat = re.compile(r"\b(?:(an?) )?(" + "|".join(re.escape(f) for f in forms) + r")\b", re.IGNORECASE)

            def rep(m: re.Match) -> str:
                word = m.group(2)
                w = forms[next(f for f in forms if f.lower() == word.lower())]
                if plural(old) == old:  # "sheep": number from the verb ("Sheep are ...", "... are (not) sheep")
                    before, after = m.string[:m.start()], m.string[m.end():]
                    if after.startswith(" are ") or re.search(r"\bare (not )?$", before):
                        w = plural(new)
                w = w[:1].upper() + w[1:] if word[:1].isupper() else w
                return f"{article(w)} {w}" if m.group(1) else w  # "an impus" -> "a zaffer"
            text = pat.sub(rep, text)
        return text

    out = dict(record)
    for key in ("question", "query", "answer"):
        if key in out:
            out[key] = sub(out[key])
    if "cot" in out:
        out["cot"] = [sub(c) for c in out["cot"]]
    if isinstance(out.get("logic"), dict):
        lg = dict(out["logic"])
        for key in ("chain", "concepts"):
            if key in lg:
                lg[key] = [mapping.get(c, c) for c in lg[key]]
        out["logic"] = lg
    return out


def novel_words(records: Sequence[dict], splits: dict[str, list[str]], seed: int) -> list[dict]:
    """Records with the concepts of validation / test questions replaced by words of :data:`NOVEL_POOLS`
    (a seeded injective draw per question); training questions unchanged."""
    where = {q: s for s, qs in splits.items() for q in qs}
    out = []
    for i, r in enumerate(records):
        pool = NOVEL_POOLS.get(where.get(r["id"], "train"))
        if pool is None:
            out.append(r)
            continue
        lg = r.get("logic") or {}
        concepts = list(dict.fromkeys(list(lg.get("chain", [])) + list(lg.get("concepts", []))))
        if len(concepts) > len(pool):
            raise ValueError(f"probing: question {r['id']!r} has {len(concepts)} concepts, more than the "
                             f"{len(pool)} novel words of its pool")
        rng = np.random.default_rng([seed, i])
        new = [pool[j] for j in rng.choice(len(pool), size=len(concepts), replace=False)]
        out.append(relexicalise(r, dict(zip(concepts, new))))
    return out


# --------------------------------------------------------------------------------------------------
# Splits and balancing
# --------------------------------------------------------------------------------------------------
def split_questions(qids: Sequence[str], test_fraction: float, val_fraction: float, seed: int
                    ) -> dict[str, list[str]]:
    """Seeded split of question ids into train / val / test (each question in exactly one split)."""
    ids = sorted(set(qids))
    if len(ids) < 3:
        raise ValueError(f"probing needs at least 3 questions to split, got {len(ids)}")
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(f"probing: bad split fractions test={test_fraction}, val={val_fraction}")
    perm = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_test = max(1, round(test_fraction * len(ids)))
    n_val = max(1, round(val_fraction * len(ids)))
    return {"test": sorted(perm[:n_test]), "val": sorted(perm[n_test:n_test + n_val]),
            "train": sorted(perm[n_test + n_val:])}


def balance(labels: np.ndarray, rng: np.random.Generator, n_classes: int = len(LABELS)) -> np.ndarray:
    """Indices keeping an equal number (the minority count) of every class, seeded; sorted."""
    per = [np.flatnonzero(labels == c) for c in range(n_classes)]
    m = min(len(p) for p in per)
    return np.sort(np.concatenate([rng.choice(p, size=m, replace=False) for p in per]).astype(int))


def control_labels(a: Sequence[str], b: Sequence[str], seed: int, n_classes: int = len(LABELS)) -> np.ndarray:
    """Hewitt–Liang control task: a fixed pseudo-random class per (word a, word b) type pair."""
    def cls(x: str, y: str) -> int:
        h = hashlib.sha256(f"{seed}/{x.lower()}/{y.lower()}".encode()).digest()
        return int.from_bytes(h[:8], "little") % n_classes
    return np.array([cls(x, y) for x, y in zip(a, b)], dtype=int)


def word_type(lemma: str) -> str:
    """'entity' | 'property' | 'concept' (words outside the lexicon, e.g. :data:`NOVEL_CONCEPTS`, are concepts)."""
    from .prontoqa.logic import LEXICON

    t = LEXICON.word_type(lemma)
    return "concept" if t == "unknown" else t


def type_baseline(samples: pd.DataFrame) -> dict:
    """Word-type-only control: predict the training majority class of the pair's (type_a, type_b) cell (ties:
    lowest class; unseen cell: training majority) on the test split. Returns acc, ci_low, ci_high, n, correct."""
    tr, te = samples[samples["split"] == "train"], samples[samples["split"] == "test"]
    if tr.empty or te.empty:
        raise ValueError("type_baseline: empty train or test split")
    overall = int(tr["label"].value_counts().sort_index().idxmax())
    counts = tr.groupby(["type_a", "type_b", "label"]).size()
    rule = {cell: int(c.droplevel([0, 1]).sort_index().idxmax()) for cell, c in counts.groupby(level=[0, 1])}
    pred = [rule.get((a, b), overall) for a, b in zip(te["type_a"], te["type_b"])]
    k = int((np.asarray(pred) == te["label"].to_numpy()).sum())
    lo, hi = wilson(k, len(te))
    return {"acc": k / len(te), "ci_low": lo, "ci_high": hi, "n": len(te), "correct": k}


def sample_table(records: Sequence[dict], splits: dict[str, list[str]], seed: int) -> pd.DataFrame:
    """One row per kept pair: qid, split, a, b, a_char, b_char, label, relation, type_a, type_b, control
    (balanced per split)."""
    where = {q: s for s, qs in splits.items() for q in qs}
    rows = []
    for r in records:
        for p in question_pairs(r["question"]):
            rows.append(dict(qid=r["id"], split=where[r["id"]], a=p.a, b=p.b, a_char=p.a_char, b_char=p.b_char,
                             label=p.label, relation=p.relation, type_a=word_type(p.a), type_b=word_type(p.b)))
    df = pd.DataFrame(rows).drop_duplicates(["qid", "a_char", "b_char"])
    rng = np.random.default_rng(seed)
    keep = []
    for split in ("train", "val", "test"):
        d = df[df["split"] == split]
        keep.append(d.iloc[balance(d["label"].to_numpy(), rng)])
    out = pd.concat(keep, ignore_index=True)
    out["control"] = control_labels(out["a"], out["b"], seed)
    return out


# --------------------------------------------------------------------------------------------------
# Residual stream at the pair tokens
# --------------------------------------------------------------------------------------------------
def residuals_at(model, prompts: Sequence[str], positions: Sequence[Sequence[int]], batch_size: int = 4,
                 progress: bool = False) -> list[torch.Tensor]:
    """Residual stream at token positions.

    Returns per prompt a float32 tensor [n_positions, n_layers+1, d_model]: index 0 = embeddings, l = output of
    block l−1 (before the final norm). The token prefix every prompt shares (the few-shot exemplars), up to the
    first requested position, runs once (:func:`cotmech.tracing.prefix_cache`); each prompt's rest runs over it
    (:func:`residuals_over_prefix`). Without a shared prefix: :func:`residuals_plain`. Same numbers up to float
    rounding.
    """
    ids = [model.tokenizer(p).input_ids for p in prompts]
    if not ids:
        return []
    P = min(common_prefix_len(ids), min(min(p) for p in positions if len(p)) if any(map(len, positions)) else 0,
            min(len(i) for i in ids) - 1)
    if P <= 0:
        return residuals_plain(model, ids, positions, batch_size, progress)
    return residuals_over_prefix(model, ids, positions, P, batch_size, progress)


def _block_outputs(model, store: list):
    """Forward hooks appending the embedding output and every block's output ([rows, pos, d]) to ``store``."""
    mods = [model.hf.get_input_embeddings(), *model.hf_layers()]
    return [m.register_forward_hook(lambda mod, args, out: store.append(out[0] if isinstance(out, tuple) else out))
            for m in mods]


def residuals_over_prefix(model, ids: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], P: int,
                          batch_size: int = 4, progress: bool = False) -> list[torch.Tensor]:
    """:func:`residuals_at` with the shared first ``P`` tokens (every position >= P) run once."""
    cache = prefix_cache(model, torch.as_tensor(list(ids[0][:P]), dtype=torch.long))
    out: list[torch.Tensor | None] = [None] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for idx in tqdm(list(chunks(order, batch_size)), desc="residuals", disable=not progress):
        store: list[torch.Tensor] = []
        handles = _block_outputs(model, store)
        try:
            suffix_last_logits(model, [list(ids[i][P:]) for i in idx], cache)
        finally:
            for h in handles:
                h.remove()
        hs = torch.stack([t.float().cpu() for t in store], 2)  # [rows, suffix, L+1, d]
        for j, i in enumerate(idx):
            out[i] = hs[j, torch.as_tensor([p - P for p in positions[i]], dtype=torch.long)]
    return out  # type: ignore[return-value]


def residuals_plain(model, ids: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], batch_size: int = 4,
                    progress: bool = False) -> list[torch.Tensor]:
    """:func:`residuals_at` with every whole prompt run (left-padded batches, one nnsight forward per batch)."""
    tok = model.tokenizer
    out: list[torch.Tensor | None] = [None] * len(ids)
    embed = _getattr_path(model.lm, model.arch.embed)
    for idx in tqdm(list(chunks(list(range(len(ids))), batch_size)), desc="residuals", disable=not progress):
        batch = left_pad([list(ids[i]) for i in idx], tok.pad_token_id).to(model.device)
        saved = []
        with torch.no_grad(), model.lm.trace(**batch.kwargs()):
            saved.append(embed.output.save())
            for layer in range(model.n_layers):
                o = model.layer(layer).output
                saved.append((o[0] if isinstance(o, tuple) else o).save())
        hs = torch.stack([s.float().cpu() for s in saved], 2)  # [batch, seq, L+1, d]
        for j, i in enumerate(idx):
            cols = torch.as_tensor([batch.offset(j) + p for p in positions[i]], dtype=torch.long)
            out[i] = hs[j, cols]
    return out  # type: ignore[return-value]


def pair_features(model, records: Sequence[dict], prompts: Sequence[str], samples: pd.DataFrame,
                  batch_size: int = 4, progress: bool = False) -> torch.Tensor:
    """[n_samples, n_layers+1, 2·d_model] = [h_a; h_b] for every row of ``samples`` (question in its prompt)."""
    tok = model.tokenizer
    by_q = {r["id"]: (r, p) for r, p in zip(records, prompts)}
    qids = list(dict.fromkeys(samples["qid"]))
    positions, index = [], {}
    for q in qids:
        rec, prompt = by_q[q]
        base = prompt.rfind(rec["question"])
        if base < 0:
            raise ValueError(f"question {q!r} not found in its prompt")
        offsets = tok(prompt, return_offsets_mapping=True)["offset_mapping"]
        chars = sorted(set(samples.loc[samples["qid"] == q, ["a_char", "b_char"]].to_numpy().ravel().tolist()))
        pos = [token_index(offsets, base + c) for c in chars]
        positions.append(pos)
        index[q] = {c: i for i, c in enumerate(chars)}
    res = residuals_at(model, [by_q[q][1] for q in qids], positions, batch_size, progress)
    res_by_q = dict(zip(qids, res))
    feats = [torch.cat([res_by_q[r.qid][index[r.qid][r.a_char]], res_by_q[r.qid][index[r.qid][r.b_char]]], -1)
             for r in samples.itertuples()]
    return torch.stack(feats)


# --------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------
def make_probe(kind: str, d_in: int, n_classes: int, hidden: Sequence[int]) -> torch.nn.Module:
    if kind == "linear":
        return torch.nn.Linear(d_in, n_classes)
    if kind == "mlp":
        layers, d = [], d_in
        for h in hidden:
            layers += [torch.nn.Linear(d, h), torch.nn.ReLU()]
            d = h
        return torch.nn.Sequential(*layers, torch.nn.Linear(d, n_classes))
    raise ValueError(f"unknown probe kind {kind!r}; expected 'linear' or 'mlp'")


def train_probe(kind: str, x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor, y_va: torch.Tensor, *,
                seed: int, hidden: Sequence[int] = (128, 64), lr: float = 1e-2, weight_decay: float = 1e-4,
                max_epochs: int = 100, patience: int = 10, n_classes: int = len(LABELS)) -> torch.nn.Module:
    """Full-batch Adam on standardised features; early stopping on validation loss, best weights restored."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        probe = make_probe(kind, x_tr.shape[1], n_classes, hidden)
    finally:
        torch.random.set_rng_state(gen_state)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    best, best_state, bad = float("inf"), None, 0
    for _ in range(max_epochs):
        probe.train()
        opt.zero_grad()
        loss_fn(probe(x_tr), y_tr).backward()
        opt.step()
        probe.eval()
        with torch.no_grad():
            v = float(loss_fn(probe(x_va), y_va))
        if v < best - 1e-6:
            best, bad = v, 0
            best_state = {k: t.detach().clone() for k, t in probe.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        probe.load_state_dict(best_state)
    return probe.eval()


def standardise(x_tr: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mu, sd = x_tr.mean(0), x_tr.std(0).clamp(min=1e-6)
    return [(x - mu) / sd for x in (x_tr, *others)]


def probe_layers(features: torch.Tensor, samples: pd.DataFrame, *, seed: int, probes: Sequence[str] = ("linear", "mlp"),
                 tasks: Sequence[str] = ("real", "control"), progress: bool = False, **train_kw) -> pd.DataFrame:
    """Train/evaluate every probe on every layer: rows layer, probe, task, acc (test), ci_low, ci_high, val_acc,
    n_train, n_val, n_test.

    ``features``: [n_samples, n_layers+1, dim] aligned with ``samples`` (columns split, label, control).
    """
    split = samples["split"].to_numpy()
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    if min(len(tr), len(va), len(te)) == 0:
        raise ValueError(f"probing: empty split (train {len(tr)}, val {len(va)}, test {len(te)} samples); "
                         "use more questions")
    rows = []
    n_layers = features.shape[1]
    for layer in tqdm(range(n_layers), desc="probes", disable=not progress, leave=False):
        x_tr, x_va, x_te = standardise(features[tr, layer], features[va, layer], features[te, layer])
        for task in tasks:
            y = torch.tensor(samples["label" if task == "real" else "control"].to_numpy(), dtype=torch.long)
            for kind in probes:
                probe = train_probe(kind, x_tr, y[tr], x_va, y[va], seed=seed + layer, **train_kw)
                with torch.no_grad():
                    k = int((probe(x_te).argmax(-1) == y[te]).sum())
                    k_va = int((probe(x_va).argmax(-1) == y[va]).sum())
                lo, hi = wilson(k, len(te))
                rows.append(dict(layer=layer, probe=kind, task=task, acc=k / len(te), ci_low=lo, ci_high=hi,
                                 val_acc=k_va / len(va), n_train=len(tr), n_val=len(va), n_test=len(te)))
    return pd.DataFrame(rows)


def select_layers(acc: pd.DataFrame, baseline: dict | None = None) -> pd.DataFrame:
    """Per (shots, probe): the layer with the highest *validation* accuracy on the real task (ties: the earliest)
    and the test accuracy there, with the control task's test accuracy at the same layer and the word-type
    baseline (``baseline`` from :func:`type_baseline`); ``test_max``/``test_max_layer`` = the biased maximum of
    test accuracy over layers, for reference only."""
    real, ctrl = acc[acc["task"] == "real"], acc[acc["task"] == "control"]
    keys = ["shots", "probe"] if "shots" in acc.columns else ["probe"]
    rows = []
    for key, d in real.groupby(keys, sort=True):
        d = d.sort_values("layer")
        r = d.iloc[int(np.argmax(d["val_acc"].to_numpy()))]
        t = d.iloc[int(np.argmax(d["acc"].to_numpy()))]
        c = ctrl
        for k, v in zip(keys, key if isinstance(key, tuple) else (key,)):
            c = c[c[k] == v]
        c = c[c["layer"] == r["layer"]]
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update(layer=int(r["layer"]), n_layers=int(d["layer"].max()), val_acc=float(r["val_acc"]),
                   acc=float(r["acc"]), ci_low=float(r["ci_low"]), ci_high=float(r["ci_high"]),
                   n_test=int(r["n_test"]), control_acc=float(c["acc"].iloc[0]) if len(c) else float("nan"),
                   test_max=float(t["acc"]), test_max_layer=int(t["layer"]))
        if baseline is not None:
            row.update(type_acc=baseline["acc"], type_ci_low=baseline["ci_low"], type_ci_high=baseline["ci_high"])
        rows.append(row)
    return pd.DataFrame(rows)


def plot_accuracy(acc: pd.DataFrame, n_layers: int, stem, selected: pd.DataFrame | None = None) -> list:
    """F-probe: test accuracy vs relative depth, one line per shot count; a panel per probe; control dotted;
    the validation-selected layer of each line marked (``selected`` from :func:`select_layers`), the word-type
    baseline as a dash-dotted line."""
    from .plotting import figure, save_figure

    probes = sorted(acc["probe"].unique())
    fig, axes = figure(1, len(probes), width=3.6, height=2.8, sharey=True)
    cmap = __import__("matplotlib").colormaps["viridis"]
    shots = sorted(acc["shots"].unique())
    for ax, kind in zip(axes[0], probes):
        for i, k in enumerate(shots):
            c = cmap(i / max(1, len(shots) - 1) * 0.85)
            for task, ls in (("real", "-"), ("control", ":")):
                d = acc[(acc["probe"] == kind) & (acc["shots"] == k) & (acc["task"] == task)].sort_values("layer")
                if d.empty:
                    continue
                x = d["layer"] / n_layers
                ax.plot(x, d["acc"], ls, color=c, lw=1.2, label=f"{k}-shot" + (" control" if task == "control" else ""))
                if task == "real":
                    ax.fill_between(x, d["ci_low"], d["ci_high"], color=c, alpha=0.12)
            if selected is not None:
                sel = selected[(selected["probe"] == kind) & (selected["shots"] == k)]
                if len(sel):
                    ax.plot(sel["layer"] / n_layers, sel["acc"], "o", color=c, ms=4)
        if selected is not None and "type_acc" in selected.columns and len(selected):
            ax.axhline(float(selected["type_acc"].iloc[0]), color="black", lw=0.8, ls="-.", label="word type only")
        ax.axhline(1 / len(LABELS), color="grey", lw=0.6, ls="--")
        ax.set_title(f"{kind} probe")
        ax.set_xlabel("relative depth (layer / L)")
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=6)
    return save_figure(fig, stem)


def prepare(cfg, seed: int) -> tuple[list[dict], dict[str, list[str]], pd.DataFrame, dict]:
    """The probing data of config section ``probing`` (E3): ``n_questions`` generated questions (original style,
    relevant distractors, random order), split into train/val/test questions, nonce words in val/test when
    ``novel_words``, the balanced pair samples and the word-type-only baseline on the test split.

    Returns ``(records, splits, samples, baseline)``.
    """
    from .prontoqa import generate

    records = generate(cfg["ontology"], int(cfg["hops"]), int(cfg["n_questions"]), style="original",
                       distractors="relevant", ordering="random", seed=seed, id_prefix="probe-")
    splits = split_questions([r["id"] for r in records], cfg["test_fraction"], cfg["val_fraction"], seed)
    if cfg["novel_words"]:
        records = novel_words(records, splits, seed)
    samples = sample_table(records, splits, seed)
    return records, splits, samples, type_baseline(samples)


# --------------------------------------------------------------------------------------------------
# Entry point (scripts/probe.py)
# --------------------------------------------------------------------------------------------------
def shot_prompts(records: Sequence[dict], shots: int, seed: int) -> list[str]:
    """The ``shots``-shot probe prompts of the questions ``records`` (one per record, in order)."""
    from .prontoqa.prompts import build_prompt

    return [build_prompt(r, shots=int(shots), header="probe", seed=seed) for r in records]


def run(model, prepared: tuple[list[dict], dict[str, list[str]], pd.DataFrame, dict], cfg, seed: int, *,
        log=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Probe accuracy per layer (study.md E8): the whole curve (shots, layer, probe, task, test accuracy with CI,
    ...) and the per-(shots, probe) layer chosen on validation accuracy (:func:`select_layers`).

    ``prepared`` is :func:`prepare`'s ``(records, splits, samples, baseline)`` for ``cfg``, the ``probing`` config
    section (:func:`cotmech.config.section`); for every shot count of ``cfg["shots"]`` one forward per prompt
    (:func:`pair_features`) and the probes of :func:`probe_layers`.
    """
    import time

    log = log or (lambda msg: print(msg, flush=True))
    records, splits, samples, baseline = prepared
    log(f"{len(records)} questions ({', '.join(f'{k} {len(v)}' for k, v in splits.items())}); "
        f"balanced pairs per split: {samples.groupby('split').size().to_dict()}; "
        f"relations: {samples.relation.value_counts().to_dict()}")
    log("pair representation: concatenation [h_a; h_b] of the residual stream at the two first sub-tokens")
    log(f"validation/test concept words: {'novel (unseen in training)' if cfg['novel_words'] else 'as in training'}")
    log(f"word-type-only baseline (test): {baseline['acc']:.3f} [{baseline['ci_low']:.3f}, {baseline['ci_high']:.3f}]"
        f" on {baseline['n']} pairs")
    tables = []
    for k in cfg["shots"]:
        t1 = time.time()
        feats = pair_features(model, records, shot_prompts(records, int(k), seed), samples, int(cfg["batch_size"]),
                              progress=True)
        acc = probe_layers(feats, samples, seed=seed, probes=cfg["probes"], hidden=cfg["hidden"], lr=cfg["lr"],
                           weight_decay=cfg["weight_decay"], max_epochs=cfg["max_epochs"], patience=cfg["patience"],
                           progress=True)
        acc.insert(0, "shots", int(k))
        tables.append(acc)
        log(f"{k}-shot: forwards + probes in {time.time() - t1:.1f} s")
    acc = pd.concat(tables, ignore_index=True)
    selected = select_layers(acc, baseline)
    log(selected.to_string(index=False))
    return acc, selected
