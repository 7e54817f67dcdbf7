"""Serve a packaged notebook (the adjudication app, the QI dashboard) with Voila, safely.

Voila turns a notebook into a web app: each page load starts a kernel, runs the notebook and
shows its widgets, never its code. This module is the one place that decides how the suite
runs Voila (it runs in the ``fracture-qi`` process and imports no Voila); the server process
itself is ``python -m fracture_qi.voila_guard``, which hardens Voila before it listens (see
that module). Every app gets the same safe defaults:

* binds to ``127.0.0.1`` unless told otherwise, and refuses any other address without a token
  (anyone who can reach the port could otherwise read patient details);
* ``show_tracebacks=False`` and ``strip_sources=True``: no code, file paths or exception text
  reach the browser (and :mod:`fracture_qi.voila_guard` scrubs kernel errors on the websocket);
* at most :data:`DEFAULT_MAX_KERNELS` kernels per server (``max_kernels``), and idle kernels
  (tab closed) are culled, so page loads cannot exhaust memory;
* ``/voila/files/`` serves nothing unless a caller allows it, rooted at the notebook's folder;
* parameters (manifest path, reviewer) travel as environment variables, because Voila has no
  papermill-style parameters: the kernel inherits the server's environment;
* **the token travels in the environment too** (:data:`ENV_TOKEN`), never on a command line
  (``ps`` shows command lines to every local user) and never in the log: the server process
  takes it out of its environment before any kernel starts, and the URL printed for the user
  leaves it out.

The browser may only send comm (widget) and kernel-info/shutdown messages: Voila refuses
``execute_request`` (tested in ``tests/test_serve.py``). Widget values can still be set by
any client, so the apps validate every input on the server.

How a caller (the CLI, or a multi-user front end) passes settings: ``host``, ``port``,
``max_kernels``, culling and the file allow-list become Voila options on the server's command
line (:func:`voila_command`); the token and the app's parameters become environment variables
of the server process (:func:`start_notebook_server`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fracture_qi.errors import ConfigError

logger = logging.getLogger(__name__)

#: environment variable naming the data_manifest.yaml an app should open
ENV_MANIFEST = "FRACTURE_QI_MANIFEST"
#: environment variable naming the reviewer (nurse) the adjudication app records
ENV_REVIEWER = "FRACTURE_QI_REVIEWER"
#: environment variable naming the audit (worklist) the adjudication app works on
ENV_AUDIT = "FRACTURE_QI_AUDIT"
#: environment variables the team server (``fracture-qi serve``) sets for each kernel: the
#: signed-in user's role, the browser's address and the server, for the app and the access log
ENV_ROLE = "FRACTURE_QI_ROLE"
ENV_CLIENT = "FRACTURE_QI_CLIENT"
ENV_VIA = "FRACTURE_QI_VIA"
#: environment variable holding the access token: read by ``fracture-qi adjudicate/dashboard``
#: (default of ``--token``) and the way the launcher hands the token to the server process,
#: which removes it from its environment before kernels start
ENV_TOKEN = "FRACTURE_QI_TOKEN"

#: seconds a kernel with no browser connected may sit idle before it is shut down
DEFAULT_CULL_IDLE_TIMEOUT_S = 600
#: how often (seconds) Voila looks for idle kernels
DEFAULT_CULL_INTERVAL_S = 60
#: the port the apps use when none is given (Voila's own default)
DEFAULT_PORT = 8866
#: environment variable naming the ``fracture-qi`` process that supervises a server: the
#: server stops itself (and its kernels) when that process is gone, even after ``kill -9``
ENV_PARENT_PID = "FRACTURE_QI_PARENT_PID"
#: how a server talks to its kernels: Unix sockets in the server's private (0700) connection
#: folder where the system has them. Over TCP, kernels started together could be handed the
#: same free port by jupyter_client and die ("Address already in use": one in 34 page loads
#: of the team-server load test), and any local user could reach the kernels' ports
KERNEL_TRANSPORT_ARGS: tuple[str, ...] = (
    ("--KernelManager.transport=ipc",) if os.name == "posix" else ())
#: seconds a server gets to shut its kernels down after SIGTERM before it and they are killed
STOP_TIMEOUT_S = 20.0
#: seconds a server may take to start listening before the launcher gives up on it
START_TIMEOUT_S = 120.0
#: kernels (open pages) one server runs at once by default. A page of the adjudication app
#: holds about 200 MB (12 kernels took 2.5 GB in the issue-21 probe), so 8 stay under 2 GB
#: while leaving a nurse or a QI lead several tabs. Sites change it with --max-kernels.
DEFAULT_MAX_KERNELS = 8


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
            "trust's reverse proxy, or give a long random token in a chmod-600 file "
            "(--token-file PATH) or in $FRACTURE_QI_TOKEN "
            "(python -c 'import secrets;print(secrets.token_urlsafe(32))')"
        )
    if len(token) < 16:
        raise ConfigError(
            f"the token for {host} is {len(token)} characters; at least 16 are needed. "
            "Fix: use python -c 'import secrets;print(secrets.token_urlsafe(32))'"
        )


def read_token_file(path: str | Path) -> str:
    """The access token kept in *path*, which only its owner may read.

    Raises
    ------
    ConfigError
        When the file is missing, empty, or readable by other users.
    """
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"cannot read the token file {p}: {e.strerror}. Fix: create it with "
                          "the token on one line and chmod 600 it") from e
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(f"the token file {p} can be read by other users (mode "
                          f"{mode & 0o777:04o}). Fix: chmod 600 {p}")
    if not text:
        raise ConfigError(f"the token file {p} is empty. Fix: put the token in it on one line")
    return text


def add_server_arguments(parser: Any, *, max_kernels: int = DEFAULT_MAX_KERNELS) -> None:
    """Add ``--host --token-file --token --max-kernels`` to a command that serves an app."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any other needs a token)")
    parser.add_argument("--token-file", default=None, metavar="PATH",
                        help="file holding the access token (chmod 600); preferred for a "
                             f"non-local bind. Or set ${ENV_TOKEN}")
    parser.add_argument("--token", default=None,
                        help=f"access token (default: ${ENV_TOKEN}). Avoid: a command-line "
                             "argument is visible to every user of this computer in the "
                             "process list; use --token-file or the environment variable")
    parser.add_argument("--max-kernels", type=int, default=max_kernels, metavar="N",
                        help=f"most pages (kernels, ~200 MB each) open at once (default "
                             f"{max_kernels})")


