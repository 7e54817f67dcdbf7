"""Fracture maps of a real base scan, calibrated on its masks, and the geometry of a study.

:func:`fracture_maps` gives the displacement maps of a patient's fractures in one base
(:mod:`fracture_qi.synth.fracture`), each planted with the loss that makes the body's mask
show the intended loss of its defining height (:func:`planted_loss`); :func:`measure_body`
reads a body's heights from its mask sampled through every map. The rest places a study:
where a level lands in the patient's scan and the output grid.
"""

from __future__ import annotations

import functools
from typing import Final

import numpy as np
from scipy import ndimage as ndi

from fracture_qi.synth.basescan import LEVELS, base_bodies, base_catalogue
from fracture_qi.synth.fracture import (
    HEIGHT_INSET,
    BodyFrame,
    FractureMap,
    FractureSpec,
    base_to_fractured,
    body_frame,
    build_fracture_maps,
    fractured_to_base,
)
from fracture_qi.synth.measure import mask_heights
from fracture_qi.synth.realpatient import RealPatient, patient_map
from fracture_qi.synth.spine import Grid

#: sampling step (mm) of the local grid a body's mask is measured on
TRUTH_STEP_MM: Final[float] = 1.0

# --- fracture maps, cached per base and fracture list ---------------------------------------------


def fracture_key(p: RealPatient) -> tuple[tuple[str, str, int, float], ...]:
    return tuple((f.level, f.morph, f.grade, round(f.loss, 6)) for f in p.fractures)


@functools.lru_cache(maxsize=64)
def _frame(name: str, level: str) -> BodyFrame:
    bodies, sp, org = base_bodies(name)
    return body_frame(bodies, sp, org, base_catalogue(name).bodies[level])


@functools.lru_cache(maxsize=128)
def _maps_raw(name: str, key: tuple[tuple[str, str, int, float], ...]) -> list[FractureMap]:
    specs = [FractureSpec(*k) for k in key]
    return build_fracture_maps(functools.partial(_frame, name), base_catalogue(name), specs)


@functools.lru_cache(maxsize=128)
def _maps(name: str, key: tuple[tuple[str, str, int, float], ...]) -> list[FractureMap]:
    cat = base_catalogue(name)
    whole = set(cat.levels_complete())
    planted = tuple(
        (lv, morph, grade, planted_loss(name, lv, morph, grade, loss)[0] if lv in whole else loss)
        for lv, morph, grade, loss in key
    )
    # the maps carry the planted loss; the truth keeps the intended one
    return _maps_raw(name, planted)


def fracture_maps(p: RealPatient, name: str, calibrated: bool = True) -> list[FractureMap]:
    """The displacement maps of *p*'s fractures in base *name* (levels it holds whole).

    *calibrated*: planted with the loss that makes each mask show the intended loss
    (:func:`planted_loss`: a few mask measurements per new fracture); otherwise with the
    intended loss itself (planning and ``--truth-only``, where no pixel is drawn).
    """
    if calibrated:
        return _maps(name, fracture_key(p))
    return _maps_raw(name, fracture_key(p))


#: the defining height of each fracture type
DEFINING_HEIGHT: Final[dict[str, str]] = {"wedge": "ha", "biconcave": "hm", "crush": "hp"}
#: planted loss / measured loss to start from: a mask of 2.5-3 mm slices shows a shallow,
#: narrow endplate dent at about three quarters of its depth (measured on lidc0001 and the
#: abdomen, T7-L5)
CALIBRATION_START: Final[dict[str, float]] = {"wedge": 1.05, "biconcave": 1.35, "crush": 1.0}
#: a planted loss is accepted once the mask shows the intended loss within this
CALIBRATION_TOL: Final[float] = 0.01
CALIBRATION_STEPS: Final[int] = 3
#: the most a column is planted to lose (beyond it the body folds rather than collapses)
MAX_PLANTED_LOSS: Final[float] = 0.7


@functools.lru_cache(maxsize=256)
def _unfractured_heights(name: str, level: str) -> dict[str, float]:
    return _base_measure(name, level, ())


