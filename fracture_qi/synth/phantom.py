"""Patient-specific CT phantoms of the torso with a thoracolumbar spine and known fractures.

:func:`random_patient_spec` draws a patient (size, bone density, curvature, degenerative
change, fractures) from the priors in :mod:`fracture_qi.synth.priors`;
:func:`make_spine_volume` renders it as a :class:`~fracture_qi.dicom.geometry.CTVolume`
and returns the truth table of every vertebra in view.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> spec = random_patient_spec(rng, age=72, sex="F", fractures=[("L1", "wedge", 2)])
>>> vol, truth = make_spine_volume(spec, fov="abdomen_pelvis", shape=(60, 96, 96),
...                                spacing=(5.0, 4.0, 4.0), rng=rng, noise_sd=0)
>>> vol.hu.dtype.name, bool(truth.loc[truth.level == "L1", "fractured"].item())
('int16', True)
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.synth import priors
from fracture_qi.synth.spine import (
    SACRAL_SEGMENTS,
    Grid,
    SpineLayout,
    VertebraSpec,
    layout_spine,
    paint_disc,
    paint_sacral_segment,
    paint_vertebra,
)
from fracture_qi.synth.torso import Landmarks, TorsoPainter, TorsoSpec, body_habitus

log = logging.getLogger(__name__)

Fov = Literal["chest", "abdomen_pelvis", "cap", "head"]
FOVS: tuple[str, ...] = ("chest", "abdomen_pelvis", "cap", "head")
MORPH_TYPES: tuple[str, ...] = ("wedge", "biconcave", "crush")

TRUTH_COLUMNS: tuple[str, ...] = (
    "level",
    "ha_mm",
    "hm_mm",
    "hp_mm",
    "genant_grade",
    "morph_type",
    "fractured",
    "trabecular_hu",
    "centre_z_mm",
    "centre_y_mm",
    "centre_x_mm",
    "fully_in_view",
    "height_loss",
    "depth_mm",
    "width_mm",
    "tilt_sagittal_deg",
    "tilt_coronal_deg",
)


@dataclass
class PatientSpec:
    """Everything needed to render one patient; deterministic given the rng that drew it.

    Attributes
    ----------
    age, sex
        Age in years at the (first) scan; ``"F"`` or ``"M"``.
    bmd_l1_hu
        Unenhanced L1 trabecular attenuation (HU), the patient's bone density.
    vertebrae
        Planted shape of every level T1..L5.
    discs
        Mid-disc height (mm) below each level.
    kyphosis_deg, lordosis_deg, scoliosis_cobb_deg
        Curvature (supine).
    torso
        Body habitus.
    vacuum_discs
        Levels whose disc below holds gas (vacuum phenomenon).
    detail_seed
        Seed for anatomical detail that does not matter to any truth (bowel pattern).
    """

    age: float
    sex: str
    bmd_l1_hu: float
    vertebrae: dict[str, VertebraSpec]
    discs: dict[str, float]
    kyphosis_deg: float
    lordosis_deg: float
    scoliosis_cobb_deg: float
    torso: TorsoSpec
    vacuum_discs: tuple[str, ...] = ()
    detail_seed: int = 0
    s1_z: float = -420.0
    min_back_depth: float = 68.0
    _layout: SpineLayout | None = field(default=None, repr=False, compare=False)

    @property
    def fractures(self) -> list[tuple[str, str, int]]:
        """Planted fractures as (level, morph_type, grade)."""
        return [
            (v.level, v.morph_type, v.genant_grade) for v in self.vertebrae.values() if v.fractured
        ]

    @property
    def max_grade(self) -> int:
        return max((v.genant_grade for v in self.vertebrae.values()), default=0)

    def layout(self) -> SpineLayout:
        """The spine layout (computed once, then cached)."""
        if self._layout is None:
            self._layout = layout_spine(
                self.vertebrae,
                self.discs,
                self.kyphosis_deg,
                self.lordosis_deg,
                self.scoliosis_cobb_deg,
                self.s1_z,
                self.torso.table_y,
                self.min_back_depth,
            )
        return self._layout


def prevalence_at(age: float) -> float:
    """Probability of at least one prevalent vertebral fracture at *age* (ANATOMY 4a).

    Examples
    --------
    >>> prevalence_at(45), prevalence_at(75)
    (0.02, 0.24)
    """
    p = priors.PREVALENCE_BY_AGE[0][1]
    for lo, val in priors.PREVALENCE_BY_AGE:
        if age >= lo:
            p = val
    return p


def _choice(rng: np.random.Generator, table: dict) -> object:
    keys = list(table)
    w = np.array([table[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def sample_fractures(rng: np.random.Generator, age: float) -> list[tuple[str, str, int]]:
    """Draw prevalent fractures for a patient of *age* from the ANATOMY 4 priors."""
    if rng.random() >= prevalence_at(age):
        return []
    n = int(_choice(rng, priors.N_FRACTURES_MIX))
    levels = list(priors.LEVEL_SHARE)
    w = np.array([priors.LEVEL_SHARE[lv] for lv in levels], dtype=float)
    chosen = rng.choice(len(levels), size=n, replace=False, p=w / w.sum())
    out = []
    for i in sorted(chosen):
        level = levels[int(i)]
        shape = dict(priors.SHAPE_MIX)
        if level in ("T12", "L1", "L2", "L3", "L4"):
            shape["biconcave"] *= 1.4  # endplate fractures favour T12-L4 [DEFDIST]
        out.append((level, str(_choice(rng, shape)), int(_choice(rng, priors.GRADE_MIX))))
    return out


def _fracture_heights(
    rng: np.random.Generator, v: VertebraSpec, morph: str, grade: int, loss: float | None
) -> None:
    lo, hi = priors.GRADE_LOSS_BAND[grade]
    if loss is None:
        loss = float(rng.uniform(lo, hi))
    v.genant_grade, v.morph_type, v.loss = grade, morph, loss
    if morph == "wedge":
        v.ha = v.ha0 * (1 - loss)
        v.hp = v.hp0 * (1 - rng.uniform(0.0, 0.05))
        v.hm = min(v.hm0 * (1 - loss * rng.uniform(0.3, 0.5)), (v.ha + v.hp) / 2 - 0.3)
    elif morph == "biconcave":
        v.hm = v.hm0 * (1 - loss)
        v.ha = v.ha0 * (1 - loss * rng.uniform(0.0, 0.25))
        v.hp = v.hp0 * (1 - loss * rng.uniform(0.0, 0.2))
    elif morph == "crush":
        v.hp = v.hp0 * (1 - loss)
        v.ha = v.ha0 * (1 - loss * rng.uniform(0.75, 0.95))
        v.hm = min(v.hm0 * (1 - loss * rng.uniform(0.8, 1.0)), (v.ha + v.hp) / 2 - 0.3)
    else:
        raise ValueError(
            f"fracture type {morph!r} is not one of {MORPH_TYPES}; fix the fracture list"
        )


def random_patient_spec(
    rng: np.random.Generator,
    age: float | None = None,
    sex: str | None = None,
    fractures: Sequence[tuple[str, str, int]] | Sequence[tuple[str, str, int, float]] | None = None,
    bmd_l1_hu: float | None = None,
) -> PatientSpec:
    """Draw a patient from the priors; every draw comes from *rng* (so it is reproducible).

    Parameters
    ----------
    rng
        Random generator; the same generator state gives the same patient.
    age, sex
        Fix them, or leave None to draw (age 30-95, sex 50/50).
    fractures
        ``None`` draws prevalent fractures for the age (ANATOMY 4); ``[]`` plants none;
        otherwise ``(level, morph_type, grade)`` or ``(level, morph_type, grade, loss)``
        tuples (``loss`` a fraction strictly inside the grade's band).
    bmd_l1_hu
        Fix the L1 trabecular HU, or leave None to draw from age (ANATOMY 3a).

    Returns
    -------
    PatientSpec

    Raises
    ------
    ValueError
        For an unknown level, fracture type or grade, or a loss outside the grade's band.
    """
    if age is None:
        age = float(np.clip(rng.normal(68, 14), 30, 95))
    if sex is None:
        sex = "F" if rng.random() < 0.5 else "M"
    if sex not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
    if fractures is None:
        fractures = sample_fractures(rng, age)
    female = sex == "F"
    hf = (priors.FEMALE_HEIGHT_FACTOR if female else 1.0) * rng.normal(1.0, 0.035)
    hf *= 1.0 - 0.0008 * max(age - 50, 0)  # heights fall weakly with age [EPOLOS10]
    wf = (priors.FEMALE_WIDTH_FACTOR if female else 1.0) * rng.normal(1.0, 0.04) * 1.04

    if bmd_l1_hu is None:
        mean = priors.L1_HU_AT_25 + priors.L1_HU_SLOPE_PER_YEAR * max(age - 25, 0)
        if fractures:
            mean += priors.L1_HU_FRACTURE_SHIFT
        bmd_l1_hu = float(np.clip(rng.normal(mean, priors.L1_HU_SD * 0.85), 45, 320))

    vertebrae: dict[str, VertebraSpec] = {}
    for level in priors.SPINE_LEVELS:
        _, _, hp, dep, wid = priors.BODY_DIMS[level]
        r_ap, sd_ap, r_mp, sd_mp = priors.HEIGHT_RATIOS[level]
        if not female:
            r_ap -= 0.015
            r_mp -= 0.005
        hp0 = hp * hf * rng.normal(1.0, 0.02)
        ra = float(np.clip(rng.normal(r_ap, sd_ap * 0.7), r_ap - 1.6 * sd_ap, r_ap + 1.6 * sd_ap))
        rm = float(np.clip(rng.normal(r_mp, sd_mp * 0.7), r_mp - 1.6 * sd_mp, r_mp + 1.6 * sd_mp))
        ha0 = hp0 * ra
        hm0 = min(hp0 * rm, (ha0 + hp0) / 2 - 0.2)
        trab = bmd_l1_hu + priors.LEVEL_HU_OFFSET[level] + rng.normal(0, 6)
        vertebrae[level] = VertebraSpec(
            level,
            ha0,
            hm0,
            hp0,
            ha0,
            hm0,
            hp0,
            dep * wf,
            wid * wf,
            float(trab),
        )

    for fx in fractures:
        level, morph, grade = fx[0], fx[1], int(fx[2])
        loss = float(fx[3]) if len(fx) > 3 else None  # type: ignore[misc]
        if level not in vertebrae:
            raise ValueError(
                f"fracture level {level!r} is not one of T1..L5; fix the fracture list"
            )
        if grade not in priors.GRADE_LOSS_BAND:
            raise ValueError(f"fracture grade {grade!r} must be 1, 2 or 3; fix the fracture list")
        if loss is not None:
            band = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.80)}[grade]
            if not band[0] < loss < band[1]:
                raise ValueError(f"loss {loss} for {level} is outside grade {grade}'s band {band}")
        _fracture_heights(rng, vertebrae[level], morph, grade, loss)

    # degenerative change with age: osteophytes, disc narrowing, vacuum discs
    discs = {lv: priors.DISC_BELOW[lv] * hf * rng.normal(1.0, 0.06) for lv in priors.SPINE_LEVELS}
    vacuum: list[str] = []
    degen = np.clip((age - 45) / 40, 0, 1)
    for level in priors.SPINE_LEVELS:
        lumbar_or_lower_t = level.startswith("L") or level in ("T10", "T11", "T12")
        if rng.random() < degen * (0.55 if lumbar_or_lower_t else 0.3):
            vertebrae[level].osteophyte_mm = float(rng.uniform(1.0, 4.0))
        if level.startswith("L") and rng.random() < degen * 0.35:
            discs[level] *= rng.uniform(0.45, 0.75)
            if rng.random() < 0.2:
                vacuum.append(level)
        if level.startswith("T") and age > 60:
            discs[level] *= 1 - 0.1 * degen  # anterior disc height falls with age [THDISC15]

    k_mean, k_sd = priors.kyphosis_prior(age)
    kyph = float(np.clip(rng.normal(k_mean, k_sd), 10, 75))
    lord = float(np.clip(rng.normal(*priors.LORDOSIS_PRIOR), 10, 70))
    bands = priors.SCOLIOSIS_BANDS_OLD if age >= 65 else priors.SCOLIOSIS_BANDS_YOUNG
    b = int(rng.choice(3, p=np.array(bands) / sum(bands)))
    cobb = float([rng.uniform(0, 9), rng.uniform(10, 20), rng.uniform(21, 32)][b])
    cobb *= 1 if rng.random() < 0.5 else -1

    size = rng.normal(1.0, 0.06) * (1.0 if female else 1.07)
    fat = float(np.clip(rng.normal(20 if female else 16, 8), 5, 45))
    torso = TorsoSpec(
        ap_chest=(215 + fat * 1.2) * size,
        ap_abdomen=(200 + fat * 2.6) * size,
        ap_pelvis=(205 + fat * 1.6) * size,
        half_width_chest=(158 + fat * 0.8) * size,
        half_width_abdomen=(148 + fat * 1.3) * size,
        half_width_pelvis=(165 + fat * 1.2) * size * (1.05 if female else 1.0),
        fat_mm=fat,
        muscle_mm=float(np.clip(rng.normal(13, 2.5) - 0.06 * max(age - 50, 0), 6, 20)),
    )
    return PatientSpec(
        age=float(age),
        sex=sex,
        bmd_l1_hu=bmd_l1_hu,
        vertebrae=vertebrae,
        discs=discs,
        kyphosis_deg=kyph,
        lordosis_deg=lord,
        scoliosis_cobb_deg=cobb,
        torso=torso,
        vacuum_discs=tuple(vacuum),
        detail_seed=int(rng.integers(0, 2**31 - 1)),
        s1_z=float(-420 + rng.uniform(-40, 40)),
        min_back_depth=float(62.0 + 0.5 * fat),
    )


# --- coverage --------------------------------------------------------------------------------


def coverage(spec: PatientSpec, fov: str) -> tuple[float, float]:
    """Cranio-caudal coverage (z_low, z_high) in LPS mm of a protocol (ANATOMY 5 table).

    ``head`` returns a range above the torso (no thoracolumbar spine in view).
    """
    lay = spec.layout()
    t1_top = lay.level_z("T1") + spec.vertebrae["T1"].h_max / 2
    fh = lay.level_z("S3") - 45.0
    if fov == "chest":
        return (lay.level_z("L2") - 5.0, t1_top + 35.0)
    if fov == "abdomen_pelvis":
        return (fh - 60.0, lay.level_z("T10") + 25.0)
    if fov == "cap":
        return (fh - 60.0, t1_top + 35.0)
    if fov == "head":
        top = t1_top + 300.0
        return (top - 150.0, top)
    raise ValueError(f"fov {fov!r} is not one of {FOVS}")


# --- rendering -------------------------------------------------------------------------------


def render(
    spec: PatientSpec,
    fov: str,
    grid: Grid,
    contrast: str = "none",
) -> np.ndarray:
    """Noise-free int16 HU volume (canonical z, y, x) of *spec* on *grid*.

    Parameters
    ----------
    spec
        The patient.
    fov
        ``chest``, ``abdomen_pelvis``, ``cap`` or ``head`` (decides the anatomy drawn for
        ``head`` only; the grid decides the extent).
    grid
        Where the voxels are.
    contrast
        ``none``, ``arterial`` or ``portal_venous``.

    Returns
    -------
    numpy.ndarray
        int16 HU, shape ``grid.shape``.
    """
    nz, ny, nx = grid.shape
    ox, oy, oz = grid.origin
    dz, dy, dx = grid.spacing
    xs = (ox + dx * np.arange(nx)).astype(np.float32)
    ys = (oy + dy * np.arange(ny)).astype(np.float32)
    zs = oz + dz * np.arange(nz)
    vol = np.empty((nz, ny, nx), dtype=np.int16)
    slab = np.empty((ny, nx), dtype=np.float32)
    aa = float((dy + dx) / 2)
    if fov == "head":
        _render_head(vol, xs, ys, zs, aa, spec.torso.table_y)
        return vol
    lay = spec.layout()
    zc = np.array([lay.placements[lv].centre[2] for lv in priors.SPINE_LEVELS])
    deps = np.array([spec.vertebrae[lv].depth for lv in priors.SPINE_LEVELS])
    wids = np.array([spec.vertebrae[lv].width for lv in priors.SPINE_LEVELS])
    order = np.argsort(zc)
    painter = TorsoPainter(
        spec.torso,
        lay,
        (zc[order], deps[order], wids[order]),
        contrast,
        np.random.default_rng(spec.detail_seed),
    )
    for k in range(nz):
        slab.fill(priors.HU["air"])
        painter.paint(slab, xs, ys, float(zs[k]), aa)
        np.rint(slab, out=slab)
        vol[k] = slab
    paint_spine(vol, grid, spec, contrast)
    return vol


def paint_spine(vol: np.ndarray, grid: Grid, spec: PatientSpec, contrast: str = "none") -> None:
    """Paint discs, vertebrae and the sacrum of *spec* into *vol* (int16, in place)."""
    lay = spec.layout()
    lo, hi = priors.CONTRAST_BONE_HU.get(contrast, (0.0, 0.0))
    bone_plus = (lo + hi) / 2
    levels = list(priors.SPINE_LEVELS)
    for upper, lower in itertools.pairwise(levels):
        paint_disc(
            vol,
            grid,
            (spec.vertebrae[upper], lay.placements[upper]),
            (spec.vertebrae[lower], lay.placements[lower]),
            spec.discs[upper],
            vacuum=upper in spec.vacuum_discs,
        )
    s1 = lay.sacrum[0]
    l5 = spec.vertebrae["L5"]
    s1_spec = VertebraSpec(
        "S1", 30, 28, 30, 30, 28, 30, SACRAL_SEGMENTS[0][2], SACRAL_SEGMENTS[0][3], 0
    )
    paint_disc(
        vol,
        grid,
        (l5, lay.placements["L5"]),
        (s1_spec, s1),
        spec.discs["L5"],
        vacuum="L5" in spec.vacuum_discs,
    )
    for level in levels:
        v = spec.vertebrae[level]
        paint_vertebra(
            vol,
            grid,
            v,
            lay.placements[level],
            v.trabecular_hu + bone_plus,
            rib=level.startswith("T"),
        )
    sac_hu = spec.bmd_l1_hu - 20 + bone_plus
    for p, (_, h, dep, wid, ala) in zip(lay.sacrum, SACRAL_SEGMENTS, strict=True):
        paint_sacral_segment(vol, grid, p, h, dep, wid, ala, sac_hu)


def render_head(grid: Grid, table_y: float) -> np.ndarray:
    """A head CT on *grid* (int16 HU): skull, brain, ventricles, head holder; no spine.

    The head's top is the grid's last slice; it lies centred at ``y = table_y - 100`` mm.
    """
    nz, ny, nx = grid.shape
    ox, oy, oz = grid.origin
    dz, dy, dx = grid.spacing
    vol = np.empty(grid.shape, dtype=np.int16)
    _render_head(vol, (ox + dx * np.arange(nx)).astype(np.float32),
                 (oy + dy * np.arange(ny)).astype(np.float32), oz + dz * np.arange(nz),
                 float((dy + dx) / 2), table_y)
    return vol


def _render_head(
    vol: np.ndarray, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, aa: float, table_y: float
) -> None:
    """A head CT: scalp, skull with diploe, brain, ventricles, head holder. No spine."""
    from fracture_qi.synth.torso import ellipse

    slab = np.empty((len(ys), len(xs)), dtype=np.float32)
    z_top = float(zs.max())
    zc = z_top - 75.0
    hy = table_y - 100.0
    for k, z in enumerate(zs):
        slab.fill(priors.HU["air"])
        f = 1 - ((z - zc) / 80.0) ** 2
        # head holder: a cradle under the occiput
        ellipse(slab, xs, ys, aa, 0.0, hy + 30, 95, 80, priors.HU["table_shell"] * 0.4)
        ellipse(slab, xs, ys, aa, 0.0, hy + 22, 90, 78, priors.HU["air"])
        if f > 0:
            s = math.sqrt(f)
            ellipse(slab, xs, ys, aa, 0.0, hy, 78 * s, 96 * s, priors.HU["muscle"])
            ellipse(slab, xs, ys, aa, 0.0, hy, 74 * s, 92 * s, priors.HU["cortex"] * 1.1)
            ellipse(slab, xs, ys, aa, 0.0, hy, 71 * s, 89 * s, 450.0)
            ellipse(slab, xs, ys, aa, 0.0, hy, 68 * s, 86 * s, priors.HU["cortex"] * 1.1)
            if 68 * s > 8:
                ellipse(slab, xs, ys, aa, 0.0, hy, 66 * s - 1, 84 * s - 1, priors.HU["brain"])
            fv = 1 - ((z - zc - 10) / 30.0) ** 2
            if fv > 0:
                sv = math.sqrt(fv)
                for side in (-1.0, 1.0):
                    ellipse(slab, xs, ys, aa, side * 9, hy - 5, 5 * sv, 26 * sv, priors.HU["csf"])
        vol[k] = np.rint(slab)


# --- public entry point ----------------------------------------------------------------------


def default_grid(
    spec: PatientSpec,
    fov: str,
    shape: tuple[int, int, int] | None,
    spacing: tuple[float, float, float],
    z_range: tuple[float, float] | None = None,
) -> Grid:
    """Grid for a protocol: z covers *z_range* (default: the protocol's coverage), centred in
    plane on the patient with the table near the bottom of the image."""
    lo, hi = z_range if z_range is not None else coverage(spec, fov)
    dz, dy, dx = spacing
    if shape is None:
        nz = int(round((hi - lo) / dz)) + 1
        fov_mm = 500.0 if fov != "head" else 250.0
        shape = (nz, int(round(fov_mm / dy)), int(round(fov_mm / dx)))
    nz, ny, nx = shape
    zc = (lo + hi) / 2
    oz = zc - (nz - 1) * dz / 2
    ox = -(nx - 1) * dx / 2
    if fov == "head":
        yc = spec.torso.table_y - 100.0
    else:
        ap, _ = body_habitus(spec.torso, Landmarks.from_layout(spec.layout()), zc)
        yc = spec.torso.table_y - ap / 2 + 25.0
    oy = yc - (ny - 1) * dy / 2
    return Grid(origin=(ox, oy, oz), spacing=(dz, dy, dx), shape=(nz, ny, nx))


def truth_table(
    spec: PatientSpec, grid: Grid | None, contrast: str = "none", fov: str = "cap"
) -> pd.DataFrame:
    """One row per vertebra T1..L5 with its planted shape; ``in_view``/``fully_in_view`` on *grid*.

    ``trabecular_hu`` includes the contrast phase's rise (it is what the images show).
    """
    lay = spec.layout()
    lo, hi = priors.CONTRAST_BONE_HU.get(contrast, (0.0, 0.0))
    plus = (lo + hi) / 2
    rows = []
    for level in priors.SPINE_LEVELS:
        v = spec.vertebrae[level]
        p = lay.placements[level]
        c = p.centre
        # z extent of the body: corners of its mid-sagittal outline
        ext = (
            abs(p.e_u[2]) * v.h_max / 2 + abs(p.e_v[2]) * v.depth / 2 + abs(p.e_w[2]) * v.width / 2
        )
        if grid is None or fov == "head":
            in_view = full = False
        else:
            z0 = grid.origin[2]
            z1 = z0 + (grid.shape[0] - 1) * grid.spacing[0]
            in_view = (c[2] + ext >= z0) and (c[2] - ext <= z1)
            full = (c[2] - ext >= z0) and (c[2] + ext <= z1)
        rows.append(
            {
                "level": level,
                "ha_mm": round(v.ha, 2),
                "hm_mm": round(v.hm, 2),
                "hp_mm": round(v.hp, 2),
                "genant_grade": v.genant_grade,
                "morph_type": v.morph_type,
                "fractured": v.fractured,
                "trabecular_hu": round(v.trabecular_hu + plus, 1),
                "centre_z_mm": round(float(c[2]), 2),
                "centre_y_mm": round(float(c[1]), 2),
                "centre_x_mm": round(float(c[0]), 2),
                "fully_in_view": bool(full),
                "in_view": bool(in_view),
                "height_loss": round(v.loss, 4),
                "depth_mm": round(v.depth, 2),
                "width_mm": round(v.width, 2),
                "tilt_sagittal_deg": round(p.tilt_sagittal_deg, 2),
                "tilt_coronal_deg": round(p.tilt_coronal_deg, 2),
            }
        )
    return pd.DataFrame(rows)


def noise_bank(
    shape: tuple[int, int], sd: float, rng: np.random.Generator, sharp: bool = False, n: int = 3
) -> np.ndarray:
    """*n* fields of correlated CT-like noise (float32, SD *sd*), each of *shape*.

    White noise smoothed in plane by [1,2,1] (soft kernel) or [1,4,1] (bone kernel: finer
    grain), rescaled to the requested SD. Slices then draw randomly shifted copies, which
    is far cheaper than fresh noise per slice and statistically the same per slice.
    """
    wgt = (1.0, 4.0, 1.0) if sharp else (1.0, 2.0, 1.0)
    norm = sum(wgt)
    gain = 1.0 / math.sqrt(sum(w * w for w in wgt) / norm**2)
    ny, nx = shape
    out = np.empty((n, ny, nx), dtype=np.float32)
    for i in range(n):
        w = rng.standard_normal((ny + 2, nx + 2), dtype=np.float32)
        a = (wgt[0] * w[:, :-2] + wgt[1] * w[:, 1:-1] + wgt[2] * w[:, 2:]) / norm
        b = (wgt[0] * a[:-2] + wgt[1] * a[1:-1] + wgt[2] * a[2:]) / norm
        out[i] = b * np.float32(sd * gain * gain)
    return out


def noisy_slice(img: np.ndarray, bank: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """*img* (int16 HU) plus a randomly shifted, randomly signed field from *bank*, clipped."""
    k = int(rng.integers(bank.shape[0]))
    dy, dx = int(rng.integers(bank.shape[1])), int(rng.integers(bank.shape[2]))
    n = np.roll(bank[k], (dy, dx), axis=(0, 1))
    if rng.random() < 0.5:
        n = -n
    out = img.astype(np.float32) + n
    np.clip(out, -1024, 3071, out=out)
    return np.rint(out).astype(np.int16)


def add_noise(vol: np.ndarray, sd: float, rng: np.random.Generator, sharp: bool = False) -> None:
    """Add correlated CT-like noise of standard deviation *sd* (HU) to an int16 volume in place."""
    if sd <= 0:
        return
    bank = noise_bank(vol.shape[1:], sd, rng, sharp)
    for k in range(vol.shape[0]):
        vol[k] = noisy_slice(vol[k], bank, rng)


def make_spine_volume(
    spec: PatientSpec,
    fov: str = "cap",
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] = (1.0, 0.78, 0.78),
    rng: np.random.Generator | None = None,
    noise_sd: float = 20.0,
    contrast: str = "none",
    z_range: tuple[float, float] | None = None,
    sharp: bool = False,
) -> tuple[CTVolume, pd.DataFrame]:
    """Render a patient as a CT volume and return it with the truth of every vertebra in view.

    Parameters
    ----------
    spec
        From :func:`random_patient_spec`.
    fov
        ``chest`` (T1..L1/L2), ``abdomen_pelvis`` (T10/T11..pubic symphysis), ``cap``
        (T1..symphysis) or ``head`` (no thoracolumbar spine).
    shape
        ``(z, y, x)`` voxels. None: the protocol's full coverage at *spacing*, 500 mm in
        plane. A shorter z extent is centred on the protocol's coverage.
    spacing
        Voxel size (z, y, x), mm.
    rng
        Source of the noise (None: a fixed seed, so results repeat).
    noise_sd
        Noise SD in HU (0 for a noise-free phantom).
    contrast
        ``none``, ``arterial`` or ``portal_venous`` (raises vessel, organ and bone HU).
    z_range
        Override the z coverage (LPS mm) e.g. for a spine partly out of view.
    sharp
        Bone-kernel noise texture (finer grain).

    Returns
    -------
    volume : CTVolume
        int16 HU, canonical orientation, origin at voxel [0, 0, 0].
    truth : pandas.DataFrame
        One row per vertebra at least partly in view (columns :data:`TRUTH_COLUMNS`).

    Raises
    ------
    ValueError
        For an unknown *fov* or *contrast*.
    """
    if fov not in FOVS:
        raise ValueError(f"fov {fov!r} is not one of {FOVS}")
    if contrast not in priors.CONTRAST_BONE_HU:
        raise ValueError(f"contrast {contrast!r} is not one of {tuple(priors.CONTRAST_BONE_HU)}")
    rng = rng if rng is not None else np.random.default_rng(0)
    grid = default_grid(spec, fov, shape, spacing, z_range)
    hu = render(spec, fov, grid, contrast)
    add_noise(hu, noise_sd, rng, sharp=sharp)
    vol = CTVolume(
        hu=hu, spacing=grid.spacing, origin=grid.origin, meta={"synthetic": True, "fov": fov}
    )
    truth = truth_table(spec, grid, contrast, fov)
    truth = truth[truth["in_view"]].drop(columns="in_view").reset_index(drop=True)
    return vol, truth[list(TRUTH_COLUMNS)]
