"""Decoding one series into a volume: in this process, or in a decode worker process.

A worker decodes a whole series and parks the volume in :mod:`multiprocessing.shared_memory`
(no pickling of 200 MB arrays); the main process attaches to it (:func:`attach`), screens it
and frees it (:meth:`ReadyVolume.release`). Nothing here imports torch: workers stay light.
:func:`worker_main` is the body of a worker process of
:class:`~fracture_qi.screening.pool.DecodePool`.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from fracture_qi.dicom import accel
from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import DicomError, FractureQIError
from fracture_qi.screening.jobs import SeriesJob, SeriesOutcome, failed_outcome

log = logging.getLogger(__name__)

#: ``loader(job) -> CTVolume``: how a job becomes a volume (module-level: sent to workers)
Loader = Callable[[SeriesJob], CTVolume]


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
class DecodedVolume:
    """A decoded volume: parked in shared memory (from a worker) or held here (in-process)."""

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
class DecodeFailure:
    """A series that could not be decoded: its reason code and a one-line detail."""

    reason: str
    detail: str
    seconds: float
    peak_rss_mb: float | None

    def outcome(self, job: SeriesJob) -> SeriesOutcome:
        """The job's outcome for this failure."""
        return failed_outcome(job, self.reason, self.detail, seconds=self.seconds,
                              peak_rss_mb=self.peak_rss_mb)


def peak_rss_mb() -> float | None:
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


def decode(job: SeriesJob, loader: Loader, to_shm: bool,
           settings: accel.DecodeSettings | None = None) -> DecodedVolume | DecodeFailure:
    """Load one series; park the volume in shared memory when *to_shm* (in a worker).

    *settings* say where its frames may be decoded (the GPU, several processes; see
    :mod:`fracture_qi.dicom.accel`); ``None`` keeps this process's. Never raises for a bad
    series: the failure comes back with its reason code.
    """
    t0 = time.perf_counter()
    try:
        with accel.using(settings):
            vol = loader(job)
    except DicomError as e:
        return DecodeFailure(str(e.reason), e.detail, time.perf_counter() - t0, peak_rss_mb())
    except FractureQIError as e:  # e.g. FetchError (FETCH_FAILED) from a PACS loader
        reason = getattr(e, "reason", None) or ReasonCode.DECODE_FAILED
        return DecodeFailure(str(reason), str(e), time.perf_counter() - t0, peak_rss_mb())
    except Exception as e:  # one bad series never stops the batch
        log.exception("loading series %s failed unexpectedly", job.key)
        return DecodeFailure(str(ReasonCode.DECODE_FAILED), f"{type(e).__name__}: {e}",
                             time.perf_counter() - t0, peak_rss_mb())
    hu = np.ascontiguousarray(vol.hu)
    shm_name = None
    array: np.ndarray | None = hu
    if to_shm:
        shm = shared_memory.SharedMemory(create=True, size=max(1, hu.nbytes))
        np.ndarray(hu.shape, dtype=hu.dtype, buffer=shm.buf)[...] = hu
        shm_name = shm.name
        shm.close()  # the main process attaches, uses and unlinks it
        array = None
    return DecodedVolume(
        shm_name=shm_name, shape=tuple(hu.shape), dtype=str(hu.dtype),
        spacing=tuple(vol.spacing), origin=tuple(vol.origin),  # type: ignore[arg-type]
        study_instance_uid=vol.study_instance_uid or job.study_instance_uid,
        series_instance_uid=vol.series_instance_uid or job.series_instance_uid,
        meta={k: v for k, v in vol.meta.items() if k not in ("dropped", "coercions")},
        seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(), array=array,
    )


@dataclass
class ReadyVolume:
    """A decoded volume attached in the main process, waiting for the model."""

    job: SeriesJob
    volume: CTVolume
    decoded: DecodedVolume
    shm: shared_memory.SharedMemory | None

    def release(self) -> None:
        """Drop the pixels and free the shared memory block (safe to call twice)."""
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


def attach(job: SeriesJob, d: DecodedVolume) -> ReadyVolume:
    """Wrap a decoded volume (attaching its shared memory, if any) as a :class:`CTVolume`."""
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
    return ReadyVolume(job=job, volume=vol, decoded=d, shm=shm)


def discard(d: Any) -> None:
    """Free the shared memory of a decoded volume nobody will screen."""
    if isinstance(d, DecodedVolume) and d.shm_name:
        try:
            shm = shared_memory.SharedMemory(name=d.shm_name)
            shm.close()
            shm.unlink()
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------
# the worker process
# --------------------------------------------------------------------------------------------
def _exit_with_parent() -> None:
    """Wait for the main process to end, then end this worker.

    A worker whose parent is killed (SIGKILL, OOM killer) would otherwise finish its series
    and wait for work forever, holding memory and its shared-memory blocks.
    """
    from multiprocessing.connection import wait as wait_any

    parent = mp.parent_process()
    if parent is None:
        return
    wait_any([parent.sentinel])
    os._exit(0)


def worker_main(conn: Any) -> None:
    """Body of a decode worker: say ready, then decode each ``(job, loader, settings)``
    received (:class:`~fracture_qi.dicom.accel.DecodeSettings`: GPU or CPU, processes).

    Messages to the parent: ``("ready", pid)`` once, then ``("done", result)`` per job, where
    result is a :class:`DecodedVolume` or a :class:`DecodeFailure`. ``None`` received, or
    the parent gone, ends the worker.
    """
    import signal
    import threading

    # Ctrl-C reaches the whole process group: the main process handles it and stops the
    # pool; a worker printing its own KeyboardInterrupt traceback would only add noise
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Decoding is one process per series unless the engine gives a series more (forked
    # helpers, dicom.accel); keep BLAS and friends from oversubscribing the cores the main
    # process needs for the model.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    threading.Thread(target=_exit_with_parent, name="fqi-parent-watch", daemon=True).start()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as e:  # noqa: BLE001 - e.g. a loader that cannot be unpickled here
            conn.send(("done", DecodeFailure(
                str(ReasonCode.DECODE_FAILED),
                f"the decode worker could not receive the job: {type(e).__name__}: {e}. Fix: "
                "the loader must be a module-level function importable by a fresh process",
                0.0, None)))
            continue
        if msg is None:
            return
        job, loader, *rest = msg
        result = decode(job, loader, to_shm=True, settings=rest[0] if rest else None)
        try:
            conn.send(("done", result))
        except Exception as e:  # noqa: BLE001 - a result that cannot be pickled
            discard(result)
            conn.send(("done", DecodeFailure(
                str(ReasonCode.DECODE_FAILED),
                f"the decoded series could not be sent back: {type(e).__name__}: {e}",
                0.0, None)))


__all__ = [
    "DecodeFailure",
    "DecodedVolume",
    "Loader",
    "ReadyVolume",
    "attach",
    "decode",
    "discard",
    "load_job",
    "peak_rss_mb",
    "worker_main",
]
