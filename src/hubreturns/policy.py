"""Security policy as one frozen value.

Everything the request path is strict about lives here, so the whole policy can
be reviewed in one place and loosening it takes an explicit ``dataclasses.replace``.
The algorithm enums carry their implementation (hash, curve, raw signature
length), so ``wire.signature`` verifies with what the policy names and nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from functools import cached_property

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "DSP_RESPONSE_POLICY",
    "DUIS_NAMESPACES",
    "REQUEST_POLICY",
    "RESPONSE_NAMESPACES",
    "XML_CONTENT_TYPES",
    "Canonicalization",
    "DigestMethod",
    "SecurityPolicy",
    "SignatureMethod",
    "Transform",
]

#: The namespaces a DUIS request declares: DUIS itself, xmldsig and XML Schema instance.
DUIS_NAMESPACES = frozenset(
    {
        "http://www.dccinterface.co.uk/ServiceUserGateway",
        "http://www.w3.org/2000/09/xmldsig#",
        "http://www.w3.org/2001/XMLSchema-instance",
    }
)
#: A DCC response may also declare the DUIS ResponseAndAlert namespace.
RESPONSE_NAMESPACES = DUIS_NAMESPACES | {"http://www.dccinterface.co.uk/ResponseAndAlert"}
#: The media types a DUIS request body may be sent as.
XML_CONTENT_TYPES = frozenset({"application/xml", "text/xml"})


class Canonicalization(StrEnum):
    """SignedInfo's canonicalization: the SMKI profile uses exclusive C14N only."""

    EXCLUSIVE = "http://www.w3.org/2001/10/xml-exc-c14n#"

    @property
    def exclusive(self) -> bool:
        return self is Canonicalization.EXCLUSIVE


class Transform(StrEnum):
    """The Reference's one transform: the signature envelops the whole document."""

    ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"


class DigestMethod(StrEnum):
    """The Reference's digest, with the hash that computes it."""

    SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

    @cached_property
    def length(self) -> int:
        """Bytes of a digest (what DigestValue must decode to)."""
        return hashlib.new(_HASH_NAMES[self]).digest_size

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(_HASH_NAMES[self], data).digest()


_HASH_NAMES = {DigestMethod.SHA256: "sha256"}


@dataclass(frozen=True, slots=True)
class _Ecdsa:
    hash: hashes.HashAlgorithm
    curve: type[ec.EllipticCurve]
    #: The curve's name as the SMKI profile writes it.
    curve_name: str
    #: The curve's group order: r and s of a valid signature lie in 1 .. order - 1.
    order: int


class SignatureMethod(StrEnum):
    """SignedInfo's signature method, with its hash, curve and raw ``r||s`` length."""

    ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"

    @cached_property
    def algorithm(self) -> ec.ECDSA:
        """The ``cryptography`` signature algorithm (stateless; one shared instance)."""
        return _ALGORITHMS[self]

    @cached_property
    def curve(self) -> type[ec.EllipticCurve]:
        """The only curve a signing key may be on."""
        return _ECDSA[self].curve

    @cached_property
    def curve_name(self) -> str:
        return _ECDSA[self].curve_name

    @cached_property
    def order(self) -> int:
        return _ECDSA[self].order

    @cached_property
    def raw_length(self) -> int:
        """Bytes of SignatureValue: ``r||s``, each as long as the curve's order."""
        return 2 * ((self.order.bit_length() + 7) // 8)


_ECDSA = {
    SignatureMethod.ECDSA_SHA256: _Ecdsa(
        hashes.SHA256(),
        ec.SECP256R1,
        "P-256",
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    )
}
_ALGORITHMS = {method: ec.ECDSA(suite.hash) for method, suite in _ECDSA.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityPolicy:
    """What a signed DUIS document must look like to be accepted, and how long trust lasts.

    ``signer_ous`` is the set of certificate subject OU values that mark the
    kind of certificate allowed to sign (87: a User's DUIS XML-signing
    certificate; 89 and 137: the DCC's). ``clock_skew`` widens certificate
    validity at both ends. ``schema_versions`` are the ``schemaVersion`` values a
    document may carry: the DUIS schema types it as any decimal, but only the
    version whose schema this service validates against means what it says.

    The shape limits bound what a document may cost before anything trusts it
    (docs/security.md, "Bounded CPU per request"): a namespace declaration
    whose URI is not in ``allowed_namespaces`` (relative, empty or foreign
    URIs make exclusive C14N fail or cost time quadratic in their number),
    more than ``max_namespace_declarations`` declarations, ``max_elements``
    elements or ``max_attributes`` attributes (namespace declarations not
    counted) are refused as malformed before the schema or signature check.
    A signed 8.14.3/8.14.4 request has about 30 elements, 8 attributes and
    2 to 4 declarations; the defaults leave room for verbose clients only.

    At the HTTP edge: a body must be one of ``content_types`` and arrive
    within ``body_deadline``. A certificate read from the store is trusted for
    ``trust_ttl`` after the store last confirmed it (revocations take effect
    faster: ``dcc.certificates.REVOCATION_WINDOW``).
    """

    max_body_bytes: int = 64 * 1024
    signer_ous: frozenset[str] = field(default_factory=lambda: frozenset({"87"}))
    canonicalization: Canonicalization = Canonicalization.EXCLUSIVE
    signature_method: SignatureMethod = SignatureMethod.ECDSA_SHA256
    digest_method: DigestMethod = DigestMethod.SHA256
    transform: Transform = Transform.ENVELOPED
    clock_skew: timedelta = timedelta(minutes=5)
    validate_schema: bool = True
    schema_versions: frozenset[str] = field(default_factory=lambda: frozenset({"5.4"}))
    allowed_namespaces: frozenset[str] = DUIS_NAMESPACES
    max_namespace_declarations: int = 16
    max_elements: int = 128
    max_attributes: int = 64
    content_types: frozenset[str] = XML_CONTENT_TYPES
    body_deadline: timedelta = timedelta(seconds=10)
    trust_ttl: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        for name in ("max_namespace_declarations", "max_elements", "max_attributes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not self.signer_ous:
            raise ValueError("signer_ous must name at least one certificate OU")
        if not self.schema_versions:
            raise ValueError("schema_versions must name at least one schemaVersion")
        if not self.content_types:
            raise ValueError("content_types must name at least one media type")
        for name in ("body_deadline", "trust_ttl"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive")


#: Requests from Service Users: OU 87 certificates only.
REQUEST_POLICY = SecurityPolicy()

#: DCC responses, as a Service User's client checks them.
#: Responses are bigger (up to 1 MiB) and come from the DCC, so their shape
#: limits scale with the size cap; their namespaces are still an allow-list.
DSP_RESPONSE_POLICY = SecurityPolicy(
    signer_ous=frozenset({"89", "137"}),
    max_body_bytes=1024 * 1024,
    allowed_namespaces=RESPONSE_NAMESPACES,
    max_namespace_declarations=64,
    max_elements=32 * 1024,
    max_attributes=32 * 1024,
)
