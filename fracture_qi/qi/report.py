"""Headline figures for a run: funnel, FLS KPIs, accuracy, times and agreement, display-ready.

:func:`headline_summary` is what ``make demo`` prints and what the conference pack puts
first. It goes through the same path as the QI dashboard (an
:class:`~fracture_qi.qi.aggregate.Aggregate` of the selection, then
:mod:`fracture_qi.qi.published`), so the pack and the page agree figure for figure and
suppress the same cells. ``publish=True`` applies small-number suppression to every count,
percentage, interval and statistic; ``publish=False`` is the internal view.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from fracture_qi.outcomes.dataset import AnalysisData
from fracture_qi.qi import published as P
from fracture_qi.qi.aggregate import Aggregate
from fracture_qi.qi.suppression import Mode

logger = logging.getLogger(__name__)

# display tables keep their historical import path
accuracy_table = P.accuracy_table
agreement_table = P.agreement_table
times_table = P.times_table


def headline_summary(data: AnalysisData, publish: bool, *,
                     expected_caseload_per_year: float | None = None,
                     aggregate: Aggregate | None = None) -> dict[str, Any]:
    """The figures ``make demo`` prints and the pack puts first.

    Parameters
    ----------
    data
        From :func:`fracture_qi.outcomes.readmodel.load_analysis`.
    publish
        True: suppressed and rounded for publication; False: exact, for the FLS team.
    expected_caseload_per_year
        The FLS's local expected caseload (FLS-DB KPI 2); None: not reported.
    aggregate
        The aggregate of *data* if already built.

    Returns
    -------
    dict
        ``mode``, ``params`` (the selection), ``headline`` (``measure, value``), ``funnel``,
        ``kpis``, ``completeness``, ``service``, ``accuracy``, ``two_by_two``, ``times``,
        ``agreement`` (display DataFrames of strings) and, in internal mode only, ``raw``:
        the exact frames (funnel, kpis, accuracy, times, agreement, service).
    """
    mode: Mode = "publish" if publish else "internal"
    agg = aggregate or Aggregate.from_analysis(data)
    filters = {"model": data.model} if data.model else {}
    out = P.summary(agg, filters, mode, expected_caseload_per_year=expected_caseload_per_year,
                    whole_service=not data.sites)
    t, et = out.pop("totals"), out.pop("episode_totals")
    out["params"] = {**data.params, "model": data.model, "cutoff": str(data.cutoff)}
    if not publish:
        out["raw"] = {
            "funnel": P.funnel_rows(t),
            "kpis": P.kpi_rows(et, months=agg.months_in(filters),
                               expected_caseload_per_year=None if data.sites
                               else expected_caseload_per_year),
            "accuracy": P.accuracy_rows(t),
            "times": P.times_rows(agg.histograms(filters), t),
            "agreement": P.agreement_rows(t),
            "service": P.service_rows(t),
        }
    return out


def format_summary(summary: dict[str, Any], *, width: int = 110) -> str:
    """Plain text of :func:`headline_summary` for a terminal (what ``make demo`` prints)."""
    parts = [
        f"fracture-qi summary ({summary['mode']} view; model {summary['params'].get('model')},"
        f" data cut-off {summary['params'].get('cutoff')})",
        "",
    ]
    drop: dict[str, list[str]] = {
        "funnel": ["Definition"],
        "accuracy": ["Definition", "Method"],
        "kpis": ["Denominator is"],
        "service": ["Numerator is", "Denominator is"],
    }
    for key, title in (
        ("headline", "Headline"),
        ("funnel", "Funnel"),
        ("kpis", "FLS KPIs (the FLS-DB set)"),
        ("service", "Service measures"),
        ("accuracy", "Accuracy"),
        ("times", "Times"),
        ("agreement", "Agreement"),
    ):
        df: pd.DataFrame = summary[key]
        df = df.drop(columns=[c for c in drop.get(key, []) if c in df.columns])
        parts += [
            title,
            "-" * len(title),
            df.to_string(index=False, header=key != "headline", line_width=width),
            "",
        ]
    if summary["mode"] == "publish":
        parts.append("* = 1-7 (or a figure from fewer than 8 patients); counts rounded to 5.")
    parts.append(P.kpi_source_note())
    return "\n".join(parts)
