"""``fracture-qi dashboard``: serve the QI dashboard with Voila on 127.0.0.1."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Literal

from fracture_qi.serve import add_server_arguments

log = logging.getLogger(__name__)

DESCRIPTION = """\
Serve the QI dashboard (filters, headline tiles, funnel, SPC charts, AI-vs-nurse agreement,
time to therapy, breakdowns, CSV/PNG downloads) as a Voila web app.

Everything shown is aggregate and suppressed for publication (counts 1-7 as *, others
rounded to 5) unless --internal is given. The server binds 127.0.0.1 unless --host is given
with a token (--token-file or $FRACTURE_QI_TOKEN); tracebacks never reach the browser; at most
--max-kernels pages are open at once; idle kernels are shut down.
Before serving, the database is read once into an aggregate cube cached under the manifest's
reports folder (.cache/), so the page opens quickly even with 500,000 studies.
"""

EPILOG = """\
examples:
  fracture-qi dashboard --manifest demo-output/data_manifest.yaml
  fracture-qi dashboard --manifest site.yaml --port 8870 --change-date 2025-04-01
  fracture-qi dashboard --manifest site.yaml --host 10.0.0.5 --token-file /etc/fracture-qi/token

exit status: 0 when stopped with Ctrl-C; 2 when the manifest or database cannot be used or
the bind is unsafe.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "dashboard", help="serve the QI dashboard (Voila)", description=DESCRIPTION,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", required=True, type=Path, help="the site's data_manifest.yaml")
    p.add_argument("--port", type=int, default=None, help="port (default 8866)")
    add_server_arguments(p)
    p.add_argument("--internal", action="store_true",
                   help="show exact counts (nurse-facing; never for publication)")
    p.add_argument("--change-date", default="",
                   help="QI change date YYYY-MM-DD: SPC limits are recalculated from its month "
                        "(changes recorded in the manifest's fls.changes are annotated "
                        "anyway)")
    p.add_argument("--change-label", default="QI change",
                   help="what changed on --change-date (shown on the charts)")
    p.add_argument("--no-warm", action="store_true",
                   help="do not build the aggregate cube before serving")
    p.add_argument("--refresh", action="store_true",
                   help="rebuild the aggregate cube from the database even if a cached one matches")
    p.add_argument("--open", action="store_true", help="open the page in a local browser")
    p.add_argument("--preheat", action="store_true",
                   help="keep one kernel pre-heated so the page opens in a few seconds; each "
                        "page then shows the data as of when its kernel started")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import datetime as dt

    from fracture_qi.errors import ConfigError
    from fracture_qi.serve import (
        DEFAULT_PORT,
        ENV_MANIFEST,
        PREHEAT_ARGS,
        check_bind,
        check_port,
        serve_notebook,
        token_from_args,
    )

    token = token_from_args(args)
    check_bind(args.host, token)  # refuse an unsafe bind before any work
    check_port(args.host, args.port or DEFAULT_PORT)  # before any work or any URL is printed
    if args.change_date:
        try:
            dt.date.fromisoformat(args.change_date)
        except ValueError:
            raise ConfigError(
                f"--change-date {args.change_date!r} is not a date. Fix: use YYYY-MM-DD"
            ) from None
    manifest = args.manifest.resolve()
    mode: Literal["publish", "internal"] = "internal" if args.internal else "publish"
    if not args.no_warm:
        from fracture_qi.dashboards.app import QIDashboard

        dash = QIDashboard.from_manifest(manifest, mode=mode, refresh=args.refresh)
        print(f"QI cube ready: {len(dash.cube.cells)} cells, data up to {dash.cube.cutoff} "
              f"({dash.cube.seconds:.1f} s)", file=sys.stderr)
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "dashboard.ipynb"
    env = {
        ENV_MANIFEST: str(manifest),
        "FRACTURE_QI_DASHBOARD_MODE": mode,
        "FRACTURE_QI_CHANGE_DATE": args.change_date,
        "FRACTURE_QI_CHANGE_LABEL": args.change_label,
    }
    return serve_notebook(notebook, port=args.port, host=args.host, token=token, env=env,
                          open_browser=args.open, max_kernels=args.max_kernels,
                          extra_args=PREHEAT_ARGS if args.preheat else ())
