"""``fracture-qi screen``: screen CT series for vertebral fractures.

Two modes, one engine (:mod:`fracture_qi.screening.engine`):

* ``--manifest M``: the eligible, not yet screened series of the index, results into the
  database (resumable: run it again after an interruption);
* ``PATH... --out DIR``: DICOM files/folders directly, no database; writes
  ``DIR/studies.csv``, ``DIR/vertebrae.csv`` and ``DIR/keyimages/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fracture_qi.errors import ConfigError

DESCRIPTION = """\
Screen CT series for osteoporotic vertebral fractures: decode each series in worker
processes, run the screening model on the device (GPU if there is one), grade every
vertebra (Genant 0-3), flag studies at --flag-grade and save a key image per series.

With --manifest the series come from the index (run 'fracture-qi index' first) and the
results go into the manifest's database as each series finishes; series already screened
by the same model version are skipped, so an interrupted run is continued by running the
same command again. With PATH... --out DIR any folder of DICOM is screened without a
database (mixed studies, localizers and stray files are sorted out and reported)."""

EPILOG = """\
examples:
  fracture-qi screen --manifest demo/data_manifest.yaml
  fracture-qi screen --manifest site.yaml --device cuda --workers 15 --batch-size 8
  fracture-qi screen --manifest site.yaml --device cuda --workers 15 --model-streams 4
  fracture-qi screen --manifest site.yaml --decoder gpu  # JPEG 2000 on the GPU (nvImageCodec)
  fracture-qi screen --manifest site.yaml --dask tcp://10.0.0.5:8786
  fracture-qi screen /media/export --out /tmp/r          # no database
  fracture-qi screen scan1/ scan2/ --out /tmp/r --model site.onnx --model-sha256 <hex>
  fracture-qi screen research/ --out /tmp/r --ignore-age  # ages removed (not for audit)
  fracture-qi screen old-5mm/ --out /tmp/r --max-slice-mm 5  # research only: grades are
                                                 # unreliable above 3 mm (false positives)

outputs (folder mode; same columns as 'fracture-qi export'):
  studies.csv    path, study_instance_uid, series_instance_uid, status (ok|excluded|error),
                 reason, flagged, max_grade, n_vertebrae, seconds
  vertebrae.csv  study_instance_uid, series_instance_uid, level, genant_grade, morph_type,
                 ha_mm, hm_mm, hp_mm, score
  keyimages/     one PNG per screened series (index.csv maps file -> series)

with results_to_pacs in the manifest, the results of the run (and any that failed to reach
the PACS before) are then sent into their studies on the PACS: a TID 1500 SR and the key
image as a Secondary Capture (docs/pacs-and-dicom.md).

