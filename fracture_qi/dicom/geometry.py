"""The HU volume every stage after decoding works on, in one canonical orientation.

Canonical orientation (patient LPS axes, positive steps):

* axis 0 (``z``): inferior -> superior (increasing LPS z)
* axis 1 (``y``): anterior -> posterior (increasing LPS y)
* axis 2 (``x``): patient right -> patient left (increasing LPS x)

So ``hu[k]`` is an axial slice seen as a radiologist sees it (anterior at the top, patient's
right on the image left), and ``hu[:, :, j]`` is a sagittal plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CTVolume:
    """A CT series as Hounsfield units with its geometry.

    Attributes
    ----------
    hu
        ``int16`` array of shape ``(z, y, x)`` in canonical orientation, values in HU
        (RescaleSlope/Intercept applied, clipped to the int16 range).
    spacing
        Voxel size in mm along ``(z, y, x)``; all positive.
    origin
        LPS position (mm) of the centre of voxel ``[0, 0, 0]``, as ``(x, y, z)``.
    study_instance_uid, series_instance_uid
        The UIDs of the series, where known (empty strings for arrays built in memory).
    meta
        Header facts worth carrying (manufacturer, kernel, slice thickness, source path,
        transfer syntax, decoder used...). Never used for decisions about pixels.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"CTVolume.hu must be 3-D (z, y, x); got shape {self.hu.shape}")
        if any(s <= 0 for s in self.spacing):
            raise ValueError(f"CTVolume.spacing must be positive; got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size along (z, y, x) in mm."""
        return tuple(n * s for n, s in zip(self.hu.shape, self.spacing))  # type: ignore[return-value]

    def index_to_lps(self, k: float, i: float, j: float) -> tuple[float, float, float]:
        """LPS (x, y, z) in mm of the voxel at canonical index (k, i, j)."""
        ox, oy, oz = self.origin
        dz, dy, dx = self.spacing
        return (ox + j * dx, oy + i * dy, oz + k * dz)
