"""Interop with DCC's own XML signing/validation tool, over HTTP on SQLite and PostgreSQL.

The tool is the Java program in the npm package ``@smartdcc/duis-sign-wrap``
(``dist/tool.jar``, GPL-3.0): ``scripts/install`` fetches it into
``.cache/dcc-tool/`` (or set ``HUBRETURNS_DCC_TOOL_JAR``) and it is only ever
run as an external program. Its ``Sign`` signs 8.14.3/8.14.4 requests for its
built-in test users with its own keys; the users' certificates are read out of
the jar at test time and loaded like any SMKI certificate. Every answer is
checked by the tool's ``Validate``. Without the jar or Java the tests are
skipped locally and fail in CI (``CI=true``), so a green CI means they ran.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from lxml import etree
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.codes import DEFAULT_PROFILE, Reason
from hubreturns.dcc.config import Settings
from hubreturns.dcc.loading import load_appointments, load_certificates, load_devices, load_users
from hubreturns.dcc.rules import RULES
from hubreturns.dcc.service import build_service, create_app
from hubreturns.dcc.serving import running_server
from hubreturns.dcc.store.models import AuditEntry, ReturnRecord
from hubreturns.extensions import register_commands
from hubreturns.pki import packaged_pki
from hubreturns.user.client import read_response
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.envelope import SR_NS, schema

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "tests" / "data" / "examples"
_MAIN = "uk.co.smartdcc.boxed.xmldsig."
#: The tool's built-in test users and the certificate files its jar holds for them.
IS, GS, RSA = "90-B3-D5-1F-30-01-00-00", "90-B3-D5-1F-30-02-00-00", "00-DB-12-34-56-78-00-04"
TOOL_CERTS = {
    IS: "xml-sign-90B3D51F30010000-ds.pem",
    GS: "xml-sign-90B3D51F30020000-ds.pem",
    RSA: "xml-sign-00DB123456780004-ds.pem",
}
ACB = "90-B3-D5-1F-30-00-00-02"


def _hub(n: str) -> tuple[str, str]:
    return f"00-DB-12-34-56-78-D{n}-02", f"00-DB-12-34-56-78-D{n}-00"


IS_PENDING, IS_PENDING_2, IS_INSTALLED, GS_PENDING = _hub("1"), _hub("2"), _hub("3"), _hub("4")
#: The answer to a replayed request: the code of the decision table's counter row.
REPLAY = DEFAULT_PROFILE.code(next(rule.code for rule in RULES if rule.name == "fresh counter"))
SCHEMA_VERSION = DEFAULT_PROFILE.code(Reason.SCHEMA_VERSION)
MALFORMED = DEFAULT_PROFILE.code(Reason.MALFORMED)


def _jar() -> Path:
    return Path(
        os.environ.get("HUBRETURNS_DCC_TOOL_JAR")
        or ROOT / ".cache" / "dcc-tool" / "package" / "dist" / "tool.jar"
    )


@pytest.fixture(scope="session")
def tool() -> Path:
    """The tool's jar, or a skip (locally) / failure (CI) saying how to get it."""
    jar, java = _jar(), shutil.which("java")
    missing = [
        what for what, ok in (("Java", java), (f"DCC's tool at {jar}", jar.is_file())) if not ok
    ]
    if missing:
        message = f"{' and '.join(missing)} missing; run scripts/install"
        if os.environ.get("CI") == "true":
            pytest.fail(f"required in CI: {message}")
        pytest.skip(message)
    return jar


def run_tool(
    jar: Path, main: str, document: bytes, *args: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["java", "-cp", str(jar), _MAIN + main, "-", *args],
        input=document,
        capture_output=True,
        timeout=120,
        check=False,
    )


def tool_sign(jar: Path, document: bytes) -> bytes:
    done = run_tool(jar, "Sign", document, "--preserveCounter")
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def tool_validates(jar: Path, document: bytes) -> bool:
    done = run_tool(jar, "Validate", document)
    assert done.returncode in (0, 10), done.stderr.decode()
    return done.returncode == 0


