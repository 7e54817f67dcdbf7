"""The Voila QI dashboard: filters, tiles, FLS-DB KPIs, SPC, funnel, agreement, times.

Served by ``fracture-qi dashboard --manifest M`` (see :mod:`fracture_qi.cli.dashboard`);
in JupyterLab run ``QIDashboard.from_manifest("data_manifest.yaml").show()``.

The page reads the database once into an aggregate cube (cached on disk, aggregates only;
see :mod:`fracture_qi.dashboards.cube`); every filter change slices the cube and redraws.
Every figure is computed by :mod:`fracture_qi.qi.published`, as the audit's conference pack
computes it. Everything shown is aggregate and suppressed (``mode="publish"``) unless the
operator starts it with ``mode="internal"``; the page and every download state the filter,
the mode, the data cut-off, the site, the code version and whether the data are synthetic.
Widget values arriving from the browser are checked against the known options before use:
Voila lets any client set any widget value.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from fracture_qi.dashboards import views as V
from fracture_qi.dashboards.cube import DIMENSIONS, Cube, cube_from_engine
from fracture_qi.dashboards.views import DashboardView
from fracture_qi.errors import ConfigError
from fracture_qi.qi.spc_panels import PANELS
from fracture_qi.reporting.figures import ICONS, Chart, to_plotly

Mode = Literal["publish", "internal"]

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
.fqi-tile-value {font-size:26px; font-weight:600; color:#005EB8;}
.fqi-note {font-size:12px; color:#555;}
.fqi-context {font-size:12px; color:#425563; margin:4px 0;}
.fqi-synthetic {background:#FFB81C; color:#231F20; font-weight:600; padding:4px 10px;
                border-radius:4px; display:inline-block; margin:4px 0;}
.fqi-icons {display:flex; gap:8px; align-items:center; margin:4px 0 0 0; font-size:12px;}
.fqi-icon {display:inline-flex; width:30px; height:30px; border-radius:15px; color:white;
           font-weight:700; align-items:center; justify-content:center; font-size:12px;}
.fqi-spc-message {font-size:12px; color:#425563; max-width:900px;}
table.fqi-table {border-collapse:collapse; font-size:13px;}
table.fqi-table th, table.fqi-table td {border:1px solid #ddd; padding:3px 8px; text-align:right;}
table.fqi-table th:first-child, table.fqi-table td:first-child {text-align:left;}
</style>
"""


