"""A real Orthanc forwards a CT study to `fracture-qi listen`; the results come back into it.

Nothing but the listener runs between Orthanc's C-STORE and the checks: the study must be
indexed, screened and (flagged) put on the worklist, and the TID 1500 SR and the key image
must be stored back into the same Orthanc study by C-STORE, pass dciodvfy, and read back
through pydicom and highdicom. The Orthanc changes-feed mode is checked the same way.
"""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from tests.listener_helpers import ListenerProcess, new_port, query, wait_for, write_manifest
from tests.services.dciodvfy import dciodvfy_errors
from tests.services.orthanc import OrthancServer, orthanc  # noqa: F401
from tests.spine_ct import write_spine_study

pytestmark = pytest.mark.orthanc


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_spine_study(tmp_path_factory.mktemp("ct") / "study", seed=42)


def _orthanc_study(server: OrthancServer, study_uid: str) -> str:
    for sid in server.get("/studies"):
        if server.get(f"/studies/{sid}")["MainDicomTags"]["StudyInstanceUID"] == study_uid:
            return str(sid)
    raise AssertionError(f"study {study_uid} not in Orthanc")


def _result_files(server: OrthancServer, orthanc_study: str) -> dict[str, pydicom.Dataset]:
    """The SR and Secondary Capture instances now in the study, by modality."""
    out = {}
    for se in server.get(f"/studies/{orthanc_study}/series"):
        modality = se["MainDicomTags"].get("Modality")
        if modality in ("SR", "OT", "SEG"):
            inst = se["Instances"][0]
            data = server._request("GET", f"/instances/{inst}/file")
            out[modality] = pydicom.dcmread(io.BytesIO(data))
    return out


def _check_results(server: OrthancServer, study: list[Path], tmp_path: Path) -> None:
    ct = pydicom.dcmread(study[0], stop_before_pixels=True)
    oid = _orthanc_study(server, str(ct.StudyInstanceUID))
    results = wait_for(lambda: (r if len(r := _result_files(server, oid)) >= 2 else None),
                       "SR and key image stored back into Orthanc")
    sr, sc = results["SR"], results["OT"]
    for ds in (sr, sc):  # same study and patient, a new series that says it is an AI result
        assert ds.StudyInstanceUID == ct.StudyInstanceUID
        assert ds.PatientID == ct.PatientID
        assert ds.SeriesInstanceUID != ct.SeriesInstanceUID
        assert ds.SeriesDescription.startswith("AI RESULT")
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path)
        assert dciodvfy_errors(path) == [], ds.Modality
    # the SR through highdicom: the vertebrae, their grades, the study flag, the references
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    groups = report.get_image_measurement_groups()
    grades = [e.value.meaning for g in groups for e in g.get_qualitative_evaluations()
              if e.name.meaning == "Genant semi-quantitative grade"]
    assert any(g.startswith("Genant grade 3") for g in grades)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == ct.SeriesInstanceUID
    assert len(evidence.ReferencedSOPSequence) == len(study)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    # the key image through highdicom: RGB pixels, no identifiers burned in
    image = hd.imread(io.BytesIO(_bytes(sc)))
    assert image.SamplesPerPixel == 3 and sc.BurnedInAnnotation == "NO"
    assert sc.pixel_array.shape[2] == 3


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _site_routed_from(orthanc: OrthancServer, files: list[Path], tmp_path: Path, *,
                      quiet: float) -> tuple[Path, ListenerProcess, str]:
    """Orthanc holding *files*, a listener's site whose results go back to that Orthanc, the
    listener (not yet started) and Orthanc's id of the study: (database, listener, id)."""
    orthanc.clear()
    orthanc.upload(files)
    port = new_port()
    orthanc.add_modality("fqi", "FRACTUREQI", port)
    pacs = (f"  - {{name: pacs, kind: dimse, host: 127.0.0.1, port: {orthanc.dicom_port}, "
            f"called_aet: {orthanc.aet}, calling_aet: FRACTUREQI, timeout_s: 30}}\n")
    manifest = write_manifest(tmp_path, port=port, callers=(orthanc.aet,), quiet=quiet,
                              extra_sources=pacs, results_to="pacs")
    ct = pydicom.dcmread(files[0], stop_before_pixels=True)
    return (tmp_path / "fqi.db", ListenerProcess(manifest, port),
            _orthanc_study(orthanc, str(ct.StudyInstanceUID)))


