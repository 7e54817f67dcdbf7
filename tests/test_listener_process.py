"""The listener's processing step when a study's series grows after it was screened.

The sequence the listener meets when a sender pauses for longer than ``quiet_seconds`` in
the middle of a study (a router resending after a restart, a busy PACS): the first part is
received, processed (indexed, screened on too few slices: not flagged), then the rest
arrives and the study is processed again. Driven here in-process and in order, with the
real storage area, index, reference model and worklist, so it does not depend on timing:
the complete series must be screened (once), its result must be the one that counts
everywhere, and the result of the incomplete series must be kept.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from fracture_qi.listener.process import StudyProcessor
from fracture_qi.listener.storage import store_instance
from fracture_qi.manifest import read_manifest
from fracture_qi.screening.counting import counted_results
from fracture_qi.screening.results import export_results
from fracture_qi.store import open_store
from tests.listener_helpers import new_port, write_manifest
from tests.spine_ct import write_spine_study

#: slices of the 150 that arrive first: the reference screener finds two vertebrae in them
#: and no fracture (the L1 wedge is in the rest)
FIRST_PART = 90


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One flagged spine CT study (150 slices, L1 wedge fracture)."""
    return write_spine_study(tmp_path_factory.mktemp("ct") / "study")


def _receive(area: Path, engine: sa.Engine, files: list[Path]) -> str:
    """Store *files* as the SCP would; returns the study UID."""
    uid = ""
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        uid = str(ds.StudyInstanceUID)
        store_instance(area, engine, f.read_bytes(), study=uid, series=str(ds.SeriesInstanceUID),
                       sop=str(ds.SOPInstanceUID), sop_class=str(ds.SOPClassUID),
                       calling_aet="TESTSCU", fsync=False)
    return uid


def _rows(engine: sa.Engine, sql: str) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql))]


def test_a_series_that_grows_after_screening_is_screened_again(tmp_path: Path,
                                                               study: list[Path]) -> None:
    path = write_manifest(tmp_path, port=new_port())
    (tmp_path / "received").mkdir()  # the storage area (the listener makes it when it starts)
    manifest = read_manifest(path)
    engine = open_store(manifest)
    area = Path(manifest.storage_area().path)
    processor = StudyProcessor(manifest, engine)

    # 1. the first part arrives and is processed: screened on 90 slices, not flagged
    uid = _receive(area, engine, study[:FIRST_PART])
    first = processor.process(uid)
    assert first.eligible and first.screened == 1 and not first.flagged
    partial = _rows(engine, "select id, status, flagged, n_instances, supersedes_id "
                            "from screenings")
    assert len(partial) == 1
    partial_id, status, flagged, n, sup = partial[0]
    assert (status, bool(flagged), n, sup) == ("ok", False, FIRST_PART, None)
    assert _rows(engine, "select count(*) from worklist_items") == [(0,)]

    # 2. the rest arrives (with the copies a resending router sends again): the complete
    # series is screened, flagged, and its result supersedes the partial one
    _receive(area, engine, study)
    second = processor.process(uid)
    assert second.screened == 1 and second.flagged, second.line()
    rows = _rows(engine, "select id, status, flagged, max_grade, n_vertebrae, n_instances, "
                         "supersedes_id from screenings order by id")
    assert len(rows) == 2
    # the partial result is kept as it was
    assert (rows[0][0], rows[0][1], bool(rows[0][2])) == (partial_id, "ok", False)
    assert rows[0][5:] == (FIRST_PART, None)
    complete_id, status, flagged, grade, n_vertebrae, n, sup = rows[1]
    assert (status, bool(flagged), grade, n, sup) == ("ok", True, 3, len(study), partial_id)
    # the partial result's findings are kept with it
    assert _rows(engine, f"select count(*) from vertebra_findings where screening_id = "
                         f"{partial_id}")[0][0] > 0

    # 3. everything that counts follows the complete series: the one counting rule, the
    # export, and the worklist (flagged, on the new screening)
    counted = counted_results(engine)
    assert counted["screening_id"].tolist() == [complete_id]
    assert bool(counted["flagged"].iloc[0])
    out = export_results(engine, tmp_path / "export")
    with open(Path(out.files[0]), newline="") as f:
        exported = [r for r in csv.DictReader(f) if r["series_instance_uid"]]
    assert [(r["flagged"], r["max_grade"], r["n_vertebrae"]) for r in exported] == [
        ("1", "3", str(n_vertebrae))]
    assert _rows(engine, "select screening_id, stratum from worklist_items") == [
        (complete_id, "flagged")]

    # 4. processing it again changes nothing: the complete series is screened once
    third = processor.process(uid)
    assert third.screened == 0 and third.flagged
    assert _rows(engine, "select count(*) from screenings") == [(2,)]
    engine.dispose()
