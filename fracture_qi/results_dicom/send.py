"""Send screening results back into the PACS as DICOM: SR, key image, SEG; each once.

:func:`send_results` is the step ``fracture-qi screen --manifest M`` runs after screening
and ``fracture-qi listen`` runs after each study, when the manifest has
``results_to_pacs: {source: NAME}``. For every successful screening that is due it builds
the objects asked for (``results_to_pacs.objects``), records each in ``result_objects``
(status ``pending``), sends them by STOW-RS or C-STORE through
:func:`fracture_qi.dicom.pacs.store_instances`, and marks them ``sent``. A failure is
recorded (``failed``, with the reason) and retried the next time; the batch goes on.

UIDs are derived from the screening (:func:`~fracture_qi.results_dicom.sr.result_uid`), so
an object sent again after an interruption (sent, but killed before it was marked) replaces
the copy in the PACS instead of adding a second one.

A screening superseded because its series gained instances (the listener screened a study
before all of it had arrived) is not sent any more; the screening of the completed series
is sent as new instances in the same result series, its SR naming the SR already sent in
its Predecessor Documents Sequence (:func:`~fracture_qi.results_dicom.sr.object_uids`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select

from fracture_qi.errors import FractureQIError, PacsError
from fracture_qi.results_dicom.source import ResultSourceError, ScreenedSeries, screened_series
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import (
    ResultObject,
    Screening,
    Series,
    Study,
    screening_is_current,
    utcnow,
)

log = logging.getLogger(__name__)

#: a result object that failed this many times is not retried automatically any more
MAX_ATTEMPTS = 5


@dataclass
class SendSummary:
    """What :func:`send_results` did."""

    destination: str = ""
    n_screenings: int = 0
    n_sent: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human summary for the command line."""
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_kind.items())) or "nothing"
        out = [f"results to PACS ({self.destination}): {kinds} sent for {self.n_screenings} "
               f"screening(s), {self.n_failed} failed, in {self.seconds:.1f} s"]
        out += [f"  {e}" for e in self.errors[:10]]
        return out


def build_objects(s: ScreenedSeries, kinds: Sequence[str], *, series_number: int = 9701
                  ) -> dict[str, Dataset]:
    """The DICOM objects of one screened series, by kind (``sr``, ``keyimage``, ``seg``).

    A kind that cannot be made for this result (no key image; no outlines for a SEG) is left
    out, with a log line.
    """
    from fracture_qi.results_dicom.sc import build_keyimage
    from fracture_qi.results_dicom.sr import build_sr

    out: dict[str, Dataset] = {}
    if "sr" in kinds:
        out["sr"] = build_sr(s, series_number=series_number)
    if "keyimage" in kinds:
        if s.keyimage is None:
            log.info("screening %s has no key image: no Secondary Capture", s.screening_id)
        else:
            out["keyimage"] = build_keyimage(s, series_number=series_number + 1)
    if "seg" in kinds:
        from fracture_qi.results_dicom.seg import build_seg

        seg = build_seg(s, series_number=series_number + 2)
        if seg is None:
            log.info("screening %s carries no outlines: no SEG", s.screening_id)
        else:
            out["seg"] = seg
    return out


