"""Assemble the files of one CT series into a trustworthy HU volume.

:func:`load_series` is the suite's decode path: the screening engine calls it per series,
so "decode-only" time in the benchmarks is the time of this function.

What it checks, each failure with a stable :class:`~fracture_qi.dicom.reasons.ReasonCode`:

* files that are not DICOM, truncated, DICOMDIR, without Pixel Data (dropped, logged);
* files without the 128-byte preamble (read with ``force=True`` where they parse, logged);
* the same SOP instance given twice (a study received twice): the copy is dropped;
* files of several series given as one (the series with most slices is kept, logged);
* localizers mixed into the series (dropped; TOO_FEW_SLICES if too few remain);
* enhanced multi-frame CT: split into frames by the per-frame functional groups;
* rescale slope/intercept missing (MISSING_RESCALE: raw values are never passed on as HU);
* mixed orientation, mixed matrix, gantry tilt (not resampled: GANTRY_TILT), oblique
  planes beyond tolerance (NOT_AXIAL), duplicate positions (identical copies dropped,
  conflicting ones DUPLICATE_POSITION), missing slices (SLICE_GAP; one missing slice in an
  otherwise regular series is interpolated from its neighbours and recorded in
  ``meta["interpolated_slices"]`` and ``meta["coercions"]``), uneven spacing
  (UNEVEN_SPACING), too few slices, wrong Pixel Data length, codecs not installed.

Files are parsed by :mod:`fracture_qi.dicom.fastread` (only the elements used here; about
ten times quicker than ``pydicom.dcmread`` on vendor headers), falling back to ``dcmread``
for anything unusual; pixels are decoded by :mod:`fracture_qi.dicom.pixelstack` with the
decoders of :mod:`fracture_qi.dicom.codecs`, on the GPU or several cores where
:mod:`fracture_qi.dicom.accel`'s settings allow.

``strict=True`` (tests, validation runs) turns every coercion into an error; the default
lenient mode applies it and logs a warning, and lists it in ``CTVolume.meta["coercions"]``.
Nothing is ever coerced that would change a measurement: gaps, uneven spacing, tilt and
missing rescale are errors in both modes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from fracture_qi.dicom import codecs, fastread
from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.dicom.pixelstack import decode_stack
from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import DicomError, VolumeError

logger = logging.getLogger(__name__)

#: fewer slices than this cannot cover one vertebral body at any usual slice spacing
MIN_SLICES = 5
#: slice positions closer than this (mm) are the same position
SAME_POSITION_MM = 0.01
#: spacing may differ from the median step by this much (mm) plus SPACING_REL_TOL x step
SPACING_ABS_TOL_MM = 0.05
SPACING_REL_TOL = 0.02
#: stacking direction may deviate this much (degrees) from the slice normal before GANTRY_TILT
TILT_TOL_DEG = 0.5
#: image plane may deviate this much (degrees) from the nearest patient axes before NOT_AXIAL
OBLIQUE_TOL_DEG = 10.0
#: ImageOrientationPatient cosines of one series may differ by this much
ORIENTATION_TOL = 1e-3

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
ENHANCED_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2.2"

Source = str | os.PathLike[str] | Dataset


@dataclass
class _Slice:
    """One 2-D image of the series: a single-frame file or one frame of a multi-frame file."""

    ds: Dataset
    frame: int  # index within the file's frames (0 for single-frame)
    n_frames: int
    path: str
    sop_uid: str
    series_uid: str
    position: np.ndarray  # ImagePositionPatient (LPS mm)
    orientation: np.ndarray  # ImageOrientationPatient (6 cosines)
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slope: float
    intercept: float
    rows: int
    cols: int
    transfer_syntax: str
    localizer: bool = False
    distance: float = 0.0  # position along the slice normal


@dataclass
class _Log:
    """What was dropped or coerced; raises instead in strict mode."""

    strict: bool
    coercions: list[str] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)

    def drop(self, path: str, reason: ReasonCode, detail: str) -> None:
        if self.strict:
            raise VolumeError(reason, path, f"{detail} (strict mode: nothing is dropped)")
        logger.warning("%s: dropped [%s] %s", path, reason, detail)
        self.dropped.append({"path": path, "reason": str(reason), "detail": detail})

    def coerce(self, path: str, reason: ReasonCode | str, detail: str) -> None:
        if self.strict:
            raise VolumeError(str(reason), path, f"{detail} (strict mode: no coercion)")
        logger.warning("%s: %s", path, detail)
        self.coercions.append(f"{path}: {detail}")


# --------------------------------------------------------------------------------------------
# reading


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts:
        return ts
    # No file meta (a raw dataset read with force): the pixel data can only be native.
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None:
        implicit, little = True, True
    if not little:
        return codecs.EXPLICIT_BE
    return codecs.IMPLICIT_LE if implicit else codecs.EXPLICIT_LE


def read_dataset(path: str | os.PathLike[str], log: _Log | None = None) -> Dataset:
    """Read one DICOM file, tolerating a missing preamble (logged as a coercion).

    The usual file goes through :func:`fracture_qi.dicom.fastread.read_fast` (the
    elements assembly needs, raw, converted on access); others through ``dcmread``.

    Parameters
    ----------
    path
        The file.
    log
        Coercion log; ``None`` means lenient with logging only.

    Returns
    -------
    pydicom.dataset.Dataset

    Raises
    ------
    DicomError
        ``UNREADABLE`` (I/O error), ``NOT_DICOM`` (does not parse as DICOM; or no preamble
        in strict mode), ``TRUNCATED`` (the file ends inside an element).
    """
    p = str(path)
    try:
        with open(p, "rb") as f:
            buf = f.read()
        fast = fastread.read_fast(buf, p)  # the usual case, ~10x quicker than dcmread
        if fast is not None:
            _check_complete(fast, p)
            return fast
        try:
            ds = pydicom.dcmread(BytesIO(buf))
            _check_complete(ds, p)
            return ds
        except InvalidDicomError:
            ds = pydicom.dcmread(BytesIO(buf), force=True)
    except OSError as e:
        if isinstance(e, EOFError):
            raise DicomError(ReasonCode.TRUNCATED, p, f"file ends early ({e}). Fix: "
                             "re-export or re-fetch it") from e
        raise DicomError(ReasonCode.UNREADABLE, p, f"cannot read: {e}. Fix: check the file "
                         "exists and is readable by this user") from e
    except EOFError as e:
        raise DicomError(ReasonCode.TRUNCATED, p, f"file ends early ({e}). Fix: re-export or "
                         "re-fetch it") from e
    except DicomError:
        raise
    except Exception as e:  # pydicom raises assorted types on garbage
        raise DicomError(ReasonCode.NOT_DICOM, p, f"does not parse as DICOM ({e})") from e
    # force=True "parses" any bytes; a real dataset has at least these
    if not any(k in ds for k in ("SOPInstanceUID", "Rows", "PixelData", "Modality")):
        raise DicomError(ReasonCode.NOT_DICOM, p, "not a DICOM file (no preamble, no image "
                         "attributes)")
    _check_complete(ds, p)
    if log is not None:
        log.coerce(p, ReasonCode.NOT_DICOM, "no DICOM preamble/DICM marker; read with force=True")
    else:
        logger.warning("%s: no DICOM preamble/DICM marker; read with force=True", p)
    return ds


_q = fastread.quick_get


@lru_cache(maxsize=256)
def _is_image_class(sop_class: str) -> bool:
    return "Image Storage" in pydicom.uid.UID(sop_class).name


def _check_complete(ds: Dataset, path: str) -> None:
    """Raise TRUNCATED when the file ended inside its last element or before its pixels.

    pydicom stops quietly at the end of a cut-short file, so the signs are checked here:
    a last element shorter than its declared length, or an image without Pixel Data.
    """
    keys = list(ds.keys())
    if keys:
        last = ds.get_item(max(keys))
        declared = getattr(last, "length", None)
        value = getattr(last, "value", None)
        if (isinstance(value, bytes | bytearray) and declared is not None
                and declared != 0xFFFFFFFF and len(value) < declared):
            raise DicomError(ReasonCode.TRUNCATED, path,
                             f"file ends inside {last.tag}: {len(value)} of {declared} bytes. "
                             "Fix: re-fetch or re-export the file (the copy was cut short)")
    meta = getattr(ds, "file_meta", None)
    sop_class = str(_q(ds, "SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "")
                                                   if meta is not None else ""))
    is_image = _is_image_class(sop_class) if sop_class else "Rows" in ds
    if "PixelData" not in ds and is_image and "DirectoryRecordSequence" not in ds:
        raise DicomError(ReasonCode.TRUNCATED, path,
                         "an image header without Pixel Data: the file was cut short. Fix: "
                         "re-fetch or re-export it")


def _floats(value: Any, n: int, what: str, path: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise VolumeError(ReasonCode.MIXED_ORIENTATION if "Orientation" in what
                          else ReasonCode.DECODE_FAILED, path,
                          f"{what} {value!r} is not {n} numbers. Fix: re-export the series") from e
    if arr.shape != (n,):
        raise VolumeError(ReasonCode.DECODE_FAILED, path,
                          f"{what} {value!r} does not have {n} values. Fix: re-export the series")
    return arr


def _first(seq_owner: Dataset | None, seq: str) -> Dataset | None:
    if seq_owner is None or seq not in seq_owner or not seq_owner[seq].value:
        return None
    return seq_owner[seq].value[0]


def _frame_attr(per_frame: Dataset | None, shared: Dataset | None, seq: str,
                keyword: str) -> Any:
    """Per-frame functional group value, else the shared one (PS3.3 C.7.6.16)."""
    for owner in (per_frame, shared):
        item = _first(owner, seq)
        if item is not None and keyword in item:
            return item[keyword].value
    return None


def _is_localizer(image_type: Any) -> bool:
    if not image_type:
        return False
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return any(str(v).upper() == "LOCALIZER" for v in values)


def _slices_of(ds: Dataset, path: str, log: _Log) -> list[_Slice]:
    """Turn one dataset into slices (one per frame); raises DicomError for unusable files."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(_q(ds, "SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "")
                                                   if meta is not None else ""))
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise DicomError(ReasonCode.DICOMDIR, path, "a DICOMDIR, not an image")
    if "PixelData" not in ds:
        raise DicomError(ReasonCode.NO_PIXEL_DATA, path, "no Pixel Data (not an image)")
    if int(_q(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(ReasonCode.NOT_CT, path, "colour image (SamplesPerPixel > 1), not a "
                         "CT slice")
    rows, cols = _q(ds, "Rows"), _q(ds, "Columns")
    if not rows or not cols:
        raise DicomError(ReasonCode.PIXEL_DATA_LENGTH, path, "Rows/Columns missing")
    ts = _transfer_syntax(ds)
    sop_uid = str(_q(ds, "SOPInstanceUID", "") or (meta.get("MediaStorageSOPInstanceUID", "")
                                                   if meta is not None else "")) or path
    series_uid = str(_q(ds, "SeriesInstanceUID", ""))
    n_frames = int(_q(ds, "NumberOfFrames", 1) or 1)
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frames = _q(ds, "PerFrameFunctionalGroupsSequence")
    multiframe = per_frames is not None or sop_class in (ENHANCED_CT_SOP_CLASS,
                                                         LEGACY_ENHANCED_CT_SOP_CLASS)
    out: list[_Slice] = []
    if not multiframe:
        if n_frames > 1:
            raise DicomError(ReasonCode.MULTIFRAME, path, f"{n_frames} frames without "
                             "per-frame functional groups: no geometry per frame")
        if _is_localizer(_q(ds, "ImageType")):
            # dropped before geometry checks: scouts often lack a usable image plane
            raise DicomError(ReasonCode.LOCALIZER, path, "localizer/scout image in the series")
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if _q(ds, kw) is None:
                raise VolumeError(ReasonCode.MIXED_ORIENTATION if kw != "PixelSpacing"
                                  else ReasonCode.INCONSISTENT_MATRIX, path,
                                  f"{kw} is missing: no geometry. Fix: re-export the series "
                                  "with its image plane attributes")
        slope, intercept = _q(ds, "RescaleSlope"), _q(ds, "RescaleIntercept")
        if slope is None or intercept is None:
            raise VolumeError(ReasonCode.MISSING_RESCALE, path,
                              "RescaleSlope/RescaleIntercept missing: stored values are not HU "
                              "and are never scored. Fix: re-export from the scanner or PACS "
                              "with the CT Image module complete")
        out.append(_Slice(
            ds=ds, frame=0, n_frames=1, path=path, sop_uid=sop_uid, series_uid=series_uid,
            position=_floats(_q(ds, "ImagePositionPatient"), 3, "ImagePositionPatient", path),
            orientation=_floats(_q(ds, "ImageOrientationPatient"), 6, "ImageOrientationPatient", path),
            pixel_spacing=tuple(_floats(_q(ds, "PixelSpacing"), 2, "PixelSpacing", path)),  # type: ignore[arg-type]
            slope=float(slope), intercept=float(intercept), rows=int(rows), cols=int(cols),
            transfer_syntax=ts,
        ))
        return out

    # Enhanced (or legacy converted enhanced) multi-frame CT: geometry per frame.
    if per_frames is None or len(per_frames) < n_frames:
        raise DicomError(ReasonCode.MULTIFRAME, path,
                         f"multi-frame CT with {n_frames} frames but "
                         f"{0 if per_frames is None else len(per_frames)} per-frame "
                         "functional group items. Fix: re-export as single-frame CT")
    for f in range(n_frames):
        pf = per_frames[f]
        pos = _frame_attr(pf, shared, "PlanePositionSequence", "ImagePositionPatient")
        ori = _frame_attr(pf, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _frame_attr(pf, shared, "PixelMeasuresSequence", "PixelSpacing")
        slope = _frame_attr(pf, shared, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _frame_attr(pf, shared, "PixelValueTransformationSequence",
                                "RescaleIntercept")
        ftype = _frame_attr(pf, shared, "CTImageFrameTypeSequence", "FrameType")
        where = f"{path} frame {f + 1}"
        if pos is None or ori is None or spacing is None:
            raise DicomError(ReasonCode.MULTIFRAME, where,
                             "frame lacks PlanePosition/PlaneOrientation/PixelMeasures. Fix: "
                             "re-export as single-frame CT")
        if slope is None or intercept is None:
            # Legacy converted files may keep the CT Image module's top-level values.
            slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is None or intercept is None:
            raise VolumeError(ReasonCode.MISSING_RESCALE, where,
                              "no RescaleSlope/RescaleIntercept in the Pixel Value "
                              "Transformation functional group: values are not HU")
        out.append(_Slice(
            ds=ds, frame=f, n_frames=n_frames, path=path, sop_uid=f"{sop_uid}#{f + 1}",
            series_uid=series_uid,
            position=_floats(pos, 3, "ImagePositionPatient", where),
            orientation=_floats(ori, 6, "ImageOrientationPatient", where),
            pixel_spacing=tuple(_floats(spacing, 2, "PixelSpacing", where)),  # type: ignore[arg-type]
            slope=float(slope), intercept=float(intercept), rows=int(rows), cols=int(cols),
            transfer_syntax=ts, localizer=_is_localizer(ftype or ds.get("ImageType")),
        ))
    return out


def _gather(sources: Iterable[Source], log: _Log) -> tuple[list[_Slice], int]:
    slices: list[_Slice] = []
    n_files = 0
    seen: dict[str, _Slice] = {}
    for src in sources:
        n_files += 1
        if isinstance(src, Dataset):
            ds = src
            path = str(getattr(src, "filename", "") or f"<dataset {n_files}>")
        else:
            path = os.fspath(src)
            try:
                ds = read_dataset(path, log)
            except VolumeError:
                raise  # strict-mode coercion
            except DicomError as e:
                log.drop(path, ReasonCode(e.reason), e.detail)
                continue
        try:
            found = _slices_of(ds, path, log)
        except VolumeError:
            raise  # a geometry/rescale problem with a real slice fails the series
        except DicomError as e:
            log.drop(path, ReasonCode(e.reason), e.detail)
            continue
        for s in found:
            if s.sop_uid in seen:
                # the same instance received twice (a study sent again): keep the first copy
                log.drop(path, ReasonCode.DUPLICATE_STUDY,
                         f"SOP instance already read from {seen[s.sop_uid].path}")
                continue
            seen[s.sop_uid] = s
            slices.append(s)
    return slices, n_files


# --------------------------------------------------------------------------------------------
# geometry


def _canonical_axes(row_dir: np.ndarray, col_dir: np.ndarray, normal: np.ndarray,
                    path: str) -> tuple[list[int], list[int], float]:
    """Which LPS axis each array axis (slice, row i, column j) runs along, and its sign.

    Returns (lps_axis_of, sign_of, obliquity_deg) for the array axes (k, i, j).
    """
    dirs = [normal, col_dir, row_dir]  # k moves along normal, i along col_dir, j along row_dir
    axes = [int(np.argmax(np.abs(d))) for d in dirs]
    if sorted(axes) != [0, 1, 2]:
        raise VolumeError(ReasonCode.NOT_AXIAL, path,
                          "image plane is oblique: its axes do not map onto patient axes. "
                          "Fix: use the axial (or an orthogonal) reconstruction")
    signs = [1 if d[a] > 0 else -1 for d, a in zip(dirs, axes)]
    obliquity = float(np.degrees(np.arccos(min(abs(d[a]) for d, a in zip(dirs, axes)))))
    return axes, signs, obliquity


def _assemble(slices: list[_Slice], log: _Log, min_slices: int) -> tuple[list[_Slice], dict]:
    """Drop localizers/duplicates, check geometry, sort along the normal. Returns slices+facts."""
    # several series given as one: keep the biggest, so a folder listing still works
    by_series = Counter(s.series_uid for s in slices)
    if len(by_series) > 1:
        keep = by_series.most_common(1)[0][0]
        for s in [s for s in slices if s.series_uid != keep]:
            log.drop(s.path, ReasonCode.MIXED_SERIES,
                     f"belongs to another series than the {by_series[keep]} slices kept")
        slices = [s for s in slices if s.series_uid == keep]

    for s in [s for s in slices if s.localizer]:
        log.drop(s.path, ReasonCode.LOCALIZER, "localizer/scout image in the series")
    slices = [s for s in slices if not s.localizer]
    if len(slices) < min_slices:
        raise VolumeError(ReasonCode.TOO_FEW_SLICES, _folder(slices),
                          f"{len(slices)} usable slice(s); at least {min_slices} are needed to "
                          "cover a vertebral body")

    ori = np.stack([s.orientation for s in slices])
    ref = np.median(ori, axis=0)
    off = np.abs(ori - ref).max(axis=1)
    if (off > ORIENTATION_TOL).any():
        bad = slices[int(np.argmax(off))]
        raise VolumeError(ReasonCode.MIXED_ORIENTATION, bad.path,
                          f"ImageOrientationPatient {bad.orientation.round(4).tolist()} differs "
                          f"from the series' {ref.round(4).tolist()}. Fix: index the series "
                          "by orientation (a reformat was mixed in)")
    shapes = Counter((s.rows, s.cols, round(s.pixel_spacing[0], 4), round(s.pixel_spacing[1], 4))
                     for s in slices)
    if len(shapes) > 1:
        (r, c, sy, sx), _ = shapes.most_common(1)[0]
        bad = next(s for s in slices if (s.rows, s.cols) != (r, c)
                   or abs(s.pixel_spacing[0] - sy) > 1e-4 or abs(s.pixel_spacing[1] - sx) > 1e-4)
        raise VolumeError(ReasonCode.INCONSISTENT_MATRIX, bad.path,
                          f"{bad.rows}x{bad.cols} at {bad.pixel_spacing} mm differs from the "
                          f"series' {r}x{c} at ({sy}, {sx}) mm")

    row_dir = ref[:3] / np.linalg.norm(ref[:3])
    col_dir = ref[3:] / np.linalg.norm(ref[3:])
    normal = np.cross(row_dir, col_dir)
    for s in slices:
        s.distance = float(s.position @ normal)
    slices.sort(key=lambda s: s.distance)

    # duplicate positions: identical copies go, different images at one place fail
    kept: list[_Slice] = [slices[0]]
    for s in slices[1:]:
        prev = kept[-1]
        if abs(s.distance - prev.distance) < SAME_POSITION_MM:
            if _same_pixels(s, prev):
                log.drop(s.path, ReasonCode.DUPLICATE_POSITION,
                         f"identical copy of {prev.path} at the same position")
                continue
            raise VolumeError(ReasonCode.DUPLICATE_POSITION, s.path,
                              f"a different image than {prev.path} at the same position "
                              f"({s.distance:.2f} mm along the normal). Fix: split the series "
                              "(two acquisitions or echoes share one series UID)")
        kept.append(s)
    slices = kept
    if len(slices) < min_slices:
        raise VolumeError(ReasonCode.TOO_FEW_SLICES, _folder(slices),
                          f"{len(slices)} distinct slice position(s); at least {min_slices} "
                          "are needed")

    d = np.array([s.distance for s in slices])
    steps = np.diff(d)
    step = float(np.median(steps))
    tol = SPACING_ABS_TOL_MM + SPACING_REL_TOL * step
    off_step = np.flatnonzero(np.abs(steps - step) > tol)
    interpolate_after: list[int] = []
    if off_step.size:
        b = int(off_step[0])
        ratio = steps[b] / step
        if ratio > 1.5 and abs(ratio - round(ratio)) * step <= tol and round(ratio) == 2 \
                and off_step.size == 1:
            # one slice missing in an otherwise regular series: interpolated (recorded)
            log.coerce(slices[b + 1].path, ReasonCode.SLICE_GAP,
                       f"1 slice missing at {(d[b] + d[b + 1]) / 2:.2f} mm along the normal "
                       f"(step {step:.2f} mm): interpolated from its neighbours")
            interpolate_after.append(b)
            off_step = off_step[1:]
    if off_step.size:
        b = int(off_step[0])
        ratio = steps[b] / step
        if ratio > 1.5 and abs(ratio - round(ratio)) * step <= tol:
            raise VolumeError(ReasonCode.SLICE_GAP, slices[b + 1].path,
                              f"{round(ratio) - 1} slice(s) missing between "
                              f"{d[b]:.2f} and {d[b + 1]:.2f} mm (step {step:.2f} mm). Fix: "
                              "re-fetch the series; the PACS copy may be incomplete")
        raise VolumeError(ReasonCode.UNEVEN_SPACING, slices[b + 1].path,
                          f"slice step {steps[b]:.3f} mm at {d[b]:.2f} mm differs from the "
                          f"usual {step:.3f} mm by more than {tol:.3f} mm. Fix: use a "
                          "reconstruction with constant slice increment")

    # gantry tilt: positions advance along a direction that is not the normal
    first, last = slices[0].position, slices[-1].position
    travel = last - first
    length = float(np.linalg.norm(travel))
    tilt = float(np.degrees(np.arccos(min(1.0, abs(travel @ normal) / length)))) if length else 0.0
    if tilt > TILT_TOL_DEG:
        raise VolumeError(ReasonCode.GANTRY_TILT, _folder(slices),
                          f"slices are stacked {tilt:.1f} degrees off their normal (gantry "
                          "tilt); such series are not resampled here. Fix: use a "
                          "reconstruction without tilt")
    return slices, {"row_dir": row_dir, "col_dir": col_dir, "normal": normal, "step": step,
                    "tilt_deg": tilt, "interpolate_after": interpolate_after}


def _same_pixels(a: _Slice, b: _Slice) -> bool:
    if a.n_frames == 1 and b.n_frames == 1:
        return bytes(a.ds.PixelData) == bytes(b.ds.PixelData) and \
            (a.slope, a.intercept) == (b.slope, b.intercept)
    fa, _ = codecs.decode_frames(a.ds, a.transfer_syntax, a.n_frames)
    fb, _ = codecs.decode_frames(b.ds, b.transfer_syntax, b.n_frames)
    return bool(np.array_equal(fa[a.frame], fb[b.frame]))


def _folder(slices: Sequence[_Slice]) -> str:
    if not slices:
        return ""
    try:
        return os.path.commonpath([os.path.dirname(s.path) or "." for s in slices])
    except ValueError:
        return os.path.dirname(slices[0].path)


def load_series(
    sources: Iterable[Source],
    *,
    strict: bool = False,
    min_slices: int = MIN_SLICES,
    oblique_tolerance_deg: float = OBLIQUE_TOL_DEG,
) -> CTVolume:
    """Read, check and decode the files of one CT series into a canonical HU volume.

    Parameters
    ----------
    sources
        Paths of the series' files, in any order, or already-read pydicom Datasets
        (e.g. from a DICOMweb retrieval). Enhanced multi-frame CT files are split into
        frames. Files that are not slices (DICOMDIR, non-DICOM, no Pixel Data, other
        series, localizers, repeated SOP instances) are dropped and logged.
    strict
        Raise instead of dropping or coercing anything (tests, validation runs).
    min_slices
        Fewest slices accepted.
    oblique_tolerance_deg
        Largest angle between the image axes and the patient axes accepted (the volume is
        treated as aligned with the patient axes; the angle is in ``meta["obliquity_deg"]``).

    Returns
    -------
    CTVolume
        ``int16`` HU in canonical ``(z, y, x)`` orientation (inferior->superior,
        anterior->posterior, right->left). ``meta`` holds ``manufacturer``,
        ``manufacturer_model``, ``kernel``, ``slice_thickness``, ``transfer_syntax``,
        ``transfer_syntax_name``, ``decoder``, ``decode_processes``, ``source``, ``n_files``,
        ``n_slices``,
        ``modality``, ``obliquity_deg``, ``decode_seconds``, ``dropped`` (path, reason,
        detail per file) and ``coercions``.

    Raises
    ------
    VolumeError
        With a :class:`~fracture_qi.dicom.reasons.ReasonCode` as ``reason``: e.g.
        ``TOO_FEW_SLICES``, ``MISSING_RESCALE``, ``SLICE_GAP``, ``UNEVEN_SPACING``,
        ``DUPLICATE_POSITION``, ``MIXED_ORIENTATION``, ``INCONSISTENT_MATRIX``,
        ``GANTRY_TILT``, ``NOT_AXIAL``; in strict mode also the reason of anything that
        lenient mode would have dropped or coerced.
    CodecUnavailableError
        ``CODEC_UNAVAILABLE``: no decoder installed for the series' transfer syntax.
    DicomError
        ``PIXEL_DATA_LENGTH``, ``DECODE_FAILED`` for pixel data that cannot be decoded.

    Examples
    --------
    >>> from fracture_qi.dicom.volume import load_series
    >>> vol = load_series(sorted(Path("series").iterdir()))  # doctest: +SKIP
    >>> vol.hu.shape, vol.spacing  # doctest: +SKIP
    ((400, 512, 512), (1.0, 0.78, 0.78))
    """
    t0 = time.perf_counter()
    log = _Log(strict=strict)
    raw, n_files = _gather(sources, log)
    slices, geo = _assemble(raw, log, min_slices)
    axes, signs, obliquity = _canonical_axes(geo["row_dir"], geo["col_dir"], geo["normal"],
                                             _folder(slices))
    if obliquity > oblique_tolerance_deg:
        raise VolumeError(ReasonCode.NOT_AXIAL, _folder(slices),
                          f"image plane is {obliquity:.1f} degrees oblique to the patient axes "
                          f"(tolerance {oblique_tolerance_deg}). Fix: use the axial "
                          "reconstruction")

    first = slices[0]
    rows, cols = first.rows, first.cols
    n = len(slices)
    # Fill a (k, i, j) stack; k already runs along +normal (sorted by distance). Where the
    # frames are decoded (GPU, helper processes, here) is dicom.accel's setting.
    stack, decoders, processes = decode_stack(slices, rows, cols)
    positions = [sl.position for sl in slices]
    interpolated: list[float] = []
    for b in reversed(geo["interpolate_after"]):
        mid = ((stack[b].astype(np.int32) + stack[b + 1].astype(np.int32)) // 2).astype(np.int16)
        stack = np.insert(stack, b + 1, mid, axis=0)
        positions.insert(b + 1, (positions[b] + positions[b + 1]) / 2)
        interpolated.append(round(float(positions[b + 1] @ geo["normal"]), 2))
    n = stack.shape[0]

    # Map (k, i, j) onto canonical (z, y, x): permute by patient axis, flip negative steps.
    # LPS axis 2 (z) -> canonical axis 0, 1 (y) -> 1, 0 (x) -> 2.
    canon_of = {2: 0, 1: 1, 0: 2}
    perm = [0, 0, 0]
    for array_axis, lps in enumerate(axes):
        perm[canon_of[lps]] = array_axis
    step_mm = [geo["step"], first.pixel_spacing[0], first.pixel_spacing[1]]
    hu = stack.transpose(perm)
    flips = tuple(slice(None, None, -1) if signs[perm[c]] < 0 else slice(None) for c in range(3))
    hu = hu[flips]
    if perm != [0, 1, 2] or any(signs[a] < 0 for a in range(3)):
        hu = np.ascontiguousarray(hu)
    spacing = tuple(float(step_mm[perm[c]]) for c in range(3))

    # origin: LPS of canonical voxel [0,0,0] = the array index at the "low" end of each axis
    idx = [0, 0, 0]  # in (k, i, j)
    shape_kij = (n, rows, cols)
    for a in range(3):
        if signs[a] < 0:
            idx[a] = shape_kij[a] - 1
    origin_lps = (positions[idx[0]] + idx[1] * first.pixel_spacing[0] * geo["col_dir"]
                  + idx[2] * first.pixel_spacing[1] * geo["row_dir"])

    ds0 = first.ds
    kernel = ds0.get("ConvolutionKernel", "")
    if not isinstance(kernel, str):
        kernel = "\\".join(str(v) for v in kernel)
    thickness = ds0.get("SliceThickness")
    if thickness is None and first.n_frames > 1:
        thickness = _frame_attr(ds0.PerFrameFunctionalGroupsSequence[0],
                                _first(ds0, "SharedFunctionalGroupsSequence"),
                                "PixelMeasuresSequence", "SliceThickness")
    meta: dict[str, Any] = {
        "modality": str(ds0.get("Modality", "")),
        "manufacturer": str(ds0.get("Manufacturer", "")),
        "manufacturer_model": str(ds0.get("ManufacturerModelName", "")),
        "kernel": str(kernel),
        "slice_thickness": float(thickness) if thickness not in (None, "") else None,
        "transfer_syntax": first.transfer_syntax,
        "transfer_syntax_name": codecs.syntax_name(first.transfer_syntax),
        "decoder": ",".join(sorted(decoders)),
        "decode_processes": processes,
        "source": _folder(slices),
        "n_files": n_files,
        "n_slices": n,
        "obliquity_deg": round(obliquity, 3),
        "tilt_deg": round(geo["tilt_deg"], 3),
        "dropped": log.dropped,
        "coercions": log.coercions,
        "interpolated_slices": interpolated,
        "decode_seconds": round(time.perf_counter() - t0, 4),
    }
    vol = CTVolume(
        hu=hu,
        spacing=spacing,  # type: ignore[arg-type]
        origin=(float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2])),
        study_instance_uid=str(ds0.get("StudyInstanceUID", "")),
        series_instance_uid=first.series_uid,
        meta=meta,
    )
    logger.debug("loaded %d slices from %s in %.2f s (%s)", n, meta["source"],
                 meta["decode_seconds"], meta["decoder"])
    return vol


def series_files(folder: str | os.PathLike[str]) -> list[Path]:
    """All regular files under *folder* (recursively), sorted; hidden files skipped.

    A convenience for ``load_series(series_files(folder))`` on a folder holding one series.
    """
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
