"""Measure a phantom's vertebral heights from its pixels, guided by the truth table.

Used by the tests (planted heights must match the truth) and useful to anyone checking a
screener against the phantom: it samples the volume along each body's own axis in the
mid-sagittal plane, at the anterior margin, the centre and the posterior margin, and
takes the extent between the outer edges of the endplates.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.ndimage import map_coordinates

from fracture_qi.dicom.geometry import CTVolume

#: HU half-way between disc (60-110) and the endplate cortex peak seen on 1 mm voxels
EDGE_HU = 300.0


def body_axes(tilt_sagittal_deg: float, tilt_coronal_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (LPS x, y, z) of a body's axis (cranial) and its posterior direction."""
    t = np.array(
        [math.tan(math.radians(tilt_coronal_deg)), math.tan(math.radians(tilt_sagittal_deg)), 1.0]
    )
    e_u = t / np.linalg.norm(t)
    e_v = np.cross(e_u, [1.0, 0.0, 0.0])
    e_v /= np.linalg.norm(e_v)
    if e_v[1] < 0:
        e_v = -e_v
    return e_u, e_v


def _profile(vol: CTVolume, points: np.ndarray) -> np.ndarray:
    ox, oy, oz = vol.origin
    dz, dy, dx = vol.spacing
    idx = np.stack([(points[:, 2] - oz) / dz, (points[:, 1] - oy) / dy, (points[:, 0] - ox) / dx])
    return map_coordinates(vol.hu.astype(np.float32), idx, order=1, mode="nearest")


def _extent(u: np.ndarray, prof: np.ndarray, edge: float) -> float:
    """Distance between the outermost crossings of *edge* around u = 0 (sub-sample)."""
    above = prof >= edge
    if not above.any():
        return float("nan")
    i0, i1 = int(np.argmax(above)), len(above) - 1 - int(np.argmax(above[::-1]))

    def cross(a: int, b: int) -> float:  # linear interpolation between samples a (below) and b
        pa, pb = prof[a], prof[b]
        return float(u[a] + (edge - pa) / (pb - pa) * (u[b] - u[a])) if pb != pa else float(u[b])

    lo = cross(i0 - 1, i0) if i0 > 0 else float(u[0])
    hi = cross(i1 + 1, i1) if i1 < len(u) - 1 else float(u[-1])
    return hi - lo


def measure_heights(
    vol: CTVolume, truth: pd.DataFrame, inset_mm: float = 1.2, edge_hu: float = EDGE_HU
) -> pd.DataFrame:
    """Ha, Hm, Hp measured from the pixels for every row of a truth table.

    Parameters
    ----------
    vol
        A (preferably noise-free) phantom volume.
    truth
        Rows with ``level, centre_x_mm, centre_y_mm, centre_z_mm, depth_mm,
        tilt_sagittal_deg, tilt_coronal_deg, ha_mm, hm_mm, hp_mm``.
    inset_mm
        Distance inside the anterior/posterior walls where Ha/Hp are sampled.
    edge_hu
        Threshold marking the outer edge of the endplates.

    Returns
    -------
    pandas.DataFrame
        ``level, ha_meas, hm_meas, hp_meas``.
    """
    rows = []
    for r in truth.itertuples():
        e_u, e_v = body_axes(r.tilt_sagittal_deg, r.tilt_coronal_deg)
        c = np.array([r.centre_x_mm, r.centre_y_mm, r.centre_z_mm])
        half = max(r.ha_mm, r.hp_mm) / 2 + 6.0
        u = np.arange(-half, half, 0.1)
        out = {"level": r.level}
        for name, v in (
            ("ha", -r.depth_mm / 2 + inset_mm),
            ("hm", 0.0),
            ("hp", r.depth_mm / 2 - inset_mm),
        ):
            pts = c[None, :] + v * e_v[None, :] + u[:, None] * e_u[None, :]
            prof = _profile(vol, pts)
            # keep only the body's own run of bone: stop at the first disc-level gap each side
            centre = len(u) // 2
            out[f"{name}_meas"] = _extent_from_centre(u, prof, edge_hu, centre)
        rows.append(out)
    return pd.DataFrame(rows)


def _extent_from_centre(u: np.ndarray, prof: np.ndarray, edge: float, centre: int) -> float:
    """Extent of the run of bone containing the centre; trabecular bone below *edge* is
    bridged by searching outward for the last endplate crossing before the disc."""
    # the endplates are the outermost above-edge samples within the body's own span: walk out
    # from the centre until a run of >= 2 mm below 150 HU (a disc) is met on each side
    low = prof < 150.0
    step = u[1] - u[0]
    need = max(1, int(round(2.0 / step)))

    def bound(direction: int) -> int:
        i, run, last_edge = centre, 0, centre
        while 0 <= i < len(u):
            if prof[i] >= edge:
                last_edge = i
                run = 0
            elif low[i] and last_edge != centre:
                run += 1
                if run >= need:
                    break
            i += direction
        return last_edge

    lo_i, hi_i = bound(-1), bound(+1)
    sub_u = u[lo_i - 1 : hi_i + 2] if lo_i > 0 else u[: hi_i + 2]
    sub_p = prof[lo_i - 1 : hi_i + 2] if lo_i > 0 else prof[: hi_i + 2]
    return _extent(sub_u, sub_p, edge)


