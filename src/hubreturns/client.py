"""The Service User's side: check a signed DCC response and read its code."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from hubreturns.codes import ResponseCode
from hubreturns.errors import EnvelopeRejection
from hubreturns.policy import DSP_RESPONSE_POLICY
from hubreturns.wire import envelope, signature
from hubreturns.wire.certificate import SigningCertificate

__all__ = ["ReadResponse", "read_response"]

_SR = f"{{{envelope.SR_NS}}}"


@dataclass(frozen=True, slots=True)
class ReadResponse:
    code: ResponseCode
    request_id: str | None
    response_id: str | None
    signer: SigningCertificate


def read_response(
    body: bytes, dcc_certificates: Iterable[SigningCertificate], now: datetime | None = None
) -> ReadResponse:
    """Verify a DCC response's signature (OU 89/137 certificate) and read its header.

    Raises ``Rejection`` when the response is malformed or its signature fails.
    """
    known = {cert.key: cert for cert in dcc_certificates}
    root = envelope.parse(body, DSP_RESPONSE_POLICY)
    if root.tag != f"{_SR}Response":
        raise EnvelopeRejection(ResponseCode.E31, f"expected sr:Response, got {root.tag}")
    signer = signature.verify(
        root,
        lambda issuer, serial: known.get((issuer, serial)),
        DSP_RESPONSE_POLICY,
        now or datetime.now(UTC),
    )
    code_text = root.findtext(f"{_SR}Header/{_SR}ResponseCode") or ""
    try:
        code = ResponseCode(code_text)
    except ValueError:
        raise EnvelopeRejection(ResponseCode.E31, f"unknown response code {code_text!r}") from None
    return ReadResponse(
        code=code,
        request_id=root.findtext(f"{_SR}Header/{_SR}RequestID"),
        response_id=root.findtext(f"{_SR}Header/{_SR}ResponseID"),
        signer=signer,
    )
