"""Header-only reading of one DICOM file into a small, picklable record.

:func:`read_header` never raises for a bad file: it returns a :class:`FileProblem` with a
stable :class:`~fracture_qi.dicom.reasons.ReasonCode` (``NOT_DICOM``, ``TRUNCATED``,
``DICOMDIR``, ``UNREADABLE``, ``NO_PIXEL_DATA``) so that a batch goes on past it. Pixel
data are never decoded; only the Pixel Data element's header is looked at, to tell a
truncated file from a whole one.

Lenient by default (STYLE.md point 7): a file whose SOPInstanceUID, SOPClassUID,
StudyInstanceUID or SeriesInstanceUID is empty (anonymised archives blank them) gets the file
meta's UIDs or a deterministic surrogate (:func:`coerce_uids`), each coercion recorded in
``FileHeader.coercions``; ``strict=True`` refuses such files as ``UNREADABLE``.

Files without the 128-byte preamble and ``DICM`` marker are read with ``force=True`` when
what follows parses as a dataset with DICOM UIDs (some archives write them); that is logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from fracture_qi.dicom.reasons import ReasonCode

log = logging.getLogger(__name__)

#: SOP classes that hold CT cross-sections the screener can use
CT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    }
)
#: Media Storage Directory Storage (a DICOMDIR)
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: elements the index reads
HEADER_TAGS: list[str] = [
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyDate",
    "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "AccessionNumber", "Modality",
    "Manufacturer", "InstitutionName", "StationName", "StudyDescription", "SeriesDescription",
    "ManufacturerModelName", "PatientName", "PatientID", "IssuerOfPatientID",
    "PatientBirthDate", "PatientSex", "OtherPatientIDs", "OtherPatientIDsSequence",
    "PatientAge", "BodyPartExamined", "ContrastBolusAgent", "SliceThickness",
    "SpacingBetweenSlices", "ProtocolName", "GantryDetectorTilt", "ConvolutionKernel",
    "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "InstanceNumber",
    "ImagePositionPatient", "ImageOrientationPatient", "NumberOfFrames", "Rows", "Columns",
    "PixelSpacing", "BitsAllocated", "SamplesPerPixel", "RescaleIntercept", "RescaleSlope",
    "CurrentPatientLocation", "FrameOfReferenceUID", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence", "DirectoryRecordSequence", "FrameType",
]

_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
_SEQ_DELIM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_NHS_ISSUER = re.compile(r"NHS|2\.16\.840\.1\.113883\.2\.1\.4\.1", re.IGNORECASE)


@dataclass(slots=True)
class FileProblem:
    """A file that is not a usable image, with its reason code."""

    path: str
    reason: ReasonCode
    detail: str


@dataclass(slots=True)
class FileHeader:
    """The header facts of one image file (one instance; several frames if multi-frame).

    Identifiers (``patient_name``, ``nhs_number``, ``patient_id``, ``birth_date``) are kept
    for the ``patients`` table only; nothing here is meant for a published output.
    """

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str = ""
    image_type: tuple[str, ...] = ()
    transfer_syntax: str = ""
    instance_number: int | None = None
    series_number: int | None = None
    #: ImagePositionPatient of each frame (one entry for single-frame files)
    positions: list[tuple[float, float, float]] = field(default_factory=list)
    orientation: tuple[float, ...] | None = None
    rows: int | None = None
    columns: int | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    has_rescale: bool = False
    n_frames: int = 1
    pixel_problem: str | None = None  # PIXEL_DATA_LENGTH detail, if any
    gantry_tilt: float | None = None
    # study / series descriptors
    study_date: dt.date | None = None
    series_date: dt.date | None = None
    accession_number: str = ""
    study_description: str = ""
    series_description: str = ""
    protocol_name: str = ""
    body_part: str = ""
    kernel: str = ""
    manufacturer: str = ""
    model_name: str = ""
    station_name: str = ""
    institution: str = ""
    contrast: bool | None = None
    location: str = ""  # CurrentPatientLocation (0038,0300): referral source
    # patient
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    nhs_number: str = ""
    patient_name: str = ""
    birth_date: dt.date | None = None
    sex: str = ""
    patient_age: str = ""
    forced: bool = False  # read without preamble
    frame_of_reference_uid: str = ""
    #: what lenient reading filled in (a surrogate UID, a UID from the file meta...)
    coercions: list[str] = field(default_factory=list)


_TAG = {kw: pydicom.datadict.tag_for_keyword(kw) for kw in HEADER_TAGS + ["PixelData"]}
_US_KEYWORDS = {"Rows", "Columns", "BitsAllocated", "SamplesPerPixel"}


def _raw_text(ds: Dataset, keyword: str) -> str | None:
    """A value straight from the undecoded element when it is plain ASCII (fast path).

    pydicom's conversion of every element costs more than reading the file; for the
    ASCII strings that make up nearly all header values, decoding the bytes directly is
    equivalent. Anything else (non-ASCII text, binary VRs, sequences) returns None and goes
    through pydicom.
    """
    tag = _TAG.get(keyword) or pydicom.datadict.tag_for_keyword(keyword)
    if tag is None:
        return None
    raw_dict = getattr(ds, "_dict", None)  # pydicom's element store: skips get_item's checks
    try:
        elem = raw_dict.get(tag) if isinstance(raw_dict, dict) else ds.get_item(tag)
    except (KeyError, TypeError):
        return None
    if elem is None:
        return ""
    value = getattr(elem, "value", None)
    if isinstance(elem, pydicom.dataelem.RawDataElement) and isinstance(value, bytes):
        if keyword in _US_KEYWORDS:
            if len(value) != 2:
                return None
            little = getattr(ds, "original_encoding", (None, True))[1] is not False
            return str(struct.unpack("<H" if little else ">H", value)[0])
        if value.isascii():
            return value.decode("ascii").strip(" \x00")
        return None
    if value is None:
        return ""
    return None


def _s(ds: Dataset, keyword: str) -> str:
    """A header value as a stripped string ('' when absent or empty)."""
    fast = _raw_text(ds, keyword)
    if fast is not None:
        return fast
    v = ds.get(keyword)
    if v is None:
        return ""
    if isinstance(v, pydicom.multival.MultiValue):
        return "\\".join(str(x) for x in v).strip()
    return str(v).strip()


def _vals(ds: Dataset, keyword: str) -> list[str]:
    """A (possibly multi-valued) header value as a list of strings."""
    text = _s(ds, keyword)
    return [x.strip() for x in text.split("\\")] if text else []


def _f(value: Any) -> float | None:
    try:
        return float(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


def _i(value: Any) -> int | None:
    try:
        return int(float(value)) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


def parse_da(value: str) -> dt.date | None:
    """Parse a DICOM DA (``YYYYMMDD``; tolerates ``YYYY.MM.DD`` and ``YYYY-MM-DD``).

    Examples
    --------
    >>> parse_da("20240131"), parse_da("2024.01.31"), parse_da(""), parse_da("2024")
    (datetime.date(2024, 1, 31), datetime.date(2024, 1, 31), None, None)
    """
    digits = re.sub(r"[^0-9]", "", value or "")
    if len(digits) != 8:
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def _floats(v: Any, n: int) -> tuple[float, ...] | None:
    if isinstance(v, str):
        v = v.split("\\") if v else None
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


#: series UID -> NHS number, for the last few series seen in this process (see _nhs_cached)
_NHS_CACHE: dict[str, str] = {}
_NHS_CACHE_SIZE = 64


def _nhs_cached(ds: Dataset, series_uid: str) -> str:
    """The NHS number, decoded once per series: every image of a series belongs to one
    patient, and decoding the OtherPatientIDsSequence of each file cost a fifth of the scan."""
    hit = _NHS_CACHE.get(series_uid)
    if hit is not None:
        return hit
    value = _nhs_number(ds)
    if len(_NHS_CACHE) >= _NHS_CACHE_SIZE:
        _NHS_CACHE.pop(next(iter(_NHS_CACHE)))
    _NHS_CACHE[series_uid] = value
    return value


def _nhs_number(ds: Dataset) -> str:
    """The NHS number from OtherPatientIDsSequence (issuer 'NHS...'), else OtherPatientIDs.

    The synthetic cohort and most UK PACS put it in OtherPatientIDsSequence with
    IssuerOfPatientID naming NHS; older exports use the plain OtherPatientIDs (0010,1000).
    A PatientID whose issuer is NHS is also accepted. Only mod-11-valid numbers count.
    """
    from fracture_qi.pseudonym import nhs_number_is_valid, normalise_identifier

    candidates: list[tuple[int, str]] = []
    for item in ds.get("OtherPatientIDsSequence", []) or []:
        pid = str(item.get("PatientID", "") or "")
        issuer = str(item.get("IssuerOfPatientID", "") or "")
        candidates.append((0 if _NHS_ISSUER.search(issuer) else 1, pid))
    candidates += [(2, v) for v in _vals(ds, "OtherPatientIDs")]
    if _NHS_ISSUER.search(_s(ds, "IssuerOfPatientID")):
        candidates.append((0, _s(ds, "PatientID")))
    for _, c in sorted(candidates, key=lambda t: t[0]):
        if nhs_number_is_valid(c):
            return normalise_identifier(c)
    return ""


def _multiframe(ds: Dataset, h: FileHeader) -> None:
    """Fill geometry of an enhanced multi-frame image from its functional groups."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []

    def group(item: Dataset, name: str) -> Dataset | None:
        seq = item.get(name) or shared.get(name)
        return seq[0] if seq else None

    positions = []
    for fr in frames:
        pp = group(fr, "PlanePositionSequence")
        pos = _floats(pp.get("ImagePositionPatient"), 3) if pp else None
        if pos is None:
            positions = []
            break
        positions.append(pos)  # type: ignore[arg-type]
    h.positions = positions
    first = frames[0] if frames else Dataset()
    po = group(first, "PlaneOrientationSequence")
    if po is not None:
        h.orientation = _floats(po.get("ImageOrientationPatient"), 6)
    pm = group(first, "PixelMeasuresSequence")
    if pm is not None:
        h.pixel_spacing = _floats(pm.get("PixelSpacing"), 2)  # type: ignore[assignment]
        h.slice_thickness = _f(pm.get("SliceThickness"))
        h.spacing_between_slices = _f(pm.get("SpacingBetweenSlices"))
    pvt = group(first, "PixelValueTransformationSequence")
    h.has_rescale = bool(
        pvt is not None and "RescaleSlope" in pvt and "RescaleIntercept" in pvt
    )
    ft = group(first, "CTImageFrameTypeSequence")
    if ft is not None and ft.get("FrameType"):
        h.image_type = tuple(str(x).upper() for x in ft.FrameType)