def _base_measure(name: str, level: str, key: tuple[tuple[str, str, int, float], ...]) -> dict[str, float]:
    """A body's heights with fractures *key* planted and no other deformation."""
    p = RealPatient(70.0, "F", 100.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0,
                    [FractureSpec(*k) for k in key])
    maps = _maps_raw(name, key)
    cat = base_catalogue(name)
    b = cat.bodies[level]
    zf = base_to_fractured(maps, np.array([b.centre[0]]), np.array([b.centre[1]]),
                           np.array([b.centre[2]]))
    centre = np.array([float(zf[0]), b.centre[1], b.centre[2]])
    h = measure_body(p, name, level, centre, np.array(b.axis), maps=maps)
    return {k: float(h[k]) for k in ("ha", "hm", "hp")}  # type: ignore[arg-type]


@functools.lru_cache(maxsize=256)
def planted_loss(name: str, level: str, morph: str, grade: int, loss: float) -> tuple[float, float]:
    """The loss to plant so that the body's mask shows *loss* of its defining height, and the
    loss the mask then shows.

    The displacement is designed on the lines along the body's axis; the mask, on 2.5-3 mm
    slices, shows it blurred (a narrow dent at about 3/4 of its depth). A few secant steps
    on the base's own mask find the planted loss (cached per base, level and fracture). The
    search stops short where another height would lose more than the defining one (a mask
    whose front carries a spur that no wedge lowers): the truth then states the loss shown.

    Returns
    -------
    tuple of float
        ``(planted, shown)``.
    """
    k = DEFINING_HEIGHT[morph]
    h0 = _unfractured_heights(name, level)
    if h0[k] <= 0:
        return loss, loss
    tries: list[tuple[float, float]] = []
    planted = float(np.clip(loss * CALIBRATION_START[morph], 0.05, MAX_PLANTED_LOSS))
    for _ in range(CALIBRATION_STEPS):
        h = _base_measure(name, level, ((level, morph, grade, round(planted, 6)),))
        shown = 1.0 - h[k] / h0[k]
        worst_other = max(1.0 - h[o] / h0[o] for o in h0 if o != k and h0[o] > 0)
        if worst_other > max(shown, loss) + CALIBRATION_TOL and tries:
            break  # the shape gives out before the defining height does
        tries.append((planted, shown))
        if abs(shown - loss) <= CALIBRATION_TOL:
            break
        if len(tries) >= 2 and abs(tries[-1][1] - tries[-2][1]) > 1e-3:
            (p0, s0), (p1, s1) = tries[-2], tries[-1]
            planted = p1 + (loss - s1) * (p1 - p0) / (s1 - s0)
        else:
            planted = planted * loss / max(shown, 0.02)
        planted = float(np.clip(planted, 0.05, MAX_PLANTED_LOSS))
    best = min(tries, key=lambda t: abs(t[1] - loss))
    return round(best[0], 6), round(best[1], 4)


def shown_losses(p: RealPatient, name: str) -> dict[str, float]:
    """Per fractured level held whole by base *name*: the loss its mask shows."""
    whole = set(base_catalogue(name).levels_complete())
    return {f.level: planted_loss(name, f.level, f.morph, f.grade, round(f.loss, 6))[1]
            for f in p.fractures if f.level in whole}


# --- geometry of a study -------------------------------------------------------------------------


def base_fov_centre(name: str) -> tuple[float, float]:
    """(y, x) mm of the middle of the base's own field of view (the scanner's centre)."""
    bodies, sp, org = base_bodies(name)
    _, ny, nx = bodies.shape
    return org[1] + (ny - 1) * sp[1] / 2, org[0] + (nx - 1) * sp[2] / 2


def output_z_of(p: RealPatient, name: str, level: str, where: str = "centre") -> float:
    """Output z (mm) of a level's body centre (``where``: centre, lo, hi) in *p*'s scan
    (for planning: the fractures as intended, not calibrated)."""
    cat = base_catalogue(name)
    pm = patient_map(p, cat)
    b = cat.bodies[level]
    z = {"centre": b.centre[0], "lo": b.z_lo, "hi": b.z_hi}[where]
    zf = base_to_fractured(fracture_maps(p, name, calibrated=False), np.array([z]),
                           np.array([b.centre[1]]), np.array([b.centre[2]]))
    return float(pm.z_to_output(zf)[0])


