"""One server for the whole FLS team (issue 18), against a real server and a real Chromium.

* a nurse signs in through the form, reads an audit-sample case blind (no label, no AI
  result, no overlay: the image is byte for byte the one without it), then a flagged case,
  at 1280x720 with Save in view, and every decision carries her user name;
* the same browser signed in as a QI lead cannot open a case or see an identifier: the server
  refuses the page, the nurse's kernel (websocket, REST, shutdown) when asked directly;
* no request without a session reaches a kernel;
* the access log holds the sign-ins, the case openings, the decisions and the refusals;
* both apps render after a plain fetch, after a closed tab, and with three loads at once.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from fracture_qi.accesslog import read_access_log
from fracture_qi.accounts import add_user
from fracture_qi.adjudication.viewer import ViewState, prepare_case, render_sagittal
from fracture_qi.adjudication.worklist import load_case_record
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import AdjudicationEvent
from tests.adjudication_data import make_store, seed_cases
from tests.services.browser import browser_page
from tests.services.team import sign_in_page, sign_in_session, start_team

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery staple"
PAGE_MS = 180_000  # a page starts a kernel and runs its notebook (~10-30 s under CI load)
USERS = {"nurse.a": "nurse", "nurse.b": "nurse", "nurse.c": "nurse", "qi.lead": "qi_lead",
         "auditor.c": "auditor", "admin.x": "admin"}
IDENTIFIERS = ("TESTPATIENT", "999 000", "MRN100", "ACC500")
MANIFEST = """\
version: 1
name: team-server-test
synthetic: true
database: sqlite:///fqi.db
adjudication: {audit_negative_rate: 1.0, double_read_rate: 0.0, lease_minutes: 30}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from fracture_qi.dashboards.app import QIDashboard

    root = tmp_path_factory.mktemp("team")
    (root / "data_manifest.yaml").write_text(MANIFEST)
    engine = make_store(f"sqlite:///{root / 'fqi.db'}")
    # the oldest study is AI-negative: the nurse's first case is an audit-sample one.
    # No worklist is built here: the app fills it itself (index and screen alone)
    studies = seed_cases(engine, n=5, dicom_dir=root / "dicom",
                         flagged=[False, True, True, True, True])
    for name, role in USERS.items():
        add_user(engine, name, role, PASSWORD, by="test")
    QIDashboard.from_manifest(root / "data_manifest.yaml")  # as fracture-qi serve warms it
    yield root, engine, studies
    engine.dispose()


@pytest.fixture(scope="module")
def team(site):
    root, _, _ = site
    with start_team(root / "data_manifest.yaml", log_dir=root) as server:
        yield server


def png_sha(page, selector: str) -> str:
    """SHA-256 of the PNG bytes an <img> shows (the bytes the kernel sent)."""
    return page.evaluate(
        """async (sel) => {
            const img = document.querySelector(sel);
            const buf = await (await fetch(img.src)).arrayBuffer();
            const d = await crypto.subtle.digest('SHA-256', buf);
            return Array.from(new Uint8Array(d)).map(b => b.toString(16).padStart(2, '0')).join('');
        }""", selector)


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def wait_status(page, words: str, timeout_ms: int = 90_000) -> None:
    page.wait_for_function(
        "w => [...document.querySelectorAll('.fqi-status')].some(e => e.innerText.includes(w))",
        arg=words, timeout=timeout_ms)


def in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    vp = page.viewport_size
    return bool(box and box["y"] >= 0 and box["y"] + box["height"] <= vp["height"]
                and box["x"] + box["width"] <= vp["width"])


def ws_status(port: int, kernel_id: str, cookie: str | None) -> int | None:
    """The HTTP status of a websocket handshake to a kernel (101 means it got through)."""
    import websocket

    try:
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels", timeout=20,
            header=[f"Cookie: {cookie}"] if cookie else None,
            subprotocols=["v1.kernel.websocket.jupyter.org"])
    except websocket.WebSocketBadStatusException as e:
        return int(e.status_code)
    ws.close()
    return 101


