"""Database-free discovery: walk files, read headers, group series, decide eligibility.

This is layer 1 of the index. ``fracture-qi index`` persists its result
(:mod:`fracture_qi.dicom.index`); ``fracture-qi screen PATH...`` uses it directly, so both
report the same eligibility and the same reason codes.

Eligibility of a series (first failing rule gives the reason; docs/data-model.md has the
full rules):

1. ``NOT_CT``: Modality is not CT, or the SOP class is not a CT image class.
2. ``LOCALIZER``: every image is a scout (ImageType contains LOCALIZER). Localizer images
   mixed into an axial series are dropped from it (noted in ``detail``).
3. ``MIXED_ORIENTATION``: the remaining images differ in ImageOrientationPatient.
4. ``NOT_AXIAL``: the slice normal is more than 45 degrees from the patient's z axis
   (sagittal/coronal reformats, obliques).
5. ``AGE_UNKNOWN`` / ``AGE_UNDER_50`` (study level): PatientAge, else birth date vs study date.
6. ``NO_SPINE_IN_VIEW`` from header words (:func:`spine_in_view`).
7. ``TOO_FEW_SLICES``: fewer than :data:`MIN_SLICES` slices.
8. ``NO_SPINE_IN_VIEW`` from the cranio-caudal coverage (< :data:`MIN_COVERAGE_MM`).
9. ``MISSING_RESCALE``, ``PIXEL_DATA_LENGTH``, ``INCONSISTENT_MATRIX``, ``MULTIFRAME``.
10. From ImagePositionPatient: ``DUPLICATE_POSITION``, ``GANTRY_TILT``, ``SLICE_GAP``,
    ``UNEVEN_SPACING`` (see :func:`position_problems`). These, like ``TOO_FEW_SLICES``, are
    ``excluded`` (the geometry cannot be screened; no file is corrupt). Slices repeating
    another's position with identical pixels (re-sent instances) are left out first
    (:func:`drop_identical_copies`), and one missing slice in an otherwise regular series is
    accepted (the loader interpolates it; the series' ``detail`` says where).
11. ``SLICE_TOO_THICK``: the slice spacing (from positions, else SpacingBetweenSlices, else
    SliceThickness) exceeds ``max_slice_mm`` (:data:`MAX_SLICE_MM`, 3 mm by default): too
    coarse to measure vertebral heights (see :func:`slice_step_mm`).

Then one series per study is chosen among the eligible ones (:func:`choose_series`), the
others get ``NOT_CHOSEN``. A study whose accession number, patient and date repeat those of a
study already seen under another StudyInstanceUID is ``DUPLICATE_STUDY``; files whose
SOPInstanceUID was already seen at another path are listed as ``DUPLICATE_STUDY`` problems and
the first copy is kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from fracture_qi.dicom.headers import (
    CT_SOP_CLASSES,
    FileHeader,
    FileProblem,
    dicomdir_files,
    read_header,
)
from fracture_qi.dicom.reasons import EXCLUSIONS, ReasonCode

log = logging.getLogger(__name__)

#: minimum age (years, at the study date) for screening
MIN_AGE_YEARS = 50
#: a series needs at least this many slices (a 5 mm series over two vertebral bodies)
MIN_SLICES = 10
#: and at least this cranio-caudal coverage (mm) to hold a vertebral body and its neighbours
MIN_COVERAGE_MM = 40.0
#: |slice normal . z| below this is not axial (45 degrees)
AXIAL_MIN_COS = math.cos(math.radians(45))
#: orientation cosines differing by more than this are different orientations
ORIENTATION_TOL = 1e-3
#: slices closer than this (mm) share a position
DUPLICATE_POSITION_MM = 0.01
#: stacking direction more than this many degrees from the slice normal is gantry tilt
TILT_TOL_DEG = 0.5
#: a step differing from the median by more than this fraction is uneven (or a gap)
SPACING_REL_TOL = 0.1
#: "thin" slices for the chooser (mm)
THIN_MM = 3.0
#: coarsest slice spacing (mm) screened by default (manifest ``screening.max_slice_mm``)
MAX_SLICE_MM = 3.0
#: rounding slack (mm) so that a 3 mm series whose positions give 3.0004 mm stays in
SLICE_TOL_MM = 0.01
#: files per task when reading headers in a process pool
CHUNK_FILES = 256

_HEAD_WORDS = re.compile(
    r"\b(HEAD|BRAIN|SKULL|CRANI\w*|SINUS\w*|ORBIT\w*|FACE|FACIAL|IAMS?|PETROUS|TEMPORAL BONE|"
    r"DENTAL|MANDIBLE|CIRCLE OF WILLIS|COW|C[- ]?SPINE|CERVICAL|NECK|CAROTID\w*|"
    r"KNEE|ANKLE|FOOT|FEET|HAND|WRIST|ELBOW|SHOULDER|HUMERUS|FOREARM|FEMUR|TIBIA|FIBULA|"
    r"LEG|ARM|EXTREMIT\w*|LIMB)\b"
)
_TRUNK_WORDS = re.compile(
    r"\b(CHEST|THORAX|THORACIC|THOR|ABDOMEN|ABDO\w*|ABD|PELVIS|PELVIC|CAP|TAP|TRUNK|BODY|"
    r"WHOLE ?BODY|WB|SPINE|T[- ]?SPINE|L[- ]?SPINE|LUMBAR|LUMBOSACRAL|AORTA|AORTIC|KUB|URO\w*|"
    r"RENAL|KIDNEY\w*|LIVER|PANCREA\w*|COLON\w*|PE|CTPA|LUNG\w*|TRAUMA|POLYTRAUMA|STAGING)\b"
)


@dataclass
class SeriesHeader:
    """One series found on disk, with what the index, the chooser and the screener need.

    Attributes
    ----------
    files
        Image files sorted by position along the slice normal (inferior first for axial).
    z
        Position along the slice normal (mm) of each entry of *files* (first frame for
        multi-frame files); for axial series this is the LPS z.
    status
        ``ok`` (eligible), ``excluded`` (by design) or ``error`` (worth a look).
    reason
        A :class:`ReasonCode` value, ``None`` when eligible and chosen.
    chosen
        True for the one series per study chosen for screening.
    """

    study_instance_uid: str
    series_instance_uid: str
    folder: str
    files: list[str] = field(default_factory=list)
    sop_instance_uids: list[str] = field(default_factory=list)
    instance_numbers: list[int | None] = field(default_factory=list)
    z: list[float] = field(default_factory=list)
    modality: str = ""
    sop_class_uid: str = ""
    image_type: tuple[str, ...] = ()
    series_number: int | None = None
    description: str = ""
    study_description: str = ""
    protocol_name: str = ""
    body_part: str = ""
    kernel: str = ""
    manufacturer: str = ""
    model_name: str = ""
    station_name: str = ""
    site: str = ""
    contrast: bool | None = None
    transfer_syntax: str = ""
    orientation: tuple[float, ...] | None = None
    rows: int | None = None
    columns: int | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    slice_spacing: float | None = None
    n_frames: int = 0
    has_rescale: bool = True
    # study and patient facts (identifiers: for the patients table only, never published)
    study_date: dt.date | None = None
    accession_number: str = ""
    referral_source: str | None = None
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    nhs_number: str = ""
    patient_name: str = ""
    birth_date: dt.date | None = None
    sex: str = ""
    patient_age: str = ""
    age_years: float | None = None
    # outcome
    status: str = "ok"
    reason: str | None = None
    detail: str = ""
    chosen: bool = False
    #: remarks that are not reasons (e.g. localizer images left out of the series)
    notes: str = ""
    #: lowest and highest slice position over every frame (multi-frame files hold many)
    z_span: tuple[float, float] | None = None
    #: what lenient reading filled in for this series (surrogate UIDs, UIDs from the file
    #: meta...), one sentence each; also in ``notes`` and so in ``detail``
    coercions: list[str] = field(default_factory=list)

    @property
    def n_instances(self) -> int:
        return len(self.files)

    @property
    def z_min(self) -> float | None:
        return self.z_span[0] if self.z_span else (min(self.z) if self.z else None)

    @property
    def z_max(self) -> float | None:
        return self.z_span[1] if self.z_span else (max(self.z) if self.z else None)

    @property
    def coverage_mm(self) -> float:
        """Cranio-caudal extent covered: first to last slice plus one slice thickness."""
        lo, hi = self.z_span if self.z_span else (min(self.z, default=0.0), max(self.z, default=0.0))
        if not self.z and not self.z_span:
            return 0.0
        return (hi - lo) + (self.slice_thickness or self.slice_spacing or 0.0)

    def set_reason(self, reason: ReasonCode, detail: str = "") -> None:
        """Record why the series is not screened; status follows from the code."""
        self.reason = str(reason)
        self.status = "excluded" if reason in EXCLUSIONS else "error"
        self.detail = "; ".join(x for x in (detail, self.notes) if x)


@dataclass
class ScanResult:
    """What :func:`scan_paths` found.

    Attributes
    ----------
    series
        Every series, eligible or not, in a stable order (study, series number, UID).
    problems
        File-level problems (not DICOM, truncated, DICOMDIR, duplicate copies...).
    n_files
        Files looked at.
    seconds
        Wall time of the scan.
    """

    series: list[SeriesHeader] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)
    n_files: int = 0
    seconds: float = 0.0

    def chosen(self) -> list[SeriesHeader]:
        """The series chosen for screening, one per eligible study."""
        return [s for s in self.series if s.chosen]

    def counts(self) -> Counter[str]:
        """Number of series per reason (``"ok"`` for chosen ones) plus file problems."""
        c: Counter[str] = Counter(s.reason or "ok" for s in self.series)
        c.update(str(p.reason) for p in self.problems)
        return c


# --------------------------------------------------------------------------------------
# walking and reading
# --------------------------------------------------------------------------------------


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """Every file under *paths* (files taken as they are; folders walked recursively).

    Hidden files and folders (names starting with ``.``) are skipped; symbolic links to
    folders are not followed (no loops). Order is sorted, so results are reproducible.
    """
    for p in paths:
        p = os.fspath(p)
        if os.path.isfile(p):
            yield p
            continue
        if not os.path.isdir(p):
            log.warning("%s: no such file or folder; skipped", p)
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    yield os.path.join(root, name)


def _read_chunk(paths: list[str], strict: bool = False) -> list[FileHeader | FileProblem]:
    return [read_header(p, strict=strict) for p in paths]


def read_headers(
    files: Sequence[str], *, workers: int = 1, progress: bool = False, strict: bool = False
) -> list[FileHeader | FileProblem]:
    """Read the headers of *files*, in a process pool when *workers* > 1.

    Chunks of :data:`CHUNK_FILES` files go to each worker task: header records are small,
    so shipping them back is cheap (unlike decoded pixels). *strict* is passed to
    :func:`~fracture_qi.dicom.headers.read_header` (refuse files with empty UIDs).
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), unit="file", desc="headers")
    out: list[FileHeader | FileProblem] = []
    try:
        if workers <= 1 or len(files) < 2 * CHUNK_FILES:
            for p in files:
                out.append(read_header(p, strict=strict))
                if bar is not None:
                    bar.update(1)
        else:
            import multiprocessing as mp

            chunks = [list(files[i : i + CHUNK_FILES]) for i in range(0, len(files), CHUNK_FILES)]
            # forkserver: safe with threads in the parent (tqdm, database pools); the server
            # imports the reader once so each worker forks ready instead of importing pydicom
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["fracture_qi.dicom.scan"])
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for res in pool.map(_read_chunk, chunks, [strict] * len(chunks)):
                    out.extend(res)
                    if bar is not None:
                        bar.update(len(res))
    finally:
        if bar is not None:
            bar.close()
    return out


