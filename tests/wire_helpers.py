"""Shared helpers for the pure wire-layer tests: documents, keys, certificates.

Nothing here touches a database or the network. Request documents are built
compact (no whitespace between elements, no comments) from keyword fields and
signed either with our own ``sign`` or with ``xmlsec1`` as an independent
implementation. ``TestCA`` issues extra SMKI-like certificates on demand.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from lxml import etree

from hubreturns.policy import Canonicalization, DigestMethod, SignatureMethod, Transform
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.envelope import DS_NS, SR_NS
from hubreturns.wire.signature import sign

__all__ = [
    "ACB",
    "DEVICE",
    "DSP_PRE_141",
    "DSP_SIGNER",
    "GPF",
    "PKI",
    "RSA_USER",
    "SUPPLIER",
    "SUPPLIER_2",
    "VECTORS",
    "XMLSEC1",
    "CertStore",
    "Signer",
    "TestCA",
    "ds",
    "fault_body",
    "fault_request",
    "load_signer",
    "mutate",
    "no_fault_body",
    "no_fault_request",
    "pki_certificates",
    "pki_store",
    "plain_parse",
    "request_xml",
    "sign_bytes",
    "signature_template",
    "to_bytes",
    "xmlsec_sign",
    "xmlsec_verify",
]

PKI = Path(__file__).resolve().parents[1] / "src" / "hubreturns" / "data" / "test-pki"
#: DCC vectors, copied verbatim from shared/duis/vectors (data, not code).
VECTORS = Path(__file__).resolve().parent / "data" / "vectors"
XMLSEC1 = shutil.which("xmlsec1") or "/usr/bin/xmlsec1"

#: DCC Access Control Broker (business target of 8.14) in the test PKI.
ACB = "90-B3-D5-1F-30-00-00-02"
#: User IDs that hold OU 87 XML-signing certificates in the test PKI.
SUPPLIER = "90-B3-D5-1F-30-01-00-00"
SUPPLIER_2 = "90-B3-D5-1F-30-02-00-00"
RSA_USER = "00-DB-12-34-56-78-00-04"
#: A Communications Hub: its CHF and GPF.
DEVICE = "00-DB-12-34-56-78-90-A2"
GPF = "00-DB-12-34-56-78-90-A0"

_SR = f"{{{SR_NS}}}"
_DS = f"{{{DS_NS}}}"


# ---------------------------------------------------------------- documents


def _element(name: str, value: str | None) -> str:
    return "" if value is None else f"<sr:{name}>{escape(value)}</sr:{name}>"


def request_xml(
    *,
    variant: str = "8.14.3",
    originator: str = SUPPLIER,
    target: str = ACB,
    counter: int | str = 1000,
    request_id: str | None = None,
    command_variant: int | str = 8,
    service_reference: str = "8.14",
    body: str,
    root: str = "Request",
    declaration: bool = True,
) -> bytes:
    """A compact, unsigned DUIS request with the given ``body`` XML fragment."""
    rid = request_id if request_id is not None else f"{originator}:{target}:{counter}"
    head = '<?xml version="1.0" encoding="UTF-8"?>' if declaration else ""
    text = (
        f'{head}<sr:{root} xmlns:sr="{SR_NS}" schemaVersion="5.4">'
        f"<sr:Header>{_element('RequestID', rid)}"
        f"{_element('CommandVariant', str(command_variant))}"
        f"{_element('ServiceReference', service_reference)}"
        f"{_element('ServiceReferenceVariant', variant)}</sr:Header>"
        f"<sr:Body>{body}</sr:Body></sr:{root}>"
    )
    return text.encode("utf-8")


def fault_body(
    *,
    device_id: str | None = DEVICE,
    return_type: str | None = "Fault identified prior to installation",
    user_ref_datetime: str | None = None,
    user_ref_id: str | None = None,
    other_device_id: str | None = GPF,
    incident_reference: str | None = None,
    connection_method: str | None = "Hot-shoe",
    fault_reason: str | None = "Damaged case",
    additional_information: str | None = None,
) -> str:
    """``sr:CHFFaultReturn`` in schema order; ``None`` leaves an element out."""
    return (
        "<sr:CHFFaultReturn>"
        + _element("DeviceID", device_id)
        + _element("CHFFaultReturnType", return_type)
        + _element("UserRefDateTime", user_ref_datetime)
        + _element("UserRefID", user_ref_id)
        + _element("OtherDeviceID", other_device_id)
        + _element("IncidentReference", incident_reference)
        + _element("CHFConnectionMethod", connection_method)
        + _element("CHFFaultReason", fault_reason)
        + _element("AdditionalInformation", additional_information)
        + "</sr:CHFFaultReturn>"
    )


def no_fault_body(
    *,
    device_id: str | None = DEVICE,
    return_type: str | None = "No Fault Return (general)",
    user_ref_datetime: str | None = None,
    user_ref_id: str | None = None,
    incident_reference: str | None = None,
    additional_information: str | None = None,
) -> str:
    """``sr:CHFNoFaultReturn`` in schema order; ``None`` leaves an element out."""
    return (
        "<sr:CHFNoFaultReturn>"
        + _element("DeviceID", device_id)
        + _element("CHFNoFaultReturnType", return_type)
        + _element("UserRefDateTime", user_ref_datetime)
        + _element("UserRefID", user_ref_id)
        + _element("IncidentReference", incident_reference)
        + _element("AdditionalInformation", additional_information)
        + "</sr:CHFNoFaultReturn>"
    )


_HEADER_KEYS = {
    "variant",
    "originator",
    "target",
    "counter",
    "request_id",
    "command_variant",
    "service_reference",
    "root",
    "declaration",
}


def _split(fields: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    header = {k: v for k, v in fields.items() if k in _HEADER_KEYS}
    body = {k: v for k, v in fields.items() if k not in _HEADER_KEYS}
    return header, body


def fault_request(**fields: object) -> bytes:
    """A compact unsigned 8.14.3 request; header and body fields by keyword."""
    header, body = _split(fields)
    header.setdefault("variant", "8.14.3")
    return request_xml(body=fault_body(**body), **header)  # type: ignore[arg-type]


def no_fault_request(**fields: object) -> bytes:
    """A compact unsigned 8.14.4 request; header and body fields by keyword."""
    header, body = _split(fields)
    header.setdefault("variant", "8.14.4")
    return request_xml(body=no_fault_body(**body), **header)  # type: ignore[arg-type]


def plain_parse(data: bytes) -> etree._Element:
    """Parse a trusted test document (for building and mutating it)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)
    return etree.fromstring(data, parser)


