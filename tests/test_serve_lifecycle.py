"""Servers stop cleanly and never answer for another (issue 18, item 6).

``kill PID`` on ``fracture-qi adjudicate`` left its Voila child holding the port; restarted on
that port, the new command printed its URL, then failed, and the URL opened the old server,
so a second nurse would have saved under the first nurse's reviewer ID. Here the real command
runs as a subprocess with a page loaded (a kernel running), is stopped by SIGTERM and by
SIGKILL, and nothing it started may be left; a server on a busy port exits 2 before printing
any address.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fracture_qi.serve import free_port
from tests.adjudication_data import make_store, seed_cases
from tests.services.voila import http_get

pytestmark = pytest.mark.slow

MANIFEST = """\
version: 1
name: lifecycle-test
synthetic: true
database: sqlite:///fqi.db
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lifecycle")
    (root / "data_manifest.yaml").write_text(MANIFEST)
    engine = make_store(f"sqlite:///{root / 'fqi.db'}")
    seed_cases(engine, n=1, dicom_dir=root / "dicom", flagged=[True])
    engine.dispose()
    return root / "data_manifest.yaml"


def start(manifest: Path, port: int, reviewer: str, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "fracture_qi", "adjudicate", "--manifest", str(manifest),
         "--reviewer", reviewer, "--port", str(port)],
        stdout=out, stderr=subprocess.STDOUT)


def wait_serving(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while "serving adjudicate.ipynb at" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.3)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def load_page_and_tree(proc: subprocess.Popen[bytes], port: int) -> list[psutil.Process]:
    """GET the app (a kernel starts and runs it); return every process under the command."""
    status, _ = http_get("127.0.0.1", port, "/", timeout=180)
    assert status == 200
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert any("ipykernel" in " ".join(p.cmdline()) for p in tree), [p.cmdline() for p in tree]
    return tree


def gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_the_command_leaves_nothing_on_its_port(site, tmp_path, how):
    port = free_port()
    log = tmp_path / "first.log"
    proc = start(site, port, "nurse.first", log)
    try:
        wait_serving(proc, log)
        tree = load_page_and_tree(proc, port)
        os.kill(proc.pid, how)
        proc.wait(timeout=60)
        left = gone(tree, timeout=40)
        assert not left, [p.cmdline() for p in left]
        assert not listening(port)
    finally:
        for p in psutil.Process().children(recursive=True):
            p.kill()
    # the port is free again: a second nurse gets her own server, not the first one's
    log2 = tmp_path / "second.log"
    proc2 = start(site, port, "nurse.second", log2)
    try:
        wait_serving(proc2, log2)
        assert proc2.poll() is None
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(timeout=60)


def test_a_second_server_on_a_busy_port_exits_2_before_printing_an_address(site, tmp_path):
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        r = subprocess.run(
            [sys.executable, "-m", "fracture_qi", "adjudicate", "--manifest", str(site),
             "--reviewer", "nurse.second", "--port", str(port)],
            capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    assert f"port {port} in use: another fracture-qi server?" in r.stderr
    assert f":{port}" not in r.stdout and "serving" not in r.stderr and "Voil" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_team_server_stops_cleanly_and_refuses_a_busy_port(site, tmp_path):
    """The same for ``fracture-qi serve``; and without any account it does not start."""
    from fracture_qi.accounts import add_user
    from fracture_qi.store import open_store

    port = free_port()
    r = subprocess.run([sys.executable, "-m", "fracture_qi", "serve", "--manifest", str(site),
                        "--port", str(port), "--no-warm"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "no accounts yet" in r.stderr, r.stderr
    engine = open_store(str(site))
    add_user(engine, "nurse.first", "nurse", "correct horse battery staple", by="test")
    engine.dispose()
    log = tmp_path / "serve.log"
    out = open(log, "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "fracture_qi", "serve", "--manifest",
                             str(site), "--port", str(port), "--no-warm"],
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "the team server is at" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert listening(port)
        busy = subprocess.run([sys.executable, "-m", "fracture_qi", "serve", "--manifest",
                               str(site), "--port", str(port), "--no-warm"],
                              capture_output=True, text=True, timeout=120, check=False)
        assert busy.returncode == 2
        assert f"port {port} in use: another fracture-qi server?" in busy.stderr
        assert "team server is at" not in busy.stderr
        tree = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert not gone(tree, timeout=40) and not listening(port)
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
