"""A form a nurse can trust (issue 18, items 5 and 7), driven from Python.

Each test reproduces a defect a new user met: the app opened on an empty worklist after
``index`` and ``screen``; "Next case" dropped a half-filled decision; after Next then Skip the
app said "No cases left" with reads remaining; "Copy AI findings" failed when the AI had only
numbered the vertebrae; zoom carried over to the next case; the form asked "was it already
known?" without the history; audit-sample cases were labelled "AI negative" with the AI
overlay on; nothing recorded who opened which patient.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from fracture_qi.accesslog import read_access_log
from fracture_qi.adjudication.app import AdjudicationApp
from fracture_qi.adjudication.decisions import latest_decisions
from fracture_qi.adjudication.viewer import ViewState, render_sagittal
from fracture_qi.adjudication.worklist import AdjudicationSettings, build_worklist
from fracture_qi.outcomes.readmodel import load_reads
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import (
    AdjudicationEvent,
    FlsEpisode,
    Patient,
    Study,
    VertebraFinding,
    WorklistItem,
)
from tests.adjudication_data import fresh_engine, seed_cases

NO_DOUBLE = AdjudicationSettings(audit_negative_rate=1.0, double_read_rate=0.0)


@pytest.fixture()
def flagged(tmp_path):
    engine = fresh_engine(tmp_path)
    studies = seed_cases(engine, n=3, dicom_dir=tmp_path / "dicom", flagged=[True] * 3)
    build_worklist(engine, settings=NO_DOUBLE)
    yield engine, studies
    engine.dispose()


def test_the_worklist_fills_itself_when_the_app_opens(tmp_path):
    """After index and screen alone the app said "0 of 0 reads done, no cases left"."""
    engine = fresh_engine(tmp_path)
    studies = seed_cases(engine, n=2, dicom_dir=tmp_path / "dicom", flagged=[True, False])
    app = AdjudicationApp(engine, "nurse-a", settings=NO_DOUBLE, prefetch=False)
    app.start()
    assert app.case is not None and app.case.study_id == studies[0].study_id
    assert "0 of 0" not in app.header.value and "of 2 reads done" in app.header.value
    with session_scope(engine) as s:
        items = {w.study_id: (w.stratum, w.sampling_probability)
                 for w in s.scalars(select(WorklistItem))}
    assert items == {studies[0].study_id: ("flagged", 1.0),
                     studies[1].study_id: ("audit_negative", 1.0)}
    # a study screened while she works is offered when the rest is done
    more = seed_cases(engine, n=1, flagged=[True], uid_prefix="1.2.826.0.1.3680043.10.1002",
                      start=dt.date(2025, 6, 2))
    for _ in range(2):
        app.decision.value = "not_confirmed"
        assert app.save() is not None
        if app.reveal_box.layout.display is None:  # a blind read was saved: go on
            app.after_next_btn.click()
    assert app.case is not None and app.case.study_id == more[0].study_id
    assert "newly screened" in app.status.value


def test_next_and_skip_never_drop_a_half_filled_decision(flagged):
    engine, studies = flagged
    app = AdjudicationApp(engine, "nurse-a", prefetch=False)
    app.start()
    first = app.case.key
    app.decision.value = "confirmed"
    app.note.value = "wedge at L1?"
    app.next_btn.click()
    assert app.case.key == first, "Next dropped a half-filled decision without asking"
    assert app.confirm_box.layout.display is None and "not saved" in app.status.value
    assert app.decision.value == "confirmed" and app.note.value == "wedge at L1?"
    app.keep_btn.click()
    assert app.case.key == first and app.confirm_box.layout.display == "none"
    app.skip_btn.click()
    assert app.case.key == first
    app.discard_btn.click()
    assert app.case.key != first and app.decision.value is None and app.note.value == ""
    assert "back on the worklist" in app.status.value and "comes back" in app.status.value
    # the buttons say what they do
    assert "back to the worklist" in app.skip_btn.description.lower()
    assert "held" in app.next_btn.description.lower()
    assert "held for you" in app.next_btn.tooltip and "colleague" in app.skip_btn.tooltip


def test_cases_passed_over_come_back_instead_of_no_cases_left(flagged):
    """After Next then Skip, the app said "No cases left" while the header read 9 of 12."""
    engine, studies = flagged
    app = AdjudicationApp(engine, "nurse-a", prefetch=False)
    app.start()
    seen = [app.case.study_id]
    app.next_btn.click()  # keep held
    seen.append(app.case.study_id)
    app.skip_btn.click()  # back to the worklist
    seen.append(app.case.study_id)
    assert seen == [s.study_id for s in studies]
    decided = []
    for _ in range(3):
        assert app.case is not None, app.status.value
        decided.append(app.case.study_id)
        app.decision.value = "not_confirmed"
        assert app.save() is not None
    assert sorted(decided) == sorted(s.study_id for s in studies)
    assert app.case is None and "No cases left" in app.status.value
    assert len(latest_decisions(engine)) == 3


def test_copy_ai_findings_works_when_the_ai_only_numbered_the_vertebrae(flagged):
    engine, studies = flagged
    with session_scope(engine) as s:
        s.execute(update(VertebraFinding).where(
            VertebraFinding.screening_id == studies[0].screening_id).values(level=None))
    app = AdjudicationApp(engine, "nurse-a", prefetch=False)
    app.start()
    app.decision.value = "confirmed"
    app.copy_ai.click()
    rows = [r.value() for r in app.level_rows]
    assert rows == [{"level": "", "grade": 2}], rows
    ident = app.level_rows[0].ai_ident
    assert ident and ident.startswith("#") and ident in app.status.value
    app.known.value = "none"
    app.action.value = "refer_fls"
    assert app.save() is None
    msg = app.status.value
    assert f"Vertebra 1 (AI {ident}): choose its level" in msg, msg
    assert "level &#x27;&#x27; is not one of" not in msg and "Input should" not in msg
    app.level_rows[0].level.value = "L1"
    assert app.save() is not None
    row = latest_decisions(engine).set_index("study_id").loc[studies[0].study_id]
    assert row.levels == [{"level": "L1", "grade": 2}]


def test_each_case_opens_at_its_own_zoom(flagged):
    engine, _ = flagged
    app = AdjudicationApp(engine, "nurse-a", prefetch=False)
    app.start()
    app.zoom.value = 3.0
    app.offset.value = 5.0
    app.skip()
    assert app.zoom.value == 1.0 and app.offset.value == 0.0
    assert app.view_state().zoom == 1.0


def test_age_fls_status_and_therapy_are_beside_was_it_known(flagged):
    engine, studies = flagged
    with session_scope(engine) as s:
        study = s.get(Study, studies[0].study_id)
        key = s.get(Patient, study.patient_id).patient_key
        s.add(FlsEpisode(source="fls", record_id="R1", patient_key=key, known_to_fls=True,
                         referral_date=dt.date(2024, 3, 2), assessment_date=dt.date(2024, 3, 20),
                         drug="alendronic acid", therapy_start_date=dt.date(2024, 4, 1),
                         on_therapy_before=True))
    app = AdjudicationApp(engine, "nurse-a", prefetch=False)
    app.start()
    app.decision.value = "confirmed"
    h = app.history.value
    assert "78 at this CT" in h and "known to the FLS (referred 2024-03-02)" in h
    assert "alendronic acid started 2024-04-01" in h and "on therapy before this CT" in h
    assert app.history in app.confirmed_box.children[4].children  # beside the question
    app.skip()
    assert "no FLS record" in app.history.value


@pytest.fixture()
def audit_sample(tmp_path):
    engine = fresh_engine(tmp_path)
    studies = seed_cases(engine, n=2, dicom_dir=tmp_path / "dicom", flagged=[False, True],
                         start=dt.date(2025, 1, 6))
    build_worklist(engine, settings=NO_DOUBLE)
    yield engine, studies
    engine.dispose()


def test_audit_sample_cases_are_read_blind_and_the_blind_read_counts(audit_sample):
    engine, studies = audit_sample
    app = AdjudicationApp(engine, "nurse-a", prefetch=False)
    app.start()
    assert app.case.study_id == studies[0].study_id and app.case.stratum == "audit_negative"
    page = app.patient.value + app.findings.value + app.header.value + app.status.value
    assert "AI negative" not in page and "audit sample" not in page.lower()
    assert "Not flagged" not in page and "hidden" in app.findings.value
    assert app.overlay.value is False and app.overlay.disabled
    assert app.copy_ai.layout.display == "none" and app.keyimg.layout.display == "none"
    plain = render_sagittal(app.prepared, ViewState(overlay=False, level=None))
    assert bytes(app.sag.value) == plain
    # a browser forging the overlay on gets nothing more
    app.overlay.value = True
    assert bytes(app.sag.value) == plain
    app.copy_ai.click()
    assert app.level_rows == []
    app.reveal_btn.click()  # before any answer: nothing happens
    assert "hidden" in app.findings.value
    # the first answer: saved as the blind read, then the AI's result on request
    app.decision.value = "not_confirmed"
    first = app.save()
    assert first is not None and app.reveal_box.layout.display is None
    assert "blind read" in app.reveal_note.value
    app.reveal_btn.click()
    assert app.overlay.value is True and "Not flagged" in app.findings.value
    assert bytes(app.sag.value) != plain
    # she changes her mind after seeing it: kept, but the blind read counts
    app.correct_btn.click()
    app.decision.value = "indeterminate"
    assert app.save() is not None
    with session_scope(engine) as s:
        evs = [(e.decision, e.blind, e.supersedes_id) for e in s.scalars(
            select(AdjudicationEvent).order_by(AdjudicationEvent.id))]
    assert evs == [("not_confirmed", True, None), ("indeterminate", False, first)]
    assert latest_decisions(engine).set_index("study_id").loc[
        studies[0].study_id, "decision"] == "not_confirmed"
    assert load_reads(engine).set_index("study_id").loc[
        studies[0].study_id, "decision"] == "not_confirmed"
    actions = [e["action"] for e in read_access_log(engine)]
    assert actions.count("ai_shown") == 1
    # the flagged case that follows shows the AI's result as before
    assert app.case.stratum == "flagged" and app.overlay.value is True
    assert "AI flagged" in app.patient.value


def test_the_access_log_holds_openings_and_decisions_and_cannot_be_changed(flagged):
    engine, studies = flagged
    app = AdjudicationApp(engine, "nurse-a", prefetch=False, role="nurse", client="10.1.2.3",
                          via="team server")
    app.start()
    app.decision.value = "not_confirmed"
    ev = app.save()
    log = read_access_log(engine)
    opened = [e for e in log if e["action"] == "case_opened"]
    saved = [e for e in log if e["action"] == "decision_saved"]
    assert [e["study_id"] for e in opened] == [studies[0].study_id, studies[1].study_id]
    assert saved[0]["study_id"] == studies[0].study_id and f'"event": {ev}' in saved[0]["detail"]
    for e in opened + saved:
        assert (e["username"], e["role"], e["client"], e["via"]) == (
            "nurse-a", "nurse", "10.1.2.3", "team server")
        assert e["patient_key"] and "TESTPATIENT" not in str(e)
    for sql in ("UPDATE access_events SET username = 'someone.else'",
                "DELETE FROM access_events",
                "INSERT OR REPLACE INTO access_events (id, at, username, action) "
                "VALUES (1, '2026-01-01', 'x', 'sign_in')"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(sql))
    assert len(read_access_log(engine)) == len(log)


def test_a_role_other_than_nurse_is_shown_no_case(flagged):
    engine, _ = flagged
    app = AdjudicationApp(engine, "qi.lead", role="qi_lead", prefetch=False)
    app.start()
    assert app.case is None and app.patient.value == "" and "nurse role" in app.status.value
    assert not [e for e in read_access_log(engine) if e["action"] == "case_opened"]
