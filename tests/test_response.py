"""Signed acknowledgements: schema-valid, correctly addressed, verifiable."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from wire_helpers import ACB, DSP_SIGNER, SUPPLIER, load_signer, pki_store, xmlsec_verify

from hubreturns.codes import DEFAULT_PROFILE, Reason, ResponseCode
from hubreturns.errors import SignatureRejection
from hubreturns.model import COUNTER_MAX, RequestId
from hubreturns.policy import DSP_RESPONSE_POLICY, REQUEST_POLICY
from hubreturns.wire.envelope import SR_NS, parse, schema
from hubreturns.wire.response import ResponseSigner, build_response, format_datetime
from hubreturns.wire.signature import sign, verify

_SR = f"{{{SR_NS}}}"
MOMENT = datetime(2025, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)
REQUEST_ID = RequestId(originator=SUPPLIER, target=ACB, counter=18446744073709551615)


@pytest.fixture(scope="module")
def signer() -> ResponseSigner:
    dsp = load_signer(DSP_SIGNER)
    return ResponseSigner(dsp.key, dsp.certificate)


def build(
    signer: ResponseSigner,
    *,
    request_id: RequestId | None = REQUEST_ID,
    code: str = ResponseCode.I99,
    variant: str = "8.14.3",
    now: datetime = MOMENT,
) -> bytes:
    return build_response(
        request_id=request_id,
        code=code,
        service_reference="8.14",
        service_reference_variant=variant,
        now=now,
        signer=signer,
    )


def header(data: bytes) -> dict[str, str]:
    root = etree.fromstring(data)
    found = root.find(f"{_SR}Header")
    assert found is not None
    return {etree.QName(child).localname: child.text or "" for child in found}


#: Every code the service may answer with under the default profile.
ANSWERED = [code for code, _, _ in DEFAULT_PROFILE.rows()]


@pytest.mark.parametrize("code", ANSWERED)
@pytest.mark.parametrize("variant", ["8.14.3", "8.14.4"])
def test_every_code_gives_a_schema_valid_response(
    signer: ResponseSigner, code: str, variant: str
) -> None:
    data = build(signer, code=code, variant=variant)
    root = parse(data, DSP_RESPONSE_POLICY)
    assert root.tag == f"{_SR}Response"
    xsd = schema()
    assert xsd.validate(root), xsd.error_log
    assert header(data)["ResponseCode"] == code
    body = root.find(f"{_SR}Body/{_SR}ResponseMessage")
    assert body is not None
    assert body.findtext(f"{_SR}ServiceReference") == "8.14"
    assert body.findtext(f"{_SR}ServiceReferenceVariant") == variant


@pytest.mark.parametrize("code", [ResponseCode.I99, DEFAULT_PROFILE.code(Reason.REPLAY)])
def test_acknowledgement_has_the_dcc_only_shape_without_response_id(
    signer: ResponseSigner, code: str
) -> None:
    """Like DCC's signed answers to Command Variant 8 requests: RequestID, ResponseCode,
    ResponseDateTime and no ResponseID (only device responses carry one); still valid
    against the DUIS schema and signed."""
    data = build(signer, code=code)
    fields = header(data)
    assert list(fields) == ["RequestID", "ResponseCode", "ResponseDateTime"]
    assert fields["RequestID"] == f"{SUPPLIER}:{ACB}:18446744073709551615"
    assert b"ResponseID" not in data
    root = parse(data, DSP_RESPONSE_POLICY)
    assert schema().validate(root), schema().error_log
    assert verify(root, pki_store(), DSP_RESPONSE_POLICY, datetime.now(UTC)).eui == ACB


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (MOMENT, "2025-03-04T05:06:07.891Z"),
        (
            datetime(2025, 3, 4, 6, 6, 7, 5000, tzinfo=timezone(timedelta(hours=1))),
            "2025-03-04T05:06:07.005Z",
        ),
        (datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "2024-12-31T23:59:59.999Z"),
        (datetime(2025, 1, 1, tzinfo=UTC), "2025-01-01T00:00:00.000Z"),
    ],
)
def test_response_datetime_is_utc_with_milliseconds_and_z(
    signer: ResponseSigner, moment: datetime, expected: str
) -> None:
    assert format_datetime(moment) == expected
    assert header(build(signer, now=moment))["ResponseDateTime"] == expected


def test_response_datetime_of_now_has_the_duis_shape(signer: ResponseSigner) -> None:
    text = header(build(signer, now=datetime.now(UTC)))["ResponseDateTime"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)


def test_response_without_request_id(signer: ResponseSigner) -> None:
    data = build(signer, request_id=None, code=DEFAULT_PROFILE.code(Reason.MALFORMED))
    fields = header(data)
    assert "RequestID" not in fields
    assert "ResponseID" not in fields
    assert fields["ResponseCode"] == "E46"
    root = parse(data, DSP_RESPONSE_POLICY)
    assert schema().validate(root), schema().error_log
    assert verify(root, pki_store(), DSP_RESPONSE_POLICY, datetime.now(UTC)).eui == ACB


def test_response_is_compact_and_utf8(signer: ResponseSigner) -> None:
    data = build(signer)
    declaration, document = data.split(b"?>", 1)
    assert b"UTF-8" in declaration
    assert b"\n" not in document.strip()
    assert b'schemaVersion="5.4"' in document


def test_response_verifies_with_our_verify_as_a_dsp_response(signer: ResponseSigner) -> None:
    root = parse(build(signer), DSP_RESPONSE_POLICY)
    cert = verify(root, pki_store(), DSP_RESPONSE_POLICY, datetime.now(UTC))
    assert cert == signer.certificate
    assert cert.organisational_units == {"89"}
    assert cert.eui == ACB


def test_response_is_not_acceptable_as_a_user_request(signer: ResponseSigner) -> None:
    root = parse(build(signer), REQUEST_POLICY)
    with pytest.raises(SignatureRejection) as caught:
        verify(root, pki_store(), REQUEST_POLICY, datetime.now(UTC))
    assert caught.value.code is Reason.UNUSABLE_CERTIFICATE


def test_tampered_response_fails_verification(signer: ResponseSigner) -> None:
    data = build(signer, code=ResponseCode.E4).replace(b">E4<", b">I99<")
    with pytest.raises(SignatureRejection) as caught:
        verify(parse(data, DSP_RESPONSE_POLICY), pki_store(), DSP_RESPONSE_POLICY, MOMENT)
    assert caught.value.code is Reason.SIGNATURE
    assert "DigestValue does not match" in caught.value.message
    assert xmlsec_verify(data, signer.certificate).returncode != 0


@pytest.mark.parametrize("request_id", [REQUEST_ID, None], ids=["with id", "without id"])
def test_response_verifies_with_xmlsec1(
    signer: ResponseSigner, request_id: RequestId | None
) -> None:
    done = xmlsec_verify(build(signer, request_id=request_id), signer.certificate)
    assert done.returncode == 0, done.stderr


# -- the template against an lxml-built reference ------------------------------------------


def reference_response(
    *,
    request_id: RequestId | None,
    code: str,
    service_reference: str,
    service_reference_variant: str,
    now: datetime,
    signer: ResponseSigner,
) -> bytes:
    """The response built as an lxml tree and signed by ``sign``: what the template must write."""
    root = etree.Element(f"{_SR}Response", nsmap={"sr": SR_NS}, schemaVersion="5.4")
    head = etree.SubElement(root, f"{_SR}Header")
    if request_id is not None:
        etree.SubElement(head, f"{_SR}RequestID").text = str(request_id)
    etree.SubElement(head, f"{_SR}ResponseCode").text = code
    etree.SubElement(head, f"{_SR}ResponseDateTime").text = format_datetime(now)
    message = etree.SubElement(etree.SubElement(root, f"{_SR}Body"), f"{_SR}ResponseMessage")
    etree.SubElement(message, f"{_SR}ServiceReference").text = service_reference
    etree.SubElement(message, f"{_SR}ServiceReferenceVariant").text = service_reference_variant
    return sign(root, signer.key, signer.certificate)


_SIGNATURE_VALUE = re.compile(rb"<ds:SignatureValue>[A-Za-z0-9+/]{86}==</ds:SignatureValue>")


def without_signature_value(data: bytes) -> bytes:
    """``data`` with its one (randomised) ECDSA SignatureValue blanked out."""
    blanked, count = _SIGNATURE_VALUE.subn(b"<ds:SignatureValue/>", data)
    assert count == 1, data
    return blanked


def assert_same_as_reference(
    signer: ResponseSigner,
    *,
    request_id: RequestId | None = REQUEST_ID,
    code: str = ResponseCode.I99,
    variant: str = "8.14.3",
    now: datetime = MOMENT,
    reference: str = "8.14",
) -> bytes:
    """Template output equals the lxml reference byte for byte, bar the ECDSA randomness."""
    data, expected = (
        make(
            request_id=request_id,
            code=code,
            service_reference=reference,
            service_reference_variant=variant,
            now=now,
            signer=signer,
        )
        for make in (build_response, reference_response)
    )
    # Everything that is signed (the document, DigestValue, SignedInfo) is identical;
    # ECDSA draws a fresh nonce per signature, so SignatureValue is checked by verifying.
    assert without_signature_value(data) == without_signature_value(expected)
    root = parse(data, DSP_RESPONSE_POLICY)
    assert verify(root, pki_store(), DSP_RESPONSE_POLICY, datetime.now(UTC)) == signer.certificate
    return data


euis = st.binary(min_size=8, max_size=8).map(lambda raw: "-".join(f"{b:02X}" for b in raw))
request_ids = st.none() | st.builds(
    RequestId, originator=euis, target=euis, counter=st.integers(0, COUNTER_MAX)
)
offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
moments = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.just(UTC) | st.builds(timezone, offsets),
)


@settings(max_examples=150, deadline=None)
@given(
    request_id=request_ids,
    code=st.sampled_from(ANSWERED),
    variant=st.sampled_from(["8.14.3", "8.14.4"]),
    moment=moments,
)
def test_template_matches_the_lxml_reference_and_is_schema_valid(
    signer: ResponseSigner,
    request_id: RequestId | None,
    code: str,
    variant: str,
    moment: datetime,
) -> None:
    data = assert_same_as_reference(
        signer, request_id=request_id, code=code, variant=variant, now=moment
    )
    assert schema().validate(parse(data, DSP_RESPONSE_POLICY)), schema().error_log


#: Text needing escapes (markup, quotes, CR/LF/TAB), non-ASCII, and characters XML refuses.
_AWKWARD = st.sampled_from(list("&<>\"'\r\n\t ]]=é€\U0001f600\x00\x01\x0b\x1f\ufffe\uffff\x7f\x85"))


@settings(max_examples=200, deadline=None)
@given(text=st.text(_AWKWARD | st.characters(), max_size=12))
def test_any_text_is_escaped_exactly_as_lxml_writes_it(signer: ResponseSigner, text: str) -> None:
    try:
        reference_response(
            request_id=REQUEST_ID,
            code=ResponseCode.I99,
            service_reference=text,
            service_reference_variant=text,
            now=MOMENT,
            signer=signer,
        )
    except ValueError:
        # lxml refuses characters outside XML 1.0; so does the template.
        with pytest.raises(ValueError, match="XML does not allow"):
            build(signer, variant=text)
        return
    assert_same_as_reference(signer, reference=text, variant=text)


@pytest.mark.parametrize("bad", ["\x00", "a\x0bb", "\ud800", "\uffff"])
def test_text_xml_cannot_carry_is_refused(signer: ResponseSigner, bad: str) -> None:
    with pytest.raises(ValueError, match="XML does not allow"):
        build(signer, variant=bad)


def test_escaped_text_verifies_with_xmlsec1(signer: ResponseSigner) -> None:
    # The digest covers our own C14N of escaped text (CR is &#xD; there, &#13; in
    # the document): an independent implementation must compute the same.
    data = build(signer, variant="a&b<c>d\r\ne\"f'g\u00e9")
    assert b"a&amp;b&lt;c&gt;d&#13;\ne\"f'g\xc3\xa9<" in data
    root = parse(data, DSP_RESPONSE_POLICY)
    assert root.findtext(f"{_SR}Body/{_SR}ResponseMessage/{_SR}ServiceReferenceVariant") == (
        "a&b<c>d\r\ne\"f'g\u00e9"
    )
    assert verify(root, pki_store(), DSP_RESPONSE_POLICY, datetime.now(UTC)).eui == ACB
    done = xmlsec_verify(data, signer.certificate)
    assert done.returncode == 0, done.stderr
