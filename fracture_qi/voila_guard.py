"""Inside the Voila server process: the suite's hardening of Voila 0.5 and jupyter_server 2.

:mod:`fracture_qi.serve` (the launcher, in the ``fracture-qi`` process) starts Voila as
``python -m fracture_qi.voila_guard NOTEBOOK [Voila options]``; :func:`launch` then applies
everything here before Voila starts listening, so every app the suite serves gets it:

* **Websocket frames are parsed with bounds.** Voila 0.5.13 reads the header of every binary
  message it sends as if it were in the v1 kernel protocol, even on a connection that speaks
  the legacy protocol (no websocket subprotocol); a legacy frame's first bytes then read as
  an offset count near 10^17 and the server builds a list of that length until memory runs
  out (issue 21). jupyter_server parses incoming frames the same trusting way. Here the
  header is read by the connection's own protocol (:func:`outgoing_header`), and an incoming
  frame is checked (:func:`frame_problem`) before jupyter_server sees it: a count, offsets
  or JSON that do not fit the frame are refused with a one-line warning in the log.
* **No traceback or server path reaches the browser.** A kernel answers a malformed widget
  message with an ``error`` message (traceback and file paths) or writes one to stderr;
  :class:`GuardedWebsocketConnection` replaces the first with a one-line message carrying a
  reference, drops the second, and logs both in full (with the reference) for IT.
* **Kernels are capped per server** (:class:`CappedKernelManager`): each page load starts a
  kernel (about 200 MB for the adjudication app); past ``max_kernels`` the server first shuts
  down kernels no browser is connected to and that have been idle a while (abandoned page
  loads), then answers ``503`` with a plain message instead of starting more.
* **Page errors speak to the nurse**: Voila's "run Voila with --show_tracebacks=True"
  instruction is replaced by :data:`PAGE_ERROR_TEXT`.
* **The token never appears on a command line**: the launcher passes it in the environment
  variable :data:`fracture_qi.serve.ENV_TOKEN`; :func:`launch` takes it out of the environment
  (so kernels do not inherit it) and hands it to Voila's configuration in memory.
* Static file handlers answer ``404`` to malformed paths, and ``/voila/files/`` asks for the
  token when one is set (:func:`harden_static_handlers`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Sequence
from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets import Integer, TraitError
from traitlets.config import Config

from fracture_qi.serve import DEFAULT_MAX_KERNELS, ENV_PARENT_PID, ENV_TOKEN

log = logging.getLogger(__name__)

#: the kernel websocket subprotocol of jupyter_server 2 (binary frames with offsets)
KERNEL_WS_V1 = "v1.kernel.websocket.jupyter.org"
#: most parts (channel, header, parent, metadata, content, buffers) a frame may declare;
#: widget messages carry a handful of buffers, never hundreds
MAX_FRAME_PARTS = 1024
#: seconds a kernel must have been idle, with no browser connected, before a new page may
#: take its place when the server is at its kernel limit (a page load runs its notebook in
#: 5-60 s and its browser connects right after; one idle that long with nobody connected was
#: abandoned)
RECLAIM_IDLE_S = 60
#: seconds a kernel no browser ever connected to may sit idle before it is shut down: a page
#: fetched without running its JavaScript (curl, a health check, a link preview) otherwise
#: left a 115-165 MB kernel for the whole cull_idle_timeout (10 minutes). A browser connects
#: within seconds of the page arriving; the check runs at every culler pass (cull_interval)
UNCONNECTED_REAP_S = 60
#: what the browser shows in place of an error message from the kernel (``{ref}``: reference)
PUBLIC_ERROR_TEXT = (
    "Something went wrong on the server (reference {ref}). Nothing you saved was lost. "
    "If it happens again, tell IT this reference: the details are in the server log."
)
#: what a page shows when a cell of the app's notebook failed (replaces Voila's advice to
#: run Voila with --show_tracebacks=True, which means nothing to a nurse)
PAGE_ERROR_TEXT = (
    "This part of the page could not be shown because of an error on the server. "
    "Reload the page; if it happens again, tell IT (the details are in the server log)."
)
#: shown when the page took longer than the server allows
PAGE_TIMEOUT_TEXT = (
    "This part of the page took too long to prepare. Reload the page; if it happens again, "
    "tell IT."
)
#: the 503 answer when the server is at its kernel limit: its reason line is what the page
#: shows (Voila's error page shows only the status line)
BUSY_REASON = ("Too many open pages: close app tabs you no longer use, or wait a minute and "
               "reload")
#: logged with it, for IT
BUSY_LOG = ("%d kernels alive or starting, the limit (CappedKernelManager.max_kernels, "
            "fracture-qi adjudicate/dashboard --max-kernels)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TOKEN_PARAM = re.compile(r"(^|[?&])token=[^&#\s]*")


# --------------------------------------------------------------------------------------------
# frame parsing with bounds (both kernel websocket protocols)
# --------------------------------------------------------------------------------------------
def _offsets_ok(offsets: list[int], start: int, size: int) -> bool:
    if offsets[0] < start or offsets[-1] > size:
        return False
    return all(a <= b for a, b in zip(offsets, offsets[1:]))


def v1_parts(frame: bytes) -> tuple[str, list[bytes]] | None:
    """``(channel, [header, parent, metadata, content, *buffers])`` of a v1 frame.

    ``None`` when the frame does not hold what its offsets declare. Never allocates more
    than the frame's own size (the offset count is checked against the frame length first).

    Examples
    --------
    >>> from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1
    >>> v1_parts(serialize_msg_to_ws_v1([b"{}", b"{}", b"{}", b"{}"], "shell"))[0]
    'shell'
    >>> v1_parts((10**17).to_bytes(8, "little") + b"x" * 64) is None
    True
    """
    size = len(frame)
    if size < 8:
        return None
    count = int.from_bytes(frame[:8], "little")
    if count < 3 or count > MAX_FRAME_PARTS or 8 * (count + 1) > size:
        return None
    offsets = [int.from_bytes(frame[8 * (i + 1): 8 * (i + 2)], "little") for i in range(count)]
    if not _offsets_ok(offsets, 8 * (count + 1), size):
        return None
    try:
        channel = frame[offsets[0]: offsets[1]].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return channel, [frame[offsets[i]: offsets[i + 1]] for i in range(1, count - 1)]


def legacy_binary_message(frame: bytes) -> dict[str, Any] | None:
    """The JSON message of a legacy-protocol binary frame (without its buffers), or ``None``.

    Legacy binary frames start with the number of parts as a big-endian 32-bit integer, then
    one 32-bit offset per part; the first part is the message as JSON.

    Examples
    --------
    >>> from jupyter_server.services.kernels.connection.base import serialize_binary_message
    >>> m = {"header": {"msg_type": "comm_msg"}, "parent_header": {}, "metadata": {},
    ...      "content": {}, "buffers": [b"png"]}
    >>> legacy_binary_message(serialize_binary_message(m))["header"]
    {'msg_type': 'comm_msg'}
    >>> legacy_binary_message(b"\\xff\\xff\\xff\\x7f" + b"\\x00" * 16) is None
    True
    """
    size = len(frame)
    if size < 8:
        return None
    count = int.from_bytes(frame[:4], "big", signed=True)
    if count < 1 or count > MAX_FRAME_PARTS or 4 * (count + 1) > size:
        return None
    offsets = [int.from_bytes(frame[4 * (i + 1): 4 * (i + 2)], "big") for i in range(count)]
    if not _offsets_ok(offsets, 4 * (count + 1), size):
        return None
    end = offsets[1] if count > 1 else size
    return _json_object(frame[offsets[0]: end])


def _json_object(data: bytes | str) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def outgoing_header(message: Any, protocol: str | None) -> dict[str, Any] | None:
    """The header of a message the server is about to send, read by the connection's protocol.

    Parameters
    ----------
    message
        What jupyter_server hands to ``write_message``: v1 bytes, legacy binary bytes,
        legacy JSON text, or a dict.
    protocol
        The websocket's selected subprotocol (``None`` for the legacy protocol).
    """
    if isinstance(message, dict):
        header = message.get("header")
    elif isinstance(message, (bytes, bytearray, memoryview)):
        frame = bytes(message)
        if protocol == KERNEL_WS_V1:
            parts = v1_parts(frame)
            header = _json_object(parts[1][0]) if parts and parts[1] else None
        else:
            msg = legacy_binary_message(frame)
            header = msg.get("header") if msg else None
    elif isinstance(message, str):
        msg = _json_object(message)
        header = msg.get("header") if msg else None
    else:
        header = None
    return header if isinstance(header, dict) else None


def frame_problem(message: Any, protocol: str | None) -> str | None:
    """Why an incoming websocket message cannot be a kernel message (``None`` if it can).

    Checks the structure only (framing, JSON, a header with a ``msg_type``); what the message
    asks for is the kernel's and the app's business.

    Examples
    --------
    >>> frame_problem((2**62).to_bytes(8, "little") + bytes(40), KERNEL_WS_V1)
    'the frame does not hold the parts its offsets declare'
    >>> frame_problem('{"header": {"msg_type": "comm_msg"}, "content": {}}', None) is None
    True
    """
    if protocol == KERNEL_WS_V1:
        if not isinstance(message, (bytes, bytearray)):
            return "a text frame on the v1 protocol, which is binary only"
        parts = v1_parts(bytes(message))
        if parts is None:
            return "the frame does not hold the parts its offsets declare"
        if len(parts[1]) < 4:
            return "the frame lacks header, parent header, metadata or content"
        header = _json_object(parts[1][0])
        content = _json_object(parts[1][3])
        if content is None:
            return "the content is not a JSON object"
    else:
        if isinstance(message, (bytes, bytearray)):
            msg = legacy_binary_message(bytes(message))
            if msg is None:
                return "the binary frame does not hold the parts its offsets declare"
        else:
            msg = _json_object(message)
            if msg is None:
                return "the text frame is not a JSON object"
        header = msg.get("header")
        if not isinstance(msg.get("content", {}), dict):
            return "the content is not a JSON object"
    if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
        return "the header is not a JSON object with a msg_type"
    return None


# --------------------------------------------------------------------------------------------
# the kernel websocket: incoming checks, outgoing scrubbing
# --------------------------------------------------------------------------------------------
def _reference() -> str:
    return secrets.token_hex(3).upper()


def _plain(text: Any, limit: int = 20000) -> str:
    return _ANSI.sub("", str(text))[:limit]


class GuardedWebsocketConnection(ZMQChannelsWebsocketConnection):  # type: ignore[misc]
    """The kernel websocket connection with bounded parsing and no tracebacks to the browser.

    Configured as ``Voila.kernel_websocket_connection_class`` by :func:`voila_config`.
    """

    def handle_incoming_message(self, incoming_msg: Any) -> None:
        """Refuse a malformed frame with a one-line warning; pass the rest to jupyter_server."""
        problem = frame_problem(incoming_msg, self.subprotocol)
        if problem is not None:
            handler = getattr(self, "websocket_handler", None)
            who = getattr(getattr(handler, "request", None), "remote_ip", "?")
            self.log.warning("kernel %s: refused a websocket message from %s (%s protocol): %s",
                             self.kernel_id, who, "v1" if self.subprotocol else "legacy",
                             problem)
            return
        super().handle_incoming_message(incoming_msg)

    def handle_outgoing_message(self, stream: Any, outgoing_msg: list[Any]) -> None:
        """Scrub kernel errors and stderr before they are sent to the browser."""
        try:
            scrubbed = self._scrub(outgoing_msg)
        except Exception:  # noqa: BLE001 - a message we cannot read is not sent either
            self.log.warning("kernel %s: dropped a message that could not be checked",
                             self.kernel_id, exc_info=True)
            return
        if scrubbed is not None:
            super().handle_outgoing_message(stream, scrubbed)

    def _scrub(self, msg_list: list[Any]) -> list[Any] | None:
        """*msg_list* with error details replaced; ``None`` for stderr (logged instead)."""
        from jupyter_client.session import DELIM

        # jupyter_server receives with copy=True: the frames are bytes, read without copying
        idents, rest = self.session.feed_identities(msg_list)
        if len(rest) < 5:
            return msg_list
        header = json.loads(rest[1])
        msg_type = str(header.get("msg_type", ""))
        if msg_type not in ("error", "stream") and not msg_type.endswith("_reply"):
            return msg_list
        content = json.loads(rest[4])
        if not isinstance(content, dict):
            return msg_list
        if msg_type == "stream":
            if content.get("name") != "stderr":
                return msg_list
            self.log.warning("kernel %s wrote to stderr (not sent to the browser): %s",
                             self.kernel_id, _plain(content.get("text", ""), 4000).rstrip())
            return None
        if msg_type != "error" and "traceback" not in content and "evalue" not in content:
            return msg_list
        ref = _reference()
        self.log.warning(
            "kernel %s: error sent to the browser as reference %s: %s: %s\n%s", self.kernel_id,
            ref, _plain(content.get("ename", "")), _plain(content.get("evalue", ""), 2000),
            "\n".join(_plain(t) for t in content.get("traceback") or []))
        public = PUBLIC_ERROR_TEXT.format(ref=ref)
        content.update({"ename": "Error", "evalue": public, "traceback": [public]})
        new_content = json.dumps(content).encode("utf-8")
        signature = self.session.sign([rest[1], rest[2], rest[3], new_content])
        return [*idents, DELIM, signature, rest[1], rest[2], rest[3], new_content, *rest[5:]]


def patch_voila_write_message() -> None:
    """Make Voila's websocket handler read outgoing headers by the connection's protocol."""
    from voila.tornado import kernel_websocket_handler as kwh

    cls = kwh.VoilaKernelWebsocketHandler
    if getattr(cls, "_fqi_guarded", False):
        return

    def write_message(self, message, binary=False):  # type: ignore[no-untyped-def]
        header = outgoing_header(message, self.selected_subprotocol)
        if header and header.get("msg_type") == "execute_input":
            return None  # Voila never shows the notebook's code
        return super(cls, self).write_message(message, binary)

    cls.write_message = write_message  # type: ignore[method-assign]
    cls._fqi_guarded = True  # type: ignore[attr-defined]


def scrub_token(value: Any) -> Any:
    """*value* with any ``token=...`` query parameter blanked (for the kernel's environment).

    Examples
    --------
    >>> scrub_token("http://h:1/?a=1&token=s3cret&b=2")
    'http://h:1/?a=1&token=...&b=2'
    """
    return _TOKEN_PARAM.sub(r"\1token=...", value) if isinstance(value, str) else value


# --------------------------------------------------------------------------------------------
# kernels: a cap per server
# --------------------------------------------------------------------------------------------
def last_activity(kernel: Any) -> Any:
    """A kernel's ``last_activity`` (a datetime), or None while it is still starting: the
    trait is set once the kernel is up, and reading it before raises ``TraitError``, which
    jupyter_server's own culler does not expect (``hasattr`` lets it through; the culler then
    logs a traceback for a kernel that merely started during its pass)."""
    try:
        return getattr(kernel, "last_activity", None)
    except TraitError:
        return None


class CappedKernelManager(AsyncMappingKernelManager):  # type: ignore[misc]
    """Voila's kernel manager with a limit on kernels alive (and starting) at once.

    Configured as ``VoilaConfiguration.multi_kernel_manager_class`` by :func:`voila_config`;
    the limit is ``--CappedKernelManager.max_kernels=N`` (``fracture-qi adjudicate/dashboard
    --max-kernels N``).
    """

    max_kernels = Integer(
        DEFAULT_MAX_KERNELS, config=True,
        help="Most kernels (open pages, pre-heated ones included) this server runs at once; "
             "past it, idle kernels no browser is connected to are shut down, else a page "
             "load is answered 503.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fqi_starting = 0
        self._fqi_connected: set[str] = set()  # kernels a browser has connected to

    def notify_connect(self, kernel_id: str) -> None:
        """Remember that a browser connected (see :meth:`cull_kernels`)."""
        super().notify_connect(kernel_id)
        self._fqi_connected.add(kernel_id)

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        """Jupyter's idle check, for kernels that are up: one still starting has no activity
        to judge yet (see :func:`last_activity`)."""
        kernel = self._kernels.get(kernel_id)
        if kernel is None or (last_activity(kernel) is None
                              and getattr(kernel, "execution_state", None) != "dead"):
            return
        await super().cull_kernel_if_idle(kernel_id)

    async def cull_kernels(self) -> None:
        """Jupyter's idle culling, then shut down kernels no browser ever connected to that
        have been idle over :data:`UNCONNECTED_REAP_S` (pages fetched by curl and the like)."""
        await super().cull_kernels()
        from jupyter_server._tz import utcnow

        now = utcnow()
        for kid in list(self.list_kernel_ids()):
            if kid in self._fqi_connected or self._kernel_connections.get(kid, 0):
                continue
            idle_s = self._idle_seconds(kid, now)
            if idle_s is not None and idle_s > UNCONNECTED_REAP_S:
                self.log.info("shutting down kernel %s: no browser ever connected to it (a page "
                              "fetched without its JavaScript), idle %.0f s", kid, idle_s)
                await self.shutdown_kernel(kid)
        self._fqi_connected &= set(self.list_kernel_ids())

    async def _async_start_kernel(self, *, kernel_id: str | None = None, **kwargs: Any) -> str:
        if kernel_id is not None and kernel_id in self:
            return await super()._async_start_kernel(kernel_id=kernel_id, **kwargs)
        if len(self.list_kernel_ids()) + self._fqi_starting >= self.max_kernels:
            await self._reclaim_abandoned()
        alive = len(self.list_kernel_ids()) + self._fqi_starting
        if alive >= self.max_kernels:
            self.log.warning("refused a new kernel: " + BUSY_LOG, alive)
            raise web.HTTPError(503, "refused a new kernel: " + BUSY_LOG, alive,
                                reason=BUSY_REASON)
        env = kwargs.get("env")
        if isinstance(env, dict):  # Voila copies the request URL (token included) into it
            kwargs["env"] = {k: scrub_token(v) for k, v in env.items()}
        self._fqi_starting += 1  # counted before the first await: no two starts both pass
        try:
            return await super()._async_start_kernel(kernel_id=kernel_id, **kwargs)
        finally:
            self._fqi_starting -= 1

    start_kernel = _async_start_kernel  # type: ignore[assignment]

    def _idle_seconds(self, kid: str, now: Any) -> float | None:
        """Seconds kernel *kid* has been idle (its state ``idle``) at *now*; None when it is
        gone, busy or still starting (see :func:`last_activity`)."""
        try:
            kernel = self.get_kernel(kid)
        except KeyError:
            return None
        seen = last_activity(kernel)
        if seen is None or getattr(kernel, "execution_state", "") != "idle":
            return None
        return float((now - seen).total_seconds())

    async def _reclaim_abandoned(self) -> None:
        """Shut down the kernels of abandoned page loads (idle, nobody connected)."""
        from jupyter_server._tz import utcnow

        now = utcnow()
        for kid in list(self.list_kernel_ids()):
            idle_s = self._idle_seconds(kid, now)
            if (self._kernel_connections.get(kid, 0) == 0
                    and idle_s is not None and idle_s > RECLAIM_IDLE_S):
                self.log.info("kernel limit reached: shutting down kernel %s (no browser "
                              "connected, idle %.0f s)", kid, idle_s)
                await self.shutdown_kernel(kid)
                return


# --------------------------------------------------------------------------------------------
# static files (Voila 0.5 quirks)
# --------------------------------------------------------------------------------------------
def harden_static_handlers() -> None:
    """Make Voila's template static handler answer 404, not 500, to malformed paths.

    ``/voila/templates/../../etc/passwd`` reaches an ``assert`` in Voila 0.5's
    ``TemplateStaticFileHandler``: nothing leaks, but the request ends in a 500 and a
    logged traceback. Turning such paths into a plain 404 keeps the logs for real faults.
    Voila 0.5 also serves ``/voila/files/`` without asking for the token when one is set;
    here it asks.
    """
    from voila import static_file_handler as sfh

    cls = sfh.TemplateStaticFileHandler
    if getattr(cls, "_fqi_guarded", False):
        return
    parse_orig = cls.parse_url_path
    abs_orig = cls.get_absolute_path.__func__  # type: ignore[attr-defined]

    def parse_url_path(self, path):  # type: ignore[no-untyped-def]
        parts = path.split("/", 2)
        if len(parts) != 3 or parts[1] != "static" or ".." in path.replace("\\", "/").split("/"):
            raise web.HTTPError(404)
        return parse_orig(self, path)

    def get_absolute_path(klass, root, path):  # type: ignore[no-untyped-def]
        parts = os.path.normpath(path).split(os.path.sep, 2)
        if len(parts) != 3 or parts[1] != "static":
            raise web.HTTPError(404)
        return abs_orig(klass, root, path)

    cls.parse_url_path = parse_url_path  # type: ignore[method-assign]
    cls.get_absolute_path = classmethod(get_absolute_path)  # type: ignore[method-assign,assignment]
    cls._fqi_guarded = True  # type: ignore[attr-defined]

    files = sfh.AllowListFileHandler
    prepare_orig = files.prepare

    def prepare(self):  # type: ignore[no-untyped-def]
        idp = self.settings.get("identity_provider")
        token = getattr(idp, "token", "") or ""
        if token and not _request_has_token(self, idp, token):
            raise web.HTTPError(403)
        return prepare_orig(self)

    files.prepare = prepare  # type: ignore[method-assign]


def _request_has_token(handler: Any, idp: Any, token: str) -> bool:
    """Whether a request carries the server's token (query, header) or its login cookie."""
    import hmac

    given = handler.get_argument("token", "")
    auth = handler.request.headers.get("Authorization", "")
    if not given and auth.lower().startswith("token "):
        given = auth[6:].strip()
    if given:
        return hmac.compare_digest(given.encode(), token.encode())
    try:  # the login cookie jupyter_server sets after a token login
        return handler.get_secure_cookie(idp.get_cookie_name(handler)) is not None
    except Exception:  # noqa: BLE001 - no cookie support: only the token itself counts
        return False


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------
def voila_config(token: str | None) -> Config:
    """The in-memory Voila configuration of the suite (never on a command line).

    Parameters
    ----------
    token
        The access token, or ``None`` for none (loopback only; see
        :func:`fracture_qi.serve.check_bind`).
    """
    c = Config()
    c.Voila.kernel_websocket_connection_class = GuardedWebsocketConnection
    c.VoilaConfiguration.multi_kernel_manager_class = CappedKernelManager
    c.VoilaExecutor.cell_error_instruction = PAGE_ERROR_TEXT
    c.VoilaExecutor.cell_timeout_instruction = PAGE_TIMEOUT_TEXT
    if token:
        c.Voila.token = token
    return c


