"""The vertebral bodies of a screened series as a DICOM Segmentation (binary), optional.

What it is, honestly: the screener measures each body on a curved mid-sagittal reformat and
keeps its **sagittal outline** (z, y in grid mm) and, where the lateral walls were clear, its
**width**; it does not segment voxels. Each segment here is that outline swept across the
body's width (``width_mm``, else :data:`DEFAULT_WIDTH_MM`) around its mid-sagittal ``x``: a
prism that covers the body, good for locating and labelling levels in a viewer, not a
volumetric segmentation to measure from. The Series Description and the segment
descriptions say so ("approximate"). Vertebrae without an outline (cut by the field of view,
or a model that gives no geometry) have no segment; a result with no outline at all has no
SEG (:func:`build_seg` returns ``None``).
"""

from __future__ import annotations

import logging

import numpy as np
from highdicom import AlgorithmIdentificationSequence
from highdicom.seg import (
    SegmentAlgorithmTypeValues,
    SegmentationTypeValues,
    SegmentDescription,
    Segmentation,
)
from matplotlib.path import Path as PolyPath
from pydicom.dataset import Dataset

from fracture_qi import __version__
from fracture_qi.results_dicom import codes
from fracture_qi.results_dicom.source import ScreenedSeries
from fracture_qi.results_dicom.sr import MANUFACTURER, object_uids, result_uid

log = logging.getLogger(__name__)

#: SeriesDescription of the SEG series
SEG_SERIES_DESCRIPTION = "AI RESULT fracture-qi vertebral bodies (approximate)"
#: lateral extent (mm) of a body whose walls were not measured: a typical adult lumbar
#: vertebral body width is 40-50 mm (docs/ANATOMY.md); the smaller value under-covers
#: rather than spilling into the psoas
DEFAULT_WIDTH_MM = 40.0


def body_masks(s: ScreenedSeries) -> list[tuple[int, np.ndarray]]:
    """(index in ``s.result.vertebrae``, boolean mask ``(slices, rows, columns)``) per body
    with an outline, in the source images' order and pixel grid."""
    if not s.headers:
        return []
    origin = s.origin
    first = s.headers[0]
    rows, cols = int(first.Rows), int(first.Columns)
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    dy, dx = (float(v) for v in first.PixelSpacing)
    row_dir, col_dir = iop[:3], iop[3:]
    ii, jj = np.mgrid[0:rows, 0:cols]
    out = []
    for k, v in enumerate(s.result.vertebrae):
        g = v.geometry or {}
        outline = g.get("outline_zy_mm")
        x_mid = g.get("x_mm")
        if not outline or x_mid is None or len(outline) < 3:
            continue
        poly = PolyPath(np.asarray(outline, dtype=float))  # (z, y) grid mm
        half = 0.5 * float(g.get("width_mm") or DEFAULT_WIDTH_MM)
        mask = np.zeros((len(s.headers), rows, cols), dtype=bool)
        for n, h in enumerate(s.headers):
            ipp = np.asarray([float(x) for x in h.ImagePositionPatient])
            lps = (ipp[:, None, None] + ii * dy * col_dir[:, None, None]
                   + jj * dx * row_dir[:, None, None])
            gx, gy, gz = (lps[0] - origin[0], lps[1] - origin[1], lps[2] - origin[2])
            inside_x = np.abs(gx - float(x_mid)) <= half
            if not inside_x.any():
                continue
            pts = np.stack([gz[inside_x], gy[inside_x]], axis=1)
            hit = poly.contains_points(pts)
            if hit.any():
                plane = np.zeros((rows, cols), dtype=bool)
                plane[inside_x] = hit
                mask[n] = plane
        if mask.any():
            out.append((k, mask))
    return out


def build_seg(s: ScreenedSeries, *, series_number: int = 9703) -> Dataset | None:
    """A binary SEG with one segment per outlined vertebral body, or ``None`` without any."""
    masks = body_masks(s)
    if not masks:
        return None
    labels = np.zeros((len(s.headers), int(s.headers[0].Rows), int(s.headers[0].Columns)),
                      dtype=np.uint8)
    descriptions = []
    algorithm = AlgorithmIdentificationSequence(
        name=s.model_id[:64], version=s.model_version[:64],
        family=codes.fqi("VERTEBRAL-MORPHOMETRY", "Vertebral morphometry algorithm"))
    for number, (k, mask) in enumerate(masks, start=1):
        v = s.result.vertebrae[k]
        labels[mask & (labels == 0)] = number
        site = codes.VERTEBRA_CODES.get(v.level or "", codes.VERTEBRA)
        descriptions.append(SegmentDescription(
            segment_number=number,
            segment_label=f"{v.level or 'vertebra'} body (approximate)"[:64],
            segmented_property_category=codes.VERTEBRAL_BODY_CATEGORY,
            segmented_property_type=site,
            algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=result_uid("seg-tracking", s.series_instance_uid, s.model_id,
                                    s.model_version, k),
            tracking_id=f"{v.level or f'vertebra {k + 1}'} body"[:64],
        ))
    series_uid, sop_uid, number = object_uids(s, "seg")
    seg = Segmentation(
        source_images=s.headers, pixel_array=labels,
        segmentation_type=SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=number,
        manufacturer=MANUFACTURER, manufacturer_model_name=s.model_id[:64],
        software_versions=f"fracture-qi {__version__}"[:64], device_serial_number="1",
        content_label="VERTEBRAE", content_description="Vertebral bodies (approximate)",
        series_description=SEG_SERIES_DESCRIPTION,
    )
    seg.CodingSchemeIdentificationSequence = [codes.coding_scheme_item()]
    return seg


__all__ = ["DEFAULT_WIDTH_MM", "SEG_SERIES_DESCRIPTION", "body_masks", "build_seg"]