# --------------------------------------------------------------------------------------
# study- and series-level rules
# --------------------------------------------------------------------------------------


def age_years(patient_age: str, birth_date: dt.date | None, study_date: dt.date | None) -> float | None:
    """Age at the study date: from PatientAge (``072Y``, ``006M``...), else birth date.

    Examples
    --------
    >>> age_years("072Y", None, None)
    72.0
    >>> age_years("", dt.date(1975, 3, 1), dt.date(2025, 2, 28)) < 50
    True
    >>> age_years("", None, dt.date(2025, 1, 1)) is None
    True
    """
    m = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", patient_age or "")
    if m:
        n = int(m.group(1))
        unit = m.group(2) or "Y"
        return float({"Y": n, "M": n / 12, "W": n * 7 / 365.25, "D": n / 365.25}[unit])
    if birth_date and study_date and study_date >= birth_date:
        years = study_date.year - birth_date.year - (
            (study_date.month, study_date.day) < (birth_date.month, birth_date.day)
        )
        # whole years decide eligibility; the fraction is for reporting
        anniversary = _add_years(birth_date, years)
        frac = (study_date - anniversary).days / 365.25
        return years + min(frac, 0.999)
    return None


def _add_years(d: dt.date, years: int) -> dt.date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def referral_source(location: str) -> str | None:
    """Map CurrentPatientLocation to emergency / inpatient / outpatient / gp.

    Examples
    --------
    >>> [referral_source(x) for x in ("Emergency Department", "Inpatient ward",
    ...  "Outpatient clinic", "GP direct access", "")]
    ['emergency', 'inpatient', 'outpatient', 'gp', None]
    """
    s = (location or "").upper()
    if not s:
        return None
    if re.search(r"EMERG|\bA ?& ?E\b|\bED\b|CASUALTY|\bAED\b|RESUS", s):
        return "emergency"
    if re.search(r"\bGP\b|GENERAL PRACTI|PRIMARY CARE|DIRECT ACCESS|COMMUNITY", s):
        return "gp"
    if re.search(r"OUT ?PATIENT|CLINIC|\bOPD\b", s):
        return "outpatient"
    if re.search(r"IN ?PATIENT|WARD|\bIP\b|ADMITTED|ICU|ITU|THEATRE", s):
        return "inpatient"
    return None


