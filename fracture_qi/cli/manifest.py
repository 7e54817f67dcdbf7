"""``fracture-qi manifest --manifest M [--rehash]``: check a manifest, or refresh its sha256s."""

from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Validate data_manifest.yaml: every key known, every declared file present, every sha256
matching, every secret it names (env:VAR, file:PATH) readable now, and the database it names
there and answering (a SQLite file that does not exist is refused: only `fracture-qi index`
creates one). With --rehash, rewrite the sha256 of inputs whose files changed on purpose
(comments and layout of the file are kept)."""

EPILOG = """\
examples:
  fracture-qi manifest --manifest data_manifest.yaml
  fracture-qi manifest --manifest data_manifest.yaml --rehash

Exit status 0 when the manifest is valid (or was rehashed); 2 with the field, value and fix
otherwise (every missing secret is listed). --no-database skips the database check (a new
site before its first `fracture-qi index`). Keys are described in docs/manifest.md."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "manifest",
        help="check a data_manifest.yaml (or --rehash its inputs)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", "-m", default=os.environ.get("FRACTURE_QI_MANIFEST"),
                   help="data_manifest.yaml (default: $FRACTURE_QI_MANIFEST)")
    p.add_argument("--rehash", action="store_true",
                   help="rewrite the sha256 of changed inputs in the manifest")
    p.add_argument("--no-database", action="store_true",
                   help="do not check the database (a new site before its first index)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fracture_qi.errors import ConfigError
    from fracture_qi.manifest import missing_secrets, read_manifest, rehash
    from fracture_qi.store.check import check_database

    if not args.manifest:
        raise ConfigError("no manifest given. Fix: --manifest path/to/data_manifest.yaml")
    if args.rehash:
        changed = rehash(args.manifest)
        for field, (old, new) in changed.items():
            print(f"{field}.sha256: {old[:12]}... -> {new[:12]}...")
        if not changed:
            print("all declared sha256 values already match")
        m = read_manifest(args.manifest)
        print(f"{m.path}: inputs verified; run fracture-qi manifest --manifest {args.manifest} "
              "to check its secrets and database too")
        return 0
    m = read_manifest(args.manifest)
    missing = missing_secrets(m)
    if missing:
        raise ConfigError(f"{m.path}: {len(missing)} secret(s) the site needs cannot be read: "
                          + "; ".join(missing))
    db = ("not checked (--no-database)" if args.no_database
          else check_database(m.database_url, manifest=m.path).line())
    folders = ", ".join(f"{s.name} ({s.kind})" for s in m.dicom_sources) or "none"
    print(f"{m.path}: valid (version {m.version}{', synthetic' if m.synthetic else ''})")
    print(f"  dicom sources: {folders}")
    print(f"  fls records:   {', '.join(r.name for r in m.fls_records) or 'none'}")
    print(f"  model:         {m.model.kind}")
    print(f"  database:      {db}")
    return 0