exit status: 0 when the batch ran, whatever single series failed (their reason codes are
in the outputs); 2 when the run could not start (manifest, database, model, no input).
docs: docs/screening-engine.md, docs/model-cards.md"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``screen`` subcommand."""
    p = subparsers.add_parser(
        "screen",
        help="screen CT series for vertebral fractures (database or folders)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="DICOM files or folders to screen without a database (needs --out)")
    p.add_argument("--manifest", metavar="M", help="data_manifest.yaml: screen into its database")
    p.add_argument("--out", metavar="DIR", help="output folder for PATH mode")
    p.add_argument("--device", default=None, metavar="D",
                   help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--decoder", choices=("auto", "cpu", "gpu"), default=None,
                   help="where JPEG 2000/HTJ2K frames are decoded: auto (default: the GPU "
                   "where nvImageCodec is installed and decodes identically, else the CPU), "
                   "cpu, or gpu (falls back to the CPU with a warning saying why); default "
                   "from the manifest's screening.decoder or FRACTURE_QI_DECODER")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="decode processes (default: CPU cores - 1; 0 decodes in this process)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="series per model call where the model batches (default 1)")
    p.add_argument("--model-streams", type=int, default=None, metavar="K",
                   help="batches in the model at once, each on its own thread and (on CUDA) "
                   "its own stream, while decode workers run (default: the manifest's "
                   "screening.model_streams, else 2; 1 runs the model on the main thread): "
                   "more for a GPU machine whose model lags its decode workers; each stream "
                   "holds a batch of volumes in memory")
    p.add_argument("--flag-grade", type=int, choices=(1, 2, 3), default=None,
                   help="flag a study when any vertebra reaches this Genant grade (default 2)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="screen at most N series (a trial run)")
    p.add_argument("--dask", default=None, metavar="ADDRESS",
                   help="run on a Dask cluster: a scheduler address (tcp://host:8786) or "
                   "'local' for a cluster on this machine")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="PATH mode: reference (default) or a .pt/.onnx file with its model "
                   "card beside it (manifest mode uses the manifest's model)")
    p.add_argument("--model-sha256", default=None, metavar="HEX",
                   help="PATH mode: the checksum a plug-in model file must have")
    p.add_argument("--all-series", action="store_true",
                   help="PATH mode: screen every eligible series, not just one per study")
    p.add_argument("--timeout", type=float, default=None, metavar="S", dest="timeout_s",
                   help="per-series decode limit in seconds (default: the manifest's "
                   "screening.timeout_s; none in PATH mode): a slower series is recorded as "
                   "TIMEOUT and its worker replaced (needs --workers >= 1)")
    p.add_argument("--ignore-age", action="store_true",
                   help="PATH mode: also screen series excluded only for age (AGE_UNKNOWN, "
                   "AGE_UNDER_50), with reason left blank: for research and validation "
                   "folders where ages are removed; never used by the audit pipeline")
    p.add_argument("--max-slice-mm", type=float, default=None, metavar="MM",
                   help="PATH mode: coarsest slice spacing screened (default 3.0); thicker "
                   "series are reported as SLICE_TOO_THICK, not graded (manifest mode uses "
                   "the manifest's screening.max_slice_mm, applied by 'fracture-qi index')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _check(args: argparse.Namespace) -> None:
    if args.manifest and args.paths:
        raise ConfigError("give either --manifest M or PATH... --out DIR, not both. "
                          "Fix: drop the paths (the manifest lists the sources) or --manifest")
    if not args.manifest and not args.paths:
        raise ConfigError("nothing to screen. Fix: fracture-qi screen --manifest M, or "
                          "fracture-qi screen PATH... --out DIR")
    if args.paths and not args.out:
        raise ConfigError("PATH mode needs --out DIR for studies.csv, vertebrae.csv and key "
                          "images. Fix: add --out DIR")
    if args.manifest and getattr(args, "ignore_age", False):
        raise ConfigError("--ignore-age is for PATH mode (research and validation folders); "
                          "the audit pipeline (--manifest) always applies the age rule. Fix: "
                          "drop --ignore-age, or screen the folder with PATH... --out DIR")
    if args.manifest and (args.model or args.model_sha256):
        raise ConfigError("--model is for PATH mode; with --manifest the model comes from the "
                          "manifest's model: entry. Fix: edit the manifest or drop --model")
    max_slice = getattr(args, "max_slice_mm", None)
    if max_slice is not None and args.manifest:
        raise ConfigError("--max-slice-mm is for PATH mode; with --manifest the limit is the "
                          "manifest's screening.max_slice_mm, applied when indexing. Fix: set "
                          "it in the manifest and run fracture-qi index --rebuild-choice")
    if max_slice is not None and not 0 < max_slice <= 10:
        raise ConfigError(f"--max-slice-mm {max_slice} is out of range. Fix: give a spacing in "
                          "mm above 0 and at most 10 (3 is the default)")
    if getattr(args, "timeout_s", None) is not None and args.timeout_s <= 0:
        raise ConfigError(f"--timeout {args.timeout_s} is out of range. Fix: give a number of "
                          "seconds > 0")
    streams = getattr(args, "model_streams", None)
    if streams is not None and not 1 <= streams <= 16:
        raise ConfigError(f"--model-streams {streams} is out of range. Fix: give 1 to 16 "
                          "(2 is the default; 1 screens on the main thread)")
    for name in ("workers", "batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < (0 if name != "batch_size" else 1):
            raise ConfigError(f"--{name.replace('_', '-')} {value} is out of range. Fix: use "
                              f"a number >= {0 if name != 'batch_size' else 1}")


def run(args: argparse.Namespace) -> int:
    """Screen; print a summary and where the results are."""
    _check(args)
    progress = not args.no_progress
    if args.manifest:
        from fracture_qi.manifest import read_manifest
        from fracture_qi.screening.engine import run_screening
        from fracture_qi.store import open_store

        manifest = read_manifest(args.manifest)
        engine = open_store(manifest)
        summary = run_screening(
            manifest, engine, device=args.device, workers=args.workers,
            batch_size=args.batch_size, flag_grade=args.flag_grade, limit=args.limit,
            dask=args.dask, progress=progress, timeout_s=args.timeout_s,
            decoder=args.decoder, model_streams=args.model_streams,
        )
        for line in summary.lines():
            print(line)
        if summary.n_planned == 0 and summary.n_skipped == 0:
            print("nothing to screen: every eligible series already has a result from this "
                  "model (or nothing is indexed yet: run fracture-qi index --manifest M)")
        from fracture_qi.adjudication.worklist import AdjudicationSettings, refresh_worklist

        # the nurses' worklist fills itself: no separate command to remember (issue 18)
        wl = refresh_worklist(engine, AdjudicationSettings.from_mapping(manifest.adjudication))
        if wl is not None:
            print(f"worklist: {wl.n_added} case(s) added for the nurses ({wl.n_flagged} "
                  f"flagged, {wl.n_audit_negative} in the audit sample of AI-negatives, in all)")
        if manifest.results_to_pacs is not None:
            from fracture_qi.results_dicom.send import send_after_run

            sent = send_after_run(manifest, engine, summary.run_id, progress=progress)
            for line in sent.lines():
                print(line)
        print(f"database: {manifest.database_url.split('@')[-1]}  (screening run "
              f"{summary.run_id})")
        print(f"key images: {summary.keyimage_dir}")
        print(f"export the results: fracture-qi export --manifest {args.manifest} --out DIR")
        return 0

    from fracture_qi.screening.engine import screen_paths

    model: Any = None
    if args.model or args.model_sha256:
        import dataclasses

        from fracture_qi.screening.models import resolve_spec

        spec = resolve_spec(args.model or "reference")
        if spec.kind == "vendor":
            raise ConfigError("vendor results are screened through a manifest (they need the "
                              "vendor's model id and version). Fix: use --manifest M with "
                              "model: {kind: vendor, path, sha256, id, version}")
        if args.model_sha256:
            spec = dataclasses.replace(spec, sha256=args.model_sha256.lower())
        model = spec  # checked by screen_paths at once, built when there is a series to screen
    summary = screen_paths(
        [Path(p) for p in args.paths], args.out, model=model, device=args.device or "auto",
        workers=args.workers, batch_size=args.batch_size or 1, flag_grade=args.flag_grade or 2,
        limit=args.limit, dask=args.dask, progress=progress, all_series=args.all_series,
        ignore_age=args.ignore_age, timeout_s=args.timeout_s,
        max_slice_mm=getattr(args, "max_slice_mm", None), decoder=args.decoder,
        model_streams=args.model_streams,
    )
    if summary.n_planned == 0:
        print("nothing to screen: no eligible series in " + ", ".join(args.paths)
              + " (each file's reason is in studies.csv)")
    else:
        for line in summary.lines():
            print(line)
    out = Path(summary.out_dir or args.out)
    print(f"results: {out / 'studies.csv'}, {out / 'vertebrae.csv'}")
    print(f"key images: {summary.keyimage_dir}")
    return 0