def to_bytes(root: etree._Element) -> bytes:
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8")


# ---------------------------------------------------------------- keys and certificates


@dataclass(frozen=True, slots=True)
class Signer:
    """A private key and the certificate that KeyInfo will name."""

    key: ec.EllipticCurvePrivateKey
    certificate: SigningCertificate

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def load_signer(stem: str) -> Signer:
    """``stem`` names a test-pki pair, e.g. ``xml-sign-90B3D51F30010000-ds``."""
    key = serialization.load_pem_private_key((PKI / f"{stem}.key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = SigningCertificate.from_pem((PKI / f"{stem}.cert.pem").read_bytes())
    return Signer(key, cert)


#: test-pki stems (``load_signer``): DCC response signer (OU 89) and its pre-1.4.1 twin (OU 137).
DSP_SIGNER = "dsp-xml-sign-90B3D51F30000002-ds"
DSP_PRE_141 = "dsp-xml-sign-90B3D51F30000002-ds-pre-1.4.1"


def pki_certificates() -> list[SigningCertificate]:
    """Every certificate in the test PKI folder."""
    return [
        SigningCertificate.from_pem(path.read_bytes()) for path in sorted(PKI.glob("*.cert.pem"))
    ]


class CertStore:
    """A ``CertificateLookup`` over a fixed set of certificates."""

    def __init__(self, certificates: Iterable[SigningCertificate]) -> None:
        self._by_key = {c.key: c for c in certificates}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, issuer: str, serial: int) -> SigningCertificate | None:
        self.calls.append((issuer, serial))
        return self._by_key.get((issuer, serial))


def pki_store(*extra: SigningCertificate) -> CertStore:
    """Lookup over the test PKI plus ``extra`` certificates."""
    return CertStore([*pki_certificates(), *extra])


def _eui_bytes(eui: str) -> bytes:
    return bytes.fromhex(eui.replace("-", ""))


class TestCA:
    """A throwaway issuing CA for extra SMKI-like test certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, common_name: str = "ZT", ou: str = "07") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        self._serial = 1000

    def issue(
        self,
        *,
        eui: str = SUPPLIER,
        ou: str = "87",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key: str = "p256",
        serial: int | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, SigningCertificate]:
        """A certificate whose subject is OU=``ou`` + x500UniqueIdentifier ``eui``.

        The x500UniqueIdentifier is a BIT STRING whose content is the 8 EUI
        bytes (DER: ``03 09 00 <8 bytes>``), as in the SMKI test certificates.
        ``key`` is ``p256`` (default), ``p384`` or ``rsa``.
        """
        now = datetime.now(UTC)
        private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if key == "p256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif key == "p384":
            private = ec.generate_private_key(ec.SECP384R1())
        elif key == "rsa":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(key)
        if serial is None:
            self._serial += 1
            serial = self._serial
        subject = x509.Name(
            [
                x509.NameAttribute(
                    NameOID.X500_UNIQUE_IDENTIFIER, _eui_bytes(eui), _type=_ASN1Type.BitString
                ),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(private.public_key())
            .serial_number(serial)
            .not_valid_before(not_before or now - timedelta(days=30))
            .not_valid_after(not_after or now + timedelta(days=365))
            .sign(self.key, hashes.SHA256())
        )
        return private, SigningCertificate.from_x509(cert)

    def signer(self, **kwargs: object) -> Signer:
        """``issue`` for a P-256 certificate, as a ``Signer``."""
        private, cert = self.issue(**kwargs)  # type: ignore[arg-type]
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        return Signer(private, cert)

    def expired(self, eui: str = SUPPLIER) -> Signer:
        now = datetime.now(UTC)
        return self.signer(
            eui=eui, not_before=now - timedelta(days=400), not_after=now - timedelta(days=1)
        )

    def not_yet_valid(self, eui: str = SUPPLIER) -> Signer:
        now = datetime.now(UTC)
        return self.signer(
            eui=eui, not_before=now + timedelta(days=1), not_after=now + timedelta(days=400)
        )


# ---------------------------------------------------------------- signing


def sign_bytes(data: bytes, signer: Signer) -> bytes:
    """Sign a document with our ``sign`` (as it is: compact stays compact)."""
    return sign(plain_parse(data), signer.key, signer.certificate)


def signature_template(issuer: str, serial: int, *, pretty: bool = False) -> str:
    """A ds:Signature skeleton (empty DigestValue/SignatureValue) for xmlsec1."""
    parts = [
        f'<ds:Signature xmlns:ds="{DS_NS}">',
        "<ds:SignedInfo>",
        f'<ds:CanonicalizationMethod Algorithm="{Canonicalization.EXCLUSIVE.value}"/>',
        f'<ds:SignatureMethod Algorithm="{SignatureMethod.ECDSA_SHA256.value}"/>',
        '<ds:Reference URI="">',
        "<ds:Transforms>",
        f'<ds:Transform Algorithm="{Transform.ENVELOPED.value}"/>',
        "</ds:Transforms>",
        f'<ds:DigestMethod Algorithm="{DigestMethod.SHA256.value}"/>',
        "<ds:DigestValue></ds:DigestValue>",
        "</ds:Reference>",
        "</ds:SignedInfo>",
        "<ds:SignatureValue></ds:SignatureValue>",
        "<ds:KeyInfo><ds:X509Data><ds:X509IssuerSerial>",
        f"<ds:X509IssuerName>{escape(issuer)}</ds:X509IssuerName>",
        f"<ds:X509SerialNumber>{serial}</ds:X509SerialNumber>",
        "</ds:X509IssuerSerial></ds:X509Data></ds:KeyInfo>",
        "</ds:Signature>",
    ]
    return ("\n" if pretty else "").join(parts)


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)


def xmlsec_sign(
    data: bytes, signer: Signer, *, issuer: str | None = None, pretty: bool = False
) -> bytes:
    """Sign ``data`` (an unsigned document) with xmlsec1, naming ``issuer``/serial.

    ``pretty`` indents the document and the signature template first.
    """
    root = plain_parse(data)
    template = signature_template(
        issuer or signer.certificate.issuer, signer.certificate.serial, pretty=pretty
    )
    signature = etree.fromstring(template)
    root.append(signature)
    if pretty:
        etree.indent(root.getroottree(), space="  ")
        # Keep the whitespace inside the signature exactly as the template has it.
        root.remove(root[-1])
        root.append(etree.fromstring(template))
        root[-2].tail = "\n  "
        root[-1].tail = "\n"
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "key.pem").write_bytes(signer.key_pem)
        (base / "cert.pem").write_bytes(signer.certificate.pem)
        (base / "in.xml").write_bytes(to_bytes(root))
        done = _run(
            [
                XMLSEC1,
                "--sign",
                "--privkey-pem",
                f"{base / 'key.pem'},{base / 'cert.pem'}",
                "--id-attr:ID",
                etree.QName(root).localname,
                "--output",
                str(base / "out.xml"),
                str(base / "in.xml"),
            ]
        )
        assert done.returncode == 0, done.stderr
        return (base / "out.xml").read_bytes()


def xmlsec_verify(data: bytes, certificate: SigningCertificate) -> subprocess.CompletedProcess[str]:
    """Verify ``data`` with xmlsec1 against ``certificate`` (returncode 0 = OK)."""
    root_name = etree.QName(plain_parse(data)).localname
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "cert.pem").write_bytes(certificate.pem)
        (base / "doc.xml").write_bytes(data)
        return _run(
            [
                XMLSEC1,
                "--verify",
                "--pubkey-cert-pem",
                str(base / "cert.pem"),
                "--id-attr:ID",
                root_name,
                str(base / "doc.xml"),
            ]
        )


def mutate(data: bytes, change: Callable[[etree._Element], object]) -> bytes:
    """Parse ``data``, apply ``change`` to the root, serialise again."""
    root = plain_parse(data)
    change(root)
    return to_bytes(root)


def ds(root: etree._Element, path: str) -> etree._Element:
    """The one element at ``path`` (``ds:``-prefixed XPath) under ``root``."""
    found = root.xpath(path, namespaces={"ds": DS_NS, "sr": SR_NS})
    assert isinstance(found, list), path
    assert len(found) == 1, (path, found)
    element = found[0]
    assert isinstance(element, etree._Element)
    return element
