"""The SPC charts the dashboard and the pack show, from the aggregate, for a filter and a mode.

Each panel is a monthly series over the filter's whole range (every month present: a month
with nothing counted is 0, a rate with no denominator is *missing*), charted as Making Data
Count does (:mod:`fracture_qi.qi.spc`):

* counts (CTs screened per month): an XmR chart with a lower limit never below zero;
* rates (PPV, the share the AI could not assess, FLS-DB KPIs by month): an XmR chart of the
  monthly rate (MDC's recommendation for rates), or, in the internal view, a p-chart where
  binomial limits fit (Laney's sigma-z of the monthly z-scores at most
  :data:`P_CHART_MAX_SIGMA_Z`; over-dispersed rates would show false signals on a p-chart).

Targets are the FLS-DB/IOF green thresholds (:attr:`fracture_qi.qi.kpi.KpiDef.target`); a QI
change date recalculates the limits from its month on, and is annotated.

**Publication mode** never charts a rounded count: a count chart is withheld (its message
says so and points to the internal view); a rate chart shows the exact monthly rates of the
months whose numerator and the rest of its denominator are both 0 or at least 8, and treats
the other months as suppressed gaps: they take no part in the centre, the limits or the rules
(otherwise the centre would give a hidden month away). A p-chart is not used for
publication, because its per-month limits give each month's denominator away.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fracture_qi.qi.display import rate_hidden
from fracture_qi.qi.kpi import KPI_BY_KEY
from fracture_qi.qi.spc import SpcSummary, p_chart, xmr
from fracture_qi.qi.suppression import Mode

#: a p-chart's binomial limits fit when Laney's sigma-z (the spread of the monthly z-scores,
#: mean moving range / 1.128) is at most this: 1 under a binomial model; the margin allows
#: for sampling error over 1-2 years of months [estimate] (Laney DB, Improved control charts
#: for attributes, Quality Engineering 2002;14:531-7)
P_CHART_MAX_SIGMA_Z = 1.25
#: MDC's minimum for meaningful limits; fewer shown months and a chart is not drawn
MIN_POINTS_TO_CHART = 2

def _target(kpi: str) -> float | None:
    """A KPI's green threshold as a proportion (the SPC target)."""
    t = KPI_BY_KEY[kpi].target
    return None if t is None else t / 100


#: panel -> (title, kind, source, numerator key, denominator key, improvement, target)
PANELS: dict[str, tuple[str, str, str, str, str, str | None, float | None]] = {
    "screened": ("CTs screened per month", "count", "studies", "screened", "", None, None),
    "ppv": ("PPV of the AI flag by month", "rate", "studies", "acc_flagged_tp_n",
            "acc_flagged_tpfp_n", "up", None),
    "ai_unassessable": ("Eligible CTs the AI could not assess, by month", "rate", "studies",
                        "svc_unassessable", "svc_result", "down", None),
    "assessed_90d": ("FLS assessment within 90 days (FLS-DB KPI 4), by month of fracture",
                     "rate", "episodes", "assessed_90d_num", "assessed_90d_den", "up",
                     _target("assessed_90d")),
    "started_16w": ("Treatment started by follow-up (FLS-DB KPI 10), by month of fracture",
                    "rate", "episodes", "started_16w_num", "started_16w_den", "up",
                    _target("started_16w")),
    "spine_identification": ("Spinal fracture identification (FLS-DB KPI 3), by month",
                             "rate", "episodes", "spine_identification_num",
                             "spine_identification_den", "up",
                             _target("spine_identification")),
}


