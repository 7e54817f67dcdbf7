"""JPEG 2000 test series: every slice a different image, unsigned (12-bit stored, intercept
-1024) or signed (16-bit two's complement HU), encoded losslessly by OpenJPEG (pylibjpeg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEG2000Lossless

from tests import dicomgen


def write_j2k_series(folder: Path, n: int = 24, *, signed: bool = False, rows: int = 48,
                     cols: int = 48, syntax: str = JPEG2000Lossless) -> list[Path]:
    """Write an *n*-slice series compressed with *syntax* (pylibjpeg's encoder)."""
    rng = np.random.default_rng(11 + n + int(signed))
    hu = rng.integers(-1000, 1800, size=(n, rows, cols)).astype(np.int16)

    def signed_pixels(i: int, ds: pydicom.Dataset) -> None:
        if signed:  # stored values are HU, two's complement, intercept 0
            ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
            ds.RescaleIntercept = 0
            ds.PixelData = hu[i].astype("<i2").tobytes()

    paths = dicomgen.write_ct_series(folder, n=n, rows=rows, cols=cols, spacing=2.0, hu=hu,
                                     per_file=signed_pixels)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(syntax, encoding_plugin="pylibjpeg")
        ds.save_as(p, enforce_file_format=True)
    return paths
