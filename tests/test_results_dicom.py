"""DICOM results: the TID 1500 SR, the key image and the SEG are valid (dciodvfy), read back
through pydicom and highdicom, and import back as vendor results identical to what was
written; simple vendor SRs and flagged Secondary Captures are understood too."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fracture_qi.results_dicom.read import read_file, read_results
from fracture_qi.results_dicom.sc import build_keyimage
from fracture_qi.results_dicom.seg import body_masks, build_seg
from fracture_qi.results_dicom.source import ScreenedSeries, canonical_origin, read_headers
from fracture_qi.results_dicom.sr import build_sr
from fracture_qi.screening.models import load_model
from fracture_qi.screening.types import SeriesResult, VertebraResult
from tests.dicomgen import write_ct_series
from tests.services.dciodvfy import dciodvfy_errors

OUTLINE = [[5.0, 4.0], [5.0, 16.0], [30.0, 16.0], [30.0, 4.0]]


def _result(flagged: bool = True) -> SeriesResult:
    geom = {"centre_zyx_mm": [18.0, 10.0, 12.0], "x_mm": 12.0, "width_mm": 10.0,
            "outline_zy_mm": OUTLINE}
    verts = [
        VertebraResult("T12", 0, "normal", 24.1, 23.0, 25.2, 0.05, 151.0, geom),
        VertebraResult("L1", 3 if flagged else 0, "wedge" if flagged else "normal", 12.5, 21.0,
                       26.0, 0.9, 130.0, {**geom, "centre_zyx_mm": [40.0, 10.0, 12.0]}),
        VertebraResult("L2", 0, "normal", None, None, None, None, None, None,
                       quality="partial_fov"),
        VertebraResult(None, 1, "biconcave", 22.0, 18.0, 23.0, 0.4, 140.0, None),
    ]
    return SeriesResult(flagged=flagged, max_grade=3 if flagged else 1, vertebrae=verts,
                        l1_hu=98.5, bone_density_level="L2", low_density=True,
                        contrast_phase="portal_venous", keyimage=None)


@pytest.fixture()
def series(tmp_path: Path) -> ScreenedSeries:
    paths = write_ct_series(tmp_path / "ct", n=30, spacing=2.0)
    headers = read_headers([str(p) for p in paths])
    rgb = np.zeros((120, 80, 3), np.uint8)
    rgb[20:60, 10:50] = (230, 30, 30)
    return ScreenedSeries(7, str(headers[0].StudyInstanceUID),
                          str(headers[0].SeriesInstanceUID), "fqi-reference", "0.8.0",
                          _result(), headers, keyimage=rgb)


def _items(ds: Dataset) -> list[Dataset]:
    out = []
    for item in ds.get("ContentSequence", []) or []:
        out.append(item)
        out += _items(item)
    return out


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_sr_is_valid_same_study_and_reads_back_through_highdicom(series: ScreenedSeries,
                                                                 tmp_path: Path) -> None:
    sr = build_sr(series)
    path = _save(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == series.study_instance_uid
    assert ds.SeriesInstanceUID != series.series_instance_uid
    assert ds.SeriesDescription.startswith("AI RESULT") and ds.Modality == "SR"
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99FQI"
    # same screening -> same UIDs: a resend replaces instead of duplicating
    assert build_sr(series).SOPInstanceUID == ds.SOPInstanceUID
    report = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    groups = report.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups][:3] == ["T12", "L1", "L2"]
    l1 = groups[1]
    assert l1.finding_sites[0].value.value == "66794005"  # SCT L1 vertebra
    values = {m.name.meaning: m.value for m in l1.get_measurements()}
    assert values["Anterior vertebral body height"] == pytest.approx(12.5)
    assert values["Mean Attenuation Coefficient"] == pytest.approx(130.0)
    evaluations = {e.name.meaning: e.value.meaning for e in l1.get_qualitative_evaluations()}
    assert evaluations["Genant semi-quantitative grade"].startswith("Genant grade 3")
    assert evaluations["Vertebral deformity type"] == "Wedge deformity"
    # the partial vertebra: a quality code and no grade
    l2 = {e.name.meaning: e.value.meaning for e in groups[2].get_qualitative_evaluations()}
    assert "Genant semi-quantitative grade" not in l2
    assert l2["Vertebra assessability"].startswith("Not assessed: cut")
    # the algorithm, and references to the source series' images
    names = {(i.ConceptNameCodeSequence[0].CodeMeaning, i.get("TextValue")) for i in _items(ds)
             if i.get("ValueType") == "TEXT"}
    assert ("Algorithm Name", "fqi-reference") in names
    assert ("Algorithm Version", "0.8.0") in names
    refs = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == series.series_instance_uid
    assert len(refs.ReferencedSOPSequence) == len(series.headers)
    assert len(l1.source_images) == 1


def test_sr_imports_back_as_identical_vendor_results(series: ScreenedSeries, tmp_path: Path
                                                     ) -> None:
    """The issue's round trip: SR written -> imported as a vendor result -> same levels,
    grades and flag (and quality, heights, density, phase)."""
    folder = tmp_path / "vendor"
    folder.mkdir()
    _save(build_sr(series), folder / "sr.dcm")
    model = load_model({"kind": "vendor", "path": str(folder), "id": "acme", "version": "1"})
    got = model.result_for(series.study_instance_uid)
    want = series.result
    assert got.status == "ok"
    assert got.flagged is want.flagged and got.max_grade == want.max_grade
    assert [(v.level, v.genant_grade, v.quality) for v in got.vertebrae] == [
        (v.level, v.genant_grade if v.quality == "ok" else 0, v.quality) for v in want.vertebrae]
    assert [(v.morph_type, v.ha_mm, v.hm_mm, v.hp_mm) for v in got.vertebrae[:2]] == [
        (v.morph_type, v.ha_mm, v.hm_mm, v.hp_mm) for v in want.vertebrae[:2]]
    assert (got.l1_hu, got.bone_density_level, got.low_density, got.contrast_phase) == (
        98.5, "L2", True, "portal_venous")
    assert len(model.sha256) == 64  # the folder's digest, recorded with the run
    assert model.result_for("1.2.3").reason == "NO_MODEL_RESULT"


def test_negative_sr_round_trip(series: ScreenedSeries, tmp_path: Path) -> None:
    series.result = _result(flagged=False)
    series.result.flagged = False
    got = read_sr_file(build_sr(series), tmp_path)
    assert got.flagged is False and got.max_grade == 1


def read_sr_file(sr: Dataset, tmp_path: Path) -> SeriesResult:
    r = read_file(_save(sr, tmp_path / "x.dcm"))
    assert r is not None and r.kind == "tid1500"
    return r.result


def test_key_image_secondary_capture(series: ScreenedSeries, tmp_path: Path) -> None:
    path = _save(build_keyimage(series), tmp_path / "sc.dcm")
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == series.study_instance_uid
    assert ds.BurnedInAnnotation == "NO" and ds.SamplesPerPixel == 3
    assert np.array_equal(ds.pixel_array, series.keyimage)
    image = hd.imread(io.BytesIO(path.read_bytes()))
    assert image.SeriesDescription.startswith("AI RESULT")


def test_seg_of_outlined_bodies(series: ScreenedSeries, tmp_path: Path) -> None:
    path = _save(build_seg(series), tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(path))
    assert seg.number_of_segments == 2  # T12 and L1 carry outlines; the others do not
    labels = [seg.get_segment_description(i).segment_label for i in (1, 2)]
    assert labels == ["T12 body (approximate)", "L1 body (approximate)"]
    # the T12 prism lies where its outline says: z 5-30 mm above the lowest slice
    origin = canonical_origin(series.headers)
    t12 = dict(body_masks(series))[0]
    z = [float(h.ImagePositionPatient[2]) - origin[2] for n, h in enumerate(series.headers)
         if t12[n].any()]
    assert 4.0 <= min(z) and max(z) <= 31.0 and len(z) >= 10
    cols = np.flatnonzero(t12.any(axis=(0, 1)))  # 10 mm wide around x = 12 mm, at 0.8 mm
    assert 10 <= len(cols) <= 14
    series.result.vertebrae = [VertebraResult("L3", 0, "normal", 1, 1, 1)]
    assert build_seg(series) is None  # nothing outlined: no SEG


def _vendor_sr(path: Path, study: str, name: str, value: tuple[str, str, str],
               text: str | None = None) -> Path:
    """A minimal vendor-style Enhanced SR with one study-level finding."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, generate_uid(), "SR"
    ds.Manufacturer, ds.ContentDate, ds.ContentTime = "ACME AI", "20250101", "120000"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("VCF-REPORT", "99ACME", "Vertebral fracture report")]
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "CODE"
    item.ConceptNameCodeSequence = [_code(*name)]
    item.ConceptCodeSequence = [_code(*value)]
    ds.ContentSequence = [item]
    if text is not None:
        t = Dataset()
        t.RelationshipType, t.ValueType, t.TextValue = "CONTAINS", "TEXT", text
        t.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
        ds.ContentSequence.append(t)
    ds.save_as(path, enforce_file_format=True)
    return path


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def test_vendor_style_sr_and_flagged_secondary_capture(tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    folder.mkdir()
    pos, neg, sc_pos, sc_neg = (generate_uid() for _ in range(4))
    _vendor_sr(folder / "a.dcm", pos, ("121071", "DCM", "Finding"),
               ("123", "99ACME", "Vertebral compression fracture detected"),
               text="Suspected fracture of L1")
    _vendor_sr(folder / "b.dcm", neg, ("VCF", "99ACME", "Vertebral fracture"),
               ("121054", "DCM", "Absent"))
    for uid, desc, name in ((sc_pos, "ACME VCF: POSITIVE - suspected fracture", "c.dcm"),
                            (sc_neg, "ACME VCF: NEGATIVE", "d.dcm")):
        ds = pydicom.dcmread(_save(build_dummy_sc(uid), folder / name))
        ds.SeriesDescription = desc
        ds.save_as(folder / name)
    (folder / "notes.txt").write_text("not DICOM")
    found = read_results([folder])
    assert found.ignored == 1
    got = {uid: (r.kind, r.result.flagged) for uid, r in found.by_study.items()}
    assert got == {pos: ("vendor-sr", True), neg: ("vendor-sr", False),
                   sc_pos: ("sc", True), sc_neg: ("sc", False)}
    assert [v.level for v in found.by_study[pos].result.vertebrae] == ["L1"]


def build_dummy_sc(study: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, generate_uid(), "OT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(16)
    return ds


def test_a_sr_of_this_suite_wins_over_a_secondary_capture(series: ScreenedSeries,
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "both"
    folder.mkdir()
    _save(build_sr(series), folder / "sr.dcm")
    sc = build_dummy_sc(series.study_instance_uid)
    sc.SeriesDescription = "NEGATIVE"
    _save(sc, folder / "sc.dcm")
    best = read_results([folder]).by_study[series.study_instance_uid]
    assert best.kind == "tid1500" and best.result.flagged is True


def test_a_superseding_result_is_a_new_instance_naming_its_predecessor(
        series: ScreenedSeries, tmp_path: Path) -> None:
    """The series gained instances and was screened again: its objects are new instances
    (the PACS keeps what it was sent) of the same result series, and the SR names the one it
    replaces in its Predecessor Documents Sequence."""
    from fracture_qi.results_dicom.sr import result_uid

    first = {"sr": build_sr(series), "sc": build_keyimage(series), "seg": build_seg(series)}
    # first screenings keep the UIDs they always had (objects sent before still match)
    parts = (series.series_instance_uid, series.model_id, series.model_version)
    assert first["sr"].SOPInstanceUID == result_uid("sr", *parts)
    assert first["sc"].SOPInstanceUID == result_uid("sc", *parts)
    assert "PredecessorDocumentsSequence" not in first["sr"]
    old = Dataset()
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        setattr(old, key, getattr(first["sr"], key))
    series.screening_id, series.revision, series.predecessors = 9, 2, [old]
    again = {"sr": build_sr(series), "sc": build_keyimage(series), "seg": build_seg(series)}
    for kind, ds in again.items():
        assert ds.SeriesInstanceUID == first[kind].SeriesInstanceUID, kind
        assert ds.SOPInstanceUID != first[kind].SOPInstanceUID, kind
        assert int(ds.InstanceNumber) == 2, kind
    pred = again["sr"].PredecessorDocumentsSequence[0]
    assert pred.StudyInstanceUID == series.study_instance_uid
    ref = pred.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == first["sr"].SeriesInstanceUID
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first["sr"].SOPInstanceUID
    assert dciodvfy_errors(_save(again["sr"], tmp_path / "sr2.dcm")) == []
