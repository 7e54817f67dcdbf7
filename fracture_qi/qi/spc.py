"""Statistical process control: XmR and p-charts (NHS "Making Data Count") and run charts (IHI).

**XmR chart** (individuals and moving range). Centre = mean of the values; moving range
``MR_i = |x_i - x_{i-1}|``; process limits ``mean +/- 2.66 * mean(MR)`` (2.66 = 3 / d2,
d2 = 1.128 for ranges of 2), so ``sigma = mean(MR) / 1.128``.

**p-chart** (a proportion per month with varying denominators). Centre
``p = sum(successes) / sum(totals)``; per-point ``sigma_i = sqrt(p (1 - p) / n_i)``; limits
``p +/- 3 sigma_i`` clipped to [0, 1].

**Making Data Count special-cause rules** (NHS England/Improvement, "Making Data Count"):

1. ``outside``: a point above the upper or below the lower process limit;
2. ``shift``: a run of 7 or more consecutive points all above or all below the centre line
   (a point exactly on the centre line ends a run);
3. ``trend``: 7 or more consecutive points each higher (or each lower) than the one before
   (an equal value ends a trend);
4. ``two_of_three``: 2 of 3 consecutive points beyond 2 sigma on the same side of the centre
   (in the outer third between the centre line and a limit).

Every point in the run or pattern is marked, as the NHS tool colours them.

**Run chart IHI rules** (Perla, Provost & Murray 2011): centre = median; points on the
median are ignored for rules 1 and 3;

1. ``shift``: 6 or more consecutive points all above or all below the median;
2. ``trend``: 5 or more consecutive points all going up or all going down (of successive
   equal values only one is counted);
3. ``too_few_runs`` / ``too_many_runs``: the number of runs (crossings of the median + 1)
   is outside the two-sided 5 % critical values of the exact Swed-Eisenhart runs
   distribution for the observed numbers above and below the median (the table Perla et al.
   print is derived from it);
4. ``astronomical``: a point far out of line; made objective here as beyond
   ``Q3 + 3 IQR`` or ``Q1 - 3 IQR`` (Tukey's far-out fence) of the phase.

**Change dates**: ``change_at`` lists the positions (or index labels) where a QI change
started; limits, centre and rules are computed separately for each phase, and no run or
trend crosses a phase boundary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: XmR scaling constant 3 / d2 (d2 = 1.128 for moving ranges of two points)
XMR_CONSTANT = 2.66
#: d2 for a moving range of two
D2 = 1.128
#: Making Data Count: points in a shift / a trend
MDC_SHIFT = 7
MDC_TREND = 7
#: IHI run-chart rules
IHI_SHIFT = 6
IHI_TREND = 5
#: the run-chart runs test needs at least this many useful observations
IHI_MIN_USEFUL = 10

Improvement = Literal["up", "down"] | None

MDC_RULES = ("outside", "shift", "trend", "two_of_three")
IHI_RULES = ("shift", "trend", "too_few_runs", "too_many_runs", "astronomical")


def _phases(n: int, index: pd.Index, change_at: Sequence[Any] | None) -> np.ndarray:
    """Phase number per point: 0 before the first change, 1 after it, ..."""
    phase = np.zeros(n, dtype=int)
    for c in change_at or []:
        if c in index:
            pos = int(index.get_loc(c))  # type: ignore[arg-type]
        elif isinstance(c, (int, np.integer)) and 0 <= c < n:
            pos = int(c)
        else:
            try:  # e.g. a date between two monthly labels: the first point on or after it
                pos = int(index.searchsorted(c))
            except TypeError as e:
                raise ValueError(
                    f"change_at value {c!r} is neither an index label nor a position "
                    f"(index runs {index[0]!r}..{index[-1]!r})"
                ) from e
        phase[pos:] += 1
    return phase


def _as_index(n: int, index: Sequence[Any] | pd.Index | None) -> pd.Index:
    if index is None:
        return pd.RangeIndex(n)
    idx = pd.Index(index)
    if len(idx) != n:
        raise ValueError(f"index has {len(idx)} labels for {n} values")
    return idx


def _runs_of(mask_pos: np.ndarray, mask_neg: np.ndarray, length: int) -> np.ndarray:
    """Mark points inside runs of >= *length* consecutive True in either mask."""
    out = np.zeros(len(mask_pos), dtype=bool)
    for m in (mask_pos, mask_neg):
        start = None
        for i, v in enumerate(list(m) + [False]):
            if v and start is None:
                start = i
            elif not v and start is not None:
                if i - start >= length:
                    out[start:i] = True
                start = None
    return out


def _trend_points(x: np.ndarray, length: int) -> np.ndarray:
    """Mark points in strictly monotone sequences of >= *length* points (equal values break)."""
    out = np.zeros(len(x), dtype=bool)
    if len(x) < length:
        return out
    d = np.sign(np.diff(x))
    for sgn in (1, -1):
        start = None
        for i, v in enumerate(list(d == sgn) + [False]):
            if v and start is None:
                start = i
            elif not v and start is not None:
                # i - start differences -> i - start + 1 points, from start to i inclusive
                if i - start + 1 >= length:
                    out[start : i + 1] = True
                start = None
    return out


def _two_of_three(x: np.ndarray, centre: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x), dtype=bool)
    with np.errstate(invalid="ignore"):
        hi = x > centre + 2 * sigma
        lo = x < centre - 2 * sigma
    for m in (hi, lo):
        for i in range(len(x) - 2):
            w = m[i : i + 3]
            if w.sum() >= 2:
                out[i : i + 3] |= w
    return out


def _mdc_rules(df: pd.DataFrame) -> pd.DataFrame:
    """Evaluate the four Making Data Count rules phase by phase (in place)."""
    x = df["value"].to_numpy(float)
    c = df["centre"].to_numpy(float)
    s = df["sigma"].to_numpy(float)
    ph = df["phase"].to_numpy()
    with np.errstate(invalid="ignore"):
        outside = (x > df["ucl"].to_numpy(float)) | (x < df["lcl"].to_numpy(float))
    shift = np.zeros(len(x), bool)
    trend = np.zeros(len(x), bool)
    tot = np.zeros(len(x), bool)
    for p in np.unique(ph):
        sel = np.flatnonzero(ph == p)
        xs, cs = x[sel], c[sel]
        shift[sel] = _runs_of(xs > cs, xs < cs, MDC_SHIFT)
        trend[sel] = _trend_points(xs, MDC_TREND)
        tot[sel] = _two_of_three(xs, cs, s[sel])
    df["rule_outside"] = outside
    df["rule_shift"] = shift
    df["rule_trend"] = trend
    df["rule_two_of_three"] = tot
    return df


def _finish(df: pd.DataFrame, rules: Sequence[str], improvement: Improvement) -> pd.DataFrame:
    flags = df[[f"rule_{r}" for r in rules]]
    df["special_cause"] = flags.any(axis=1)
    df["rules"] = [
        ",".join(r for r, f in zip(rules, row) if f) for row in flags.itertuples(index=False)
    ]
    if improvement not in (None, "up", "down"):
        raise ValueError(f"improvement={improvement!r}: use 'up', 'down' or None")
    if improvement is not None:
        above = df["value"] > df["centre"]
        good = above if improvement == "up" else ~above & (df["value"] != df["centre"])
        df["variation"] = np.where(
            ~df["special_cause"], "common_cause", np.where(good, "improvement", "concern")
        )
    return df


def xmr(
    values: Sequence[float] | np.ndarray | pd.Series,
    *,
    index: Sequence[Any] | pd.Index | None = None,
    change_at: Sequence[Any] | None = None,
    improvement: Improvement = None,
) -> pd.DataFrame:
    """XmR (individuals) chart with Making Data Count special-cause rules.

    Parameters
    ----------
    values
        One value per period (e.g. median days to assessment per month). A Series keeps its
        index as the chart's index.
    index
        Labels for the points (e.g. month start dates), overriding a Series' index.
    change_at
        Labels or positions where a QI change took effect: limits are recalculated from
        there on (each phase its own mean and mean moving range).
    improvement
        ``"up"`` or ``"down"`` if a higher / lower value is better: adds a ``variation``
        column (``common_cause``, ``improvement``, ``concern``) as in the NHS icons.

    Returns
    -------
    pandas.DataFrame
        Columns ``value, centre, lcl, ucl, special_cause`` (bool), then ``phase,
        moving_range, sigma, rule_outside, rule_shift, rule_trend, rule_two_of_three,
        rules`` (comma-separated names of the rules that fired) and ``variation`` if asked.
        A phase with fewer than 2 points has NaN limits.

    Raises
    ------
    ValueError
        When a value is missing or not finite, or *change_at* is not understood.

    Examples
    --------
    >>> chart = xmr([10, 12, 11, 13, 12, 30])
    >>> round(float(chart["ucl"].iloc[0]), 2), chart["special_cause"].tolist()
    (27.43, [False, False, False, False, False, True])
    """
    idx = values.index if isinstance(values, pd.Series) and index is None else None
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError("values must be one-dimensional")
    bad = np.flatnonzero(~np.isfinite(x))
    if len(bad):
        raise ValueError(
            f"value at position {int(bad[0])} is {x[bad[0]]!r}: an XmR chart needs a number for "
            "every period. Fix: drop or fill the empty periods before charting"
        )
    ix = _as_index(len(x), index if index is not None else idx)
    phase = _phases(len(x), ix, change_at)
    df = pd.DataFrame({"value": x, "phase": phase}, index=ix)
    df["moving_range"] = np.nan
    df["centre"] = np.nan
    df["sigma"] = np.nan
    for p in np.unique(phase):
        sel = phase == p
        xp = x[sel]
        mr = np.abs(np.diff(xp))
        mr_full = np.concatenate([[np.nan], mr])
        df.loc[sel, "moving_range"] = mr_full
        df.loc[sel, "centre"] = xp.mean()
        df.loc[sel, "sigma"] = mr.mean() / D2 if len(mr) else np.nan
    df["lcl"] = df["centre"] - XMR_CONSTANT * df["sigma"] * D2
    df["ucl"] = df["centre"] + XMR_CONSTANT * df["sigma"] * D2
    _mdc_rules(df)
    df = _finish(df, MDC_RULES, improvement)
    return df[
        ["value", "centre", "lcl", "ucl", "special_cause"]
        + [c for c in df.columns if c not in ("value", "centre", "lcl", "ucl", "special_cause")]
    ]


def p_chart(
    successes: Sequence[float] | np.ndarray | pd.Series,
    totals: Sequence[float] | np.ndarray | pd.Series,
    *,
    index: Sequence[Any] | pd.Index | None = None,
    change_at: Sequence[Any] | None = None,
    improvement: Improvement = None,
) -> pd.DataFrame:
    """p-chart of a monthly proportion with per-point limits and Making Data Count rules.

    Parameters
    ----------
    successes, totals
        Numerator and denominator per period (e.g. patients assessed within 90 days and
        patients referred, per month). Periods with a total of 0 are kept with NaN value and
        limits and take part in no rule.
    index, change_at, improvement
        As for :func:`xmr`.

    Returns
    -------
    pandas.DataFrame
        Columns ``value`` (proportion), ``centre, lcl, ucl, special_cause``, then ``phase,
        successes, totals, sigma, rule_*, rules`` (and ``variation`` if asked). Limits are
        clipped to [0, 1].

    Raises
    ------
    ValueError
        When lengths differ, or a count is negative or larger than its total.

    Examples
    --------
    >>> c = p_chart([5, 6, 4], [50, 60, 40])
    >>> float(c["centre"].iloc[0]), round(float(c["ucl"].iloc[0]), 4)
    (0.1, 0.2273)
    """
    idx = successes.index if isinstance(successes, pd.Series) and index is None else None
    s = np.asarray(successes, dtype=float)
    n = np.asarray(totals, dtype=float)
    if s.shape != n.shape or s.ndim != 1:
        raise ValueError("successes and totals must be 1-D and of the same length")
    if np.any(s < 0) or np.any(n < 0) or np.any(s > n):
        bad = int(np.flatnonzero((s < 0) | (n < 0) | (s > n))[0])
        raise ValueError(
            f"period {bad}: successes={s[bad]!r}, total={n[bad]!r}; need 0 <= successes <= total"
        )
    ix = _as_index(len(s), index if index is not None else idx)
    phase = _phases(len(s), ix, change_at)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(n > 0, s / np.where(n > 0, n, 1), np.nan)
    df = pd.DataFrame({"value": value, "phase": phase, "successes": s, "totals": n}, index=ix)
    df["centre"] = np.nan
    df["sigma"] = np.nan
    for p in np.unique(phase):
        sel = phase == p
        tot = n[sel].sum()
        pbar = s[sel].sum() / tot if tot > 0 else np.nan
        df.loc[sel, "centre"] = pbar
        with np.errstate(invalid="ignore", divide="ignore"):
            df.loc[sel, "sigma"] = np.where(
                n[sel] > 0, np.sqrt(pbar * (1 - pbar) / np.where(n[sel] > 0, n[sel], 1)), np.nan
            )
    df["lcl"] = (df["centre"] - 3 * df["sigma"]).clip(lower=0.0)
    df["ucl"] = (df["centre"] + 3 * df["sigma"]).clip(upper=1.0)
    # empty periods take no part in runs: evaluate rules on the periods with data only
    has = n > 0
    sub = _mdc_rules(df.loc[has].copy())
    for r in MDC_RULES:
        df[f"rule_{r}"] = False
        df.loc[has, f"rule_{r}"] = sub[f"rule_{r}"].to_numpy()
    df = _finish(df, MDC_RULES, improvement)
    return df[
        ["value", "centre", "lcl", "ucl", "special_cause"]
        + [c for c in df.columns if c not in ("value", "centre", "lcl", "ucl", "special_cause")]
    ]


@lru_cache(maxsize=4096)
def runs_limits(n_above: int, n_below: int, alpha: float = 0.05) -> tuple[int, int]:
    """Two-sided critical numbers of runs for the runs test (Swed & Eisenhart 1943).

    Parameters
    ----------
    n_above, n_below
        Useful observations above and below the median.
    alpha
        Two-sided significance level (half in each tail).

    Returns
    -------
    tuple of int
        ``(lower, upper)``: fewer than ``lower`` runs is "too few", more than ``upper`` is
        "too many" (probability of either at most ``alpha/2`` under randomness).

    Examples
    --------
    Ten above and ten below: 6 or fewer runs, or 16 or more, are unusual (the published
    Swed-Eisenhart critical values for n1 = n2 = 10).

    >>> runs_limits(10, 10)
    (7, 15)
    """
    n1, n2 = n_above, n_below
    if n1 < 1 or n2 < 1:
        return (1, n1 + n2)
    total = math.comb(n1 + n2, n1)

    def pmf(r: int) -> float:
        if r % 2 == 0:
            k = r // 2
            return 2 * math.comb(n1 - 1, k - 1) * math.comb(n2 - 1, k - 1) / total
        k = (r - 1) // 2
        return (
            math.comb(n1 - 1, k) * math.comb(n2 - 1, k - 1)
            + math.comb(n1 - 1, k - 1) * math.comb(n2 - 1, k)
        ) / total

    rs = range(2, n1 + n2 + 1)
    probs = {r: pmf(r) for r in rs}
    lower, cum = 2, 0.0
    for r in rs:
        if cum + probs[r] > alpha / 2:
            lower = r
            break
        cum += probs[r]
    upper, cum = n1 + n2, 0.0
    for r in reversed(rs):
        if cum + probs[r] > alpha / 2:
            upper = r
            break
        cum += probs[r]
    return (lower, upper)


def _ihi_trend(x: np.ndarray, length: int) -> np.ndarray:
    """Trend marks, counting only one of successive equal values."""
    out = np.zeros(len(x), dtype=bool)
    keep = np.concatenate([[True], np.diff(x) != 0]) if len(x) else np.array([], bool)
    pos = np.flatnonzero(keep)
    marks = _trend_points(x[pos], length)
    for i, p in enumerate(pos):
        if marks[i]:
            # mark the repeated values that were skipped too
            end = pos[i + 1] if i + 1 < len(pos) else len(x)
            out[p:end] = True
    # a skipped repeat at the end of a trend belongs to it only up to the last counted point
    return out


def run_chart(
    values: Sequence[float] | np.ndarray | pd.Series,
    *,
    index: Sequence[Any] | pd.Index | None = None,
    change_at: Sequence[Any] | None = None,
    improvement: Improvement = None,
) -> pd.DataFrame:
    """Run chart with the IHI rules (see the module docstring).

    Parameters
    ----------
    values, index, change_at, improvement
        As for :func:`xmr`; missing values are not allowed.

    Returns
    -------
    pandas.DataFrame
        Columns ``value, centre`` (median), ``special_cause``, then ``phase, useful`` (not on
        the median), ``n_runs`` and ``runs_lower``/``runs_upper`` (per phase), ``rule_shift,
        rule_trend, rule_too_few_runs, rule_too_many_runs, rule_astronomical, rules``.
        The runs rules are phase-wide (every point of the phase carries them) and are only
        evaluated with at least 10 useful observations.

    Examples
    --------
    >>> rc = run_chart([1, 2, 3, 4, 5, 3, 3, 2, 3, 1])
    >>> rc["rule_trend"].tolist()[:6]
    [True, True, True, True, True, False]
    """
    idx = values.index if isinstance(values, pd.Series) and index is None else None
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError("run_chart needs a finite number for every period")
    ix = _as_index(len(x), index if index is not None else idx)
    phase = _phases(len(x), ix, change_at)
    df = pd.DataFrame({"value": x, "phase": phase}, index=ix)
    for col, default in (
        ("centre", np.nan),
        ("useful", False),
        ("n_runs", 0),
        ("runs_lower", 0),
        ("runs_upper", 0),
    ):
        df[col] = default
    for r in IHI_RULES:
        df[f"rule_{r}"] = False
    for p in np.unique(phase):
        sel = np.flatnonzero(phase == p)
        xp = x[sel]
        med = float(np.median(xp))
        useful = xp != med
        side = np.sign(xp[useful] - med)
        n_runs = int(1 + np.sum(side[1:] != side[:-1])) if len(side) else 0
        n_above, n_below = int((side > 0).sum()), int((side < 0).sum())
        lo, hi = runs_limits(n_above, n_below)
        # shift: points on the median neither count nor break the run
        shift = np.zeros(len(xp), dtype=bool)
        upos = np.flatnonzero(useful)
        s_marks = _runs_of(side > 0, side < 0, IHI_SHIFT)
        shift[upos[s_marks]] = True
        trend = _ihi_trend(xp, IHI_TREND)
        q1, q3 = np.percentile(xp, [25, 75])
        iqr = q3 - q1
        astro = (xp > q3 + 3 * iqr) | (xp < q1 - 3 * iqr) if iqr > 0 else np.zeros(len(xp), bool)
        enough = int(useful.sum()) >= IHI_MIN_USEFUL
        c = df.columns.get_loc
        df.iloc[sel, c("centre")] = med
        df.iloc[sel, c("useful")] = useful
        df.iloc[sel, c("n_runs")] = n_runs
        df.iloc[sel, c("runs_lower")] = lo
        df.iloc[sel, c("runs_upper")] = hi
        df.iloc[sel, c("rule_shift")] = shift
        df.iloc[sel, c("rule_trend")] = trend
        df.iloc[sel, c("rule_too_few_runs")] = enough and n_runs < lo
        df.iloc[sel, c("rule_too_many_runs")] = enough and n_runs > hi
        df.iloc[sel, c("rule_astronomical")] = astro
    df = _finish(df, IHI_RULES, improvement)
    return df[
        ["value", "centre", "special_cause"]
        + [c for c in df.columns if c not in ("value", "centre", "special_cause")]
    ]