def test_nurse_adjudicates_signed_in_and_a_qi_lead_is_refused_on_the_server(site, team):
    root, engine, studies = site
    url = team.url
    with browser_page(viewport=(1280, 720)) as (page, console):
        sign_in_page(page, url, "nurse.a", PASSWORD)
        links = page.locator("div.apps a").all_inner_texts()
        assert any("Adjudication" in t for t in links) and any("dashboard" in t for t in links)
        page.goto(url + "app/adjudicate", timeout=PAGE_MS)
        page.wait_for_selector(".fqi-save", timeout=PAGE_MS)
        wait_status(page, "Case opened")
        app = page.locator(".fqi-app").inner_text()
        # the worklist filled itself; the first case is the audit sample, read blind
        assert "TESTPATIENT, Alice 0" in app and "Reviewer nurse.a" in app
        assert "AI negative" not in app and "audit sample" not in app.lower()
        assert "Not flagged" not in app and page.locator(".fqi-ai-hidden").is_visible()
        overlay = page.locator(".fqi-overlay input")
        assert not overlay.is_checked() and overlay.is_disabled()
        rec = load_case_record(engine, _case_of(engine, studies[0].study_id))
        prep = prepare_case(rec.instance_paths, rec.findings)
        page.wait_for_selector("img.fqi-sagittal[src^='blob:']", timeout=60_000)
        shown = png_sha(page, "img.fqi-sagittal")
        assert shown == sha(render_sagittal(prep, ViewState(overlay=False)))
        assert shown != sha(render_sagittal(prep, ViewState(overlay=True)))
        assert in_view(page, ".fqi-save"), "Save below the fold at 1280x720"
        page.screenshot(path=str(root / "blind-case.png"))
        kernel_id = re.search(r'"kernelId": "([0-9a-f-]{36})"', page.content()).group(1)

        page.get_by_role("button", name="Not confirmed", exact=True).click()
        time.sleep(0.3)
        page.locator(".fqi-save").click()
        page.wait_for_selector(".fqi-reveal >> text=Saved as your blind read", timeout=60_000)
        page.locator(".fqi-reveal-ai").click()
        page.wait_for_function("() => document.querySelector('.fqi-overlay input').checked",
                               timeout=60_000)
        assert "Not flagged" in page.locator(".fqi-ai-result").inner_text()
        page.locator(".fqi-after-next").click()
        page.wait_for_function("() => document.querySelector('.fqi-app').innerText"
                               ".includes('TESTPATIENT, Alice 1')", timeout=60_000)
        assert "AI flagged" in page.locator(".fqi-app").inner_text()
        page.get_by_role("button", name="Fracture confirmed", exact=True).click()
        page.locator(".fqi-copy-ai").click()
        page.wait_for_function("() => document.querySelector('.fqi-level select') && "
                               "document.querySelector('.fqi-level select').value === 'L1'",
                               timeout=60_000)
        page.locator(".fqi-known").get_by_text("New (not known)").click()
        page.locator(".fqi-action select").select_option(label="Refer to FLS clinic")
        time.sleep(0.5)
        assert in_view(page, ".fqi-save"), "Save left the screen when the form grew"
        page.screenshot(path=str(root / "flagged-case-1280x720.png"))
        page.locator(".fqi-save").click()
        wait_status(page, "Saved")

        # the same browser, now a QI lead (a second tab: the nurse's page stays open, so
        # her kernel is alive while the QI lead tries to reach it)
        qi_page = page.context.new_page()
        qi_page.goto(url + "logout")
        sign_in_page(qi_page, url, "qi.lead", PASSWORD)
        assert not any("Adjudication" in t
                       for t in qi_page.locator("div.apps a").all_inner_texts())
        resp = qi_page.goto(url + "app/adjudicate")
        assert resp.status == 403
        assert not any(x in qi_page.content() for x in IDENTIFIERS)
        qi_page.goto(url + "app/dashboard", timeout=PAGE_MS)
        qi_page.wait_for_selector("#fqi-tile-screened", timeout=PAGE_MS)
        dash = qi_page.content() + qi_page.locator("body").inner_text()
        assert not any(x in dash for x in IDENTIFIERS)

        with session_scope(engine) as s:
            events = [(e.study_id, e.reviewer, e.decision, e.blind) for e in s.scalars(
                select(AdjudicationEvent).order_by(AdjudicationEvent.id))]
        assert events == [(studies[0].study_id, "nurse.a", "not_confirmed", True),
                          (studies[1].study_id, "nurse.a", "confirmed", None)]

        # the server refuses the QI lead whatever she sends; the nurse's kernel lives on
        qi = sign_in_session(url, "qi.lead", PASSWORD)
        cookie = "; ".join(f"{k}={v}" for k, v in qi.cookies.items())
        assert qi.get(url + "app/adjudicate", timeout=60).status_code == 403
        assert qi.get(url + f"api/kernels/{kernel_id}", timeout=60).status_code == 403
        assert ws_status(team.port, kernel_id, cookie) == 403
        assert qi.post(url + f"voila/api/shutdown/{kernel_id}", timeout=60,
                       headers={"X-XSRFToken": qi.cookies.get("_xsrf", "")}).status_code == 403
        nurse = sign_in_session(url, "nurse.a", PASSWORD)
        assert nurse.get(url + f"api/kernels/{kernel_id}", timeout=60).status_code == 200
        assert ws_status(team.port, kernel_id,
                         "; ".join(f"{k}={v}" for k, v in nurse.cookies.items())) == 101

        # no request without a session reaches a kernel
        check_no_session_reaches_a_kernel(team, kernel_id)
        assert nurse.get(url + f"api/kernels/{kernel_id}", timeout=60).status_code == 200
        assert not console.errors, console.errors
        # the control: the same request as the QI lead's, from the owner, goes through
        assert nurse.post(url + f"voila/api/shutdown/{kernel_id}", timeout=60, headers={
            "X-XSRFToken": nurse.cookies.get("_xsrf", "")}).status_code == 204
        assert nurse.get(url + f"api/kernels/{kernel_id}", timeout=60).status_code == 403

    # the access log holds it all
    log = read_access_log(engine)
    mine = [(e["action"], e["study_id"]) for e in log if e["username"] == "nurse.a"]
    assert ("case_opened", studies[0].study_id) in mine
    assert ("case_opened", studies[1].study_id) in mine
    assert [a for a, _ in mine].count("decision_saved") == 2 and ("ai_shown",
                                                                   studies[0].study_id) in mine
    assert ("sign_in", None) in mine and ("sign_out", None) in mine
    refused = [e for e in log if e["username"] == "qi.lead" and e["action"] == "refused"]
    assert len(refused) >= 2 and all(e["client"] == "127.0.0.1" for e in refused)
    assert all(e["via"] == "team server" for e in log if e["username"] == "nurse.a")
    assert "Traceback" not in team.log_text()


