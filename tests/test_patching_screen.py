"""AtP-screened exact patching: the stopping rule against brute force, the screened sweep against a full exact sweep."""
from __future__ import annotations

import numpy as np
import pytest

from cotmech.models import load_model
from cotmech.patching.exact import exact_sweep
from cotmech.patching.run import run as run_patching
from cotmech.patching.scores import score_table
from cotmech.patching.screen import (exact_mask, mean_scores, ranking, recall_depth, screen, screened_sweep,
                                     simulate, top_heads)

from test_patching import SPECS, random_pairs


def brute_top(scores: np.ndarray, k: int) -> set:
    """The k best heads by an explicit loop over every head (ties: lower layer, then head)."""
    L, H = scores.shape
    cells = [(-scores[a, b], a, b) for a in range(L) for b in range(H)]
    return {(a, b) for _, a, b in sorted(cells)[:k]}


def test_ranking_orders_by_score_then_layer_then_head():
    s = np.array([[0.1, 0.5, np.nan], [0.5, -1.0, 0.2]])
    assert ranking(s) == [(0, 1), (1, 0), (1, 2), (0, 0), (1, 1), (0, 2)]


def test_screen_stops_after_a_block_that_adds_nothing():
    """AtP order misplaces true heads 2 and 3 (AtP ranks 4 and 6): round 1 (4 heads) has two of the top 4, block 2
    (ranks 4-5) adds head 2, block 3 (ranks 6-7) adds head 3, block 4 adds nothing -> stop after 10 heads."""
    rng = np.random.default_rng(0)
    true = np.sort(rng.uniform(0, 1, 20))[::-1]  # heads 0..19 in true order (all in layer 0)
    order = [(0, h) for h in (0, 1, 4, 5, 2, 6, 3, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)]
    calls = []

    def evaluate(hs):
        calls.append(list(hs))
        return {h: float(true[h[1]]) for h in hs}

    got, rounds = screen(order, evaluate, top_k=4, candidates=4, block=2)
    assert calls[0] == order[:4] and [len(c) for c in calls] == [4, 2, 2, 2]
    assert rounds == 4 and len(got) == 10
    assert set(top_heads(got, 4)) == {(0, h) for h in range(4)}
    # a larger block finds both in one extra block, then stops after the next
    calls.clear()
    got, rounds = screen(order, evaluate, top_k=4, candidates=4, block=4)
    assert [len(c) for c in calls] == [4, 4, 4] and set(top_heads(got, 4)) == {(0, h) for h in range(4)}
    # round 1 is never smaller than top_k
    calls.clear()
    screen(order, evaluate, top_k=4, candidates=1, block=2)
    assert calls[0] == order[:4]


def test_screen_with_every_head_as_candidate_is_the_full_sweep():
    rng = np.random.default_rng(1)
    exact = rng.normal(size=(4, 6))
    atp = exact + rng.normal(scale=5.0, size=(4, 6))  # a useless screen
    out = simulate(exact, atp, top_k=5, candidates=24, block=3)
    assert out == {"evaluated": 24, "rounds": 1, "equal": True, "recall_depth": recall_depth(exact, atp, 5)}
    assert set(top_heads({h: exact[h] for h in ranking(exact)}, 5)) == brute_top(exact, 5)


@pytest.mark.parametrize("seed", range(20))
def test_simulate_equal_iff_the_screened_set_contains_the_true_top_k(seed):
    """Property: the screened top-k equals brute force exactly when every true top-k head was evaluated, and a
    recall depth within round 1 always gives equality."""
    rng = np.random.default_rng(seed)
    exact = rng.normal(size=(5, 4))
    atp = exact + rng.normal(scale=rng.choice([0.05, 0.5, 2.0]), size=(5, 4))
    k, cand, block = 4, int(rng.integers(4, 12)), int(rng.integers(1, 4))
    out = simulate(exact, atp, k, cand, block)
    got, _ = screen(ranking(atp), lambda hs: {h: float(exact[h]) for h in hs}, k, cand, block)
    assert out["equal"] == brute_top(exact, k).issubset(got)
    assert set(ranking(exact)[:k]) == brute_top(exact, k)
    if out["recall_depth"] <= cand:
        assert out["equal"]


