"""Proportions: Wilson intervals against statsmodels, IPW recovering a known sensitivity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.proportion import proportion_confint

from fracture_qi.qi.proportions import (
    kish_effective_n,
    proportion,
    weighted_proportion,
    wilson_interval,
)


@given(n=st.integers(1, 5000), data=st.data(), conf=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_contains_estimate_and_matches_statsmodels(n, data, conf):
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n, conf)
    assert 0.0 <= low <= k / n <= high <= 1.0
    ref = proportion_confint(k, n, alpha=1 - conf, method="wilson")
    assert low == pytest.approx(max(0, ref[0]), abs=1e-12)
    assert high == pytest.approx(min(1, ref[1]), abs=1e-12)


def test_wilson_worked_example():
    # Newcombe (1998) Table I, example 81/263: Wilson 0.2553 to 0.3662
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # 0/10: Wilson upper limit 0.2775 (Newcombe 1998, example 0/10)
    assert round(wilson_interval(0, 10)[1], 4) == 0.2775


def test_wilson_rejects_bad_input():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 3, confidence=95)


def test_proportion_exact_method():
    p = proportion(0, 10, method="clopper-pearson")
    assert p.low == 0 and round(p.high, 4) == 0.3085  # 1 - 0.025**(1/10)
    with pytest.raises(ValueError):
        proportion(1, 2, method="wald")


def test_kish():
    assert kish_effective_n(np.ones(7)) == 7
    assert kish_effective_n(np.array([])) == 0


def _simulate(rng, n_pop, prev, se, sp, rate):
    """A screened population and the audit: all flagged reviewed, negatives sampled at rate."""
    truth = rng.random(n_pop) < prev
    flag = np.where(truth, rng.random(n_pop) < se, rng.random(n_pop) > sp)
    sampled = flag | (rng.random(n_pop) < rate)
    w = np.where(flag, 1.0, 1.0 / rate)[sampled]
    t, f = truth[sampled], flag[sampled]
    strata = np.where(f, "flagged", "audit_negative")
    true_se = (truth & flag).sum() / truth.sum()
    return t, f, w, strata, true_se


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**31),
    prev=st.floats(0.05, 0.3),
    se=st.floats(0.5, 0.97),
    rate=st.floats(0.05, 0.5),
)
def test_ipw_recovers_known_sensitivity(seed, prev, se, rate):
    rng = np.random.default_rng(seed)
    t, f, w, strata, true_se = _simulate(rng, 20_000, prev, se, 0.9, rate)
    est = weighted_proportion(t & f, t, w, strata)
    assert est.low <= est.estimate <= est.high
    half = (est.high - est.low) / 2
    # within ~4 standard errors of the population's own sensitivity
    assert abs(est.estimate - true_se) <= 2.1 * half + 0.01
    # the naive unweighted estimate over-states sensitivity; the weighted one does not
    naive = (t & f).sum() / t.sum()
    assert naive >= est.estimate - 1e-12


def test_ipw_interval_coverage():
    rng = np.random.default_rng(20261127)
    covered = 0
    runs = 300
    for _ in range(runs):
        t, f, w, strata, true_se = _simulate(rng, 4000, 0.15, 0.8, 0.9, 0.1)
        est = weighted_proportion(t & f, t, w, strata)
        covered += est.low <= true_se <= est.high
    # nominal 95 %; a broken variance (e.g. ignoring the weights) gives ~60-75 %
    assert covered / runs >= 0.90


def test_ipw_edge_cases():
    est = weighted_proportion(np.ones(5, bool), np.ones(5, bool), np.ones(5))
    assert est.estimate == 1.0 and est.high == 1.0 and est.low < 1.0
    empty = weighted_proportion(np.zeros(3, bool), np.zeros(3, bool), np.ones(3))
    assert math.isnan(empty.estimate)
    with pytest.raises(ValueError, match="sampling_probability"):
        weighted_proportion(np.ones(2, bool), np.ones(2, bool), np.array([1.0, 0.0]))
