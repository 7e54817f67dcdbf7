"""The built-in reference screener: a classical morphometric pipeline on torch tensors.

It implements the :class:`~fracture_qi.screening.types.ScreeningModel` protocol::

    model = ReferenceScreener(device="auto", flag_grade=2, low_density_hu=110.0)
    result = model.screen(volume)          # CTVolume -> SeriesResult

Geometry in :attr:`VertebraResult.geometry` is in *grid mm* of the CTVolume (millimetres from
the centre of voxel ``[0, 0, 0]`` along the canonical ``(z, y, x)`` axes; add the volume's LPS
origin for patient coordinates):

``centre_zyx_mm``
    Centre of the body ``[z, y, x]``; the axial slice of the level is ``round(z / dz)``.
``x_mm``
    ``x`` of the mid-sagittal plane through the body (between its lateral walls where they
    were found, else the canal's).
``points_zy_mm``
    Six-point landmarks ``[[z, y] * 6]``: superior anterior, middle, posterior, then inferior
    anterior, middle, posterior (absent for a body cut by the edge of the view).
``corners_zy_mm``
    The four corners ``[sup-ant, sup-post, inf-post, inf-ant]`` (from the six points).
``outline_zy_mm``
    A closed outline of the body ``[[z, y], ...]`` for drawing on the sagittal reformat.
``depth_mm``, ``width_mm``, ``partial``, ``reductions``
    Body depth, width between its lateral walls (``None`` where they were not clear),
    whether it was cut by the view or could not be measured (no heights), and the wedge /
    biconcave / crush height reductions behind the grade.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
import torch

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.screening import morphometry, spine
from fracture_qi.screening.device import pick_device
from fracture_qi.screening.keyimage import render_keyimage
from fracture_qi.screening.types import MorphType, SeriesResult, VertebraResult

log = logging.getLogger(__name__)

__version__ = "0.8.0"

#: coarsest z spacing (mm) graded; thicker volumes come back as SLICE_TOO_THICK
MAX_SLICE_MM = 3.0

#: levels searched for bone density, nearest to L1 first
DENSITY_ORDER = ("L1", "L2", "T12", "L3", "T11", "L4")


class ReferenceScreener:
    """Built-in morphometric vertebral fracture screener.

    Parameters
    ----------
    device
        ``"auto"`` (CUDA, then MPS, then CPU; ``FRACTURE_QI_DEVICE`` overrides), or a device name.
    flag_grade
        A study is flagged when any vertebra reaches this Genant grade (2 by default, as
        commercial tools do; 1 to flag mild deformities too).
    low_density_hu
        L1 trabecular HU below which ``low_density`` is set (110 HU: >90% specific for DXA
        osteoporosis, ANATOMY.md 3a).
    keyimage
        Render the key image (turn off for pure accuracy runs).
    max_slice_mm
        Volumes whose z spacing exceeds this (mm) are not graded: they come back as
        ``status="error"``, ``reason=SLICE_TOO_THICK``. At 5 mm a 20 mm body spans four
        slices, too coarse for the ~2 mm height loss a Genant grade rests on (on the synthetic
        demo 59% of fracture-free 5 mm studies were flagged). The index excludes such series
        first (:func:`fracture_qi.dicom.scan.eligibility`); this guard covers volumes that
        reach the screener directly.

    Examples
    --------
    >>> m = ReferenceScreener(device="cpu")
    >>> (m.model_id, m.sha256)
    ('fqi-reference', None)
    """

    model_id = "fqi-reference"
    model_version = __version__
    sha256: str | None = None

    def __init__(
        self,
        device: str | torch.device | None = "auto",
        flag_grade: int = 2,
        low_density_hu: float = 110.0,
        keyimage: bool = True,
        max_slice_mm: float = MAX_SLICE_MM,
    ) -> None:
        if flag_grade not in (1, 2, 3):
            raise ValueError(f"flag_grade must be 1, 2 or 3; got {flag_grade!r}")
        if not max_slice_mm > 0:
            raise ValueError(f"max_slice_mm must be a positive number of mm; got {max_slice_mm!r}")
        self.max_slice_mm = float(max_slice_mm)
        self.device = pick_device(device)
        self.flag_grade = int(flag_grade)
        self.low_density_hu = float(low_density_hu)
        self.keyimage = bool(keyimage)
        self.last_reformat: spine.SagittalReformat | None = None

    def __repr__(self) -> str:
        return (
            f"ReferenceScreener(device={str(self.device)!r}, flag_grade={self.flag_grade}, "
            f"low_density_hu={self.low_density_hu}, max_slice_mm={self.max_slice_mm})"
        )

    # -- public API ---------------------------------------------------------------------------

    def screen(self, volume: CTVolume) -> SeriesResult:
        """Screen one series; failures of anatomy come back as ``status="error"``.

        Parameters
        ----------
        volume
            The HU volume in canonical orientation.

        Returns
        -------
        SeriesResult
            ``status="error"``, ``reason=NO_VERTEBRAE`` when no spine or no measurable body is
            in view; ``reason=SLICE_TOO_THICK`` (nothing graded) when the z spacing exceeds
            ``max_slice_mm``; otherwise per-vertebra results, the flag, the study score (the highest
            vertebra score), L1 density and the key image.
        """
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = self._screen(volume)
        res.seconds = time.perf_counter() - t0
        return res

    def screen_many(self, volumes: Iterable[CTVolume]) -> list[SeriesResult]:
        """Screen several series; same results as calling :meth:`screen` on each."""
        return [self.screen(v) for v in volumes]

    def sagittal_reformat(self, volume: CTVolume) -> spine.SagittalReformat | None:
        """The curved mid-sagittal reformat of ``volume`` (``None`` when no spine is found).

        Returns
        -------
        SagittalReformat or None
            ``image`` (float32 HU, row 0 inferior), ``z_mm``, ``y_mm`` (grid mm of rows and
            columns) and ``x_mm`` (the plane's x at each row).
        """
        with torch.inference_mode():
            grid = spine.coarse_grid(volume, self.device)
            path = spine.locate_canal(volume, self.device, grid)
            if path is None:
                return None
            return spine.sagittal_reformat(volume, path, self.device)

    # -- pipeline -----------------------------------------------------------------------------

    def _error(self, detail: str) -> SeriesResult:
        return SeriesResult(status="error", reason=ReasonCode.NO_VERTEBRAE.value, detail=detail)

    def _screen(self, volume: CTVolume) -> SeriesResult:
        dz = float(volume.spacing[0])
        # tolerance: a 3.0 mm series stored as 3.0000001 is still 3 mm
        if dz > self.max_slice_mm + 1e-3:
            return SeriesResult(
                status="error", reason=ReasonCode.SLICE_TOO_THICK.value,
                detail=(f"slice spacing {dz:.2f} mm exceeds {self.max_slice_mm:g} mm: vertebral "
                        "heights cannot be measured to the ~2 mm a Genant grade needs. Fix: "
                        f"screen a thinner (<= {self.max_slice_mm:g} mm) reconstruction"),
            )
        if min(volume.extent_mm) < 20.0 or volume.shape[0] < 3:
            return self._error(
                f"volume of {volume.shape} voxels ({volume.extent_mm[0]:.0f} mm long) is too small "
                "to hold a vertebral body"
            )
        grid = spine.coarse_grid(volume, self.device)
        path = spine.locate_canal(volume, self.device, grid)
        if path is None:
            return self._error("no spinal canal found over at least 25 mm (no spine in view?)")
        st = spine.straighten(volume, path, self.device)
        bodies = spine.find_bodies(st)
        if not bodies:
            return self._error(f"spinal canal found over {path.length_mm:.0f} mm but no vertebral body between two discs")
        anchors = spine.label_levels(grid, st, bodies)
        # below L5 lies the sacrum, not a vertebra in T1..L5
        if anchors.sacral_index is not None:
            bodies = bodies[anchors.sacral_index :]
        meas = morphometry.measure_bodies(volume, st, bodies, self.device)
        # a body cut by the view is kept only when it has a level (it helps the reader)
        keep = [i for i, m in enumerate(meas) if not m.partial or m.level is not None]
        meas = [meas[i] for i in keep]
        if not any(not m.partial for m in meas):
            return self._error("vertebral bodies seen but none could be measured")
        morphometry.drop_implausibly_tall(meas)
        defs = morphometry.grade_bodies(meas)
        verts: list[VertebraResult] = []
        for m, d in zip(meas, defs):
            verts.append(_vertebra_result(m, d))
        # report cranial to caudal, as radiologists read
        verts = verts[::-1]
        res = SeriesResult(status="ok", vertebrae=verts)
        res.max_grade = max((v.genant_grade for v in verts), default=0)
        res.score = max((float(v.score) for v in verts if v.score is not None), default=0.0)
        res.flagged = res.max_grade >= self.flag_grade
        self._bone_density(res)
        if anchors.agree is False:
            res.detail = "level anchors (sacrum, last rib) disagree: levels left empty"
        if self.keyimage:
            try:
                reformat = spine.sagittal_reformat(volume, path, self.device, sampler=st.sampler)
                self.last_reformat = reformat
                res.keyimage = render_keyimage(reformat, verts, title=_title(res))
            except Exception:  # the key image is a courtesy: never lose the results for it
                log.exception("key image rendering failed; results kept without it")
        return res

    def _bone_density(self, res: SeriesResult) -> None:
        by_level = {v.level: v for v in res.vertebrae if v.level}
        for lv in DENSITY_ORDER:
            v = by_level.get(lv)
            # a fractured body is compacted: its HU is not the patient's bone density
            if v is not None and v.trabecular_hu is not None and v.genant_grade == 0:
                res.l1_hu = float(v.trabecular_hu)
                res.bone_density_level = lv
                break
        else:
            # no labelled level: the unfractured body nearest the middle of the lumbar spine
            cands = [v for v in res.vertebrae if v.trabecular_hu is not None and v.genant_grade == 0]
            if cands and not by_level:
                v = cands[len(cands) // 2]
                res.l1_hu = float(v.trabecular_hu)  # type: ignore[arg-type]
                res.bone_density_level = None
        if res.l1_hu is not None:
            res.low_density = bool(res.l1_hu < self.low_density_hu)


def _vertebra_result(m: morphometry.BodyMeasurement, d: morphometry.Deformity | None) -> VertebraResult:
    geom: dict = {
        "centre_zyx_mm": [round(float(c), 2) for c in m.centre_zyx] if m.centre_zyx else None,
        "x_mm": round(float(m.centre_zyx[2]), 2) if m.centre_zyx else None,
        "depth_mm": round(float(m.depth), 2) if m.depth else None,
        "width_mm": round(float(m.extra["width_mm"]), 2) if m.extra.get("width_mm") else None,
        "partial": bool(m.partial),
        "outline_zy_mm": np.round(m.outline_zy, 2).tolist() if m.outline_zy is not None else None,
    }
    if m.points_zy is not None:
        p = np.round(m.points_zy, 2)
        geom["points_zy_mm"] = p.tolist()
        geom["corners_zy_mm"] = [p[0].tolist(), p[2].tolist(), p[5].tolist(), p[3].tolist()]
    if d is not None:
        geom["reductions"] = {k: round(float(x), 3) for k, x in d.reductions.items()}
    return VertebraResult(
        level=m.level,
        genant_grade=int(d.grade) if d else 0,
        morph_type=d.morph_type if d else MorphType.NORMAL.value,
        ha_mm=None if m.ha is None else round(float(m.ha), 2),
        hm_mm=None if m.hm is None else round(float(m.hm), 2),
        hp_mm=None if m.hp is None else round(float(m.hp), 2),
        score=None if d is None else round(float(d.score), 4),
        trabecular_hu=None if m.trabecular_hu is None else round(float(m.trabecular_hu), 1),
        geometry=geom,
    )


def _title(res: SeriesResult) -> str:
    worst = [v for v in res.vertebrae if v.genant_grade == res.max_grade and res.max_grade > 0]
    parts = [f"{'FLAGGED' if res.flagged else 'not flagged'}; max grade {res.max_grade}"]
    if worst:
        parts.append(", ".join(f"{v.level or '?'} {v.morph_type}" for v in worst[:3]))
    if res.l1_hu is not None:
        parts.append(f"{res.bone_density_level or '?'} {res.l1_hu:.0f} HU")
    return " | ".join(parts)


