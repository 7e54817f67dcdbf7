"""Render synthetic patients on real CT: bone density, contrast phase, fractures, resampling.

Each synthetic patient (:mod:`fracture_qi.synth.realpatient`) is one of the real base scans
(:mod:`fracture_qi.synth.basescan`) changed the way patients differ:

* **bone density**: each vertebral body's trabecular HU scaled to the patient's L1 target
  (ANATOMY 3a, by age and sex, lower with a prevalent fracture), keeping the scan's own
  texture and noise; the cortex thinned or thickened with it;
* **contrast phase**: the aorta, heart, vessels, liver, spleen and kidneys set to their
  phase's attenuation (ANATOMY 3c) and trabecular bone raised by the phase (3b);
* **fractures**: :mod:`fracture_qi.synth.fracture`, with a sclerotic band under the
  collapsed endplate and denser (impacted) trabecular bone;
* **size and curvature**: :class:`~fracture_qi.synth.realpatient.PatientMap`.

Maps run from the output (the synthetic patient's scan) back to the base scan, so a study
is rendered by sampling the base once per output voxel. The truth
(:mod:`fracture_qi.synth.realtruth`) is measured through the same maps.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage as ndi

from fracture_qi.synth import priors
from fracture_qi.synth.basescan import (
    CORE_DEPTH_MM,
    LEVELS,
    TISSUES,
    BaseScan,
    base_scan,
    depth_inside,
)
from fracture_qi.synth.fracture import (
    SCLEROSIS_HU,
    SCLEROSIS_MM,
    FractureMap,
    column_loss,
    fractured_to_base,
    fractured_to_base_scalar,
)
from fracture_qi.synth.realmaps import fracture_maps
from fracture_qi.synth.realpatient import TRUTH_LEVELS, RealPatient, patient_map
from fracture_qi.synth.spine import Grid

log = logging.getLogger(__name__)

#: cortex thickness follows trabecular density: factor = (target / base) ** CORTEX_EXPONENT,
#: clipped [estimate]
CORTEX_EXPONENT: Final[float] = 0.5
CORTEX_RANGE: Final[tuple[float, float]] = (0.7, 1.4)
#: trabecular bone of a fractured body is denser (impaction): HU per grade (as the phantom)
COMPACTION_HU_PER_GRADE: Final[float] = 25.0
#: smoothing (mm, Gaussian sigma) that splits a region's HU into its level and its texture
SMOOTH_MM: Final[float] = 2.0

#: unenhanced baseline HU of each tissue (ANATOMY 3c) and its target by contrast phase
#: (aorta: late arterial 290-360 [RPAED-ART], portal venous 150-200; liver +20-30 arterial,
#: 100-120 portal venous; the rest ANATOMY 3c and priors.CONTRAST_HU)
TISSUE_BASELINE: Final[dict[str, float]] = {
    "aorta": 45.0, "heart": 45.0, "artery": 45.0, "vein": 45.0, "portal": 45.0,
    "liver": 55.0, "spleen": 45.0, "kidney": 30.0,
}
TISSUE_PHASE_HU: Final[dict[str, dict[str, float]]] = {
    "arterial": {"aorta": 320.0, "heart": 290.0, "artery": 310.0, "vein": 120.0,
                 "portal": 145.0, "liver": 75.0, "spleen": 110.0, "kidney": 180.0},
    "portal_venous": {"aorta": 170.0, "heart": 160.0, "artery": 165.0, "vein": 150.0,
                      "portal": 180.0, "liver": 110.0, "spleen": 115.0, "kidney": 160.0},
}
#: a tissue counts as enhanced in its base scan when it is this far (HU) above baseline:
#: then its contrast is scaled (keeping its pattern); otherwise shifted
ENHANCED_MIN_HU: Final[float] = 40.0
#: noise (HU SD) of soft tissue in the base scans at their own slices (LIDC's muscle: 14-18
#: HU about its median at 2.5 mm), made up where less contrast scales a region's own down
TISSUE_NOISE_SD: Final[float] = 15.0


# --- bone density and contrast, on a copy of the base ------------------------------------------------


@dataclass
class _Region:
    idx: np.ndarray  # flat indices into the base
    level_hu: np.ndarray  # smoothed HU (float32)
    weight: np.ndarray  # core weight (bodies) or 1 (tissues)
    median: float = 0.0  # median HU of the core at this resolution (bodies)


def _smooth_within(hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Normalised Gaussian smoothing of *hu* inside *mask* (values outside ignored)."""
    sig = [SMOOTH_MM / s for s in spacing]
    m = mask.astype(np.float32)
    num = ndi.gaussian_filter(hu.astype(np.float32) * m, sig, mode="nearest")
    den = ndi.gaussian_filter(m, sig, mode="nearest")
    return num / np.maximum(den, 1e-3)


