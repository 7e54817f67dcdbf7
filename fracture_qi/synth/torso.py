"""Soft tissue, organs, ribs, pelvis and the scanner table, painted one axial slice at a time.

Every structure is placed relative to the spine (its levels give the landmarks: lung apex
above T1, diaphragm domes near T10, kidneys T12-L3, iliac crest at L4, femoral heads below
S1) so the anatomy stays coherent whatever the patient's size and curvature. Shapes are
evaluated on a window around each structure only; the whole-slice work is the body outline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fracture_qi.synth.priors import CONTRAST_HU, HU
from fracture_qi.synth.spine import SpineLayout


@dataclass
class TorsoSpec:
    """Body habitus of a patient (mm)."""

    ap_chest: float
    ap_abdomen: float
    ap_pelvis: float
    half_width_chest: float
    half_width_abdomen: float
    half_width_pelvis: float
    fat_mm: float
    muscle_mm: float
    table_y: float = 130.0  # LPS y of the table top (the back rests on it)


@dataclass
class BowelLoop:
    """A bowel segment crossing the abdomen: normalised position, radius, content."""

    fx: float  # -1..1 across the abdominal cavity (patient right..left)
    fy: float  # -1..1 anterior..posterior
    z_frac: float  # 0 = pelvic floor, 1 = diaphragm
    radius: float
    length: float
    content: str  # gas | fluid | stool


def make_bowel(rng: np.random.Generator, n: int = 40) -> list[BowelLoop]:
    """Random bowel loops: colon at the flanks and across the top, small bowel centrally."""
    loops: list[BowelLoop] = []
    for _ in range(n):
        kind = rng.choice(["small", "colon"], p=[0.6, 0.4])
        if kind == "colon":
            side = rng.choice([-1.0, 1.0, 0.0], p=[0.35, 0.35, 0.3])
            if side == 0.0:  # transverse colon: anterior, upper abdomen
                fx, fy, zf = rng.uniform(-0.6, 0.6), rng.uniform(-0.8, -0.5), rng.uniform(0.55, 0.7)
            else:
                fx, fy, zf = (
                    side * rng.uniform(0.6, 0.8),
                    rng.uniform(-0.2, 0.3),
                    rng.uniform(0.2, 0.65),
                )
            content = str(rng.choice(["gas", "stool", "fluid"], p=[0.4, 0.45, 0.15]))
            radius = rng.uniform(14, 24)
        else:
            fx, fy, zf = rng.uniform(-0.5, 0.5), rng.uniform(-0.7, 0.2), rng.uniform(0.1, 0.55)
            content = str(rng.choice(["fluid", "gas"], p=[0.8, 0.2]))
            radius = rng.uniform(9, 15)
        loops.append(BowelLoop(fx, fy, zf, radius, rng.uniform(25, 70), content))
    return loops


def _win(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, rx: float, ry: float):
    j0 = int(np.searchsorted(xs, cx - rx))
    j1 = int(np.searchsorted(xs, cx + rx))
    i0 = int(np.searchsorted(ys, cy - ry))
    i1 = int(np.searchsorted(ys, cy + ry))
    if j0 >= j1 or i0 >= i1:
        return None
    return slice(i0, i1), slice(j0, j1)


def ellipse(
    img: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    aa: float,
    cx: float,
    cy: float,
    ax: float,
    ay: float,
    value: float | np.ndarray,
    mask: np.ndarray | None = None,
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Blend an anti-aliased ellipse into *img*; returns (window, occupancy) or None."""
    if ax <= 0 or ay <= 0:
        return None
    w = _win(xs, ys, cx, cy, ax + aa, ay + aa)
    if w is None:
        return None
    ii, jj = w
    dx = ((xs[jj] - cx) / ax)[None, :]
    dy = ((ys[ii] - cy) / ay)[:, None]
    rho = np.sqrt(dx * dx + dy * dy)
    occ = np.clip((1.0 - rho) * min(ax, ay) / aa + 0.5, 0.0, 1.0)
    if mask is not None:
        occ = occ * mask[ii, jj]
    sub = img[ii, jj]
    val = value[ii, jj] if isinstance(value, np.ndarray) and value.shape == img.shape else value
    sub += (val - sub) * occ
    return w, occ


