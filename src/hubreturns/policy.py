"""Security policy as one frozen value.

Everything the wire layer is strict about lives here, so the whole policy can be
reviewed in one place and loosening it takes an explicit ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

__all__ = [
    "DSP_RESPONSE_POLICY",
    "REQUEST_POLICY",
    "Algorithm",
    "SecurityPolicy",
]


class Algorithm(StrEnum):
    """The only algorithm URIs the SMKI XML-signing profile uses."""

    EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
    ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
    ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
    SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityPolicy:
    """What a signed DUIS document must look like to be accepted.

    ``signer_ous`` is the set of certificate subject OU values that mark the
    kind of certificate allowed to sign (87: a User's DUIS XML-signing
    certificate; 89 and 137: the DCC's). ``clock_skew`` widens certificate
    validity at both ends. ``schema_versions`` are the ``schemaVersion`` values a
    document may carry: the DUIS schema types it as any decimal, but only the
    version whose schema this service validates against means what it says.
    """

    max_body_bytes: int = 64 * 1024
    signer_ous: frozenset[str] = field(default_factory=lambda: frozenset({"87"}))
    canonicalization: Algorithm = Algorithm.EXC_C14N
    signature_method: Algorithm = Algorithm.ECDSA_SHA256
    digest_method: Algorithm = Algorithm.SHA256
    transform: Algorithm = Algorithm.ENVELOPED
    clock_skew: timedelta = timedelta(minutes=5)
    validate_schema: bool = True
    schema_versions: frozenset[str] = field(default_factory=lambda: frozenset({"5.4"}))

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        if not self.signer_ous:
            raise ValueError("signer_ous must name at least one certificate OU")
        if not self.schema_versions:
            raise ValueError("schema_versions must name at least one schemaVersion")


#: Requests from Service Users: OU 87 certificates only.
REQUEST_POLICY = SecurityPolicy()

#: DCC responses, as a Service User's client checks them.
DSP_RESPONSE_POLICY = SecurityPolicy(
    signer_ous=frozenset({"89", "137"}), max_body_bytes=1024 * 1024
)
