"""A real multi-node run: `dask scheduler` and two `dask worker` processes, started as a site
starts them, `fracture-qi screen --manifest M --dask tcp://...` over them, and one worker
killed outright (SIGKILL of its nanny and worker, as a machine that dies) in the middle of the
run. Every series must end up screened exactly once: one `screenings` row each, none missing,
none twice, and the run `finished` (issue 20, part 4; docs/screening-engine.md, "Several
machines").

The processes listen on 127.0.0.1 only. The series are small real-looking spine CTs
(tests/spine_ct.py) screened by the reference screener, so each task decodes and screens for
real (about 0.5 s a series here).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("distributed")

from tests.spine_ct import write_spine_study  # noqa: E402

N_SERIES = 10
DASK = Path(sys.executable).with_name("dask")


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process in its own session (its group can be killed whole), output to *log*."""
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True,
                            env={**(env or os.environ), "PYTHONUNBUFFERED": "1"})


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _wait_for(what: str, check, timeout: float, logs: list[Path]) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs
                      if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def _workers(scheduler_file: Path) -> int:
    """Workers the scheduler knows, asked through a short-lived client."""
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout="10s") as c:
        return len(c.scheduler_info().get("workers", {}))


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return int(con.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A manifest over N_SERIES spine CT studies, indexed with `fracture-qi index`."""
    root = tmp_path_factory.mktemp("dask-site")
    for i in range(N_SERIES):
        write_spine_study(root / "dicom" / f"study{i:02d}", fractured=i % 3 == 0, seed=100 + i,
                          PatientID=f"MRN{i:04d}")
    manifest = root / "data_manifest.yaml"
    manifest.write_text(yaml.safe_dump({
        "version": 1, "name": "dask-test", "database": "sqlite:///fqi.db",
        "pseudonymisation_key": "env:FRACTURE_QI_KEY",
        "dicom_sources": [{"name": "archive", "kind": "folder", "path": "dicom/"}],
        "model": {"kind": "reference"},
        "screening": {"flag_grade": 2, "decoder": "cpu"},
        "outputs": {"reports": "reports/", "keyimages": "keyimages/"},
    }))
    env = {**os.environ, "FRACTURE_QI_KEY": "a-test-secret-of-sufficient-length"}
    proc = subprocess.run([sys.executable, "-m", "fracture_qi", "index", "--manifest",
                           str(manifest), "--no-progress"], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    db = root / "fqi.db"
    assert _count(db, "select count(*) from series where chosen = 1 and status = 'ok'") \
        == N_SERIES, proc.stdout
    return {"root": root, "manifest": manifest, "db": db, "env": env}


@pytest.mark.slow
def test_a_worker_killed_mid_run_leaves_every_series_screened_exactly_once(site: dict) -> None:
    root: Path = site["root"]
    db: Path = site["db"]
    sched_file = root / "scheduler.json"
    logs = [root / "scheduler.log", root / "worker-a.log", root / "worker-b.log",
            root / "screen.log"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
                             "--no-dashboard", "--scheduler-file", str(sched_file)], logs[0]))
        _wait_for("the scheduler file", sched_file.exists, 120, logs)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        workers = {}
        for name, log in (("a", logs[1]), ("b", logs[2])):
            workers[name] = _start([str(DASK), "worker", "--scheduler-file", str(sched_file),
                                    "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                                    "--no-dashboard", "--name", f"fqi-{name}",
                                    "--death-timeout", "120"], log)
            procs.append(workers[name])
        _wait_for("two workers", lambda: _workers(sched_file) == 2, 180, logs)

        screen = _start([sys.executable, "-m", "fracture_qi", "screen", "--manifest",
                         str(site["manifest"]), "--dask", address, "--no-progress"], logs[3],
                        site["env"])
        procs.append(screen)
        rows = "select count(*) from screenings"
        _wait_for("the first screened series", lambda: _count(db, rows) >= 1, 300, logs)
        done_at_kill = _count(db, rows)
        os.killpg(workers["a"].pid, signal.SIGKILL)  # the nanny and its worker, at once
        workers["a"].wait(timeout=30)
        assert done_at_kill < N_SERIES, "the run ended before the kill: nothing was tested"

        assert screen.wait(timeout=600) == 0, logs[3].read_text(errors="replace")[-3000:]
        printed = logs[3].read_text(errors="replace")
        assert f"{N_SERIES} screened ok" in printed, printed[-3000:]
        assert "0 already screened" in printed

        # exactly once: one row per chosen series, no series twice, none missing
        assert _count(db, rows) == N_SERIES
        assert _count(db, "select count(distinct series_id) from screenings") == N_SERIES
        assert _count(db, "select count(*) from series s where s.chosen = 1 and not exists "
                          "(select 1 from screenings c where c.series_id = s.id)") == 0
        assert _count(db, "select count(*) from screenings where status != 'ok'") == 0
        assert _count(db, "select count(*) from screening_runs where status = 'finished' "
                          f"and n_ok = {N_SERIES} and n_error = 0") == 1
        # and the killed worker is really gone from the cluster: the survivor did the rest
        assert _workers(sched_file) == 1
        removed = [line for line in logs[0].read_text(errors="replace").splitlines()
                   if "Remove worker" in line and "fqi-a" in line]
        assert removed, "the scheduler never saw worker a go"
        survivor = logs[2].read_text(errors="replace")
        assert "Traceback" not in survivor, survivor[-3000:]
    finally:
        for p in reversed(procs):
            _stop(p)
