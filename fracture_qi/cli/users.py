"""``fracture-qi users``: the team server's accounts (add, list, disable, enable, roles, passwords)."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Manage the accounts that sign in to `fracture-qi serve`. Each account has one role:

  nurse     the worklist, patient details and decisions (adjudication app); the dashboard
  qi_lead   the QI dashboard (aggregates only, never a patient identifier)
  auditor   the dashboard; audit runs and decision history, read-only; the access log
  admin     accounts and server settings; the access log (no patient data)

Passwords are read from standard input (--password-stdin) or asked for twice at a terminal,
never given on the command line; they are stored as argon2id hashes. An account for a user
the hospital's sign-on vouches for has no password (--sign-on). Every change is recorded in
the access log, under the login of whoever ran the command."""

EPILOG = """\
examples:
  fracture-qi users add j.smith --role nurse --password-stdin --manifest site.yaml < pw.txt
  printf '%s\\n' "$PW" | fracture-qi users add qi.lead --role qi_lead --password-stdin -m site.yaml
  fracture-qi users add a.jones --role nurse --sign-on --manifest site.yaml
  fracture-qi users list --manifest site.yaml
  fracture-qi users disable j.smith --manifest site.yaml      # her sessions end at once
  fracture-qi users set-password j.smith --password-stdin --manifest site.yaml

exit status 0 when done; 2 with the reason and the fix otherwise (a name taken, a password
under 12 characters, an unknown role or user, a database that does not exist yet: run
fracture-qi index first)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "users", help="accounts of the team server (fracture-qi serve)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--manifest", "-m", default=os.environ.get("FRACTURE_QI_MANIFEST"),
                       help="data_manifest.yaml (default: $FRACTURE_QI_MANIFEST)")
        q.set_defaults(func=run)

    def password(q: argparse.ArgumentParser) -> None:
        q.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")

    a = sub.add_parser("add", help="create an account")
    a.add_argument("name", help="user name: the login, recorded on every decision")
    a.add_argument("--role", required=True, choices=["nurse", "qi_lead", "auditor", "admin"])
    a.add_argument("--display-name", default=None, help="name shown on pages (optional)")
    password(a)
    a.add_argument("--sign-on", action="store_true",
                   help="no password: the hospital's sign-on vouches for this user")
    common(a)
    common(sub.add_parser("list", help="list accounts and their roles"))
    for name, text in (("disable", "disable an account (its sessions end at once)"),
                       ("enable", "enable a disabled account")):
        q = sub.add_parser(name, help=text)
        q.add_argument("name")
        common(q)
    q = sub.add_parser("set-password", help="give an account a new password")
    q.add_argument("name")
    password(q)
    common(q)
    q = sub.add_parser("set-role", help="give an account another role")
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=["nurse", "qi_lead", "auditor", "admin"])
    common(q)


def read_password(args: argparse.Namespace) -> str:
    """The password from stdin (--password-stdin) or asked twice at a terminal."""
    from fracture_qi.errors import AccountError

    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline()
        pw = line[:-1] if line.endswith("\n") else line
        if pw.endswith("\r"):
            pw = pw[:-1]
        if not pw:
            raise AccountError("no password on standard input. Fix: pipe it in, e.g. "
                               "printf '%s\\n' \"$PW\" | fracture-qi users ... --password-stdin")
        return pw
    if not sys.stdin.isatty():
        raise AccountError("give the password with --password-stdin (or run this at a "
                           "terminal to be asked for it); never on the command line")
    import getpass

    pw = getpass.getpass("password: ")
    if getpass.getpass("again: ") != pw:
        raise AccountError("the two passwords differ; nothing was changed")
    return pw


def run(args: argparse.Namespace) -> int:
    from fracture_qi import accounts
    from fracture_qi.accesslog import command_line_user
    from fracture_qi.errors import AccountError, ConfigError
    from fracture_qi.manifest import read_manifest
    from fracture_qi.store import open_store

    if not args.manifest:
        raise ConfigError("no manifest given. Fix: fracture-qi users ... --manifest "
                          "path/to/data_manifest.yaml (or set FRACTURE_QI_MANIFEST)")
    by = command_line_user()
    action = args.users_command
    if action == "add" and args.sign_on and args.password_stdin:
        raise AccountError("--sign-on accounts have no password; drop --password-stdin")
    password = (read_password(args)
                if action == "set-password" or (action == "add" and not args.sign_on) else None)
    engine = open_store(read_manifest(args.manifest, verify=False))
    try:
        if action == "list":
            rows = accounts.list_accounts(engine)
            if not rows:
                print("no accounts yet: fracture-qi users add NAME --role nurse "
                      "--password-stdin --manifest M")
            for a in rows:
                print(f"{a.username:<30} {a.role:<8} {'active' if a.active else 'DISABLED':<8} "
                      f"{'password' if a.has_password else 'sign-on':<8} {a.display_name or ''}")
            return 0
        if action == "add":
            a = accounts.add_user(engine, args.name, args.role, password, by=by,
                                  display_name=args.display_name)
            print(f"account {a.username} created: {a.role}"
                  + ("" if a.has_password else " (signs in through the hospital's sign-on)"))
        elif action in ("disable", "enable"):
            a = accounts.set_active(engine, args.name, action == "enable", by=by)
            print(f"account {a.username} {action}d")
        elif action == "set-password":
            assert password is not None
            a = accounts.set_password(engine, args.name, password, by=by)
            print(f"account {a.username}: new password set; its open sessions have ended")
        elif action == "set-role":
            a = accounts.set_role(engine, args.name, args.role, by=by)
            print(f"account {a.username} is now {a.role}; its open sessions have ended")
    finally:
        engine.dispose()
    return 0
