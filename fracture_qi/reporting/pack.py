"""The conference pack as slides: a PPTX deck (python-pptx) and the same deck as a PDF.

Built by :func:`fracture_qi.reporting.run.run_audit` after the notebooks, from the run's
own outputs: the ``tables/pack_*.csv`` and ``tables/kpis.csv`` tables (already suppressed in
publication mode) and the ``figures/*.png`` charts. So the slides hold exactly the numbers of
the run's tables, and suppression holds on them as everywhere else. One slide per headline,
chart and table; the speaker notes carry the definitions and the provenance (run, code
version, database state, who ran it, where and how). NHS identity colours; every slide's
footer states the context (mode, data cut-off, run, code version, and "synthetic demo data"
where it is).

The PDF is drawn with matplotlib (already a dependency; its PDF backend needs nothing
else), one 16:9 page per slide, with the same text, tables and charts.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fracture_qi.reporting.figures import NHS

log = logging.getLogger(__name__)

#: slide size (16:9), inches
SLIDE_W, SLIDE_H = 13.333, 7.5
#: where the pack goes in a run folder
PACK_DIR = "slides"
PPTX_NAME = "conference-pack.pptx"
PDF_NAME = "conference-pack.pdf"
#: a table wider than this many columns drops its longest text columns to the notes
MAX_TABLE_COLS = 7
#: band colours of the KPI table (RAG)
BAND_COLOURS = {"green": NHS["green"], "amber": NHS["warm_yellow"], "red": NHS["red"],
                "good": NHS["green"], "not good": NHS["red"]}


@dataclass
class Slide:
    """One slide: a title and one of a tile grid, a table, a picture or bullets.

    Attributes
    ----------
    title
        The headline.
    tiles
        ``(label, value)`` pairs shown as big numbers.
    table
        A display table (strings).
    image
        A PNG chart.
    bullets
        Lines of text.
    notes
        Speaker notes: definitions and provenance.
    """

    title: str
    tiles: list[tuple[str, str]] = field(default_factory=list)
    table: pd.DataFrame | None = None
    image: Path | None = None
    bullets: list[str] = field(default_factory=list)
    notes: str = ""


def _read(run_dir: Path, name: str) -> pd.DataFrame | None:
    p = run_dir / "tables" / f"{name}.csv"
    if not p.is_file():
        return None
    return pd.read_csv(p, dtype=str, keep_default_na=False)


#: columns that name a row: never moved to the notes
LABEL_COLUMNS = frozenset({"No.", "KPI", "Measure", "Stage", "Interval", "Comparison", "What"})


def _narrow(df: pd.DataFrame, drop: tuple[str, ...] = ()) -> tuple[pd.DataFrame, str]:
    """Drop long text columns (kept for the notes) so a table fits a slide."""
    gone = [c for c in drop if c in df.columns]
    rest = df.drop(columns=gone)
    while len(rest.columns) > MAX_TABLE_COLS:
        movable = [c for c in rest.columns[1:] if c not in LABEL_COLUMNS]
        widest = max(movable, key=lambda c: rest[c].astype(str).str.len().mean())
        gone.append(widest)
        rest = rest.drop(columns=[widest])
    notes = ""
    for c in gone:
        notes += f"\n{c}:\n" + "\n".join(f"  {a}: {b}" for a, b in zip(df.iloc[:, 0], df[c]))
    return rest, notes


def provenance_notes(prov: dict[str, Any]) -> str:
    """The provenance every slide's notes carry."""
    who = prov.get("ran_by", {})
    code = prov.get("code", {})
    db = prov.get("database_state", {}).get("before", {})
    return (
        f"Provenance: run {prov.get('run')} ({prov.get('mode')} mode), started "
        f"{prov.get('started_at')}; code {code.get('describe')} (fracture-qi "
        f"{code.get('package_version')}); model {prov.get('model')}; database state "
        f"{str(db.get('sha256', ''))[:16]}; run by {who.get('user')} on {who.get('host')} "
        f"with: {who.get('command')}. Parameters: {prov.get('parameters')}. "
        "Every number is reproducible with fracture-qi audit --verify <run folder>."
    )


