"""Time along the pathway: CT to adjudication, to FLS assessment, to therapy start.

Days are counted from the CT study date. Two views are given:

* **median and IQR among those who got there** (simple, what a QI lead quotes, but blind
  to patients still waiting);
* a **Kaplan-Meier curve** (lifelines ``KaplanMeierFitter``) of the time to the event, in
  which patients who have not reached it are *censored* at the data cut-off (or at death, if
  earlier): the curve's complement ``1 - S(t)`` is the proportion who reached the event by
  day *t*, and its median is the KM median time.

Who is counted: CT to adjudication, every AI-flagged study (adjudicated or still waiting);
CT to assessment and CT to therapy start, every newly identified fracture referred to the
FLS (:mod:`fracture_qi.qi.funnel` stage ``referred``).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pandas as pd

from fracture_qi.qi.funnel import stage_masks

logger = logging.getLogger(__name__)

#: interval name -> (population stage, end column, label)
INTERVALS: dict[str, tuple[str, str, str]] = {
    "ct_to_adjudication": ("flagged", "read1_at", "CT to nurse adjudication"),
    "ct_to_assessment": ("referred", "fls_assessment_date", "CT to FLS assessment"),
    "ct_to_therapy": ("referred", "therapy_start_date", "CT to bone therapy start"),
}


def time_to_event(
    start: pd.Series,
    end: pd.Series,
    cutoff: dt.date,
    *,
    death: pd.Series | None = None,
) -> pd.DataFrame:
    """Durations in days with censoring.

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
        ``days`` (float, >= 0) and ``observed`` (bool), same index as *start*. Rows with a
        missing start are dropped. An event dated before the start (an impossible date,
        reported at import) is kept at 0 days.

    Examples
    --------
    >>> s = pd.to_datetime(pd.Series(["2025-01-01", "2025-01-01"]))
    >>> e = pd.to_datetime(pd.Series(["2025-01-31", None]))
    >>> time_to_event(s, e, dt.date(2025, 3, 1)).values.tolist()
    [[30.0, True], [59.0, False]]
    """
    cut = pd.Timestamp(cutoff)
    st = pd.to_datetime(start, errors="coerce")
    en = pd.to_datetime(end, errors="coerce")
    if getattr(en.dt, "tz", None) is not None:
        en = en.dt.tz_localize(None)
    happened = en.notna() & (en <= cut)
    stop = pd.Series(cut, index=st.index)
    if death is not None:
        dd = pd.to_datetime(death, errors="coerce")
        stop = stop.where(~(dd.notna() & (dd < cut)), dd)
    t_end = en.where(happened, stop)
    days = (t_end - st).dt.total_seconds() / 86400.0
    out = pd.DataFrame({"days": days.clip(lower=0), "observed": happened.astype(bool)})
    return out[st.notna()]


def km_curve(days: pd.Series, observed: pd.Series, *, confidence: float = 0.95) -> pd.DataFrame:
    """Kaplan-Meier estimate of the time to an event (lifelines).

    Parameters
    ----------
    days, observed
        From :func:`time_to_event`.
    confidence
        Level of the pointwise (exponential Greenwood) interval.

    Returns
    -------
    pandas.DataFrame
        One row per distinct time: ``days, at_risk, events, censored, survival, ci_low,
        ci_high, reached`` (``1 - survival``: proportion who reached the event),
        ``reached_low, reached_high``. Empty when there is no one.
    """
    from lifelines import KaplanMeierFitter

    cols = [
        "days",
        "at_risk",
        "events",
        "censored",
        "survival",
        "ci_low",
        "ci_high",
        "reached",
        "reached_low",
        "reached_high",
    ]
    if len(days) == 0:
        return pd.DataFrame(columns=cols)
    kmf = KaplanMeierFitter(alpha=1 - confidence)
    kmf.fit(np.asarray(days, float), event_observed=np.asarray(observed, bool))
    sf = kmf.survival_function_.iloc[:, 0]
    ci = kmf.confidence_interval_survival_function_
    ev = kmf.event_table
    out = pd.DataFrame(
        {
            "days": sf.index.to_numpy(float),
            "at_risk": ev["at_risk"].reindex(sf.index).to_numpy(),
            "events": ev["observed"].reindex(sf.index).to_numpy(),
            "censored": ev["censored"].reindex(sf.index).to_numpy(),
            "survival": sf.to_numpy(),
            "ci_low": ci.iloc[:, 0].to_numpy(),
            "ci_high": ci.iloc[:, 1].to_numpy(),
        }
    )
    out["reached"] = 1 - out["survival"]
    out["reached_low"] = 1 - out["ci_high"]
    out["reached_high"] = 1 - out["ci_low"]
    return out[cols]


def km_median(curve: pd.DataFrame) -> float:
    """First time at which the KM survival is at or below 0.5 (NaN if never).

    Examples
    --------
    >>> km_median(pd.DataFrame({"days": [0, 10, 20], "survival": [1.0, 0.6, 0.4]}))
    20.0
    """
    hit = curve[curve["survival"] <= 0.5]
    return float(hit["days"].iloc[0]) if len(hit) else float("nan")


def reached_by(curve: pd.DataFrame, day: float) -> float:
    """KM proportion who reached the event by *day* (step function, 0 before any event)."""
    if curve.empty:
        return float("nan")
    before = curve[curve["days"] <= day]
    return float(before["reached"].iloc[-1]) if len(before) else 0.0


def describe_days(days: pd.Series) -> dict[str, Any]:
    """``n, median, q1, q3, mean`` of observed durations (NaN when empty)."""
    d = pd.Series(days, dtype=float).dropna()
    if d.empty:
        nan = float("nan")
        return {"n": 0, "median": nan, "q1": nan, "q3": nan, "mean": nan}
    q1, med, q3 = np.percentile(d, [25, 50, 75])
    return {
        "n": int(len(d)),
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "mean": float(d.mean()),
    }


def pathway_durations(studies: pd.DataFrame, cutoff: dt.date) -> dict[str, pd.DataFrame]:
    """Per-interval durations (see :data:`INTERVALS`): ``{name: DataFrame[days, observed]}``."""
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
    """Summary of each interval and its Kaplan-Meier curve.

    Returns
    -------
    tuple
        ``(summary, curves)``: *summary* has one row per interval with ``interval, label,
        n_patients, n_reached, n_censored, median, q1, q3`` (observed only), ``km_median``,
        ``reached_90d, reached_112d`` (KM proportions by 90 days / 16 weeks); *curves* maps
        the interval name to its :func:`km_curve` frame.
    """
    rows, curves = [], {}
    for name, dur in pathway_durations(studies, cutoff).items():
        curve = km_curve(dur["days"], dur["observed"], confidence=confidence)
        curves[name] = curve
        desc = describe_days(dur.loc[dur["observed"], "days"])
        rows.append(
            {
                "interval": name,
                "label": INTERVALS[name][2],
                "n_patients": int(len(dur)),
                "n_reached": int(dur["observed"].sum()),
                "n_censored": int((~dur["observed"]).sum()),
                "median": desc["median"],
                "q1": desc["q1"],
                "q3": desc["q3"],
                "km_median": km_median(curve) if len(curve) else float("nan"),
                "reached_90d": reached_by(curve, 90),
                "reached_112d": reached_by(curve, 112),
            }
        )
    return pd.DataFrame(rows), curves
