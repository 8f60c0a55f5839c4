"""SMKI XML signatures: the one admitted profile, certificates, XSW, interop."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree
from wire_helpers import (
    DEVICE,
    DSP_PRE_141,
    DSP_SIGNER,
    PKI,
    SUPPLIER,
    VECTORS,
    CertStore,
    Signer,
    TestCA,
    ds,
    fault_request,
    load_signer,
    mutate,
    no_fault_request,
    pki_store,
    plain_parse,
    sign_bytes,
    to_bytes,
    xmlsec_sign,
    xmlsec_verify,
)

from hubreturns.codes import Reason, ResponseCode
from hubreturns.errors import EnvelopeRejection, SignatureRejection
from hubreturns.policy import (
    DSP_RESPONSE_POLICY,
    REQUEST_POLICY,
    RESPONSE_NAMESPACES,
    SecurityPolicy,
)
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.envelope import DS_NS, SR_NS, parse, read_request, validate
from hubreturns.wire.signature import CertificateLookup, verify

E40, E41, E42 = Reason.SIGNATURE, Reason.UNKNOWN_CERTIFICATE, Reason.UNUSABLE_CERTIFICATE
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_DS = f"{{{DS_NS}}}"
_SR = f"{{{SR_NS}}}"

SUPPLIER_STEM = "xml-sign-90B3D51F30010000-ds"


@pytest.fixture(scope="module")
def supplier() -> Signer:
    return load_signer(SUPPLIER_STEM)


@pytest.fixture(scope="module")
def signed(supplier: Signer) -> bytes:
    return sign_bytes(fault_request(additional_information="original"), supplier)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def now() -> datetime:
    return datetime.now(UTC)


def check(
    data: bytes,
    *,
    policy: SecurityPolicy = REQUEST_POLICY,
    lookup: CertificateLookup | None = None,
    at: datetime | None = None,
) -> SigningCertificate:
    root = parse(data, policy)
    return verify(root, lookup or pki_store(), policy, at or now())


def refused(data: bytes, **kwargs: object) -> SignatureRejection:
    with pytest.raises(SignatureRejection) as caught:
        check(data, **kwargs)  # type: ignore[arg-type]
    return caught.value


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("build", [fault_request, no_fault_request], ids=["8.14.3", "8.14.4"])
def test_sign_then_verify_returns_the_signing_certificate(
    supplier: Signer, build: Callable[..., bytes]
) -> None:
    data = sign_bytes(build(), supplier)
    assert b"\n" not in data.split(b"?>", 1)[1].strip(), "sign() must produce a compact document"
    store = pki_store()
    cert = check(data, lookup=store)
    assert cert == supplier.certificate
    assert cert.eui == SUPPLIER
    assert "87" in cert.organisational_units
    assert store.calls == [("CN=Z1,OU=07", supplier.certificate.serial)]


def test_signed_request_is_schema_valid_and_reads_back(signed: bytes) -> None:
    root = parse(signed, REQUEST_POLICY)
    validate(root)
    verify(root, pki_store(), REQUEST_POLICY, now())
    assert read_request(root).additional_information == "original"


@pytest.mark.parametrize("stem", ["xml-sign-90B3D51F30020000-ds", "xml-sign-00DB123456780004-ds"])
def test_every_test_pki_user_certificate_round_trips(stem: str) -> None:
    signer = load_signer(stem)
    assert check(sign_bytes(no_fault_request(), signer)).eui == signer.certificate.eui


def test_verify_leaves_the_document_unchanged(signed: bytes, supplier: Signer) -> None:
    pretty = xmlsec_sign(fault_request(), supplier, pretty=True)
    for data in (signed, pretty):
        root = parse(data, REQUEST_POLICY)
        before = to_bytes(root)
        verify(root, pki_store(), REQUEST_POLICY, now())
        assert to_bytes(root) == before
        verify(root, pki_store(), REQUEST_POLICY, now())  # and can be verified again


def test_pretty_printed_document_signed_by_us_verifies(supplier: Signer) -> None:
    root = plain_parse(fault_request(incident_reference="INC1"))
    etree.indent(root.getroottree(), space="    ")
    data = sign_bytes(to_bytes(root), supplier)
    assert b"\n    <sr:Header>" in data
    assert check(data).eui == SUPPLIER
    done = xmlsec_verify(data, supplier.certificate)
    assert done.returncode == 0, done.stderr


def test_pretty_printed_document_signed_by_xmlsec1_verifies(supplier: Signer) -> None:
    data = xmlsec_sign(no_fault_request(), supplier, pretty=True)
    assert b"\n<ds:SignedInfo>" in data
    assert check(data).eui == SUPPLIER


def test_reindenting_a_signed_document_breaks_it(signed: bytes) -> None:
    root = plain_parse(signed)
    etree.indent(root.getroottree())
    assert refused(to_bytes(root)).code is E40


def test_high_s_malleated_signature_still_verifies(signed: bytes) -> None:
    # ECDSA signatures are malleable: (r, n - s) is as valid as (r, s). We do not
    # enforce low-S, so a malleated copy of a request verifies. That is fine:
    # re-use of a signed request is stopped by the RequestID counter (replay
    # protection, REPLAY), never by the signature bytes. The replay test lives in
    # the service tests.
    def malleate(root: etree._Element) -> None:
        value = ds(root, "ds:Signature/ds:SignatureValue")
        raw = base64.b64decode(value.text or "")
        s = int.from_bytes(raw[32:], "big")
        value.text = base64.b64encode(raw[:32] + (P256_N - s).to_bytes(32, "big")).decode()

    malleated = mutate(signed, malleate)
    assert malleated != signed
    assert check(malleated).eui == SUPPLIER


# ------------------------------------------------------------------ DCC vectors

#: Every file in the vectors folder with what must happen to it: "verifies"
#: (with DSP_RESPONSE_POLICY against the pre-1.4.1 DSP certificate) or the code.
VECTOR_MANIFEST: dict[str, str | ResponseCode] = {
    "dccboxed-signed-response.xml": "verifies",
    "dccboxed-signed-response-badsignature.xml": Reason.SIGNATURE,
    "xxe-response.xml": Reason.MALFORMED,
}
VECTOR_TIME = datetime(2022, 8, 17, 15, 45, 43, tzinfo=UTC)


def test_every_vector_file_is_in_the_manifest() -> None:
    on_disk = {p.name for p in VECTORS.iterdir() if p.is_file()}
    assert on_disk == set(VECTOR_MANIFEST), (
        f"unlisted: {sorted(on_disk - set(VECTOR_MANIFEST))}, "
        f"missing: {sorted(set(VECTOR_MANIFEST) - on_disk)}"
    )


@pytest.mark.parametrize(("name", "expected"), list(VECTOR_MANIFEST.items()))
def test_dcc_vector(name: str, expected: str | ResponseCode) -> None:
    pre141 = load_signer(DSP_PRE_141).certificate
    store = CertStore([pre141])
    data = (VECTORS / name).read_bytes()
    if expected == "verifies":
        cert = check(data, policy=DSP_RESPONSE_POLICY, lookup=store, at=VECTOR_TIME)
        assert cert.serial == 50669612984035780968362471400449834504
        assert cert.organisational_units == {"137"}
        assert cert.eui == "90-B3-D5-1F-30-00-00-02"
        return
    with pytest.raises((EnvelopeRejection, SignatureRejection)) as caught:
        check(data, policy=DSP_RESPONSE_POLICY, lookup=store, at=VECTOR_TIME)
    assert caught.value.code is expected
    if expected is Reason.SIGNATURE:
        assert "does not verify" in caught.value.message


def test_dcc_vector_is_refused_by_request_policy_and_unknown_store() -> None:
    data = (VECTORS / "dccboxed-signed-response.xml").read_bytes()
    pre141 = load_signer(DSP_PRE_141).certificate
    assert refused(data, policy=DSP_RESPONSE_POLICY, lookup=CertStore([])).code is E41
    # OU 137 is a DCC certificate, not a User's DUIS signing certificate.
    wrong_policy = replace(
        REQUEST_POLICY, max_body_bytes=10**6, allowed_namespaces=RESPONSE_NAMESPACES
    )
    rejection = refused(data, policy=wrong_policy, lookup=CertStore([pre141]))
    assert rejection.code is E42
    assert "OU ['137']" in rejection.message


def test_dcc_good_vector_verifies_with_xmlsec1() -> None:
    data = (VECTORS / "dccboxed-signed-response.xml").read_bytes()
    pre141 = load_signer(DSP_PRE_141).certificate
    assert xmlsec_verify(data, pre141).returncode == 0
    bad = (VECTORS / "dccboxed-signed-response-badsignature.xml").read_bytes()
    assert xmlsec_verify(bad, pre141).returncode != 0


# ------------------------------------------------------------------ profile (E40)

Mutation = Callable[[etree._Element], object]


def _sig(root: etree._Element) -> etree._Element:
    return ds(root, "ds:Signature")


def _remove_signature(root: etree._Element) -> None:
    root.remove(_sig(root))


def _duplicate_signature(root: etree._Element) -> None:
    root.append(copy.deepcopy(_sig(root)))


def _second_signature_in_body(root: etree._Element) -> None:
    ds(root, "sr:Body/*").append(copy.deepcopy(_sig(root)))


def _signature_not_last(root: etree._Element) -> None:
    root.insert(1, _sig(root))


def _signature_into(path: str) -> Mutation:
    def change(root: etree._Element) -> None:
        ds(root, path).append(_sig(root))

    return change


def _text(path: str, value: str) -> Mutation:
    def change(root: etree._Element) -> None:
        ds(root, path).text = value

    return change


def _attr(path: str, name: str, value: str | None) -> Mutation:
    def change(root: etree._Element) -> None:
        element = ds(root, path)
        if value is None:
            del element.attrib[name]
        else:
            element.set(name, value)

    return change


def _append(path: str, xml: str) -> Mutation:
    def change(root: etree._Element) -> None:
        ds(root, path).append(etree.fromstring(f'<root xmlns:ds="{DS_NS}">{xml}</root>')[0])

    return change


def _signature_value(raw: Callable[[bytes], bytes]) -> Mutation:
    def change(root: etree._Element) -> None:
        value = ds(root, "ds:Signature/ds:SignatureValue")
        value.text = base64.b64encode(raw(base64.b64decode(value.text or ""))).decode()

    return change


def _rs(r: int | None = None, s: int | None = None) -> Mutation:
    def replace_parts(raw: bytes) -> bytes:
        r_bytes = raw[:32] if r is None else r.to_bytes(32, "big")
        s_bytes = raw[32:] if s is None else s.to_bytes(32, "big")
        return r_bytes + s_bytes

    return _signature_value(replace_parts)


def _digest_whitespace(root: etree._Element) -> None:
    # Still the same digest once whitespace is dropped, but SignedInfo's
    # canonical bytes (what the signature covers) change.
    value = ds(root, "ds:Signature/ds:SignedInfo/ds:Reference/ds:DigestValue")
    text = value.text or ""
    value.text = text[:10] + "\n" + text[10:]


def _transforms(*algorithms: str) -> Mutation:
    def change(root: etree._Element) -> None:
        transforms = ds(root, "ds:Signature/ds:SignedInfo/ds:Reference/ds:Transforms")
        for child in list(transforms):
            transforms.remove(child)
        for algorithm in algorithms:
            etree.SubElement(transforms, f"{_DS}Transform", Algorithm=algorithm)

    return change


ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
INC_C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
SIGNED_INFO = "ds:Signature/ds:SignedInfo"
REFERENCE = f"{SIGNED_INFO}/ds:Reference"
ISSUER_SERIAL = "ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509IssuerSerial"

E40_CASES: dict[str, tuple[Mutation, str]] = {
    "missing signature": (_remove_signature, "not signed"),
    "two signatures": (_duplicate_signature, "exactly one ds:Signature is allowed, found 2"),
    "second signature inside the body": (_second_signature_in_body, "found 2"),
    "signature not last": (_signature_not_last, "must be the last child"),
    "signature moved into Body": (_signature_into("sr:Body"), "must be the last child"),
    "signature moved into Header": (_signature_into("sr:Header"), "must be the last child"),
    "tampered body": (_text("sr:Body/*/sr:AdditionalInformation", "changed"), "DigestValue does"),
    "tampered device id": (
        _text("sr:Body/*/sr:DeviceID", "00-DB-12-34-56-78-90-A3"),
        "signed content was changed",
    ),
    "tampered counter": (
        _text("sr:Header/sr:RequestID", f"{SUPPLIER}:90-B3-D5-1F-30-00-00-02:1001"),
        "DigestValue does not match",
    ),
    "attribute added to root": (
        lambda root: root.set("extra", "1"),
        "DigestValue does not match",
    ),
    "tampered SignedInfo": (_digest_whitespace, "SignatureValue does not verify"),
    "different DigestValue": (
        _text(f"{REFERENCE}/ds:DigestValue", base64.b64encode(b"\x01" * 32).decode()),
        "DigestValue does not match",
    ),
    "short DigestValue": (
        _text(f"{REFERENCE}/ds:DigestValue", base64.b64encode(b"\x01" * 20).decode()),
        "DigestValue has 20 bytes, expected 32",
    ),
    "SignatureValue 63 bytes": (_signature_value(lambda raw: raw[:63]), "has 63 bytes"),
    "SignatureValue 65 bytes": (_signature_value(lambda raw: raw + b"\0"), "has 65 bytes"),
    "SignatureValue DER encoded": (
        _signature_value(lambda raw: b"\x30\x44\x02\x20" + raw[:32] + b"\x02\x20" + raw[32:]),
        "has 70 bytes",
    ),
    "SignatureValue empty": (_text("ds:Signature/ds:SignatureValue", ""), "has 0 bytes"),
    "SignatureValue not base64": (
        _text("ds:Signature/ds:SignatureValue", "!!not*base64!!"),
        "SignatureValue is not base64",
    ),
    "SignatureValue bad padding": (
        _text("ds:Signature/ds:SignatureValue", "QUJ"),
        "SignatureValue is not base64",
    ),
    "r zero": (_rs(r=0), "out of range"),
    "s zero": (_rs(s=0), "out of range"),
    "r equal to n": (_rs(r=P256_N), "out of range"),
    "s equal to n": (_rs(s=P256_N), "out of range"),
    "r above n": (_rs(r=2**256 - 1), "out of range"),
    "s above n": (_rs(s=P256_N + 1), "out of range"),
    "r one": (_rs(r=1), "does not verify"),
    "Reference URI to an id": (_attr(REFERENCE, "URI", "#req"), "ds:Reference has attributes"),
    "Reference without URI": (_attr(REFERENCE, "URI", None), "ds:Reference has attributes"),
    "Reference with Id": (_attr(REFERENCE, "Id", "r1"), "ds:Reference has attributes"),
    "Reference with Type": (
        _attr(REFERENCE, "Type", "http://www.w3.org/2000/09/xmldsig#Object"),
        "ds:Reference has attributes",
    ),
    "second Reference": (
        lambda root: ds(root, SIGNED_INFO).append(copy.deepcopy(ds(root, REFERENCE))),
        "ds:SignedInfo must contain",
    ),
    "extra transform": (_transforms(ENVELOPED, EXC_C14N), "ds:Transforms must contain"),
    "reordered transforms": (_transforms(EXC_C14N, ENVELOPED), "ds:Transforms must contain"),
    "c14n transform only": (_transforms(EXC_C14N), "ds:Transform has attributes"),
    "inclusive c14n transform only": (_transforms(INC_C14N), "ds:Transform has attributes"),
    "XPath transform": (
        _transforms("http://www.w3.org/TR/1999/REC-xpath-19991116"),
        "ds:Transform has attributes",
    ),
    "no transforms": (_transforms(), "ds:Transforms must contain"),
    "transform with XPath child": (
        _append(f"{REFERENCE}/ds:Transforms/ds:Transform", "<ds:XPath>1</ds:XPath>"),
        "ds:Transform must contain []",
    ),
    "rsa-sha256": (
        _attr(
            f"{SIGNED_INFO}/ds:SignatureMethod",
            "Algorithm",
            "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        ),
        "ds:SignatureMethod has attributes",
    ),
    "hmac-sha256": (
        _attr(
            f"{SIGNED_INFO}/ds:SignatureMethod",
            "Algorithm",
            "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256",
        ),
        "ds:SignatureMethod has attributes",
    ),
    "ecdsa-sha1": (
        _attr(
            f"{SIGNED_INFO}/ds:SignatureMethod",
            "Algorithm",
            "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha1",
        ),
        "ds:SignatureMethod has attributes",
    ),
    "hmac output length": (
        _append(
            f"{SIGNED_INFO}/ds:SignatureMethod", "<ds:HMACOutputLength>8</ds:HMACOutputLength>"
        ),
        "ds:SignatureMethod must contain []",
    ),
    "sha1 digest": (
        _attr(
            f"{REFERENCE}/ds:DigestMethod", "Algorithm", "http://www.w3.org/2000/09/xmldsig#sha1"
        ),
        "ds:DigestMethod has attributes",
    ),
    "sha512 digest": (
        _attr(
            f"{REFERENCE}/ds:DigestMethod", "Algorithm", "http://www.w3.org/2001/04/xmlenc#sha512"
        ),
        "ds:DigestMethod has attributes",
    ),
    "inclusive c14n for SignedInfo": (
        _attr(f"{SIGNED_INFO}/ds:CanonicalizationMethod", "Algorithm", INC_C14N),
        "ds:CanonicalizationMethod has attributes",
    ),
    "exclusive c14n with comments for SignedInfo": (
        _attr(
            f"{SIGNED_INFO}/ds:CanonicalizationMethod",
            "Algorithm",
            "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
        ),
        "ds:CanonicalizationMethod has attributes",
    ),
    "InclusiveNamespaces in CanonicalizationMethod": (
        _append(
            f"{SIGNED_INFO}/ds:CanonicalizationMethod",
            '<ec:InclusiveNamespaces xmlns:ec="http://www.w3.org/2001/10/xml-exc-c14n#" '
            'PrefixList="sr"/>',
        ),
        "ds:CanonicalizationMethod must contain []",
    ),
    "KeyInfo with embedded X509Certificate": (
        _append(
            "ds:Signature/ds:KeyInfo/ds:X509Data",
            f"<ds:X509Certificate>{base64.b64encode(b'cert').decode()}</ds:X509Certificate>",
        ),
        "ds:X509Data must contain ['X509IssuerSerial']",
    ),
    "KeyInfo with KeyValue": (
        _append("ds:Signature/ds:KeyInfo", "<ds:KeyValue><ds:ECKeyValue/></ds:KeyValue>"),
        "ds:KeyInfo must contain ['X509Data']",
    ),
    "KeyInfo with KeyName": (
        _append("ds:Signature/ds:KeyInfo", "<ds:KeyName>z1</ds:KeyName>"),
        "ds:KeyInfo must contain ['X509Data']",
    ),
    "KeyInfo with RetrievalMethod": (
        _append("ds:Signature/ds:KeyInfo", '<ds:RetrievalMethod URI="http://127.0.0.1/k"/>'),
        "ds:KeyInfo must contain ['X509Data']",
    ),
    "X509Data with X509SKI": (
        _append("ds:Signature/ds:KeyInfo/ds:X509Data", "<ds:X509SKI>AAAA</ds:X509SKI>"),
        "ds:X509Data must contain",
    ),
    "KeyInfo missing": (
        lambda root: _sig(root).remove(ds(root, "ds:Signature/ds:KeyInfo")),
        "ds:Signature must contain",
    ),
    "ds:Object carrying a copy of the body": (
        lambda root: _object_with_body(root),
        "ds:Signature must contain",
    ),
    "Id on Signature": (_attr("ds:Signature", "Id", "sig"), "ds:Signature has attributes"),
    "Id on SignedInfo": (_attr(SIGNED_INFO, "Id", "si"), "ds:SignedInfo has attributes"),
    "SignedInfo element in another namespace": (
        lambda root: setattr(ds(root, SIGNED_INFO), "tag", "{urn:x}SignedInfo"),
        "ds:Signature must contain",
    ),
    "serial not decimal": (
        _text(f"{ISSUER_SERIAL}/ds:X509SerialNumber", "0x1C063B7B"),
        "X509SerialNumber must be a decimal integer",
    ),
    "serial negative": (
        _text(f"{ISSUER_SERIAL}/ds:X509SerialNumber", "-5"),
        "X509SerialNumber must be a decimal integer",
    ),
    "serial absurdly long": (
        _text(f"{ISSUER_SERIAL}/ds:X509SerialNumber", "9" * 50),
        "X509SerialNumber must be a decimal integer",
    ),
    # Text-bearing leaves hold text only: an element inside one is refused by
    # shape, before any value is read from it.
    "element inside DigestValue": (
        _append(f"{REFERENCE}/ds:DigestValue", "<ds:DigestValue>AAAA</ds:DigestValue>"),
        "ds:DigestValue must contain [], found ['DigestValue']",
    ),
    "element inside SignatureValue": (
        _append("ds:Signature/ds:SignatureValue", "<ds:X509SKI>AAAA</ds:X509SKI>"),
        "ds:SignatureValue must contain [], found ['X509SKI']",
    ),
    "element inside X509IssuerName": (
        _append(f"{ISSUER_SERIAL}/ds:X509IssuerName", "<ds:KeyName>z1</ds:KeyName>"),
        "ds:X509IssuerName must contain [], found ['KeyName']",
    ),
    "element inside X509SerialNumber": (
        _append(
            f"{ISSUER_SERIAL}/ds:X509SerialNumber", "<ds:X509SerialNumber>1</ds:X509SerialNumber>"
        ),
        "ds:X509SerialNumber must contain [], found ['X509SerialNumber']",
    ),
}


def _object_with_body(root: etree._Element) -> None:
    carrier = etree.SubElement(_sig(root), f"{_DS}Object")
    carrier.append(copy.deepcopy(ds(root, "sr:Body")))


@pytest.mark.parametrize(("change", "fragment"), list(E40_CASES.values()), ids=list(E40_CASES))
def test_profile_violations_are_refused_with_e40(
    signed: bytes, change: Mutation, fragment: str
) -> None:
    data = mutate(signed, change)
    assert data != signed
    # The envelope refuses foreign namespaces first (E30); lifted here, the
    # signature profile must still refuse them on its own.
    foreign = REQUEST_POLICY.allowed_namespaces | {
        "urn:x",
        "http://www.w3.org/2001/10/xml-exc-c14n#",
    }
    rejection = refused(data, policy=replace(REQUEST_POLICY, allowed_namespaces=foreign))
    assert rejection.code is E40
    assert fragment in rejection.message
    assert rejection.http_status == 401


@pytest.mark.parametrize(
    ("path", "found"),
    [
        (SIGNED_INFO, "found ['?', 'CanonicalizationMethod', 'SignatureMethod', 'Reference']"),
        (f"{REFERENCE}/ds:DigestValue", "ds:DigestValue must contain [], found ['?']"),
        (f"{ISSUER_SERIAL}/ds:X509SerialNumber", "ds:X509SerialNumber must contain [], found"),
    ],
    ids=["SignedInfo", "DigestValue", "X509SerialNumber"],
)
@pytest.mark.parametrize(
    "node",
    [etree.Comment(" c "), etree.ProcessingInstruction("pi", "x")],
    ids=["comment", "PI"],
)
def test_comment_or_pi_in_the_signature_is_refused_even_without_parse(
    signed: bytes, path: str, found: str, node: etree._Element
) -> None:
    # parse() refuses these; verify() must not rely on it (C14N would drop a
    # comment, so the signed bytes would differ from the text we read).
    root = plain_parse(signed)
    ds(root, path).insert(0, copy.copy(node))
    with pytest.raises(SignatureRejection) as caught:
        verify(root, pki_store(), REQUEST_POLICY, now())
    assert caught.value.code is E40
    assert found in caught.value.message


def test_several_defects_are_all_refused_with_e40(signed: bytes) -> None:
    # Whichever defect is named first, the answer is E40 and names a real one.
    def many(root: etree._Element) -> None:
        _attr("ds:Signature", "Id", "sig")(root)
        _attr(f"{SIGNED_INFO}/ds:SignatureMethod", "Algorithm", INC_C14N)(root)
        _append("ds:Signature/ds:KeyInfo", "<ds:KeyName>z1</ds:KeyName>")(root)

    rejection = refused(mutate(signed, many))
    assert rejection.code is E40
    assert rejection.message in (
        "ds:KeyInfo must contain ['X509Data'], found ['X509Data', 'KeyName']",
        "ds:Signature has attributes {'Id': 'sig'}, expected {}",
    )


# ------------------------------------------------------------------ XSW


def _attacker_document() -> etree._Element:
    return plain_parse(fault_request(device_id="00-DB-12-34-56-78-90-FF"))


def _xsw_wrap_whole_original(signed_root: etree._Element) -> etree._Element:
    """Attacker content at the top, the signed original wrapped underneath."""
    evil = _attacker_document()
    wrapper = etree.SubElement(evil, f"{_SR}Wrapper")
    wrapper.append(copy.deepcopy(signed_root))
    return evil


def _xsw_signature_moved_to_attacker(signed_root: etree._Element) -> etree._Element:
    """The original signature appended to a document with different content."""
    evil = _attacker_document()
    evil.append(copy.deepcopy(_sig(signed_root)))
    return evil


def _xsw_original_body_in_header(signed_root: etree._Element) -> etree._Element:
    """Original signed body hidden in the Header, attacker body in its place."""
    root = copy.deepcopy(signed_root)
    original = copy.deepcopy(ds(root, "sr:Body"))
    ds(root, "sr:Header").append(original)
    ds(root, "sr:Body/*/sr:DeviceID").text = "00-DB-12-34-56-78-90-FF"
    return root


def _xsw_original_body_in_object(signed_root: etree._Element) -> etree._Element:
    """Original body moved into a ds:Object of the signature, attacker body outside."""
    root = copy.deepcopy(signed_root)
    carrier = etree.SubElement(_sig(root), f"{_DS}Object")
    carrier.append(copy.deepcopy(ds(root, "sr:Body")))
    ds(root, "sr:Body/*/sr:DeviceID").text = "00-DB-12-34-56-78-90-FF"
    return root


def _xsw_signature_in_body(signed_root: etree._Element) -> etree._Element:
    """Signature moved into the Body next to the (unchanged) content."""
    root = copy.deepcopy(signed_root)
    ds(root, "sr:Body").append(_sig(root))
    return root


def _xsw_signed_document_inside_body(signed_root: etree._Element) -> etree._Element:
    """Whole signed request inside the attacker's body, attacker signature slot empty."""
    evil = _attacker_document()
    ds(evil, "sr:Body/*").append(copy.deepcopy(signed_root))
    return evil


