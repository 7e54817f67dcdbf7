"""Serve a packaged notebook (the adjudication app, the QI dashboard) with Voila, safely.

Voila turns a notebook into a web app: each page load starts a kernel, runs the notebook and
shows its widgets, never its code. This module is the one place that decides how the suite
runs Voila, so every app gets the same safe defaults:

* binds to ``127.0.0.1`` unless told otherwise, and refuses any other address without a token
  (anyone who can reach the port could otherwise read patient details);
* ``show_tracebacks=False`` and ``strip_sources=True``: no code, file paths or exception text
  reach the browser;
* idle kernels (tab closed) are culled, so a day of page loads does not exhaust memory;
* ``/voila/files/`` serves nothing unless a caller allows it, rooted at the notebook's folder;
* parameters (manifest path, reviewer) travel as environment variables, because Voila has no
  papermill-style parameters: the kernel inherits the server's environment.

The browser may only send comm (widget) and kernel-info/shutdown messages: Voila refuses
``execute_request`` (tested in ``tests/test_serve.py``). Widget values can still be set by
any client, so the apps validate every input on the server.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fracture_qi.errors import ConfigError

logger = logging.getLogger(__name__)

#: environment variable naming the data_manifest.yaml an app should open
ENV_MANIFEST = "FRACTURE_QI_MANIFEST"
#: environment variable naming the reviewer (nurse) the adjudication app records
ENV_REVIEWER = "FRACTURE_QI_REVIEWER"
#: environment variable naming the audit (worklist) the adjudication app works on
ENV_AUDIT = "FRACTURE_QI_AUDIT"

#: seconds a kernel with no browser connected may sit idle before it is shut down
DEFAULT_CULL_IDLE_TIMEOUT_S = 600
#: how often (seconds) Voila looks for idle kernels
DEFAULT_CULL_INTERVAL_S = 60
#: the port the apps use when none is given (Voila's own default)
DEFAULT_PORT = 8866


def is_loopback(host: str) -> bool:
    """Whether *host* names only this machine (127.0.0.0/8, ``::1`` or ``localhost``).

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1")
    (True, True, True)
    >>> is_loopback("0.0.0.0"), is_loopback("10.1.2.3"), is_loopback("")
    (False, False, False)
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token.

    Parameters
    ----------
    host
        The address to bind.
    token
        The access token the browser must present, or ``None``.

    Raises
    ------
    ConfigError
        When *host* is not a loopback address and *token* is empty, or the token is too
        short to resist guessing.

    Examples
    --------
    >>> check_bind("127.0.0.1", None)
    >>> check_bind("0.0.0.0", None)
    Traceback (most recent call last):
    ...
    fracture_qi.errors.ConfigError: refusing to serve on 0.0.0.0 without a token: ...
    """
    if is_loopback(host):
        return
    if not token:
        raise ConfigError(
            f"refusing to serve on {host} without a token: anyone who can reach this port "
            "would see patient details. Fix: serve on 127.0.0.1 (the default) behind the "
            "trust's reverse proxy, or pass --token with a long random secret "
            "(python -c 'import secrets;print(secrets.token_urlsafe(32))')"
        )
    if len(token) < 16:
        raise ConfigError(
            f"the token for {host} is {len(token)} characters; at least 16 are needed. "
            "Fix: use python -c 'import secrets;print(secrets.token_urlsafe(32))'"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a port that is free now on *host* (it may be taken again later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def voila_command(
    notebook: str | Path,
    *,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    token: str | None = None,
    cull_idle_timeout: int = DEFAULT_CULL_IDLE_TIMEOUT_S,
    cull_interval: int = DEFAULT_CULL_INTERVAL_S,
    file_allowlist: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Build the ``voila`` command line with the suite's safe settings.

    Parameters
    ----------
    notebook
        The ``.ipynb`` to serve.
    port, host
        Where to listen. Non-loopback hosts need *token* (see :func:`check_bind`).
    token
        Access token (the browser opens ``http://host:port/?token=...``); ``None`` for none.
    cull_idle_timeout, cull_interval
        Seconds before an idle kernel with no browser attached is shut down, and how often
        to look.
    file_allowlist
        Regular expressions of files under the notebook's folder that ``/voila/files/`` may
        serve; empty (the default) serves none.
    extra_args
        Further Voila options, appended last (they win over the defaults).

    Returns
    -------
    list of str
        ``[python, -m, fracture_qi.serve, NOTEBOOK, ...]`` ready for :mod:`subprocess`;
        the arguments after the module are Voila's own.

    Raises
    ------
    ConfigError
        When the notebook does not exist or the bind is unsafe.

    Examples
    --------
    >>> import fracture_qi.serve as s, pathlib
    >>> nb = pathlib.Path(s.__file__).parent / "notebooks" / "adjudicate.ipynb"
    >>> cmd = s.voila_command(nb, port=9999)
    >>> "--Voila.ip=127.0.0.1" in cmd and "--show_tracebacks=False" in cmd
    True
    """
    nb = Path(notebook).resolve()
    if not nb.is_file():
        raise ConfigError(
            f"notebook {nb} does not exist. Fix: reinstall fracture-qi (pip install -e .) "
            "so its packaged notebooks are present, or give the right path"
        )
    check_bind(host, token)
    cmd = [
        sys.executable,
        "-m",
        # our launcher: Voila with hardened static-file handlers (see _launch_voila)
        "fracture_qi.serve",
        str(nb),
        "--no-browser",
        f"--port={int(port)}",
        # fail loudly when the port is taken instead of silently moving to another one
        "--Voila.port_retries=0",
        f"--Voila.ip={host}",
        f"--Voila.root_dir={nb.parent}",
        "--show_tracebacks=False",
        "--strip_sources=True",
        f"--MappingKernelManager.cull_idle_timeout={int(cull_idle_timeout)}",
        f"--MappingKernelManager.cull_interval={int(cull_interval)}",
        "--MappingKernelManager.cull_connected=False",
        # an empty list cannot be written as a command-line list; a pattern that matches no
        # path (a NUL byte never occurs in a URL path) keeps /voila/files/ closed
        *(
            [f"--VoilaConfiguration.file_allowlist={p}" for p in file_allowlist]
            if file_allowlist
            else ["--VoilaConfiguration.file_allowlist=\\x00"]
        ),
        "--VoilaConfiguration.file_denylist=.*\\.(ipynb|py|db|yaml|yml|json|csv|sqlite)",
    ]
    if token:
        cmd.append(f"--token={token}")
    cmd.extend(extra_args)
    return cmd


