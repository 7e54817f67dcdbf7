"""Accounts and roles of the team server: who may sign in, and what each role may open.

Local accounts suit a small site (``fracture-qi users add NAME --role nurse
--password-stdin``); a site with a directory signs its users in through the hospital's
sign-on and keeps only their roles here (accounts without a password; see
``docs/team-server.md``). Passwords are hashed with argon2id (argon2-cffi, the winner of the
Password Hashing Competition, RFC 9106) and never stored or logged; a hash made with weaker
parameters is upgraded at the next sign-in.

Roles (:class:`Role`) map to permissions (:data:`ROLE_PERMISSIONS`), checked on the server for
every request (:mod:`fracture_qi.team.server`):

=========  =====================================================================
role       may
=========  =====================================================================
nurse      the worklist, patient details and decisions (adjudication app); the dashboard
qi_lead    the QI dashboard (aggregates only, never a patient identifier)
auditor    the dashboard; audit runs and decision history, read-only; the access log
admin      accounts and server settings; the access log
=========  =====================================================================

Examples
--------
>>> from fracture_qi.store import open_store
>>> engine = open_store("sqlite://")
>>> add_user(engine, "nurse.a", "nurse", "correct horse battery", by="admin@host").role
'nurse'
>>> authenticate(engine, "nurse.a", "correct horse battery").username
'nurse.a'
>>> Permission.ADJUDICATE in ROLE_PERMISSIONS[Role.QI_LEAD]
False
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Engine, func, select, update

from fracture_qi.accesslog import AccessAction, record_access
from fracture_qi.errors import AccountError, SignInError
from fracture_qi.store.schema import AccessEvent, User

log = logging.getLogger(__name__)

#: shortest password accepted (characters). NIST SP 800-63B (5.1.1.2) asks for at least 8
#: for user-chosen secrets; 12 suits a service holding patient records and a passphrase of
#: three random words (NCSC, "Three random words", 2021) passes it easily
MIN_PASSWORD_LENGTH = 12
#: longest password accepted (characters): argon2 hashes any length, this bounds the work
#: one request can cause
MAX_PASSWORD_LENGTH = 1024
#: failed sign-ins of one account (or from one address) within :data:`LOCKOUT_WINDOW_S`
#: after which further tries are refused until the window has passed (NIST SP 800-63B
#: 5.2.2 allows up to 100; five stops guessing while a nurse who mistypes can retry)
MAX_FAILED_SIGN_INS = 5
#: seconds over which failed sign-ins are counted
LOCKOUT_WINDOW_S = 300
#: a user name: letters, digits and . _ @ - (a login, an e-mail address), 1-100 characters
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,99}$")


class Role(str, Enum):
    """What a person does in the service; one per account."""

    NURSE = "nurse"
    """FLS nurse: reads cases (patient details, images) and records decisions."""
    QI_LEAD = "qi_lead"
    """QI lead: the dashboard's aggregates, never a patient identifier."""
    AUDITOR = "auditor"
    """Auditor: audit runs, decision history and the access log, read-only."""
    ADMIN = "admin"
    """IT or the service manager: accounts and settings, the access log; no patient data."""


class Permission(str, Enum):
    """Something the team server lets a role open."""

    ADJUDICATE = "adjudicate"
    """The adjudication app: the worklist, patient details, decisions."""
    DASHBOARD = "dashboard"
    """The QI dashboard (aggregate, suppressed)."""
    AUDIT = "audit"
    """Audit runs and decision history (read-only, pseudonymous)."""
    ACCESS_LOG = "access_log"
    """The access log (download for the Caldicott guardian)."""
    ADMIN = "admin"
    """Accounts and server settings."""


#: what each role may open; the server refuses everything else
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.NURSE: frozenset({Permission.ADJUDICATE, Permission.DASHBOARD}),
    Role.QI_LEAD: frozenset({Permission.DASHBOARD}),
    Role.AUDITOR: frozenset({Permission.DASHBOARD, Permission.AUDIT, Permission.ACCESS_LOG}),
    Role.ADMIN: frozenset({Permission.ADMIN, Permission.ACCESS_LOG}),
}


def allowed(role: str | Role | None, permission: Permission) -> bool:
    """Whether *role* may use *permission* (an unknown role may use nothing).

    Examples
    --------
    >>> allowed("nurse", Permission.ADJUDICATE), allowed("qi_lead", Permission.ADJUDICATE)
    (True, False)
    >>> allowed("superuser", Permission.DASHBOARD)
    False
    """
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False


