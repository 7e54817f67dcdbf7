"""Scale-out: map series over a Dask distributed cluster (``--dask ADDRESS`` or ``--dask local``).

Each task loads and screens one series on a worker and returns a picklable
:class:`~fracture_qi.screening.jobs.SeriesOutcome` (the result and the key image, never
the volume). The client writes results as tasks complete, exactly as the local engine does,
so resumability holds: a killed client leaves every finished series in the database, and
the next run selects only the rest.

Workers rebuild the model from its :class:`~fracture_qi.screening.models.ModelSpec` once per
worker process (cached), on the worker's own device (``auto`` picks the worker's GPU). Only
this module imports Dask; single-machine runs never do.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fracture_qi._optional import import_optional
from fracture_qi.dicom.accel import DecodeSettings, resolve_decoder
from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import ScreeningError
from fracture_qi.screening.batch import screen_batch
from fracture_qi.screening.decode import DecodeFailure, attach, decode, load_job
from fracture_qi.screening.jobs import SeriesJob, SeriesOutcome, failed_outcome
from fracture_qi.screening.models import ModelSpec, load_model, spec_of
from fracture_qi.screening.pool import default_workers

log = logging.getLogger(__name__)

_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def _model_for(spec: ModelSpec) -> Any:
    """The worker's model for *spec*, built once per worker process."""
    key = json.dumps(spec.to_dict(), sort_keys=True, default=str)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(spec)
            _MODELS[key] = model
    return model


def screen_one(
    job: SeriesJob,
    spec: ModelSpec,
    loader: Callable[[SeriesJob], CTVolume] = load_job,
    decoder: str | None = None,
) -> SeriesOutcome:
    """Load and screen one series (a Dask task; also callable directly).

    *decoder* (``auto``, ``cpu``, ``gpu``) is resolved on the worker, against its own GPU
    (once per worker process: the reason is in the worker's log).

    Returns
    -------
    SeriesOutcome
        Without pixel data; an error outcome (never an exception) for a bad series.
    """
    model = _model_for(spec)
    if not getattr(model, "needs_pixels", True):
        t0 = time.perf_counter()
        res = model.result_for(job.study_instance_uid, job.series_instance_uid)
        res.seconds = round(time.perf_counter() - t0, 4)
        return SeriesOutcome(job, res, decode_seconds=0.0, screen_seconds=res.seconds)
    choice, _ = resolve_decoder(decoder)
    d = decode(job, loader, to_shm=False, settings=DecodeSettings(decoder=choice))
    if isinstance(d, DecodeFailure):
        return d.outcome(job)
    ready = attach(job, d)
    try:
        ((res, secs),) = screen_batch(model, [ready])
    finally:
        ready.release()
    res.seconds = round(d.seconds + secs, 4)
    return SeriesOutcome(job, res, decode_seconds=d.seconds, screen_seconds=secs,
                         worker_peak_rss_mb=d.peak_rss_mb, n_slices=d.shape[0],
                         decoder=d.meta.get("decoder") or None)


def screen_with_dask(
    jobs: Sequence[SeriesJob],
    model: Any,
    *,
    address: str,
    workers: int | None = None,
    progress: bool = False,
    loader: Callable[[SeriesJob], CTVolume] = load_job,
    connect_timeout_s: float = 30.0,
    decoder: str | None = None,
) -> Iterator[SeriesOutcome]:
    """Screen *jobs* on a Dask cluster, yielding outcomes as tasks complete.

    Parameters
    ----------
    jobs
        The series.
    model
        A model built by :func:`~fracture_qi.screening.models.load_model` (its ``spec`` is
        shipped to the workers) or a :class:`ModelSpec`.
    address
        ``"local"`` starts a LocalCluster of *workers* processes (one thread each) on this
        machine; anything else is a scheduler address (``tcp://host:8786``).
    workers
        Workers of the local cluster (default
        :func:`~fracture_qi.screening.pool.default_workers`).
    progress
        Show a tqdm progress bar.
    loader
        How a worker turns a job into a volume (must be importable on the workers).
    decoder
        ``auto``, ``cpu`` or ``gpu``, resolved by each worker on its own machine.

    Yields
    ------
    SeriesOutcome

    Raises
    ------
    ScreeningError
        When the model cannot be rebuilt on workers or the scheduler cannot be reached.
    OptionalDependencyError
        When ``dask[distributed]`` is not installed.
    """
    from tqdm.auto import tqdm

    spec = model if isinstance(model, ModelSpec) else spec_of(model)
    if spec is None:
        raise ScreeningError(
            f"model {getattr(model, 'model_id', type(model).__name__)} has no ModelSpec, so "
            "Dask workers cannot rebuild it. Fix: build it with "
            "fracture_qi.screening.models.load_model, or run without --dask"
        )
    distributed = import_optional("distributed", "screening on a Dask cluster (--dask)",
                                  "dask[distributed]")
    cluster = None
    try:
        if address == "local":
            n = workers or default_workers()
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1,
                                               processes=True, dashboard_address=None)
            client = distributed.Client(cluster)
        else:
            client = distributed.Client(address, timeout=f"{connect_timeout_s}s")
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise ScreeningError(
            f"cannot reach the Dask scheduler at {address!r}: {e}. Fix: check the address "
            "(tcp://host:8786) and that the scheduler is running, or use --dask local"
        ) from e
    bar = tqdm(total=len(jobs), unit="series", desc="screening (dask)", disable=not progress)
    try:
        n_workers = len(client.scheduler_info().get("workers", {}))
        log.info("dask: %d series on %s (%d workers)", len(jobs), address, n_workers)
        futures = client.map(screen_one, list(jobs), spec=spec, loader=loader,
                             decoder=decoder, pure=False)
        job_of = {f.key: j for f, j in zip(futures, jobs)}
        for fut in distributed.as_completed(futures):
            job = job_of[fut.key]
            try:
                outcome = fut.result()
            except Exception as e:  # noqa: BLE001  a task that died (worker lost...)
                log.error("dask task for series %s failed: %s", job.key, e)
                outcome = failed_outcome(job, ReasonCode.SCREEN_FAILED,
                                         f"dask task failed: {type(e).__name__}: {e}")
            finally:
                fut.release()
            bar.update(1)
            yield outcome
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()


__all__ = ["screen_one", "screen_with_dask"]
