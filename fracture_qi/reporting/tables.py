"""Display tables and charts for the audit notebooks and the dashboard, suppressed in
publication mode.

The figures are :mod:`fracture_qi.qi.published`'s (the one path both the dashboard and the
pack use); this module adds the two row-level tables only the audit shows (studies by site,
and why studies were not screened) and the chart builders both consumers draw with. Every
function takes ``mode`` (``"publish"``/``"internal"``) explicitly, so the notebooks hold no
logic. Charts of counts plot the shown (rounded) numbers as bars only; SPC charts never plot
counts in publication mode (:mod:`fracture_qi.qi.spc_panels`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from fracture_qi.qi import published as P
from fracture_qi.qi.display import note, shown_count
from fracture_qi.qi.suppression import HIDDEN, Mode, suppress_table
from fracture_qi.reporting.figures import (
    Chart,
    Trace,
    funnel_chart,
    km_chart,
    proportion_chart,
)


def cohort_by_site(studies: pd.DataFrame, mode: Mode) -> pd.DataFrame:
    """CT studies per site: all, eligible, screened, not assessable by the AI, AI-flagged."""
    s = studies
    status = s["screening_status"].astype(object)
    g = pd.DataFrame({
        "site": s["site"].fillna("unknown").astype(str),
        "CT studies": 1,
        "eligible": s["eligible"].eq(True).astype(int),
        "screened": (s["eligible"].eq(True) & s["screened"].eq(True)).astype(int),
        "AI could not assess": (s["eligible"].eq(True) & status.notna()
                                & status.ne("ok")).astype(int),
        "AI-flagged": (s["eligible"].eq(True) & s["screened"].eq(True)
                       & s["ai_flagged"].eq(True)).astype(int),
    }).groupby("site", sort=True).sum().reset_index()
    out = suppress_table(g, list(g.columns[1:]), mode=mode, row_totals=False, add_totals=True)
    return out.drop(columns=["Total"])  # a sum across these columns means nothing


def exclusions(studies: pd.DataFrame, mode: Mode) -> pd.DataFrame:
    """Why studies were not screened: eligibility and screening reason codes."""
    s = studies
    status = s["screening_status"].astype(object)
    reason = np.where(
        ~s["eligible"].eq(True), s["reason"].fillna("NOT_ELIGIBLE").astype(str),
        np.where(status.notna() & status.ne("ok"),
                 "screening " + status.fillna("").astype(str) + ": "
                 + s["screening_reason"].fillna("SCREEN_FAILED").astype(str),
                 np.where(s["screened"].eq(True), "", "not yet screened")))
    r = pd.Series(reason)
    r = r[r != ""]
    g = r.value_counts().rename_axis("reason").reset_index(name="studies")
    g = g.sort_values("reason", kind="mergesort").reset_index(drop=True)
    g["studies"] = g["studies"].astype(int)
    out = suppress_table(g, ["studies"], mode=mode, row_totals=False, add_totals=True)
    return out.drop(columns=["Total"])  # one count column: its row total repeats it


def funnel_figure(t: Mapping[str, float], mode: Mode, caption: str = "") -> Chart:
    """The funnel as horizontal bars of the shown counts (rounded; hidden stages are gaps)."""
    rows = P.funnel_rows(t)
    df = pd.DataFrame({"stage": rows["label"], "count": [shown_count(n, mode) for n in rows["n"]]})
    chart = funnel_chart(df, note=note(mode))
    chart.caption = caption
    return chart


def km_figure(table: pd.DataFrame, mode: Mode, title: str = "Time from CT to therapy start",
              caption: str = "") -> Chart:
    """A Kaplan-Meier curve (:func:`fracture_qi.qi.published.km_published`) with its band."""
    if not len(table):
        return Chart(title + " (too few patients to show)", xlabel="days from CT",
                     ylabel="proportion reached", ypercent=True, caption=caption)
    df = pd.DataFrame({"days": table["days"], "proportion_treated": table["reached"],
                       "low": table["reached_low"], "high": table["reached_high"]})
    chart = km_chart(df, title=title,
                     note="Kaplan-Meier; not yet reached: censored at the data cut-off"
                     + ("; read every 4 weeks. " + note(mode) if mode == "publish" else "."))
    chart.traces[0].name = "95% CI"
    chart.traces[-1].name = "proportion reached"
    chart.ylabel = "proportion reached"
    chart.caption = caption
    return chart


def breakdown_figure(table: pd.DataFrame, dim: str, caption: str = "") -> Chart:
    """Grouped bars of screened / flagged / confirmed per category (shown counts)."""
    return Chart(
        title=f"By {dim}",
        traces=[Trace(c, [str(v) for v in table[dim]],
                      [None if v in (HIDDEN, "") else float(v) for v in table[c]], kind="bar")
                for c in ("screened", "flagged", "confirmed")],
        xlabel=dim, ylabel="studies", caption=caption,
    )


def ppv_chart(by: pd.DataFrame, dim: str, mode: Mode, caption: str = "") -> Chart:
    """The PPV per group with its interval (rows of :meth:`Aggregate.by`; hidden groups are
    gaps)."""
    est, lo, hi = [], [], []
    for r in by.to_dict("records"):
        a = P.accuracy_rows(r, mode).set_index("measure").loc["ppv"]
        hidden = a["method"] == "hidden" or np.isnan(a["estimate"])
        est.append(None if hidden else a["estimate"])
        lo.append(None if hidden else a["low"])
        hi.append(None if hidden else a["high"])
    df = pd.DataFrame({dim: by[dim].astype(str), "estimate": est, "low": lo, "high": hi})
    chart = proportion_chart(df, category=dim, title=f"PPV of the AI flag by {dim}",
                             ylabel="PPV", note=note(mode))
    chart.caption = caption
    return chart


__all__ = ["breakdown_figure", "cohort_by_site", "exclusions", "funnel_figure", "km_figure",
           "ppv_chart"]
