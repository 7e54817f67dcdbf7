"""Tiny CT DICOM files with chosen headers, for tests across the project.

Every file is a real CT Image Storage object (file meta, preamble, explicit VR little
endian, RescaleSlope 1 / RescaleIntercept -1024, uint16 pixels) that pydicom, the index
and the volume loader read like a scanner's. Defaults describe a 72-year-old woman's axial
abdomen CT at 5 mm; any header can be overridden by keyword, and ``None`` deletes it.

Examples
--------
>>> import tempfile, pathlib, pydicom
>>> with tempfile.TemporaryDirectory() as d:
...     paths = write_ct_series(pathlib.Path(d) / "s1", n=3, PatientAge="045Y")
...     ds = pydicom.dcmread(paths[0])
...     print(ds.PatientAge, ds.Modality, len(paths))
045Y CT 3

Typical uses::

    study = new_uid("study", 1)
    write_ct_series(tmp / "thin", n=40, spacing=1.0, thickness=1.0,
                    StudyInstanceUID=study, ConvolutionKernel="BONE")
    write_ct_series(tmp / "loc", n=1, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                    StudyInstanceUID=study)
    write_ct_series(tmp / "gap", n=12, drop=[5])        # a missing slice
    write_ct_series(tmp / "raw", n=12, RescaleSlope=None, RescaleIntercept=None)
    truncate(paths[3]); write_junk(tmp / "notes.txt")
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: a valid-format (mod-11) NHS number in the 999 test range
DEFAULT_NHS = "9990000018"


def new_uid(*parts: Any) -> str:
    """A deterministic UID from any parts (same parts -> same UID).

    >>> new_uid("study", 1) == new_uid("study", 1) != new_uid("study", 2)
    True
    """
    return generate_uid(entropy_srcs=["fracture-qi-tests", *[str(p) for p in parts]])


def _phantom(rows: int, cols: int, hu_body: int = 40, hu_bone: int = 300) -> np.ndarray:
    """A disc of soft tissue with a vertebra-like bright disc behind its centre (HU)."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    cy, cx = rows / 2, cols / 2
    img = np.full((rows, cols), -1000, dtype=np.int32)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < (0.45 * min(rows, cols)) ** 2] = hu_body
    img[(yy - cy * 1.3) ** 2 + (xx - cx) ** 2 < (0.1 * min(rows, cols)) ** 2] = hu_bone
    return img


