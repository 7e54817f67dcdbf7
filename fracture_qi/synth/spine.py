"""Spine layout (curvature, level positions) and vectorised painting of vertebrae.

Each vertebra lives in its own right-handed local frame:

* ``u``: along the spine axis, cranial positive (the body's height direction)
* ``v``: antero-posterior, posterior positive
* ``w``: lateral, patient-left positive

Shapes are evaluated only inside an axis-aligned box around each structure, so the cost
grows with the number of vertebrae, not with the size of the volume. Edges are
anti-aliased (occupancy ramps over one voxel) so that a profile through a noise-free
phantom crosses half-way between tissue values exactly at the planted surface; the
morphometry tests rely on this.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from fracture_qi.synth.priors import HU, SPINE_LEVELS

log = logging.getLogger(__name__)

#: sacral segments drawn below L5 (fused, no discs) with (height, depth, width, ala half-span)
SACRAL_SEGMENTS: tuple[tuple[str, float, float, float, float], ...] = (
    ("S1", 30.0, 33.0, 48.0, 52.0),
    ("S2", 24.0, 27.0, 38.0, 45.0),
    ("S3", 20.0, 21.0, 30.0, 34.0),
    ("S4", 16.0, 16.0, 22.0, 0.0),
    ("S5", 13.0, 12.0, 16.0, 0.0),
)


@dataclass
class VertebraSpec:
    """Planted shape of one vertebral body (all lengths in mm).

    ``ha0/hm0/hp0`` are the heights the body would have without a fracture; ``ha/hm/hp``
    are the planted ones. ``loss`` is the fractional height loss of the affected height
    relative to its own pre-fracture value (0 for normal bodies).
    """

    level: str
    ha0: float
    hm0: float
    hp0: float
    ha: float
    hm: float
    hp: float
    depth: float
    width: float
    trabecular_hu: float
    genant_grade: int = 0
    morph_type: str = "normal"
    loss: float = 0.0
    osteophyte_mm: float = 0.0

    @property
    def fractured(self) -> bool:
        return self.genant_grade > 0

    @property
    def h_max(self) -> float:
        return max(self.ha, self.hp)


@dataclass
class Placement:
    """Where a vertebra (or sacral segment) sits: centre (LPS x, y, z) and its frame."""

    level: str
    centre: np.ndarray  # (3,) LPS mm
    e_u: np.ndarray  # (3,) unit, cranial
    e_v: np.ndarray  # (3,) unit, posterior
    e_w: np.ndarray  # (3,) unit, patient left
    tilt_sagittal_deg: float
    tilt_coronal_deg: float
    disc_above: float
    disc_below: float


@dataclass
class SpineLayout:
    """Centre line of the spine and the placement of every level."""

    s: np.ndarray  # arc length samples, mm (0 = S1 superior endplate)
    xyz: np.ndarray  # (n, 3) LPS positions of the centre line at s
    placements: dict[str, Placement] = field(default_factory=dict)
    sacrum: list[Placement] = field(default_factory=list)

    def at_z(self, z: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LPS (x, y) of the spine centre line at height(s) *z* (clamped at the ends)."""
        zs = self.xyz[:, 2]
        order = np.argsort(zs)
        x = np.interp(z, zs[order], self.xyz[order, 0])
        y = np.interp(z, zs[order], self.xyz[order, 1])
        return x, y

    def level_z(self, level: str) -> float:
        """LPS z of the centre of a level's body (``T1``..``L5``, ``S1``..``S5``)."""
        if level in self.placements:
            return float(self.placements[level].centre[2])
        for p in self.sacrum:
            if p.level == level:
                return float(p.centre[2])
        raise KeyError(level)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.cross is slow for single 3-vectors (it is called thousands of times when planning)
    return np.array(
        [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
    )


def _frame(tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e_u = tangent / np.linalg.norm(tangent)
    e_v = _cross(e_u, np.array([1.0, 0.0, 0.0]))
    e_v /= np.linalg.norm(e_v)
    if e_v[1] < 0:  # keep v pointing posterior
        e_v = -e_v
    e_w = _cross(e_v, e_u)
    e_w /= np.linalg.norm(e_w)
    if e_w[0] < 0:
        e_w = -e_w
    return e_u, e_v, e_w


def layout_spine(
    vertebrae: dict[str, VertebraSpec],
    discs: dict[str, float],
    kyphosis_deg: float,
    lordosis_deg: float,
    scoliosis_cobb_deg: float,
    s1_z: float,
    back_y: float,
    min_back_depth: float,
) -> SpineLayout:
    """Place every level along a curved centre line.

    Parameters
    ----------
    vertebrae, discs
        Body shapes by level and disc heights (disc *below* each level).
    kyphosis_deg, lordosis_deg
        Cobb angles: T4 superior to T12 inferior endplate, L1 superior to S1 superior.
    scoliosis_cobb_deg
        Signed lumbar/thoracolumbar coronal Cobb angle (positive: convex to the left).
    s1_z
        LPS z of the S1 superior endplate centre.
    back_y
        LPS y of the patient's back skin (the table top: the back rests on it).
    min_back_depth
        Smallest distance (mm) from a thoracic body centre to the back skin.

    Returns
    -------
    SpineLayout
    """
    # arc length of each body centre, from S1 upwards; the extent along the axis uses the
    # taller of Ha/Hp so wedge-shaped bodies never overlap their discs
    centres: dict[str, float] = {}
    tops: dict[str, float] = {}
    s = 0.0
    for level in reversed(SPINE_LEVELS):
        v = vertebrae[level]
        s += discs[level]
        centres[level] = s + v.h_max / 2.0
        s += v.h_max
        tops[level] = s
    s_top = s + 40.0
    s_bottom = -sum(seg[1] for seg in SACRAL_SEGMENTS) - 20.0
    ss = np.arange(s_bottom, s_top, 0.5)

    # curvature (deg/mm): lordosis 85 % at L4-S1 (recumbent, ANATOMY 2 [LL19]), kyphosis
    # spread over T4-T12 with its apex region T6-T8, the upper thoracic bending half as fast
    kappa = np.zeros_like(ss)
    s_l4_top, s_l1_top = tops["L4"], tops["L1"]
    s_t12_bot = centres["T12"] - vertebrae["T12"].h_max / 2
    s_t4_top = tops["T4"]
    low = (ss >= 0) & (ss < s_l4_top)
    kappa[low] = 0.85 * lordosis_deg / s_l4_top
    mid = (ss >= s_l4_top) & (ss < s_l1_top)
    kappa[mid] = 0.15 * lordosis_deg / (s_l1_top - s_l4_top)
    th = (ss >= s_t12_bot) & (ss < s_t4_top)
    bump = 1.0 + 0.6 * np.exp(-(((ss - centres["T7"]) / 40.0) ** 2))
    kappa[th] = -kyphosis_deg * bump[th] / np.trapezoid(bump[th], ss[th])
    up = ss >= s_t4_top
    kappa[up] = -0.5 * kyphosis_deg / (s_t4_top - s_t12_bot)
    sac = ss < 0
    kappa[sac] = 0.45  # sacral kyphosis: the sacrum curves backwards going down
    # a fracture adds its own wedge angle at its level (a gibbus), beyond the normal wedge
    for level, v in vertebrae.items():
        extra = math.degrees(math.atan((v.hp - v.ha) / v.depth)) - math.degrees(
            math.atan((v.hp0 - v.ha0) / v.depth)
        )
        if abs(extra) > 1e-6:
            sel = np.abs(ss - centres[level]) <= v.h_max / 2
            if sel.any():
                kappa[sel] -= extra / (sel.sum() * 0.5)
    theta = np.concatenate([[0.0], np.cumsum(kappa[:-1] * 0.5)])
    i0 = int(np.searchsorted(ss, 0.0))
    theta = theta - theta[i0] - 0.6 * lordosis_deg  # tilt at S1: lumbar curve about vertical
    th_rad = np.radians(theta)
    dy = np.sin(th_rad) * 0.5
    dz = np.cos(th_rad) * 0.5
    y = np.concatenate([[0.0], np.cumsum(dy[:-1])])
    z = np.concatenate([[0.0], np.cumsum(dz[:-1])])
    y -= y[i0]
    z -= z[i0]

    # coronal curve: half a sine between L4 and T10 centres with the requested Cobb angle
    x = np.zeros_like(ss)
    if abs(scoliosis_cobb_deg) > 0.1:
        sa, sb = centres["L4"], centres["T10"]
        length = sb - sa
        amp = length * math.tan(math.radians(abs(scoliosis_cobb_deg)) / 2) / math.pi
        inside = (ss >= sa) & (ss <= sb)
        x[inside] = math.copysign(amp, scoliosis_cobb_deg) * np.sin(
            math.pi * (ss[inside] - sa) / length
        )

    # rest the back on the table: the most posterior thoracic centre sits min_back_depth in
    thor = (ss > centres["T12"]) & (ss < centres["T2"])
    y_shift = back_y - min_back_depth - y[thor].max()
    xyz = np.stack([x, y + y_shift, z + s1_z], axis=1)

    layout = SpineLayout(s=ss, xyz=xyz)

    def place(level: str, s_c: float, disc_above: float, disc_below: float) -> Placement:
        k = int(np.clip(np.searchsorted(ss, s_c), 1, len(ss) - 2))
        tangent = xyz[k + 1] - xyz[k - 1]
        e_u, e_v, e_w = _frame(tangent)
        c = np.array([np.interp(s_c, ss, xyz[:, i]) for i in range(3)])
        sag = math.degrees(math.atan2(tangent[1], tangent[2]))
        cor = math.degrees(math.atan2(tangent[0], tangent[2]))
        return Placement(level, c, e_u, e_v, e_w, sag, cor, disc_above, disc_below)

    levels = list(SPINE_LEVELS)
    for i, level in enumerate(levels):
        above = discs[levels[i - 1]] if i > 0 else 4.0
        layout.placements[level] = place(level, centres[level], above, discs[level])
    s_c = 0.0
    for name, h, *_ in SACRAL_SEGMENTS:
        s_c -= h / 2
        layout.sacrum.append(place(name, s_c, 0.0, 0.0))
        s_c -= h / 2  # fused: segments touch; their endplates leave vestigial disc lines
    return layout


# --- painting ------------------------------------------------------------------------------


@dataclass
class Grid:
    """Voxel grid of a canonical volume: origin (LPS x, y, z of voxel 0) and spacing (z, y, x)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    @property
    def aa(self) -> float:
        """Anti-aliasing width (mm): the mean voxel edge."""
        return float(sum(self.spacing) / 3.0)


def local_box(
    grid: Grid,
    p: Placement,
    u_rng: tuple[float, float],
    v_rng: tuple[float, float],
    w_rng: tuple[float, float],
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
    """Voxels of *grid* inside the axis-aligned hull of a local-frame box.

    Returns the index slices into the volume and the local coordinates ``u, v, w`` (float32,
    broadcast to the box shape), or None when the box lies outside the volume.
    """
    corners = []
    for uu in u_rng:
        for vv in v_rng:
            for ww in w_rng:
                corners.append(p.centre + uu * p.e_u + vv * p.e_v + ww * p.e_w)
    cs = np.array(corners)
    lo, hi = cs.min(axis=0), cs.max(axis=0)
    ox, oy, oz = grid.origin
    dz, dy, dx = grid.spacing
    nz, ny, nx = grid.shape
    k0, k1 = int(math.floor((lo[2] - oz) / dz)), int(math.ceil((hi[2] - oz) / dz)) + 1
    i0, i1 = int(math.floor((lo[1] - oy) / dy)), int(math.ceil((hi[1] - oy) / dy)) + 1
    j0, j1 = int(math.floor((lo[0] - ox) / dx)), int(math.ceil((hi[0] - ox) / dx)) + 1
    k0, i0, j0 = max(k0, 0), max(i0, 0), max(j0, 0)
    k1, i1, j1 = min(k1, nz), min(i1, ny), min(j1, nx)
    if k0 >= k1 or i0 >= i1 or j0 >= j1:
        return None
    zz = (oz + dz * np.arange(k0, k1, dtype=np.float32) - p.centre[2])[:, None, None]
    yy = (oy + dy * np.arange(i0, i1, dtype=np.float32) - p.centre[1])[None, :, None]
    xx = (ox + dx * np.arange(j0, j1, dtype=np.float32) - p.centre[0])[None, None, :]
    f32 = np.float32
    u = xx * f32(p.e_u[0]) + yy * f32(p.e_u[1]) + zz * f32(p.e_u[2])
    v = xx * f32(p.e_v[0]) + yy * f32(p.e_v[1]) + zz * f32(p.e_v[2])
    w = xx * f32(p.e_w[0]) + yy * f32(p.e_w[1]) + zz * f32(p.e_w[2])
    return (slice(k0, k1), slice(i0, i1), slice(j0, j1)), u, v, w


def composite(
    vol: np.ndarray, sl: tuple[slice, slice, slice], occ: np.ndarray, val: np.ndarray | float
) -> None:
    """Blend *val* into ``vol[sl]`` with occupancy *occ* (0..1), in place."""
    occ = np.broadcast_to(occ, vol[sl].shape)
    if not np.any(occ > 0):
        return
    cur = vol[sl].astype(np.float32)
    out = cur + (np.asarray(val, dtype=np.float32) - cur) * occ
    vol[sl] = np.rint(out).astype(vol.dtype)


def _occ(d: np.ndarray, aa: float) -> np.ndarray:
    return np.clip(d / aa + 0.5, 0.0, 1.0)


def _cross_section_rho(v: np.ndarray, w: np.ndarray, depth: float, width: float) -> np.ndarray:
    """Normalised superellipse radius: round anteriorly, flatter posteriorly (kidney-like)."""
    a, b = depth / 2.0, width / 2.0
    av, aw = np.abs(v) / a, np.abs(w) / b
    p = np.where(v > 0, 3.2, 2.0).astype(np.float32)
    return (av**p + aw**p) ** (1.0 / p)


def endplates(spec: VertebraSpec, v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Superior and inferior endplate heights ``u_top, u_bot`` at local (v, w).

    The height is Ha within a margin of 12 % of the depth at the anterior border, Hp within
    the same margin at the posterior border, linear in between, minus a central concavity
    (a cosine bump inside 72 % of the radius) sized so that the height at the centre is Hm.
    """
    d = spec.depth
    m = 0.12 * d
    ramp = np.clip((v + d / 2 - m) / (d - 2 * m), 0.0, 1.0)
    h_lin = spec.ha + (spec.hp - spec.ha) * ramp
    conc = max((spec.ha + spec.hp) / 2.0 - spec.hm, 0.0)
    r = np.sqrt((v / (d / 2)) ** 2 + (w / (spec.width / 2)) ** 2)
    bump = np.where(r < 0.72, 0.5 * (1 + np.cos(np.pi * r / 0.72)), 0.0)
    # the inferior endplate of a normal body is the deeper one [PALEPU19]; in a fracture the
    # superior endplate carries most of the collapse
    top_share = (
        {"biconcave": 0.55, "crush": 0.7}.get(spec.morph_type, 0.4) if spec.fractured else 0.4
    )
    u_top = h_lin / 2 - top_share * conc * bump
    u_bot = -h_lin / 2 + (1 - top_share) * conc * bump
    return u_top.astype(np.float32), u_bot.astype(np.float32)


def paint_disc(
    vol: np.ndarray,
    grid: Grid,
    upper: tuple[VertebraSpec, Placement],
    lower: tuple[VertebraSpec, Placement],
    height: float,
    vacuum: bool = False,
) -> None:
    """Paint the disc between two bodies (overlapping them; bodies are painted over it)."""
    su, pu = upper
    sl_, pl = lower
    mid = Placement(
        f"{su.level}-{sl_.level}",
        (pu.centre - pu.e_u * su.h_max / 2 + pl.centre + pl.e_u * sl_.h_max / 2) / 2,
        *_frame(pu.e_u + pl.e_u),
        0.0,
        0.0,
        0.0,
        0.0,
    )
    depth = min(su.depth, sl_.depth) * 1.02
    width = min(su.width, sl_.width) * 1.02
    conc = max((su.ha + su.hp) / 2 - su.hm, (sl_.ha + sl_.hp) / 2 - sl_.hm, 0.0)
    half = height / 2 + conc + 2.0
    box = local_box(grid, mid, (-half, half), (-depth / 2, depth / 2), (-width / 2, width / 2))
    if box is None:
        return
    sl, u, v, w = box
    rho = _cross_section_rho(v, w, depth, width)
    d = np.minimum((1 - rho) * min(depth, width) / 2, half - np.abs(u))
    occ = _occ(d, grid.aa)
    # annulus denser than nucleus (ANATOMY 3c: 60-110 HU)
    val = HU["disc"] - 25.0 * np.clip(1 - rho / 0.6, 0, 1)
    composite(vol, sl, occ, val.astype(np.float32))
    if vacuum:
        g = (rho < 0.45) & (np.abs(u) < height * 0.25) & (v < 0)
        composite(vol, sl, g.astype(np.float32), -650.0)


def paint_vertebra(
    vol: np.ndarray,
    grid: Grid,
    spec: VertebraSpec,
    p: Placement,
    trabecular_hu: float,
    rib: bool,
) -> None:
    """Paint body, neural arch, processes, canal (and rib necks for thoracic levels)."""
    aa = grid.aa
    lumbar = spec.level.startswith("L")
    tnum = int(spec.level[1:]) if spec.level.startswith("T") else 0
    d, wd = spec.depth, spec.width
    h = spec.h_max
    cortex = HU["cortex"]

    # spinal canal and cord: spans half the discs above and below so the tube is continuous
    c_ap = 17.0 if lumbar else 15.0
    c_w = 22.0 if lumbar else 16.5
    v_c = d / 2 + c_ap / 2 + 0.5
    ulo, uhi = -(h / 2 + p.disc_below / 2 + 0.6), h / 2 + p.disc_above / 2 + 0.6
    box = local_box(
        grid, p, (ulo, uhi), (d / 2 - 1, v_c + c_ap / 2 + 9), (-c_w / 2 - 9, c_w / 2 + 9)
    )
    if box is not None:
        sl, u, v, w = box
        inband = ((u >= ulo) & (u <= uhi)).astype(np.float32)
        rr = np.sqrt(((v - v_c) / (c_ap / 2)) ** 2 + (w / (c_w / 2)) ** 2)
        # epidural fat lines the canal around the dural sac (CSF)
        composite(vol, sl, _occ((1 - rr) * c_ap / 2, aa) * inband, HU["fat"])
        rd = np.sqrt(((v - v_c + 0.8) / (c_ap / 2 - 1.6)) ** 2 + (w / (c_w / 2 - 1.2)) ** 2)
        composite(vol, sl, _occ((1 - rd) * (c_ap / 2 - 1.6), aa) * inband, HU["csf"])
        if tnum or spec.level in ("L1",):
            rc = np.sqrt((v - v_c + 1) ** 2 + w**2)
            composite(vol, sl, _occ(4.5 - rc, aa) * inband, HU["cord"])
        # neural arch: ring around the canal behind the body (pedicles + laminae)
        ro = np.sqrt(((v - v_c - 1.5) / (c_ap / 2 + 6)) ** 2 + (w / (c_w / 2 + 7)) ** 2)
        arch_u = (u > -0.3 * h) & (u < 0.45 * h)
        ring = np.minimum((1 - ro) * 6.5, (rr - 1) * c_ap / 2)
        ring = np.where(arch_u & (v > d / 2 - 1.5), ring, -5.0)
        occ = _occ(ring, aa)
        val = np.where(ring < 1.2, cortex * 0.85, HU["marrow"] + 60)
        composite(vol, sl, occ, val.astype(np.float32))

    # articular pillars (superior + inferior processes) with a facet-joint gap
    for side in (-1.0, 1.0):
        wc = side * (c_w / 2 + 5.0)
        vcp = v_c + 3.0
        lo, hi = -(h / 2 + 0.42 * p.disc_below), h / 2 + 0.42 * p.disc_above
        box = local_box(grid, p, (lo, hi), (vcp - 6, vcp + 6), (wc - 6, wc + 6))
        if box is None:
            continue
        sl, u, v, w = box
        rp = np.sqrt((v - vcp) ** 2 + (w - wc) ** 2)
        dd = np.minimum(5.0 - rp, np.minimum(u - lo, hi - u))
        val = np.where(dd < 1.0, cortex * 0.8, HU["marrow"] + 60).astype(np.float32)
        composite(vol, sl, _occ(dd, aa), val)

    # spinous process: a blade running posteriorly and (in the mid thorax steeply) downward
    if lumbar:
        ang, length, hh, hw = 8.0, 28.0, 8.0, 3.5
    elif 5 <= tnum <= 9:
        ang, length, hh, hw = 55.0, 34.0, 3.4, 3.0
    else:
        ang, length, hh, hw = 35.0, 30.0, 3.8, 3.0
    v0, u0 = v_c + c_ap / 2 + 5.0, 0.05 * h
    ca, sa = math.cos(math.radians(ang)), math.sin(math.radians(ang))
    box = local_box(
        grid,
        p,
        (u0 - length * sa - hh - 2, u0 + hh + 2),
        (v0 - 3, v0 + length * ca + hh + 2),
        (-hw - 1, hw + 1),
    )
    if box is not None:
        sl, u, v, w = box
        along = (v - v0) * ca - (u - u0) * sa
        perp = (v - v0) * sa + (u - u0) * ca
        taper = hh * (1 - 0.35 * np.clip(along / length, 0, 1))
        dd = np.minimum(
            np.minimum(along + 3, length - along), np.minimum(taper - np.abs(perp), hw - np.abs(w))
        )
        val = np.where(dd < 1.2, cortex * 0.8, HU["marrow"] + 40).astype(np.float32)
        composite(vol, sl, _occ(dd, aa), val)

    # transverse processes (+ rib necks in the thorax: head at the body, tubercle at the tip)
    if lumbar:
        tp_len = {"L1": 16.0, "L2": 22.0, "L3": 28.0, "L4": 24.0, "L5": 20.0}[spec.level]
        tip_dv, r_tp = 2.0, 4.5
    else:
        tp_len, tip_dv, r_tp = 20.0 + 0.3 * tnum, 14.0, 5.0
    for side in (-1.0, 1.0):
        a = np.array([v_c, side * (c_w / 2 + 6.0)])
        b = np.array([v_c + tip_dv, side * (wd / 2 + tp_len)])
        segs = [(a, b, r_tp, 0.1 * h)]
        if rib and tnum:
            segs.append((np.array([d / 2 - 5.0, side * (wd / 2 - 2.0)]), b, 5.5, 0.35 * h))
        for a_, b_, r_, uc in segs:
            lo_v, hi_v = min(a_[0], b_[0]) - r_ - 1, max(a_[0], b_[0]) + r_ + 1
            lo_w, hi_w = min(a_[1], b_[1]) - r_ - 1, max(a_[1], b_[1]) + r_ + 1
            box = local_box(
                grid, p, (uc - r_ * 1.6 - 1, uc + r_ * 1.6 + 1), (lo_v, hi_v), (lo_w, hi_w)
            )
            if box is None:
                continue
            sl, u, v, w = box
            ab = b_ - a_
            t = np.clip(((v - a_[0]) * ab[0] + (w - a_[1]) * ab[1]) / float(ab @ ab), 0, 1)
            dv, dw = v - (a_[0] + t * ab[0]), w - (a_[1] + t * ab[1])
            rr = np.sqrt(dv**2 + dw**2 + ((u - uc) / 1.5) ** 2)
            dd = r_ - rr
            val = np.where(dd < 1.1, cortex * 0.8, HU["marrow"] + 30).astype(np.float32)
            composite(vol, sl, _occ(dd, aa), val)

    paint_body(vol, grid, spec, p, trabecular_hu)


def paint_body(
    vol: np.ndarray, grid: Grid, spec: VertebraSpec, p: Placement, trabecular_hu: float
) -> None:
    """Paint the vertebral body: cortical shell, endplates, trabecular core, osteophytes."""
    aa = grid.aa
    d, wd, h = spec.depth, spec.width, spec.h_max
    ost = spec.osteophyte_mm
    box = local_box(
        grid,
        p,
        (-h / 2 - ost - 1.5, h / 2 + ost + 1.5),
        (-d / 2 - ost - 1.5, d / 2 + 1.5),
        (-wd / 2 - ost - 1.5, wd / 2 + ost + 1.5),
    )
    if box is None:
        return
    sl, u, v, w = box
    # anterior/lateral walls are waisted (concave) between the endplate rims
    waist = 1.0 - 0.05 * np.clip(1.0 - (2.0 * u / h) ** 2, 0.0, 1.0) * (v < 0)
    rho = _cross_section_rho(v / waist, w / waist, d, wd)
    u_top, u_bot = endplates(spec, v, w)
    d_rad = (1.0 - rho) * min(d, wd) / 2.0
    d_u = np.minimum(u_top - u, u - u_bot)
    # rounded rims: where wall and endplate meet, distance to a 1.5 mm quarter circle
    rc = 1.5
    corner = (d_rad < rc) & (d_u < rc)
    dist = np.minimum(d_rad, d_u)
    dist = np.where(corner, rc - np.sqrt((rc - d_rad) ** 2 + (rc - d_u) ** 2), dist)
    occ = _occ(dist, aa)
    # shell: cortex ~0.9 mm, endplates slightly thicker
    t_wall, t_end = 0.9, 1.1
    shell = np.maximum(_occ(t_wall - d_rad, aa), _occ(t_end - d_u, aa))
    trab = np.float32(trabecular_hu)
    # basivertebral vein: a low-density cleft at the posterior mid-body
    bv = (np.abs(u) < 2.0) & (v > d / 2 - 7) & (np.abs(w) < 2.5)
    core = np.where(bv, trab - 70.0, trab).astype(np.float32)
    core += trabecular_texture(u, v, w, spec.level, trabecular_hu)
    if spec.fractured:
        core = core + np.float32(25.0 * spec.genant_grade)  # trabecular compaction
    val = core + (np.float32(HU["cortex"] * 0.75) - core) * shell
    composite(vol, sl, occ, val)
    if ost > 0:
        # osteophytes: beaks from the anterior/lateral rims, growing outward and toward the disc
        out = (rho - 1.0) * min(d, wd) / 2.0  # mm outside the wall
        for sign, u_e in ((1.0, u_top), (-1.0, u_bot)):
            du = (u - u_e) * sign  # mm beyond the endplate (into the disc)
            lip = (
                (out > -0.3)
                & (out < ost)
                & (du > -2.5 + 0.9 * out)
                & (du < 0.4 + 0.8 * out)
                & (v < d / 4)
            )
            composite(vol, sl, lip.astype(np.float32), np.float32(HU["cortex"] * 0.55))


def trabecular_texture(
    u: np.ndarray, v: np.ndarray, w: np.ndarray, level: str, hu: float
) -> np.ndarray:
    """Zero-mean mottled texture of cancellous bone (SD ~15 HU), deterministic per vertebra.

    A sum of a few plane waves of 3-6 mm wavelength; in low-density bone the waves run
    mostly horizontally, leaving vertical striations (loss of horizontal trabeculae).
    """
    rng = np.random.default_rng(zlib.crc32(f"{level}:{hu:.1f}".encode()))
    vertical = hu < 130
    out = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=np.float32)
    n = 5
    for _ in range(n):
        k = 2 * np.pi / rng.uniform(3.0, 6.0)
        theta = rng.uniform(0, 2 * np.pi)
        tilt = rng.uniform(-0.25, 0.25) if vertical else rng.uniform(-1.0, 1.0)
        ku, kv, kw = k * tilt, k * np.cos(theta), k * np.sin(theta)
        out += np.sin(ku * u + kv * v + kw * w + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return out * np.float32(15.0 / np.sqrt(n / 2))


def paint_sacral_segment(
    vol: np.ndarray,
    grid: Grid,
    p: Placement,
    height: float,
    depth: float,
    width: float,
    ala: float,
    trabecular_hu: float,
) -> None:
    """Paint one fused sacral segment with its alae and the sacral canal."""
    aa = grid.aa
    spec = VertebraSpec(
        p.level,
        height,
        height * 0.95,
        height,
        height,
        height * 0.95,
        height,
        depth,
        width,
        trabecular_hu,
    )
    half = height / 2 + 1.0
    span = max(ala, width / 2) + 2
    box = local_box(grid, p, (-half, half), (-depth / 2 - 2, depth / 2 + 22), (-span, span))
    if box is None:
        return
    sl, u, v, w = box
    if ala > 0:
        # alae: wedge-shaped wings from the body to the sacro-iliac joints
        aw = np.abs(w)
        taper = 1.0 - 0.55 * np.clip((aw - width / 4) / max(ala - width / 4, 1.0), 0, 1)
        wing = np.minimum(
            np.minimum(ala - aw, (half - 1.5) * taper - np.abs(u)),
            np.minimum(v + depth / 3, depth / 2 + 6 - v),
        )
        wing = np.where(aw > width / 4, wing, -5.0)
        val = np.where(wing < 1.2, HU["cortex"] * 0.7, HU["marrow"] + 20).astype(np.float32)
        composite(vol, sl, _occ(wing, aa), val)
    # sacral canal (triangular-ish, behind the body) and the dorsal roof
    vc = depth / 2 + 6.0
    rr = np.sqrt(((v - vc) / 5.0) ** 2 + (w / (width * 0.3)) ** 2)
    roof = (
        np.minimum(1.0 - np.sqrt(((v - vc) / 11.0) ** 2 + (w / (width * 0.45)) ** 2), rr - 1.0)
        * 5.0
    )
    roof = np.minimum(roof, half - 2 - np.abs(u))
    val = np.where(roof < 1.1, HU["cortex"] * 0.7, HU["marrow"] + 20).astype(np.float32)
    composite(vol, sl, _occ(roof, aa), val)
    composite(vol, sl, _occ((1 - rr) * 5.0, aa) * (np.abs(u) < half), HU["csf"])
    paint_body(vol, grid, spec, p, trabecular_hu)