@functools.lru_cache(maxsize=4)
def _regions(name: str, fast: bool) -> tuple[dict[str, _Region], dict[tuple[int, str], _Region]]:
    """Per body and per (part, tissue) of a base: voxels, their smooth level and weights."""
    scan = base_scan(name, fast)
    bodies: dict[str, _Region] = {}
    for idx, sl in enumerate(ndi.find_objects(scan.bodies)):
        if sl is None:
            continue
        pad = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, n)) for s, n in zip(sl, scan.shape))
        m = scan.bodies[pad] == idx + 1
        depth = depth_inside(m, scan.spacing)
        # the cortex and its partial volume (shallower than CORE_DEPTH_MM) fade into the core
        core_w = np.clip((depth - 1.0) / (CORE_DEPTH_MM - 1.0), 0.0, 1.0)
        core = depth > CORE_DEPTH_MM
        level = _smooth_within(scan.hu[pad], core if core.sum() >= 5 else m, scan.spacing)
        flat = np.ravel_multi_index(
            tuple(np.nonzero(m)[i] + pad[i].start for i in range(3)), scan.shape
        )
        sub = scan.hu[pad]
        med = float(np.median(sub[core])) if core.sum() >= 5 else float(np.median(sub[m]))
        bodies[LEVELS[idx]] = _Region(flat, level[m].astype(np.float32),
                                      core_w[m].astype(np.float32), med)
    tissues: dict[tuple[int, str], _Region] = {}
    nt = len(TISSUES)
    for code, sl in enumerate(ndi.find_objects(scan.tissue), start=1):
        if sl is None:
            continue
        part, t = (code - 1) // nt, TISSUES[(code - 1) % nt]
        if t == "muscle":
            continue
        pad = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, n)) for s, n in zip(sl, scan.shape))
        m = scan.tissue[pad] == code
        # one voxel around the vessel too: its partial-volume rim carries the contrast
        grown = ndi.binary_dilation(m, iterations=1) & (scan.tissue[pad] == 0) | m
        level = _smooth_within(scan.hu[pad], m, scan.spacing)
        flat = np.ravel_multi_index(
            tuple(np.nonzero(grown)[i] + pad[i].start for i in range(3)), scan.shape
        )
        w = np.where(m[grown], 1.0, 0.5).astype(np.float32)
        tissues[(part, t)] = _Region(flat, level[grown].astype(np.float32), w)
    return bodies, tissues


def phase_tissue_hu(scan: BaseScan, part: int, tissue: str, phase: str) -> float | None:
    """The median HU a tissue of a base part shows in a study of *phase* (None: unchanged
    or not in the scan)."""
    base = scan.tissue_hu.get((part, tissue))
    if base is None:
        return None
    if phase == scan.parts[part]:
        return base
    if phase == "none":
        return TISSUE_BASELINE.get(tissue, base)
    return TISSUE_PHASE_HU.get(phase, {}).get(tissue, base)


def _bone_rise(phase: str) -> float:
    lo, hi = priors.CONTRAST_BONE_HU[phase]
    return (lo + hi) / 2


def trabecular_target(p: RealPatient, level: str, phase: str) -> float:
    """Trabecular HU the images show in *level* of *p* in a study of *phase* (the truth)."""
    hu = p.bmd_l1_hu + priors.LEVEL_HU_OFFSET[level] + _bone_rise(phase)
    f = p.fracture_at(level)
    if f is not None:
        hu += COMPACTION_HU_PER_GRADE * f.grade
    return float(hu)