def app_url(host: str, port: int, token: str | None = None) -> str:
    """The URL a browser opens for a server started with these settings.

    Examples
    --------
    >>> app_url("127.0.0.1", 8866)
    'http://127.0.0.1:8866/'
    >>> app_url("::1", 8866, "abc")
    'http://[::1]:8866/?token=abc'
    """
    h = f"[{host}]" if ":" in host else host
    return f"http://{h}:{port}/" + (f"?token={token}" if token else "")


def start_notebook_server(
    notebook: str | Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    cull_idle_timeout: int = DEFAULT_CULL_IDLE_TIMEOUT_S,
    cull_interval: int = DEFAULT_CULL_INTERVAL_S,
    file_allowlist: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    stdout: int | object | None = None,
    stderr: int | object | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start Voila in the background; return the process and the URL to open.

    Parameters are those of :func:`voila_command`; in addition *env* holds variables
    added to this process's environment for the server and its kernels (e.g.
    ``{ENV_MANIFEST: "/path/data_manifest.yaml", ENV_REVIEWER: "nurse-a"}``), and
    *stdout*/*stderr* go to :class:`subprocess.Popen`. ``port=None`` picks a free port.

    Returns
    -------
    (subprocess.Popen, str)
        The server process (stop it with ``terminate()``) and its URL.
    """
    if port is None:
        port = free_port(host if is_loopback(host) else "0.0.0.0")
    cmd = voila_command(
        notebook,
        port=port,
        host=host,
        token=token,
        cull_idle_timeout=cull_idle_timeout,
        cull_interval=cull_interval,
        file_allowlist=file_allowlist,
        extra_args=extra_args,
    )
    full_env = dict(os.environ)
    full_env.update(env or {})
    # the kernel must import this very installation of fracture_qi, whatever the cwd
    full_env.setdefault("PYTHONNOUSERSITE", "1")
    logger.info("starting Voila: %s", " ".join(shlex.quote(c) for c in cmd if "token" not in c))
    proc = subprocess.Popen(cmd, env=full_env, stdout=stdout, stderr=stderr)
    return proc, app_url(host, port, token)


#: Voila options that keep one kernel pre-heated (notebook already executed) for the next
#: visitor: page open drops from ~9-18 s to ~4-5 s on 2 cores, but that page shows the data
#: as of the moment its kernel started, so it is opt-in (``fracture-qi dashboard --preheat``).
PREHEAT_ARGS: tuple[str, ...] = ("--preheat_kernel=True", "--pool_size=1")


def serve_notebook(
    notebook: str | Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    open_browser: bool = False,
    cull_idle_timeout: int = DEFAULT_CULL_IDLE_TIMEOUT_S,
    cull_interval: int = DEFAULT_CULL_INTERVAL_S,
    extra_args: Sequence[str] = (),
) -> int:
    """Serve *notebook* with Voila until interrupted (blocking); return Voila's exit status.

    This is what ``fracture-qi adjudicate`` and ``fracture-qi dashboard`` call.

    Parameters
    ----------
    notebook
        The ``.ipynb`` to serve (normally one packaged under ``fracture_qi/notebooks``).
    port
        Port to listen on; ``None`` means :data:`DEFAULT_PORT`.
    host
        Address to bind; ``127.0.0.1`` unless the site puts a token on it.
    token
        Access token; required for a non-loopback *host*.
    env
        Parameters for the notebook as environment variables (see :data:`ENV_MANIFEST`).
    open_browser
        Open the app in this machine's web browser once the server is up.
    cull_idle_timeout, cull_interval
        Kernel culling, see :func:`voila_command`.
    extra_args
        Further Voila options (e.g. :data:`PREHEAT_ARGS`), see :func:`voila_command`.

    Returns
    -------
    int
        The server's exit status (0 after Ctrl-C).

    Raises
    ------
    ConfigError
        Unsafe bind, missing notebook.
    """
    proc, url = start_notebook_server(
        notebook,
        port=port or DEFAULT_PORT,
        host=host,
        token=token,
        env=env,
        cull_idle_timeout=cull_idle_timeout,
        cull_interval=cull_interval,
        extra_args=extra_args,
    )
    logger.warning("serving %s at %s (Ctrl-C to stop)", Path(notebook).name, url)
    if open_browser:
        import webbrowser  # only for interactive use

        webbrowser.open(url)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0


def _harden_voila() -> None:
    """Make Voila's template static handler answer 404, not 500, to malformed paths.

    ``/voila/templates/../../etc/passwd`` reaches an ``assert`` in Voila 0.5's
    ``TemplateStaticFileHandler``: nothing leaks, but the request ends in a 500 and a
    logged traceback. Turning such paths into a plain 404 keeps the logs for real faults.
    """
    import tornado.web
    from voila import static_file_handler as sfh

    cls = sfh.TemplateStaticFileHandler
    parse_orig = cls.parse_url_path
    abs_orig = cls.get_absolute_path.__func__  # type: ignore[attr-defined]

    def parse_url_path(self, path):  # type: ignore[no-untyped-def]
        parts = path.split("/", 2)
        if len(parts) != 3 or parts[1] != "static" or ".." in path.replace("\\", "/").split("/"):
            raise tornado.web.HTTPError(404)
        return parse_orig(self, path)

    def get_absolute_path(klass, root, path):  # type: ignore[no-untyped-def]
        parts = os.path.normpath(path).split(os.path.sep, 2)
        if len(parts) != 3 or parts[1] != "static":
            raise tornado.web.HTTPError(404)
        return abs_orig(klass, root, path)

    cls.parse_url_path = parse_url_path  # type: ignore[method-assign]
    cls.get_absolute_path = classmethod(get_absolute_path)  # type: ignore[method-assign,assignment]

    # Voila 0.5 serves /voila/files/ without asking for the token even when one is set; a
    # site that opens file_allowlist would publish those files to anyone who can connect.
    files = sfh.AllowListFileHandler
    prepare_orig = files.prepare

    def prepare(self):  # type: ignore[no-untyped-def]
        idp = self.settings.get("identity_provider")
        token = getattr(idp, "token", "") or ""
        if token and not _request_has_token(self, idp, token):
            raise tornado.web.HTTPError(403)
        return prepare_orig(self)

    files.prepare = prepare  # type: ignore[method-assign]


def _request_has_token(handler: object, idp: object, token: str) -> bool:
    """Whether a request carries the server's token (query, header) or its login cookie."""
    import hmac

    given = handler.get_argument("token", "")  # type: ignore[attr-defined]
    auth = handler.request.headers.get("Authorization", "")  # type: ignore[attr-defined]
    if not given and auth.lower().startswith("token "):
        given = auth[6:].strip()
    if given:
        return hmac.compare_digest(given.encode(), token.encode())
    try:  # the login cookie jupyter_server sets after a token login
        name = idp.get_cookie_name(handler)  # type: ignore[attr-defined]
        return handler.get_secure_cookie(name) is not None  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - no cookie support: only the token itself counts
        return False


def _launch_voila(argv: Sequence[str]) -> None:
    """Run Voila with *argv* after :func:`_harden_voila` (``python -m fracture_qi.serve``)."""
    _harden_voila()
    from voila.app import main as voila_main

    sys.argv = ["voila", *argv]
    voila_main()


if __name__ == "__main__":
    _launch_voila(sys.argv[1:])