def template(variant: str, originator: str, counter: int, hub: tuple[str, str]) -> bytes:
    """The DUIS example for ``variant`` (placeholder signature and all), compact,
    with this sender, counter and hub."""
    name = next(EXAMPLES.glob(f"{variant}_*REQUEST_DUIS.XML"))
    text = re.sub(r">\s+<", "><", name.read_text(encoding="utf-8").strip())
    text = text.replace(f"90-B3-D5-1F-30-01-00-00:{ACB}:1000", f"{originator}:{ACB}:{counter}")
    text = text.replace("00-DB-12-34-56-78-90-A2", hub[0])
    return text.replace("00-DB-12-34-56-78-90-A0", hub[1]).encode()


@pytest.fixture
def registry(tool: Path, sessions: sessionmaker[Session], tmp_path: Path) -> sessionmaker[Session]:
    """The tool's users, their certificates (from its jar), hubs and the IS→RSA
    appointment, loaded through the importers into an empty database."""
    seeded = sessions
    now = datetime.now(UTC)
    certs = tmp_path / "tool-certs"
    certs.mkdir()
    with zipfile.ZipFile(tool) as jar:
        for name in TOOL_CERTS.values():
            (certs / name).write_bytes(jar.read(name))
    load_users(
        seeded,
        "user_id,role,name,status\n"
        f"{IS},IS,Tool IS,active\n{GS},GS,Tool GS,active\n{RSA},RSA,Tool RSA,active\n",
        now,
    )
    load_certificates(seeded, [certs], now)
    load_appointments(
        seeded,
        "rsa_user_id,supplier_user_id,valid_from,valid_to\n"
        f"{RSA},{IS},{(now - timedelta(days=1)).date().isoformat()},\n",
    )
    rows = [
        (IS_PENDING, "Pending", IS),
        (IS_PENDING_2, "Pending", IS),
        (IS_INSTALLED, "Commissioned", IS),
        (GS_PENDING, "Pending", GS),
    ]
    load_devices(
        seeded,
        "device_id,device_type,smi_status,responsible_suppliers,gpf_id\n"
        + "".join(f"{gpf},GPF,{s},{r},\n{chf},CHF,{s},{r},{gpf}\n" for (chf, gpf), s, r in rows),
        now,
    )
    return seeded


