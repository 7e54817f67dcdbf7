"""A small kernel-websocket client for probing a Voila server as an attacker would.

It speaks both of jupyter_server's protocols: the v1 binary protocol
(``v1.kernel.websocket.jupyter.org``, what Voila's own page uses) and the legacy one (no
subprotocol: JSON text, and binary frames for messages with buffers). It also measures the
memory of a server's process tree (``psutil``), for probes that must not grow it.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

V1 = "v1.kernel.websocket.jupyter.org"


def kernel_id_of(page: bytes) -> str:
    """The kernel id a Voila page embeds."""
    m = re.search(rb'"kernelId": "([0-9a-f-]{36})"', page)
    assert m, "no kernel id in the page"
    return m.group(1).decode()


def header(msg_type: str) -> dict[str, Any]:
    return {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "probe",
            "session": uuid.uuid4().hex, "date": "", "version": "5.3"}


def pack_v1(channel: str, msg_type: str, content: Any, metadata: Any = None,
            buffers: tuple[bytes, ...] = ()) -> bytes:
    """A v1 frame: offset count, offsets (little-endian 64-bit), channel, parts."""
    parts = [json.dumps(x).encode() for x in (header(msg_type), {}, metadata or {}, content)]
    parts += list(buffers)
    ch = channel.encode()
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(ch))
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    return (len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
            + ch + b"".join(parts))


def unpack_any(frame: bytes | str, v1: bool) -> dict[str, Any]:
    """A received message as a dict (header, content...), whichever protocol carried it."""
    if isinstance(frame, str):
        return json.loads(frame)
    if v1:
        n = int.from_bytes(frame[:8], "little")
        offs = [int.from_bytes(frame[8 * (i + 1): 8 * (i + 2)], "little") for i in range(n)]
        parts = [frame[offs[i]: offs[i + 1]] for i in range(1, n - 1)]
        h, p, m, c = (json.loads(x) for x in parts[:4])
        return {"channel": frame[offs[0]: offs[1]].decode(), "header": h, "parent_header": p,
                "metadata": m, "content": c}
    nbufs = int.from_bytes(frame[:4], "big")
    offs = [int.from_bytes(frame[4 * (i + 1): 4 * (i + 2)], "big") for i in range(nbufs)]
    end = offs[1] if nbufs > 1 else len(frame)
    return json.loads(frame[offs[0]: end])


class KernelSocket:
    """A websocket to ``/api/kernels/ID/channels`` (v1 when *v1*, else legacy)."""

    def __init__(self, host: str, port: int, kernel_id: str, *, v1: bool = True,
                 token: str | None = None, timeout: float = 30) -> None:
        import websocket  # websocket-client

        query = f"?token={token}" if token else ""
        self.v1 = v1
        self.ws = websocket.create_connection(
            f"ws://{host}:{port}/api/kernels/{kernel_id}/channels{query}", timeout=timeout,
            subprotocols=[V1] if v1 else None)

    def send(self, msg_type: str, content: Any, metadata: Any = None) -> None:
        if self.v1:
            self.ws.send_binary(pack_v1("shell", msg_type, content, metadata))
        else:
            self.ws.send(json.dumps({"header": header(msg_type), "parent_header": {},
                                     "metadata": metadata or {}, "content": content,
                                     "channel": "shell", "buffers": []}))

    def send_raw(self, frame: bytes | str) -> None:
        if isinstance(frame, bytes):
            self.ws.send_binary(frame)
        else:
            self.ws.send(frame)

    def receive(self, seconds: float) -> list[tuple[bytes | str, dict[str, Any] | None]]:
        """Every frame received in the next *seconds*: (raw, parsed or None)."""
        import websocket

        out: list[tuple[bytes | str, dict[str, Any] | None]] = []
        end = time.monotonic() + seconds
        self.ws.settimeout(0.5)
        while time.monotonic() < end:
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except websocket.WebSocketConnectionClosedException:
                break
            try:
                out.append((raw, unpack_any(raw, self.v1)))
            except Exception:  # noqa: BLE001 - keep what cannot be parsed, raw
                out.append((raw, None))
        return out

    def close(self) -> None:
        self.ws.close()


def open_widget_control(sock: KernelSocket) -> None:
    """What a widget manager sends first: open the control comm and ask for every state."""
    cid = uuid.uuid4().hex
    sock.send("comm_open", {"comm_id": cid, "target_name": "jupyter.widget.control",
                            "data": {}}, {"version": "1.0.0"})
    sock.send("comm_msg", {"comm_id": cid, "data": {"method": "request_states"}},
              {"version": "1.0.0"})


def tree_rss_mb(pid: int) -> float:
    """Resident memory of *pid* and all its descendants (MiB); 0 once it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


@contextmanager
def rss_sampler(pid: int, every_s: float = 0.25) -> Iterator[list[float]]:
    """Sample :func:`tree_rss_mb` in a thread while the block runs; yields the sample list."""
    import threading

    samples: list[float] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            samples.append(tree_rss_mb(pid))
            stop.wait(every_s)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield samples
    finally:
        stop.set()
        t.join(timeout=5)
