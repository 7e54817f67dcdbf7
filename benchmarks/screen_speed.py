"""Screening speed against decode-only speed, on one full-size series, in one run.

Usage::

    .venv/bin/python benchmarks/screen_speed.py [--device cpu|cuda|auto] [--workers 2]
        [--slices 400] [--copies 4] [--batch-size 1] [--repeat 5] [--pipe-repeat 3]
        [--skip-j2k] [--rss-slices 800] [--workdir /tmp/fqi-screen-bench] [--json out.json]

What it does (everything on the same synthetic series: ``make_spine_volume``, 512x512,
``--slices`` slices at 1 mm, 0.78 mm pixels, one L1 wedge fracture):

1. writes it with pydicom as uncompressed (explicit VR little endian) and as JPEG 2000
   lossless (pydicom ``compress(..., encoding_plugin="pylibjpeg")``), cached in --workdir;
2. **decode-only**: ``fracture_qi.dicom.volume.load_series`` (the suite's decode path,
   best decoder chosen by ``dicom/codecs.py``), one process;
3. **model-only**: ``ReferenceScreener.screen`` on the decoded volume (after a warm-up);
4. **screen, one series**: the engine on one series, decode then model, no overlap.
   Steps 2-4 are taken in turn, --repeat rounds, so that load from elsewhere on a shared
   machine falls on all three alike; best-of and median times are reported, and the ratio
   is the median over rounds of (screen / decode-only) within each round;
5. **pipelined**: the engine on ``--copies`` copies of the series with ``--workers`` decode
   processes overlapping the model; per-series wall time and studies/hour; and the same
   pipeline with a null model (decode + hand-over only) as the decode-only baseline at that
   worker count. The ratio screen/decode compares those two: --pipe-repeat alternating
   pairs, the median of the per-pair ratios;
6. **memory**: peak RSS of a decode worker (and of the main process) on a ``--rss-slices``
   series (uncompressed);
7. **where the time goes** (for batching the model, issue 20 part 2): for each pipelined run,
   the model's busy share of the wall time and the decode workers' (from the outcomes' own
   decode and model seconds), and a cProfile of ``model.screen`` on one volume (the top
   functions by cumulative time);
8. **a lone series** (JPEG 2000): one series through the engine with one decode process
   against the same with every core (forked helpers, ``dicom.accel``), as a study that
   arrives alone is screened.

``--decoder auto|cpu|gpu`` chooses where JPEG 2000 is decoded (default cpu, so CPU figures
stay comparable; use auto on a GPU machine).

Prints a Markdown table and one JSON object (``--json`` also writes it), so a GPU run
(``--device cuda --workers 15``) can be pasted next to the CPU one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from fracture_qi.dicom.volume import load_series
from fracture_qi.screening.decode import peak_rss_mb
from fracture_qi.screening.engine import SeriesJob, screen_series
from fracture_qi.screening.types import SeriesResult


# --------------------------------------------------------------------------------------------
# writing the series
# --------------------------------------------------------------------------------------------
def _slice_dataset(hu: np.ndarray, k: int, spacing: tuple[float, float, float],
                   origin: tuple[float, float, float], uids: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[uids["series"], str(k)])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["for"]
    ds.Modality, ds.Manufacturer = "CT", "SYNTHETIC"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientAge, ds.StudyDate = "075Y", "20250101"
    ds.SeriesNumber, ds.InstanceNumber = 2, k + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[0]]
    ds.PixelSpacing = [spacing[1], spacing[2]]
    ds.SliceThickness = spacing[0]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
    ds.PixelData = np.clip(hu.astype(np.int32) + 1024, 0, 4095).astype(np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _write_chunk(args: tuple) -> None:
    slices, ks, spacing, origin, uids, folder, j2k = args
    for hu, k in zip(slices, ks):
        ds = _slice_dataset(hu, k, spacing, origin, uids)
        if j2k:
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        ds.save_as(Path(folder) / f"IM{k:04d}.dcm", enforce_file_format=True)


def write_series(hu: np.ndarray, spacing, origin, folder: Path, *, j2k: bool,
                 procs: int) -> list[Path]:
    """Write a (z, y, x) HU volume as axial DICOM slices (cached: .complete marker)."""
    done = folder / ".complete"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        uids = {"study": generate_uid(), "series": generate_uid(), "for": generate_uid()}
        n = hu.shape[0]
        chunks = np.array_split(np.arange(n), max(1, procs * 4))
        work = [([hu[k] for k in c], list(c), tuple(spacing), tuple(origin), uids, str(folder),
                 j2k) for c in chunks if len(c)]
        with ProcessPoolExecutor(max_workers=procs) as pool:
            list(pool.map(_write_chunk, work))
        done.write_text("ok\n")
    return sorted(folder.glob("IM*.dcm"))


def make_volume(slices: int, seed: int = 5):
    from fracture_qi.synth.phantom import make_spine_volume, random_patient_spec

    rng = np.random.default_rng(seed)
    spec = random_patient_spec(rng, age=75, sex="F", fractures=[("L1", "wedge", 2)])
    spacing = (1.0, 0.78, 0.78) if slices <= 500 else (500.0 / slices, 0.78, 0.78)
    vol, _ = make_spine_volume(spec, fov="cap", shape=(slices, 512, 512), spacing=spacing,
                               rng=rng)
    return vol


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
class NullModel:
    """Returns at once: the pipeline's decode + hand-over cost alone."""

    model_id, model_version, sha256, device = "null", "0", None, "cpu"

    def screen(self, volume) -> SeriesResult:
        return SeriesResult(status="ok")


