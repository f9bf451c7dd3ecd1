"""Interval estimates at the level and over the unit they claim (issue 19 item 2).

Oracles: statsmodels' Wilson interval; the exact binomial coverage of the interval; an explicit resampling loop
that lists the drawn example ids and recomputes the statistic from the duplicated rows; a coverage simulation on
planted clustered data; the width ratio of a cluster and a row bootstrap on rows duplicated within clusters.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom
from statsmodels.stats.proportion import proportion_confint

from cotmech.prior_shift import boot_mean, layer_table
from cotmech.heads import SCORERS
from cotmech.roles import bootstrap_share, merge, top_k_share
from cotmech.stats import bootstrap_weights, percentile_interval, wilson


# ------------------------------------------------------------------ Wilson
@pytest.mark.parametrize("ci", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [1, 7, 40, 333])
def test_wilson_equals_statsmodels(n, ci):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        lo, hi = wilson(k, n, ci)
        ref_lo, ref_hi = proportion_confint(k, n, alpha=1 - ci, method="wilson")
        assert lo == pytest.approx(ref_lo, abs=1e-12) and hi == pytest.approx(ref_hi, abs=1e-12), (k, n, ci)


def test_wilson_default_is_95_percent_and_edges():
    # every call site (accuracy, knockout, probes, flow, horizon) calls wilson(k, n): the default must be 95%
    for k, n in [(3, 10), (13, 37), (0, 5), (200, 200)]:
        assert wilson(k, n) == pytest.approx(proportion_confint(k, n, alpha=0.05, method="wilson"), abs=1e-12)
    assert wilson(0, 12)[0] == 0.0 and wilson(12, 12)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))
    with pytest.raises(ValueError, match="wilson: need 0 <= k <= n, got k=5, n=4"):
        wilson(5, 4)


@pytest.mark.parametrize("ci", [0.9, 0.95])
def test_wilson_exact_coverage_matches_level(ci):
    # Exact coverage P(p in [lo, hi]) under Binomial(n, p), averaged over a grid of planted p: the Wilson interval's
    # mean coverage is its nominal level to within 0.01 (a 90% interval labelled 95% misses by 0.045).
    n = 50
    ks = np.arange(n + 1)
    ints = np.array([wilson(int(k), n, ci) for k in ks])
    cov = []
    for p in np.linspace(0.02, 0.98, 97):
        inside = (ints[:, 0] <= p) & (p <= ints[:, 1])
        cov.append(binom.pmf(ks, n, p)[inside].sum())
    assert abs(np.mean(cov) - ci) < 0.01


# ------------------------------------------------------------------ cluster bootstrap
def test_bootstrap_weights_resample_examples_uniformly():
    groups = np.repeat([f"ex{i}" for i in range(25)], [1 + i % 4 for i in range(25)])
    inv, W = bootstrap_weights(groups, 4000, seed=3)
    uniq = np.unique(groups)
    assert W.shape == (4000, 25) and np.all(W.sum(1) == 25)  # n_groups draws with replacement per replicate
    np.testing.assert_array_equal(uniq[inv], groups)
    # each count is Binomial(G, 1/G): mean 1, variance 1 - 1/G (4000 replicates: ±0.05 is > 3 standard errors)
    assert np.abs(W.mean(0) - 1).max() < 0.08
    assert abs(W.var(0).mean() - (1 - 1 / 25)) < 0.05


def _explicit_replicates(values: np.ndarray, groups: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Independent reference: per replicate, list the drawn example ids, stack their rows, nan-mean."""
    uniq = np.unique(groups.astype(str))
    out = []
    for w in W:
        drawn = np.repeat(uniq, w.astype(int))  # the resampled example ids, with repeats
        rows = np.concatenate([np.flatnonzero(groups == g) for g in drawn])
        out.append(np.nanmean(values[rows], 0))
    return np.array(out)


def test_boot_mean_equals_explicit_resampling_loop_over_example_ids():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"ex{i}" for i in range(12)], [1, 2, 3, 4] * 3).astype(str)
    vals = rng.normal(size=(len(groups), 3))
    vals[rng.random(vals.shape) < 0.1] = np.nan  # missing cells are dropped, not counted as zeros
    inv, W = bootstrap_weights(groups, 300, seed=11)
    ref = _explicit_replicates(vals, groups, W)
    lo, hi = np.quantile(ref, [0.025, 0.975], axis=0)
    r = boot_mean(vals, inv, W, ci=0.95)
    np.testing.assert_allclose(r["ci_low"], lo, rtol=1e-10)
    np.testing.assert_allclose(r["ci_high"], hi, rtol=1e-10)
    np.testing.assert_allclose(r["mean"], np.nanmean(vals, 0), rtol=1e-12)


