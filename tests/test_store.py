"""Store: Alembic migrations on SQLite and a real PostgreSQL, schema == migrations,
the append-only guard on adjudication_events, SQLite safety settings, revision checks."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from fracture_qi.errors import StoreError
from fracture_qi.store import (
    current_revision,
    head_revision,
    open_store,
    schema_differences,
    session_scope,
)
from fracture_qi.store import schema as S
from fracture_qi.store.init import upgrade

pytest_plugins = ["tests.services.postgres"]  # postgres_server, postgres_url, fresh_postgres_url


def _event_rows(engine: sa.Engine) -> int:
    """Insert a study and one adjudication event; return the event id."""
    with session_scope(engine) as s:
        study = S.Study(study_instance_uid=f"1.2.3.{uuid.uuid4().int % 10**9}")
        s.add(study)
        s.flush()
        ev = S.AdjudicationEvent(
            event_uid=str(uuid.uuid4()), study_id=study.id, reviewer="nurse1",
            app_version="0.1", decision="confirmed", levels=[{"level": "L1", "grade": 2}],
        )
        s.add(ev)
        s.flush()
        return ev.id


def _assert_append_only(engine: sa.Engine) -> None:
    ev_id = _event_rows(engine)
    for stmt in (
        sa.update(S.AdjudicationEvent).where(S.AdjudicationEvent.id == ev_id).values(note="edited"),
        sa.delete(S.AdjudicationEvent).where(S.AdjudicationEvent.id == ev_id),
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(stmt)
    with engine.connect() as conn:  # still there, unchanged
        row = conn.execute(sa.select(S.AdjudicationEvent.note).where(S.AdjudicationEvent.id == ev_id)).one()
        assert row.note is None
    # inserting (a correction that supersedes) is allowed
    with session_scope(engine) as s:
        first = s.get(S.AdjudicationEvent, ev_id)
        s.add(S.AdjudicationEvent(
            event_uid=str(uuid.uuid4()), study_id=first.study_id, reviewer="nurse1",
            app_version="0.1", decision="no_fracture", supersedes_id=ev_id,
        ))


def test_sqlite_fresh_file_migrates_and_matches_schema(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path / 'fqi.db'}")
    assert current_revision(engine) == head_revision()
    assert schema_differences(engine) == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    # idempotent: a second open does nothing and keeps data
    _event_rows(engine)
    engine2 = open_store(f"sqlite:///{tmp_path / 'fqi.db'}")
    with engine2.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(S.AdjudicationEvent)).scalar() == 1


def test_sqlite_append_only(tmp_path):
    _assert_append_only(open_store(f"sqlite:///{tmp_path / 'a.db'}"))


def test_relative_sqlite_url_is_relative_to_base(tmp_path):
    engine = open_store("sqlite:///sub/rel.db", base=tmp_path)
    assert (tmp_path / "sub" / "rel.db").is_file()
    engine.dispose()


def test_refuses_database_from_newer_code(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = open_store(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(StoreError, match="9999_future.*newer version"):
        open_store(url)
    with pytest.raises(StoreError, match="unknown"):
        open_store(url, migrate=False)


def _race(url: str, n: int = 2) -> list[tuple[int, str]]:
    """Start *n* processes that open (and migrate) the same database at the same moment."""
    code = "import sys; from fracture_qi.store import open_store; open_store(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    return [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]


def test_two_processes_racing_to_migrate(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    results = _race(url)
    assert [rc for rc, _ in results] == [0, 0], results
    assert current_revision(open_store(url, migrate=False)) == head_revision()


@pytest.mark.postgres
def test_postgres_migrates_matches_schema_and_is_append_only(fresh_postgres_url):
    engine = open_store(fresh_postgres_url)
    assert engine.dialect.name == "postgresql"
    assert current_revision(engine) == head_revision()
    assert schema_differences(engine) == []
    assert upgrade(engine) == head_revision()  # idempotent
    _assert_append_only(engine)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE adjudication_events CASCADE"))
    # the partial unique index: one first read per study and read number
    with session_scope(engine) as s:
        study_id = s.scalars(sa.select(S.Study.id)).first()
    with pytest.raises(DBAPIError), session_scope(engine) as s:
        s.add(S.AdjudicationEvent(event_uid=str(uuid.uuid4()), study_id=study_id,
                                  reviewer="nurse2", app_version="0.1", decision="confirmed"))
    engine.dispose()


@pytest.mark.postgres
def test_postgres_concurrent_open_is_safe(fresh_postgres_url):
    results = _race(fresh_postgres_url)
    assert [rc for rc, _ in results] == [0, 0], results
    assert current_revision(open_store(fresh_postgres_url, migrate=False)) == head_revision()


@pytest.mark.postgres
def test_postgres_downgrade_and_upgrade_round_trip(fresh_postgres_url):
    from alembic import command

    from fracture_qi.store.init import alembic_config

    engine = open_store(fresh_postgres_url)
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert current_revision(engine) is None
    assert upgrade(engine) == head_revision()
    assert schema_differences(engine) == []
    engine.dispose()


def test_timestamps_round_trip(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path / 't.db'}")
    with session_scope(engine) as s:
        s.add(S.AuditRun(name="x", out_dir="/tmp/x"))
    with session_scope(engine) as s:
        run = s.scalars(sa.select(S.AuditRun)).one()
        assert isinstance(run.started_at, dt.datetime)


def test_postgres_fixture_explains_missing_binaries(monkeypatch):
    from tests.services import postgres as pg

    monkeypatch.delenv("FRACTURE_QI_PG_BIN", raising=False)
    monkeypatch.setattr(pg.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pg.shutil, "which", lambda name: None)
    with pytest.raises(pg.PostgresUnavailable, match="make system-deps"):
        pg.find_bin_dir()


# --------------------------------------------------------------------------------------------
# append-only against every SQL verb (issue 21 item 3)
# --------------------------------------------------------------------------------------------
#: every column of adjudication_events, in table order (the statements below copy rows whole)
EVENT_COLUMNS = [c.name for c in S.AdjudicationEvent.__table__.columns]


def _event_snapshot(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(S.AdjudicationEvent.__table__).order_by(S.AdjudicationEvent.id))]


def _rewrites(dialect: str, ev_id: int) -> dict[str, str]:
    """Hand-written statements that would rewrite or remove event *ev_id*, per dialect."""
    cols = ", ".join(EVENT_COLUMNS)
    # the same row with another reviewer and decision (what an attacker would write)
    forged = ", ".join(
        "'someone.else'" if c == "reviewer" else "'not_confirmed'" if c == "decision" else c
        for c in EVENT_COLUMNS)
    # a new id and event_uid but the same study and first read: collides on the partial index
    twin = ", ".join(
        "id + 1000" if c == "id" else "event_uid || '-x'" if c == "event_uid"
        else "'not_confirmed'" if c == "decision" else c for c in EVENT_COLUMNS)
    src = f"FROM adjudication_events WHERE id = {ev_id}"
    stmts = {
        "update": f"UPDATE adjudication_events SET decision = 'not_confirmed' WHERE id = {ev_id}",
        "delete": f"DELETE FROM adjudication_events WHERE id = {ev_id}",
    }
    if dialect == "sqlite":
        stmts.update({
            "insert_or_replace": f"INSERT OR REPLACE INTO adjudication_events ({cols}) "
                                 f"SELECT {forged} {src}",
            "replace": f"REPLACE INTO adjudication_events ({cols}) SELECT {forged} {src}",
            "replace_by_first_read": f"REPLACE INTO adjudication_events ({cols}) "
                                     f"SELECT {twin} {src}",
            "on_conflict_do_update": f"INSERT INTO adjudication_events ({cols}) "
                                     f"SELECT {forged} {src} ON CONFLICT(id) DO "
                                     "UPDATE SET decision = excluded.decision, "
                                     "reviewer = excluded.reviewer",
            "on_conflict_uid_do_update": f"INSERT INTO adjudication_events ({cols}) "
                                         f"SELECT {twin} {src} ON CONFLICT(event_uid) "
                                         "DO UPDATE SET decision = excluded.decision",
        })
    else:
        stmts.update({
            "on_conflict_do_update": f"INSERT INTO adjudication_events ({cols}) "
                                     f"SELECT {forged} {src} ON CONFLICT (id) DO UPDATE SET "
                                     "decision = EXCLUDED.decision, reviewer = EXCLUDED.reviewer",
            "on_conflict_uid_do_update": f"INSERT INTO adjudication_events ({cols}) "
                                         f"SELECT {forged.replace('id, ', 'id + 1000, ', 1)} "
                                         f"{src} ON CONFLICT (event_uid) DO UPDATE SET "
                                         "decision = EXCLUDED.decision",
            "merge": f"MERGE INTO adjudication_events t USING (SELECT {ev_id} AS id) s "
                     "ON t.id = s.id WHEN MATCHED THEN UPDATE SET decision = 'not_confirmed'",
            "merge_delete": f"MERGE INTO adjudication_events t USING (SELECT {ev_id} AS id) s "
                            "ON t.id = s.id WHEN MATCHED THEN DELETE",
            "truncate": "TRUNCATE adjudication_events CASCADE",
        })
    return stmts


def _assert_no_verb_rewrites_a_decision(engine: sa.Engine) -> None:
    ev_id = _event_rows(engine)
    before = _event_snapshot(engine)
    for name, stmt in _rewrites(engine.dialect.name, ev_id).items():
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(stmt)
        except DBAPIError as e:
            assert "append-only" in str(e.orig), (name, str(e.orig))
        else:
            pytest.fail(f"{name} was accepted: {stmt}")
        assert _event_snapshot(engine) == before, f"{name} changed the events"
    # ordinary appends still work: a new event, and a correction that supersedes
    with session_scope(engine) as s:
        first = s.get(S.AdjudicationEvent, ev_id)
        s.add(S.AdjudicationEvent(
            event_uid=str(uuid.uuid4()), study_id=first.study_id, reviewer="nurse1",
            app_version="0.1", decision="no_fracture", supersedes_id=ev_id))
    assert len(_event_snapshot(engine)) == len(before) + 1


def test_sqlite_append_only_against_replace_and_upsert(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    _assert_no_verb_rewrites_a_decision(engine)
    engine.dispose()


@pytest.mark.postgres
def test_postgres_append_only_against_upsert_merge_and_truncate(fresh_postgres_url):
    engine = open_store(fresh_postgres_url)
    _assert_no_verb_rewrites_a_decision(engine)
    engine.dispose()


# --------------------------------------------------------------------------------------------
# a zero-byte database file is refused, not silently re-created (issue 21, item 6)
# --------------------------------------------------------------------------------------------
def test_zero_byte_database_file_is_refused_not_recreated(tmp_path):
    import os
    import time

    db = tmp_path / "fqi.db"
    db.write_bytes(b"")
    old = time.time() - 3600  # truncated an hour ago (a file being created is younger)
    os.utime(db, (old, old))
    with pytest.raises(StoreError, match="empty \\(0 bytes\\).*restore it from the last backup"):
        open_store(f"sqlite:///{db}")
    assert db.stat().st_size == 0  # nothing was created in its place
    (tmp_path / "data_manifest.yaml").write_text(
        "version: 1\nsynthetic: true\ndatabase: sqlite:///fqi.db\n"
        "pseudonymisation_key: env:FRACTURE_QI_KEY\n")
    r = subprocess.run([sys.executable, "-m", "fracture_qi", "worklist", "--manifest",
                        str(tmp_path / "data_manifest.yaml")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "0 bytes" in r.stderr and db.stat().st_size == 0
    # a new site (no file yet) still starts
    assert current_revision(open_store(f"sqlite:///{tmp_path / 'new.db'}")) == head_revision()


# --------------------------------------------------------------------------------------------
# revision 0008: screenings supersede (a series screened again after it gained instances)
# --------------------------------------------------------------------------------------------
#: tables whose rows point at screenings
SCREENING_CHILDREN = ("vertebra_findings", "worklist_items", "adjudication_events",
                      "result_objects")
#: columns of those tables that later revisions add (0007: a blind audit read)
ADDED_AFTER_0006 = frozenset({"blind"})


def _screened_at_0006(engine: sa.Engine) -> dict[str, list[tuple]]:
    """A database at revision 0006 with two screenings and a row of every table that points
    at one; returns a snapshot of those tables."""
    assert upgrade(engine, "0006") == "0006"
    t = {name: S.Base.metadata.tables[name] for name in ("screening_runs", "studies", "series",
                                                         "screenings", *SCREENING_CHILDREN)}
    with engine.begin() as c:
        run = c.execute(sa.insert(t["screening_runs"]).values(
            model_id="m", model_version="1", params={})).inserted_primary_key[0]
        ids = []
        for k in range(2):
            study = c.execute(sa.insert(t["studies"]).values(
                study_instance_uid=f"1.2.3.{k}", eligible=True)).inserted_primary_key[0]
            series = c.execute(sa.insert(t["series"]).values(
                series_instance_uid=f"1.2.3.{k}.1", study_id=study, n_instances=90,
                chosen=True)).inserted_primary_key[0]
            ids.append(c.execute(sa.insert(t["screenings"]).values(
                run_id=run, series_id=series, model_id="m", model_version="1", status="ok",
                flagged=k == 0, max_grade=3 * (k == 0), n_vertebrae=1)).inserted_primary_key[0])
            c.execute(sa.insert(t["vertebra_findings"]).values(screening_id=ids[-1], level="L1"))
            item = c.execute(sa.insert(t["worklist_items"]).values(
                study_id=study, screening_id=ids[-1], stratum="flagged")).inserted_primary_key[0]
            c.execute(sa.insert(t["adjudication_events"]).values(
                event_uid=str(uuid.uuid4()), worklist_item_id=item, study_id=study,
                screening_id=ids[-1], reviewer="nurse1", app_version="0.1",
                decision="not_confirmed"))
            c.execute(sa.insert(t["result_objects"]).values(
                screening_id=ids[-1], kind="sr", destination="pacs", study_instance_uid="1",
                series_instance_uid="2", sop_instance_uid=f"3.{k}", sop_class_uid="4"))
    return _snapshot(engine)


def _snapshot(engine: sa.Engine) -> dict[str, list[tuple]]:
    old_cols = [c for c in S.Screening.__table__.columns
                if c.name not in ("n_instances", "supersedes_id")]
    out = {}
    with engine.connect() as c:
        out["screenings"] = [tuple(r) for r in c.execute(
            sa.select(*old_cols).order_by(S.Screening.id))]
        for name in SCREENING_CHILDREN:
            table = S.Base.metadata.tables[name]
            cols = [col for col in table.columns if col.name not in ADDED_AFTER_0006]
            out[name] = [tuple(r) for r in c.execute(sa.select(*cols).order_by(table.c.id))]
    return out


def _check_supersede_migration(engine: sa.Engine) -> None:
    before = _screened_at_0006(engine)
    assert upgrade(engine) == head_revision()
    assert schema_differences(engine) == []
    assert _snapshot(engine) == before  # every row kept, with its id and its references
    if engine.dialect.name == "sqlite":
        with engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA foreign_key_check").all() == []
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert {ix["name"] for ix in sa.inspect(engine).get_indexes("screenings")} >= {
        "ix_screenings_run_id", "ix_screenings_series_id", "uq_screening_once"}
    first, second = (r[0] for r in before["screenings"])
    with session_scope(engine) as s:
        old = s.get(S.Screening, first)
        assert (old.n_instances, old.supersedes_id) == (None, None)
        run_id, series_id = old.run_id, old.series_id

    def screening(**kw: object) -> S.Screening:
        return S.Screening(run_id=run_id, series_id=series_id, model_id="m", model_version="1",
                           status="ok", n_instances=150, **kw)

    # a second first screening of (series, model, version) is refused ...
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as s:
        s.add(screening())
    # ... one that supersedes it is stored, once
    with session_scope(engine) as s:
        new = screening(supersedes_id=first)
        s.add(new)
        s.flush()
        new_id = new.id
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as s:
        s.add(screening(supersedes_id=first))
    with session_scope(engine) as s:
        current = s.scalars(sa.select(S.Screening.id).where(S.screening_is_current())
                            .order_by(S.Screening.id)).all()
    assert current == [second, new_id]
    # going back would lose a result: refused, nothing changed
    from alembic import command

    from fracture_qi.store.init import alembic_config

    with pytest.raises(RuntimeError, match="supersede an earlier one"), engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    assert current_revision(engine) == head_revision()


def test_sqlite_supersede_migration_keeps_every_screening(tmp_path):
    _check_supersede_migration(open_store(f"sqlite:///{tmp_path / 's.db'}", migrate=False))


@pytest.mark.postgres
def test_postgres_supersede_migration_keeps_every_screening(fresh_postgres_url):
    engine = open_store(fresh_postgres_url, migrate=False)
    _check_supersede_migration(engine)
    engine.dispose()


def test_sqlite_supersede_downgrade_and_upgrade_keep_rows(tmp_path):
    from alembic import command

    from fracture_qi.store.init import alembic_config

    engine = open_store(f"sqlite:///{tmp_path / 'd.db'}", migrate=False)
    before = _screened_at_0006(engine)
    assert upgrade(engine) == head_revision()
    with engine.begin() as conn:  # nothing supersedes anything: going back is allowed
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    assert current_revision(engine) == "0006"
    with engine.connect() as c:
        cols = [r[1] for r in c.exec_driver_sql("PRAGMA table_info(screenings)")]
        assert "supersedes_id" not in cols and "n_instances" not in cols
        assert c.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        sql = c.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'screenings'").scalar()
        assert "uq_screening_once UNIQUE (series_id, model_id, model_version)" in sql
    assert upgrade(engine) == head_revision()
    assert _snapshot(engine) == before
    assert schema_differences(engine) == []


# --------------------------------------------------------------------------------------------
# the access log is append-only in the database too (issue 18, item 3)
# --------------------------------------------------------------------------------------------
def _assert_access_log_append_only(engine: sa.Engine) -> None:
    from fracture_qi.accesslog import read_access_log, record_access

    record_access(engine, username="nurse.a", action="case_opened", study_id=1,
                  patient_key="k", client="10.0.0.1", via="team server")
    record_access(engine, username="nurse.a", action="decision_saved", study_id=1)
    before = read_access_log(engine)
    pg = engine.dialect.name == "postgresql"
    verbs = [
        "UPDATE access_events SET username = 'someone.else'",
        "DELETE FROM access_events WHERE action = 'case_opened'",
        ("INSERT INTO access_events (id, at, username, action) VALUES (1, now(), 'x', 'sign_in') "
         "ON CONFLICT (id) DO UPDATE SET username = 'x'") if pg else
        ("INSERT OR REPLACE INTO access_events (id, at, username, action) "
         "VALUES (1, '2026-01-01 00:00:00', 'x', 'sign_in')"),
    ]
    if pg:
        verbs.append("TRUNCATE access_events")
    else:
        verbs.append("REPLACE INTO access_events (id, at, username, action) "
                     "VALUES (2, '2026-01-01 00:00:00', 'x', 'sign_in')")
    for sql in verbs:
        with pytest.raises(DBAPIError, match="access_events is append-only"), \
                engine.begin() as conn:
            conn.execute(sa.text(sql))
    assert read_access_log(engine) == before
    record_access(engine, username="nurse.b", action="case_opened", study_id=2)  # appends work
    assert len(read_access_log(engine)) == 3


def test_sqlite_access_log_refuses_update_delete_and_replace(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path / 'log.db'}")
    _assert_access_log_append_only(engine)
    engine.dispose()


@pytest.mark.postgres
def test_postgres_access_log_refuses_update_delete_upsert_and_truncate(fresh_postgres_url):
    engine = open_store(fresh_postgres_url)
    _assert_access_log_append_only(engine)
    engine.dispose()
