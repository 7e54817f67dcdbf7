"""Load the real CT volumes of ../shared/realdata as canonical :class:`CTVolume` objects.

Test-only helpers; reading NIfTI (:func:`fracture_qi.synth.nifti.load_canonical`) and the
heights of a body mask (:func:`fracture_qi.synth.measure.mask_heights`) live in the package,
which builds its synthetic cohort on the same real anatomy. The canonical orientation of
:mod:`fracture_qi.dicom.geometry` is LPS with positive steps, arrays indexed ``(z, y, x)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.synth.measure import mask_heights  # noqa: F401 (re-exported for the tests)
from fracture_qi.synth.nifti import load_canonical

#: TotalSegmentator v2 label ids of the vertebrae in example_seg_fast_force_split.nii.gz
TOTALSEG_LEVEL_IDS: dict[str, int] = {
    "S1": 26, "L5": 27, "L4": 28, "L3": 29, "L2": 30, "L1": 31, "T12": 32, "T11": 33,
}


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


def _central_profile(mask: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Mean HU per slice of the body's central columns (within 30% of its centre in y and x)."""
    _, ii, jj = np.nonzero(mask)
    y0, y1, x0, x1 = ii.min(), ii.max(), jj.min(), jj.max()
    ry, rx = max(1, int(0.3 * (y1 - y0))), max(1, int(0.3 * (x1 - x0)))
    yc, xc = int(round(0.5 * (y0 + y1))), int(round(0.5 * (x0 + x1)))
    return hu[:, yc - ry : yc + ry + 1, xc - rx : xc + rx + 1].astype(np.float64).mean(axis=(1, 2))


def crush_slices(vol: CTVolume, mask: np.ndarray, loss: float) -> tuple[int, int, int, float]:
    """How :func:`plant_compression` plants a crush of ``loss``: ``(z0, z1, d, planted)``.

    The trabecular interior ``z0..z1`` of the body, between the slices of its two endplate
    cortices, loses ``d`` whole slices; the superior endplate, the disc above and the spine
    above all come down by ``d`` slices. ``d`` is ``loss`` of the body's posterior height
    (from its mask) rounded to whole slices, so the loss actually planted, ``planted``, is
    ``d`` slices over that height (at 3 mm a slice is about a tenth of a lumbar body).

    Each cortex is the brightest slice of the body's central columns within three slices of
    that end of the mask. At 3 mm a disc is one or two slices and lies partly inside the
    mask's end slices: a slab reaching past the cortices (the previous planting) was
    resampled across the discs and erased them (L1's upper disc went from 80 HU to 110-128).
    """
    zz = np.nonzero(mask)[0]
    k0, k1 = int(zz.min()), int(zz.max())
    prof = _central_profile(mask, vol.hu)
    lo = k0 + int(np.argmax(prof[k0 : k0 + 4]))
    hi = k1 - 3 + int(np.argmax(prof[k1 - 3 : k1 + 1]))
    z0, z1 = lo + 1, hi - 1
    hp = mask_heights(mask, vol.spacing)["hp"]
    dz = float(vol.spacing[0])
    d = min(max(int(np.floor(loss * hp / dz + 0.5)), 1), z1 - z0)  # at least one interior slice left
    return z0, z1, d, d * dz / hp


