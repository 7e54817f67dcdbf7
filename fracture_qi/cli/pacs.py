"""``fracture-qi pacs ...``: check and use the manifest's PACS sources (DICOMweb, DIMSE)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Check the connection to the PACS sources named in data_manifest.yaml (kind: dicomweb or
dimse), see what a date range holds, and pre-fetch the series that would be screened.
'fracture-qi index' and 'fracture-qi screen' use the same sources without this command:
it is for hospital IT setting up and checking the connection (docs/pacs-and-dicom.md)."""

EPILOG = """\
examples:
  fracture-qi pacs echo  --manifest M                      # C-ECHO / QIDO ping every PACS source
  fracture-qi pacs query --manifest M --since 2025-01-01 --until 2025-01-31
  fracture-qi pacs fetch --manifest M --source pacs --since 2025-01-01 --out /secure/cache

Nothing identifying is printed (counts and dates only). fetch writes <StudyUID>/<SeriesUID>/
<SOPUID>.dcm under --out (default: the source's cache_dir) and is resumable: run it again
and only missing instances are fetched. Exit status 0 when every source answered, 1 when
one did not (each failure is named), 2 when the command could not run (bad manifest)."""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from e


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "pacs", help="check and use the manifest's DICOMweb/DIMSE sources",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["echo", "query", "fetch"],
                   help="echo: test the connection; query: count CT studies and series; "
                        "fetch: retrieve the series that would be screened")
    p.add_argument("--manifest", "-m", default=os.environ.get("FRACTURE_QI_MANIFEST"),
                   help="data_manifest.yaml (default: $FRACTURE_QI_MANIFEST)")
    p.add_argument("--source", action="append", metavar="NAME",
                   help="only this dicom_sources entry (repeatable; default: every PACS source)")
    p.add_argument("--since", type=_date, metavar="YYYY-MM-DD",
                   help="earliest study date (default: the source's since:)")
    p.add_argument("--until", type=_date, metavar="YYYY-MM-DD",
                   help="latest study date (default: the source's until:)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="fetch: folder to write into (default: the source's cache_dir)")
    p.set_defaults(func=run)


def _sources(manifest: Any, names: list[str] | None) -> list[Any]:
    from fracture_qi.errors import ManifestError

    pacs = [s for s in manifest.dicom_sources if getattr(s, "kind", "") in ("dicomweb", "dimse")]
    if names:
        unknown = [n for n in names if n not in {s.name for s in pacs}]
        if unknown:
            raise ManifestError("dicom_sources", unknown, "no DICOMweb/DIMSE source of that name",
                                f"use one of {sorted(s.name for s in pacs)}", manifest.path)
        pacs = [s for s in pacs if s.name in set(names)]
    if not pacs:
        raise ManifestError("dicom_sources", [s.name for s in manifest.dicom_sources],
                            "no source of kind dicomweb or dimse",
                            "add one (see docs/pacs-and-dicom.md)", manifest.path)
    return pacs


def _where(src: Any) -> str:
    if src.kind == "dicomweb":
        return src.url
    return f"{src.called_aet}@{src.host}:{src.port} as {src.calling_aet} ({src.retrieve})"


def run(args: argparse.Namespace) -> int:
    from fracture_qi.dicom import pacs
    from fracture_qi.errors import ConfigError, PacsError
    from fracture_qi.manifest import read_manifest

    if not args.manifest:
        raise ConfigError("no manifest given. Fix: fracture-qi pacs echo --manifest "
                          "path/to/data_manifest.yaml (or set FRACTURE_QI_MANIFEST)")
    manifest = read_manifest(args.manifest, verify=False)
    failed = 0
    for src in _sources(manifest, args.source):
        try:
            if args.action == "echo":
                secs = pacs.echo(src, base=manifest.base)
                print(f"{src.name}: ok, {_where(src)} answered in {secs:.2f} s")
            elif args.action == "query":
                _query(src, args, manifest.base)
            else:
                _fetch(src, args, manifest.base)
        except PacsError as e:
            failed += 1
            print(f"{src.name}: FAILED: {e}", file=sys.stderr)
    return 1 if failed else 0


def _query(src: Any, args: argparse.Namespace, base: Path) -> None:
    from fracture_qi.dicom import pacs

    studies = pacs.query_studies(src, since=args.since, until=args.until, base=base)
    months = Counter(s["study_date"][:6] for s in studies)
    n_series = sum(len(pacs.query_series(src, s["study_uid"], base=base)) for s in studies)
    print(f"{src.name}: {len(studies)} CT studies, {n_series} CT series "
          f"({pacs.date_range(args.since or src.since, args.until or src.until)})")
    for month, n in sorted(months.items()):
        print(f"  {month[:4]}-{month[4:] or '??'}: {n} studies")


def _fetch(src: Any, args: argparse.Namespace, base: Path) -> None:
    from tqdm.auto import tqdm

    from fracture_qi.dicom import pacs
    from fracture_qi.errors import ConfigError, FetchError

    out = args.out or src.cache_dir
    if out is None:
        raise ConfigError(f"{src.name}: nowhere to keep fetched files. Fix: --out DIR, or "
                          "cache_dir: in the source (a folder only the suite can read)")
    result = pacs.scan_pacs(src, since=args.since, until=args.until, base=base,
                            progress=sys.stderr.isatty())
    chosen = result.chosen()
    done = errors = 0
    for s in tqdm(chosen, desc=f"fetch {src.name}", unit="series", disable=not sys.stderr.isatty()):
        dest = Path(out) / s.study_instance_uid / s.series_instance_uid
        try:
            pacs.fetch_series(src, s.study_instance_uid, s.series_instance_uid, dest,
                              base=base, expected=s.sop_instance_uids or None)
            done += 1
        except FetchError as e:
            errors += 1
            print(f"{src.name}: series {s.series_number}: {e}", file=sys.stderr)
    reasons = Counter(s.reason or "ok" for s in result.series)
    print(f"{src.name}: {len(result.series)} CT series in range, {len(chosen)} chosen for "
          f"screening; fetched {done}, failed {errors}, into {out}")
    for reason, n in sorted(reasons.items()):
        print(f"  {reason}: {n}")
    if errors:
        raise FetchError(f"{errors} series could not be fetched; run again to resume")
