"""The screening engine: decode in worker processes, screen on the device, write as we go.

Pipeline (one process per decode worker, the model in the main process)::

    jobs ──► DecodePool (spawn): load_series(paths) ──► shared memory ──┐
                 (bounded: workers + prefetch volumes in flight)        │
                                                                        ▼
    sink (DB rows / CSV rows + key image PNGs)  ◄── model.screen_many(batch) on the device

* Parallel per series, not per slice: a worker decodes a whole series and hands the volume
  over through :mod:`multiprocessing.shared_memory` (:mod:`~fracture_qi.screening.decode`).
* Memory stays bounded: at most ``workers + prefetch`` decoded volumes exist at a time.
* One bad series never stops the batch: decode errors keep their reason code; an unexpected
  exception of the model becomes ``SCREEN_FAILED`` with the message in ``detail`` (and the
  traceback in the log); a decode worker that dies (out of memory, ``kill -9``) is replaced
  and only the series it held is affected: decoded again once, then ``WORKER_DIED``
  (:mod:`~fracture_qi.screening.pool`).
* A run killed outright is marked ``interrupted`` by the next run, which screens the rest
  (:mod:`~fracture_qi.screening.runs`).
* The engine imports no torch (decode workers stay light); the model does.
* With decode workers the model runs on threads (and CUDA streams) of its own, two batches
  at once by default (``model_streams``), while the main thread keeps the workers fed
  (:mod:`~fracture_qi.screening.streams`).

The engine is split along its seams: :mod:`.jobs` (what is passed around), :mod:`.decode`
(one series into a volume, and the worker process), :mod:`.pool` (the worker pool and the
volume streams), :mod:`.batch` (volumes to the model), :mod:`.runs` (run metadata, heartbeat,
dead runs), :mod:`.results` (sinks). This module is the public entry: :func:`run_screening`
(manifest + database, resumable), :func:`screen_paths` (files/folders -> CSV, no database) and
:func:`screen_series`, the generator both use and what notebooks can drive directly.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from fracture_qi.dicom.accel import DecodeSettings, normalise_decoder, resolve_decoder
from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import ScreeningError
from fracture_qi.screening.batch import checked, screen_batch
from fracture_qi.screening.decode import Loader, ReadyVolume, load_job
from fracture_qi.screening.jobs import RunSummary, SeriesJob, SeriesOutcome
from fracture_qi.screening.pool import (
    MAX_WORKER_DEATHS,
    default_workers,
    inline_volumes,
    pooled_volumes,
)
from fracture_qi.screening.runs import (
    Heartbeat,
    code_version,
    host_name,
    jobs_from_refs,
    keyimage_dir,
    manifest_settings,
    mark_interrupted_runs,
    model_device,
    model_kind,
    pick,
)

log = logging.getLogger(__name__)

#: batches in the model at once when decode workers run (``--model-streams``): with one, the
#: main thread runs the model itself and hands no finished decode worker its next series
#: meanwhile; with two, the model runs on a thread of its own. On the 2-core dev machine,
#: uncompressed, 1.30x decode-only with one against 1.09x with two and 1.10x with three
#: (benchmarks/README.md, "Model streams")
DEFAULT_MODEL_STREAMS = 2


def screen_series(
    jobs: Iterable[SeriesJob],
    model: Any,
    *,
    workers: int | None = None,
    batch_size: int = 1,
    prefetch: int | None = None,
    progress: bool = False,
    loader: Loader = load_job,
    timeout_s: float | None = None,
    decoder: str | None = None,
    model_streams: int | None = None,
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
        series over it is recorded as ``TIMEOUT`` and its worker is killed and replaced;
        the other series go on. Not enforced with ``workers=0`` (nothing can stop this
        process's own decode; a warning says so).
    decoder
        ``"auto"`` (default: ``FRACTURE_QI_DECODER``, else the GPU where nvImageCodec
        decodes identically), ``"cpu"`` or ``"gpu"``; see :mod:`fracture_qi.dicom.accel`.
    model_streams
        Batches in the model at once, with decode workers (the manifest's
        ``screening.model_streams``; default :data:`DEFAULT_MODEL_STREAMS`): each on its own
        thread and, on CUDA, its own stream (:mod:`~fracture_qi.screening.streams`); 1 runs
        the model on this thread. Memory grows by that many batches of volumes.

    Yields
    ------
    SeriesOutcome
        In completion order; every job yields exactly one outcome.
    """
    job_list = list(jobs)
    if not job_list:  # nothing to decode: start no worker process
        return
    from tqdm.auto import tqdm

    workers = default_workers() if workers is None else max(0, int(workers))
    model_streams = DEFAULT_MODEL_STREAMS if model_streams is None else max(1, int(model_streams))
    batch_size = max(1, int(batch_size))
    prefetch = batch_size if prefetch is None else max(1, int(prefetch))
    bar = tqdm(total=len(job_list), unit="series", desc="screening", disable=not progress,
               smoothing=0.1)
    stack = ExitStack()
    try:
        if not getattr(model, "needs_pixels", True):
            for job in job_list:
                t0 = time.perf_counter()
                res = checked(model.result_for(job.study_instance_uid,
                                               job.series_instance_uid), job)
                dt = time.perf_counter() - t0
                res.seconds = round(dt, 4)
                bar.update(1)
                yield SeriesOutcome(job, res, decode_seconds=0.0, screen_seconds=dt)
            return
        choice, _ = resolve_decoder(decoder)
        settings = DecodeSettings(decoder=choice)
        if workers == 0:
            if timeout_s:
                log.warning("timeout_s=%s is not enforced when decoding in this process "
                            "(workers=0); use workers >= 1 to enforce it", timeout_s)
            source: Iterator[Any] = inline_volumes(job_list, loader, batch_size, settings)
        else:
            source = pooled_volumes(job_list, loader, workers, prefetch, batch_size,
                                    timeout_s=timeout_s, decode_settings=settings)
            stack.enter_context(_model_threads(model, workers))
        # a consumer that stops early (a notebook interrupted, a caller's break) closes this
        # generator: the volume stream is closed with it, at once, so that the volumes decoded
        # and waiting are freed and the workers stopped (left to the garbage collector, they
        # stayed in shared memory until the interpreter exited)
        stack.callback(source.close)
        if workers and model_streams > 1:
            from fracture_qi.screening.streams import screen_concurrently

            streamed = screen_concurrently(source, model, model_streams, _batch_outcomes,
                                           device=model_device(model))
            stack.callback(streamed.close)  # first: the batches in the model finish and free
            for outcome in streamed:
                bar.update(1)
                yield outcome
            return
        for item in source:
            if isinstance(item, SeriesOutcome):  # a decode failure
                bar.update(1)
                yield item
                continue
            batch: list[ReadyVolume] = item
            try:
                screened = screen_batch(model, batch)
            finally:
                for r in batch:
                    r.release()
            for outcome in _batch_outcomes(batch, screened):
                bar.update(1)
                yield outcome
    finally:
        stack.close()
        bar.close()


