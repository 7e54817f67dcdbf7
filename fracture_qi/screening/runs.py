"""Screening runs: their settings and metadata, their heartbeat, and runs that died.

A run's row in ``screening_runs`` says ``running`` while it works. A run killed without a
chance to say otherwise (SIGKILL, the out-of-memory killer, a power cut) would say
``running`` for ever; so a run records its process id and host and refreshes
``heartbeat_at`` while it works (:class:`Heartbeat`), and the next run marks the dead ones
``interrupted`` (:func:`mark_interrupted_runs`). Its screened series are kept: the next run
skips them (resumability).
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fracture_qi.integrity import code_label
from fracture_qi.screening.jobs import SeriesJob

log = logging.getLogger(__name__)

#: seconds between heartbeats of a running run
HEARTBEAT_S = 60.0
#: a run on another machine whose last heartbeat is older than this (seconds) is taken as
#: dead: ten missed heartbeats (a run on this machine is checked by its process id at once)
STALE_AFTER_S = 10 * HEARTBEAT_S
#: slack (seconds) between a process's start and its run row's ``started_at`` when telling
#: the run's own process from a later one that was given the same process id
PID_START_SLACK_S = 5.0


# --------------------------------------------------------------------------------------------
# metadata and settings
# --------------------------------------------------------------------------------------------
def code_version() -> str:
    """Package version plus git commit where known (for ScreeningRun.code_version)."""
    return code_label()


def host_name() -> str:
    """This machine's name (ScreeningRun.host)."""
    return (socket.gethostname() or platform.node() or "unknown")[:100]


def model_device(model: Any) -> str | None:
    """The device a model runs on, as a string, where it says."""
    dev = getattr(model, "device", None)
    return str(dev) if dev is not None else ("none" if not getattr(model, "needs_pixels", True)
                                              else None)


def model_kind(model: Any) -> str:
    """``reference``, ``torchscript``... (the model's spec kind, else its class name)."""
    spec = getattr(model, "spec", None)
    return str(getattr(spec, "kind", None) or type(model).__name__)


def manifest_settings(manifest: Any) -> dict[str, Any]:
    """The manifest's ``screening:`` settings that are set, as a dict."""
    screening = getattr(manifest, "screening", None)
    if screening is None:
        return {}
    if hasattr(screening, "model_dump"):
        return {k: v for k, v in screening.model_dump().items() if v is not None}
    if isinstance(screening, dict):
        return {k: v for k, v in screening.items() if v is not None}
    return {}


def pick(option: Any, settings: dict[str, Any], key: str, default: Any) -> Any:
    """A command-line *option* if given, else the manifest setting *key*, else *default*."""
    return option if option is not None else settings.get(key, default)


def jobs_from_refs(refs: Iterable[Any]) -> list[SeriesJob]:
    """Jobs for the index's chosen series (:func:`fracture_qi.dicom.index.chosen_series`)."""
    jobs = []
    for ref in refs:
        paths = [str(p) for p in (getattr(ref, "paths", None) or [])]
        folder = getattr(ref, "path", None) or getattr(ref, "folder", None)
        if not folder and paths:
            folder = str(Path(paths[0]).parent)
        n = getattr(ref, "n_instances", None)
        jobs.append(SeriesJob(
            key=int(ref.series_id), series_id=int(ref.series_id),
            study_instance_uid=str(ref.study_instance_uid),
            series_instance_uid=str(ref.series_instance_uid),
            paths=paths, path=str(folder or ""), n_instances=None if n is None else int(n),
        ))
    return jobs


def keyimage_dir(manifest: Any, base: Path) -> Path:
    """Where the manifest puts key images (``outputs.keyimages``, default ``keyimages/``)."""
    output_dir = getattr(manifest, "output_dir", None)
    if callable(output_dir):
        try:
            declared = Path(output_dir("keyimages"))
            return declared if declared.is_absolute() else base / declared
        except Exception:  # fall back to reading outputs below
            log.debug("manifest.output_dir('keyimages') failed", exc_info=True)
    outputs = getattr(manifest, "outputs", None)
    value = None
    if outputs is not None:
        value = (outputs.get("keyimages") if isinstance(outputs, dict)
                 else getattr(outputs, "keyimages", None))
        if value is not None and not isinstance(value, (str, Path)):
            value = getattr(value, "path", None) or str(value)
    path = Path(value) if value else Path("keyimages")
    return path if path.is_absolute() else (base / path)


