"""Where screening results go: the database, ``studies.csv`` / ``vertebrae.csv``, key images.

The two CSVs are a contract (``ARCHITECTURE.md``): other tools script against their columns,
so :data:`STUDIES_COLUMNS` and :data:`VERTEBRAE_COLUMNS` never change order or meaning.
``fracture-qi screen PATH... --out DIR`` and ``fracture-qi export`` both write them through
the same row builders here, so a folder screened directly and the same folder indexed,
screened and exported give the same rows.

Key images are PNGs named by a non-identifying id (``screening-<id>.png`` in the database
mode, ``k-<hash>.png`` in the folder mode); ``keyimages/index.csv`` maps the latter to their
series. Nothing identifying is drawn into them (the model renders them without text from
headers).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracture_qi.csvsafe import DictWriter
from fracture_qi.dicom.reasons import EXCLUSIONS, ReasonCode
from fracture_qi.errors import StoreError
from fracture_qi.screening.types import SeriesResult

# SQLAlchemy and the schema are imported by the database functions below, not here: folder
# mode (CsvSink) never touches a database, and `fracture-qi screen PATH` starts faster
# without them (benchmarks/startup_speed.py)

log = logging.getLogger(__name__)

#: ``studies.csv`` columns, in order (a contract: never reorder or rename)
STUDIES_COLUMNS: tuple[str, ...] = (
    "path", "study_instance_uid", "series_instance_uid", "status", "reason", "flagged",
    "max_grade", "n_vertebrae", "seconds",
)
#: ``vertebrae.csv`` columns, in order (a contract: never reorder or rename)
VERTEBRAE_COLUMNS: tuple[str, ...] = (
    "study_instance_uid", "series_instance_uid", "level", "genant_grade", "morph_type",
    "ha_mm", "hm_mm", "hp_mm", "score",
)
KEYIMAGE_INDEX_COLUMNS: tuple[str, ...] = ("keyimage", "study_instance_uid", "series_instance_uid")


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _num(value: Any, digits: int) -> Any:
    """A float rounded for CSV, or '' for missing/NaN."""
    if value is None:
        return ""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if not math.isfinite(f) else round(f, digits)


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def jsonable(value: Any) -> Any:
    """Numpy scalars/arrays and tuples -> plain JSON types; NaN -> None.

    >>> jsonable({"a": np.float32(1.5), "b": (np.int64(2), float("nan"))})
    {'a': 1.5, 'b': [2, None]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def study_row(
    *,
    path: str | None,
    study_instance_uid: str | None,
    series_instance_uid: str | None,
    status: str,
    reason: str | None,
    flagged: bool | None = None,
    max_grade: int | None = None,
    n_vertebrae: int | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """One ``studies.csv`` row. Outcome columns stay empty unless the status is ``ok``.

    >>> study_row(path="a", study_instance_uid="1", series_instance_uid="2", status="excluded",
    ...           reason="LOCALIZER")["flagged"]
    ''
    """
    if status == "error" and reason and str(reason) in {str(r) for r in EXCLUSIONS}:
        status = "excluded"  # e.g. a decode-time GANTRY_TILT: the geometry, not a corrupt file
    ok = status == "ok"
    return {
        "path": path or "",
        "study_instance_uid": study_instance_uid or "",
        "series_instance_uid": series_instance_uid or "",
        "status": status,
        "reason": str(reason) if reason else "",
        "flagged": int(bool(flagged)) if ok else "",
        "max_grade": int(max_grade or 0) if ok else "",
        "n_vertebrae": int(n_vertebrae or 0) if ok else "",
        "seconds": _num(seconds, 3),
    }


def vertebra_row(study_uid: str, series_uid: str, v: Any) -> dict[str, Any]:
    """One ``vertebrae.csv`` row from a VertebraResult or a VertebraFinding."""
    return {
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "level": v.level or "",
        "genant_grade": int(v.genant_grade or 0),
        "morph_type": v.morph_type or "",
        "ha_mm": _num(v.ha_mm, 2),
        "hm_mm": _num(v.hm_mm, 2),
        "hp_mm": _num(v.hp_mm, 2),
        "score": _num(v.score, 4),
    }


def save_keyimage(rgb: np.ndarray, path: Path) -> Path:
    """Write an RGB uint8 key image as PNG, atomically (tmp file + rename).

    Raises
    ------
    ValueError
        When *rgb* is not an (H, W, 3) or (H, W) uint8-convertible array.
    """
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"key image must be (H, W, 3) RGB; got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr).save(tmp, format="PNG", optimize=False)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# database
# --------------------------------------------------------------------------------------------
def start_run(
    engine: Any,
    model: Any,
    *,
    device: str | None,
    params: dict[str, Any],
    host: str,
    code_version: str,
) -> int:
    """Insert the ScreeningRun row of this invocation (with this process's id); return its id."""
    from fracture_qi.store.db import session_scope
    from fracture_qi.store.schema import ScreeningRun, utcnow

    with session_scope(engine) as s:
        run = ScreeningRun(
            model_id=str(model.model_id)[:100], model_version=str(model.model_version)[:50],
            model_sha256=getattr(model, "sha256", None), params=jsonable(params),
            device=(device or None) and str(device)[:32], host=host, code_version=code_version,
            status="running", n_ok=0, n_error=0, pid=os.getpid(), heartbeat_at=utcnow(),
        )
        s.add(run)
        s.flush()
        return int(run.id)


def finish_run(engine: Any, run_id: int, *, status: str) -> None:
    """Stamp the run's end and status (``finished``, ``interrupted`` or ``failed``)."""
    from fracture_qi.store.db import session_scope
    from fracture_qi.store.schema import ScreeningRun, utcnow

    try:
        with session_scope(engine) as s:
            run = s.get(ScreeningRun, run_id)
            if run is not None:
                run.status = status
                run.finished_at = utcnow()
    except Exception:  # never mask the error that ended the run
        log.exception("could not mark screening run %d as %s", run_id, status)


def grown(screened: int | None, now: int | None) -> bool:
    """Whether a series screened with *screened* instances holds different content now
    (*now* instances): both counts must be known.

    >>> grown(90, 150), grown(150, 150), grown(None, 150), grown(90, None)
    (True, False, False, False)
    """
    return screened is not None and now is not None and int(screened) != int(now)


class DatabaseSink:
    """Write each outcome in its own transaction: a Screening row + its VertebraFindings.

    The run's ``n_ok``/``n_error`` are updated in the same transaction, so they stay true
    even when the run is killed. A current row for (series, model, version) made on the
    same instances is left alone: :meth:`write` returns ``False``. A current row made on a
    different number of instances (the series grew after it was screened) is superseded by
    an outcome made on the instances the series holds now: the new row points at it
    (``supersedes_id``) and it is kept. An outcome of a job made before the series changed
    (a long batch overtaken by the listener) never supersedes anything.
    """

    def __init__(self, engine: Any, *, run_id: int, model: Any, keyimage_dir: Path) -> None:
        self.engine = engine
        self.run_id = run_id
        self.model_id = str(model.model_id)
        self.model_version = str(model.model_version)
        self.keyimage_dir = Path(keyimage_dir)

    def _current(self, s: Any, series_id: int) -> Any:
        from sqlalchemy import select

        from fracture_qi.store.schema import Screening, screening_is_current

        return s.scalars(select(Screening).where(
            Screening.series_id == series_id, Screening.model_id == self.model_id,
            Screening.model_version == self.model_version, screening_is_current())).first()

    def _exists(self, series_id: int, n_instances: int | None) -> bool:
        from fracture_qi.store.db import session_scope

        with session_scope(self.engine) as s:
            row = self._current(s, series_id)
            return row is not None and not grown(row.n_instances, n_instances)

    def write(self, outcome: Any) -> bool:
        """Store one outcome; ``False`` when this model version already screened the series
        as it is (same instance count, or a count not known).

        Raises
        ------
        StoreError
            When the job has no ``series_id`` or the database refuses the row otherwise.
        """
        from sqlalchemy import select
        from sqlalchemy.exc import IntegrityError

        from fracture_qi.store.db import session_scope
        from fracture_qi.store.schema import (
            Screening,
            ScreeningRun,
            Series,
            VertebraFinding,
            utcnow,
        )

        job = outcome.job
        res: SeriesResult = outcome.result
        if job.series_id is None:
            raise StoreError(f"series {job.key} has no database id; index it first "
                             "(fracture-qi index --manifest M)")
        n_instances = getattr(job, "n_instances", None)
        try:
            with session_scope(self.engine) as s:
                current = self._current(s, int(job.series_id))
                if current is not None and not grown(current.n_instances, n_instances):
                    log.info("series %s already screened by %s %s; kept the existing row",
                             job.series_id, self.model_id, self.model_version)
                    return False
                if current is not None:
                    held = s.scalar(select(Series.n_instances).where(Series.id == job.series_id))
                    if grown(n_instances, held):  # a job made before the series changed
                        log.info("series %s changed while it was screened (%s instances, now "
                                 "%s): result dropped, screening %d kept", job.series_id,
                                 n_instances, held, current.id)
                        return False
                    log.info("series %s holds %s instances, screening %d saw %s: the new "
                             "screening supersedes it (kept)", job.series_id, n_instances,
                             current.id, current.n_instances)
                row = Screening(
                    run_id=self.run_id, series_id=int(job.series_id), model_id=self.model_id,
                    model_version=self.model_version, status=res.status,
                    reason=str(res.reason) if res.reason else None, detail=res.detail,
                    flagged=bool(res.flagged), score=_float_or_none(res.score),
                    max_grade=int(res.max_grade or 0), n_vertebrae=res.n_vertebrae,
                    l1_hu=_float_or_none(res.l1_hu), bone_density_level=res.bone_density_level,
                    low_density=res.low_density, seconds=_float_or_none(res.seconds),
                    n_instances=n_instances,
                    supersedes_id=current.id if current is not None else None,
                )
                s.add(row)
                for v in res.vertebrae:
                    s.add(VertebraFinding(
                        screening=row, level=v.level, genant_grade=int(v.genant_grade or 0),
                        morph_type=v.morph_type or "", ha_mm=_float_or_none(v.ha_mm),
                        hm_mm=_float_or_none(v.hm_mm), hp_mm=_float_or_none(v.hp_mm),
                        score=_float_or_none(v.score),
                        trabecular_hu=_float_or_none(v.trabecular_hu),
                        geometry=jsonable(v.geometry) if v.geometry is not None else None,
                    ))
                s.flush()  # the unique constraint speaks here, before any file is written
                if res.keyimage is not None:
                    path = self.keyimage_dir / f"screening-{row.id:08d}.png"
                    try:
                        row.keyimage_path = str(save_keyimage(res.keyimage, path))
                    except (OSError, ValueError) as e:
                        log.warning("key image of screening %d not saved: %s", row.id, e)
                run = s.get(ScreeningRun, self.run_id)
                if run is not None:
                    if res.status == "ok":
                        run.n_ok = (run.n_ok or 0) + 1
                    else:
                        run.n_error = (run.n_error or 0) + 1
                    run.heartbeat_at = utcnow()
        except IntegrityError as e:  # another writer stored it first
            if self._exists(int(job.series_id), n_instances):
                log.info("series %s already screened by %s %s; kept the existing row",
                         job.series_id, self.model_id, self.model_version)
                return False
            raise StoreError(f"screening of series {job.series_id} could not be stored: "
                             f"{e.orig}. Fix: check the database (fracture-qi index first)") from e
        return True


# --------------------------------------------------------------------------------------------
# CSV (folder mode)
# --------------------------------------------------------------------------------------------
def keyimage_name(model_id: str, model_version: str, series_uid: str) -> str:
    """A stable, non-identifying key image file name for a series and model.

    >>> keyimage_name("m", "1", "1.2.3").startswith("k-")
    True
    """
    digest = hashlib.sha256(f"{model_id}|{model_version}|{series_uid}".encode()).hexdigest()
    return f"k-{digest[:20]}.png"


class _CsvFile:
    def __init__(self, path: Path, columns: Iterable[str]) -> None:
        self.path = path
        tmp = path.with_name(path.name + ".partial")
        self._tmp = tmp
        self._f = open(tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115  (closed by close())
        # the suite's one CSV writer: a folder or header text cannot become a formula
        self._w = DictWriter(self._f, fieldnames=list(columns))
        self._w.writeheader()
        self.n = 0

    def write(self, row: dict[str, Any]) -> None:
        self._w.writerow(row)
        self._f.flush()  # rows of a killed run are on disk
        self.n += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
            os.replace(self._tmp, self.path)


class CsvSink:
    """Write ``studies.csv``, ``vertebrae.csv`` and key images into an output folder.

    Rows are written (and flushed) as series finish, into ``*.csv.partial`` files renamed
    to their final names by :meth:`close`.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.keyimage_dir = self.out_dir / "keyimages"
        self.studies = _CsvFile(self.out_dir / "studies.csv", STUDIES_COLUMNS)
        self.vertebrae = _CsvFile(self.out_dir / "vertebrae.csv", VERTEBRAE_COLUMNS)
        self._keyindex: _CsvFile | None = None

    def write_problem(self, problem: Any) -> None:
        """A file that could not be used (not DICOM, truncated...)."""
        reason = str(getattr(problem, "reason", "") or ReasonCode.UNREADABLE)
        status = "excluded" if reason in {str(r) for r in EXCLUSIONS} else "error"
        self.studies.write(study_row(path=str(problem.path), study_instance_uid=None,
                                     series_instance_uid=None, status=status, reason=reason))

    def write_unscreened(self, series: Any, *, status: str, reason: Any) -> None:
        """A series found but not screened (excluded, error at scan time, not chosen)."""
        self.studies.write(study_row(
            path=str(getattr(series, "folder", "") or ""),
            study_instance_uid=str(series.study_instance_uid or ""),
            series_instance_uid=str(series.series_instance_uid or ""),
            status=status if status in ("ok", "excluded", "error") else "error",
            reason=str(reason) if reason else None,
        ))

    def write(self, outcome: Any, model: Any) -> None:
        """A screened series: its row, its vertebrae and its key image."""
        job, res = outcome.job, outcome.result
        self.studies.write(study_row(
            path=job.path, study_instance_uid=job.study_instance_uid,
            series_instance_uid=job.series_instance_uid, status=res.status, reason=res.reason,
            flagged=res.flagged, max_grade=res.max_grade, n_vertebrae=res.n_vertebrae,
            seconds=res.seconds,
        ))
        for v in res.vertebrae:
            self.vertebrae.write(vertebra_row(job.study_instance_uid, job.series_instance_uid, v))
        if res.keyimage is not None:
            name = keyimage_name(model.model_id, model.model_version, job.series_instance_uid)
            try:
                save_keyimage(res.keyimage, self.keyimage_dir / name)
            except (OSError, ValueError) as e:
                log.warning("key image of series %s not saved: %s", job.key, e)
                return
            if self._keyindex is None:
                self._keyindex = _CsvFile(self.keyimage_dir / "index.csv", KEYIMAGE_INDEX_COLUMNS)
            self._keyindex.write({"keyimage": name, "study_instance_uid": job.study_instance_uid,
                                  "series_instance_uid": job.series_instance_uid})

    def close(self) -> None:
        """Finish the files (rename the partial files to their final names)."""
        self.studies.close()
        self.vertebrae.close()
        if self._keyindex is not None:
            self._keyindex.close()


# --------------------------------------------------------------------------------------------
# export from the database
# --------------------------------------------------------------------------------------------
@dataclass
class ExportSummary:
    """What :func:`export_results` wrote."""

    out_dir: str
    model_id: str | None
    model_version: str | None
    n_series_rows: int = 0
    n_problem_rows: int = 0
    n_vertebrae: int = 0
    n_unscreened: int = 0
    files: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        model = f"{self.model_id} {self.model_version}" if self.model_id else "no model yet"
        out = [(f"exported results of {model}: {self.n_series_rows} series rows, "
                f"{self.n_problem_rows} file rows, {self.n_vertebrae} vertebrae")]
        if self.n_unscreened:
            out.append(f"  {self.n_unscreened} eligible series not screened yet by this model "
                       "(run fracture-qi screen --manifest M)")
        out += [f"  {f}" for f in self.files]
        return out


def export_results(
    engine: Any,
    out_dir: str | Path,
    *,
    model_id: str | None = None,
    model_version: str | None = None,
) -> ExportSummary:
    """Write the database's screening results as ``studies.csv`` and ``vertebrae.csv``.

    One row per indexed series (its current screening by the chosen model where there is
    one, else its index status and reason; a screening superseded after the series gained
    instances is not exported) and one per file the index could not use. Eligible series
    not yet screened by the model are left out (and counted).

    Parameters
    ----------
    engine
        The database.
    out_dir
        Created if missing.
    model_id, model_version
        Which model's results (default: the default model of
        :mod:`fracture_qi.screening.counting`, the one with the most results; with only
        *model_id*, its current version). A study's row is its counted result: the chosen
        series' screening by that model.

    Returns
    -------
    ExportSummary
    """
    from sqlalchemy import select

    from fracture_qi.screening.counting import resolve_model
    from fracture_qi.store.db import session_scope
    from fracture_qi.store.schema import (
        IndexProblem,
        Screening,
        Series,
        Study,
        screening_is_current,
    )

    if not (model_id and model_version):
        ref = resolve_model(engine, model_id or None)
        if ref is not None:
            model_id, model_version = ref.model_id, ref.model_version
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(out_dir=str(out.resolve()), model_id=model_id,
                            model_version=model_version)
    studies = _CsvFile(out / "studies.csv", STUDIES_COLUMNS)
    vertebrae = _CsvFile(out / "vertebrae.csv", VERTEBRAE_COLUMNS)
    try:
        with session_scope(engine) as s:
            screened: dict[int, Screening] = {}
            if model_id:
                for row in s.scalars(select(Screening).where(
                        Screening.model_id == model_id, Screening.model_version == model_version,
                        screening_is_current())):
                    screened[row.series_id] = row
            rows = s.execute(
                select(Series, Study.study_instance_uid).join(Study, Series.study_id == Study.id)
                .order_by(Study.study_instance_uid, Series.series_instance_uid)
            ).all()
            for series, study_uid in rows:
                sc = screened.get(series.id)
                if sc is not None:
                    studies.write(study_row(
                        path=series.path, study_instance_uid=study_uid,
                        series_instance_uid=series.series_instance_uid, status=sc.status,
                        reason=sc.reason, flagged=sc.flagged, max_grade=sc.max_grade,
                        n_vertebrae=sc.n_vertebrae, seconds=sc.seconds,
                    ))
                    for f in sorted(sc.findings, key=lambda f: f.id):
                        vertebrae.write(vertebra_row(study_uid, series.series_instance_uid, f))
                        summary.n_vertebrae += 1
                    summary.n_series_rows += 1
                    continue
                status = series.status or "ok"
                reason = series.reason
                if status == "ok" and not series.chosen:
                    status, reason = "excluded", reason or str(ReasonCode.NOT_CHOSEN)
                if status == "ok":
                    summary.n_unscreened += 1
                    continue
                studies.write(study_row(path=series.path, study_instance_uid=study_uid,
                                        series_instance_uid=series.series_instance_uid,
                                        status=status, reason=reason))
                summary.n_series_rows += 1
            for p in s.scalars(select(IndexProblem).order_by(IndexProblem.path)):
                status = "excluded" if p.reason in {str(r) for r in EXCLUSIONS} else "error"
                studies.write(study_row(path=p.path, study_instance_uid=None,
                                        series_instance_uid=None, status=status, reason=p.reason))
                summary.n_problem_rows += 1
    finally:
        studies.close()
        vertebrae.close()
    summary.files = [str(studies.path), str(vertebrae.path)]
    if summary.n_unscreened:
        log.warning("%d eligible series have no result from %s %s yet", summary.n_unscreened,
                    model_id, model_version)
    return summary


__all__ = [
    "STUDIES_COLUMNS",
    "VERTEBRAE_COLUMNS",
    "CsvSink",
    "DatabaseSink",
    "ExportSummary",
    "export_results",
    "finish_run",
    "jsonable",
    "keyimage_name",
    "save_keyimage",
    "start_run",
    "study_row",
    "vertebra_row",
]
