"""Statistical process control as NHS England's "Making Data Count" does it.

**XmR chart** (individuals and moving range), the chart Making Data Count (MDC) recommends
for counts and for rates. Centre = mean of the values; moving range ``MR_i = |x_i -
x_{i-1}|``; process limits ``mean +/- 2.66 * mean(MR)`` (2.66 = 3 / d2, d2 = 1.128 for ranges
of two points). As MDC and the NHS-R package NHSRplotthedots do, moving ranges at or above
3.267 x the mean moving range (the upper range limit, D4 = 3.267) are screened out and the
mean moving range recomputed before the limits are set (``screen_outliers``).

**p-chart** (a proportion per month with its own binomial limits), for where binomial
limits fit (a count of independent yes/no outcomes per month, without over-dispersion):
centre ``p = sum(successes) / sum(totals)``, limits ``p +/- 3 sqrt(p (1 - p) / n_i)``.

**A continuous axis.** A month with nothing to count is a point of zero, never left out: the
monthly series of :mod:`fracture_qi.qi.monthly` span the whole period. A month with no
denominator (a rate of nothing) is *missing*: it keeps its place on the axis, is drawn as a
gap, and takes part in no mean, moving range or rule (a moving range is only taken between
two adjacent months). Missing values (``NaN``) are therefore allowed.

**Limits on the exact numbers, clamped to what the measure allows**: ``lower_bound`` /
``upper_bound`` (0 for a count, 0 and 1 for a proportion) clamp the limits drawn; a count
never has a lower limit below zero.

**The MDC special-cause rules** (as NHSRplotthedots implements them), phase by phase:

1. ``outside``: a point above the upper or below the lower process limit;
2. ``shift``: a run of 7 points all above or all below the mean (a point on the mean
   ends a run);
3. ``trend``: 7 points each higher (or each lower) than the one before (an equal value ends
   a trend);
4. ``two_of_three``: 2 of 3 consecutive points close to a limit (beyond two thirds of the
   way from the mean to a process limit, i.e. about 2 sigma, but inside the limit), all 3 on
   the same side of the mean; the close points are marked.

Every point of a run, trend or pattern is marked. A marked point's **type** follows its side
of the mean: ``special_cause_improvement`` or ``special_cause_concern`` given the direction of
improvement (``"up"``/``"down"``), ``special_cause_neutral_high``/``_low`` without one, else
``common_cause`` (``missing`` for a gap).

**Icons.** The *variation* icon is the type of the latest point; the *assurance* icon
compares the target with the latest phase's process limits: a target beyond the limits on
the good side is ``consistent_fail`` (the process cannot reach it), on the bad side
``consistent_pass``, between them ``inconsistent`` (hit and miss).

**Change dates** (``change_at``, MDC's "recalculation"/rebase): limits, centre and rules are
computed separately for each phase, and no run or trend crosses a phase boundary.

Checked against NHSRplotthedots' documented results (its test data: 20 normal draws, mean
0.142, limits -3.01 to 3.29; the same split in two: 0.0746 (-2.60 to 2.75) and 0.209 (-3.28
to 3.70)), its rule test cases, Montgomery's Examples 6.5 and 7.1 (``tests/test_qi_spc.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: XmR scaling constant 3 / d2 (d2 = 1.128 for moving ranges of two points)
XMR_CONSTANT = 2.66
#: d2 for a moving range of two
D2 = 1.128
#: "close to a limit": this share of the distance from the mean to a process limit
#: (NHSRplotthedots: 2/3 of 2.66 mean moving ranges, about 2 sigma)
NEAR_SHARE = 2 / 3
#: upper range limit of a moving range of two (D4): moving ranges at or above it times the
#: mean moving range are screened out (Making Data Count; NHSRplotthedots screen_outliers)
D4 = 3.267
#: Making Data Count: points in a shift / a trend
MDC_SHIFT = 7
MDC_TREND = 7
#: below this many points in a phase the limits are provisional (NHSRplotthedots warns at 12)
MDC_MIN_POINTS = 12
#: sigma multiple of the p-chart's process limits
P_CHART_SIGMAS = 3.0

Improvement = Literal["up", "down"] | None

MDC_RULES = ("outside", "shift", "trend", "two_of_three")
_DIRECTIONS = {"up": 1, "increase": 1, "down": -1, "decrease": -1, None: 0, "neutral": 0}

#: variation icon key -> label (Making Data Count wording)
VARIATION_LABELS: dict[str, str] = {
    "common_cause": "Common cause variation",
    "improvement_high": "Special cause variation: improvement (higher values)",
    "improvement_low": "Special cause variation: improvement (lower values)",
    "concern_high": "Special cause variation: concern (higher values)",
    "concern_low": "Special cause variation: concern (lower values)",
    "neutral_high": "Special cause variation: higher values",
    "neutral_low": "Special cause variation: lower values",
}
#: assurance icon key -> label
ASSURANCE_LABELS: dict[str, str] = {
    "consistent_pass": "Consistently passing the target",
    "consistent_fail": "Consistently failing the target",
    "inconsistent": "Hit and miss: the target may or may not be met",
}


def direction(improvement: str | None) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when neither (neutral).

    Examples
    --------
    >>> direction("up"), direction("decrease"), direction(None)
    (1, -1, 0)
    """
    if improvement not in _DIRECTIONS:
        raise ValueError(f"improvement={improvement!r}: use 'up', 'down' or None")
    return _DIRECTIONS[improvement]


