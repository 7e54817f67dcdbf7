"""Tests for fracture_qi.dicom.volume: canonical HU volumes from awkward series.

Every series here is built by :func:`make_series` from a known field f(x, y, z) in patient
(LPS) millimetres, so a test can check any voxel of the loaded volume against the field at
that voxel's LPS position: orientation, flips, origin and spacing are all checked at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.dicom.volume import load_series, series_files
from fracture_qi.errors import DicomError, VolumeError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
INTERCEPT = -1024


def field(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """HU at LPS (x, y, z): distinct along every axis, integral, inside int16."""
    return np.rint(3 * x + 7 * y + 11 * z).astype(np.int32)


def make_dataset(
    position: np.ndarray,
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    rows: int = 16,
    cols: int = 20,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    series_uid: str = "1.2.826.0.1.3680043.8.498.2",
    values: Callable[..., np.ndarray] = field,
    **attrs: object,
) -> Dataset:
    """One single-frame CT slice whose stored values sample *values* at their LPS positions."""
    row_dir, col_dir = np.array(iop[:3], float), np.array(iop[3:], float)
    i, j = np.mgrid[0:rows, 0:cols]
    lps = (position[:, None, None] + i * pixel_spacing[0] * col_dir[:, None, None]
           + j * pixel_spacing[1] * row_dir[:, None, None])
    hu = values(lps[0], lps[1], lps[2])
    stored = (hu - INTERCEPT).astype(np.int16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.Manufacturer = "FQI-TEST"
    ds.ConvolutionKernel = "B30f"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST0001"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, INTERCEPT
    ds.PixelData = stored.tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def make_series(
    folder: Path | None,
    n: int = 10,
    step: float = 2.0,
    origin: tuple[float, float, float] = (-8.0, -6.0, 100.0),
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    stack_dir: tuple[float, float, float] | None = None,
    **kw: object,
) -> list[Path] | list[Dataset]:
    """A series of *n* slices; files in *folder* (shuffled names) or Datasets if None."""
    row_dir, col_dir = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row_dir, col_dir) if stack_dir is None else np.array(stack_dir, float)
    out: list = []
    rng = np.random.default_rng(0)
    for k in rng.permutation(n):
        ds = make_dataset(np.array(origin) + k * step * normal, iop=iop, **kw)  # type: ignore[arg-type]
        ds.InstanceNumber = int(k) + 1
        if folder is None:
            out.append(ds)
        else:
            p = folder / f"IM{rng.integers(1e9):09d}.dcm"
            ds.save_as(p, enforce_file_format=True)
            out.append(p)
    return out


def assert_matches_field(vol: CTVolume) -> None:
    """Every voxel equals the field at its LPS position (checks orientation and origin)."""
    z, y, x = vol.hu.shape
    k, i, j = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    ox, oy, oz = vol.origin
    dz, dy, dx = vol.spacing
    expected = field(ox + j * dx, oy + i * dy, oz + k * dz)
    np.testing.assert_array_equal(vol.hu, expected)


# ---------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "iop",
    [
        (1, 0, 0, 0, 1, 0),  # standard axial, head first
        (-1, 0, 0, 0, -1, 0),  # rotated 180 degrees (prone)
        (0, 1, 0, 1, 0, 0),  # rows along y: transposed in-plane axes, normal -z
        (0, 1, 0, 0, 0, -1),  # sagittal acquisition
        (1, 0, 0, 0, 0, -1),  # coronal acquisition
    ],
)
def test_canonical_orientation_and_origin(tmp_path: Path, iop: tuple[float, ...]) -> None:
    vol = load_series(make_series(tmp_path, iop=iop), strict=True)
    assert vol.hu.dtype == np.int16
    assert all(s > 0 for s in vol.spacing)
    assert_matches_field(vol)


def test_axial_meta_and_spacing(tmp_path: Path) -> None:
    vol = load_series(make_series(tmp_path, n=12, step=2.5), strict=True)
    assert vol.shape == (12, 16, 20)
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert vol.meta["decoder"] == "numpy"
    assert vol.meta["n_files"] == 12 and vol.meta["n_slices"] == 12
    assert vol.meta["manufacturer"] == "FQI-TEST" and vol.meta["kernel"] == "B30f"
    assert vol.series_instance_uid == "1.2.826.0.1.3680043.8.498.2"
    assert vol.hu.flags["C_CONTIGUOUS"]


def test_datasets_in_memory_equal_files(tmp_path: Path) -> None:
    from_files = load_series(make_series(tmp_path))
    from_ds = load_series(make_series(None))
    np.testing.assert_array_equal(from_files.hu, from_ds.hu)
    assert from_files.origin == from_ds.origin


def test_fast_path_equals_pixel_array_with_bits_stored(tmp_path: Path) -> None:
    """12-bit unsigned data with junk in the high bits: masked exactly as pydicom does."""
    paths = make_series(tmp_path, n=6)
    for p in paths:
        ds = pydicom.dcmread(p)
        arr = np.frombuffer(ds.PixelData, np.int16).astype(np.int32) - INTERCEPT
        arr = np.clip(arr, 0, 4095).astype(np.uint16) | 0xF000  # overlay bits set
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.PixelData = arr.tobytes()
        ds.save_as(p)
    vol = load_series(paths, strict=True)
    ref = np.stack([pydicom.dcmread(p).pixel_array.astype(np.int32) + INTERCEPT
                    for p in sorted(paths, key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])])
    np.testing.assert_array_equal(vol.hu, ref)


def test_non_integral_rescale(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=6)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1000.5
        ds.save_as(p)
    vol = load_series(paths)
    stored = np.frombuffer(pydicom.dcmread(paths[0]).PixelData, np.int16)
    assert vol.hu.min() >= np.rint(stored.min() * 0.5 - 1000.5) - 1e3  # sane range
    ds0 = pydicom.dcmread(paths[0])
    k = round((ds0.ImagePositionPatient[2] - vol.origin[2]) / vol.spacing[0])
    np.testing.assert_array_equal(
        vol.hu[k], np.rint(stored.reshape(16, 20) * 0.5 - 1000.5).astype(np.int16))


# ------------------------------------------------------------------------ failures with reasons


def reason_of(paths: list, **kw: object) -> str:
    with pytest.raises(DicomError) as info:
        load_series(paths, **kw)  # type: ignore[arg-type]
    return info.value.reason


def test_missing_rescale_is_never_scored(tmp_path: Path) -> None:
    paths = make_series(tmp_path)
    ds = pydicom.dcmread(paths[3])
    del ds.RescaleIntercept
    ds.save_as(paths[3])
    assert reason_of(paths) == ReasonCode.MISSING_RESCALE


def test_slice_gap(tmp_path: Path) -> None:
    paths = sorted(make_series(tmp_path, n=14),
                   key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])
    for gone in (paths[4], paths[9]):  # two slices missing: not interpolated
        gone.unlink()
    assert reason_of([p for p in paths if p.exists()]) == ReasonCode.SLICE_GAP


def test_two_adjacent_missing_slices_are_a_gap(tmp_path: Path) -> None:
    paths = sorted(make_series(tmp_path, n=14),
                   key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])
    paths[5].unlink()
    paths[6].unlink()
    assert reason_of([p for p in paths if p.exists()]) == ReasonCode.SLICE_GAP


def test_one_missing_slice_is_interpolated_and_recorded(tmp_path: Path) -> None:
    """Ingestion defect: one slice missing in an otherwise regular series is interpolated
    (the field is linear in z, so the interpolated slice is exact) and recorded."""
    paths = sorted(make_series(tmp_path, n=12),
                   key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])
    paths[5].unlink()
    kept = [p for p in paths if p.exists()]
    vol = load_series(kept)
    assert vol.shape[0] == 12
    assert_matches_field(vol)
    assert len(vol.meta["interpolated_slices"]) == 1
    assert any("interpolated" in c for c in vol.meta["coercions"])
    assert reason_of(kept, strict=True) == ReasonCode.SLICE_GAP  # strict mode: no repair


def test_uneven_spacing_and_tolerance(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=10)
    # jitter within tolerance (0.01 mm) is accepted as the usual step
    for n, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + (0.01 if n % 2 else 0)
        ds.save_as(p)
    assert load_series(paths, strict=True).spacing[0] == pytest.approx(2.0, abs=0.02)
    ds = pydicom.dcmread(paths[4])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.7
    ds.save_as(paths[4])
    assert reason_of(paths) == ReasonCode.UNEVEN_SPACING


def test_duplicate_positions(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=8)
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy = tmp_path / "copy.dcm"
    ds.save_as(copy)
    vol = load_series(paths + [copy])  # identical pixels: dropped
    assert vol.shape[0] == 8
    assert [d["reason"] for d in vol.meta["dropped"]] == ["DUPLICATE_POSITION"]
    assert reason_of(paths + [copy], strict=True) == ReasonCode.DUPLICATE_POSITION
    arr = np.frombuffer(ds.PixelData, np.int16).copy()
    arr[0] += 100
    ds.PixelData = arr.tobytes()
    ds.save_as(copy)
    assert reason_of(paths + [copy]) == ReasonCode.DUPLICATE_POSITION


def test_same_instances_received_twice(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=8)
    again = tmp_path / "again"
    again.mkdir()
    copies = []
    for p in paths[:3]:
        q = again / p.name
        q.write_bytes(p.read_bytes())
        copies.append(q)
    vol = load_series(paths + copies)
    assert vol.shape[0] == 8
    assert {d["reason"] for d in vol.meta["dropped"]} == {"DUPLICATE_STUDY"}


def test_mixed_orientation(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=8)
    ds = pydicom.dcmread(paths[1])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, -0.43589]
    ds.save_as(paths[1])
    assert reason_of(paths) == ReasonCode.MIXED_ORIENTATION


def test_gantry_tilt_is_refused_not_resampled(tmp_path: Path) -> None:
    tilt = np.radians(15)
    paths = make_series(tmp_path, n=8, stack_dir=(0, np.sin(tilt), np.cos(tilt)))
    assert reason_of(paths) == ReasonCode.GANTRY_TILT


def test_oblique_plane(tmp_path: Path) -> None:
    a = np.radians(30)
    iop = (1, 0, 0, 0, np.cos(a), -np.sin(a))
    assert reason_of(make_series(tmp_path, iop=iop)) == ReasonCode.NOT_AXIAL
    # a few degrees are tolerated and recorded
    b = np.radians(3)
    vol = load_series(make_series(None, iop=(1, 0, 0, 0, np.cos(b), -np.sin(b))))
    assert vol.meta["obliquity_deg"] == pytest.approx(3, abs=0.01)


def test_too_few_slices(tmp_path: Path) -> None:
    assert reason_of(make_series(tmp_path, n=3)) == ReasonCode.TOO_FEW_SLICES


def test_inconsistent_matrix(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=8)
    other = make_dataset(np.array([-8.0, -6.0, 100.0 + 2 * 8]), rows=18)
    other.save_as(tmp_path / "other.dcm", enforce_file_format=True)
    assert reason_of(paths + [tmp_path / "other.dcm"]) == ReasonCode.INCONSISTENT_MATRIX


def test_wrong_pixel_data_length(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=8)
    ds = pydicom.dcmread(paths[0])
    ds.PixelData = ds.PixelData[:-40]
    ds.save_as(paths[0])
    assert reason_of(paths) == ReasonCode.PIXEL_DATA_LENGTH


# ------------------------------------------------------------------- files that are not slices


def test_junk_files_are_dropped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = make_series(tmp_path, n=8)
    (tmp_path / "notes.txt").write_text("not dicom at all\n" * 20)
    (tmp_path / "empty.dcm").write_bytes(b"")
    trunc = tmp_path / "truncated.dcm"
    trunc.write_bytes(paths[0].read_bytes()[:300])
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    sr.SOPInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    extra = [tmp_path / n for n in ("notes.txt", "empty.dcm", "truncated.dcm", "report.dcm")]
    with caplog.at_level(logging.WARNING, logger="fracture_qi.dicom.volume"):
        vol = load_series(paths + extra)
    assert vol.shape[0] == 8
    reasons = {Path(d["path"]).name: d["reason"] for d in vol.meta["dropped"]}
    assert reasons["notes.txt"] == "NOT_DICOM"
    assert reasons["empty.dcm"] == "NOT_DICOM"
    assert reasons["truncated.dcm"] == "TRUNCATED"
    assert reasons["report.dcm"] == "NO_PIXEL_DATA"
    assert "notes.txt" in caplog.text
    with pytest.raises(VolumeError) as info:
        load_series(paths + extra, strict=True)
    assert info.value.reason == "NOT_DICOM"


def test_missing_preamble_read_with_force(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=8)
    # (a) file meta kept, preamble and DICM marker cut off
    no_preamble = tmp_path / "nopreamble.dcm"
    no_preamble.write_bytes(paths[0].read_bytes()[132:])
    # (b) a bare implicit-VR dataset, as old archives write them
    ds = pydicom.dcmread(paths[1])
    del ds.file_meta
    ds.preamble = None
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    paths[0].unlink()
    paths[1].unlink()
    files = paths[2:] + [no_preamble, bare]
    vol = load_series(files)
    assert vol.shape[0] == 8
    assert sum("preamble" in c for c in vol.meta["coercions"]) == 2
    assert_matches_field(vol)
    with pytest.raises(VolumeError):
        load_series(files, strict=True)


def test_truncated_inside_pixel_data(tmp_path: Path) -> None:
    paths = sorted(make_series(tmp_path, n=8),
                   key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    paths[0].write_bytes(paths[0].read_bytes()[:-100])
    # the bottom slice goes (logged); the rest is one clean volume
    vol = load_series(paths)
    assert vol.shape[0] == 7
    assert vol.meta["dropped"][0]["reason"] == "TRUNCATED"
    # a cut-short slice in the middle leaves a one-slice gap: interpolated, and both the
    # dropped file and the interpolation are recorded
    paths[4].write_bytes(paths[4].read_bytes()[:-100])
    vol = load_series(paths)
    assert vol.shape[0] == 7 and len(vol.meta["interpolated_slices"]) == 1
    assert [d["reason"] for d in vol.meta["dropped"]] == ["TRUNCATED", "TRUNCATED"]
    # two cut short leave a gap that is never papered over
    paths[5].write_bytes(paths[5].read_bytes()[:-100])
    assert reason_of(paths) == ReasonCode.SLICE_GAP


def test_dicomdir_is_skipped(tmp_path: Path) -> None:
    from pydicom.fileset import FileSet

    paths = make_series(tmp_path, n=8)
    fs = FileSet()
    ds = pydicom.dcmread(paths[0])
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber = "20240101", "120000", "1", 1
    fs.add(ds)
    out = tmp_path / "media"
    fs.write(out)
    vol = load_series(paths + [out / "DICOMDIR"])
    assert vol.shape[0] == 8
    assert vol.meta["dropped"][0]["reason"] == "DICOMDIR"


def test_localizer_mixed_in(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=8)
    scout = make_dataset(np.array([0.0, -200.0, 0.0]), iop=(1, 0, 0, 0, 0, -1), rows=30,
                         ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    scout.save_as(tmp_path / "scout.dcm", enforce_file_format=True)
    vol = load_series(paths + [tmp_path / "scout.dcm"])
    assert vol.shape[0] == 8
    assert vol.meta["dropped"][0]["reason"] == "LOCALIZER"
    # too few left once the localizers go
    assert reason_of(paths[:3] + [tmp_path / "scout.dcm"]) == ReasonCode.TOO_FEW_SLICES


def test_other_series_mixed_in(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=8)
    (tmp_path / "b").mkdir()
    other = make_series(tmp_path / "b", n=5, series_uid="1.2.826.0.1.3680043.8.498.99")
    vol = load_series(paths + other)
    assert vol.shape[0] == 8 and vol.series_instance_uid.endswith(".2")
    assert {d["reason"] for d in vol.meta["dropped"]} == {"MIXED_SERIES"}


@pytest.mark.parametrize("charset,name", [("ISO_IR 100", "Müller^Zoë"),
                                          ("ISO_IR 192", "Łukasz^Ørsted^李")])
def test_non_ascii_names_and_no_age(tmp_path: Path, charset: str, name: str) -> None:
    paths = make_series(tmp_path, n=6, SpecificCharacterSet=charset, PatientName=name,
                        Manufacturer="Mëdical" if charset == "ISO_IR 100" else "医療")
    raw = paths[0].read_bytes()
    assert name.split("^")[0].encode("latin-1" if charset == "ISO_IR 100" else "utf-8") in raw
    vol = load_series(paths, strict=True)  # no PatientAge, no PatientBirthDate: still loads
    assert vol.meta["manufacturer"] in ("Mëdical", "医療")


# --------------------------------------------------------------------------------- multi-frame


def make_enhanced_ct(path: Path, n: int = 8, step: float = 2.0, shuffle: bool = True) -> Path:
    """An Enhanced CT Image Storage file whose frames are stored in shuffled order."""
    slices = [make_dataset(np.array([-8.0, -6.0, 100.0 + k * step])) for k in range(n)]
    order = np.random.default_rng(1).permutation(n) if shuffle else np.arange(n)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.SOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.5"
    ds.Modality, ds.Manufacturer = "CT", "FQI-TEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = 16, 20, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing, pm.SliceThickness = [0.8, 0.7], 2.0
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([po])
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, INTERCEPT, "HU"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in order:
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = slices[k].ImagePositionPatient
        item.PlanePositionSequence = Sequence([pp])
        ft = Dataset()
        ft.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
        item.CTImageFrameTypeSequence = Sequence([ft])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = b"".join(slices[k].PixelData for k in order)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_multiframe_ct(tmp_path: Path) -> None:
    vol = load_series([make_enhanced_ct(tmp_path / "enh.dcm")], strict=True)
    assert vol.shape == (8, 16, 20)
    assert vol.spacing == pytest.approx((2.0, 0.8, 0.7))
    assert vol.meta["slice_thickness"] == 2.0
    assert_matches_field(vol)


def test_multiframe_without_functional_groups(tmp_path: Path) -> None:
    p = make_enhanced_ct(tmp_path / "enh.dcm")
    ds = pydicom.dcmread(p)
    del ds.PerFrameFunctionalGroupsSequence
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.save_as(p)
    # the only file is unusable: nothing left
    assert reason_of([p]) == ReasonCode.TOO_FEW_SLICES
    assert reason_of([p], strict=True) == ReasonCode.MULTIFRAME


def test_series_files_helper(tmp_path: Path) -> None:
    make_series(tmp_path, n=6)
    (tmp_path / ".DS_Store").write_bytes(b"x")
    assert len(series_files(tmp_path)) == 6


# ------------------------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_real_jpeg2000_slices(realdata: Path) -> None:
    """The 20 real JPEG 2000 slices load; HU equal pydicom's own decoding of each file."""
    folder = realdata / "totalsegmentator" / "example_ct_dicom"
    vol = load_series(series_files(folder), strict=True)
    assert vol.shape == (20, 512, 512)
    assert vol.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert vol.meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90"
    files = sorted(series_files(folder),
                   key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                       .ImagePositionPatient[2]))
    for k in (0, 19):
        ds = pydicom.dcmread(files[k])
        ref = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.hu[k], ref)
    # TotalSegmentator's segmentation of this very series (converted by another tool, read
    # by nibabel) has the same grid: shape, spacing and origin agree exactly, and its
    # vertebra labels sit on bone
    from tests.realdata_helpers import TOTALSEG_LEVEL_IDS, load_canonical

    seg, spacing, origin = load_canonical(
        realdata / "totalsegmentator" / "example_seg_dicom.nii.gz", np.uint8)
    assert seg.shape == vol.shape
    assert spacing == pytest.approx(vol.spacing) and origin == pytest.approx(vol.origin)
    vertebrae = np.isin(seg, list(TOTALSEG_LEVEL_IDS.values()))
    assert vertebrae.any() and float(np.mean(vol.hu[vertebrae])) > 150
    # soft tissue and air where they belong: a body CT, not noise
    centre = vol.hu[10, 200:300, 200:300]
    assert -200 < float(np.median(centre)) < 300
    assert float(np.median(vol.hu[10, :20, :20])) < -900