def _pixel_check(fp: Any, ds: Dataset, size: int, h: FileHeader) -> FileProblem | None:
    """Look at the Pixel Data element header (fp sits on it): truncation and length."""
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8 or head[:4] != _PIXEL_TAG_LE:
        return FileProblem(h.path, ReasonCode.NO_PIXEL_DATA, "the file has no Pixel Data element")
    ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if ts:
        implicit = ts == "1.2.840.10008.1.2"
    else:
        # a raw dataset without file meta (read with force): its encoding is what pydicom
        # found while parsing, usually implicit VR little endian
        implicit = bool(getattr(ds, "original_encoding", (True, True))[0] is not False)
    if implicit:
        (length,) = struct.unpack("<I", head[4:8])
        value_at = start + 8
    else:
        (length,) = struct.unpack("<I", head[8:12])
        value_at = start + 12
    return _pixel_length_check(ds, size, h, length, value_at)


def read_header(path: str | os.PathLike[str], *, strict: bool = False) -> FileHeader | FileProblem:
    """Read one file's header (no pixels) into a :class:`FileHeader`.

    Plain little-endian single-frame files go through a fast element walk
    (:func:`_fast_dataset`, built on :mod:`fracture_qi.dicom.fastread`); anything else,
    and any file the walk finds odd, is read by ``pydicom.dcmread``.

    Parameters
    ----------
    path
        The file.
    strict
        Refuse (``UNREADABLE``) a file whose SOPInstanceUID, StudyInstanceUID or
        SeriesInstanceUID is empty. The default (lenient) fills them in and records each
        coercion in ``FileHeader.coercions`` (see :func:`coerce_uids`).

    Returns
    -------
    FileHeader or FileProblem
        A problem (never an exception) when the file is not a usable DICOM image.

    Examples
    --------
    >>> read_header("/no/such/file.dcm").reason.value
    'UNREADABLE'
    """
    p = os.fspath(path)
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as fp:
            head = fp.read(_FAST_CHUNK)
            fast = None if _NO_FAST else _fast_dataset(head, p, size)
            if fast is not None:
                ds, pixel_length, pixel_at = fast
                problem = _check_uids(ds, p, forced=False, at_end=False, strict=strict)
                if problem is not None:
                    return problem
                h = _from_dataset(ds, p, False)
                if not strict:
                    coerce_uids(h, ds)
                problem = _pixel_length_check(ds, size, h, pixel_length, pixel_at)
                return problem if problem is not None else h
            preamble = head[:132]
            forced = len(preamble) < 132 or preamble[128:132] != b"DICM"
            fp.seek(0)
            try:
                # specific_tags measured slower than a plain header read: not used
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=forced)
            except (InvalidDicomError, EOFError, struct.error, ValueError, KeyError,
                    TypeError, OverflowError, NotImplementedError) as e:
                if forced:
                    return FileProblem(p, ReasonCode.NOT_DICOM, f"not a DICOM file ({e.__class__.__name__})")
                return FileProblem(
                    p, ReasonCode.TRUNCATED,
                    f"the header cannot be parsed ({e.__class__.__name__}: {e}); the file is "
                    "probably cut short: fetch or copy it again",
                )
            # with specific_tags pydicom seeks over unwanted values, so a file cut short
            # shows as a position beyond its end rather than as an error
            at_end = fp.tell() >= size
            if fp.tell() > size and not forced:
                return FileProblem(
                    p, ReasonCode.TRUNCATED,
                    f"the header runs past the end of the file ({size} bytes): the file was cut "
                    "short; fetch or copy it again",
                )
            sop_class = str(_meta(ds, "MediaStorageSOPClassUID") or ds.get("SOPClassUID", ""))
            if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
                return FileProblem(
                    p, ReasonCode.DICOMDIR,
                    "a DICOMDIR media directory, not an image; the files it lists are indexed",
                )
            problem = _check_uids(ds, p, forced=forced, at_end=at_end, strict=strict)
            if problem is not None:
                return problem
            h = _from_dataset(ds, p, forced)
            if not strict:
                coerce_uids(h, ds)
            if forced:
                h.coercions.append("no DICOM preamble/file meta: read with force=True")
            problem = _pixel_check(fp, ds, size, h)
            if problem is not None:
                return problem
    except OSError as e:
        return FileProblem(p, ReasonCode.UNREADABLE, f"cannot open: {e.strerror or e}")
    if forced:
        log.info("%s: no DICOM preamble; read with force=True", p)
    return h