XSW_CASES: dict[str, tuple[Callable[[etree._Element], etree._Element], str]] = {
    "original wrapped below attacker content": (
        _xsw_wrap_whole_original,
        "must be the last child",
    ),
    "signature moved onto attacker content": (
        _xsw_signature_moved_to_attacker,
        "DigestValue does not match",
    ),
    "original body hidden in header": (_xsw_original_body_in_header, "DigestValue does not match"),
    "original body in ds:Object": (_xsw_original_body_in_object, "ds:Signature must contain"),
    "signature moved into Body": (_xsw_signature_in_body, "must be the last child"),
    "signed document nested in attacker body": (
        _xsw_signed_document_inside_body,
        "must be the last child",
    ),
}


@pytest.mark.parametrize(("attack", "fragment"), list(XSW_CASES.values()), ids=list(XSW_CASES))
def test_signature_wrapping_is_refused(
    signed: bytes, attack: Callable[[etree._Element], etree._Element], fragment: str
) -> None:
    data = to_bytes(attack(plain_parse(signed)))
    rejection = refused(data)
    assert rejection.code is E40
    assert fragment in rejection.message


# ------------------------------------------------------------------ certificates (E41, E42)


def _issuer_serial(issuer: str | None = None, serial: str | None = None) -> Mutation:
    def change(root: etree._Element) -> None:
        if issuer is not None:
            ds(root, f"{ISSUER_SERIAL}/ds:X509IssuerName").text = issuer
        if serial is not None:
            ds(root, f"{ISSUER_SERIAL}/ds:X509SerialNumber").text = serial

    return change


