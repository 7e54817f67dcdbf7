"""Audit building blocks without running a kernel: parameters, disclosure scan, exports,
figures, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, insert, select

from fracture_qi.cli.main import main
from fracture_qi.errors import DisclosureError, PseudonymisationKeyError, ReportError
from fracture_qi.reporting import provenance as prov
from fracture_qi.reporting.disclosure import IdentifierIndex, check_no_identifiers
from fracture_qi.reporting.export import write_table
from fracture_qi.reporting.figures import Chart, Trace, save_chart
from fracture_qi.simulation import identifiers, make_fixture_site
from fracture_qi.reporting.params import coerce, notebook_parameters, validate_parameters
from fracture_qi.reporting.run import AUDIT_NOTEBOOKS, notebook_paths, run_audit
from fracture_qi.store import open_store
from fracture_qi.store import schema as S

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    manifest = make_fixture_site(tmp_path_factory.mktemp("rep-site"), studies=200, seed=3)
    engine = open_store(str(manifest))
    yield manifest, engine
    engine.dispose()


# --- parameters -----------------------------------------------------------------------------

def test_notebooks_declare_typed_parameters() -> None:
    specs = notebook_parameters(notebook_paths())
    assert {"manifest", "out_dir", "publish", "period_start", "sites", "model", "flag_grade",
            "screen", "device", "batch_size", "workers", "change_date"} <= set(specs)
    assert specs["flag_grade"].type == "int" and specs["sites"].type == "list"
    assert set(specs["manifest"].notebooks) == set(AUDIT_NOTEBOOKS)
    assert specs["device"].notebooks == ["01_cohort_screening.ipynb"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"flag_grad": "3"}, "unknown parameter 'flag_grad' (did you mean 'flag_grade'?). Allowed:"),
        ({"flag_grade": "high"}, "parameter 'flag_grade': 'high' is not a valid int"),
        ({"flag_grade": "5"}, "1, 2 or 3"),
        ({"period_start": "2025-13-01"}, "is not a date. Fix: use YYYY-MM-DD"),
        ({"device": "tpu"}, "Allowed: auto, cpu, cuda, mps"),
        ({"screen": "perhaps"}, "is not a valid bool"),
        ({"out_dir": "/tmp"}, "set by the audit command: use --out"),
        ({"period_start": "2025-06-01", "period_end": "2025-01-01"}, "is after period_end"),
    ],
)
def test_bad_parameters_are_named_with_allowed_values(given, message) -> None:  # type: ignore[no-untyped-def]
    specs = notebook_parameters(notebook_paths())
    with pytest.raises(ReportError) as e:
        validate_parameters(given, specs)
    assert message in str(e.value)


def test_sites_and_models_checked_against_the_database() -> None:
    specs = notebook_parameters(notebook_paths())
    with pytest.raises(ReportError, match="Allowed: A, B"):
        validate_parameters({"sites": "A,Nowhere"}, specs, sites=["A", "B"], models=[])
    with pytest.raises(ReportError, match="has no screenings"):
        validate_parameters({"model": "x"}, specs, sites=[], models=["reference"])
    ok = validate_parameters({"sites": '["A"]', "model": "reference"}, specs, sites=["A"],
                             models=["reference"])
    assert ok == {"sites": ["A"], "model": "reference"}


def test_coerce_keeps_python_values() -> None:
    assert coerce("x", 3, "int") == 3 and coerce("x", True, "bool") is True
    with pytest.raises(ReportError):
        coerce("x", True, "int")  # a bool is not a grade


def test_bad_parameter_stops_before_anything_runs(site, tmp_path) -> None:  # type: ignore[no-untyped-def]
    manifest, engine = site
    out = tmp_path / "run"
    with engine.connect() as c:
        before = c.execute(select(func.count()).select_from(S.AuditRun)).scalar()
    with pytest.raises(ReportError, match="unknown parameter 'sitez'"):
        run_audit(manifest, out, {"sitez": "North General"})
    assert not out.exists()
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(S.AuditRun)).scalar() == before


def test_cli_bad_parameter_exit_2(site, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    manifest, _ = site
    rc = main(["audit", "--manifest", str(manifest), "--out", str(tmp_path / "r"),
               "-p", "flag_grade", "two"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "flag_grade" in err and "not a valid int" in err and "-p flag_grade 2" in err


def test_cli_help_parameters(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["audit", "--help-parameters"]) == 0
    out = capsys.readouterr().out
    assert "period_start (str" in out and "manifest" not in out.split("parameters")[1][:40]


def test_publication_refused_without_key(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    manifest = make_fixture_site(tmp_path / "real", studies=30, seed=2)
    # a real (non-synthetic) site: no demo-key fallback
    text = manifest.read_text().replace("synthetic: true", "synthetic: false")
    manifest.write_text(text)
    monkeypatch.delenv("FRACTURE_QI_KEY", raising=False)
    monkeypatch.delenv("FRACTURE_QI_KEY_FILE", raising=False)
    with pytest.raises(PseudonymisationKeyError, match="publication outputs need"):
        run_audit(manifest, tmp_path / "out", {}, publish=True)
    assert not (tmp_path / "out").exists()


def test_out_dir_not_overwritten_by_accident(site, tmp_path) -> None:  # type: ignore[no-untyped-def]
    manifest, _ = site
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ReportError, match="not empty"):
        run_audit(manifest, out, {})
    with pytest.raises(ReportError, match="does not look like an audit run"):
        run_audit(manifest, out, {}, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


# --- disclosure -----------------------------------------------------------------------------

def test_identifier_index_finds_every_kind() -> None:
    idx = IdentifierIndex()
    idx.add_patient(name="THORNTON^Clara", nhs_number="9434765919", mrn="RX0012345",
                    birth_date="1948-03-12")
    idx.add_uid("1.2.826.0.1.3680043.8.498.123")
    idx.add_code("ACC00001234", "accession number")
    cases = {
        "NHS 943 476 5919": "NHS number", "nhs 943-476-5919": "NHS number",
        "id=9434765919;": "NHS number", "patient clara thornton": "name",
        "THORNTON, Clara": "name", "THORNTON^CLARA": "name", "mrn rx0012345": "MRN",
        "born 12/03/1948": "birth date", "dob 1948-03-12": "birth date",
        "uid 1.2.826.0.1.3680043.8.498.123 ": "UID", "acc ACC00001234": "accession number",
    }
    for text, kind in cases.items():
        assert idx.find(text) == {kind}, text
    for harmless in ("count 94347659190", "1.2.826.0.1.3680043.8.498.1234", "Clara", "2.7.0",
                     "screened 15, flagged 10, PPV 75.0%", "1948-03-13", "Thornton Road"):
        assert idx.find(harmless) == set(), harmless


def test_disclosure_scan_names_file_not_identifier(site, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, engine = site
    ids = identifiers(engine)
    nhs = ids["nhs_numbers"][0]
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "ok.csv").write_text("site,n\nNorth General,15\n")
    spaced = f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}"
    nb = {"cells": [{"cell_type": "code", "source": ["print('x')\n"],
                     "outputs": [{"output_type": "stream", "text": [f"row {spaced}\n"]}]}]}
    (tmp_path / "leak.ipynb").write_text(json.dumps(nb))
    index = IdentifierIndex.from_engine(engine)
    with pytest.raises(DisclosureError) as e:
        check_no_identifiers(tmp_path, index)
    msg = str(e.value)
    assert "leak.ipynb (NHS number)" in msg and nhs not in msg and spaced not in msg
    assert "ok.csv" not in msg


def test_png_text_chunks_are_scanned(site, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image, PngImagePlugin

    _, engine = site
    name = identifiers(engine)["names"][0]
    meta = PngImagePlugin.PngInfo()
    meta.add_text("Title", f"patient {name}")
    Image.new("RGB", (4, 4)).save(tmp_path / "fig.png", pnginfo=meta)
    with pytest.raises(DisclosureError, match=r"fig.png \(name\)"):
        check_no_identifiers(tmp_path, IdentifierIndex.from_engine(engine))


# --- exports, figures, provenance -----------------------------------------------------------

def test_write_table_is_byte_stable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    df = pd.DataFrame({"site": ["B", "A", "C"], "rate": [0.1 + 0.2, 1 / 3, 2.0]})
    a = write_table(df, tmp_path / "a.csv", sort_by=["site"]).read_bytes()
    b = write_table(df.sample(frac=1, random_state=1), tmp_path / "b.csv", sort_by=["site"]).read_bytes()
    assert a == b == b"site,rate\nA,0.3333\nB,0.3000\nC,2.0000\n"


def test_save_chart_writes_offline_html_and_stable_png(tmp_path) -> None:  # type: ignore[no-untyped-def]
    chart = Chart("PPV by site", [Trace("ppv", ["A", "B"], [0.8, None], kind="bar",
                                        low=[0.7, None], high=[0.9, None])], ypercent=True)
    p1 = save_chart(chart, tmp_path / "one", "ppv")
    p2 = save_chart(chart, tmp_path / "two", "ppv")
    assert p1["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert p1["png"].read_bytes() == p2["png"].read_bytes()
    html = p1["html"].read_text()
    assert "plotly.min.js" in html and "cdn.plot.ly" not in html
    assert (tmp_path / "one" / "plotly.min.js").is_file()


def test_db_state_hash_sees_new_rows_only(site) -> None:  # type: ignore[no-untyped-def]
    _, engine = site
    a = prov.db_state_hash(engine)
    assert a == prov.db_state_hash(engine)
    assert a["tables"]["studies"]["rows"] == 200
    with engine.begin() as c:
        c.execute(insert(S.AuditRun.__table__).values(name="x", out_dir="/x"))  # not an input
    assert prov.db_state_hash(engine)["sha256"] == a["sha256"]
    with engine.begin() as c:
        c.execute(insert(S.Study.__table__).values(study_instance_uid="2.25.42", eligible=False))
    try:
        b = prov.db_state_hash(engine)
        assert b["sha256"] != a["sha256"] and b["tables"]["studies"]["rows"] == 201
        assert b["tables"]["screenings"] == a["tables"]["screenings"]
    finally:
        with engine.begin() as c:
            c.execute(S.Study.__table__.delete().where(S.Study.study_instance_uid == "2.25.42"))


def test_user_notebooks_are_copies_of_the_packaged_ones() -> None:
    """notebooks/ (for users) is generated from fracture_qi/notebooks/ (the source)."""
    from fracture_qi.reporting.run import NOTEBOOK_DIR, sync_user_notebooks

    stale = sync_user_notebooks(REPO / "notebooks", check=True)
    assert stale == [], (
        f"notebooks/ differs from {NOTEBOOK_DIR} for {stale}. Fix: python -m "
        "fracture_qi.reporting.run --sync-notebooks"
    )