def test_boot_mean_interval_matches_independent_id_resampling():
    # A different random stream (rng.choice over example ids) gives the same percentile interval up to Monte Carlo
    # error: the weights really are a with-replacement draw of n_groups examples.
    rng = np.random.default_rng(5)
    G, m = 30, 3
    groups = np.repeat([f"e{i}" for i in range(G)], m)
    vals = (np.repeat(rng.normal(size=G), m) + rng.normal(0, 0.3, G * m))[:, None]
    B = 4000
    r = boot_mean(vals, *bootstrap_weights(groups, B, seed=1), ci=0.95)
    ids = np.unique(groups)
    loop = []
    for _ in range(B):
        drawn = rng.choice(ids, size=G, replace=True)
        loop.append(np.mean(np.concatenate([vals[groups == g, 0] for g in drawn])))
    lo, hi = np.quantile(loop, [0.025, 0.975])
    width = hi - lo
    assert abs(r["ci_low"][0] - lo) < 0.06 * width and abs(r["ci_high"][0] - hi) < 0.06 * width


def _cluster_coverage(ci: float, rows_as_units: bool, n_sim: int = 300) -> float:
    """Share of simulated data sets (40 examples × 4 correlated rows, planted mean 0) whose interval holds 0."""
    rng = np.random.default_rng(0)
    G, m, hit = 40, 4, 0
    for s in range(n_sim):
        vals = (np.repeat(rng.normal(0, 1, G), m) + rng.normal(0, 0.3, G * m))[:, None]
        groups = np.arange(G * m) if rows_as_units else np.repeat(np.arange(G), m)
        r = boot_mean(vals, *bootstrap_weights(groups, 400, seed=s), ci=ci)
        hit += r["ci_low"][0] <= 0.0 <= r["ci_high"][0]
    return hit / n_sim


def test_cluster_bootstrap_coverage_on_planted_data():
    # 300 simulations: binomial s.e. of a 95% coverage is 0.0126; the band is 2 s.e. wide on each side. A 90%
    # interval labelled 95% covers ~0.90 here, and resampling rows instead of examples ~0.72.
    assert 0.925 <= _cluster_coverage(0.95, rows_as_units=False) <= 0.975
    assert _cluster_coverage(0.95, rows_as_units=True) < 0.85


def test_cluster_vs_row_width_on_duplicated_rows():
    # Each example's value duplicated m times: duplicates carry no information, so the cluster interval equals the
    # one on the undeduplicated data, and a row bootstrap is narrower by about sqrt(m).
    rng = np.random.default_rng(2)
    G, m = 60, 9
    base = rng.normal(size=(G, 1))
    ids = np.array([f"ex{i:02d}" for i in range(G)])
    dup, dup_ids = np.repeat(base, m, 0), np.repeat(ids, m)
    one = boot_mean(base, *bootstrap_weights(ids, 2000, seed=4))
    clus = boot_mean(dup, *bootstrap_weights(dup_ids, 2000, seed=4))
    row = boot_mean(dup, *bootstrap_weights(np.arange(G * m), 2000, seed=4))
    np.testing.assert_allclose([clus["ci_low"], clus["ci_high"]], [one["ci_low"], one["ci_high"]], rtol=1e-12)
    ratio = (clus["ci_high"] - clus["ci_low"])[0] / (row["ci_high"] - row["ci_low"])[0]
    assert ratio == pytest.approx(math.sqrt(m), rel=0.12)


def test_layer_table_resamples_examples_not_pairs():
    # Two pairs (subtasks) per example with identical curves: the interval must equal that of one pair per example.
    rng = np.random.default_rng(3)
    L, recs = 4, []
    for e in range(20):
        curve = rng.random(L + 1)
        for st in (0, 1):
            for layer in range(L + 1):
                recs.append(dict(lens="logit", pair_id=f"e{e}-k{st}", example_id=f"e{e}", subtask=st, layer=layer,
                                 **{k: curve[layer] for k in ("p_answer", "rank_answer", "top1_in_context",
                                                              "topk_context_mass", "js_final", "js_prior",
                                                              "prefers_context", "p_real", "p_real_minus_answer")}))
    rows = pd.DataFrame(recs)
    both = layer_table(rows, L, n_boot=300, seed=9)
    one = layer_table(rows[rows.subtask == 0], L, n_boot=300, seed=9)
    a = both[(both.subtask == -1) & (both.metric == "js_final")].reset_index(drop=True)
    b = one[(one.subtask == -1) & (one.metric == "js_final")].reset_index(drop=True)
    np.testing.assert_allclose(a[["mean", "ci_low", "ci_high"]], b[["mean", "ci_low", "ci_high"]], rtol=1e-12)
    assert (a["n_examples"] == 20).all()


