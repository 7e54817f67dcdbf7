"""The TLS reverse proxy configuration documented in docs/nginx/fracture-qi.conf, tested.

nginx runs that very file (only its names, ports and certificate paths changed) in front of a
real ``fracture-qi serve --behind-proxy``; Chromium signs a nurse in over HTTPS and the
adjudication app renders (its kernel websocket goes through the proxy); the session cookie
is Secure and HttpOnly, HSTS is sent, plain HTTP redirects to HTTPS, and the access log has
the browser's address as the proxy passed it.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fracture_qi.accesslog import read_access_log
from fracture_qi.accounts import add_user
from fracture_qi.serve import free_port
from tests.adjudication_data import make_store, seed_cases
from tests.services.team import start_team

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DOCUMENTED = Path(__file__).resolve().parents[1] / "docs" / "nginx" / "fracture-qi.conf"
PASSWORD = "correct horse battery staple"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config(prefix: Path, https_port: int, http_port: int, upstream_port: int) -> Path:
    """The documented site file in a minimal nginx.conf, with test names, ports and paths."""
    site = DOCUMENTED.read_text()
    for old, new in (("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
                     ("listen 80;", f"listen 127.0.0.1:{http_port};"),
                     ("server 127.0.0.1:8870;", f"server 127.0.0.1:{upstream_port};"),
                     ("/etc/ssl/fracture-qi/fullchain.pem", str(prefix / "cert.pem")),
                     ("/etc/ssl/fracture-qi/privkey.pem", str(prefix / "key.pem"))):
        assert old in site, f"the documented configuration no longer has {old!r}"
        site = site.replace(old, new)
    (prefix / "site.conf").write_text(site)
    for d in ("logs", "tmp"):
        (prefix / d).mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/site.conf;
}}
""")
    return conf


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed. Fix: apt-get install nginx "
                    "(scripts/install-system-deps.sh)")
    root = tmp_path_factory.mktemp("proxy")
    (root / "data_manifest.yaml").write_text(
        "version: 1\nname: proxy-test\nsynthetic: true\ndatabase: sqlite:///fqi.db\n")
    engine = make_store(f"sqlite:///{root / 'fqi.db'}")
    seed_cases(engine, n=2, dicom_dir=root / "dicom", flagged=[True, True])
    add_user(engine, "nurse.a", "nurse", PASSWORD, by="test")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with start_team(root / "data_manifest.yaml", log_dir=root, behind_proxy=True) as server:
        https_port, http_port = free_port(), free_port()
        conf = nginx_config(root, https_port, http_port, server.port)
        test = subprocess.run([NGINX, "-t", "-p", str(root), "-c", str(conf)],
                              capture_output=True, text=True, check=False)
        assert test.returncode == 0, test.stderr
        proc = subprocess.Popen([NGINX, "-p", str(root), "-c", str(conf), "-g", "daemon off;"],
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        try:
            yield f"https://127.0.0.1:{https_port}/", f"http://127.0.0.1:{http_port}/", \
                server, engine, root / "cert.pem"
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    engine.dispose()


def test_a_nurse_works_through_the_documented_tls_proxy(proxied):
    import requests
    from playwright.sync_api import sync_playwright

    from tests.services.browser import CHROMIUM, CHROMIUM_ARGS

    https, http, server, engine, cert = proxied
    r = requests.get(http + "app/adjudicate", allow_redirects=False, timeout=30)
    assert r.status_code == 301 and r.headers["Location"].startswith("https://")
    r = requests.get(https + "healthz", verify=str(cert), timeout=30)
    assert r.status_code == 200 and "max-age" in r.headers.get("Strict-Transport-Security", "")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(ignore_https_errors=True,
                                      viewport={"width": 1280, "height": 720})
            page = ctx.new_page()
            page.goto(https + "login")
            page.fill("input[type=text]", "nurse.a")
            page.fill("input[type=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("div.apps", timeout=60_000)
            cookie = next(c for c in ctx.cookies() if c["name"] == "fracture-qi-session")
            assert cookie["secure"] and cookie["httpOnly"]
            page.goto(https + "app/adjudicate", timeout=180_000)
            page.wait_for_selector(".fqi-save", timeout=180_000)
            page.wait_for_function(
                "() => document.querySelector('.fqi-status').innerText.includes('Case opened')",
                timeout=120_000)  # the widgets came over the websocket, through nginx
            page.get_by_role("button", name="Not confirmed", exact=True).click()
            time.sleep(0.3)
            page.locator(".fqi-save").click()
            page.wait_for_function(
                "() => document.querySelector('.fqi-status').innerText.includes('Saved')",
                timeout=120_000)
        finally:
            browser.close()
    log = read_access_log(engine)
    saved = [e for e in log if e["action"] == "decision_saved"]
    assert len(saved) == 1 and saved[0]["username"] == "nurse.a"
    assert {e["client"] for e in log if e["username"] == "nurse.a"} == {"127.0.0.1"}
    assert not re.search(r"Traceback", server.log_text())