def _batch_outcomes(batch: Sequence[ReadyVolume],
                    screened: Sequence[tuple[Any, float]]) -> list[SeriesOutcome]:
    """The outcomes of a screened batch: each result with its decode and model seconds."""
    out = []
    for r, (res, secs) in zip(batch, screened):
        res.seconds = round(r.decoded.seconds + secs, 4)
        out.append(SeriesOutcome(
            r.job, res, decode_seconds=r.decoded.seconds, screen_seconds=secs,
            worker_peak_rss_mb=r.decoded.peak_rss_mb,
            n_slices=r.decoded.shape[0] if r.decoded.shape else None,
            decoder=r.decoded.meta.get("decoder") or None,
        ))
    return out


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
    loader: Loader = load_job,
    timeout_s: float | None = None,
    decoder: str | None = None,
    model_streams: int | None = None,
) -> RunSummary:
    """Screen the manifest's eligible, not yet screened series into its database.

    Resumable: series already screened by the same model id and version are not selected,
    and the ``(series, model_id, model_version)`` unique constraint makes a second writer's
    row a no-op; a killed run is continued by running it again, and is then marked
    ``interrupted`` (see :mod:`fracture_qi.screening.runs`). A series that gained instances
    since it was screened is selected again; its new screening supersedes the old one,
    which is kept (:class:`~fracture_qi.screening.results.DatabaseSink`).

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
    decoder
        ``auto``, ``cpu`` or ``gpu`` (default: the manifest's ``screening.decoder``, then
        ``FRACTURE_QI_DECODER``, then ``auto``); see :mod:`fracture_qi.dicom.accel`.
    model_streams
        Batches in the model at once (default: the manifest's ``screening.model_streams``,
        else :data:`DEFAULT_MODEL_STREAMS`); see :func:`screen_series`.

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
    settings = manifest_settings(manifest)
    base = Path(getattr(manifest, "base", None) or Path.cwd())
    workers = pick(workers, settings, "workers", None)
    batch_size = int(pick(batch_size, settings, "batch_size", 1) or 1)
    timeout_s = pick(timeout_s, settings, "timeout_s", None)
    decoder = normalise_decoder(pick(decoder, settings, "decoder", None))
    model_streams = int(pick(model_streams, settings, "model_streams", DEFAULT_MODEL_STREAMS))
    if model is None:
        model = load_model(
            getattr(manifest, "model", None), base=base,
            device=pick(device, settings, "device", "auto"),
            flag_grade=pick(flag_grade, settings, "flag_grade", 2),
            low_density_hu=settings.get("low_density_hu"),
            max_slice_mm=settings.get("max_slice_mm"),
        )
    if jobs is None:
        from fracture_qi.dicom.index import chosen_series

        refs = chosen_series(engine, unscreened_for=(model.model_id, model.model_version))
        jobs = jobs_from_refs(refs)
    jobs = list(jobs)
    if limit is not None:
        jobs = jobs[: max(0, int(limit))]
    if loader is load_job and any(str(p).startswith("pacs://") for j in jobs for p in j.paths[:1]):
        # series indexed from a PACS: the workers fetch them (cache_dir or a temporary folder)
        from fracture_qi.dicom.pacs import job_loader

        loader = job_loader(list(getattr(manifest, "dicom_sources", []) or []), base)
    keyimages = keyimage_dir(manifest, base)
    summary = RunSummary(n_planned=len(jobs), model_id=model.model_id,
                         model_version=model.model_version, device=model_device(model),
                         keyimage_dir=str(keyimages))
    params = {
        "workers": workers, "batch_size": batch_size, "limit": limit, "dask": dask,
        "timeout_s": timeout_s, "decoder": decoder, "model_streams": model_streams,
        "flag_grade": getattr(model, "flag_grade", flag_grade),
        "low_density_hu": getattr(model, "low_density_hu", settings.get("low_density_hu")),
        "n_planned": len(jobs), "model_kind": model_kind(model),
    }
    decoder = _resolved(summary, decoder, dask, jobs, model)
    summary.interrupted_runs = mark_interrupted_runs(engine)
    run_id = start_run(engine, model, device=summary.device, params=params,
                       host=host_name(), code_version=code_version())
    summary.run_id = run_id
    log.info("screening run %d: %d series with %s %s", run_id, len(jobs), model.model_id,
             model.model_version)
    sink = DatabaseSink(engine, run_id=run_id, model=model, keyimage_dir=keyimages)
    t0 = time.perf_counter()
    status = "failed"
    try:
        with Heartbeat(engine, run_id):
            for outcome in _outcomes(jobs, model, workers=workers, batch_size=batch_size,
                                     dask=dask, progress=progress, loader=loader,
                                     timeout_s=timeout_s, decoder=decoder,
                                     model_streams=model_streams):
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


def _resolved(summary: RunSummary, decoder: str, dask: str | None,
              jobs: Sequence[SeriesJob], model: Any) -> str:
    """The decoder choice the run's workers are told: resolved here (``gpu`` or ``cpu``,
    probed once, the reason kept in *summary*) for local workers; as asked on a Dask
    cluster, whose workers (other machines) each resolve it on their own GPU."""
    summary.decoder_requested = decoder
    if dask or not jobs or not getattr(model, "needs_pixels", True):
        summary.decoder_choice = decoder
        return decoder
    summary.decoder_choice, summary.decoder_reason = resolve_decoder(decoder)
    return summary.decoder_choice


def _outcomes(
    jobs: Sequence[SeriesJob],
    model: Any,
    *,
    workers: int | None,
    batch_size: int,
    dask: str | None,
    progress: bool,
    loader: Loader,
    timeout_s: float | None = None,
    decoder: str | None = None,
    model_streams: int | None = None,
) -> Iterator[SeriesOutcome]:
    if dask:
        if timeout_s:
            log.warning("timeout_s=%s is not enforced on a Dask cluster (set the "
                        "cluster's own limits)", timeout_s)
        from fracture_qi.screening.distributed import screen_with_dask

        return screen_with_dask(jobs, model, address=dask, workers=workers, progress=progress,
                                loader=loader, decoder=decoder)
    return screen_series(jobs, model, workers=workers, batch_size=batch_size,
                         progress=progress, loader=loader, timeout_s=timeout_s,
                         decoder=decoder, model_streams=model_streams)


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
    decoder: str | None = None,
    model_streams: int | None = None,
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
    decoder
        ``auto`` (default, or ``FRACTURE_QI_DECODER``), ``cpu`` or ``gpu``.
    model_streams
        Batches in the model at once (default :data:`DEFAULT_MODEL_STREAMS`; see
        :func:`screen_series`).

    Returns
    -------
    RunSummary

    Raises
    ------
    ScreeningError
        When no path exists (nothing at all to read).
    """
    from fracture_qi.dicom.scan import MAX_SLICE_MM, scan_paths
    from fracture_qi.screening.models import ModelSpec, load_model, resolve_spec, verify_sha256
    from fracture_qi.screening.results import CsvSink

    decoder = normalise_decoder(decoder)
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing and len(missing) == len(paths):
        raise ScreeningError(
            f"nothing to screen: {', '.join(missing)} does not exist. "
            "Fix: give DICOM files or folders that exist"
        )
    for m in missing:
        log.warning("%s does not exist; skipped", m)
    spec: ModelSpec | None = None
    if model is None or isinstance(model, (str, Path, dict, ModelSpec)):
        # checked now (kind, file, checksum: no torch), built once there is a series to screen:
        # a folder with nothing eligible is answered without importing the model's framework
        spec = resolve_spec(model, device=device, flag_grade=flag_grade)
        if spec.path and spec.kind != "vendor":
            verify_sha256(spec.path, spec.sha256)
    slice_limit = MAX_SLICE_MM if max_slice_mm is None else float(max_slice_mm)
    scan_workers = max(1, workers if workers is not None else default_workers())
    scan = scan_paths([p for p in paths if Path(p).exists()], workers=scan_workers,
                      progress=progress, ignore_age=ignore_age, max_slice_mm=slice_limit)
    sink = CsvSink(out_dir)
    summary = RunSummary(out_dir=str(Path(out_dir).resolve()),
                         keyimage_dir=str(sink.keyimage_dir))
    if spec is not None:
        summary.model_id = spec.model_id or spec.kind
        summary.model_version = spec.model_version or ""
    else:
        summary.model_id, summary.model_version = model.model_id, model.model_version
        summary.device = model_device(model)
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
        if jobs and spec is not None:
            model = load_model(spec, device=device, flag_grade=flag_grade,
                               max_slice_mm=max_slice_mm)
            summary.model_id, summary.model_version = model.model_id, model.model_version
            summary.device = model_device(model)
        decoder = _resolved(summary, decoder, dask, jobs, model)
        t0 = time.perf_counter()
        try:
            for outcome in _outcomes(jobs, model, workers=workers, batch_size=batch_size,
                                     dask=dask, progress=progress, loader=load_job,
                                     timeout_s=timeout_s, decoder=decoder,
                                     model_streams=model_streams):
                sink.write(outcome, model)
                summary.count(outcome)
        finally:
            summary.seconds = time.perf_counter() - t0
    finally:
        sink.close()
    return summary


__all__ = [
    "DEFAULT_MODEL_STREAMS",
    "MAX_WORKER_DEATHS",
    "RunSummary",
    "SeriesJob",
    "SeriesOutcome",
    "code_version",
    "default_workers",
    "host_name",
    "load_job",
    "model_device",
    "run_screening",
    "screen_paths",
    "screen_series",
]