_UID_KEYWORDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _meta(ds: Dataset, keyword: str) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get(keyword, "") or "").strip(" \x00") if meta is not None else ""


def _check_uids(ds: Dataset, p: str, *, forced: bool, at_end: bool, strict: bool
                ) -> FileProblem | None:
    """The identifier rules: not DICOM, cut short, or (strict mode) UIDs missing."""
    uids = [_s(ds, k) for k in _UID_KEYWORDS]
    if forced and not any(uids):
        return FileProblem(
            p, ReasonCode.NOT_DICOM,
            "no DICOM preamble and no DICOM identifiers: not a DICOM file",
        )
    if not all(uids) and at_end and not forced:
        return FileProblem(
            p, ReasonCode.TRUNCATED,
            f"the file ends ({os.path.getsize(p)} bytes) before its identifiers and pixel data: "
            "it was cut short; fetch or copy it again",
        )
    missing = [k for k, v in zip(_UID_KEYWORDS, uids) if not v]
    if missing and strict:
        return FileProblem(
            p, ReasonCode.UNREADABLE,
            f"required UID(s) {', '.join(missing)} empty or missing (strict mode): the file "
            "cannot be placed in a study/series. Fix: re-export it from the archive with its "
            "UIDs, or scan without strict mode (surrogate UIDs, each coercion recorded)",
        )
    if not uids[0] and not _meta(ds, "MediaStorageSOPInstanceUID"):
        return FileProblem(
            p, ReasonCode.UNREADABLE,
            "SOPInstanceUID empty in the dataset and in the file meta "
            "(MediaStorageSOPInstanceUID): the image cannot be identified. Fix: re-export "
            "it from the archive with its UIDs",
        )
    return None