def test_bootstrap_share_equals_explicit_resampling_of_example_rows():
    # roles.bootstrap_share weights rows by their example's draw count; the reference duplicates the drawn
    # examples' rows and scores them unweighted, then takes the same percentile interval.
    rng = np.random.default_rng(7)
    n, L, H = 24, 10, 4
    groups = np.repeat([f"q{i}" for i in range(8)], 3)
    subtasks = np.tile([0, 1, 2], 8)
    # heavy-tailed head probabilities: the top-k set (and its second-half share) changes from resample to resample
    comp = {"p_head": rng.exponential(1.0, (n, L, H)) ** 2, "p_pre": rng.random((n, L)), "p_mid": 0.5 + rng.random((n, L))}
    for s in range(3):  # each subtask has its own writers
        comp["p_head"][subtasks == s, 3 * s, s] += 3.0
    k, n_boot, seed = 10, 120, 13
    got = bootstrap_share("writers", comp, subtasks, groups, k, L, n_boot, seed, ci=0.9)
    scorer, maxabs = SCORERS["writers"]
    inv, W = bootstrap_weights(groups, n_boot, seed)
    uniq = np.unique(groups)
    shares = []
    for w in W:
        rows = np.concatenate([np.flatnonzero(groups == g) for g in np.repeat(uniq, w.astype(int))])
        c, st = {key: v[rows] for key, v in comp.items()}, subtasks[rows]
        maps = [scorer(c, np.flatnonzero(st == s)) for s in sorted(set(st.tolist()))]
        shares.append(top_k_share(merge(maps, maxabs), k, L)[0])
    lo, hi = np.quantile(shares, [0.05, 0.95])
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert got["n_examples"] == 8
    # the point estimate: per-subtask maps from each subtask's own rows, merged
    full = merge([scorer({key: v[subtasks == s] for key, v in comp.items()}, np.arange(8)) for s in range(3)], maxabs)
    share, heads = top_k_share(full, k, L)
    assert got["share_second_half"] == share and got["top_heads"] == [list(h) for h in heads]
    assert (got["k"], got["n_boot"], got["n_rows"]) == (k, n_boot, n)


def test_percentile_interval_level_and_nans():
    x = np.r_[np.arange(1001.0), np.nan]
    lo, hi = percentile_interval(x, 0.9)
    assert (lo, hi) == pytest.approx((50.0, 950.0), abs=1e-9)
    # default: 95%, per column of [replicates, ...]
    lo, hi = percentile_interval(np.stack([x, 2 * x], 1))
    np.testing.assert_allclose(lo, [25.0, 50.0], atol=1e-9)
    np.testing.assert_allclose(hi, [975.0, 1950.0], atol=1e-9)


@pytest.mark.parametrize("ci", [0.0, 1.0, 1.5, -0.1])
def test_interval_level_outside_zero_one_is_rejected(ci):
    with pytest.raises(ValueError, match=r"interval level must lie in \(0, 1\)"):
        wilson(3, 10, ci)


def test_patching_aggregate_equals_explicit_pair_resampling():
    # patch_results.aggregate: normalised mean metric with a bootstrap over pairs; reference = the drawn pairs'
    # rows listed explicitly (with repeats) and the normalised mean recomputed per replicate.
    from cotmech.patch_results import aggregate
    from cotmech.stats import resample_counts

    rng = np.random.default_rng(8)
    N, L, H = 9, 2, 3
    base, source = rng.normal(-2, 0.3, N), rng.normal(0, 0.3, N)
    patched = base[:, None, None] + rng.random((N, L, H)) * (source - base)[:, None, None]
    score, lo, hi = aggregate(patched, base, source, n_boot=300, seed=4)
    np.testing.assert_allclose(score, (patched.mean(0) - base.mean()) / (source.mean() - base.mean()), rtol=1e-12)
    reps = []
    for w in resample_counts(N, 300, 4):
        rows = np.repeat(np.arange(N), w)
        reps.append((patched[rows].mean(0) - base[rows].mean()) / (source[rows].mean() - base[rows].mean()))
    ref_lo, ref_hi = np.percentile(reps, [2.5, 97.5], axis=0)
    np.testing.assert_allclose(lo, ref_lo, rtol=1e-10)
    np.testing.assert_allclose(hi, ref_hi, rtol=1e-10)


