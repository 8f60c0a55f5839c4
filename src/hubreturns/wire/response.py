"""Signed DUIS acknowledgements (``sr:Response``) for 8.14.3 / 8.14.4.

The response is compact, carries RequestID/ResponseID when the request's
RequestID could be read, and is signed with the DCC's XML-signing key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from hubreturns.codes import ResponseCode
from hubreturns.model import RequestId
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.envelope import SR_NS
from hubreturns.wire.signature import sign

__all__ = ["ResponseSigner", "build_response", "format_datetime"]

_SR = f"{{{SR_NS}}}"


def format_datetime(moment: datetime) -> str:
    """UTC with milliseconds and ``Z``, as DUIS ResponseDateTime is written."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class ResponseSigner:
    """The DCC key and certificate that sign every response."""

    key: ec.EllipticCurvePrivateKey
    certificate: SigningCertificate


def build_response(
    *,
    request_id: RequestId | None,
    code: ResponseCode,
    service_reference: str,
    service_reference_variant: str,
    now: datetime,
    signer: ResponseSigner,
) -> bytes:
    """A signed, schema-valid ``sr:Response`` for one request."""
    root = etree.Element(f"{_SR}Response", nsmap={"sr": SR_NS}, schemaVersion="5.4")
    header = etree.SubElement(root, f"{_SR}Header")
    if request_id is not None:
        etree.SubElement(header, f"{_SR}RequestID").text = str(request_id)
        etree.SubElement(header, f"{_SR}ResponseID").text = request_id.response_id()
    etree.SubElement(header, f"{_SR}ResponseCode").text = code.value
    etree.SubElement(header, f"{_SR}ResponseDateTime").text = format_datetime(now)
    message = etree.SubElement(etree.SubElement(root, f"{_SR}Body"), f"{_SR}ResponseMessage")
    etree.SubElement(message, f"{_SR}ServiceReference").text = service_reference
    etree.SubElement(message, f"{_SR}ServiceReferenceVariant").text = service_reference_variant
    return sign(root, signer.key, signer.certificate)
