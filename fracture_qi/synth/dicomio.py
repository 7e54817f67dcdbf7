"""Write synthetic CT series as real DICOM CT Image Storage files with pydicom.

Files carry a preamble, file meta and explicit VR little endian data; geometry is
LPS (ImagePositionPatient of the first pixel, ImageOrientationPatient row/column
cosines); pixel values are stored as HU + 1024 with RescaleSlope 1 and RescaleIntercept
-1024 (uint16 with PixelRepresentation 0, or int16 with PixelRepresentation 1, by
vendor). No wall-clock time is written anywhere, so the same seed gives the same bytes.

The NHS number travels in OtherPatientIDsSequence (0010,1002) as an item with
IssuerOfPatientID ``NHS`` and TypeOfPatientID ``TEXT``; PatientID is the site MRN.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLEMENTATION_VERSION = "FRACTUREQI_SYN"
AXIAL_IOP = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SAGITTAL_IOP = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
CORONAL_IOP = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]

#: referral source code -> CurrentPatientLocation (0038,0300) text
REFERRAL_LOCATION = {
    "emergency": "Emergency Department",
    "inpatient": "Inpatient ward",
    "outpatient": "Outpatient clinic",
    "gp": "GP direct access",
}

PROTOCOL_TEXT = {
    "chest": ("CT CHEST", "CHEST"),
    "abdomen_pelvis": ("CT ABDOMEN PELVIS", "ABDOMENPELVIS"),
    "cap": ("CT CHEST ABDOMEN PELVIS", "CHESTABDPELVIS"),
    "head": ("CT HEAD", "HEAD"),
}


def uid(*parts: object) -> str:
    """Deterministic UID from its parts (pydicom root + SHA-512 of the parts).

    Examples
    --------
    >>> uid(7, "study", 1) == uid(7, "study", 1) != uid(8, "study", 1)
    True
    """
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


@dataclass
class StudyHeader:
    """Patient and study attributes shared by every file of a study."""

    patient_name: str
    patient_id: str  # MRN
    mrn_issuer: str
    nhs_number: str
    birth_date: dt.date
    sex: str
    age_years: int
    study_uid: str
    frame_uid: str
    accession: str
    study_date: dt.date
    study_time: str  # HHMMSS
    protocol: str
    referral: str
    institution: str
    manufacturer: str
    model: str
    station: str
    signed: bool
    contrast: str  # none | arterial | portal_venous
    kvp: float


def _base_dataset(h: StudyHeader) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.Modality = "CT"
    ds.StudyDate = h.study_date.strftime("%Y%m%d")
    ds.StudyTime = h.study_time
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.AccessionNumber = h.accession
    ds.Manufacturer = h.manufacturer
    ds.ManufacturerModelName = h.model
    ds.StationName = h.station
    ds.InstitutionName = h.institution
    ds.ReferringPhysicianName = ""
    desc, body_part = PROTOCOL_TEXT[h.protocol]
    ds.StudyDescription = desc
    ds.ProtocolName = desc
    ds.BodyPartExamined = body_part
    ds.PatientName = h.patient_name
    ds.PatientID = h.patient_id
    ds.IssuerOfPatientID = h.mrn_issuer
    item = Dataset()
    item.PatientID = h.nhs_number
    item.IssuerOfPatientID = "NHS"
    item.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([item])
    ds.PatientBirthDate = h.birth_date.strftime("%Y%m%d")
    ds.PatientSex = h.sex
    ds.PatientAge = f"{h.age_years:03d}Y"
    ds.CurrentPatientLocation = REFERRAL_LOCATION[h.referral]
    ds.StudyInstanceUID = h.study_uid
    ds.StudyID = h.accession[-6:]
    ds.FrameOfReferenceUID = h.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.KVP = h.kvp
    if h.contrast != "none":
        ds.ContrastBolusAgent = "Iohexol 350 mgI/ml"
        ds.ContrastBolusRoute = "IV"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    if h.signed:
        ds.PixelRepresentation = 1
        ds.BitsStored = 16
        ds.HighBit = 15
    else:
        ds.PixelRepresentation = 0
        ds.BitsStored = 12
        ds.HighBit = 11
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return ds


def _encode(hu: np.ndarray, signed: bool) -> bytes:
    stored = hu.astype(np.int32) + 1024
    np.clip(stored, 0, 4095, out=stored)
    return stored.astype("<i2" if signed else "<u2").tobytes()


# --- fast writing ------------------------------------------------------------------------------
# pydicom takes ~20 ms to encode a CT header; a series of 500 slices shares all but five
# elements. The shared elements are encoded once by pydicom, and the per-slice ones
# (SOPInstanceUID, InstanceNumber, ImagePositionPatient, SliceLocation, PixelData) and the
# file meta are encoded here (explicit VR little endian) and spliced in tag order. A test
# compares the result element by element with pydicom's own writer.

_SOP = 0x00080018
_INST = 0x00200013
_IPP = 0x00200032
_SLOC = 0x00201041
_PIXEL = 0x7FE00010
_SPLIT = (_SOP, _INST, _IPP, _SLOC, _PIXEL)


def _elem(tag: int, vr: bytes, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _ui(value: str) -> bytes:
    b = value.encode("ascii")
    return b + b"\0" if len(b) % 2 else b


def _text(value: str) -> bytes:
    b = value.encode("ascii")
    return b + b" " if len(b) % 2 else b


def format_ds(x: float) -> str:
    """Decimal String of at most 16 characters (4 decimals is 0.1 micron).

    Examples
    --------
    >>> format_ds(-249.60000000000002), format_ds(12.0)
    ('-249.6', '12')
    """
    s = f"{x:.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _encode_range(ds: Dataset, lo: int, hi: int) -> bytes:
    sub = Dataset()
    for elem in ds:
        if lo < int(elem.tag) < hi:
            sub.add(elem)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, sub)
    return fp.getvalue()


def _file_meta(sop_class: str, sop: str, implementation_uid: str, version: str) -> bytes:
    body = (
        _elem(0x00020001, b"OB", b"\x00\x01")
        + _elem(0x00020002, b"UI", _ui(sop_class))
        + _elem(0x00020003, b"UI", _ui(sop))
        + _elem(0x00020010, b"UI", _ui(ExplicitVRLittleEndian))
        + _elem(0x00020012, b"UI", _ui(implementation_uid))
        + _elem(0x00020013, b"SH", _text(version))
    )
    return b"\0" * 128 + b"DICM" + _elem(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def write_series(
    folder: Path,
    header: StudyHeader,
    *,
    series_uid: str,
    series_number: int,
    description: str,
    image_type: list[str],
    kernel: str,
    slice_thickness: float,
    pixel_spacing: tuple[float, float],
    orientation: list[float],
    positions: list[tuple[float, float, float]],
    images: np.ndarray,
    window: tuple[float, float],
    spacing_between: float | None,
    seed_parts: tuple[object, ...],
    slice_location_axis: int = 2,
    instance_order_desc: bool = True,
) -> int:
    """Write one series (one file per image) and return the number of files.

    Parameters
    ----------
    folder
        Created if missing; files are named ``IM00001.dcm``...
    images
        ``(n, rows, cols)`` HU (int16); ``positions[i]`` is the LPS position of image i's
        first pixel.
    orientation
        ImageOrientationPatient (row cosines then column cosines).
    instance_order_desc
        Number instances from the last image backwards (axial series from a scanner
        start at the head: InstanceNumber 1 is the most superior slice).
    seed_parts
        Deterministic UID material for the SOP instances.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = _base_dataset(header)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.ImageType = image_type
    ds.ConvolutionKernel = kernel
    ds.SliceThickness = round(float(slice_thickness), 4)
    if spacing_between is not None:
        ds.SpacingBetweenSlices = round(float(spacing_between), 4)
    ds.PixelSpacing = [round(float(pixel_spacing[0]), 6), round(float(pixel_spacing[1]), 6)]
    ds.ImageOrientationPatient = orientation
    ds.Rows, ds.Columns = int(images.shape[1]), int(images.shape[2])
    ds.WindowCenter, ds.WindowWidth = window
    # shared elements, encoded once, in the gaps between the per-slice ones
    bounds = (0,) + _SPLIT
    chunks = [_encode_range(ds, lo, hi) for lo, hi in itertools.pairwise(bounds)]
    n = images.shape[0]
    for i in range(n):
        inst = n - i if instance_order_desc else i + 1
        sop = uid(*seed_parts, "sop", i)
        pos = positions[i]
        per_slice = (
            _elem(_SOP, b"UI", _ui(sop)),
            _elem(_INST, b"IS", _text(str(inst))),
            _elem(_IPP, b"DS", _text("\\".join(format_ds(float(c)) for c in pos))),
            _elem(_SLOC, b"DS", _text(format_ds(float(pos[slice_location_axis])))),
            _elem(_PIXEL, b"OW", _encode(images[i], header.signed)),
        )
        data = b"".join(c + e for c, e in zip(chunks, per_slice))
        meta = _file_meta(CT_IMAGE_STORAGE, sop, PYDICOM_IMPLEMENTATION_UID, IMPLEMENTATION_VERSION)
        (folder / f"IM{inst:05d}.dcm").write_bytes(meta + data)
    return n
