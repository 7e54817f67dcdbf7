"""``fracture-qi index --manifest M``: header scan of the manifest's DICOM folders into the database."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

DESCRIPTION = """\
Read the headers (never the pixels) of every file under the manifest's folder sources, and
query its DICOMweb/DIMSE sources, then record patients, studies, series and instances in the
database with eligibility for screening (CT, age >= 50 at the study date, thoracolumbar spine
in view), one chosen series per eligible study, and a stable reason code for every excluded
series and unusable file. Safe to rerun: files already indexed are skipped, new ones added."""

EPILOG = """\
examples:
  fracture-qi index --manifest demo-output/cohort/data_manifest.yaml
  fracture-qi index --manifest M --workers 4 --rebuild-choice
  fracture-qi index --manifest M --source pacs --since 2025-01-01 --until 2025-03-31

reason codes are listed in docs/data-model.md. Exit status 0 when the scan ran (bad files
are recorded, not fatal); 2 when it could not run (bad manifest, database unreachable).
The database URL comes from the manifest or FRACTURE_QI_DATABASE."""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from e


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "index",
        help="scan DICOM headers of the manifest's folders into the database",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", "-m", default=os.environ.get("FRACTURE_QI_MANIFEST"),
                   help="data_manifest.yaml (default: $FRACTURE_QI_MANIFEST)")
    p.add_argument("--source", action="append", metavar="NAME",
                   help="index only this dicom_sources entry (repeatable)")
    p.add_argument("--workers", type=int, default=None,
                   help="header-reading processes (default $FRACTURE_QI_WORKERS or CPU count, max 8)")
    p.add_argument("--rebuild-choice", action="store_true",
                   help="re-read every file and decide eligibility and chosen series again")
    p.add_argument("--since", type=_date, default=None, metavar="YYYY-MM-DD",
                   help="PACS sources: earliest study date (default: the source's since:)")
    p.add_argument("--until", type=_date, default=None, metavar="YYYY-MM-DD",
                   help="PACS sources: latest study date (default: the source's until:)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fracture_qi.dicom.index import index_sources
    from fracture_qi.errors import ConfigError
    from fracture_qi.manifest import read_manifest
    from fracture_qi.store import open_store

    if not args.manifest:
        raise ConfigError(
            "no manifest given. Fix: fracture-qi index --manifest path/to/data_manifest.yaml "
            "(or set FRACTURE_QI_MANIFEST)"
        )
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be 1 or more")
    manifest = read_manifest(args.manifest)
    engine = open_store(manifest)
    progress = not args.no_progress and sys.stderr.isatty()
    summary = index_sources(
        manifest, engine, progress=progress,
        workers=args.workers, rescan=args.rebuild_choice, sources=args.source,
    )
    if manifest.pacs_sources():
        # DICOMweb/DIMSE sources: same rows, written by the PACS module
        from fracture_qi.dicom.pacs import index_pacs_sources

        summary.add(index_pacs_sources(
            manifest, engine, since=args.since, until=args.until, sources=args.source,
            rescan=args.rebuild_choice, progress=progress,
        ))
    print(summary.table())
    engine.dispose()
    return 0