def surrogate_uid(*parts: object) -> str:
    """A deterministic UID ``2.25.<int>`` (ISO/IEC 9834-8 form) from a hash of *parts*.

    The same parts give the same UID on every machine and run, so a re-scan of an archive
    without UIDs groups and names its series the same way.

    Examples
    --------
    >>> u = surrogate_uid("series", "/data/a", "1.2.3", 2)
    >>> u.startswith("2.25.") and len(u) <= 64 and u == surrogate_uid("series", "/data/a", "1.2.3", 2)
    True
    """
    text = "\x1f".join("" if x is None else str(x) for x in parts)
    return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "big"))


def coerce_uids(h: FileHeader, ds: Dataset) -> None:
    """Fill empty identifiers of a header read in lenient mode; record each coercion.

    * SOPInstanceUID / SOPClassUID from the file meta (MediaStorageSOPInstanceUID /
      MediaStorageSOPClassUID) when the dataset's are empty;
    * StudyInstanceUID, when empty, by :func:`surrogate_uid` of the folder, StudyDate,
      StudyTime, AccessionNumber, PatientID and FrameOfReferenceUID;
    * SeriesInstanceUID, when empty, by :func:`surrogate_uid` of the folder, the study UID,
      FrameOfReferenceUID, orientation, SeriesNumber, SeriesDescription, kernel, slice
      thickness and matrix: files of one acquisition share all of these, so they group.

    Each coercion is a sentence in ``h.coercions``; the scan logs them once per series.
    """
    if not h.sop_instance_uid:
        h.sop_instance_uid = _meta(ds, "MediaStorageSOPInstanceUID")
        h.coercions.append("SOPInstanceUID empty: MediaStorageSOPInstanceUID of the file meta used")
    if not _s(ds, "SOPClassUID") and h.sop_class_uid:
        h.coercions.append("SOPClassUID empty: MediaStorageSOPClassUID of the file meta used")
    folder = os.path.dirname(os.path.abspath(h.path))
    h.frame_of_reference_uid = h.frame_of_reference_uid or _s(ds, "FrameOfReferenceUID")
    if not h.study_instance_uid:
        h.study_instance_uid = surrogate_uid(
            "study", folder, h.study_date, _s(ds, "StudyTime"), h.accession_number,
            h.patient_id, h.frame_of_reference_uid,
        )
        h.coercions.append(
            f"StudyInstanceUID empty: surrogate {h.study_instance_uid} from folder, StudyDate, "
            "StudyTime, AccessionNumber, PatientID and FrameOfReferenceUID"
        )
    if not h.series_instance_uid:
        orientation = tuple(round(x, 3) for x in h.orientation) if h.orientation else None
        h.series_instance_uid = surrogate_uid(
            "series", folder, h.study_instance_uid, h.frame_of_reference_uid, orientation,
            h.series_number, h.series_description, h.kernel, h.slice_thickness, h.rows,
            h.columns, h.modality,
        )
        h.coercions.append(
            f"SeriesInstanceUID empty: surrogate {h.series_instance_uid} from folder, "
            "FrameOfReferenceUID, orientation, SeriesNumber, description, kernel, thickness "
            "and matrix"
        )