def token_from_args(args: Any) -> str | None:
    """The access token from ``--token-file``, ``--token`` or :data:`ENV_TOKEN` (in that order)."""
    if getattr(args, "token_file", None):
        return read_token_file(args.token_file)
    if getattr(args, "token", None):
        logger.warning("--token on the command line is visible to every user of this computer "
                       "(ps); use --token-file PATH or the %s environment variable", ENV_TOKEN)
        return str(args.token)
    return os.environ.get(ENV_TOKEN) or None


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
    max_kernels: int = DEFAULT_MAX_KERNELS,
    file_allowlist: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Build the Voila server's command line with the suite's safe settings.

    Parameters
    ----------
    notebook
        The ``.ipynb`` to serve.
    port, host
        Where to listen. Non-loopback hosts need *token* (see :func:`check_bind`).
    token
        The access token, only checked here (:func:`check_bind`): it is never put on the
        command line; :func:`start_notebook_server` passes it in :data:`ENV_TOKEN`.
    cull_idle_timeout, cull_interval
        Seconds before an idle kernel with no browser attached is shut down, and how often
        to look.
    max_kernels
        Most kernels (open pages) the server runs at once (at least 1).
    file_allowlist
        Regular expressions of files under the notebook's folder that ``/voila/files/`` may
        serve; empty (the default) serves none.
    extra_args
        Further Voila options, appended last (they win over the defaults).

    Returns
    -------
    list of str
        ``[python, -m, fracture_qi.voila_guard, NOTEBOOK, ...]`` ready for :mod:`subprocess`;
        the arguments after the module are Voila's own.

    Raises
    ------
    ConfigError
        When the notebook does not exist, the bind is unsafe or *max_kernels* is below 1.

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
    if int(max_kernels) < 1:
        raise ConfigError(f"max_kernels is {max_kernels}; give 1 or more (--max-kernels)")
    return [
        sys.executable,
        "-m",
        # our launcher: Voila with bounded websocket parsing, scrubbed errors, a kernel cap
        # and hardened static-file handlers (see fracture_qi.voila_guard)
        "fracture_qi.voila_guard",
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
        f"--CappedKernelManager.max_kernels={int(max_kernels)}",
        *KERNEL_TRANSPORT_ARGS,
        # an empty list cannot be written as a command-line list; a pattern that matches no
        # path (a NUL byte never occurs in a URL path) keeps /voila/files/ closed
        *(
            [f"--VoilaConfiguration.file_allowlist={p}" for p in file_allowlist]
            if file_allowlist
            else ["--VoilaConfiguration.file_allowlist=\\x00"]
        ),
        "--VoilaConfiguration.file_denylist=.*\\.(ipynb|py|db|yaml|yml|json|csv|sqlite)",
        *extra_args,
    ]