def test_unknown_serial_is_e41(signed: bytes, supplier: Signer) -> None:
    serial = supplier.certificate.serial + 1
    rejection = refused(mutate(signed, _issuer_serial(serial=str(serial))))
    assert rejection.code is E41
    assert rejection.message == f"no certificate issued by CN=Z1,OU=07 with serial {serial}"


@pytest.mark.parametrize("issuer", ["CN=Z9,OU=07", "OU=07,CN=Z1", "CN=Z1,OU=08", "CN=Z1"])
def test_unknown_issuer_is_e41(signed: bytes, issuer: str) -> None:
    rejection = refused(mutate(signed, _issuer_serial(issuer=issuer)))
    assert rejection.code is E41
    assert "no certificate issued by" in rejection.message


@pytest.mark.parametrize("issuer", ["", "garbage", "=Z1"])
def test_unparsable_issuer_is_e41(signed: bytes, issuer: str) -> None:
    rejection = refused(mutate(signed, _issuer_serial(issuer=issuer)))
    assert rejection.code is E41
    assert rejection.message == "X509IssuerName is not a valid name"


@pytest.mark.parametrize(
    "issuer", ["CN=Z1, OU=07", " CN=Z1 ,  OU=07 ", "cn=Z1,ou=07", "CN=Z1,\n OU=07"]
)
def test_issuer_spelling_with_spaces_resolves(signed: bytes, issuer: str) -> None:
    assert check(mutate(signed, _issuer_serial(issuer=issuer))).eui == SUPPLIER


