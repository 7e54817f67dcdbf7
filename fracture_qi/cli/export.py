"""``fracture-qi export``: the database's screening results as studies.csv and vertebrae.csv."""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """\
Write the screening results in the manifest's database as DIR/studies.csv (one row
per indexed series and one per unusable file) and DIR/vertebrae.csv (one row per assessed
vertebra), with exactly the columns 'fracture-qi screen PATH... --out DIR' writes, so
scripts read both the same way. These files hold study and series UIDs: they are
identifiable and stay inside the hospital (the audit reports are the shareable outputs)."""

EPILOG = """\
examples:
  fracture-qi export --manifest demo/data_manifest.yaml --out /tmp/results
  fracture-qi export --manifest site.yaml --out out/ --model-id acme-spine --model-version 3.2

by default the default model is exported (the one with the most results; the same model the
worklist, the audit and the dashboard count: docs/measures.md, "Which result counts"); series
it has not screened yet are left out (and counted). exit status: 0 when the files were written; 2 when the
manifest or database could not be opened."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``export`` subcommand."""
    p = subparsers.add_parser(
        "export",
        help="write the database's screening results as studies.csv / vertebrae.csv",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", required=True, metavar="M", help="data_manifest.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--model-id", default=None, help="export this model's results")
    p.add_argument("--model-version", default=None,
                   help="with --model-id: this version (default: its current one)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Export; print what was written."""
    from fracture_qi.manifest import read_manifest
    from fracture_qi.screening.results import export_results
    from fracture_qi.store import open_store

    from fracture_qi.accesslog import AccessAction, command_line_user, record_access

    manifest = read_manifest(args.manifest)
    engine = open_store(manifest)
    # logged before anything is written (the access log, issue 18)
    record_access(engine, username=command_line_user(), action=AccessAction.EXPORT,
                  via="command line", detail={"what": "screening results (studies.csv, "
                                              "vertebrae.csv)", "out": str(args.out)})
    summary = export_results(engine, args.out, model_id=args.model_id,
                             model_version=args.model_version)
    for line in summary.lines():
        print(line)
    return 0