# --- heights of a vertebral-body mask -----------------------------------------------------------


def _extent_along(
    m: np.ndarray, sp: np.ndarray, origin: np.ndarray, direction: np.ndarray, half: float,
    x_mm: float, lateral: tuple[float, ...] = (-1.5, 0.0, 1.5),
) -> tuple[float, float]:
    """First and last offsets (mm) along *direction* from *origin* ((z, y) mm, at ``x_mm``) where
    the mask, linearly interpolated and averaged over *lateral* x offsets, is at least 0.5."""
    t = np.arange(-half, half, 0.25)
    vals = np.zeros_like(t)
    p = origin[None, :] + t[:, None] * direction[None, :]
    for dx in lateral:
        coords = np.stack([p[:, 0] / sp[0], p[:, 1] / sp[1], np.full(len(t), (x_mm + dx) / sp[2])])
        vals += map_coordinates(m, coords, order=1, mode="constant") / len(lateral)
    inside = np.nonzero(vals >= 0.5)[0]
    if len(inside) == 0:
        return 0.0, 0.0
    return float(t[inside[0]]), float(t[inside[-1]])


def mask_heights(
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    inset: float = 0.10,
    axis: np.ndarray | None = None,
) -> dict[str, float]:
    """Ha/Hm/Hp (mm) of one vertebral-body mask, measured along the body's own axes.

    The body's mid-sagittal plane is the x of its centroid. Heights are the extent of the
    mask (linearly interpolated, 0.5 level) along the body's axis at columns ``inset`` of the
    depth in from the anterior and posterior walls and at the middle.

    Parameters
    ----------
    mask
        Boolean or fractional mask ``(z, y, x)`` of one body (a crop is fine).
    spacing
        Voxel size ``(dz, dy, dx)`` in mm.
    inset
        Where Ha and Hp are taken, as a fraction of the depth in from each wall.
    axis
        The body's cranial axis ``(z, y, x)`` (e.g. the line between its neighbours'
        centroids). None: the principal direction of the mid-sagittal section closest to
        ``z`` (fine for a body taller than it is deep or standing upright; a tilted, near-square
        thoracic section needs *axis*).

    Returns
    -------
    dict
        ``ha, hm, hp, depth, width`` (mm); ``centre`` (z, y, x mm from voxel [0, 0, 0]),
        ``tilt_sagittal_deg`` and ``tilt_coronal_deg`` of the axis used.
    """
    sp = np.asarray(spacing, dtype=float)
    kk, ii, jj = np.nonzero(mask >= 0.5) if mask.dtype != bool else np.nonzero(mask)
    pts = np.stack([kk, ii, jj], axis=1) * sp
    cz, cy, cx = pts.mean(axis=0)
    if axis is None:
        mid = pts[np.abs(pts[:, 2] - cx) <= 3.0][:, :2] - [cz, cy]
        _, v = np.linalg.eigh(np.cov(mid.T))
        e_ap = v[:, np.argmax(np.abs(v[1]))]
        if e_ap[1] < 0:
            e_ap = -e_ap  # towards posterior
        e_h = np.array([e_ap[1], -e_ap[0]])
        if e_h[0] < 0:
            e_h = -e_h
        coronal = 0.0
    else:
        a = np.asarray(axis, dtype=float)
        a = a / np.linalg.norm(a)
        if a[0] < 0:
            a = -a
        e_h = a[:2] / np.linalg.norm(a[:2])
        e_ap = np.array([-e_h[1], e_h[0]])
        if e_ap[1] < 0:
            e_ap = -e_ap
        coronal = float(np.degrees(np.arctan2(a[2], a[0])))
    m = mask.astype(np.float32)
    c = np.array([cz, cy])
    a0, a1 = _extent_along(m, sp, c, e_ap, 60.0, cx)
    depth = a1 - a0
    out: dict[str, object] = {}
    for name, a in (("hp", a1 - inset * depth), ("hm", 0.5 * (a0 + a1)), ("ha", a0 + inset * depth)):
        lo, hi = _extent_along(m, sp, c + a * e_ap, e_h, 40.0, cx)
        out[name] = hi - lo
    out["depth"] = depth
    # width: along x through the centre of the mid-sagittal section, a few rows averaged
    mid_c = c + 0.5 * (a0 + a1) * e_ap
    t = np.arange(-45.0, 45.0, 0.25)
    vals = np.zeros_like(t)
    for dz in (-1.5, 0.0, 1.5):
        p = mid_c + dz * e_h
        coords = np.stack([np.full(len(t), p[0] / sp[0]), np.full(len(t), p[1] / sp[1]), (cx + t) / sp[2]])
        vals += map_coordinates(m, coords, order=1, mode="constant") / 3.0
    inside = np.nonzero(vals >= 0.5)[0]
    out["width"] = float(t[inside[-1]] - t[inside[0]]) if len(inside) else 0.0
    out["centre"] = (float(mid_c[0]), float(mid_c[1]), float(cx))
    out["tilt_sagittal_deg"] = float(np.degrees(np.arctan2(e_h[1], e_h[0])))
    out["tilt_coronal_deg"] = coronal
    return out  # type: ignore[return-value]