@dataclass(frozen=True)
class Account:
    """An account as the server sees it (never the password hash)."""

    username: str
    role: str
    active: bool
    has_password: bool
    display_name: str | None = None
    created_at: dt.datetime | None = None
    sessions_valid_after: dt.datetime | None = None

    @property
    def label(self) -> str:
        """The name shown on pages."""
        return self.display_name or self.username


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t


def _account(u: User) -> Account:
    return Account(u.username, u.role, bool(u.active), bool(u.password_hash), u.display_name,
                   _utc(u.created_at), _utc(u.sessions_valid_after))


def _hasher():  # type: ignore[no-untyped-def]
    from argon2 import PasswordHasher

    # argon2id with argon2-cffi's defaults: RFC 9106's second recommended option
    # (t=3, m=64 MiB, p=4), about 0.1 s per hash on a 2-core server
    return PasswordHasher()


def clean_username(name: str) -> str:
    """*name* lower-cased and checked (1-100 of letters, digits, ``. _ @ -``).

    Raises
    ------
    AccountError
        With the rule and an example.

    Examples
    --------
    >>> clean_username(" J.Smith ")
    'j.smith'
    """
    u = (name or "").strip().lower()
    if not USERNAME_RE.match(u):
        raise AccountError(f"user name {name!r} is not usable. Fix: use 1-100 letters, digits, "
                           "'.', '_', '@' or '-', starting with a letter or digit (e.g. j.smith)")
    return u