class QIDashboard:
    """The dashboard over an aggregate :class:`Cube`.

    Parameters
    ----------
    cube
        The aggregate cube (:class:`fracture_qi.qi.aggregate.Aggregate`).
    mode
        ``"publish"`` (suppressed; the default) or ``"internal"``.
    title
        Page heading.
    change_date, change_label
        A QI change (``YYYY-MM-DD``) from which SPC limits are recalculated, or ``None``.
    changes
        QI changes that recalculate SPC limits, as ``(date, label)`` pairs.
    annotations
        Other QI changes, drawn on the SPC charts: ``{date: label}``.
    expected_caseload_per_year
        The FLS-DB local estimate (KPI 2), or None.
    code_version
        Shown on the page and in every download.
    """

    def __init__(self, cube: Cube, *, mode: Mode = "publish", title: str = "Fracture QI",
                 change_date: str | None = None, change_label: str = "QI change",
                 changes: list[tuple[str, str]] | None = None,
                 expected_caseload_per_year: float | None = None,
                 code_version: str = "", annotations: dict[str, str] | None = None) -> None:
        if mode not in ("publish", "internal"):
            raise ConfigError(f"dashboard mode {mode!r}: use 'publish' or 'internal'")
        self.cube = cube
        self.mode: Mode = mode
        self.title = title
        self.change_date = change_date
        self.change_label = change_label
        self.changes = list(changes or [])
        self.annotations = dict(annotations or {})
        self.expected_caseload_per_year = expected_caseload_per_year
        self.code_version = code_version
        self.widget: Any = None
        self.last_view: DashboardView | None = None
        self.last_render_s: float = 0.0

    @classmethod
    def from_manifest(cls, manifest: str | Path, *, mode: Mode = "publish",
                      cache: bool = True, refresh: bool = False, **kwargs: Any) -> QIDashboard:
        """Open the manifest's database and build (or load) the cube.

        The cube cache lives in the manifest's reports folder (``.cache/``): aggregates only.
        ``refresh=True`` rebuilds it from the database. The manifest's ``fls`` section gives
        the expected caseload and the QI changes; its ``synthetic``/``simulated`` flags label
        every output.
        """
        from fracture_qi.integrity import code_label
        from fracture_qi.reporting.run import open_manifest
        from fracture_qi.reporting.stamp import meta_from_manifest

        m, engine = open_manifest(manifest, migrate=False)
        cache_dir = Path(m.output_dir("reports")) / ".cache" if cache else None
        meta = meta_from_manifest(m)
        meta["name"] = meta["name"] or Path(manifest).parent.name
        cube = cube_from_engine(engine, cache_dir=cache_dir, refresh=refresh, meta=meta)
        title = kwargs.pop("title", None) or f"Fracture QI: {m.name or 'dashboard'}"
        kwargs.setdefault("changes", [(c.date.isoformat(), c.label) for c in m.fls.changes
                                      if c.rebase])
        kwargs.setdefault("annotations", {c.date.isoformat(): c.label for c in m.fls.changes
                                          if not c.rebase})
        kwargs.setdefault("expected_caseload_per_year", m.fls.expected_caseload_per_year)
        kwargs.setdefault("code_version", code_label())
        return cls(cube, mode=mode, title=title, **kwargs)

    # --- pure part ---------------------------------------------------------------------------

    def default_model(self) -> str:
        """The default model (:mod:`fracture_qi.screening.counting`), as the audit counts it."""
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

    def view(self, filters: Mapping[str, Any] | None = None,
             breakdown_dim: str = "site") -> DashboardView:
        """Compute everything shown for *filters* (checked first).

        Parameters
        ----------
        filters
            ``{"site": ..., "scanner": ..., "referral": ..., "model": ..., "month": (a, b)}``.
        breakdown_dim
            Dimension of the breakdown table.
        """
        f = self.clean_filters(dict(filters or {}))
        changes = list(self.changes)
        if self.change_date:
            changes.append((self.change_date, self.change_label))
        return V.build_view(self.cube, f, self.mode, breakdown_dim=breakdown_dim,
                            change_date=None, code_version=self.code_version,
                            expected_caseload_per_year=self.expected_caseload_per_year,
                            changes=changes, annotations=self.annotations)

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
        self._w_break = W.ToggleButtons(options=list(V.BREAKDOWN_DIMS), value="site",
                                        description="Break down by")
        self._context = W.HTML()
        self._tiles = W.HTML()
        self._tiles.add_class("fqi-tiles-box")
        self._status = W.HTML()
        html_boxes = ("funnel_table", "kpis", "service", "agreement", "times", "breakdown",
                      "monthly", "downloads")
        self._html = {k: W.HTML() for k in html_boxes}
        self._png_button = W.Button(description="Prepare PNG charts", icon="image")
        self._png_link = W.HTML()
        # Output areas showing plotly's own mime bundle (rendered by the jupyterlab-plotly
        # extension Voila loads): redrawing a FigureWidget that changes its number of traces
        # upsets plotly's front end ("indices must be valid indices for gd.data")
        beside_table = ("funnel", "breakdown")
        chart_names = ["funnel", "time_to_therapy", "breakdown"] + [f"spc_{k}" for k in PANELS]
        self._figs = {name: W.Output(layout=W.Layout(
                          min_height="380px", width="56%" if name in beside_table else "95%"))
                      for name in chart_names}
        for name, out in self._figs.items():
            out.add_class(f"fqi-chart-{name}")
        self._spc_notes = {k: W.HTML() for k in PANELS}
        for k, w in self._spc_notes.items():
            w.add_class(f"fqi-spc-note-{k}")
        for w in [self._w_period, self._w_break, *self._w.values()]:
            w.observe(self._on_change, names="value")
        self._png_button.on_click(self._on_png)
        filters = W.VBox([W.HBox([self._w_period]),
                          W.HBox([self._w["site"], self._w["scanner"]]),
                          W.HBox([self._w["referral"], self._w["model"]])])
        spc = []
        for k in PANELS:
            spc += [self._spc_notes[k], self._figs[f"spc_{k}"]]
        self.widget = W.VBox([
            W.HTML(CSS + f"<h2>{html.escape(self.title)}</h2>"), self._context,
            filters, self._tiles, self._status,
            W.HTML("<h3>FLS-DB key performance indicators</h3>"), self._html["kpis"],
            W.HTML("<h3>The service's own measures</h3>"), self._html["service"],
            W.HTML("<h3>Statistical process control by month (Making Data Count)</h3>"), *spc,
            W.HTML("<h3>From CT to bone therapy</h3>"),
            W.HBox([self._figs["funnel"], self._html["funnel_table"]]),
            W.HTML("<h3>AI versus nurse</h3>"), self._html["agreement"],
            W.HTML("<h3>Time along the pathway</h3>"), self._html["times"],
            self._figs["time_to_therapy"],
            W.HTML("<h3>Breakdowns</h3>"), self._w_break,
            W.HBox([self._figs["breakdown"], self._html["breakdown"]]),
            W.HTML("<h3>Monthly counts</h3>"), self._html["monthly"],
            W.HTML("<h3>Download what is shown</h3>"),
            W.HBox([self._html["downloads"], self._png_button, self._png_link]),
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
        self._context.value = _context_html(v.context, self.mode)
        self._tiles.value = _tiles_html(v.tiles)
        h = self._html
        h["funnel_table"].value = _table_html(v.funnel.drop(columns=["Definition"]), "fqi-funnel")
        h["kpis"].value = (_table_html(v.kpis, "fqi-kpis") + "<div class='fqi-note'>"
                           + html.escape(_kpi_note()) + "</div>")
        h["service"].value = _table_html(v.service, "fqi-service")
        h["agreement"].value = (_table_html(v.two_by_two, "fqi-agreement") + "<br>"
                                + _table_html(v.accuracy.drop(columns=["Definition"]),
                                              "fqi-accuracy")
                                + "<br>" + _table_html(v.agreement, "fqi-agreement-summary"))
        h["times"].value = _table_html(v.times, "fqi-times")
        h["breakdown"].value = _table_html(v.breakdown, "fqi-breakdown")
        h["monthly"].value = _table_html(v.monthly, "fqi-monthly")
        for p in v.spc:
            self._spc_notes[p.key].value = _spc_note_html(p)
        charts = dict(v.charts)
        charts["breakdown"] = charts.pop(f"by_{v.breakdown_dim}")
        for name, fig in self._figs.items():
            _redraw(fig, charts[name])
        csv = base64.b64encode(v.csv_zip()).decode()
        h["downloads"].value = (
            f"<a download='fracture-qi-dashboard-tables.zip' class='fqi-download-csv' "
            f"href='data:application/zip;base64,{csv}'>Download the tables (CSV, zip, with "
            f"context.csv)</a>")
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


def _kpi_note() -> str:
    from fracture_qi.qi.published import kpi_source_note

    return (kpi_source_note() + " KPIs follow the period and site filters only; with a site "
            "chosen, FLS patients not linked to a CT here (referrals from elsewhere) are left "
            "out, and KPI 2 is not shown (its expected caseload is the whole service's).")


def _redraw(out: Any, chart: Chart) -> None:
    """Show *chart* as an interactive plotly figure in the Output widget *out*.

    The figure is set as the widget's ``outputs`` state, not displayed inside it: Voila
    routes output captured during the notebook's execution through its executor, and with
    more than about seven charts of tens of kB each that stalled the page; as widget state
    it reaches the browser like any other widget value.
    """
    # no template: plotly_white alone is 10 kB of JSON per chart per redraw
    fig = to_plotly(chart, template=None)
    fig.update_layout(height=400, plot_bgcolor="white", paper_bgcolor="white",
                      font=dict(color="#2a3f5f"))
    fig.update_xaxes(gridcolor="#ebf0f8", linecolor="#c8d4e3")
    fig.update_yaxes(gridcolor="#ebf0f8", linecolor="#c8d4e3", zerolinecolor="#ebf0f8")
    spec = json.loads(fig.to_json())  # plain JSON types (numpy arrays become lists)
    bundle = {
        "application/vnd.plotly.v1+json": {"data": spec["data"], "layout": spec["layout"],
                                           "config": {"displaylogo": False}},
        "text/plain": chart.title,
    }
    out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)


def _context_html(ctx: Mapping[str, str], mode: str) -> str:
    banner = (f"<div class='fqi-synthetic'>{html.escape(ctx['data'])}</div>"
              if ctx.get("data") else "")
    note = ("Aggregate counts only; counts of 1-7 shown as *, others rounded to the nearest 5; "
            "rates from rounded counts." if mode == "publish" else
            "INTERNAL view: exact counts, not for publication.")
    items = " &middot; ".join(f"{html.escape(k)}: <b>{html.escape(v)}</b>"
                              for k, v in ctx.items() if k != "data")
    return (f"{banner}<div class='fqi-context'>{items}</div>"
            f"<div class='fqi-note'>{html.escape(note)}</div>")


def _icon_html(kind: str, key: str, label: str) -> str:
    colour, text = ICONS.get(key, ("#a6a6a6", "?"))
    return (f"<span class='fqi-icon fqi-icon-{kind} fqi-icon-{kind}-{key}' "
            f"style='background:{colour}' title='{html.escape(label)}'>{html.escape(text)}"
            f"</span><span>{html.escape(label)}</span>")


def _spc_note_html(panel: Any) -> str:
    parts = []
    if panel.summary is not None:
        if panel.summary.variation:
            parts.append(_icon_html("variation", panel.summary.variation,
                                    panel.summary.variation_label))
        if panel.summary.assurance:
            parts.append(_icon_html("assurance", panel.summary.assurance,
                                    panel.summary.assurance_label))
    signals = ""
    if panel.summary is not None and panel.summary.signals:
        shown = panel.summary.signals[-3:]
        signals = "<br>Signals: " + "; ".join(html.escape(x) for x in shown)
    return (f"<div class='fqi-spc fqi-spc-{panel.key}'><div class='fqi-icons'>"
            f"{''.join(parts)}</div><div class='fqi-spc-message'>"
            f"{html.escape(panel.message)}{signals}</div></div>")


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