def _job(paths: list[Path], key: Any) -> SeriesJob:
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return SeriesJob(key=key, study_instance_uid=str(ds.StudyInstanceUID),
                     series_instance_uid=str(ds.SeriesInstanceUID),
                     paths=[str(p) for p in paths], path=str(paths[0].parent))


DECODER = "cpu"  # set from --decoder in main()


def pipelined(paths, model, copies: int, workers: int, batch: int,
              streams: int = 1) -> tuple[float, float, list]:
    """Wall time of *copies* series through the engine, and the steady-state time per series
    (between the first and the last result: the pool's start-up left out); *streams*
    batches in the model at once (issue 20 part 2)."""
    jobs = [_job(paths, i) for i in range(copies)]
    t0 = time.perf_counter()
    outs, stamps = [], []
    for o in screen_series(jobs, model, workers=workers, batch_size=batch, decoder=DECODER,
                           model_streams=streams):
        outs.append(o)
        stamps.append(time.perf_counter())
    wall = time.perf_counter() - t0
    bad = [o.result.reason for o in outs if o.result.status != "ok"]
    if bad:
        raise SystemExit(f"screening failed in the benchmark: {bad}")
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else wall
    return wall, steady, outs


def time_split(outs: list, wall: float, workers: int) -> dict[str, Any]:
    """Where a pipelined run's time went, from the outcomes' own timings: the model's busy
    share of the wall time (the rest it waited for decoded volumes) and the decode workers'."""
    dec = sum(o.decode_seconds or 0.0 for o in outs)
    mod = sum(o.screen_seconds or 0.0 for o in outs)
    return {
        "wall_s": round(wall, 2), "series": len(outs),
        "decode_s_per_series": round(dec / len(outs), 3),
        "model_s_per_series": round(mod / len(outs), 3),
        "model_busy_pct": round(100 * mod / wall, 1),
        "model_waiting_s": round(max(0.0, wall - mod), 2),
        "decode_workers_busy_pct": round(100 * dec / (wall * max(1, workers)), 1),
        "decoders": sorted({o.decoder or "?" for o in outs}),
    }


