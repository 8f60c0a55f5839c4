"""SMKI trust: which certificates may enter the repository, and why.

The operator names the SMKI CA certificates to trust (``smki_ca_certs``);
every certificate loaded must then chain to one of them. Without them
(DCC's public test PKI, for one, does not publish its issuing CA certificate)
certificates are taken as vouched for by the operator, and the service says
so: a WARNING at load and at ``serve`` start, and ``/healthz`` reports
``"smki_trust": "operator-vouched"``.

Chains are checked with ``cryptography.x509.verification`` (RFC 5280 path
building, signatures, validity, CA basic constraints and key usage), with one
change from its WebPKI defaults: the end-entity extension policy is
``permit_all``. SMKI XML-signing certificates name their holder by EUI in
``x500UniqueIdentifier`` and carry no subjectAltName and no extendedKeyUsage,
both of which the WebPKI end-entity policy requires; what a signing
certificate must hold (OU 87, P-256, validity) is checked per request by
``wire.signature``. CA certificates keep the WebPKI CA policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = [
    "VOUCHED_WARNING",
    "TrustAnchors",
    "TrustMode",
    "UntrustedCertificate",
    "certificate_files",
    "load_trust_anchors",
    "trust_mode",
]

#: Log and ``/healthz`` wording when no CA is configured.
VOUCHED_WARNING: Final = (
    "no SMKI CA certificates configured (smki_ca_certs / HUBRETURNS_SMKI_CA_CERTS): "
    "certificates in the SMKI repository are trusted because the operator loaded them, "
    "not because they chain to an SMKI CA"
)


class TrustMode(enum.StrEnum):
    """Why the service trusts the certificates it holds (``/healthz`` ``smki_trust``)."""

    CA = "ca"
    OPERATOR_VOUCHED = "operator-vouched"


def trust_mode(smki_ca_certs: Path | None) -> TrustMode:
    return TrustMode.OPERATOR_VOUCHED if smki_ca_certs is None else TrustMode.CA


class UntrustedCertificate(ValueError):
    """A certificate that does not chain to a configured SMKI CA; the message says why."""


def certificate_files(path: Path) -> list[Path]:
    """``path`` itself, or every entry of the folder ``path`` except hidden ones, sorted.

    Every entry is returned, whatever its name, so that a caller can name
    those that are not certificate files instead of skipping them unseen.
    """
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustAnchors:
    """The SMKI CA certificates the operator trusts, and where they came from."""

    source: Path
    certificates: tuple[x509.Certificate, ...]

    def verify(self, cert: x509.Certificate, now: datetime) -> None:
        """Raise ``UntrustedCertificate`` unless ``cert`` chains to one of the anchors.

        The chain is checked at ``now`` clamped into the certificate's own
        validity, so that an expired (or not yet valid) certificate issued by
        a trusted CA is still recognised as such: its dates are reported at
        load and refused per request (E42), while a forged one is refused here.
        """
        moment = min(max(now, cert.not_valid_before_utc), cert.not_valid_after_utc)
        verifier = (
            PolicyBuilder()
            .store(Store(list(self.certificates)))
            .time(moment)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(cert, [])
        except VerificationError as exc:
            raise UntrustedCertificate(
                f"does not chain to an SMKI CA in {self.source} ({_reason(exc)})"
            ) from None


def _reason(exc: VerificationError) -> str:
    """The verifier's message without its trailing certificate repr."""
    text = str(exc).removeprefix("validation failed: ")
    return text.split(" (encountered processing", 1)[0]


def load_trust_anchors(path: Path) -> TrustAnchors:
    """CA certificates from a PEM file or a folder of them; ``ValueError`` names what is wrong.

    Each must be a CA certificate (basicConstraints cA): a leaf certificate
    here would make everything it "issues" trusted by name alone.
    """
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    found: list[x509.Certificate] = []
    for file in certificate_files(path):
        if file.is_dir():
            continue
        try:
            certs = x509.load_pem_x509_certificates(file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{file}: not a PEM certificate file ({exc})") from None
        for cert in certs:
            try:
                is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                raise ValueError(f"{file}: {cert.subject.rfc4514_string()} is not a CA certificate")
            found.append(cert)
    if not found:
        raise ValueError(f"{path}: no PEM certificate found")
    return TrustAnchors(source=path, certificates=tuple(found))
