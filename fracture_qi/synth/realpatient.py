"""A synthetic patient on real anatomy: who they are and how their body differs from the base.

:class:`RealPatient` holds the draws (age, sex, bone density, size, curvature, fractures);
:class:`PatientMap` maps the patient's scan back to the base scan: scaled by sex and age,
and with the spine (and the tissue within :data:`BEND_SIGMA_MM` of it, not the skin or the
table) shifted smoothly to add kyphosis, lordosis and a small scoliosis.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> p = random_real_patient(rng, age=72, sex="F", fractures=[("L1", "wedge", 2)])
>>> p.fractures[0].level, p.fractures[0].morph, 0.25 < p.fractures[0].loss < 0.40
('L1', 'wedge', True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from fracture_qi.synth import priors
from fracture_qi.synth.basescan import LEVELS, Catalogue
from fracture_qi.synth.fracture import MORPH_TYPES, FractureSpec

#: truth levels (the sacrum is not graded)
TRUTH_LEVELS: Final[tuple[str, ...]] = priors.SPINE_LEVELS

# --- patient priors (relative to the base scans' own patients) ------------------------------------

#: in-plane body size: women 0.95, men 1.03 x the base, SD 5 % [estimate: torso width
#: differs ~10 % between the sexes; the bases are one adult each]
SIZE_XY_SEX: Final[dict[str, float]] = {"F": 0.95, "M": 1.03}
SIZE_XY_SD: Final[float] = 0.05
#: cranio-caudal size: ANATOMY 1b (women ~0.935 x men's vertebral heights), about the mean
SIZE_Z_SEX: Final[dict[str, float]] = {"F": 0.97, "M": 1.03}
SIZE_Z_SD: Final[float] = 0.03
#: vertebral heights fall weakly with age [EPOLOS10]: per year over 50
HEIGHT_LOSS_PER_YEAR: Final[float] = 0.0008
#: kyphosis added by age (degrees per year over 60, ANATOMY 2: +10 degrees from <50 to >=65)
KYPHOSIS_PER_YEAR: Final[float] = 0.4
KYPHOSIS_CHANGE_SD: Final[float] = 5.0
LORDOSIS_CHANGE_SD: Final[float] = 5.0
#: largest curvature change applied (degrees); more would shear the bodies visibly
MAX_CURVE_CHANGE_DEG: Final[float] = 14.0
#: half-length (mm) of the bumps that bend the thoracic and lumbar spine, and of the
#: scoliotic curve
KYPHOSIS_HALF_MM: Final[float] = 110.0
LORDOSIS_HALF_MM: Final[float] = 80.0
SCOLIOSIS_HALF_MM: Final[float] = 110.0
#: tissue within this distance (mm, Gaussian sigma) of the spine moves with it; skin and
#: table hardly move
BEND_SIGMA_MM: Final[float] = 55.0
#: scoliosis (coronal Cobb, degrees) by band, kept small: a shear, not a rotation, of the
#: bodies (ANATOMY 2 bands, capped)
SCOLIOSIS_RANGE: Final[tuple[tuple[float, float], ...]] = ((0.0, 6.0), (6.0, 10.0), (10.0, 14.0))


def height_factor(sex: str, age: float, rng: np.random.Generator) -> float:
    """Cranio-caudal scale of a patient relative to the base scan (ANATOMY 1b, [EPOLOS10])."""
    f = SIZE_Z_SEX[sex] * rng.normal(1.0, SIZE_Z_SD)
    return float(f * (1.0 - HEIGHT_LOSS_PER_YEAR * max(age - 50.0, 0.0)))


def _bump_amplitude(change_deg: float, half_mm: float) -> float:
    """Amplitude (mm) of a cos^2 bump of half-length *half_mm* whose ends turn by
    *change_deg* against each other (a Cobb angle change)."""
    return float(half_mm * 2.0 / math.pi * math.tan(math.radians(change_deg) / 2.0))


@dataclass
class RealPatient:
    """A synthetic patient on real anatomy; deterministic given the rng that drew it.

    Attributes
    ----------
    age, sex
        Age (years) at the first scan; ``"F"`` or ``"M"``.
    bmd_l1_hu
        Unenhanced L1 trabecular HU of this patient (ANATOMY 3a).
    size_xy, size_z
        Scale against the base scan's patient, in plane and cranio-caudally.
    kyphosis_change_deg, lordosis_change_deg, scoliosis_deg
        Curvature added to the base's own (Cobb-like angles).
    cortex_factor
        Contrast of the cortex over trabecular bone, against the base's.
    fractures
        Planted fractures.
    """

    age: float
    sex: str
    bmd_l1_hu: float
    size_xy: float
    size_z: float
    kyphosis_change_deg: float
    lordosis_change_deg: float
    scoliosis_deg: float
    cortex_factor: float
    fractures: list[FractureSpec] = field(default_factory=list)

    @property
    def max_grade(self) -> int:
        return max((f.grade for f in self.fractures), default=0)

    def fracture_at(self, level: str) -> FractureSpec | None:
        return next((f for f in self.fractures if f.level == level), None)


def random_real_patient(
    rng: np.random.Generator,
    age: float | None = None,
    sex: str | None = None,
    fractures: Sequence[tuple[str, str, int]] | Sequence[tuple[str, str, int, float]] | None = None,
    bmd_l1_hu: float | None = None,
) -> RealPatient:
    """Draw a patient on real anatomy from the priors; every draw comes from *rng*.

    Parameters
    ----------
    rng
        Random generator.
    age, sex
        Fix them, or leave None to draw (age 30-95, sex 50/50).
    fractures
        None draws prevalent fractures for the age (ANATOMY 4); ``[]`` plants none;
        otherwise ``(level, type, grade)`` or ``(level, type, grade, loss)``.
    bmd_l1_hu
        Fix the unenhanced L1 trabecular HU, or draw it from age (ANATOMY 3a).

    Raises
    ------
    ValueError
        For an unknown level, type or grade, or a loss outside the grade's band.
    """
    from fracture_qi.synth.phantom import sample_fractures

    if age is None:
        age = float(np.clip(rng.normal(68, 14), 30, 95))
    if sex is None:
        sex = "F" if rng.random() < 0.5 else "M"
    if sex not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
    if fractures is None:
        fractures = sample_fractures(rng, age)
    specs = []
    for fx in fractures:
        level, morph, grade = fx[0], fx[1], int(fx[2])
        if level not in TRUTH_LEVELS:
            raise ValueError(f"fracture level {level!r} is not one of T1..L5; fix the fracture list")
        if morph not in MORPH_TYPES:
            raise ValueError(f"fracture type {morph!r} is not one of {MORPH_TYPES}; fix the fracture list")
        if grade not in priors.GRADE_LOSS_BAND:
            raise ValueError(f"fracture grade {grade!r} must be 1, 2 or 3; fix the fracture list")
        lo, hi = priors.GRADE_LOSS_BAND[grade]
        loss = float(fx[3]) if len(fx) > 3 else float(rng.uniform(lo, hi))  # type: ignore[misc]
        band = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.80)}[grade]
        if not band[0] < loss < band[1]:
            raise ValueError(f"loss {loss} for {level} is outside grade {grade}'s band {band}")
        specs.append(FractureSpec(level, morph, grade, loss))
    if bmd_l1_hu is None:
        mean = priors.L1_HU_AT_25 + priors.L1_HU_SLOPE_PER_YEAR * max(age - 25, 0)
        if specs:
            mean += priors.L1_HU_FRACTURE_SHIFT
        bmd_l1_hu = float(np.clip(rng.normal(mean, priors.L1_HU_SD * 0.85), 45, 320))
    size_xy = float(SIZE_XY_SEX[sex] * rng.normal(1.0, SIZE_XY_SD))
    size_z = height_factor(sex, age, rng)
    kyph = float(np.clip(rng.normal(KYPHOSIS_PER_YEAR * (age - 60.0), KYPHOSIS_CHANGE_SD),
                         -MAX_CURVE_CHANGE_DEG, MAX_CURVE_CHANGE_DEG))
    # a wedge adds its own angle to the kyphosis (the fracture map does that locally)
    lord = float(np.clip(rng.normal(0.0, LORDOSIS_CHANGE_SD), -MAX_CURVE_CHANGE_DEG,
                         MAX_CURVE_CHANGE_DEG))
    bands = priors.SCOLIOSIS_BANDS_OLD if age >= 65 else priors.SCOLIOSIS_BANDS_YOUNG
    b = int(rng.choice(3, p=np.array(bands) / sum(bands)))
    scol = float(rng.uniform(*SCOLIOSIS_RANGE[b])) * (1 if rng.random() < 0.5 else -1)
    # the cortex follows density (adjust_base); this is the patient's own spread about that
    cortex = float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.2))
    return RealPatient(float(age), sex, float(bmd_l1_hu), size_xy, size_z, kyph, lord, scol,
                       cortex, specs)


# --- the patient's own shape: output (mm) -> the fractured base (mm) ------------------------------


@dataclass
class PatientMap:
    """Scale and bend a base scan into a patient; maps output points back to the base.

    ``output = C + s * (base - C) + bend(z) * weight`` with ``C`` the spine's middle, ``s``
    the size factors and the bend a smooth shift of the spine (and of the tissue within
    :data:`BEND_SIGMA_MM` of it) along y (kyphosis, lordosis) and x (scoliosis).
    """

    centre: tuple[float, float, float]  # (z, y, x) mm
    s_xy: float
    s_z: float
    spine_z: np.ndarray
    spine_y: np.ndarray
    spine_x: np.ndarray
    kyph: tuple[float, float, float]  # (amplitude mm, centre z, half-length), output frame
    lord: tuple[float, float, float]
    scol: tuple[float, float, float]

    @staticmethod
    def _bump(z: np.ndarray, b: tuple[float, float, float]) -> np.ndarray:
        a, zc, h = b
        t = np.clip((np.asarray(z, dtype=float) - zc) / h, -1.0, 1.0)
        return a * np.cos(t * math.pi / 2.0) ** 2

    def bend(self, z_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) shift of the spine at output z (mm)."""
        return self._bump(z_out, self.kyph) + self._bump(z_out, self.lord), self._bump(z_out, self.scol)

    def z_to_base(self, z_out: np.ndarray) -> np.ndarray:
        """Fractured-base z of output z."""
        return self.centre[0] + (np.asarray(z_out, dtype=float) - self.centre[0]) / self.s_z

    def z_to_output(self, z_f: np.ndarray) -> np.ndarray:
        return self.centre[0] + (np.asarray(z_f, dtype=float) - self.centre[0]) * self.s_z

    def spine_output(self, z_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) of the spine's centre line at output z."""
        zf = self.z_to_base(z_out)
        yc, xc = self.centre[1], self.centre[2]
        y = yc + self.s_xy * (np.interp(zf, self.spine_z, self.spine_y) - yc)
        x = xc + self.s_xy * (np.interp(zf, self.spine_z, self.spine_x) - xc)
        by, bx = self.bend(z_out)
        return y + by, x + bx

    def plane_to_base(self, z_out: float | np.ndarray, y_out: np.ndarray,
                      x_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractured-base (y, x) of output points (``z_out`` a scalar or one per point)."""
        sy, sx = self.spine_output(np.asarray(z_out))
        by, bx = self.bend(np.asarray(z_out))
        d2 = (y_out - sy) ** 2 + (x_out - sx) ** 2
        w = np.exp(-d2 / (2.0 * BEND_SIGMA_MM**2))
        yc, xc = self.centre[1], self.centre[2]
        return yc + (y_out - yc - by * w) / self.s_xy, xc + (x_out - xc - bx * w) / self.s_xy

    def point_to_output(self, z_f: float, y_f: float, x_f: float) -> tuple[float, float, float]:
        """Output position of a fractured-base point near the spine (bend weight 1)."""
        zo = float(self.z_to_output(np.array(z_f)))
        by, bx = self.bend(np.array(zo))
        yc, xc = self.centre[1], self.centre[2]
        return zo, float(yc + self.s_xy * (y_f - yc) + by), float(xc + self.s_xy * (x_f - xc) + bx)


def patient_map(p: RealPatient, cat: Catalogue) -> PatientMap:
    """The map of *p* on a base (bumps placed on the base's own levels)."""
    bodies = [cat.bodies[lv] for lv in LEVELS if lv in cat.bodies]
    zs = np.array([b.centre[0] for b in bodies])[::-1]  # ascending z
    ys = np.array([b.centre[1] for b in bodies])[::-1]
    xs = np.array([b.centre[2] for b in bodies])[::-1]
    zc = float((cat.z_range[0] + cat.z_range[1]) / 2)
    yc, xc = float(np.interp(zc, zs, ys)), float(np.interp(zc, zs, xs))

    def level_z(lv: str, default: float) -> float:
        return float(cat.bodies[lv].centre[0]) if lv in cat.bodies else default

    def out_z(z: float) -> float:
        return zc + (z - zc) * p.size_z

    # the thoracic bump bulges backwards (+y: more kyphosis), the lumbar one forwards
    k_centre = out_z(level_z("T7", zs.max() + 200.0))
    l_centre = out_z(level_z("L3", zs.min() - 200.0))
    s_centre = out_z(level_z("L1", zs.min() - 200.0))
    kyph = (_bump_amplitude(p.kyphosis_change_deg, KYPHOSIS_HALF_MM), k_centre, KYPHOSIS_HALF_MM)
    lord = (-_bump_amplitude(p.lordosis_change_deg, LORDOSIS_HALF_MM), l_centre, LORDOSIS_HALF_MM)
    scol = (_bump_amplitude(p.scoliosis_deg, SCOLIOSIS_HALF_MM), s_centre, SCOLIOSIS_HALF_MM)
    return PatientMap((zc, yc, xc), p.size_xy, p.size_z, zs, ys, xs, kyph, lord, scol)
