"""``fracture-qi serve --manifest M``: one server for the whole FLS team, with sign-in."""

from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Serve the adjudication app and the QI dashboard together, on one port, for the whole team:
each person signs in (an ordinary form: user name and password; or the hospital's sign-on
through the reverse proxy) and sees what her role allows. The start page links the apps:

  /app/adjudicate   nurses: the worklist, patient details, decisions (the signed-in user is
                    the reviewer on every decision)
  /app/dashboard    QI leads, auditors and nurses: aggregates only, small numbers suppressed
  /audit            auditors: audit runs and decision history (read-only)
  /admin            admins: accounts and server settings
  /access-log.csv   auditors and admins: the access log, for the Caldicott guardian

Every user gets her own kernels (at most --max-kernels-per-user, --max-kernels in all;
idle ones are shut down), leases on cases stay per nurse, every case opening, decision and
export is in the access log. Create accounts first: fracture-qi users add NAME --role nurse
--password-stdin --manifest M. The server speaks plain HTTP on 127.0.0.1: put the trust's
TLS reverse proxy in front of it (docs/team-server.md has a tested nginx configuration)."""

EPILOG = """\
examples:
  fracture-qi serve --manifest site.yaml
  fracture-qi serve --manifest site.yaml --port 8870 --behind-proxy      # nginx on this host
  fracture-qi serve --manifest site.yaml --behind-proxy --sign-on-header X-Forwarded-User

exit status 0 when stopped with Ctrl-C or SIGTERM (the server and every kernel stop too);
2 when the manifest or database cannot be used, a setting is unsafe, or the port is in use
("port P in use: another fracture-qi server?"), before any address is printed."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from fracture_qi.team.launch import (
        DEFAULT_MAX_KERNELS_PER_USER,
        DEFAULT_SESSION_HOURS,
        DEFAULT_TEAM_MAX_KERNELS,
        DEFAULT_TEAM_PORT,
    )

    p = subparsers.add_parser(
        "serve", help="one server for the team: both apps, sign-in, roles, access log",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", "-m", default=os.environ.get("FRACTURE_QI_MANIFEST"),
                   help="data_manifest.yaml (default: $FRACTURE_QI_MANIFEST)")
    p.add_argument("--port", type=int, default=DEFAULT_TEAM_PORT,
                   help=f"port (default {DEFAULT_TEAM_PORT})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: the reverse proxy on this "
                        "machine reaches it; another address sends passwords unencrypted "
                        "unless the network between is trusted)")
    p.add_argument("--max-kernels", type=int, default=DEFAULT_TEAM_MAX_KERNELS, metavar="N",
                   help=f"most app pages (kernels, 120-200 MB each) open at once in all "
                        f"(default {DEFAULT_TEAM_MAX_KERNELS})")
    p.add_argument("--max-kernels-per-user", type=int, default=DEFAULT_MAX_KERNELS_PER_USER,
                   metavar="N", help=f"most app pages one user may hold "
                                     f"(default {DEFAULT_MAX_KERNELS_PER_USER})")
    p.add_argument("--idle-minutes", type=float, default=10.0, metavar="MIN",
                   help="shut down a page's kernel after this long idle with no browser "
                        "connected (default 10)")
    p.add_argument("--session-hours", type=float, default=DEFAULT_SESSION_HOURS,
                   help=f"how long a sign-in lasts (default {DEFAULT_SESSION_HOURS:g})")
    p.add_argument("--behind-proxy", action="store_true",
                   help="believe the reverse proxy's X-Forwarded-For/-Proto (the browser's "
                        "address in the access log; secure cookies over TLS)")
    p.add_argument("--sign-on-header", default="", metavar="HEADER",
                   help="the hospital's sign-on: trust the user name the proxy puts in this "
                        "header (e.g. X-Forwarded-User); needs --behind-proxy and 127.0.0.1")
    p.add_argument("--audit", default="default", help="worklist name (default: default)")
    p.add_argument("--no-warm", action="store_true",
                   help="do not build the dashboard's aggregate cube before serving")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from fracture_qi.accounts import list_accounts
    from fracture_qi.errors import ConfigError
    from fracture_qi.manifest import read_manifest
    from fracture_qi.serve import check_port, is_loopback, supervise
    from fracture_qi.store import open_store
    from fracture_qi.team.launch import TeamSettings, start_team_server

    if not args.manifest:
        raise ConfigError("no manifest given. Fix: fracture-qi serve --manifest "
                          "path/to/data_manifest.yaml (or set FRACTURE_QI_MANIFEST)")
    settings = TeamSettings(
        manifest=Path(args.manifest).resolve(), host=args.host, port=args.port,
        max_kernels=args.max_kernels, max_kernels_per_user=args.max_kernels_per_user,
        cull_idle_timeout=max(int(args.idle_minutes * 60), 60),
        session_hours=args.session_hours, behind_proxy=args.behind_proxy,
        sign_on_header=args.sign_on_header.strip(), audit=args.audit)
    settings.check()
    check_port(args.host, args.port)  # before any work or any address is printed
    m = read_manifest(settings.manifest, verify=False)
    engine = open_store(m)
    try:
        active = [a for a in list_accounts(engine) if a.active]
    finally:
        engine.dispose()
    if not active:
        raise ConfigError(
            "no accounts yet: nobody could sign in. Fix: fracture-qi users add NAME --role "
            f"nurse --password-stdin --manifest {args.manifest} (and an admin account)")
    if not args.no_warm:
        from fracture_qi.dashboards.app import QIDashboard

        dash = QIDashboard.from_manifest(settings.manifest)
        print(f"QI cube ready: {len(dash.cube.cells)} cells, data up to {dash.cube.cutoff}",
              file=sys.stderr)
    if not is_loopback(args.host):
        print(f"warning: serving on {args.host}: passwords cross the network unencrypted "
              "unless a TLS reverse proxy is in front (docs/team-server.md)", file=sys.stderr)
    proc = start_team_server(settings)
    h = f"[{args.host}]" if ":" in args.host else args.host

    def announce() -> None:
        print(f"fracture-qi serve: the team server is at http://{h}:{args.port}/ "
              f"({len(active)} account(s); apps at /app/adjudicate and /app/dashboard; "
              "Ctrl-C to stop)", file=sys.stderr, flush=True)

    return supervise(proc, host=args.host, port=args.port, announce=announce)
