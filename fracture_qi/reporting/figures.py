"""Charts for the audit and the dashboard: one description, two renderings.

A :class:`Chart` describes what to draw (traces of x/y values, with optional error bars and
reference lines). :func:`to_plotly` renders it as an interactive plotly figure (the audit's
``figures/NAME.html`` and the dashboard's widgets) and :func:`to_matplotlib` as a static
figure (``figures/NAME.png``), so the two always show the same numbers. Static export uses
matplotlib because plotly's own static export needs kaleido and a browser, which a hospital
server rarely has.

Values hidden by small-number suppression are ``None`` in a trace and drawn as gaps; the
chart's ``note`` says so.

The builders (:func:`funnel_chart`, :func:`spc_chart`, :func:`proportion_chart`,
:func:`km_chart`, :func:`bar_chart`) take the tables the measures return.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

#: NHS identity colours (NHS England identity guidelines: colour palette)
NHS = {"blue": "#005EB8", "dark_blue": "#003087", "bright_blue": "#0072CE",
       "light_blue": "#41B6E6", "aqua_blue": "#00A9CE", "dark_grey": "#425563",
       "mid_grey": "#768692", "pale_grey": "#E8EDEE", "warm_yellow": "#FFB81C",
       "green": "#009639", "red": "#DA291C", "orange": "#ED8B00", "black": "#231F20"}
#: chart palette: NHS blues first, then colour-blind-distinguishable NHS colours
PALETTE = (NHS["blue"], NHS["warm_yellow"], NHS["green"], NHS["dark_grey"], NHS["aqua_blue"],
           NHS["orange"], NHS["dark_blue"], NHS["black"])
#: Making Data Count point colours (as NHSRplotthedots draws them)
MDC_COLOURS = {"common_cause": "#a6a6a6", "special_cause_improvement": "#00b0f0",
               "special_cause_concern": "#e46c0a", "special_cause_neutral_high": "#490092",
               "special_cause_neutral_low": "#490092", "target": "#de1b1b",
               "mean": "#000000", "limits": "#a6a6a6"}
SPECIAL_CAUSE = MDC_COLOURS["special_cause_concern"]
#: icon key -> (circle colour, text) for the variation and assurance icons
ICONS: dict[str, tuple[str, str]] = {
    "common_cause": ("#a6a6a6", "~"),
    "improvement_high": ("#00b0f0", "H\u25b2"), "improvement_low": ("#00b0f0", "L\u25bc"),
    "concern_high": ("#e46c0a", "H\u25b2"), "concern_low": ("#e46c0a", "L\u25bc"),
    "neutral_high": ("#490092", "H"), "neutral_low": ("#490092", "L"),
    "consistent_pass": ("#00b0f0", "P"), "consistent_fail": ("#e46c0a", "F"),
    "inconsistent": ("#a6a6a6", "?"),
}


@dataclass
class Trace:
    """One series of values.

    Attributes
    ----------
    name
        Legend label.
    x, y
        Values; ``None`` in *y* is a gap (e.g. a suppressed value).
    kind
        ``"bar"``, ``"barh"`` (x holds the values, y the categories), ``"line"``,
        ``"markers"``, ``"hollow"`` (open markers), ``"path"`` (a line without markers),
        ``"step"`` (a Kaplan-Meier style post-step) or ``"band"`` (a shaded
        area between *low* and *high*).
    low, high
        Error bar / band limits (same length as *y*), optional.
    color, dash
        Colour and line style (``"solid"``, ``"dash"``, ``"dot"``).
    """

    name: str
    x: list[Any]
    y: list[Any]
    kind: str = "line"
    low: list[Any] | None = None
    high: list[Any] | None = None
    color: str | None = None
    dash: str = "solid"


@dataclass
class Chart:
    """What to draw: a title, axis labels and traces."""

    title: str
    traces: list[Trace] = field(default_factory=list)
    xlabel: str = ""
    ylabel: str = ""
    note: str = ""
    ypercent: bool = False
    yrange: tuple[float, float] | None = None
    #: vertical notes: (x, text), e.g. a QI change date
    annotations: list[tuple[Any, str]] = field(default_factory=list)
    #: Making Data Count icon keys (:data:`ICONS`), drawn top right
    icons: list[str] = field(default_factory=list)
    #: the context line every output carries (filter, mode, cut-off, run, code version)
    caption: str = ""


def _clean(values: Sequence[Any] | None) -> list[Any] | None:
    if values is None:
        return None
    out: list[Any] = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif hasattr(v, "item"):
            out.append(v.item())
        else:
            out.append(v)
    return out


def to_plotly(chart: Chart, *, template: str | None = "plotly_white") -> Any:
    """Render *chart* as a :class:`plotly.graph_objects.Figure`.

    ``template=None`` leaves the template out (the dashboard sets it once per widget:
    merging a template on every redraw costs seconds).

    Examples
    --------
    >>> fig = to_plotly(Chart("t", [Trace("a", [1, 2], [3, None])]))
    >>> fig.data[0].y
    (3, None)
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, t in enumerate(chart.traces):
        color = t.color or PALETTE[i % len(PALETTE)]
        x, y, lo, hi = _clean(t.x), _clean(t.y), _clean(t.low), _clean(t.high)
        err: dict[str, Any] | None = None
        if lo is not None and hi is not None and y is not None and t.kind in ("bar", "markers", "line"):
            err = dict(
                type="data",
                symmetric=False,
                array=[None if (h is None or v is None) else h - v for h, v in zip(hi, y)],
                arrayminus=[None if (lo_ is None or v is None) else v - lo_ for lo_, v in zip(lo, y)],
                color="#444",
            )
        if t.kind == "bar":
            fig.add_trace(go.Bar(name=t.name, x=x, y=y, marker_color=color, error_y=err))
        elif t.kind == "barh":
            # plotly draws the first category at the bottom: reverse so the table order reads
            # top to bottom (an axis with autorange="reversed" is lost on widget redraws)
            xs, ys = list(reversed(x or [])), list(reversed(y or []))
            fig.add_trace(
                go.Bar(name=t.name, x=xs, y=ys, orientation="h", marker_color=color,
                       text=[("" if v is None else f"{v:g}") for v in xs], textposition="auto")
            )
        elif t.kind == "band":
            fig.add_trace(go.Scatter(x=x, y=hi, mode="lines", line=dict(width=0, shape="hv"),
                                     showlegend=False, hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=x, y=lo, mode="lines", line=dict(width=0, shape="hv"),
                                     fill="tonexty", fillcolor=_rgba(color, 0.2), name=t.name,
                                     hoverinfo="skip"))
        else:
            mode = {"line": "lines+markers", "markers": "markers", "hollow": "markers",
                    "step": "lines", "path": "lines"}[t.kind]
            line = dict(color=color, dash=t.dash, shape="hv" if t.kind == "step" else "linear")
            marker = dict(color=color, size=8)
            if t.kind == "hollow":
                marker = dict(color=color, size=9, symbol="circle-open")
            fig.add_trace(go.Scatter(name=t.name, x=x, y=y, mode=mode, line=line,
                                     marker=marker, error_y=err, connectgaps=False))
    title = chart.title + (f"<br><sup>{chart.note}</sup>" if chart.note else "")
    notes: list[dict[str, Any]] = []
    for x, text in chart.annotations:
        fig.add_vline(x=x, line=dict(color=NHS["dark_grey"], dash="dot", width=1))
        notes.append(dict(x=x, y=1.0, yref="paper", text=text, showarrow=False, xanchor="left",
                          yanchor="top", font=dict(size=10, color=NHS["dark_grey"])))
    for i, key in enumerate(chart.icons):
        colour, text = ICONS.get(key.split(":")[-1], ("#a6a6a6", "?"))
        notes.append(dict(x=1.0 - 0.055 * i, y=1.13, xref="paper", yref="paper", text=f"<b>{text}</b>",
                          showarrow=False, bgcolor=colour, bordercolor=colour, borderpad=5,
                          font=dict(color="white", size=12), xanchor="right",
                          hovertext=key.replace("_", " ")))
    if chart.caption:
        notes.append(dict(x=0, y=-0.32, xref="paper", yref="paper", text=chart.caption,
                          showarrow=False, xanchor="left", font=dict(size=9, color="#555")))
    fig.update_layout(
        title=title, xaxis_title=chart.xlabel, yaxis_title=chart.ylabel, barmode="group",
        legend=dict(orientation="h", y=-0.2), margin=dict(l=60, r=20, t=80, b=90 if chart.caption else 60),
        annotations=notes,
    )
    if template:
        fig.update_layout(template=template)
    if not chart.traces:  # nothing to chart: say why, without empty axes
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.add_annotation(text=chart.note or "nothing to chart", x=0.5, y=0.5, xref="paper",
                           yref="paper", showarrow=False, font=dict(size=13, color="#555"))
        return fig
    if chart.ypercent:
        fig.update_yaxes(tickformat=".0%")
    if chart.yrange:
        fig.update_yaxes(range=list(chart.yrange))
    return fig


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def to_matplotlib(chart: Chart, *, size: tuple[float, float] = (8.0, 4.5)) -> Any:
    """Render *chart* as a matplotlib Figure (Agg; no display needed).

    Examples
    --------
    >>> fig = to_matplotlib(Chart("t", [Trace("a", ["x", "y"], [3, None], kind="bar")]))
    >>> fig.axes[0].get_title()
    't'
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    categorical = any(t.kind == "bar" for t in chart.traces) and any(
        isinstance(v, str) for t in chart.traces for v in t.x
    )
    bars = [t for t in chart.traces if t.kind == "bar"]
    width = 0.8 / max(1, len(bars))
    cats: list[Any] = []
    if categorical:
        for t in bars:
            for v in t.x:
                if v not in cats:
                    cats.append(v)
    for i, t in enumerate(chart.traces):
        color = t.color or PALETTE[i % len(PALETTE)]
        y = [math.nan if v is None else v for v in (_clean(t.y) or [])]
        lo = [math.nan if v is None else v for v in (_clean(t.low) or [])] if t.low else None
        hi = [math.nan if v is None else v for v in (_clean(t.high) or [])] if t.high else None
        x = _clean(t.x) or []
        if t.kind == "bar":
            k = bars.index(t)
            pos = [cats.index(v) + (k - (len(bars) - 1) / 2) * width for v in x] if categorical else x
            ax.bar(pos, y, width=width if categorical else 0.8, color=color, label=t.name)
            if lo is not None and hi is not None:
                ax.errorbar(pos, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]],
                            fmt="none", ecolor="#444", capsize=3)
        elif t.kind == "barh":
            xs = [math.nan if v is None else v for v in x]
            ax.barh(range(len(y)), xs, color=color, label=t.name)
            ax.set_yticks(range(len(y)), [str(v) for v in (_clean(t.y) or [])])
            ax.invert_yaxis()
            for j, v in enumerate(xs):
                if not math.isnan(v):
                    ax.text(v, j, f" {v:g}", va="center", fontsize=8)
        elif t.kind == "band":
            ax.fill_between(x, lo or y, hi or y, step="post", color=color, alpha=0.2, label=t.name,
                            linewidth=0)
        elif t.kind == "step":
            ax.step(x, y, where="post", color=color, label=t.name,
                    linestyle={"dash": "--", "dot": ":"}.get(t.dash, "-"))
        else:
            style = {"dash": "--", "dot": ":"}.get(t.dash, "-")
            marker = "o" if t.kind in ("line", "markers", "hollow") else None  # "path": none
            ls = "none" if t.kind in ("markers", "hollow") else style
            ax.plot(x, y, color=color, linestyle=ls, marker=marker, markersize=4, label=t.name,
                    markerfacecolor="none" if t.kind == "hollow" else color)
            if lo is not None and hi is not None:
                ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]],
                            fmt="none", ecolor="#444", capsize=2)
    if categorical:
        ax.set_xticks(range(len(cats)), [str(c) for c in cats], rotation=20, ha="right")
    elif any(isinstance(v, str) for t in chart.traces if t.kind != "barh" for v in t.x):
        for lab in ax.get_xticklabels():
            lab.set_rotation(45)
            lab.set_horizontalalignment("right")
        # a long monthly axis: show every third label
        ticks = ax.get_xticks()
        if len(ticks) > 14:
            ax.set_xticks(ticks[::3])
    ax.set_title(chart.title)
    if not chart.traces:  # nothing to chart: say why, without empty axes
        ax.axis("off")
        ax.text(0.5, 0.5, "\n".join(_wrap(chart.note or "nothing to chart", 90)),
                ha="center", va="center", fontsize=10, color="#555", transform=ax.transAxes)
        if chart.caption:
            fig.text(0.01, 0.01, chart.caption, fontsize=6.5, color="#555", wrap=True)
        return fig
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    if chart.ypercent:
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    if chart.yrange:
        ax.set_ylim(*chart.yrange)
    ax.grid(True, axis="y", alpha=0.3)
    for x, text in chart.annotations:
        xs = _clean([x])[0]
        if any(isinstance(v, str) for t in chart.traces for v in t.x):
            cats = [str(v) for v in chart.traces[0].x] if chart.traces else []
            xs = cats.index(str(x)) if str(x) in cats else None
        if xs is not None:
            ax.axvline(xs, color=NHS["dark_grey"], linestyle=":", linewidth=1)
            ax.text(xs, 0.98, " " + text, transform=ax.get_xaxis_transform(), fontsize=7,
                    color=NHS["dark_grey"], va="top")
    for i, key in enumerate(chart.icons):
        colour, text = ICONS.get(key.split(":")[-1], ("#a6a6a6", "?"))
        ax.text(0.99 - 0.07 * i, 1.02, text.replace("\u25b2", "^").replace("\u25bc", "v"),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="white",
                fontweight="bold", bbox=dict(boxstyle="circle,pad=0.3", fc=colour, ec=colour))
    if len(chart.traces) > 4:  # many series (SPC): the legend below, off the data
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4,
                  frameon=False)
    elif len(chart.traces) > 1:
        ax.legend(fontsize=8, loc="best")
    footer = " ".join(x for x in (chart.note, chart.caption) if x)
    if footer:
        fig.text(0.01, 0.01, footer, fontsize=6.5, color="#555", wrap=True)
    fig.tight_layout(rect=(0, 0.05 if footer else 0, 1, 1))
    return fig


def save_chart(chart: Chart, folder: str | Path, name: str) -> dict[str, Path]:
    """Write *chart* as ``NAME.html`` (interactive) and ``NAME.png`` (static) in *folder*.

    The HTML files share one ``plotly.min.js`` in the folder (no CDN: reports are read
    offline). PNGs carry no software/timestamp metadata, so equal charts give equal bytes.

    Returns
    -------
    dict
        ``{"html": path, "png": path}``.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    html = out / f"{name}.html"
    png = out / f"{name}.png"
    fig = to_plotly(chart)
    fig.write_html(html, include_plotlyjs="directory", full_html=True,
                   div_id=f"fqi-{name}", config={"displaylogo": False})
    mfig = to_matplotlib(chart)
    mfig.savefig(png, format="png", dpi=100, metadata={"Software": None})
    return {"html": html, "png": png}