def adjust_base(scan: BaseScan, fast: bool, p: RealPatient, phase: str,
                maps: list[FractureMap]) -> np.ndarray:
    """A copy of the base's HU with *p*'s bone density, sclerosis and *phase*'s contrast."""
    hu = scan.hu.copy()
    flat = hu.reshape(-1)
    bodies, tissues = _regions(scan.name, fast)
    cat = scan.catalogue
    for level, reg in bodies.items():
        info = cat.bodies.get(level)
        if info is None or info.trabecular_hu is None or level not in TRUTH_LEVELS:
            continue
        rise_b = _bone_rise(info.phase)
        # the core's median at this resolution (a 2 x 2 average of skewed trabecular HU reads
        # a few HU above the full-resolution median)
        t_b = reg.median
        base_unenh = max(t_b - rise_b, 40.0)
        target = trabecular_target(p, level, phase)
        # the unenhanced, uncompacted level scales with the patient's density; the phase's
        # rise and any impaction are added on top
        unenh = target - _bone_rise(phase)
        f = p.fracture_at(level)
        if f is not None:
            unenh -= COMPACTION_HU_PER_GRADE * f.grade
        r = unenh / base_unenh
        # core: the median moved to the target, the smooth level's spread about it scaled
        # with the density (its texture), the noise kept
        core = (target - t_b) + (r - 1.0) * (reg.level_hu - t_b)
        # shell (cortex): follows the core's change, its excess over it scaled
        k_c = float(np.clip(r**CORTEX_EXPONENT, *CORTEX_RANGE)) * p.cortex_factor
        vals = flat[reg.idx].astype(np.float32)
        shell = (target - t_b) + (vals - t_b) * (k_c - 1.0)
        new = vals + reg.weight * core + (1.0 - reg.weight) * shell
        flat[reg.idx] = np.clip(np.rint(new), -1024, 3071).astype(np.int16)
    for m in maps:
        _sclerosis(hu, scan, m)
    for (part, t), reg in tissues.items():
        want = phase_tissue_hu(scan, part, t, phase)
        have = scan.tissue_hu.get((part, t))
        if want is None or have is None or phase == scan.parts[part]:
            continue
        b = TISSUE_BASELINE.get(t, 45.0)
        vals = flat[reg.idx].astype(np.float32)
        if have - b > ENHANCED_MIN_HU:
            k = (want - b) / (have - b)
            if k < 1.0:
                # less contrast: the contrast's fine pattern (jets, trabeculae, partial-volume
                # edges, hundreds of HU) fades with it; the scan's noise is made up again
                noise = np.random.default_rng(
                    [TISSUES.index(t), part, ("none", "arterial", "portal_venous").index(phase)]
                ).standard_normal(len(vals)).astype(np.float32) * np.float32(TISSUE_NOISE_SD)
                target = b + (vals - b) * k + noise * np.float32(np.sqrt(1.0 - k * k))
                new = vals + reg.weight * (target - vals)
            else:
                new = vals + reg.weight * (k - 1.0) * (reg.level_hu - b)
        else:
            new = vals + reg.weight * (want - have)
        flat[reg.idx] = np.clip(np.rint(new), -1024, 3071).astype(np.int16)
    return hu


def _sclerosis(hu: np.ndarray, scan: BaseScan, m: FractureMap) -> None:
    """Add the denser band under the collapsed endplate(s) of one fracture, in the base."""
    lab = LEVELS.index(m.spec.level) + 1
    box = ndi.find_objects(scan.bodies, max_label=lab)[lab - 1]
    if box is None:
        return
    mask = scan.bodies[box] == lab
    kk, ii, jj = np.nonzero(mask)
    dz, dy, dx = scan.spacing
    z = scan.origin[2] + (kk + box[0].start) * dz
    y = scan.origin[1] + (ii + box[1].start) * dy
    x = scan.origin[0] + (jj + box[2].start) * dx
    f = m.frame
    u, v = f.uv(z, y, x)
    planar, dent = column_loss(m.spec.morph, m.spec.loss, u, v)
    lam = (planar + dent) / max(m.spec.loss, 1e-3)
    top = f.top(y, x)
    bot = f.bottom(y, x)
    # the band is thicker before the squeeze: it is compressed with the body
    depth_top = (top - z) * (1.0 - m.spec.loss)
    depth_bot = (z - bot) * (1.0 - m.spec.loss)
    add = SCLEROSIS_HU[m.spec.grade] * np.clip(lam, 0.0, 1.2) * np.clip(1.0 - depth_top / SCLEROSIS_MM, 0.0, 1.0)
    if m.spec.morph == "biconcave":
        add = np.maximum(add, SCLEROSIS_HU[m.spec.grade] * np.clip(dent / max(m.spec.loss, 1e-3), 0, 1)
                         * np.clip(1.0 - depth_bot / SCLEROSIS_MM, 0.0, 1.0))
    idx = (kk + box[0].start, ii + box[1].start, jj + box[2].start)
    hu[idx] = np.clip(np.rint(hu[idx] + add), -1024, 3071).astype(np.int16)


