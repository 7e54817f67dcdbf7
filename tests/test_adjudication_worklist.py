"""Worklist: strata and sampling probabilities, reproducible samples, leases, double reads."""

from __future__ import annotations

import datetime as dt

import pytest

from fracture_qi.adjudication.decisions import record_decision
from fracture_qi.adjudication.sampling import AUDIT_NEGATIVE, is_sampled
from fracture_qi.adjudication.worklist import (
    AdjudicationSettings,
    available_cases,
    build_worklist,
    claim_case,
    claim_next,
    load_case_record,
    release_claim,
    worklist_progress,
)
from fracture_qi.errors import ConfigError
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import Study, WorklistItem
from tests.adjudication_data import fresh_engine, seed_cases

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture()
def engine(tmp_path):
    e = fresh_engine(tmp_path)
    yield e
    e.dispose()


def items(engine, audit="default"):
    with session_scope(engine) as s:
        return {i.study_id: (i.stratum, i.sampling_probability, i.double_read)
                for i in s.query(WorklistItem).filter_by(audit_name=audit)}


def test_strata_probabilities_and_idempotency(engine):
    studies = seed_cases(engine, n=40, flagged=[i < 10 for i in range(40)])
    settings = AdjudicationSettings(audit_negative_rate=0.3, double_read_rate=0.5)
    summary = build_worklist(engine, settings=settings)
    got = items(engine)
    flagged_ids = {s.study_id for s in studies if s.flagged}
    assert {sid for sid, v in got.items() if v[0] == "flagged"} == flagged_ids
    assert all(v[1] == 1.0 for sid, v in got.items() if sid in flagged_ids)
    negatives = [(sid, v) for sid, v in got.items() if v[0] == "audit_negative"]
    assert all(v[1] == pytest.approx(0.3) for _, v in negatives)
    # the sample is exactly the hash rule's, so any machine reproduces it
    with session_scope(engine) as s:
        uids = {st.id: st.study_instance_uid for st in s.query(Study)}
    expected = {s.study_id for s in studies if not s.flagged
                and is_sampled("default", AUDIT_NEGATIVE, uids[s.study_id], 0.3)}
    assert {sid for sid, _ in negatives} == expected
    assert summary.n_flagged == 10 and summary.n_added == len(got)
    assert 0 < summary.n_double_read < len(got)
    again = build_worklist(engine, settings=settings)
    assert again.n_added == 0 and items(engine) == got
    # adding studies later does not reshuffle earlier ones
    seed_cases(engine, n=10, uid_prefix="1.2.826.0.1.3680043.10.2002",
               flagged=[False] * 10)
    build_worklist(engine, settings=settings)
    after = items(engine)
    assert {k: after[k] for k in got} == got


def test_separate_audits_sample_independently(engine):
    seed_cases(engine, n=30, flagged=[False] * 30)
    build_worklist(engine, audit="a", settings=AdjudicationSettings(audit_negative_rate=0.5))
    build_worklist(engine, audit="b", settings=AdjudicationSettings(audit_negative_rate=0.5))
    assert set(items(engine, "a")) != set(items(engine, "b"))


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="audit_negative_rate"):
        AdjudicationSettings(audit_negative_rate=2)
    with pytest.raises(ConfigError, match="lease_minutes"):
        AdjudicationSettings(lease_minutes=0)


def test_oldest_first_leases_and_expiry(engine):
    studies = seed_cases(engine, n=4, flagged=[True] * 4)
    build_worklist(engine, settings=AdjudicationSettings(double_read_rate=0.0))
    a = claim_next(engine, "nurse-a", lease_minutes=30, now=NOW)
    assert a is not None and a.study_id == studies[0].study_id  # oldest study first
    b = claim_next(engine, "nurse-b", lease_minutes=30, now=NOW)
    assert b is not None and b.study_id == studies[1].study_id  # a's case is leased
    # nurse-a asking again gets her own leased case back first
    assert claim_next(engine, "nurse-a", now=NOW).key == a.key
    assert claim_case(engine, a, "nurse-b", now=NOW) is None
    # after the lease runs out, anyone may take it
    later = NOW + dt.timedelta(minutes=31)
    taken = claim_case(engine, a, "nurse-b", now=later)
    assert taken is not None and taken.held_until > later
    release_claim(engine, taken, "nurse-b")
    assert claim_case(engine, a, "nurse-c", now=NOW) is not None


