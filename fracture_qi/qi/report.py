"""Headline figures for a run: funnel, FLS KPIs, accuracy, times and agreement, display-ready.

:func:`headline_summary` is what ``make demo`` prints and what the audit notebooks and the
dashboard show at the top. ``publish=True`` applies small-number suppression to every
count, percentage, interval and statistic (see :mod:`fracture_qi.qi.suppression`);
``publish=False`` is the internal, nurse-facing view with exact numbers.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pandas as pd

from fracture_qi.outcomes.dataset import AnalysisData
from fracture_qi.qi.accuracy import accuracy
from fracture_qi.qi.agreement import agreement_summary
from fracture_qi.qi.funnel import funnel, funnel_table
from fracture_qi.qi.kpi import fls_kpis, kpi_table
from fracture_qi.qi.proportions import wilson_interval
from fracture_qi.qi.suppression import (
    MIN_FOR_STATISTIC,
    Mode,
    format_count,
    publishable_statistic,
    rounded_count,
)
from fracture_qi.qi.timing import pathway_times

logger = logging.getLogger(__name__)

_ACC_LABELS = {
    "ppv": "PPV of the AI flag",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "npv": "NPV",
    "prevalence": "Prevalence",
}


def _pct(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def accuracy_table(acc: pd.DataFrame, *, mode: Mode) -> pd.DataFrame:
    """Accuracy measures for display.

    In ``publish`` mode a measure is hidden when its unweighted numerator or the unweighted
    rest of its denominator is 1-7 patients; the plain PPV is recomputed from rounded counts
    (its interval too); weighted measures show the estimate and interval only when both
    unweighted counts are 0 or at least 8.
    """
    rows = []
    for r in acc.itertuples():
        k, n = int(r.n_numerator), int(r.n_denominator)
        small = any(1 <= c <= 7 for c in (k, n - k))
        est, ci = _pct(r.estimate), ("" if math.isnan(r.low) else f"{_pct(r.low)}-{_pct(r.high)}")
        if mode == "publish":
            if small:
                est, ci = "*", ""
            elif r.method == "wilson":
                rk, rn = rounded_count(k), rounded_count(n)
                if rk is not None and rn:
                    lo, hi = wilson_interval(rk, rn)
                    est, ci = _pct(rk / rn), f"{_pct(lo)}-{_pct(hi)}"
        rows.append(
            {
                "Measure": _ACC_LABELS.get(r.measure, r.measure),
                "Estimate": est,
                "95% CI": ci,
                "Cases (numerator)": format_count(k, mode),
                "Cases (denominator)": format_count(n, mode),
                "Method": "Wilson"
                if r.method == "wilson"
                else "inverse-probability weighted, Wilson on effective n",
                "Definition": r.definition,
            }
        )
    return pd.DataFrame(rows)


def times_table(times: pd.DataFrame, *, mode: Mode) -> pd.DataFrame:
    """Pathway times for display (medians from fewer than 8 patients hidden in publish)."""
    rows = []
    for r in times.itertuples():
        n = int(r.n_reached)

        def stat(v: float, n_: int = n) -> str:
            return publishable_statistic(v, n_, fmt="{:.0f}", mode=mode)

        iqr = "" if math.isnan(r.q1) else f"{stat(r.q1)}-{stat(r.q3)}"
        if "*" in iqr:
            iqr = "*"
        rows.append(
            {
                "Interval": r.label,
                "Patients": format_count(int(r.n_patients), mode),
                "Reached": format_count(n, mode),
                "Median days": stat(r.median),
                "IQR": iqr,
                "Kaplan-Meier median days": stat(r.km_median, int(r.n_patients)),
                "Reached by 90 days": ""
                if math.isnan(r.reached_90d)
                else (
                    "*"
                    if mode == "publish" and r.n_patients < MIN_FOR_STATISTIC
                    else _pct(r.reached_90d)
                ),
            }
        )
    return pd.DataFrame(rows)


def agreement_table(agr: pd.DataFrame, *, mode: Mode) -> pd.DataFrame:
    """Kappas for display (hidden in publish mode when fewer than 8 cases)."""
    rows = []
    for r in agr.itertuples():
        hide = mode == "publish" and r.n < MIN_FOR_STATISTIC
        k = "" if math.isnan(r.kappa) else ("*" if hide else f"{r.kappa:.2f}")
        ci = "" if math.isnan(r.low) or hide else f"{r.low:.2f} to {r.high:.2f}"
        rows.append(
            {
                "Comparison": r.comparison,
                "What": r.what + (f" ({r.weights}-weighted)" if r.weights else ""),
                "Kappa": k,
                "95% CI": ci,
                "Cases": format_count(int(r.n), mode),
            }
        )
    return pd.DataFrame(rows)


def headline_summary(data: AnalysisData, publish: bool) -> dict[str, Any]:
    """The figures ``make demo`` prints and reports put first.

    Parameters
    ----------
    data
        From :func:`fracture_qi.outcomes.dataset.load_analysis`.
    publish
        True: suppressed and rounded for publication; False: exact, for the FLS team.

    Returns
    -------
    dict
        ``mode`` ("publish"/"internal"), ``params`` (the selection), ``headline`` (tiles:
        ``measure, value``), ``funnel``, ``kpis``, ``accuracy``, ``times``, ``agreement``
        (display DataFrames of strings) and, in internal mode only, ``raw``: the exact
        frames (funnel, kpis, accuracy, times, agreement).
    """
    mode: Mode = "publish" if publish else "internal"
    st, ep = data.studies, data.episodes
    f = funnel(st, data.cutoff)
    k = fls_kpis(ep, data.cutoff)
    acc = accuracy(st)
    times, _curves = pathway_times(st, data.cutoff)
    agr = agreement_summary(st)
    fun_t = funnel_table(f, mode=mode)
    acc_t = accuracy_table(acc, mode=mode)
    n = f.set_index("stage")["n"]
    accd = acc_t.set_index("Measure")
    tiles = [
        ("CTs screened", format_count(int(n["screened"]), mode)),
        ("Fractures confirmed", format_count(int(n["confirmed"]), mode)),
        ("Newly identified", format_count(int(n["newly_identified"]), mode)),
        ("Started on bone therapy", format_count(int(n["therapy_started"]), mode)),
        (
            "PPV of the AI flag",
            " ".join(
                x
                for x in (
                    accd.loc["PPV of the AI flag", "Estimate"],
                    f"({accd.loc['PPV of the AI flag', '95% CI']})"
                    if accd.loc["PPV of the AI flag", "95% CI"]
                    else "",
                )
                if x
            ),
        ),
        (
            "Sensitivity (audit-weighted)",
            " ".join(
                x
                for x in (
                    accd.loc["Sensitivity", "Estimate"],
                    f"({accd.loc['Sensitivity', '95% CI']})"
                    if accd.loc["Sensitivity", "95% CI"]
                    else "",
                )
                if x
            ),
        ),
    ]
    out: dict[str, Any] = {
        "mode": mode,
        "params": {**data.params, "model": data.model, "cutoff": str(data.cutoff)},
        "headline": pd.DataFrame(tiles, columns=["measure", "value"]),
        "funnel": fun_t,
        "kpis": kpi_table(k, mode=mode),
        "accuracy": acc_t,
        "times": times_table(times, mode=mode),
        "agreement": agreement_table(agr, mode=mode),
    }
    if not publish:
        out["raw"] = {"funnel": f, "kpis": k, "accuracy": acc, "times": times, "agreement": agr}
    return out


def format_summary(summary: dict[str, Any], *, width: int = 100) -> str:
    """Plain text of :func:`headline_summary` for a terminal (what ``make demo`` prints)."""
    parts = [
        f"fracture-qi summary ({summary['mode']} view; model {summary['params'].get('model')},"
        f" data cut-off {summary['params'].get('cutoff')})",
        "",
    ]
    for key, title in (
        ("headline", "Headline"),
        ("funnel", "Funnel"),
        ("kpis", "FLS KPIs"),
        ("accuracy", "Accuracy"),
        ("times", "Times"),
        ("agreement", "Agreement"),
    ):
        df = summary[key]
        if key == "funnel":
            df = df.drop(columns=["Definition"])
        if key == "accuracy":
            df = df.drop(columns=["Definition", "Method"])
        parts += [
            title,
            "-" * len(title),
            df.to_string(index=False, header=key != "headline", line_width=width),
            "",
        ]
    if summary["mode"] == "publish":
        parts.append("* = 1-7 (or a figure from fewer than 8 patients); counts rounded to 5.")
    return "\n".join(parts)
