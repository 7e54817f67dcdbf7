"""Read NIfTI volumes onto the suite's canonical grid (LPS, positive steps, arrays ``(z, y, x)``).

The base anatomy of the synthetic cohort (:mod:`fracture_qi.synth.basescan`) and the tests'
real CT volumes (``tests/realdata_helpers.py``) come as NIfTI files with axis-aligned
affines; this is the one place that turns them into the orientation of
:mod:`fracture_qi.dicom.geometry`.
"""

from __future__ import annotations

import os

import numpy as np


def _nibabel():  # type: ignore[no-untyped-def]
    try:
        import nibabel
    except ImportError as e:  # pragma: no cover - nibabel is a dependency
        raise ImportError(
            "reading the synthetic cohort's base anatomy needs nibabel. "
            "Fix: pip install 'nibabel>=5.2' (it is in fracture-qi's dependencies)"
        ) from e
    return nibabel


def load_canonical(
    path: str | os.PathLike[str], dtype: type = np.int16
) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """Read a NIfTI file and return ``(array (z, y, x) LPS-positive, spacing, origin_lps)``.

    Parameters
    ----------
    path
        A ``.nii``/``.nii.gz`` file with an axis-aligned affine.
    dtype
        Output dtype (HU volumes: int16; label maps: uint8).

    Returns
    -------
    array : numpy.ndarray
        Indexed ``(z, y, x)``: inferior to superior, anterior to posterior, right to left.
    spacing : tuple of float
        ``(dz, dy, dx)`` in mm.
    origin : tuple of float
        LPS position (mm) of voxel ``[0, 0, 0]``.
    """
    nib = _nibabel()
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