def png_bytes(chart: Chart) -> bytes:
    """The static PNG of *chart* as bytes (for downloads)."""
    import io

    buf = io.BytesIO()
    to_matplotlib(chart).savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


# --- builders -----------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    """A plotted number from a table cell: None for hidden/blank ("*", "", NaN)."""
    if v is None:
        return None
    if isinstance(v, str):
        s = v.strip().rstrip("%")
        if s in ("", "*"):
            return None
        try:
            return float(s)
        except ValueError:
            return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def funnel_chart(df: pd.DataFrame, *, stage: str = "stage", count: str = "count",
                 title: str = "From CT to bone therapy", note: str = "") -> Chart:
    """Horizontal bars, one per funnel stage (top to bottom in table order)."""
    return Chart(
        title=title,
        traces=[Trace("patients", [_num(v) for v in df[count]], list(df[stage]), kind="barh")],
        xlabel="studies / patients",
        note=note,
    )


def spc_chart(df: pd.DataFrame, *, x: str = "month", title: str = "", ylabel: str = "",
              percent: bool = False, note: str = "", target: float | None = None,
              icons: Sequence[str] = (), annotations: Sequence[tuple[Any, str]] = (),
              caption: str = "") -> Chart:
    """A Making Data Count chart from a table with ``value, centre, lcl, ucl`` and
    ``point_type`` per point (:mod:`fracture_qi.qi.spc`).

    Grey line and points for common cause; blue for special cause improvement, orange for
    concern, purple for neutral (the MDC colours); black mean, grey dashed process limits, a
    red dashed target; months without data (or suppressed) are gaps, marked at the foot of
    the chart; the variation and assurance icons top right; QI changes as dotted lines.
    """
    xs = [str(v) for v in df[x]]
    vals = [_num(v) for v in df["value"]]
    types = [str(t) for t in df.get("point_type", pd.Series(["common_cause"] * len(df)))]
    traces = [
        Trace("value", xs, vals, kind="path", color=MDC_COLOURS["common_cause"]),
        Trace("mean", xs, [_num(v) for v in df["centre"]], kind="path", color=MDC_COLOURS["mean"]),
        Trace("upper process limit", xs, [_num(v) for v in df["ucl"]], kind="path",
              color=MDC_COLOURS["limits"], dash="dash"),
        Trace("lower process limit", xs, [_num(v) for v in df["lcl"]], kind="path",
              color=MDC_COLOURS["limits"], dash="dash"),
    ]
    if target is not None:
        traces.append(Trace("target", xs, [target] * len(xs), kind="path",
                            color=MDC_COLOURS["target"], dash="dash"))
    names = {"common_cause": "common cause", "special_cause_improvement": "special cause: improvement",
             "special_cause_concern": "special cause: concern",
             "special_cause_neutral_high": "special cause (high)",
             "special_cause_neutral_low": "special cause (low)"}
    for kind, name in names.items():
        ys = [v if t == kind else None for v, t in zip(vals, types)]
        if any(v is not None for v in ys):
            traces.append(Trace(name, xs, ys, kind="markers", color=MDC_COLOURS[kind]))
    gaps = [t in ("missing", "suppressed") for t in types]
    if any(gaps):
        # a hollow mark on the mean line: the month is there, its value is not shown
        centre = [_num(v) for v in df["centre"]]
        traces.append(Trace("no data / suppressed (value not shown)", xs,
                            [(c if c is not None else 0.0) if g else None
                             for g, c in zip(gaps, centre)], kind="hollow",
                            color=NHS["mid_grey"]))
    return Chart(title=title, traces=traces, xlabel=x, ylabel=ylabel, note=note,
                 ypercent=percent, icons=list(icons), annotations=list(annotations),
                 caption=caption)