def plant_compression(vol: CTVolume, mask: np.ndarray, kind: str, loss: float) -> CTVolume:
    """Compress one vertebral body along z (its axis in this CT), as each fracture does.

    ``crush``: the body loses ``loss`` of its height uniformly and the spine above comes down
    with it: the trabecular interior between its endplate cortices is resampled shorter and
    every slice above moves down by whole slices (a fractional shift would blur each endplate
    above; the scan then ends that much lower). No gap opens and the discs and endplates keep
    their slices, as in a patient (see :func:`crush_slices`).
    ``wedge``: the loss grows from 0 at the posterior wall to ``loss`` at the anterior wall;
    the collapsed front of the body takes the HU of the disc above, which follows it down.
    ``biconcave``: the endplate is pushed in, ``loss`` at the centre falling to 0 at 70% of
    the radius, and the disc fills the dent.

    A wedge or a dent squeezes only the trabecular interior: the inferior endplate (the
    mask's first slice in that column and what lies below it), which neither fracture
    touches, keeps its slices, and the superior endplate with the rim above it moves down as
    a whole. At 3 mm an endplate's cortex is one slice; resampling the whole column at a
    stretch of 1.3-2 (the previous planting) skipped it, so a wedge's intact inferior
    endplate faded at the front, and the screener read the next endplate down.

    The disc's HU is its median just above the middle of the body. A wedge warps the mask
    grown by a voxel: at 3 mm the masks stop short of the partial-volume rim of the cortex,
    and a rim left at the old height draws a second, phantom endplate across the fracture
    (the previous planting did, and two cases failed on that artefact). A biconcave dent
    stays within the mask: the endplate's rim (the ring apophysis) does not move.
    """
    from scipy.ndimage import binary_dilation

    hu = vol.hu.astype(np.float32)
    nz = hu.shape[0]
    zz, ii, jj = np.nonzero(mask)
    y0, y1 = ii.min(), ii.max()
    x0, x1 = jj.min(), jj.max()
    yc, xc = 0.5 * (y0 + y1), 0.5 * (x0 + x1)
    if kind == "crush":
        z0, z1, d, _ = crush_slices(vol, mask, loss)
        n = z1 - z0 + 1
        zs = np.arange(nz - d, dtype=np.float64)
        # the interior's n slices sampled at n - d points from its first to its last slice
        src = np.where(zs < z0, zs, np.where(zs <= z1 - d, z0 + (zs - z0) * (n - 1) / max(n - d - 1, 1), zs + d))
        k = np.floor(src).astype(int)
        t = (src - k)[:, None, None].astype(np.float32)
        out = hu[k] * (1 - t) + hu[np.minimum(k + 1, nz - 1)] * t
        return CTVolume(hu=np.clip(out, -1024, 3071).astype(np.int16), spacing=vol.spacing, origin=vol.origin)
    hu = hu.copy()
    disc = []
    for i in range(y0, y1 + 1):  # loop over columns of one body (a few hundred), not voxels
        for j in range(x0, x1 + 1):
            col = np.nonzero(mask[:, i, j])[0]
            if len(col) >= 3 and abs(i - yc) <= 0.3 * (y1 - y0) and abs(j - xc) <= 0.3 * (x1 - x0):
                disc += hu[min(col.max() + 1, nz - 1) : min(col.max() + 3, nz), i, j].tolist()
    fill = float(np.median(disc)) if disc else 70.0
    warp = binary_dilation(mask, structure=np.ones((3, 3, 3), dtype=bool)) if kind == "wedge" else mask
    _, wi, wj = np.nonzero(warp)
    for i in range(wi.min(), wi.max() + 1):
        for j in range(wj.min(), wj.max() + 1):
            col = np.nonzero(warp[:, i, j])[0]
            if len(col) < 3:
                continue
            z0, z1 = col.min(), col.max()
            iy, jx = min(max(i, y0), y1), min(max(j, x0), x1)  # rim columns take their edge's loss
            if kind == "wedge":
                f = loss * (y1 - iy) / max(y1 - y0, 1)  # anterior = small y
            else:
                r = np.hypot((iy - yc) / max(0.5 * (y1 - y0), 1), (jx - xc) / max(0.5 * (x1 - x0), 1))
                f = loss * max(0.0, 1.0 - (r / 0.7) ** 2)  # endplate dome inside 70% of the radius
            if f <= 0:
                continue
            n = z1 - z0 + 1
            # the endplates' slices in this column: the mask's own first and last (a rim column
            # outside the mask: one slice in from each end)
            own = np.nonzero(mask[:, i, j])[0]
            kb, kt = (own.min() - z0, own.max() - z0) if len(own) >= 3 else (1, n - 2)
            # the loss is a fraction of the body's height in this column (its own slices), not
            # of the grown column, which is two rim slices longer (a 35% wedge lost 42% of Ha)
            lost = min(f * (kt - kb + 1), kt - kb - 1.0)
            k = np.arange(n, dtype=np.float64)
            # below the inferior endplate: as it was; the interior squeezed by `lost`; the
            # superior endplate and the rim above it moved down by `lost`; then the disc's HU
            tc = np.where(k <= kb, k, np.where(k < kt - lost, kb + (k - kb) * (kt - kb) / (kt - kb - lost), k + lost))
            new = np.interp(tc, np.arange(n), hu[z0 : z1 + 1, i, j])
            new[k >= n - lost] = fill
            hu[z0 : z1 + 1, i, j] = new
    return CTVolume(hu=np.clip(hu, -1024, 3071).astype(np.int16), spacing=vol.spacing, origin=vol.origin)


def expected_grade(before, kind: str, loss: float) -> int:  # type: ignore[no-untyped-def]
    """Genant grade the planted loss should produce, from the screener's own unplanted heights
    of that body and its grading rule: a planted wedge loses ``loss`` at the anterior wall,
    falling linearly to nothing at the posterior wall, so ~(1 - inset) of it at the anterior
    column and ~inset of it at the posterior column; a biconcave plant the full ``loss`` at
    the middle column and nothing at the other two (they lie outside its dome)."""
    from fracture_qi.screening.morphometry import (
        COLUMN_INSET,
        NORMAL_HA_HP,
        NORMAL_HM_HP,
        grade_from_reduction,
    )

    ha, hm, hp = before.ha_mm, before.hm_mm, before.hp_mm
    e_a, e_m = NORMAL_HA_HP[before.level], NORMAL_HM_HP[before.level]
    if kind == "wedge":
        ha = ha * (1.0 - loss * (1.0 - COLUMN_INSET))
        hp = hp * (1.0 - loss * COLUMN_INSET)
        red = 1.0 - (ha / hp) / e_a
    elif kind == "biconcave":
        red = 1.0 - (hm * (1.0 - loss) / max(ha / e_a, hp)) / e_m
    else:
        red = loss
    return grade_from_reduction(red)