#: ``FQI_NO_FAST_HEADERS=1`` reads every file with pydicom (benchmarks, diagnosing a file)
_NO_FAST = os.environ.get("FQI_NO_FAST_HEADERS", "") not in ("", "0")
#: bytes read first; the header of nearly every image file fits (pixels are not needed)
_FAST_CHUNK = 64 * 1024
_PIXEL_DATA = 0x7FE00010
_HH = struct.Struct("<HH")
_FAST_TAGS: frozenset[int] | None = None


def _fast_tags() -> frozenset[int]:
    global _FAST_TAGS
    if _FAST_TAGS is None:
        _FAST_TAGS = frozenset(int(t) for k, t in _TAG.items() if t is not None and k != "PixelData")
    return _FAST_TAGS


def _fast_dataset(head: bytes, path: str, size: int) -> tuple[Dataset, int, int] | None:
    """Walk a plain little-endian file's elements up to Pixel Data, keeping :data:`HEADER_TAGS`.

    Uses :mod:`fracture_qi.dicom.fastread`'s element parser on the first bytes of the file.
    Returns ``(dataset, pixel data length, offset of its value)`` or ``None`` when the
    file needs ``pydicom.dcmread`` (no preamble, big-endian or deflated, multi-frame
    functional groups, DICOMDIR, a header longer than *head*, anything unusual, a file cut
    short: pydicom's path then names the problem).
    """
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import FileMetaDataset
    from pydicom.tag import BaseTag

    from fracture_qi.dicom import fastread as fr
    from fracture_qi.errors import DicomError

    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    wanted = _fast_tags()
    try:
        pos = 132
        meta_raw: dict[Any, Any] = {}
        while pos + 8 <= len(head) and struct.unpack_from("<H", head, pos)[0] == 0x0002:
            nxt, tag, vr, (a, b, n) = fr._next_element(head, pos, False, path)
            meta_raw[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr.decode() if vr else None,
                                                    n, head[a:b], a, False, True)
            pos = nxt
        meta = FileMetaDataset(meta_raw)
        ts = str(meta.get("TransferSyntaxUID", "") or "").rstrip("\x00 ")
        if ts in ("", fr.BIG_ENDIAN, fr.DEFLATED) or str(
            meta.get("MediaStorageSOPClassUID", "") or ""
        ).rstrip("\x00 ") == DICOMDIR_SOP_CLASS:
            return None
        implicit = ts == fr.IMPLICIT_LE
        raw: dict[Any, Any] = {}
        while True:
            if pos + 12 > len(head):
                return None  # header longer than the chunk (or cut short): pydicom reads it
            group, elem = _HH.unpack_from(head, pos)
            tag = (group << 16) | elem
            if tag == _PIXEL_DATA:
                if implicit:
                    length, value_at = struct.unpack_from("<I", head, pos + 4)[0], pos + 8
                else:
                    length, value_at = struct.unpack_from("<I", head, pos + 8)[0], pos + 12
                break
            if tag > _PIXEL_DATA:
                return None
            nxt, tag, vr, (a, b, n) = fr._next_element(head, pos, implicit, path)
            if tag in fr.FALLBACK:
                return None
            if tag in wanted:
                vr_s = vr.decode() if vr else pydicom.datadict.dictionary_VR(tag)
                raw[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr_s, n, head[a:b], a,
                                                   implicit, True)
            pos = nxt
    except (DicomError, struct.error, ValueError, KeyError, UnicodeDecodeError):
        return None
    ds = Dataset(raw)
    ds.file_meta = meta
    ds.set_original_encoding(implicit, True, ds._character_set)
    return ds, length, value_at


