"""A real browser opens the Voila QI dashboard on the demo's simulated service history,
changes a filter, sees the right numbers, and sees SPC charts with a special-cause signal and
the Making Data Count icons.

The expected numbers come from ``qi.report.headline_summary`` on ``load_analysis`` for the
same selection (not from the dashboard code), so the page is checked against the package.
A screenshot of each state is kept in test-artifacts/.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fracture_qi.simulation import make_service_history
from fracture_qi.store import open_store

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parents[1] / "fracture_qi" / "notebooks" / "dashboard.ipynb"
TILES = ("screened", "confirmed", "newly_identified", "therapy_started", "ppv", "sensitivity")
HEADLINE = ("CTs screened", "Fractures confirmed", "Newly identified", "Started on bone therapy",
            "PPV of the AI flag", "Sensitivity (audit-weighted)")


def expected(engine, sites=None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from fracture_qi.outcomes.readmodel import load_analysis
    from fracture_qi.qi.report import headline_summary

    h = headline_summary(load_analysis(engine, sites=sites), publish=True)["headline"]
    values = dict(zip(h["measure"], h["value"]))
    return {k: values[m] for k, m in zip(TILES, HEADLINE)}


def shown(page) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {k: page.inner_text(f"#fqi-tile-{k}").strip() for k in TILES}


def test_dashboard_in_chromium(tmp_path, artifacts_dir) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.dashboards.app import QIDashboard
    from fracture_qi.serve import ENV_MANIFEST
    from tests.services.browser import browser_page
    from tests.services.voila import start_voila

    manifest = make_service_history(tmp_path / "service", studies=12_000, seed=13)
    engine = open_store(str(manifest))
    QIDashboard.from_manifest(manifest)  # warm the cube cache, as `fracture-qi dashboard` does
    want_all = expected(engine)
    want_west = expected(engine, sites=["West Community"])
    assert want_all != want_west  # otherwise the test could not see the change

    with start_voila(NOTEBOOK, env={ENV_MANIFEST: str(manifest)}, timeout=120) as server:
        with browser_page() as (page, console):
            page.goto(server.url, timeout=180_000)
            page.wait_for_selector("#fqi-tile-screened", timeout=180_000)
            page.wait_for_selector(".fqi-filter-site select", timeout=60_000)
            assert shown(page) == want_all
            page.screenshot(path=str(artifacts_dir / "dashboard-all-sites.png"), full_page=True)

            t0 = time.monotonic()
            page.select_option(".fqi-filter-site select", "West Community")
            page.wait_for_function(
                "v => document.querySelector('#fqi-tile-screened').innerText.trim() !== v",
                arg=want_all["screened"], timeout=60_000)
            page.wait_for_timeout(500)  # let the remaining comm messages land
            seconds = time.monotonic() - t0
            assert shown(page) == want_west
            page.screenshot(path=str(artifacts_dir / "dashboard-west-community.png"),
                            full_page=True)
            # the page scrolls inside Voila's own container: capture each panel in view
            for panel in ("spc_ppv", "spc_ai_unassessable", "time_to_therapy", "breakdown"):
                chart = page.locator(f".fqi-chart-{panel}")
                chart.scroll_into_view_if_needed()
                page.wait_for_selector(f".fqi-chart-{panel} .js-plotly-plot", timeout=60_000)
                page.wait_for_timeout(300)
                page.screenshot(path=str(artifacts_dir / f"dashboard-panel-{panel}.png"))
            # the simulated history is labelled as such on the page
            assert "SIMULATED SERVICE HISTORY" in page.inner_text(".fqi-synthetic")
            # SPC: FLS assessment within 90 days improved after the QI change: special cause
            panel = ".fqi-chart-spc_assessed_90d"
            page.locator(panel).scroll_into_view_if_needed()
            page.wait_for_selector(f"{panel} .js-plotly-plot", timeout=60_000)
            names = page.evaluate(
                f"() => document.querySelector('{panel} .js-plotly-plot').data.map(t => t.name)")
            assert "special cause: improvement" in names, names
            assert "target" in names and "upper process limit" in names
            icon = page.locator(".fqi-spc-assessed_90d .fqi-icon-variation")
            assert "fqi-icon-variation-improvement_high" in (icon.get_attribute("class") or "")
            assert page.locator(".fqi-spc-assessed_90d .fqi-icon-assurance").count() == 1
            annotations = page.evaluate(
                f"() => document.querySelector('{panel} .js-plotly-plot').layout.annotations"
                ".map(a => a.text)")
            assert any("Fast-track FLS clinic" in a for a in annotations), annotations
            page.wait_for_timeout(300)
            page.screenshot(path=str(artifacts_dir / "dashboard-spc-assessed-90d.png"))
            status = page.inner_text(".fqi-status")
            assert "updated in" in status
            # the CSV download link holds a zip of the shown tables
            href = page.get_attribute(".fqi-download-csv", "href") or ""
            assert href.startswith("data:application/zip;base64,")
            assert not console.errors, console.errors
        log = server.log_text()
    assert "Traceback" not in log or "fqi" not in log
    # a filter change through the browser, comm round trip included (under CI load)
    assert seconds < 30