def test_orthanc_forwards_a_study_and_gets_the_results_back(
        orthanc: OrthancServer, study: list[Path], tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    db, listener, oid = _site_routed_from(orthanc, study, tmp_path, quiet=2.0)
    orthanc.post("/modalities/fqi/store", oid.encode())  # the PACS routes the study to us
    wait_for(lambda: query(db, "select state from received_studies") == [("processed",)],
             "the study processed", listener=listener)
    assert query(db, "select count(*) from received_instances") == [(len(study),)]
    assert query(db, "select count(*), sum(flagged) from screenings") == [(1, 1)]
    assert query(db, "select stratum from worklist_items") == [("flagged",)]
    assert sorted(query(db, "select kind, status from result_objects")) == [
        ("keyimage", "sent"), ("sr", "sent")]
    _check_results(orthanc, study, tmp_path)
    assert listener.terminate() == 0


def test_orthanc_changes_feed_mode(orthanc: OrthancServer, study: list[Path],  # noqa: F811
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sites routing through Orthanc: each StableStudy of its changes feed is processed."""
    orthanc.clear()
    monkeypatch.setenv("FQI_TEST_ORTHANC_PW", orthanc.password)
    port = new_port()
    feed = (f'{{url: "{orthanc.url}", poll_seconds: 0.5, auth: {{username: {orthanc.user}, '
            f'password: "env:FQI_TEST_ORTHANC_PW"}}}}')
    web = (f'  - {{name: pacs, kind: dicomweb, url: "{orthanc.dicomweb_url}", auth: '
           f'{{username: {orthanc.user}, password: "env:FQI_TEST_ORTHANC_PW"}}}}\n')
    manifest = write_manifest(tmp_path, port=port, quiet=1.0, orthanc_feed=feed,
                              extra_sources=web, results_to="pacs")
    db = tmp_path / "fqi.db"
    listener = ListenerProcess.feed(manifest)
    wait_for(lambda: query(db, "select count(*) from service_state") == [(1,)],
             "the feed cursor set", listener=listener)
    orthanc.upload(study)  # a new study arrives in Orthanc; StableAge 1 s
    wait_for(lambda: query(db, "select state from received_studies") == [("processed",)],
             "the stable study processed", listener=listener)
    assert query(db, "select count(*), sum(flagged) from screenings") == [(1, 1)]
    assert query(db, "select stratum from worklist_items") == [("flagged",)]
    _check_results(orthanc, study, tmp_path)  # sent back by STOW-RS this time
    assert listener.terminate() == 0
    # our own SR coming back through the feed is not taken for new instances of the study
    assert query(db, "select count(*) from received_instances") == [(len(study),)]


def test_screen_command_sends_results_and_retries_failures(
        orthanc: OrthancServer, study: list[Path], tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`fracture-qi screen --manifest M` with results_to_pacs: the run's results go into the
    study on the PACS; when the PACS cannot be reached they are recorded as failed, the run
    still succeeds, and the next run sends them."""
    from fracture_qi.cli.main import main

    orthanc.clear()
    orthanc.upload(study)
    monkeypatch.setenv("FQI_TEST_ORTHANC_PW", orthanc.password)
    (tmp_path / "dicom").symlink_to(study[0].parent, target_is_directory=True)

    def manifest(url: str) -> Path:
        path = tmp_path / "site.yaml"
        path.write_text(
            "version: 1\nsynthetic: true\n"
            f"database: sqlite:///{tmp_path / 'fqi.db'}\n"
            "dicom_sources:\n  - {name: archive, kind: folder, path: dicom/}\n"
            f'  - {{name: pacs, kind: dicomweb, url: "{url}", retries: 0, timeout_s: 5, '
            f'auth: {{username: {orthanc.user}, password: "env:FQI_TEST_ORTHANC_PW"}}}}\n'
            "results_to_pacs: {source: pacs}\nscreening: {device: cpu}\n")
        return path

    dead = f"http://127.0.0.1:{new_port()}/dicom-web"
    assert main(["index", "--manifest", str(manifest(dead)), "--source", "archive"]) == 0
    assert main(["screen", "--manifest", str(manifest(dead)), "--workers", "0",
                 "--no-progress"]) == 0
    db = tmp_path / "fqi.db"
    rows = query(db, "select kind, status, attempts from result_objects order by kind")
    assert rows == [("keyimage", "failed", 1), ("sr", "failed", 1)]
    assert main(["screen", "--manifest", str(manifest(orthanc.dicomweb_url)), "--workers", "0",
                 "--no-progress"]) == 0  # nothing left to screen; the failures are retried
    rows = query(db, "select kind, status, attempts from result_objects order by kind")
    assert rows == [("keyimage", "sent", 2), ("sr", "sent", 2)]
    _check_results(orthanc, study, tmp_path)


def _instances_of(server: OrthancServer, orthanc_study: str, modality: str
                  ) -> list[pydicom.Dataset]:
    """Every instance of *modality* in the study, by InstanceNumber."""
    out = []
    for se in server.get(f"/studies/{orthanc_study}/series"):
        if se["MainDicomTags"].get("Modality") == modality:
            for inst in se["Instances"]:
                data = server._request("GET", f"/instances/{inst}/file")
                out.append(pydicom.dcmread(io.BytesIO(data)))
    return sorted(out, key=lambda d: int(d.InstanceNumber))


def test_results_of_a_study_completed_after_they_were_sent_are_corrected(
        orthanc: OrthancServer, study: list[Path], tmp_path: Path) -> None:  # noqa: F811
    """The PACS forwards the first 90 of 150 slices, pauses past quiet_seconds, then forwards
    the whole study. The SR and key image of the incomplete series went into the PACS
    already; those of the complete series must follow as new instances of the same result
    series, the new SR naming the old one as its predecessor, and the flag must be right."""
    db, listener, oid = _site_routed_from(orthanc, study[:90], tmp_path, quiet=1.0)
    try:
        orthanc.post("/modalities/fqi/store", oid.encode())
        wait_for(lambda: query(db, "select state, n_instances from received_studies")
                 == [("processed", 90)], "the first part processed", listener=listener)
        assert sorted(query(db, "select kind, status from result_objects")) == [
            ("keyimage", "sent"), ("sr", "sent")]
        (first,) = _instances_of(orthanc, oid, "SR")
        orthanc.upload(study[90:])
        # the whole study again, with the results we stored into it (not taken as new)
        orthanc.post("/modalities/fqi/store", oid.encode())
        wait_for(lambda: query(db, "select state, n_instances from received_studies")
                 == [("processed", len(study))], "the completed study processed",
                 listener=listener)
    finally:
        assert listener.terminate() == 0
    assert query(db, "select count(*), sum(status = 'sent') from result_objects") == [(4, 4)]
    old_sr, new_sr = _instances_of(orthanc, oid, "SR")
    assert old_sr.SOPInstanceUID == first.SOPInstanceUID
    assert new_sr.SOPInstanceUID != old_sr.SOPInstanceUID
    assert new_sr.SeriesInstanceUID == old_sr.SeriesInstanceUID
    assert (int(old_sr.InstanceNumber), int(new_sr.InstanceNumber)) == (1, 2)
    pred = new_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert pred.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old_sr.SOPInstanceUID

    def flag_and_evidence(sr: pydicom.Dataset) -> tuple[str, int]:
        flags = [item.ConceptCodeSequence[0].CodeMeaning
                 for box in sr.ContentSequence if "ContentSequence" in box
                 for item in box.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeMeaning.startswith("Suspected")]
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        return flags[0], len(evidence.ReferencedSOPSequence)

    assert flag_and_evidence(old_sr) == ("Absent", 90)
    assert flag_and_evidence(new_sr) == ("Present", len(study))
    assert [int(d.InstanceNumber) for d in _instances_of(orthanc, oid, "OT")] == [1, 2]
    new_sr.save_as(tmp_path / "new_sr.dcm")
    assert dciodvfy_errors(tmp_path / "new_sr.dcm") == []