DEFINITIONS = {
    "headline": ("CTs screened: eligible CT studies the AI assessed. Fractures confirmed: "
                 "AI-flagged studies whose first nurse read confirmed a vertebral fracture. "
                 "PPV: confirmed / adjudicated among AI-flagged. Sensitivity: weighted by the "
                 "audit sample of AI-negatives (1 / sampling probability)."),
    "funnel": "Each stage is a subset of the one before; % is of the previous stage (Wilson 95% CI).",
    "kpis": ("The FLS-DB key performance indicators (RCP): numerator and denominator beside "
             "each figure; windowed KPIs count patients whose window has passed by the data "
             "cut-off. See docs/measures.md section 7."),
    "service": ("AI could not assess: eligible CTs whose counted result is not ok (error, or "
                "excluded as NO_ASSESSABLE_VERTEBRAE). Not in the radiology report: confirmed "
                "AI-flagged fractures the nurse found not reported."),
    "accuracy": ("Reference standard: the first nurse read. Weighted measures use inverse-"
                 "probability weights with a Wilson interval on the design-based effective n."),
    "spc": ("Making Data Count: XmR charts (p-charts where binomial limits fit, internal view "
            "only); special cause: a point beyond the limits, 7 on one side of the mean, 7 "
            "rising or falling, 2 of 3 close to a limit on one side. Icons: variation (latest "
            "point) and assurance against the target."),
    "times": ("Whole days from the CT. Median and IQR of those who got there; Kaplan-Meier "
              "counts those still waiting (censored at the cut-off)."),
    "agreement": "Cohen's kappa (linear-weighted for grades), from the published table.",
}


def pack_slides(run_dir: str | Path, prov: dict[str, Any]) -> list[Slide]:
    """The slides of a run folder (slides whose table or chart is missing are left out)."""
    run = Path(run_dir)
    p_notes = provenance_notes(prov)
    mode = prov.get("mode", "publish")
    slides: list[Slide] = []
    params = prov.get("parameters", {})
    period = (f"{params.get('period_start') or 'first study'} to "
              f"{params.get('period_end') or 'latest data'}")
    sub = [f"Period: {period}", f"Sites: {', '.join(params.get('sites') or []) or 'all'}",
           f"AI model: {prov.get('model')}",
           "Publication mode: counts 1-7 shown as *, others rounded to 5" if mode == "publish"
           else "INTERNAL: exact counts, not for publication"]
    label = prov.get("data_label")
    if label:
        sub.insert(0, label.upper())
    slides.append(Slide(f"Fracture QI: {prov.get('run')}", bullets=sub, notes=p_notes))
    head = _read(run, "pack_headline")
    if head is not None:
        slides.append(Slide("Headline", tiles=list(zip(head["measure"], head["value"])),
                            notes=DEFINITIONS["headline"] + "\n\n" + p_notes))
    fig = run / "figures" / "pack_funnel.png"
    if fig.is_file():
        slides.append(Slide("From CT to bone therapy", image=fig,
                            notes=DEFINITIONS["funnel"] + "\n\n" + p_notes))
    for name, title, key, drop in (
        ("pack_funnel", "The funnel, stage by stage", "funnel", ("Definition",)),
        ("pack_kpis", "FLS-DB key performance indicators", "kpis", ("Denominator is",)),
        ("pack_service", "The service's own measures", "service",
         ("Numerator is", "Denominator is")),
        ("pack_accuracy", "Accuracy of the AI flag", "accuracy", ("Definition", "Method")),
    ):
        df = _read(run, name)
        if df is not None:
            table, extra = _narrow(df, drop)
            slides.append(Slide(title, table=table,
                                notes=DEFINITIONS[key] + extra + "\n\n" + p_notes))
    from fracture_qi.qi.spc_panels import PANELS

    for key in PANELS:  # the order the dashboard shows them in
        png = run / "figures" / f"spc_{key}.png"
        if png.is_file():
            slides.append(Slide("SPC: " + PANELS[key][0].split(" (")[0].split(", by")[0],
                                image=png, notes=DEFINITIONS["spc"] + "\n\n" + p_notes))
    df = _read(run, "pack_times")
    if df is not None:
        table, extra = _narrow(df)
        slides.append(Slide("Time along the pathway", table=table,
                            notes=DEFINITIONS["times"] + extra + "\n\n" + p_notes))
    fig = run / "figures" / "pack_time_to_therapy.png"
    if fig.is_file():
        slides.append(Slide("Time from CT to bone therapy start", image=fig,
                            notes=DEFINITIONS["times"] + "\n\n" + p_notes))
    df = _read(run, "pack_agreement")
    if df is not None:
        slides.append(Slide("Agreement", table=df, notes=DEFINITIONS["agreement"] + "\n\n"
                            + p_notes))
    slides.append(Slide("Methods and provenance", bullets=[
        "Screening: every CT of patients aged 50+; the AI's counted result per study is the "
        "chosen series' result of the reported model.",
        "Adjudication: all AI-flagged studies and an audit sample of AI-negatives, read by "
        "FLS nurses; sensitivity and specificity weighted by the sampling.",
        "Suppression (publication mode): counts 1-7 hidden, others rounded to 5; every rate, "
        "interval and kappa from the rounded counts; statistics need 8 patients.",
        "SPC: NHS England Making Data Count rules (XmR; p-charts where binomial limits fit).",
        f"Reference figures: {prov.get('kpi_source', 'FLS-DB national averages, 2019 data')}.",
        p_notes,
    ], notes=p_notes))
    return slides


