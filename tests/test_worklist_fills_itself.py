"""After ``index`` and ``screen`` alone, the nurse's worklist shows the flagged cases
(issue 18, item 5): the app used to open on "0 of 0 reads done, no cases left" because the
worklist was built only by a separate ``fracture-qi worklist`` nobody told the nurse about."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from fracture_qi.adjudication.app import AdjudicationApp
from fracture_qi.cli.main import main
from fracture_qi.store import open_store
from fracture_qi.store.schema import Screening, WorklistItem


@pytest.mark.slow
def test_index_and_screen_alone_put_the_flagged_studies_on_the_worklist(
        tmp_path_factory, capsys, monkeypatch):
    monkeypatch.delenv("FRACTURE_QI_DATABASE", raising=False)
    out = tmp_path_factory.mktemp("fills") / "cohort"
    assert main(["synth", str(out), "--patients", "10", "--seed", "7", "--fast"]) == 0
    manifest = out / "data_manifest.yaml"
    assert main(["index", "--manifest", str(manifest), "--no-progress"]) == 0
    assert main(["screen", "--manifest", str(manifest), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "worklist:" in printed and "added for the nurses" in printed
    engine = open_store(str(manifest))
    with engine.connect() as conn:
        n_flagged = conn.scalar(select(func.count()).select_from(Screening)
                                .where(Screening.flagged.is_(True), Screening.status == "ok"))
        strata = dict(conn.execute(select(WorklistItem.stratum, func.count())
                                   .group_by(WorklistItem.stratum)).all())
    assert n_flagged >= 1 and strata.get("flagged") == n_flagged, (n_flagged, strata)
    app = AdjudicationApp.from_manifest(manifest, reviewer="nurse.new", prefetch=False)
    app.start()
    assert app.case is not None and "0 of 0" not in app.header.value, app.status.value
    app.close()
    engine.dispose()
