"""Pair extraction, splits, residual extraction and probes (cotmech.probing)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cotmech import probing as P

Q = ("Every wumpus is a dumpus. Dumpuses are not blue. Each yumpus is sweet. Rompuses are yumpuses. "
     "Max is a wumpus.")


def test_pairs_on_a_hand_written_ontology():
    pairs = P.question_pairs(Q)
    got = {(p.a, p.b, P.LABELS[p.label], p.relation) for p in pairs}
    assert got == {
        ("wumpus", "dumpus", "related", "subtype"),
        ("dumpus", "blue", "negated", "negated"),
        ("yumpus", "sweet", "related", "property"),
        ("rompus", "yumpus", "related", "subtype"),
        ("Max", "wumpus", "related", "member"),
        # components {wumpus, dumpus} and {yumpus, rompus}: every cross pair, at first occurrences
        ("wumpus", "yumpus", "unrelated", "unrelated"), ("wumpus", "rompus", "unrelated", "unrelated"),
        ("dumpus", "yumpus", "unrelated", "unrelated"), ("dumpus", "rompus", "unrelated", "unrelated"),
    }
    by = {(p.a, p.b): p for p in pairs}
    assert Q[by[("dumpus", "blue")].a_char:].startswith("Dumpuses are not blue")  # plural mapped to its lemma
    assert Q[by[("dumpus", "blue")].b_char:].startswith("blue")
    assert Q[by[("wumpus", "dumpus")].a_char:].startswith("wumpus is a dumpus")  # quantifier skipped
    assert Q[by[("wumpus", "yumpus")].b_char:].startswith("yumpus is sweet")  # first occurrence
    assert all(p.a_char < p.b_char for p in pairs)
    with pytest.raises(ValueError, match="cannot parse"):
        P.question_pairs("Every wumpus is a dumpus. This is nonsense")


def _records(n):
    from cotmech.prontoqa import generate

    return generate("fictional", 2, n, style="original", distractors="relevant", seed=5)


def test_splits_never_share_a_question_and_classes_are_balanced():
    recs = _records(12)
    splits = P.split_questions([r["id"] for r in recs], 0.25, 0.25, seed=1)
    assert sum(map(len, splits.values())) == 12
    assert not (set(splits["train"]) & set(splits["test"]) or set(splits["val"]) & set(splits["test"])
                or set(splits["train"]) & set(splits["val"]))
    s = P.sample_table(recs, splits, seed=1)
    for name, d in s.groupby("split"):
        assert set(d.qid) <= set(splits[name])
        counts = d.label.value_counts()
        assert len(counts) == 3 and counts.nunique() == 1
    assert not s.duplicated(["qid", "a_char", "b_char"]).any()
    pd.testing.assert_frame_equal(s, P.sample_table(recs, splits, seed=1))
    # control task: one class per word-type pair, the same in every split
    assert (s.groupby(["a", "b"]).control.nunique() == 1).all()


def test_probe_learns_planted_signal_and_not_shuffled_labels():
    rng = np.random.default_rng(0)
    n, d = 300, 20
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d))
    x[np.arange(n), y] += 8.0  # class c shifted along axis c: linearly separable with a wide margin
    split = np.array(["train"] * 180 + ["val"] * 45 + ["test"] * 75)
    shuffled = rng.permutation(y)
    samples = pd.DataFrame({"split": split, "label": y, "control": shuffled})
    feats = torch.as_tensor(x, dtype=torch.float32)[:, None, :]  # one "layer"
    acc = P.probe_layers(feats, samples, seed=0, max_epochs=100, patience=20)
    real = acc[acc.task == "real"].set_index("probe").acc
    ctrl = acc[acc.task == "control"].set_index("probe").acc
    assert real["linear"] >= 0.97 and real["mlp"] >= 0.97
    assert ctrl.max() < 0.5  # chance = 1/3 on 75 test samples (upper 99% binomial bound ≈ 0.47)
    assert (acc.n_test == 75).all() and (acc.n_train == 180).all()


def test_residuals_match_hidden_states_and_first_subtoken(tiny_model):
    from cotmech.batching import left_pad

    prompts = ["Some words first. " + Q, Q]
    tok = tiny_model.tokenizer
    chars = [[p.rfind("dumpus"), p.rfind("Max")] for p in prompts]
    pos = []
    for p, cs in zip(prompts, chars):
        offs = tok(p, return_offsets_mapping=True)["offset_mapping"]
        pos.append([P.token_index(offs, c) for c in cs])
        ids = tok(p).input_ids
        assert tok.decode(ids[pos[-1][1]]).strip() == "Max"
        assert "dumpus".startswith(tok.decode(ids[pos[-1][0]]).strip())
    res = P.residuals_at(tiny_model, prompts, pos, batch_size=2)
    assert res[0].shape == (2, tiny_model.n_layers + 1, tiny_model.d_model)
    for p, r, ps in zip(prompts, res, pos):
        batch = left_pad([tok(p).input_ids], tok.pad_token_id)
        hs = tiny_model.hf(**batch.kwargs(), output_hidden_states=True).hidden_states  # last one is after the norm
        for layer in range(tiny_model.n_layers):
            torch.testing.assert_close(r[:, layer], hs[layer][0, ps].float(), atol=1e-4, rtol=1e-4)


def test_residuals_over_a_shared_prefix_equal_each_whole_prompt(tiny_model):
    """Prompts sharing their exemplars: the prefix runs once and each rest over it (residuals_over_prefix);
    oracle: HF's hidden states of each whole prompt alone (embeddings and blocks 0..L-2; the last one HF returns
    after the final norm) and, for every index 0..L, the plain left-padded nnsight path."""
    from cotmech.batching import left_pad

    head = "Sterpus is bitter. Alex is sterpus. Alex is bitter.\n\n"
    prompts = [head + Q, head + Q.replace("Max", "Rex"), head + "Every wumpus is a dumpus. " + Q]
    tok = tiny_model.tokenizer
    ids = [tok(p).input_ids for p in prompts]
    pos = [[len(i) - 1, len(i) - 3, len(tok(head).input_ids) + 1] for i in ids]
    calls = []
    real = P.residuals_over_prefix
    P.residuals_over_prefix = lambda *a, **k: calls.append(a[3]) or real(*a, **k)
    try:
        res = P.residuals_at(tiny_model, prompts, pos, batch_size=2)
    finally:
        P.residuals_over_prefix = real
    assert calls and calls[0] > 5  # the shared prefix really ran once
    plain = P.residuals_plain(tiny_model, ids, pos, batch_size=3)
    for i, (p, r, ps) in enumerate(zip(prompts, res, pos)):
        assert r.shape == (3, tiny_model.n_layers + 1, tiny_model.d_model)
        torch.testing.assert_close(r, plain[i], atol=1e-4, rtol=1e-4)
        hs = tiny_model.hf(**left_pad([ids[i]], tok.pad_token_id).kwargs(), output_hidden_states=True).hidden_states
        for layer in range(tiny_model.n_layers):
            torch.testing.assert_close(r[:, layer], hs[layer][0, ps].float(), atol=1e-4, rtol=1e-4)


def test_pair_features_end_to_end(tiny_llama):
    from cotmech.prontoqa.prompts import build_prompt

    recs = _records(6)
    splits = P.split_questions([r["id"] for r in recs], 0.34, 0.17, seed=2)
    s = P.sample_table(recs, splits, seed=2)
    prompts = [build_prompt(r, shots=1, header="probe") for r in recs]
    f = P.pair_features(tiny_llama, recs, prompts, s, batch_size=3)
    assert f.shape == (len(s), tiny_llama.n_layers + 1, 2 * tiny_llama.d_model)
    acc = P.probe_layers(f, s, seed=0, max_epochs=5, patience=2)
    assert len(acc) == (tiny_llama.n_layers + 1) * 4 and acc.acc.between(0, 1).all()


def test_select_layers_picks_the_validation_argmax_not_the_test_argmax():
    """Analytic case: test accuracy peaks at layer 2, validation at layer 1 -> the reported number is layer 1's
    test accuracy; the control row and the biased test maximum are reported beside it."""
    rows = []
    for layer, (va, te) in enumerate([(0.40, 0.45), (0.80, 0.60), (0.70, 0.75), (0.80, 0.50)]):
        rows.append(dict(shots=0, layer=layer, probe="mlp", task="real", acc=te, ci_low=te - .1, ci_high=te + .1,
                         val_acc=va, n_test=40))
        rows.append(dict(shots=0, layer=layer, probe="mlp", task="control", acc=0.3 + layer / 100,
                         ci_low=0.2, ci_high=0.4, val_acc=0.3, n_test=40))
    sel = P.select_layers(pd.DataFrame(rows), {"acc": 0.55, "ci_low": 0.4, "ci_high": 0.7})
    r = sel.iloc[0]
    assert len(sel) == 1 and r.layer == 1  # first of the tied validation maxima (layers 1 and 3)
    assert r.acc == 0.60 and r.val_acc == 0.80 and r.control_acc == 0.31
    assert r.test_max == 0.75 and r.test_max_layer == 2 and r.type_acc == 0.55


def test_probe_layers_report_validation_accuracy_that_finds_the_signal_layer():
    rng = np.random.default_rng(1)
    n, d = 300, 12
    y = rng.integers(0, 3, n)
    noise = rng.normal(size=(n, d))
    signal = rng.normal(size=(n, d))
    signal[np.arange(n), y] += 6.0
    feats = torch.as_tensor(np.stack([noise, signal, noise[::-1].copy()], 1), dtype=torch.float32)  # layer 1 only
    split = np.array(["train"] * 180 + ["val"] * 60 + ["test"] * 60)
    samples = pd.DataFrame({"split": split, "label": y, "control": rng.permutation(y)})
    acc = P.probe_layers(feats, samples, seed=0, probes=("linear",), tasks=("real",), max_epochs=80, patience=20)
    assert acc.set_index("layer").val_acc[1] >= 0.9 and acc.set_index("layer").val_acc[[0, 2]].max() < 0.6
    assert (acc.n_val == 60).all()
    assert P.select_layers(acc).iloc[0].layer == 1


def test_type_baseline_on_a_hand_built_table():
    """Train cells: (c,c) related 2 / unrelated 5 -> unrelated; (c,p) related 3 / negated 4 -> negated;
    (e,c) related 3 -> related. Test: (c,c) 1 related + 2 unrelated, (c,p) 2 related + 1 negated, (e,c) 1
    related, (e,p) 1 negated (unseen cell -> training majority = related, 8 of 20, wrong) -> 2 + 1 + 1 + 0 = 4 of
    8. (4 of 8 is also the count of wrong predictions: the next test is not symmetric that way.)"""
    def rows(split, ta, tb, label, k):
        return [dict(split=split, type_a=ta, type_b=tb, label=label)] * k
    t = (rows("train", "concept", "concept", 0, 2) + rows("train", "concept", "concept", 2, 5)
         + rows("train", "concept", "property", 0, 3) + rows("train", "concept", "property", 1, 4)
         + rows("train", "entity", "concept", 0, 3)
         + rows("test", "concept", "concept", 0, 1) + rows("test", "concept", "concept", 2, 2)
         + rows("test", "concept", "property", 0, 2) + rows("test", "concept", "property", 1, 1)
         + rows("test", "entity", "concept", 0, 1) + rows("test", "entity", "property", 1, 1))
    b = P.type_baseline(pd.DataFrame(t))
    assert (b["correct"], b["n"]) == (4, 8) and b["acc"] == 0.5
    from scipy.stats import norm

    z, k, n = norm.ppf(0.975), 4, 8  # Wilson score interval written out
    c, h = (k / n + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(.25 / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = c - h, c + h
    assert b["ci_low"] == pytest.approx(lo) and b["ci_high"] == pytest.approx(hi)


def test_novel_words_replace_every_concept_of_held_out_questions_and_keep_the_logic():
    from cotmech import vocab
    from cotmech.prontoqa.logic import LEXICON, plural
    from cotmech.prontoqa.sentences import parse, split_sentences

    assert not set(P.NOVEL_POOLS["val"]) & set(P.NOVEL_POOLS["test"])
    for w in P.NOVEL_CONCEPTS:  # unknown to the lexicon, and the parser recovers the lemma from either form
        assert LEXICON.word_type(w) == "unknown" and P.word_type(w) == "concept"
        assert parse(f"{plural(w).capitalize()} are {plural('wumpus')}.").formula.subject == w
        assert parse(f"Every wumpus is a {w}.").formula.obj == w
    recs = _records(20)
    splits = P.split_questions([r["id"] for r in recs], 0.3, 0.3, seed=4)
    new = P.novel_words(recs, splits, seed=4)
    where = {q: s for s, qs in splits.items() for q in qs}
    train_words = set(vocab.FICTIONAL_CONCEPTS)
    for old, rec in zip(recs, new):
        split = where[rec["id"]]
        f_old = [parse(s).formula for s in split_sentences(old["question"])]
        f_new = [parse(s).formula for s in split_sentences(rec["question"])]
        if split == "train":
            assert rec == old
            continue
        # reference mapping read off the two parses, sentence by sentence: it must be one consistent bijection
        mapping = {}
        for a, b in zip(f_old, f_new):
            for x, y in ((a.subject, b.subject), (a.obj, b.obj)):
                if x != y:
                    assert mapping.setdefault(x, y) == y
        assert set(mapping) == set(old["logic"]["concepts"]) | set(old["logic"]["chain"])
        assert len(set(mapping.values())) == len(mapping) and set(mapping.values()) <= set(P.NOVEL_POOLS[split])
        words = {w for f in f_new for w in (f.subject, f.obj)}
        assert not words & train_words
        assert [(p.label, p.relation) for p in P.question_pairs(rec["question"])] == \
            [(p.label, p.relation) for p in P.question_pairs(old["question"])]
        assert " an " not in rec["question"] or all(
            s.split(" an ")[1][:1].lower() in "aeiou" for s in split_sentences(rec["question"]) if " an " in s)
        assert all(w not in rec["answer"].lower() for w in mapping)


def test_relexicalise_keeps_number_articles_and_case():
    rec = {"question": "Sheep are mean. Every impus is a sheep. Cows are sheep. Impuses are not sheep. Max is an impus.",
           "query": "True or false: Max is not mean.", "cot": ["Max is an impus."], "answer": "Max is an impus. True",
           "logic": {"chain": ["impus", "sheep"], "concepts": ["cow", "impus", "sheep"]}}
    out = P.relexicalise(rec, {"sheep": "fimble", "impus": "zaffer", "cow": "kippet"})
    assert out["question"] == ("Fimbles are mean. Every zaffer is a fimble. Kippets are fimbles. Zaffers are not "
                               "fimbles. Max is a zaffer.")
    assert out["cot"] == ["Max is a zaffer."] and out["answer"] == "Max is a zaffer. True"
    assert out["logic"]["chain"] == ["zaffer", "fimble"] and rec["question"].startswith("Sheep")


def test_pair_features_are_the_residuals_at_each_words_first_token(tiny_llama):
    """Oracle for the token offsets: a token's character span from cumulative decoding (no offset mapping), the
    residuals from a plain unpadded HF forward (hidden states, and a hook on the last block for layer L)."""
    import re

    from cotmech.prontoqa.prompts import build_prompt

    m, tok = tiny_llama, tiny_llama.tokenizer
    recs = _records(4)
    splits = P.split_questions([r["id"] for r in recs], 0.25, 0.25, seed=3)
    s = P.sample_table(recs, splits, seed=3)
    prompts = [build_prompt(r, shots=1, header="probe") for r in recs]
    f = P.pair_features(m, recs, prompts, s, batch_size=3)  # batches of unequal lengths: left padding
    d, L = m.d_model, m.n_layers
    by_q = {r["id"]: (r, p) for r, p in zip(recs, prompts)}
    cache = {}
    for row, feat in zip(s.itertuples(), f):
        rec, prompt = by_q[row.qid]
        if row.qid not in cache:
            ids = tok(prompt).input_ids
            ends = [len(tok.decode(ids[:i + 1], skip_special_tokens=True)) for i in range(len(ids))]
            last = {}
            hook = m.hf.model.layers[-1].register_forward_hook(
                lambda mod, a, o: last.__setitem__("h", (o[0] if isinstance(o, tuple) else o).detach()))
            with torch.no_grad():
                hs = m.hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
            hook.remove()
            cache[row.qid] = ids, ends, torch.stack([h[0] for h in hs[:L]] + [last["h"][0]], 1)  # [seq, L+1, d]
        ids, ends, ref = cache[row.qid]
        base = prompt.rfind(rec["question"])
        for lemma, char, part in ((row.a, row.a_char, feat[:, :d]), (row.b, row.b_char, feat[:, d:])):
            at = base + char
            word = re.match(r"[A-Za-z]+", prompt[at:]).group(0)
            assert word.lower().startswith(lemma.lower()), (word, lemma)  # the intended word (plural -> lemma)
            i = next(i for i, e in enumerate(ends) if e > at)  # the token covering the word's first letter
            piece = tok.decode([ids[i]])
            assert piece.strip() and word.startswith(piece.strip())  # decodes to the word's start
            assert ends[i] - len(piece.lstrip()) == at  # ... and starts at its first letter
            torch.testing.assert_close(part, ref[i].float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("novel", [True, False])
def test_prepare_is_the_probe_scripts_data(novel):
    """probing.prepare (probe.py and bench_rules) = the explicit chain: generate the config's questions (original
    style, relevant distractors, random order), split, nonce words in val/test when novel_words, pairs, baseline."""
    from cotmech import config
    from cotmech.prontoqa import generate

    cfg = config.section({"probing": {"n_questions": 12, "novel_words": novel}}, "probing")
    records, splits, samples, baseline = P.prepare(cfg, 5)
    want = generate(cfg["ontology"], cfg["hops"], 12, style="original", distractors="relevant", ordering="random",
                    seed=5, id_prefix="probe-")
    want_splits = P.split_questions([r["id"] for r in want], cfg["test_fraction"], cfg["val_fraction"], 5)
    if novel:
        want = P.novel_words(want, want_splits, 5)
    assert records == want and splits == want_splits
    pd.testing.assert_frame_equal(samples, P.sample_table(want, want_splits, 5))
    assert baseline == P.type_baseline(samples)
    assert len(records) == 12 and {r["ontology"] for r in records} == {cfg["ontology"]}


def test_type_baseline_equals_an_explicit_majority_rule_loop():
    """The word-type baseline against a reference written as plain loops: per (type_a, type_b) cell of the training
    split, the most frequent label (ties: the lowest); a cell unseen in training takes the training majority. The
    planted table has skewed cells, an unseen test cell whose label is the training majority, and more wrong than
    right predictions in some cells, so a count of mismatches or a rule keyed on the wrong columns gives another
    number."""
    from collections import Counter

    rng = np.random.default_rng(3)
    types = ["concept", "entity", "property"]
    rows = []
    for split, n in (("train", 300), ("test", 120)):
        for _ in range(n):
            ta, tb = types[rng.integers(3)], types[rng.integers(2)]  # tb never "property" ...
            skew = {"concept": [0.6, 0.3, 0.1], "entity": [0.1, 0.7, 0.2]}[tb] if ta != "property" else [.2, .2, .6]
            rows.append(dict(split=split, type_a=ta, type_b=tb, label=int(rng.choice(3, p=skew))))
    rows += [dict(split="test", type_a="entity", type_b="property", label=1)] * 5  # ... except in 5 test rows
    t = pd.DataFrame(rows)
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]

    def majority(labels):
        c = Counter(labels)
        return min(c, key=lambda y: (-c[y], y))

    overall = majority([r["label"] for r in train])
    assert overall == 1  # the unseen cell's 5 rows are right only under the fallback to the training majority
    rule = {}
    for r in train:
        rule.setdefault((r["type_a"], r["type_b"]), []).append(r["label"])
    rule = {cell: majority(v) for cell, v in rule.items()}
    correct = sum(rule.get((r["type_a"], r["type_b"]), overall) == r["label"] for r in test)
    b = P.type_baseline(t)
    assert (b["correct"], b["n"]) == (correct, len(test)) and b["acc"] == correct / len(test)
    assert 0.5 < b["acc"] < 0.8  # not symmetric under counting mismatches instead of matches
    from cotmech.stats import wilson
    assert (b["ci_low"], b["ci_high"]) == wilson(correct, len(test))
    for empty in ("train", "test"):  # either split empty is an error, not a number
        with pytest.raises(ValueError, match="empty train or test"):
            P.type_baseline(t[t["split"] != empty])


def test_select_layers_selects_per_shot_count():
    """With a ``shots`` column the layer is chosen per (shots, probe): 0-shot peaks (validation) at layer 2, 4-shot at
    layer 0; each row reports its own test and control accuracy."""
    rows = []
    for shots, vals in ((4, [0.95, 0.7, 0.8]), (0, [0.5, 0.6, 0.9])):  # rows not in shots order
        for layer, va in enumerate(vals):
            te = va - 0.05 + shots / 100
            rows.append(dict(shots=shots, layer=layer, probe="linear", task="real", acc=te, ci_low=te - .1,
                             ci_high=te + .1, val_acc=va, n_test=30))
            rows.append(dict(shots=shots, layer=layer, probe="linear", task="control",
                             acc=0.3 + shots / 10 + layer / 100, ci_low=0.2, ci_high=0.4, val_acc=0.3, n_test=30))
    sel = P.select_layers(pd.DataFrame(rows))
    assert sel.shots.tolist() == [0, 4]  # sorted
    sel = sel.set_index("shots")
    assert list(sel.layer) == [2, 0]
    assert sel.acc.tolist() == pytest.approx([0.85, 0.94]) and sel.control_acc.tolist() == pytest.approx([0.32, 0.7])
    assert sel.test_max_layer.tolist() == [2, 0]
    assert sel.ci_low.tolist() == pytest.approx([0.75, 0.84]) and sel.ci_high.tolist() == pytest.approx([0.95, 1.04])
    assert sel.n_test.tolist() == [30, 30] and sel.n_layers.tolist() == [2, 2]