def _footer(prov: dict[str, Any]) -> str:
    return str(prov.get("context_line") or "")


# --- PPTX ----------------------------------------------------------------------------------

def _rgb(hex_colour: str) -> Any:
    from pptx.dml.color import RGBColor

    return RGBColor.from_string(hex_colour.lstrip("#").upper())


def write_pptx(slides: list[Slide], path: str | Path, prov: dict[str, Any]) -> Path:
    """Write the deck as PPTX (python-pptx)."""
    from pptx import Presentation
    from pptx.util import Inches, Pt

    prs = Presentation()
    prs.slide_width, prs.slide_height = Inches(SLIDE_W), Inches(SLIDE_H)
    prs.core_properties.title = slides[0].title if slides else "Fracture QI"
    prs.core_properties.author = "fracture-qi"
    prs.core_properties.subject = _footer(prov)[:250]
    blank = prs.slide_layouts[6]
    for sl in slides:
        s = prs.slides.add_slide(blank)
        bar = s.shapes.add_shape(1, 0, 0, prs.slide_width, Inches(0.95))
        bar.fill.solid()
        bar.fill.fore_color.rgb = _rgb(NHS["blue"])
        bar.line.fill.background()
        tf = bar.text_frame
        tf.text = sl.title
        tf.paragraphs[0].runs[0].font.size = Pt(28)
        tf.paragraphs[0].runs[0].font.bold = True
        tf.paragraphs[0].runs[0].font.color.rgb = _rgb("#FFFFFF")
        top, left, width = Inches(1.2), Inches(0.5), prs.slide_width - Inches(1.0)
        height = prs.slide_height - Inches(2.0)
        if sl.tiles:
            _pptx_tiles(s, sl.tiles, left, top, width, Inches, Pt)
        elif sl.table is not None:
            _pptx_table(s, sl.table, left, top, width, height, Inches, Pt)
        elif sl.image is not None:
            pic = s.shapes.add_picture(str(sl.image), left, top, height=height)
            pic.left = int((prs.slide_width - pic.width) / 2)
        elif sl.bullets:
            box = s.shapes.add_textbox(left, top, width, height).text_frame
            box.word_wrap = True
            for i, line in enumerate(sl.bullets):
                para = box.paragraphs[0] if i == 0 else box.add_paragraph()
                para.text = line
                para.runs[0].font.size = Pt(18 if i < 6 else 12)
                para.runs[0].font.color.rgb = _rgb(NHS["dark_grey"])
        foot = s.shapes.add_textbox(Inches(0.3), prs.slide_height - Inches(0.6),
                                    prs.slide_width - Inches(0.6), Inches(0.5)).text_frame
        foot.word_wrap = True
        foot.text = _footer(prov)
        foot.paragraphs[0].runs[0].font.size = Pt(9)
        foot.paragraphs[0].runs[0].font.color.rgb = _rgb(NHS["mid_grey"])
        s.notes_slide.notes_text_frame.text = sl.notes
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    prs.save(str(out))
    return out


