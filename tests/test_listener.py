"""`fracture-qi listen`: the service the PACS forwards CTs to.

The listener runs as a real subprocess (as systemd runs it) and is fed by a pynetdicom
C-STORE sender here, or by a real Orthanc in tests/test_listener_orthanc.py. Nothing else is
run between receiving and checking: indexing, screening and the worklist happen inside it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.listener_helpers import (
    CALLER,
    ListenerProcess,
    c_store,
    new_port,
    query,
    wait_for,
    write_manifest,
)
from tests.spine_ct import write_spine_study


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One flagged spine CT study (150 slices)."""
    return write_spine_study(tmp_path_factory.mktemp("ct") / "study")


def _state(db: Path) -> list[tuple]:
    return query(db, "select state, n_instances from received_studies")


#: the screenings that count: those no later screening supersedes
CURRENT = ("from screenings s where not exists "
           "(select 1 from screenings n where n.supersedes_id = s.id)")


def _screened_complete_once(db: Path, n: int) -> None:
    """One current screening, of all *n* instances, flagged; made once; any screening of an
    incomplete series (the listener may process a study during a pause of its sender) is
    kept, superseded, and was made on fewer instances."""
    assert query(db, f"select count(*), sum(flagged), max(n_instances) {CURRENT}") == [(1, 1, n)]
    assert query(db, "select count(*) from screenings where n_instances = :n", n=n) == [(1,)]
    (total,), = query(db, "select count(*) from screenings")
    assert query(db, "select count(*) from screenings where n_instances < :n and id in "
                     "(select supersedes_id from screenings)", n=n) == [(total - 1,)]


def test_killed_half_way_through_a_study_finishes_it_once(tmp_path: Path, study: list[Path]
                                                         ) -> None:
    port = new_port()
    manifest = write_manifest(tmp_path, port=port, quiet=3.0)
    db = tmp_path / "fqi.db"
    listener = ListenerProcess(manifest, port)
    sender = threading.Thread(target=c_store, args=(study, port), daemon=True)
    sender.start()
    wait_for(lambda: (query(db, "select count(*) from received_instances")[0][0] >= 60),
             "60 instances received", listener=listener)
    listener.kill()  # SIGKILL half-way: no clean-up of any kind
    sender.join(timeout=60)
    n_first = query(db, "select count(*) from received_instances")[0][0]
    assert 60 <= n_first < len(study), n_first
    assert query(db, "select count(*) from screenings")[0][0] == 0

    listener = ListenerProcess(manifest, port)  # restarted: recovers, waits for the rest
    statuses = c_store(study, port)  # the router resends the study it was not told was stored
    assert set(statuses) == {0}
    wait_for(lambda: _state(db) == [("processed", len(study))], "the study processed",
             listener=listener)
    assert listener.terminate() == 0  # SIGTERM: clean exit 0

    # one study, one series, every instance exactly once, on disk and in both records
    received = tmp_path / "received"
    files = [p for p in received.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(files) == len(study)
    assert not list(received.rglob(".*.part"))
    assert query(db, "select count(*), count(distinct sop_instance_uid) from received_instances"
                 ) == [(len(study), len(study))]
    assert query(db, "select count(*), count(distinct sop_instance_uid) from instances"
                 ) == [(len(study), len(study))]
    assert query(db, "select count(*) from studies") == [(1,)]
    assert query(db, "select count(*) from series") == [(1,)]
    # the complete series screened once, flagged, on the worklist: no other command was
    # run. Under load the restarted listener may process the study while the resend pauses
    # for longer than quiet_seconds; the screening of the incomplete series is then kept
    # but superseded (see test_listener_process.py for that sequence, driven in order).
    _screened_complete_once(db, len(study))
    assert query(db, f"select stratum from worklist_items w join screenings s "
                     f"on s.id = w.screening_id where s.n_instances = {len(study)}"
                     ) == [("flagged",)]
    assert query(db, "select count(*) from worklist_items") == [(1,)]
    log = listener.text()
    assert "FLAGGED" in log and "listener stopped" in log


def test_rest_of_a_study_after_it_was_processed_is_screened_again(tmp_path: Path,
                                                                  study: list[Path]) -> None:
    """The sender pauses for longer than quiet_seconds after 90 of 150 slices: the listener
    processes what it has (not flagged: the L1 fracture is in the rest), then the router
    sends the whole study again. The complete series must be screened and count."""
    port = new_port()
    manifest = write_manifest(tmp_path, port=port, quiet=1.0)
    db = tmp_path / "fqi.db"
    listener = ListenerProcess(manifest, port)
    try:
        assert set(c_store(study[:90], port)) == {0}
        wait_for(lambda: _state(db) == [("processed", 90)], "the first part processed",
                 listener=listener)
        assert query(db, f"select count(*), sum(flagged), max(n_instances) {CURRENT}"
                     ) == [(1, 0, 90)]
        assert set(c_store(study, port)) == {0}  # the rest, with copies of the first part
        wait_for(lambda: _state(db) == [("processed", len(study))], "the study processed again",
                 listener=listener)
    finally:
        assert listener.terminate() == 0
    _screened_complete_once(db, len(study))
    # the partial result is kept, superseded by the complete one; the worklist follows it
    assert query(db, "select count(*) from screenings where n_instances = 90 and flagged = 0"
                 ) == [(1,)]
    assert query(db, f"select w.stratum, s.n_instances from worklist_items w join screenings s "
                     f"on s.id = w.screening_id") == [("flagged", len(study))]
    assert "screened 1, FLAGGED" in listener.text()


def test_refuses_unknown_callers_and_bad_uids(tmp_path: Path, study: list[Path]) -> None:
    import pydicom

    port = new_port()
    manifest = write_manifest(tmp_path, port=port, quiet=30.0)
    listener = ListenerProcess(manifest, port)
    try:
        assert c_store(study[:1], port, calling="STRANGER") == [-1]  # association rejected
        bad = pydicom.dcmread(study[0])
        bad.SeriesInstanceUID = "../../etc"
        path = tmp_path / "bad.dcm"
        bad.save_as(path)
        assert c_store([path], port) == [0xA900]
        assert not (tmp_path / "etc").exists()
        assert c_store(study[:2], port) == [0, 0]
    finally:
        assert listener.terminate() == 0
    db = tmp_path / "fqi.db"
    assert query(db, "select count(*) from received_instances") == [(2,)]
    assert "rejected" in listener.text() and CALLER in manifest.read_text()


def test_listener_needs_allowed_callers(tmp_path: Path) -> None:
    from fracture_qi.cli.main import main

    manifest = write_manifest(tmp_path, port=new_port(), callers=())
    assert main(["listen", "--manifest", str(manifest)]) == 2