def model_profile(model, volume, top: int = 15) -> list[dict[str, Any]]:
    """cProfile of one ``model.screen``: the *top* functions by cumulative seconds."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    model.screen(volume)
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_, ncalls, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "fracture_qi" not in file and not func.startswith("<built-in method torch"):
            continue
        short = file.split("fracture_qi/")[-1] if "fracture_qi" in file else file
        rows.append({"function": f"{short}:{line}({func})", "calls": ncalls,
                     "cumulative_s": round(cum, 3)})
    rows.sort(key=lambda r: -r["cumulative_s"])
    return rows[:top]


def lone_series(paths, model, workers: int, rounds: int = 3) -> dict[str, Any]:
    """One series alone through the engine: one decode process, then every core, in turn
    (*rounds* pairs; the median ratio)."""
    from fracture_qi.screening import pool

    real = pool.usable_cores
    walls: dict[str, list[float]] = {"one_process": [], "every_core": []}
    for _ in range(rounds):
        for label, cores in (("one_process", lambda: 1), ("every_core", real)):
            pool.usable_cores = cores  # type: ignore[assignment]
            try:
                t0 = time.perf_counter()
                list(screen_series([_job(paths, label)], model, workers=workers,
                                   decoder=DECODER))
                walls[label].append(time.perf_counter() - t0)
            finally:
                pool.usable_cores = real  # type: ignore[assignment]
    ratio = np.array(walls["every_core"]) / np.array(walls["one_process"])
    return {"cores": real(), "rounds": rounds,
            "one_process_wall_s": round(min(walls["one_process"]), 2),
            "every_core_wall_s": round(min(walls["every_core"]), 2),
            "ratio_every_core": round(float(np.median(ratio)), 2),
            "walls": {k: [round(x, 2) for x in v] for k, v in walls.items()}}


def dask_pipelined(paths, model, copies: int, workers: int) -> dict[str, Any]:
    """The same copies through ``--dask local`` (one model per worker process)."""
    from fracture_qi.screening.distributed import screen_with_dask

    jobs = [_job(paths, i) for i in range(copies)]
    t0 = time.perf_counter()
    stamps = []
    for o in screen_with_dask(jobs, model, address="local", workers=workers):
        if o.result.status != "ok":
            raise SystemExit(f"dask screening failed in the benchmark: {o.result.reason}")
        stamps.append(time.perf_counter())
    wall = time.perf_counter() - t0
    # the cluster's start-up (processes importing torch) is left out, as for the pool
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else wall
    return {"dask_local_workers": workers, "dask_copies": copies,
            "dask_s_per_series": round(steady, 3),
            "dask_studies_per_hour": round(3600 / steady, 1),
            "dask_wall_incl_startup_s": round(wall, 1)}


def measure(name: str, paths: list[Path], model, args) -> dict[str, Any]:
    """Decode-only, model-only and the engine on one series, then the pipelines.

    The three single-series timings are taken in turn, ``--repeat`` rounds (1 for JPEG
    2000), so that a burst of load on a shared machine hits all three alike; each is
    reported as best-of (the quiet-machine figure, used for the ratio) and median. The two
    pipelines (null model, reference model) alternate ``--pipe-repeat`` times, best of each.
    """
    r: dict[str, Any] = {"syntax": name, "slices": len(paths)}
    repeat = args.repeat if name == "uncompressed" else 1
    dec_s, dec_cpu, mod_s, mod_cpu, one_s = [], [], [], [], []
    one_parts: list[tuple[float, float]] = []
    from fracture_qi.dicom import accel

    with accel.using(accel.DecodeSettings(accel.resolve_decoder(DECODER)[0])):
        vol = load_series(paths)
    r["decoder"] = vol.meta.get("decoder")
    model.screen(vol)  # warm-up (kernels, allocator)
    r["model_profile"] = model_profile(model, vol)
    del vol
    res = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        vol = load_series(paths)
        dec_s.append(time.perf_counter() - t0)
        dec_cpu.append(time.process_time() - c0)  # one thread: CPU = idle wall
        t0, c0 = time.perf_counter(), time.process_time()
        res = model.screen(vol)
        mod_s.append(time.perf_counter() - t0)
        mod_cpu.append(time.process_time() - c0)  # all torch threads together
        del vol
        t0 = time.perf_counter()
        (o,) = list(screen_series([_job(paths, "one")], model, workers=0, decoder=DECODER))
        one_s.append(time.perf_counter() - t0)
        one_parts.append((round(o.decode_seconds, 3), round(o.screen_seconds, 3)))

    def best_median(xs: list[float]) -> tuple[float, float]:
        return round(min(xs), 3), round(float(np.median(xs)), 3)

    r["decode_only_s"], r["decode_only_median_s"] = best_median(dec_s)
    r["decode_only_cpu_s"] = round(min(dec_cpu), 3)
    r["model_only_s"], r["model_only_median_s"] = best_median(mod_s)
    r["model_only_cpu_s"] = round(min(mod_cpu), 3)
    r["screen_one_series_s"], r["screen_one_series_median_s"] = best_median(one_s)
    r["rounds"] = repeat
    r["rounds_s"] = {"decode_only": [round(x, 3) for x in dec_s], "model_only": [round(x, 3) for x in mod_s],
                     "screen_one_series": [round(x, 3) for x in one_s],
                     "screen_one_series_decode_model": one_parts}
    assert res is not None
    r["result"] = {"status": res.status, "max_grade": res.max_grade,
                   "flagged": bool(res.flagged), "n_vertebrae": res.n_vertebrae}
    # the ratio: the median over rounds of screen / decode-only within a round (neighbours in
    # time share the machine's load); best-of over best-of as a second view
    r["ratio_one_series"] = round(float(np.median(np.array(one_s) / np.array(dec_s))), 2)
    r["ratio_one_series_best"] = round(r["screen_one_series_s"] / r["decode_only_s"], 2)
    copies = args.copies if name == "uncompressed" else max(2 * args.workers, 4)
    null_steady, steady, wall, outs = [], [], [], []
    splits: dict[str, list] = {"decode_only": [], "screen": []}
    #: per stream count above 1, each round's (wall, steady) seconds
    by_streams: dict[int, list[tuple[float, float]]] = {k: [] for k in args.streams if k > 1}
    null_wall: list[float] = []
    for _ in range(args.pipe_repeat if name == "uncompressed" else 1):
        w0, s0, o0 = pipelined(paths, NullModel(), copies, args.workers, 1)
        null_steady.append(s0)
        null_wall.append(w0)
        splits["decode_only"].append(time_split(o0, w0, args.workers))
        w, s_, o = pipelined(paths, model, copies, args.workers, args.batch_size)
        wall.append(w)
        steady.append(s_)
        splits["screen"].append(time_split(o, w, args.workers))
        outs += o
        for k, runs in by_streams.items():  # the same round: the machine's load alike
            runs.append(pipelined(paths, model, copies, args.workers, args.batch_size,
                                  streams=k)[:2])
    r["time_split"] = splits
    if by_streams:
        def ratio(xs: list[float], base: list[float]) -> float:  # median over the rounds
            return round(float(np.median(np.array(xs) / np.array(base))), 2)

        runs_of = {k: ([w for w, _ in v], [st for _, st in v])  # (walls, steadies)
                   for k, v in by_streams.items()}
        r["pipelined_screen_s_per_series_by_streams"] = {
            str(k): round(min(st), 3) for k, (_, st) in runs_of.items()}
        r["ratio_pipelined_by_streams"] = {
            str(k): ratio(st, null_steady) for k, (_, st) in runs_of.items()}
        # whole runs, start-up included (the steady figure, first to last result, flatters a
        # run whose results come in bursts): wall over the decode-only pipeline's wall
        r["ratio_wall_by_streams"] = {"1": ratio(wall, null_wall)} | {
            str(k): ratio(w, null_wall) for k, (w, _) in runs_of.items()}
    steady_null, steady_screen = min(null_steady), min(steady)
    r.update({
        "copies": copies, "workers": args.workers, "batch_size": args.batch_size,
        "pipelined_decode_only_s_per_series": round(steady_null, 3),
        "pipelined_screen_s_per_series": round(steady_screen, 3),
        "ratio_pipelined": round(float(np.median(np.array(steady) / np.array(null_steady))), 2),
        "ratio_pipelined_best": round(steady_screen / steady_null, 2),
        "studies_per_hour": round(3600 / steady_screen, 1),
        "studies_per_hour_incl_startup": round(copies * 3600 / min(wall), 1),
        "worker_peak_rss_mb": max((o.worker_peak_rss_mb or 0) for o in outs),
    })
    if args.dask_local and name == "uncompressed":
        r.update(dask_pipelined(paths, model, copies * 2, args.workers))
    if name == "jpeg2000" and not args.skip_lone:
        r["lone_series"] = lone_series(paths, model, args.workers)
    return r


def rss_check(args, model) -> dict[str, Any]:
    vol = make_volume(args.rss_slices, seed=6)
    folder = Path(args.workdir) / f"uncompressed-{args.rss_slices}"
    paths = write_series(vol.hu, vol.spacing, vol.origin, folder, j2k=False, procs=args.procs)
    del vol
    outs = list(screen_series([_job(paths, "rss")], model, workers=1))
    o = outs[0]
    return {"slices": len(paths), "status": o.result.status,
            "worker_peak_rss_mb": o.worker_peak_rss_mb,
            "main_peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--slices", type=int, default=400)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5,
                    help="rounds of the single-series timings (uncompressed)")
    ap.add_argument("--pipe-repeat", type=int, default=3,
                    help="alternating runs of the two pipelines (uncompressed)")
    ap.add_argument("--rss-slices", type=int, default=800, help="0 skips the memory check")
    ap.add_argument("--skip-j2k", action="store_true")
    ap.add_argument("--dask-local", action="store_true",
                    help="also measure --dask local (uncompressed) with --workers processes")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2,
                    help="processes for writing/encoding the test series")
    ap.add_argument("--workdir", default="/tmp/fqi-screen-bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--decoder", default="cpu", choices=("auto", "cpu", "gpu"),
                    help="where JPEG 2000 is decoded (dicom.accel); auto on a GPU machine")
    ap.add_argument("--streams", default="1", type=lambda t: [int(x) for x in t.split(",")],
                    help="model streams to time the pipelines with, e.g. 1,2,4 (issue 20 part "
                    "2: batches in the model at once, each on its own thread and CUDA stream)")
    ap.add_argument("--skip-lone", action="store_true",
                    help="skip the lone-series timing (JPEG 2000, one process vs every core)")
    args = ap.parse_args(argv)
    global DECODER
    DECODER = args.decoder

    import torch

    from fracture_qi.screening.models import load_model

    model = load_model("reference", device=args.device)  # carries the spec Dask workers need
    info: dict[str, Any] = {
        "host": platform.node(), "cpus": os.cpu_count(), "device": str(model.device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "pydicom": pydicom.__version__,
        "model": f"{model.model_id} {model.model_version}", "workers": args.workers,
        "decoder": args.decoder,
    }
    t0 = time.perf_counter()
    vol = make_volume(args.slices)
    info["phantom_s"] = round(time.perf_counter() - t0, 1)
    work = Path(args.workdir)
    series = {"uncompressed": write_series(vol.hu, vol.spacing, vol.origin,
                                           work / f"uncompressed-{args.slices}", j2k=False,
                                           procs=args.procs)}
    if not args.skip_j2k:
        t0 = time.perf_counter()
        series["jpeg2000"] = write_series(vol.hu, vol.spacing, vol.origin,
                                          work / f"j2k-{args.slices}", j2k=True,
                                          procs=args.procs)
        info["j2k_encode_s"] = round(time.perf_counter() - t0, 1)
    del vol
    rows = [measure(name, paths, model, args) for name, paths in series.items()]
    out = {"info": info, "results": rows}
    if args.rss_slices:
        out["memory"] = rss_check(args, model)
    print("| syntax | decode-only s | model-only s | screen 1 series s (ratio) | "
          f"pipelined s/series, {args.workers} workers: decode-only / screen (ratio) | "
          "studies/h | worker RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['syntax']} ({r['decoder']}) | {r['decode_only_s']} | {r['model_only_s']} | "
              f"{r['screen_one_series_s']} ({r['ratio_one_series']}x) | "
              f"{r['pipelined_decode_only_s_per_series']} / "
              f"{r['pipelined_screen_s_per_series']} ({r['ratio_pipelined']}x) | "
              f"{r['studies_per_hour']} | {r['worker_peak_rss_mb']} |")
    print("\nwhere the time goes (pipelined, median run): per series decode s (in a worker) / "
          "model s (main process); model busy % of wall; decode workers busy %")
    for r in rows:
        for kind in ("decode_only", "screen"):
            runs = r["time_split"][kind]
            m = runs[len(runs) // 2]
            print(f"  {r['syntax']:12s} {kind:11s} decode {m['decode_s_per_series']} s, model "
                  f"{m['model_s_per_series']} s; model busy {m['model_busy_pct']} %, decode "
                  f"workers busy {m['decode_workers_busy_pct']} % ({', '.join(m['decoders'])})")
        if "ratio_pipelined_by_streams" in r:
            print(f"  {r['syntax']:12s} model streams: " + "; ".join(
                f"{k}: {r['pipelined_screen_s_per_series_by_streams'][k]} s a series "
                f"({x}x decode-only)" for k, x in r["ratio_pipelined_by_streams"].items())
                + "; whole runs over decode-only: " + ", ".join(
                    f"{k} stream(s) {x}x" for k, x in r["ratio_wall_by_streams"].items()))
        if "lone_series" in r:
            ls = r["lone_series"]
            print(f"  {r['syntax']:12s} lone series (best of {ls['rounds']}): one decode "
                  f"process {ls['one_process_wall_s']} s, every core ({ls['cores']}) "
                  f"{ls['every_core_wall_s']} s; median ratio {ls['ratio_every_core']}x")
        print(f"  {r['syntax']:12s} model.screen top functions (cumulative s): "
              + "; ".join(f"{x['function']} {x['cumulative_s']}" for x in r["model_profile"][:6]))
    if "memory" in out:
        m = out["memory"]
        print(f"\n{m['slices']}-slice series: decode worker peak RSS {m['worker_peak_rss_mb']} MB, "
              f"main process peak RSS {m['main_peak_rss_mb']} MB")
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
