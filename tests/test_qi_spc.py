"""SPC charts against published worked examples and the rules of Making Data Count / IHI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fracture_qi.qi.spc import assurance, p_chart, run_chart, runs_limits, two_of_three, xmr

# NHSRplotthedots' test data (tests/testthat/test-ptd_spc.R): set.seed(123); rnorm(20), as R
# draws them. Its documented results (tests/testthat/_snaps/ptd_spc.md): mean 0.142, process
# limits -3.01 to 3.29, 20 common-cause points; split into two groups of 10 (its facet test):
# 0.0746 (-2.60 to 2.75) and 0.209 (-3.28 to 3.70).
PTD_Y = [
    -0.56047565, -0.23017749, 1.55870831, 0.07050839, 0.12928774, 1.71506499, 0.46091621,
    -1.26506123, -0.68685285, -0.44566197, 1.22408180, 0.35981383, 0.40077145, 0.11068272,
    -0.55584113, 1.78691314, 0.49785048, -1.96661716, 0.70135590, -0.47279141,
]

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
    assert sigma == pytest.approx(2.66 / 3 * mr)  # about mean MR / 1.128
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


def test_missing_periods_keep_their_place_and_take_no_part():
    months = pd.date_range("2024-01-01", periods=8, freq="MS")
    vals = pd.Series([10.0, 12, np.nan, 11, 13, 12, 11, 12], index=months)
    c = xmr(vals)
    assert list(c.index) == list(months)  # the axis is not shortened
    assert c["point_type"].iloc[2] == "missing" and not c["special_cause"].iloc[2]
    assert c["centre"].iloc[0] == pytest.approx(np.nanmean(vals))
    # moving ranges only between adjacent months with data: none into or out of the gap
    assert np.isnan(c["moving_range"].iloc[2]) and np.isnan(c["moving_range"].iloc[3])
    mr = np.abs(np.diff([10.0, 12])).tolist() + np.abs(np.diff([11.0, 13, 12, 11, 12])).tolist()
    assert c["ucl"].iloc[0] == pytest.approx(np.nanmean(vals) + 2.66 * np.mean(mr))
    assert "1 period(s) without data" in c.attrs["summary"].warnings[-1]
    with pytest.raises(ValueError, match="infinite"):
        xmr([1.0, np.inf])


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


# --- Making Data Count as NHSRplotthedots implements it --------------------------------------


def test_ptd_documented_limits():
    c = xmr(PTD_Y, improvement="up")
    assert [round(v, 2) for v in c[["lcl", "ucl"]].iloc[0]] == [-3.01, 3.29]
    assert round(c["centre"].iloc[0], 3) == 0.142
    assert (c["point_type"] == "common_cause").all()
    assert c.attrs["summary"].variation == "common_cause"
    # with a target of 0.5 inside the limits: hit and miss (ptd's "summary with a target")
    assert xmr(PTD_Y, improvement="up", target=0.5).attrs["summary"].assurance == "inconsistent"


def test_ptd_two_groups_equal_a_rebase():
    c = xmr(PTD_Y, change_at=[10])
    first, second = c.iloc[0], c.iloc[10]
    assert (round(first["centre"], 4), round(first["lcl"], 2), round(first["ucl"], 2)) == (
        0.0746, -2.60, 2.75)
    assert (round(second["centre"], 3), round(second["lcl"], 2), round(second["ucl"], 2)) == (
        0.209, -3.28, 3.70)
    assert c["phase"].tolist() == [0] * 10 + [1] * 10


def test_screening_outlying_moving_ranges_narrows_the_limits():
    y = list(PTD_Y)
    y[14] = 10.0  # ptd's outlier case
    screened, plain = xmr(y), xmr(y, screen_outliers=False)
    assert plain["ucl"].iloc[0] - plain["lcl"].iloc[0] > screened["ucl"].iloc[0] - screened["lcl"].iloc[0]
    mr = np.abs(np.diff(y))
    kept = mr[mr < 3.267 * mr.mean()]
    assert screened["ucl"].iloc[0] == pytest.approx(np.mean(y) + 2.66 * kept.mean())
    assert screened["rule_outside"].iloc[14] and screened["point_type"].iloc[14] == (
        "special_cause_neutral_high")


def test_ptd_rule_cases():
    up = np.ones(7)
    assert two_of_three(np.array([0, 0, 1, 0, 1, 0, 0], bool), up).astype(int).tolist() == [
        0, 0, 1, 0, 1, 0, 0]
    assert two_of_three(np.array([0, 0, 1, 1, 0, 0, 0], bool), up).astype(int).tolist() == [
        0, 0, 1, 1, 0, 0, 0]
    assert two_of_three(np.array([1, 0, 0, 1, 1], bool), np.ones(5)).astype(int).tolist() == [
        0, 0, 0, 1, 1]
    # two close points on opposite sides of the mean are no signal (ptd test)
    sym = [1.0, -1.0] * 8
    sym[14], sym[15] = 5.5, -5.5
    c = xmr(sym)
    assert c["point_type"].iloc[-2:].tolist() == ["common_cause", "common_cause"]
    # seven on one side; equal values break a trend (ptd's seven-point cases)
    assert not xmr([1.0, 2, 3, 3, 4, 5, 6] + [2.0] * 5)["rule_trend"].any()
    t = xmr([2.0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 3, 4, 3])
    assert t["rule_trend"].tolist()[:9] == [False] + [True] * 7 + [False]


def test_special_cause_types_and_icons():
    base = [50.0, 52, 49, 51, 50, 48, 52, 50, 49, 51, 50, 52]
    up = xmr(base + [58.0] * 7, improvement="up")  # a shift upwards: improving
    assert set(up["point_type"].iloc[-7:]) == {"special_cause_improvement"}
    assert up.attrs["summary"].variation == "improvement_high"
    down = xmr(base + [58.0] * 7, improvement="down")
    assert down.attrs["summary"].variation == "concern_high"
    low = xmr(base + [42.0] * 7, improvement="up")
    assert low.attrs["summary"].variation == "concern_low"
    neutral = xmr(base + [42.0] * 7)
    assert neutral.attrs["summary"].variation == "neutral_low"
    assert any("shift" in s for s in up.attrs["summary"].signals)
    # assurance against a target (NHSRplotthedots' cases: limits 1-3, 5-7, 1-5; target 4)
    assert [assurance(4, "up", a, b) for a, b in ((1, 3), (5, 7), (1, 5))] == [
        "consistent_fail", "consistent_pass", "inconsistent"]
    assert [assurance(4, "down", a, b) for a, b in ((1, 3), (5, 7), (1, 5))] == [
        "consistent_pass", "consistent_fail", "inconsistent"]
    assert assurance(4, None, 1, 3) == ""
    # the assurance of a rebased chart is judged on the latest phase's limits
    reb = xmr(base + [80.0, 81, 79, 80, 82, 80, 79, 81, 80, 81, 80, 79], change_at=[12],
              improvement="up", target=70)
    assert reb.attrs["summary"].assurance == "consistent_pass"


def test_a_count_chart_never_has_a_limit_below_zero():
    counts = [0, 3, 0, 1, 9, 0, 2, 0, 0, 4, 1, 0]
    c = xmr(counts, lower_bound=0)
    assert (c["lcl"] >= 0).all() and (c["near_lcl"] >= 0).all()
    unclamped = xmr(counts)
    assert (unclamped["lcl"] < 0).all()  # what the clamp prevents
    # a proportion stays within 0-1
    p = xmr([0.95, 0.99, 0.97, 1.0, 0.93, 0.98], lower_bound=0, upper_bound=1)
    assert (p["ucl"] <= 1).all() and (p["lcl"] >= 0).all()