@dataclass
class SpcPanel:
    """One SPC chart as shown: the series, its limits and signals, or why it is not shown.

    Attributes
    ----------
    key, title, kind
        Panel name, title and ``count`` / ``rate``.
    chart
        One row per month (``month, value, centre, lcl, ucl, special_cause, point_type,
        rules, status``; status ``shown``, ``missing`` or ``suppressed``), or None when
        withheld.
    summary
        Variation and assurance icons and signals (None when withheld).
    message
        What the reader must know (withheld, months suppressed, chart type).
    chart_type
        ``xmr`` or ``p``.
    improvement, target
        Direction of improvement and target (a proportion for rates).
    annotations
        ``{month: text}`` drawn on the chart.
    """

    key: str
    title: str
    kind: str
    chart: pd.DataFrame | None
    summary: SpcSummary | None
    message: str = ""
    chart_type: str = "xmr"
    improvement: str | None = None
    target: float | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def percent(self) -> bool:
        return self.kind == "rate"

    def table(self) -> pd.DataFrame:
        """The chart as a table for display and CSV (values as text, exact)."""
        cols = ["month", "status", "value", "centre", "lcl", "ucl", "point type", "rules"]
        if self.chart is None:
            return pd.DataFrame(columns=cols)

        def fmt(v: Any) -> str:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return ""
            return f"{100 * v:.1f}%" if self.percent else f"{v:.1f}"

        c = self.chart
        return pd.DataFrame({
            "month": c["month"], "status": c["status"],
            "value": [fmt(v) for v in c["value"]], "centre": [fmt(v) for v in c["centre"]],
            "lcl": [fmt(v) for v in c["lcl"]], "ucl": [fmt(v) for v in c["ucl"]],
            "point type": c["point_type"].str.replace("_", " "), "rules": c["rules"],
        })


def binomial_fits(successes: np.ndarray, totals: np.ndarray) -> bool:
    """Laney's check: do binomial (p-chart) limits fit these monthly counts?

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n = np.full(24, 200); binomial_fits(rng.binomial(n, 0.3), n)
    True
    >>> p = np.repeat([0.2, 0.5], 12); binomial_fits(rng.binomial(n, p), n)
    False
    """
    s, n = np.asarray(successes, float), np.asarray(totals, float)
    ok = n > 0
    if ok.sum() < 3 or n[ok].sum() == 0:
        return False
    pbar = s[ok].sum() / n[ok].sum()
    if pbar in (0.0, 1.0):
        return False
    z = (s[ok] / n[ok] - pbar) / np.sqrt(pbar * (1 - pbar) / n[ok])
    sigma_z = float(np.mean(np.abs(np.diff(z)))) / 1.128
    return sigma_z <= P_CHART_MAX_SIGMA_Z


def _series(agg: Any, filters: Mapping[str, Any], source: str, num: str, den: str
            ) -> pd.DataFrame:
    if source == "episodes":
        by = agg.episodes_by_month(filters)
    else:
        by = agg.by("month", filters, all_values=True)
        by["acc_flagged_tpfp_n"] = by["acc_flagged_tp_n"] + by["acc_flagged_fp_n"]
    out = pd.DataFrame({"month": by["month"], "successes": by[num]})
    out["totals"] = by[den] if den else np.nan
    return out.reset_index(drop=True)


def _changes(months: list[str], changes: list[tuple[str, str]]
             ) -> tuple[list[str] | None, dict[str, str]]:
    """The first month on or after each change date, and its annotation."""
    at: list[str] = []
    notes: dict[str, str] = {}
    for date, label in sorted(changes):
        after = [m for m in months if m >= str(date)[:7]]
        if after and after[0] not in at and after[0] != months[0]:
            at.append(after[0])
            notes[after[0]] = f"{label or 'QI change'} ({date}): limits recalculated"
    return (at or None), notes