def spine_in_view(s: SeriesHeader, *, use_coverage: bool = True) -> tuple[bool, str]:
    """Could the thoracic or lumbar spine be in this series' field of view?

    Rule (headers only): if BodyPartExamined, the study or series description or the
    protocol name names a head, neck or limb region (HEAD, BRAIN, C-SPINE, KNEE...) and none of
    them names a trunk region (CHEST, ABDOMEN, PELVIS, SPINE, CAP...), the spine is not in view.
    Otherwise a cranio-caudal coverage under :data:`MIN_COVERAGE_MM` cannot hold a vertebral
    body with its neighbours. Anything else is taken as possibly in view: the screener then
    decides (``NO_VERTEBRAE`` if it finds none).

    Parameters
    ----------
    s
        The series.
    use_coverage
        Also apply the coverage rule (False: header words only).

    Returns
    -------
    (bool, str)
        The answer and, when False, why.
    """
    text = " ".join(
        x for x in (s.body_part, s.study_description, s.description, s.protocol_name) if x
    ).upper().replace("_", " ")
    head = _HEAD_WORDS.search(text)
    if head and not _TRUNK_WORDS.search(text):
        return False, f"headers name a region without the thoracolumbar spine ({head.group(0)!r})"
    if use_coverage and (s.z or s.z_span) and s.coverage_mm < MIN_COVERAGE_MM:
        return False, (
            f"covers only {s.coverage_mm:.0f} mm cranio-caudally (< {MIN_COVERAGE_MM:.0f} mm)"
        )
    return True, ""


def _normal(orientation: Sequence[float]) -> np.ndarray:
    r = np.asarray(orientation[:3], dtype=float)
    c = np.asarray(orientation[3:6], dtype=float)
    n = np.cross(r, c)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else n


