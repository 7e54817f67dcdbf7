"""The listener's loop: receive, wait for quiet, process, until stopped.

:func:`listen` opens the database, loads the model once, recovers the storage area after
any crash (:func:`fracture_qi.listener.storage.recover`) just before it starts the storage
SCP (or follows an Orthanc's changes feed), so a study left open by the last run gets its
whole ``quiet_seconds`` for the sender to resume, not what is left of it after the model
has loaded; then it loops: every :data:`TICK_S` it marks the
studies that have been quiet for ``quiet_seconds`` as complete and processes them one at a
time (:class:`~fracture_qi.listener.process.StudyProcessor`). Results that failed to reach
the PACS are retried every :data:`RETRY_SEND_S`. A study whose processing raises is retried
(:data:`MAX_ATTEMPTS` tries, :data:`RETRY_DELAY_S` apart) and then left ``failed`` with the
error, for IT to look at; the loop goes on.

SIGTERM or SIGINT (systemd stop, Ctrl-C) stops it cleanly: no new association is accepted,
the study being processed is finished, associations in progress are given
:data:`DRAIN_S` to end, and :func:`listen` returns (``fracture-qi listen`` exits 0). What
was received but not processed is processed on the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracture_qi.listener.scp import Counters
from fracture_qi.listener.storage import complete_studies, recover
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import ReceivedStudy, utcnow

log = logging.getLogger(__name__)

#: seconds between checks for complete studies
TICK_S = 0.5
#: processing tries of one study before it is left ``failed``
MAX_ATTEMPTS = 3
#: seconds between two tries of a study whose processing failed
RETRY_DELAY_S = 60.0
#: seconds between retries of result objects that did not reach the PACS
RETRY_SEND_S = 300.0
#: seconds given to associations in progress when stopping
DRAIN_S = 30.0
#: seconds between two summary log lines
SUMMARY_S = 300.0


@dataclass
class ListenSummary:
    """What one run of the listener did (returned when it stops)."""

    studies_processed: int = 0
    studies_failed: int = 0
    flagged: int = 0
    counters: Counters = field(default_factory=Counters)
    seconds: float = 0.0

    def line(self) -> str:
        c = self.counters
        return (f"received {c.stored} instance(s) ({c.copies} copies, {c.refused} refused) "
                f"over {c.associations} association(s); processed {self.studies_processed} "
                f"study(ies), {self.flagged} flagged, {self.studies_failed} failed, in "
                f"{self.seconds:.0f} s")


class Listener:
    """The running service; :meth:`stop` (or a signal) ends :meth:`run`."""

    def __init__(self, manifest: Any, engine: Any, *, model: Any = None) -> None:
        from fracture_qi.listener.process import StudyProcessor

        if manifest.listener is None:
            from fracture_qi.errors import ConfigError

            raise ConfigError(
                f"{manifest.path}: no listener section. Fix: add listener: {{ae_title: "
                "FRACTUREQI, port: 11112, allowed_callers: [PACS], quiet_seconds: 10}")
        self.manifest = manifest
        self.config = manifest.listener
        self.engine = engine
        self.area = Path(manifest.storage_area().path)
        self.area.mkdir(parents=True, exist_ok=True)
        self.summary = ListenSummary()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._next_try: dict[str, float] = {}
        self.processor = StudyProcessor(manifest, engine, model=model)
        self._server: Any = None
        self._feed: Any = None

    # ------------------------------------------------------------------------------ control
    def stop(self, *_: Any) -> None:
        """Ask the loop to finish the current step and return."""
        if not self._stop.is_set():
            log.info("stopping: finishing the current step")
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _mark_complete(self, study_uid: str) -> None:
        with session_scope(self.engine) as s:
            row = s.query(ReceivedStudy).filter_by(study_instance_uid=study_uid).first()
            if row is not None and row.state == "receiving":
                row.state = "complete"
        self._wake.set()

    # ------------------------------------------------------------------------------ steps
    def _process_one(self, study_uid: str) -> None:
        with session_scope(self.engine) as s:
            row = s.query(ReceivedStudy).filter_by(study_instance_uid=study_uid).first()
            if row is None or row.state != "complete":
                return
            n_at_start = row.n_instances
        t0 = time.perf_counter()
        try:
            outcome = self.processor.process(study_uid)
        except Exception as e:  # noqa: BLE001 - one study must not stop the service
            log.exception("study ...%s: processing failed", study_uid[-12:])
            with session_scope(self.engine) as s:
                row = s.query(ReceivedStudy).filter_by(study_instance_uid=study_uid).first()
                if row is not None:
                    row.attempts = (row.attempts or 0) + 1
                    row.last_error = f"{type(e).__name__}: {e}"[:2000]
                    if row.attempts >= MAX_ATTEMPTS:
                        row.state = "failed"
                        self.summary.studies_failed += 1
                        log.error("study ...%s left failed after %d tries: %s",
                                  study_uid[-12:], row.attempts, row.last_error)
            self._next_try[study_uid] = time.monotonic() + RETRY_DELAY_S
            return
        with session_scope(self.engine) as s:
            row = s.query(ReceivedStudy).filter_by(study_instance_uid=study_uid).first()
            if row is not None and row.state == "complete":
                # instances that arrived while processing reopen it (state went back to
                # receiving in store_instance), so only a still-complete study is done
                row.state = "processed"
                row.processed_at = utcnow()
                row.n_processed = n_at_start
                row.last_error = None
        self.summary.studies_processed += 1
        self.summary.flagged += int(outcome.flagged)
        log.info("%s; %.1f s in all", outcome.line(), time.perf_counter() - t0)

    def _tick(self) -> None:
        now = time.monotonic()
        for uid in complete_studies(self.engine, float(self.config.quiet_seconds)):
            if self.stopping:
                return
            if self._next_try.get(uid, 0.0) > now:
                continue
            self._process_one(uid)

    def _retry_sends(self) -> None:
        config = getattr(self.manifest, "results_to_pacs", None)
        if config is None:
            return
        from fracture_qi.results_dicom.send import failed_screenings, send_results

        ids = failed_screenings(self.engine, config.source)
        if ids:
            summary = send_results(self.manifest, self.engine, screening_ids=ids)
            log.info("retried results to the PACS: %s", summary.lines()[0])

    # ------------------------------------------------------------------------------ run
    def start(self) -> None:
        """Recover the storage area, then start receiving (SCP threads, or nothing for the
        Orthanc feed, polled in run). Recovery reopens the studies still receiving with a
        quiet period from now: the sender may be resending."""
        recover(self.area, self.engine)
        if self.config.orthanc is not None:
            from fracture_qi.listener.orthanc import OrthancFeed

            self._feed = OrthancFeed(self.config.orthanc, self.area, self.engine,
                                     base=self.manifest.base)
            self._feed.cursor()
            log.info("following the changes feed of %s every %.0f s", self.config.orthanc.url,
                     self.config.orthanc.poll_seconds)
        else:
            from fracture_qi.listener.scp import start_scp

            self._server = start_scp(self.config, self.area, self.engine,
                                     self.summary.counters)

    def run(self, *, install_signals: bool = True) -> ListenSummary:
        """Receive and process until :meth:`stop` (or SIGTERM/SIGINT); returns the summary."""
        t0 = time.perf_counter()
        if install_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        self.start()
        last_poll = last_retry = last_summary = time.monotonic()
        try:
            while not self.stopping:
                now = time.monotonic()
                if self._feed is not None and now - last_poll >= self.config.orthanc.poll_seconds:
                    last_poll = now
                    try:
                        self._feed.poll(self._mark_complete, lambda: self.stopping)
                    except Exception as e:  # noqa: BLE001 - Orthanc down: try again later
                        log.error("Orthanc changes feed: %s", e)
                self._tick()
                if now - last_retry >= RETRY_SEND_S:
                    last_retry = now
                    self._retry_sends()
                if now - last_summary >= SUMMARY_S:
                    last_summary = now
                    self.summary.seconds = time.perf_counter() - t0
                    log.info("listener: %s", self.summary.line())
                self._wake.wait(TICK_S)
                self._wake.clear()
        finally:
            self._shutdown()
            self.summary.seconds = time.perf_counter() - t0
            log.info("listener stopped: %s", self.summary.line())
        return self.summary

    def _shutdown(self) -> None:
        if self._server is None:
            return
        ae = self._server.ae
        self._server.shutdown()  # no new associations
        deadline = time.monotonic() + DRAIN_S
        while ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for assoc in ae.active_associations:
            log.warning("association from %s still open after %.0f s: aborted (the sender "
                        "will resend what it was not told was stored)",
                        str(assoc.requestor.ae_title).strip(), DRAIN_S)
            assoc.abort()
        self._server = None


def listen(manifest: Any, engine: Any = None, *, model: Any = None) -> ListenSummary:
    """Run the listener of *manifest* until SIGTERM/SIGINT (see the module docstring).

    Raises
    ------
    FractureQIError
        When the service cannot start (no listener section, no folder source, no allowed
        callers, port in use, model or database unusable).
    """
    if engine is None:
        from fracture_qi.store import open_store

        engine = open_store(manifest)
    return Listener(manifest, engine, model=model).run()


__all__ = ["Listener", "ListenSummary", "listen"]
