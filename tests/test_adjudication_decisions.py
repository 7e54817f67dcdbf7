"""Decisions as append-only events: validation, idempotency, conflicts, corrections, triggers."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import text

from fracture_qi.adjudication.decisions import (
    DecisionInput,
    current_decision,
    latest_decisions,
    record_decision,
    validate_decision,
)
from fracture_qi.errors import ConflictError, ValidationError
from tests.adjudication_data import fresh_engine, seed_cases
from tests.services.postgres import fresh_postgres_url, postgres_server  # noqa: F401


@pytest.fixture()
def db(tmp_path):
    engine = fresh_engine(tmp_path)
    studies = seed_cases(engine, n=4)
    yield engine, studies
    engine.dispose()


def confirm(study_id: int, **kw) -> dict:
    return {"study_id": study_id, "decision": "confirmed",
            "levels": [{"level": "L1", "grade": 2}], "previously_known": "none",
            "action": "refer_fls", **kw}


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"decision": "confirmed"}, "levels"),
        ({"decision": "confirmed", "levels": [{"level": "L1", "grade": 2}]}, "previously_known"),
        ({"decision": "confirmed", "levels": [{"level": "L9", "grade": 2}],
          "previously_known": "none", "action": "refer_fls"}, "levels.0.level"),
        ({"decision": "confirmed", "levels": [{"level": "L1", "grade": 4}],
          "previously_known": "none", "action": "refer_fls"}, "levels.0.grade"),
        ({"decision": "confirmed", "levels": [{"level": "L1", "grade": "2"}],
          "previously_known": "none", "action": "refer_fls"}, "levels.0.grade"),
        ({"decision": "not_confirmed", "levels": [{"level": "L1", "grade": 2}]}, "levels"),
        ({"decision": "not_assessable"}, "not_assessable_reason"),
        ({"decision": "confirmed", "levels": [{"level": "L1", "grade": 1}],
          "previously_known": "none", "action": "not_appropriate"}, "action_reason"),
        ({"decision": "nope"}, "decision"),
        ({"decision": "not_confirmed", "reviewer": "someone-else"}, "reviewer"),
        ({"decision": "not_confirmed", "note": "x" * 5000}, "note"),
        ({"decision": "not_confirmed", "note": "bad\x00byte"}, "note"),
        ({"decision": "not_confirmed", "read_number": 3}, "read_number"),
        ({"decision": "not_confirmed", "event_uid": "not-a-uuid"}, "event_uid"),
    ],
)
def test_validation_names_the_field(form, field):
    with pytest.raises(ValidationError) as ei:
        validate_decision({"study_id": 1, **form})
    assert any(p.startswith(field) for p in ei.value.problems), ei.value.problems


def test_valid_forms_normalise():
    d = validate_decision(confirm(1, note="  fell last week  "))
    assert d.note == "fell last week" and d.levels[0].level == "L1"
    d2 = validate_decision({"study_id": 1, "decision": "not_assessable",
                            "not_assessable_reason": "spine out of view"})
    assert d2.not_assessable_reason == "spine out of view"


def test_record_and_read_back(db):
    engine, studies = db
    sid = studies[0].study_id
    t0 = dt.datetime.now(dt.timezone.utc)
    ev = record_decision(engine, confirm(sid), "nurse-a", "test 1")
    assert ev.id and ev.reviewer == "nurse-a" and ev.app_version == "test 1"
    assert ev.recorded_at >= t0 - dt.timedelta(seconds=1)
    df = latest_decisions(engine)
    assert len(df) == 1
    row = df.iloc[0]
    assert row.decision == "confirmed" and row.max_grade == 2 and row.reviewer == "nurse-a"
    assert row.recorded_at.tzinfo is not None and row.n_corrections == 0


def test_retry_with_same_event_uid_is_idempotent(db):
    engine, studies = db
    form = confirm(studies[0].study_id, event_uid=str(uuid.uuid4()))
    a = record_decision(engine, form, "nurse-a")
    b = record_decision(engine, form, "nurse-a")
    assert a.id == b.id
    with engine.connect() as c:
        assert c.execute(text("select count(*) from adjudication_events")).scalar() == 1
    with pytest.raises(ConflictError):  # same key, different content
        record_decision(engine, {**form, "note": "changed"}, "nurse-a")


def test_second_save_of_same_read_conflicts_and_overwrites_nothing(db):
    engine, studies = db
    sid = studies[0].study_id
    first = record_decision(engine, confirm(sid), "nurse-a")
    with pytest.raises(ConflictError) as ei:
        record_decision(engine, {"study_id": sid, "decision": "not_confirmed"}, "nurse-b")
    assert ei.value.existing_event_id == first.id
    assert "nurse-a" in str(ei.value)
    cur = current_decision(engine, sid, 1)
    assert cur is not None and cur.id == first.id and cur.decision == "confirmed"


def test_correction_supersedes_and_chain_counts_latest(db):
    engine, studies = db
    sid = studies[1].study_id
    first = record_decision(engine, confirm(sid), "nurse-a")
    fix = record_decision(engine, {"study_id": sid, "decision": "not_confirmed",
                                   "note": "artefact, not a fracture"}, "nurse-a",
                          supersedes=first.id)
    assert fix.supersedes_id == first.id
    with pytest.raises(ConflictError):  # a second correction of the same event
        record_decision(engine, {"study_id": sid, "decision": "indeterminate"}, "nurse-b",
                        supersedes=first.id)
    df = latest_decisions(engine)
    row = df[df.study_id == sid].iloc[0]
    assert row.decision == "not_confirmed" and row.event_id == fix.id
    assert row.n_corrections == 1 and row.first_recorded_at <= row.recorded_at
    with pytest.raises(ValidationError):  # correcting across studies is refused
        record_decision(engine, {"study_id": studies[2].study_id, "decision": "not_confirmed"},
                        "nurse-a", supersedes=fix.id)


def test_same_nurse_cannot_do_both_reads(db):
    engine, studies = db
    sid = studies[0].study_id
    record_decision(engine, confirm(sid), "nurse-a")
    with pytest.raises(ValidationError, match="second nurse"):
        record_decision(engine, {**confirm(sid), "read_number": 2}, "nurse-a")
    ev2 = record_decision(engine, {**confirm(sid), "read_number": 2}, "nurse-b")
    assert ev2.read_number == 2
    assert len(latest_decisions(engine)) == 2


def test_unknown_study_and_bad_reviewer(db):
    engine, _ = db
    with pytest.raises(ValidationError, match="no study"):
        record_decision(engine, {"study_id": 9999, "decision": "not_confirmed"}, "nurse-a")
    with pytest.raises(ValidationError, match="reviewer"):
        record_decision(engine, {"study_id": 1, "decision": "not_confirmed"}, "  ")


def test_database_refuses_update_and_delete(db):
    engine, studies = db
    record_decision(engine, confirm(studies[0].study_id), "nurse-a")
    for stmt in ("update adjudication_events set decision = 'not_confirmed'",
                 "delete from adjudication_events"):
        with pytest.raises(Exception, match="append-only"):
            with engine.begin() as c:
                c.execute(text(stmt))
    assert latest_decisions(engine).iloc[0].decision == "confirmed"


def test_simulated_filter(db):
    engine, studies = db
    record_decision(engine, confirm(studies[0].study_id), "sim", simulated=True)
    record_decision(engine, confirm(studies[1].study_id), "nurse-a")
    assert len(latest_decisions(engine)) == 2
    real = latest_decisions(engine, include_simulated=False)
    assert list(real.reviewer) == ["nurse-a"]


def test_empty_latest_has_columns(tmp_path):
    engine = fresh_engine(tmp_path)
    df = latest_decisions(engine)
    assert df.empty and "max_grade" in df.columns


def test_decision_input_is_frozen():
    d = DecisionInput(study_id=1, decision="not_confirmed")
    with pytest.raises(Exception):
        d.decision = "confirmed"  # type: ignore[misc]


@pytest.mark.postgres
def test_events_on_postgresql(fresh_postgres_url):  # noqa: F811
    """The same guarantees on a real PostgreSQL server: conflict, idempotency, corrections,
    and the database's own refusal of UPDATE and DELETE."""
    from tests.adjudication_data import make_store

    engine = make_store(fresh_postgres_url)
    try:
        studies = seed_cases(engine, n=2)
        sid = studies[0].study_id
        form = confirm(sid, event_uid=str(uuid.uuid4()))
        first = record_decision(engine, form, "nurse-a")
        assert record_decision(engine, form, "nurse-a").id == first.id
        with pytest.raises(ConflictError) as ei:
            record_decision(engine, {"study_id": sid, "decision": "not_confirmed"}, "nurse-b")
        assert ei.value.existing_event_id == first.id
        fix = record_decision(engine, {"study_id": sid, "decision": "not_confirmed"}, "nurse-a",
                              supersedes=first.id)
        row = latest_decisions(engine).iloc[0]
        assert row.event_id == fix.id and row.n_corrections == 1
        assert row.recorded_at.tzinfo is not None
        for stmt in ("update adjudication_events set note = 'x'", "delete from adjudication_events"):
            with pytest.raises(Exception, match="append-only"):
                with engine.begin() as c:
                    c.execute(text(stmt))
    finally:
        engine.dispose()
