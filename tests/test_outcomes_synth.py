"""End to end on the synthetic generator's fls_records.csv: import, linkage, planted problems."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import select

from fracture_qi.cli.main import main
from fracture_qi.pseudonym import DEMO_KEY, patient_key
from fracture_qi.store.schema import FlsEpisode, Patient, Study

synth = pytest.importorskip("fracture_qi.synth")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "cohort"
    summary = synth.generate_cohort(out, patients=80, seed=7, truth_only=True, progress=False)
    (summary.outdir / "dicom").mkdir(exist_ok=True)  # truth_only writes no images
    return summary


def test_import_synthetic_fls_records(cohort, monkeypatch, capsys):
    from fracture_qi.manifest import read_manifest
    from fracture_qi.outcomes.readmodel import load_analysis
    from fracture_qi.qi.report import format_summary, headline_summary
    from fracture_qi.store import open_store, session_scope

    monkeypatch.delenv("FRACTURE_QI_KEY", raising=False)
    monkeypatch.delenv("FRACTURE_QI_DATABASE", raising=False)
    truth = cohort.outdir / "truth"
    patients = pd.read_csv(truth / "patients.csv", dtype=str)
    studies = pd.read_csv(truth / "studies.csv", dtype={"accession_number": str})
    studies = studies.drop_duplicates("study_instance_uid")
    manifest = read_manifest(cohort.manifest_path)
    engine = open_store(manifest)
    secret = DEMO_KEY.encode()
    # what the DICOM index would have written: patients by NHS key, studies with accessions
    with session_scope(engine) as s:
        ids = {}
        for p in patients.itertuples():
            row = Patient(patient_key=patient_key(secret, p.nhs_number), sex=p.sex)
            s.add(row)
            s.flush()
            ids[p.patient_id] = row.id
        for st in studies.itertuples():
            s.add(
                Study(
                    study_instance_uid=st.study_instance_uid,
                    patient_id=ids[st.patient_id],
                    accession_number=st.accession_number,
                    study_date=dt.date.fromisoformat(st.study_date),
                    site=st.site,
                    eligible=bool(st.expected_eligible),
                )
            )
    engine.dispose()

    assert main(["import-fls", "--manifest", str(cohort.manifest_path)]) == 0
    out = capsys.readouterr().out
    records = pd.read_csv(cohort.outdir / "fls_records.csv", dtype=str, keep_default_na=False)
    assert f"{len(records)} rows; {len(records)} new" in out
    for nhs in patients["nhs_number"]:
        assert nhs not in out

    engine = open_store(manifest)
    with session_scope(engine) as s:
        eps = {e.record_id: e for e in s.scalars(select(FlsEpisode))}
        acc_to_study = dict(s.execute(select(Study.accession_number, Study.id)).all())
    assert len(eps) == len(records)
    # every record naming an index CT is linked to exactly that CT
    with_acc = records[records["accession_number"] != ""]
    assert len(with_acc) > 0
    for r in with_acc.itertuples():
        assert eps[r.record_id].study_id == acc_to_study[r.accession_number]
    # every planted impossible row is reported, with the generator's problem
    planted = pd.read_csv(truth / "fls_problems.csv", dtype=str)
    assert len(planted) > 0
    for p in planted.itertuples():
        codes = {x["code"] for x in eps[p.record_id].problems}
        assert p.problem.lower() in codes, (p.record_id, p.problem, codes)
    # identifiers never stored
    blob = repr([[getattr(e, c.name) for c in FlsEpisode.__table__.columns] for e in eps.values()])
    assert not any(n in blob for n in patients["nhs_number"])
    # and the measures run on it
    data = load_analysis(engine)
    assert len(data.episodes) == len(records)
    text = format_summary(headline_summary(data, publish=True))
    assert "FLS KPIs" in text
    engine.dispose()