def app_url(host: str, port: int, token: str | None = None) -> str:
    """The URL a browser opens for a server started with these settings.

    Give *token* only to hand the URL to a browser in memory: never print or log it (see
    :func:`display_url`).

    Examples
    --------
    >>> app_url("127.0.0.1", 8866)
    'http://127.0.0.1:8866/'
    >>> app_url("::1", 8866, "abc")
    'http://[::1]:8866/?token=abc'
    """
    h = f"[{host}]" if ":" in host else host
    return f"http://{h}:{port}/" + (f"?token={token}" if token else "")


def display_url(host: str, port: int, token: str | None = None) -> str:
    """The URL to print for the user: never the token itself.

    Examples
    --------
    >>> display_url("10.0.0.5", 8866, "s3cret-token-value")
    'http://10.0.0.5:8866/ (enter the access token when asked, or add ?token=<your token>)'
    """
    url = app_url(host, port)
    return url + (" (enter the access token when asked, or add ?token=<your token>)"
                  if token else "")


def server_env(env: Mapping[str, str] | None = None, token: str | None = None) -> dict[str, str]:
    """The environment of a Voila server process: this one's, *env*, and the token.

    The token goes in :data:`ENV_TOKEN` (the server takes it out before kernels start); without
    one, an :data:`ENV_TOKEN` inherited from this process is removed so that no server gets a
    token it was not given.
    """
    full = dict(os.environ)
    full.update(env or {})
    full.pop(ENV_TOKEN, None)
    if token:
        full[ENV_TOKEN] = token
    # the kernel must import this very installation of fracture_qi, whatever the cwd
    full.setdefault("PYTHONNOUSERSITE", "1")
    return full


def start_notebook_server(
    notebook: str | Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    cull_idle_timeout: int = DEFAULT_CULL_IDLE_TIMEOUT_S,
    cull_interval: int = DEFAULT_CULL_INTERVAL_S,
    max_kernels: int = DEFAULT_MAX_KERNELS,
    file_allowlist: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    stdout: int | object | None = None,
    stderr: int | object | None = None,
    start_new_session: bool = False,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start Voila in the background; return the process and the URL to open.

    Parameters are those of :func:`voila_command`; in addition *env* holds variables
    added to this process's environment for the server and its kernels (e.g.
    ``{ENV_MANIFEST: "/path/data_manifest.yaml", ENV_REVIEWER: "nurse-a"}``), and
    *stdout*/*stderr*/*start_new_session* go to :class:`subprocess.Popen`. ``port=None``
    picks a free port. The token reaches the server in its environment (:func:`server_env`).

    Returns
    -------
    (subprocess.Popen, str)
        The server process (stop it with ``terminate()``) and its URL, with the token in it
        when there is one: for a browser, not for printing (use :func:`display_url`).
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
        max_kernels=max_kernels,
        file_allowlist=file_allowlist,
        extra_args=extra_args,
    )
    logger.info("starting Voila: %s", " ".join(shlex.quote(c) for c in cmd))
    proc = subprocess.Popen(cmd, env=server_env(env, token), stdout=stdout, stderr=stderr,
                            start_new_session=start_new_session)
    return proc, app_url(host, port, token)


