"""Decode worker processes that survive their own deaths, and the volume streams the engine reads.

:class:`DecodePool` runs one process per worker, each fed one series at a time over its own
pipe, so the pool always knows which series each worker holds. A worker that dies (the
out-of-memory killer, ``kill -9``, a decoder crashing in C) is replaced at once and only the
series it held is affected: it is decoded again once, and if its worker dies again it is
reported as ``WORKER_DIED``. Every other series goes on. (``concurrent.futures``'s process
pool cannot do this: one dead worker breaks the whole pool, and the next ``submit`` raises
``BrokenProcessPool``.) A series that decodes longer than ``timeout_s`` gets its worker killed
and replaced and is reported as ``TIMEOUT``.

:func:`pooled_volumes` (worker processes) and :func:`inline_volumes` (this process) turn a
list of jobs into a stream of decode failures (outcomes) and batches of ready volumes for
:func:`fracture_qi.screening.engine.screen_series`.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any
from typing import Any

from fracture_qi.dicom.accel import DecodeSettings, max_decode_processes
from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import ScreeningError
from fracture_qi.screening.decode import (
    DecodedVolume,
    DecodeFailure,
    Loader,
    ReadyVolume,
    attach,
    decode,
    discard,
    worker_main,
)
from fracture_qi.screening.jobs import SeriesJob, SeriesOutcome, failed_outcome

log = logging.getLogger(__name__)

#: times a series may be in a worker that dies before it is reported as WORKER_DIED: the
#: first death may be bad luck (the OOM killer picks the largest process, a stray kill), a
#: second one on the same series is the series (issue 21: "retried once, then marked")
MAX_WORKER_DEATHS = 2
#: workers that die before saying they are ready, in a row, with nothing decoded yet, before
#: the run stops: they cannot start at all (a spawned worker must re-import the main module)
MAX_EARLY_DEATHS = 3
#: seconds :meth:`DecodePool.close` waits for series still decoding (to free their shared
#: memory) before it kills their workers
CLOSE_WAIT_S = 10.0


def default_workers() -> int:
    """Decode workers by default: one per core but one (the model's), at least 1, at most 16."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the system tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def decode_processes(cores: int, workers: int, series_waiting: int) -> int:
    """Processes one series may decode with: the cores shared among the series that are
    being decoded or wait for a worker (issue 20: "every core a study can use when fewer
    studies than cores are waiting").

    Examples
    --------
    >>> decode_processes(16, 15, 1)    # one study alone on a 16-core machine
    16
    >>> decode_processes(16, 15, 200)  # a backlog: one process a series, as before
    1
    >>> decode_processes(2, 2, 1)
    2
    """
    sharing = max(1, min(int(workers), int(series_waiting)))
    return max(1, min(max_decode_processes(), int(cores) // sharing))


@dataclass
class Decoded:
    """A job's decode finished (a volume or a failure)."""

    job: SeriesJob
    result: DecodedVolume | DecodeFailure


@dataclass
class WorkerDied:
    """A worker process died; *job* is the series it held (``None`` when it was idle)."""

    job: SeriesJob | None
    pid: int | None
    exitcode: int | None


class _Worker:
    def __init__(self, ctx: Any) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.process = ctx.Process(target=worker_main, args=(child,), name="fqi-decode",
                                   daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.job: SeriesJob | None = None
        self.started = 0.0  # time.monotonic() when the job was sent

    def stop(self, kill: bool = False) -> None:
        try:
            if kill:
                self.process.kill()
            elif self.process.is_alive():
                self.conn.send(None)
        except (OSError, ValueError, BrokenPipeError):
            pass

    def close(self) -> None:
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class DecodePool:
    """Decode worker processes (spawned), one series at a time each, replaced when they die.

    Parameters
    ----------
    workers
        Number of worker processes kept alive.
    loader
        ``loader(job) -> CTVolume``, a module-level function (it is sent to the workers).

    Examples
    --------
    Used by :func:`pooled_volumes`; directly::

        pool = DecodePool(2, load_job)
        pool.submit(job)            # when pool.idle() > 0
        for event in pool.poll(1.0):  # Decoded or WorkerDied
            ...
        pool.close()
    """

    def __init__(self, workers: int, loader: Loader,
                 decode: DecodeSettings | None = None) -> None:
        # never fork a process that may hold a CUDA context
        self._ctx = mp.get_context("spawn")
        self.loader = loader
        self.decode = decode or DecodeSettings(decoder="cpu")
        self._workers = [_Worker(self._ctx) for _ in range(max(1, int(workers)))]
        self._early_deaths = 0
        self._decoded_any = False

    # --- state ---------------------------------------------------------------------------
    def idle(self) -> int:
        """Workers ready for a job."""
        return sum(1 for w in self._workers if w.ready and w.job is None)

    def busy(self) -> int:
        """Workers decoding a job."""
        return sum(1 for w in self._workers if w.job is not None)

    def jobs(self) -> list[tuple[SeriesJob, float]]:
        """The jobs being decoded and when each was sent (``time.monotonic()``)."""
        return [(w.job, w.started) for w in self._workers if w.job is not None]

    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    # --- work ----------------------------------------------------------------------------
    def submit(self, job: SeriesJob, processes: int = 1) -> None:
        """Give *job* to an idle worker (call only when :meth:`idle` is above 0), to be
        decoded with up to *processes* processes."""
        w = next(w for w in self._workers if w.ready and w.job is None)
        w.job, w.started = job, time.monotonic()
        settings = DecodeSettings(self.decode.decoder, max(1, int(processes)),
                                  self.decode.gpu_device)
        try:
            w.conn.send((job, self.loader, settings))
        except (OSError, BrokenPipeError):
            pass  # the worker just died: poll() reports it with this job

    def poll(self, timeout: float | None) -> list[Decoded | WorkerDied]:
        """Wait up to *timeout* seconds (``None``: until something happens) for events.

        Raises
        ------
        ScreeningError
            When workers keep dying before they are ready and nothing was ever decoded.
        """
        conns = {w.conn: w for w in self._workers}
        sentinels = {w.process.sentinel: w for w in self._workers}
        events: list[Decoded | WorkerDied] = []
        for obj in wait_any([*conns, *sentinels], timeout):
            w = conns.get(obj) or sentinels.get(obj)  # type: ignore[call-overload]
            if w is None or w not in self._workers:
                continue  # already replaced in this round
            events += self._drain(w)
            if obj in sentinels or not w.process.is_alive():
                events.append(self._replace(w))
        return events

    def kill(self, job: SeriesJob) -> None:
        """Kill the worker holding *job* (a decode past its time limit) and replace it."""
        for w in list(self._workers):
            if w.job is job:
                w.stop(kill=True)
                w.process.join(timeout=10)
                w.job = None  # the caller reports the job; the death is not news
                self._replace(w)
                return

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Stop every worker; series still decoding get *wait_s* to finish (then are killed)."""
        deadline = time.monotonic() + wait_s
        while self.busy() and time.monotonic() < deadline:
            for ev in self.poll(max(0.0, deadline - time.monotonic())):
                if isinstance(ev, Decoded):
                    discard(ev.result)
        for w in self._workers:
            w.stop(kill=w.job is not None)
        for w in self._workers:
            w.close()
        self._workers = []

    # --- internals -----------------------------------------------------------------------
    def _drain(self, w: _Worker) -> list[Decoded | WorkerDied]:
        out: list[Decoded | WorkerDied] = []
        while True:
            try:
                if not w.conn.poll():
                    return out
                kind, payload = w.conn.recv()
            except (EOFError, OSError):
                return out
            if kind == "ready":
                w.ready = True
                self._early_deaths = 0
            elif kind == "done" and w.job is not None:
                out.append(Decoded(w.job, payload))
                w.job = None
                self._decoded_any = True

    def _replace(self, w: _Worker) -> WorkerDied:
        w.process.join(timeout=5)
        died = WorkerDied(w.job, w.process.pid, w.process.exitcode)
        if not w.ready:
            self._early_deaths += 1
            if self._early_deaths >= MAX_EARLY_DEATHS and not self._decoded_any:
                raise ScreeningError(
                    "the decode worker processes die before decoding anything (a spawned "
                    "worker must be able to re-import the main program: run from a script "
                    "file or notebook, not stdin). Fix: run with --workers 0 (decode in this "
                    "process) or check the log above")
        if died.job is not None or w.ready:
            log.warning("decode worker %s ended (exit code %s)%s; starting a new one", died.pid,
                        died.exitcode, f" while loading series {died.job.key}" if died.job else "")
        try:
            w.conn.close()
        except OSError:
            pass
        self._workers[self._workers.index(w)] = _Worker(self._ctx)
        return died


# --------------------------------------------------------------------------------------------
# volume streams for the engine
# --------------------------------------------------------------------------------------------
def inline_volumes(
    jobs: list[SeriesJob], loader: Loader, batch_size: int,
    decode_settings: DecodeSettings | None = None,
) -> Iterator[SeriesOutcome | list[ReadyVolume]]:
    """Decode in this process, one series at a time; yield failures and batches.

    One series decodes at a time and the model waits for it, so a compressed series may use
    every core (forked helpers: they only decode and write into shared memory, then leave
    without running any cleanup, so this process's CUDA context, threads and database
    connections are never touched in them); the GPU where *decode_settings* say. This is how
    the listener (``fracture-qi listen``) screens each study as it arrives.
    """
    batch: list[ReadyVolume] = []
    settings = None
    if decode_settings is not None:
        settings = DecodeSettings(decode_settings.decoder,
                                  decode_processes(usable_cores(), 1, 1),
                                  decode_settings.gpu_device)
    for job in jobs:
        d = decode(job, loader, to_shm=False, settings=settings)
        if isinstance(d, DecodeFailure):
            yield d.outcome(job)
            continue
        batch.append(attach(job, d))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _died_detail(ev: WorkerDied) -> str:
    how = (f"killed by signal {-ev.exitcode}" if ev.exitcode is not None and ev.exitcode < 0
           else f"exit code {ev.exitcode}")
    return (f"the decode worker process died while loading this series, on the first try "
            f"and on the retry ({how}: out of memory?); the other series went on. Fix: lower "
            "--workers or give the machine more memory, and check the files of this series")


def pooled_volumes(
    jobs: list[SeriesJob],
    loader: Loader,
    workers: int,
    prefetch: int,
    batch_size: int,
    *,
    timeout_s: float | None = None,
    decode_settings: DecodeSettings | None = None,
) -> Iterator[SeriesOutcome | list[ReadyVolume]]:
    """Decode in a :class:`DecodePool`; yield failures (outcomes) and batches of volumes.

    Batches are formed greedily: whatever has finished decoding (up to *batch_size*) goes to
    the model as soon as the model is free, so the device never waits for a full batch. At
    most ``workers + prefetch`` volumes exist at once (being decoded or waiting). A dead
    worker's series is decoded again once, then reported as ``WORKER_DIED``; a series over
    *timeout_s* as ``TIMEOUT``. A series is given the cores no other waiting series needs
    (:func:`decode_processes`): a lone study on a 16-core machine decodes on all of them.
    """
    pool = DecodePool(workers, loader, decode_settings)
    queue: deque[SeriesJob] = deque(jobs)
    ready: list[ReadyVolume] = []
    deaths: dict[int | str, int] = {}
    max_inflight = workers + prefetch
    cores = usable_cores()
    try:
        while queue or pool.busy() or ready:
            while queue and pool.idle() and pool.busy() + len(ready) < max_inflight:
                job = queue.popleft()
                pool.submit(job, decode_processes(cores, workers,
                                                  pool.busy() + 1 + len(queue)))
            waiting = pool.busy() > 0 or (bool(queue) and pool.idle() == 0
                                          and pool.busy() + len(ready) < max_inflight)
            if waiting:
                timeout: float | None = 0.0 if ready else None
                if timeout_s and pool.busy() and timeout is None:
                    now = time.monotonic()
                    timeout = max(0.05, min(t + timeout_s - now for _, t in pool.jobs()))
                for ev in pool.poll(timeout):
                    if isinstance(ev, Decoded):
                        if isinstance(ev.result, DecodeFailure):
                            yield ev.result.outcome(ev.job)
                        else:
                            ready.append(attach(ev.job, ev.result))
                    elif ev.job is not None:
                        n = deaths[ev.job.key] = deaths.get(ev.job.key, 0) + 1
                        if n >= MAX_WORKER_DEATHS:
                            yield failed_outcome(ev.job, ReasonCode.WORKER_DIED, _died_detail(ev))
                        else:
                            log.warning("series %s will be decoded again in a new worker",
                                        ev.job.key)
                            queue.appendleft(ev.job)
                if timeout_s:
                    yield from _stop_late(pool, timeout_s)
            if ready:
                batch, ready = ready[:batch_size], ready[batch_size:]
                yield batch
    finally:
        for r in ready:
            r.release()
        pool.close()


def _stop_late(pool: DecodePool, timeout_s: float) -> Iterator[SeriesOutcome]:
    """Kill the workers of series decoding longer than *timeout_s*; yield TIMEOUT outcomes."""
    now = time.monotonic()
    for job, started in pool.jobs():
        elapsed = now - started
        if elapsed <= timeout_s:
            continue
        log.warning("series %s: decoding still running after %.1f s (timeout_s %s); its "
                    "worker is stopped and replaced", job.key, elapsed, timeout_s)
        pool.kill(job)
        yield failed_outcome(
            job, ReasonCode.TIMEOUT,
            f"decoding took longer than the per-series limit of {timeout_s:g} s "
            "(screening.timeout_s); the worker was stopped. Fix: check the files (a huge, "
            "damaged or very slowly decoded series) or raise screening.timeout_s",
            seconds=elapsed)


__all__ = [
    "MAX_WORKER_DEATHS",
    "DecodePool",
    "Decoded",
    "WorkerDied",
    "decode_processes",
    "default_workers",
    "inline_volumes",
    "pooled_volumes",
    "usable_cores",
]
