"""The team server's own pages over HTTP (no browser): sessions, roles, accounts, audit.

Sessions end when an account is disabled, given a new role or a new password; sign-in is
locked after five failures and the log says why; the audit and admin pages do what their
roles allow and nothing else; every export is logged; forms need the XSRF token.
"""

from __future__ import annotations

import re

import pytest
import requests

from fracture_qi.accesslog import read_access_log
from fracture_qi.accounts import MAX_FAILED_SIGN_INS, add_user
from tests.adjudication_data import make_store, seed_cases
from tests.services.team import sign_in_session, start_team

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
MANIFEST = """\
version: 1
name: team-pages-test
synthetic: true
database: sqlite:///fqi.db
"""


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    (root / "data_manifest.yaml").write_text(MANIFEST)
    engine = make_store(f"sqlite:///{root / 'fqi.db'}")
    seed_cases(engine, n=2, flagged=[True, False])
    for name, role in {"nurse.a": "nurse", "nurse.b": "nurse", "nurse.d": "nurse",
                       "auditor.c": "auditor", "admin.x": "admin", "qi.lead": "qi_lead"}.items():
        add_user(engine, name, role, PASSWORD, by="test")
    add_user(engine, "sso.only", "nurse", None, by="test")
    with start_team(root / "data_manifest.yaml", log_dir=root) as server:
        yield server, engine
    engine.dispose()


def _admin_post(admin: requests.Session, url: str, **data: str) -> requests.Response:
    return admin.post(url + "admin", data={**data, "_xsrf": admin.cookies.get("_xsrf", "")},
                      allow_redirects=False, timeout=60)


def test_sessions_end_when_the_account_is_disabled_or_its_password_changes(team):
    server, engine = team
    url = server.url
    nurse = sign_in_session(url, "nurse.b", PASSWORD)
    assert nurse.get(url, allow_redirects=False, timeout=30).status_code == 200
    admin = sign_in_session(url, "admin.x", PASSWORD)
    page = admin.get(url + "admin", timeout=30).text
    assert "nurse.b" in page and "Server settings" in page and "most kernels per user" in page
    assert _admin_post(admin, url, action="disable", username="nurse.b").status_code == 302
    r = nurse.get(url, allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert _admin_post(admin, url, action="enable", username="nurse.b").status_code == 302
    nurse = sign_in_session(url, "nurse.b", PASSWORD)
    assert _admin_post(admin, url, action="set_password", username="nurse.b",
                       password="another long passphrase").status_code == 302
    assert nurse.get(url, allow_redirects=False, timeout=30).status_code == 302
    sign_in_session(url, "nurse.b", "another long passphrase")
    # a weak password and a self-disable are refused with the reason
    r = _admin_post(admin, url, action="create", username="new.one", role="nurse",
                    password="short")
    assert r.status_code == 400 and "at least 12" in r.text
    r = _admin_post(admin, url, action="disable", username="admin.x")
    assert r.status_code == 400 and "your own account" in r.text
    # without the XSRF token the form is refused
    r = admin.post(url + "admin", data={"action": "disable", "username": "nurse.a"},
                   allow_redirects=False, timeout=30)
    assert r.status_code in (403, 404)
    changes = [e for e in read_access_log(engine) if e["action"] == "account_changed"
               and e["username"] == "admin.x"]
    assert {'"change": "disabled"', '"change": "enabled"', '"change": "password"'} <= {
        re.search(r'"change": "\w+"', e["detail"]).group(0) for e in changes}


def test_sign_in_is_locked_after_repeated_failures_and_says_nothing_more(team):
    server, engine = team
    url = server.url
    s = requests.Session()
    s.get(url + "login", timeout=30)
    texts = set()
    for _ in range(MAX_FAILED_SIGN_INS + 1):
        r = s.post(url + "login", data={"username": "nurse.d", "password": "wrong guess here",
                                        "_xsrf": s.cookies.get("_xsrf", "")}, timeout=60)
        assert r.status_code == 401
        texts.add(re.search(r"role='alert'>([^<]+)<", r.text).group(1))
    r = s.post(url + "login", data={"username": "nobody.here", "password": "whatever at all",
                                    "_xsrf": s.cookies.get("_xsrf", "")}, timeout=60)
    texts.add(re.search(r"role='alert'>([^<]+)<", r.text).group(1))
    assert len(texts) == 1  # the same message whatever the reason
    r = s.post(url + "login", data={"username": "nurse.d", "password": PASSWORD,
                                    "_xsrf": s.cookies.get("_xsrf", "")},
               allow_redirects=False, timeout=60)
    assert r.status_code == 401  # locked, even with the right password
    r = s.post(url + "login", data={"username": "sso.only", "password": "any password at all",
                                    "_xsrf": s.cookies.get("_xsrf", "")},
               allow_redirects=False, timeout=60)
    assert r.status_code == 401  # a sign-on account has no password to guess
    reasons = [e["detail"] for e in read_access_log(engine) if e["action"] == "sign_in_failed"]
    assert any("wrong_password" in d for d in reasons) and any("locked" in d for d in reasons)
    assert any("unknown_user" in d for d in reasons) and any("no_password" in d for d in reasons)


def test_auditor_reads_history_and_exports_are_logged_roles_elsewhere_refused(team):
    server, engine = team
    url = server.url
    auditor = sign_in_session(url, "auditor.c", PASSWORD)
    page = auditor.get(url + "audit", timeout=60)
    assert page.status_code == 200 and "Decision history" in page.text
    csv = auditor.get(url + "audit/decisions.csv", timeout=60)
    assert csv.status_code == 200 and csv.text.startswith("event_id,recorded_at,reviewer")
    log = auditor.get(url + "access-log.csv", timeout=60)
    assert log.status_code == 200 and log.text.startswith("id,at,username,role,action")
    assert "TESTPATIENT" not in page.text + csv.text + log.text
    assert auditor.get(url + "admin", timeout=30).status_code == 403
    assert auditor.get(url + "app/adjudicate", timeout=30).status_code == 403
    nurse = sign_in_session(url, "nurse.a", PASSWORD)
    for path in ("audit", "audit/decisions.csv", "access-log.csv", "admin"):
        assert nurse.get(url + path, timeout=30).status_code == 403, path
    qi = sign_in_session(url, "qi.lead", PASSWORD)
    for path in ("audit", "access-log.csv", "admin", "app/adjudicate"):
        assert qi.get(url + path, timeout=30).status_code == 403, path
    entries = read_access_log(engine)
    exports = [e["detail"] for e in entries if e["action"] == "export"
               and e["username"] == "auditor.c"]
    assert any("decision history" in d for d in exports) and any("access log" in d
                                                                 for d in exports)
    refused = {e["detail"] for e in entries if e["action"] == "refused"}
    assert any("/admin" in d for d in refused) and any("/audit" in d for d in refused)
    health = requests.get(url + "healthz", timeout=30)
    assert health.status_code == 200 and health.text == "ok\n"
    assert requests.head(url + "healthz", timeout=30).status_code == 200
