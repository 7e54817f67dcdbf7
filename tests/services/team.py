"""Start a real team server (``fracture-qi serve``'s server process) and sign users in.

Usage::

    from tests.services.team import start_team, sign_in_session, sign_in_page

    with start_team(manifest, log_dir=tmp) as server:
        s = sign_in_session(server.url, "nurse.a", PASSWORD)      # requests.Session
        page.goto(server.url + "login"); sign_in_page(page, "nurse.a", PASSWORD)

The server is started through :func:`fracture_qi.team.launch.start_team_server` with the
settings users get; :func:`start_team` returns once ``/healthz`` answers.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fracture_qi.serve import free_port
from fracture_qi.team.launch import TeamSettings, start_team_server
from tests.services.voila import ServerProcess, http_get

__all__ = ["TeamServer", "sign_in_page", "sign_in_session", "start_team"]


@dataclass
class TeamServer(ServerProcess):
    """A running team server."""

    stop_timeout = 30.0

    url: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _log_file: Any = field(repr=False, default=None)

    def kernels(self) -> list[psutil.Process]:
        """The kernel processes the server runs now."""
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        out = []
        for k in kids:
            try:
                if "ipykernel" in " ".join(k.cmdline()):
                    out.append(k)
            except psutil.Error:
                continue
        return out


def start_team(manifest: Path, *, log_dir: Path | None = None, timeout: float = 120.0,
               **settings: Any) -> TeamServer:
    """Start the team server for *manifest* on a free port; wait until it answers."""
    port = free_port()
    root = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="fqi-team-"))
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / f"team-{port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by TeamServer.stop
    proc = start_team_server(TeamSettings(manifest=Path(manifest), port=port, **settings),
                             stdout=log_file, stderr=subprocess.STDOUT, supervised=False)
    server = TeamServer(f"http://127.0.0.1:{port}/", proc, port, log_path, log_file)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"the team server exited ({proc.returncode}):\n"
                               + server.log_text()[-4000:])
        try:
            if http_get("127.0.0.1", port, "/healthz", timeout=5)[0] == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("the team server did not answer:\n" + server.log_text()[-4000:])
        time.sleep(0.25)


def sign_in_session(url: str, username: str, password: str) -> Any:
    """A ``requests.Session`` signed in through the form (XSRF token included)."""
    import requests

    s = requests.Session()
    s.get(url + "login", timeout=30)
    r = s.post(url + "login", data={"username": username, "password": password,
                                    "_xsrf": s.cookies.get("_xsrf", "")},
               allow_redirects=False, timeout=60)
    assert r.status_code == 302, (r.status_code, r.text[:500])
    return s


def sign_in_page(page: Any, url: str, username: str, password: str) -> None:
    """Sign in through the sign-in form in a Playwright page (it ends on the start page)."""
    page.goto(url + "login")
    form = page.locator("form")
    assert form.locator("input[type=text]").count() == 1
    assert form.locator("input[type=password]").count() == 1
    form.locator("input[type=text]").fill(username)
    form.locator("input[type=password]").fill(password)
    form.locator("button[type=submit]").click()
    page.wait_for_selector("div.apps", timeout=60_000)