def position_problems(
    positions: Sequence[Sequence[float]], orientation: Sequence[float],
    *, allow_one_missing: bool = True,
) -> tuple[ReasonCode, str] | None:
    """Check slice positions of one series: duplicates, tilt, gaps, uneven spacing.

    Parameters
    ----------
    positions
        ImagePositionPatient of every slice (any order).
    orientation
        The series' ImageOrientationPatient.
    allow_one_missing
        One missing slice in an otherwise regular series is not a problem (the volume loader
        interpolates it; :func:`missing_slice_note` describes it). False: it is SLICE_GAP.

    Returns
    -------
    (ReasonCode, detail) or None
        The first problem found, in the order DUPLICATE_POSITION, GANTRY_TILT, SLICE_GAP,
        UNEVEN_SPACING.

    Examples
    --------
    >>> ax = [1, 0, 0, 0, 1, 0]
    >>> position_problems([(0, 0, z) for z in (0, 5, 10, 15)], ax) is None
    True
    >>> position_problems([(0, 0, z) for z in (0, 5, 15, 20, 25, 35, 40)], ax)[0].value
    'SLICE_GAP'
    >>> position_problems([(0, 0, z) for z in (0, 5, 15, 20)], ax) is None  # one: interpolated
    True
    """
    if len(positions) < 2:
        return None
    p = np.asarray(positions, dtype=float)
    n = _normal(orientation)
    d = p @ n
    order = np.argsort(d, kind="stable")
    d = d[order]
    p = p[order]
    steps = np.diff(d)
    if np.any(steps < DUPLICATE_POSITION_MM):
        k = int(np.argmax(steps < DUPLICATE_POSITION_MM))
        return ReasonCode.DUPLICATE_POSITION, (
            f"{int(np.sum(steps < DUPLICATE_POSITION_MM))} pair(s) of slices share a position "
            f"(first at {d[k]:.2f} mm along the slice normal)"
        )
    stack = p[-1] - p[0]
    length = float(np.linalg.norm(stack))
    if length > 0:
        cos = min(1.0, abs(float(stack @ n)) / length)
        angle = math.degrees(math.acos(cos))
        if angle > TILT_TOL_DEG:
            return ReasonCode.GANTRY_TILT, (
                f"slices are stacked {angle:.1f} degrees off the image normal (gantry tilt)"
            )
    step = float(np.median(steps))
    dev = np.abs(steps - step) > SPACING_REL_TOL * step
    if np.any(dev):
        k = int(np.argmax(dev))
        ratio = steps[k] / step
        if ratio > 1.5 and abs(ratio - round(ratio)) < 0.2:
            missing = int(sum(round(s / step) - 1 for s in steps if s / step > 1.5))
            if missing == 1 and int(np.sum(dev)) == 1 and allow_one_missing:
                return None  # one slice missing, the rest regular: interpolated on decoding
            return ReasonCode.SLICE_GAP, (
                f"about {missing} slice(s) missing: a step of {steps[k]:.2f} mm where the "
                f"usual step is {step:.2f} mm (at {d[k]:.1f} mm)"
            )
        return ReasonCode.UNEVEN_SPACING, (
            f"slice steps vary from {steps.min():.2f} to {steps.max():.2f} mm "
            f"(median {step:.2f} mm, tolerance {SPACING_REL_TOL:.0%})"
        )
    return None


def missing_slice_note(positions: Sequence[Sequence[float]], orientation: Sequence[float]
                       ) -> str:
    """The note recorded for a series with exactly one missing slice ('' for none).

    >>> missing_slice_note([(0, 0, z) for z in (0, 5, 15, 20)], [1, 0, 0, 0, 1, 0])
    '1 slice missing at 10.0 mm along the slice normal: interpolated from its neighbours'
    """
    if len(positions) < 3:
        return ""
    d = np.sort(np.asarray(positions, dtype=float) @ _normal(orientation))
    steps = np.diff(d)
    step = float(np.median(steps))
    big = np.flatnonzero(steps > 1.5 * step)
    if len(big) != 1:
        return ""
    k = int(big[0])
    return (f"1 slice missing at {(d[k] + d[k + 1]) / 2:.1f} mm along the slice normal: "
            "interpolated from its neighbours")


def _pixel_bytes(path: str) -> bytes | None:
    """The Pixel Data bytes of a local file (None where they cannot be read)."""
    if path.startswith("pacs://"):
        return None
    try:
        import pydicom

        ds = pydicom.dcmread(path, force=True, specific_tags=["PixelData"])
        data = ds.get("PixelData")
        return bytes(data) if data is not None else None
    except Exception:  # noqa: BLE001 - unreadable: not a copy we can prove identical
        return None


def drop_identical_copies(headers: Sequence[FileHeader]) -> tuple[list[FileHeader], list[FileProblem]]:
    """Drop slices that repeat another slice's position with identical pixels (re-sent
    instances under new SOP Instance UIDs); different images at one position stay (they make
    ``DUPLICATE_POSITION``). Only single-frame files with known positions are compared.

    Returns
    -------
    (kept, dropped)
        The headers kept, and one ``DUPLICATE_POSITION`` problem per copy left out.
    """
    singles = [h for h in headers if h.n_frames == 1 and h.positions and h.orientation]
    if len(singles) < 2:
        return list(headers), []
    normal = _normal(singles[0].orientation)  # type: ignore[arg-type]
    by_pos: dict[int, list[FileHeader]] = defaultdict(list)
    for h in singles:
        key = int(round(float(np.asarray(h.positions[0]) @ normal) / DUPLICATE_POSITION_MM))
        by_pos[key].append(h)
    dropped: list[FileProblem] = []
    gone: set[str] = set()
    for group in by_pos.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda h: (h.instance_number or 0, h.path))
        first = _pixel_bytes(group[0].path)
        if first is None:
            continue
        for other in group[1:]:
            if _pixel_bytes(other.path) == first:
                gone.add(other.path)
                dropped.append(FileProblem(
                    other.path, ReasonCode.DUPLICATE_POSITION,
                    f"identical copy of {group[0].path} at the same position: left out"))
    return [h for h in headers if h.path not in gone], dropped


def slice_step_mm(s: SeriesHeader) -> float | None:
    """The z step of a series in mm: the spacing from positions (or SpacingBetweenSlices,
    which :func:`build_series` puts in ``slice_spacing``), else SliceThickness; None when no
    header says.

    Examples
    --------
    >>> slice_step_mm(SeriesHeader("1", "1.1", "/x", slice_thickness=5.0, slice_spacing=2.5))
    2.5
    >>> slice_step_mm(SeriesHeader("1", "1.1", "/x", slice_thickness=5.0))
    5.0
    """
    for v in (s.slice_spacing, s.slice_thickness):
        if v is not None and v > 0:
            return float(v)
    return None