def output_z_range(p: RealPatient, name: str) -> tuple[float, float]:
    """Output z (mm) of the base's first and last slice in *p*'s scan (the most a study
    can cover)."""
    cat = base_catalogue(name)
    pm = patient_map(p, cat)
    maps = fracture_maps(p, name, calibrated=False)
    lo = cat.z_range[0]
    hi = cat.z_range[1] - sum(m.drop for m in maps)
    return float(pm.z_to_output(np.array(lo))), float(pm.z_to_output(np.array(hi)))


def study_grid(p: RealPatient, name: str, z_range: tuple[float, float], dz: float,
               matrix: int, fov_mm: float) -> Grid:
    """The output grid of a study: *z_range* (output mm) at *dz*, ``matrix`` squared pixels over
    *fov_mm*, centred where the scanner centred the base scan."""
    cat = base_catalogue(name)
    pm = patient_map(p, cat)
    cy, cx = base_fov_centre(name)
    oy = pm.centre[1] + pm.s_xy * (cy - pm.centre[1])
    ox = pm.centre[2] + pm.s_xy * (cx - pm.centre[2])
    ps = fov_mm / matrix
    nz = int(round((z_range[1] - z_range[0]) / dz)) + 1
    half = (matrix - 1) * ps / 2
    return Grid(origin=(ox - half, oy - half, z_range[0]), spacing=(dz, ps, ps),
                shape=(nz, matrix, matrix))


# --- a body measured through the maps ------------------------------------------------------


def output_centres(p: RealPatient, name: str, calibrated: bool = True) -> dict[str, np.ndarray]:
    """Output (z, y, x) of every body centre of the base in *p*'s scan."""
    cat = base_catalogue(name)
    pm = patient_map(p, cat)
    maps = fracture_maps(p, name, calibrated)
    out = {}
    for lv, b in cat.bodies.items():
        zf = base_to_fractured(maps, np.array([b.centre[0]]), np.array([b.centre[1]]),
                               np.array([b.centre[2]]))
        out[lv] = np.array(pm.point_to_output(float(zf[0]), b.centre[1], b.centre[2]))
    return out


def body_axis(p: RealPatient, name: str, level: str) -> np.ndarray:
    """A body's axis in *p*'s scan: the base's (between its neighbours' centres) carried
    through the patient's size and bend; not through a fracture, which tilts neither endplate
    of the body below it and is itself measured along the axis it had."""
    cat = base_catalogue(name)
    pm = patient_map(p, cat)
    b = cat.bodies[level]
    a = np.array(b.axis)
    c = np.array(b.centre)
    ends = [np.array(pm.point_to_output(*(c + t * a))) for t in (-5.0, 5.0)]
    v = ends[1] - ends[0]
    return v / np.linalg.norm(v)


