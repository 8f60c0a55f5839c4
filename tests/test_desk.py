"""The Service Desk web channel, through real HTTP on SQLite and PostgreSQL.

Staff accounts are made with the CLI (``hubreturns desk add-user``), pages are
driven with httpx exactly as a browser posts forms, and every outcome is
checked in the database.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Mount, Route
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.codes import CODE_INFO, DEFAULT_PROFILE, Reason, ResponseCode
from hubreturns.dcc.config import Settings
from hubreturns.dcc.desk import accounts
from hubreturns.dcc.desk import routes as desk_routes
from hubreturns.dcc.desk.models import DeskSession, SignInFailures, StaffAccount
from hubreturns.dcc.desk.web import AUDIT_CSV_COLUMNS, RETURN_CSV_COLUMNS
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.store.models import AuditEntry, Device, ReturnRecord
from hubreturns.errors import HintedError
from hubreturns.extensions import register_commands
from hubreturns.user.scenarios import GS, IS, RSA, RSA_UNAPPOINTED, DemoWorld

if not any(group.name == "desk" for group in app.registered_groups):
    register_commands(app)

PASSWORD = "correct horse battery staple"
HUB_PENDING, GPF_PENDING = "00-DB-12-34-56-78-90-A2", "00-DB-12-34-56-78-90-A0"
HUB_INSTALLED, GPF_INSTALLED = "00-DB-12-34-56-78-90-D2", "00-DB-12-34-56-78-90-D0"
HUB_RSA_PENDING = "00-DB-12-34-56-78-90-C2"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')

runner = CliRunner()


def cli(settings: Settings, *args: str, stdin: str | None = None) -> tuple[int, str, object]:
    result = runner.invoke(
        app, list(args), input=stdin, env={"HUBRETURNS_DATABASE_URL": settings.database_url}
    )
    return result.exit_code, result.output, result.exception


@dataclass(frozen=True)
class Desk:
    url: str
    client: httpx.Client
    sessions: sessionmaker[Session]
    settings: Settings

    def csrf(self, path: str = "/desk/returns/new") -> str:
        page = self.client.get(path)
        assert page.status_code == 200, page.text
        match = _CSRF.search(page.text)
        assert match is not None
        return match.group(1)

    def log_return(self, **fields: str) -> httpx.Response:
        data = {"csrf_token": self.csrf(), **fields}
        return self.client.post("/desk/returns/new", data=data)

    def counts(self) -> tuple[int, int]:
        with self.sessions() as session:
            returns = session.scalar(select(func.count()).select_from(ReturnRecord))
            audit = session.scalar(select(func.count()).select_from(AuditEntry))
        return int(returns or 0), int(audit or 0)


def sign_in(client: httpx.Client, name: str, password: str) -> httpx.Response:
    page = client.get("/desk/login")
    match = _CSRF.search(page.text)
    assert match is not None
    return client.post(
        "/desk/login", data={"csrf_token": match.group(1), "name": name, "password": password}
    )


def fault(originator: str, device: str, gpf: str, **extra: str) -> dict[str, str]:
    return {
        "originator": originator,
        "device_id": device,
        "return_type": "Fault identified prior to installation",
        "other_device_id": gpf,
        "connection_method": "Hot-shoe",
        "fault_reason": "Damaged case",
        **extra,
    }


@pytest.fixture
def staff(settings: Settings, server: str) -> str:
    code, output, _ = cli(settings, "desk", "add-user", "alice", "--password-stdin", stdin=PASSWORD)
    assert code == 0, output
    return "alice"


@pytest.fixture
def desk(
    server: str, staff: str, seeded: sessionmaker[Session], settings: Settings
) -> Iterator[Desk]:
    with httpx.Client(base_url=server, timeout=30) as client:
        response = sign_in(client, staff, PASSWORD)
        assert response.status_code == 303, response.text
        yield Desk(server, client, seeded, settings)


def _plain(html: str) -> str:
    """A page without the ``<wbr>`` break hints that tables put inside long identifiers."""
    return html.replace("<wbr>", "")


def _concrete(path: str) -> str:
    return path.replace("{device_id}", HUB_PENDING).replace("{return_id:int}", "1")


def test_every_desk_route_is_closed_without_signing_in(
    server: str, processor: Processor, settings: Settings, seeded: sessionmaker[Session]
) -> None:
    (mount,) = [r for r in desk_routes(processor, settings) if isinstance(r, Mount)]
    checked = 0
    with httpx.Client(base_url=server, timeout=30) as client:
        for route in mount.routes:
            assert isinstance(route, Route)
            for method in sorted(route.methods or ()):
                if method == "HEAD" or route.path in ("/login", "/desk.css"):
                    continue
                url = "/desk" + _concrete(route.path)
                if method == "POST":
                    response = client.post(url, data={"device_id": HUB_PENDING})
                else:
                    response = client.request(method, url)
                data = route.path.endswith(".csv") or route.path.startswith("/api/")
                if data:
                    assert response.status_code == 401, url
                    assert response.json()["error"] == "sign in required"
                else:
                    assert response.status_code == 303, (method, url)
                    assert response.headers["location"].startswith("/desk/login")
                checked += 1
        # a page asked for as JSON, and an unknown path, are closed too
        assert client.get("/desk/hub", headers={"accept": "application/json"}).status_code == 401
        assert client.get("/desk/no-such-page").status_code == 303
        assert client.get("/desk").headers["location"] == "/desk/"
        assert client.get("/desk/login").status_code == 200
    assert checked == 11  # every route but the sign-in page and the style sheet
    with seeded() as session:
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 0


def test_redirect_to_sign_in_comes_back_to_the_page(staff: str, server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        first = client.get(f"/desk/hub?device_id={HUB_PENDING}")
        assert first.status_code == 303
        page = client.get(first.headers["location"])
        token = _CSRF.search(page.text)
        assert token is not None
        wanted = re.search(r'name="next" value="([^"]*)"', page.text)
        assert wanted is not None
        response = client.post(
            "/desk/login",
            data={
                "csrf_token": token.group(1),
                "name": staff,
                "password": PASSWORD,
                "next": wanted.group(1),
            },
        )
        assert response.headers["location"] == f"/desk/hub?device_id={HUB_PENDING}"
        # an off-site "next" is ignored
        client.post("/desk/logout", data={"csrf_token": _token(client)})
        page = client.get("/desk/login")
        token = _CSRF.search(page.text)
        assert token is not None
        response = client.post(
            "/desk/login",
            data={
                "csrf_token": token.group(1),
                "name": staff,
                "password": PASSWORD,
                "next": "//evil.example/",
            },
        )
        assert response.headers["location"] == "/desk/"


def _token(client: httpx.Client) -> str:
    match = _CSRF.search(client.get("/desk/hub").text)
    assert match is not None
    return match.group(1)


def test_wrong_password_and_unknown_name_are_refused(staff: str, server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        for name, password in ((staff, "wrong password!!"), ("mallory", PASSWORD), ("", "")):
            response = sign_in(client, name, password)
            assert response.status_code == 401
            assert "Wrong name or password" in response.text
            assert client.get("/desk/hub").status_code == 303
        # the right password without the form's CSRF token does not sign in either
        response = client.post("/desk/login", data={"name": staff, "password": PASSWORD})
        assert response.status_code == 403
        assert client.get("/desk/hub").status_code == 303
        assert sign_in(client, staff, PASSWORD).status_code == 303
        assert client.get("/desk/hub").status_code == 200


def test_repeated_failures_lock_a_name_until_it_is_unlocked(
    staff: str, server: str, settings: Settings, seeded: sessionmaker[Session]
) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        for _ in range(accounts.FREE_FAILURES - 1):
            assert sign_in(client, staff, "wrong password!!").status_code == 401
        started = datetime.now(UTC)
        assert sign_in(client, staff, "wrong password!!").status_code == 401  # now locked
        locked = sign_in(client, staff, PASSWORD)  # the right password is not even checked
        assert locked.status_code == 429
        assert "Too many failed sign-ins" in locked.text
        assert f"hubreturns desk unlock {staff}" in locked.text
        wait = int(locked.headers["retry-after"])
        assert 0 < wait <= accounts.FIRST_LOCK.total_seconds()
        assert client.get("/desk/hub").status_code == 303
        with seeded() as session:
            row = session.get(SignInFailures, staff)
            assert row is not None
            assert row.failures == accounts.FREE_FAILURES
            assert row.locked_until is not None
            until = row.locked_until.replace(tzinfo=UTC)
            assert started + accounts.FIRST_LOCK <= until <= datetime.now(UTC) + accounts.FIRST_LOCK
        # another failure while locked is not counted (nothing was checked)
        assert sign_in(client, staff, "wrong password!!").status_code == 429
        code, output, _ = cli(settings, "desk", "unlock", staff)
        assert code == 0, output
        assert "cleared" in output
        assert sign_in(client, staff, PASSWORD).status_code == 303
        assert client.get("/desk/hub").status_code == 200
    with seeded() as session:
        assert session.get(SignInFailures, staff) is None
    code, output, _ = cli(settings, "desk", "unlock", staff)
    assert code == 0
    assert "nothing to clear" in output


def test_an_unknown_name_locks_alike_and_a_success_clears_the_count(
    staff: str, server: str, seeded: sessionmaker[Session]
) -> None:
    """A lock does not tell whether the name exists; a success forgets earlier failures."""
    with httpx.Client(base_url=server, timeout=30) as client:
        for _ in range(accounts.FREE_FAILURES):
            assert sign_in(client, "mallory", PASSWORD).status_code == 401
        assert sign_in(client, "mallory", PASSWORD).status_code == 429
        for _ in range(accounts.FREE_FAILURES - 1):
            assert sign_in(client, staff, "wrong password!!").status_code == 401
        assert sign_in(client, staff, PASSWORD).status_code == 303
    with seeded() as session:
        assert session.get(SignInFailures, staff) is None
        mallory = session.get(SignInFailures, "mallory")
        assert mallory is not None
        assert mallory.failures == accounts.FREE_FAILURES


def test_each_failure_beyond_the_free_ones_doubles_the_lock(
    seeded: sessionmaker[Session], staff: str
) -> None:
    moment = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    locks = []
    for _ in range(accounts.FREE_FAILURES + 6):
        with seeded.begin() as session:
            assert accounts.sign_in(session, staff, "wrong password!!", moment) is None
            row = session.get(SignInFailures, staff)
            assert row is not None
            if row.locked_until is not None:
                until = row.locked_until.replace(tzinfo=UTC)
                locks.append(until - moment)
                moment = until  # the next try, once the lock has ended
    minutes = [int(lock.total_seconds() // 60) for lock in locks]
    assert minutes == [15, 30, 60, 120, 240, 240, 240]
    with seeded.begin() as session:  # a day without failures forgets the count
        later = moment + timedelta(hours=25)
        assert isinstance(accounts.sign_in(session, staff, PASSWORD, later), accounts.Staff)


def test_the_cookie_is_secure_when_the_request_came_over_https(staff: str, server: str) -> None:
    """Behind a proxy that ends TLS (uvicorn trusts X-Forwarded-Proto from 127.0.0.1)."""
    for proto, secure in (("https", True), ("http", False)):
        with httpx.Client(
            base_url=server, timeout=30, headers={"X-Forwarded-Proto": proto}
        ) as client:
            cookie = sign_in(client, staff, PASSWORD).headers["set-cookie"].lower()
        assert ("; secure" in cookie) is secure
        assert "httponly" in cookie


def test_disabling_an_account_ends_its_session(desk: Desk, staff: str) -> None:
    assert desk.client.get("/desk/hub").status_code == 200
    code, output, _ = cli(desk.settings, "desk", "disable", staff)
    assert code == 0, output
    assert desk.client.get("/desk/hub").status_code == 303
    assert sign_in(desk.client, staff, PASSWORD).status_code == 401
    code, output, _ = cli(desk.settings, "desk", "enable", staff)
    assert code == 0, output
    assert sign_in(desk.client, staff, PASSWORD).status_code == 303


def test_post_without_the_right_csrf_token_is_403_and_records_nothing(desk: Desk) -> None:
    for token in (None, "", "forged-token", desk.csrf()[:-1]):
        data = fault(IS, HUB_PENDING, GPF_PENDING)
        if token is not None:
            data["csrf_token"] = token
        response = desk.client.post("/desk/returns/new", data=data)
        assert response.status_code == 403, token
        assert "security token" in response.text
        assert desk.counts() == (0, 0)
        # sign-out without the token does not sign out
        logout = desk.client.post(
            "/desk/logout", data={} if token is None else {"csrf_token": token}
        )
        assert logout.status_code == 403
        assert desk.client.get("/desk/hub").status_code == 200


def test_is_return_on_a_pending_hub_is_accepted_and_recorded_as_servicedesk(
    desk: Desk, staff: str
) -> None:
    response = desk.log_return(**fault(IS, HUB_PENDING.lower(), GPF_PENDING, user_ref_id="T-1"))
    # POST/redirect/GET: the browser is sent to the recorded return (a reload logs nothing)
    assert response.status_code == 303
    assert response.headers["x-duis-response-code"] == "I99"
    location = response.headers["location"]
    assert re.fullmatch(r"/desk/returns/\d+\?logged=1", location)
    page = desk.client.get(location)
    assert page.status_code == 200
    assert 'id="outcome-code">I99<' in page.text
    assert CODE_INFO[ResponseCode.I99].meaning in page.text
    summary = page.text.split('id="outcome-summary"')[1].split("</p>")[0]
    assert HUB_PENDING in summary
    assert IS in summary
    assert "entered by alice" in summary
    assert desk.client.get(location).text.count('id="outcome-code"') == 1
    with desk.sessions() as session:
        (record,) = session.scalars(select(ReturnRecord)).all()
        (entry,) = session.scalars(select(AuditEntry)).all()
    assert record.channel == "servicedesk"
    assert record.entered_by == staff
    assert record.originator == IS
    assert record.on_behalf_of == IS
    assert record.role == "IS"
    assert record.device_id == HUB_PENDING
    assert record.service_reference_variant == "8.14.3"
    assert record.fault_reason == "Damaged case"
    assert record.user_ref_id == "T-1"
    assert record.request_id.startswith(f"SD:{IS}:{desk.settings.acb_eui}:")
    assert record.request_xml is None
    assert (entry.channel, entry.code, entry.accepted, entry.return_id) == (
        "servicedesk",
        "I99",
        True,
        record.id,
    )
    assert f"entered by {staff}" in entry.reason
    assert location == f"/desk/returns/{record.id}?logged=1"
    assert desk.counts() == (1, 1)  # following the redirect again recorded nothing
    detail = desk.client.get(f"/desk/returns/{record.id}")
    assert 'id="detail-channel">servicedesk<' in detail.text
    assert f'id="detail-entered-by">{staff}<' in detail.text


def test_rsa_on_an_installed_hub_gets_e5_and_nothing_but_an_audit_row(desk: Desk) -> None:
    response = desk.log_return(**fault(RSA, HUB_INSTALLED, GPF_INSTALLED))
    assert response.status_code == CODE_INFO[ResponseCode.E5].http_status
    assert response.headers["x-duis-response-code"] == "E5"
    info = CODE_INFO[ResponseCode.E5]
    assert 'id="outcome-code">E5<' in response.text
    assert info.meaning in response.text
    assert info.hint.split(";")[0] in response.text
    # the refused entry stays in the form so staff can correct it
    assert f'value="{HUB_INSTALLED}"' in response.text
    assert desk.counts() == (0, 1)
    with desk.sessions() as session:
        (entry,) = session.scalars(select(AuditEntry)).all()
    assert (entry.code, entry.accepted, entry.channel, entry.originator) == (
        "E5",
        False,
        "servicedesk",
        RSA,
    )


_SAME_AS_DUIS = [
    (RSA, HUB_RSA_PENDING, ResponseCode.I99),
    (RSA_UNAPPOINTED, HUB_PENDING, ResponseCode.E4),
    (GS, HUB_PENDING, ResponseCode.E4),
    ("00-DB-12-34-56-78-00-06", HUB_PENDING, ResponseCode.E2),
    ("00-DB-12-34-56-78-00-08", HUB_PENDING, ResponseCode.E1),
    (IS, "00-DB-12-34-56-78-90-99", ResponseCode.E19),
    (IS, "00-DB-12-34-56-78-90-A1", ResponseCode.E11),
]


def test_desk_gets_the_same_codes_as_duis(desk: Desk) -> None:
    recorded = 0
    for number, (originator, device, expected) in enumerate(_SAME_AS_DUIS, 1):
        gpf = device[:-1] + "0"
        response = desk.log_return(**fault(originator, device, gpf))
        assert response.headers["x-duis-response-code"] == DEFAULT_PROFILE.code(expected), (
            originator,
            device,
        )
        if expected.accepted:
            assert response.status_code == 303
            response = desk.client.get(response.headers["location"])
        else:
            assert response.status_code == CODE_INFO[expected].http_status
        assert CODE_INFO[expected].meaning in response.text
        recorded += expected.accepted
        assert desk.counts() == (recorded, number)
    # an 8.14.4 no-fault return, then the same hub again: E44
    for expected in (ResponseCode.I99, Reason.OPEN_RETURN):
        response = desk.log_return(
            originator=GS, device_id="00-DB-12-34-56-78-90-E2", return_type="Lost or Stolen Hub"
        )
        assert response.headers["x-duis-response-code"] == DEFAULT_PROFILE.code(expected)
    with desk.sessions() as session:
        record = session.scalars(select(ReturnRecord).order_by(ReturnRecord.id.desc())).first()
    assert record is not None
    assert record.service_reference_variant == "8.14.4"
    assert record.other_device_id is None
    assert record.fault_reason is None


_FORM_ERRORS: list[tuple[dict[str, str], str, str]] = [
    ({"device_id": "00-DB-12-34-56-78-90"}, "device_id", "is not an EUI-64"),
    ({"originator": "not-an-eui"}, "originator", "is not an EUI-64"),
    ({"device_id": ""}, "device_id", "Device ID is required."),
    ({"other_device_id": "zz"}, "other_device_id", "is not an EUI-64"),
    ({"return_type": "Dropped it"}, "return_type", "is not an 8.14.3 or 8.14.4 return type"),
    ({"return_type": ""}, "return_type", "Return type is required."),
    ({"fault_reason": "Spilled tea"}, "fault_reason", "is not a fault reason"),
    ({"connection_method": ""}, "connection_method", "is required for an 8.14.3"),
    ({"incident_reference": "X" * 16}, "incident_reference", "At most 15 characters"),
    ({"user_ref_datetime": "yesterday"}, "user_ref_datetime", "is not a date and time"),
    # the DUIS schema's xs:dateTime, as every channel reads it: a T and seconds
    ({"user_ref_datetime": "2026-11-23 09:30"}, "user_ref_datetime", "is not a date and time"),
]


def test_form_errors_are_shown_in_place_and_nothing_is_written(desk: Desk) -> None:
    for fields, field, message in _FORM_ERRORS:
        response = desk.log_return(**{**fault(IS, HUB_PENDING, GPF_PENDING), **fields})
        assert response.status_code == 422, fields
        error = re.search(rf'id="error-{field}"[^>]*>([^<]*)<', response.text)
        assert error is not None, fields
        assert message in error.group(1).replace("&#39;", "'")
        assert 'id="form-errors"' in response.text
        assert "x-duis-response-code" not in response.headers
        # what was typed is shown again, to be corrected
        typed = fields[field]
        if typed and field not in ("return_type", "fault_reason", "connection_method"):
            assert f'value="{typed}"' in response.text
    assert desk.counts() == (0, 0)


def test_everything_typed_is_escaped_and_pages_are_hardened(desk: Desk) -> None:
    attack = "<script>alert(1)</script>"
    response = desk.log_return(**fault(IS, HUB_PENDING, GPF_PENDING, additional_information=attack))
    assert response.headers["x-duis-response-code"] == "I99"
    with desk.sessions() as session:
        (record,) = session.scalars(select(ReturnRecord)).all()
    detail = desk.client.get(f"/desk/returns/{record.id}").text
    assert attack not in detail
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    refused = desk.log_return(**fault(attack, HUB_PENDING, GPF_PENDING))
    assert attack not in refused.text
    page = desk.client.get("/desk/hub")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    with httpx.Client(base_url=desk.url, timeout=30) as fresh:
        cookie = sign_in(fresh, "alice", PASSWORD).headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/desk" in cookie


def test_hub_look_up_shows_type_status_suppliers_rsas_and_history(desk: Desk) -> None:
    page = desk.client.get("/desk/hub", params={"device_id": HUB_RSA_PENDING.lower()})
    assert page.status_code == 200
    assert 'id="hub-type">CHF<' in page.text
    assert ">Pending<" in page.text
    suppliers = _plain(page.text).split('id="suppliers"')[1].split("</table>")[0]
    assert IS in suppliers
    assert "Demo Import Supplier" in suppliers
    rsas = _plain(page.text).split('id="rsas"')[1].split("</table>")[0]
    assert RSA in rsas
    assert RSA_UNAPPOINTED not in rsas
    assert "No return recorded for this hub." in page.text
    assert (
        desk.log_return(**fault(RSA, HUB_RSA_PENDING, "00-DB-12-34-56-78-90-C0")).headers[
            "x-duis-response-code"
        ]
        == "I99"
    )
    page = desk.client.get("/desk/hub", params={"device_id": HUB_RSA_PENDING})
    history = _plain(page.text).split('id="history"')[1].split("</table>")[0]
    assert "servicedesk" in history
    assert RSA in history
    api = desk.client.get(f"/desk/api/hubs/{HUB_RSA_PENDING}").json()
    assert api["smi_status"] == "Pending"
    assert [s["user_id"] for s in api["responsible_suppliers"]] == [IS]
    assert [(a["user_id"], a["appointed_by"]) for a in api["appointed_rsas"]] == [(RSA, IS)]
    assert api["returns"][0]["channel"] == "servicedesk"
    # errors in place
    bad = desk.client.get("/desk/hub", params={"device_id": "00-DB-12"})
    assert bad.status_code == 422
    assert 'id="lookup-error"' in bad.text
    assert "is not an EUI-64" in bad.text
    missing = desk.client.get("/desk/hub", params={"device_id": "00-DB-12-34-56-78-90-99"})
    assert missing.status_code == 404
    assert "is not in the Smart Metering Inventory" in missing.text


def _csv(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    return list(csv.DictReader(io.StringIO(response.text)))


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def test_csv_exports_match_the_database(desk: Desk) -> None:
    desk.log_return(**fault(IS, HUB_PENDING, GPF_PENDING, additional_information="=1+1"))
    desk.log_return(**fault(RSA, HUB_INSTALLED, GPF_INSTALLED))
    desk.log_return(
        originator=GS, device_id="00-DB-12-34-56-78-90-E2", return_type="Lost or Stolen Hub"
    )
    returns = _csv(desk.client.get("/desk/returns.csv"))
    audit = _csv(desk.client.get("/desk/audit.csv"))
    with desk.sessions() as session:
        records = session.scalars(select(ReturnRecord).order_by(ReturnRecord.id.desc())).all()
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).all()
    assert len(returns) == len(records) == 2
    assert len(audit) == len(entries) == 3
    assert list(returns[0]) == list(RETURN_CSV_COLUMNS)
    assert list(audit[0]) == list(AUDIT_CSV_COLUMNS)
    for row, record in zip(returns, records, strict=True):
        for column in RETURN_CSV_COLUMNS:
            value = getattr(record, column)
            if column == "received_at":
                assert row[column].startswith(value.isoformat()[:19])
            elif column == "additional_information" and value == "=1+1":
                assert row[column] == "'=1+1"  # never a live spreadsheet formula
            else:
                assert row[column] == _cell(value), column
    for row, entry in zip(audit, entries, strict=True):
        for column in AUDIT_CSV_COLUMNS:
            value = getattr(entry, column)
            if column == "received_at":
                assert row[column].startswith(value.isoformat()[:19])
            else:
                assert row[column] == _cell(value), column
    # filters apply to the export as to the page
    refused = _csv(desk.client.get("/desk/audit.csv", params={"outcome": "refused"}))
    assert [r["code"] for r in refused] == ["E5"]
    by_gs = _csv(desk.client.get("/desk/returns.csv", params={"originator": GS}))
    assert [r["originator"] for r in by_gs] == [GS]
    bad = desk.client.get("/desk/returns.csv", params={"device_id": "nope"})
    assert bad.status_code == 422
    for limit in ("\u00b2", "9" * 5000):
        assert desk.client.get("/desk/audit.csv", params={"limit": limit}).status_code == 422


def test_browse_and_filter_returns_and_audit(desk: Desk) -> None:
    desk.log_return(**fault(IS, HUB_PENDING, GPF_PENDING))
    desk.log_return(**fault(RSA, HUB_INSTALLED, GPF_INSTALLED))
    listing = desk.client.get("/desk/returns", params={"channel": "servicedesk", "role": "IS"})
    assert listing.status_code == 200
    assert HUB_PENDING in _plain(listing.text)
    none = desk.client.get("/desk/returns", params={"channel": "duis"})
    assert HUB_PENDING not in _plain(none.text).split('id="returns"')[1]
    bad = desk.client.get("/desk/returns", params={"role": "ED", "since": "soon"})
    assert bad.status_code == 422
    assert "&#39;ED&#39; is not one of IS, GS, RSA" in bad.text
    assert "is not a date" in bad.text
    audit = desk.client.get("/desk/audit", params={"code": "E5"})
    table = audit.text.split('id="audit"')[1]
    assert "E5" in table
    assert "I99" not in table
    assert desk.client.get("/desk/audit", params={"code": "E999"}).status_code == 422


def test_logout_ends_the_session_even_for_a_copied_cookie(desk: Desk) -> None:
    cookies = dict(desk.client.cookies)
    assert cookies
    response = desk.client.post("/desk/logout", data={"csrf_token": _token(desk.client)})
    assert response.status_code == 303
    assert response.headers["location"] == "/desk/login?signed_out=1"
    assert desk.client.get("/desk/hub").status_code == 303
    with httpx.Client(base_url=desk.url, timeout=30, cookies=cookies) as replay:
        assert replay.get("/desk/hub").status_code == 303
        assert replay.get("/desk/returns.csv").status_code == 401


def test_cli_manages_staff_accounts(settings: Settings, staff: str, tmp_path: Path) -> None:
    code, output, _ = cli(settings, "desk", "list-users")
    assert code == 0
    assert staff in output
    assert "active" in output
    code, _, error = cli(settings, "desk", "add-user", staff, "--password-stdin", stdin=PASSWORD)
    assert code != 0
    assert isinstance(error, HintedError)
    assert "already exists" in str(error)
    code, _, error = cli(settings, "desk", "add-user", "bob", "--password-stdin", stdin="short")
    assert code != 0
    assert isinstance(error, HintedError)
    assert "fewer than 12" in str(error)
    code, _, error = cli(
        settings, "desk", "add-user", "bad name!", "--password-stdin", stdin=PASSWORD
    )
    assert code != 0
    assert isinstance(error, HintedError)
    code, _, error = cli(settings, "desk", "disable", "nobody")
    assert code != 0
    assert isinstance(error, HintedError)
    assert "no staff account" in str(error)
    code, output, _ = cli(settings, "desk", "add-user", "carol", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert code == 0, output
    code, output, _ = cli(settings, "desk", "list-users")
    assert "carol" in output
    # a database that was never initialised: an error with a hint, not a traceback
    empty = Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", allow_test_keys=True)
    code, _, error = cli(empty, "desk", "list-users")
    assert code != 0
    assert isinstance(error, HintedError)
    assert "hubreturns init" in error.hint


def test_sessions_end_after_their_lifetime_and_passwords_are_argon2id(
    sessions: sessionmaker[Session],
) -> None:
    now = datetime.now(UTC)
    with sessions.begin() as session:
        accounts.add_staff(session, "dora", PASSWORD, now)
        token = accounts.start_session(session, "dora", now)
    with sessions() as session:
        stored = session.get(StaffAccount, "dora")
        assert stored is not None
        assert stored.password_hash.startswith("$argon2id$")
        assert PASSWORD not in stored.password_hash
        assert session.scalar(select(DeskSession.token_sha256)) != token
        lifetime = accounts.SESSION_LIFETIME
        assert accounts.staff_for_session(session, token, now + lifetime / 2) == "dora"
        assert accounts.staff_for_session(session, token, now + lifetime) is None
        assert accounts.staff_for_session(session, token + "x", now) is None


def test_oversized_or_non_form_posts_are_refused(desk: Desk) -> None:
    token = desk.csrf()
    big = desk.client.post(
        "/desk/returns/new", data={"csrf_token": token, "additional_information": "x" * 20_000}
    )
    assert big.status_code == 413
    as_json = desk.client.post("/desk/returns/new", json={"csrf_token": token})
    assert as_json.status_code == 415
    assert desk.counts() == (0, 0)


def _ids(html: str, table: str) -> list[int]:
    body = html.split(f'id="{table}"')[1].split("</table>")[0]
    return [int(n) for n in re.findall(r'<td data-label="#">(?:<a [^>]*>)?(\d+)<', body)]


def _href(html: str, link_id: str) -> str | None:
    match = re.search(rf'id="{link_id}" href="([^"]+)"', html)
    return None if match is None else match.group(1).replace("&amp;", "&")


def test_returns_and_audit_are_paged_with_prev_and_next_links(desk: Desk) -> None:
    for fields in (
        fault(IS, HUB_PENDING, GPF_PENDING),
        fault(RSA, HUB_RSA_PENDING, "00-DB-12-34-56-78-90-C0"),
        {
            "originator": GS,
            "device_id": "00-DB-12-34-56-78-90-E2",
            "return_type": "Lost or Stolen Hub",
        },
    ):
        assert desk.log_return(**fields).headers["x-duis-response-code"] == "I99"
    with desk.sessions() as session:
        newest_first = list(
            session.scalars(select(ReturnRecord.id).order_by(ReturnRecord.id.desc()))
        )
        audit_ids = list(session.scalars(select(AuditEntry.id).order_by(AuditEntry.id.desc())))
    first = desk.client.get("/desk/returns", params={"per_page": "2", "channel": "servicedesk"})
    assert first.status_code == 200
    assert _ids(first.text, "returns") == newest_first[:2]
    assert _href(first.text, "page-prev") is None
    following = _href(first.text, "page-next")
    assert following is not None
    assert "channel=servicedesk" in following
    assert "per_page=2" in following
    second = desk.client.get(following)
    assert _ids(second.text, "returns") == newest_first[2:]
    assert _href(second.text, "page-next") is None
    assert _href(second.text, "page-prev") is not None
    assert "rows 3–3" in second.text
    # the CSV link keeps the filters but not the paging: it exports every row
    assert _href(second.text, "returns-csv") == "/desk/returns.csv?channel=servicedesk"
    beyond = desk.client.get("/desk/returns", params={"per_page": "2", "page": "9"})
    assert _ids(beyond.text, "returns") == []
    assert 'id="no-rows"' in beyond.text
    audit = desk.client.get("/desk/audit", params={"per_page": "2", "page": "2"})
    assert _ids(audit.text, "audit") == audit_ids[2:4]
    # Digits Python's str.isdigit() takes but int() does not ("²"), Arabic-Indic
    # digits, and more digits than int() parses: a form error, never a 500.
    odd = ({"page": "\u00b2"}, {"page": "\u0661"}, {"per_page": "9" * 5000})
    for bad in ({"page": "0"}, {"per_page": "201"}, {"page": "x"}, *odd):
        response = desk.client.get("/desk/returns", params=bad)
        assert response.status_code == 422, bad
        assert "must be a whole number" in response.text


def test_audit_filters_by_device_and_date(desk: Desk) -> None:
    desk.log_return(**fault(IS, HUB_PENDING, GPF_PENDING))
    desk.log_return(**fault(RSA, HUB_INSTALLED, GPF_INSTALLED))
    with desk.sessions() as session:
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        by_device = {e.device_id: e.id for e in entries}
        day = entries[0].received_at.date()
    page = desk.client.get("/desk/audit", params={"device_id": HUB_INSTALLED.lower()})
    assert page.status_code == 200
    assert _ids(page.text, "audit") == [by_device[HUB_INSTALLED]]
    today = desk.client.get("/desk/audit", params={"since": day.isoformat()})
    assert sorted(_ids(today.text, "audit")) == sorted(by_device.values())
    before = desk.client.get("/desk/audit", params={"until": day.isoformat()})
    assert _ids(before.text, "audit") == []
    later = (day + timedelta(days=1)).isoformat()
    assert _ids(desk.client.get("/desk/audit", params={"since": later}).text, "audit") == []
    exported = _csv(desk.client.get("/desk/audit.csv", params={"device_id": HUB_PENDING}))
    assert [r["device_id"] for r in exported] == [HUB_PENDING]
    bad = desk.client.get("/desk/audit", params={"device_id": "nope", "since": "soon"})
    assert bad.status_code == 422
    assert "is not an EUI-64" in bad.text
    assert "is not a date" in bad.text


def test_hub_page_shows_a_gpf_as_a_gpf_and_offers_no_second_return(desk: Desk) -> None:
    gpf = desk.client.get("/desk/hub", params={"device_id": GPF_PENDING})
    assert gpf.status_code == 200
    assert f'GPF <span class="eui">{GPF_PENDING}</span>' in gpf.text
    assert _href(gpf.text, "gpf-hub") == f"/desk/hub?device_id={HUB_PENDING}"
    assert 'id="log-return"' not in gpf.text
    hub = desk.client.get("/desk/hub", params={"device_id": HUB_PENDING})
    assert 'id="log-return"' in hub.text
    assert 'id="open-return-notice"' not in hub.text
    desk.log_return(**fault(IS, HUB_PENDING, GPF_PENDING))
    with desk.sessions() as session:
        (record,) = session.scalars(select(ReturnRecord)).all()
    hub = desk.client.get("/desk/hub", params={"device_id": HUB_PENDING})
    assert 'id="log-return"' not in hub.text
    notice = hub.text.split('id="open-return-notice"')[1].split("</p>")[0]
    assert f'href="/desk/returns/{record.id}"' in notice


def test_a_withdrawn_hub_is_shown_withdrawn_and_offers_no_return(
    desk: Desk, world: DemoWorld, tmp_path: Path
) -> None:
    kept = [
        line
        for line in world.devices_csv.read_text().splitlines()
        if not line.startswith(HUB_PENDING)
    ]
    inventory = tmp_path / "devices.csv"
    inventory.write_text("\n".join(kept) + "\n")
    code, output, _ = cli(desk.settings, "load", "devices", str(inventory), "--replace")
    assert code == 0, output
    assert "1 withdrawn" in " ".join(output.split())
    with desk.sessions() as session:
        device = session.get(Device, HUB_PENDING)
        assert device is not None
        assert device.withdrawn_at is not None
    page = desk.client.get("/desk/hub", params={"device_id": HUB_PENDING})
    assert page.status_code == 200
    assert 'id="withdrawn-notice"' in page.text
    assert 'id="log-return"' not in page.text
    inventory_cell = page.text.split('id="hub-inventory">')[1].split("</dd>")[0]
    assert inventory_cell.startswith("withdrawn ")
    assert desk.client.get(f"/desk/api/hubs/{HUB_PENDING}").json()["withdrawn_at"]
    still_held = desk.client.get("/desk/hub", params={"device_id": HUB_INSTALLED})
    assert 'id="withdrawn-notice"' not in still_held.text
    assert '<dd id="hub-inventory">yes</dd>' in still_held.text
    assert desk.client.get(f"/desk/api/hubs/{HUB_INSTALLED}").json()["withdrawn_at"] is None
    refused = desk.log_return(**fault(IS, HUB_PENDING, GPF_PENDING))
    assert refused.headers["x-duis-response-code"] == "E19"
    assert desk.counts() == (0, 1)


def test_field_errors_are_tied_to_their_fields_and_pages_have_a_skip_link(desk: Desk) -> None:
    response = desk.log_return(**fault(IS, "00-DB-12", GPF_PENDING, incident_reference="X" * 16))
    assert response.status_code == 422
    for field in ("device_id", "incident_reference"):
        tag = re.search(rf'<input id="{field}"[^>]*>', response.text)
        assert tag is not None
        assert 'aria-invalid="true"' in tag.group(0)
        assert f'aria-describedby="error-{field}"' in tag.group(0)
        assert f'id="error-{field}"' in response.text
    untouched = re.search(r'<input id="originator"[^>]*>', response.text)
    assert untouched is not None
    assert "aria-invalid" not in untouched.group(0)
    page = desk.client.get("/desk/returns/new")
    assert '<a class="skip" href="#main">' in page.text
    assert '<main id="main"' in page.text
    # no placeholder looks like a value someone could mistake for a real EUI or date
    for placeholder in re.findall(r'placeholder="([^"]*)"', page.text):
        assert not re.search(r"[0-9A-F]{2}-[0-9A-F]{2}-", placeholder), placeholder
        assert not re.search(r"\d{4}-\d{2}", placeholder), placeholder


def test_cli_shows_locked_accounts_resets_passwords_and_removes_accounts(
    desk: Desk, settings: Settings
) -> None:
    with httpx.Client(base_url=desk.url, timeout=30) as intruder:
        for _ in range(accounts.FREE_FAILURES + 1):
            sign_in(intruder, "alice", "wrong password guess")
        assert sign_in(intruder, "alice", PASSWORD).status_code == 429
    code, output, _ = cli(settings, "desk", "list-users")
    assert code == 0, output
    assert "locked until" in " ".join(output.split())
    assert desk.client.get("/desk/hub").status_code == 200  # the signed-in session still works
    new_password = "a brand new passphrase"
    code, output, _ = cli(
        settings, "desk", "reset-password", "alice", "--password-stdin", stdin=new_password
    )
    assert code == 0, output
    assert new_password not in output
    assert desk.client.get("/desk/hub").status_code == 303  # its sessions ended
    with desk.sessions() as session:
        assert session.get(SignInFailures, "alice") is None
    code, output, _ = cli(settings, "desk", "list-users")
    assert "locked" not in output
    with httpx.Client(base_url=desk.url, timeout=30) as fresh:
        assert sign_in(fresh, "alice", PASSWORD).status_code == 401
        assert sign_in(fresh, "alice", new_password).status_code == 303
    code, _, error = cli(settings, "desk", "reset-password", "alice", "--password-stdin", stdin="x")
    assert code != 0
    assert isinstance(error, HintedError)
    assert "fewer than 12" in str(error)
    code, _, error = cli(settings, "desk", "remove", "nobody")
    assert code != 0
    assert isinstance(error, HintedError)
    assert "list-users" in error.hint
    code, output, _ = cli(settings, "desk", "remove", "alice")
    assert code == 0, output
    with desk.sessions() as session:
        assert session.get(StaffAccount, "alice") is None
        assert session.scalar(select(func.count()).select_from(DeskSession)) == 0
    code, output, _ = cli(settings, "desk", "list-users")
    assert "no staff accounts yet" in output
