"""Tests for fracture_qi.dicom.pacs against a real Orthanc (DICOMweb and DIMSE).

The same small cohort is written to a folder and uploaded to Orthanc; the PACS path must
then give what the folder path gives: the same eligibility, reasons and chosen series, and
bit-identical HU volumes of the chosen series.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from fracture_qi.dicom import pacs
from fracture_qi.dicom.scan import scan_paths
from fracture_qi.dicom.volume import load_series, series_files
from fracture_qi.errors import FetchError, PacsError
from fracture_qi.manifest import DicomWebSource, DimseSource
from tests.services.orthanc import OrthancServer, free_port, orthanc  # noqa: F401
from tests.test_volume import make_series

STUDY_A, STUDY_B, STUDY_C = (f"1.2.826.0.1.3680043.8.498.10{i}" for i in (1, 2, 3))


def _cohort(root: Path) -> dict[str, list[Path]]:
    """Three studies: A (thin RLE series chosen over a thick one), B (age 45), C (no age)."""
    out = {}
    spec = {
        "A1": {"study_uid": STUDY_A, "series_uid": STUDY_A + ".1", "n": 25, "step": 2.0,
                   "SliceThickness": 2.0, "SeriesNumber": 2, "PatientAge": "072Y", "PatientID": "P1",
                   "AccessionNumber": "ACC1", "StudyDate": "20240105"},
        "A2": {"study_uid": STUDY_A, "series_uid": STUDY_A + ".2", "n": 11, "step": 5.0,
                   "SliceThickness": 5.0, "SeriesNumber": 3, "PatientAge": "072Y", "PatientID": "P1",
                   "AccessionNumber": "ACC1", "StudyDate": "20240105"},
        "B": {"study_uid": STUDY_B, "series_uid": STUDY_B + ".1", "n": 25, "step": 2.0,
                  "SliceThickness": 2.0, "SeriesNumber": 2, "PatientAge": "045Y", "PatientID": "P2",
                  "AccessionNumber": "ACC2", "StudyDate": "20240210"},
        "C": {"study_uid": STUDY_C, "series_uid": STUDY_C + ".1", "n": 25, "step": 2.0,
                  "SliceThickness": 2.0, "SeriesNumber": 2, "PatientID": "P3",
                  "AccessionNumber": "ACC3", "StudyDate": "20230301"},
    }
    for name, kw in spec.items():
        folder = root / name
        folder.mkdir(parents=True)
        out[name] = make_series(folder, **kw)  # type: ignore[arg-type]
    for p in out["A1"]:  # stored compressed: must come back as stored, not transcoded
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        ds.save_as(p)
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    _cohort(root)
    return root


@pytest.fixture()
def pacs_server(orthanc: OrthancServer, cohort: Path,  # noqa: F811
                monkeypatch: pytest.MonkeyPatch) -> OrthancServer:
    """Orthanc holding exactly the cohort; its password in FQI_TEST_PACS_PW."""
    orthanc.clear()
    orthanc.upload(series_files(cohort))
    # as a hospital PACS team would: our calling AE is a known modality (C-GET needs it)
    orthanc.add_modality("fqitest", "FQITEST", 104)
    monkeypatch.setenv("FQI_TEST_PACS_PW", orthanc.password)
    return orthanc


def dicomweb_source(server: OrthancServer, **kw: object) -> DicomWebSource:
    args = {"name": "pacs-web", "kind": "dicomweb", "url": server.dicomweb_url,
                "auth": {"username": server.user, "password": "env:FQI_TEST_PACS_PW"},
                "timeout_s": 10, "retries": 1, "backoff_s": 0.05}
    args.update(kw)
    return DicomWebSource(**args)  # type: ignore[arg-type]


def dimse_source(server: OrthancServer, **kw: object) -> DimseSource:
    args = {"name": "pacs-dimse", "kind": "dimse", "host": "127.0.0.1", "port": server.dicom_port,
                "called_aet": server.aet, "calling_aet": "FQITEST", "timeout_s": 10, "retries": 1,
                "backoff_s": 0.05}
    args.update(kw)
    return DimseSource(**args)  # type: ignore[arg-type]


def outcome(result) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    return {s.series_instance_uid: (s.status, s.reason, s.chosen, s.n_instances)
            for s in result.series}


# ------------------------------------------------------------------------------- no server


def test_uris_round_trip() -> None:
    uri = pacs.instance_uri("p", "1.2", "1.2.3", "1.2.3.4")
    assert pacs.parse_uri(uri) == pacs.PacsRef("p", "1.2", "1.2.3", "1.2.3.4")
    assert pacs.parse_uri("/local/file.dcm") is None
    with pytest.raises(PacsError):
        pacs.parse_uri("pacs://p/nonsense")


def test_materialise_local_paths_and_unknown_source() -> None:
    with pacs.materialise(["/data/a.dcm", "/data/b.dcm"], []) as files:
        assert files == ["/data/a.dcm", "/data/b.dcm"]
    with pytest.raises(FetchError) as info, pacs.materialise(
            [pacs.instance_uri("gone", "1.2", "1.2.3", "1.2.3.4")], []):
        pass
    assert info.value.reason == "FETCH_FAILED" and "'gone'" in str(info.value)


class _Flaky:
    def __init__(self, failures: int, exc: Exception) -> None:
        self.failures, self.exc, self.calls = failures, exc, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


def test_retries_with_exponential_backoff() -> None:
    src = DimseSource(name="x", kind="dimse", host="h", port=1, called_aet="A", retries=3,
                      backoff_s=0.5)
    slept: list[float] = []
    fn = _Flaky(2, ConnectionError("reset"))
    assert pacs.with_retries(fn, what="test", source=src, sleep=slept.append) == "ok"
    assert fn.calls == 3 and slept == [0.5, 1.0]
    slept.clear()
    fn = _Flaky(10, TimeoutError("slow"))
    with pytest.raises(PacsError, match="after 4 tries"):
        pacs.with_retries(fn, what="test", source=src, sleep=slept.append)
    assert fn.calls == 4 and slept == [0.5, 1.0, 2.0]
    fn = _Flaky(10, ValueError("refused"))  # not transient: no retry
    with pytest.raises(PacsError):
        pacs.with_retries(fn, what="test", source=src, sleep=slept.append)
    assert fn.calls == 1


def test_unreachable_dicomweb_fails_cleanly() -> None:
    src = DicomWebSource(name="gone", kind="dicomweb", url=f"http://127.0.0.1:{free_port()}",
                         timeout_s=2, retries=1, backoff_s=0.01)
    with pytest.raises(PacsError, match="after 2 tries"):
        pacs.echo(src)


def test_unreachable_dimse_fails_cleanly() -> None:
    src = DimseSource(name="gone", kind="dimse", host="127.0.0.1", port=free_port(),
                      called_aet="NOBODY", timeout_s=2, retries=1, backoff_s=0.01)
    with pytest.raises(PacsError, match="after 2 tries"):
        pacs.echo(src)


# --------------------------------------------------------------------------- with Orthanc


@pytest.mark.orthanc
def test_dicomweb_index_equals_folder_index(pacs_server: OrthancServer, cohort: Path) -> None:
    folder = scan_paths([cohort])
    web = pacs.scan_pacs(dicomweb_source(pacs_server))
    assert outcome(web) == outcome(folder)
    # A.2 is the study's 5 mm series: never graded (SLICE_TOO_THICK), over DICOMweb as on disk
    want = {STUDY_A + ".1": ("ok", None, True),
            STUDY_A + ".2": ("excluded", "SLICE_TOO_THICK", False),
            STUDY_B + ".1": ("excluded", "AGE_UNDER_50", False),
            STUDY_C + ".1": ("excluded", "AGE_UNKNOWN", False)}
    assert {k: v[:3] for k, v in outcome(web).items()} == want
    chosen = web.chosen()[0]
    assert chosen.files[0].startswith("pacs://pacs-web/studies/")
    assert chosen.folder == pacs.series_uri("pacs-web", STUDY_A, STUDY_A + ".1")


@pytest.mark.orthanc
def test_dicomweb_date_range(pacs_server: OrthancServer) -> None:
    import datetime as dt

    src = dicomweb_source(pacs_server)
    got = pacs.query_studies(src, since=dt.date(2024, 1, 1), until=dt.date(2024, 1, 31))
    assert [s["study_uid"] for s in got] == [STUDY_A]
    assert len(pacs.query_studies(src)) == 3


@pytest.mark.orthanc
@pytest.mark.parametrize("kind", ["dicomweb", "get", "move"])
def test_chosen_series_volume_equals_folder(pacs_server: OrthancServer, cohort: Path,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            kind: str) -> None:
    if kind == "dicomweb":
        src = dicomweb_source(pacs_server)
    elif kind == "get":
        src = dimse_source(pacs_server)
    else:
        port = free_port()
        pacs_server.add_modality("fqi", "FQISCP", port)
        src = dimse_source(pacs_server, retrieve="move", move_destination="FQISCP",
                           storage_port=port)
        monkeypatch.setenv("FRACTURE_QI_STORAGE_BIND", "127.0.0.1")
    scan = pacs.scan_pacs(src)
    assert outcome(scan) == outcome(scan_paths([cohort]))
    chosen = scan.chosen()[0]
    # no cache: a private temporary folder, removed as soon as the block ends
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pacs.materialise(chosen.files, [src]) as files:
        assert all(Path(f).parent.parent == tmp_path for f in files)
        from_pacs = load_series(files, strict=True)
    assert list(tmp_path.iterdir()) == []
    from_folder = load_series(series_files(cohort / "A1"), strict=True)
    np.testing.assert_array_equal(from_pacs.hu, from_folder.hu)
    assert from_pacs.origin == from_folder.origin and from_pacs.spacing == from_folder.spacing
    assert from_pacs.meta["transfer_syntax"] == RLELossless  # sent as stored


@pytest.mark.orthanc
@pytest.mark.parametrize("kind", ["dicomweb", "get"])
def test_fetch_is_resumable_and_cache_is_kept(pacs_server: OrthancServer, tmp_path: Path,
                                              kind: str) -> None:
    cache = tmp_path / "cache"
    src = (dicomweb_source(pacs_server, cache_dir=cache) if kind == "dicomweb"
           else dimse_source(pacs_server, cache_dir=cache))
    with pacs.fetched_series(src, STUDY_A, STUDY_A + ".1") as files:
        assert len(files) == 25
    folder = pacs.cache_folder(src, STUDY_A, STUDY_A + ".1")
    assert folder is not None and len(list(folder.glob("*.dcm"))) == 25  # kept: a cache
    # an interrupted earlier run: three files missing, one half-written
    for f in files[:3]:
        f.unlink()
    (folder / "x.dcm.part").write_bytes(b"half")
    kept = {f: f.stat().st_mtime_ns for f in files[3:]}
    again = pacs.fetch_series(src, STUDY_A, STUDY_A + ".1", folder)
    assert len(again) == 25 and not list(folder.glob("*.part"))
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())  # not fetched again
    load_series(again, strict=True)


@pytest.mark.orthanc
def test_wrong_password_is_refused_not_retried(pacs_server: OrthancServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FQI_TEST_PACS_PW", "wrong")
    with pytest.raises(PacsError, match="HTTP 401"):
        pacs.echo(dicomweb_source(pacs_server, retries=5, backoff_s=10))


@pytest.mark.orthanc
def test_missing_series_is_fetch_failed(pacs_server: OrthancServer, tmp_path: Path) -> None:
    src = dimse_source(pacs_server, retries=0)
    with pytest.raises(FetchError) as info:
        pacs.fetch_series(src, STUDY_A, STUDY_A + ".999", tmp_path,
                          expected=["1.2.3.4.5.6.7"])
    assert info.value.reason == "FETCH_FAILED"


@pytest.mark.orthanc
def test_echo_both_kinds(pacs_server: OrthancServer) -> None:
    assert pacs.echo(dicomweb_source(pacs_server)) < 10
    assert pacs.echo(dimse_source(pacs_server)) < 10


@pytest.mark.orthanc
def test_index_pacs_into_database_equals_folder(pacs_server: OrthancServer, cohort: Path,
                                                tmp_path: Path) -> None:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from fracture_qi.dicom.index import chosen_series, index_folder
    from fracture_qi.store.init import open_store
    from fracture_qi.store.schema import Series

    secret = b"0123456789abcdef0123"

    def rows(engine) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
        with Session(engine) as s:
            return {r.series_instance_uid: (r.status, r.reason, r.chosen, r.n_instances)
                    for r in s.scalars(select(Series))}

    db_folder = open_store(f"sqlite:///{tmp_path / 'folder.db'}")
    index_folder(cohort, db_folder, secret, source_name="archive")
    db_pacs = open_store(f"sqlite:///{tmp_path / 'pacs.db'}")
    src = dicomweb_source(pacs_server)
    summary = pacs.index_pacs(src, db_pacs, secret)
    assert rows(db_pacs) == rows(db_folder)
    assert summary.n_studies == 3
    refs = chosen_series(db_pacs)
    assert len(refs) == 1 and refs[0].paths[0].startswith("pacs://pacs-web/")
    # z-sorted pacs:// paths load through the engine's loader hook
    loader = pacs.job_loader([src])
    vol = loader(refs[0])
    assert vol.shape[0] == 25
    # a rerun queries nothing new and adds nothing
    again = pacs.index_pacs(src, db_pacs, secret)
    assert again.n_new_files == 0 and rows(db_pacs) == rows(db_folder)
    assert os.environ.get("FQI_TEST_PACS_PW")


@pytest.mark.orthanc
def test_dimse_peer_without_image_geometry_falls_back_to_files(
        pacs_server: OrthancServer, cohort: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A PACS whose IMAGE-level C-FIND leaves out geometry: headers come from the files."""
    from fracture_qi.dicom import dimse

    real = dimse.series_headers

    def no_geometry(source, study_uid, series_uid):  # type: ignore[no-untyped-def]
        found = real(source, study_uid, series_uid)
        for d in found:
            del d.ImagePositionPatient
        return found

    monkeypatch.setattr(dimse, "series_headers", no_geometry)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    scan = pacs.scan_pacs(dimse_source(pacs_server))
    assert outcome(scan) == outcome(scan_paths([cohort]))
    assert list(tmp_path.iterdir()) == []  # headers read, files gone (no cache)