def due_screenings(engine: Any, destination: str, kinds: Sequence[str], *,
                   screening_ids: Iterable[int] | None = None, retry_failed: bool = True
                   ) -> dict[int, list[str]]:
    """Successful current screenings of chosen series with objects of *kinds* not yet sent
    (a screening superseded by one of the completed series is never sent).

    Returns
    -------
    dict
        screening id -> the kinds still due for it (in *kinds* order).

    Parameters
    ----------
    screening_ids
        Only these (default: every screening; ``fracture-qi pacs send`` uses that).
    retry_failed
        Include objects that failed before (fewer than :data:`MAX_ATTEMPTS` times).
    """
    wanted = None if screening_ids is None else {int(i) for i in screening_ids}
    with session_scope(engine) as s:
        stmt = (select(Screening.id).join(Series, Screening.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .where(Screening.status == "ok", Study.chosen_series_id == Series.id,
                       screening_is_current())
                .order_by(Screening.id))
        ids = [i for i in s.scalars(stmt) if wanted is None or i in wanted]
        done: dict[int, set[str]] = {}
        for sid, kind, status, attempts in s.execute(
                select(ResultObject.screening_id, ResultObject.kind, ResultObject.status,
                       ResultObject.attempts)
                .where(ResultObject.destination == destination)):
            finished = status in ("sent", "skipped") or (status == "failed" and (
                not retry_failed or attempts >= MAX_ATTEMPTS))
            if finished:
                done.setdefault(sid, set()).add(kind)
    out = {}
    for i in ids:
        left = [k for k in kinds if k not in done.get(i, set())]
        if left:
            out[i] = left
    return out


def screenings_of_run(engine: Any, run_id: int) -> list[int]:
    """The screenings one screening run wrote."""
    with session_scope(engine) as s:
        return list(s.scalars(select(Screening.id).where(Screening.run_id == run_id)))


def send_after_run(manifest: Any, engine: Any, run_id: int | None, *, progress: bool = False
                   ) -> SendSummary:
    """What ``fracture-qi screen --manifest M`` runs after screening: send the results of
    this run, and retry those that failed to reach the PACS before."""
    config = getattr(manifest, "results_to_pacs", None)
    if config is None:
        return SendSummary()
    ids = set(failed_screenings(engine, config.source))
    if run_id is not None:
        ids.update(screenings_of_run(engine, run_id))
    return send_results(manifest, engine, screening_ids=sorted(ids), progress=progress)


def failed_screenings(engine: Any, destination: str) -> list[int]:
    """Screenings with an object that failed to reach *destination* and may be retried."""
    with session_scope(engine) as s:
        return sorted(set(s.scalars(select(ResultObject.screening_id).where(
            ResultObject.destination == destination, ResultObject.status == "failed",
            ResultObject.attempts < MAX_ATTEMPTS))))


def _record(engine: Any, screening_id: int, kind: str, destination: str, ds: Dataset | None
            ) -> int:
    """Insert or refresh the ``result_objects`` row of one object (``skipped`` without one)."""
    with session_scope(engine) as s:
        row = s.scalars(select(ResultObject).where(
            ResultObject.screening_id == screening_id, ResultObject.kind == kind,
            ResultObject.destination == destination)).first()
        if row is None:
            row = ResultObject(screening_id=screening_id, kind=kind, destination=destination,
                               attempts=0)
            s.add(row)
        if ds is None:  # nothing of this kind for this result (no key image, no outlines)
            row.study_instance_uid = row.series_instance_uid = ""
            row.sop_instance_uid = row.sop_class_uid = ""
            row.status = "skipped"
        else:
            row.study_instance_uid = str(ds.StudyInstanceUID)
            row.series_instance_uid = str(ds.SeriesInstanceUID)
            row.sop_instance_uid = str(ds.SOPInstanceUID)
            row.sop_class_uid = str(ds.SOPClassUID)
            row.status = "pending"
        s.flush()
        return int(row.id)


def _mark(engine: Any, ids: Iterable[int], *, status: str, detail: str | None = None) -> None:
    with session_scope(engine) as s:
        for i in ids:
            row = s.get(ResultObject, i)
            if row is None:
                continue
            row.status = status
            row.detail = detail
            row.attempts = (row.attempts or 0) + 1
            if status == "sent":
                row.sent_at = utcnow()


def send_results(manifest: Any, engine: Any, *, screening_ids: Iterable[int] | None = None,
                 retry_failed: bool = True, progress: bool = False) -> SendSummary:
    """Build and send the DICOM results of the due screenings (see the module docstring).

    Parameters
    ----------
    manifest
        The site manifest; ``results_to_pacs`` names the destination and the objects.
    engine
        The suite's database.
    screening_ids
        Only these screenings (the run or the study just screened); default every
        screening not yet sent.
    retry_failed
        Also retry objects that failed before.
    progress
        A progress bar over screenings.

    Returns
    -------
    SendSummary
        Nothing is sent (and the summary is empty) when ``results_to_pacs`` is not set.

    Raises
    ------
    FractureQIError
        Never for one screening or one refused send (recorded and counted); only when the
        manifest's destination is unusable.
    """
    t0 = time.perf_counter()
    config = getattr(manifest, "results_to_pacs", None)
    summary = SendSummary()
    if config is None:
        return summary
    destination = manifest.results_destination()
    summary.destination = config.source
    kinds = list(config.objects)
    due = due_screenings(engine, config.source, kinds, screening_ids=screening_ids,
                         retry_failed=retry_failed)
    ids = list(due)
    iterator: Iterable[int] = ids
    if progress and ids:
        from tqdm.auto import tqdm

        iterator = tqdm(ids, desc="send results", unit="series")
    sources = list(getattr(manifest, "dicom_sources", []) or [])
    base = Path(getattr(manifest, "base", None) or Path.cwd())
    for sid in iterator:
        summary.n_screenings += 1
        try:
            series = screened_series(engine, sid, sources=sources, base=base)
            objects = build_objects(series, due[sid], series_number=config.series_number)
        except (ResultSourceError, ValueError, TypeError, AttributeError) as e:
            # a result that cannot be written (its images gone...) must not stop the batch
            log.error("screening %d: results not built: %s", sid, e)
            summary.n_failed += 1
            summary.errors.append(f"screening {sid}: {e}")
            continue
        for kind in due[sid]:
            if kind not in objects:
                _record(engine, sid, kind, config.source, None)
        if not objects:
            summary.n_skipped += 1
            continue
        rows = {kind: _record(engine, sid, kind, config.source, ds)
                for kind, ds in objects.items()}
        try:
            from fracture_qi.dicom.pacs import store_instances

            store_instances(destination, list(objects.values()), base=base)
        except (PacsError, FractureQIError) as e:
            log.error("screening %d: results not sent to %s: %s", sid, config.source, e)
            _mark(engine, rows.values(), status="failed", detail=str(e)[:2000])
            summary.n_failed += len(rows)
            summary.errors.append(f"screening {sid}: {e}")
            continue
        _mark(engine, rows.values(), status="sent")
        summary.n_sent += len(rows)
        for kind in objects:
            summary.by_kind[kind] = summary.by_kind.get(kind, 0) + 1
        log.info("screening %d: %s sent to %s", sid, ", ".join(objects), config.source)
    summary.seconds = time.perf_counter() - t0
    return summary


__all__ = ["MAX_ATTEMPTS", "SendSummary", "build_objects", "due_screenings", "failed_screenings",
           "screenings_of_run", "send_after_run", "send_results"]