# --- rendering ---------------------------------------------------------------------------------------


def render_study(p: RealPatient, name: str, grid: Grid, phase: str, fast: bool,
                 labels: bool = False,
                 x_shift: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Noise-free (but for the base's own noise) int16 HU of *p* on *grid* in *phase*.

    Parameters
    ----------
    p
        The patient.
    name
        Base scan: ``chest``, ``abdomen`` or ``cap``.
    grid
        Output grid (canonical LPS).
    phase
        ``none``, ``arterial`` or ``portal_venous``.
    fast
        Sample the 2 x 2 in-plane averaged base (for 256-matrix series).
    labels
        Also return the base's body and tissue labels sampled on the grid (nearest voxel):
        ``{"bodies": ..., "tissue": ...}`` (for tests and pictures).
    x_shift
        Per slice, mm added to the grid's x (a curved reformat that follows the spine, for
        pictures); None for a plain grid.

    Returns
    -------
    hu : numpy.ndarray
        int16, ``grid.shape``.
    labels : dict
        Empty unless *labels*.
    """
    scan = base_scan(name, fast)
    pm = patient_map(p, scan.catalogue)
    maps = fracture_maps(p, name)
    bands = [m.z_band() for m in maps]
    vol = adjust_base(scan, fast, p, phase, maps)
    nz, ny, nx = grid.shape
    dz, dy, dx = grid.spacing
    ox, oy, oz = grid.origin
    ys = oy + dy * np.arange(ny)
    xs = ox + dx * np.arange(nx)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    out = np.empty(grid.shape, dtype=np.int16)
    lab_out = {k: np.zeros(grid.shape, dtype=np.uint8) for k in ("bodies", "tissue")} if labels else {}
    sz, sy, sx = scan.spacing
    bz0, by0, bx0 = scan.origin[2], scan.origin[1], scan.origin[0]
    buf = np.empty(ny * nx, dtype=np.float32)
    for k in range(nz):
        zo = oz + k * dz
        zf = float(pm.z_to_base(np.array(zo)))
        yb, xb = pm.plane_to_base(zo, yy, xx if x_shift is None else xx + x_shift[k])
        yb, xb = yb.ravel(), xb.ravel()
        near = [m for m, (lo, hi) in zip(maps, bands) if lo <= zf <= hi]
        if near or labels:
            zb = (fractured_to_base(maps, np.full(yb.shape, zf), yb, xb) if near
                  else np.full(yb.shape, fractured_to_base_scalar(maps, zf)))
            coords = np.stack([(zb - bz0) / sz, (yb - by0) / sy, (xb - bx0) / sx])
            ndi.map_coordinates(vol, coords, output=buf, order=1, mode="constant", cval=-1024.0)
        else:
            # the whole slice comes from one base z: blend two base slices, then sample in 2-D
            # (the same linear interpolation as the 3-D path, at a third of its cost)
            _sample_plane(vol, (fractured_to_base_scalar(maps, zf) - bz0) / sz,
                          (yb - by0) / sy, (xb - bx0) / sx, buf)
        out[k] = np.rint(buf).reshape(ny, nx)
        for key in lab_out:
            src = scan.bodies if key == "bodies" else scan.tissue
            lab_out[key][k] = ndi.map_coordinates(src, coords, order=0, mode="constant",
                                                  cval=0).reshape(ny, nx)
    return out, lab_out


def _sample_plane(vol: np.ndarray, kz: float, iy: np.ndarray, ix: np.ndarray,
                  out: np.ndarray) -> None:
    """Linear interpolation of *vol* at slice position *kz* and in-plane positions (iy, ix)."""
    nz = vol.shape[0]
    if kz < 0.0 or kz > nz - 1:
        out.fill(-1024.0)
        return
    k0 = min(int(kz), nz - 2) if nz > 1 else 0
    t = np.float32(kz - k0) if nz > 1 else np.float32(0.0)
    plane = vol[k0].astype(np.float32)
    if t > 0:
        plane += t * (vol[k0 + 1].astype(np.float32) - plane)
    ndi.map_coordinates(plane, [iy, ix], output=out, order=1, mode="constant", cval=-1024.0)


def preload(name: str, fast: bool) -> None:
    """Read and prepare a base scan (and its density and contrast regions) in this process."""
    base_scan(name, fast)
    _regions(name, fast)