def _outline(xs: np.ndarray, ys: np.ndarray, a: float, b: float, cy: float) -> np.ndarray:
    """Mask of the body outline centred on x = 0: elliptic in front, flat-backed behind.

    Computed from per-column extents (cheap): anterior half-ellipse, posterior
    superellipse of exponent 4 (the back is flattened against the table).
    """
    if a <= 0 or b <= 0:
        return np.zeros((len(ys), len(xs)), dtype=bool)
    q = np.clip(np.abs(xs) / a, 0.0, 1.0)
    q2 = q * q
    y_lo = cy - b * np.sqrt(1.0 - q2)
    y_hi = cy + b * np.sqrt(np.sqrt(1.0 - q2 * q2))
    inside = (np.abs(xs) <= a)[None, :]
    yy = ys[:, None]
    return (yy >= y_lo[None, :]) & (yy <= y_hi[None, :]) & inside


@dataclass
class Landmarks:
    """Cranio-caudal landmarks (LPS z, mm) taken from the spine layout."""

    apex: float
    dome_r: float
    dome_l: float
    recess: float
    t4: float
    t8: float
    t10: float
    t12: float
    l1: float
    l2: float
    l3: float
    l4: float
    s1: float
    crest: float
    femoral_head: float
    pelvic_floor: float

    @classmethod
    def from_layout(cls, lay: SpineLayout) -> Landmarks:
        z = lay.level_z
        fh = z("S3") - 45.0
        return cls(
            apex=z("T1") + 28.0,
            dome_r=z("T10") + 8.0,
            dome_l=z("T10") - 6.0,
            recess=z("L1") + 5.0,
            t4=z("T4"),
            t8=z("T8"),
            t10=z("T10"),
            t12=z("T12"),
            l1=z("L1"),
            l2=z("L2"),
            l3=z("L3"),
            l4=z("L4"),
            s1=z("S1"),
            crest=z("L4") + 8.0,
            femoral_head=fh,
            pelvic_floor=fh - 55.0,
        )


def body_habitus(t: TorsoSpec, lm: Landmarks, z: float) -> tuple[float, float]:
    """(AP depth, half width) of the body at height *z*: chest, waist, hips, interpolated."""
    zs = [lm.pelvic_floor - 80, lm.femoral_head, lm.crest, lm.l2, lm.t10, lm.t8, lm.apex]
    ap = [
        t.ap_pelvis * 0.95,
        t.ap_pelvis,
        t.ap_abdomen * 0.97,
        t.ap_abdomen,
        t.ap_chest * 1.02,
        t.ap_chest,
        t.ap_chest * 0.8,
    ]
    hw = [
        t.half_width_pelvis * 1.05,
        t.half_width_pelvis,
        t.half_width_abdomen * 1.03,
        t.half_width_abdomen,
        t.half_width_chest,
        t.half_width_chest,
        t.half_width_chest * 1.05,
    ]
    return float(np.interp(z, zs, ap)), float(np.interp(z, zs, hw))


