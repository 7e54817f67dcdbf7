"""A real, throw-away Orthanc PACS for tests (session-scoped pytest fixture).

Usage in a test module::

    from tests.services.orthanc import orthanc  # noqa: F401

    @pytest.mark.orthanc
    def test_something(orthanc):
        orthanc.upload(paths)                    # C-STORE-free upload over REST
        client = orthanc.dicomweb_url            # http://127.0.0.1:PORT/dicom-web

The server is Debian's ``orthanc`` with the ``orthanc-dicomweb`` plugin, started as the test
session's own process: free HTTP and DICOM ports on 127.0.0.1, storage and index in a
temporary folder, ``RemoteAccessAllowed: false`` (HTTP from localhost only), HTTP basic
authentication on (user ``fqi``, password :data:`PASSWORD`) so the suite's auth settings are
exercised, and the DICOMweb plugin at ``/dicom-web/``. It is stopped and its folder deleted
at the end of the session. When the binary or the plugin is missing the fixture skips with
the install command; in CI (``CI=true``) ``tests/conftest.py`` turns that skip into a
failure.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: seconds to wait for Orthanc to answer HTTP
START_TIMEOUT_S = 60
USER = "fqi"
PASSWORD = "orthanc-test-password"
AET = "ORTHANCTEST"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


class OrthancUnavailable(RuntimeError):
    """Raised when the Orthanc binary or its DICOMweb plugin is missing or will not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_orthanc() -> tuple[str, Path]:
    """The Orthanc executable and the DICOMweb plugin library.

    Raises
    ------
    OrthancUnavailable
        With the command that installs them.
    """
    exe = os.environ.get("FRACTURE_QI_ORTHANC") or shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    plugin = next((Path(d) / "libOrthancDicomWeb.so" for d in PLUGIN_DIRS
                   if (Path(d) / "libOrthancDicomWeb.so").is_file()), None)
    if not exe or plugin is None:
        raise OrthancUnavailable(
            "Orthanc or its DICOMweb plugin not found. Fix: `make system-deps` "
            "(apt-get install orthanc orthanc-dicomweb) or set FRACTURE_QI_ORTHANC"
        )
    return exe, plugin


@dataclass
class OrthancServer:
    """A private Orthanc in a temporary folder.

    Attributes
    ----------
    root
        The temporary folder (config, storage, index, log).
    http_port, dicom_port
        Ports on 127.0.0.1.
    aet
        Orthanc's own application entity title.
    """

    exe: str
    plugin: Path
    root: Path
    http_port: int = 0
    dicom_port: int = 0
    aet: str = AET
    user: str = USER
    password: str = PASSWORD
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        config = {
            "Name": "fracture-qi-test",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "Plugins": [str(self.plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "HttpTimeout": 30,
            "StableAge": 1,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
        }
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=2))
        log = open(self.root / "orthanc.log", "wb")  # noqa: SIM115 - kept open for the process
        self._proc = subprocess.Popen([self.exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                      cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise OrthancUnavailable(f"Orthanc exited with {self._proc.returncode}: "
                                         f"{self.log_tail()}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise OrthancUnavailable(f"Orthanc did not answer within {START_TIMEOUT_S} s: "
                                 f"{self.log_tail()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.root / "orthanc.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ----------------------------------------------------------------------------- REST API
    def _request(self, method: str, path: str, data: bytes | None = None,
                 content_type: str = "application/json") -> Any:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        ctype = "application/dicom" if isinstance(payload, bytes) else "application/json"
        return self._request("POST", path, data, ctype)

    def put(self, path: str, payload: Any) -> Any:
        return self._request("PUT", path, json.dumps(payload).encode())

    def delete(self, path: str) -> Any:
        return self._request("DELETE", path)

    def upload(self, paths: Iterable[Path | str]) -> int:
        """Store files through the REST API; returns how many were stored."""
        n = 0
        for p in paths:
            self.post("/instances", Path(p).read_bytes())
            n += 1
        return n

    def clear(self) -> None:
        """Delete every patient (so each test starts from an empty archive)."""
        for pid in self.get("/patients") or []:
            self.delete(f"/patients/{pid}")

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Register a peer AE (needed as a C-MOVE destination and for C-GET)."""
        self.put(f"/modalities/{name}", {
            "AET": aet, "Host": host, "Port": port,
            "AllowEcho": True, "AllowFind": True, "AllowGet": True, "AllowMove": True,
            "AllowStore": True,
        })


@pytest.fixture(scope="session")
def orthanc() -> Iterator[OrthancServer]:
    """A running Orthanc for the whole session (skips, with the fix, where not installed)."""
    try:
        exe, plugin = find_orthanc()
    except OrthancUnavailable as e:
        pytest.skip(str(e))
    root = Path(tempfile.mkdtemp(prefix="fqi-orthanc-"))
    server = OrthancServer(exe=exe, plugin=plugin, root=root)
    try:
        server.start()
    except OrthancUnavailable as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
