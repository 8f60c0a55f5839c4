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
from hubreturns.dcc.config import Settings
from hubreturns.dcc.desk import forms
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.store.models import ReturnRecord
from hubreturns.extensions import register_commands
from hubreturns.user.scenarios import IS, RSA, DemoWorld, run_scenarios

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
HUB_OPEN = "00-DB-12-34-56-78-90-F2"

if not any(group.name == "desk" for group in app.registered_groups):
    register_commands(app)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only (overrides the two-engine fixture of conftest for this module)."""
    return f"sqlite:///{tmp_path / 'hubreturns.db'}"


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[object]:
    """Debian's Chromium under Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is required in CI: scripts/install installs Debian's chromium")
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def chromium_page(chromium: object) -> Iterator[object]:
    from playwright.sync_api import Browser

    assert isinstance(chromium, Browser)
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


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


IMAGES = SCREENSHOT.parent / "images"
#: (name, width, height): a desktop and a phone.
VIEWPORTS = (("desktop", 1280, 800), ("phone", 375, 812))


def _fill_the_desk(
    server: str, world: DemoWorld, processor: Processor, settings: Settings, tmp_path: Path
) -> int:
    """Realistic rows: every demo DUIS scenario, one return logged at the desk, and
    HUB_INSTALLED withdrawn by a replacing inventory load (its history kept)."""
    run_scenarios(server, world)
    inventory = tmp_path / "devices.csv"
    lines = world.devices_csv.read_text().splitlines()
    inventory.write_text("\n".join(x for x in lines if not x.startswith(HUB_INSTALLED)) + "\n")
    loaded = CliRunner().invoke(
        app,
        ["load", "devices", str(inventory), "--replace"],
        env={"HUBRETURNS_DATABASE_URL": settings.database_url},
    )
    assert loaded.exit_code == 0, loaded.output
    request, errors = forms.read_return_form(
        {
            "originator": IS,
            "device_id": HUB_OPEN,
            "return_type": "Fault identified prior to installation",
            "other_device_id": HUB_OPEN[:-1] + "0",
            "connection_method": "Hot-shoe",
            "fault_reason": "Damaged case",
            "additional_information": "Case cracked on delivery; courier reference 12345.",
        },
        target=processor.access_control_broker,
        counter=1,
    )
    assert request is not None, errors
    outcome = processor.handle_desk(request, entered_by="alice")
    assert outcome.return_id is not None, outcome
    return outcome.return_id


def _desk_pages(return_id: int) -> tuple[tuple[str, str], ...]:
    """Every desk page, as (name, path) (the sign-in page is visited signed out)."""
    return (
        ("returns", "/desk/returns"),
        ("return-detail", f"/desk/returns/{return_id}?logged=1"),
        ("hub", f"/desk/hub?device_id={HUB_PENDING}"),
        ("gpf", f"/desk/hub?device_id={HUB_PENDING[:-1]}0"),
        ("withdrawn", f"/desk/hub?device_id={HUB_INSTALLED}"),
        ("form", "/desk/returns/new"),
        ("audit", "/desk/audit?per_page=10"),
        ("error", "/desk/returns/999999"),
    )


def _fits(page: object) -> tuple[int, int]:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    return int(widths[0]), int(widths[1])


def _shoot(page: object, name: str, folder: Path) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"desk-{name}.png"), full_page=True)


def test_every_desk_page_fits_a_desktop_and_a_phone_screen(
    server: str,
    settings: Settings,
    world: DemoWorld,
    processor: Processor,
    chromium: object,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(chromium, Browser)
    result = CliRunner().invoke(
        app,
        ["desk", "add-user", "alice", "--password-stdin"],
        input=PASSWORD,
        env={"HUBRETURNS_DATABASE_URL": settings.database_url},
    )
    assert result.exit_code == 0, result.output
    return_id = _fill_the_desk(server, world, processor, settings, tmp_path)
    update = os.environ.get("HUBRETURNS_UPDATE_SCREENSHOT") == "1"
    folder = IMAGES if update else tmp_path
    too_wide: list[str] = []
    for label, width, height in VIEWPORTS:
        context = chromium.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(f"{server}/desk/login")
        expect(page.locator("#name")).to_be_visible()
        pages = [("login", _fits(page))]
        _shoot(page, f"login-{label}", folder)
        page.fill("#name", "alice")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("#staff-name")).to_have_text("alice")
        for name, path in _desk_pages(return_id):
            page.goto(f"{server}{path}")
            expect(page.locator("main h1, main h2").first).to_be_visible()
            pages.append((name, _fits(page)))
            _shoot(page, f"{name}-{label}", folder)
            if name == "withdrawn":
                expect(page.locator("#withdrawn-notice")).to_be_visible()
                expect(page.locator("#log-return")).to_have_count(0)
            if name in ("returns", "audit") and label == "desktop":
                # every column on screen, the last (Status, Reason) included
                right = page.evaluate(
                    f"document.querySelector('#{name} th:last-child').getBoundingClientRect().right"
                )
                assert right <= width, (name, right)
        # the form with its errors shown in place
        page.goto(f"{server}/desk/returns/new")
        page.fill("#device_id", "00-DB-12")
        page.click("#submit-return")
        expect(page.locator("#error-device_id")).to_be_visible()
        expect(page.locator("#device_id")).to_have_attribute("aria-invalid", "true")
        pages.append(("form-errors", _fits(page)))
        _shoot(page, f"form-errors-{label}", folder)
        context.close()
        too_wide += [
            f"{name} at {width}px: {w} > {inner}" for name, (w, inner) in pages if w > inner
        ]
        assert len(pages) == 10
    assert too_wide == []