def eligibility(
    s: SeriesHeader,
    headers: Sequence[FileHeader] = (),
    *,
    ignore_age: bool = False,
    max_slice_mm: float = MAX_SLICE_MM,
) -> None:
    """Set ``s.status``/``s.reason``/``s.detail`` by the rules in the module docstring.

    *headers* are the series' file headers (for per-file checks); when empty, only what the
    SeriesHeader holds is checked (a SeriesHeader built from a PACS query, for instance).
    *ignore_age* skips the age rules (``AGE_UNKNOWN``, ``AGE_UNDER_50``): for research and
    validation folders whose ages were removed, never for the audit; the skip is noted in
    ``detail``. *max_slice_mm* is the coarsest slice step screened (``SLICE_TOO_THICK``
    beyond it).
    """
    s.status, s.reason, s.detail, s.chosen = "ok", None, s.notes, False
    s.age_years = age_years(s.patient_age, s.birth_date, s.study_date)
    if s.modality != "CT" or (s.sop_class_uid and s.sop_class_uid not in CT_SOP_CLASSES):
        s.set_reason(
            ReasonCode.NOT_CT,
            f"modality {s.modality or 'missing'}, SOP class {s.sop_class_uid or 'missing'}",
        )
        return
    if "LOCALIZER" in s.image_type:
        s.set_reason(ReasonCode.LOCALIZER, "scout/topogram images only")
        return
    orientations = {h.orientation for h in headers if h.orientation is not None}
    if len(orientations) > 1:
        o = np.asarray(sorted(orientations))
        if np.max(np.ptp(o, axis=0)) > ORIENTATION_TOL:
            s.set_reason(
                ReasonCode.MIXED_ORIENTATION,
                f"{len(orientations)} different ImageOrientationPatient values in one series",
            )
            return
    if s.orientation is None:
        s.set_reason(ReasonCode.NOT_AXIAL, "no ImageOrientationPatient: orientation unknown")
        return
    nz = abs(float(_normal(s.orientation)[2]))
    if nz < AXIAL_MIN_COS:
        s.set_reason(
            ReasonCode.NOT_AXIAL,
            f"slice normal {math.degrees(math.acos(min(1.0, nz))):.0f} degrees from the "
            "cranio-caudal axis (a sagittal/coronal reformat or oblique)",
        )
        return
    if ignore_age and (s.age_years is None or s.age_years < MIN_AGE_YEARS):
        s.detail = "; ".join(x for x in ("age rule ignored (--ignore-age)", s.detail) if x)
    elif s.age_years is None:
        s.set_reason(
            ReasonCode.AGE_UNKNOWN,
            "no PatientAge and no PatientBirthDate with a StudyDate: age at the scan unknown",
        )
        return
    elif s.age_years < MIN_AGE_YEARS:
        s.set_reason(ReasonCode.AGE_UNDER_50, f"age {math.floor(s.age_years)} at the study date")
        return
    ok, why = spine_in_view(s, use_coverage=False)
    if not ok:
        s.set_reason(ReasonCode.NO_SPINE_IN_VIEW, why)
        return
    n_slices = s.n_frames or s.n_instances
    if n_slices < MIN_SLICES:
        s.set_reason(ReasonCode.TOO_FEW_SLICES, f"{n_slices} slice(s); at least {MIN_SLICES} needed")
        return
    ok, why = spine_in_view(s)
    if not ok:
        s.set_reason(ReasonCode.NO_SPINE_IN_VIEW, why)
        return
    if not s.has_rescale:
        missing = sum(1 for h in headers if not h.has_rescale) or s.n_instances
        s.set_reason(
            ReasonCode.MISSING_RESCALE,
            f"{missing} file(s) without RescaleSlope/RescaleIntercept: values are not HU",
        )
        return
    bad = [h for h in headers if h.pixel_problem]
    if bad:
        s.set_reason(ReasonCode.PIXEL_DATA_LENGTH, f"{bad[0].path}: {bad[0].pixel_problem}")
        return
    matrices = {(h.rows, h.columns, h.pixel_spacing) for h in headers}
    if len(matrices) > 1:
        s.set_reason(
            ReasonCode.INCONSISTENT_MATRIX,
            f"{len(matrices)} different Rows/Columns/PixelSpacing combinations in one series",
        )
        return
    positions = [pos for h in headers for pos in h.positions]
    if headers and len(positions) < sum(h.n_frames for h in headers):
        reason = ReasonCode.MULTIFRAME if any(h.n_frames > 1 for h in headers) else ReasonCode.NOT_AXIAL
        s.set_reason(reason, "ImagePositionPatient missing for some slices/frames: geometry unknown")
        return
    if positions:
        prob = position_problems(positions, s.orientation)
        if prob is not None:
            s.set_reason(*prob)
            return
        note = missing_slice_note(positions, s.orientation)
        if note:
            s.detail = "; ".join(x for x in (note, s.detail) if x)
    step = slice_step_mm(s)
    if step is not None and step > max_slice_mm + SLICE_TOL_MM:
        s.set_reason(
            ReasonCode.SLICE_TOO_THICK,
            f"slice spacing {step:.2f} mm (thickness {s.slice_thickness or step:.2f} mm) exceeds "
            f"{max_slice_mm:g} mm: heights cannot be measured for Genant grading. Fix: send a "
            f"thinner (<= {max_slice_mm:g} mm) reconstruction of this study",
        )
        return


