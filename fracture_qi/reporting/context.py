"""What an audit notebook holds on to: the selection, the data, and where outputs go.

Audit notebooks stay thin: a ``parameters`` cell, then::

    ctx = AuditContext.open(manifest, out_dir=out_dir, publish=publish, period_start=...,
                            period_end=..., sites=sites, model=model, flag_grade=flag_grade)
    ctx.header()
    ctx.table("funnel", funnel_table(funnel(ctx.data.studies, ctx.data.cutoff), mode=ctx.mode))
    ctx.figure("funnel", funnel_chart(...))

:meth:`AuditContext.table` writes ``tables/NAME.csv`` (byte-stable) and shows the table;
:meth:`AuditContext.figure` writes ``figures/NAME.html`` and ``figures/NAME.png`` and shows
the PNG. In publication mode a table is refused if it still holds raw counts (integer
columns): every published table must come through the suppression functions of
:mod:`fracture_qi.qi.suppression` (or :mod:`fracture_qi.qi.report`), which return strings.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fracture_qi.errors import ReportError
from fracture_qi.reporting.export import write_table
from fracture_qi.reporting.figures import Chart, save_chart

log = logging.getLogger(__name__)

#: columns that may stay numeric in a published table: they are not counts of patients
NON_COUNT_COLUMNS = frozenset({
    "value", "centre", "lcl", "ucl", "estimate", "low", "high", "days", "week",
    "proportion_treated", "kappa", "sigma", "moving_range", "phase",
})


@dataclass
class AuditContext:
    """The selection an audit notebook reports on, and its output folder.

    Attributes
    ----------
    manifest
        The loaded manifest.
    engine
        Its database.
    out_dir
        The run folder (``tables/`` and ``figures/`` are written under it).
    publish
        Publication mode (suppressed) or internal.
    params
        The selection: ``period``, ``sites``, ``model``, ``flag_grade``.
    """

    manifest: Any
    engine: Any
    out_dir: Path
    publish: bool
    params: dict[str, Any] = field(default_factory=dict)
    _data: Any = None
    _agg: Any = None
    _code: str = ""

    @classmethod
    def open(
        cls,
        manifest: str | Path,
        *,
        out_dir: str | Path = ".",
        publish: bool = True,
        period_start: str = "",
        period_end: str = "",
        sites: Sequence[str] | None = None,
        model: str = "",
        flag_grade: int | None = None,
        cutoff: str = "",
    ) -> AuditContext:
        """Open the manifest and database for a notebook.

        Parameters
        ----------
        manifest
            Path of ``data_manifest.yaml``.
        out_dir
            The run folder.
        publish
            Publication mode.
        period_start, period_end
            ISO dates (inclusive); empty: no limit on that side.
        sites
            Sites to include; empty: all.
        model
            ``model_id`` or ``model_id:version``; empty: the model with most results.
        flag_grade
            Genant grade at or above which a study counts as AI-flagged (0 or None: the
            screening run's own flag, as the dashboard counts).
        cutoff
            Data cut-off (ISO date): later events count as not yet happened. Empty: the end of
            the period, or the latest date in the data (as
            :func:`~fracture_qi.outcomes.dataset.load_analysis` decides).

        Returns
        -------
        AuditContext
        """
        from fracture_qi.reporting.run import open_manifest

        m, engine = open_manifest(manifest)
        period = None
        if period_start or period_end:
            first, last = _study_date_range(engine)
            period = (
                dt.date.fromisoformat(period_start) if period_start else first,
                dt.date.fromisoformat(period_end) if period_end else last,
            )
        params = {"period": period, "sites": list(sites) if sites else None,
                  "model": model or None, "flag_grade": flag_grade or None,
                  "cutoff": dt.date.fromisoformat(cutoff) if cutoff else None}
        out = Path(out_dir)
        for sub in ("tables", "figures"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        return cls(m, engine, out, publish, params)

    @property
    def agg(self) -> Any:
        """The :class:`~fracture_qi.qi.aggregate.Aggregate` of the selection: the one path
        the dashboard uses too, so a figure here equals the dashboard's for the same filter."""
        if self._agg is None:
            from fracture_qi.qi.aggregate import Aggregate

            self._agg = Aggregate.from_analysis(self.data, meta=self.meta)
        return self._agg

    @property
    def filters(self) -> dict[str, Any]:
        """The selection as an aggregate filter (the data are already the period and sites)."""
        return {"model": self.data.model} if self.data.model else {}

    @property
    def totals(self) -> dict[str, float]:
        """Study counts of the selection (:meth:`Aggregate.totals`)."""
        return self.agg.totals(self.filters)

    @property
    def episode_totals(self) -> dict[str, float]:
        """FLS episode (KPI) counts of the selection."""
        return self.agg.episode_totals(self.filters)

    @property
    def expected_caseload(self) -> int | None:
        """The manifest's ``fls.expected_caseload_per_year`` (FLS-DB KPI 2), or None."""
        fls = getattr(self.manifest, "fls", None)
        return getattr(fls, "expected_caseload_per_year", None)

    @property
    def changes(self) -> list[tuple[str, str]]:
        """The manifest's QI changes that recalculate SPC limits, as ``(date, label)``."""
        fls = getattr(self.manifest, "fls", None)
        return [(c.date.isoformat(), c.label) for c in getattr(fls, "changes", []) if c.rebase]

    @property
    def annotations(self) -> dict[str, str]:
        """The manifest's other QI changes, drawn on the SPC charts: ``{date: label}``."""
        fls = getattr(self.manifest, "fls", None)
        return {c.date.isoformat(): c.label for c in getattr(fls, "changes", [])
                if not c.rebase}

    @property
    def meta(self) -> dict[str, Any]:
        """Name and synthetic/simulated flags of the site (labels every output)."""
        from fracture_qi.reporting.stamp import meta_from_manifest

        return meta_from_manifest(self.manifest)

    @property
    def code_version(self) -> str:
        if not self._code:
            from fracture_qi.integrity import code_label

            self._code = code_label()
        return self._code

    @property
    def context(self) -> dict[str, str]:
        """What every page, table and chart of the run states."""
        from fracture_qi.reporting.stamp import context

        d = self.data
        filters: dict[str, Any] = {}
        if d.period:
            filters["month"] = (str(d.period[0]), str(d.period[1]))
        if d.sites:
            filters["site"] = list(d.sites)
        filters["model"] = d.model or "none"
        return context(filters=filters, mode=self.mode, cutoff=str(d.cutoff),
                       run=self.out_dir.resolve().name, code_version=self.code_version,
                       meta=self.meta)

    @property
    def caption(self) -> str:
        """:attr:`context` as one line (chart captions)."""
        from fracture_qi.reporting.stamp import context_line

        return context_line(self.context)

    @property
    def mode(self) -> str:
        """``"publish"`` or ``"internal"`` (the argument the suppression functions take)."""
        return "publish" if self.publish else "internal"

    @property
    def data(self) -> Any:
        """The :class:`~fracture_qi.outcomes.dataset.AnalysisData` of the selection (loaded once)."""
        if self._data is None:
            from fracture_qi.outcomes.readmodel import load_analysis

            self._data = load_analysis(self.engine, **self.params)
        return self._data

    def header(self) -> Any:
        """A Markdown block describing the selection (no identifiers)."""
        from IPython.display import Markdown

        d = self.data
        period = (f"{d.period[0]} to {d.period[1]}" if d.period else "all dates")
        sites = ", ".join(d.sites) if d.sites else "all sites"
        mode = ("**Publication mode**: counts of 1-7 are shown as \\*, other counts are "
                "rounded to the nearest 5, rates come from the rounded counts, and statistics "
                "from fewer than 8 patients are hidden."
                if self.publish else
                "**Internal mode**: exact counts, for the FLS team only; not for publication.")
        ctx = self.context
        banner = f"**{ctx['data'].upper()}**\n\n" if ctx.get("data") else ""
        grade = d.flag_grade or "the screening run's own flag"
        return Markdown(
            f"{banner}Run **{ctx['run']}** · code {ctx['code version']} · data cut-off "
            f"{d.cutoff}\n\n"
            f"Period: {period} · Sites: {sites} · AI model: {d.model or 'none'} · "
            f"Flag grade: {grade} · Data cut-off: {d.cutoff}\n\n"
            f"{mode}"
        )

    def table(self, name: str, df: pd.DataFrame, *, sort_by: Sequence[str] | None = None,
              caption: str | None = None) -> Any:
        """Write ``tables/NAME.csv`` and return the table for display.

        Parameters
        ----------
        name
            File stem (letters, digits, ``_`` and ``-``).
        df
            A display table (strings for counts in publication mode).
        sort_by
            Columns for a stable sort (default: the order given).
        caption
            Shown above the table.

        Raises
        ------
        ReportError
            In publication mode, when an integer column that is not a known statistic is
            present (a raw count slipped past suppression).
        """
        _check_name(name)
        if self.publish:
            raw = [c for c in df.columns
                   if pd.api.types.is_integer_dtype(df[c]) and str(c) not in NON_COUNT_COLUMNS]
            if raw:
                raise ReportError(
                    f"table {name!r} holds raw counts in {raw} in publication mode. Fix: "
                    "format it with fracture_qi.qi.suppression.suppress_table(..., mode=ctx.mode)"
                )
        write_table(df, self.out_dir / "tables" / f"{name}.csv", sort_by=sort_by)
        from IPython.display import HTML

        cap = f"<p><b>{caption}</b></p>" if caption else ""
        foot = f"<p style='font-size:11px;color:#555'>{_escape(self.caption)}</p>"
        return HTML(cap + df.to_html(index=False, border=0, na_rep="", float_format=_fmt) + foot)

    def figure(self, name: str, chart: Chart) -> Any:
        """Write ``figures/NAME.html`` and ``.png``; return the PNG for display."""
        _check_name(name)
        if not chart.caption:
            chart.caption = self.caption
        paths = save_chart(chart, self.out_dir / "figures", name)
        from IPython.display import Image

        return Image(filename=str(paths["png"]))


def _study_date_range(engine: Any) -> tuple[dt.date, dt.date]:
    """First and last study date in the database (today when there is none): the open end of
    a period given on one side only."""
    from sqlalchemy import func, select

    from fracture_qi.store import schema as S

    with engine.connect() as c:
        lo, hi = c.execute(select(func.min(S.Study.study_date), func.max(S.Study.study_date))).one()
    today = dt.date.today()
    return (lo or today, hi or today)


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ReportError(f"output name {name!r}: use letters, digits, '_' and '-' only")