@pytest.fixture
def tool_http(
    registry: sessionmaker[Session], settings: Settings, engine: Engine
) -> Iterator[httpx.Client]:
    """The service, over a real socket, on the registry's database (no demo world)."""
    processor = build_service(settings, engine=engine)
    with (
        running_server(create_app(processor, settings)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


def _dsp() -> list[SigningCertificate]:
    return [
        SigningCertificate.from_pem(
            (packaged_pki() / "dsp-xml-sign-90B3D51F30000002-ds.cert.pem").read_bytes()
        )
    ]


#: (name, variant, sender, counter, hub, expected) in the order they are sent.
SCENARIOS = [
    ("IS fault return, its Pending hub", "8.14.3", IS, 101, IS_PENDING, "I99"),
    ("GS no-fault return, its Pending hub", "8.14.4", GS, 201, GS_PENDING, "I99"),
    ("RSA for its IS, Pending hub", "8.14.4", RSA, 301, IS_PENDING_2, "I99"),
    ("RSA for its IS, installed hub", "8.14.3", RSA, 302, IS_INSTALLED, "E5"),
    ("RSA on a hub of a Supplier that never appointed it", "8.14.4", RSA, 303, GS_PENDING, "E4"),
    ("GS on the IS's hub", "8.14.3", GS, 202, IS_INSTALLED, "E4"),
]


def test_requests_signed_by_dccs_tool_are_decided_and_every_answer_validates_with_it(
    tool: Path, registry: sessionmaker[Session], tool_http: httpx.Client
) -> None:
    http = tool_http
    sent: dict[str, bytes] = {}
    for name, variant, sender, counter, hub, expected in SCENARIOS:
        body = tool_sign(tool, template(variant, sender, counter, hub))
        assert b"&#13;" in body  # the tool wraps its SignatureValue; we must accept that
        sent[name] = body
        reply = http.post("/api/v1/serviceD", content=body, headers={"content-type": "text/xml"})
        answer = read_response(reply.content, _dsp())
        assert (name, answer.code) == (name, expected)
        assert tool_validates(tool, reply.content), name
        assert_dcc_only_shape(reply.content, f"{sender}:{ACB}:{counter}")
    replayed = http.post(
        "/api/v1/serviceD", content=sent[SCENARIOS[0][0]], headers={"content-type": "text/xml"}
    )
    assert read_response(replayed.content, _dsp()).code == REPLAY
    assert tool_validates(tool, replayed.content)
    assert_dcc_only_shape(replayed.content, f"{IS}:{ACB}:{SCENARIOS[0][3]}")
    # Refused before any rule: a schemaVersion this service does not accept (signed by
    # the tool) and a body that is not XML; their signed answers pass Validate too.
    foreign = template("8.14.4", GS, 203, GS_PENDING)
    assert b'schemaVersion="5.4"' in foreign
    foreign = tool_sign(tool, foreign.replace(b'schemaVersion="5.4"', b'schemaVersion="9.9"'))
    for body, expected in ((foreign, SCHEMA_VERSION), (b"not xml", MALFORMED)):
        reply = http.post("/api/v1/serviceD", content=body, headers={"content-type": "text/xml"})
        assert read_response(reply.content, _dsp()).code == expected
        assert tool_validates(tool, reply.content), expected
    # The tool's Validate can fail: a changed answer does not pass.
    assert not tool_validates(tool, replayed.content.replace(REPLAY.encode(), b"I99", 1))

    with registry() as session:
        returns = session.scalars(select(ReturnRecord).order_by(ReturnRecord.id)).all()
        assert [(r.originator, r.role, r.on_behalf_of, r.device_id) for r in returns] == [
            (IS, "IS", IS, IS_PENDING[0]),
            (GS, "GS", GS, GS_PENDING[0]),
            (RSA, "RSA", IS, IS_PENDING_2[0]),
        ]
        assert returns[0].request_xml == sent[SCENARIOS[0][0]]
        audit = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [a.code for a in audit] == [s[-1] for s in SCENARIOS] + [
            REPLAY,
            SCHEMA_VERSION,
            MALFORMED,
        ]


def assert_dcc_only_shape(answer: bytes, request_id: str) -> None:
    """The shape of DCC's own signed answers to Command Variant 8 requests: the
    RequestID repeated, a code and a time, no ResponseID; valid against DUIS 5.4."""
    root = etree.fromstring(answer)
    header = root.find(f"{{{SR_NS}}}Header")
    assert header is not None
    fields = [(etree.QName(child).localname, child.text) for child in header]
    assert [name for name, _ in fields] == ["RequestID", "ResponseCode", "ResponseDateTime"]
    assert fields[0][1] == request_id
    assert schema().validate(root), schema().error_log


def _cli_app() -> object:
    if not any(c.name == "sign" for c in app.registered_commands):
        register_commands(app)
    return app


def test_our_sign_output_validates_with_dccs_tool(tool: Path, tmp_path: Path) -> None:
    unsigned = re.sub(
        rb"<ds:Signature.*</ds:Signature>", b"", template("8.14.3", IS, 7, IS_PENDING)
    )
    document = tmp_path / "unsigned.xml"
    document.write_bytes(unsigned)
    signed = tmp_path / "signed.xml"
    pki = packaged_pki()
    result = CliRunner().invoke(
        _cli_app(),  # type: ignore[arg-type]
        [
            "sign",
            str(document),
            "--key",
            str(pki / "xml-sign-90B3D51F30010000-ds.key.pem"),
            "--cert",
            str(pki / "xml-sign-90B3D51F30010000-ds.cert.pem"),
            "--out",
            str(signed),
        ],
    )
    assert result.exit_code == 0, result.output
    body = signed.read_bytes()
    assert tool_validates(tool, body)
    tampered = body.replace(IS_PENDING[0].encode(), IS_PENDING_2[0].encode(), 1)
    assert tampered != body
    assert not tool_validates(tool, tampered)
