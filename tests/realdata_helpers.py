"""Load the real CT volumes of ../shared/realdata as canonical :class:`CTVolume` objects.

Test-only helpers (nibabel is a test dependency). The canonical orientation of
:mod:`fracture_qi.dicom.geometry` is LPS with positive steps, arrays indexed ``(z, y, x)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fracture_qi.dicom.geometry import CTVolume

#: TotalSegmentator v2 label ids of the vertebrae in example_seg_fast_force_split.nii.gz
TOTALSEG_LEVEL_IDS: dict[str, int] = {
    "S1": 26, "L5": 27, "L4": 28, "L3": 29, "L2": 30, "L1": 31, "T12": 32, "T11": 33,
}


def load_canonical(path: Path | str, dtype: type = np.int16) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """Read a NIfTI file and return ``(array (z, y, x) LPS-positive, spacing, origin_lps)``.

    Parameters
    ----------
    path
        A ``.nii``/``.nii.gz`` file with an axis-aligned affine.
    dtype
        Output dtype (HU volumes: int16; label maps: uint8).
    """
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))  # RAS+, axis order (x, y, z)
    data = np.asanyarray(img.dataobj)
    aff = img.affine
    # RAS -> LPS: flip the x (R->L) and y (A->P) axes so that steps are positive in LPS
    data = data[::-1, ::-1, :]
    sx, sy, sz = (float(abs(aff[i, i])) for i in range(3))
    nx, ny, _ = data.shape
    # RAS position of the voxel that is now [0, 0, 0] (formerly [nx-1, ny-1, 0])
    ras0 = aff @ np.array([nx - 1, ny - 1, 0, 1.0])
    origin_lps = (float(-ras0[0]), float(-ras0[1]), float(ras0[2]))
    arr = np.ascontiguousarray(np.transpose(data, (2, 1, 0))).astype(dtype)
    return arr, (sz, sy, sx), origin_lps


def load_example_ct(realdata: Path) -> CTVolume:
    """The TotalSegmentator abdomen/pelvis example CT (3 mm, T11..sacrum) as a CTVolume."""
    hu, spacing, origin = load_canonical(realdata / "totalsegmentator" / "example_ct.nii.gz")
    return CTVolume(hu=hu, spacing=spacing, origin=origin, meta={"source": "totalsegmentator example_ct"})


def load_example_labels(realdata: Path) -> np.ndarray:
    """Vertebra labels of example_ct on its canonical grid (uint8, TotalSegmentator ids)."""
    lab, _, _ = load_canonical(
        realdata / "totalsegmentator" / "example_seg_fast_force_split.nii.gz", dtype=np.uint8
    )
    return lab


def load_example_body_mask(realdata: Path) -> np.ndarray:
    """Vertebral-body mask of example_ct on its canonical grid (uint8; non-zero = body)."""
    m, _, _ = load_canonical(
        realdata / "totalsegmentator" / "spine_report" / "totalseg_vertebrae_body.nii.gz",
        dtype=np.uint8,
    )
    return m


def load_chest_cta(realdata: Path) -> CTVolume:
    """The contrast chest CT crop (1.5 mm, spine at the posterior edge) as a CTVolume."""
    hu, spacing, origin = load_canonical(realdata / "totalsegmentator" / "chest_cta_crop.nii.gz")
    return CTVolume(hu=hu, spacing=spacing, origin=origin, meta={"source": "totalsegmentator chest_cta_crop"})


def mask_heights(mask: np.ndarray, spacing: tuple[float, float, float], inset: float = 0.10) -> dict[str, float]:
    """Ha/Hm/Hp (mm) of one vertebral-body mask, measured along the body's own axes.

    The body's mid-sagittal plane is the x of its centroid. In that plane the anterior-posterior
    axis is the principal direction of the mask closest to ``y``; heights are the extent of the
    mask (linearly interpolated, 0.5 level) along the perpendicular, at columns ``inset`` of the
    depth in from the anterior and posterior walls and at the middle.
    """
    from scipy.ndimage import map_coordinates

    sp = np.asarray(spacing, dtype=float)
    kk, ii, jj = np.nonzero(mask)
    pts = np.stack([kk, ii, jj], axis=1) * sp
    cz, cy, cx = pts.mean(axis=0)
    mid = pts[np.abs(pts[:, 2] - cx) <= 3.0][:, :2] - [cz, cy]
    cov = np.cov(mid.T)
    _, v = np.linalg.eigh(cov)
    e_ap = v[:, np.argmax(np.abs(v[1]))]
    if e_ap[1] < 0:
        e_ap = -e_ap  # towards posterior
    e_h = np.array([e_ap[1], -e_ap[0]])  # perpendicular (towards superior for a level body)
    if e_h[0] < 0:
        e_h = -e_h
    m = mask.astype(np.float32)

    def extent(origin: np.ndarray, direction: np.ndarray, half: float) -> tuple[float, float]:
        t = np.arange(-half, half, 0.25)
        vals = np.zeros_like(t)
        for dx in (-1.5, 0.0, 1.5):
            p = origin[None, :] + t[:, None] * direction[None, :]
            coords = np.stack([p[:, 0] / sp[0], p[:, 1] / sp[1], np.full(len(t), (cx + dx) / sp[2])])
            vals += map_coordinates(m, coords, order=1, mode="constant") / 3.0
        inside = np.nonzero(vals >= 0.5)[0]
        if len(inside) == 0:
            return 0.0, 0.0
        return float(t[inside[0]]), float(t[inside[-1]])

    c = np.array([cz, cy])
    a0, a1 = extent(c, e_ap, 60.0)
    depth = a1 - a0
    out = {}
    for name, a in (("hp", a1 - inset * depth), ("hm", 0.5 * (a0 + a1)), ("ha", a0 + inset * depth)):
        lo, hi = extent(c + a * e_ap, e_h, 40.0)
        out[name] = hi - lo
    out["depth"] = depth
    return out
