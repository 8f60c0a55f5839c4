"""The fuzz target: a processor on an in-memory demo database, inputs, and the property.

Imported by ``fuzz_request.py`` (under atheris instrumentation when atheris
is used) and by ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.pool import StaticPool

from hubreturns.codes import CODE_INFO, Reason
from hubreturns.dcc.config import Settings
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.service import build_service
from hubreturns.dcc.store.db import make_engine, migrate
from hubreturns.dcc.store.models import AuditEntry
from hubreturns.demo import seed
from hubreturns.model import DEFAULT_ACB, Endpoint
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import IS, DemoWorld, build_world, scenario_bodies
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.envelope import DS_NS, SR_NS
from hubreturns.wire.signature import sign

__all__ = ["TOKENS", "Harness", "run_random", "structured_seed"]

ENDPOINTS = list(Endpoint)
#: Tokens a mutation may splice in: the syntax attackers use.
TOKENS = [
    b"<!DOCTYPE r [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>",
    b"&e;",
    b"<!--",
    b"-->",
    b"<?pi x?>",
    b"<![CDATA[",
    b"]]>",
    b'xmlns="urn:x"',
    b'xmlns:sr="urn:x"',
    b"<sr:DeviceID>",
    b"</sr:Body>",
    b"<ds:Signature>",
    b"\xc0\xaf",
    b"\x00",
    b"&#0;",
    b"&#x110000;",
    b":18446744073709551616",
    b"\xef\xbb\xbf",
]
_FIELDS = (
    "RequestID",
    "CommandVariant",
    "ServiceReference",
    "ServiceReferenceVariant",
    "DeviceID",
    "CHFFaultReturnType",
    "UserRefDateTime",
    "UserRefID",
    "OtherDeviceID",
    "IncidentReference",
    "CHFConnectionMethod",
    "CHFFaultReason",
    "AdditionalInformation",
)
#: Signature fields a structured input may overwrite after signing: what the service reads
#: from KeyInfo before any check (issuer, serial), and the values it decodes.
_SIGNATURE_FIELDS = ("X509IssuerName", "X509SerialNumber", "DigestValue", "SignatureValue")


class Harness:
    """A processor on an in-memory database with the demo world, and the property check."""

    def __init__(self, folder: Path) -> None:
        self.world: DemoWorld = build_world(folder)
        engine = make_engine("sqlite://", poolclass=StaticPool)
        migrate(engine)
        self.processor: Processor = build_service(
            Settings(database_url="sqlite://", allow_test_keys=True), engine=engine
        )
        seed(self.processor.sessions, self.world, datetime.now(UTC))
        self.dcc = self.world.dcc_certificates()
        cred = self.world.credentials[IS]
        self._key = cred.key
        self._cert = SigningCertificate.from_x509(cred.certificate)
        self.seeds = [body for _s, body in scenario_bodies(self.world)]
        self.runs = 0

    def one(self, data: bytes) -> None:
        """Run one input and check the property; raises AssertionError on a finding."""
        if not data:
            body, endpoint = b"", Endpoint.NON_DEVICE
        else:
            endpoint = ENDPOINTS[data[0] % len(ENDPOINTS)]
            body = self.structured(data[1:]) if data[0] & 0x80 else data[1:]
        outcome = self.processor.handle_duis(body, endpoint)
        assert outcome.verdict in CODE_INFO, outcome.verdict
        assert outcome.verdict is not Reason.UNAVAILABLE, outcome.reason
        assert outcome.http_status < 500, outcome
        read = read_response(outcome.response, self.dcc)
        assert read.code == outcome.code, (read.code, outcome.code)
        self.runs += 1
        if self.runs % 10_000 == 0:
            with self.processor.sessions.begin() as session:
                session.execute(delete(AuditEntry))

    def structured(self, data: bytes) -> bytes:
        """A request with fuzz text in its fields, signed by the registered IS."""
        from lxml import etree

        text = data.decode("utf-8", "replace")
        parts = text.split("\x1f")
        values = {name: parts[n] for n, name in enumerate(_FIELDS) if n < len(parts)}
        defaults = {
            "RequestID": f"{IS}:{DEFAULT_ACB}:{len(data)}",
            "CommandVariant": "8",
            "ServiceReference": "8.14",
            "ServiceReferenceVariant": "8.14.3",
        }
        sr = f"{{{SR_NS}}}"
        root = etree.Element(f"{sr}Request", nsmap={"sr": SR_NS}, schemaVersion="5.4")
        header = etree.SubElement(root, f"{sr}Header")
        content = etree.SubElement(etree.SubElement(root, f"{sr}Body"), f"{sr}CHFFaultReturn")
        for n, name in enumerate(_FIELDS):
            value = values.get(name, defaults.get(name))
            if value is None:
                continue
            parent = header if n < 4 else content
            try:
                etree.SubElement(parent, f"{sr}{name}").text = value
            except ValueError:  # text lxml cannot hold (control characters): send raw
                return data
        signed = sign(root, self._key, self._cert)
        extra = parts[len(_FIELDS) :]
        if not extra:
            return signed
        tree = etree.fromstring(signed)
        for name, value in zip(_SIGNATURE_FIELDS, extra, strict=False):
            element = tree.find(f".//{{{DS_NS}}}{name}")
            assert element is not None, name
            try:
                element.text = value
            except ValueError:
                return data
        return etree.tostring(tree, xml_declaration=True, encoding="UTF-8")


# ------------------------------------------------------------------ engines


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        at = rng.randrange(len(buf) + 1)
        if choice == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            buf[at:at] = bytes([rng.randrange(256)])
        elif choice == 2 and buf:
            del buf[at : at + rng.randint(1, 16)]
        elif choice == 3:
            buf[at:at] = rng.choice(TOKENS)
        elif choice == 4:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[at:] = other[cut:]
        elif choice == 5:
            del buf[at:]
        else:
            start = rng.randrange(len(buf) + 1)
            buf[at:at] = buf[start : start + rng.randint(1, 64)]
    return bytes(buf)


def structured_seed(rng: random.Random) -> bytes:
    words = [
        f"{IS}:{DEFAULT_ACB}:{rng.randrange(2**65)}",
        rng.choice(["8", "1", "08", "-8", "8.0", ""]),
        rng.choice(["8.14", "8.11", ""]),
        rng.choice(["8.14.3", "8.14.4", "8.14.1"]),
        rng.choice(["00-DB-12-34-56-78-90-F2", "00-db-12-34-56-78-90-f2", "zz", ""]),
        rng.choice(["Fault identified prior to installation", "x"]),
        rng.choice(["2025-01-01T00:00:00Z", "2025-13-01T00:00:00", ""]),
        "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(40))),
        rng.choice(["00-DB-12-34-56-78-90-F0", "00-DB-12-34-56-78-90-B0"]),
        "I" * rng.randrange(20),
        rng.choice(["Hot-shoe", "Cradle", "ESME", "Glue"]),
        rng.choice(["Damaged case", "LED Fault", "Dropped"]),
        "x" * rng.randrange(250),
    ]
    # Half the inputs keep a valid signature (and reach the rules); half overwrite it.
    signature = [
        rng.choice(["CN=Z1-DEMO,OU=07", "CN=Z1-DEMO, OU=07", "OU", "=x", "CN=" + "Z" * 300]),
        # str.isdigit() takes "²" and other scripts' digits; int() refuses some of them.
        rng.choice(["12", "\u00b2", "\u0661\u0662", "\uff11", "9" * 60, "-1", "0x1f", ""]),
        rng.choice(["", "AAAA", "!!", "A" * 43 + "="]),
        rng.choice(["", "AAAA", "=" * 8, "A" * 88]),
    ]
    if rng.random() < 0.5:
        words += signature
    cut = rng.randrange(len(words) + 1)
    return b"\x80" + "\x1f".join(words[:cut] + words[cut:]).encode()


def run_random(
    harness: Harness, inputs: int, seed_value: int, report: Callable[[str], None]
) -> int:
    rng = random.Random(seed_value)  # noqa: S311 - reproducible inputs, not cryptography
    seeds = [b"\x00" + body for body in harness.seeds]
    evolved: list[bytes] = []  # mutants that are mutated again (a small, rolling pool)
    started = time.monotonic()
    for n in range(inputs):
        kind = rng.random()
        if kind < 0.3:
            data = structured_seed(rng)
        elif kind < 0.35:
            data = rng.randbytes(rng.randrange(1, 300))
        else:
            pool = seeds + evolved
            data = _mutate(rng, rng.choice(pool), pool)
            if rng.random() < 0.2:
                evolved = [*evolved[-39:], data]
        try:
            harness.one(data)
        except Exception:
            path = Path(f"crash-{seed_value}-{n}.bin")
            path.write_bytes(data)
            report(f"input {n} failed; saved to {path}")
            raise
        if (n + 1) % 50_000 == 0:
            elapsed = time.monotonic() - started
            report(f"{n + 1} inputs, {elapsed:.0f} s, {(n + 1) / elapsed:.0f}/s")
    return inputs