def phases(n: int, index: pd.Index, change_at: Sequence[Any] | None) -> np.ndarray:
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


def as_index(n: int, index: Sequence[Any] | pd.Index | None) -> pd.Index:
    """The chart's labels (positions when none are given)."""
    if index is None:
        return pd.RangeIndex(n)
    idx = pd.Index(index)
    if len(idx) != n:
        raise ValueError(f"index has {len(idx)} labels for {n} values")
    return idx


def runs_of(mask_pos: np.ndarray, mask_neg: np.ndarray, length: int) -> np.ndarray:
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


def trend_points(x: np.ndarray, length: int) -> np.ndarray:
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


def two_of_three(close: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Close points in a window of 3 consecutive points with >= 2 close, all 3 on one side.

    Parameters
    ----------
    close
        Point is close to a limit (beyond 2/3 of the way to it, not outside).
    side
        Sign of the point relative to the mean (-1, 0, +1).

    Examples
    --------
    NHSRplotthedots' cases (all points above the mean):

    >>> up = np.ones(7)
    >>> two_of_three(np.array([0, 0, 1, 0, 1, 0, 0], bool), up).astype(int).tolist()
    [0, 0, 1, 0, 1, 0, 0]
    >>> two_of_three(np.array([1, 0, 0, 1, 1], bool), np.ones(5)).astype(int).tolist()
    [0, 0, 0, 1, 1]
    """
    n = len(close)
    hit = np.zeros(n, dtype=bool)
    for start in range(n - 2):
        w = slice(start, start + 3)
        if close[w].sum() >= 2 and abs(int(np.sum(side[w]))) == 3:
            hit[w] = True
    return hit & close


def _available_runs(x: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    near_lo: np.ndarray, near_hi: np.ndarray) -> dict[str, np.ndarray]:
    """The four MDC rules over one phase's available (non-missing) points, in order."""
    side = np.sign(x - c)
    with np.errstate(invalid="ignore"):
        outside = (x > hi) | (x < lo)
        close = ~outside & ((x > near_hi) | (x < near_lo))
    return {
        "outside": outside,
        "shift": runs_of(side > 0, side < 0, MDC_SHIFT),
        "trend": trend_points(x, MDC_TREND),
        "two_of_three": two_of_three(close, side),
    }


def mdc_rules(df: pd.DataFrame) -> pd.DataFrame:
    """Evaluate the four Making Data Count rules phase by phase (in place).

    Needs ``value, centre, lcl, ucl, near_lcl, near_ucl, phase``; points whose value or
    limits are missing take part in no rule.
    """
    x = df["value"].to_numpy(float)
    c = df["centre"].to_numpy(float)
    lo, hi = df["lcl"].to_numpy(float), df["ucl"].to_numpy(float)
    nlo, nhi = df["near_lcl"].to_numpy(float), df["near_ucl"].to_numpy(float)
    ph = df["phase"].to_numpy()
    marks = {r: np.zeros(len(x), bool) for r in MDC_RULES}
    usable = np.isfinite(x) & np.isfinite(c)
    for p in np.unique(ph):
        sel = np.flatnonzero((ph == p) & usable)
        if not len(sel):
            continue
        got = _available_runs(x[sel], c[sel], lo[sel], hi[sel], nlo[sel], nhi[sel])
        for r in MDC_RULES:
            marks[r][sel] = got[r]
    for r in MDC_RULES:
        df[f"rule_{r}"] = marks[r]
    return df


def finish_rules(df: pd.DataFrame, rules: Sequence[str], improvement: Improvement) -> pd.DataFrame:
    """``special_cause``, ``rules`` (names that fired), ``point_type`` and ``variation``."""
    dirn = direction(improvement)
    flags = df[[f"rule_{r}" for r in rules]].to_numpy(bool)
    special = flags.any(axis=1)
    df["special_cause"] = special
    df["rules"] = [",".join(r for r, f in zip(rules, row) if f) for row in flags]
    value = df["value"].to_numpy(float)
    side = np.sign(value - df["centre"].to_numpy(float))
    missing = ~np.isfinite(value)
    if dirn == 0:
        kind = np.where(side > 0, "special_cause_neutral_high", "special_cause_neutral_low")
    else:
        kind = np.where(side == dirn, "special_cause_improvement", "special_cause_concern")
    df["point_type"] = np.where(missing, "missing", np.where(special, kind, "common_cause"))
    if improvement is not None:
        df["variation"] = np.where(
            missing, "missing",
            np.where(~special, "common_cause",
                     np.where(side == dirn, "improvement", "concern")))
    return df


def _screened_mean_mr(mr: np.ndarray, screen_outliers: bool) -> float:
    mr = mr[np.isfinite(mr)]
    if not len(mr):
        return float("nan")
    amr = float(mr.mean())
    if screen_outliers:
        kept = mr[mr < D4 * amr]
        amr = float(kept.mean()) if len(kept) else amr
    return amr


def _columns_first(df: pd.DataFrame) -> pd.DataFrame:
    first = ["value", "centre", "lcl", "ucl", "special_cause"]
    return df[first + [c for c in df.columns if c not in first]]


def _clamp(df: pd.DataFrame, lower_bound: float | None, upper_bound: float | None) -> None:
    for col in ("lcl", "near_lcl", "ucl", "near_ucl"):
        if lower_bound is not None:
            df[col] = df[col].clip(lower=lower_bound)
        if upper_bound is not None:
            df[col] = df[col].clip(upper=upper_bound)


def xmr(
    values: Sequence[float] | np.ndarray | pd.Series,
    *,
    index: Sequence[Any] | pd.Index | None = None,
    change_at: Sequence[Any] | None = None,
    improvement: Improvement = None,
    target: float | None = None,
    lower_bound: float | None = None,
    upper_bound: float | None = None,
    screen_outliers: bool = True,
    annotations: Mapping[Any, str] | None = None,
) -> pd.DataFrame:
    """XmR chart with the Making Data Count rules, icons and limits (see the module doc).

    Parameters
    ----------
    values
        One value per period in time order, with every period present (a count of 0 for an
        empty month); ``NaN`` marks a period with no data (a rate of nothing). A Series
        keeps its index as the chart's labels.
    index
        Labels for the points (e.g. month start dates), overriding a Series' index.
    change_at
        Labels or positions where a QI change took effect: limits are recalculated from
        there on (each phase its own mean and mean moving range).
    improvement
        ``"up"`` or ``"down"`` if a higher / lower value is better (None: neutral).
    target
        A target value for the assurance icon (needs *improvement*).
    lower_bound, upper_bound
        What the measure allows: 0 for a count; 0 and 1 for a proportion. Limits are
        clamped to them.
    screen_outliers
        Leave moving ranges at or above 3.267 x their mean out of the limits (MDC default).
    annotations
        ``{label: text}`` notes for the chart (kept in ``attrs["annotations"]``).

    Returns
    -------
    pandas.DataFrame
        Columns ``value, centre, lcl, ucl, special_cause`` (limits clamped), then ``phase,
        moving_range, sigma, near_lcl, near_ucl, rule_outside, rule_shift, rule_trend,
        rule_two_of_three, rules, point_type`` and ``variation`` (with *improvement*).
        ``attrs["summary"]`` holds :func:`summarise`'s icons; a phase with fewer than 2
        points has NaN limits.

    Raises
    ------
    ValueError
        When *values* is not one-dimensional, a value is infinite, or *change_at* is not
        understood.

    Examples
    --------
    >>> chart = xmr([10, 13, 11, 14, 12, 11, 14, 11, 13, 12, 11, 14, 13, 11, 25])
    >>> round(float(chart["ucl"].iloc[0]), 2), chart["special_cause"].tolist()[-3:]
    (18.52, [False, False, True])
    >>> chart.attrs["summary"].variation
    'neutral_high'
    >>> float(xmr([0, 1, 0, 9, 0, 1], lower_bound=0)["lcl"].min())
    0.0
    """
    idx = values.index if isinstance(values, pd.Series) and index is None else None
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError("values must be one-dimensional")
    if np.isinf(x).any():
        bad = int(np.flatnonzero(np.isinf(x))[0])
        raise ValueError(f"value at position {bad} is infinite: chart a finite number or NaN "
                         "(no data)")
    ix = as_index(len(x), index if index is not None else idx)
    phase = phases(len(x), ix, change_at)
    df = pd.DataFrame({"value": x, "phase": phase}, index=ix)
    mr_col = np.full(len(x), np.nan)
    centre = np.full(len(x), np.nan)
    amr_col = np.full(len(x), np.nan)
    for p in np.unique(phase):
        pos = np.flatnonzero(phase == p)
        xp = x[pos]
        ok = np.isfinite(xp)
        if ok.any():
            centre[pos] = xp[ok].mean()
        # a moving range only between two adjacent periods that both have data
        mr = np.abs(np.diff(xp))
        mr_col[pos[1:]] = mr
        amr_col[pos] = _screened_mean_mr(mr, screen_outliers)
    df["moving_range"] = mr_col
    df["centre"] = centre
    df["sigma"] = XMR_CONSTANT / 3 * amr_col
    df["lcl"] = centre - XMR_CONSTANT * amr_col
    df["ucl"] = centre + XMR_CONSTANT * amr_col
    df["near_lcl"] = centre - NEAR_SHARE * XMR_CONSTANT * amr_col
    df["near_ucl"] = centre + NEAR_SHARE * XMR_CONSTANT * amr_col
    raw_limits = df[["lcl", "ucl"]].copy()
    mdc_rules(df)  # on the exact limits; the clamp only changes what is drawn
    _clamp(df, lower_bound, upper_bound)
    df = finish_rules(df, MDC_RULES, improvement)
    df = _columns_first(df)
    df.attrs.update(kind="xmr", improvement=improvement, target=target,
                    annotations=dict(annotations or {}), lower_bound=lower_bound,
                    upper_bound=upper_bound)
    df.attrs["summary"] = summarise(df, raw_limits=raw_limits)
    return df


def p_chart(
    successes: Sequence[float] | np.ndarray | pd.Series,
    totals: Sequence[float] | np.ndarray | pd.Series,
    *,
    index: Sequence[Any] | pd.Index | None = None,
    change_at: Sequence[Any] | None = None,
    improvement: Improvement = None,
    target: float | None = None,
    annotations: Mapping[Any, str] | None = None,
) -> pd.DataFrame:
    """p-chart of a monthly proportion with per-point binomial limits and the MDC rules.

    Parameters
    ----------
    successes, totals
        Numerator and denominator per period (e.g. patients assessed within 90 days and
        patients referred, per month). Periods with a total of 0 are *missing*: kept with
        NaN value and limits, in no rule.
    index, change_at, improvement, target, annotations
        As for :func:`xmr` (*target* as a proportion).

    Returns
    -------
    pandas.DataFrame
        Columns ``value`` (proportion), ``centre, lcl, ucl, special_cause``, then ``phase,
        successes, totals, sigma, near_lcl, near_ucl, rule_*, rules, point_type``
        (``variation`` with *improvement*). Limits are clamped to [0, 1].

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
    ix = as_index(len(s), index if index is not None else idx)
    phase = phases(len(s), ix, change_at)
    has = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(has, s / np.where(has, n, 1), np.nan)
    df = pd.DataFrame({"value": value, "phase": phase, "successes": s, "totals": n}, index=ix)
    centre = np.full(len(s), np.nan)
    for p in np.unique(phase):
        sel = phase == p
        tot = n[sel].sum()
        centre[sel] = s[sel].sum() / tot if tot > 0 else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = np.where(has, np.sqrt(centre * (1 - centre) / np.where(has, n, 1)), np.nan)
    df["centre"] = centre
    df["sigma"] = sigma
    df["lcl"] = centre - P_CHART_SIGMAS * sigma
    df["ucl"] = centre + P_CHART_SIGMAS * sigma
    df["near_lcl"] = centre - NEAR_SHARE * P_CHART_SIGMAS * sigma
    df["near_ucl"] = centre + NEAR_SHARE * P_CHART_SIGMAS * sigma
    raw_limits = df[["lcl", "ucl"]].copy()
    mdc_rules(df)
    _clamp(df, 0.0, 1.0)
    df = finish_rules(df, MDC_RULES, improvement)
    df = _columns_first(df)
    df.attrs.update(kind="p", improvement=improvement, target=target,
                    annotations=dict(annotations or {}), lower_bound=0.0, upper_bound=1.0)
    df.attrs["summary"] = summarise(df, raw_limits=raw_limits)
    return df


@dataclass(frozen=True)
class SpcSummary:
    """The icons and signals of a chart, for a tile, a table row or a slide.

    Attributes
    ----------
    variation
        Icon key (:data:`VARIATION_LABELS`) of the latest point with data, or ``""``.
    assurance
        Icon key (:data:`ASSURANCE_LABELS`) or ``""`` without a target and a direction.
    signals
        One sentence per run of special-cause points (rule, first and last label, type).
    warnings
        Caveats: provisional limits (few points), missing periods.
    """

    variation: str
    assurance: str
    signals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def variation_label(self) -> str:
        return VARIATION_LABELS.get(self.variation, "")

    @property
    def assurance_label(self) -> str:
        return ASSURANCE_LABELS.get(self.assurance, "")

    def to_dict(self) -> dict[str, Any]:
        return {"variation": self.variation, "variation_label": self.variation_label,
                "assurance": self.assurance, "assurance_label": self.assurance_label,
                "signals": list(self.signals), "warnings": list(self.warnings)}


def _variation_key(point_type: str, improvement: Improvement) -> str:
    dirn = direction(improvement)
    if point_type == "common_cause":
        return "common_cause"
    if point_type.startswith("special_cause_neutral_"):
        return "neutral_" + point_type.rsplit("_", 1)[1]
    good_high = dirn >= 0
    if point_type == "special_cause_improvement":
        return "improvement_high" if good_high else "improvement_low"
    if point_type == "special_cause_concern":
        return "concern_low" if good_high else "concern_high"
    return ""


def assurance(target: float | None, improvement: Improvement, lpl: float, upl: float) -> str:
    """The assurance icon key for a target against process limits (NHSRplotthedots rule).

    Examples
    --------
    >>> [assurance(4, "up", *lim) for lim in ((1, 3), (5, 7), (1, 5))]
    ['consistent_fail', 'consistent_pass', 'inconsistent']
    >>> assurance(4, "down", 5, 7), assurance(4, None, 1, 3)
    ('consistent_fail', '')
    """
    dirn = direction(improvement)
    if target is None or dirn == 0 or not (np.isfinite(lpl) and np.isfinite(upl)):
        return ""
    if target > upl:
        return "consistent_fail" if dirn > 0 else "consistent_pass"
    if target < lpl:
        return "consistent_pass" if dirn > 0 else "consistent_fail"
    return "inconsistent"


def _label(v: Any) -> str:
    if isinstance(v, pd.Timestamp):
        return v.strftime("%Y-%m")
    return str(v)


def summarise(chart: pd.DataFrame, *, raw_limits: pd.DataFrame | None = None) -> SpcSummary:
    """Icons, signals and warnings of a chart from :func:`xmr` or :func:`p_chart`."""
    improvement = chart.attrs.get("improvement")
    has = np.isfinite(chart["value"].to_numpy(float))
    if not has.any():
        return SpcSummary("", "", [], ["no period has data"])
    last = int(np.flatnonzero(has)[-1])
    variation = _variation_key(str(chart["point_type"].iloc[last]), improvement)
    lim = raw_limits if raw_limits is not None else chart[["lcl", "ucl"]]
    assur = assurance(chart.attrs.get("target"), improvement,
                      float(lim["lcl"].iloc[last]), float(lim["ucl"].iloc[last]))
    signals: list[str] = []
    special = chart["special_cause"].to_numpy(bool)
    types = chart["point_type"].astype(str).to_numpy()
    labels = [_label(v) for v in chart.index]
    i = 0
    while i < len(chart):
        if not special[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(chart) and special[j + 1] and types[j + 1] == types[i]:
            j += 1
        fired = sorted({r for k in range(i, j + 1) for r in str(chart["rules"].iloc[k]).split(",")
                        if r})
        what = types[i].replace("special_cause_", "").replace("_", " ")
        span = labels[i] if i == j else f"{labels[i]} to {labels[j]}"
        signals.append(f"{span}: {what} ({', '.join(fired)})")
        i = j + 1
    warnings: list[str] = []
    ph = chart["phase"].to_numpy()
    for p in np.unique(ph):
        n = int((has & (ph == p)).sum())
        if 0 < n < MDC_MIN_POINTS:
            warnings.append(f"phase from {labels[int(np.flatnonzero(ph == p)[0])]} has {n} "
                            f"points: limits are provisional until there are {MDC_MIN_POINTS}")
    n_missing = int((~has).sum())
    if n_missing:
        warnings.append(f"{n_missing} period(s) without data are shown as gaps")
    return SpcSummary(variation, assur, signals, warnings)


def __getattr__(name: str) -> Any:
    # the run chart (IHI rules) lives in fracture_qi.qi.runchart; these names stay
    # importable from here
    if name in ("IHI_RULES", "run_chart", "runs_limits"):
        from fracture_qi.qi import runchart

        return getattr(runchart, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ASSURANCE_LABELS",
    "IHI_RULES",
    "MDC_RULES",
    "VARIATION_LABELS",
    "SpcSummary",
    "assurance",
    "mdc_rules",
    "p_chart",
    "run_chart",
    "runs_limits",
    "summarise",
    "two_of_three",
    "xmr",
]