_BONE_KERNEL = re.compile(
    r"BONE|SHARP|DETAIL|EDGE|ULTRA|\bYA\b|\bYB\b|\bYC\b|\bD\b|FC3\d|FC8\d|BONEPLUS", re.IGNORECASE
)
_LUNG_KERNEL = re.compile(r"LUNG|\bL\b|\bBL\d|FC5\d|FC8[6-9]", re.IGNORECASE)
_SOFT_KERNEL = re.compile(r"SOFT|STANDARD|\bSTND\b|\bB\b|\bC\b|BODY|FC0\d|FC1\d|\bQR\d", re.IGNORECASE)
_SIEMENS_KERNEL = re.compile(r"^[BIQ][rfs]?(\d{2})", re.IGNORECASE)


def kernel_class(kernel: str) -> str:
    """Classify a ConvolutionKernel as ``bone``, ``soft``, ``lung`` or ``other``.

    Siemens B/Br/I/Q kernels number 50 and above are sharp (bone), below 50 soft; GE,
    Philips and Canon names are matched by word (BONE, STANDARD, SOFT, LUNG, FC3x...).

    Examples
    --------
    >>> [kernel_class(k) for k in ("B30f", "Br64", "BONEPLUS", "STANDARD", "LUNG", "Bl57", "")]
    ['soft', 'bone', 'bone', 'soft', 'lung', 'lung', 'other']
    """
    k = (kernel or "").strip()
    if not k:
        return "other"
    if _LUNG_KERNEL.search(k):
        return "lung"
    m = _SIEMENS_KERNEL.match(k)
    if m:
        return "bone" if int(m.group(1)) >= 50 else "soft"
    if _BONE_KERNEL.search(k):
        return "bone"
    if _SOFT_KERNEL.search(k):
        return "soft"
    return "other"


def choice_key(s: SeriesHeader, best_coverage: float) -> tuple[object, ...]:
    """Sort key of the chooser (smallest wins); see :func:`choose_series`."""
    thickness = s.slice_thickness or s.slice_spacing or 99.0
    thin = thickness <= THIN_MM
    kc = kernel_class(s.kernel)
    if thin:
        kernel_rank = {"bone": 0, "soft": 1, "other": 2, "lung": 3}[kc]
    else:  # thick bone kernels are noisy for no gain; prefer soft tissue
        kernel_rank = {"soft": 0, "other": 1, "bone": 2, "lung": 3}[kc]
    full = s.coverage_mm >= 0.9 * best_coverage
    derived = "DERIVED" in s.image_type or "SECONDARY" in s.image_type
    return (
        not full,
        not thin,
        kernel_rank,
        round(thickness, 3),
        derived,
        -round(s.coverage_mm, 1),
        -s.n_instances,
        s.series_number if s.series_number is not None else 1 << 30,
        s.series_instance_uid,
    )


def choose_series(series: Sequence[SeriesHeader]) -> SeriesHeader | None:
    """Choose one series of a study for screening and mark the other eligible ones.

    Among eligible (``status == "ok"``) axial series: first those covering at least 90% of
    the widest coverage (the thoracolumbar range is not known from headers, so coverage
    stands for it); then thin (<= 3 mm) before thick; among thin ones bone kernel, then soft
    tissue, then other, then lung; among thick ones soft tissue first; then thinner slices,
    ORIGINAL before DERIVED, wider coverage, more slices, lower SeriesNumber, and finally the
    SeriesInstanceUID (a deterministic tie-break).

    Returns
    -------
    SeriesHeader or None
        The chosen series (``chosen`` set True); the other eligible ones get ``NOT_CHOSEN``.
    """
    ok = [s for s in series if s.status == "ok"]
    for s in series:
        s.chosen = False
    if not ok:
        return None
    best = max(s.coverage_mm for s in ok)
    ranked = sorted(ok, key=lambda s: choice_key(s, best))
    winner = ranked[0]
    winner.chosen = True
    for s in ranked[1:]:
        s.set_reason(
            ReasonCode.NOT_CHOSEN,
            f"series {winner.series_number} ({winner.slice_thickness} mm, "
            f"{kernel_class(winner.kernel)} kernel) chosen instead",
        )
    return winner


#: study-level reasons, in the order they explain a study's exclusion best
_STUDY_REASONS = (
    ReasonCode.DUPLICATE_STUDY, ReasonCode.AGE_UNDER_50, ReasonCode.AGE_UNKNOWN,
    ReasonCode.NO_SPINE_IN_VIEW,
)
#: series-type reasons: the least informative explanation for a whole study
_TYPE_REASONS = (ReasonCode.NOT_AXIAL, ReasonCode.LOCALIZER, ReasonCode.NOT_CT)


def study_reason(series: Sequence[SeriesHeader]) -> str | None:
    """Why a study is not screened (None when one of its series is chosen).

    A study-level reason carried by any series wins (DUPLICATE_STUDY, AGE_UNDER_50,
    AGE_UNKNOWN, NO_SPINE_IN_VIEW, in that order); else an error of an axial series
    (SLICE_GAP, MISSING_RESCALE...), which is worth a look; else NOT_AXIAL, LOCALIZER, NOT_CT.

    Examples
    --------
    >>> a = SeriesHeader("1", "1.1", "/x"); a.set_reason(ReasonCode.LOCALIZER)
    >>> b = SeriesHeader("1", "1.2", "/x"); b.set_reason(ReasonCode.AGE_UNDER_50)
    >>> study_reason([a, b])
    'AGE_UNDER_50'
    """
    if any(s.chosen for s in series):
        return None
    reasons = [s.reason for s in series if s.reason]
    for code in _STUDY_REASONS:
        if str(code) in reasons:
            return str(code)
    type_codes = {str(c) for c in _TYPE_REASONS}
    other = [r for r in reasons if r not in type_codes]
    if other:
        return Counter(other).most_common(1)[0][0]
    for code in _TYPE_REASONS:
        if str(code) in reasons:
            return str(code)
    return reasons[0] if reasons else None