# --------------------------------------------------------------------------------------------
# liveness
# --------------------------------------------------------------------------------------------
def _utc(t: dt.datetime | None) -> dt.datetime | None:
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)  # SQLite gives naive UTC


def process_is_run(pid: int | None, started_at: dt.datetime | None) -> bool:
    """Whether process *pid* on this machine is alive and older than the run it recorded.

    A process started after the run row was written got the id of a dead run's process.
    """
    if not pid:
        return False
    try:
        import psutil

        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        born = proc.create_time()
    except Exception:  # noqa: BLE001 - no such process, or no access: it is not ours
        return False
    start = _utc(started_at)
    return start is None or born <= start.timestamp() + PID_START_SLACK_S


def mark_interrupted_runs(engine: Any, *, now: dt.datetime | None = None) -> list[int]:
    """Mark ``running`` runs whose process is gone as ``interrupted``; return their ids.

    A run on this host is dead when its process id no longer belongs to it; a run on
    another host when its heartbeat (or start) is older than :data:`STALE_AFTER_S`. Its
    ``finished_at`` becomes its last sign of life.
    """
    from sqlalchemy import select

    from fracture_qi.store.db import session_scope
    from fracture_qi.store.schema import ScreeningRun

    now = now or dt.datetime.now(dt.timezone.utc)
    here = host_name()
    marked: list[int] = []
    with session_scope(engine) as s:
        for run in s.scalars(select(ScreeningRun).where(ScreeningRun.status == "running")):
            last = _utc(run.heartbeat_at) or _utc(run.started_at)
            if run.host == here and run.pid:
                dead = not process_is_run(run.pid, run.started_at)
            else:
                dead = last is None or (now - last).total_seconds() > STALE_AFTER_S
            if not dead:
                continue
            run.status = "interrupted"
            run.finished_at = last
            marked.append(int(run.id))
            log.warning("screening run %d (started %s on %s, process %s) stopped without "
                        "finishing: marked interrupted; its %d screened series are kept",
                        run.id, f"{_utc(run.started_at):%Y-%m-%d %H:%M}" if run.started_at
                        else "?", run.host or "?", run.pid or "?",
                        (run.n_ok or 0) + (run.n_error or 0))
    return marked


class Heartbeat:
    """Refresh a run's ``heartbeat_at`` every *every_s* seconds from a thread, while in a ``with``.

    Failures are logged, never raised: the heartbeat must not stop a run. A run that another
    process marked ``interrupted`` by mistake (say, a clock far off) says ``running`` again.
    """

    def __init__(self, engine: Any, run_id: int, every_s: float = HEARTBEAT_S) -> None:
        self.engine, self.run_id, self.every_s = engine, run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fqi-run-{run_id}-heartbeat",
                                        daemon=True)

    def beat(self) -> None:
        """Stamp the heartbeat now."""
        from sqlalchemy import update

        from fracture_qi.store.db import session_scope
        from fracture_qi.store.schema import ScreeningRun, utcnow

        with session_scope(self.engine) as s:
            s.execute(update(ScreeningRun)
                      .where(ScreeningRun.id == self.run_id,
                             ScreeningRun.status.in_(("running", "interrupted")))
                      .values(heartbeat_at=utcnow(), status="running"))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a busy database must not stop the run
                log.debug("heartbeat of run %d not written", self.run_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


__all__ = [
    "HEARTBEAT_S",
    "STALE_AFTER_S",
    "Heartbeat",
    "code_version",
    "host_name",
    "jobs_from_refs",
    "keyimage_dir",
    "manifest_settings",
    "mark_interrupted_runs",
    "model_device",
    "model_kind",
    "pick",
    "process_is_run",
]