def measure_body(p: RealPatient, name: str, level: str, centre: np.ndarray, axis: np.ndarray,
                  maps: list[FractureMap] | None = None) -> dict[str, object]:
    """Heights of one body's mask sampled on a 1 mm grid of the output through every map."""
    cat = base_catalogue(name)
    pm = patient_map(p, cat)
    maps = fracture_maps(p, name) if maps is None else maps
    bodies, sp, org = base_bodies(name)
    b = cat.bodies[level]
    lab = LEVELS.index(level) + 1
    # the body's base voxels, padded for the displacement
    k0 = int(max((b.z_lo - 25.0 - org[2]) / sp[0], 0))
    k1 = int(min((b.z_hi + 25.0 - org[2]) / sp[0] + 1, bodies.shape[0]))
    half_xy = max(b.depth, b.width) / 2 + 20.0
    i0 = int(max((b.centre[1] - half_xy - org[1]) / sp[1], 0))
    i1 = int(min((b.centre[1] + half_xy - org[1]) / sp[1] + 1, bodies.shape[1]))
    j0 = int(max((b.centre[2] - half_xy - org[0]) / sp[2], 0))
    j1 = int(min((b.centre[2] + half_xy - org[0]) / sp[2] + 1, bodies.shape[2]))
    crop = (bodies[k0:k1, i0:i1, j0:j1] == lab).astype(np.float32)
    st = TRUTH_STEP_MM
    hz = (b.z_hi - b.z_lo) * pm.s_z / 2 + 8.0
    hxy = max(b.depth, b.width) * pm.s_xy / 2 + 8.0
    zs = centre[0] + np.arange(-hz, hz + st / 2, st)
    ys = centre[1] + np.arange(-hxy, hxy + st / 2, st)
    xs = centre[2] + np.arange(-hxy, hxy + st / 2, st)
    zz, yy, xx = (a.ravel() for a in np.meshgrid(zs, ys, xs, indexing="ij"))
    yb, xb = pm.plane_to_base(zz, yy, xx)
    zb = fractured_to_base(maps, pm.z_to_base(zz), yb, xb)
    coords = np.stack([(zb - org[2]) / sp[0] - k0, (yb - org[1]) / sp[1] - i0,
                       (xb - org[0]) / sp[2] - j0])
    m = ndi.map_coordinates(crop, coords, order=1, mode="constant", cval=0.0).reshape(
        len(zs), len(ys), len(xs)).astype(np.float32)
    h = mask_heights(m, (st, st, st), inset=HEIGHT_INSET, axis=axis)
    cz, cy, cx = h["centre"]  # type: ignore[misc]
    h["centre"] = (zs[0] + cz, ys[0] + cy, xs[0] + cx)
    kk = np.nonzero((m >= 0.5).any(axis=(1, 2)))[0]
    h["z_lo"] = float(zs[kk.min()] - st / 2) if len(kk) else float("nan")
    h["z_hi"] = float(zs[kk.max()] + st / 2) if len(kk) else float("nan")
    return h


# --- the coverage of a study -----------------------------------------------------------------------

#: the base each protocol is built on
PROTOCOL_BASE: Final[dict[str, str]] = {"chest": "chest", "abdomen_pelvis": "abdomen", "cap": "cap"}
#: thin-series slice spacing (mm): each base's own (LIDC 2.5 mm, the abdomen 3 mm); the
#: joined base is on the chest's grid
BASE_DZ: Final[dict[str, float]] = {"chest": 2.5, "abdomen": 3.0, "cap": 2.5}
#: display field of view of the base scans (mm; LIDC 360, the abdomen 366), scaled with the
#: patient and widened by up to this much, within FOV_RANGE_MM (ANATOMY 5: 300-500 mm)
BASE_FOV_MM: Final[float] = 360.0
FOV_RANGE_MM: Final[tuple[float, float]] = (330.0, 480.0)


def plan_coverage(p: RealPatient, protocol: str, rng: np.random.Generator,
                  partial: str = "") -> tuple[float, float]:
    """Output z range (mm) of a study of *protocol*, drawn like a hospital's (ANATOMY 5).

    Chest: from just below the base's first slice (C5-C7) down to somewhere between T12's
    middle and the base's end (L2-L3): the lowest body in view is often cut, as in real
    chest CT. Abdomen-pelvis: from somewhere between L1's top and the base's first slice (T12
    cut) down to the pelvis. Chest-abdomen-pelvis: the chest's top to the abdomen's bottom.
    ``partial``: ``bottom_cut`` (chest stopped at T9-T11) or ``top_cut`` (abdomen started at
    L2-L3), the 12 % of studies with part of the thoraco-lumbar spine out of view.
    """
    name = PROTOCOL_BASE[protocol]
    zmin, zmax = output_z_range(p, name)

    def between(a: float, b: float) -> float:
        return float(rng.uniform(min(a, b), max(a, b)))

    if protocol in ("chest", "cap"):
        top = zmax - between(0.0, 15.0)
    else:
        top = between(output_z_of(p, name, "L1", "hi") + 5.0, zmax - 2.0)
    if protocol == "chest":
        bottom = between(zmin + 3.0, output_z_of(p, name, "T12"))
    else:
        bottom = zmin + between(2.0, 20.0)
    if partial == "bottom_cut":
        bottom = between(output_z_of(p, name, "T9"), output_z_of(p, name, "T11"))
    elif partial == "top_cut":
        top = between(output_z_of(p, name, "L3"), output_z_of(p, name, "L2"))
    return bottom, top