def base_dataset(
    *,
    rows: int = 32,
    cols: int = 32,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Dataset:
    """One CT slice's dataset with the project's default headers (no file meta yet)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyDate = "20250115"
    ds.SeriesDate = "20250115"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = "CT"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "SOMATOM Test"
    ds.StationName = "CT01"
    ds.InstitutionName = "Test General Hospital"
    ds.StudyDescription = "CT ABDOMEN PELVIS"
    ds.SeriesDescription = "Abdomen 5mm"
    ds.ProtocolName = "CT ABDOMEN PELVIS"
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientName = "TEST^PATIENT"
    ds.PatientID = "MRN0001"
    ds.IssuerOfPatientID = "TGH"
    other = Dataset()
    other.PatientID = DEFAULT_NHS
    other.IssuerOfPatientID = "NHS"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = DicomSequence([other])
    ds.PatientBirthDate = "19521001"
    ds.PatientSex = "F"
    ds.PatientAge = "072Y"
    ds.CurrentPatientLocation = "Outpatient clinic"
    ds.ConvolutionKernel = "B30f"
    ds.SliceThickness = "5.0"
    ds.KVP = "120"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = generate_uid()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [0.8, 0.8]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def _apply(ds: Dataset, overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if value is None:
            if key in ds:
                del ds[key]
        else:
            setattr(ds, key, value)


def write_ct_series(
    folder: str | Path,
    n: int = 10,
    rows: int = 32,
    cols: int = 32,
    *,
    spacing: float = 5.0,
    z0: float = -200.0,
    positions: Sequence[Sequence[float]] | None = None,
    drop: Iterable[int] = (),
    hu: np.ndarray | None = None,
    per_file: Callable[[int, Dataset], None] | None = None,
    prefix: str = "IM",
    **header_overrides: Any,
) -> list[Path]:
    """Write an *n*-slice axial CT series into *folder* and return the file paths.

    Parameters
    ----------
    folder
        Created if missing. Files are ``{prefix}0001.dcm``...
    n, rows, cols
        Number of slices and matrix size.
    spacing, z0
        Slices sit at z = z0, z0 + spacing, ... (LPS mm) at x = y = -rows*0.4 mm, unless
        *positions* gives every ImagePositionPatient.
    drop
        Slice indices not written (a missing slice makes a SLICE_GAP).
    hu
        Optional (n, rows, cols) HU array; default a simple body/bone phantom.
    per_file
        Called as ``per_file(i, ds)`` before slice *i* is saved, for per-file tweaks.
    header_overrides
        DICOM keywords applied to every slice (``StudyInstanceUID``, ``PatientAge``,
        ``ImageType``, ``Modality``...); ``None`` deletes the element. UIDs not given are
        new random UIDs per call (pass ``StudyInstanceUID`` to put series in one study).

    Returns
    -------
    list of Path
        The files written, in slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study = header_overrides.pop("StudyInstanceUID", None) or generate_uid()
    series = header_overrides.pop("SeriesInstanceUID", None) or generate_uid()
    frame_of_ref = header_overrides.pop("FrameOfReferenceUID", None) or generate_uid()
    dropped = set(drop)
    base_img = _phantom(rows, cols)
    paths = []
    for i in range(n):
        if i in dropped:
            continue
        ds = base_dataset(rows=rows, cols=cols, study_uid=study, series_uid=series)
        # one accession number per study, as a RIS issues them
        ds.AccessionNumber = "ACC" + study.replace(".", "")[-8:]
        ds.FrameOfReferenceUID = frame_of_ref
        ds.SliceThickness = f"{spacing:g}"
        pos = list(positions[i]) if positions is not None else [-rows * 0.4, -cols * 0.4, z0 + i * spacing]
        ds.ImagePositionPatient = [float(x) for x in pos]
        ds.SliceLocation = float(pos[2])
        ds.InstanceNumber = i + 1
        _apply(ds, header_overrides)
        img = hu[i] if hu is not None else base_img
        stored = np.clip(np.asarray(img, dtype=np.int32) + 1024, 0, 65535).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        if per_file is not None:
            per_file(i, ds)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"{prefix}{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_localizer(folder: str | Path, **header_overrides: Any) -> list[Path]:
    """A one-image coronal scout (ImageType ...LOCALIZER) in *folder*."""
    header_overrides.setdefault("ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"])
    header_overrides.setdefault("ImageOrientationPatient", [1, 0, 0, 0, 0, -1])
    header_overrides.setdefault("SeriesDescription", "Topogram 0.6 T20s")
    header_overrides.setdefault("SeriesNumber", 1)
    return write_ct_series(folder, n=1, prefix="SC", **header_overrides)


def tilted_positions(n: int, spacing: float, tilt_deg: float, z0: float = -200.0) -> list[list[float]]:
    """ImagePositionPatient values of a gantry-tilted stack (slices shift along y with z)."""
    t = math.tan(math.radians(tilt_deg))
    return [[-12.8, -12.8 + i * spacing * t, z0 + i * spacing] for i in range(n)]


def truncate(path: str | Path, keep: float = 0.6) -> None:
    """Cut a file to *keep* (fraction) of its length, as an interrupted copy would."""
    p = Path(path)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


def write_junk(path: str | Path, text: str = "not a DICOM file\n") -> Path:
    """A non-DICOM file (a note someone left in the export folder)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def age_at(birth: dt.date, on: dt.date) -> str:
    """DICOM AS string (``'072Y'``) for the age in whole years on a date."""
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"