def _pixel_length_check(ds: Dataset, size: int, h: FileHeader, length: int, value_at: int
                        ) -> FileProblem | None:
    """Truncation and length checks of Pixel Data from its element header."""
    if length == 0xFFFFFFFF:  # encapsulated (compressed): must end with a sequence delimiter
        with open(h.path, "rb") as f2:
            f2.seek(max(0, size - 256))
            if _SEQ_DELIM not in f2.read():
                return FileProblem(
                    h.path, ReasonCode.TRUNCATED,
                    f"compressed Pixel Data has no end delimiter ({size} bytes on disk): "
                    "the file was cut short; fetch or copy it again",
                )
        return None
    if value_at + length > size:
        return FileProblem(
            h.path, ReasonCode.TRUNCATED,
            f"Pixel Data declares {length} bytes but only {max(0, size - value_at)} follow: "
            "the file was cut short; fetch or copy it again",
        )
    bits = _i(_s(ds, "BitsAllocated")) or 16
    spp = _i(_s(ds, "SamplesPerPixel")) or 1
    if h.rows and h.columns:
        expected = h.rows * h.columns * spp * h.n_frames * bits // 8
        # an odd expected length is padded to even, hence the +1 allowance
        if length not in (expected, expected + 1):
            h.pixel_problem = (
                f"Pixel Data holds {length} bytes; Rows x Columns x frames x bits gives "
                f"{expected}: the header or the pixel data is wrong"
            )
    return None


def header_from_dataset(ds: Dataset, path: str, forced: bool = False) -> FileHeader:
    """A :class:`FileHeader` from a dataset already in memory (a QIDO/C-FIND answer, a
    received C-STORE), *path* naming where it lives (a file or a ``pacs://`` URI)."""
    return _from_dataset(ds, path, forced)


