"""The ipywidgets app driven from Python (the browser test drives it through Voila)."""

from __future__ import annotations

import numpy as np
import pytest

from fracture_qi.adjudication.app import AdjudicationApp
from fracture_qi.adjudication.decisions import latest_decisions
from fracture_qi.adjudication.viewer import (
    Finding,
    ViewState,
    prepare_case,
    render_axial,
    render_sagittal,
)
from fracture_qi.adjudication.worklist import AdjudicationSettings, build_worklist
from fracture_qi.dicom.geometry import CTVolume
from tests.adjudication_data import SPACING, fresh_engine, phantom_hu, seed_cases

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def world(tmp_path):
    engine = fresh_engine(tmp_path)
    studies = seed_cases(engine, n=4, dicom_dir=tmp_path / "dicom", flagged=[True] * 4)
    build_worklist(engine, settings=AdjudicationSettings(double_read_rate=0.0))
    yield engine, studies
    engine.dispose()


def fill_confirm(app: AdjudicationApp) -> None:
    app.decision.value = "confirmed"
    app.copy_ai.click()
    app.known.value = "none"
    app.action.value = "refer_fls"


def test_review_two_cases_and_prefetch(world):
    engine, studies = world
    app = AdjudicationApp(engine, "nurse-a")
    app.start()
    assert app.case is not None and app.case.study_id == studies[0].study_id
    assert bytes(app.sag.value).startswith(PNG) and bytes(app.axial.value).startswith(PNG)
    assert "999 000 0000" in app.patient.value and "TESTPATIENT" in app.patient.value
    assert "L1" in app.findings.value
    fill_confirm(app)
    assert [r.value() for r in app.level_rows] == [{"level": "L1", "grade": 2}]
    assert app._prefetch is not None and app._prefetch[0].study_id == studies[1].study_id
    app._prefetch[1].result(timeout=120)  # the nurse reads; the next case gets ready meanwhile
    loads = []
    real_load = app._load
    app._load = lambda case: loads.append(case) or real_load(case)  # type: ignore[method-assign]
    first = app.save()
    assert first is not None and "Saved" in app.status.value
    assert app.case.study_id == studies[1].study_id
    # (the prefetch of the case after it may have started: only case 2 matters here)
    assert all(c.study_id != studies[1].study_id for c in loads), \
        "the next case was decoded again instead of coming from the prefetch"
    assert bytes(app.sag.value).startswith(PNG)
    app._load = real_load  # type: ignore[method-assign]
    app.decision.value = "not_confirmed"
    app.note.value = "old healed deformity only"
    second = app.save()
    assert second is not None
    df = latest_decisions(engine).set_index("study_id")
    assert df.loc[studies[0].study_id, "decision"] == "confirmed"
    assert df.loc[studies[0].study_id, "levels"] == [{"level": "L1", "grade": 2}]
    assert df.loc[studies[1].study_id, "decision"] == "not_confirmed"
    assert set(df.reviewer) == {"nurse-a"}
    app.close()


def test_invalid_form_is_refused_with_field_names(world):
    engine, _ = world
    app = AdjudicationApp(engine, "nurse-a", prefetch=False)
    app.start()
    app.decision.value = "confirmed"  # one empty level row, nothing else
    assert app.save() is None
    msg = app.status.value
    # named the way the form asks (issue 18: "previously known: choose none, reported or
    # known_fls; vertebra 1 grade: Input should be greater than or equal to 1")
    assert "Not saved" in msg and "What happens next?: choose an action" in msg
    assert "Was it already known?: choose one answer" in msg
    assert "Vertebra 1: choose its level" in msg and "Vertebra 1: choose its grade" in msg
    assert "known_fls" not in msg and "Input should" not in msg
    app.decision.value = "not_assessable"
    assert app.save() is None and "Reason box" in app.status.value
    assert latest_decisions(engine).empty


def test_conflict_is_shown_and_nothing_overwritten(world):
    engine, _ = world
    a = AdjudicationApp(engine, "nurse-a", prefetch=False)
    b = AdjudicationApp(engine, "nurse-b", prefetch=False)
    a.start()
    b.start()
    assert a.case.key != b.case.key  # leases keep them apart
    # force nurse-b onto nurse-a's case (as after an expired lease), both save
    rec, prep, err = b._load(a.case)
    b._show_case(a.case, rec, prep, err)
    a.decision.value = "not_confirmed"
    assert a.save() is not None
    b.decision.value = "indeterminate"
    assert b.save() is None
    assert "already saved by nurse-a" in b.status.value and b.save_btn.disabled
    df = latest_decisions(engine)
    assert list(df.decision) == ["not_confirmed"]


