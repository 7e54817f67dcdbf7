"""FLS key performance indicators in the style of the national FLS audit (FLS-DB).

Computed over ``AnalysisData.episodes`` (one row per FLS episode, CT-linked or not). The
*index date* is the date the fracture was identified: the linked CT's date, else the
referral date. A KPI with a time window only counts patients whose window has fully passed
by the data cut-off (so recent patients do not drag a rate down), and leaves out patients
who died inside the window without the event.

==========================  ====================================  ===============================
KPI                         numerator                             denominator
==========================  ====================================  ===============================
spine_identification        episodes whose index fracture is a    all episodes in the period
                            CT-identified vertebral fracture
assessed_90d                FLS assessment <= 90 days after the   episodes with 90 days of
                            index date                            follow-up
dxa_90d                     DXA <= 90 days after the index date   episodes with 90 days of
                                                                  follow-up
therapy_recommended         therapy recommended                   episodes assessed
started_16w                 therapy started <= 112 days after     episodes with therapy
                            the index date                        recommended and 112 days of
                                                                  follow-up
adherent_52w                recorded adherent at 52 weeks         episodes started on therapy
                                                                  with 52 weeks since the start
data_completeness           every applicable key field recorded   all episodes in the period
                            (see :func:`completeness`)
==========================  ====================================  ===============================

Bands: IOF Capture the Fracture (<50 % red, 50-80 % amber, >80 % green); the spine KPI is
green above 20 % (FLS-DB). National averages (FLS-DB 2019, ANATOMY.md section 6) are given
for reference.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd

from fracture_qi.qi.proportions import proportion, wilson_interval
from fracture_qi.qi.suppression import Mode, format_count, publishable_percent, rounded_count

logger = logging.getLogger(__name__)

#: kpi -> (label, national average % (FLS-DB 2019) or None, green threshold %)
KPI_INFO: dict[str, tuple[str, float | None, float]] = {
    "spine_identification": ("Spine fractures among FLS patients", 17.9, 20.0),
    "assessed_90d": ("FLS assessment within 90 days", 70.0, 80.0),
    "dxa_90d": ("DXA within 90 days", 46.8, 80.0),
    "therapy_recommended": ("Bone therapy recommended (of assessed)", 52.5, 80.0),
    "started_16w": ("Therapy started within 16 weeks (of recommended)", None, 80.0),
    "adherent_52w": ("Adherent at 52 weeks (of started)", 20.8, 80.0),
    "data_completeness": ("Key fields complete", None, 80.0),
}


def _within(start: pd.Series, end: pd.Series, days: int) -> pd.Series:
    d = (pd.to_datetime(end) - pd.to_datetime(start)).dt.days
    return d.notna() & (d <= days) & (d >= 0)


def _window_denominator(ep: pd.DataFrame, cut: pd.Timestamp, days: int, event: str) -> pd.Series:
    """Episodes whose window has passed, less deaths inside it without the event."""
    idx = pd.to_datetime(ep["index_date"])
    passed = idx + pd.Timedelta(days=days) <= cut
    death = pd.to_datetime(ep["death_date"])
    ev = pd.to_datetime(ep[event])
    died_first = (
        death.notna() & (death <= idx + pd.Timedelta(days=days)) & (ev.isna() | (ev > death))
    )
    return passed & ~died_first


def completeness(ep: pd.DataFrame, cutoff: dt.date) -> pd.Series:
    """Whether each episode has every key field that applies to it.

    Key fields: referral date (always); therapy recommended yes/no (once assessed); DXA
    T-score (once a DXA is recorded); adherence at 52 weeks (once 52 weeks have passed since
    a therapy start).
    """
    cut = pd.Timestamp(cutoff)
    ok = ep["referral_date"].notna()
    assessed = ep["assessment_date"].notna()
    ok &= ~assessed | ep["therapy_recommended"].notna()
    ok &= ep["dxa_date"].isna() | ep["dxa_t_score"].notna()
    start = pd.to_datetime(ep["therapy_start_date"])
    due = start.notna() & (start + pd.Timedelta(days=364) <= cut)
    ok &= ~due | ep["adherent_52w"].notna()
    return ok.astype(bool)


def kpi_masks(episodes: pd.DataFrame, cutoff: dt.date) -> dict[str, tuple[pd.Series, pd.Series]]:
    """``{kpi: (numerator mask, denominator mask)}`` over *episodes*."""
    ep = episodes
    cut = pd.Timestamp(cutoff)
    in_data = pd.to_datetime(ep["index_date"]) <= cut

    def by(col: str) -> pd.Series:
        d = pd.to_datetime(ep[col])
        return d.notna() & (d <= cut)

    m: dict[str, tuple[pd.Series, pd.Series]] = {}
    m["spine_identification"] = (in_data & ep["ct_identified"].eq(True), in_data)
    den = in_data & _window_denominator(ep, cut, 90, "assessment_date")
    m["assessed_90d"] = (den & _within(ep["index_date"], ep["assessment_date"], 90), den)
    den = in_data & _window_denominator(ep, cut, 90, "dxa_date")
    m["dxa_90d"] = (den & _within(ep["index_date"], ep["dxa_date"], 90), den)
    assessed = in_data & by("assessment_date")
    m["therapy_recommended"] = (assessed & ep["therapy_recommended"].eq(True), assessed)
    rec = assessed & ep["therapy_recommended"].eq(True)
    den = rec & _window_denominator(ep, cut, 112, "therapy_start_date")
    m["started_16w"] = (den & _within(ep["index_date"], ep["therapy_start_date"], 112), den)
    start = pd.to_datetime(ep["therapy_start_date"])
    den = in_data & by("therapy_start_date") & (start + pd.Timedelta(days=364) <= cut)
    m["adherent_52w"] = (den & ep["adherent_52w"].eq(True), den)
    m["data_completeness"] = (in_data & completeness(ep, cutoff), in_data)
    return m


def _band(kpi: str, pct: float) -> str:
    if np.isnan(pct):
        return ""
    if kpi == "spine_identification":
        return "green" if pct > 20 else "below benchmark"
    return "green" if pct > 80 else ("amber" if pct >= 50 else "red")


def fls_kpis(episodes: pd.DataFrame, cutoff: dt.date, *, confidence: float = 0.95) -> pd.DataFrame:
    """The FLS KPIs (definitions in the module docstring) with Wilson intervals.

    Parameters
    ----------
    episodes
        ``AnalysisData.episodes``.
    cutoff
        ``AnalysisData.cutoff``.
    confidence
        Two-sided level.

    Returns
    -------
    pandas.DataFrame
        ``kpi, label, numerator, denominator, percent, low, high`` (percentages),
        ``band, national_average``.

    Examples
    --------
    >>> ep = pd.DataFrame({
    ...     "index_date": pd.to_datetime(["2025-01-01", "2025-01-01"]),
    ...     "referral_date": pd.to_datetime(["2025-01-03", "2025-01-05"]),
    ...     "assessment_date": pd.to_datetime(["2025-02-01", "2025-06-01"]),
    ...     "dxa_date": pd.NaT, "dxa_t_score": np.nan, "death_date": pd.NaT,
    ...     "therapy_recommended": pd.array([True, False], dtype="boolean"),
    ...     "therapy_start_date": pd.NaT, "adherent_52w": pd.array([None, None], dtype="boolean"),
    ...     "ct_identified": [True, False]})
    >>> k = fls_kpis(ep, dt.date(2025, 12, 31)).set_index("kpi")
    >>> [float(x) for x in k.loc["assessed_90d", ["numerator", "denominator", "percent"]]]
    [1.0, 2.0, 50.0]
    """
    rows = []
    for kpi, (num, den) in kpi_masks(episodes, cutoff).items():
        k, n = int(num.sum()), int(den.sum())
        p = proportion(k, n, confidence=confidence)
        label, national, _green = KPI_INFO[kpi]
        pct = 100 * p.estimate if n else float("nan")
        rows.append(
            {
                "kpi": kpi,
                "label": label,
                "numerator": k,
                "denominator": n,
                "percent": pct,
                "low": 100 * p.low if n else float("nan"),
                "high": 100 * p.high if n else float("nan"),
                "band": _band(kpi, pct),
                "national_average": national,
            }
        )
    return pd.DataFrame(rows)


def kpi_table(k: pd.DataFrame, *, mode: Mode) -> pd.DataFrame:
    """KPIs for display.

    ``publish`` rounds/suppresses counts and computes the percentage *and its interval*
    from the rounded counts (an interval from exact counts would let a reader solve for
    them); both are hidden when a count is suppressed. ``internal`` shows exact values.
    """
    out = []
    for r in k.itertuples():
        pct = publishable_percent(r.numerator, r.denominator, mode=mode)
        hidden = pct in ("*", "")
        if hidden or np.isnan(r.low):
            ci = ""
        elif mode == "publish":
            rk, rn = rounded_count(r.numerator), rounded_count(r.denominator)
            if rk is None or not rn:  # cannot happen when the percentage is shown
                ci = ""
            else:
                lo, hi = wilson_interval(rk, rn)
                ci = f"{100 * lo:.1f}-{100 * hi:.1f}%"
        else:
            ci = f"{r.low:.1f}-{r.high:.1f}%"
        out.append(
            {
                "KPI": r.label,
                "Numerator": format_count(r.numerator, mode),
                "Denominator": format_count(r.denominator, mode),
                "Percent": pct,
                "95% CI": ci,
                "Band": "" if hidden else r.band,
                "National average": "" if pd.isna(r.national_average) else f"{r.national_average}%",
            }
        )
    return pd.DataFrame(out)
