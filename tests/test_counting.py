"""One rule decides which screening result counts: with two models on one cohort, the export,
the worklist, the audit (load_analysis) and the dashboard's cube report the same result for
every study."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import insert, select, update

from fracture_qi.adjudication.worklist import AdjudicationSettings, build_worklist
from fracture_qi.dashboards.cube import cube_from_engine
from fracture_qi.outcomes.readmodel import load_analysis
from fracture_qi.screening.counting import counted_results, resolve_model
from fracture_qi.screening.results import export_results
from fracture_qi.simulation import ModelSpec, ServiceParams, populate
from fracture_qi.store.db import connect
from fracture_qi.store.schema import Base, Screening, ScreeningRun, Series, Study, WorklistItem


@pytest.fixture()
def two_models(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A cohort screened by two models; the second (newer) one screened fewer studies, and
    some studies also have a result on a series that is not their chosen one."""
    eng = connect(f"sqlite:///{tmp_path / 'two.db'}")
    Base.metadata.create_all(eng)
    params = ServiceParams(models=(ModelSpec("reference", "1.0"),
                                   ModelSpec("vendor-x", "2.3", sensitivity=0.7,
                                             specificity=0.97, first_month=6, share=0.8)))
    populate(eng, 400, seed=3, params=params, with_fls=False)
    with eng.begin() as c:
        # a re-index chose another series for 20 studies: their old series keep the old
        # (now not counted) results, the new chosen series a fresh result of "reference"
        studies = c.execute(select(Study.id, Study.chosen_series_id)
                            .where(Study.eligible.is_(True)).order_by(Study.id).limit(20)).all()
        run = c.execute(insert(ScreeningRun).values(model_id="reference", model_version="1.0",
                                                    params={})).inserted_primary_key[0]
        for sid, old in studies:
            new = c.execute(insert(Series).values(
                series_instance_uid=f"2.25.99.{sid}", study_id=sid, modality="CT",
                status="ok", chosen=True)).inserted_primary_key[0]
            c.execute(update(Series).where(Series.id == old).values(chosen=False))
            c.execute(update(Study).where(Study.id == sid).values(chosen_series_id=new))
            c.execute(insert(Screening).values(run_id=run, series_id=new, model_id="reference",
                                               model_version="1.0", status="ok", flagged=True,
                                               max_grade=3))
    yield eng
    eng.dispose()


def _export_rows(eng, out: Path, **model) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    export_results(eng, out, **model)
    with open(out / "studies.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["series_instance_uid"]: r for r in rows if r["series_instance_uid"]}


def test_every_consumer_counts_the_same_result(two_models, tmp_path: Path) -> None:
    eng = two_models
    default = resolve_model(eng)
    assert default is not None and default.label == "reference:1.0"  # most counted results
    with eng.connect() as c:
        uid_of = dict(c.execute(select(Series.id, Series.series_instance_uid)).all())
        study_of_chosen = dict(c.execute(select(Study.chosen_series_id, Study.id)).all())
    cube = cube_from_engine(eng)
    # a new worklist (the simulated one was drawn before the re-index, and items are never
    # re-drawn)
    build_worklist(eng, audit="two-models", settings=AdjudicationSettings(audit_negative_rate=0.3))
    with eng.connect() as c:
        worklist = pd.DataFrame(c.execute(select(WorklistItem.study_id, WorklistItem.screening_id,
                                                 WorklistItem.stratum)
                                          .where(WorklistItem.audit_name == "two-models")).all(),
                                columns=["study_id", "screening_id", "stratum"])
    for model in ("reference:1.0", "vendor-x:2.3"):
        counted = counted_results(eng, model).set_index("study_id")
        # 1. export: the chosen series' row is the counted result
        mid, ver = model.split(":")
        exported = _export_rows(eng, tmp_path / model.replace(":", "_"), model_id=mid,
                                model_version=ver)
        for sid, r in counted.iterrows():
            row = exported[uid_of[r["series_id"]]]
            assert row["status"] == r["status"], sid
            if r["status"] == "ok":
                assert (int(row["flagged"]), int(row["max_grade"])) == (
                    int(r["flagged"]), int(r["max_grade"])), sid
        # 2. audit: load_analysis's AI columns are the counted result
        data = load_analysis(eng, model=model)
        st = data.studies.set_index("study_id")
        for sid, r in counted.iterrows():
            assert st.loc[sid, "screening_status"] == r["status"], sid
            if r["status"] == "ok" and st.loc[sid, "eligible"]:
                assert bool(st.loc[sid, "ai_flagged"]) == bool(r["flagged"]), sid
                assert int(st.loc[sid, "ai_max_grade"]) == int(r["max_grade"]), sid
        assert st["screening_status"].notna().sum() == len(counted)
        # 3. dashboard: the cube's counts for the model are the counted results'
        t = cube.totals({"model": model})
        ok = counted["status"].eq("ok") & st.loc[counted.index, "eligible"].to_numpy()
        assert t["screened"] == ok.sum()
        assert t["flagged"] == (ok & counted["flagged"].astype(bool)).sum()
        assert t["svc_unassessable"] == (~counted["status"].eq("ok")
                                         & st.loc[counted.index, "eligible"].to_numpy()).sum()
    # 4. worklist: built from the default model's counted results (ok ones)
    ref = counted_results(eng).set_index("study_id")
    for row in worklist.itertuples():
        assert row.screening_id == ref.loc[row.study_id, "screening_id"], row.study_id
        assert (row.stratum == "flagged") == bool(ref.loc[row.study_id, "flagged"])
    flagged_ok = ref[ref["status"].eq("ok") & ref["flagged"].astype(bool)].index
    assert set(flagged_ok) <= set(worklist["study_id"])
    # the re-indexed studies count their new series' result everywhere, never the old one
    new_chosen = [sid for s, sid in study_of_chosen.items() if uid_of.get(s, "").startswith("2.25.99.")]
    assert new_chosen and all(ref.loc[sid, "max_grade"] == 3 for sid in new_chosen)


def test_model_names_resolve_by_the_rule(two_models) -> None:
    eng = two_models
    assert resolve_model(eng, "vendor-x").label == "vendor-x:2.3"
    assert resolve_model(eng, "reference:1.0").label == "reference:1.0"
    from fracture_qi.errors import ConfigError

    with pytest.raises(ConfigError, match="no screening results"):
        resolve_model(eng, "nobody")
