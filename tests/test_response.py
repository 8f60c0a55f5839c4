"""Signed acknowledgements: schema-valid, correctly addressed, verifiable."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from lxml import etree
from wire_helpers import ACB, DSP_SIGNER, SUPPLIER, load_signer, pki_store, xmlsec_verify

from hubreturns.codes import ResponseCode
from hubreturns.errors import SignatureRejection
from hubreturns.model import RequestId
from hubreturns.policy import DSP_RESPONSE_POLICY, REQUEST_POLICY
from hubreturns.wire.envelope import SR_NS, parse, schema
from hubreturns.wire.response import ResponseSigner, build_response, format_datetime
from hubreturns.wire.signature import verify

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
    code: ResponseCode = ResponseCode.I99,
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


@pytest.mark.parametrize("code", list(ResponseCode))
@pytest.mark.parametrize("variant", ["8.14.3", "8.14.4"])
def test_every_code_gives_a_schema_valid_response(
    signer: ResponseSigner, code: ResponseCode, variant: str
) -> None:
    data = build(signer, code=code, variant=variant)
    root = parse(data, DSP_RESPONSE_POLICY)
    assert root.tag == f"{_SR}Response"
    xsd = schema()
    assert xsd.validate(root), xsd.error_log
    assert header(data)["ResponseCode"] == code.value
    body = root.find(f"{_SR}Body/{_SR}ResponseMessage")
    assert body is not None
    assert body.findtext(f"{_SR}ServiceReference") == "8.14"
    assert body.findtext(f"{_SR}ServiceReferenceVariant") == variant


def test_response_id_swaps_target_and_originator(signer: ResponseSigner) -> None:
    fields = header(build(signer))
    assert fields["RequestID"] == f"{SUPPLIER}:{ACB}:18446744073709551615"
    assert fields["ResponseID"] == f"{ACB}:{SUPPLIER}:18446744073709551615"
    assert list(fields) == ["RequestID", "ResponseID", "ResponseCode", "ResponseDateTime"]


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
    data = build(signer, request_id=None, code=ResponseCode.E30)
    fields = header(data)
    assert "RequestID" not in fields
    assert "ResponseID" not in fields
    assert fields["ResponseCode"] == "E30"
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
    assert caught.value.code is ResponseCode.E42


def test_tampered_response_fails_verification(signer: ResponseSigner) -> None:
    data = build(signer, code=ResponseCode.E4).replace(b">E4<", b">I99<")
    with pytest.raises(SignatureRejection) as caught:
        verify(parse(data, DSP_RESPONSE_POLICY), pki_store(), DSP_RESPONSE_POLICY, MOMENT)
    assert caught.value.code is ResponseCode.E40
    assert "DigestValue does not match" in caught.value.message
    assert xmlsec_verify(data, signer.certificate).returncode != 0


@pytest.mark.parametrize("request_id", [REQUEST_ID, None], ids=["with id", "without id"])
def test_response_verifies_with_xmlsec1(
    signer: ResponseSigner, request_id: RequestId | None
) -> None:
    done = xmlsec_verify(build(signer, request_id=request_id), signer.certificate)
    assert done.returncode == 0, done.stderr
