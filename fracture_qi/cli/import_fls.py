"""``fracture-qi import-fls``: validate, link and store the manifest's FLS records."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from fracture_qi.errors import ManifestError

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Read each FLS export named under fls_records in the manifest (CSV, Excel .xlsx, or a SQL
query against the FLS database), check it against the FLS schema, link every record to a
patient by the pseudonymous key of the NHS number (else the MRN) and to the index CT by
accession number (else by date), and store it in fls_episodes without the NHS number or MRN.
Unreadable cells and impossible dates are reported (and kept with the record), never
silently dropped. Re-running is safe: records are keyed on (source, record_id)."""

EPILOG = """\
exit status: 0 when every source was imported (problems in single records are listed, not
fatal); 2 when a source could not be read or, with --strict, failed validation.
example:  fracture-qi import-fls --manifest demo/data_manifest.yaml
schema and checks: docs/measures.md ("FLS records")."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``import-fls`` subcommand."""
    p = subparsers.add_parser(
        "import-fls",
        help="import FLS outcome records (CSV/Excel/SQL) and link them to CT studies",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", required=True, help="path to data_manifest.yaml")
    p.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="NAME",
        help="import only this fls_records source (repeatable; default: all)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse a source with any unreadable cell (nothing written); default: import, "
        "leave the cell empty and record the problem",
    )
    p.add_argument(
        "--show",
        type=int,
        default=20,
        metavar="N",
        help="list the first N problems per source (default 20; counts are always shown)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Import every selected source; print one summary per source."""
    from fracture_qi.manifest import read_manifest
    from fracture_qi.outcomes.linkage import import_fls_records
    from fracture_qi.outcomes.records import read_source
    from fracture_qi.store import open_store

    manifest = read_manifest(args.manifest)
    sources = list(manifest.fls_records)
    if args.source:
        known = {s.name for s in sources}
        unknown = [n for n in args.source if n not in known]
        if unknown:
            raise ManifestError(
                "fls_records",
                unknown,
                "no such source",
                f"use one of {sorted(known)} or leave out --source",
                manifest.path,
            )
        sources = [s for s in sources if s.name in args.source]
    if not sources:
        print(f"{manifest.path}: no fls_records declared; nothing to import", file=sys.stderr)
        return 0
    engine = open_store(manifest)
    secret = manifest.secret()
    extra = [s for s in [getattr(manifest, "site", None)] if s]
    try:
        for src in sources:
            raw = read_source(src, base=manifest.base)
            summary = import_fls_records(
                raw,
                engine,
                secret,
                source=src.name,
                strict=args.strict,
                mrn_issuers_extra=extra,
            )
            print(summary.table(max_problems=args.show))
    finally:
        engine.dispose()
    from sqlalchemy.engine import make_url

    print(f"database: {make_url(manifest.database_url).render_as_string(hide_password=True)}")
    return 0