def panel_chart(panel: Any, caption: str = "") -> Chart:
    """The chart of a :class:`fracture_qi.qi.spc_panels.SpcPanel` (an empty chart with the
    reason when the panel is withheld)."""
    if panel.chart is None:
        return Chart(panel.title, note=panel.message, caption=caption,
                     ypercent=panel.percent)
    icons = []
    if panel.summary is not None:
        if panel.summary.variation:
            icons.append(f"variation:{panel.summary.variation}")
        if panel.summary.assurance:
            icons.append(f"assurance:{panel.summary.assurance}")
    label = panel.summary.variation_label if panel.summary is not None else ""
    note = " ".join(x for x in (label + "." if label else "", panel.message) if x)
    return spc_chart(panel.chart, title=panel.title, percent=panel.percent,
                     ylabel="proportion" if panel.percent else "studies", note=note,
                     target=panel.target, icons=icons,
                     annotations=sorted(panel.annotations.items()), caption=caption)


def proportion_chart(df: pd.DataFrame, *, category: str, estimate: str = "estimate",
                     low: str = "low", high: str = "high", title: str = "", ylabel: str = "",
                     note: str = "") -> Chart:
    """Bars of proportions by category with confidence-interval whiskers (0-100 %)."""
    return Chart(
        title=title,
        traces=[Trace(ylabel or "estimate", [str(v) for v in df[category]],
                      [_num(v) for v in df[estimate]], kind="bar",
                      low=[_num(v) for v in df[low]], high=[_num(v) for v in df[high]])],
        xlabel=category,
        ylabel=ylabel,
        ypercent=True,
        yrange=(0.0, 1.0),
        note=note,
    )