def _pptx_tiles(s: Any, tiles: list[tuple[str, str]], left: int, top: int, width: int,
                Inches: Any, Pt: Any) -> None:
    per_row = 3
    w = int(width / per_row) - Inches(0.2)
    h = Inches(2.3)
    for i, (label, value) in enumerate(tiles):
        x = left + (i % per_row) * (w + Inches(0.2))
        y = top + (i // per_row) * (h + Inches(0.3))
        box = s.shapes.add_shape(1, x, y, w, h)
        box.fill.solid()
        box.fill.fore_color.rgb = _rgb(NHS["pale_grey"])
        box.line.color.rgb = _rgb(NHS["blue"])
        tf = box.text_frame
        tf.word_wrap = True
        tf.text = value
        run = tf.paragraphs[0].runs[0]
        run.font.size = Pt(30 if len(value) < 12 else 22)
        run.font.bold = True
        run.font.color.rgb = _rgb(NHS["blue"])
        para = tf.add_paragraph()
        para.text = label
        para.runs[0].font.size = Pt(14)
        para.runs[0].font.color.rgb = _rgb(NHS["dark_grey"])


def _pptx_table(s: Any, df: pd.DataFrame, left: int, top: int, width: int, height: int,
                Inches: Any, Pt: Any) -> None:
    rows, cols = len(df) + 1, len(df.columns)
    row_h = min(Inches(0.45), int(height / rows))
    shape = s.shapes.add_table(rows, cols, left, top, width, row_h * rows)
    table = shape.table
    size = Pt(12 if rows <= 8 else (10 if rows <= 14 else 8))
    for j, c in enumerate(df.columns):
        cell = table.cell(0, j)
        cell.text = str(c)
        cell.fill.solid()
        cell.fill.fore_color.rgb = _rgb(NHS["dark_blue"])
        run = cell.text_frame.paragraphs[0].runs[0]
        run.font.size, run.font.bold = size, True
        run.font.color.rgb = _rgb("#FFFFFF")
    for i, row in enumerate(df.itertuples(index=False), start=1):
        for j, v in enumerate(row):
            cell = table.cell(i, j)
            cell.text = str(v)
            colour = BAND_COLOURS.get(str(v)) if df.columns[j] == "Band" else None
            cell.fill.solid()
            cell.fill.fore_color.rgb = _rgb(colour or ("#FFFFFF" if i % 2 else NHS["pale_grey"]))
            runs = cell.text_frame.paragraphs[0].runs
            if runs:
                runs[0].font.size = size
                runs[0].font.color.rgb = _rgb("#FFFFFF" if colour else NHS["black"])


# --- PDF -----------------------------------------------------------------------------------

def write_pdf(slides: list[Slide], path: str | Path, prov: dict[str, Any]) -> Path:
    """Write the same deck as a PDF, one 16:9 page per slide (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, Rectangle

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"Title": slides[0].title if slides else "Fracture QI", "Author": "fracture-qi",
            "Subject": _footer(prov)[:250], "Creator": "fracture-qi", "CreationDate": None,
            "ModDate": None}
    with PdfPages(out, metadata=meta) as pdf:
        for sl in slides:
            fig = Figure(figsize=(SLIDE_W, SLIDE_H), dpi=100)
            ax = fig.add_axes((0, 0, 1, 1))
            ax.set_xlim(0, SLIDE_W)
            ax.set_ylim(0, SLIDE_H)
            ax.axis("off")
            ax.add_patch(Rectangle((0, SLIDE_H - 0.95), SLIDE_W, 0.95, color=NHS["blue"]))
            ax.text(0.4, SLIDE_H - 0.5, sl.title, color="white", fontsize=24,
                    fontweight="bold", va="center")
            if sl.tiles:
                for i, (label, value) in enumerate(sl.tiles):
                    x = 0.5 + (i % 3) * 4.15
                    y = SLIDE_H - 3.6 - (i // 3) * 2.6
                    ax.add_patch(FancyBboxPatch((x, y), 3.95, 2.3, boxstyle="round,pad=0.02",
                                                fc=NHS["pale_grey"], ec=NHS["blue"]))
                    ax.text(x + 0.2, y + 1.45, value, fontsize=24 if len(value) < 12 else 16,
                            fontweight="bold", color=NHS["blue"])
                    ax.text(x + 0.2, y + 0.5, label, fontsize=12, color=NHS["dark_grey"])
            elif sl.table is not None:
                _pdf_table(fig, sl.table)
            elif sl.image is not None:
                import matplotlib.image as mpimg

                img = mpimg.imread(str(sl.image))
                iax = fig.add_axes((0.08, 0.1, 0.84, 0.76))
                iax.imshow(img)
                iax.axis("off")
            elif sl.bullets:
                y = SLIDE_H - 1.6
                for line in sl.bullets:
                    for part in textwrap.wrap(line, 120) or [""]:
                        ax.text(0.6, y, part, fontsize=14 if len(sl.bullets) < 7 else 11,
                                color=NHS["dark_grey"], va="top")
                        y -= 0.42
            ax.text(0.3, 0.25, "\n".join(textwrap.wrap(_footer(prov), 200)), fontsize=8,
                    color=NHS["mid_grey"], va="bottom")
            pdf.savefig(fig)
    return out


def _pdf_table(fig: Any, df: pd.DataFrame) -> None:
    tax = fig.add_axes((0.04, 0.12, 0.92, 0.74))
    tax.axis("off")
    cells = [[str(v) for v in row] for row in df.itertuples(index=False)]
    table = tax.table(cellText=cells or [[""] * len(df.columns)],
                      colLabels=[str(c) for c in df.columns], loc="upper center",
                      cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(10 if len(df) <= 10 else 8)
    table.auto_set_column_width(list(range(len(df.columns))))
    table.scale(1, 1.5)
    for (i, j), cell in table.get_celld().items():
        if i == 0:
            cell.set_facecolor(NHS["dark_blue"])
            cell.get_text().set_color("white")
            cell.get_text().set_fontweight("bold")
        else:
            v = cell.get_text().get_text()
            if df.columns[j] == "Band" and v in BAND_COLOURS:
                cell.set_facecolor(BAND_COLOURS[v])
                cell.get_text().set_color("white")
            elif i % 2 == 0:
                cell.set_facecolor(NHS["pale_grey"])


def build_pack(run_dir: str | Path, prov: dict[str, Any]) -> dict[str, Path]:
    """Write ``slides/conference-pack.pptx`` and ``.pdf`` for a run folder.

    Returns
    -------
    dict
        ``{"pptx": path, "pdf": path}``.
    """
    run = Path(run_dir)
    slides = pack_slides(run, prov)
    out = run / PACK_DIR
    return {"pptx": write_pptx(slides, out / PPTX_NAME, prov),
            "pdf": write_pdf(slides, out / PDF_NAME, prov)}


__all__ = ["PACK_DIR", "PDF_NAME", "PPTX_NAME", "Slide", "build_pack", "pack_slides",
           "write_pdf", "write_pptx"]
