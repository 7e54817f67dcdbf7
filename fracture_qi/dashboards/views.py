"""What the QI dashboard shows for a filter: tables and charts, no arithmetic of its own.

Every figure comes from :mod:`fracture_qi.qi.published` (and the SPC panels of
:mod:`fracture_qi.qi.spc_panels`) applied to the aggregate, exactly as the audit's
conference pack computes them; this module only gathers them into a
:class:`DashboardView` with the charts and the context every download carries (filter,
mode, data cut-off, site or run name, code version, and whether the data are synthetic).
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from fracture_qi.qi import published as P
from fracture_qi.qi.aggregate import Aggregate
from fracture_qi.qi.spc_panels import SpcPanel, spc_panels
from fracture_qi.qi.suppression import Mode
from fracture_qi.reporting.export import table_bytes
from fracture_qi.reporting.figures import Chart, panel_chart, png_bytes
from fracture_qi.reporting.stamp import context, context_line
from fracture_qi.reporting.tables import breakdown_figure, funnel_figure, km_figure

#: breakdown dimensions offered on the page
BREAKDOWN_DIMS = ("site", "scanner", "referral", "model")
TILES = P.TILES


@dataclass
class DashboardView:
    """Everything the page shows for one filter (pure data; no widgets)."""

    filters: dict[str, Any]
    context: dict[str, str]
    tiles: dict[str, str]
    funnel: pd.DataFrame
    kpis: pd.DataFrame
    completeness: pd.DataFrame
    service: pd.DataFrame
    accuracy: pd.DataFrame
    two_by_two: pd.DataFrame
    agreement: pd.DataFrame
    times: pd.DataFrame
    km: pd.DataFrame
    breakdown: pd.DataFrame
    breakdown_dim: str
    monthly: pd.DataFrame
    spc: list[SpcPanel] = field(default_factory=list)
    charts: dict[str, Chart] = field(default_factory=dict)
    seconds: float = 0.0

    def tables(self) -> dict[str, pd.DataFrame]:
        """The shown tables by name (what the CSV download holds)."""
        out = {
            "funnel": self.funnel, "kpis": self.kpis, "kpi_completeness": self.completeness,
            "service_measures": self.service, "accuracy": self.accuracy,
            "ai_vs_nurse_2x2": self.two_by_two, "agreement": self.agreement,
            "times": self.times, "time_to_therapy": self.km,
            f"by_{self.breakdown_dim}": self.breakdown, "monthly": self.monthly,
        }
        for p in self.spc:
            out[f"spc_{p.key}"] = p.table()
        return out

    def context_table(self) -> pd.DataFrame:
        return pd.DataFrame([{"item": k, "value": v} for k, v in self.context.items()])

    def csv_zip(self) -> bytes:
        """A zip of one CSV per shown table, the tiles, and ``context.csv`` (filter, mode,
        data cut-off, run, code version, synthetic or not), all written by
        :func:`fracture_qi.reporting.export.table_bytes`."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("context.csv", table_bytes(self.context_table()))
            tiles = pd.DataFrame([{"tile": k, "value": v} for k, v in self.tiles.items()])
            z.writestr("tiles.csv", table_bytes(tiles))
            for name, df in self.tables().items():
                z.writestr(f"{name}.csv", table_bytes(df))
        return buf.getvalue()

    def png_zip(self) -> bytes:
        """A zip of one static PNG per chart, each captioned with the context."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, chart in self.charts.items():
                z.writestr(f"{name}.png", png_bytes(chart))
        return buf.getvalue()


def build_view(agg: Aggregate, filters: Mapping[str, Any], mode: Mode, *,
               breakdown_dim: str = "site", change_date: str | None = None,
               change_label: str = "QI change", code_version: str = "",
               expected_caseload_per_year: float | None = None,
               changes: list[tuple[str, str]] | None = None,
               annotations: Mapping[str, str] | None = None) -> DashboardView:
    """Compute everything the page shows for *filters* (already checked)."""
    t0 = time.perf_counter()
    f = dict(filters)
    ctx = context(filters=f, mode=mode, cutoff=agg.cutoff, code_version=code_version,
                  run=str(agg.meta.get("name") or "dashboard"), meta=agg.meta)
    cap = context_line(ctx)
    s = P.summary(agg, f, mode, expected_caseload_per_year=expected_caseload_per_year)
    t = s["totals"]
    ev, ce = agg.histograms(f)["ct_to_therapy"]
    km = P.km_published(ev, ce, mode)
    dim = breakdown_dim if breakdown_dim in BREAKDOWN_DIMS else "site"
    by_filters = {k: v for k, v in f.items() if k != dim or dim == "model"}
    brk = P.breakdown(agg.by(dim, by_filters), dim, mode)
    monthly = P.monthly_table(agg.by("month", f, all_values=True), mode)
    panels = spc_panels(agg, f, mode, change_date=change_date, change_label=change_label,
                        changes=changes or (), annotations=annotations)
    charts: dict[str, Chart] = {"funnel": funnel_figure(t, mode, cap),
                                "time_to_therapy": km_figure(km, mode, caption=cap),
                                f"by_{dim}": breakdown_figure(brk, dim, cap)}
    for p in panels:
        charts[f"spc_{p.key}"] = panel_chart(p, cap)
    return DashboardView(
        filters=f, context=ctx, tiles=P.tiles(t, mode), funnel=s["funnel"], kpis=s["kpis"],
        completeness=s["completeness"], service=s["service"], accuracy=s["accuracy"],
        two_by_two=s["two_by_two"], agreement=s["agreement"], times=s["times"], km=km,
        breakdown=brk, breakdown_dim=dim, monthly=monthly, spc=panels, charts=charts,
        seconds=time.perf_counter() - t0,
    )


__all__ = ["BREAKDOWN_DIMS", "DashboardView", "TILES", "build_view"]
