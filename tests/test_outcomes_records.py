"""FLS import: schema validation messages, impossible dates, linkage and idempotency."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import func, select

from fracture_qi.errors import ValidationError
from fracture_qi.outcomes.linkage import import_fls_records
from fracture_qi.outcomes.records import FLS_SCHEMA, read_fls_export, validate_records
from fracture_qi.pseudonym import patient_key
from fracture_qi.store.db import connect, session_scope
from fracture_qi.store.schema import Base, FlsEpisode, Patient, Study

SECRET = b"test-secret-0123456789abcdef"
TODAY = dt.date(2026, 1, 31)
NHS_A, NHS_B, NHS_C = "9990000018", "9990000026", "9990000034"

COLUMNS = [f.name for f in FLS_SCHEMA]


def rec(**kw: str) -> dict[str, str]:
    r = {c: "" for c in COLUMNS}
    r.update(kw)
    return r


@pytest.fixture()
def engine(tmp_path):
    eng = connect(f"sqlite:///{tmp_path / 'fqi.db'}")
    Base.metadata.create_all(eng)
    with session_scope(eng) as s:
        a = Patient(patient_key=patient_key(SECRET, NHS_A), nhs_number=NHS_A, sex="F")
        b = Patient(patient_key=patient_key(SECRET, NHS_B), nhs_number=NHS_B, sex="M")
        # patient C is known only by MRN at site "General" (namespace MRN:<site>)
        c = Patient(patient_key=patient_key(SECRET, "M123", "MRN:General"), mrn="M123", sex="F")
        s.add_all([a, b, c])
        s.flush()
        s.add_all(
            [
                Study(
                    study_instance_uid="1.2.1",
                    patient_id=a.id,
                    accession_number="ACC1",
                    study_date=dt.date(2025, 1, 10),
                    site="General",
                    eligible=True,
                ),
                Study(
                    study_instance_uid="1.2.2",
                    patient_id=a.id,
                    accession_number="ACC2",
                    study_date=dt.date(2025, 6, 1),
                    site="General",
                    eligible=True,
                ),
                Study(
                    study_instance_uid="1.2.3",
                    patient_id=b.id,
                    accession_number="ACC3",
                    study_date=dt.date(2025, 3, 1),
                    site="General",
                    eligible=True,
                ),
                Study(
                    study_instance_uid="1.2.4",
                    patient_id=c.id,
                    accession_number="ACC4",
                    study_date=dt.date(2025, 4, 1),
                    site="General",
                    eligible=True,
                ),
            ]
        )
    return eng


def test_nhs_numbers_used_are_valid():
    from fracture_qi.pseudonym import nhs_number_is_valid

    assert all(nhs_number_is_valid(n) for n in (NHS_A, NHS_B, NHS_C))


def test_validation_messages_name_row_column_value_fix():
    raw = pd.DataFrame(
        [
            rec(record_id="R1", nhs_number=NHS_A, referral_date="2025-01-20"),
            rec(
                record_id="R2",
                nhs_number="1234567890",
                referral_date="20/01/2025",
                therapy_recommended="maybe",
                drug="aspirin",
                dxa_t_score="-12",
            ),
            rec(record_id="R2", nhs_number=NHS_B, referral_date="2025-02-01"),
        ]
    )
    v = validate_records(raw)
    lines = [p.line() for p in v.problems]
    by_code = {p.code: p for p in v.problems}
    assert by_code["invalid_date"].row == 2 and by_code["invalid_date"].column == "referral_date"
    assert "'20/01/2025'" in by_code["invalid_date"].line()
    assert "YYYY-MM-DD" in by_code["invalid_date"].fix
    assert "alendronate" in by_code["invalid_value"].fix  # allowed values listed
    assert by_code["invalid_bool"].value == "maybe"
    assert by_code["out_of_range"].column == "dxa_t_score"
    nhs = by_code["invalid_nhs_number"]
    assert nhs.value == "*******890"  # identifiers masked in messages
    assert not any("1234567890" in line for line in lines)
    assert by_code["duplicate_record_id"].row == 3
    # invalid cells are left empty, the row is kept
    assert len(v.frame) == 3 and v.frame.loc[1, "referral_date"] is None


def test_missing_required_columns_raise():
    with pytest.raises(ValidationError) as e:
        validate_records(pd.DataFrame({"nhs_number": [NHS_A]}))
    msg = str(e.value)
    assert "record_id is missing" in msg and "referral_date is missing" in msg
    assert "Fix:" in msg and "columns found: nhs_number" in msg


def test_impossible_dates_reported_not_dropped():
    raw = pd.DataFrame(
        [
            rec(
                record_id="D1",
                nhs_number=NHS_A,
                referral_date="2025-01-20",
                fls_assessment_date="2025-03-01",
                death_date="2025-02-01",
            ),
            rec(
                record_id="D2",
                nhs_number=NHS_A,
                referral_date="2025-03-01",
                fls_assessment_date="2025-02-01",
                dxa_date="2021-01-01",
            ),
            rec(record_id="D3", nhs_number=NHS_A, referral_date="2027-03-01"),
        ]
    )
    v = validate_records(raw)
    codes = {(p.row, p.code) for p in v.problems}
    assert (1, "assessment_after_death") in codes
    assert (2, "assessment_before_referral") in codes
    assert (2, "dxa_long_before_referral") in codes
    assert (3, "future_date") in codes
    assert v.frame["fls_assessment_date"].iloc[0] == dt.date(2025, 3, 1)  # kept as recorded


def test_link_and_store_idempotent(engine):
    raw = pd.DataFrame(
        [
            rec(
                record_id="1",
                nhs_number=NHS_A,
                accession_number="acc 2",
                referral_date="2025-06-10",
                fls_assessment_date="2025-07-01",
                therapy_recommended="1",
                drug="Alendronic acid",
                therapy_start_date="2025-07-20",
            ),
            # no accession: linked by date to the CT 20 days before the referral
            rec(
                record_id="2",
                nhs_number=NHS_B,
                referral_date="2025-03-21",
                therapy_start_date="2025-02-01",
            ),  # therapy before the CT: impossible
            # MRN only, site namespace
            rec(record_id="3", mrn="M123", accession_number="ACC4", referral_date="2025-04-10"),
            # accession belonging to someone else
            rec(
                record_id="4", nhs_number=NHS_B, accession_number="ACC1", referral_date="2025-09-10"
            ),
            # patient not in the database (an FLS referral from elsewhere)
            rec(record_id="5", nhs_number=NHS_C, referral_date="2025-05-05"),
        ]
    )
    s = import_fls_records(raw, engine, SECRET, source="fls", today=TODAY)
    assert (s.n_inserted, s.n_updated, s.n_unchanged) == (5, 0, 0)
    assert s.link_patient == {"nhs": 3, "mrn": 1, "none": 1}
    assert s.link_study["accession"] == 2 and s.link_study["date"] == 1
    codes = {(p.row, p.code) for p in s.problems}
    assert (2, "therapy_before_ct") in codes
    assert (4, "accession_other_patient") in codes
    text = s.table()
    assert "therapy_before_ct" in text and NHS_A not in text
    with session_scope(engine) as ses:
        eps = {e.record_id: e for e in ses.scalars(select(FlsEpisode))}
        studies = {st.accession_number: st.id for st in ses.scalars(select(Study))}
        assert eps["1"].study_id == studies["ACC2"] and eps["1"].drug == "alendronate"
        assert eps["2"].study_id == studies["ACC3"]
        assert eps["3"].study_id == studies["ACC4"]
        assert eps["4"].study_id is None
        assert eps["5"].study_id is None and eps["5"].patient_key == patient_key(SECRET, NHS_C)
        assert [p["code"] for p in eps["2"].problems] == ["therapy_before_ct"]
        # no identifier stored in fls_episodes
        for e in eps.values():
            blob = repr([getattr(e, c.name) for c in FlsEpisode.__table__.columns])
            assert NHS_A not in blob and "M123" not in blob
    # re-import: nothing new
    s2 = import_fls_records(raw, engine, SECRET, source="fls", today=TODAY)
    assert (s2.n_inserted, s2.n_updated, s2.n_unchanged) == (0, 0, 5)
    # a corrected export updates the one changed record
    raw.loc[1, "therapy_start_date"] = "2025-04-01"
    s3 = import_fls_records(raw, engine, SECRET, source="fls", today=TODAY)
    assert (s3.n_inserted, s3.n_updated, s3.n_unchanged) == (0, 1, 4)
    with session_scope(engine) as ses:
        assert ses.scalar(select(func.count()).select_from(FlsEpisode)) == 5
        e2 = ses.scalar(select(FlsEpisode).where(FlsEpisode.record_id == "2"))
        assert e2.problems == [] and e2.therapy_start_date == dt.date(2025, 4, 1)


def test_strict_refuses_invalid_export(engine):
    raw = pd.DataFrame([rec(record_id="1", nhs_number=NHS_A, referral_date="2025-13-01")])
    with pytest.raises(ValidationError, match=r"row 1 \(record_id 1\), column referral_date"):
        import_fls_records(raw, engine, SECRET, strict=True)
    with session_scope(engine) as ses:
        assert ses.scalar(select(func.count()).select_from(FlsEpisode)) == 0


def test_read_csv_excel_sql(tmp_path, engine, monkeypatch):
    df = pd.DataFrame(
        [
            rec(
                record_id="1",
                nhs_number=NHS_A,
                referral_date="2025-06-10",
                dxa_date="2025-07-01",
                dxa_t_score="-2.8",
            )
        ]
    )
    df.to_csv(tmp_path / "f.csv", index=False)
    got = read_fls_export(kind="csv", path=tmp_path / "f.csv")
    assert got.loc[0, "nhs_number"] == NHS_A
    xl = df.copy()
    xl["referral_date"] = pd.Timestamp("2025-06-10")  # Excel date cells
    xl["dxa_t_score"] = -2.8
    xl.to_excel(tmp_path / "f.xlsx", index=False)
    v = validate_records(read_fls_export(kind="excel", path=tmp_path / "f.xlsx"))
    assert v.frame.loc[0, "referral_date"] == dt.date(2025, 6, 10)
    assert v.frame.loc[0, "dxa_t_score"] == -2.8
    assert not [p for p in v.problems if p.kind == "invalid"]
    # SQL: a table in a separate SQLite database, URL from the environment
    from sqlalchemy import create_engine

    src = create_engine(f"sqlite:///{tmp_path / 'fls.db'}")
    df.to_sql("fls", src, index=False)
    src.dispose()
    monkeypatch.setenv("FLS_DB_URL", f"sqlite:///{tmp_path / 'fls.db'}")
    got = read_fls_export(kind="sql", url="env:FLS_DB_URL", query="SELECT * FROM fls")
    assert got.loc[0, "record_id"] == "1"
    with pytest.raises(ValidationError, match="query failed"):
        read_fls_export(kind="sql", url="env:FLS_DB_URL", query="SELECT * FROM nope")
    with pytest.raises(ValidationError, match="UTF-8 CSV"):
        read_fls_export(kind="csv", path=tmp_path / "missing.csv")


def test_cli_import_fls(tmp_path, capsys, monkeypatch):
    from fracture_qi.cli.main import main

    monkeypatch.delenv("FRACTURE_QI_DATABASE", raising=False)
    monkeypatch.setenv("FQI_TEST_KEY", SECRET.decode())
    pd.DataFrame(
        [
            rec(record_id="1", nhs_number=NHS_A, referral_date="2025-06-10"),
            rec(
                record_id="2",
                nhs_number=NHS_B,
                referral_date="2025-06-10",
                fls_assessment_date="2025-07-01",
                death_date="2025-06-20",
            ),
        ]
    ).rename(columns={"record_id": "FLS ID"}).to_csv(tmp_path / "fls.csv", index=False)
    (tmp_path / "data_manifest.yaml").write_text(
        "version: 1\n"
        "database: sqlite:///fqi.db\n"
        "pseudonymisation_key: env:FQI_TEST_KEY\n"
        "fls_records:\n"
        "  - {name: fls, kind: csv, path: fls.csv, columns: {'FLS ID': record_id}}\n"
    )
    _new_site_database(tmp_path)
    argv = ["import-fls", "--manifest", str(tmp_path / "data_manifest.yaml")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 new" in out and "assessment_after_death" in out and NHS_B not in out
    assert main(argv) == 0
    assert "0 new, 0 updated, 2 unchanged" in capsys.readouterr().out
    assert main(argv + ["--source", "nope"]) == 2
    assert "no such source" in capsys.readouterr().err


def test_mrn_links_in_the_issuer_namespace_from_dicom(tmp_path):
    """The index keys an MRN-only patient in ``MRN:<IssuerOfPatientID>`` (not the site):
    linkage must try the ``patients.mrn_issuer`` values too."""
    from fracture_qi.dicom.index import index_folder
    from fracture_qi.outcomes.linkage import mrn_issuers
    from tests.dicomgen import write_ct_series

    eng = connect(f"sqlite:///{tmp_path / 'fqi.db'}")
    Base.metadata.create_all(eng)
    # no NHS number anywhere: the patient is known by PatientID in the issuer's namespace
    write_ct_series(tmp_path / "dicom" / "s1", n=12, PatientID="M777",
                    IssuerOfPatientID="RXH-PAS", OtherPatientIDsSequence=None,
                    AccessionNumber="ACC77", InstitutionName="Royal X Hospital")
    index_folder(tmp_path / "dicom", eng, SECRET)
    with session_scope(eng) as ses:
        (pat,) = ses.scalars(select(Patient)).all()
        assert pat.mrn_issuer == "RXH-PAS" and pat.nhs_number in (None, "")
        assert pat.patient_key == patient_key(SECRET, "M777", "MRN:RXH-PAS")
    assert "RXH-PAS" in mrn_issuers(eng)
    raw = pd.DataFrame([rec(record_id="9", mrn="M777", accession_number="ACC77",
                            referral_date="2025-02-01")])
    s = import_fls_records(raw, eng, SECRET, source="fls", today=TODAY)
    assert s.link_patient == {"mrn": 1}
    assert s.link_study["accession"] == 1
    with session_scope(eng) as ses:
        ep = ses.scalar(select(FlsEpisode).where(FlsEpisode.record_id == "9"))
        assert ep.patient_key == patient_key(SECRET, "M777", "MRN:RXH-PAS")
        assert ep.study_id is not None


# --------------------------------------------------------------------------------------------
# an export that cannot be trusted is refused as a whole (issue 21, item 6)
# --------------------------------------------------------------------------------------------
def _new_site_database(tmp_path) -> None:
    """The site's database, as `fracture-qi index` creates it: import-fls refuses to create
    one (a typo in the manifest's database: line must not start an empty site)."""
    from fracture_qi.store.init import open_store

    open_store(f"sqlite:///{tmp_path / 'fqi.db'}").dispose()


def _cli_site(tmp_path, monkeypatch, csv_text: str, extra: str = "") -> list[str]:
    monkeypatch.delenv("FRACTURE_QI_DATABASE", raising=False)
    monkeypatch.setenv("FQI_TEST_KEY", SECRET.decode())
    (tmp_path / "fls.csv").write_text(csv_text)
    _new_site_database(tmp_path)
    (tmp_path / "data_manifest.yaml").write_text(
        "version: 1\n"
        "database: sqlite:///fqi.db\n"
        "pseudonymisation_key: env:FQI_TEST_KEY\n"
        "fls_records:\n"
        f"  - {{name: fls, kind: csv, path: fls.csv{extra}}}\n"
    )
    return ["import-fls", "--manifest", str(tmp_path / "data_manifest.yaml")]


def _episodes(tmp_path) -> int:
    eng = connect(f"sqlite:///{tmp_path / 'fqi.db'}")
    try:
        with session_scope(eng) as s:
            return s.scalar(select(func.count(FlsEpisode.id))) or 0
    finally:
        eng.dispose()


def _csv(rows: list[dict[str, str]]) -> str:
    return pd.DataFrame(rows).to_csv(index=False)


def test_import_fls_refuses_an_export_over_the_size_limit(tmp_path, capsys, monkeypatch):
    from fracture_qi.cli.main import main
    from fracture_qi.outcomes.records import DEFAULT_MAX_EXPORT_MB

    text = _csv([rec(record_id=str(i), nhs_number=NHS_A, referral_date="2025-06-10")
                 for i in range(40)])
    argv = _cli_site(tmp_path, monkeypatch, text, ", max_mb: 0.001")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fls.csv" in err and "max_mb" in err and "MB" in err and len(err.splitlines()) == 1
    assert _episodes(tmp_path) == 0
    # the default limit holds without a max_mb (a sparse file: nothing is read)
    big = tmp_path / "big.csv"
    with open(big, "wb") as f:
        f.truncate(int((DEFAULT_MAX_EXPORT_MB + 1) * 1e6))
    with pytest.raises(ValidationError, match="over the limit"):
        read_fls_export(kind="csv", path=big)


def test_import_fls_refuses_unknown_columns_unless_left_out(tmp_path, capsys, monkeypatch):
    from fracture_qi.cli.main import main

    rows = [dict(rec(record_id="1", nhs_number=NHS_A, referral_date="2025-06-10"),
                 favourite_colour="blue")]
    argv = _cli_site(tmp_path, monkeypatch, _csv(rows))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "favourite_colour" in err and "ignore_columns" in err and len(err.splitlines()) == 1
    assert _episodes(tmp_path) == 0
    argv = _cli_site(tmp_path, monkeypatch, _csv(rows), ", ignore_columns: [favourite_colour]")
    assert main(argv) == 0
    assert _episodes(tmp_path) == 1


def test_import_fls_refuses_nul_bytes(tmp_path, capsys, monkeypatch):
    from fracture_qi.cli.main import main

    text = _csv([rec(record_id="1", nhs_number=NHS_A, referral_date="2025-06-10"),
                 rec(record_id="2", nhs_number=NHS_B, referral_date="2025-06-10")])
    lines = text.splitlines(keepends=True)
    lines[2] = lines[2].replace(",2025-06-10", ",2025-06-10\x00", 1)
    argv = _cli_site(tmp_path, monkeypatch, "".join(lines))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fls.csv line 3" in err and "NUL" in err and len(err.splitlines()) == 1
    assert _episodes(tmp_path) == 0
    # the same in a cell read from Excel or SQL (native values, no file bytes to look at)
    with pytest.raises(ValidationError, match=r"row 2, column nhs_number contains a NUL"):
        validate_records(pd.DataFrame([rec(record_id="1", nhs_number=NHS_A),
                                       rec(record_id="2", nhs_number=NHS_B + "\x00")]))
