"""The served apps against an attacker on the same machine (issue 21): real servers, real probes.

A ``fracture-qi adjudicate`` server with a token, over a seeded site with real DICOM, is
probed the way the issue describes: a websocket without the v1 subprotocol asking for every
widget state, frames that lie about their size, malformed widget messages; the server's
process tree must stay within a memory bound and keep answering, nothing sent to the browser
may carry a traceback or a server path, and the token must appear neither on any command line
nor in the log. A plain Voila server shows that page loads cannot start kernels without limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from fracture_qi.adjudication.worklist import AdjudicationSettings, build_worklist
from fracture_qi.serve import DEFAULT_MAX_KERNELS, ENV_TOKEN, free_port
from fracture_qi.voila_guard import BUSY_REASON
from tests.adjudication_data import make_store, seed_cases
from tests.services.kernel_ws import (
    KernelSocket,
    kernel_id_of,
    open_widget_control,
    tree_rss_mb,
)
from tests.services.voila import http_get, start_voila
from tests.test_serve import write_notebook

pytestmark = pytest.mark.slow

#: how much a probe may grow the server's process tree (MiB): a kernel answering
#: request_states with the app's images moves some tens of MB; the defect grew 40 MB/s
MEMORY_GROWTH_LIMIT_MB = 200
#: seconds the memory is watched after a probe
WATCH_S = 12
TOKEN = "probe-token-" + uuid.uuid4().hex

MANIFEST = """\
version: 1
name: security-probe
synthetic: true
database: sqlite:///fqi.db
pseudonymisation_key: env:FRACTURE_QI_KEY
adjudication: {audit_negative_rate: 0.1, double_read_rate: 0.0, lease_minutes: 30}
"""


class AdjudicateServer:
    """``fracture-qi adjudicate`` run as a user would, in its own process group.

    A probe that breaks the server stops it (:meth:`stop`), so that a defect costs one test,
    not the machine's memory; :meth:`running` starts it again for the next test.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.host = "127.0.0.1"
        self.log_path = folder / "adjudicate.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def running(self) -> AdjudicateServer:
        """This server, (re)started if it is not running and answering."""
        if self.proc is not None and self.proc.poll() is None and self.answers(timeout=5):
            return self
        self.stop()
        self.start()
        return self

    def start(self) -> None:
        self.port = free_port()
        env = {**os.environ, ENV_TOKEN: TOKEN}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fracture_qi", "adjudicate", "--manifest",
             str(self.folder / "data_manifest.yaml"), "--reviewer", "nurse.probe",
             "--port", str(self.port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_text()
            if self.answers(timeout=5):
                return
            time.sleep(0.5)
        raise AssertionError("adjudicate did not answer:\n" + self.log_text())

    def answers(self, timeout: float = 10) -> bool:
        """Whether the server answers a cheap HTTP request within *timeout* seconds."""
        try:
            status, _ = http_get(self.host, self.port, "/voila/files/__probe__", timeout=timeout)
        except OSError:
            return False
        return status < 500

    def page(self) -> bytes:
        status, body = http_get(self.host, self.port, f"/?token={TOKEN}", timeout=300)
        assert status == 200, (status, body[:500])
        return body

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> list[int]:
        import psutil

        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # kernels left behind in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._log is not None:
            self._log.close()
        self.proc = None


@pytest.fixture(scope="module")
def adjudicate(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("adjudicate-probe")
    (folder / "data_manifest.yaml").write_text(MANIFEST)
    engine = make_store(f"sqlite:///{folder / 'fqi.db'}")
    seed_cases(engine, n=2, dicom_dir=folder / "dicom", flagged=[True, True])
    build_worklist(engine, settings=AdjudicationSettings(audit_negative_rate=1.0,
                                                         double_read_rate=0.0))
    engine.dispose()
    server = AdjudicateServer(folder)
    try:
        yield server
    finally:
        server.stop()


def watch_memory(server: AdjudicateServer, before_mb: float) -> float:
    """The largest growth of the server's process tree over :data:`WATCH_S`.

    Past :data:`MEMORY_GROWTH_LIMIT_MB` the server is stopped at once (it would take the
    machine's memory) and the growth so far returned.
    """
    assert server.proc is not None
    worst = 0.0
    end = time.monotonic() + WATCH_S
    while time.monotonic() < end:
        worst = max(worst, tree_rss_mb(server.proc.pid) - before_mb)
        if worst > MEMORY_GROWTH_LIMIT_MB:
            server.stop()
            break
        time.sleep(0.25)
    return worst


# --------------------------------------------------------------------------------------------
# item 1: websocket messages cannot exhaust the server's memory
# --------------------------------------------------------------------------------------------
def test_legacy_protocol_request_states_keeps_memory_bounded(adjudicate) -> None:  # type: ignore[no-untyped-def]
    """The issue's probe: no subprotocol, comm_open to the widget control, request_states."""
    adjudicate = adjudicate.running()
    kid = kernel_id_of(adjudicate.page())
    time.sleep(2)
    before = tree_rss_mb(adjudicate.proc.pid)
    sock = KernelSocket(adjudicate.host, adjudicate.port, kid, v1=False, token=TOKEN)
    try:
        open_widget_control(sock)
        growth = watch_memory(adjudicate, before)
        assert growth < MEMORY_GROWTH_LIMIT_MB, f"the server grew {growth:.0f} MB"
        assert adjudicate.answers(timeout=10), "the server stopped answering"
        # positive control: the legacy client did get every widget's state
        got = sock.receive(5)
    finally:
        sock.close()
    methods = {(m or {}).get("content", {}).get("data", {}).get("method") for _, m in got}
    assert "update_states" in methods, [m["header"]["msg_type"] for _, m in got if m][:20]


@pytest.mark.parametrize("protocol,frame", [
    ("v1", (2**60).to_bytes(8, "little") + bytes(64)),         # offset count of 10^18
    ("v1", (7).to_bytes(8, "little") + (2**40).to_bytes(8, "little") * 7 + bytes(8)),
    ("legacy", b"\x7f\xff\xff\xff" + bytes(64)),                # 2^31 parts
    ("legacy", "this is not JSON"),
])
def test_frames_that_lie_about_their_size_are_refused(adjudicate, protocol, frame) -> None:  # type: ignore[no-untyped-def]
    adjudicate = adjudicate.running()
    kid = kernel_id_of(adjudicate.page())
    time.sleep(2)
    before = tree_rss_mb(adjudicate.proc.pid)
    sock = KernelSocket(adjudicate.host, adjudicate.port, kid, v1=protocol == "v1",
                        token=TOKEN)
    try:
        sock.send_raw(frame)
        growth = watch_memory(adjudicate, before)
        assert growth < MEMORY_GROWTH_LIMIT_MB, f"the server grew {growth:.0f} MB"
        assert adjudicate.answers(timeout=10), "the server stopped answering"
        sock.send("kernel_info_request", {})  # the connection still works
        replies = [m["header"]["msg_type"] for _, m in sock.receive(8) if m]
    finally:
        sock.close()
    assert "kernel_info_reply" in replies, replies
    assert "refused a websocket message" in adjudicate.log_text()


# --------------------------------------------------------------------------------------------
# item 6: malformed widget messages get no traceback and no server path back
# --------------------------------------------------------------------------------------------
def test_malformed_widget_messages_send_no_traceback_to_the_browser(adjudicate) -> None:  # type: ignore[no-untyped-def]
    adjudicate = adjudicate.running()
    kid = kernel_id_of(adjudicate.page())
    sock = KernelSocket(adjudicate.host, adjudicate.port, kid, v1=True, token=TOKEN)
    try:
        open_widget_control(sock)
        states: dict = {}
        for _, m in sock.receive(6):
            data = (m or {}).get("content", {}).get("data", {})
            if isinstance(data, dict) and data.get("method") == "update_states":
                states = data["states"]
        assert states, "no widget states came back"
        one_of_each: dict[str, str] = {}
        for wid, st in states.items():
            one_of_each.setdefault(st["model_name"], wid)
        any_widget = next(iter(states))
        for wid in one_of_each.values():  # a value of the wrong type for every kind of widget
            sock.send("comm_msg", {"comm_id": wid, "data": {"method": "update", "state": {
                "value": {"bad": [1]}, "index": "x", "description": 5}}}, {"version": "2.1.0"})
        sock.send("comm_msg", {"comm_id": any_widget}, {"version": "2.1.0"})  # no data
        sock.send("comm_msg", {"comm_id": any_widget, "data": "zzz"}, {"version": "2.1.0"})
        sock.send("comm_open", {"comm_id": uuid.uuid4().hex, "target_name": "jupyter.widget",
                                "data": {"state": {"_model_name": "Nope"}}}, {"version": "2.1.0"})
        sock.send("comm_open", {"comm_id": uuid.uuid4().hex, "target_name": "no.such.target",
                                "data": {}}, {})
        got = sock.receive(10)
    finally:
        sock.close()
    server_paths = {str(adjudicate.folder), str(Path(sys.prefix)), str(Path.home()),
                    str(Path(__file__).resolve().parents[1])}
    errors = 0
    for raw, m in got:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        assert "Traceback" not in text and 'File "' not in text, text[:800]
        assert "site-packages" not in text and not any(p in text for p in server_paths), \
            text[:800]
        if m and m["header"]["msg_type"] == "stream":
            assert m["content"].get("name") != "stderr", m["content"]
        if m and m["header"]["msg_type"] == "error":
            errors += 1
            assert "reference" in m["content"]["evalue"]
    assert errors, "the malformed messages caused no error at all (probe did not reach them)"
    log = adjudicate.log_text()
    assert "error sent to the browser as reference" in log and "Traceback" in log  # for IT


# --------------------------------------------------------------------------------------------
# item 5: the token is on no command line and in no log
# --------------------------------------------------------------------------------------------
def test_token_is_not_in_any_command_line_environment_of_kernels_or_the_log(adjudicate) -> None:  # type: ignore[no-untyped-def]
    adjudicate = adjudicate.running()
    status, _ = http_get(adjudicate.host, adjudicate.port, "/", timeout=60)
    assert status != 200  # positive control: the server does want the token...
    adjudicate.page()      # ...and takes it (this also starts a kernel)
    pids = adjudicate.pids()
    assert len(pids) >= 3, pids  # the CLI, Voila, at least one kernel
    kernels = 0
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        assert TOKEN.encode() not in cmdline, cmdline.replace(b"\0", b" ")
        if b"ipykernel" in cmdline:
            kernels += 1
            assert TOKEN.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    assert kernels
    assert TOKEN not in adjudicate.log_text()


# --------------------------------------------------------------------------------------------
# item 6: a cap on kernels
# --------------------------------------------------------------------------------------------
def kernel_pids(root_pid: int) -> list[int]:
    import psutil

    try:
        kids = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for c in kids:
        try:
            if "ipykernel" in " ".join(c.cmdline()):
                out.append(c.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_twelve_plain_gets_do_not_start_twelve_kernels(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "nb" / "app.ipynb", "print('ok')")
    n = DEFAULT_MAX_KERNELS + 4
    with start_voila(nb, log_dir=tmp_path) as server:
        results: list[tuple[int, bytes]] = []
        peak = [0]
        done = threading.Event()

        def get() -> None:
            try:
                results.append(http_get(server.host, server.port, "/", timeout=300))
            except Exception as e:  # noqa: BLE001 - a page cut short under load counts as 0
                results.append((0, str(e).encode()))

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], len(kernel_pids(server.proc.pid)))
                done.wait(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        threads = [threading.Thread(target=get) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=400)
        time.sleep(1)
        done.set()
        watcher.join()
        log = server.log_text()
    statuses = sorted(s for s, _ in results)
    assert len(statuses) == n and peak[0] <= DEFAULT_MAX_KERNELS, (peak[0], statuses)
    assert statuses.count(200) >= 1, statuses  # pages within the limit still open
    busy = [body for s, body in results if s == 503]
    # every request past the limit was refused (a page within it may still fail under load)
    assert len(busy) >= n - DEFAULT_MAX_KERNELS, statuses
    assert all(BUSY_REASON.encode() in b and b"Traceback" not in b for b in busy)
    assert "refused a new kernel" in log
