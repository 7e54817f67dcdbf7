"""Results a screening model returns, independent of the model behind them.

Kept free of torch so the store, the exporters and the reports can import them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum, IntEnum
from typing import Any, Protocol

import numpy as np

from fracture_qi.dicom.geometry import CTVolume

#: vertebral levels the reference screener reports, cranial to caudal
LEVELS: tuple[str, ...] = tuple(
    [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
)


class GenantGrade(IntEnum):
    """Genant semi-quantitative grade (Genant 1993): height loss of any of Ha, Hm, Hp."""

    NORMAL = 0
    """Less than 20% height reduction."""
    MILD = 1
    """20-25% height reduction."""
    MODERATE = 2
    """25-40% height reduction."""
    SEVERE = 3
    """More than 40% height reduction."""


class MorphType(str, Enum):
    """Shape of a deformity."""

    NORMAL = "normal"
    """No deformity reaching grade 1."""
    WEDGE = "wedge"
    """Anterior height reduced most."""
    BICONCAVE = "biconcave"
    """Middle height reduced most (endplates bowed in)."""
    CRUSH = "crush"
    """Posterior height (and the whole body) reduced compared with neighbours."""


class VertebraQuality(str, Enum):
    """Whether a vertebra could be assessed, and if not, why (``vertebrae.csv`` ``quality``)."""

    OK = "ok"
    """Found, measured and graded."""
    PARTIAL_FOV = "partial_fov"
    """Cut by the first or last slice, the reconstruction circle or the field of view: not
    graded, never flagged."""
    METAL = "metal"
    """Metal (fixation, cement) in or beside the body: not assessable."""
    LOW_CONFIDENCE = "low_confidence"
    """Found, but its endplates or walls could not be measured reliably: not graded."""


class ContrastPhase(str, Enum):
    """Contrast phase judged from the aorta's HU (it sets the low-density threshold)."""

    UNENHANCED = "unenhanced"
    """No iodinated contrast in the aorta."""
    ARTERIAL = "arterial"
    """Arterial phase: the aorta far brighter than the portal venous plateau."""
    PORTAL_VENOUS = "portal_venous"
    """Venous (or later) phase."""
    UNKNOWN = "unknown"
    """The aorta could not be sampled."""


@dataclass
class VertebraResult:
    """One assessed vertebral body."""

    level: str | None
    genant_grade: int
    morph_type: str
    ha_mm: float | None
    hm_mm: float | None
    hp_mm: float | None
    score: float | None = None
    trabecular_hu: float | None = None
    #: for overlays: e.g. {"centre_zyx_mm": [...], "corners_zy_mm": [[...]*6], "x_mm": ...}
    geometry: dict[str, Any] | None = None
    #: a :class:`VertebraQuality` value: only ``ok`` vertebrae are graded
    quality: str = VertebraQuality.OK.value

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SeriesResult:
    """What a model says about one series."""

    status: str = "ok"  # ok | error
    reason: str | None = None
    detail: str | None = None
    flagged: bool = False
    score: float | None = None
    max_grade: int = 0
    vertebrae: list[VertebraResult] = field(default_factory=list)
    l1_hu: float | None = None
    bone_density_level: str | None = None
    low_density: bool | None = None
    #: a :class:`ContrastPhase` value (the low-density threshold depends on it)
    contrast_phase: str | None = None
    #: RGB uint8 (H, W, 3) key image, with no patient identifier burned in
    keyimage: np.ndarray | None = None
    seconds: float | None = None

    @property
    def n_vertebrae(self) -> int:
        return len(self.vertebrae)


class ScreeningModel(Protocol):
    """Anything that turns a :class:`CTVolume` into a :class:`SeriesResult`."""

    model_id: str
    model_version: str
    sha256: str | None

    def screen(self, volume: CTVolume) -> SeriesResult:
        ...
