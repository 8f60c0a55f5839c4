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
    "DUIS_NAMESPACES",
    "REQUEST_POLICY",
    "RESPONSE_NAMESPACES",
    "Algorithm",
    "SecurityPolicy",
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

    The shape limits bound what a document may cost before anything trusts it
    (docs/security.md, "Bounded CPU per request"): a namespace declaration
    whose URI is not in ``allowed_namespaces`` (relative, empty or foreign
    URIs make exclusive C14N fail or cost time quadratic in their number),
    more than ``max_namespace_declarations`` declarations, ``max_elements``
    elements or ``max_attributes`` attributes (namespace declarations not
    counted) are refused as malformed before the schema or signature check.
    A signed 8.14.3/8.14.4 request has about 30 elements, 8 attributes and
    2 to 4 declarations; the defaults leave room for verbose clients only.
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
    allowed_namespaces: frozenset[str] = DUIS_NAMESPACES
    max_namespace_declarations: int = 16
    max_elements: int = 128
    max_attributes: int = 64

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