class PortInUseError(ConfigError):
    """Raised when the port a server should listen on is taken (exit status 2)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        super().__init__(
            f"port {port} in use: another fracture-qi server? Fix: stop that server, or give "
            "another port with --port")


def port_in_use(host: str, port: int) -> bool:
    """Whether *port* on *host* cannot be bound now (as the server would bind it).

    ``SO_REUSEADDR`` is set as tornado sets it, so a port left in TIME_WAIT by a server that
    just stopped counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if os.name == "posix":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError:
            return True
    return False


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken, before anything is started or printed.

    Raises
    ------
    PortInUseError
        ``port P in use: another fracture-qi server?`` with the fix.
    """
    if port_in_use(host, port):
        raise PortInUseError(host, port)


def _listening(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = "::1" if family == socket.AF_INET6 and not is_loopback(host) else host
    if not is_loopback(host) and family == socket.AF_INET:
        probe = "127.0.0.1" if host in ("0.0.0.0", "") else host
    try:
        with socket.create_connection((probe.strip("[]"), int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _descendants(pid: int) -> list[Any]:
    """The processes started by *pid* (its kernels), as :mod:`psutil` handles."""
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def stop_server(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> int:
    """Stop a server and every process it started; return its exit status.

    SIGTERM first (Voila shuts its kernels down cleanly), SIGKILL after *timeout*; then any
    process it started that is still alive (a kernel it could not stop) is ended too, so
    nothing is left holding the port or a patient's data in memory.
    """
    import psutil

    kids = _descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("the server did not stop within %.0f s: killing it and its kernels",
                           timeout)
            kids += _descendants(proc.pid)
            proc.kill()
            proc.wait(timeout=10)
    left = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    for k in left:
        with contextlib.suppress(psutil.Error):
            k.terminate()
    _, alive = psutil.wait_procs(left, timeout=3)
    for k in alive:
        with contextlib.suppress(psutil.Error):
            k.kill()
    return proc.returncode if proc.returncode is not None else 0


def supervise(
    proc: subprocess.Popen[bytes],
    *,
    host: str,
    port: int,
    announce: Callable[[], None] | None = None,
    start_timeout: float = START_TIMEOUT_S,
    stop_timeout: float = STOP_TIMEOUT_S,
) -> int:
    """Wait until a server listens, *announce* it, then keep it until Ctrl-C or SIGTERM.

    The address is announced only once the server listens on *host*:*port* (a server that
    fails to start never prints a URL). Ctrl-C or SIGTERM stops the server and everything
    it started (:func:`stop_server`); a second Ctrl-C kills them at once. The server itself
    watches this process (:data:`ENV_PARENT_PID`) and stops when it is gone, ``kill -9``
    included.

    Returns
    -------
    int
        0 after Ctrl-C/SIGTERM; the server's status if it ended by itself (2 if it never
        listened).
    """
    state = {"stopping": False}

    def on_signal(signum: int, _frame: Any) -> None:
        if state["stopping"]:  # a second Ctrl-C: no more waiting
            with contextlib.suppress(OSError):
                for k in _descendants(proc.pid):
                    k.kill()
                proc.kill()
            return
        state["stopping"] = True
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = time.monotonic() + start_timeout
        while not _listening(host, port):
            if proc.poll() is not None:
                raise ConfigError(
                    f"the server for port {port} stopped before it listened (exit status "
                    f"{proc.returncode}); the reason is in its log above")
            if time.monotonic() > deadline:
                stop_server(proc, stop_timeout)
                raise ConfigError(f"the server did not listen on port {port} within "
                                  f"{start_timeout:.0f} s. Fix: look at its log above")
            time.sleep(0.2)
        if announce is not None:
            announce()
        return proc.wait()
    except KeyboardInterrupt:
        stop_server(proc, stop_timeout)
        return 0
    finally:
        if proc.poll() is None:  # an error above: never leave the server behind
            stop_server(proc, stop_timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    max_kernels: int = DEFAULT_MAX_KERNELS,
    extra_args: Sequence[str] = (),
) -> int:
    """Serve *notebook* with Voila until interrupted (blocking); return Voila's exit status.

    This is what ``fracture-qi adjudicate`` and ``fracture-qi dashboard`` call. Ctrl-C or
    SIGTERM (a service manager stopping it) stops the server and its kernels too.

    Parameters
    ----------
    notebook
        The ``.ipynb`` to serve (normally one packaged under ``fracture_qi/notebooks``).
    port
        Port to listen on; ``None`` means :data:`DEFAULT_PORT`.
    host
        Address to bind; ``127.0.0.1`` unless the site puts a token on it.
    token
        Access token; required for a non-loopback *host*. Never printed.
    env
        Parameters for the notebook as environment variables (see :data:`ENV_MANIFEST`).
    open_browser
        Open the app in this machine's web browser once the server is up (without the token
        in the URL: the browser's command line would show it; the page asks for it).
    cull_idle_timeout, cull_interval
        Kernel culling, see :func:`voila_command`.
    max_kernels
        Most kernels (open pages) at once, see :func:`voila_command`.
    extra_args
        Further Voila options (e.g. :data:`PREHEAT_ARGS`), see :func:`voila_command`.

    Returns
    -------
    int
        The server's exit status (0 after Ctrl-C or SIGTERM).

    Raises
    ------
    ConfigError
        Unsafe bind, missing notebook, a server that stopped before it listened.
    PortInUseError
        The port is taken (checked before anything starts or is printed).
    """
    port = port or DEFAULT_PORT
    check_port(host, port)  # before anything starts or any address is printed
    proc, _ = start_notebook_server(
        notebook,
        port=port,
        host=host,
        token=token,
        env={**(env or {}), ENV_PARENT_PID: str(os.getpid())},
        cull_idle_timeout=cull_idle_timeout,
        cull_interval=cull_interval,
        max_kernels=max_kernels,
        extra_args=extra_args,
        start_new_session=True,  # Ctrl-C reaches this process, which stops the server
    )

    def announce() -> None:
        logger.warning("serving %s at %s (Ctrl-C to stop)", Path(notebook).name,
                       display_url(host, port, token))
        if open_browser:
            import webbrowser  # only for interactive use

            webbrowser.open(app_url(host, port))

    return supervise(proc, host=host, port=port, announce=announce)


if __name__ == "__main__":  # the launcher moved to fracture_qi.voila_guard; kept for old scripts
    from fracture_qi.voila_guard import launch

    launch(sys.argv[1:])
