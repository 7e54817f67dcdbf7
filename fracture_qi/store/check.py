"""Check the database a manifest names before anything uses it (``fracture-qi manifest``).

A site must not be misconfigured silently:

* a SQLite file that does not exist is a typo or a moved file far more often than a new site,
  so only the commands that build a site (:data:`CREATING_COMMANDS`: ``index``, ``listen``,
  ``demo``) may create it; every other command stops with the fix (and a file name close to
  the one given, if there is one);
* ``postgres://`` (Heroku's and many tools' spelling) is PostgreSQL, and an unreachable server
  is one line naming the host, never a traceback;
* :func:`check_database` reports what ``fracture-qi manifest`` shows: kind, where, schema
  revision, and whether it exists and answers.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from fracture_qi.errors import StoreError

log = logging.getLogger(__name__)

#: commands that may create a new SQLite database (they build a site from its sources)
CREATING_COMMANDS = frozenset({"index", "listen", "demo"})
#: seconds ``fracture-qi manifest`` waits for a PostgreSQL server before reporting it down
PG_CONNECT_TIMEOUT_S = 5
#: file name endings looked at when suggesting the database a typo meant
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///...`` URL, or ``None`` (in-memory or another database).

    Examples
    --------
    >>> sqlite_file("sqlite:////srv/fqi/fqi.db").as_posix()
    '/srv/fqi/fqi.db'
    >>> sqlite_file("sqlite://") is None, sqlite_file("postgresql://h/db") is None
    (True, True)
    """
    u = make_url(url)
    if not u.drivername.startswith("sqlite") or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def _near_names(path: Path) -> list[str]:
    try:
        names = [p.name for p in path.parent.iterdir()
                 if p.is_file() and p.suffix.lower() in SQLITE_SUFFIXES]
    except OSError:
        return []
    return difflib.get_close_matches(path.name, names, n=2, cutoff=0.6)


def missing_sqlite_error(path: Path, manifest: Path | None, command: str | None) -> StoreError:
    """The one-line error for a SQLite database file that is not there."""
    near = _near_names(path)
    hint = f" (did you mean {' or '.join(near)}?)" if near else ""
    where = f"the database: line of {manifest}" if manifest else "the database URL"
    cmd = f"fracture-qi {command}" if command else "this command"
    return StoreError(
        f"database file {path} does not exist{hint}, and {cmd} does not create one. Fix: "
        f"correct {where} (or $FRACTURE_QI_DATABASE); to start a new site, run "
        f"fracture-qi index --manifest {manifest or 'M'}, which creates it"
    )


def require_existing_database(url: str, *, manifest: Path | None = None,
                              command: str | None = None) -> None:
    """Refuse a SQLite database file that does not exist (PostgreSQL URLs pass).

    Raises
    ------
    StoreError
        Naming the file, a near name if there is one, and the fix.
    """
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise missing_sqlite_error(path, manifest, command)


@dataclass(frozen=True)
class DatabaseReport:
    """What :func:`check_database` found."""

    kind: str
    """``sqlite`` or ``postgresql``."""
    where: str
    """The file, or ``host/database`` (never a password)."""
    revision: str | None
    """The schema revision (``None``: empty database)."""
    head: str
    """The revision this fracture-qi writes."""

    def line(self) -> str:
        """One line for ``fracture-qi manifest``."""
        if self.revision is None:
            state = "exists, empty (the first command that writes migrates it)"
        elif self.revision == self.head:
            state = f"schema {self.revision}, current"
        else:
            state = f"schema {self.revision}; this fracture-qi migrates it to {self.head}"
        return f"{self.kind} {self.where}: {state}"


def check_database(url: str, *, manifest: Path | None = None) -> DatabaseReport:
    """Check that the database exists, answers and is at a schema this code knows.

    Nothing is created or migrated.

    Raises
    ------
    StoreError
        A SQLite file that does not exist or is not a database, a server that does not
        answer (within :data:`PG_CONNECT_TIMEOUT_S`), or a schema newer than this code.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError

    from fracture_qi.store.db import check_not_emptied, database_error, normalise_url
    from fracture_qi.store.init import current_revision, head_revision, known_revisions

    full = normalise_url(url)
    u = make_url(full)
    path = sqlite_file(full)
    if path is not None:
        require_existing_database(full, manifest=manifest, command="manifest")
        check_not_emptied(path)
        kind, where = "sqlite", str(path)
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    elif u.drivername.startswith("postgresql"):
        kind, where = "postgresql", f"{u.host or 'localhost'}{':' + str(u.port) if u.port else ''}/{u.database}"
        engine = create_engine(full, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S})
    else:
        raise StoreError(f"database {u.render_as_string(hide_password=True)}: fracture-qi "
                         "uses SQLite or PostgreSQL. Fix: use sqlite:///file.db or "
                         "postgresql://user@host/dbname")
    try:
        revision = current_revision(engine)
    except DBAPIError as e:
        raise database_error(e, u.render_as_string(hide_password=True)) from e
    finally:
        engine.dispose()
    if revision is not None and revision not in known_revisions():
        raise StoreError(
            f"database {where} is at schema revision {revision}, which this fracture-qi does "
            "not know: it was written by a newer version. Fix: upgrade fracture-qi")
    return DatabaseReport(kind, where, revision, head_revision())


__all__ = [
    "CREATING_COMMANDS",
    "DatabaseReport",
    "check_database",
    "missing_sqlite_error",
    "require_existing_database",
    "sqlite_file",
]
