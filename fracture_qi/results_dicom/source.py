"""A screened series as the DICOM writers need it: its result, its source images, its key image.

Results are read back from the store (:func:`screened_series`), so what goes into the PACS is
exactly what the database holds, whichever process screened it. Columns added by later
revisions (``vertebra_findings.quality``, ``screenings.contrast_phase``) are read where the
database has them and fall back to ``ok`` / unknown where it does not.

Geometry: the screener reports positions in *grid mm* of the canonical volume (see
:mod:`fracture_qi.screening.reference`); :func:`canonical_origin` gives the LPS position of
the canonical voxel ``[0, 0, 0]`` from the source headers, so grid mm become patient
coordinates and each vertebra can reference the axial image through its centre.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import inspect, select

from fracture_qi.errors import FractureQIError
from fracture_qi.screening.types import SeriesResult, VertebraResult
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import (
    Instance,
    ResultObject,
    Screening,
    Series,
    Study,
    VertebraFinding,
)

log = logging.getLogger(__name__)


class ResultSourceError(FractureQIError):
    """Raised when the source images of a screened series cannot be read (moved, deleted,
    PACS unreachable), so no DICOM result can reference them."""


@dataclass
class ScreenedSeries:
    """One screening with what a DICOM result object is built from.

    Attributes
    ----------
    screening_id
        ``screenings.id`` (``None`` for a result held only in memory).
    result
        The model's result (vertebrae with their quality codes, study flag, L1 HU...).
    model_id, model_version
        The algorithm, written into every object.
    headers
        Source image headers (no pixels), sorted along the slice normal (inferior first:
        the canonical z order), with study and patient modules.
    keyimage
        RGB uint8 key image, where one was saved.
    revision
        1 for the first screening of the series by this model version; 2, 3... for a
        screening that supersedes earlier ones (the series gained instances): its objects
        get new SOP Instance UIDs and this InstanceNumber, in the same result series.
    predecessors
        The SR documents already sent for the screenings this one supersedes (UIDs only),
        referenced from the new SR's Predecessor Documents Sequence.
    """

    screening_id: int | None
    study_instance_uid: str
    series_instance_uid: str
    model_id: str
    model_version: str
    result: SeriesResult
    headers: list[Dataset] = field(default_factory=list)
    keyimage: np.ndarray | None = None
    revision: int = 1
    predecessors: list[Dataset] = field(default_factory=list)

    @property
    def origin(self) -> np.ndarray:
        """LPS (x, y, z) of the canonical voxel [0, 0, 0] (see :func:`canonical_origin`)."""
        return canonical_origin(self.headers)

    def image_at(self, z_grid_mm: float) -> Dataset | None:
        """The source image whose slice is nearest to canonical grid ``z`` (mm)."""
        if not self.headers:
            return None
        z0 = float(self.origin[2])
        zs = np.array([_z(h) for h in self.headers])
        return self.headers[int(np.argmin(np.abs(zs - (z0 + z_grid_mm))))]


def _z(ds: Dataset) -> float:
    pos = ds.get("ImagePositionPatient")
    return float(pos[2]) if pos is not None and len(pos) == 3 else math.nan


def canonical_origin(headers: Sequence[Dataset]) -> np.ndarray:
    """LPS (x, y, z) of the centre of canonical voxel ``[0, 0, 0]`` of a series.

    The canonical volume (:class:`~fracture_qi.dicom.geometry.CTVolume`) runs along +x, +y,
    +z from its origin; for an axial series (within the loader's oblique tolerance) that is
    the smallest x, y of the four corner pixels of the lowest slice, at the lowest slice's z.

    Examples
    --------
    >>> ds = Dataset(); ds.ImagePositionPatient = [10.0, 20.0, -5.0]
    >>> ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]; ds.PixelSpacing = [1.0, 2.0]
    >>> ds.Rows, ds.Columns = 4, 3
    >>> canonical_origin([ds]).tolist()
    [6.0, 20.0, -5.0]
    """
    if not headers:
        raise ResultSourceError("no source images: the canonical origin is unknown")
    lowest = min(headers, key=_z)
    ipp = np.asarray([float(v) for v in lowest.ImagePositionPatient])
    iop = np.asarray([float(v) for v in lowest.ImageOrientationPatient])
    dy, dx = (float(v) for v in lowest.PixelSpacing)
    rows, cols = int(lowest.Rows), int(lowest.Columns)
    row_dir, col_dir = iop[:3], iop[3:]
    corners = [ipp + i * dy * col_dir + j * dx * row_dir
               for i in (0, rows - 1) for j in (0, cols - 1)]
    c = np.min(np.stack(corners), axis=0)
    return np.array([c[0], c[1], min(_z(h) for h in headers)])


# --------------------------------------------------------------------------------------------
# results from the store
# --------------------------------------------------------------------------------------------
def _column(obj: Any, name: str) -> Any:
    """A column value where this database has the column, else None."""
    return getattr(obj, name, None)


def result_from_store(row: Screening, findings: Iterable[VertebraFinding]) -> SeriesResult:
    """The :class:`SeriesResult` a screening row and its findings stand for.

    ``quality`` (per vertebra) and ``contrast_phase`` come from their columns where the
    database has them; without them a finding is ``ok`` and the phase unknown.
    """
    verts = []
    for f in sorted(findings, key=lambda f: f.id):
        verts.append(VertebraResult(
            level=f.level, genant_grade=int(f.genant_grade or 0), morph_type=f.morph_type or "",
            ha_mm=f.ha_mm, hm_mm=f.hm_mm, hp_mm=f.hp_mm, score=f.score,
            trabecular_hu=f.trabecular_hu, geometry=f.geometry,
            quality=str(_column(f, "quality") or "ok"),
        ))
    return SeriesResult(
        status=row.status, reason=row.reason, detail=row.detail, flagged=bool(row.flagged),
        score=row.score, max_grade=int(row.max_grade or 0), vertebrae=verts, l1_hu=row.l1_hu,
        bone_density_level=row.bone_density_level, low_density=row.low_density,
        contrast_phase=_column(row, "contrast_phase"), seconds=row.seconds,
    )


def _read_keyimage(path: str | None) -> np.ndarray | None:
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as e:
        log.warning("key image %s cannot be read (%s): sent without it", path, e)
        return None


def read_headers(paths: Sequence[str], sources: Sequence[Any] = (), base: Path | None = None
                 ) -> list[Dataset]:
    """Headers (no pixels) of a series' instances, sorted inferior to superior.

    Local files are read with ``stop_before_pixels``; ``pacs://`` paths get the PACS's
    metadata (WADO-RS metadata or IMAGE-level C-FIND), or the files themselves when the
    PACS does not give the geometry.

    Raises
    ------
    ResultSourceError
        When the images cannot be read.
    """
    from fracture_qi.dicom import pacs

    local = [p for p in paths if pacs.parse_uri(p) is None]
    remote = [pacs.parse_uri(p) for p in paths if pacs.parse_uri(p) is not None]
    out: list[Dataset] = []
    try:
        for p in local:
            out.append(pydicom.dcmread(p, stop_before_pixels=True, force=True))
        if remote:
            ref = remote[0]
            assert ref is not None
            by_name = {getattr(s, "name", None): s for s in sources}
            source = by_name.get(ref.source)
            if source is None:
                raise ResultSourceError(f"series indexed from PACS source {ref.source!r}, "
                                        "which the manifest no longer lists")
            found = pacs.series_headers(source, ref.study_uid, ref.series_uid, base=base)
            if found is None:
                with pacs.materialise(list(paths), sources, base=base) as files:
                    found = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
            out.extend(found)
    except (OSError, FractureQIError) as e:
        raise ResultSourceError(f"source images of the series cannot be read: {e}. Fix: the "
                                "files must stay where they were indexed (or the PACS must "
                                "answer) for results to reference them") from e
    images = [d for d in out if "ImagePositionPatient" in d and "ImageOrientationPatient" in d]
    images.sort(key=_z)
    return images


def screened_series(engine: Any, screening_id: int, *, sources: Sequence[Any] = (),
                    base: Path | None = None, with_headers: bool = True) -> ScreenedSeries:
    """Everything about one screening that the DICOM writers need.

    Raises
    ------
    ResultSourceError
        When the screening does not exist or its source images cannot be read.
    """
    with session_scope(engine) as s:
        row = s.get(Screening, screening_id)
        if row is None:
            raise ResultSourceError(f"screening {screening_id} does not exist")
        series = s.get(Series, row.series_id)
        study = s.get(Study, series.study_id) if series is not None else None
        findings = list(s.scalars(select(VertebraFinding)
                                  .where(VertebraFinding.screening_id == screening_id)))
        result = result_from_store(row, findings)
        paths = list(s.scalars(select(Instance.path).where(Instance.series_id == row.series_id)
                               .order_by(Instance.z, Instance.instance_number, Instance.id)))
        earlier = _superseded_chain(s, row)
        out = ScreenedSeries(
            screening_id=screening_id,
            study_instance_uid=study.study_instance_uid if study is not None else "",
            series_instance_uid=series.series_instance_uid if series is not None else "",
            model_id=row.model_id, model_version=row.model_version, result=result,
            keyimage=_read_keyimage(row.keyimage_path), revision=len(earlier) + 1,
            predecessors=_sent_documents(s, earlier),
        )
    if with_headers:
        out.headers = read_headers(paths, sources, base)
        if not out.headers:
            raise ResultSourceError(f"screening {screening_id}: no source image headers found")
    return out


def _superseded_chain(s: Any, row: Screening) -> list[int]:
    """The screenings *row* supersedes, directly or through others, newest first."""
    out: list[int] = []
    cur = row.supersedes_id
    while cur is not None and cur not in out:
        out.append(int(cur))
        cur = s.scalar(select(Screening.supersedes_id).where(Screening.id == cur))
    return out


def _sent_documents(s: Any, screening_ids: Sequence[int]) -> list[Dataset]:
    """UIDs of the SR documents sent for *screening_ids* (to any destination), once each."""
    if not screening_ids:
        return []
    out: dict[str, Dataset] = {}
    for study, series, sop, cls in s.execute(
            select(ResultObject.study_instance_uid, ResultObject.series_instance_uid,
                   ResultObject.sop_instance_uid, ResultObject.sop_class_uid)
            .where(ResultObject.screening_id.in_(list(screening_ids)),
                   ResultObject.kind == "sr", ResultObject.status == "sent")
            .order_by(ResultObject.id)):
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID, ds.SOPClassUID = sop, cls
        out.setdefault(str(sop), ds)
    return list(out.values())


def has_column(engine: Any, table: str, column: str) -> bool:
    """Whether the database's *table* has *column* (revisions merged at different times)."""
    try:
        return column in {c["name"] for c in inspect(engine).get_columns(table)}
    except Exception:  # noqa: BLE001 - an unknown table simply has no such column
        return False


__all__ = ["ResultSourceError", "ScreenedSeries", "canonical_origin", "has_column",
           "read_headers", "result_from_store", "screened_series"]
