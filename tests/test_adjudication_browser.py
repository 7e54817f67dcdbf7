"""A nurse reviews two cases in the real Voila app in Chromium; the database holds both events."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from fracture_qi.adjudication.worklist import AdjudicationSettings, build_worklist
from fracture_qi.cli.adjudicate import notebook_path
from fracture_qi.serve import ENV_AUDIT, ENV_MANIFEST, ENV_REVIEWER
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import AdjudicationEvent
from tests.adjudication_data import make_store, seed_cases
from tests.services.browser import browser_page
from tests.services.voila import start_voila

PAGE_TIMEOUT_MS = 150_000  # a Voila page starts a kernel and runs the notebook (~20 s, more under load)

MANIFEST = """\
version: 1
name: adjudication-browser-test
synthetic: true
database: sqlite:///fqi.db
pseudonymisation_key: env:FRACTURE_QI_KEY
adjudication: {audit_negative_rate: 0.1, double_read_rate: 0.0, lease_minutes: 30}
"""


@pytest.fixture()
def site(tmp_path: Path):
    (tmp_path / "data_manifest.yaml").write_text(MANIFEST)
    engine = make_store(f"sqlite:///{tmp_path / 'fqi.db'}")
    studies = seed_cases(engine, n=3, dicom_dir=tmp_path / "dicom", flagged=[True, True, False])
    build_worklist(engine, settings=AdjudicationSettings(audit_negative_rate=1.0,
                                                         double_read_rate=0.0))
    yield tmp_path, engine, studies
    engine.dispose()


def wait_status(page, words: str, timeout_ms: int = 60_000) -> str:
    page.wait_for_function(
        "w => [...document.querySelectorAll('.fqi-status')].some(e => e.innerText.includes(w))",
        arg=words, timeout=timeout_ms)
    return page.locator(".fqi-status").inner_text()


@pytest.mark.browser
@pytest.mark.slow
def test_nurse_reviews_two_cases_in_chromium(site, artifacts_dir):
    folder, engine, studies = site
    env = {ENV_MANIFEST: str(folder / "data_manifest.yaml"), ENV_REVIEWER: "nurse.browser",
           ENV_AUDIT: "default"}
    t_start = dt.datetime.now(dt.timezone.utc)
    with start_voila(notebook_path(), env=env, log_dir=folder) as server, \
            browser_page(viewport=(1600, 1250)) as (page, console):
        page.goto(server.url, timeout=PAGE_TIMEOUT_MS)
        page.wait_for_selector(".fqi-save", timeout=PAGE_TIMEOUT_MS)
        wait_status(page, "Case opened")
        assert "TESTPATIENT, Alice 0" in page.locator(".fqi-app").inner_text()
        page.wait_for_selector(".fqi-sagittal[src^='blob:'], .fqi-sagittal img, img.fqi-sagittal")

        # case 1: confirm an L1 moderate fracture, new, refer to the FLS
        page.get_by_role("button", name="Fracture confirmed", exact=True).click()
        page.locator(".fqi-level select").first.select_option("L1")
        page.locator(".fqi-grade select").first.select_option(label="2 moderate (25-40%)")
        page.locator(".fqi-known").get_by_text("New (not known)").click()
        page.locator(".fqi-action select").select_option(label="Refer to FLS clinic")
        page.locator(".fqi-note textarea").fill("wedge L1, new")
        page.locator(".fqi-note textarea").press("Tab")  # commit the text to the kernel
        time.sleep(0.5)
        page.screenshot(path=str(artifacts_dir / "adjudication-case1-filled.png"), full_page=True)
        page.locator(".fqi-save").click()
        status = wait_status(page, "Saved")
        assert "TESTPATIENT, Alice 1" in page.locator(".fqi-app").inner_text(), status

        # case 2: not confirmed
        page.get_by_role("button", name="Not confirmed", exact=True).click()
        time.sleep(0.3)
        page.locator(".fqi-save").click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.fqi-status')].some("
            "e => (e.innerText.match(/Saved/g) || []).length >= 1 && e.innerText.includes('#2'))",
            timeout=60_000)
        page.evaluate("() => document.querySelectorAll('*').forEach(e => { e.scrollTop = 0; })")
        page.screenshot(path=str(artifacts_dir / "adjudication-app.png"), full_page=True)
        log = server.log_text()
    assert "Traceback" not in page_text_safe(console), console.errors
    assert not console.errors, console.errors

    with session_scope(engine) as s:
        rows = [{c: getattr(ev, c) for c in (
            "study_id", "reviewer", "recorded_at", "decision", "levels", "previously_known",
            "action", "note", "app_version")}
            for ev in s.scalars(select(AdjudicationEvent).order_by(AdjudicationEvent.id))]
    assert len(rows) == 2, log[-3000:]
    first, second = rows
    assert first["study_id"] == studies[0].study_id and first["decision"] == "confirmed"
    assert first["levels"] == [{"level": "L1", "grade": 2}]
    assert first["previously_known"] == "none" and first["action"] == "refer_fls"
    assert first["note"] == "wedge L1, new"
    assert second["study_id"] == studies[1].study_id and second["decision"] == "not_confirmed"
    for r in rows:
        assert r["reviewer"] == "nurse.browser" and r["app_version"].startswith("fracture-qi")
        when = r["recorded_at"]
        when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
        assert t_start - dt.timedelta(seconds=5) <= when <= dt.datetime.now(dt.timezone.utc)


def page_text_safe(console) -> str:
    return "\n".join(console.messages)
