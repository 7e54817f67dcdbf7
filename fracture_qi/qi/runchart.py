"""Run charts with the IHI rules (Perla, Provost & Murray 2011).

Centre = median; points on the median are ignored for rules 1 and 3;

1. ``shift``: 6 or more consecutive points all above or all below the median;
2. ``trend``: 5 or more consecutive points all going up or all going down (of successive
   equal values only one is counted);
3. ``too_few_runs`` / ``too_many_runs``: the number of runs (crossings of the median + 1)
   is outside the two-sided 5 % critical values of the exact Swed-Eisenhart runs
   distribution for the observed numbers above and below the median (the table Perla et al.
   print is derived from it);
4. ``astronomical``: a point far out of line; made objective here as beyond
   ``Q3 + 3 IQR`` or ``Q1 - 3 IQR`` (Tukey's far-out fence) of the phase.

``change_at`` splits the chart into phases as for :func:`fracture_qi.qi.spc.xmr`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from fracture_qi.qi.spc import Improvement, as_index, finish_rules, phases, runs_of, trend_points

#: IHI run-chart rules
IHI_SHIFT = 6
IHI_TREND = 5
#: the run-chart runs test needs at least this many useful observations
IHI_MIN_USEFUL = 10
IHI_RULES = ("shift", "trend", "too_few_runs", "too_many_runs", "astronomical")


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
    marks = trend_points(x[pos], length)
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
    ix = as_index(len(x), index if index is not None else idx)
    phase = phases(len(x), ix, change_at)
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
        s_marks = runs_of(side > 0, side < 0, IHI_SHIFT)
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
    df = finish_rules(df, IHI_RULES, improvement)
    return df[
        ["value", "centre", "special_cause"]
        + [c for c in df.columns if c not in ("value", "centre", "special_cause")]
    ]
