"""Open the database and bring its schema to the code's revision (Alembic, programmatic).

:func:`open_store` is what every command calls: it connects (SQLite with WAL and a busy
timeout, or PostgreSQL by URL) and runs ``alembic upgrade head`` inside one transaction that
holds the database's write lock (SQLite ``BEGIN IMMEDIATE``; a PostgreSQL advisory lock),
so two processes starting together take turns and the second finds nothing to do. A database
at a revision this code does not know (written by a newer fracture-qi) is refused.

Developers add a revision after changing :mod:`fracture_qi.store.schema` with::

    .venv/bin/python -m fracture_qi.store revision -m "add column x"
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from fracture_qi.errors import StoreError
from fracture_qi.store.db import connect, database_error
from fracture_qi.store.schema import Base

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: key of the PostgreSQL advisory lock that serialises migrations ("fqi-mig" as an integer)
PG_LOCK_KEY = 0x6671692D6D6967


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise StoreError(f"no migrations found in {MIGRATIONS}; the installation is broken")
    return head


def known_revisions() -> set[str]:
    """Every revision id shipped with this code."""
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def current_revision(conn_or_engine: Connection | Engine) -> str | None:
    """The database's revision (None for an empty database)."""
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    return MigrationContext.configure(conn_or_engine).get_current_revision()


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Migrate the database to *revision* (default head); idempotent and race-safe.

    Parameters
    ----------
    engine
        From :func:`fracture_qi.store.db.connect`.
    revision
        Target revision.

    Returns
    -------
    str
        The revision the database is at afterwards.

    Raises
    ------
    StoreError
        When the database is at a revision newer than this code, or migration fails.
    """
    known = known_revisions()
    head = head_revision()
    try:
        # engine.begin(): on SQLite the connect() hook issues BEGIN IMMEDIATE (write lock)
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
            current = MigrationContext.configure(conn).get_current_revision()
            if current is not None and current not in known:
                raise StoreError(
                    f"database {_safe_url(engine)} is at schema revision {current}, which this "
                    f"fracture-qi does not know (its newest is {head}): it was written by a newer "
                    "version. Fix: upgrade fracture-qi (pip install -U fracture-qi), or point "
                    "--manifest/FRACTURE_QI_DATABASE at another database"
                )
            if current == head and revision == "head":
                return current
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            log.info("migrating %s from %s to %s", _safe_url(engine), current or "empty", revision)
            command.upgrade(cfg, revision)
            after = MigrationContext.configure(conn).get_current_revision()
    except StoreError:
        raise
    except DBAPIError as e:
        raise database_error(e, _safe_url(engine)) from e
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise StoreError(
            f"could not migrate database {_safe_url(engine)}: {e.__class__.__name__}: {first}. "
            "Fix: check the URL, that the server is up and the user may create tables"
        ) from e
    return after or ""


def schema_differences(engine: Engine) -> list[Any]:
    """Differences between the database and :mod:`fracture_qi.store.schema` (empty = same).

    This is ``alembic check``: a non-empty answer after ``upgrade`` means a migration is
    missing for a change made in ``schema.py``.
    """
    with engine.connect() as conn:
        mc = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(mc, Base.metadata))


def open_store(
    target: Any,
    *,
    base: Path | None = None,
    migrate: bool = True,
    echo: bool = False,
) -> Engine:
    """Connect to the suite's database and make sure its schema is current.

    Parameters
    ----------
    target
        A database URL, a :class:`~fracture_qi.manifest.Manifest` (its ``database_url``,
        which honours FRACTURE_QI_DATABASE), a manifest path, or an existing Engine.
    base
        Folder for a relative ``sqlite:///file.db`` URL (default: the current folder).
    migrate
        Run ``alembic upgrade head`` (default). ``False`` only checks the revision.
    echo
        Log SQL.

    Returns
    -------
    Engine

    Raises
    ------
    StoreError
        When the database cannot be reached or migrated, or is newer than the code.

    Examples
    --------
    >>> engine = open_store("sqlite://")   # an in-memory database, migrated
    >>> from fracture_qi.store.init import current_revision, head_revision
    >>> current_revision(engine) == head_revision()
    True
    """
    if isinstance(target, Engine):
        engine = target
    else:
        # an in-memory "sqlite://" gets SQLAlchemy's per-thread pool: one database per thread
        engine = connect(_target_url(target), base=base, echo=echo)
    if migrate:
        upgrade(engine)
    else:
        try:
            current = current_revision(engine)
        except DBAPIError as e:
            raise database_error(e, _safe_url(engine)) from e
        if current is not None and current not in known_revisions():
            raise StoreError(
                f"database {_safe_url(engine)} is at schema revision {current}, unknown to this "
                "fracture-qi. Fix: upgrade fracture-qi"
            )
    return engine


def _target_url(target: Any) -> str:
    if isinstance(target, str) and "://" in target:
        return target
    if hasattr(target, "database_url"):
        return str(target.database_url)
    if isinstance(target, (str, Path)):
        from fracture_qi.manifest import read_manifest

        return read_manifest(target, verify=False).database_url
    raise StoreError(
        f"open_store() got {type(target).__name__}; give a database URL, a Manifest, "
        "a manifest path or an Engine"
    )


def _revision_cli(argv: Sequence[str] | None = None) -> int:
    """Developer tool: autogenerate a new revision against a scratch database at head."""
    p = argparse.ArgumentParser(prog="python -m fracture_qi.store",
                                description="Alembic helpers for fracture-qi developers.")
    sub = p.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="autogenerate a revision from schema.py changes")
    rev.add_argument("-m", "--message", required=True)
    sub.add_parser("check", help="exit 1 if schema.py and the migrations differ")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/scratch.db"
        engine = connect(url)
        upgrade(engine)
        if args.cmd == "check":
            diffs = schema_differences(engine)
            for diff in diffs:
                print(diff)
            return 1 if diffs else 0
        cfg = alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.revision(cfg, message=args.message, autogenerate=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_revision_cli())
