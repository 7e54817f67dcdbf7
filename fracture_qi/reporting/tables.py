"""Display tables and charts for the audit notebooks, suppressed in publication mode.

The measures are :mod:`fracture_qi.qi`'s; this module only shapes them for a reader: counts
go through :func:`fracture_qi.qi.suppression.suppress_table` (primary and secondary
suppression, rounding to 5), rates are recomputed from the rounded counts, and charts plot
the rounded numbers (``None`` where hidden). Every function takes ``mode``
(``"publish"``/``"internal"``) explicitly and returns what the notebook shows, so the
notebooks hold no logic.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fracture_qi.dashboards.views import NOTE_PUBLISH, ppv_text, rate, shown_count
from fracture_qi.qi.suppression import (
    HIDDEN,
    MIN_FOR_STATISTIC,
    Mode,
    format_count,
    suppress_table,
)
from fracture_qi.reporting.figures import Chart, funnel_chart, km_chart, spc_chart


def _note(mode: str) -> str:
    return NOTE_PUBLISH if mode == "publish" else "Internal: exact counts, not for publication."


def funnel_figure(f: pd.DataFrame, mode: Mode) -> Chart:
    """Bars of :func:`fracture_qi.qi.funnel.funnel` counts (rounded in publication mode)."""
    df = pd.DataFrame({"stage": f["label"], "count": [shown_count(n, mode) for n in f["n"]]})
    return funnel_chart(df, note=_note(mode))


def cohort_by_site(studies: pd.DataFrame, mode: Mode) -> pd.DataFrame:
    """CT studies per site: all, eligible, screened, screening failed, AI-flagged."""
    s = studies
    g = pd.DataFrame({
        "site": s["site"].fillna("unknown").astype(str),
        "CT studies": 1,
        "eligible": s["eligible"].eq(True).astype(int),
        "screened": (s["eligible"].eq(True) & s["screened"].eq(True)).astype(int),
        "screening failed": (s["eligible"].eq(True) & s["screening_status"].eq("error")).astype(int),
        "AI-flagged": (s["eligible"].eq(True) & s["screened"].eq(True)
                       & s["ai_flagged"].eq(True)).astype(int),
    }).groupby("site", sort=True).sum().reset_index()
    out = suppress_table(g, list(g.columns[1:]), mode=mode, row_totals=False, add_totals=True)
    return out.drop(columns=["Total"])  # a sum across these columns means nothing


def exclusions(studies: pd.DataFrame, mode: Mode) -> pd.DataFrame:
    """Why studies were not screened: eligibility and screening-failure reason codes."""
    s = studies
    reason = np.where(
        ~s["eligible"].eq(True), s["reason"].fillna("NOT_ELIGIBLE").astype(str),
        np.where(s["screening_status"].eq("error"),
                 "screening: " + s["screening_reason"].fillna("SCREEN_FAILED").astype(str),
                 np.where(s["screened"].eq(True), "", "not yet screened")))
    r = pd.Series(reason)
    r = r[r != ""]
    g = r.value_counts().rename_axis("reason").reset_index(name="studies")
    g = g.sort_values("reason", kind="mergesort").reset_index(drop=True)
    g["studies"] = g["studies"].astype(int)
    out = suppress_table(g, ["studies"], mode=mode, row_totals=False, add_totals=True)
    return out.drop(columns=["Total"])  # one count column: its row total repeats it


def two_by_two(studies: pd.DataFrame, mode: Mode) -> pd.DataFrame:
    """AI flag against the first nurse read (decisive reads only), with totals."""
    s = studies[studies["read1_decision"].isin(["confirmed", "not_confirmed"])]
    flag = s["ai_flagged"].eq(True)
    conf = s["read1_decision"].eq("confirmed")
    t = pd.DataFrame({
        "AI": ["flagged", "not flagged (audit sample)"],
        "nurse confirmed": [int((flag & conf).sum()), int((~flag & conf).sum())],
        "nurse not confirmed": [int((flag & ~conf).sum()), int((~flag & ~conf).sum())],
    })
    return suppress_table(t, ["nurse confirmed", "nurse not confirmed"], mode=mode,
                          add_totals=True)


def ppv_by(strat: pd.DataFrame, by: str, mode: Mode) -> tuple[pd.DataFrame, Chart]:
    """Counts and PPV per group from :func:`fracture_qi.qi.stratify.stratified`.

    Returns the display table and a bar chart of the PPV with its interval (from rounded
    counts in publication mode; hidden groups are gaps).
    """
    counts = strat[[by, "n_screened", "n_flagged", "n_adjudicated", "n_confirmed"]].copy()
    counts.columns = [by, "screened", "flagged", "adjudicated", "confirmed"]
    shown = suppress_table(counts, ["screened", "flagged", "adjudicated", "confirmed"],
                           mode=mode, row_totals=False)
    k = strat["ppv_n"] * strat["ppv"].fillna(0)
    shown["PPV (95% CI)"] = [ppv_text(round(a), b, mode) for a, b in zip(k, strat["ppv_n"])]
    est, lo, hi = zip(*[rate(round(a), b, mode) for a, b in zip(k, strat["ppv_n"])]) if len(
        strat) else ((), (), ())
    chart_df = pd.DataFrame({by: strat[by].astype(str), "estimate": est, "low": lo, "high": hi})
    from fracture_qi.reporting.figures import proportion_chart

    chart = proportion_chart(chart_df, category=by, title=f"PPV of the AI flag by {by}",
                             ylabel="PPV", note=_note(mode))
    return shown, chart


def km_figure(curve: pd.DataFrame, title: str, mode: Mode) -> Chart:
    """A Kaplan-Meier curve of :func:`fracture_qi.qi.timing.km_curve` (hidden under 8)."""
    n0 = float(curve["at_risk"].iloc[0]) if len(curve) else 0.0
    if not len(curve) or (mode == "publish" and n0 < MIN_FOR_STATISTIC):
        return Chart(title + " (too few patients to show)", xlabel="days from CT",
                     ylabel="proportion reached", ypercent=True)
    df = pd.DataFrame({"days": curve["days"], "proportion_treated": curve["reached"],
                       "low": curve["reached_low"], "high": curve["reached_high"]})
    first = pd.DataFrame({"days": [0.0], "proportion_treated": [0.0], "low": [0.0], "high": [0.0]})
    df = pd.concat([first, df], ignore_index=True).drop_duplicates("days", keep="last")
    note = "Kaplan-Meier; not yet reached: censored at the data cut-off."
    if mode == "publish":
        # each step of an exact curve is one patient's date: publish it on a 4-weekly grid
        grid = np.arange(0.0, float(df["days"].max()) + 28.0, 28.0)
        pos = np.searchsorted(df["days"].to_numpy(), grid, side="right") - 1
        df = df.iloc[np.clip(pos, 0, None)].assign(days=grid).reset_index(drop=True)
        note += " Read every 4 weeks."
    chart = km_chart(df, title=title, note=note + " " + _note(mode))
    chart.traces[0].name = "95% CI"
    chart.traces[-1].name = "proportion reached"
    return chart


def km_table(curve: pd.DataFrame, mode: Mode, days: tuple[int, ...] = (30, 60, 90, 112, 182, 365)) -> pd.DataFrame:
    """The curve read at fixed days: proportion reached (95% CI) and number still at risk."""
    rows = []
    n0 = float(curve["at_risk"].iloc[0]) if len(curve) else 0.0
    hide = mode == "publish" and n0 < MIN_FOR_STATISTIC
    for d in days:
        before = curve[curve["days"] <= d]
        after = curve[curve["days"] > d]
        if hide or not len(curve):
            est = HIDDEN if hide else ""
        elif len(before):
            r = before.iloc[-1]
            est = f"{100 * r['reached']:.1f}% ({100 * r['reached_low']:.1f}-{100 * r['reached_high']:.1f})"
        else:
            est = "0.0%"
        at_risk = int(after["at_risk"].iloc[0]) if len(after) else 0
        rows.append({"day": d, "reached (95% CI)": est,
                     "still at risk": format_count(at_risk, mode)})
    out = pd.DataFrame(rows)
    out["day"] = out["day"].astype(str)
    return out


def monthly_table(mf: pd.DataFrame, mode: Mode, stages: tuple[str, ...] = (
        "ct", "eligible", "screened", "flagged", "confirmed", "newly_identified",
        "therapy_started")) -> pd.DataFrame:
    """Funnel counts by month (:func:`fracture_qi.qi.monthly.monthly_funnel`), suppressed."""
    df = mf[list(stages)].reset_index()
    df["month"] = pd.to_datetime(df["month"]).dt.strftime("%Y-%m")
    return suppress_table(df, list(stages), mode=mode, row_totals=False)


def p_chart_table(monthly: pd.DataFrame, mode: Mode, change_date: str = "") -> pd.DataFrame:
    """p-chart (:func:`fracture_qi.qi.spc.p_chart`) of monthly ``successes / totals``.

    Publication mode charts the rounded counts and leaves out months whose counts are
    hidden; a *change_date* splits the limits from its month on.
    """
    from fracture_qi.qi.spc import p_chart

    months = pd.to_datetime(monthly.index).strftime("%Y-%m")
    s = [shown_count(v, mode) for v in monthly["successes"]]
    n = [shown_count(v, mode) for v in monthly["totals"]]
    keep = [a is not None and b is not None and b > 0 for a, b in zip(s, n)]
    idx = [m for m, k in zip(months, keep) if k]
    cols = ["month", "value", "centre", "lcl", "ucl", "special_cause", "rules"]
    if len(idx) < 2:
        return pd.DataFrame(columns=cols)
    ss = np.array([min(a, b) for a, b, k in zip(s, n, keep) if k], dtype=float)  # type: ignore[type-var]
    nn = np.array([b for b, k in zip(n, keep) if k], dtype=float)
    change = [m for m in idx if change_date and m >= change_date[:7]][:1] or None
    c = p_chart(ss, nn, index=idx, change_at=change)
    c.index.name = "month"
    return c.reset_index()[cols]


def xmr_table(values: pd.Series, mode: Mode, change_date: str = "", counts: bool = True) -> pd.DataFrame:
    """XmR chart (:func:`fracture_qi.qi.spc.xmr`) of a monthly series.

    ``counts=True``: the values are counts, rounded (hidden months left out) in
    publication mode; otherwise they are statistics used as they are (months with NaN left
    out).
    """
    from fracture_qi.qi.spc import xmr

    months = pd.to_datetime(values.index).strftime("%Y-%m")
    vals = [shown_count(v, mode) if counts else (None if pd.isna(v) else float(v)) for v in values]
    idx = [m for m, v in zip(months, vals) if v is not None]
    x = [v for v in vals if v is not None]
    cols = ["month", "value", "centre", "lcl", "ucl", "special_cause", "rules"]
    if len(x) < 2:
        return pd.DataFrame(columns=cols)
    change = [m for m in idx if change_date and m >= change_date[:7]][:1] or None
    c = xmr(np.array(x, dtype=float), index=idx, change_at=change)
    c.index.name = "month"
    return c.reset_index()[cols]


def spc_figure(table: pd.DataFrame, title: str, percent: bool, ylabel: str = "") -> Chart:
    """Chart of :func:`p_chart_table` / :func:`xmr_table` output."""
    if not len(table):
        return Chart(title + " (too few months to chart)")
    return spc_chart(table, x="month", title=title, percent=percent, ylabel=ylabel,
                     note="Making Data Count rules; orange points: special cause")


def spc_display(table: pd.DataFrame, percent: bool) -> pd.DataFrame:
    """SPC table for display and CSV: values as text with fixed decimals."""
    out = table.copy()
    for c in ("value", "centre", "lcl", "ucl"):
        if c in out:
            out[c] = [("" if pd.isna(v) else (f"{100 * v:.1f}%" if percent else f"{v:.1f}"))
                      for v in out[c]]
    if "special_cause" in out:
        out["special_cause"] = out["special_cause"].map(lambda v: "yes" if bool(v) else "")
    return out


def stat_text(value: float, n: int, mode: Mode, fmt: str = "{:.0f}") -> str:
    """A statistic hidden when from fewer than 8 patients in publication mode."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if mode == "publish" and n < MIN_FOR_STATISTIC:
        return HIDDEN
    return fmt.format(value)
