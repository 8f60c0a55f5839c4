"""The Service User's side: check a signed DCC response and read its code."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hubreturns.codes import Reason, duis_response_codes
from hubreturns.errors import EnvelopeRejection, HintedError
from hubreturns.policy import DSP_RESPONSE_POLICY
from hubreturns.wire import envelope, signature
from hubreturns.wire.certificate import SigningCertificate

__all__ = ["ReadResponse", "TlsSetupError", "read_response", "tls_context"]

_SR = f"{{{envelope.SR_NS}}}"


@dataclass(frozen=True, slots=True)
class ReadResponse:
    """A verified response's header; ``code`` is the wire code (explain it with the
    ``CodeProfile`` the service uses: ``CodeProfile.explain``)."""

    code: str
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
        raise EnvelopeRejection(Reason.SCHEMA, f"expected sr:Response, got {root.tag}")
    signer = signature.verify(
        root,
        lambda issuer, serial: known.get((issuer, serial)),
        DSP_RESPONSE_POLICY,
        now or datetime.now(UTC),
    )
    code = root.findtext(f"{_SR}Header/{_SR}ResponseCode") or ""
    if code not in duis_response_codes():
        raise EnvelopeRejection(Reason.SCHEMA, f"unknown response code {code!r}")
    return ReadResponse(
        code=code,
        request_id=root.findtext(f"{_SR}Header/{_SR}RequestID"),
        response_id=root.findtext(f"{_SR}Header/{_SR}ResponseID"),
        signer=signer,
    )


class TlsSetupError(HintedError):
    """``--ca`` / ``--client-cert`` / ``--client-key`` cannot be used; ``hint`` says why."""

    code = "tls"


def tls_context(
    ca: Path | None = None, client_cert: Path | None = None, client_key: Path | None = None
) -> ssl.SSLContext | bool:
    """What httpx takes as ``verify``: the server checked against ``ca`` (else the
    system's CAs), and our certificate presented for mutual TLS when given.

    ``True`` (httpx's default checks) when no option is given. A key without its
    certificate, or a file that does not load, is a ``TlsSetupError``.
    """
    if ca is None and client_cert is None and client_key is None:
        return True
    if client_key is not None and client_cert is None:
        raise TlsSetupError(
            "--client-key needs --client-cert", "Give the certificate that goes with the key."
        )
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(
            f"cannot load --ca {ca}: {exc}",
            "Give the PEM certificate of the CA that issued the service's TLS certificate.",
        ) from None
    if client_cert is not None:
        try:
            context.load_cert_chain(
                str(client_cert), str(client_key) if client_key is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(
                f"cannot load --client-cert {client_cert} / --client-key {client_key}: {exc}",
                "Give your TLS certificate and its own private key as PEM files (the key "
                "may be in the certificate file, then omit --client-key).",
            ) from None
    return context