class TorsoPainter:
    """Paints the torso of one patient into axial slices.

    Parameters
    ----------
    torso
        Body habitus.
    layout
        Spine layout (gives the landmarks and the spine position at each height).
    widths
        Vertebral body (depth, width) at each level's centre z, for the paravertebral shapes.
    contrast
        ``none``, ``arterial`` or ``portal_venous``.
    rng
        Source of the patient's bowel pattern (deterministic per patient).
    """

    def __init__(
        self,
        torso: TorsoSpec,
        layout: SpineLayout,
        widths: tuple[np.ndarray, np.ndarray, np.ndarray],
        contrast: str,
        rng: np.random.Generator,
    ) -> None:
        self.t = torso
        self.lay = layout
        self.lm = Landmarks.from_layout(layout)
        self.zw, self.dep, self.wid = widths
        self.contrast = contrast
        self.bowel = make_bowel(rng)
        self.hu = dict(HU)
        if contrast in CONTRAST_HU:
            self.hu.update(CONTRAST_HU[contrast])
        self.rib_heads = {k: layout.placements[f"T{k}"].centre[2] + 0.3 * 10 for k in range(1, 13)}

    def habitus(self, z: float) -> tuple[float, float]:
        """(AP depth, half width) of the body at height z."""
        return body_habitus(self.t, self.lm, z)

    def table_slice(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Air plus the curved carbon-fibre table (thin dense skins, foam core, mattress).

        The table is the same in every slice, so it is drawn once per grid and copied.
        """
        key = (len(xs), len(ys), float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1]))
        if getattr(self, "_table_key", None) == key:
            return self._table
        img = np.full((len(ys), len(xs)), HU["air"], dtype=np.float32)
        ty = self.t.table_y
        yy = ys[:, None]
        xx = xs[None, :]
        top = ty + 4.0 - 0.00035 * xx**2  # cradle: edges curve up toward the patient
        inside_w = np.abs(xx) < 230
        depth = yy - top
        img[(depth >= -4.0) & (depth < 0.0) & inside_w] = -820.0  # mattress
        slab = (depth >= 0) & (depth < 22.0) & inside_w
        img[slab] = HU["table_core"]
        img[slab & ((depth < 2.0) | (depth >= 20.0))] = HU["table_shell"]
        self._table_key, self._table = key, img
        return img

    def paint(self, img: np.ndarray, xs: np.ndarray, ys: np.ndarray, z: float, aa: float) -> None:
        """Paint everything but the vertebrae into the float32 slice *img* (overwritten)."""
        lm, t, hu = self.lm, self.t, self.hu
        img[...] = self.table_slice(xs, ys)
        if z > lm.apex + 60:  # neck/shoulder girdle above the chest: out of our scope
            return
        ap, hw = self.habitus(z)
        back = t.table_y
        front = back - ap
        yc = (front + back) / 2
        sx, sy = self.lay.at_z(z)
        sx, sy = float(sx), float(sy)
        dep = float(np.interp(z, self.zw, self.dep))
        wid = float(np.interp(z, self.zw, self.wid))
        bw = _win(xs, ys, 0.0, yc, hw + 2 * aa, ap / 2 + 2 * aa)
        if bw is None:
            return
        bimg, bxs, bys = img[bw], xs[bw[1]], ys[bw[0]]

        fat = t.fat_mm * (0.7 if z > lm.t12 else 1.0)
        pelvis = z < lm.crest
        muscle = t.muscle_mm + (25.0 if pelvis and z > lm.pelvic_floor - 20 else 0.0)
        bimg[_outline(bxs, bys, hw, ap / 2, yc)] = HU["fat"]
        bimg[_outline(bxs, bys, hw - fat, ap / 2 - fat, yc)] = hu["muscle"]

        # cavity: anterior wall inside the muscle, posterior wall at the transverse processes
        cav_front = front + fat + muscle + 4.0
        thorax = z > lm.recess - 30
        # posterior wall: thin laterally (ribs/muscle), the paraspinal muscles are cut out below
        cav_back = back - fat - muscle - (10.0 if thorax else 18.0)
        if pelvis:
            cav_back = sy + dep / 2 - 2.0
        cav_yc = (cav_front + cav_back) / 2
        cav_ay = (cav_back - cav_front) / 2
        cav_ax = hw - fat - muscle - (6.0 if thorax else 0.0)
        cav_x = sx * 0.3
        if cav_ay > 10 and cav_ax > 10:
            cw = _win(bxs, bys, cav_x, cav_yc, cav_ax, cav_ay)
            if cw is not None:
                cimg, cxs, cys = bimg[cw], bxs[cw[1]], bys[cw[0]]
                dyn = (cys - cav_yc) / cav_ay
                r2 = (dyn * dyn)[:, None] + (((cxs - cav_x) / cav_ax) ** 2)[None, :]
                # the spine and its muscles indent the cavity from behind
                adx = np.abs(cxs - sx)[None, :]
                para_w = wid / 2 + (32.0 if thorax else 50.0)  # erector spinae (+ quadratus)
                y_pm = sy + dep / 2 + 2.0  # front of the paraspinal muscles
                pm_depth = max(back - y_pm, 1.0)
                pm = (adx / para_w) ** 2 + (np.clip(back - cys, 0, None) / pm_depth)[
                    :, None
                ] ** 2 < 1.0
                spine_cut = ((adx < wid / 2 + 5.0) & (cys > sy + 0.1 * dep)[:, None]) | (
                    pm & (cys > y_pm)[:, None]
                )
                cav = (r2 <= 1.0) & ~spine_cut
                cimg[cav] = HU["fat"]
                # diaphragm: dome-shaped surface; peripheral/posterior recesses reach ~T12/L1
                dome = np.where(cxs < sx, lm.dome_r, lm.dome_l).astype(np.float32)
                post = (0.6 + 0.4 * np.clip(dyn, 0, 1)).astype(np.float32)
                z_diaph = (
                    dome[None, :] - (lm.dome_r - lm.recess) * np.minimum(r2, 1.0) * post[:, None]
                )
                above = z >= z_diaph
                chest = cav & above
                abdo = cav & ~above
                if chest.any():
                    self._paint_chest(
                        cimg,
                        cxs,
                        cys,
                        z,
                        aa,
                        chest,
                        sx,
                        sy,
                        dep,
                        wid,
                        front,
                        cav_yc,
                        cav_ay,
                        cav_ax,
                        r2,
                    )
                if abdo.any():
                    self._paint_abdomen(
                        cimg,
                        cxs,
                        cys,
                        z,
                        aa,
                        abdo,
                        sx,
                        sy,
                        dep,
                        wid,
                        front,
                        back,
                        cav_yc,
                        cav_ay,
                        cav_ax,
                        hw,
                    )
            if z > lm.t12 - 20:
                self._paint_ribs(
                    bimg,
                    bxs,
                    bys,
                    z,
                    aa,
                    sx,
                    sy,
                    dep,
                    wid,
                    cav_yc,
                    cav_ay,
                    cav_ax,
                    front,
                    fat,
                    muscle,
                )
        self._paint_vessels(bimg, bxs, bys, z, aa, sx, sy, dep, front)
        if pelvis:
            self._paint_pelvis(bimg, bxs, bys, z, aa, sx, sy, dep, front, hw, fat)

    # -- thorax ------------------------------------------------------------------------
    def _paint_chest(self, img, xs, ys, z, aa, chest, sx, sy, dep, wid, front, cyc, cay, cax, r2):
        lm, hu = self.lm, self.hu
        # lungs: the cavity minus mediastinum and paravertebral tissue, below the apex dome
        med_hw = 28.0 + 22.0 * math.exp(-(((z - lm.t8) / 50.0) ** 2))
        yfrac = np.clip((ys - (cyc - cay)) / (2 * cay), 0, 1)
        ant_w = med_hw * (0.6 + 0.4 * yfrac)
        mediast = (np.abs(xs - (sx + 6.0))[None, :] < ant_w[:, None]) & (ys < sy + dep / 2)[:, None]
        para = (((xs - sx) / (wid / 2 + 12.0)) ** 2)[None, :] + (
            ((ys - sy) / (dep / 2 + 14.0)) ** 2
        )[:, None] < 1.0
        lung = chest & ~mediast & ~para & (z < lm.apex - 30.0 * r2)
        # gravity gradient: dependent (posterior) lung denser (ANATOMY 3c)
        lung_hu = (HU["lung"] + 80.0 * yfrac**2).astype(np.float32)
        np.copyto(img, np.broadcast_to(lung_hu[:, None], img.shape), where=lung)
        img[chest & ~lung & (img < -200)] = -70.0  # mediastinal fat / apices
        # heart: ellipsoid anterior-left on the diaphragm
        hz = (lm.t8 + lm.t10) / 2
        f = 1 - ((z - hz) / 62.0) ** 2
        if f > 0:
            s = math.sqrt(f)
            hx, hy = sx + 30.0, front + 0.22 * (2 * cay) + 55.0
            ellipse(img, xs, ys, aa, hx, hy, 62 * s, 48 * s, hu["muscle"] + 5, mask=None)
            ellipse(img, xs, ys, aa, hx - 4, hy - 2, 47 * s, 34 * s, hu["blood"])
        # sternum
        if lm.t10 - 10 < z < lm.t4 + 40:
            stx, sty = 0.0, cyc - cay + 2.0
            ellipse(img, xs, ys, aa, stx, sty, 17, 7, HU["cortex"] * 0.6)
            ellipse(img, xs, ys, aa, stx, sty, 14, 4.5, HU["marrow"])

    # -- abdomen -----------------------------------------------------------------------
    def _paint_abdomen(
        self, img, xs, ys, z, aa, abdo, sx, sy, dep, wid, front, back, cyc, cay, cax, hw
    ):
        lm, hu = self.lm, self.hu
        m = abdo.astype(np.float32)
        # bowel loops (behind the organs, which overwrite them)
        zf = (z - lm.pelvic_floor) / max(lm.dome_r - lm.pelvic_floor, 1.0)
        span = lm.dome_r - lm.pelvic_floor
        for b in self.bowel:
            dz = (zf - b.z_frac) * span
            if abs(dz) > b.length / 2 + b.radius:
                continue
            r = b.radius * math.sqrt(max(0.0, 1 - (max(abs(dz) - b.length / 2, 0) / b.radius) ** 2))
            if r < 2:
                continue
            # loops meander: the centre drifts with height
            bx = b.fx * cax * 0.85 + 12 * math.sin(dz / 18.0 + b.fx * 5)
            by = cyc + b.fy * cay * 0.8 + 10 * math.cos(dz / 22.0 + b.fy * 3)
            ellipse(img, xs, ys, aa, bx, by, r, r * 0.9, HU["bowel_wall"], mask=m)
            inner = {"gas": HU["gas"], "fluid": 12.0, "stool": -120.0}[b.content]
            ellipse(img, xs, ys, aa, bx, by, r - 2.5, r * 0.9 - 2.5, inner, mask=m)
        # liver: right upper quadrant up under the dome, down to ~L2-L3
        if z > lm.l3 - 10:
            f = np.clip((z - (lm.l3 - 10)) / (lm.dome_r - lm.l3), 0, 1) ** 0.4
            ellipse(
                img,
                xs,
                ys,
                aa,
                sx - 0.30 * cax,
                cyc - 0.05 * cay,
                0.72 * cax * f,
                0.9 * cay * f,
                hu["liver"],
                mask=m,
            )
        # spleen
        zc, hz = (lm.t10 + lm.t12) / 2, 50.0
        f = 1 - ((z - zc) / hz) ** 2
        if f > 0:
            s = math.sqrt(f)
            ellipse(
                img,
                xs,
                ys,
                aa,
                sx + 0.68 * cax,
                cyc + 0.45 * cay,
                28 * s,
                45 * s,
                hu["spleen"],
                mask=m,
            )
        # stomach with an air-fluid level (gas anterior: the patient is supine)
        zc = (lm.t12 + lm.t10) / 2 - 10
        f = 1 - ((z - zc) / 45.0) ** 2
        if f > 0:
            s = math.sqrt(f)
            gx, gy = sx + 0.38 * cax, cyc - 0.35 * cay
            ellipse(img, xs, ys, aa, gx, gy, 48 * s, 36 * s, HU["bowel_wall"], mask=m)
            res = ellipse(img, xs, ys, aa, gx, gy, 45 * s, 33 * s, 15.0, mask=m)
            if res is not None:
                (ii, jj), occ = res
                gas = (ys[ii] < gy - 8)[:, None] & (occ > 0.5)
                img[ii, jj][gas] = HU["gas"]
        # kidneys (retroperitoneal, lateral to psoas; the right lower), with sinus fat
        for side, zc in ((-1.0, (lm.l1 + lm.l2) / 2 - 8), (1.0, (lm.l1 + lm.l2) / 2 + 8)):
            f = 1 - ((z - zc) / 55.0) ** 2
            if f <= 0:
                continue
            s = math.sqrt(f)
            kx, ky = sx + side * (wid / 2 + 40.0), sy + 8.0
            ellipse(img, xs, ys, aa, kx, ky, 26 * s, 30 * s, hu["kidney"])
            ellipse(img, xs, ys, aa, kx - side * 10 * s, ky - 4, 10 * s, 12 * s, HU["fat"])
        # psoas: from T12 down to the pelvis, growing caudally
        if lm.femoral_head < z < lm.t12:
            g = np.clip((lm.t12 - z) / max(lm.t12 - lm.l4, 1), 0, 1)
            r = 7 + 17 * g
            lat = wid / 2 + r - 2
            down = np.clip((lm.s1 - z) / 60.0, 0, 1)
            for side in (-1.0, 1.0):
                px = sx + side * (lat + 25 * down)
                py = sy - 2 - 35 * down
                ellipse(img, xs, ys, aa, px, py, r, r * 0.95, hu["muscle"] - 5)
        # bladder
        f = 1 - ((z - (lm.femoral_head + 10)) / 40.0) ** 2
        if f > 0:
            s = math.sqrt(f)
            ellipse(img, xs, ys, aa, 0.0, front + 55, 48 * s, 36 * s, HU["bladder"], mask=m)

    # -- vessels -------------------------------------------------------------------------
    def _paint_vessels(self, img, xs, ys, z, aa, sx, sy, dep, front):
        lm, hu = self.lm, self.hu
        blood = hu["blood"]
        if lm.l4 < z < lm.t4:
            r = 11.0 if z < lm.t12 else 12.5
            ellipse(img, xs, ys, aa, sx + 15.0, sy - dep / 2 - r - 1.5, r, r, blood)
        elif lm.s1 - 30 < z <= lm.l4:  # common iliac arteries diverging
            t = (lm.l4 - z) / (lm.l4 - lm.s1 + 30)
            for side in (-1.0, 1.0):
                ellipse(
                    img,
                    xs,
                    ys,
                    aa,
                    sx + 15.0 * (1 - t) + side * 40 * t,
                    sy - dep / 2 - 10,
                    6.5,
                    6.5,
                    blood,
                )
        if lm.t4 - 5 < z < lm.t4 + 15:  # aortic arch sweeping from front to back
            for t in np.linspace(0, 1, 9):
                ax_ = sx + 5 + 10 * t
                ay_ = (front + 70) * (1 - t) + (sy - 24) * t
                ellipse(img, xs, ys, aa, ax_, ay_, 12, 12, blood)
        if lm.t8 < z < lm.t4:  # ascending aorta above the heart
            ellipse(img, xs, ys, aa, sx + 2, front + 70, 15, 15, blood)
        if lm.s1 < z < lm.t12 + 10:  # IVC
            ellipse(img, xs, ys, aa, sx - 22.0, sy - dep / 2 - 12, 12, 9, hu["blood"] * 0.9)

    # -- ribs --------------------------------------------------------------------------
    def _paint_ribs(self, img, xs, ys, z, aa, sx, sy, dep, wid, cyc, cay, cax, front, fat, muscle):
        rib_drop = {
            1: 25,
            2: 55,
            3: 70,
            4: 80,
            5: 85,
            6: 90,
            7: 90,
            8: 90,
            9: 85,
            10: 75,
            11: 45,
            12: 30,
        }
        rib_end = {
            1: 150,
            2: 158,
            3: 160,
            4: 160,
            5: 160,
            6: 158,
            7: 155,
            8: 145,
            9: 135,
            10: 122,
            11: 100,
            12: 78,
        }
        cand = [k for k, zh in self.rib_heads.items() if zh - rib_drop[k] - 10 < z < zh + 10]
        if not cand:
            return
        # ring just inside the muscle wall; posteriorly it reaches the transverse processes.
        # Only the pixels of that thin ring are examined (angles are costly).
        ax_, ay_ = cax + 4.0, cay + 4.0
        cx = sx * 0.3
        dxn = (xs - cx) / ax_
        dyn = (ys - cyc) / ay_
        r = np.sqrt((dyn * dyn)[:, None] + (dxn * dxn)[None, :])
        rad_mm = (r - 1.0) * ((ax_ + ay_) / 2)
        ii, jj = np.nonzero(np.abs(rad_mm) < 4.0)
        if ii.size == 0:
            return
        rm = np.abs(rad_mm[ii, jj])
        dx = xs[jj] - cx
        dy = ys[ii] - cyc
        psi = np.degrees(np.arctan2(np.abs(dx), dy))  # 0 = posterior midline, 180 = anterior
        t = np.clip((psi - 22.0) / (180.0 - 22.0), 0, None)
        t15 = t * np.sqrt(t)
        for k in cand:
            dz = np.abs(z - (self.rib_heads[k] - rib_drop[k] * t15))
            band = (psi > 22.0) & (psi < rib_end[k]) & (dz < 5.5)
            if band.any():
                shell = (dz > 4.3) | (rm > 2.8)
                img[ii[band], jj[band]] = np.where(shell[band], HU["cortex"] * 0.75, HU["marrow"])
            if k <= 7:  # costal cartilage to the sternum, calcifying with age
                cart = (psi >= rib_end[k]) & (psi < 176) & (dz < 5.0)
                img[ii[cart], jj[cart]] = 140.0

    # -- pelvis --------------------------------------------------------------------------
    def _paint_pelvis(self, img, xs, ys, z, aa, sx, sy, dep, front, hw, fat):
        lm = self.lm
        cort, marrow = HU["cortex"] * 0.8, HU["marrow"]
        fh = lm.femoral_head
        fhx = hw - fat - 55.0
        fhy = front + 0.45 * (self.t.table_y - front)
        # iliac wings: gently curved plates from the sacro-iliac joint to the anterior superior
        # spine, concave medially; only the lateral crest shows at the top, the anterior
        # part recedes toward the acetabulum below
        ap = self.t.table_y - front
        if fh + 20 < z < lm.crest:
            g = float(np.clip((lm.crest - z) / (lm.crest - fh - 20), 0, 1))
            thick = 6.0 + 16.0 * g**2
            t_lo = 0.4 * max(0.0, 1 - g / 0.3)
            t_hi = 1.0 - 0.4 * max(0.0, 1 - g / 0.3) - 0.55 * max(0.0, (g - 0.65) / 0.35)
            for side in (-1.0, 1.0):
                P = np.array([sx + side * 45.0, sy + 15.0])
                A = np.array(
                    [side * (hw - fat - 22.0) * (1 - 0.25 * g), front + 0.32 * ap + 25 * g]
                )
                chord = A - P
                L = float(np.hypot(*chord))
                n = np.array([-chord[1], chord[0]]) / L
                if n[0] * side > 0:
                    n = -n  # centre of curvature toward the midline
                R = 1.1 * L
                C = (P + A) / 2 + n * math.sqrt(max(R * R - (L / 2) ** 2, 1.0))
                a0 = math.atan2(P[1] - C[1], P[0] - C[0])
                a1 = math.atan2(A[1] - C[1], A[0] - C[0])
                span = math.atan2(math.sin(a1 - a0), math.cos(a1 - a0))
                b0, b1 = a0 + span * t_lo, a0 + span * t_hi
                bmid = math.atan2(math.sin(b0) + math.sin(b1), math.cos(b0) + math.cos(b1))
                half = abs(b1 - b0) / 2
                mid = C + R * np.array([math.cos(bmid), math.sin(bmid)])
                w = _win(
                    xs,
                    ys,
                    mid[0],
                    mid[1],
                    R * math.sin(half) + thick + 5,
                    R * math.sin(half) + thick + 5,
                )
                if w is None or half <= 0:
                    continue
                ii, jj = w
                ddx = xs[jj][None, :] - C[0]
                ddy = ys[ii][:, None] - C[1]
                dist = np.sqrt(ddx**2 + ddy**2)
                dang = np.abs(
                    np.arctan2(
                        np.sin(np.arctan2(ddy, ddx) - bmid), np.cos(np.arctan2(ddy, ddx) - bmid)
                    )
                )
                inside = (np.abs(dist - R) < thick / 2) & (dang < half)
                shell = inside & (np.abs(dist - R) > thick / 2 - 1.5)
                sub = img[ii, jj]
                sub[inside] = marrow
                sub[shell] = cort
        # femoral heads in their acetabula, necks toward the trochanters
        f = 1 - ((z - fh) / 24.0) ** 2
        for side in (-1.0, 1.0):
            cx = side * fhx
            if f > 0:
                s = math.sqrt(f)
                fa = 1 - ((z - fh - 4) / 34.0) ** 2
                if fa > 0 and z > fh - 8:
                    sa = math.sqrt(fa)
                    ellipse(img, xs, ys, aa, cx - side * 4, fhy, 34 * sa, 32 * sa, cort)
                    ellipse(img, xs, ys, aa, cx - side * 4, fhy, 30 * sa, 28 * sa, marrow)
                ellipse(img, xs, ys, aa, cx, fhy, 24 * s, 24 * s, HU["muscle"])  # joint space
                ellipse(img, xs, ys, aa, cx, fhy, 22.5 * s, 22.5 * s, cort)
                ellipse(img, xs, ys, aa, cx, fhy, 21 * s, 21 * s, marrow + 40)
            if fh - 45 < z < fh - 5:  # neck and greater trochanter
                t = (fh - 5 - z) / 40.0
                ellipse(img, xs, ys, aa, cx + side * (25 + 20 * t), fhy + 5, 18, 16, cort)
                ellipse(img, xs, ys, aa, cx + side * (25 + 20 * t), fhy + 5, 15, 13, marrow)
        # pubic rami and symphysis; ischial tuberosities behind
        if fh - 45 < z < fh + 8:
            py = front + fat + 22.0
            for side in (-1.0, 1.0):
                ellipse(img, xs, ys, aa, side * 22, py, 18, 10, cort)
                ellipse(img, xs, ys, aa, side * 22, py, 15, 7, marrow)
                ellipse(img, xs, ys, aa, side * (fhx - 25), fhy + 40, 14, 16, cort)
                ellipse(img, xs, ys, aa, side * (fhx - 25), fhy + 40, 11, 13, marrow)
            ellipse(img, xs, ys, aa, 0.0, py, 3, 8, 60.0)  # symphyseal cartilage
