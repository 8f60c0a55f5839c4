"""The check of one DUIS request: bytes, a certificate snapshot, the policy and the clock in;
a checked request or a ``Rejection`` out.

Nothing here reads a database, a clock or a socket (h11's sans-I/O shape): the
caller reads the document (``read``), looks up the certificate it names
(``Document.certificate``) in one read of its own, and hands a snapshot of the
result to ``check_document``. ``check`` is the same over bytes, for callers
that hold the snapshot already (tests, the fuzzer, the benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from hubreturns.codes import Reason
from hubreturns.errors import Rejection, SignatureRejection
from hubreturns.model import ReturnRequest
from hubreturns.policy import SecurityPolicy
from hubreturns.wire import envelope, signature
from hubreturns.wire.certificate import SigningCertificate

__all__ = ["Document", "check", "check_document", "identify", "read", "validate", "verify"]


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed request whose shape limits hold, not yet trusted.

    ``certificate`` is the (issuer, serial) its KeyInfo names, if readable: the
    one certificate its check needs from the store.
    """

    root: etree._Element
    certificate: tuple[str, int] | None


def read(data: bytes, policy: SecurityPolicy) -> Document:
    """Parse under the hardened profile (``envelope.parse``), or raise MALFORMED."""
    root = envelope.parse(data, policy)
    return Document(root, signature.named_certificate(root))


def validate(document: Document, policy: SecurityPolicy) -> None:
    """The DUIS schema (if the policy asks) and the accepted ``schemaVersion``."""
    if policy.validate_schema:
        envelope.validate(document.root)
    envelope.check_version(document.root, policy)


def verify(
    document: Document,
    certificates: signature.CertificateLookup,
    policy: SecurityPolicy,
    now: datetime,
) -> SigningCertificate:
    """The signature, over a snapshot of the certificates (``signature.verify``)."""
    return signature.verify(document.root, certificates, policy, now)


def identify(document: Document, certificate: SigningCertificate) -> ReturnRequest:
    """The signed request, read, and its originator the certificate's owner."""
    try:
        request = envelope.read_request(document.root)
    except Rejection as refusal:  # signed, so its signer is known: the audit keeps it
        raise type(refusal)(refusal.code, refusal.message, sender=certificate.eui) from None
    if certificate.eui != request.originator:
        raise SignatureRejection(
            Reason.IDENTITY_MISMATCH,
            f"certificate serial {certificate.serial} belongs to {certificate.eui}, "
            f"not to originator {request.originator}",
            sender=certificate.eui,
        )
    return request


def check_document(
    document: Document,
    certificates: signature.CertificateLookup,
    policy: SecurityPolicy,
    now: datetime,
) -> ReturnRequest:
    """Schema and version, signature, then identity; a ``Rejection`` names the first failure.

    ``certificates`` answers from a snapshot taken before the check. The three
    steps are also public, so a caller may run each for many requests in turn.
    """
    validate(document, policy)
    return identify(document, verify(document, certificates, policy, now))


def check(
    data: bytes,
    certificates: signature.CertificateLookup,
    policy: SecurityPolicy,
    now: datetime,
) -> ReturnRequest:
    """Bytes to a checked request, or a ``Rejection`` (envelope or signature Reasons)."""
    return check_document(read(data, policy), certificates, policy, now)
