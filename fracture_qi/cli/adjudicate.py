"""``fracture-qi adjudicate --manifest M --reviewer ID``: serve the nurses' adjudication app."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fracture_qi.serve import add_server_arguments

DESCRIPTION = """\
Serve the adjudication app with Voila: the nurse works through her worklist (AI-flagged
studies, the audit sample of AI-negatives, blind second reads), views the curved sagittal
reformat, axial slices and the AI overlay, and records a decision for each case. Decisions are
append-only events with her reviewer ID, the UTC time and the app version.

This is the single-user session: it listens on this computer only (127.0.0.1) and records
--reviewer, taken on trust, on every decision. To serve several nurses, each signed in, use
`fracture-qi serve`. Tracebacks never reach the browser, notebook code is not sent to the
browser, at most --max-kernels pages are open at once and idle kernels are shut down. The
worklist fills itself with newly screened studies when the app opens."""

EPILOG = """\
examples:
  fracture-qi adjudicate --manifest demo-output/cohort/data_manifest.yaml --reviewer nurse.a
  fracture-qi adjudicate --manifest site.yaml --reviewer jsmith --port 8870 --audit 2026-q3

For a team, with sign-in: fracture-qi serve --manifest M (docs/team-server.md).
In JupyterLab, open fracture_qi/notebooks/adjudicate.ipynb, set the parameters cell and run
all. Exit status 0 when stopped with Ctrl-C or SIGTERM (the server and its kernels stop
too); 2 when the manifest or database cannot be used, the host is not this computer, or the
port is in use ("port P in use: another fracture-qi server?")."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "adjudicate", help="serve the nurses' adjudication app (Voila)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", "-m", default=os.environ.get("FRACTURE_QI_MANIFEST"),
                   help="data_manifest.yaml (default: $FRACTURE_QI_MANIFEST)")
    p.add_argument("--reviewer", required=True,
                   help="the nurse's ID (login), recorded on every decision")
    p.add_argument("--audit", default="default", help="worklist name (default: default)")
    p.add_argument("--port", type=int, default=None, help="port (default 8866)")
    add_server_arguments(p)
    p.add_argument("--open", action="store_true", help="open the app in a local browser")
    p.set_defaults(func=run)


def notebook_path() -> Path:
    """The packaged adjudication notebook."""
    return Path(__file__).resolve().parents[1] / "notebooks" / "adjudicate.ipynb"


def run(args: argparse.Namespace) -> int:
    from fracture_qi.errors import ConfigError
    from fracture_qi.manifest import read_manifest
    from fracture_qi.serve import (
        DEFAULT_PORT,
        ENV_AUDIT,
        ENV_CLIENT,
        ENV_MANIFEST,
        ENV_REVIEWER,
        ENV_VIA,
        check_bind,
        check_port,
        is_loopback,
        serve_notebook,
        token_from_args,
    )
    from fracture_qi.store import open_store

    if not is_loopback(args.host):
        # the reviewer is whoever started the server: anyone reaching it from elsewhere would
        # save under that name (issue 18)
        raise ConfigError(
            f"fracture-qi adjudicate serves one nurse on this computer only (--reviewer is "
            f"taken on trust), not on {args.host}. Fix: serve the team with fracture-qi serve "
            "--manifest M, where each nurse signs in (docs/team-server.md)")
    token = token_from_args(args)
    check_bind(args.host, token)  # refuse an unsafe bind before any work
    check_port(args.host, args.port or DEFAULT_PORT)  # before any work or any URL is printed
    if not args.manifest:
        raise ConfigError(
            "no manifest given. Fix: fracture-qi adjudicate --manifest path/to/data_manifest.yaml "
            "--reviewer YOUR_ID (or set FRACTURE_QI_MANIFEST)")
    reviewer = args.reviewer.strip()
    if not reviewer or len(reviewer) > 100:
        raise ConfigError(f"--reviewer {args.reviewer!r}: give the nurse's ID (1-100 characters)")
    manifest_path = Path(args.manifest).resolve()
    # fail here, with a one-line reason, rather than in every page load
    engine = open_store(read_manifest(manifest_path, verify=False))
    engine.dispose()
    env = {ENV_MANIFEST: str(manifest_path), ENV_REVIEWER: reviewer, ENV_AUDIT: args.audit,
           ENV_CLIENT: args.host, ENV_VIA: "fracture-qi adjudicate (single user)"}
    return serve_notebook(notebook_path(), port=args.port, host=args.host, token=token,
                          env=env, open_browser=args.open, max_kernels=args.max_kernels)
