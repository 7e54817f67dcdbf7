"""What archives send: each awkward input of issue 17 through `fracture-qi screen PATH --out`.

One spine CT study (tests/spine_ct.py) is damaged in one way per test and screened without a
database; studies.csv must say what a user expects: the study processed (with the repair
recorded) where the data allow it, ``excluded`` with the geometry's reason where they do not,
and never ``error`` for a series whose files are all readable.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from fracture_qi.cli.main import main
from fracture_qi.dicom.scan import scan_paths
from tests.spine_ct import SPACING, write_spine_study


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_spine_study(tmp_path_factory.mktemp("spine") / "study")


@pytest.fixture()
def study(pristine: list[Path], tmp_path: Path) -> list[Path]:
    """A fresh copy of the study, files in slice order (inferior first)."""
    folder = tmp_path / "in"
    folder.mkdir()
    out = []
    for p in pristine:
        q = folder / p.name
        shutil.copyfile(p, q)
        out.append(q)
    return out


def screen(folder: Path, out: Path) -> list[dict[str, str]]:
    assert main(["screen", str(folder), "--out", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    with open(out / "studies.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["series_instance_uid"]]


def test_raw_implicit_vr_without_preamble_or_file_meta_is_read_and_screened(
        study: list[Path], tmp_path: Path) -> None:
    for p in study:
        ds = pydicom.dcmread(p)
        del ds.file_meta
        ds.preamble = None
        ds.save_as(p, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert not study[0].read_bytes()[128:132] == b"DICM"
    series = scan_paths([study[0].parent]).series
    assert [(s.status, s.reason) for s in series] == [("ok", None)]  # not TRUNCATED
    assert "force=True" in series[0].detail  # the coercion is recorded
    rows = screen(study[0].parent, tmp_path / "out")
    assert [(r["status"], r["reason"]) for r in rows] == [("ok", "")]
    assert int(rows[0]["n_vertebrae"]) > 0 and rows[0]["flagged"] == "1"


def _tilt(study: list[Path]) -> None:
    t = math.tan(math.radians(12))
    for k, p in enumerate(study):
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient[1] = float(ds.ImagePositionPatient[1]) + k * SPACING[0] * t
        ds.save_as(p)


def _two_missing(study: list[Path]) -> None:
    study[40].unlink()
    study[90].unlink()


def _too_few(study: list[Path]) -> None:
    for p in study[8:]:
        p.unlink()


def _different_image_at_one_position(study: list[Path]) -> None:
    ds = pydicom.dcmread(study[70])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = bytes(len(ds.PixelData))
    ds.save_as(study[0].parent / "other.dcm")


@pytest.mark.parametrize("damage, reason", [
    (_tilt, "GANTRY_TILT"),
    (_two_missing, "SLICE_GAP"),
    (_too_few, "TOO_FEW_SLICES"),
    (_different_image_at_one_position, "DUPLICATE_POSITION"),
])
def test_unscreenable_geometry_is_excluded_not_error(study: list[Path], tmp_path: Path,
                                                     damage, reason) -> None:  # type: ignore[no-untyped-def]
    damage(study)
    rows = screen(study[0].parent, tmp_path / "out")
    assert [(r["status"], r["reason"]) for r in rows] == [("excluded", reason)]


def test_identical_repeated_slices_are_dropped_and_the_series_screened(
        study: list[Path], tmp_path: Path) -> None:
    for k in (30, 31, 75):  # re-sent instances: new SOP Instance UIDs, same pixels and place
        ds = pydicom.dcmread(study[k])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(study[0].parent / f"resent{k}.dcm")
    series = scan_paths([study[0].parent])
    assert [(s.status, s.reason, s.n_instances) for s in series.series] == [
        ("ok", None, len(study))]
    assert "3 identical copy(ies)" in series.series[0].detail
    assert sorted(str(p.reason) for p in series.problems) == ["DUPLICATE_POSITION"] * 3
    rows = screen(study[0].parent, tmp_path / "out")
    assert [(r["status"], r["reason"], r["flagged"]) for r in rows] == [("ok", "", "1")]


def test_one_missing_slice_is_interpolated_recorded_and_screened(study: list[Path],
                                                                 tmp_path: Path) -> None:
    study[60].unlink()
    series = scan_paths([study[0].parent]).series
    assert [(s.status, s.reason) for s in series] == [("ok", None)]
    assert "1 slice missing" in series[0].detail and "interpolated" in series[0].detail
    rows = screen(study[0].parent, tmp_path / "out")
    assert [(r["status"], r["reason"], r["flagged"]) for r in rows] == [("ok", "", "1")]
