"""``fracture-qi audit``: run the audit notebooks with papermill, or verify a run."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DESCRIPTION = """\
Run the audit notebooks (cohort and screening, AI versus nurse, treatment uptake and KPIs,
SPC over time, conference pack) with papermill into one run folder:

  REPORT/notebooks/*.ipynb   executed notebooks: the record of the run
  REPORT/html/*.html         the same without code, for readers
  REPORT/tables/*.csv        byte-stable tables (same inputs -> same bytes)
  REPORT/figures/*.html/png  interactive and static figures
  REPORT/slides/             the conference pack: conference-pack.pptx and .pdf
  REPORT/provenance.json     parameters, code version, package versions, input and
                             database hashes, who ran it where and how, times; it
                             carries its own SHA-256 (also kept in the database), so an
                             edit is noticed by --verify

An audit reads the database; it screens nothing unless asked (-p screen true).
Publication mode (the default) suppresses small numbers in every table and figure, needs
the pseudonymisation key, and scans every output file for patient identifiers held in the
database; a hit fails the run. --internal gives exact numbers (never published).
Parameters are checked before anything runs: an unknown key or a bad value stops the run
with the allowed keys and values. A notebook that fails fails the run (exit 1); it is kept
with the error at its top.
"""

EPILOG = """\
examples:
  fracture-qi audit --manifest site.yaml --out reports/2025-q1 \\
      -p period_start 2025-01-01 -p period_end 2025-03-31
  fracture-qi audit --manifest site.yaml --out reports/north -p sites "North General"
  fracture-qi audit --manifest site.yaml --out reports/gpu -p screen true -p device cuda
  fracture-qi audit --verify reports/2025-q1          # rerun and compare
  fracture-qi audit --help-parameters                 # list every parameter

exit status: 0 run ok (or verified identical); 1 a notebook failed, identifiers were found,
or --verify found differences; 2 the run could not start (bad parameter, manifest, key).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "audit", help="run the audit notebooks (papermill) / verify a run",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", type=Path, help="the site's data_manifest.yaml")
    p.add_argument("--out", type=Path, help="run folder to create, e.g. reports/2025-q1")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("KEY", "VALUE"), help="notebook parameter (repeatable)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--publish", dest="publish", action="store_true", default=True,
                      help="publication mode: suppressed, identifier-scanned (default)")
    mode.add_argument("--internal", dest="publish", action="store_false",
                      help="internal mode: exact numbers, never published")
    p.add_argument("--verify", type=Path, metavar="REPORT",
                   help="rerun REPORT with its recorded parameters and compare")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--jobs", type=int, default=1,
                   help="notebooks run at once after the screening notebook (default 1)")
    p.add_argument("--notebooks", nargs="+", metavar="NAME",
                   help="run only these notebooks (file names, e.g. 04_spc.ipynb)")
    p.add_argument("--help-parameters", action="store_true",
                   help="list the parameters the notebooks declare, then exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fracture_qi.errors import ReportError
    from fracture_qi.reporting.params import describe, notebook_parameters
    from fracture_qi.reporting.run import notebook_paths, run_audit
    from fracture_qi.reporting.verify import verify_audit

    if args.help_parameters:
        print("parameters (-p KEY VALUE):")
        print(describe(notebook_parameters(notebook_paths(args.notebooks))))
        return 0
    if args.verify:
        if args.manifest or args.out or args.parameter:
            raise ReportError(
                "--verify reruns with the recorded manifest and parameters; do not combine "
                "it with --manifest, --out or -p"
            )
        verified = verify_audit(args.verify, jobs=args.jobs, progress=True)
        print(verified.report())
        return 0 if verified.identical else 1
    if not args.manifest or not args.out:
        raise ReportError("an audit run needs --manifest M and --out reports/NAME "
                          "(or --verify reports/NAME). See fracture-qi audit --help")
    params: dict[str, str] = {}
    for key, value in args.parameter:
        if key in params:
            raise ReportError(f"parameter {key!r} given twice (-p {key} ...); give it once")
        params[key] = value
    # a bad parameter, folder or manifest raises here: main() prints it and exits 2
    command = shlex.join(
        ["fracture-qi", "audit", "--manifest", str(args.manifest), "--out", str(args.out)]
        + [x for k, v in args.parameter for x in ("-p", k, v)]
        + ([] if args.publish else ["--internal"])
        + (["--notebooks", *args.notebooks] if args.notebooks else []))
    _log_export(args, command)
    result = run_audit(args.manifest, args.out, params, args.publish,
                       notebooks=args.notebooks, overwrite=args.overwrite, jobs=args.jobs,
                       progress=True, raise_on_failure=False, command=command)
    print(result.summary())
    if result.status != "ok":
        print(f"fracture-qi audit: error: {result.error}", file=sys.stderr)
        return 1
    return 0


def _log_export(args: argparse.Namespace, command: str) -> None:
    """Record the audit run in the access log: its outputs leave the database (issue 18)."""
    from fracture_qi.accesslog import AccessAction, command_line_user, record_access
    from fracture_qi.manifest import read_manifest
    from fracture_qi.store import open_store

    engine = open_store(read_manifest(args.manifest, verify=False))
    try:
        record_access(engine, username=command_line_user(), action=AccessAction.EXPORT,
                      via="command line",
                      detail={"what": "audit run (publication mode)" if args.publish
                              else "audit run (internal: exact counts)",
                              "out": str(args.out), "command": command})
    finally:
        engine.dispose()