#: how often (seconds) the server checks that the ``fracture-qi`` process that started it
#: is still there
PARENT_POLL_S = 1.0
#: Linux prctl option: the signal this process gets when its parent ends
_PR_SET_PDEATHSIG = 1


def watch_parent(parent_pid: int) -> None:
    """Stop this server (SIGTERM to itself: Voila then shuts its kernels down) when the
    ``fracture-qi`` process that started it is gone.

    ``kill PID`` on the launcher stops the server through the launcher; this covers the
    launcher dying without doing so (``kill -9``, the OOM killer, a closed terminal), which
    left Voila holding the port: a nurse restarting on it got the old server, under the old
    reviewer. On Linux the kernel sends the signal at once (``PR_SET_PDEATHSIG``); a thread
    that polls the parent's pid covers the rest.
    """
    import signal
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    def poll() -> None:
        import time

        while True:
            if os.getppid() != parent_pid:
                log.warning("the fracture-qi process that started this server (pid %d) is "
                            "gone: stopping", parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(PARENT_POLL_S)

    threading.Thread(target=poll, name="fqi-parent-watch", daemon=True).start()


def launch(argv: Sequence[str]) -> None:
    """Run Voila with *argv* (its own options) and the suite's hardening.

    The token, if any, is read from (and removed from) the environment variable
    :data:`fracture_qi.serve.ENV_TOKEN`, so neither this process's command line nor the
    kernels' environment carries it. With :data:`fracture_qi.serve.ENV_PARENT_PID` set, the
    server stops when that process is gone (:func:`watch_parent`).
    """
    token = os.environ.pop(ENV_TOKEN, None) or None
    parent = os.environ.pop(ENV_PARENT_PID, "")
    if parent.isdigit():
        watch_parent(int(parent))
    harden_static_handlers()
    patch_voila_write_message()
    from voila.app import Voila

    sys.argv = ["voila", *argv]
    Voila.launch_instance(argv=list(argv), config=voila_config(token))


__all__ = [
    "BUSY_REASON",
    "KERNEL_WS_V1",
    "PAGE_ERROR_TEXT",
    "PUBLIC_ERROR_TEXT",
    "CappedKernelManager",
    "GuardedWebsocketConnection",
    "frame_problem",
    "harden_static_handlers",
    "launch",
    "legacy_binary_message",
    "outgoing_header",
    "patch_voila_write_message",
    "v1_parts",
    "voila_config",
    "watch_parent",
]


if __name__ == "__main__":
    launch(sys.argv[1:])