def _from_dataset(ds: Dataset, path: str, forced: bool) -> FileHeader:
    h = FileHeader(
        path=path,
        sop_instance_uid=_s(ds, "SOPInstanceUID"),
        sop_class_uid=_s(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", "")),
        study_instance_uid=_s(ds, "StudyInstanceUID"),
        series_instance_uid=_s(ds, "SeriesInstanceUID"),
        forced=forced,
    )
    h.modality = _s(ds, "Modality").upper()
    h.image_type = tuple(x.upper() for x in _vals(ds, "ImageType"))
    h.transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    h.instance_number = _i(_s(ds, "InstanceNumber"))
    h.series_number = _i(_s(ds, "SeriesNumber"))
    h.rows = _i(_s(ds, "Rows"))
    h.columns = _i(_s(ds, "Columns"))
    h.n_frames = _i(_s(ds, "NumberOfFrames")) or 1
    if h.n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        _multiframe(ds, h)
    else:
        pos = _floats(_s(ds, "ImagePositionPatient"), 3)
        h.positions = [pos] if pos else []  # type: ignore[list-item]
        h.orientation = _floats(_s(ds, "ImageOrientationPatient"), 6)
        h.pixel_spacing = _floats(_s(ds, "PixelSpacing"), 2)  # type: ignore[assignment]
        h.slice_thickness = _f(_s(ds, "SliceThickness"))
        h.spacing_between_slices = _f(_s(ds, "SpacingBetweenSlices"))
        h.has_rescale = (
            _f(_s(ds, "RescaleSlope")) is not None and _f(_s(ds, "RescaleIntercept")) is not None
        )
    h.gantry_tilt = _f(_s(ds, "GantryDetectorTilt"))
    h.study_date = parse_da(_s(ds, "StudyDate"))
    h.series_date = parse_da(_s(ds, "SeriesDate") or _s(ds, "AcquisitionDate") or _s(ds, "ContentDate"))
    h.accession_number = _s(ds, "AccessionNumber")
    h.study_description = _s(ds, "StudyDescription")
    h.series_description = _s(ds, "SeriesDescription")
    h.protocol_name = _s(ds, "ProtocolName")
    h.body_part = _s(ds, "BodyPartExamined").upper()
    h.kernel = _s(ds, "ConvolutionKernel")
    h.manufacturer = _s(ds, "Manufacturer")
    h.model_name = _s(ds, "ManufacturerModelName")
    h.station_name = _s(ds, "StationName")
    h.institution = _s(ds, "InstitutionName")
    agent = _s(ds, "ContrastBolusAgent")
    h.contrast = bool(agent) if "ContrastBolusAgent" in ds else None
    h.location = _s(ds, "CurrentPatientLocation")
    h.patient_id = _s(ds, "PatientID")
    h.issuer_of_patient_id = _s(ds, "IssuerOfPatientID")
    h.nhs_number = _nhs_cached(ds, h.series_instance_uid) if h.series_instance_uid else _nhs_number(ds)
    h.patient_name = _s(ds, "PatientName")
    h.birth_date = parse_da(_s(ds, "PatientBirthDate"))
    h.sex = _s(ds, "PatientSex").upper()[:1]
    h.patient_age = _s(ds, "PatientAge")
    h.frame_of_reference_uid = _s(ds, "FrameOfReferenceUID")
    return h


def dicomdir_files(path: str | os.PathLike[str]) -> list[str]:
    """Absolute paths of the image files a DICOMDIR references (that exist on disk).

    Raises nothing: an unparsable DICOMDIR gives an empty list (and a log line).
    """
    p = Path(path)
    try:
        ds = pydicom.dcmread(p, force=True)
    except Exception as e:  # noqa: BLE001 - a broken DICOMDIR must not stop the batch
        log.warning("%s: DICOMDIR could not be read (%s); its folder is still walked", p, e)
        return []
    out = []
    for rec in ds.get("DirectoryRecordSequence", []) or []:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = list(ref) if isinstance(ref, pydicom.multival.MultiValue) else [str(ref)]
        f = p.parent.joinpath(*[str(x) for x in parts])
        if f.is_file():
            out.append(str(f))
        else:  # media written on case-insensitive systems: try a case-insensitive match
            log.debug("%s: referenced file %s not found", p, f)
    return out
