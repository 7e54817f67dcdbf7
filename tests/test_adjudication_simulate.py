"""Simulated nurse decisions from synthetic truth: marked, plausible, reproducible."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from fracture_qi.adjudication.decisions import latest_decisions
from fracture_qi.adjudication.simulate import simulate_adjudications
from fracture_qi.adjudication.worklist import AdjudicationSettings, build_worklist
from fracture_qi.errors import AdjudicationError
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import Study
from tests.adjudication_data import fresh_engine, seed_cases


def write_truth(engine, folder, fractured_every=3):
    with session_scope(engine) as s:
        uids = [(st.study_instance_uid, st.accession_number) for st in s.query(Study).order_by(Study.id)]
    studies, verts = [], []
    for i, (uid, acc) in enumerate(uids):
        fx = i % fractured_every == 0
        studies.append({"study_instance_uid": uid, "accession_number": acc, "copy": 1,
                        "has_fracture": int(fx), "max_grade": 3 if fx else 0})
        for level in ("T12", "L1", "L2"):
            broken = fx and level == "L1"
            verts.append({"study_instance_uid": uid, "level": level,
                          "genant_grade": 3 if broken else 0, "fractured": int(broken),
                          "in_view": 1, "fully_in_view": 1})
    folder.mkdir()
    pd.DataFrame(studies).to_csv(folder / "studies.csv", index=False)
    pd.DataFrame(verts).to_csv(folder / "vertebrae.csv", index=False)
    return folder


def test_simulation_is_marked_plausible_and_idempotent(tmp_path):
    engine = fresh_engine(tmp_path)
    seed_cases(engine, n=60, flagged=[i % 3 == 0 for i in range(60)])
    build_worklist(engine, settings=AdjudicationSettings(audit_negative_rate=1.0,
                                                         double_read_rate=0.3))
    truth = write_truth(engine, tmp_path / "truth")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    summary = simulate_adjudications(engine, truth, now=now)
    assert summary.n_events == 60 + summary.n_second_reads and summary.n_second_reads > 5
    df = latest_decisions(engine)
    assert df.simulated.all() and df.reviewer.str.startswith("simulated-").all()
    assert (df.app_version.str.contains("simulated")).all()
    assert (df.recorded_at <= pd.Timestamp(now)).all()
    first = df[df.read_number == 1]
    # 20 true severe fractures: nearly all confirmed at L1; few false confirmations
    with session_scope(engine) as s:
        uid_of = {st.id: st.study_instance_uid for st in s.query(Study)}
    truth_fx = {r.study_instance_uid for r in pd.read_csv(truth / "studies.csv").itertuples()
                if r.has_fracture}
    is_fx = first.study_id.map(lambda sid: uid_of[sid] in truth_fx)
    assert (first[is_fx].decision == "confirmed").mean() >= 0.8
    assert (first[~is_fx].decision == "confirmed").mean() <= 0.15
    # second reads come from another simulated reader
    second = df[df.read_number == 2]
    assert set(second.reviewer) == {"simulated-nurse-2"}
    again = simulate_adjudications(engine, truth, now=now)
    assert again.n_events == 0 and len(latest_decisions(engine)) == len(df)
    assert latest_decisions(engine, include_simulated=False).empty


def test_simulation_refuses_unmarked_reviewer_and_missing_truth(tmp_path):
    engine = fresh_engine(tmp_path)
    with pytest.raises(AdjudicationError, match="simulated-"):
        simulate_adjudications(engine, tmp_path, reviewer="nurse-a")
    with pytest.raises(AdjudicationError, match="truth"):
        simulate_adjudications(engine, tmp_path / "nowhere")


def test_the_demo_leaves_cases_unread_for_a_new_reviewer(tmp_path):
    """Issue 18: a new nurse following the README on the demo saw "8 of 8 reads done, no
    cases left": the simulated nurse had read every case."""
    from fracture_qi.adjudication.app import AdjudicationApp
    from fracture_qi.adjudication.simulate import DEMO_UNREAD_SHARE

    engine = fresh_engine(tmp_path)
    seed_cases(engine, n=12, flagged=[i % 3 == 0 for i in range(12)])
    settings = AdjudicationSettings(audit_negative_rate=0.5, double_read_rate=0.0)
    build_worklist(engine, settings=settings)
    truth = write_truth(engine, tmp_path / "truth")
    summary = simulate_adjudications(engine, truth, unread_share=DEMO_UNREAD_SHARE,
                                     now=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert summary.n_left_unread >= 2 and summary.n_events > 0
    app = AdjudicationApp(engine, "nurse.new", settings=settings, prefetch=False)
    app.start()
    assert app.case is not None, app.status.value
    strata, seen = set(), set()
    while app.case is not None and app.case.key not in seen:  # once round the waiting cases
        seen.add(app.case.key)
        strata.add(app.case.stratum)
        app.skip()
    assert strata == {"flagged", "audit_negative"}  # both kinds wait for her
