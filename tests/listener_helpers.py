"""Helpers of the listener tests: a manifest, the `fracture-qi listen` subprocess, a C-STORE
sender and database look-ups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pydicom
import sqlalchemy as sa

from fracture_qi.store import open_store
from tests.services.orthanc import free_port

CALLER = "TESTSCU"
#: seconds a test waits for the listener to do something before failing
WAIT_S = 180.0


def write_manifest(root: Path, *, port: int, callers: Sequence[str] = (CALLER,),
                   quiet: float = 2.0, extra_sources: str = "", results_to: str | None = None,
                   orthanc_feed: str | None = None) -> Path:
    """A site manifest with a storage folder, a listener and (optionally) results to a PACS."""
    results = f"results_to_pacs: {{source: {results_to}}}\n" if results_to else ""
    feed = f", orthanc: {orthanc_feed}" if orthanc_feed else ""
    text = (
        "version: 1\nsynthetic: true\n"
        f"database: sqlite:///{root / 'fqi.db'}\n"
        "dicom_sources:\n"
        "  - {name: received, kind: folder, path: received/}\n"
        f"{extra_sources}"
        f"listener: {{ae_title: FRACTUREQI, port: {port}, bind: 127.0.0.1, "
        f"allowed_callers: [{', '.join(callers)}], quiet_seconds: {quiet}{feed}}}\n"
        f"{results}"
        "screening: {device: cpu}\n"
        "adjudication: {audit_negative_rate: 0.0, double_read_rate: 0.0}\n"
    )
    path = root / "data_manifest.yaml"
    path.write_text(text)
    return path


class ListenerProcess:
    """`fracture-qi listen --manifest M` as a child process, its log in a file."""

    def __init__(self, manifest: Path, port: int | None) -> None:
        self.manifest = manifest
        self.port = port
        self.log = manifest.parent / f"listen-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FRACTURE_QI_WORKERS": "1"}
        self._f = open(self.log, "wb")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fracture_qi", "listen", "--manifest", str(manifest)],
            stdout=self._f, stderr=subprocess.STDOUT, cwd=manifest.parent, env=env,
            start_new_session=True)
        if port is not None:
            self.wait_ready()

    @classmethod
    def feed(cls, manifest: Path) -> ListenerProcess:
        """A listener following an Orthanc's changes feed (no SCP to wait for)."""
        return cls(manifest, None)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"listener exited with {self.proc.returncode}:\n{self.text()}")
            ae = AE(ae_title=CALLER)
            ae.add_requested_context(Verification)
            ae.acse_timeout = ae.network_timeout = 2
            assoc = ae.associate("127.0.0.1", self.port, ae_title="FRACTUREQI")
            if assoc.is_established:
                assoc.release()
                return
            if assoc.is_rejected:  # it answers (our test AE title is not one it accepts)
                return
            time.sleep(0.3)
        raise AssertionError(f"listener not answering after {timeout} s:\n{self.text()}")

    def terminate(self, timeout: float = 120.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._f.close()
        return rc

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._f.close()

    def __del__(self) -> None:  # never leave a listener running after a failed test
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.kill()


def c_store(files: Iterable[Path], port: int, *, calling: str = CALLER,
            called: str = "FRACTUREQI") -> list[int]:
    """C-STORE *files* to 127.0.0.1:port in one association; returns the statuses."""
    from pynetdicom import AE

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    for cls in {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}:
        ae.add_requested_context(cls[0], [cls[1]])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return [-1] * len(datasets)
    out = []
    try:
        for d in datasets:
            if not assoc.is_established:  # the listener went away (killed mid-study)
                out.append(-1)
                continue
            status = assoc.send_c_store(d)
            out.append(int(status.Status) if "Status" in status else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def wait_for(check: Any, what: str, timeout: float = WAIT_S, listener: ListenerProcess | None
             = None) -> Any:
    """Poll *check()* until it returns something truthy; fail with the listener's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    log = listener.text() if listener is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{log[-4000:]}")


def query(db: Path, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of *sql* on the listener's database ([] while it is not created yet)."""
    engine = open_store(f"sqlite:///{db}", migrate=False)
    try:
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(sql), params)]
    except sa.exc.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise
    finally:
        engine.dispose()


def new_port() -> int:
    return free_port()