def spc_panel(agg: Any, key: str, filters: Mapping[str, Any] | None, mode: Mode, *,
              change_date: str | None = None, change_label: str = "QI change",
              changes: Sequence[tuple[str, str]] = (),
              annotations: Mapping[str, str] | None = None,
              rate_chart: str = "auto") -> SpcPanel:
    """One panel of :data:`PANELS` for a filter (see the module docstring).

    Parameters
    ----------
    agg
        An :class:`~fracture_qi.qi.aggregate.Aggregate`.
    key
        Which panel.
    filters
        The selection.
    mode
        ``publish`` or ``internal``.
    change_date, change_label
        A QI change (``YYYY-MM-DD``): limits recalculated from its month, annotated.
    changes
        More QI changes that recalculate the limits, as ``(date, label)`` pairs (the
        manifest's ``fls.changes`` with ``rebase: true``).
    annotations
        ``{date: text}`` notes drawn on the chart without recalculating the limits (a QI
        change whose effect is still being watched for).
    rate_chart
        ``auto`` (p-chart where binomial limits fit, internal view only), ``xmr`` or ``p``.
    """
    title, kind, source, num, den, improvement, target = PANELS[key]
    s = _series(agg, dict(filters or {}), source, num, den)
    months = s["month"].tolist()
    notes = {}
    for k, v in (annotations or {}).items():  # a date in a month annotates that month
        later = [m for m in months if m >= str(k)[:7]]
        if later:
            notes[later[0]] = f"{v} ({k})"
    all_changes = [(str(d), lab) for d, lab in changes]
    if change_date:
        all_changes.append((str(change_date), change_label))
    change, change_notes = _changes(months, all_changes)
    notes.update(change_notes)
    base = dict(key=key, title=title, kind=kind, improvement=improvement, target=target,
                annotations=notes)
    if kind == "count":
        if mode == "publish":
            return SpcPanel(chart=None, summary=None, message=(
                "Withheld in publication mode: counts are published rounded to 5, and limits "
                "on rounded counts would mislead. The internal view shows this chart."), **base)
        values = s["successes"].to_numpy(float)
        chart = xmr(values, index=months, change_at=change, improvement=improvement,
                    target=target, lower_bound=0, annotations=notes)
        status = np.full(len(months), "shown", dtype=object)
        return _panel(chart, status, "XmR chart of the monthly count; limits never below 0.",
                      "xmr", base)
    succ, tot = s["successes"].to_numpy(float), s["totals"].to_numpy(float)
    status = np.where(tot > 0, "shown", "missing").astype(object)
    if mode == "publish":
        hidden = np.array([tot[i] > 0 and rate_hidden(succ[i], tot[i], mode)
                           for i in range(len(tot))], dtype=bool)
        status[hidden] = "suppressed"
    use = status == "shown"
    if use.sum() < MIN_POINTS_TO_CHART:
        return SpcPanel(chart=None, summary=None, message=(
            f"Not charted: {int(use.sum())} month(s) with data that can be shown"
            + (" (months with 1-7 in the numerator or the rest of the denominator are "
               "suppressed in publication mode)" if mode == "publish" else "")), **base)
    chart_type = rate_chart
    if chart_type == "auto":
        chart_type = "p" if mode == "internal" and binomial_fits(succ[use], tot[use]) else "xmr"
    if mode == "publish":
        chart_type = "xmr"
    if chart_type == "p":
        chart = p_chart(np.where(use, succ, 0), np.where(use, tot, 0), index=months,
                        change_at=change, improvement=improvement, target=target,
                        annotations=notes)
        how = "p-chart (binomial limits fit these months)."
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(use, succ / np.where(tot > 0, tot, 1), np.nan)
        chart = xmr(values, index=months, change_at=change, improvement=improvement,
                    target=target, lower_bound=0, upper_bound=1, annotations=notes)
        how = "XmR chart of the monthly rate (Making Data Count)."
    n_sup = int((status == "suppressed").sum())
    n_mis = int((status == "missing").sum())
    msg = how
    if n_sup:
        msg += (f" {n_sup} month(s) suppressed in publication mode (1-7 in the numerator or "
                "the rest of the denominator): not shown and not in the limits.")
    if n_mis:
        msg += f" {n_mis} month(s) with no denominator shown as gaps."
    return _panel(chart, status, msg, chart_type, base)


def _panel(chart: pd.DataFrame, status: np.ndarray, message: str, chart_type: str,
           base: dict[str, Any]) -> SpcPanel:
    summary = chart.attrs["summary"]
    df = chart.reset_index().rename(columns={"index": "month"})
    df = df.rename(columns={df.columns[0]: "month"})
    df["status"] = status
    df.loc[df["status"] == "suppressed", "point_type"] = "suppressed"
    keep = ["month", "value", "centre", "lcl", "ucl", "special_cause", "point_type", "rules",
            "status", "phase"]
    return SpcPanel(chart=df[keep], summary=summary, message=message, chart_type=chart_type,
                    **base)


def spc_panels(agg: Any, filters: Mapping[str, Any] | None, mode: Mode, *,
               keys: tuple[str, ...] = tuple(PANELS), **kwargs: Any) -> list[SpcPanel]:
    """Every panel of *keys* for a filter (see :func:`spc_panel`)."""
    return [spc_panel(agg, k, filters, mode, **kwargs) for k in keys]


__all__ = ["PANELS", "P_CHART_MAX_SIGMA_Z", "SpcPanel", "binomial_fits", "spc_panel",
           "spc_panels"]
