"""SPC charts against published worked examples and the rules of Making Data Count / IHI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fracture_qi.qi.spc import p_chart, run_chart, runs_limits, xmr

# Montgomery, Introduction to Statistical Quality Control (6th ed.), Example 6.5:
# viscosity of aircraft primer paint, 15 batches; x-bar 33.52, MR-bar 0.48,
# limits 32.24 to 34.80, process in control.
VISCOSITY = [
    33.75,
    33.05,
    34.00,
    33.81,
    33.46,
    34.02,
    33.68,
    33.27,
    33.49,
    33.20,
    33.62,
    33.00,
    33.54,
    33.12,
    33.84,
]

# Montgomery Example 7.1: orange-juice cans, 30 samples of 50; p-bar 0.2313,
# limits 0.0524 to 0.4102; samples 15 and 23 above the upper limit.
CANS = [
    12,
    15,
    8,
    10,
    4,
    7,
    16,
    9,
    14,
    10,
    5,
    6,
    17,
    12,
    22,
    8,
    10,
    5,
    13,
    11,
    20,
    18,
    24,
    15,
    9,
    12,
    7,
    13,
    9,
    6,
]


def test_xmr_montgomery_example():
    c = xmr(VISCOSITY)
    assert list(c.columns[:5]) == ["value", "centre", "lcl", "ucl", "special_cause"]
    assert round(c["centre"].iloc[0], 2) == 33.52
    assert round(c["moving_range"].mean(), 2) == 0.48
    assert round(c["lcl"].iloc[0], 2) == 32.24
    assert round(c["ucl"].iloc[0], 2) == 34.80
    assert not c["special_cause"].any()
    # the limits are mean +/- 2.66 x mean moving range (Making Data Count)
    mr = np.abs(np.diff(VISCOSITY)).mean()
    assert c["ucl"].iloc[0] == pytest.approx(np.mean(VISCOSITY) + 2.66 * mr)


def test_p_chart_montgomery_example():
    c = p_chart(CANS, [50] * 30)
    assert round(c["centre"].iloc[0], 4) == 0.2313
    assert round(c["ucl"].iloc[0], 4) == 0.4102
    assert round(c["lcl"].iloc[0], 4) == 0.0524
    assert np.flatnonzero(c["rule_outside"]).tolist() == [14, 22]  # samples 15 and 23
    assert c["special_cause"].dtype == bool


def test_p_chart_varying_denominators_and_empty_periods():
    c = p_chart([5, 0, 9, 2], [50, 0, 60, 10])
    pbar = 16 / 120
    assert c["centre"].iloc[0] == pytest.approx(pbar)
    assert c["ucl"].iloc[3] == pytest.approx(min(1, pbar + 3 * math.sqrt(pbar * (1 - pbar) / 10)))
    assert math.isnan(c["value"].iloc[1]) and not c["special_cause"].iloc[1]
    with pytest.raises(ValueError, match="successes"):
        p_chart([5], [3])


def test_mdc_shift_trend_two_of_three():
    base = [10.0, 11, 9, 10, 11, 9, 10, 11, 9, 10]
    shifted = base + [10.5] * 7  # seven points above the mean
    c = xmr(shifted)
    assert c["rule_shift"].iloc[-7:].all() and not c["rule_shift"].iloc[:10].any()
    six = xmr(base + [10.5] * 6)  # 6 is not a shift in Making Data Count
    assert not six["rule_shift"].any()
    trend = xmr([5.0, 1, 2, 3, 4, 5, 6, 7, 3, 5])
    assert trend["rule_trend"].tolist() == [False] + [True] * 7 + [False, False]
    # 2 of 3 beyond 2 sigma on the same side, within limits
    vals = [10.0, 11, 9, 10, 11, 9, 10, 11, 9, 10, 11, 9, 10, 11, 9, 10, 11, 9, 10, 11]
    mr = np.abs(np.diff(vals + [13.6, 10.5, 13.6])).mean()
    c = xmr(vals + [13.6, 10.5, 13.6])
    assert not c["rule_outside"].any()
    sigma = c["sigma"].iloc[0]
    assert sigma == pytest.approx(mr / 1.128)
    assert c["rule_two_of_three"].tolist()[-3:] == [True, False, True]
    assert "two_of_three" in c["rules"].iloc[-1]


def test_change_date_splits_limits():
    months = pd.date_range("2024-01-01", periods=24, freq="MS")
    vals = pd.Series(
        [20.0 + (i % 3) for i in range(12)] + [40.0 + (i % 3) for i in range(12)], index=months
    )
    one = xmr(vals)
    assert one["special_cause"].any()  # a step change on one set of limits
    two = xmr(vals, change_at=[pd.Timestamp("2025-01-01")], improvement="up")
    assert two["phase"].tolist() == [0] * 12 + [1] * 12
    assert two["centre"].iloc[0] == pytest.approx(21) and two["centre"].iloc[-1] == pytest.approx(
        41
    )
    assert not two["special_cause"].any()
    assert set(two["variation"]) == {"common_cause"}
    # a date between labels starts the phase at the next point
    mid = xmr(vals, change_at=[pd.Timestamp("2024-12-15")])
    assert mid["phase"].iloc[11] == 0 and mid["phase"].iloc[12] == 1


def test_improvement_direction():
    c = xmr([10.0, 11, 9, 10, 11, 9, 10, 11, 9, 10, 30], improvement="down")
    assert c["variation"].iloc[-1] == "concern"
    c = xmr([10.0, 11, 9, 10, 11, 9, 10, 11, 9, 10, 30], improvement="up")
    assert c["variation"].iloc[-1] == "improvement"


def test_xmr_rejects_missing():
    with pytest.raises(ValueError, match="position 2"):
        xmr([1.0, 2.0, float("nan")])


def test_runs_limits_swed_eisenhart():
    # published Swed-Eisenhart critical values (alpha 0.05 two-sided): n1 = n2 = 10 -> r <= 6
    # or r >= 16 significant; n1 = n2 = 5 -> r <= 2 or r >= 10; n1 = n2 = 15 -> r <= 10, >= 22
    assert runs_limits(10, 10) == (7, 15)
    assert runs_limits(5, 5)[0] == 3
    assert runs_limits(15, 15) == (11, 21)


def test_run_chart_ihi_rules():
    # shift of 6 below the median; points on the median neither count nor break
    vals = [9.0, 9, 9, 9, 9, 9, 1, 1, 5, 1, 1, 1, 1]
    rc = run_chart(vals)
    assert rc["centre"].iloc[0] == 5
    assert rc["rule_shift"].tolist() == [True] * 8 + [False] + [True] * 4
    assert not run_chart([9.0, 9, 9, 9, 9, 1, 1, 5, 1, 1, 1, 1, 9])["rule_shift"].iloc[:5].any()
    # trend of 5 with a repeated value ignored
    rc = run_chart([3.0, 1, 2, 2, 3, 4, 5, 2, 3, 2, 3, 2])
    assert rc["rule_trend"].iloc[1:7].all() and not rc["rule_trend"].iloc[0]
    # too many runs: a saw-tooth of 20 points crosses the median 19 times
    saw = [1.0, 3] * 10
    rc = run_chart(saw)
    assert rc["n_runs"].iloc[0] == 20 and rc["rule_too_many_runs"].all()
    # too few runs: 10 low then 10 high is 2 runs (also a shift)
    rc = run_chart([1.0] * 10 + [3.0] * 10)
    assert rc["rule_too_few_runs"].all()
    # astronomical point
    rc = run_chart([10.0, 11, 12, 10, 11, 12, 10, 11, 60, 12, 11])
    assert rc["rule_astronomical"].tolist().index(True) == 8
    assert rc["rule_astronomical"].sum() == 1


def test_random_data_rarely_special():
    rng = np.random.default_rng(1)
    flagged = 0
    for _ in range(100):
        c = xmr(rng.normal(50, 5, 24))
        flagged += bool(c["rule_outside"].any())
    # 24 points with 3-sigma limits: roughly 6-15 % of in-control charts show a point outside
    assert flagged / 100 < 0.25
