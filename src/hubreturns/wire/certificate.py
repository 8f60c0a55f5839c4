"""SMKI certificates as the signature layer needs them.

A ``SigningCertificate`` is the parsed, immutable view of one X.509 certificate:
the issuer + serial that KeyInfo names it by, the EUI in its
``x500UniqueIdentifier``, its subject OU values (87 = a User's DUIS
XML-signing certificate), its validity window and, when read from the store,
whether it has been revoked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hubreturns.model import eui_from_bytes

__all__ = ["SigningCertificate", "load_pem_files", "normalize_issuer"]

_RDN_SPLIT = re.compile(r"(?<!\\),")


def normalize_issuer(text: str) -> str:
    """One spelling for an RFC 4514 issuer name: ``CN=Z1, OU=07`` -> ``CN=Z1,OU=07``.

    Home-made because DUIS documents write names with spaces after commas,
    which ``x509.Name.from_rfc4514_string`` refuses; attribute order is kept
    (RFC 4514 order, as ``Name.rfc4514_string`` prints it). Names of a usual
    length are cached: a request reads its issuer twice and a service hears
    few issuers, while a sender's long made-up names must not fill memory.
    """
    return _normalized(text) if len(text) <= _CACHED_NAME_LIMIT else _normalize(text)


_CACHED_NAME_LIMIT = 256


@lru_cache(maxsize=1024)
def _normalized(text: str) -> str:
    return _normalize(text)


def _normalize(text: str) -> str:
    parts = []
    for rdn in _RDN_SPLIT.split(text.strip()):
        kind, sep, value = rdn.partition("=")
        if not sep or not kind.strip():
            raise ValueError(f"{text!r} is not an RFC 4514 distinguished name")
        parts.append(f"{kind.strip().upper()}={value.strip()}")
    return ",".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningCertificate:
    issuer: str
    serial: int
    eui: str | None
    organisational_units: frozenset[str]
    not_before: datetime
    not_after: datetime
    public_key: ec.EllipticCurvePublicKey | None
    pem: bytes
    #: When the SMKI repository recorded this certificate as revoked (None: not revoked).
    #: A revoked certificate is refused whatever the date (E42).
    revoked_at: datetime | None = None

    @property
    def key(self) -> tuple[str, int]:
        """Lookup key: normalised issuer name and serial number."""
        return (self.issuer, self.serial)

    @classmethod
    def from_x509(cls, cert: x509.Certificate) -> SigningCertificate:
        unique = cert.subject.get_attributes_for_oid(NameOID.X500_UNIQUE_IDENTIFIER)
        device: str | None = None
        if len(unique) == 1 and isinstance(unique[0].value, bytes):
            raw = unique[0].value
            # BIT STRING contents: one unused-bits octet (0) then the 8-byte EUI.
            if len(raw) == 9 and raw[0] == 0:
                raw = raw[1:]
            if len(raw) == 8:
                device = eui_from_bytes(raw)
        units = frozenset(
            str(a.value)
            for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        )
        key = cert.public_key()
        return cls(
            issuer=normalize_issuer(cert.issuer.rfc4514_string()),
            serial=cert.serial_number,
            eui=device,
            organisational_units=units,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            public_key=key if isinstance(key, ec.EllipticCurvePublicKey) else None,
            pem=cert.public_bytes(serialization.Encoding.PEM),
        )

    @classmethod
    def from_pem(cls, data: bytes) -> SigningCertificate:
        return cls.from_x509(x509.load_pem_x509_certificate(data))


def load_pem_files(path: Path) -> Iterator[tuple[Path, list[SigningCertificate]]]:
    """Certificates in a PEM file, or in every ``*.pem``/``*.crt`` file of a folder."""
    files = (
        sorted(p for p in path.iterdir() if p.suffix in (".pem", ".crt") and p.is_file())
        if path.is_dir()
        else [path]
    )
    for file in files:
        data = file.read_bytes()
        if b"-----BEGIN CERTIFICATE-----" not in data:
            continue
        certs = x509.load_pem_x509_certificates(data)
        yield file, [SigningCertificate.from_x509(c) for c in certs]
