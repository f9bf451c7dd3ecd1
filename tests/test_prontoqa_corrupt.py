"""Logical corruptions (study.md §4 suggested fix) under several tokenizers: properties of every pair."""
from __future__ import annotations

import collections
import copy
from pathlib import Path

import numpy as np
import pytest

from cotmech import vocab
from cotmech.embedded import default_cache_dir
from cotmech.models import task_tokenizer
from cotmech.prontoqa import generate
from cotmech.prontoqa.corrupt import Pair, Rejected, adds_bos, encode, make_pair
from cotmech.prontoqa.logic import LEXICON, plural
from cotmech.prontoqa.prompts import build_prompt
from cotmech.prontoqa.sentences import parse
from cotmech.prontoqa.subtasks import steps

QWEN_DIR = default_cache_dir() / "qwen2.5-coder-1.5b-instruct"


def word_level_tokenizer():
    """A word-level tokenizer (one id per word or punctuation mark), built with `tokenizers`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"[UNK]"}
    texts = [build_prompt(generate(o, 2, 1, seed=0, style=s)[0]) for o in ("fictional", "false", "true")
             for s in ("paper", "original")]
    lex = list(LEXICON.concepts) + list(LEXICON.properties) + list(LEXICON.entities)
    texts += [" ".join(w.capitalize() + " " + w for w in lex)]
    texts += [" ".join(plural(c).capitalize() + " " + plural(c) for c in LEXICON.concepts)]
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    for t in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(t))
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(sorted(words))}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")


class BosTokenizer:
    """Llama-2-like behaviour on top of another tokenizer: a BOS id that the model expects in front."""

    bos_token_id = 1
    add_bos_token = True

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, text, add_special_tokens=True):
        return self.inner(text, add_special_tokens=False)


class LineTokenizer:
    """One token per line: merges everything across the answer boundary."""

    bos_token_id = None

    def __init__(self):
        self.ids: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=True):
        class Out:
            pass

        out = Out()
        out.input_ids = [self.ids.setdefault(line, len(self.ids)) for line in text.split("\n")]
        return out


def _records():
    return (generate("fictional", 2, 3, seed=1) + generate("false", 2, 2, seed=2) + generate("true", 3, 1, seed=3)
            + generate("fictional", 3, 2, seed=4, style="original", distractors="relevant")
            + generate("false", 2, 3, seed=6, style="original", distractors="irrelevant"))


def check_pair(rec: dict, step, prompt: str, tok, pair: Pair) -> None:
    sep = " " if step.prefix else ""
    assert pair.clean == prompt + step.prefix and pair.corrupt != pair.clean
    assert pair.clean_ids == encode(tok, pair.clean) and pair.corrupt_ids == encode(tok, pair.corrupt)
    assert len(pair.clean_ids) == len(pair.corrupt_ids)
    d = pair.first_diff
    assert pair.clean_ids[:d] == pair.corrupt_ids[:d] and pair.clean_ids[d] != pair.corrupt_ids[d]
    assert pair.answer == step.target
    assert pair.answer_id == encode(tok, pair.clean + sep + step.target)[len(pair.clean_ids)]
    # the replaced word: same type, capitalisation and number; outside the exemplars and the fixed phrases
    frm, to, where = pair.replaced["from"], pair.replaced["to"], pair.replaced["where"]
    (lf, pf), (lt, pt) = LEXICON.lemma(frm), LEXICON.lemma(to)
    assert LEXICON.word_type(lf) == LEXICON.word_type(lt) != "unknown" and lf != lt
    assert frm[0].isupper() == to[0].isupper()
    if LEXICON.word_type(lf) == "concept" and lf != "sheep" and lt != "sheep":  # same number
        assert pf == pt
    c = next(i for i, (a, b) in enumerate(zip(pair.clean, pair.corrupt)) if a != b)
    start = c - next(k for k in range(len(frm) + 1) if pair.clean[c - k:c - k + len(frm)] == frm)
    assert pair.corrupt[:start] + frm + pair.corrupt[start + len(to):] == pair.clean
    assert start >= prompt.rfind("### Input") and (where == "response") == (start >= len(prompt))
    if step.kind == "label":
        assert lf == parse(rec["cot"][-1]).formula.obj and pair.corrupt_answer_id is None
    else:
        assert lf == step.lemma
        assert pair.corrupt_answer_id is None or pair.corrupt_answer_id != pair.answer_id
    if where == "response":  # the most recent occurrence in the generated prefix
        assert frm in step.prefix
    if pair.answer_pos is not None:
        assert pair.clean_ids[pair.answer_pos] == pair.answer_id
        assert pair.answer_id not in pair.clean_ids[pair.answer_pos + 1:-1]
    else:
        assert pair.answer_id not in pair.clean_ids[:-1]


TOKENIZERS = {
    "bpe300": lambda: task_tokenizer(300),
    "bpe1000": lambda: task_tokenizer(1000),
    "word": word_level_tokenizer,
    "bpe1000+bos": lambda: BosTokenizer(task_tokenizer(1000)),
}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_pair_properties(name):
    tok = TOKENIZERS[name]()
    reasons = collections.Counter()
    n = 0
    for rec in _records():
        prompt = build_prompt(rec, shots=2)
        for st in steps(rec, include_label=True):
            pair = make_pair(rec, st, prompt, tok, np.random.default_rng(n))
            n += 1
            if isinstance(pair, Rejected):
                reasons[pair.reason] += 1
                continue
            check_pair(rec, st, prompt, tok, pair)
            if name.endswith("+bos"):
                assert pair.clean_ids[0] == 1
    assert set(reasons) <= {"no equal-length replacement", "tokenizer merges across the answer boundary"}
    assert sum(reasons.values()) < 0.35 * n, reasons
    if name == "word":  # every single-word replacement keeps the length here
        assert not reasons


def test_worked_example_locations(fixtures_dir):
    """Where each of the 10 (+label) corruptions lands for the §3 example (study.md §3 "corruption location")."""
    from cotmech.prontoqa.importers import import_file

    rec = import_file(fixtures_dir / "authors/activation_patching_clean_sample.json")[0]
    tok = word_level_tokenizer()
    prompt = build_prompt(rec)
    got = []
    for st in steps(rec, include_label=True):
        pair = make_pair(rec, st, prompt, tok, np.random.default_rng(0))
        got.append((pair.replaced["from"], pair.replaced["where"]))
    # k = 2 and k = 6: the rule subject where the rule is stated in the question (not "Wren is impus." / "Wren is
    # sterpus." just generated)
    assert got == [("Wren", "prompt"), ("impus", "prompt"), ("Impuses", "prompt"), ("sterpuses", "prompt"),
                   ("Wren", "response"), ("sterpuses", "response"), ("Sterpuses", "prompt"), ("earthy", "prompt"),
                   ("Wren", "response"), ("earthy", "response"), ("earthy", "response")]


#: study.md §3, column "corruption location": the authors' (majority) location per subtask of the 2-hop CoT
PAPER_LOCATION = {0: "prompt", 1: "prompt", 2: "prompt", 3: "prompt", 4: "response", 5: "response", 6: "prompt",
                  7: "prompt", 8: "response", 9: "response", 10: "response"}


def _expected_location(step) -> str:
    """§3 read as a rule: an answer read from the query or the question is corrupted in the prompt, a generated one
    in the response (this is the table's "answer source" column against its "corruption location" column)."""
    return "response" if step.source == "generated" else "prompt"


def test_location_rule_matches_paper_table():
    rec = generate("fictional", 2, 1, seed=0)[0]
    assert {st.index: _expected_location(st) for st in steps(rec, include_label=True)} == PAPER_LOCATION


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_locations_on_generated_data(hops):
    """Per subtask, every generated pair is corrupted where §3 says (all ontologies, both styles, distractors)."""
    tok = word_level_tokenizer()
    recs = (generate("fictional", hops, 4, seed=11) + generate("false", hops, 3, seed=12)
            + generate("true", hops, 2, seed=13)
            + generate("fictional", hops, 3, seed=14, style="original", distractors="relevant", ordering="postorder")
            + generate("false", hops, 3, seed=15, style="original", distractors="irrelevant", ordering="random"))
    split = collections.Counter()
    for i, rec in enumerate(recs):
        prompt = build_prompt(rec, shots=2)
        for st in steps(rec, include_label=True):
            pair = make_pair(rec, st, prompt, tok, np.random.default_rng(i))
            assert isinstance(pair, Pair), (rec["id"], st, pair)
            split[(st.index, pair.replaced["where"])] += 1
            assert pair.replaced["where"] == _expected_location(st), (rec["id"], st.index, pair.replaced)
    if hops == 2:
        assert {k for k, _ in split} == set(PAPER_LOCATION)
        assert {k: w for k, w in split} == PAPER_LOCATION


def _authors_location(r: dict, k: int) -> tuple[str, int, str] | None:
    """(where, char offset of the replaced word in the prompt string or the response prefix, the word) of the
    authors' corruption for subtask k; None for their no-op corruptions."""
    for where, clean, noisy in (("prompt", r["prompt"], r[f"noise_prompt_{k}"]),
                                ("response", r[f"response_{k}"], r[f"noise_response_{k}"])):
        if clean != noisy:
            i = next((i for i, (a, b) in enumerate(zip(clean, noisy)) if a != b), min(len(clean), len(noisy)))
            start = clean.rfind(" ", 0, i) + 1
            return where, start, clean[start:].split(" ")[0].rstrip(".")
    return None


def test_locations_match_authors_records(fixtures_dir):
    """On the authors' clean file: our corruption hits the very word the authors' did, at the same place, for every
    (record, subtask) except their no-ops and their wrong-word hits (a first sub-token shared with another word,
    study.md §4); the per-subtask split of their file is §3's."""
    import json

    from cotmech.prontoqa.importers import import_file
    from cotmech.prontoqa.prompts import input_text

    path = fixtures_dir / "authors/activation_patching_clean_sample.json"
    raw = json.loads(path.read_text())
    recs = import_file(path)
    tok = word_level_tokenizer()
    theirs, ours_split, agree, wrong_word = collections.Counter(), collections.Counter(), 0, []
    for r, rec in zip(raw, recs):
        prompt = build_prompt(rec)
        test_input = prompt.rindex(input_text(rec))
        assert prompt[test_input:test_input + len(r["prompt"])] == r["prompt"]
        for st in steps(rec, include_label=True):
            loc = _authors_location(r, st.index)
            assert loc is not None  # no no-op corruption in this sample
            theirs[(st.index, loc[0])] += 1
            pair = make_pair(rec, st, prompt, tok, np.random.default_rng(st.index))
            frm = pair.replaced["from"]
            ours_split[(st.index, pair.replaced["where"])] += 1
            start = next(i for i, (a, b) in enumerate(zip(pair.clean, pair.corrupt)) if a != b)
            start -= next(j for j in range(len(frm)) if pair.clean[start - j:start - j + len(frm)] == frm)
            ours = ("prompt", start - test_input) if pair.replaced["where"] == "prompt" else \
                ("response", start - len(prompt))
            target = st.lemma if st.kind != "label" else parse(rec["cot"][-1]).formula.obj
            if LEXICON.lemma(loc[2])[0] != target:  # the authors replaced another word than the target
                wrong_word.append((rec["id"], st.index, loc[2]))
                continue
            assert ours == loc[:2], (rec["id"], st.index, loc, pair.replaced)
            agree += 1
    # §3's split holds on the sample too: one location per subtask but one wrong-word hit in record 3, where the
    # first sub-token "W" is shared by "Wumpuses" and "Wren" (k = 6 hit "Wren", k = 8 hit "Wumpuses")
    assert {k: w for (k, w), n in theirs.items() if n >= 19} == PAPER_LOCATION
    assert wrong_word == [(recs[3]["id"], 6, "Wren"), (recs[3]["id"], 8, "Wumpuses")]
    assert agree == 11 * len(recs) - 2
    # ours: every record of every subtask at §3's location
    assert ours_split == {(k, w): len(recs) for k, w in PAPER_LOCATION.items()}


def test_pure_and_seeded():
    tok = task_tokenizer(1000)
    rec = generate("fictional", 2, 1, seed=8)[0]
    before = copy.deepcopy(rec)
    prompt = build_prompt(rec)
    st = steps(rec)[3]
    a = make_pair(rec, st, prompt, tok, np.random.default_rng(5))
    b = make_pair(rec, st, prompt, tok, np.random.default_rng(5))
    assert a == b and rec == before
    outs = {make_pair(rec, st, prompt, tok, np.random.default_rng(s)).replaced["to"] for s in range(20)}
    assert len(outs) > 1  # the replacement is drawn, not fixed


def test_rejections():
    rec = generate("fictional", 2, 1, seed=8)[0]
    prompt = build_prompt(rec, shots=1)
    st = steps(rec)[1]
    r = make_pair(rec, st, prompt, LineTokenizer(), np.random.default_rng(0))
    assert r == Rejected("tokenizer merges across the answer boundary")

    # a character-level tokenizer and a property whose length no other property word has
    class CharTokenizer:
        bos_token_id = None

        def __call__(self, text, add_special_tokens=True):
            return type("Out", (), {"input_ids": [ord(ch) for ch in text]})()

    lengths = collections.Counter(len(p) for p in vocab.PROPERTIES)
    unique = [p for p in vocab.PROPERTIES if lengths[len(p)] == 1]
    assert unique
    recs = [r for r in generate("fictional", 1, 400, seed=3) if r["logic"]["property"] in unique and r["label"]]
    assert recs
    rec = recs[0]
    prompt = build_prompt(rec, shots=0)
    st = [s for s in steps(rec) if s.word_type == "property"][-1]
    assert make_pair(rec, st, prompt, CharTokenizer(), np.random.default_rng(0)) == \
        Rejected("no equal-length replacement")
    st0 = steps(rec)[0]
    ok = make_pair(rec, st0, prompt, CharTokenizer(), np.random.default_rng(0))
    ent = rec["logic"]["entity"]
    if any(len(e) == len(ent) for e in vocab.ENTITIES if e != ent):
        assert isinstance(ok, Pair) and len(ok.replaced["to"]) == len(ok.replaced["from"])
    else:
        assert ok == Rejected("no equal-length replacement")


def test_encode_bos():
    tok = task_tokenizer(300)
    assert not adds_bos(tok)
    assert encode(tok, "Max is wumpus.") == list(tok("Max is wumpus.", add_special_tokens=False).input_ids)
    assert encode(BosTokenizer(tok), "Max is wumpus.")[0] == 1


@pytest.mark.embedded
def test_qwen_tokenizer():
    from transformers import AutoTokenizer

    # `make test` installs the embedded model first (Makefile: test depends on models): a missing tokenizer fails
    assert (QWEN_DIR / "tokenizer.json").exists(), f"{QWEN_DIR}: embedded Qwen tokenizer missing; run `make models`"
    tok = AutoTokenizer.from_pretrained(str(QWEN_DIR))
    assert not adds_bos(tok)
    reasons = collections.Counter()
    for i, rec in enumerate(generate("fictional", 2, 2, seed=1) + generate("false", 2, 1, seed=2)):
        prompt = build_prompt(rec)
        for st in steps(rec, include_label=True):
            pair = make_pair(rec, st, prompt, tok, np.random.default_rng(i))
            if isinstance(pair, Rejected):
                reasons[pair.reason] += 1
            else:
                check_pair(rec, st, prompt, tok, pair)
    assert sum(reasons.values()) <= 3, reasons


def test_locations_on_the_original_generators_data():
    """The §3 location rule also holds on the original generator's outputs (every ontology, 1-5 hops, distractors),
    and a number entity is replaced by another number."""
    from cotmech.prontoqa.importers import import_file

    tok = task_tokenizer(1000)
    data = Path(__file__).parent / "data" / "prontoqa_generator"
    n = 0
    for path in sorted(data.glob("*.json")):
        for i, rec in enumerate(import_file(path, in_context=False)):
            prompt = build_prompt(rec, shots=1)
            for st in steps(rec, include_label=True):
                pair = make_pair(rec, st, prompt, tok, np.random.default_rng(i))
                if isinstance(pair, Rejected):
                    continue
                n += 1
                assert pair.replaced["where"] == _expected_location(st), (path.name, rec["id"], st.index)
                if st.word_type == "entity" and rec["logic"]["entity"].isdigit():
                    assert pair.replaced["to"].isdigit()
    assert n > 500
