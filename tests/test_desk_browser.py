"""The Service Desk pages in a real browser: Debian's headless Chromium driven by Playwright.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``
(installed by ``scripts/install``). Without Chromium the test is skipped on a
developer's machine and fails in CI (``CI=true``), so a green CI means it ran.

Runs on SQLite only: the engines are covered by ``test_desk.py``; this is about
what a person sees. ``HUBRETURNS_UPDATE_SCREENSHOT=1`` also writes the README
screenshot ``docs/service-desk.png``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.codes import CODE_INFO, ResponseCode
from hubreturns.config import Settings
from hubreturns.demo import IS, RSA
from hubreturns.extensions import register_commands
from hubreturns.store.models import ReturnRecord

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "service-desk.png"
PASSWORD = "correct horse battery staple"
HUB_PENDING = "00-DB-12-34-56-78-90-A2"
HUB_INSTALLED = "00-DB-12-34-56-78-90-D2"

if not any(group.name == "desk" for group in app.registered_groups):
    register_commands(app)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only (overrides the two-engine fixture of conftest for this module)."""
    return f"sqlite:///{tmp_path / 'hubreturns.db'}"


@pytest.fixture
def chromium_page(tmp_path: Path) -> Iterator[object]:
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is required in CI: scripts/install installs Debian's chromium")
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(20_000)
            yield page
            context.close()
        finally:
            browser.close()


def test_staff_member_looks_up_hubs_and_logs_returns_in_chromium(
    server: str, settings: Settings, seeded: sessionmaker[Session], chromium_page: object
) -> None:
    from playwright.sync_api import Page, expect

    page = chromium_page
    assert isinstance(page, Page)
    result = CliRunner().invoke(
        app,
        ["desk", "add-user", "alice", "--password-stdin"],
        input=PASSWORD,
        env={"HUBRETURNS_DATABASE_URL": settings.database_url},
    )
    assert result.exit_code == 0, result.output

    # Nothing without signing in: the page sends the browser to the sign-in form.
    page.goto(f"{server}/desk/hub")
    expect(page).to_have_url(f"{server}/desk/login?next=%2Fhub")
    page.fill("#name", "alice")
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("Wrong name or password")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{server}/desk/hub")
    expect(page.locator("#staff-name")).to_have_text("alice")

    # Look up a Pending hub and log an IS fault return from its page.
    page.fill("#device_id", HUB_PENDING.lower())
    page.get_by_role("button", name="Look up").click()
    expect(page.locator("#hub-type")).to_have_text("CHF")
    expect(page.locator("#hub-status")).to_have_text("Pending")
    expect(page.locator("#suppliers")).to_contain_text(IS)
    expect(page.locator("#rsas")).to_contain_text(RSA)
    page.click("#log-return")
    expect(page.locator("#device_id")).to_have_value(HUB_PENDING)
    expect(page.locator("#other_device_id")).to_have_value("00-DB-12-34-56-78-90-A0")
    page.fill("#originator", IS)
    page.select_option("#return_type", "Fault identified prior to installation")
    page.select_option("#connection_method", "Hot-shoe")
    page.select_option("#fault_reason", "Damaged case")
    page.fill("#user_ref_id", "browser-1")
    page.click("#submit-return")
    expect(page.locator("#outcome-code")).to_have_text("I99")
    expect(page.locator("#outcome-meaning")).to_have_text(CODE_INFO[ResponseCode.I99].meaning)

    # A bad Device ID is shown next to the field, and nothing is sent.
    page.goto(f"{server}/desk/hub?device_id={HUB_INSTALLED}")
    expect(page.locator("#hub-status")).to_have_text("InstalledNotCommissioned")
    page.click("#log-return")
    page.fill("#originator", RSA)
    page.fill("#device_id", "00-DB-12-34-56-78-XX")
    page.select_option("#return_type", "Fault identified prior to installation")
    page.select_option("#connection_method", "Cradle")
    page.select_option("#fault_reason", "LED Fault")
    page.click("#submit-return")
    expect(page.locator("#error-device_id")).to_contain_text("is not an EUI-64")
    expect(page.locator("#outcome")).to_have_count(0)

    # The RSA on the installed hub: refused with E5, its meaning and what to do.
    page.fill("#device_id", HUB_INSTALLED)
    page.click("#submit-return")
    info = CODE_INFO[ResponseCode.E5]
    expect(page.locator("#outcome-code")).to_have_text("E5")
    expect(page.locator("#outcome-meaning")).to_have_text(info.meaning)
    expect(page.locator("#outcome-hint")).to_contain_text(info.hint)
    if os.environ.get("HUBRETURNS_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    # The accepted return is in the list, as entered through the Service Desk.
    page.get_by_role("link", name="Returns", exact=True).click()
    rows = page.locator("#returns tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(HUB_PENDING)
    expect(rows.first).to_contain_text("servicedesk")
    expect(rows.first).to_contain_text("alice")
    with seeded() as session:
        (record,) = session.scalars(select(ReturnRecord)).all()
    assert (record.device_id, record.channel, record.entered_by) == (
        HUB_PENDING,
        "servicedesk",
        "alice",
    )

    # Signing out ends it.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{server}/desk/login?signed_out=1")
    page.goto(f"{server}/desk/returns")
    expect(page.locator("#name")).to_be_visible()
