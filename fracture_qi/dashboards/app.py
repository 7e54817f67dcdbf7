"""The Voila QI dashboard: filters, headline tiles, funnel, SPC, agreement, time to therapy.

Served by ``fracture-qi dashboard --manifest M`` (see :mod:`fracture_qi.cli.dashboard`);
in JupyterLab run ``QIDashboard.from_manifest("data_manifest.yaml").show()``.

The page reads the database once into an aggregate cube (cached on disk, aggregates only;
see :mod:`fracture_qi.dashboards.cube`); every filter change slices the cube and redraws.
Everything shown is aggregate and suppressed (``mode="publish"``) unless the operator
starts it with ``mode="internal"``. Widget values arriving from the browser are checked
against the known options before use: Voila lets any client set any widget value.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fracture_qi.csvsafe import frame_to_csv
from fracture_qi.dashboards import views as V
from fracture_qi.dashboards.cube import DIMENSIONS, Cube, cube_from_engine
from fracture_qi.errors import ConfigError
from fracture_qi.reporting.figures import Chart, png_bytes, to_plotly

log = logging.getLogger(__name__)

ALL = "All"
#: the dimension the breakdown shows first
BREAKDOWN_DIMS = ("site", "scanner", "referral", "model")
CSS = """
<style>
.fqi-tiles {display:flex; gap:12px; flex-wrap:wrap; margin:8px 0;}
.fqi-tile {border:1px solid #ccd; border-radius:8px; padding:10px 16px; min-width:150px;
           background:#f7f9fc;}
.fqi-tile-label {font-size:12px; color:#456; text-transform:uppercase; letter-spacing:.03em;}
.fqi-tile-value {font-size:26px; font-weight:600; color:#0b3d6e;}
.fqi-note {font-size:12px; color:#555;}
table.fqi-table {border-collapse:collapse; font-size:13px;}
table.fqi-table th, table.fqi-table td {border:1px solid #ddd; padding:3px 8px; text-align:right;}
table.fqi-table th:first-child, table.fqi-table td:first-child {text-align:left;}
</style>
"""


@dataclass
class DashboardView:
    """Everything the page shows for one filter (pure data; no widgets)."""

    filters: dict[str, Any]
    tiles: dict[str, str]
    funnel: pd.DataFrame
    monthly: pd.DataFrame
    agreement_table: pd.DataFrame
    agreement_summary: pd.DataFrame
    km: pd.DataFrame
    breakdown: pd.DataFrame
    breakdown_dim: str
    spc_ppv: pd.DataFrame
    spc_screened: pd.DataFrame
    charts: dict[str, Chart] = field(default_factory=dict)
    seconds: float = 0.0

    def tables(self) -> dict[str, pd.DataFrame]:
        """The shown tables by name (what the CSV download holds)."""
        return {
            "funnel": self.funnel, "monthly": self.monthly,
            "agreement": self.agreement_table, "agreement_summary": self.agreement_summary,
            "time_to_therapy": self.km, f"by_{self.breakdown_dim}": self.breakdown,
            "spc_ppv": _spc_cols(self.spc_ppv), "spc_screened": _spc_cols(self.spc_screened),
        }

    def csv_zip(self) -> bytes:
        """A zip of one CSV per shown table, plus the filters used."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            filt = pd.DataFrame([{"filter": k, "value": str(v)} for k, v in self.filters.items()])
            z.writestr("filters.csv", frame_to_csv(filt))
            tile_df = pd.DataFrame([{"tile": k, "value": v} for k, v in self.tiles.items()])
            z.writestr("tiles.csv", frame_to_csv(tile_df))
            for name, df in self.tables().items():
                z.writestr(f"{name}.csv", frame_to_csv(df, float_format="%.4f"))
        return buf.getvalue()

    def png_zip(self) -> bytes:
        """A zip of one static PNG per chart."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, chart in self.charts.items():
                z.writestr(f"{name}.png", png_bytes(chart))
        return buf.getvalue()


def _spc_cols(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("month", "value", "centre", "lcl", "ucl", "special_cause", "rules")
            if c in df.columns]
    return df[cols]


class QIDashboard:
    """The dashboard over a :class:`Cube`.

    Parameters
    ----------
    cube
        The aggregate cube.
    mode
        ``"publish"`` (suppressed; the default) or ``"internal"``.
    title
        Page heading.
    change_date
        QI change date (``YYYY-MM-DD``) splitting the SPC limits, or ``None``.
    """

    def __init__(self, cube: Cube, *, mode: V.Mode = "publish", title: str = "Fracture QI",
                 change_date: str | None = None) -> None:
        if mode not in ("publish", "internal"):
            raise ConfigError(f"dashboard mode {mode!r}: use 'publish' or 'internal'")
        self.cube = cube
        self.mode: V.Mode = mode
        self.title = title
        self.change_date = change_date
        self.widget: Any = None
        self.last_view: DashboardView | None = None
        self.last_render_s: float = 0.0

    @classmethod
    def from_manifest(cls, manifest: str | Path, *, mode: V.Mode = "publish",
                      cache: bool = True, refresh: bool = False, **kwargs: Any) -> QIDashboard:
        """Open the manifest's database and build (or load) the cube.

        The cube cache lives in the manifest's reports folder (``.cache/``): aggregates only.
        ``refresh=True`` rebuilds it from the database.
        """
        from fracture_qi.reporting.run import open_manifest

        m, engine = open_manifest(manifest, migrate=False)
        cache_dir = Path(m.output_dir("reports")) / ".cache" if cache else None
        cube = cube_from_engine(engine, cache_dir=cache_dir, refresh=refresh)
        title = kwargs.pop("title", None) or f"Fracture QI: {getattr(m, 'name', None) or 'dashboard'}"
        return cls(cube, mode=mode, title=title, **kwargs)

    # --- pure part ---------------------------------------------------------------------------

    def default_model(self) -> str:
        """The model ``load_analysis`` picks by default (most results, latest)."""
        if self.cube.default_model in self.cube.options["model"]:
            return self.cube.default_model
        return self.cube.options["model"][0] if self.cube.options["model"] else ALL

    def clean_filters(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Keep only known dimensions and known values (browser input is untrusted).

        Raises
        ------
        ValueError
            For an unknown dimension or value.
        """
        out: dict[str, Any] = {}
        for dim, val in raw.items():
            if dim not in DIMENSIONS:
                raise ValueError(f"unknown filter {dim!r}")
            opts = self.cube.options[dim]
            if dim == "month" and isinstance(val, (tuple, list)) and len(val) == 2:
                lo, hi = (str(v) for v in val)
                if lo not in opts or hi not in opts:
                    raise ValueError(f"month range {val!r} outside the data")
                out[dim] = (min(lo, hi), max(lo, hi))
            elif val in (None, ALL):
                out[dim] = ALL
            elif str(val) in opts:
                out[dim] = str(val)
            else:
                raise ValueError(f"{dim} {val!r} is not in the data")
        if out.get("model", ALL) == ALL:
            out["model"] = self.default_model()  # a study counts once per model
        return out

    def view(self, filters: Mapping[str, Any] | None = None, breakdown_dim: str = "site") -> DashboardView:
        """Compute everything shown for *filters*.

        Parameters
        ----------
        filters
            ``{"site": ..., "scanner": ..., "referral": ..., "model": ..., "month": (a, b)}``.
        breakdown_dim
            Dimension of the breakdown table.

        Returns
        -------
        DashboardView
        """
        t0 = time.perf_counter()
        f = self.clean_filters(dict(filters or {}))
        mode = self.mode
        tot = self.cube.totals(f)
        agree_t, agree_s = V.agreement(tot, mode)
        km = V.km(self.cube, f, mode)
        dim = breakdown_dim if breakdown_dim in BREAKDOWN_DIMS else "site"
        brk = V.breakdown(self.cube, dim, f, mode)
        sppv = V.spc_ppv(self.cube, f, mode, self.change_date)
        sscr = V.spc_screened(self.cube, f, mode, self.change_date)
        charts = {
            "funnel": V.funnel_figure(tot, mode),
            "spc_ppv": V.spc_figure(sppv, "PPV of the AI flag by month (p-chart)", True),
            "spc_screened": V.spc_figure(sscr, "CTs screened per month (XmR)", False),
            "time_to_therapy": V.km_figure(km, mode),
            f"by_{dim}": V.breakdown_figure(brk, dim),
        }
        return DashboardView(
            filters=f, tiles=V.tiles(tot, mode), funnel=V.funnel_table(tot, mode),
            monthly=V.monthly(self.cube, f, mode), agreement_table=agree_t,
            agreement_summary=agree_s, km=km, breakdown=brk, breakdown_dim=dim,
            spc_ppv=sppv, spc_screened=sscr, charts=charts, seconds=time.perf_counter() - t0,
        )

    # --- widgets -----------------------------------------------------------------------------

    def build(self) -> Any:
        """Create the widget tree (call :meth:`show` in a notebook)."""
        import ipywidgets as W
        months = self.cube.options["month"] or ["(no data)"]
        self._w_period = W.SelectionRangeSlider(
            options=months, index=(0, len(months) - 1), description="Period",
            layout=W.Layout(width="520px"), continuous_update=False)
        self._w = {}
        for dim, label in (("site", "Site"), ("scanner", "Scanner"),
                           ("referral", "Referral"), ("model", "AI model")):
            opts = ([ALL] if dim != "model" else []) + self.cube.options[dim]
            value = self.default_model() if dim == "model" else ALL
            self._w[dim] = W.Dropdown(options=opts, value=value if value in opts else opts[0],
                                      description=label, layout=W.Layout(width="300px"))
            self._w[dim].add_class(f"fqi-filter-{dim}")
        self._w_break = W.ToggleButtons(options=list(BREAKDOWN_DIMS), value="site",
                                        description="Break down by")
        self._tiles = W.HTML()
        self._tiles.add_class("fqi-tiles-box")
        self._status = W.HTML()
        self._funnel_table = W.HTML()
        self._agreement = W.HTML()
        self._breakdown = W.HTML()
        self._monthly = W.HTML()
        self._downloads = W.HTML()
        self._png_button = W.Button(description="Prepare PNG charts", icon="image")
        self._png_link = W.HTML()
        # Output areas showing plotly's own mime bundle (rendered by the jupyterlab-plotly
        # extension Voila loads): redrawing a FigureWidget that changes its number of traces
        # upsets plotly's front end ("indices must be valid indices for gd.data")
        beside_table = ("funnel", "breakdown")  # these share a row with their table
        self._figs = {name: W.Output(layout=W.Layout(
                          min_height="380px", width="56%" if name in beside_table else "95%"))
                      for name in ("funnel", "spc_ppv", "spc_screened", "time_to_therapy",
                                   "breakdown")}
        for name, out in self._figs.items():
            out.add_class(f"fqi-chart-{name}")
        for w in [self._w_period, self._w_break, *self._w.values()]:
            w.observe(self._on_change, names="value")
        self._png_button.on_click(self._on_png)
        filters = W.VBox([W.HBox([self._w_period]),
                          W.HBox([self._w["site"], self._w["scanner"]]),
                          W.HBox([self._w["referral"], self._w["model"]])])
        note = ("Aggregate counts only. " + V.NOTE_PUBLISH) if self.mode == "publish" else (
            "INTERNAL view: exact counts, not for publication.")
        self.widget = W.VBox([
            W.HTML(CSS + f"<h2>{html.escape(self.title)}</h2><div class='fqi-note'>{note}</div>"),
            filters, self._tiles, self._status,
            W.HTML("<h3>From CT to bone therapy</h3>"),
            W.HBox([self._figs["funnel"], self._funnel_table]),
            W.HTML("<h3>Statistical process control by month</h3>"),
            self._figs["spc_ppv"], self._figs["spc_screened"],
            W.HTML("<h3>AI versus nurse</h3>"), self._agreement,
            W.HTML("<h3>Time from CT to therapy</h3>"), self._figs["time_to_therapy"],
            W.HTML("<h3>Breakdowns</h3>"), self._w_break,
            W.HBox([self._figs["breakdown"], self._breakdown]),
            W.HTML("<h3>Monthly counts</h3>"), self._monthly,
            W.HTML("<h3>Download what is shown</h3>"),
            W.HBox([self._downloads, self._png_button, self._png_link]),
        ])
        self.widget.add_class("fqi-dashboard")
        self.render()
        return self.widget

    def current_filters(self) -> dict[str, Any]:
        """Filters as set in the widgets."""
        f: dict[str, Any] = {d: w.value for d, w in self._w.items()}
        f["month"] = tuple(self._w_period.value)
        return f

    def _on_change(self, _change: Any) -> None:
        self.render()

    def render(self) -> DashboardView | None:
        """Recompute the view for the current widget values and update the page."""
        t0 = time.perf_counter()
        try:
            v = self.view(self.current_filters(), self._w_break.value)
        except ValueError as e:  # a client sent a value we do not know: ignore, say so
            log.warning("dashboard filter refused: %s", e)
            self._status.value = "<div class='fqi-note'>That filter value is not available.</div>"
            return None
        self.last_view = v
        self._tiles.value = _tiles_html(v.tiles)
        self._funnel_table.value = _table_html(v.funnel, "fqi-funnel")
        self._agreement.value = (_table_html(v.agreement_table, "fqi-agreement")
                                 + "<br>" + _table_html(v.agreement_summary, "fqi-agreement-summary"))
        self._breakdown.value = _table_html(v.breakdown, "fqi-breakdown")
        self._monthly.value = _table_html(v.monthly, "fqi-monthly")
        charts = dict(v.charts)
        charts["breakdown"] = charts.pop(f"by_{v.breakdown_dim}")
        for name, fig in self._figs.items():
            _redraw(fig, charts[name])
        csv = base64.b64encode(v.csv_zip()).decode()
        self._downloads.value = (
            f"<a download='fracture-qi-dashboard-tables.zip' class='fqi-download-csv' "
            f"href='data:application/zip;base64,{csv}'>Download the tables (CSV, zip)</a>")
        self._png_link.value = ""
        self.last_render_s = time.perf_counter() - t0
        self._status.value = (f"<div class='fqi-note fqi-status'>Data up to {self.cube.cutoff}; "
                              f"updated in {self.last_render_s:.2f} s.</div>")
        return v

    def _on_png(self, _button: Any) -> None:
        if self.last_view is None:
            return
        data = base64.b64encode(self.last_view.png_zip()).decode()
        self._png_link.value = (
            f"<a download='fracture-qi-dashboard-charts.zip' class='fqi-download-png' "
            f"href='data:application/zip;base64,{data}'>Download the charts (PNG, zip)</a>")

    def show(self) -> None:
        """Display the dashboard (in Voila or JupyterLab)."""
        from IPython.display import display

        display(self.widget if self.widget is not None else self.build())


def _redraw(out: Any, chart: Chart) -> None:
    """Show *chart* as an interactive plotly figure in the Output widget *out*."""
    from IPython.display import display

    # no template: plotly_white alone is 10 kB of JSON per chart per redraw
    fig = to_plotly(chart, template=None)
    fig.update_layout(height=380, plot_bgcolor="white", paper_bgcolor="white",
                      font=dict(color="#2a3f5f"))
    fig.update_xaxes(gridcolor="#ebf0f8", linecolor="#c8d4e3")
    fig.update_yaxes(gridcolor="#ebf0f8", linecolor="#c8d4e3", zerolinecolor="#ebf0f8")
    spec = fig.to_plotly_json()
    bundle = {
        "application/vnd.plotly.v1+json": {"data": spec["data"], "layout": spec["layout"],
                                           "config": {"displaylogo": False}},
        "text/plain": chart.title,
    }
    with out:
        out.clear_output(wait=True)
        display(bundle, raw=True)


def _tiles_html(t: Mapping[str, str]) -> str:
    parts = ["<div class='fqi-tiles'>"]
    for key, label in V.TILES:
        parts.append(
            f"<div class='fqi-tile' data-key='{key}'><div class='fqi-tile-label'>{html.escape(label)}"
            f"</div><div class='fqi-tile-value' id='fqi-tile-{key}'>{html.escape(t.get(key, ''))}</div></div>")
    parts.append("</div>")
    return "".join(parts)


def _table_html(df: pd.DataFrame, css_id: str) -> str:
    return df.to_html(index=False, classes=["fqi-table", css_id], border=0, na_rep="",
                      escape=True, float_format=lambda x: f"{x:.3f}")
