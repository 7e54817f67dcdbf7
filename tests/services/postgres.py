"""A real, throw-away PostgreSQL server for tests (session-scoped pytest fixtures).

Usage in a test module::

    from tests.services.postgres import postgres_url, fresh_postgres_url  # noqa: F401

    @pytest.mark.postgres
    def test_something(postgres_url):
        engine = fracture_qi.store.db.connect(postgres_url)

Fixtures
--------
``postgres_server`` (session)
    A running :class:`PostgresServer` (initdb into a fresh temporary folder, a free TCP port on
    127.0.0.1, its unix socket in the same folder, trust authentication, fsync off). Stopped
    and deleted at the end of the session.
``postgres_url`` (session)
    ``postgresql+psycopg://postgres@127.0.0.1:PORT/fqi_test``: one database shared by the
    session. Tests that need an empty database use ``fresh_postgres_url``.
``fresh_postgres_url`` (function)
    A URL of a newly created, empty database, dropped after the test.

Binaries come from ``$FRACTURE_QI_PG_BIN`` if set, else the newest
``/usr/lib/postgresql/*/bin``, else ``pg_ctl`` on the PATH. PostgreSQL refuses to run as
root: when the tests run as root, the server runs as the ``postgres`` OS user (Debian's
package creates it) through ``runuser``. When the binaries are missing the fixture skips with
the install command; in CI (``CI=true``) ``tests/conftest.py`` turns that skip into a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: seconds to wait for the server to accept connections
START_TIMEOUT_S = 60
#: OS user that runs the server when the tests run as root
SERVER_OS_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """Raised when no PostgreSQL server binaries can be found or the server will not start."""


def find_bin_dir() -> Path:
    """Locate the folder holding ``initdb``/``pg_ctl``.

    Raises
    ------
    PostgresUnavailable
        With the command that installs them.
    """
    env = os.environ.get("FRACTURE_QI_PG_BIN")
    candidates: list[Path] = []
    if env:
        candidates.append(Path(env))
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
        reverse=True,
    )
    candidates += [Path(p) for p in versions]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in $FRACTURE_QI_PG_BIN, "
        "/usr/lib/postgresql/*/bin or PATH. Fix: `make system-deps` "
        "(apt-get install postgresql) or set FRACTURE_QI_PG_BIN=/path/to/bin"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster in a temporary folder.

    Attributes
    ----------
    root
        The temporary folder (data directory, socket and log live under it).
    port
        The TCP port on 127.0.0.1.
    """

    bin_dir: Path
    root: Path
    port: int = 0
    user: str = "postgres"
    _as_user: str | None = None
    _started: bool = False
    _databases: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_user:
            return ["runuser", "-u", self._as_user, "--", *cmd]
        return cmd

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self._cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=self.root,
            check=False,
        )
        if proc.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise PostgresUnavailable(
                f"`{' '.join(args[:2])}` failed (exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}\n{log}"
            )
        return proc

    def start(self) -> None:
        """initdb, then start on a free port; retries a few ports if one is taken meanwhile."""
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(SERVER_OS_USER)
            except KeyError as e:
                raise PostgresUnavailable(
                    f"tests run as root and there is no '{SERVER_OS_USER}' OS user to run "
                    "PostgreSQL (it refuses root). Fix: `useradd -r postgres` or run the tests "
                    "as an ordinary user"
                ) from e
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("tests run as root but `runuser` is missing (util-linux)")
            self._as_user = SERVER_OS_USER
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.root.chmod(0o700)
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
            "-E", "UTF8", "--no-locale", "--no-sync",
        )
        last: Exception | None = None
        for _ in range(5):
            self.port = free_port()
            opts = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=50"
            )
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", opts,
                    "-w", "-t", str(START_TIMEOUT_S), "start",
                    timeout=START_TIMEOUT_S + 30,
                )
            except PostgresUnavailable as e:  # most likely the port was taken meanwhile
                last = e
                continue
            self._started = True
            return
        raise PostgresUnavailable(f"PostgreSQL did not start after 5 tries: {last}")

    def stop(self) -> None:
        """Stop the server (fast) and delete its folder; safe to call twice."""
        if self._started:
            with contextlib.suppress(Exception):
                subprocess.run(
                    self._cmd("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"),
                    capture_output=True, timeout=60, cwd="/", check=False,
                )
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of database *dbname* on this server."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = name or f"fqi_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending any connection still open to it."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_server() -> PostgresServer:
    """Start a private server (callers must ``stop()`` it; registered with atexit too)."""
    bin_dir = find_bin_dir()
    # not under pytest's tmp folders: those are 0700 root-only, and the server may run as
    # the postgres user, which must be able to reach its data directory
    root = Path(tempfile.mkdtemp(prefix="fqi-pg-"))
    server = PostgresServer(bin_dir=bin_dir, root=root)
    atexit.register(server.stop)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running private PostgreSQL server for the whole test session."""
    try:
        server = start_server()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of one database (``fqi_test``) shared by the session's PostgreSQL tests."""
    return postgres_server.create_database("fqi_test")


@pytest.fixture
def fresh_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a new empty database, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    with contextlib.suppress(Exception):
        postgres_server.drop_database(url.rsplit("/", 1)[1])