def test_decided_cases_leave_the_queue_and_progress(engine):
    studies = seed_cases(engine, n=3, flagged=[True] * 3)
    build_worklist(engine, settings=AdjudicationSettings(double_read_rate=0.0))
    assert worklist_progress(engine).remaining == 3
    c = claim_next(engine, "nurse-a", now=NOW)
    record_decision(engine, {"study_id": c.study_id, "decision": "not_confirmed",
                             "worklist_item_id": c.worklist_item_id}, "nurse-a")
    left = available_cases(engine, "nurse-b", now=NOW)
    assert c.study_id not in {x.study_id for x in left} and len(left) == 2
    assert claim_case(engine, c, "nurse-b", now=NOW) is None  # decided meanwhile
    p = worklist_progress(engine)
    assert (p.n_reads_needed, p.n_reads_done, p.remaining) == (3, 1, 2)
    assert studies[0].study_id == c.study_id


def test_double_read_goes_to_another_nurse_only(engine):
    seed_cases(engine, n=2, flagged=[True, True])
    build_worklist(engine, settings=AdjudicationSettings(double_read_rate=1.0))
    c = claim_next(engine, "nurse-a", now=NOW)
    assert c.read_number == 1 and c.double_read
    # read 2 is not offered before read 1 is saved
    assert all(x.read_number == 1 for x in available_cases(engine, "nurse-b", now=NOW))
    record_decision(engine, {"study_id": c.study_id, "decision": "not_confirmed",
                             "worklist_item_id": c.worklist_item_id}, "nurse-a")
    mine = available_cases(engine, "nurse-a", now=NOW)
    assert not any(x.study_id == c.study_id for x in mine)  # never her own second read
    theirs = available_cases(engine, "nurse-b", now=NOW)
    second = [x for x in theirs if x.study_id == c.study_id]
    assert len(second) == 1 and second[0].read_number == 2
    assert claim_case(engine, second[0], "nurse-a", now=NOW) is None
    assert claim_case(engine, second[0], "nurse-b", now=NOW) is not None


def test_case_record_has_nurse_details_and_findings(engine):
    seed_cases(engine, n=1, flagged=[True])
    build_worklist(engine)
    c = claim_next(engine, "nurse-a", now=NOW)
    rec = load_case_record(engine, c)
    assert rec.nhs_number and rec.patient_name and rec.birth_date and rec.referral_source
    assert rec.flagged and rec.max_grade == 2
    assert any(f["genant_grade"] == 2 and f["level"] == "L1" for f in rec.findings)


def test_worklist_cli(tmp_path, capsys, monkeypatch):
    from fracture_qi.cli.main import main

    (tmp_path / "data_manifest.yaml").write_text(
        "version: 1\nsynthetic: true\ndatabase: sqlite:///fqi.db\n"
        "adjudication: {audit_negative_rate: 1.0, double_read_rate: 0.0}\n")
    engine = fresh_engine(tmp_path)  # the same fqi.db the manifest names
    seed_cases(engine, n=3, flagged=[True, False, False])
    assert main(["worklist", "--manifest", str(tmp_path / "data_manifest.yaml")]) == 0
    out = capsys.readouterr().out
    assert "flagged (all reviewed)              1" in out
    assert "AI-negative audit sample            2" in out
    assert len(items(engine)) == 3
    monkeypatch.delenv("FRACTURE_QI_MANIFEST", raising=False)
    assert main(["worklist"]) == 2
    assert "no manifest given" in capsys.readouterr().err


