"""The screening engine: decode in worker processes, screen on the device, write as we go.

Pipeline (one process per decode worker, the model in the main process)::

    jobs ──► ProcessPool(spawn): load_series(paths) ──► shared memory ──┐
                 (bounded: workers + prefetch volumes in flight)        │
                                                                        ▼
    sink (DB rows / CSV rows + key image PNGs)  ◄── model.screen_many(batch) on the device

* Parallel per series, not per slice: a worker decodes a whole series and hands the volume
  over through :mod:`multiprocessing.shared_memory` (no pickling of 200 MB arrays).
* Memory stays bounded: at most ``workers + prefetch`` decoded volumes exist at a time.
* One bad series never stops the batch: decode errors keep their reason code; an unexpected
  exception of the model becomes ``SCREEN_FAILED`` with the message in ``detail`` (and the
  traceback in the log); a decode worker that dies (out of memory...) is replaced, and the
  series that killed it is isolated and reported as ``DECODE_FAILED``.
* The engine module imports no torch (decode workers stay light); the model does.

High-level entry points: :func:`run_screening` (manifest + database, resumable) and
:func:`screen_paths` (files/folders -> CSV, no database). :func:`screen_series` is the
generator both use, and what notebooks can drive directly.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import platform
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import DicomError, FractureQIError, ScreeningError
from fracture_qi.integrity import code_label
from fracture_qi.screening.types import SeriesResult

log = logging.getLogger(__name__)

#: a series in flight at more worker deaths than this is reported as failed even when the
#: culprit could not be isolated (a safety net: isolation normally names it at once)
MAX_WORKER_DEATHS = 2


# --------------------------------------------------------------------------------------------
# data passed around
# --------------------------------------------------------------------------------------------
@dataclass
class SeriesJob:
    """One series to screen.

    Attributes
    ----------
    key
        Identifies the job in this run (the database ``series.id`` in database mode).
    study_instance_uid, series_instance_uid
        The series' UIDs (only ever written to identifiable outputs).
    paths
        Its files (any order; the loader sorts them).
    path
        The folder it came from, for ``studies.csv``.
    series_id
        ``series.id`` in the database, or ``None`` without one.
    """

    key: int | str
    study_instance_uid: str
    series_instance_uid: str
    paths: list[str] = field(default_factory=list)
    path: str = ""
    series_id: int | None = None


@dataclass
class SeriesOutcome:
    """What happened to one job: the model's result plus timings (no pixel data)."""

    job: SeriesJob
    result: SeriesResult
    decode_seconds: float | None = None
    screen_seconds: float | None = None
    worker_peak_rss_mb: float | None = None
    n_slices: int | None = None

    @property
    def ok(self) -> bool:
        return self.result.status == "ok"


@dataclass
class RunSummary:
    """Counts and timings of one screening run."""

    n_planned: int = 0
    n_ok: int = 0
    n_error: int = 0
    n_skipped: int = 0
    n_flagged: int = 0
    seconds: float = 0.0
    run_id: int | None = None
    model_id: str = ""
    model_version: str = ""
    device: str | None = None
    out_dir: str | None = None
    keyimage_dir: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    max_worker_rss_mb: float | None = None

    @property
    def studies_per_hour(self) -> float | None:
        done = self.n_ok + self.n_error
        return round(done * 3600.0 / self.seconds, 1) if self.seconds > 0 and done else None

    def count(self, outcome: SeriesOutcome) -> None:
        """Add one outcome to the counts."""
        if outcome.ok:
            self.n_ok += 1
            self.n_flagged += int(bool(outcome.result.flagged))
        else:
            self.n_error += 1
            reason = str(outcome.result.reason or ReasonCode.SCREEN_FAILED)
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if outcome.worker_peak_rss_mb is not None:
            self.max_worker_rss_mb = max(self.max_worker_rss_mb or 0.0, outcome.worker_peak_rss_mb)

    def lines(self) -> list[str]:
        """Human summary for the command line."""
        out = [
            f"model {self.model_id} {self.model_version} on {self.device or '?'}: "
            f"{self.n_ok} screened ok ({self.n_flagged} flagged), {self.n_error} error(s), "
            f"{self.n_skipped} already screened, in {self.seconds:.1f} s"
            + (f" ({self.studies_per_hour:.0f} series/hour)" if self.studies_per_hour else "")
        ]
        for reason, n in sorted(self.reasons.items()):
            out.append(f"  {reason}: {n}")
        return out