# --------------------------------------------------------------------------------------
# grouping
# --------------------------------------------------------------------------------------


def _majority(values: Iterable[object]) -> object:
    c = Counter(v for v in values if v not in (None, "", ()))
    return c.most_common(1)[0][0] if c else None


def build_series(headers: Sequence[FileHeader]) -> tuple[SeriesHeader, list[FileHeader]]:
    """Build a :class:`SeriesHeader` from the file headers of one series.

    Localizer images mixed into a cross-sectional series are dropped from it (and named in
    ``detail``); files are sorted along the slice normal.

    Returns
    -------
    (SeriesHeader, list of FileHeader)
        The series and the file headers it kept, in the same order as ``series.files``.
    """
    scouts = [h for h in headers if "LOCALIZER" in h.image_type]
    kept = [h for h in headers if "LOCALIZER" not in h.image_type] or list(headers)
    first = kept[0]
    orientation = _majority(h.orientation for h in kept)
    normal = _normal(orientation) if orientation else np.array([0.0, 0.0, 1.0])

    def zpos(h: FileHeader) -> float:
        return float(np.asarray(h.positions[0]) @ normal) if h.positions else math.nan

    kept.sort(key=lambda h: (math.isnan(zpos(h)), zpos(h), h.instance_number or 0, h.path))
    s = SeriesHeader(
        study_instance_uid=first.study_instance_uid,
        series_instance_uid=first.series_instance_uid,
        folder=os.path.dirname(first.path),
        files=[h.path for h in kept],
        sop_instance_uids=[h.sop_instance_uid for h in kept],
        instance_numbers=[h.instance_number for h in kept],
        z=[zpos(h) for h in kept if h.positions],
    )
    s.modality = str(_majority(h.modality for h in kept) or "")
    s.sop_class_uid = str(_majority(h.sop_class_uid for h in kept) or "")
    s.image_type = tuple(_majority(h.image_type for h in kept) or ())  # type: ignore[arg-type]
    if all("LOCALIZER" in h.image_type for h in headers):
        s.image_type = tuple(dict.fromkeys((*s.image_type, "LOCALIZER")))
    s.series_number = first.series_number
    for attr, src in (
        ("description", "series_description"), ("study_description", "study_description"),
        ("protocol_name", "protocol_name"), ("body_part", "body_part"), ("kernel", "kernel"),
        ("manufacturer", "manufacturer"), ("model_name", "model_name"),
        ("station_name", "station_name"), ("site", "institution"),
        ("transfer_syntax", "transfer_syntax"), ("accession_number", "accession_number"),
        ("patient_id", "patient_id"), ("issuer_of_patient_id", "issuer_of_patient_id"),
        ("nhs_number", "nhs_number"), ("patient_name", "patient_name"), ("sex", "sex"),
        ("patient_age", "patient_age"),
    ):
        setattr(s, attr, str(_majority(getattr(h, src) for h in kept) or ""))
    s.contrast = first.contrast
    s.orientation = orientation  # type: ignore[assignment]
    s.rows, s.columns = first.rows, first.columns
    s.pixel_spacing = _majority(h.pixel_spacing for h in kept)  # type: ignore[assignment]
    s.slice_thickness = _majority(h.slice_thickness for h in kept)  # type: ignore[assignment]
    zs = sorted(z for h in kept for z in ((np.asarray(h.positions) @ normal).tolist() if h.positions else []))
    if zs:
        s.z_span = (zs[0], zs[-1])
    if len(zs) > 1:
        s.slice_spacing = float(np.median(np.diff(zs)))
    else:
        s.slice_spacing = first.spacing_between_slices
    if s.slice_thickness is None and s.slice_spacing:
        s.slice_thickness = s.slice_spacing
    s.n_frames = sum(h.n_frames for h in kept)
    s.has_rescale = all(h.has_rescale for h in kept)
    s.study_date = _majority(h.study_date for h in kept) or _majority(h.series_date for h in kept)  # type: ignore[assignment]
    s.birth_date = _majority(h.birth_date for h in kept)  # type: ignore[assignment]
    s.referral_source = referral_source(str(_majority(h.location for h in kept) or ""))
    if scouts and len(scouts) < len(headers):
        s.notes = f"{len(scouts)} localizer image(s) in this series left out"
    s.coercions = list(dict.fromkeys(c for h in headers for c in h.coercions))
    if s.coercions:
        s.notes = "; ".join(x for x in (s.notes, "coerced: " + "; ".join(s.coercions)) if x)
    return s, kept


def study_key(
    nhs_number: str, patient_id: str, accession_number: str, study_date: dt.date | None
) -> tuple[str, str, str] | None:
    """What makes two StudyInstanceUIDs the same examination sent twice: patient (NHS
    number, else PatientID), accession number and date. None without an accession number."""
    if not accession_number:
        return None
    who = nhs_number or patient_id
    return (who, accession_number.strip().upper(), study_date.isoformat() if study_date else "")


def _study_key(s: SeriesHeader) -> tuple[str, str, str] | None:
    return study_key(s.nhs_number, s.patient_id, s.accession_number, s.study_date)


