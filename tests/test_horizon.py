"""Horizon experiment (study.md E12): teacher-forced divergence vs real KV-cached patched generation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cotmech import horizon
from cotmech.horizon import NO_PATCH


def _pair(n: int = 24, diff_at: int = 8, seed: int = 0) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(5, 400, (n,), generator=g).tolist()
    corrupt = list(clean)
    for j in range(diff_at, diff_at + 4):
        corrupt[j] = (clean[j] + 37) % 400 + 5
    return clean, corrupt


def test_no_patch_reproduces_clean_generation(tiny_model):
    clean, corrupt = _pair()
    gen = horizon.patched_generate(tiny_model, clean, corrupt, NO_PATCH, max_new_tokens=8)
    from cotmech.decoding import greedy_reference

    assert gen == greedy_reference(tiny_model, clean, 8).ids
    pred = horizon.patched_predictions(tiny_model, clean + gen, corrupt + gen, [NO_PATCH], prefix_len=6)
    assert pred[0, len(clean) - 1 - 6:-1].tolist() == gen


def test_patching_with_own_outputs_changes_nothing(tiny_model):
    clean, _ = _pair(seed=1)
    L = tiny_model.n_layers
    base = horizon.patched_generate(tiny_model, clean, clean, NO_PATCH, max_new_tokens=4)
    for layer in range(L):
        assert horizon.patched_generate(tiny_model, clean, clean, layer, 4, source="clean") == base
    full = clean + base
    pred = horizon.patched_predictions(tiny_model, full, full, [NO_PATCH, *range(L)], prefix_len=4)
    assert (pred == pred[0:1]).all()


def test_teacher_forced_divergence_equals_patched_generation(tiny_llama):
    """The fast path (one batched forward) and real step-by-step patched decoding agree on the first divergence."""
    L = tiny_llama.n_layers
    n_checked = n_changed = 0
    for seed in range(2):
        clean, corrupt = _pair(seed=seed + 10)
        ref = horizon.patched_generate(tiny_llama, clean, corrupt, NO_PATCH, max_new_tokens=6)
        pred = horizon.patched_predictions(tiny_llama, clean + ref, corrupt + ref, [NO_PATCH, *range(L)],
                                           prefix_len=5)
        first = len(clean) - 1 - 5
        for row, layer in enumerate([NO_PATCH, *range(L)]):
            fast = horizon.first_divergence(pred[row, first:first + len(ref)].tolist(), ref)
            gen = horizon.patched_generate(tiny_llama, clean, corrupt, layer, max_new_tokens=6)
            slow = horizon.first_divergence(gen, ref)
            assert fast == slow, (seed, layer)
            n_checked += 1
            n_changed += slow < len(ref)
    assert n_changed > 0, "corruption never changed the generation: the test would not discriminate"
    assert n_checked == 2 * (L + 1)


def test_prefix_mismatch_and_length_are_rejected(tiny_llama):
    clean, corrupt = _pair()
    with pytest.raises(ValueError, match="shared prefix"):
        horizon.patched_predictions(tiny_llama, clean, corrupt, [0], prefix_len=12)
    with pytest.raises(ValueError, match="length"):
        horizon.patched_predictions(tiny_llama, clean, corrupt[:-1], [0], prefix_len=2)


RECORD = {"id": "fictional-0001", "ontology": "fictional",
          "question": "Sterpuses are earthy. Impuses are sterpuses. Wren is impus.",
          "query": "True or false: Wren is earthy."}


def test_corrupt_middle_rule_keeps_token_count(tiny_llama):
    from cotmech.prontoqa.corrupt import encode

    tok = tiny_llama.tokenizer
    prompt = f"### Input:\n{RECORD['question']} {RECORD['query']} Let us think step by step.\n### Response:\n"
    bad, info = horizon.corrupt_middle_rule(RECORD, prompt, tok, np.random.default_rng(0))
    assert info["rule"] == "Impuses are sterpuses."
    assert bad != prompt and len(encode(tok, bad)) == len(encode(tok, prompt))
    assert "Sterpuses are earthy. " in bad and "Wren is impus." in bad
    new_subj, new_obj = info["replaced"]["Impuses"], info["replaced"]["sterpuses"]
    assert new_subj[0].isupper() and new_subj.endswith("es") and new_obj.islower()
    assert f"{new_subj} are {new_obj}." in bad
    again, _ = horizon.corrupt_middle_rule(RECORD, prompt, tok, np.random.default_rng(0))
    assert again == bad
    with pytest.raises(ValueError, match="not found"):
        horizon.corrupt_middle_rule(RECORD, "nothing here", tok, np.random.default_rng(0))


def test_sentence_cuts_and_aggregate(tiny_llama):
    import pandas as pd

    tok = tiny_llama.tokenizer
    ids = tok("Wren is impus. Impuses are sterpuses. Wren is sterpus.", add_special_tokens=False).input_ids
    cuts = horizon.sentence_cuts(tok, ids, 4)
    assert cuts[0] == 0 and set(cuts) == {0, 1, 2, 3}
    assert tok.decode(ids[:cuts[1]]).endswith("impus.") and cuts[3] == len(ids)
    t = pd.DataFrame({"example_id": ["a", "b", "a", "b"], "s": [0, 0, 0, 0], "layer": [0, 0, 1, 1],
                      "n_ref": [10] * 4, "first_div": [10, 5, 10, 10], "agree": [1, .5, 1, 1],
                      "exact": [True, False, True, True]})
    agg = horizon.aggregate(t).set_index("layer")
    assert agg.loc[0, "exact"] == 0.5 and agg.loc[0, "agree"] == 0.75 and agg.loc[1, "exact"] == 1.0
    assert agg.loc[0, "exact_ci_low"] < 0.5 < agg.loc[0, "exact_ci_high"]


def test_divergence_table_reference_is_the_unpatched_greedy_run(tiny_llama):
    clean, corrupt = _pair(seed=5)
    gen = horizon.patched_generate(tiny_llama, clean, corrupt, NO_PATCH, max_new_tokens=6)
    bad_tail = gen[:3] + [(gen[3] + 1) % 400 + 5] + gen[4:]  # stored text departs from greedy at token 3
    ex = [{"id": "a", "prompt_ids": clean, "corrupt_prompt_ids": corrupt, "gen_ids": gen},
          {"id": "b", "prompt_ids": clean, "corrupt_prompt_ids": corrupt, "gen_ids": bad_tail},
          {"id": "c", "skipped": "no rule"}]
    t = horizon.divergence_table(tiny_llama, ex, [0, 2], [0])
    assert set(t["example_id"]) == {"a", "b"} and set(t["layer"]) == {NO_PATCH, 0, 2}
    base = t[t.layer == NO_PATCH].set_index("example_id")
    assert base["exact"].all() and base.loc["a", "n_ref"] == len(gen) and base.loc["b", "n_ref"] == 3
    assert (t["first_div"] <= t["n_ref"]).all()


def test_skipped_records_do_not_use_up_n_examples(tiny_llama):
    """#14 item 8: a record without a usable corruption is logged as skipped and the next record takes its place,
    so ``n_examples`` counts usable examples."""
    from cotmech.prontoqa import generate
    from cotmech.prontoqa.prompts import build_prompt

    one_hop = generate("fictional", 1, 1, seed=3, id_prefix="one-")  # no subtype rule "A is B" to corrupt: skipped
    two_hop = generate("fictional", 2, 3, seed=4, id_prefix="two-")
    records = []
    for r in one_hop + two_hop:
        records.append(dict(r, prompt=build_prompt(r, shots=1), generated=r["answer"], correct=True))
    ex = horizon.prepare_examples(tiny_llama, records, n_examples=2, seed=0, max_new_tokens=4)
    usable = [e for e in ex if "skipped" not in e]
    assert [e["id"] for e in ex if "skipped" in e] == [one_hop[0]["id"]]
    assert len(usable) == 2 and [e["id"] for e in usable] == [r["id"] for r in two_hop[:len(usable)]]


def _records(n: int, correct: bool) -> list[dict]:
    from cotmech.prontoqa import generate
    from cotmech.prontoqa.prompts import build_prompt

    return [dict(r, prompt=build_prompt(r, shots=1), generated=r["answer"], correct=correct)
            for r in generate("fictional", 2, n, seed=4, id_prefix="h-")]


def test_run_tables_and_an_empty_table_when_no_reference_is_left(tiny_llama):
    """horizon.run (scripts/horizon.py): the model's own continuation gives rows for every layer and the verify
    records; a stored text the model never reproduces leaves no reference, and the table and summary are empty
    with their columns (aggregate used to fail on a frame without columns)."""
    cfg = {"sentences": [0], "layers": None, "layer_stride": 2, "n_examples": 2, "max_new_tokens": 8, "verify": 1}
    table, summary, rows = horizon.run(tiny_llama, _records(3, correct=False), cfg, 0, require_correct=False,
                                       log=lambda m: None)
    assert list(table.columns) == horizon.TABLE_COLUMNS and set(table["layer"]) == {NO_PATCH, 0, 2}
    assert set(summary["layer"]) == {NO_PATCH, 0, 2} and "verify" in rows[-1]
    assert all("prompt_ids" not in r for r in rows[:-1])
    gold = [dict(r, generated=" ".join(["zzz"] * 12)) for r in _records(3, correct=True)]
    table, summary, _ = horizon.run(tiny_llama, gold, {**cfg, "verify": 0}, 0, require_correct=False,
                                    log=lambda m: None)
    assert table.empty and list(table.columns) == horizon.TABLE_COLUMNS and summary.empty
