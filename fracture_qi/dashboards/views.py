"""What the QI dashboard (and the audit's cube-based tables) show for a filter.

Pure functions from a :class:`~fracture_qi.dashboards.cube.Cube` and a filter to display
tables (strings, suppressed in ``"publish"`` mode) and :class:`~fracture_qi.reporting.figures.Chart`
objects (numbers, ``None`` where suppressed). The widgets only lay these out, so tests can
check every number without a browser, and the browser test checks that the page shows them.

Suppression (``mode="publish"``) follows :mod:`fracture_qi.qi.suppression`: counts 1-7
hidden, others rounded to 5, percentages and intervals from the rounded counts, statistics
from fewer than 8 patients hidden. Charts plot the rounded counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from fracture_qi.dashboards.cube import Z95, Cube
from fracture_qi.qi.suppression import (
    HIDDEN,
    MIN_FOR_STATISTIC,
    format_count,
    rounded_count,
    suppress_table,
)
from fracture_qi.reporting.figures import Chart, Trace, funnel_chart, km_chart, spc_chart

Mode = Literal["publish", "internal"]

#: funnel stages (as :mod:`fracture_qi.qi.funnel`): (measure, label, its parent stage)
FUNNEL: tuple[tuple[str, str, str | None], ...] = (
    ("ct", "CT studies", None),
    ("eligible", "Eligible (age 50+, spine in view)", "ct"),
    ("screened", "Screened by the AI", "eligible"),
    ("flagged", "Flagged by the AI", "screened"),
    ("adjudicated", "Reviewed by a nurse", "flagged"),
    ("confirmed", "Fracture confirmed", "adjudicated"),
    ("newly_identified", "Newly identified (not previously known)", "confirmed"),
    ("referred", "Referred to the FLS", "newly_identified"),
    ("assessed", "FLS assessment", "referred"),
    ("dxa", "DXA scan", "assessed"),
    ("therapy_recommended", "Therapy recommended", "assessed"),
    ("therapy_started", "Therapy started", "therapy_recommended"),
    ("adherent_52w", "Adherent at 52 weeks", "therapy_started"),
)
#: headline tiles: (key, label)
TILES: tuple[tuple[str, str], ...] = (
    ("screened", "CTs screened"),
    ("confirmed", "Fractures confirmed"),
    ("newly_identified", "Newly identified"),
    ("therapy_started", "Started on bone therapy"),
    ("ppv", "PPV of the AI flag"),
)
NOTE_PUBLISH = "Counts 1-7 shown as *, others rounded to the nearest 5; rates from rounded counts."


def shown_count(n: float, mode: Mode) -> float | None:
    """The number a chart plots for a count: rounded (None when hidden) in publish mode."""
    if mode == "publish":
        r = rounded_count(int(round(n)))
        return None if r is None else float(r)
    return float(n)


def rate(num: float, den: float, mode: Mode) -> tuple[float | None, float | None, float | None]:
    """A proportion and its Wilson 95 % interval, from rounded counts in publish mode.

    Returns ``(None, None, None)`` when either count is hidden or the denominator is 0.

    Examples
    --------
    >>> [round(v, 3) for v in rate(13, 41, "publish")]   # 15 / 40
    [0.375, 0.242, 0.53]
    >>> rate(5, 41, "publish")
    (None, None, None)
    """
    a, b = shown_count(num, mode), shown_count(den, mode)
    if a is None or b is None or not b:
        return (None, None, None)
    a = min(a, b)  # rounding can push a numerator past its denominator
    lo, hi = wilson(a, b)
    return (a / b, lo, hi)


def wilson(successes: float, n: float) -> tuple[float, float]:
    """The 95 % Wilson score interval, as :func:`fracture_qi.qi.proportions.wilson_interval`.

    The same arithmetic as statsmodels' ``proportion_confint(method="wilson")`` (which
    ``wilson_interval`` calls) written out here, because importing statsmodels and scipy
    costs 0.5 s of CPU (seconds on a loaded machine) and the first paint needs nothing else.
    ``tests/test_dashboard.py`` checks the two agree on a grid of counts.

    Parameters
    ----------
    successes, n
        Numerator and denominator (``0 <= successes <= n``).

    Returns
    -------
    tuple of float
        ``(low, high)``; ``(nan, nan)`` when ``n == 0``.

    Raises
    ------
    ValueError
        When the counts are impossible.

    Examples
    --------
    >>> [round(v, 3) for v in wilson(45, 50)]
    [0.786, 0.957]
    """
    if n < 0 or successes < 0 or successes > n + 1e-9:
        raise ValueError(f"successes={successes!r}, n={n!r}: need 0 <= successes <= n. "
                         "Fix: pass the numerator and the denominator of the proportion")
    if n == 0:
        return (math.nan, math.nan)
    k = min(successes, n)
    q = k / n
    crit2 = Z95**2
    denom = 1 + crit2 / n
    center = (q + crit2 / (2 * n)) / denom
    dist = Z95 * np.sqrt(q * (1.0 - q) / n + crit2 / (4.0 * n**2))
    dist /= denom
    low, high = center - dist, center + dist
    # at k == 0 or k == n the exact limit is 0 or 1 (as wilson_interval clamps it)
    return (float(min(max(0.0, low), q)), float(max(min(1.0, high), q)))


def fmt_rate(p: tuple[float | None, float | None, float | None]) -> str:
    """``'83.3% (78.1-87.6)'`` or ``'*'``."""
    est, lo, hi = p
    if est is None or lo is None or hi is None:
        return HIDDEN
    return f"{100 * est:.1f}% ({100 * lo:.1f}-{100 * hi:.1f})"


def ppv_from_totals(t: Mapping[str, float], mode: Mode) -> str:
    """The PPV tile for cube totals: exact when every flagged study has weight 1.

    When some flagged studies were only reviewed as audit-sample negatives (a model other
    than the worklist's), :func:`fracture_qi.qi.accuracy.accuracy` weights the PPV; the cube
    holds the weighted sums, so the weighted estimate is shown, without an interval (the
    audit report has it).
    """
    tp, fp = t.get("tp", 0.0), t.get("fp", 0.0)
    if not t.get("n_flag_weighted", 0.0):
        return ppv_text(tp, tp + fp, mode)
    if mode == "publish" and any(1 <= c <= 7 for c in (tp, fp)):
        return HIDDEN
    wt, wf = t.get("w_tp", 0.0), t.get("w_fp", 0.0)
    return f"{100 * wt / (wt + wf):.1f}% (weighted)" if wt + wf else ""


def ppv_text(k: float, n: float, mode: Mode) -> str:
    """The PPV as :func:`fracture_qi.qi.report.headline_summary` shows it.

    It is what :func:`fracture_qi.qi.report.accuracy_table` shows for a plain (Wilson) PPV
    row, so the tile and the audit report agree to the character (hidden when 1-7 studies
    are on either side); written out here to keep statsmodels off the first paint, and
    checked against ``accuracy_table`` by ``tests/test_dashboard.py``.

    Examples
    --------
    >>> ppv_text(40, 49, "publish")
    '80.0% (67.0%-88.8%)'
    >>> ppv_text(45, 49, "publish")
    '*'
    """
    k_, n_ = round(k), round(n)  # whole counts (round() of a float is an int)
    # accuracy_table (qi.report) for one plain Wilson PPV row, without importing qi.report
    # and statsmodels on the first paint; tests/test_dashboard.py checks the two agree
    if mode == "publish" and any(1 <= c <= 7 for c in (k_, n_ - k_)):
        return HIDDEN
    if mode == "publish":
        rk, rn = rounded_count(k_), rounded_count(n_)
        if rk is not None and rn:
            lo, hi = wilson(rk, rn)
            return f"{_pct(rk / rn)} ({_pct(lo)}-{_pct(hi)})"
    if not n_:
        return ""
    lo, hi = wilson(k_, n_)
    return f"{_pct(k_ / n_)} ({_pct(lo)}-{_pct(hi)})"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def tiles(t: Mapping[str, float], mode: Mode) -> dict[str, str]:
    """Headline numbers for the totals *t* of a filter (as ``headline_summary`` words them).

    Examples
    --------
    >>> tiles({"screened": 1234, "confirmed": 6, "newly_identified": 0, "therapy_started": 12,
    ...        "tp": 40, "fp": 9}, "publish")
    {'screened': '1235', 'confirmed': '*', 'newly_identified': '0', 'therapy_started': '10', 'ppv': '80.0% (67.0%-88.8%)'}
    """
    out = {k: format_count(int(t.get(k, 0)), mode) for k, _ in TILES if k != "ppv"}
    out["ppv"] = ppv_from_totals(t, mode)
    return out


def funnel_table(t: Mapping[str, float], mode: Mode) -> pd.DataFrame:
    """One row per funnel stage: ``stage, count`` (display), ``percent`` and ``of`` (the
    stage the percentage is of; "newly identified" and "referred" are both of "confirmed")."""
    labels = {k: lab for k, lab, _ in FUNNEL}
    rows = []
    for key, label, parent in FUNNEL:
        n = t.get(key, 0.0)
        pct = ""
        if parent is not None:
            est, _, _ = rate(n, t.get(parent, 0.0), mode)
            pct = HIDDEN if est is None and t.get(parent, 0.0) else (
                "" if est is None else f"{100 * est:.1f}%")
        rows.append({"stage": label, "count": format_count(int(n), mode), "percent": pct,
                     "of": labels[parent] if parent else ""})
    return pd.DataFrame(rows)


def funnel_figure(t: Mapping[str, float], mode: Mode) -> Chart:
    """The funnel as horizontal bars of the shown counts."""
    df = pd.DataFrame({"stage": [lab for _, lab, _ in FUNNEL],
                       "count": [shown_count(t.get(k, 0.0), mode) for k, _, _ in FUNNEL]})
    return funnel_chart(df, note=NOTE_PUBLISH if mode == "publish" else "internal: exact counts")


def monthly(cube: Cube, filters: Mapping[str, Any], mode: Mode) -> pd.DataFrame:
    """Per month: counts shown (display strings) and the PPV from the shown counts."""
    df = cube.by("month", dict(filters))
    out = pd.DataFrame({"month": df["month"]})
    for k in ("screened", "flagged", "adjudicated", "confirmed", "therapy_started"):
        out[k] = [format_count(int(v), mode) for v in df[k]]
    out["ppv"] = [ppv_from_totals(r, mode) for r in df.to_dict("records")]
    return out


def spc_ppv(cube: Cube, filters: Mapping[str, Any], mode: Mode,
            change_date: str | None = None) -> pd.DataFrame:
    """p-chart of the monthly PPV (confirmed / reviewed flagged), Making Data Count rules.

    In publish mode months whose counts are hidden are left out, and the chart uses the
    rounded counts.
    """
    from fracture_qi.qi.spc import p_chart

    df = cube.by("month", dict(filters))
    s = [shown_count(a, mode) for a in df["tp"]]
    n = [shown_count(a + b, mode) for a, b in zip(df["tp"], df["fp"])]
    keep = [(a is not None and b is not None and b > 0) for a, b in zip(s, n)]
    months = [m for m, k in zip(df["month"], keep) if k]
    if not months:
        return pd.DataFrame(columns=["month", "value", "centre", "lcl", "ucl", "special_cause"])
    ss = np.array([min(a, b) for a, b, k in zip(s, n, keep) if k], dtype=float)  # type: ignore[type-var]
    nn = np.array([b for b, k in zip(n, keep) if k], dtype=float)
    change = [m for m in months if change_date and m >= change_date[:7]][:1] or None
    chart = p_chart(ss, nn, index=months, change_at=change)
    chart.index.name = "month"
    return chart.reset_index()


def spc_screened(cube: Cube, filters: Mapping[str, Any], mode: Mode,
                 change_date: str | None = None) -> pd.DataFrame:
    """XmR chart of CTs screened per month (shown counts; hidden months left out)."""
    from fracture_qi.qi.spc import xmr

    df = cube.by("month", dict(filters))
    vals = [shown_count(v, mode) for v in df["screened"]]
    months = [m for m, v in zip(df["month"], vals) if v is not None]
    x = [v for v in vals if v is not None]
    if len(x) < 2:
        return pd.DataFrame(columns=["month", "value", "centre", "lcl", "ucl", "special_cause"])
    change = [m for m in months if change_date and m >= change_date[:7]][:1] or None
    chart = xmr(np.array(x, dtype=float), index=months, change_at=change)
    chart.index.name = "month"
    return chart.reset_index()


def agreement(t: Mapping[str, float], mode: Mode) -> tuple[pd.DataFrame, pd.DataFrame]:
    """AI flag versus the first nurse read, and what follows from it.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        The 2x2 table (rows AI flagged / AI negative (audit sample), columns nurse
        confirmed / not confirmed; secondary suppression against its totals), and the
        summary measures: PPV, weighted sensitivity and specificity (audit-sample negatives
        weighted by 1 / sampling probability), AI-vs-nurse Cohen's kappa on the reviewed
        studies and the nurse-vs-nurse agreement on double reads.
    """
    table = pd.DataFrame({
        "AI": ["flagged", "negative (audit sample)"],
        "nurse confirmed": [int(t.get("tp", 0)), int(t.get("fn", 0))],
        "nurse not confirmed": [int(t.get("fp", 0)), int(t.get("tn", 0))],
    })
    shown = suppress_table(table, ["nurse confirmed", "nurse not confirmed"], mode=mode,
                           add_totals=True)
    tp, fp, fn, tn = (t.get(k, 0.0) for k in ("tp", "fp", "fn", "tn"))
    wfn, wtn = t.get("w_fn", 0.0), t.get("w_tn", 0.0)
    small = min(tp + fn, fp + tn) < MIN_FOR_STATISTIC or (fn + tn) < MIN_FOR_STATISTIC
    hide = mode == "publish" and small
    sens = tp / (tp + wfn) if (tp + wfn) else math.nan
    spec = wtn / (wtn + fp) if (wtn + fp) else math.nan
    kappa = _kappa(tp, fp, fn, tn)
    dr_n, dr_a = t.get("dr_pairs", 0.0), t.get("dr_agree", 0.0)

    def pct(v: float, hidden: bool) -> str:
        return HIDDEN if hidden else ("" if math.isnan(v) else f"{100 * v:.1f}%")

    summary = pd.DataFrame([
        {"measure": "PPV of the AI flag (95% CI)", "value": ppv_from_totals(t, mode)},
        {"measure": "Sensitivity, weighted by the audit sample", "value": pct(sens, hide)},
        {"measure": "Specificity, weighted by the audit sample", "value": pct(spec, hide)},
        {"measure": "Cohen's kappa, AI vs first nurse read (reviewed studies)",
         "value": HIDDEN if hide or math.isnan(kappa) and mode == "publish" else (
             "" if math.isnan(kappa) else f"{kappa:.2f}")},
        {"measure": "Nurse-nurse agreement on double reads",
         "value": fmt_rate(rate(dr_a, dr_n, mode))},
    ])
    return shown, summary


def _kappa(tp: float, fp: float, fn: float, tn: float) -> float:
    n = tp + fp + fn + tn
    if n == 0:
        return math.nan
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    return (po - pe) / (1 - pe) if pe < 1 else math.nan


def breakdown(cube: Cube, dim: str, filters: Mapping[str, Any], mode: Mode) -> pd.DataFrame:
    """Counts and PPV per value of *dim* (site, scanner, referral, model or month)."""
    df = cube.by(dim, {k: v for k, v in filters.items() if k != dim or dim == "model"})
    counts = df[[dim, "screened", "flagged", "confirmed", "newly_identified",
                 "therapy_started"]].copy()
    for c in counts.columns[1:]:
        counts[c] = counts[c].round().astype(int)
    out = suppress_table(counts, list(counts.columns[1:]), mode=mode, row_totals=False)
    out["ppv"] = [ppv_from_totals(r, mode) for r in df.to_dict("records")]
    return out


def km(cube: Cube, filters: Mapping[str, Any], mode: Mode, weeks: int = 52) -> pd.DataFrame:
    """Time from CT to therapy start among referred patients (Kaplan-Meier, weekly).

    In publish mode the curve is hidden (empty) when fewer than 8 patients are in it, it is
    read every 4 weeks (a weekly step can be one patient), and the numbers at risk are rounded.
    """
    table = cube.km(dict(filters)).iloc[: weeks + 1].copy()
    n0 = float(table["at_risk"].iloc[0]) if len(table) else 0.0
    if mode == "publish":
        if n0 < MIN_FOR_STATISTIC:
            return table.iloc[0:0]
        # weekly steps can be single patients: publish the curve every 4 weeks
        table = table.iloc[::4].copy()
        table["at_risk"] = [rounded_count(int(v)) for v in table["at_risk"]]
        table = table.drop(columns=["events", "censored"])
    return table.reset_index(drop=True)


def km_figure(table: pd.DataFrame, mode: Mode) -> Chart:
    """Step curve of the proportion started, with its 95 % band."""
    if not len(table):
        return Chart("Time from CT to therapy start (too few patients to show)",
                     xlabel="days from CT", ylabel="proportion started", ypercent=True)
    chart = km_chart(table, note="Kaplan-Meier; patients not yet treated are censored at the "
                     "data cut-off" + ("; read every 4 weeks; " + NOTE_PUBLISH
                                       if mode == "publish" else ""))
    chart.traces[0].name = "95% CI"
    chart.traces[-1].name = "proportion started"
    return chart


def spc_figure(chart: pd.DataFrame, title: str, percent: bool) -> Chart:
    """An SPC table from :func:`spc_ppv`/:func:`spc_screened` as a chart."""
    if not len(chart):
        return Chart(title + " (too few months to chart)")
    return spc_chart(chart, x="month", title=title, percent=percent,
                     note="Making Data Count rules; orange: special cause")


def breakdown_figure(table: pd.DataFrame, dim: str) -> Chart:
    """Grouped bars of screened / flagged / confirmed per category."""
    return Chart(
        title=f"By {dim}",
        traces=[Trace(c, [str(v) for v in table[dim]],
                      [None if v in (HIDDEN, "") else float(v) for v in table[c]], kind="bar")
                for c in ("screened", "flagged", "confirmed")],
        xlabel=dim, ylabel="studies",
    )
