"""Database engines and sessions: SQLite by default (WAL, busy timeout), PostgreSQL by URL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from fracture_qi.errors import StoreError

#: how long a SQLite writer waits for the lock before giving up (milliseconds)
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: a zero-byte SQLite file younger than this (seconds) is one a process is creating right
#: now (SQLite creates the file, then writes its header within milliseconds); an older one
#: was truncated or replaced and is refused, never silently re-created as an empty database
EMPTY_FILE_GRACE_S = 10.0


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin_immediate(conn) -> None:  # type: ignore[no-untyped-def]
    # Take the write lock at BEGIN: a deferred transaction that reads then writes can hit
    # SQLITE_BUSY without the busy handler being consulted ("database is locked").
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def normalise_url(url: str, base: Path | None = None) -> str:
    """Make a relative ``sqlite:///file.db`` relative to *base* (the manifest's folder).

    ``postgres://`` and ``postgresql://`` become ``postgresql+psycopg://`` (psycopg 3).

    Examples
    --------
    >>> normalise_url("postgres://fqi@db.trust.nhs.uk/fqi")
    'postgresql+psycopg://fqi@db.trust.nhs.uk/fqi'
    """
    try:
        u = make_url(url)
    except ArgumentError as e:
        raise StoreError(
            f"database URL {url!r} is not a valid SQLAlchemy URL. "
            "Fix: use sqlite:///path/to/file.db or postgresql+psycopg://user@host/dbname"
        ) from e
    if u.drivername.startswith("sqlite") and u.database and u.database != ":memory:":
        p = Path(u.database)
        if not p.is_absolute() and base is not None:
            u = u.set(database=str((base / p).resolve()))
    if u.drivername == "postgres" or u.drivername.startswith("postgres+"):
        # postgres:// is how Heroku, libpq tools and many hosting panels write PostgreSQL
        # URLs; SQLAlchemy only knows "postgresql" and would fail with a traceback
        u = u.set(drivername="postgresql" + u.drivername[len("postgres"):])
    if u.drivername == "postgresql":  # prefer psycopg 3, which the project installs
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def check_not_emptied(path: Path) -> None:
    """Refuse a SQLite database file that exists but is empty (0 bytes).

    SQLite would treat it as a new database, and the suite would migrate it: the nurse would
    see "no cases left" while the decisions are gone. A missing file is fine (a new site).

    Raises
    ------
    StoreError
        When *path* is a zero-byte file older than :data:`EMPTY_FILE_GRACE_S`.
    """
    import time

    try:
        st = path.stat()
    except OSError:
        return
    if st.st_size == 0 and time.time() - st.st_mtime > EMPTY_FILE_GRACE_S:
        raise StoreError(
            f"database file {path} is empty (0 bytes): it was truncated or replaced, and "
            "fracture-qi will not start an empty database in its place. Fix: restore it from "
            "the last backup (docs/security.md); to start a new site on purpose, delete the "
            "empty file first"
        )


def database_error(e: BaseException, url: str | None = None) -> StoreError:
    """A one-line :class:`StoreError` for a database driver error, with what to do.

    Examples
    --------
    >>> import sqlite3
    >>> from sqlalchemy.exc import DatabaseError
    >>> err = DatabaseError("PRAGMA x", None, sqlite3.DatabaseError("file is not a database"))
    >>> print(str(database_error(err, "sqlite:////srv/fqi.db")).split(". Fix:")[0])
    database sqlite:////srv/fqi.db cannot be read: file is not a database
    """
    orig = getattr(e, "orig", None) or e
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    where = f"database {url}" if url else "the database"
    low = first.lower()
    if any(w in low for w in ("not a database", "malformed", "corrupt", "disk image")):
        fix = ("the file is damaged or is not a fracture-qi database: restore it from the last "
               "backup (docs/security.md), or point the manifest's database at the right file")
    elif any(w in low for w in ("locked", "busy")):
        fix = "another program holds the database: wait and retry, or stop it"
    elif any(w in low for w in ("unable to open", "permission", "read-only", "readonly")):
        fix = "check the file or server exists and this user may read and write it"
    else:
        fix = "check the URL, that the server is up and this user may use the database"
    return StoreError(f"{where} cannot be read: {first}. Fix: {fix}")


def connect(url: str, *, base: Path | None = None, echo: bool = False) -> Engine:
    """Create an engine with the suite's safety settings.

    SQLite gets WAL journaling, a busy timeout, foreign keys and ``BEGIN IMMEDIATE`` so
    concurrent writers queue instead of failing. PostgreSQL gets ``pool_pre_ping``.
    """
    full = normalise_url(url, base)
    u = make_url(full)
    if u.drivername.startswith("sqlite"):
        if u.database and u.database != ":memory:":
            check_not_emptied(Path(u.database))
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            full,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
    else:
        engine = create_engine(full, echo=echo, pool_pre_ping=True)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """Commit on success, roll back on error, always close."""
    session = session_factory(engine)()
    try:
        yield session
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()
