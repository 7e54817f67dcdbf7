"""The ``fracture-qi`` command: one module per subcommand, each calling one library function.

Exit status: 0 when the command did its work (a batch that ran is a success even if single
series failed: their reasons are in the outputs); 2 when the run itself could not proceed
(bad manifest, unreachable database...), with a one-line reason on stderr; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fracture_qi import __version__
from fracture_qi.errors import FractureQIError

#: subcommand name -> module under fracture_qi.cli that defines add_parser() and run()
SUBCOMMANDS: dict[str, str] = {
    "demo": "demo",
    "synth": "synth",
    "index": "index",
    "manifest": "manifest",
    "screen": "screen",
    "export": "export",
    "worklist": "worklist",
    "adjudicate": "adjudicate",
    "import-fls": "import_fls",
    "audit": "audit",
    "dashboard": "dashboard",
    "pacs": "pacs",
    "listen": "listen",
    "serve": "serve_team",
    "users": "users",
    "access-log": "access_log",
}

EPILOG = """\
typical order:  synth -> index -> screen -> worklist -> adjudicate -> import-fls -> audit/dashboard
every command taking --manifest reads data_manifest.yaml (paths relative to its folder).
'fracture-qi COMMAND --help' explains each command. Docs: README.md and docs/.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fracture-qi",
        description=(
            "Screen CT scans for vertebral fractures, adjudicate, link FLS outcomes and "
            "measure the service (PPV, sensitivity, funnel, KPIs, SPC)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fracture-qi {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(f"fracture_qi.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"fracture_qi.cli.{module}":
                continue  # subcommand not built yet
            raise
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (callable from tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        _check_database_exists(args)
        return int(args.func(args) or 0)
    except FractureQIError as e:
        print(f"fracture-qi {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        # a database that fails mid-command (a damaged page, the server gone) is one line too
        from sqlalchemy.exc import DBAPIError

        if not isinstance(e, DBAPIError):
            raise
        from fracture_qi.store.db import database_error

        err = database_error(e)
        print(f"fracture-qi {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"fracture-qi {args.command}: interrupted", file=sys.stderr)
        return 130


def _check_database_exists(args: argparse.Namespace) -> None:
    """Refuse a manifest whose SQLite file does not exist, unless the command creates it.

    A typo in the file name would otherwise create an empty database and report "0 studies"
    with exit status 0 (see :mod:`fracture_qi.store.check`).
    """
    manifest = getattr(args, "manifest", None)
    # manifest checks the database itself; synth writes one; pacs only talks to the PACS
    if not manifest or args.command in ("manifest", "synth", "pacs") \
            or getattr(args, "func", None) is None:
        return
    from fracture_qi.store.check import CREATING_COMMANDS

    if args.command in CREATING_COMMANDS:
        return
    from pathlib import Path

    from fracture_qi.manifest import read_manifest
    from fracture_qi.store.check import require_existing_database

    from fracture_qi.errors import ManifestError

    try:
        m = read_manifest(manifest, verify=False)
    except ManifestError:
        return  # the command reports a bad manifest itself, after its own first checks
    require_existing_database(m.database_url, manifest=Path(m.path), command=args.command)


def entry() -> None:  # console_scripts target
    sys.exit(main())


if __name__ == "__main__":
    entry()
