"""Hostile requests through the real HTTP service on SQLite and PostgreSQL.

The wire-level tests (``test_envelope``, ``test_signature``) show each refusal
in isolation; here every hostile request goes through HTTP, the request path
and the database. For each one: the answer is a signed DUIS error (or a clean
HTTP error) with the expected code and status; the database changed by exactly
one audit row (row counts of every table, replay counters and open returns
compared before and after); and the next valid request is still accepted.
Each test runs a whole family and lists every case that misbehaved.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.dcc.loading import load_certificates, load_devices
from hubreturns.dcc.store.models import AuditEntry, Device, ReplayCounter
from hubreturns.dcc.store.repository import Repository
from hubreturns.model import (
    COUNTER_MAX,
    DEFAULT_ACB,
    ConnectionMethod,
    FaultReason,
    FaultReturnType,
    RequestId,
    ReturnKind,
    ReturnRequest,
)
from hubreturns.pki import Credential, DemoCA, load_credential, packaged_pki
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import GS, IS, IS_EXPIRED, DemoWorld
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.envelope import DS_NS, SR_NS
from hubreturns.wire.request import build_request
from hubreturns.wire.signature import sign

_SR = f"{{{SR_NS}}}"
_DS = f"{{{DS_NS}}}"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ACB = DEFAULT_ACB
MARK = "MARK0"


@dataclass(frozen=True, slots=True)
class State:
    """What a refused request must not change."""

    counts: dict[str, int]
    counters: dict[str, str]
    open_returns: dict[str, int | None]


@dataclass(slots=True)
class Bench:
    """Sends requests to the service and checks what each did to the database."""

    http: httpx.Client
    world: DemoWorld
    sessions: sessionmaker[Session]
    folder: Path
    counters: dict[str, int] = field(default_factory=dict)
    hubs: int = 0
    problems: list[str] = field(default_factory=list)

    # -- requests -----------------------------------------------------------

    def hub(self) -> str:
        """A fresh Pending hub the IS is responsible for."""
        self.hubs += 1
        hub = f"00-DB-12-34-5B-00-{self.hubs >> 8:02X}-{self.hubs & 0xFF:02X}"
        load_devices(
            self.sessions,
            f"device_id,device_type,smi_status,responsible_suppliers,gpf_id\n{hub},CHF,Pending,{IS},\n",
            datetime.now(UTC),
        )
        return hub

    def request(
        self, sender: str = IS, *, device: str | None = None, counter: int | None = None
    ) -> ReturnRequest:
        if counter is None:
            counter = self.counters.get(sender, 1000) + 1
        self.counters[sender] = max(self.counters.get(sender, 1000), counter)
        return ReturnRequest(
            request_id=RequestId(originator=sender, target=ACB, counter=counter),
            command_variant=8,
            service_reference="8.14",
            kind=ReturnKind.FAULT,
            device_id=device or self.hub(),
            return_type=FaultReturnType.PRE_INSTALL.value,
            other_device_id="00-DB-12-34-56-78-90-A0",
            connection_method=ConnectionMethod.HOT_SHOE,
            fault_reason=FaultReason.DAMAGED_CASE,
            user_ref_id=MARK,
        )

    def root(self, sender: str = IS, **kwargs: object) -> etree._Element:
        return build_request(self.request(sender, **kwargs))  # type: ignore[arg-type]

    def sign(self, root: etree._Element, signer: str | Credential = IS) -> bytes:
        cred = self.world.credentials[signer] if isinstance(signer, str) else signer
        return sign(root, cred.key, SigningCertificate.from_x509(cred.certificate))

    def signed(self, sender: str = IS, **kwargs: object) -> bytes:
        return self.sign(self.root(sender, **kwargs), sender)

    def send(
        self, body: bytes | Iterator[bytes], *, content_type: str | None = "application/xml"
    ) -> httpx.Response:
        headers = {"content-type": content_type} if content_type else {}
        return self.http.post("/api/v1/serviceD", content=body, headers=headers)

    # -- checks -------------------------------------------------------------

    def state(self) -> State:
        with self.sessions() as session:
            return State(
                Repository(session).counts(),
                {c.originator: c.last_counter for c in session.scalars(select(ReplayCounter))},
                {d.device_id: d.open_return_id for d in session.scalars(select(Device))},
            )

    def code_of(self, reply: httpx.Response) -> str:
        code = read_response(reply.content, self.world.dcc_certificates()).code
        if reply.headers.get("x-duis-response-code") != code:
            self.problems.append(f"header code {reply.headers.get('x-duis-response-code')}")
        return code

    def refused(
        self,
        name: str,
        body: bytes | Iterator[bytes],
        code: str,
        status: int,
        *,
        content_type: str | None = "application/xml",
    ) -> None:
        """Send ``body``; it must get ``code``/``status`` and change only the audit log."""
        before = self.state()
        reply = self.send(body, content_type=content_type)
        try:
            got = self.code_of(reply)
        except Exception as exc:  # an unsigned or unreadable answer is a finding
            self.problems.append(f"{name}: HTTP {reply.status_code}, unreadable answer: {exc}")
            got = "?"
        if (got, reply.status_code) != (code, status):
            self.problems.append(f"{name}: got {got}/{reply.status_code}, expected {code}/{status}")
        after = self.state()
        expected_counts = {**before.counts, "audit_log": before.counts["audit_log"] + 1}
        if after.counts != expected_counts:
            self.problems.append(f"{name}: row counts {before.counts} -> {after.counts}")
        if after.counters != before.counters:
            self.problems.append(f"{name}: replay counters {before.counters} -> {after.counters}")
        if after.open_returns != before.open_returns:
            self.problems.append(f"{name}: a hub was claimed")
        with self.sessions() as session:
            last = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
        if last is None or last.accepted or last.code != code:
            self.problems.append(f"{name}: last audit row is {last and (last.code, last.accepted)}")
        self.accepted(f"{name} (next valid request)")

    def accepted(self, name: str, body: bytes | None = None) -> None:
        """A valid request (default: a fresh one) must get I99 and store one return."""
        before = self.state()
        reply = self.send(body if body is not None else self.signed())
        got = self.code_of(reply)
        if (got, reply.status_code) != ("I99", 200):
            self.problems.append(f"{name}: got {got}/{reply.status_code}, expected I99/200")
        after = self.state()
        if after.counts["returns"] != before.counts["returns"] + 1:
            self.problems.append(f"{name}: no return stored")

    def assert_clean(self) -> None:
        assert self.problems == [], "\n".join(self.problems)


@pytest.fixture
def bench(
    http: httpx.Client, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> Bench:
    return Bench(http, world, seeded, tmp_path)


# ------------------------------------------------------------------ helpers


def _replace(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data, old
    return data.replace(old, new, 1)


def _parse(data: bytes) -> etree._Element:
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))


def _bytes(root: etree._Element) -> bytes:
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8")


def _mutate(data: bytes, change: Callable[[etree._Element], object]) -> bytes:
    root = _parse(data)
    change(root)
    return _bytes(root)


def _one(root: etree._Element, path: str) -> etree._Element:
    found = root.xpath(path, namespaces={"ds": DS_NS, "sr": SR_NS})
    assert isinstance(found, list), path
    assert len(found) == 1, path
    element = found[0]
    assert isinstance(element, etree._Element)
    return element


def _signature(root: etree._Element) -> etree._Element:
    return _one(root, "ds:Signature")


SIGNED_INFO = "ds:Signature/ds:SignedInfo"
REFERENCE = f"{SIGNED_INFO}/ds:Reference"


def _set(path: str, attribute: str, value: str) -> Callable[[etree._Element], None]:
    return lambda root: _one(root, path).set(attribute, value)


def _transforms(*algorithms: str) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        transforms = _one(root, f"{REFERENCE}/ds:Transforms")
        for child in list(transforms):
            transforms.remove(child)
        for algorithm in algorithms:
            etree.SubElement(transforms, f"{_DS}Transform", Algorithm=algorithm)

    return change


def _signature_bytes(change: Callable[[bytes], bytes]) -> Callable[[etree._Element], None]:
    def apply(root: etree._Element) -> None:
        value = _one(root, "ds:Signature/ds:SignatureValue")
        value.text = base64.b64encode(change(base64.b64decode(value.text or ""))).decode()

    return apply


def _high_s(raw: bytes) -> bytes:
    s = int.from_bytes(raw[32:], "big")
    return raw[:32] + (P256_N - s).to_bytes(32, "big")


ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
INC_C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
LAUGHS = "".join(
    f'<!ENTITY l{n} "{f"&l{n - 1};" * 10}">' if n else '<!ENTITY l0 "lol">' for n in range(10)
)


# ------------------------------------------------------------------ XML


def test_hostile_xml_changes_nothing_but_the_audit_log(bench: Bench) -> None:
    decl = b"<?xml version='1.0' encoding='UTF-8'?>"

    def with_prolog(prolog: str, mark: str = MARK) -> bytes:
        data = _replace(bench.signed(), MARK.encode(), mark.encode())
        return _replace(data, decl, decl + prolog.encode())

    def signed_with(node: etree._Element) -> bytes:
        root = bench.root()
        _one(root, "sr:Body/*/sr:UserRefID").append(node)
        return bench.sign(root)

    def body_namespace(data: bytes, namespace: str) -> bytes:
        """The body content unprefixed, under a default namespace of the attacker's."""
        start = data.index(b"<sr:Body>") + len(b"<sr:Body>")
        end = data.index(b"</sr:Body>")
        inner = data[start:end].replace(b"<sr:", b"<").replace(b"</sr:", b"</")
        inner = _replace(
            inner, b"<CHFFaultReturn>", f'<CHFFaultReturn xmlns="{namespace}">'.encode()
        )
        return data[:start] + inner + data[end:]

    def chunks(total: int) -> Iterator[bytes]:
        sent = 0
        while sent < total:
            sent += 8192
            yield b" " * 8192

    valid = bench.signed()
    default_ns = valid.replace(b"xmlns:sr=", b"xmlns=").replace(b"<sr:", b"<")
    default_ns = default_ns.replace(b"</sr:", b"</")
    deep = "<sr:X>" * 2000 + "</sr:X>" * 2000
    quadratic = '<!ENTITY a "' + "a" * 20000 + '">'

    cases: list[tuple[str, bytes, str, int]] = [
        ("DOCTYPE", with_prolog("<!DOCTYPE sr:Request>"), "E46", 400),
        (
            "internal entity",
            with_prolog('<!DOCTYPE sr:Request [<!ENTITY e "X">]>', "&e;"),
            "E46",
            400,
        ),
        (
            "external entity",
            with_prolog('<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>', "&x;"),
            "E46",
            400,
        ),
        (
            "external DTD over the network",
            with_prolog('<!DOCTYPE r SYSTEM "http://127.0.0.1:9/duis.dtd">'),
            "E46",
            400,
        ),
        (
            "parameter entity",
            with_prolog('<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p"> %p;]>'),
            "E46",
            400,
        ),
        ("billion laughs", with_prolog(f"<!DOCTYPE r [{LAUGHS}]>", "&l9;"), "E46", 400),
        (
            "quadratic blowup",
            with_prolog(f"<!DOCTYPE r [{quadratic}]>", "&a;" * 1500),
            "E46",
            400,
        ),
        ("deep nesting", _replace(valid, MARK.encode(), deep.encode()), "E46", 400),
        ("invalid UTF-8", _replace(valid, MARK.encode(), b"caf\xe9"), "E46", 400),
        ("overlong UTF-8", _replace(valid, MARK.encode(), b"\xc0\xaf"), "E46", 400),
        ("NUL byte", _replace(valid, MARK.encode(), b"\x00"), "E46", 400),
        (
            "declared ISO-8859-1",
            _replace(valid, b"encoding='UTF-8'", b"encoding='ISO-8859-1'"),
            "E46",
            400,
        ),
        ("declared UTF-16", _replace(valid, b"encoding='UTF-8'", b"encoding='UTF-16'"), "E46", 400),
        ("UTF-16 bytes", valid.decode().replace("UTF-8", "UTF-16").encode("utf-16"), "E46", 400),
        ("comment inside signed content", signed_with(etree.Comment("hidden")), "E46", 400),
        (
            "processing instruction inside signed content",
            signed_with(etree.ProcessingInstruction("evil", "x")),
            "E46",
            400,
        ),
        ("comment after the root", valid + b"<!--x-->", "E46", 400),
        ("default-namespace swap after signing", default_ns, "E40", 401),
        # A namespace no DUIS document uses is refused as malformed before the schema check.
        ("body in a foreign default namespace", body_namespace(valid, "urn:evil"), "E46", 400),
        (
            "sr prefix rebound on Body",
            _replace(valid, b"<sr:Body>", b'<sr:Body xmlns:sr="urn:evil">'),
            "E46",
            400,
        ),
        (
            "ds prefix rebound on Signature",
            _replace(valid, b"<ds:Signature>", b'<ds:Signature xmlns:ds="urn:evil">'),
            "E46",
            400,
        ),
        (
            "duplicate DeviceID (signed)",
            bench.sign(
                _dup(bench.root(), "sr:Body/*/sr:DeviceID"),
            ),
            "E31",
            400,
        ),
        ("duplicate Header (signed)", bench.sign(_dup(bench.root(), "sr:Header")), "E31", 400),
        ("duplicate Body (signed)", bench.sign(_dup(bench.root(), "sr:Body")), "E31", 400),
        (
            "duplicate RequestID (signed)",
            bench.sign(_dup(bench.root(), "sr:Header/sr:RequestID")),
            "E31",
            400,
        ),
        ("two documents", valid + valid, "E46", 400),
        ("truncated: 1 byte missing", valid[:-1], "E46", 400),
        ("truncated: half", valid[: len(valid) // 2], "E46", 400),
        ("truncated: declaration only", decl, "E46", 400),
        ("empty body", b"", "E46", 400),
        ("whitespace only", b"  \n", "E46", 400),
        ("not XML", b"hello", "E46", 400),
    ]
    for name, body, code, status in cases:
        bench.refused(name, body, code, status)
    oversized = _replace(valid, MARK.encode(), b"x" * 70_000)
    bench.refused("oversized body with Content-Length", oversized, "E46", 413)
    bench.refused("oversized chunked body", chunks(200_000), "E46", 413)
    for content_type in ("text/plain", "application/json", "multipart/form-data", None):
        bench.refused(f"content type {content_type}", valid, "E46", 415, content_type=content_type)
    bench.assert_clean()


def _dup(root: etree._Element, path: str) -> etree._Element:
    element = _one(root, path)
    element.addnext(copy.deepcopy(element))
    return root


# ------------------------------------------------------------------ signatures


def test_hostile_signatures_change_nothing_but_the_audit_log(
    bench: Bench, odd: dict[str, Credential]
) -> None:
    world = bench.world
    folder = bench.folder / "odd-certs"
    folder.mkdir()
    for name, cred in odd.items():
        (folder / f"{name}.cert.pem").write_bytes(cred.cert_pem)
    load_certificates(bench.sessions, [folder], datetime.now(UTC))

    def mutated(change: Callable[[etree._Element], object]) -> bytes:
        return _mutate(bench.signed(), change)

    def hmac_signed() -> bytes:
        # Key confusion: HMAC keyed with the (public) certificate the verifier knows.
        root = bench.root()
        data = _parse(bench.sign(root))
        signed_info = _one(data, SIGNED_INFO)
        _one(data, f"{SIGNED_INFO}/ds:SignatureMethod").set(
            "Algorithm", "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256"
        )
        mac = hmac.new(
            world.credentials[IS].cert_pem,
            etree.tostring(signed_info, method="c14n", exclusive=True),
            hashlib.sha256,
        ).digest()
        _one(data, "ds:Signature/ds:SignatureValue").text = base64.b64encode(mac).decode()
        return _bytes(data)

    def embedded_certificate() -> bytes:
        # An attacker's own key and certificate, carried in KeyInfo.
        attacker = DemoCA.generate().issue_xml_signing(IS)
        data = _parse(bench.sign(bench.root(), attacker))
        x509_data = _one(data, "ds:Signature/ds:KeyInfo/ds:X509Data")
        cert = etree.SubElement(x509_data, f"{_DS}X509Certificate")
        der = attacker.certificate.public_bytes(Encoding.DER)
        cert.text = base64.b64encode(der).decode()
        return _bytes(data)

    def key_value() -> bytes:
        data = _parse(bench.signed())
        key_info = _one(data, "ds:Signature/ds:KeyInfo")
        etree.SubElement(etree.SubElement(key_info, f"{_DS}KeyValue"), f"{_DS}ECKeyValue")
        return _bytes(data)

    def moved_onto(attacker_body: bytes) -> bytes:
        evil = _parse(attacker_body)
        evil.append(copy.deepcopy(_signature(_parse(bench.signed()))))
        return _bytes(evil)

    def wrapped_original() -> bytes:
        original = _parse(bench.signed())
        evil = bench.root()
        etree.SubElement(evil, f"{_SR}Wrapper").append(original)
        return _bytes(evil)

    def body_hidden_in_header() -> bytes:
        root = _parse(bench.signed())
        _one(root, "sr:Header").append(copy.deepcopy(_one(root, "sr:Body")))
        _one(root, "sr:Body/*/sr:DeviceID").text = bench.hub()
        return _bytes(root)

    def body_in_object() -> bytes:
        root = _parse(bench.signed())
        carrier = etree.SubElement(_signature(root), f"{_DS}Object")
        carrier.append(copy.deepcopy(_one(root, "sr:Body")))
        _one(root, "sr:Body/*/sr:DeviceID").text = bench.hub()
        return _bytes(root)

    def signed_inside_body() -> bytes:
        evil = bench.root()
        _one(evil, "sr:Body/*/sr:UserRefID").append(_parse(bench.signed()))
        return _bytes(evil)

    unsigned = _bytes(bench.root())
    cases: list[tuple[str, bytes, str]] = [
        ("missing", unsigned, "E40"),
        ("two signatures", mutated(lambda r: r.append(copy.deepcopy(_signature(r)))), "E31"),
        ("signature not last", mutated(lambda r: r.insert(1, _signature(r))), "E31"),
        (
            "signature inside the body",
            mutated(lambda r: _one(r, "sr:Body/*").append(_signature(r))),
            "E31",
        ),
        ("Reference URI to an ID", mutated(_set(REFERENCE, "URI", "#Request")), "E40"),
        ("Reference URI external", mutated(_set(REFERENCE, "URI", "http://127.0.0.1:9/")), "E40"),
        ("Reference with an Id", mutated(_set(REFERENCE, "Id", "r1")), "E40"),
        ("extra transform", mutated(_transforms(ENVELOPED, EXC_C14N)), "E40"),
        ("reordered transforms", mutated(_transforms(EXC_C14N, ENVELOPED)), "E40"),
        (
            "XPath transform",
            mutated(_transforms("http://www.w3.org/TR/1999/REC-xpath-19991116")),
            "E40",
        ),
        (
            "inclusive c14n for SignedInfo",
            mutated(_set(f"{SIGNED_INFO}/ds:CanonicalizationMethod", "Algorithm", INC_C14N)),
            "E40",
        ),
        (
            "RSA-SHA256",
            mutated(
                _set(
                    f"{SIGNED_INFO}/ds:SignatureMethod",
                    "Algorithm",
                    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                )
            ),
            "E40",
        ),
        ("HMAC-SHA256 keyed with the certificate", hmac_signed(), "E40"),
        (
            "ECDSA-SHA1",
            mutated(
                _set(
                    f"{SIGNED_INFO}/ds:SignatureMethod",
                    "Algorithm",
                    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha1",
                )
            ),
            "E40",
        ),
        (
            "SHA-1 digest",
            mutated(
                _set(
                    f"{REFERENCE}/ds:DigestMethod",
                    "Algorithm",
                    "http://www.w3.org/2000/09/xmldsig#sha1",
                )
            ),
            "E40",
        ),
        ("KeyInfo with an embedded attacker certificate", embedded_certificate(), "E40"),
        ("KeyInfo with a KeyValue (schema-invalid)", key_value(), "E31"),
        ("SignatureValue 63 bytes", mutated(_signature_bytes(lambda raw: raw[:63])), "E40"),
        ("SignatureValue 65 bytes", mutated(_signature_bytes(lambda raw: raw + b"\0")), "E40"),
        (
            "SignatureValue DER",
            mutated(
                _signature_bytes(
                    lambda raw: b"\x30\x44\x02\x20" + raw[:32] + b"\x02\x20" + raw[32:]
                )
            ),
            "E40",
        ),
        ("s = 0", mutated(_signature_bytes(lambda raw: raw[:32] + bytes(32))), "E40"),
        ("body changed after signing", _replace(bench.signed(), MARK.encode(), b"MARK1"), "E40"),
        ("XSW: signature moved onto another document", moved_onto(_bytes(bench.root())), "E40"),
        ("XSW: original wrapped below attacker content", wrapped_original(), "E31"),
        ("XSW: original body hidden in the Header", body_hidden_in_header(), "E31"),
        ("XSW: original body in ds:Object", body_in_object(), "E40"),
        ("XSW: signed document inside the body", signed_inside_body(), "E31"),
        (
            "unknown serial",
            mutated(
                lambda r: setattr(
                    _one(
                        r,
                        "ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509IssuerSerial/ds:X509SerialNumber",
                    ),
                    "text",
                    "4242",
                )
            ),
            "E41",
        ),
        (
            "unknown issuer",
            mutated(
                lambda r: setattr(
                    _one(
                        r,
                        "ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509IssuerSerial/ds:X509IssuerName",
                    ),
                    "text",
                    "CN=Evil,OU=07",
                )
            ),
            "E41",
        ),
        ("expired certificate", bench.sign(bench.root(), IS_EXPIRED), "E42"),
        ("not-yet-valid certificate", bench.sign(bench.root(), odd["not yet valid"]), "E42"),
        ("organisation certificate (OU 02)", bench.sign(bench.root(), odd["organisation"]), "E42"),
        (
            "P-384 certificate",
            sign(
                bench.root(),
                world.credentials[IS].key,  # the certificate is refused before any key is used
                SigningCertificate.from_x509(odd["p384"].certificate),
            ),
            "E42",
        ),
        ("DSP certificate (OU 89)", bench.sign(bench.root(ACB), odd["dsp"]), "E42"),
        ("identity is not the originator", bench.sign(bench.root(), GS), "E43"),
    ]
    for name, body, code in cases:
        status = 400 if code in ("E46", "E31") else 401
        bench.refused(name, body, code, status)
    bench.assert_clean()


@pytest.fixture(scope="module")
def odd() -> dict[str, Credential]:
    """Credentials of the wrong kind or time for the IS (and the DCC's own signer)."""
    ca = DemoCA.generate()
    now = datetime.now(UTC)
    pki = packaged_pki()
    return {
        "not yet valid": ca.issue_xml_signing(
            IS, not_before=now + timedelta(days=1), not_after=now + timedelta(days=9)
        ),
        "organisation": ca.issue_xml_signing(IS, ou="02"),
        "p384": ca.issue_xml_signing(IS, curve=ec.SECP384R1()),
        "dsp": load_credential(
            pki / "dsp-xml-sign-90B3D51F30000002-ds.key.pem",
            pki / "dsp-xml-sign-90B3D51F30000002-ds.cert.pem",
        ),
    }


# ------------------------------------------------------------------ replay


def test_replays_and_counter_limits_change_nothing_but_the_audit_log(bench: Bench) -> None:
    first = bench.signed(counter=5000)
    bench.accepted("first request", first)
    bench.refused("same request again", first, "E48", 409)
    bench.refused("same RequestID, other content", bench.signed(counter=5000), "E48", 409)
    bench.refused("lower counter", bench.signed(counter=4999), "E48", 409)
    high_s = _mutate(first, _signature_bytes(_high_s))
    assert high_s != first
    bench.refused("high-S malleated copy of an accepted request", high_s, "E48", 409)

    top = bench.signed(counter=COUNTER_MAX)
    bench.accepted("counter 2^64-1", top)
    for name, body in [
        ("counter 2^64-1 again", bench.signed(counter=COUNTER_MAX)),
        ("counter 0 after 2^64-1", bench.signed(counter=0)),
    ]:
        before = bench.state()
        reply = bench.send(body)
        if (bench.code_of(reply), reply.status_code) != ("E48", 409):
            bench.problems.append(f"{name}: got {reply.headers.get('x-duis-response-code')}")
        if bench.state().counts["returns"] != before.counts["returns"]:
            bench.problems.append(f"{name}: a return was stored")
    rid = f"{IS}:{ACB}:{COUNTER_MAX}".encode()
    for name, counter in [
        ("counter 2^64 (overflow)", b"18446744073709551616"),
        ("counter 20 nines", b"99999999999999999999"),
        ("counter with 21 digits", b"100000000000000000000"),
        ("counter with a leading zero", b"01"),
        ("negative counter", b"-1"),
    ]:
        root = bench.root(counter=1)
        request_id = _one(root, "sr:Header/sr:RequestID")
        request_id.text = f"{IS}:{ACB}:{counter.decode()}"
        body = bench.sign(root)
        assert rid not in body
        before = bench.state()
        reply = bench.send(body)
        if (bench.code_of(reply), reply.status_code) != ("E31", 400):
            bench.problems.append(f"{name}: got {reply.headers.get('x-duis-response-code')}")
        if bench.state().counters != before.counters:
            bench.problems.append(f"{name}: counter moved")
    with bench.sessions() as session:
        stored = session.get(ReplayCounter, IS)
        assert stored is not None
        assert int(stored.last_counter) == COUNTER_MAX
    bench.assert_clean()


def _race(bench: Bench, bodies: list[bytes]) -> list[str]:
    """Send every body at the same moment, each on its own connection."""
    barrier = threading.Barrier(len(bodies))
    codes: list[str] = [""] * len(bodies)

    def send(n: int) -> None:
        with httpx.Client(base_url=str(bench.http.base_url), timeout=60) as client:
            barrier.wait()
            reply = client.post(
                "/api/v1/serviceD", content=bodies[n], headers={"content-type": "application/xml"}
            )
        codes[n] = reply.headers.get("x-duis-response-code", "?")

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def test_simultaneous_requests_give_exactly_one_acceptance(bench: Bench) -> None:
    before = bench.state()
    # 16 connections, one request: one I99.
    same = bench.signed(counter=7000)
    assert sorted(_race(bench, [same] * 16)) == ["E48"] * 15 + ["I99"]
    # 16 different hubs under one counter: one I99, the counter is used once.
    codes = _race(bench, [bench.signed(counter=7001) for _ in range(16)])
    assert sorted(codes) == ["E48"] * 15 + ["I99"]
    # 16 rising counters for one hub: one I99, the others REPLAY or OPEN_RETURN.
    hub = bench.hub()
    codes = _race(bench, [bench.signed(counter=7100 + n, device=hub) for n in range(16)])
    assert codes.count("I99") == 1
    assert set(codes) <= {"I99", "E48", "E44"}
    winner = 7100 + codes.index("I99")
    after = bench.state()
    assert after.counts["returns"] == before.counts["returns"] + 3
    assert after.counts["audit_log"] == before.counts["audit_log"] + 48
    assert int(after.counters[IS]) == winner
    assert after.open_returns[hub] is not None
    bench.accepted("after the races")
    bench.assert_clean()


def test_the_deep_nesting_case_is_a_parse_refusal_not_a_schema_one() -> None:
    """Guard for the corpus: 5000 levels exceed libxml2's default depth limit.

    The default policy refuses so much markup before parsing; with the element
    limit lifted, libxml2's own depth limit still refuses it.
    """
    from dataclasses import replace

    from hubreturns.errors import EnvelopeRejection
    from hubreturns.policy import REQUEST_POLICY
    from hubreturns.wire.envelope import parse

    data = b"<a>" * 5000 + b"</a>" * 5000
    with pytest.raises(EnvelopeRejection) as caught:
        parse(data, REQUEST_POLICY)
    assert re.search("more markup than 128 elements", caught.value.message)
    with pytest.raises(EnvelopeRejection) as caught:
        parse(data, replace(REQUEST_POLICY, max_elements=20_000))
    assert re.search("not well-formed", caught.value.message)


# ---------------------------------------------------------------- issue 21: shapes, boundaries


def _declare(data: bytes, tag: bytes, declaration: bytes) -> bytes:
    """``data`` with ``declaration`` added to the first ``tag`` start tag (after signing)."""
    assert tag in data, tag
    return data.replace(tag, tag + b" " + declaration, 1)


def _declare_in(data: bytes, start: bytes, declaration: bytes) -> bytes:
    """``data`` with ``declaration`` inserted into the start tag opened by ``start``."""
    at = data.index(start) + len(start)
    return data[:at] + b" " + declaration + data[at:]


def test_relative_namespace_uris_get_a_signed_malformed_code_and_one_audit_row(
    bench: Bench,
) -> None:
    """These made exclusive C14N raise: an unsigned 500, no audit row (issue 21)."""
    cases = {
        "on sr:Request": (b"<sr:Request", b'xmlns:x="u"'),
        "on sr:Header": (b"<sr:Header", b'xmlns:x="u"'),
        "DeviceID's default namespace": (b"<sr:DeviceID", b'xmlns="u"'),
        "on ds:SignedInfo": (b"<ds:SignedInfo", b'xmlns:x="u"'),
    }
    for name, (start, declaration) in cases.items():
        bench.refused(name, _declare_in(bench.signed(), start, declaration), "E46", 400)
    bench.assert_clean()


def test_relative_namespace_past_the_envelope_is_a_signature_refusal() -> None:
    """With the allow-list lifted, C14N's own failure is an E40, not an exception."""
    from dataclasses import replace

    from wire_helpers import fault_request, load_signer, pki_store, sign_bytes

    from hubreturns.codes import Reason
    from hubreturns.errors import SignatureRejection
    from hubreturns.policy import REQUEST_POLICY
    from hubreturns.wire.envelope import parse
    from hubreturns.wire.signature import verify

    policy = replace(REQUEST_POLICY, allowed_namespaces=REQUEST_POLICY.allowed_namespaces | {"u"})
    signed = sign_bytes(fault_request(), load_signer("xml-sign-90B3D51F30010000-ds"))
    for start in (b"<sr:Request", b"<ds:SignedInfo"):
        data = _declare_in(signed, start, b'xmlns:x="u"')
        with pytest.raises(SignatureRejection) as caught:
            verify(parse(data, policy), pki_store(), policy, datetime.now(UTC))
        assert caught.value.code is Reason.SIGNATURE
        assert "could not be checked (C14NError)" in caught.value.message


def test_hostile_shapes_are_refused_as_malformed(bench: Bench) -> None:
    """Many declarations, foreign or allowed, and too much markup: E30 before any C14N."""
    valid = bench.signed()
    many = b" ".join(b'xmlns:p%d="urn:x%d"' % (i, i) for i in range(2500))
    allowed = b" ".join(b'xmlns:p%d="%s"' % (i, SR_NS.encode()) for i in range(20))
    attributes = b" ".join(b'a%d="1"' % i for i in range(100))
    elements = b"<sr:X/>" * 300
    for name, body in {
        "2500 declarations": _declare_in(valid, b"<sr:Request", many),
        "20 allowed declarations": _declare_in(valid, b"<sr:Request", allowed),
        "100 attributes": _declare_in(valid, b"<sr:Header", attributes),
        "300 elements": valid.replace(b"<sr:Body>", b"<sr:Body>" + elements, 1),
    }.items():
        bench.refused(name, body, "E46", 400)
    bench.assert_clean()


def test_a_serial_number_in_other_digits_is_refused_not_an_internal_error(
    bench: Bench,
) -> None:
    """str.isdigit() takes "²" and Arabic-Indic digits; int("²") raised, answered E100 (503)."""
    valid = bench.signed()
    serial = re.compile(rb"<ds:X509SerialNumber>[^<]*")
    for name, digits, code, status in [
        ("superscript two", "\u00b2", "E31", 400),
        ("Arabic-Indic digits", "\u0661\u0662\u0663", "E31", 400),
        ("fullwidth digits", "\uff11\uff12", "E31", 400),
        # schema-valid (xs:integer has no length limit), over the profile's 49 digits
        ("more digits than int() parses", "9" * 5000, "E40", 401),
    ]:
        body = serial.sub(b"<ds:X509SerialNumber>" + digits.encode(), valid, count=1)
        bench.refused(name, body, code, status)
    bench.assert_clean()


def test_a_bug_while_checking_gets_a_signed_e100_and_an_audit_row(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Our own failure is answered (signed E100) and audited, never an unsigned 500."""
    from hubreturns.wire import envelope

    def broken(root: etree._Element) -> object:
        raise RuntimeError("a bug")

    body = bench.signed()
    monkeypatch.setattr(envelope, "read_request", broken)
    before = bench.state()
    reply = bench.send(body)
    assert (bench.code_of(reply), reply.status_code) == ("E100", 503)
    after = bench.state()
    assert after.counts == {**before.counts, "audit_log": before.counts["audit_log"] + 1}
    with bench.sessions() as session:
        last = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
        assert last is not None
        assert (last.code, last.accepted) == ("E100", False)
        assert last.reason == "internal error (RuntimeError); nothing was recorded"
        assert "Traceback" not in last.reason
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)
    monkeypatch.undo()
    bench.accepted("after the bug")
    bench.assert_clean()


_URIS = st.sampled_from(
    [
        *("u", "", "../a", "#", SR_NS, DS_NS, "http://www.w3.org/2001/XMLSchema-instance"),
        *("urn:evil", "http://example.com/\u00fc", "file:///etc/passwd", "x:" + "y" * 300),
    ]
)
_PREFIXES = st.sampled_from([None, "x", "sr", "ds", "xsi", "xml", "a-b", "p1"])


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_namespace_declaration_anywhere_gets_a_signed_known_code(
    bench: Bench, data: st.DataObject
) -> None:
    """Namespace declarations inserted at arbitrary elements of a validly signed request:
    a signed answer with a known refusal code, one audit row, nothing else changed."""
    signed = bench.signed()
    starts = [m.start() for m in re.finditer(rb"<[A-Za-z]", signed)]
    count = data.draw(st.integers(1, 3), label="declarations")
    body = signed
    for _ in range(count):
        starts = [m.start() for m in re.finditer(rb"<[A-Za-z]", body)]
        at = data.draw(st.sampled_from(starts), label="element")
        end = body.index(b" ", at) if b" " in body[at : body.index(b">", at)] else None
        name_end = end if end is not None else body.index(b">", at)
        if body[name_end - 1 : name_end] == b"/":
            name_end -= 1
        prefix = data.draw(_PREFIXES, label="prefix")
        uri = data.draw(_URIS | st.text(max_size=20), label="uri")
        name = f"xmlns:{prefix}" if prefix else "xmlns"
        quoted = uri.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
        declaration = f' {name}="{quoted}"'.encode()
        body = body[:name_end] + declaration + body[name_end:]
    before = bench.state()
    reply = bench.send(body)
    code = bench.code_of(reply)  # raises unless the answer is signed by the DCC
    after = bench.state()
    if code == "I99":
        # A redundant declaration of an allowed URI (say xmlns:sr again, inside the
        # scope of the same binding) leaves the canonical form, and so the signature,
        # as it was: the same request, accepted once.
        expected = {"audit_log": 1, "returns": 1}
        assert {k: after.counts[k] - before.counts[k] for k in expected} == expected, body
        return
    assert code in {"E46", "E31", "E40"}, (code, body)  # malformed, schema, signature
    assert after.counts == {**before.counts, "audit_log": before.counts["audit_log"] + 1}
    assert after.counters == before.counters
    assert after.open_returns == before.open_returns
    assert bench.problems == []