@pytest.fixture(scope="module")
def model():
    return load_model(SPECS["gqa"], dtype="float32", device="cpu")


def test_screened_sweep_equals_exact_on_its_heads_and_atp_elsewhere(model):
    pairs = random_pairs(3)
    full = exact_sweep(model, pairs, metric="kl", head_batch=7, progress=False)
    res, atp = screened_sweep(model, pairs, metric="kl", top_k=3, candidates=4, block=2, head_batch=5,
                              progress=False)
    mask = exact_mask(res)
    n_exact = int(mask.sum())
    assert res.method == "screened" and 4 <= n_exact < model.n_layers * model.n_heads
    assert sorted(map(tuple, res.info["exact_heads"])) == sorted(zip(*np.nonzero(mask)))
    np.testing.assert_allclose(res.base, full.base, atol=1e-6)
    np.testing.assert_allclose(res.source, full.source, atol=1e-6)
    np.testing.assert_allclose(res.patched[:, mask], full.patched[:, mask], atol=1e-6)
    np.testing.assert_array_equal(res.patched[:, ~mask], atp.patched[:, ~mask])
    # the evaluated heads are AtP's first ones, in order
    order = ranking(mean_scores(atp))
    assert set(order[:n_exact]) == set(zip(*np.nonzero(mask)))
    # what simulate() predicts from the two full tables is what the sweep did
    sim = simulate(mean_scores(full), mean_scores(atp), 3, 4, 2)
    assert sim["evaluated"] == n_exact and sim["rounds"] == res.info["rounds"]
    table = score_table(res, 0, n_boot=0)
    assert table["exact"].sum() == n_exact and len(table) == model.n_layers * model.n_heads


def test_run_screened_reuses_its_atp(model):
    from cotmech import config

    cfg = dict(config.section({}, "patching"), method="screened", n_boot=0)
    cfg["screen"] = dict(cfg["screen"], top_k=2, candidates=3, block=2)
    pairs = random_pairs(4)
    res, atp, df = run_patching(model, pairs, cfg, seed=0, subtask=0, atp=True, log=lambda m: None)
    assert res.method == "screened" and atp.method == "atp"
    again, _ = screened_sweep(model, pairs, top_k=2, candidates=3, block=2, progress=False)
    np.testing.assert_array_equal(res.patched, again.patched)
    np.testing.assert_array_equal(atp.patched, again_atp(model, pairs).patched)


def again_atp(model, pairs):
    """AtP as screening computes it: over the pairs' reference runs (their source runs, prefix caches)."""
    from cotmech.patching.atp import atp_sweep
    from cotmech.patching.exact import pair_runs, shared_prefix

    root = shared_prefix(model, pairs)
    return atp_sweep(model, pairs, progress=False, runs=[pair_runs(model, p, root=root) for p in pairs])


def test_screened_sweep_computes_each_pairs_prefix_once(model, monkeypatch):
    """AtP and every exact round reuse one prefix cache and reference run per pair (the prefix is most of a real
    pair's tokens); the values are those of the sweep that recomputes them (the tests above)."""
    import cotmech.patching.atp as atp_mod
    import cotmech.patching.exact as exact_mod
    import cotmech.patching.screen as screen_mod

    calls = {"pair_runs": 0, "prefix": 0}
    real_runs, real_prefix = exact_mod.pair_runs, atp_mod.prefix_cache

    def counting_runs(*a, **k):
        calls["pair_runs"] += 1
        return real_runs(*a, **k)

    def counting_prefix(*a, **k):
        calls["prefix"] += 1
        return real_prefix(*a, **k)

    monkeypatch.setattr(screen_mod, "pair_runs", counting_runs)
    monkeypatch.setattr(exact_mod, "pair_runs", counting_runs)
    monkeypatch.setattr(atp_mod, "prefix_cache", counting_prefix)
    pairs = random_pairs(3)
    res, _ = screened_sweep(model, pairs, top_k=2, candidates=3, block=2, progress=False)
    assert res.info["rounds"] >= 2
    assert calls == {"pair_runs": len(pairs), "prefix": 0}
