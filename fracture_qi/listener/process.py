"""What the listener does with a complete study, in-process: index, screen, send, worklist.

:class:`StudyProcessor` holds what is loaded once (the manifest, the database, the model)
and :meth:`StudyProcessor.process` runs the four steps on one study. Every step is the same
library function the commands use, and every step is idempotent, so a study processed twice
(a crash after screening) changes nothing the second time. A study whose series gained
instances after it was processed (the sender paused for longer than ``quiet_seconds``, then
sent the rest) is screened again on the complete series: the new screening supersedes the
one of the incomplete series, which is kept but no longer counts, is not sent again, and
leaves the worklist to the new result.

1. **index** the study's folder of the storage area (:func:`fracture_qi.dicom.index.index_folder`,
   under the storage folder source's name): eligibility and the chosen series;
2. **screen** the chosen series if this model has not screened it as it is now
   (:func:`fracture_qi.screening.engine.run_screening` with the study's job, decoded in this
   process);
3. **send** the results back into the PACS when ``results_to_pacs`` is set
   (:func:`fracture_qi.results_dicom.send.send_results`);
4. **refresh the worklist** (:func:`fracture_qi.adjudication.worklist.build_worklist`): a
   flagged study is before the nurses without anyone running another command.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import Screening, Series, Study, screening_is_current

log = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    """What processing one study did."""

    study_instance_uid: str
    eligible: bool = False
    reason: str | None = None
    screened: int = 0
    flagged: bool = False
    sent: int = 0
    send_failed: int = 0
    worklist_added: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        """One log line, no identifiers beyond the study UID's tail."""
        what = ("not eligible (" + str(self.reason) + ")" if not self.eligible else
                f"screened {self.screened}, {'FLAGGED' if self.flagged else 'not flagged'}")
        times = " ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return (f"study ...{self.study_instance_uid[-12:]}: {what}; {self.sent} result "
                f"object(s) sent{f', {self.send_failed} failed' if self.send_failed else ''}; "
                f"worklist +{self.worklist_added} ({times})")


def _screening_settings(manifest: Any) -> dict[str, Any]:
    screening = getattr(manifest, "screening", None)
    if screening is None:
        return {}
    data = screening.model_dump() if hasattr(screening, "model_dump") else dict(screening)
    return {k: v for k, v in data.items() if v is not None}


class StudyProcessor:
    """Index, screen, send and list one complete study at a time (see the module docstring).

    Parameters
    ----------
    manifest
        The site manifest (its first folder source is the storage area).
    engine
        The suite's database.
    model
        A built screening model (default: the manifest's, loaded once here).
    """

    def __init__(self, manifest: Any, engine: Any, *, model: Any = None) -> None:
        from fracture_qi.dicom.index import manifest_max_slice_mm
        from fracture_qi.screening.models import load_model

        self.manifest = manifest
        self.engine = engine
        self.storage = manifest.storage_area()
        self.area = Path(self.storage.path)
        self.secret = manifest.secret()
        self.max_slice_mm = manifest_max_slice_mm(manifest)
        settings = _screening_settings(manifest)
        self.model = model if model is not None else load_model(
            manifest.model, base=manifest.base, device=settings.get("device", "auto"),
            flag_grade=settings.get("flag_grade", 2),
            low_density_hu=settings.get("low_density_hu"),
            max_slice_mm=settings.get("max_slice_mm"),
        )
        from fracture_qi.adjudication.worklist import AdjudicationSettings

        self.adjudication = AdjudicationSettings.from_mapping(manifest.adjudication)

    def _index(self, study_uid: str) -> None:
        from fracture_qi.dicom.index import index_folder

        folder = self.area / study_uid
        if not folder.is_dir():
            log.warning("study ...%s has no folder in the storage area", study_uid[-12:])
            return
        index_folder(folder, self.engine, self.secret, source_name=self.storage.name,
                     site=self.manifest.site, workers=1, max_slice_mm=self.max_slice_mm)

    def _screen(self, study_uid: str) -> int:
        from fracture_qi.dicom.index import chosen_series
        from fracture_qi.screening.engine import run_screening
        from fracture_qi.screening.runs import jobs_from_refs

        refs = chosen_series(self.engine, studies=[study_uid],
                             unscreened_for=(self.model.model_id, self.model.model_version))
        if not refs:
            return 0
        jobs = jobs_from_refs(refs)  # with the instance count the screening is made on
        summary = run_screening(self.manifest, self.engine, model=self.model, jobs=jobs,
                                workers=0, progress=False)
        return summary.n_ok + summary.n_error

    def _screenings(self, study_uid: str) -> list[tuple[int, bool]]:
        with session_scope(self.engine) as s:
            return [(i, bool(f)) for i, f in s.execute(
                select(Screening.id, Screening.flagged)
                .join(Series, Screening.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .where(Study.study_instance_uid == study_uid,
                       Screening.model_id == self.model.model_id,
                       Screening.model_version == self.model.model_version,
                       Screening.status == "ok", screening_is_current()))]

    def process(self, study_uid: str) -> StudyOutcome:
        """Run the four steps on one study; raises only when a step cannot run at all."""
        from fracture_qi.adjudication.worklist import build_worklist
        from fracture_qi.results_dicom.send import send_results

        out = StudyOutcome(study_instance_uid=study_uid)
        t = time.perf_counter()
        self._index(study_uid)
        out.seconds["index"] = time.perf_counter() - t
        with session_scope(self.engine) as s:
            row = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
            out.eligible = bool(row is not None and row.eligible)
            out.reason = row.reason if row is not None else "NOT_INDEXED"
        if out.eligible:
            t = time.perf_counter()
            out.screened = self._screen(study_uid)
            out.seconds["screen"] = time.perf_counter() - t
        screenings = self._screenings(study_uid)
        out.flagged = any(f for _, f in screenings)
        if screenings and getattr(self.manifest, "results_to_pacs", None) is not None:
            t = time.perf_counter()
            sent = send_results(self.manifest, self.engine,
                                screening_ids=[i for i, _ in screenings])
            out.sent, out.send_failed = sent.n_sent, sent.n_failed
            out.seconds["send"] = time.perf_counter() - t
        if screenings:
            t = time.perf_counter()
            out.worklist_added = build_worklist(self.engine, settings=self.adjudication).n_added
            out.seconds["worklist"] = time.perf_counter() - t
        return out


__all__ = ["StudyOutcome", "StudyProcessor"]