# --------------------------------------------------------------------------------------------
# decoding (runs in worker processes: no torch here)
# --------------------------------------------------------------------------------------------
def load_job(job: SeriesJob) -> CTVolume:
    """The default loader: :func:`fracture_qi.dicom.volume.load_series` on the job's files."""
    from fracture_qi.dicom.volume import load_series

    vol = load_series(job.paths)
    if not vol.study_instance_uid:
        vol.study_instance_uid = job.study_instance_uid
    if not vol.series_instance_uid:
        vol.series_instance_uid = job.series_instance_uid
    return vol


@dataclass
class _Decoded:
    """A decoded volume parked in shared memory (what a worker sends back)."""

    shm_name: str | None
    shape: tuple[int, ...]
    dtype: str
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    study_instance_uid: str
    series_instance_uid: str
    meta: dict[str, Any]
    seconds: float
    peak_rss_mb: float | None
    array: np.ndarray | None = None  # in-process decoding only


@dataclass
class _Failed:
    reason: str
    detail: str
    seconds: float
    peak_rss_mb: float | None


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process (MiB).

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own address
    space. (``ru_maxrss`` would be wrong for spawned workers: Linux carries it over fork and
    exec, so a worker would report its parent's peak.) Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _decode(job: SeriesJob, loader: Callable[[SeriesJob], CTVolume], to_shm: bool) -> Any:
    """Load one series; park the volume in shared memory when running in a worker."""
    t0 = time.perf_counter()
    try:
        vol = loader(job)
    except DicomError as e:
        return _Failed(str(e.reason), e.detail, time.perf_counter() - t0, _peak_rss_mb())
    except FractureQIError as e:  # e.g. FetchError (FETCH_FAILED) from a PACS loader
        reason = getattr(e, "reason", None) or ReasonCode.DECODE_FAILED
        return _Failed(str(reason), str(e), time.perf_counter() - t0, _peak_rss_mb())
    except Exception as e:  # one bad series never stops the batch
        log.exception("loading series %s failed unexpectedly", job.key)
        return _Failed(str(ReasonCode.DECODE_FAILED), f"{type(e).__name__}: {e}",
                       time.perf_counter() - t0, _peak_rss_mb())
    hu = np.ascontiguousarray(vol.hu)
    shm_name = None
    array: np.ndarray | None = hu
    if to_shm:
        shm = shared_memory.SharedMemory(create=True, size=max(1, hu.nbytes))
        np.ndarray(hu.shape, dtype=hu.dtype, buffer=shm.buf)[...] = hu
        shm_name = shm.name
        shm.close()  # the main process attaches, uses and unlinks it
        array = None
    return _Decoded(
        shm_name=shm_name, shape=tuple(hu.shape), dtype=str(hu.dtype),
        spacing=tuple(vol.spacing), origin=tuple(vol.origin),  # type: ignore[arg-type]
        study_instance_uid=vol.study_instance_uid or job.study_instance_uid,
        series_instance_uid=vol.series_instance_uid or job.series_instance_uid,
        meta={k: v for k, v in vol.meta.items() if k not in ("dropped", "coercions")},
        seconds=time.perf_counter() - t0, peak_rss_mb=_peak_rss_mb(), array=array,
    )


#: set in each decode worker by :func:`_worker_init`: where it announces the job it starts
_STARTS: Any = None


def _decode_in_worker(job: SeriesJob, loader: Callable[[SeriesJob], CTVolume]) -> Any:
    if _STARTS is not None:  # the parent times the decode from here (screening.timeout_s)
        _STARTS.put((job.key, os.getpid(), time.time()))
    return _decode(job, loader, to_shm=True)


def _exit_with_parent() -> None:
    """Wait for the main process to end, then end this worker.

    A ProcessPoolExecutor worker whose parent is killed (SIGKILL, OOM killer) would otherwise
    wait for work forever, holding memory and its shared-memory blocks.
    """
    from multiprocessing.connection import wait as wait_any

    parent = mp.parent_process()
    if parent is None:
        return
    wait_any([parent.sentinel])
    os._exit(0)


def _worker_init(starts: Any = None) -> None:
    global _STARTS
    _STARTS = starts
    # Decoding is single-threaded per worker by design (parallel per series); keep BLAS and
    # friends from oversubscribing the cores the main process needs for the model.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import threading

    threading.Thread(target=_exit_with_parent, name="fqi-parent-watch", daemon=True).start()


@dataclass
class _Ready:
    job: SeriesJob
    volume: CTVolume
    decoded: _Decoded
    shm: shared_memory.SharedMemory | None

    def release(self) -> None:
        self.volume.hu = np.empty((0, 0, 0), dtype=np.int16)
        if self.shm is not None:
            try:
                self.shm.close()
            except BufferError:  # a view is still alive somewhere; unlink frees it at exit
                log.debug("shared memory %s still referenced at release", self.shm.name)
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
            self.shm = None


def _attach(job: SeriesJob, d: _Decoded) -> _Ready:
    shm = None
    if d.shm_name is not None:
        shm = shared_memory.SharedMemory(name=d.shm_name)
        hu = np.ndarray(d.shape, dtype=np.dtype(d.dtype), buffer=shm.buf)
    else:
        assert d.array is not None
        hu = d.array
    vol = CTVolume(hu=hu, spacing=d.spacing, origin=d.origin,
                   study_instance_uid=d.study_instance_uid,
                   series_instance_uid=d.series_instance_uid, meta=d.meta)
    return _Ready(job=job, volume=vol, decoded=d, shm=shm)


def _discard(d: Any) -> None:
    """Free the shared memory of a decoded volume nobody will screen."""
    if isinstance(d, _Decoded) and d.shm_name:
        try:
            shm = shared_memory.SharedMemory(name=d.shm_name)
            shm.close()
            shm.unlink()
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------
# screening (main process)
# --------------------------------------------------------------------------------------------
def _failure(reason: str | ReasonCode, detail: str) -> SeriesResult:
    return SeriesResult(status="error", reason=str(reason), detail=detail)


def _checked(result: Any, job: SeriesJob) -> SeriesResult:
    if not isinstance(result, SeriesResult):
        return _failure(ReasonCode.SCREEN_FAILED,
                        f"the model returned {type(result).__name__}, not a SeriesResult")
    if result.status != "ok":
        result.status = "error"
        result.reason = str(result.reason or ReasonCode.SCREEN_FAILED)
    elif result.reason is not None:
        result.reason = str(result.reason)
    return result


def _screen_one(model: Any, ready: _Ready) -> SeriesResult:
    try:
        return _checked(model.screen(ready.volume), ready.job)
    except Exception as e:  # one bad series never stops the batch
        log.exception("model %s failed on series %s", getattr(model, "model_id", "?"),
                      ready.job.key)
        return _failure(ReasonCode.SCREEN_FAILED, f"{type(e).__name__}: {e}")


def _screen_batch(model: Any, batch: Sequence[_Ready]) -> list[tuple[SeriesResult, float]]:
    """Screen a batch; one volume's exception never costs the others their result."""
    t0 = time.perf_counter()
    many = getattr(model, "screen_many", None)
    if len(batch) > 1 and callable(many):
        try:
            results = list(many([r.volume for r in batch]))
            if len(results) != len(batch):
                raise ScreeningError(f"screen_many returned {len(results)} results for "
                                     f"{len(batch)} volumes")
            each = (time.perf_counter() - t0) / len(batch)
            return [(_checked(res, r.job), each) for res, r in zip(results, batch)]
        except Exception:  # fall back to one at a time to isolate the bad one
            log.warning("batched screening failed; retrying the %d series one by one",
                        len(batch), exc_info=True)
    out = []
    for r in batch:
        t1 = time.perf_counter()
        res = _screen_one(model, r)
        out.append((res, time.perf_counter() - t1))
    return out


def default_workers() -> int:
    """Decode workers by default: one per core but one (the model's), at least 1, at most 16."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def screen_series(
    jobs: Iterable[SeriesJob],
    model: Any,
    *,
    workers: int | None = None,
    batch_size: int = 1,
    prefetch: int | None = None,
    progress: bool = False,
    loader: Callable[[SeriesJob], CTVolume] = load_job,
    timeout_s: float | None = None,
) -> Iterator[SeriesOutcome]:
    """Screen series, yielding one :class:`SeriesOutcome` per job as each finishes.

    Parameters
    ----------
    jobs
        The series to screen.
    model
        A :class:`~fracture_qi.screening.types.ScreeningModel`; ``screen_many`` is used for
        batches where it exists; a model with ``needs_pixels = False`` (vendor results)
        is asked ``result_for(study_uid, series_uid)`` and nothing is decoded.
    workers
        Decode processes (``0``: decode in this process, one series at a time; default
        :func:`default_workers`).
    batch_size
        Volumes handed to the model at once (where it has ``screen_many``).
    prefetch
        Decoded volumes allowed to wait for the model (default *batch_size*); with
        *workers* this bounds memory to ``workers + prefetch`` volumes.
    progress
        Show a tqdm progress bar.
    loader
        ``loader(job) -> CTVolume``; a module-level function (it is sent to the workers).
    timeout_s
        Per-series limit on decoding in a worker process (the manifest's
        ``screening.timeout_s``), counted from the moment a worker starts the series: a
        series over it is recorded as ``TIMEOUT``, its worker is killed and the pool
        replaced, and the other series in flight are decoded again. Not enforced with
        ``workers=0`` (nothing can stop this process's own decode; a warning says so).

    Yields
    ------
    SeriesOutcome
        In completion order; every job yields exactly one outcome.
    """
    from tqdm.auto import tqdm

    job_list = list(jobs)
    workers = default_workers() if workers is None else max(0, int(workers))
    batch_size = max(1, int(batch_size))
    prefetch = batch_size if prefetch is None else max(1, int(prefetch))
    bar = tqdm(total=len(job_list), unit="series", desc="screening", disable=not progress,
               smoothing=0.1)
    stack = ExitStack()
    try:
        if not getattr(model, "needs_pixels", True):
            for job in job_list:
                t0 = time.perf_counter()
                res = _checked(model.result_for(job.study_instance_uid,
                                                job.series_instance_uid), job)
                dt = time.perf_counter() - t0
                res.seconds = round(dt, 4)
                bar.update(1)
                yield SeriesOutcome(job, res, decode_seconds=0.0, screen_seconds=dt)
            return
        if workers == 0:
            if timeout_s:
                log.warning("timeout_s=%s is not enforced when decoding in this process "
                            "(workers=0); use workers >= 1 to enforce it", timeout_s)
            source: Iterator[Any] = _inline_source(job_list, loader, batch_size)
        else:
            source = _pool_source(job_list, loader, workers, prefetch, batch_size,
                                  timeout_s=timeout_s)
            stack.enter_context(_model_threads(model, workers))
        for item in source:
            if isinstance(item, SeriesOutcome):  # a decode failure
                bar.update(1)
                yield item
                continue
            batch: list[_Ready] = item
            try:
                screened = _screen_batch(model, batch)
            finally:
                for r in batch:
                    r.release()
            for r, (res, secs) in zip(batch, screened):
                res.seconds = round(r.decoded.seconds + secs, 4)
                bar.update(1)
                yield SeriesOutcome(
                    r.job, res, decode_seconds=r.decoded.seconds, screen_seconds=secs,
                    worker_peak_rss_mb=r.decoded.peak_rss_mb,
                    n_slices=r.decoded.shape[0] if r.decoded.shape else None,
                )
    finally:
        stack.close()
        bar.close()


@contextmanager
def _model_threads(model: Any, workers: int) -> Iterator[None]:
    """While decode workers share this machine's cores with a model on the CPU, let torch's
    intra-op threads have only the cores the workers leave (at least one).

    Without this, two decode workers and a two-threaded model oversubscribe a 2-core machine:
    measured on the benchmark series, 0.61-0.65 s a series with two model threads against
    0.51-0.55 s with one (``benchmarks/screen_speed.py``). A model on a GPU, or a run without
    torch loaded (vendor results, ONNX), is left alone.
    """
    torch = sys.modules.get("torch")
    if torch is None or workers <= 0 or (model_device(model) or "cpu").split(":")[0] != "cpu":
        yield
        return
    before = torch.get_num_threads()
    want = max(1, (os.cpu_count() or 1) - workers)
    if want >= before:
        yield
        return
    torch.set_num_threads(want)
    log.debug("torch threads %d -> %d while %d decode workers run", before, want, workers)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _failed_outcome(job: SeriesJob, f: _Failed) -> SeriesOutcome:
    res = _failure(f.reason, f.detail)
    res.seconds = round(f.seconds, 4)
    return SeriesOutcome(job, res, decode_seconds=f.seconds, worker_peak_rss_mb=f.peak_rss_mb)


def _inline_source(
    jobs: list[SeriesJob], loader: Callable[[SeriesJob], CTVolume], batch_size: int
) -> Iterator[Any]:
    batch: list[_Ready] = []
    for job in jobs:
        d = _decode(job, loader, to_shm=False)
        if isinstance(d, _Failed):
            yield _failed_outcome(job, d)
            continue
        batch.append(_attach(job, d))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pool_source(
    jobs: list[SeriesJob],
    loader: Callable[[SeriesJob], CTVolume],
    workers: int,
    prefetch: int,
    batch_size: int,
    *,
    timeout_s: float | None = None,
) -> Iterator[Any]:
    """Decode in a process pool; yield decode failures and batches of ready volumes.

    Batches are formed greedily: whatever has finished decoding (up to *batch_size*) goes to
    the model as soon as the model is free, so the device never waits for a full batch.
    With *timeout_s*, each worker announces the series it starts on a queue; a series whose
    decode runs longer is reported as ``TIMEOUT`` and the pool is replaced (a process pool
    cannot lose one worker without breaking), the other series in flight are re-queued.
    """
    ctx = mp.get_context("spawn")  # never fork a process that may hold a CUDA context
    starts_q: Any = None
    started: dict[int | str, float] = {}

    def new_pool() -> ProcessPoolExecutor:
        nonlocal starts_q
        if timeout_s:
            # a fresh queue per pool: a killed worker could leave the old one's lock held
            starts_q = ctx.Queue()
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_worker_init, initargs=(starts_q,))

    def drain() -> None:
        import queue as _queue

        while starts_q is not None:
            try:
                key, _pid, t = starts_q.get_nowait()
            except (_queue.Empty, OSError, EOFError, ValueError):
                return
            started[key] = t

    pool = new_pool()
    queue: deque[SeriesJob] = deque(jobs)
    pending: dict[Future[Any], SeriesJob] = {}
    ready: list[_Ready] = []
    deaths: dict[int | str, int] = {}
    suspects: set[int | str] = set()  # jobs in flight when a worker died, not yet finished
    max_inflight = workers + prefetch
    breaks, decoded_any = 0, False
    try:
        while queue or pending or ready:
            # after a worker death the suspects are retried one at a time, so the next death
            # names its culprit; other jobs wait until the suspects are through
            limit = 1 if suspects else max_inflight
            while queue and len(pending) < limit and len(pending) + len(ready) < max_inflight:
                job = queue.popleft()
                pending[pool.submit(_decode_in_worker, job, loader)] = job
            if pending:
                block: float | None = 0 if ready else None
                if timeout_s and block is None:
                    # wake up to look at the clock: at the earliest deadline, or soon when a
                    # series has not announced its start yet
                    drain()
                    now = time.time()
                    left = [started[j.key] + timeout_s - now for j in pending.values()
                            if j.key in started]
                    unseen = any(j.key not in started for j in pending.values())
                    block = max(0.05, min(left + ([0.25] if unseen else [timeout_s])))
                done, _ = wait(pending, timeout=block, return_when=FIRST_COMPLETED)
                broken: list[SeriesJob] = []
                for fut in done:
                    job = pending.pop(fut)
                    try:
                        d = fut.result()
                    except BrokenProcessPool:
                        broken.append(job)
                        continue
                    except Exception as e:  # noqa: BLE001  e.g. an unpicklable loader error
                        suspects.discard(job.key)
                        yield _failed_outcome(job, _Failed(str(ReasonCode.DECODE_FAILED),
                                                           f"{type(e).__name__}: {e}", 0.0, None))
                        continue
                    suspects.discard(job.key)
                    started.pop(job.key, None)
                    decoded_any = True
                    if isinstance(d, _Failed):
                        yield _failed_outcome(job, d)
                    else:
                        ready.append(_attach(job, d))
                if broken:
                    breaks += 1
                    if breaks >= 3 and not decoded_any:
                        raise ScreeningError(
                            "the decode worker processes die before decoding anything (a "
                            "spawned worker must be able to re-import the main program: run "
                            "from a script file or notebook, not stdin). Fix: run with "
                            "--workers 0 (decode in this process) or check the log above")
                    in_flight = broken + list(pending.values())
                    pending.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = new_pool()
                    for job in in_flight:
                        deaths[job.key] = deaths.get(job.key, 0) + 1
                    culprits = [j for j in in_flight
                                if len(in_flight) == 1 or deaths[j.key] > MAX_WORKER_DEATHS]
                    for job in culprits:
                        suspects.discard(job.key)
                        yield _failed_outcome(job, _Failed(
                            str(ReasonCode.DECODE_FAILED),
                            "the decode worker process died while loading this series "
                            "(killed: out of memory?). Fix: lower --workers or check the files",
                            0.0, None))
                    retry = [j for j in in_flight if j not in culprits]
                    if retry:
                        log.warning("a decode worker died; retrying the %d series that were "
                                    "in flight one at a time", len(retry))
                    for job in reversed(retry):
                        suspects.add(job.key)
                        queue.appendleft(job)
                        started.pop(job.key, None)
                if timeout_s and pending:
                    drain()
                    now = time.time()
                    late = [f for f, j in pending.items() if not f.done()
                            and j.key in started and now - started[j.key] > timeout_s]
                    if late:
                        pool = yield from _replace_after_timeout(
                            late, pending, queue, started, pool, new_pool, timeout_s)
            if ready:
                batch, ready = ready[:batch_size], ready[batch_size:]
                yield batch
    finally:
        for r in ready:
            r.release()
        for fut in list(pending):
            fut.cancel()
        # volumes decoded after we stopped listening still sit in shared memory: free them
        for fut in list(pending):
            if not fut.cancelled():
                try:
                    _discard(fut.result(timeout=120))
                except Exception:  # a failed or dead worker left nothing behind
                    log.debug("in-flight decode ended without a volume", exc_info=True)
        pool.shutdown(wait=True, cancel_futures=True)


def _replace_after_timeout(
    late: list[Future[Any]],
    pending: dict[Future[Any], SeriesJob],
    queue: deque[SeriesJob],
    started: dict[int | str, float],
    pool: ProcessPoolExecutor,
    new_pool: Callable[[], ProcessPoolExecutor],
    timeout_s: float,
) -> Generator[Any, None, ProcessPoolExecutor]:
    """Report the *late* series as ``TIMEOUT``, kill the pool, re-queue the others.

    A generator (``yield from`` it): yields the TIMEOUT outcomes, returns the new pool.
    Series already decoded (their future done) stay in *pending* for the caller to collect.
    """
    for fut in late:
        job = pending.pop(fut)
        elapsed = time.time() - started.pop(job.key, time.time())
        log.warning("series %s: decoding still running after %.1f s (timeout_s %s); its "
                    "worker is stopped and replaced", job.key, elapsed, timeout_s)
        yield _failed_outcome(job, _Failed(
            str(ReasonCode.TIMEOUT),
            f"decoding took longer than the per-series limit of {timeout_s:g} s "
            "(screening.timeout_s); the worker was stopped. Fix: check the files (a huge, "
            "damaged or very slowly decoded series) or raise screening.timeout_s",
            elapsed, None))
    again = [j for f, j in pending.items() if not f.done()]
    for f in [f for f in pending if not f.done()]:
        del pending[f]
    for job in reversed(again):
        started.pop(job.key, None)
        queue.appendleft(job)
    if again:
        log.info("re-queued %d series that were in flight in the stopped pool", len(again))
    # the stuck worker cannot be interrupted (it may sit in a decoder's C code): end every
    # worker of this pool; ProcessPoolExecutor cannot replace just one
    for proc in list(getattr(pool, "_processes", {}).values()):
        try:
            proc.kill()
        except (OSError, ValueError, AttributeError):
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    return new_pool()


# --------------------------------------------------------------------------------------------
# run metadata
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


# --------------------------------------------------------------------------------------------
# high-level runs
# --------------------------------------------------------------------------------------------
def _manifest_settings(manifest: Any) -> dict[str, Any]:
    screening = getattr(manifest, "screening", None)
    if screening is None:
        return {}
    if hasattr(screening, "model_dump"):
        return {k: v for k, v in screening.model_dump().items() if v is not None}
    if isinstance(screening, dict):
        return {k: v for k, v in screening.items() if v is not None}
    return {}


def _pick(option: Any, settings: dict[str, Any], key: str, default: Any) -> Any:
    return option if option is not None else settings.get(key, default)


def _jobs_from_refs(refs: Iterable[Any]) -> list[SeriesJob]:
    jobs = []
    for ref in refs:
        paths = [str(p) for p in (getattr(ref, "paths", None) or [])]
        folder = getattr(ref, "path", None) or getattr(ref, "folder", None)
        if not folder and paths:
            folder = str(Path(paths[0]).parent)
        jobs.append(SeriesJob(
            key=int(ref.series_id), series_id=int(ref.series_id),
            study_instance_uid=str(ref.study_instance_uid),
            series_instance_uid=str(ref.series_instance_uid),
            paths=paths, path=str(folder or ""),
        ))
    return jobs


def run_screening(
    manifest: Any,
    engine: Any = None,
    *,
    model: Any = None,
    device: str | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    flag_grade: int | None = None,
    limit: int | None = None,
    dask: str | None = None,
    progress: bool = True,
    jobs: Sequence[SeriesJob] | None = None,
    loader: Callable[[SeriesJob], CTVolume] = load_job,
    timeout_s: float | None = None,
) -> RunSummary:
    """Screen the manifest's eligible, not yet screened series into its database.

    Resumable: series already screened by the same model id and version are not selected,
    and the ``(series, model_id, model_version)`` unique constraint makes a second writer's
    row a no-op; a killed run is continued by running it again.

    Parameters
    ----------
    manifest
        A path to data_manifest.yaml or a loaded :class:`fracture_qi.manifest.Manifest`.
    engine
        A SQLAlchemy engine (default: the manifest's database, migrated).
    model
        A built model (default: ``load_model(manifest.model, ...)``).
    device, workers, batch_size, flag_grade
        Override the manifest's ``screening:`` settings.
    limit
        Screen at most this many series (the first in database order).
    dask
        ``None`` (local processes), ``"local"`` (a LocalCluster) or a scheduler address.
    progress
        Show a progress bar.
    jobs
        Screen these instead of querying the index (used by tests and notebooks).
    loader
        How a job becomes a volume (default :func:`load_job`).
    timeout_s
        Per-series decode limit (default: the manifest's ``screening.timeout_s``; None: no
        limit); see :func:`screen_series`.

    Returns
    -------
    RunSummary

    Raises
    ------
    FractureQIError
        When the run cannot proceed (manifest, database, model); never for one series.
    """
    from fracture_qi.screening.models import load_model
    from fracture_qi.screening.results import DatabaseSink, finish_run, start_run

    if isinstance(manifest, (str, Path)):
        from fracture_qi.manifest import read_manifest

        manifest = read_manifest(manifest)
    if engine is None:
        from fracture_qi.store import open_store

        engine = open_store(manifest)
    settings = _manifest_settings(manifest)
    base = Path(getattr(manifest, "base", None) or Path.cwd())
    workers = _pick(workers, settings, "workers", None)
    batch_size = int(_pick(batch_size, settings, "batch_size", 1) or 1)
    timeout_s = _pick(timeout_s, settings, "timeout_s", None)
    if model is None:
        model = load_model(
            getattr(manifest, "model", None), base=base,
            device=_pick(device, settings, "device", "auto"),
            flag_grade=_pick(flag_grade, settings, "flag_grade", 2),
            low_density_hu=settings.get("low_density_hu"),
            max_slice_mm=settings.get("max_slice_mm"),
        )
    if jobs is None:
        from fracture_qi.dicom.index import chosen_series

        refs = chosen_series(engine, unscreened_for=(model.model_id, model.model_version))
        jobs = _jobs_from_refs(refs)
    jobs = list(jobs)
    if limit is not None:
        jobs = jobs[: max(0, int(limit))]
    if loader is load_job and any(str(p).startswith("pacs://") for j in jobs for p in j.paths[:1]):
        # series indexed from a PACS: the workers fetch them (cache_dir or a temporary folder)
        from fracture_qi.dicom.pacs import job_loader

        loader = job_loader(list(getattr(manifest, "dicom_sources", []) or []), base)
    keyimage_dir = _keyimage_dir(manifest, base)
    summary = RunSummary(n_planned=len(jobs), model_id=model.model_id,
                         model_version=model.model_version, device=model_device(model),
                         keyimage_dir=str(keyimage_dir))
    params = {
        "workers": workers, "batch_size": batch_size, "limit": limit, "dask": dask,
        "timeout_s": timeout_s,
        "flag_grade": getattr(model, "flag_grade", flag_grade),
        "low_density_hu": getattr(model, "low_density_hu", settings.get("low_density_hu")),
        "n_planned": len(jobs), "model_kind": _model_kind(model),
    }
    run_id = start_run(engine, model, device=summary.device, params=params,
                       host=host_name(), code_version=code_version())
    summary.run_id = run_id
    log.info("screening run %d: %d series with %s %s", run_id, len(jobs), model.model_id,
             model.model_version)
    sink = DatabaseSink(engine, run_id=run_id, model=model, keyimage_dir=keyimage_dir)
    t0 = time.perf_counter()
    status = "failed"
    try:
        for outcome in _outcomes(jobs, model, workers=workers, batch_size=batch_size,
                                 dask=dask, progress=progress, loader=loader,
                                 timeout_s=timeout_s):
            if sink.write(outcome):
                summary.count(outcome)
            else:
                summary.n_skipped += 1
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary.seconds = time.perf_counter() - t0
        finish_run(engine, run_id, status=status)
    return summary


def _model_kind(model: Any) -> str:
    spec = getattr(model, "spec", None)
    return str(getattr(spec, "kind", None) or type(model).__name__)


def _keyimage_dir(manifest: Any, base: Path) -> Path:
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


def _outcomes(
    jobs: Sequence[SeriesJob],
    model: Any,
    *,
    workers: int | None,
    batch_size: int,
    dask: str | None,
    progress: bool,
    loader: Callable[[SeriesJob], CTVolume],
    timeout_s: float | None = None,
) -> Iterator[SeriesOutcome]:
    if dask:
        if timeout_s:
            log.warning("timeout_s=%s is not enforced on a Dask cluster (set the "
                        "cluster's own limits)", timeout_s)
        from fracture_qi.screening.distributed import screen_with_dask

        return screen_with_dask(jobs, model, address=dask, workers=workers, progress=progress,
                                loader=loader)
    return screen_series(jobs, model, workers=workers, batch_size=batch_size,
                         progress=progress, loader=loader, timeout_s=timeout_s)


def screen_paths(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    model: Any = None,
    device: str = "auto",
    workers: int | None = None,
    batch_size: int = 1,
    flag_grade: int = 2,
    limit: int | None = None,
    dask: str | None = None,
    progress: bool = True,
    all_series: bool = False,
    ignore_age: bool = False,
    timeout_s: float | None = None,
    max_slice_mm: float | None = None,
) -> RunSummary:
    """Screen DICOM files/folders directly (no database) into ``out_dir``.

    Writes ``out_dir/studies.csv`` (one row per series found and per unusable file),
    ``out_dir/vertebrae.csv`` (one row per assessed vertebra) and
    ``out_dir/keyimages/*.png`` (+ ``keyimages/index.csv`` mapping each image to its series).
    Eligibility and reason codes are those of the index (:mod:`fracture_qi.dicom.scan`).

    Parameters
    ----------
    paths
        Files and folders (searched recursively).
    out_dir
        Created if missing; existing CSVs there are replaced.
    model
        A built model or anything :func:`~fracture_qi.screening.models.load_model` takes
        (default: the reference screener).
    all_series
        Screen every eligible series, not only the one chosen per study.
    ignore_age
        Screen series that are eligible but for the age rules (ages removed from research
        and validation folders); never used by the audit pipeline.
    timeout_s
        Per-series decode limit in the worker processes (``TIMEOUT`` beyond it).
    max_slice_mm
        Coarsest slice spacing screened (default 3 mm): thicker series are excluded with
        ``SLICE_TOO_THICK``, and a reference screener built here gets the same limit.

    Returns
    -------
    RunSummary

    Raises
    ------
    ScreeningError
        When no path exists (nothing at all to read).
    """
    from fracture_qi.dicom.scan import MAX_SLICE_MM, scan_paths
    from fracture_qi.screening.models import load_model
    from fracture_qi.screening.results import CsvSink

    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing and len(missing) == len(paths):
        raise ScreeningError(
            f"nothing to screen: {', '.join(missing)} does not exist. "
            "Fix: give DICOM files or folders that exist"
        )
    for m in missing:
        log.warning("%s does not exist; skipped", m)
    if model is None or isinstance(model, (str, Path, dict)):
        model = load_model(model, device=device, flag_grade=flag_grade, max_slice_mm=max_slice_mm)
    slice_limit = MAX_SLICE_MM if max_slice_mm is None else float(max_slice_mm)
    scan_workers = max(1, workers if workers is not None else default_workers())
    scan = scan_paths([p for p in paths if Path(p).exists()], workers=scan_workers,
                      progress=progress, ignore_age=ignore_age, max_slice_mm=slice_limit)
    sink = CsvSink(out_dir)
    summary = RunSummary(model_id=model.model_id, model_version=model.model_version,
                         device=model_device(model), out_dir=str(Path(out_dir).resolve()),
                         keyimage_dir=str(sink.keyimage_dir))
    jobs: list[SeriesJob] = []
    try:
        for problem in scan.problems:
            sink.write_problem(problem)
        for i, s in enumerate(scan.series):
            status = str(getattr(s, "status", "ok"))
            chosen = bool(getattr(s, "chosen", False))
            if status == "ok" and (chosen or all_series):
                jobs.append(SeriesJob(
                    key=i, study_instance_uid=str(s.study_instance_uid),
                    series_instance_uid=str(s.series_instance_uid),
                    paths=[str(p) for p in s.files], path=str(getattr(s, "folder", "") or ""),
                ))
            else:
                reason = getattr(s, "reason", None)
                if status == "ok":  # eligible but another series of the study was chosen
                    status, reason = "excluded", ReasonCode.NOT_CHOSEN
                sink.write_unscreened(s, status=status, reason=reason)
        if limit is not None:
            for job in jobs[max(0, int(limit)):]:
                log.info("series %s not screened (--limit)", job.key)
            jobs = jobs[: max(0, int(limit))]
        summary.n_planned = len(jobs)
        t0 = time.perf_counter()
        try:
            for outcome in _outcomes(jobs, model, workers=workers, batch_size=batch_size,
                                     dask=dask, progress=progress, loader=load_job,
                                     timeout_s=timeout_s):
                sink.write(outcome, model)
                summary.count(outcome)
        finally:
            summary.seconds = time.perf_counter() - t0
    finally:
        sink.close()
    return summary


__all__ = [
    "RunSummary",
    "SeriesJob",
    "SeriesOutcome",
    "code_version",
    "default_workers",
    "host_name",
    "load_job",
    "run_screening",
    "screen_paths",
    "screen_series",
]