# ------------------------------------------------------------------------------ fast reader


def _same_as_dcmread(path: Path) -> None:
    from fracture_qi.dicom.fastread import WANTED, quick_get, read_fast

    fast = read_fast(path.read_bytes(), str(path))
    assert fast is not None
    ref = pydicom.dcmread(path)
    assert fast.file_meta.TransferSyntaxUID == ref.file_meta.TransferSyntaxUID
    for tag in WANTED:
        if tag in ref:
            assert fast[tag].value == ref[tag].value, hex(tag)
            kw = ref[tag].keyword
            q = quick_get(fast, kw)
            want = ref[tag].value
            if isinstance(want, (list, pydicom.multival.MultiValue)):
                assert [str(v) for v in q] == [str(v) for v in want], kw
            elif kw != "PixelData":
                assert str(q or "") == str(want or ""), kw
        else:
            assert tag not in fast


def test_fast_reader_equals_dcmread(tmp_path: Path) -> None:
    paths = make_series(tmp_path, n=3, SpecificCharacterSet="ISO_IR 192",
                        Manufacturer="医療", PatientName="Łukasz^Ørsted")
    ds = pydicom.dcmread(paths[0])
    item = Dataset()
    item.CodeValue, item.CodeMeaning = "T-D2100", "Spine"
    inner = Dataset()
    inner.PatientName = "Nested^Name"
    item.ContentSequence = Sequence([inner])
    ds.AnatomicRegionSequence = Sequence([item])  # nested sequences to skip over
    ds.add_new(0x00291010, "OB", b"\x01\x02" * 50)  # private bulk data
    ds.save_as(paths[0])
    implicit = tmp_path / "implicit.dcm"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(implicit, enforce_file_format=True)
    for p in paths + [implicit]:
        _same_as_dcmread(p)


def test_fast_reader_falls_back_or_flags_truncation(tmp_path: Path) -> None:
    from fracture_qi.dicom.fastread import read_fast

    p = make_series(tmp_path, n=1)[0]
    raw = p.read_bytes()
    assert read_fast(raw[132:], "x") is None  # no preamble: dcmread's job
    with pytest.raises(DicomError) as info:
        read_fast(raw[:-10], "x")
    assert info.value.reason == "TRUNCATED"
    enhanced = make_enhanced_ct(tmp_path / "enh.dcm")
    assert read_fast(enhanced.read_bytes(), "x") is None  # functional groups: dcmread


@pytest.mark.realdata
def test_fast_reader_on_real_jpeg2000(realdata: Path) -> None:
    folder = realdata / "totalsegmentator" / "example_ct_dicom"
    for p in series_files(folder)[:3]:
        _same_as_dcmread(p)
