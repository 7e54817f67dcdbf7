"""Time along the pathway: CT to adjudication, to FLS assessment, to therapy start.

Days are **whole days** from the CT date to the event's date (a first read at 09:00 on the
CT's day is day 0). Who is counted: CT to adjudication, every AI-flagged study (adjudicated
or still waiting); CT to assessment and CT to therapy start, every newly identified fracture
referred to the FLS (:mod:`fracture_qi.qi.funnel` stage ``referred``).

Three views are given, and they agree by construction:

* **median and IQR among those who got there** (what a QI lead quotes);
* a **Kaplan-Meier curve** of the time to the event, in which patients who have not reached
  it are *censored* at the data cut-off (or at death, if earlier): the curve's complement
  ``1 - S(t)`` is the proportion who reached the event by day *t*; its median is the first
  day on which ``S(t) <= 0.5``;
* the proportion reached by 90 days and by 16 weeks (112 days), read off that curve.

Quantiles of observed days are the *inverted CDF* (the first day by which at least that
share had the event): with nobody censored the median among those who got there equals the
Kaplan-Meier median, instead of averaging two patients' days into a day nobody waited.
An event dated *before* the CT (an impossible date, reported at import) is not counted as
day 0: it is left out and counted as ``n_impossible``.

Everything is computed from a daily histogram of events and censorings
(:func:`duration_histogram`), so the audit (from rows) and the dashboard (from its aggregate
cube, which keeps the same histograms per cell) give the same figures. The Kaplan-Meier
arithmetic (:func:`km_from_histogram`) is checked against lifelines in the tests.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from fracture_qi.qi.funnel import stage_masks
from fracture_qi.qi.proportions import z_value

logger = logging.getLogger(__name__)

#: interval name -> (population stage, end column, label)
INTERVALS: dict[str, tuple[str, str, str]] = {
    "ct_to_adjudication": ("flagged", "read1_at", "CT to nurse adjudication"),
    "ct_to_assessment": ("referred", "fls_assessment_date", "CT to FLS assessment"),
    "ct_to_therapy": ("referred", "therapy_start_date", "CT to bone therapy start"),
}
#: histogram length in days; later days share the last (open) bin (two years of follow-up)
HIST_DAYS = 731
#: the days at which the KM curve is read for the times table
READ_AT = (90, 112)


def time_to_event(
    start: pd.Series,
    end: pd.Series,
    cutoff: dt.date,
    *,
    death: pd.Series | None = None,
) -> pd.DataFrame:
    """Whole days with censoring.

    Parameters
    ----------
    start, end
        Dates (datetime-like; ``end`` NaT when the event has not happened).
    cutoff
        Data cut-off: an event after it is treated as not yet happened.
    death
        Death dates: a patient who died without the event is censored at death.

    Returns
    -------
    pandas.DataFrame
        ``days`` (whole days, NaN when impossible), ``observed`` (bool) and ``impossible``
        (the event is dated before the start), same index as *start*. Rows with a missing
        start are dropped.

    Examples
    --------
    >>> s = pd.to_datetime(pd.Series(["2025-01-01", "2025-01-01", "2025-01-10"]))
    >>> e = pd.to_datetime(pd.Series(["2025-01-31 09:30", None, "2025-01-02 08:00"]))
    >>> time_to_event(s, e, dt.date(2025, 3, 1)).values.tolist()
    [[30.0, True, False], [59.0, False, False], [nan, True, True]]
    """
    cut = pd.Timestamp(cutoff)
    st = pd.to_datetime(start, errors="coerce").dt.normalize()
    en = pd.to_datetime(end, errors="coerce")
    if getattr(en.dt, "tz", None) is not None:
        en = en.dt.tz_localize(None)
    en = en.dt.normalize()
    happened = en.notna() & (en <= cut)
    stop = pd.Series(cut, index=st.index)
    if death is not None:
        dd = pd.to_datetime(death, errors="coerce")
        stop = stop.where(~(dd.notna() & (dd < cut)), dd)
    t_end = en.where(happened, stop)
    days = (t_end - st).dt.days.astype(float)
    impossible = happened & (days < 0)
    days = days.where(~impossible)
    out = pd.DataFrame({"days": days.clip(lower=0), "observed": happened.astype(bool),
                        "impossible": impossible.astype(bool)})
    return out[st.notna()]


def duration_histogram(days: pd.Series | np.ndarray, observed: pd.Series | np.ndarray,
                       n_days: int = HIST_DAYS) -> tuple[np.ndarray, np.ndarray]:
    """Events and censorings per whole day (days beyond ``n_days - 1`` share the last bin).

    Rows with NaN days (impossible dates) are left out.
    """
    d = np.asarray(days, dtype=float)
    o = np.asarray(observed, dtype=bool)
    ok = np.isfinite(d)
    b = np.clip(d[ok], 0, n_days - 1).astype(int)
    ev = np.bincount(b[o[ok]], minlength=n_days).astype(float)
    ce = np.bincount(b[~o[ok]], minlength=n_days).astype(float)
    return ev, ce


def km_from_histogram(events: np.ndarray, censored: np.ndarray, *,
                      confidence: float = 0.95) -> pd.DataFrame:
    """Kaplan-Meier estimate from counts of events and censorings per day.

    Censorings on a day are taken to happen after its events (a patient censored on day *d*
    was at risk for day *d*'s events), as lifelines does. Pointwise interval: exponential
    Greenwood (log(-log S)), lifelines' default.

    Returns
    -------
    pandas.DataFrame
        One row per day: ``days, at_risk, events, censored, survival, ci_low, ci_high,
        reached`` (``1 - survival``), ``reached_low, reached_high``.

    Examples
    --------
    >>> t = km_from_histogram(np.array([1, 1, 0]), np.array([0, 0, 2]))
    >>> t["reached"].round(3).tolist()
    [0.25, 0.5, 0.5]
    """
    ev = np.asarray(events, dtype=float)
    ce = np.asarray(censored, dtype=float)
    n0 = ev.sum() + ce.sum()
    at_risk = n0 - np.concatenate([[0.0], np.cumsum(ev + ce)[:-1]])
    z = z_value(confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(at_risk > 0, ev / at_risk, 0.0)
        surv = np.cumprod(1 - h)
        gw = np.cumsum(np.where((at_risk > ev) & (at_risk > 0),
                                ev / (at_risk * (at_risk - ev)), 0.0))
        ls = np.log(surv)
        se = np.sqrt(gw) / np.abs(ls)
        lo_s = np.exp(-np.exp(np.log(-ls) + z * se))
        hi_s = np.exp(-np.exp(np.log(-ls) - z * se))
    lo_s = np.where(np.isfinite(lo_s), lo_s, surv)
    hi_s = np.where(np.isfinite(hi_s), hi_s, surv)
    return pd.DataFrame({
        "days": np.arange(len(ev), dtype=float), "at_risk": at_risk, "events": ev,
        "censored": ce, "survival": surv, "ci_low": lo_s, "ci_high": hi_s,
        "reached": 1 - surv, "reached_low": 1 - hi_s, "reached_high": 1 - lo_s,
    })


def km_curve(days: pd.Series, observed: pd.Series, *, confidence: float = 0.95) -> pd.DataFrame:
    """Kaplan-Meier curve of whole-day durations at day 0 and every day something happened
    (lifelines' timeline); empty when there is no one.

    Examples
    --------
    >>> km_curve(pd.Series([3.0, 5.0]), pd.Series([True, False]))["survival"].tolist()
    [1.0, 0.5, 0.5]
    """
    d = pd.Series(days, dtype=float)
    if d.notna().sum() == 0:
        return km_from_histogram(np.zeros(0), np.zeros(0)).iloc[0:0]
    n = int(np.nanmax(d)) + 1
    ev, ce = duration_histogram(d, observed, n_days=max(n, 1))
    curve = km_from_histogram(ev, ce, confidence=confidence)
    keep = (curve["events"] + curve["censored"] > 0) | (curve["days"] == 0)
    return curve[keep].reset_index(drop=True)


def km_median(curve: pd.DataFrame) -> float:
    """First day at which the KM survival is at or below 0.5 (NaN if never).

    Examples
    --------
    >>> km_median(pd.DataFrame({"days": [0, 10, 20], "survival": [1.0, 0.6, 0.4]}))
    20.0
    """
    hit = curve[curve["survival"] <= 0.5]
    return float(hit["days"].iloc[0]) if len(hit) else float("nan")


def reached_by(curve: pd.DataFrame, day: float) -> tuple[float, float, float]:
    """KM proportion who reached the event by *day*, with its interval (step function)."""
    nan = float("nan")
    if curve.empty:
        return (nan, nan, nan)
    before = curve[curve["days"] <= day]
    if not len(before):
        return (0.0, 0.0, 0.0)
    r = before.iloc[-1]
    return (float(r["reached"]), float(r["reached_low"]), float(r["reached_high"]))


def histogram_quantiles(events: np.ndarray, qs: tuple[float, ...] = (0.25, 0.5, 0.75)
                        ) -> list[float]:
    """Inverted-CDF quantiles of observed days from a daily event histogram.

    Examples
    --------
    >>> histogram_quantiles(np.array([1, 0, 0, 1]), (0.5,))
    [0.0]
    """
    ev = np.asarray(events, dtype=float)
    n = ev.sum()
    if n <= 0:
        return [float("nan")] * len(qs)
    cum = np.cumsum(ev)
    return [float(np.searchsorted(cum, q * n - 1e-9)) for q in qs]


def summarise_histogram(events: np.ndarray, censored: np.ndarray, impossible: float = 0.0, *,
                        confidence: float = 0.95) -> dict[str, Any]:
    """The times-table figures of one interval from its daily histogram."""
    curve = km_from_histogram(events, censored, confidence=confidence)
    q1, med, q3 = histogram_quantiles(events)
    n_reached, n_censored = float(np.sum(events)), float(np.sum(censored))
    out: dict[str, Any] = {
        "n_patients": int(n_reached + n_censored), "n_reached": int(n_reached),
        "n_censored": int(n_censored), "n_impossible": int(impossible),
        "median": med, "q1": q1, "q3": q3,
        "km_median": km_median(curve) if n_reached + n_censored else float("nan"),
    }
    for d in READ_AT:
        est, lo, hi = reached_by(curve, d) if n_reached + n_censored else (math.nan,) * 3
        out[f"reached_{d}d"], out[f"reached_{d}d_low"], out[f"reached_{d}d_high"] = est, lo, hi
    return out


def pathway_durations(studies: pd.DataFrame, cutoff: dt.date) -> dict[str, pd.DataFrame]:
    """Per-interval durations (see :data:`INTERVALS`): ``{name: DataFrame[days, observed,
    impossible]}`` indexed like *studies*."""
    masks = stage_masks(studies, None)
    out = {}
    for name, (stage, end_col, _label) in INTERVALS.items():
        s = studies[masks[stage]]
        death = s["death_date"] if "death_date" in s else None
        out[name] = time_to_event(s["study_date"], s[end_col], cutoff, death=death)
    return out


def pathway_times(
    studies: pd.DataFrame, cutoff: dt.date, *, confidence: float = 0.95
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Summary of each interval and its Kaplan-Meier curve (exact: format with
    :func:`fracture_qi.qi.published.times_table`).

    Returns
    -------
    tuple
        ``(summary, curves)``: *summary* has one row per interval with ``interval, label,
        n_patients, n_reached, n_censored, n_impossible, median, q1, q3, km_median,
        reached_90d(_low/_high), reached_112d(_low/_high)``; *curves* maps the interval
        name to its daily :func:`km_from_histogram` curve.
    """
    rows, curves = [], {}
    for name, dur in pathway_durations(studies, cutoff).items():
        ev, ce = duration_histogram(dur["days"], dur["observed"])
        curves[name] = km_from_histogram(ev, ce, confidence=confidence)
        rows.append({"interval": name, "label": INTERVALS[name][2],
                     **summarise_histogram(ev, ce, float(dur["impossible"].sum()),
                                           confidence=confidence)})
    return pd.DataFrame(rows), curves


__all__ = [
    "HIST_DAYS",
    "INTERVALS",
    "duration_histogram",
    "histogram_quantiles",
    "km_curve",
    "km_from_histogram",
    "km_median",
    "pathway_durations",
    "pathway_times",
    "reached_by",
    "summarise_histogram",
    "time_to_event",
]