def assemble(
    records: Iterable[FileHeader | FileProblem],
    *,
    known_sops: dict[str, str] | None = None,
    known_studies: dict[tuple[str, str, str], tuple[str, str]] | None = None,
    ignore_age: bool = False,
    max_slice_mm: float = MAX_SLICE_MM,
) -> ScanResult:
    """Group header records into series, apply eligibility and choose one series per study.

    Parameters
    ----------
    records
        What :func:`read_headers` returned.
    known_sops
        SOPInstanceUID -> path of instances already indexed (by the database layer), so
        that a copy arriving later is recorded as a duplicate instead of added.
    known_studies
        :func:`study_key` -> (StudyInstanceUID, folder) of studies already indexed, so that
        the same examination arriving later under a new StudyInstanceUID is a duplicate.
    ignore_age
        Skip the age rules (see :func:`eligibility`); research/validation folders only.
    max_slice_mm
        Coarsest slice step screened (``SLICE_TOO_THICK`` beyond it; manifest
        ``screening.max_slice_mm``).

    Returns
    -------
    ScanResult
    """
    known = dict(known_sops or {})
    result = ScanResult()
    groups: dict[tuple[str, str], list[FileHeader]] = defaultdict(list)
    for r in records:
        if isinstance(r, FileProblem):
            result.problems.append(r)
            continue
        first = known.get(r.sop_instance_uid)
        if first is not None and first != r.path:
            result.problems.append(
                FileProblem(
                    r.path, ReasonCode.DUPLICATE_STUDY,
                    f"same SOPInstanceUID as {first} (kept); this copy is ignored",
                )
            )
            continue
        known[r.sop_instance_uid] = r.path
        groups[(r.study_instance_uid, r.series_instance_uid)].append(r)

    by_study: dict[str, list[SeriesHeader]] = defaultdict(list)
    for (study_uid, _), hdrs in sorted(groups.items()):
        hdrs, copies = drop_identical_copies(hdrs)
        result.problems.extend(copies)
        s, kept = build_series(hdrs)
        if copies:
            note = (f"{len(copies)} identical copy(ies) of slices at the same position "
                    "(re-sent instances) left out")
            s.notes = "; ".join(x for x in (s.notes, note) if x)
        if s.coercions:  # once per series, not per file
            log.warning("series in %s (%d files) read leniently: %s", s.folder, len(hdrs),
                        "; ".join(s.coercions))
        eligibility(s, kept, ignore_age=ignore_age, max_slice_mm=max_slice_mm)
        by_study[study_uid].append(s)
    seen_studies: dict[tuple[str, str, str], tuple[str, str]] = dict(known_studies or {})
    for study_uid in sorted(by_study, key=lambda u: (min(x.folder for x in by_study[u]), u)):
        series = by_study[study_uid]
        key = _study_key(series[0])
        if key is not None and key in seen_studies and seen_studies[key][0] != study_uid:
            for s in series:
                # a re-sent study is a duplicate whatever its slices: the study-level reason
                # explains it better than SLICE_TOO_THICK
                if s.status == "ok" or s.reason == ReasonCode.SLICE_TOO_THICK.value:
                    s.set_reason(
                        ReasonCode.DUPLICATE_STUDY,
                        f"same patient, accession number and date as the study in "
                        f"{seen_studies[key][1]}; that one is kept",
                    )
        elif key is not None:
            seen_studies[key] = (study_uid, min(x.folder for x in series))
        choose_series(series)
        series.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30,
                                   s.series_instance_uid))
        result.series.extend(series)
    return result


def scan_paths(
    paths: Iterable[str | os.PathLike[str]],
    *,
    workers: int = 1,
    progress: bool = False,
    known_sops: dict[str, str] | None = None,
    strict: bool = False,
    ignore_age: bool = False,
    max_slice_mm: float = MAX_SLICE_MM,
) -> ScanResult:
    """Find every CT series under *paths* and decide what to screen; no database.

    Parameters
    ----------
    paths
        Files and/or folders (walked recursively). A DICOMDIR adds the files it lists.
    workers
        Processes for header reading (big folders); 1 reads in this process.
    progress
        Show a tqdm progress bar.
    known_sops
        See :func:`assemble`.
    strict
        Refuse files whose UIDs are empty (``UNREADABLE``) instead of filling them in
        (file meta UIDs, deterministic ``2.25.`` surrogates; recorded per series in
        ``coercions`` and ``detail``).
    ignore_age
        Skip the age rules (``AGE_UNKNOWN``, ``AGE_UNDER_50``): for research and validation
        folders whose ages were removed; never used by the audit pipeline.
    max_slice_mm
        Coarsest slice step screened (``SLICE_TOO_THICK`` beyond it).

    Returns
    -------
    ScanResult
        ``.series`` with status/reason/chosen per series, ``.problems`` per bad file.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     print(scan_paths([d]).series)
    []
    """
    t0 = time.perf_counter()
    files: list[str] = []
    seen: set[str] = set()
    for f in iter_files(paths):
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            files.append(f)
        if os.path.basename(f).upper() == "DICOMDIR":
            for g in dicomdir_files(f):
                real = os.path.realpath(g)
                if real not in seen:
                    seen.add(real)
                    files.append(g)
    records = read_headers(files, workers=workers, progress=progress, strict=strict)
    result = assemble(records, known_sops=known_sops, ignore_age=ignore_age,
                      max_slice_mm=max_slice_mm)
    result.n_files = len(files)
    result.seconds = time.perf_counter() - t0
    log.info(
        "scanned %d files in %.1f s: %d series, %d chosen, %d file problems",
        result.n_files, result.seconds, len(result.series), len(result.chosen()),
        len(result.problems),
    )
    return result