def test_serial_with_surrounding_whitespace_resolves(signed: bytes, supplier: Signer) -> None:
    data = mutate(signed, _issuer_serial(serial=f"\n {supplier.certificate.serial} \n"))
    assert check(data).eui == SUPPLIER


def test_expired_certificate_is_e42(ca: TestCA) -> None:
    signer = ca.expired()
    rejection = refused(sign_bytes(fault_request(), signer), lookup=pki_store(signer.certificate))
    assert rejection.code is E42
    assert "expired on" in rejection.message


def test_not_yet_valid_certificate_is_e42(ca: TestCA) -> None:
    signer = ca.not_yet_valid()
    rejection = refused(sign_bytes(fault_request(), signer), lookup=pki_store(signer.certificate))
    assert rejection.code is E42
    assert "is not valid before" in rejection.message


def test_fresh_certificate_from_throwaway_ca_verifies(ca: TestCA) -> None:
    signer = ca.signer()
    assert signer.certificate.eui == SUPPLIER
    assert signer.certificate.organisational_units == {"87"}
    data = sign_bytes(fault_request(), signer)
    assert check(data, lookup=pki_store(signer.certificate)) == signer.certificate
    # Not in our store: unknown, whatever the document says.
    assert refused(data).code is E41


@pytest.mark.parametrize(
    ("outside_by", "accepted"),
    [
        (timedelta(minutes=6), False),
        (timedelta(minutes=4), True),
        (timedelta(0), True),
        (timedelta(hours=-1), True),
    ],
)
def test_validity_window_allows_five_minutes_of_clock_skew(
    ca: TestCA, outside_by: timedelta, accepted: bool
) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    end = datetime(2031, 1, 1, tzinfo=UTC)
    signer = ca.signer(not_before=start, not_after=end)
    data = sign_bytes(fault_request(), signer)
    store = pki_store(signer.certificate)
    for edge, why in ((start - outside_by, "not valid before"), (end + outside_by, "expired on")):
        if accepted:
            assert check(data, lookup=store, at=edge) == signer.certificate
        else:
            rejection = refused(data, lookup=store, at=edge)
            assert rejection.code is E42
            assert why in rejection.message


