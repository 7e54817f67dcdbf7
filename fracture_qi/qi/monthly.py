"""Monthly series for SPC charts: counts, PPV, KPIs and times by month of the CT.

Each function returns one row per calendar month (month start as a Timestamp), including
months with no activity between the first and last, so that charts have no silent gaps.
Feed ``successes``/``totals`` to :func:`fracture_qi.qi.spc.p_chart` and a monthly median to
:func:`fracture_qi.qi.spc.xmr`.
"""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd

from fracture_qi.qi.funnel import STAGES, stage_masks
from fracture_qi.qi.kpi import kpi_masks
from fracture_qi.qi.timing import INTERVALS, pathway_durations

logger = logging.getLogger(__name__)


def _months(dates: pd.Series) -> pd.DatetimeIndex:
    d = pd.to_datetime(dates).dropna()
    if d.empty:
        return pd.DatetimeIndex([], name="month")
    return pd.date_range(
        d.min().to_period("M").to_timestamp(),
        d.max().to_period("M").to_timestamp(),
        freq="MS",
        name="month",
    )


def monthly_funnel(studies: pd.DataFrame, cutoff: dt.date | None = None) -> pd.DataFrame:
    """Funnel stage counts per month of the CT date.

    Returns
    -------
    pandas.DataFrame
        Index ``month``; one column per funnel stage (:data:`fracture_qi.qi.funnel.STAGES`).
    """
    masks = stage_masks(studies, cutoff)
    month = pd.to_datetime(studies["study_date"]).dt.to_period("M").dt.to_timestamp()
    out = pd.DataFrame({stage: masks[stage].groupby(month).sum() for stage, *_ in STAGES})
    out = out.reindex(_months(studies["study_date"]), fill_value=0).astype(int)
    out.index.name = "month"
    return out


def monthly_ppv(studies: pd.DataFrame) -> pd.DataFrame:
    """Confirmed (``successes``) of assessable adjudicated flagged studies (``totals``) by month.

    Only studies in the flagged worklist stratum count, so that the monthly PPV is an
    unweighted proportion suitable for a p-chart.
    """
    s = studies[
        studies["ai_flagged"].eq(True)
        & studies["stratum"].eq("flagged")
        & studies["read1_decision"].isin(["confirmed", "not_confirmed"])
    ]
    month = pd.to_datetime(s["study_date"]).dt.to_period("M").dt.to_timestamp()
    out = pd.DataFrame(
        {
            "successes": (s["read1_decision"] == "confirmed").groupby(month).sum(),
            "totals": s.groupby(month).size(),
        }
    )
    out = out.reindex(_months(studies["study_date"]), fill_value=0).astype(int)
    out.index.name = "month"
    return out


def monthly_kpi(episodes: pd.DataFrame, kpi: str, cutoff: dt.date) -> pd.DataFrame:
    """Numerator (``successes``) and denominator (``totals``) of an FLS KPI by index month."""
    masks = kpi_masks(episodes, cutoff)
    if kpi not in masks:
        raise KeyError(f"unknown KPI {kpi!r}: use one of {sorted(masks)}")
    num, den = masks[kpi]
    month = pd.to_datetime(episodes["index_date"]).dt.to_period("M").dt.to_timestamp()
    out = pd.DataFrame({"successes": num.groupby(month).sum(), "totals": den.groupby(month).sum()})
    out = out.reindex(_months(episodes["index_date"]), fill_value=0).astype(int)
    out.index.name = "month"
    return out


def monthly_median_days(studies: pd.DataFrame, interval: str, cutoff: dt.date) -> pd.DataFrame:
    """Median days (of those who reached the event) and counts per CT month.

    Returns
    -------
    pandas.DataFrame
        Index ``month``; ``median_days`` (NaN in months with nobody), ``n``.
    """
    if interval not in INTERVALS:
        raise KeyError(f"unknown interval {interval!r}: use one of {sorted(INTERVALS)}")
    dur = pathway_durations(studies, cutoff)[interval]
    dur = dur[dur["observed"]]
    month = pd.to_datetime(studies.loc[dur.index, "study_date"]).dt.to_period("M").dt.to_timestamp()
    g = dur["days"].groupby(month)
    out = pd.DataFrame({"median_days": g.median(), "n": g.size()})
    out = out.reindex(_months(studies["study_date"]))
    out["n"] = out["n"].fillna(0).astype(int)
    out.index.name = "month"
    return out
