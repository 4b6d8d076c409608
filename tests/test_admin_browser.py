"""The admin in a real browser: log in, find a chat's session, reset it, see the new data.

It drives headless Chromium through Playwright against pytest-django's live server, so
the admin's own JavaScript (the action checkboxes) takes part. Without a browser it is
skipped, saying what to install. Screenshots land in ``artifacts/``: the confirmation
(``admin-reset-confirm.png``), the list right after the reset (``admin-reset.png``) and
the session's page (``admin-reset-detail.png``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections

from botsessions.models import Session

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHAT = -4012345678
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOW_TO_ENABLE = (
    "needs Chromium and Playwright's Python package: apt-get install chromium; "
    "pip install playwright (or point BOTSESSIONS_CHROMIUM at a Chromium binary)"
)


def chromium_path() -> str | None:
    """The browser to drive: BOTSESSIONS_CHROMIUM, else Debian's chromium on the PATH."""
    explicit = os.environ.get("BOTSESSIONS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh headless Chromium page; skips the test when no browser is installed."""
    sync_api = pytest.importorskip("playwright.sync_api", reason=HOW_TO_ENABLE)
    executable = chromium_path()
    if executable is None:
        pytest.skip(HOW_TO_ENABLE)
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls
    # are still plain synchronous code, so Django's async-safety check must stand aside.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            tab = context.new_page()
            tab.set_default_timeout(15_000)
            yield tab
        finally:
            browser.close()
            # Inside Playwright's loop the ORM keeps its connections apart from the
            # outer ones; left open, they would keep the test database from being dropped.
            connections.close_all()


def test_an_operator_finds_a_chat_and_resets_its_session(page: Any, live_server: Any) -> None:
    User.objects.create_superuser("operator", "operator@example.com", "night-shift")
    forgotten = Session.objects.create(
        bot_id=123456, fragment="chat", key=f"chat:{CHAT}", data={"pizza_count": 7}
    )
    Session.objects.create(
        bot_id=123456, fragment="user", key=f"chat:{CHAT}:user:111", data={"messages": 12}
    )
    Session.objects.create(bot_id=123456, fragment="chat", key="chat:-100555", data={"x": 1})

    page.goto(f"{live_server.url}/admin/login/?next=/admin/botsessions/session/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "night-shift")
    page.click("input[type=submit]")
    page.wait_for_selector("#changelist")

    page.fill("#searchbar", str(CHAT))
    page.press("#searchbar", "Enter")
    page.wait_for_url(f"**q={CHAT}**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2
    assert "chat:-100555" not in page.inner_text("#result_list")

    row = rows.filter(has=page.locator(f"code:text-is('chat:{CHAT}')"))
    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "reset_to_initial")
    page.click("button[name=index]")
    page.wait_for_selector(".botsessions-writes")
    assert "This gives 1 session" in page.inner_text("#content")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-reset-confirm.png"), full_page=True)
    page.click("input[type=submit][value='Yes, reset']")

    page.wait_for_selector(".messagelist .success")
    assert "Reset 1 session to its initial data." in page.inner_text(".messagelist")
    assert '{"pizza_count": 0}' in row.inner_text()
    page.screenshot(path=str(ARTIFACTS / "admin-reset.png"), full_page=True)

    page.click(f"a:has(code:text-is('chat:{CHAT}'))")
    page.wait_for_selector("textarea[name=data]")
    assert '"pizza_count": 0' in page.input_value("textarea[name=data]")
    page.screenshot(path=str(ARTIFACTS / "admin-reset-detail.png"), full_page=True)

    forgotten.refresh_from_db()
    assert forgotten.data == {"pizza_count": 0}
    assert forgotten.revision == 2