def test_z1_supplier_organisation_certificate_is_e42(supplier: Signer) -> None:
    # OU=02 organisation certificate (also expired in 2025): never a DUIS signer.
    org = SigningCertificate.from_pem((PKI / "Z1-supplier-ds.cert.pem").read_bytes())
    assert org.organisational_units == {"02"}
    data = sign_bytes(fault_request(), Signer(supplier.key, org))
    for moment in (datetime(2020, 1, 1, tzinfo=UTC), now()):
        rejection = refused(data, at=moment)
        assert rejection.code is E42
        assert "has OU ['02'], not ['87']" in rejection.message


def test_currently_valid_ou02_certificate_is_e42(ca: TestCA) -> None:
    signer = ca.signer(ou="02")
    rejection = refused(sign_bytes(fault_request(), signer), lookup=pki_store(signer.certificate))
    assert rejection.code is E42
    assert "has OU ['02'], not ['87']" in rejection.message


@pytest.mark.parametrize("stem", [DSP_SIGNER, DSP_PRE_141])
def test_dsp_certificate_cannot_sign_a_request(stem: str) -> None:
    dsp = load_signer(stem)
    rejection = refused(sign_bytes(fault_request(), dsp))
    assert rejection.code is E42
    assert "not ['87']" in rejection.message


