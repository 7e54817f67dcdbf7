"""Stable reason codes for every excluded, skipped or failed file, series or study.

These strings are a contract: they appear in the database, in ``studies.csv`` and in
reports, and other tools filter on them. Add codes; never rename or reuse one.
"""

from __future__ import annotations

from enum import Enum


class ReasonCode(str, Enum):
    """Why a file, series or study was not screened (or why screening failed)."""

    # --- file level -------------------------------------------------------------------------
    NOT_DICOM = "NOT_DICOM"
    """The file is not DICOM (no preamble/DICM marker and no parsable dataset)."""
    TRUNCATED = "TRUNCATED"
    """The file ends before its declared content does."""
    DICOMDIR = "DICOMDIR"
    """A DICOMDIR media directory, not an image; its referenced files are indexed instead."""
    NO_PIXEL_DATA = "NO_PIXEL_DATA"
    """The file has no Pixel Data (a structured report, a presentation state...)."""
    UNREADABLE = "UNREADABLE"
    """The file could not be opened (permissions, I/O error)."""

    # --- eligibility ------------------------------------------------------------------------
    NOT_CT = "NOT_CT"
    """Modality is not CT (or SOP class is not a CT image storage class)."""
    LOCALIZER = "LOCALIZER"
    """A scout/topogram/localizer image (ImageType contains LOCALIZER), not a cross-section."""
    AGE_UNDER_50 = "AGE_UNDER_50"
    """The patient was under 50 on the study date."""
    AGE_UNKNOWN = "AGE_UNKNOWN"
    """Neither PatientAge nor PatientBirthDate (with StudyDate) gives an age."""
    NO_SPINE_IN_VIEW = "NO_SPINE_IN_VIEW"
    """The field of view holds no thoracic or lumbar spine (a head or neck CT, a limb)."""
    NOT_AXIAL = "NOT_AXIAL"
    """A reformat (sagittal/coronal) or oblique series; the axial acquisition is used instead."""
    NOT_CHOSEN = "NOT_CHOSEN"
    """Eligible, but another series of the same study was chosen for screening."""
    DUPLICATE_STUDY = "DUPLICATE_STUDY"
    """The same study (or series) was received again; the first copy is kept."""
    SLICE_TOO_THICK = "SLICE_TOO_THICK"
    """The series' slice spacing/thickness is coarser than the screener can measure (default
    3 mm); a thinner reconstruction is needed."""

    # --- volume assembly --------------------------------------------------------------------
    MISSING_RESCALE = "MISSING_RESCALE"
    """RescaleSlope/RescaleIntercept absent: values are not HU and are never scored."""
    SLICE_GAP = "SLICE_GAP"
    """Slices are missing: the spacing jumps to a multiple of the usual step (one missing
    slice in an otherwise regular series is interpolated instead, and noted)."""
    UNEVEN_SPACING = "UNEVEN_SPACING"
    """Slice spacing varies beyond tolerance without a clean gap."""
    DUPLICATE_POSITION = "DUPLICATE_POSITION"
    """Two different slices share one position and cannot be told apart (identical copies,
    re-sent instances, are dropped instead, and noted)."""
    MIXED_ORIENTATION = "MIXED_ORIENTATION"
    """Slices of one series have different ImageOrientationPatient."""
    GANTRY_TILT = "GANTRY_TILT"
    """Slices are stacked along an axis not normal to the image plane (tilted gantry); such
    series are excluded, not resampled (docs/pacs-and-dicom.md says why)."""
    TOO_FEW_SLICES = "TOO_FEW_SLICES"
    """Too few slices to cover a vertebral body."""
    PIXEL_DATA_LENGTH = "PIXEL_DATA_LENGTH"
    """Pixel Data length does not match Rows x Columns x bits."""
    INCONSISTENT_MATRIX = "INCONSISTENT_MATRIX"
    """Slices of one series differ in Rows/Columns/PixelSpacing."""
    CODEC_UNAVAILABLE = "CODEC_UNAVAILABLE"
    """The transfer syntax needs a decoder plugin that is not installed."""
    DECODE_FAILED = "DECODE_FAILED"
    """A decoder was found but failed on this data."""
    MULTIFRAME = "MULTIFRAME"
    """Enhanced multi-frame CT that could not be split into frames with geometry."""
    MIXED_SERIES = "MIXED_SERIES"
    """Files of another series were given with this one (dropped; the largest series is kept)."""

    # --- screening --------------------------------------------------------------------------
    NO_VERTEBRAE = "NO_VERTEBRAE"
    """The screener found no measurable vertebral body."""
    NO_ASSESSABLE_VERTEBRAE = "NO_ASSESSABLE_VERTEBRAE"
    """Vertebrae were found but none could be graded (all cut by the field of view, beside
    metal or measured with low confidence); the series is reported ``excluded``."""
    SCREEN_FAILED = "SCREEN_FAILED"
    """The model raised an unexpected error on this series (details in the log)."""
    FETCH_FAILED = "FETCH_FAILED"
    """Retrieval from the PACS failed after the configured retries."""
    TIMEOUT = "TIMEOUT"
    """The series took longer than the configured per-series limit."""
    WORKER_DIED = "WORKER_DIED"
    """The decode worker process died while loading this series, twice (killed by the
    out-of-memory killer or a signal); the worker was replaced and the batch went on."""
    NO_MODEL_RESULT = "NO_MODEL_RESULT"
    """The imported vendor results hold no row for this study."""

    def __str__(self) -> str:  # so f-strings and CSV writers show the code itself
        return self.value


#: codes that mean "excluded by design", as opposed to an error worth a look
EXCLUSIONS = frozenset(
    {
        ReasonCode.NOT_CT,
        ReasonCode.LOCALIZER,
        ReasonCode.AGE_UNDER_50,
        ReasonCode.AGE_UNKNOWN,
        ReasonCode.NO_SPINE_IN_VIEW,
        ReasonCode.NOT_AXIAL,
        ReasonCode.NOT_CHOSEN,
        ReasonCode.DUPLICATE_STUDY,
        ReasonCode.SLICE_TOO_THICK,
        ReasonCode.DICOMDIR,
        ReasonCode.NO_PIXEL_DATA,
        # readable series whose geometry cannot be screened: nothing is corrupt, so not an
        # "error" for IT (a missing slice alone is interpolated, identical repeated slices
        # are dropped: these codes remain for what cannot be repaired honestly)
        ReasonCode.TOO_FEW_SLICES,
        ReasonCode.GANTRY_TILT,
        ReasonCode.DUPLICATE_POSITION,
        ReasonCode.SLICE_GAP,
        ReasonCode.UNEVEN_SPACING,
    }
)
