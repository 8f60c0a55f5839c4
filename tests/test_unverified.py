"""What refused requests leave behind (issue 21, section 5), on SQLite and PostgreSQL.

Through real HTTP: text a request carries reaches reasons, log lines and audit
rows only clipped (``model.clip``), so a 60 kB DeviceID no longer makes a
121,000-character log line; and the originator a refused request's RequestID
names is kept as a claim (``claimed_originator``), apart from the verified
sender (``originator``), on the desk, in the CLI and in the exports. The
migration that split the two is checked on existing rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
from lxml import etree
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker
from test_desk import PASSWORD, sign_in
from test_desk import cli as desk_cli
from test_store import _downgrade
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.dcc.config import Settings
from hubreturns.dcc.observability import json_handler
from hubreturns.dcc.store.db import migrate
from hubreturns.dcc.store.models import AuditEntry
from hubreturns.dcc.store.repository import Repository
from hubreturns.model import (
    CLIP_LIMIT,
    DEFAULT_ACB,
    REASON_LIMIT,
    ConnectionMethod,
    FaultReason,
    FaultReturnType,
    RequestId,
    ReturnKind,
    ReturnRequest,
    clip,
)
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import GS, IS, IS_UNLOADED, DemoWorld
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.envelope import DS_NS, SR_NS
from hubreturns.wire.request import build_request
from hubreturns.wire.signature import sign

#: Demo hubs: IS is responsible for both; both are Pending.
HUB, GPF = "00-DB-12-34-56-78-90-A2", "00-DB-12-34-56-78-90-A0"
OTHER_HUB = "00-DB-12-34-56-78-90-F2"
HUGE = 60_000
#: The longest a clipped reason can be: the limit, the mark, and escapes.
REASON_BOUND = REASON_LIMIT + len("…[cut 99999 chars]")
#: An access line carries the reason twice (message and field) and some 400 characters
#: more. Before clipping, a 60 kB DeviceID made one of 121,000 characters.
LINE_BOUND = 2 * REASON_BOUND + 1_000
XML = {"content-type": "application/xml"}


# -- clip, the one function ------------------------------------------------------------


def test_clip_keeps_short_text_and_marks_what_it_cuts() -> None:
    assert clip("90-B3-D5-1F-30-01-00-00") == "90-B3-D5-1F-30-01-00-00"
    assert clip("a" * CLIP_LIMIT) == "a" * CLIP_LIMIT
    assert clip("a" * HUGE) == "a" * CLIP_LIMIT + f"…[cut {HUGE - CLIP_LIMIT} chars]"
    assert clip("abcdef", limit=2) == "ab…[cut 4 chars]"


def test_clip_escapes_control_characters_so_a_terminal_shows_them_as_text() -> None:
    assert clip("red\x1b[31m\nbell\x07\x9b") == "red\\x1b[31m\\x0abell\\x07\\x9b"
    assert clip("\x1b" * 200).endswith("\\x1b…[cut 80 chars]")
    assert clip("Déjà vu – 90 µs") == "Déjà vu – 90 µs"


# -- requests --------------------------------------------------------------------------


def _request(sender: str, counter: int, device: str = HUB) -> ReturnRequest:
    return ReturnRequest(
        request_id=RequestId(originator=sender, target=DEFAULT_ACB, counter=counter),
        command_variant=8,
        service_reference="8.14",
        kind=ReturnKind.FAULT,
        device_id=device,
        return_type=FaultReturnType.PRE_INSTALL.value,
        other_device_id=GPF,
        connection_method=ConnectionMethod.HOT_SHOE,
        fault_reason=FaultReason.DAMAGED_CASE,
    )


def _signed(world: DemoWorld, root: etree._Element, signer: str) -> bytes:
    cred = world.credentials[signer]
    return sign(root, cred.key, SigningCertificate.from_x509(cred.certificate))


def _with_device_id(world: DemoWorld, device_id: str) -> bytes:
    """IS's own signed request with ``device_id`` (schema-invalid unless an EUI)."""
    root = build_request(_request(IS, 7))
    element = root.find(f"{{{SR_NS}}}Body/*/{{{SR_NS}}}DeviceID")
    assert element is not None
    element.text = device_id
    return _signed(world, root, IS)


