"""Tests for fracture_qi.dicom.deid: the PS3.15 basic profile and key image export."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from fracture_qi.dicom.deid import (
    BASIC_PROFILE,
    DeidOptions,
    date_shift_days,
    deidentify,
    export_keyimage_dicom,
    identifying_values,
    pseudo_uid,
)
from tests.test_volume import make_dataset

SECRET = b"site-secret-for-tests-0001"
NAME, NHS, MRN = "Nakamura^Hiroshi", "9434765919", "RX12345"
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.555", "1.2.826.0.1.3680043.8.498.555.7"


def identified_ct() -> Dataset:
    """A CT slice carrying every kind of identifier a real archive has."""
    ds = make_dataset(np.array([-8.0, -6.0, 100.0]), study_uid=STUDY, series_uid=SERIES)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = NAME
    ds.PatientID = MRN
    ds.IssuerOfPatientID = "RXH"
    ds.PatientBirthDate = "19480317"
    ds.PatientSex = "F"
    ds.PatientAge = "076Y"
    ds.PatientWeight = 61
    ds.PatientAddress = "12 Quayside, Newcastle"
    ds.OtherPatientNames = "Nakamura^Hana"
    other = Dataset()
    other.PatientID = NHS
    other.IssuerOfPatientID = "NHS"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.AccessionNumber = "ACC98765"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240311"
    ds.StudyTime = "101500"
    ds.StudyID = "ST4455"
    ds.StudyDescription = "CT Abdomen for Nakamura"
    ds.SeriesDescription = "Axial 2mm"
    ds.ReferringPhysicianName = "Okafor^Chidi"
    ds.PerformingPhysicianName = "Smith^Ann"
    ds.OperatorsName = "Radiographer^Jo"
    ds.InstitutionName = "Royal Example Hospital"
    ds.InstitutionAddress = "1 Hospital Road"
    ds.StationName = "CTSCANNER01"
    ds.DeviceSerialNumber = "SN-777"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.556"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.557"
    ref.PatientName = "Nested^Name"
    ds.ReferencedImageSequence = Sequence([ref])
    ds.ImageComments = "patient anxious, phone 0191 000 0000"
    ds.add_new(0x00091010, "LO", "PRIVATE NAKAMURA")  # private tag with a name
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # overlay data
    ds.add_new(0x50000010, "US", 2)  # retired curve data
    return ds


def file_bytes(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_no_identifying_attribute_survives() -> None:
    src = identified_ct()
    secrets = identifying_values(src)
    assert {NAME, MRN, "19480317", "ACC98765", "Nested^Name"} <= secrets
    out = deidentify(src, secret=SECRET)
    raw = file_bytes(out)
    for value in secrets | {NHS, "Royal Example Hospital", "PRIVATE NAKAMURA", "Okafor",
                            "0191 000 0000", "20240311", STUDY, SERIES}:
        assert value.encode() not in raw, value
    assert not identifying_values(out) - {str(out.StudyInstanceUID), str(out.SeriesInstanceUID),
                                          str(out.SOPInstanceUID), str(out.FrameOfReferenceUID),
                                          str(out.ReferencedImageSequence[0]
                                              .ReferencedSOPInstanceUID),
                                          "ANONYMIZED", "ANONYMOUS", "19000101"}
    # every attribute of the table is gone, empty or a dummy
    for elem in out.iterall():
        action = BASIC_PROFILE.get(int(elem.tag))
        if action == "Z":
            assert elem.value in ("", None) or len(elem.value) == 0
    assert 0x00091010 not in out and 0x60003000 not in out and 0x50000010 not in out
    assert "PatientAge" not in out and "PatientWeight" not in out
    assert str(out.PatientName) == "" and out.PatientID == ""


def test_profile_is_recorded() -> None:
    out = deidentify(identified_ct(), secret=SECRET)
    assert out.PatientIdentityRemoved == "YES"
    codes = [(c.CodeValue, c.CodingSchemeDesignator) for c in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM")]
    assert "Basic Profile" in " ".join(out.DeidentificationMethod)
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_image_and_geometry_kept_and_source_untouched() -> None:
    src = identified_ct()
    before = file_bytes(src)
    out = deidentify(src, secret=SECRET)
    assert file_bytes(src) == before
    for kw in ("PixelData", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
               "RescaleSlope", "RescaleIntercept", "Modality", "SOPClassUID", "Manufacturer"):
        assert out[kw].value == src[kw].value, kw
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"


def test_uids_replaced_consistently() -> None:
    a = deidentify(identified_ct(), secret=SECRET)
    b = deidentify(identified_ct(), secret=SECRET)
    assert a.StudyInstanceUID == b.StudyInstanceUID == pseudo_uid(SECRET, STUDY)
    assert a.SeriesInstanceUID == pseudo_uid(SECRET, SERIES)
    assert a.StudyInstanceUID.startswith("2.25.") and len(a.StudyInstanceUID) <= 64
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    other = deidentify(identified_ct(), secret=b"another-site-secret-xyz")
    assert other.StudyInstanceUID != a.StudyInstanceUID
    # references follow the instances they point at
    assert (a.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            == pseudo_uid(SECRET, "1.2.826.0.1.3680043.8.498.557"))


def test_options_patient_characteristics_device_and_dates() -> None:
    opts = DeidOptions(retain_patient_characteristics=True, retain_device_identity=True,
                       retain_longitudinal_modified_dates=True, patient_pseudonym="a1b2c3d4")
    out = deidentify(identified_ct(), secret=SECRET, options=opts)
    assert (out.PatientAge, out.PatientSex, out.PatientWeight) == ("076Y", "F", 61)
    assert out.StationName == "CTSCANNER01" and out.DeviceSerialNumber == "SN-777"
    shift = date_shift_days(SECRET, MRN)
    import datetime as dt

    want = (dt.date(2024, 3, 11) - dt.timedelta(days=shift)).strftime("%Y%m%d")
    assert out.StudyDate == out.SeriesDate == want != "20240311"
    assert "PatientBirthDate" not in out or out.PatientBirthDate == ""
    assert out.PatientID == "a1b2c3d4" and str(out.PatientName) == "a1b2c3d4"
    codes = {c.CodeValue for c in out.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113107", "113108", "113109"}
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_secret_required() -> None:
    with pytest.raises(ValueError):
        deidentify(identified_ct(), secret=b"")


def test_keyimage_secondary_capture(tmp_path: Path) -> None:
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[10:20, 5:25] = (255, 128, 0)
    src = identified_ct()
    ds = export_keyimage_dicom(rgb, src, SECRET)
    path = tmp_path / "key.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    np.testing.assert_array_equal(back.pixel_array, rgb)
    assert back.StudyInstanceUID == pseudo_uid(SECRET, STUDY)  # joins the de-identified study
    assert back.SeriesInstanceUID != pseudo_uid(SECRET, SERIES)
    assert back.PatientIdentityRemoved == "YES" and back.BurnedInAnnotation == "NO"
    raw = path.read_bytes()
    for value in identifying_values(src) | {"Royal Example Hospital", "CTSCANNER01"}:
        assert value.encode() not in raw, value
    with pytest.raises(ValueError):
        export_keyimage_dicom(rgb.astype(np.float32), src, SECRET)