def _supersede(engine, screening_id: int, *, flagged: bool) -> int:
    """A screening of the completed series that supersedes *screening_id* (as the engine
    writes it when the series gained instances); returns its id."""
    from fracture_qi.store.schema import Screening

    with session_scope(engine) as s:
        old = s.get(Screening, screening_id)
        new = Screening(run_id=old.run_id, series_id=old.series_id, model_id=old.model_id,
                        model_version=old.model_version, status="ok", flagged=flagged,
                        max_grade=3 if flagged else 0, n_vertebrae=5, n_instances=150,
                        supersedes_id=old.id)
        s.add(new)
        s.flush()
        return new.id


def test_items_follow_a_superseded_screening(engine):
    """A study's series completed after it was screened: its item follows the new result
    with the same reproducible draw; the nurse's decision keeps the screening she saw."""
    settings = AdjudicationSettings(audit_negative_rate=0.3, double_read_rate=0.0)
    studies = seed_cases(engine, n=40, flagged=[i < 20 for i in range(40)])
    with session_scope(engine) as s:
        uids = {st.id: st.study_instance_uid for st in s.query(Study)}

    def sampled(st):
        return is_sampled("default", AUDIT_NEGATIVE, uids[st.study_id], 0.3)

    build_worklist(engine, settings=settings)
    flagged_out = next(st for st in studies if st.flagged and not sampled(st))
    flagged_sampled = next(st for st in studies if st.flagged and sampled(st))
    negative_in = next(st for st in studies if not st.flagged and sampled(st))
    negative_out = next(st for st in studies if not st.flagged and not sampled(st))
    decided = next(st for st in studies if st.flagged and not sampled(st)
                   and st is not flagged_out)
    item_of = {i.study_id: i.id for i in _items_rows(engine)}
    record_decision(engine, {"study_id": decided.study_id, "decision": "not_confirmed",
                             "screening_id": decided.screening_id,
                             "worklist_item_id": item_of[decided.study_id]}, "nurse-a")
    new = {
        flagged_out.study_id: _supersede(engine, flagged_out.screening_id, flagged=False),
        flagged_sampled.study_id: _supersede(engine, flagged_sampled.screening_id,
                                             flagged=False),
        negative_in.study_id: _supersede(engine, negative_in.screening_id, flagged=True),
        negative_out.study_id: _supersede(engine, negative_out.screening_id, flagged=True),
        decided.study_id: _supersede(engine, decided.screening_id, flagged=False),
    }
    before = items(engine)
    summary = build_worklist(engine, settings=settings)
    got = items(engine)
    rows = {i.study_id: i for i in _items_rows(engine)}
    assert got[negative_in.study_id][:2] == ("flagged", 1.0)
    assert got[flagged_sampled.study_id][:2] == ("audit_negative", pytest.approx(0.3))
    # on the list already, no longer flagged and not in the sample: reviewed for certain
    assert got[flagged_out.study_id][:2] == ("audit_negative", 1.0)
    assert got[decided.study_id][:2] == ("audit_negative", 1.0)
    # a negative that was not drawn and is now flagged is added as any flagged study
    assert negative_out.study_id not in before and got[negative_out.study_id][:2] == (
        "flagged", 1.0)
    assert summary.n_added == 1
    for sid, screening in new.items():
        assert rows[sid].screening_id == screening, sid
    # nothing else moved, and the decision keeps the screening the nurse saw
    assert {k: v for k, v in got.items() if k not in new} == {
        k: v for k, v in before.items() if k not in new}
    from fracture_qi.store.schema import AdjudicationEvent

    with session_scope(engine) as s:
        (ev,) = s.query(AdjudicationEvent).filter_by(study_id=decided.study_id).all()
        assert ev.screening_id == decided.screening_id
    assert build_worklist(engine, settings=settings).n_added == 0 and items(engine) == got


def _items_rows(engine):
    with session_scope(engine) as s:
        rows = s.query(WorklistItem).all()
        s.expunge_all()
        return rows