def check_no_session_reaches_a_kernel(team, kernel_id: str) -> None:
    """Without a session: sign-in page or 403 everywhere, and no kernel starts."""
    import requests

    url = team.url
    before = {k.pid for k in team.kernels()}
    r = requests.get(url + "app/adjudicate", allow_redirects=False, timeout=60)
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert requests.get(url + "app/dashboard", allow_redirects=False,
                        timeout=60).status_code == 302
    assert requests.get(url + f"api/kernels/{kernel_id}", timeout=60).status_code == 403
    assert requests.post(url + f"voila/api/shutdown/{kernel_id}", timeout=60).status_code == 403
    assert ws_status(team.port, kernel_id, None) == 403
    for path in ("voila/render/adjudicate.ipynb", "voila/tree", "voila/api/contents",
                 "api/kernels", "api/sessions", "api/contents", "voila/files/adjudicate.ipynb"):
        assert requests.get(url + path, allow_redirects=False,
                            timeout=60).status_code in (302, 403, 404), path
    time.sleep(1)
    assert {k.pid for k in team.kernels()} <= before  # nothing new was started


def _case_of(engine, study_id: int):
    from fracture_qi.adjudication.worklist import Case
    from fracture_qi.store.schema import WorklistItem

    with session_scope(engine) as s:
        item = s.scalars(select(WorklistItem).where(WorklistItem.study_id == study_id)).one()
        return Case(item.id, study_id, item.screening_id, 1, item.stratum,
                    item.sampling_probability, item.double_read, None)


def _open(browser, url: str, user: str, app: str):
    """A new browser context signed in as *user*, navigating to the app (not waiting)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.route("**/*", lambda r: r.continue_() if "127.0.0.1" in r.request.url
              or r.request.url.startswith("data:") else r.abort())
    page = ctx.new_page()
    sign_in_page(page, url, user, PASSWORD)
    page.goto(url + f"app/{app}", wait_until="commit", timeout=PAGE_MS)
    return ctx, page


APP_READY = {"dashboard": "#fqi-tile-screened", "adjudicate": ".fqi-save"}


@pytest.mark.parametrize("app,users", [
    ("dashboard", ("qi.lead", "auditor.c", "nurse.b")),
    ("adjudicate", ("nurse.b", "nurse.c", "nurse.a")),
])
def test_apps_render_after_a_plain_fetch_a_closed_tab_and_three_loads_at_once(
        site, team, app, users):
    from playwright.sync_api import sync_playwright

    from tests.services.browser import CHROMIUM, CHROMIUM_ARGS

    url, ready = team.url, APP_READY[app]
    # a plain fetch (curl, a health check, a link preview): the page is fetched, its script
    # never runs and no browser connects to its kernel
    plain = sign_in_session(url, users[0], PASSWORD)
    assert plain.get(url + f"app/{app}", timeout=PAGE_MS / 1000).status_code == 200
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            t0 = time.monotonic()
            ctx, page = _open(browser, url, users[0], app)
            page.wait_for_selector(ready, timeout=PAGE_MS)
            after_plain = time.monotonic() - t0
            page.close()  # a closed tab
            page = ctx.new_page()
            page.goto(url + f"app/{app}", timeout=PAGE_MS)
            page.wait_for_selector(ready, timeout=PAGE_MS)
            ctx.close()
            # three people load it at once
            opened = [_open(browser, url, u, app) for u in users]
            t0 = time.monotonic()
            for _, pg in opened:
                pg.wait_for_selector(ready, timeout=PAGE_MS)
            together = time.monotonic() - t0
            for ctx, _ in opened:
                ctx.close()
        finally:
            browser.close()
    print(f"{app}: rendered {after_plain:.1f} s after a plain fetch; three at once within "
          f"{together:.1f} s")
    assert "Traceback" not in team.log_text()
