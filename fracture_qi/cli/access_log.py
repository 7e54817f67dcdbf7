"""``fracture-qi access-log --manifest M --out FILE.csv``: the access log for the Caldicott guardian."""

from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Write the access log as CSV: every opening of a patient's case, every decision, every export,
every sign-in (and failed one), every change to an account; who, when (UTC), what, which
record (study id and pseudonymous patient key, never a name or NHS number), from where
(the browser's address) and through what. The log cannot be changed or deleted, even with
SQL: the database refuses it. This export is itself recorded in the log."""

EPILOG = """\
examples:
  fracture-qi access-log --manifest site.yaml --out access-2026-12.csv --since 2026-12-01
  fracture-qi access-log --manifest site.yaml --out j.smith.csv --user j.smith
  fracture-qi access-log --manifest site.yaml --out study-412.csv --study 412

To find a patient's study id: the nurses' app shows it with the case; the database's studies
table links it to the patient. Exit status 0 when written; 2 with the reason otherwise."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "access-log", help="export the access log (who opened which case, decisions, exports)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", "-m", default=os.environ.get("FRACTURE_QI_MANIFEST"),
                   help="data_manifest.yaml (default: $FRACTURE_QI_MANIFEST)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--since", default=None, metavar="YYYY-MM-DD", help="from this day (UTC)")
    p.add_argument("--until", default=None, metavar="YYYY-MM-DD",
                   help="up to and including this day (UTC)")
    p.add_argument("--user", default=None, help="only this user")
    p.add_argument("--study", type=int, default=None, metavar="ID", help="only this study id")
    p.set_defaults(func=run)


def _day(value: str | None, flag: str, end: bool = False):  # type: ignore[no-untyped-def]
    import datetime as dt

    from fracture_qi.errors import ConfigError

    if value is None:
        return None
    try:
        d = dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r} is not a date. Fix: use YYYY-MM-DD") from None
    t = dt.datetime.combine(d, dt.time(), tzinfo=dt.timezone.utc)
    return t + dt.timedelta(days=1) if end else t


def run(args: argparse.Namespace) -> int:
    from fracture_qi.accesslog import command_line_user, export_access_log
    from fracture_qi.errors import ConfigError
    from fracture_qi.manifest import read_manifest
    from fracture_qi.store import open_store

    if not args.manifest:
        raise ConfigError("no manifest given. Fix: --manifest path/to/data_manifest.yaml")
    since, until = _day(args.since, "--since"), _day(args.until, "--until", end=True)
    engine = open_store(read_manifest(args.manifest, verify=False))
    try:
        n = export_access_log(engine, args.out, by=command_line_user(), since=since,
                              until=until, username=args.user, study_id=args.study)
    finally:
        engine.dispose()
    print(f"{n} access-log entries written to {args.out}")
    return 0