def bar_chart(df: pd.DataFrame, *, category: str, values: Sequence[str], title: str = "",
              ylabel: str = "", note: str = "") -> Chart:
    """Grouped bars: one trace per column in *values*."""
    return Chart(
        title=title,
        traces=[Trace(v, [str(c) for c in df[category]], [_num(x) for x in df[v]], kind="bar")
                for v in values],
        xlabel=category,
        ylabel=ylabel,
        note=note,
    )


def km_chart(df: pd.DataFrame, *, time: str = "days", value: str = "proportion_treated",
             low: str | None = "low", high: str | None = "high", group: str | None = None,
             title: str = "Time from CT to therapy start", note: str = "") -> Chart:
    """Kaplan-Meier style step curves (one per *group*), with a band where limits exist."""
    traces: list[Trace] = []
    groups = [(None, df)] if group is None else list(df.groupby(group, sort=True))
    for i, (g, part) in enumerate(groups):
        color = PALETTE[i % len(PALETTE)]
        name = "all" if g is None else str(g)
        if low and high and low in part and high in part:
            traces.append(Trace(f"{name} 95% CI", list(part[time]), list(part[value]), kind="band",
                                low=list(part[low]), high=list(part[high]), color=color))
        traces.append(Trace(name, list(part[time]), [_num(v) for v in part[value]], kind="step",
                            color=color))
    return Chart(title=title, traces=traces, xlabel="days from CT", ylabel="proportion started",
                 ypercent=True, yrange=(0.0, 1.0), note=note)