def check_password(username: str, password: str) -> None:
    """Refuse a password that is too short, too long, or the user name.

    Raises
    ------
    AccountError
        Naming the rule (never the password).
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password is {len(password)} characters; use at least "
                           f"{MIN_PASSWORD_LENGTH} (three random words make a good one)")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"the password is longer than {MAX_PASSWORD_LENGTH} characters")
    if username and username.lower() in password.lower():
        raise AccountError("the password contains the user name; choose another")
    if len(set(password)) < 4:
        raise AccountError("the password repeats too few characters; choose another")


def hash_password(password: str) -> str:
    """The argon2id hash of *password* (PHC string format, salt included)."""
    return str(_hasher().hash(password))


def _get(session_or_conn, username: str) -> User | None:  # type: ignore[no-untyped-def]
    return session_or_conn.scalar(select(User).where(User.username == username))


def get_account(engine: Engine, username: str) -> Account | None:
    """The account called *username*, or ``None``."""
    from fracture_qi.store.db import session_factory

    try:
        name = clean_username(username)
    except AccountError:
        return None
    with session_factory(engine)() as s:
        u = _get(s, name)
        return _account(u) if u is not None else None


def list_accounts(engine: Engine) -> list[Account]:
    """Every account, by user name."""
    from fracture_qi.store.db import session_factory

    with session_factory(engine)() as s:
        return [_account(u) for u in s.scalars(select(User).order_by(User.username))]


def add_user(engine: Engine, username: str, role: str | Role, password: str | None, *,
             by: str, display_name: str | None = None, client: str | None = None,
             via: str = "command line") -> Account:
    """Create an account; ``password=None`` for one the hospital's sign-on vouches for.

    Raises
    ------
    AccountError
        A bad name, role or password, or a name already taken.
    """
    from fracture_qi.store.db import session_scope

    name = clean_username(username)
    try:
        r = Role(role)
    except ValueError:
        raise AccountError(f"role {role!r} is not one of "
                           f"{', '.join(x.value for x in Role)}") from None
    if password is not None:
        check_password(name, password)
    digest = hash_password(password) if password is not None else None
    now = _utcnow()
    with session_scope(engine) as s:
        if _get(s, name) is not None:
            raise AccountError(f"user {name!r} already exists. Fix: choose another name, or "
                               f"change it with fracture-qi users set-role/set-password")
        s.add(User(username=name, role=r.value, password_hash=digest, active=True,
                   created_at=now, created_by=by[:100],
                   password_changed_at=now if digest else None,
                   display_name=(display_name or "").strip()[:200] or None))
    record_access(engine, username=by, action=AccessAction.ACCOUNT_CHANGED, client=client,
                  via=via, detail={"account": name, "change": "created", "role": r.value,
                                   "password": "set" if digest else "none (sign-on)"})
    log.info("account %s created (%s) by %s", name, r.value, by)
    account = get_account(engine, name)
    assert account is not None
    return account


def _change(engine: Engine, username: str, values: dict[str, object], change: dict[str, str], *,
            by: str, client: str | None, via: str) -> Account:
    from fracture_qi.store.db import session_scope

    name = clean_username(username)
    with session_scope(engine) as s:
        res = s.execute(update(User).where(User.username == name).values(**values))
        if res.rowcount != 1:
            raise AccountError(f"no user {name!r}. Fix: list them with fracture-qi users list")
    record_access(engine, username=by, action=AccessAction.ACCOUNT_CHANGED, client=client,
                  via=via, detail={"account": name, **change})
    account = get_account(engine, name)
    assert account is not None
    return account


def set_password(engine: Engine, username: str, password: str, *, by: str,
                 client: str | None = None, via: str = "command line") -> Account:
    """Give an account a new password; its open sessions end."""
    name = clean_username(username)
    check_password(name, password)
    now = _utcnow()
    return _change(engine, name, {"password_hash": hash_password(password),
                                  "password_changed_at": now, "sessions_valid_after": now},
                   {"change": "password"}, by=by, client=client, via=via)


def set_active(engine: Engine, username: str, active: bool, *, by: str,
               client: str | None = None, via: str = "command line") -> Account:
    """Disable (its open sessions end at once) or enable an account."""
    values: dict[str, object] = {"active": bool(active)}
    if not active:
        values["sessions_valid_after"] = _utcnow()
    return _change(engine, username, values, {"change": "enabled" if active else "disabled"},
                   by=by, client=client, via=via)


def set_role(engine: Engine, username: str, role: str | Role, *, by: str,
             client: str | None = None, via: str = "command line") -> Account:
    """Give an account another role; its open sessions end (they carry the old role)."""
    try:
        r = Role(role)
    except ValueError:
        raise AccountError(f"role {role!r} is not one of "
                           f"{', '.join(x.value for x in Role)}") from None
    return _change(engine, username, {"role": r.value, "sessions_valid_after": _utcnow()},
                   {"change": "role", "role": r.value}, by=by, client=client, via=via)


def recent_failures(engine: Engine, *, username: str | None = None, client: str | None = None,
                    now: dt.datetime | None = None) -> int:
    """Failed sign-ins of *username* (or from *client*) within :data:`LOCKOUT_WINDOW_S`.

    Counted from the access log itself, so a restart does not reset the count.
    """
    since = (now or _utcnow()) - dt.timedelta(seconds=LOCKOUT_WINDOW_S)
    q = select(func.count()).select_from(AccessEvent).where(
        AccessEvent.action == AccessAction.SIGN_IN_FAILED.value, AccessEvent.at >= since)
    if username is not None:
        q = q.where(AccessEvent.username == username)
    if client is not None:
        q = q.where(AccessEvent.client == client)
    with engine.connect() as conn:
        return int(conn.scalar(q) or 0)


#: a hash checked when the user does not exist, so that an unknown name takes as long to
#: refuse as a wrong password (no timing hint that a name exists)
_DUMMY_HASH: list[str] = []


def authenticate(engine: Engine, username: str, password: str, *,
                 client: str | None = None) -> Account:
    """Check a user name and password; return the account.

    Raises
    ------
    SignInError
        The same message whatever the reason (``.reason`` says which): unknown user, wrong
        password, disabled account, an account without a password (sign-on only), or more
        than :data:`MAX_FAILED_SIGN_INS` failures of the account or from the address within
        :data:`LOCKOUT_WINDOW_S`.
    """
    from argon2.exceptions import InvalidHashError, VerificationError

    from fracture_qi.store.db import session_scope

    try:
        name = clean_username(username)
    except AccountError:
        raise SignInError("unknown_user") from None
    if recent_failures(engine, username=name) >= MAX_FAILED_SIGN_INS or (
            client and recent_failures(engine, client=client) >= MAX_FAILED_SIGN_INS * 2):
        raise SignInError("locked")
    ph = _hasher()
    if len(password) > MAX_PASSWORD_LENGTH:
        raise SignInError("wrong_password")
    with session_scope(engine) as s:
        u = _get(s, name)
        if u is None or not u.password_hash:
            if not _DUMMY_HASH:
                _DUMMY_HASH.append(ph.hash("fracture-qi dummy password"))
            try:
                ph.verify(_DUMMY_HASH[0], password)
            except VerificationError:
                pass
            raise SignInError("unknown_user" if u is None else "no_password")
        try:
            ph.verify(u.password_hash, password)
        except (VerificationError, InvalidHashError):
            raise SignInError("wrong_password") from None
        if not u.active:
            raise SignInError("disabled")
        if ph.check_needs_rehash(u.password_hash):
            u.password_hash = ph.hash(password)  # parameters raised since it was set
        return _account(u)


__all__ = [
    "MAX_FAILED_SIGN_INS",
    "MIN_PASSWORD_LENGTH",
    "ROLE_PERMISSIONS",
    "Account",
    "Permission",
    "Role",
    "add_user",
    "allowed",
    "authenticate",
    "check_password",
    "clean_username",
    "get_account",
    "hash_password",
    "list_accounts",
    "recent_failures",
    "set_active",
    "set_password",
    "set_role",
]
