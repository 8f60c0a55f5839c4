"""Demo and test SMKI-like credentials: a throw-away CA and XML-signing certificates.

The real SMKI test PKI only covers a handful of EUIs; demos and tests need
certificates for arbitrary User IDs, shaped like DCC's (subject ``OU=87`` plus
the EUI in ``x500UniqueIdentifier``, issuer ``OU=07, CN=...``) so the same
``SigningCertificate`` code reads both. Never use these on a live network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from hubreturns.model import as_utc
from hubreturns.model import eui as normalise_eui

__all__ = [
    "XML_SIGNING_OU",
    "Credential",
    "DemoCA",
    "load_credential",
    "packaged_pki",
    "write_credential",
]


def packaged_pki() -> Path:
    """Folder of the public DCC *test* SMKI credentials shipped as package data."""
    return Path(str(resources.files("hubreturns") / "data" / "test-pki"))


#: Subject OU of a User's DUIS XML-signing certificate.
XML_SIGNING_OU: Final = "87"

_CA_VALIDITY: Final = timedelta(days=365 * 20)
_LEAF_VALIDITY: Final = timedelta(days=365 * 10)
_BACKDATE: Final = timedelta(days=1)
#: A CA older than the leaves it issues, so that a backdated (e.g. expired) demo
#: leaf still chains to it at a moment within the leaf's own validity.
_CA_BACKDATE: Final = timedelta(days=365 * 3)


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """A private key with its certificate, plus both as PEM (key as unencrypted PKCS#8)."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    key_pem: bytes
    cert_pem: bytes

    @classmethod
    def of(cls, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> Credential:
        """Pair ``key`` and ``certificate``, refusing a key the certificate does not certify."""
        if key.public_key() != certificate.public_key():
            raise ValueError("the private key does not belong to the certificate")
        return cls(
            key=key,
            certificate=certificate,
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert_pem=certificate.public_bytes(serialization.Encoding.PEM),
        )


def _unique_identifier(device: str) -> x509.NameAttribute[bytes]:
    """The EUI as DCC writes it: a BIT STRING whose contents are 0x00 then the 8 bytes.

    ``cryptography`` uses the value bytes as the raw BIT STRING contents, so
    the leading "unused bits = 0" octet must be supplied here; passing the bare
    8 bytes would produce a malformed 7-byte BIT STRING.
    """
    raw = bytes.fromhex(normalise_eui(device).replace("-", ""))
    return x509.NameAttribute(
        NameOID.X500_UNIQUE_IDENTIFIER, b"\x00" + raw, _type=_ASN1Type.BitString
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoCA:
    """A self-signed P-256 issuing CA standing in for the SMKI ``OU=07, CN=Z1`` CA."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls, common_name: str = "Z1-DEMO", ou: str = "07") -> DemoCA:
        """A fresh CA valid from three years ago for 20 years (covering the leaves it issues)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = datetime.now(UTC)
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CA_BACKDATE)
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, certificate=certificate)

    @property
    def credential(self) -> Credential:
        """The CA's own key and certificate, e.g. to write them to disk."""
        return Credential.of(self.key, self.certificate)

    def issue_xml_signing(
        self,
        eui: str,
        *,
        ou: str = XML_SIGNING_OU,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        curve: ec.EllipticCurve | None = None,
    ) -> Credential:
        """An XML-signing credential for User ``eui`` (subject ``OU=<ou>`` + EUI).

        A new key on ``curve`` (default P-256, the only curve DUIS signing uses)
        is generated unless ``key`` is given; validity defaults to yesterday
        until ten years from now. Naive datetimes are UTC.
        """
        if key is None:
            key = ec.generate_private_key(curve if curve is not None else ec.SECP256R1())
        elif curve is not None and curve.name != key.curve.name:
            raise ValueError(f"key is on {key.curve.name}, not the requested {curve.name}")
        now = datetime.now(UTC)
        start = as_utc(not_before) if not_before is not None else now - _BACKDATE
        end = as_utc(not_after) if not_after is not None else now + _LEAF_VALIDITY
        if end <= start:
            raise ValueError(f"not_after {end.isoformat()} is not after not_before")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                _unique_identifier(eui),
            ]
        )
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Credential.of(key, certificate)


def write_credential(cred: Credential, folder: Path | str, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.key.pem`` (mode 0600) and ``<stem>.cert.pem``; returns both paths.

    The key file is created 0600 from the start (not chmod-ed after writing),
    so the unencrypted key is never readable by others, even briefly.
    """
    directory = Path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / f"{stem}.key.pem"
    cert_path = directory / f"{stem}.cert.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its old mode otherwise
        out.write(cred.key_pem)
    cert_path.write_bytes(cred.cert_pem)
    return key_path, cert_path


def load_credential(key_path: Path | str, cert_path: Path | str) -> Credential:
    """Read an unencrypted EC key and its certificate (first one in the PEM file).

    Raises ``ValueError`` if the key is not EC or does not match the certificate.
    """
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an elliptic-curve private key")
    certificate = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return Credential.of(key, certificate)
