"""A real Chromium (Debian's package) driven by Playwright, for tests of the Voila apps.

Usage::

    from tests.services.browser import browser_page

    with browser_page() as (page, console):
        page.goto(server.url, timeout=120_000)
        page.wait_for_selector(".widget-button", timeout=120_000)
        page.screenshot(path=artifacts_dir / "app.png", full_page=True)
    assert not console.errors   # page errors, minus the known offline CDN noise

Requests to anything but 127.0.0.1/localhost are aborted: the suite must work offline, and
Voila's template asks a CDN for fontawesome (FIELD-NOTES); those aborted requests and their
console messages are recorded in ``console.blocked``/``console.ignored`` rather than
``console.errors``. When Chromium or Playwright is missing the test skips with the fix (a
failure in CI, see tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pytest

#: Debian's Chromium; override with FRACTURE_QI_CHROMIUM
CHROMIUM = os.environ.get("FRACTURE_QI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root in CI containers
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass
class ConsoleLog:
    """What the page said: real errors, and offline noise kept apart."""

    errors: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _is_offline_noise(text: str, blocked: list[str]) -> bool:
    t = text.lower()
    return ("fontawesome" in t or "cdn.jsdelivr" in t or "err_failed" in t
            or "err_blocked" in t or any(b in text for b in blocked))


@contextlib.contextmanager
def browser_page(viewport: tuple[int, int] = (1600, 1000),
                 default_timeout_ms: int = 120_000) -> Iterator[tuple[Any, ConsoleLog]]:
    """Launch Chromium, yield ``(page, console)``, close everything afterwards."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed. Fix: .venv/bin/pip install playwright")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM}. Fix: apt-get install chromium "
                    "(scripts/install-system-deps.sh)")
    console = ConsoleLog()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})

            def route(r: Any) -> None:
                host = urlparse(r.request.url).hostname or ""
                if r.request.url.startswith("data:") or host in LOCAL_HOSTS:
                    r.continue_()
                else:
                    console.blocked.append(r.request.url)
                    r.abort("blockedbyclient")

            context.route("**/*", route)
            page = context.new_page()
            page.set_default_timeout(default_timeout_ms)

            def on_console(msg: Any) -> None:
                text = f"{msg.type}: {msg.text}"
                console.messages.append(text)
                if msg.type == "error":
                    (console.ignored if _is_offline_noise(msg.text, console.blocked)
                     else console.errors).append(text)

            page.on("console", on_console)
            page.on("pageerror", lambda exc: console.errors.append(f"pageerror: {exc}"))
            yield page, console
        finally:
            browser.close()