def test_rift_context_abidance_interval_equals_explicit_example_resampling():
    # prior_shift.rift_summary's context-abidance shares below/above a layer pool (pair, layer) cells; its interval
    # resamples examples. Reference: the drawn examples' cells listed explicitly, the pooled share recomputed.
    from test_prior_shift import _synthetic_rows

    from cotmech.prior_shift import rift_summary

    L = 12
    rows = _synthetic_rows(rift=5, L=L, n_ex=15, seed=2)
    rng = np.random.default_rng(6)
    rows["top1_in_context"] = (rng.random(len(rows)) < np.where(rows["layer"] >= 5, 0.8, 0.2)).astype(float)
    s = rift_summary(rows, n_layers=L, n_boot=250, seed=3, ci=0.9)
    wide = rows.pivot(index="pair_id", columns="layer", values="top1_in_context")
    ex = rows.drop_duplicates("pair_id").set_index("pair_id")["example_id"].loc[wide.index].to_numpy()
    vals = wide.to_numpy(float)
    _, W = bootstrap_weights(ex, 250, seed=3)
    ids = np.unique(ex.astype(str))
    for split, layer in (("context_abidance_rift", s["rift_layer"]), ("context_abidance_midpoint", s["midpoint_layer"])):
        for name, cols in (("below", slice(0, layer)), ("above", slice(layer, None))):
            part = vals[:, cols]
            shares = []
            for w in W:
                drawn = np.repeat(ids, w.astype(int))
                cells = np.concatenate([part[ex == g].ravel() for g in drawn])
                shares.append(cells.mean())
            lo, hi = np.quantile(shares, [0.05, 0.95])
            got = s[split][name]
            assert got["mean"] == pytest.approx(part.mean(), abs=1e-12)
            assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi), abs=1e-12), (split, name)
            assert got["ci_low"] < got["ci_high"]  # not a degenerate interval


def test_writer_score_formula_and_top_k_boundary():
    # score_table("writers") per subtask = (mean p_head - mean p_pre) / mean p_mid, written out by hand; top_k_share
    # counts layer n_layers/2 as second half and never picks a NaN head.
    from cotmech.roles import score_table

    rng = np.random.default_rng(9)
    n, L, H = 10, 4, 3
    comp = {"p_head": rng.random((n, L, H)), "p_pre": rng.random((n, L)), "p_mid": 0.2 + rng.random((n, L)),
            "p_alone": np.zeros((n, L, H)), "dla": np.zeros((n, L, H))}
    subtasks = np.repeat([0, 1], 5)
    t = score_table("writers", comp, subtasks)
    for s in (0, 1):
        r = subtasks == s
        want = (comp["p_head"][r].mean(0) - comp["p_pre"][r].mean(0)[:, None]) / comp["p_mid"][r].mean(0)[:, None]
        got = t[t.subtask == s].sort_values(["layer", "head"])["score"].to_numpy().reshape(L, H)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    m = np.full((4, 2), np.nan)
    m[2, 0], m[1, 1], m[0, 0] = 3.0, 2.0, 1.0  # layer 2 of 4 is the first second-half layer
    share, heads = top_k_share(m, 2, 4)
    assert heads == [(2, 0), (1, 1)] and share == 0.5
    assert top_k_share(m, 3, 4) == (pytest.approx(1 / 3), [(2, 0), (1, 1), (0, 0)])  # NaN heads come last


def test_copy_score_table_merges_max_abs_normalised_subtasks():
    # copy scores: per subtask mean(attn · proj) over rows with an answer position; merged = mean over subtasks of
    # each map divided by its max |score| (so every subtask weighs the same), written out by hand
    from cotmech.roles import score_table

    rng = np.random.default_rng(4)
    n, L, H = 9, 3, 2
    comp = {"attn": rng.random((n, L, H)), "proj": rng.normal(size=(n, L, H)) * np.repeat([1, 10, 100], 3)[:, None, None]}
    comp["attn"][4] = np.nan  # a row without an answer position
    comp["proj"][4] = np.nan
    subtasks = np.repeat([0, 1, 2], 3)
    t = score_table("copy", comp, subtasks)
    maps = []
    for s in range(3):
        r = (subtasks == s) & np.isfinite(comp["attn"][:, 0, 0])
        m = (comp["attn"][r] * comp["proj"][r]).mean(0)
        got = t[t.subtask == s].sort_values(["layer", "head"])
        np.testing.assert_allclose(got["score"].to_numpy().reshape(L, H), m, rtol=1e-12)
        assert (got["n"] == r.sum()).all() and (got["n_excluded"] == 3 - r.sum()).all()
        maps.append(m / np.abs(m).max())
    merged = t[t.subtask == -1].sort_values(["layer", "head"])["score"].to_numpy().reshape(L, H)
    np.testing.assert_allclose(merged, np.mean(maps, 0), rtol=1e-12)