def _post(
    http: httpx.Client, body: bytes, name: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return http.post(
        "/api/v1/serviceD", content=body, headers={**XML, **(headers or {}), "x-request-id": name}
    )


def _code(reply: httpx.Response, world: DemoWorld) -> str:
    return read_response(reply.content, world.dcc_certificates()).code


def _last(sessions: sessionmaker[Session]) -> AuditEntry:
    with sessions() as session:
        row = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
    assert row is not None
    return row


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every log record of the test as the service's JSON lines."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _access_line(stream: io.StringIO, http_request_id: str) -> str:
    """The raw access line of one exchange (written once its response is out)."""
    deadline = time.monotonic() + 10
    while True:
        for line in stream.getvalue().splitlines():
            fields = json.loads(line)
            if fields["logger"] == "hubreturns.http" and (
                fields["http_request_id"] == http_request_id
            ):
                return line
        assert time.monotonic() < deadline, f"no access line for {http_request_id}"
        time.sleep(0.02)


# -- clipped reasons, rows and log lines -----------------------------------------------


def test_a_60_kB_device_id_leaves_a_clipped_reason_row_and_log_line(
    http: httpx.Client,
    world: DemoWorld,
    seeded: sessionmaker[Session],
    log_lines: io.StringIO,
) -> None:
    body = _with_device_id(world, "A" * HUGE)
    reply = _post(http, body, "huge-device")
    assert (_code(reply, world), reply.status_code) == ("E31", 400)
    row = _last(seeded)
    assert row.code == "E31"
    assert "Element 'sr:DeviceID': [facet 'pattern'] The value '" in row.reason
    assert f"{'A' * CLIP_LIMIT}…[cut {HUGE - CLIP_LIMIT} chars]' is not accepted" in row.reason
    assert len(row.reason) <= REASON_BOUND
    assert row.body_bytes == len(body)  # what was received is still on record, by size and hash
    line = _access_line(log_lines, "huge-device")
    assert len(line) <= LINE_BOUND
    fields = json.loads(line)
    assert fields["reason"] == row.reason
    assert fields["message"].endswith(f"E31: {row.reason}")


def _huge_issuer(world: DemoWorld) -> bytes:
    root = etree.fromstring(_signed(world, build_request(_request(IS, 8)), IS))
    issuer = root.find(f".//{{{DS_NS}}}X509IssuerName")
    assert issuer is not None
    issuer.text = "CN=" + "Z" * HUGE
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


#: Hostile text in each place a reason quotes: (case, body, headers, code, HTTP status).
HOSTILE: list[tuple[str, Callable[[DemoWorld], bytes], dict[str, str], str, int]] = [
    ("request-id", lambda w: _with_request_id(w, "9" * HUGE), {}, "E31", 400),
    ("issuer", _huge_issuer, {}, "E41", 401),
    (
        "tag-mismatch",
        lambda w: b"<" + b"a" * 49_000 + b"></b>",
        {},
        "E46",
        400,
    ),
    (
        "content-type",
        lambda w: _with_device_id(w, HUB),
        {"content-type": "application/" + "x" * 8_000},
        "E46",
        415,
    ),
]


def _with_request_id(world: DemoWorld, request_id: str) -> bytes:
    root = build_request(_request(IS, 9))
    element = root.find(f"{{{SR_NS}}}Header/{{{SR_NS}}}RequestID")
    assert element is not None
    element.text = request_id
    return _signed(world, root, IS)


@pytest.mark.parametrize(
    ("case", "make", "headers", "code", "status"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_text_quoted_from_a_refused_request_is_clipped_everywhere_it_is_kept(
    http: httpx.Client,
    world: DemoWorld,
    seeded: sessionmaker[Session],
    log_lines: io.StringIO,
    case: str,
    make: Callable[[DemoWorld], bytes],
    headers: dict[str, str],
    code: str,
    status: int,
) -> None:
    reply = _post(http, make(world), case, headers)
    assert (_code(reply, world), reply.status_code) == (code, status)
    row = _last(seeded)
    assert (row.code, row.http_status) == (code, status)
    assert "…[cut " in row.reason
    assert len(row.reason) <= REASON_BOUND
    line = _access_line(log_lines, case)
    assert len(line) <= LINE_BOUND
    assert json.loads(line)["reason"] == row.reason


def test_a_long_path_is_clipped_in_the_access_line(
    http: httpx.Client, log_lines: io.StringIO
) -> None:
    path = "/nowhere/" + "p" * 5_000
    assert http.get(path, headers={"x-request-id": "long-path"}).status_code == 404
    fields = json.loads(_access_line(log_lines, "long-path"))
    assert fields["path"] == clip(path)
    assert fields["path"].endswith(f"…[cut {len(path) - CLIP_LIMIT} chars]")


# -- verified sender and claimed originator --------------------------------------------


def _forgeries(world: DemoWorld) -> list[tuple[str, bytes, str, str | None, str | None]]:
    """(case, body, code, verified sender, unverified claim), each naming IS unless GS's own."""
    unsigned = etree.tostring(build_request(_request(IS, 11)), encoding="UTF-8")
    return [
        ("unsigned, naming IS", unsigned, "E40", None, IS),
        (
            "signed with a key the store does not know, naming IS",
            _signed(world, build_request(_request(IS, 12)), IS_UNLOADED),
            "E41",
            None,
            IS,
        ),
        (
            "signed by GS, naming IS",
            _signed(world, build_request(_request(IS, 13)), GS),
            "E43",
            GS,
            IS,
        ),
        (
            "GS's own, for a hub of IS's",
            _signed(world, build_request(_request(GS, 14, OTHER_HUB)), GS),
            "E4",
            GS,
            None,
        ),
        ("IS's own", _signed(world, build_request(_request(IS, 15)), IS), "I99", IS, None),
    ]


def _send_forgeries(http: httpx.Client, world: DemoWorld) -> None:
    for n, (case, body, code, _, _) in enumerate(_forgeries(world)):
        assert _code(_post(http, body, f"forgery-{n}"), world) == code, case


def test_a_forged_request_is_audited_as_a_claim_not_as_the_named_supplier(
    http: httpx.Client, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    expected = [(code, sender, claim) for _, _, code, sender, claim in _forgeries(world)]
    _send_forgeries(http, world)
    with seeded() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [(r.code, r.originator, r.claimed_originator) for r in rows] == expected
        assert all(r.request_id is not None for r in rows)
        # The listing of a User shows what it sent and what was sent in its name.
        named_is = Repository(session).audit(originator=IS)
        assert sorted(r.code for r in named_is) == ["E40", "E41", "E43", "I99"]
        named_gs = Repository(session).audit(originator=GS)
        assert sorted(r.code for r in named_gs) == ["E4", "E43"]


# -- the desk, the CLI and the exports show the difference -----------------------------


@pytest.fixture
def signed_in(
    server: str, settings: Settings, seeded: sessionmaker[Session]
) -> Iterator[httpx.Client]:
    code, output, _ = desk_cli(
        settings, "desk", "add-user", "alice", "--password-stdin", stdin=PASSWORD
    )
    assert code == 0, output
    with httpx.Client(base_url=server, timeout=30) as client:
        assert sign_in(client, "alice", PASSWORD).status_code == 303
        yield client


_CODE_CELL = re.compile(r'<span class="code (?:ok|bad)"[^>]*>(\w+)</span>')


def _audit_rows_by_code(page: str) -> dict[str, str]:
    """The desk audit table's rows (their HTML), by response code."""
    body = page.split('id="audit"')[1].split("</tbody>")[0]
    rows: dict[str, str] = {}
    for row in body.split("<tr>")[1:]:
        found = _CODE_CELL.search(row)
        if found is not None:
            rows[found.group(1)] = row
    return rows


def test_the_desk_audit_page_and_export_mark_a_claimed_sender_as_unverified(
    signed_in: httpx.Client, world: DemoWorld
) -> None:
    _send_forgeries(signed_in, world)
    page = signed_in.get("/desk/audit")
    assert page.status_code == 200
    rows = _audit_rows_by_code(page.text)
    assert set(rows) == {"E40", "E41", "E43", "E4", "I99"}
    for code in ("E40", "E41"):
        assert '<span class="unverified"' in rows[code]
        assert f"claimed {IS} (unverified)" in rows[code]
    assert f'{GS}<br><span class="unverified"' in rows["E43"]
    assert f"claimed {IS} (unverified)" in rows["E43"]
    for code in ("E4", "I99"):
        assert "unverified" not in rows[code]
    assert f'<td data-label="Sender" class="eui sender">{IS}</td>' in rows["I99"]
    assert f'<td data-label="Sender" class="eui sender">{GS}</td>' in rows["E4"]

    export = signed_in.get("/desk/audit.csv", params={"originator": IS})
    assert export.status_code == 200
    listed = {r["code"]: r for r in csv.DictReader(io.StringIO(export.text))}
    assert set(listed) == {"E40", "E41", "E43", "I99"}
    assert [
        (listed[c]["originator"], listed[c]["claimed_originator"])
        for c in ("E40", "E41", "E43", "I99")
    ] == [
        ("", IS),
        ("", IS),
        (GS, IS),
        (IS, ""),
    ]


def test_the_cli_log_shows_sender_and_claim_apart_and_prints_hostile_text_as_text(
    http: httpx.Client, world: DemoWorld, settings: Settings, seeded: sessionmaker[Session]
) -> None:
    _send_forgeries(http, world)
    hostile = "[/x][bold]\x9b2J"  # rich markup and a C1 terminal escape (CSI), in a DeviceID
    assert _code(_post(http, _with_device_id(world, hostile), "markup"), world) == "E31"
    runner = CliRunner()
    env = {"HUBRETURNS_DATABASE_URL": settings.database_url, "COLUMNS": "400"}
    listed = runner.invoke(app, ["log", "--csv"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert [(r["code"], r["sender"], r["claimed, unverified"]) for r in rows] == [
        ("E31", "", IS),
        ("I99", IS, ""),
        ("E4", GS, ""),
        ("E43", GS, IS),
        ("E41", "", IS),
        ("E40", "", IS),
    ]
    assert "'[/x][bold]\\x9b2J'" in rows[0]["reason"]
    table = runner.invoke(app, ["log", "--originator", IS], env=env)
    assert table.exit_code == 0, table.output  # rich markup in a reason used to crash it
    assert "claimed, unverified" in table.stdout
    assert "[/x][bold]\\x9b2J" in table.stdout
    assert "\x9b" not in table.stdout


# -- the migration -----------------------------------------------------------------------


def test_0007_moves_unverified_originators_to_claims_and_back(engine: Engine) -> None:
    """Rows written before 0007 kept the RequestID's originator for every refusal."""
    _downgrade(engine, "0006")
    rows = [
        ("E40", False, IS),  # unsigned: a claim
        ("E43", False, IS),  # signed by another User: a claim
        ("E31", False, IS),  # schema-invalid: a claim
        ("E30", False, None),  # unreadable: nothing named (codes of before issue 24)
        ("E5", False, GS),  # decided by the rules: authenticated
        ("E21", False, GS),  # a replay: authenticated
        ("I99", True, IS),  # accepted: authenticated
    ]
    with engine.begin() as conn:
        for code, accepted, originator in rows:
            conn.execute(
                text(
                    "INSERT INTO audit_log (received_at, channel, code, accepted, reason,"
                    " http_status, body_bytes, originator)"
                    " VALUES (:at, 'duis', :code, :accepted, 'r', 400, 0, :originator)"
                ),
                {
                    "at": datetime.now(UTC),
                    "code": code,
                    "accepted": accepted,
                    "originator": originator,
                },
            )
    migrate(engine)
    with engine.connect() as conn:
        after = conn.execute(
            text("SELECT code, originator, claimed_originator FROM audit_log ORDER BY id")
        ).all()
    assert [tuple(r) for r in after] == [
        ("E40", None, IS),
        ("E43", None, IS),
        ("E31", None, IS),
        ("E30", None, None),
        ("E5", GS, None),
        ("E21", GS, None),
        ("I99", IS, None),
    ]
    _downgrade(engine, "0006")
    with engine.connect() as conn:
        back = conn.execute(text("SELECT code, originator FROM audit_log ORDER BY id")).all()
    assert [tuple(r) for r in back] == [(code, originator) for code, _, originator in rows]
    migrate(engine)
