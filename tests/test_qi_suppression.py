"""Small-number suppression: primary, rounding, percentages and secondary suppression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fracture_qi.qi.suppression import (
    format_count,
    publishable_count,
    publishable_percent,
    publishable_statistic,
    secondary_suppression_mask,
    suppress_table,
)


def test_publishable_count_contract():
    # the public API examples
    assert publishable_count(0) == "0"
    assert publishable_count(7) == "*"
    assert publishable_count(8) == "10"
    assert publishable_count(12) == "10"
    assert publishable_count(13) == "15"
    assert [publishable_count(n) for n in range(1, 8)] == ["*"] * 7
    assert publishable_count(None) == ""
    with pytest.raises(ValueError):
        publishable_count(-1)
    with pytest.raises(ValueError, match="whole"):
        publishable_count(2.5)


@given(st.integers(0, 10**7))
def test_never_shows_1_to_7_and_rounds_to_5(n):
    s = publishable_count(n)
    if s == "*":
        assert 1 <= n <= 7
    else:
        v = int(s)
        assert v % 5 == 0 and abs(v - n) <= 2
        assert not 1 <= v <= 7


def test_modes_are_explicit():
    assert format_count(3, "internal") == "3"
    assert format_count(3, "publish") == "*"
    with pytest.raises(ValueError, match="publish"):
        format_count(3, "public")  # type: ignore[arg-type]


def test_percent_from_rounded_counts():
    assert publishable_percent(13, 41) == "37.5%"  # 15/40, not 31.7 %
    assert publishable_percent(13, 41, mode="internal") == "31.7%"
    assert publishable_percent(3, 41) == "*"
    assert publishable_percent(0, 0) == ""


def test_statistic_needs_eight_patients():
    assert publishable_statistic(45.0, 7) == "*"
    assert publishable_statistic(45.0, 8) == "45"
    assert publishable_statistic(45.0, 2, mode="internal") == "45"


def _line_hidden_counts(mask: np.ndarray, row_totals=True, column_totals=True):
    r, k = mask.shape[0] - 1, mask.shape[1] - 1
    lines = []
    if row_totals:
        lines += [mask[i, :] for i in range(r + (1 if column_totals else 0))]
    if column_totals:
        lines += [mask[:, j] for j in range(k + (1 if row_totals else 0))]
    return [int(line.sum()) for line in lines]


@settings(max_examples=150, deadline=None)
@given(
    arrays(np.int64, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=st.integers(0, 60))
)
def test_secondary_suppression_holds(counts):
    mask = secondary_suppression_mask(counts)
    r, k = counts.shape
    full = np.zeros((r + 1, k + 1), np.int64)
    full[:r, :k] = counts
    full[:r, k] = counts.sum(1)
    full[r, :k] = counts.sum(0)
    full[r, k] = counts.sum()
    # primary: every 1-7 (cells and totals) hidden
    assert mask[(full >= 1) & (full <= 7)].all()
    # secondary: no row or column equation has exactly one unknown
    assert 1 not in _line_hidden_counts(mask)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.int64, st.tuples(st.integers(1, 4), st.integers(1, 4)), elements=st.integers(0, 40))
)
def test_suppress_table_never_shows_small_counts(counts):
    df = pd.DataFrame(counts, columns=[f"c{j}" for j in range(counts.shape[1])])
    df.insert(0, "site", [f"S{i}" for i in range(len(df))])
    out = suppress_table(df, mode="publish", add_totals=True)
    for c in out.columns[1:]:
        for v in out[c]:
            assert v == "*" or v == "" or (int(v) % 5 == 0 and not 1 <= int(v) <= 7)


def test_suppress_table_worked_example():
    df = pd.DataFrame({"site": ["A", "B", "C"], "confirmed": [5, 30, 42], "not": [20, 60, 90]})
    out = suppress_table(df, mode="publish", add_totals=True)
    # A/confirmed (5) is primary; A/not (20) hides with it (row total 25 is shown);
    # column 'confirmed' then has two hidden cells only if B or C hides: B (30) is the smallest
    assert out.loc[0, "confirmed"] == "*" and out.loc[0, "not"] == "*"
    assert out.loc[1, "confirmed"] == "*"
    assert out.loc[1, "not"] == "*"  # row B would otherwise reveal its hidden cell
    assert out.loc[3, "site"] == "Total" and out.loc[3, "Total"] == "245"
    internal = suppress_table(df, mode="internal")
    assert internal["confirmed"].tolist() == ["5", "30", "42"]


def test_suppress_table_bad_input():
    with pytest.raises(ValueError, match="whole counts"):
        suppress_table(pd.DataFrame({"n": [1.5]}), ["n"], mode="publish")
    with pytest.raises(ValueError, match="not in the table"):
        suppress_table(pd.DataFrame({"n": [1]}), ["m"], mode="publish")
