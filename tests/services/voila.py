"""Start a real Voila server for a notebook, the way ``fracture-qi adjudicate``/``dashboard`` do.

Usage::

    from tests.services.voila import start_voila

    server = start_voila(notebook_path, env={"FRACTURE_QI_MANIFEST": str(manifest)})
    try:
        page.goto(server.url, timeout=120_000)   # Playwright, see tests/services/browser.py
    finally:
        server.stop()

or as a context manager: ``with start_voila(nb, env=...) as server: ...``.

The server is started through :func:`fracture_qi.serve.start_notebook_server`, so tests see
exactly the settings users get (127.0.0.1, no tracebacks, culling, closed ``/voila/files``).
:func:`start_voila` returns once the server answers HTTP (it does not load the notebook: the
first page load starts a kernel and runs the notebook, about 20 s on 2 cores). The server's
output goes to a log file (``server.log_text()``), which tests can search, and which is printed
when the server fails to start.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracture_qi.serve import (
    DEFAULT_CULL_IDLE_TIMEOUT_S,
    DEFAULT_CULL_INTERVAL_S,
    DEFAULT_MAX_KERNELS,
    free_port,
    start_notebook_server,
)

__all__ = ["VoilaServer", "VoilaStartError", "start_voila", "http_get"]


class VoilaStartError(RuntimeError):
    """Raised when Voila exits or does not answer before the timeout (message holds its log)."""


class ServerProcess:
    """What the test servers share: the process, its log, a stop that always ends it (SIGTERM,
    then SIGKILL after ``stop_timeout`` s) and use as a context manager. The subclass is a
    dataclass holding ``proc``, ``log_path`` and ``_log_file``."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    _log_file: Any
    stop_timeout = 20.0

    def log_text(self) -> str:
        """Everything the server has logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and its kernels; safe to call twice."""
        if self.proc.poll() is None:
            # Voila's SIGTERM handler stops the loop and shuts its kernels down
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class VoilaServer(ServerProcess):
    """A running Voila server started by :func:`start_voila`.

    Attributes
    ----------
    url
        ``http://127.0.0.1:PORT/`` (with ``?token=...`` when a token was given).
    proc
        The server process.
    host, port
        Where it listens.
    log_path
        File holding the server's stdout and stderr.
    """

    url: str
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    _log_file: Any = field(repr=False, default=None)



def http_get(host: str, port: int, raw_path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """GET *raw_path* exactly as written (no ``..`` normalisation, unlike most clients).

    Returns
    -------
    (int, bytes)
        HTTP status and body.
    """
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def start_voila(
    notebook_path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout: float = 120.0,
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    cull_idle_timeout: int = DEFAULT_CULL_IDLE_TIMEOUT_S,
    cull_interval: int = DEFAULT_CULL_INTERVAL_S,
    max_kernels: int = DEFAULT_MAX_KERNELS,
    file_allowlist: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    log_dir: str | os.PathLike[str] | None = None,
) -> VoilaServer:
    """Start Voila on *notebook_path* and wait until it answers HTTP.

    Parameters
    ----------
    notebook_path
        The notebook to serve.
    env
        Extra environment for the server and its kernels (manifest path, reviewer...).
    port
        Port; ``None`` picks a free one.
    timeout
        Seconds to wait for the server to answer.
    host, token, cull_idle_timeout, cull_interval, max_kernels, file_allowlist, extra_args
        Passed to :func:`fracture_qi.serve.start_notebook_server`.
    log_dir
        Folder for the server log (a new temporary folder by default).

    Returns
    -------
    VoilaServer

    Raises
    ------
    VoilaStartError
        When the server exits early or does not answer within *timeout* (with its log).
    """
    port = port or free_port(host)
    log_root = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="fqi-voila-"))
    log_root.mkdir(parents=True, exist_ok=True)
    log_path = log_root / f"voila-{port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by VoilaServer.stop
    proc, url = start_notebook_server(
        notebook_path,
        port=port,
        host=host,
        token=token,
        env=env,
        cull_idle_timeout=cull_idle_timeout,
        cull_interval=cull_interval,
        max_kernels=max_kernels,
        file_allowlist=file_allowlist,
        extra_args=extra_args,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = VoilaServer(url=url, proc=proc, host=host, port=port, log_path=log_path,
                         _log_file=log_file)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            server.stop()
            raise VoilaStartError(
                f"Voila exited with status {proc.returncode} before answering; log:\n"
                + server.log_text()[-4000:]
            )
        try:
            # a file that cannot exist: answers fast (403/404) and starts no kernel
            status, _ = http_get(host, port, "/voila/files/__fqi_ready_probe__", timeout=5)
            if status < 500:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise VoilaStartError(
                f"Voila did not answer on {host}:{port} within {timeout:.0f} s; log:\n"
                + server.log_text()[-4000:]
            )
        time.sleep(0.25)
