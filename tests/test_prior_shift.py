"""Prior shift: context-free prior, real-world answers, crossover detector, seeded cluster bootstrap."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cotmech.batching import last_logits, left_pad
from cotmech.models import task_tokenizer
from cotmech.prior_shift import (boot_mean, bootstrap_weights, context_free_ids, crossover_layer, layer_table,
                                 prior_logprobs, real_world_answer, real_world_word, rift_summary)

QUESTION = "Jompus is fast. Tumpuses are jompuses. Sam is tumpus."
PROMPT = f"### Input:\n{QUESTION} True or false: Sam is fast. Let us think step by step.\n### Response:\n"


@pytest.mark.parametrize("response, expected", [
    ("", "### Response:\n"),
    ("Sam is", "Sam is"),
    ("Sam is tumpus.", "Sam is tumpus."),
    ("Sam is tumpus. Tumpuses are", " Tumpuses are"),
])
def test_context_free_prior_contains_no_context_tokens(response, expected):
    tok = task_tokenizer(512)
    clean = tok.encode(PROMPT + response, add_special_tokens=False)
    prior = context_free_ids(clean, tok)
    assert tok.decode(prior) == expected
    assert clean[len(clean) - len(prior):] == prior  # the same last tokens, nothing else
    # no token position of the question (or anything before the current sentence) is included
    q_end = len(tok.encode(PROMPT[:PROMPT.index("True or false")], add_special_tokens=False))
    assert len(clean) - len(prior) >= q_end
    assert not any(w in tok.decode(prior) for w in ("Jompus", "fast", "True or false", "step"))


def test_context_free_prior_keeps_bos():
    tok = task_tokenizer(512)
    ids = [tok.bos_token_id] + tok.encode("Sam is tumpus. Tumpuses are", add_special_tokens=False)
    prior = context_free_ids(ids, tok)
    assert prior[0] == tok.bos_token_id and tok.decode(prior[1:]) == " Tumpuses are"


def test_prior_logprobs_match_unpadded_forwards(tiny_qwen2):
    seqs = [[5, 9, 11], [4, 4, 7, 100, 3], [42]]
    lp = prior_logprobs(tiny_qwen2, seqs, batch_size=2)
    for i, s in enumerate(seqs):
        ref = torch.log_softmax(last_logits(tiny_qwen2, left_pad([s], 0)), -1)[0]
        torch.testing.assert_close(lp[i], ref, atol=1e-4, rtol=1e-4)


def test_real_world_answer_rule():
    assert real_world_word("Vertebrates are", "carnivores") == "animals"
    assert real_world_word("Rex is cow. Cows are", "felines") == "mammals"
    assert real_world_word("Cat is", "dog") == "feline"
    assert real_world_word("Cats are", "felines") is None  # the in-context fact is true in reality
    assert real_world_word("Rex is", "carnivore") is None  # subject is an entity
    assert real_world_word("Carnivore is", "spicy") is None  # property answer
    assert real_world_word("Integers are", "negative numbers") == "real numbers"
    tok = task_tokenizer(512)
    aid = tok.encode(" carnivores", add_special_tokens=False)[0]
    rid = real_world_answer("Vertebrates are", "carnivores", aid, tok)
    assert rid == tok.encode(" animals", add_special_tokens=False)[0]
    assert real_world_answer("Rex is", "carnivore", aid, tok) == -1


def test_crossover_detector_on_synthetic_curves():
    L = 20
    x = np.arange(L + 1)
    in_ctx = 1.0 - x / L            # falls to 0 at the last layer
    prior = 0.2 + 0.6 * x / L       # rises
    expected = int(np.argmax(in_ctx < prior))
    assert crossover_layer(in_ctx, prior) == expected == 11  # 1 - x/20 < 0.2 + 0.03x  <=>  x > 10
    wobble = in_ctx.copy()
    wobble[15] = 0.99                # crosses back above once: the sustained crossover is after it
    assert crossover_layer(wobble, prior) == 16
    assert crossover_layer(prior + 1.0, prior) is None  # never below
    assert crossover_layer(np.r_[in_ctx[:-1], np.nan], prior) is None
    with pytest.raises(ValueError):
        crossover_layer(in_ctx, prior[:-1])


def test_bootstrap_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"ex{i}" for i in range(30)], 3)
    vals = rng.normal(1.0, 1.0, size=(90, 4))
    a = boot_mean(vals, *bootstrap_weights(groups, 200, seed=7))
    b = boot_mean(vals, *bootstrap_weights(groups, 200, seed=7))
    c = boot_mean(vals, *bootstrap_weights(groups, 200, seed=8))
    np.testing.assert_array_equal(a["ci_low"], b["ci_low"])
    np.testing.assert_array_equal(a["ci_high"], b["ci_high"])
    assert not np.array_equal(a["ci_low"], c["ci_low"])
    np.testing.assert_allclose(a["mean"], vals.mean(0))
    assert np.all((a["ci_low"] < a["mean"]) & (a["mean"] < a["ci_high"]))


def _synthetic_rows(rift: int, L: int, n_ex: int, seed: int) -> pd.DataFrame:
    """Per-pair curves whose in-context divergence drops below the prior one at ``rift``."""
    rng = np.random.default_rng(seed)
    recs = []
    for e in range(n_ex):
        for st in range(2):
            noise = rng.normal(0, 0.02, size=(2, L + 1))
            x = np.arange(L + 1)
            js_final = np.clip(0.9 - 0.9 * x / L + noise[0], 0, 1)
            js_final[-1] = 0.0
            js_prior = np.clip(js_final + np.where(x < rift, -0.15, 0.15) + noise[1], 0, 1)
            top1 = (x >= rift).astype(float)
            for layer in x:
                recs.append(dict(lens="logit", pair_id=f"e{e}-k{st}", example_id=f"e{e}", subtask=st, layer=layer,
                                 js_final=js_final[layer], js_prior=js_prior[layer], top1_in_context=top1[layer],
                                 p_answer=0.1, rank_answer=3.0, topk_context_mass=0.5, p_real=np.nan,
                                 p_real_minus_answer=np.nan))
    return pd.DataFrame(recs)


def test_rift_summary_finds_planted_rift_with_ci():
    rows = _synthetic_rows(rift=11, L=24, n_ex=25, seed=1)
    s = rift_summary(rows, n_layers=24, n_boot=200, seed=5)
    assert s["rift_layer"] == 11 and s["rel_depth"] == pytest.approx(11 / 24)
    assert s["ci_low"] <= 11 <= s["ci_high"]
    assert s["n_examples"] == 25 and s["n_pairs"] == 50
    assert s["context_abidance_rift"]["below"]["mean"] == 0.0
    assert s["context_abidance_rift"]["above"]["mean"] == 1.0
    mid = s["context_abidance_midpoint"]
    assert mid["below"]["mean"] == pytest.approx(1 / 12) and mid["above"]["mean"] == 1.0
    assert rift_summary(rows, n_layers=24, n_boot=200, seed=5) == s  # seeded
    none = rows.assign(js_prior=rows["js_final"] - 0.5)
    assert rift_summary(none, n_layers=24, n_boot=50, seed=5)["rift_layer"] is None


def test_layer_table_shape():
    rows = _synthetic_rows(rift=5, L=8, n_ex=6, seed=2)
    t = layer_table(rows, n_layers=8, n_boot=50, seed=0)
    assert set(t["subtask"]) == {-1, 0, 1}
    one = t[(t.subtask == -1) & (t.metric == "top1_in_context")].sort_values("layer")
    np.testing.assert_array_equal(one["mean"], (np.arange(9) >= 5).astype(float))
    assert (one["n"] == 12).all() and np.allclose(one["rel_depth"], np.arange(9) / 8)