def test_user_certificate_cannot_sign_a_dsp_response(signed: bytes) -> None:
    rejection = refused(signed, policy=DSP_RESPONSE_POLICY)
    assert rejection.code is E42
    assert "not ['137', '89']" in rejection.message


@pytest.mark.parametrize("key", ["rsa", "p384"])
def test_non_p256_certificate_is_e42(ca: TestCA, supplier: Signer, key: str) -> None:
    _, cert = ca.issue(key=key)
    # The document is signed with some P-256 key; the named certificate is
    # refused before any cryptography runs.
    data = sign_bytes(fault_request(), Signer(supplier.key, cert))
    rejection = refused(data, lookup=pki_store(cert))
    assert rejection.code is E42
    assert "does not hold a P-256 key" in rejection.message


def test_key_from_another_certificate_fails_the_signature(supplier: Signer) -> None:
    other = load_signer("xml-sign-90B3D51F30020000-ds")
    data = sign_bytes(fault_request(), Signer(other.key, supplier.certificate))
    rejection = refused(data)
    assert rejection.code is E40
    assert "does not verify with the named certificate" in rejection.message


# ------------------------------------------------------------------ xmlsec1 interop


@pytest.mark.parametrize("build", [fault_request, no_fault_request], ids=["8.14.3", "8.14.4"])
def test_request_signed_by_xmlsec1_verifies_with_our_verify(
    supplier: Signer, build: Callable[..., bytes]
) -> None:
    data = xmlsec_sign(build(additional_information="from xmlsec1"), supplier)
    assert xmlsec_verify(data, supplier.certificate).returncode == 0
    root = parse(data, REQUEST_POLICY)
    validate(root)
    assert verify(root, pki_store(), REQUEST_POLICY, now()) == supplier.certificate
    assert read_request(root).device_id == DEVICE


def test_xmlsec1_signed_with_spaced_issuer_resolves(supplier: Signer) -> None:
    data = xmlsec_sign(fault_request(), supplier, issuer="CN=Z1, OU=07")
    assert b"<ds:X509IssuerName>CN=Z1, OU=07</ds:X509IssuerName>" in data
    assert check(data).eui == SUPPLIER


def test_request_signed_by_us_verifies_with_xmlsec1(signed: bytes, supplier: Signer) -> None:
    done = xmlsec_verify(signed, supplier.certificate)
    assert done.returncode == 0, done.stderr
    # ... and xmlsec1 is a real check: a tampered copy fails there too.
    tampered = mutate(signed, _text("sr:Body/*/sr:AdditionalInformation", "changed"))
    assert xmlsec_verify(tampered, supplier.certificate).returncode != 0
    other = load_signer("xml-sign-90B3D51F30020000-ds").certificate
    assert xmlsec_verify(signed, other).returncode != 0


def test_tampered_xmlsec1_document_is_refused(supplier: Signer) -> None:
    data = xmlsec_sign(fault_request(), supplier, pretty=True)
    tampered = data.replace(b"Damaged case", b"LED Fault")
    assert refused(tampered).code is E40