def test_correction_supersedes(world):
    engine, studies = world
    app = AdjudicationApp(engine, "nurse-a", prefetch=False)
    app.start()
    fill_confirm(app)
    first = app.save()
    app.correct_btn.click()
    assert app.case.study_id == studies[0].study_id and app.supersedes == first
    assert [r.value() for r in app.level_rows] == [{"level": "L1", "grade": 2}]
    app.decision.value = "not_confirmed"
    fixed = app.save()
    assert fixed is not None and "Correction saved" in app.status.value
    row = latest_decisions(engine).set_index("study_id").loc[studies[0].study_id]
    assert row.decision == "not_confirmed" and row.n_corrections == 1


def test_callback_errors_never_show_a_traceback(world, caplog):
    engine, _ = world

    def broken_loader(paths):
        raise RuntimeError("/secret/path/in/traceback")

    app = AdjudicationApp(engine, "nurse-a", loader=broken_loader, prefetch=False)
    app._render = lambda: (_ for _ in ()).throw(RuntimeError("/secret/render"))  # type: ignore
    app.start()
    assert "reference" in app.status.value and "secret" not in app.status.value
    assert "Traceback" not in app.status.value
    assert any("secret" in r.getMessage() or r.exc_info for r in caplog.records)


def test_no_reviewer_refuses_to_work(world):
    engine, _ = world
    app = AdjudicationApp(engine, "", prefetch=False)
    app.start()
    assert app.case is None and "--reviewer" in app.status.value and app.save_btn.disabled


def test_worklist_end_message(world):
    engine, _ = world
    app = AdjudicationApp(engine, "nurse-a", prefetch=False)
    app.start()
    for _ in range(4):
        app.decision.value = "not_confirmed"
        assert app.save() is not None
    assert app.case is None and "No cases left" in app.status.value


def test_viewer_renders_and_clamps_untrusted_state():
    hu, geoms = phantom_hu()
    rows = [{"level": g["level"], "genant_grade": 2 if g["level"] == "L1" else 0,
             "morph_type": "wedge", "ha_mm": g["ha_mm"], "hm_mm": g["hm_mm"],
             "hp_mm": g["hp_mm"], "geometry": g["geometry"]} for g in geoms]
    prep = prepare_case(["x"], rows, loader=lambda _p: CTVolume(hu, SPACING))
    assert prep.levels()[0] == "T12" and prep.finding("L1").grade == 2
    for st in (ViewState(), ViewState(level="L1", zoom=3, window="soft tissue"),
               ViewState(window="<script>", slab_mm=float("nan"), zoom=1e9, level="../x")):
        png = render_sagittal(prep, st)
        assert png.startswith(PNG)
    assert render_axial(prep, ViewState(level="L1")).startswith(PNG)
    assert render_axial(prep, ViewState(level=None)) is None
    # the overlay changes pixels; switching it off removes them
    assert render_sagittal(prep, ViewState(overlay=True)) != render_sagittal(
        prep, ViewState(overlay=False))
    # a slab average is the mean of the planes inside it
    from fracture_qi.adjudication.viewer import slab_image
    one = slab_image(prep, 0.0)
    mid = len(prep.plane_offsets_mm) // 2
    assert np.allclose(one, prep.cumsum[mid + 1] - prep.cumsum[mid])


def test_finding_geometry_is_parsed_defensively():
    f = Finding.from_row({"level": None, "genant_grade": None, "geometry": {
        "centre_zyx_mm": ["a", 1, 2], "points_zy_mm": [[1, "x"]]}})
    assert f.centre_zyx is None and f.points_zy == [] and f.label == "? G0"


def test_lease_is_kept_while_working_and_lost_after_expiry(world):
    import datetime as dt

    from fracture_qi.adjudication.worklist import claim_case

    engine, _ = world
    app = AdjudicationApp(engine, "nurse-a", prefetch=False)
    app.start()
    held = app.case.held_until
    assert app.keep_lease(now=held - dt.timedelta(minutes=20))  # early: nothing to do
    assert app.case.held_until == held
    assert app.keep_lease(now=held - dt.timedelta(minutes=5))  # renewed
    assert app.case.held_until > held
    later = app.case.held_until + dt.timedelta(minutes=1)  # ran out; nurse-b takes it
    assert claim_case(engine, app.case, "nurse-b", now=later) is not None
    assert not app.keep_lease(now=later + dt.timedelta(seconds=1))
    assert "ran out" in app.status.value