@pytest.mark.orthanc
def test_cli_echo_query_fetch(pacs_server: OrthancServer, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from fracture_qi.cli.main import main

    manifest = tmp_path / "data_manifest.yaml"
    manifest.write_text(
        "version: 1\n"
        f"database: sqlite:///{tmp_path / 'fqi.db'}\n"
        "dicom_sources:\n"
        f"  - {{name: web, kind: dicomweb, url: \"{pacs_server.dicomweb_url}\", timeout_s: 10,\n"
        f"     auth: {{username: {pacs_server.user}, password: \"env:FQI_TEST_PACS_PW\"}}}}\n"
        f"  - {{name: dimse, kind: dimse, host: 127.0.0.1, port: {pacs_server.dicom_port},\n"
        f"     called_aet: {pacs_server.aet}, calling_aet: FQITEST, timeout_s: 10, retries: 0}}\n"
    )
    assert main(["pacs", "echo", "--manifest", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "web: ok" in out and "dimse: ok" in out
    assert main(["pacs", "query", "--manifest", str(manifest), "--source", "web",
                 "--since", "2024-01-01"]) == 0
    out = capsys.readouterr().out
    assert "web: 2 CT studies, 3 CT series" in out and "2024-01: 1 studies" in out
    assert STUDY_A not in out  # no identifiers printed
    dest = tmp_path / "fetched"
    assert main(["pacs", "fetch", "--manifest", str(manifest), "--source", "dimse",
                 "--out", str(dest)]) == 0
    assert len(list((dest / STUDY_A / (STUDY_A + ".1")).glob("*.dcm"))) == 25
    assert "fetched 1, failed 0" in capsys.readouterr().out
    # a source that does not answer: named, exit status 1
    manifest.write_text(manifest.read_text().replace(str(pacs_server.dicom_port),
                                                     str(free_port())))
    assert main(["pacs", "echo", "--manifest", str(manifest), "--source", "dimse"]) == 1
    assert "dimse: FAILED" in capsys.readouterr().err


@pytest.mark.orthanc
@pytest.mark.slow
def test_index_and_screen_from_orthanc_equal_folder(orthanc: OrthancServer,  # noqa: F811
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's "done when": index + screen + export on a manifest whose source is Orthanc
    (DICOMweb, and DIMSE C-GET) give the results of the same files in a folder."""
    import csv

    from fracture_qi.cli.main import main

    cohort = tmp_path / "cohort"
    assert main(["synth", str(cohort), "--patients", "2"]) == 0
    orthanc.clear()
    orthanc.upload(series_files(cohort / "dicom"))
    orthanc.add_modality("fqi", "FRACTUREQI", 104)
    monkeypatch.setenv("FQI_TEST_PACS_PW", orthanc.password)
    text = (cohort / "data_manifest.yaml").read_text()
    folder_spec = "{name: synthetic, kind: folder, path: dicom/}"
    assert folder_spec in text
    specs = {
        "folder": folder_spec,
        "web": (f'{{name: pacs, kind: dicomweb, url: "{orthanc.dicomweb_url}", auth: '
                f'{{username: {orthanc.user}, password: "env:FQI_TEST_PACS_PW"}}}}'),
        "dimse": (f"{{name: pacs, kind: dimse, host: 127.0.0.1, port: {orthanc.dicom_port}, "
                  f"called_aet: {orthanc.aet}}}"),
    }
    results = {}
    for kind, spec in specs.items():
        m = cohort / f"manifest_{kind}.yaml"
        m.write_text(text.replace(folder_spec, spec).replace(
            "sqlite:///fracture_qi.db", f"sqlite:///{tmp_path / kind}.db"))
        for argv in (["index"], ["screen", "--workers", "1"], ["export", "--out",
                                                               str(tmp_path / kind)]):
            assert main([argv[0], "--manifest", str(m), *argv[1:]]) == 0, (kind, argv)
        with open(tmp_path / kind / "studies.csv") as f:
            studies = sorted((r["study_instance_uid"], r["series_instance_uid"], r["status"],
                              r["reason"], r["flagged"], r["max_grade"], r["n_vertebrae"])
                             for r in csv.DictReader(f))
        results[kind] = (studies, (tmp_path / kind / "vertebrae.csv").read_text())
    assert any(s[2] == "ok" for s in results["folder"][0])  # something was screened
    assert results["web"] == results["folder"]
    assert results["dimse"] == results["folder"]
