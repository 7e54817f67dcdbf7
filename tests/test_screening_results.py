"""The database sink and the index's resume query when a series grows after it was screened:
the complete series is screened once and its row supersedes the old one (kept); a job made
before the series changed never supersedes anything; a rerun does nothing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa

from fracture_qi.dicom.index import chosen_series
from fracture_qi.screening.jobs import SeriesJob, SeriesOutcome
from fracture_qi.screening.results import DatabaseSink, start_run
from fracture_qi.screening.types import SeriesResult
from fracture_qi.store import open_store, session_scope
from fracture_qi.store import schema as S

MODEL = SimpleNamespace(model_id="m", model_version="1")


def _outcome(series_id: int, n: int | None, *, flagged: bool) -> SeriesOutcome:
    job = SeriesJob(key=series_id, series_id=series_id, study_instance_uid="1.2.3",
                    series_instance_uid="1.2.3.1", n_instances=n)
    return SeriesOutcome(job, SeriesResult(flagged=flagged, max_grade=3 if flagged else 0))


def _set_instances(engine: sa.Engine, series_id: int, n: int) -> None:
    with session_scope(engine) as s:
        s.get(S.Series, series_id).n_instances = n


def _rows(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.select(
            S.Screening.id, S.Screening.flagged, S.Screening.n_instances,
            S.Screening.supersedes_id).order_by(S.Screening.id))]


def test_a_grown_series_is_screened_once_more_and_supersedes(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'fqi.db'}")
    with session_scope(engine) as s:
        study = S.Study(study_instance_uid="1.2.3", eligible=True)
        s.add(study)
        s.flush()
        series = S.Series(series_instance_uid="1.2.3.1", study_id=study.id, n_instances=90,
                          chosen=True, status="ok")
        s.add(series)
        s.flush()
        study.chosen_series_id = series.id
        sid = series.id
    run = start_run(engine, MODEL, device="cpu", params={}, host="h", code_version="x")
    sink = DatabaseSink(engine, run_id=run, model=MODEL, keyimage_dir=tmp_path / "k")

    def unscreened() -> list[int]:
        return [r.series_id for r in chosen_series(engine, unscreened_for=("m", "1"))]

    assert unscreened() == [sid]
    assert sink.write(_outcome(sid, 90, flagged=False))
    assert not sink.write(_outcome(sid, 90, flagged=False))  # the same content: once
    assert not sink.write(_outcome(sid, None, flagged=True))  # content unknown: kept
    assert unscreened() == []
    (first, _, _, _), = _rows(engine)

    _set_instances(engine, sid, 150)  # the rest of the study arrived and was indexed
    assert unscreened() == [sid]
    # a job made before the series grew (a long batch overtaken) supersedes nothing
    assert not sink.write(_outcome(sid, 120, flagged=True))
    assert _rows(engine) == [(first, False, 90, None)]
    assert sink.write(_outcome(sid, 150, flagged=True))
    rows = _rows(engine)
    assert rows[0] == (first, False, 90, None)  # kept as it was
    assert rows[1][1:] == (True, 150, first)
    assert not sink.write(_outcome(sid, 150, flagged=True))
    assert unscreened() == []
    with engine.connect() as c:
        assert c.execute(sa.select(S.ScreeningRun.n_ok).where(S.ScreeningRun.id == run)
                         ).scalar() == 2
    engine.dispose()
