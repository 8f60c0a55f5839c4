"""Signed DUIS acknowledgements (``sr:Response``) for 8.14.3 / 8.14.4.

The response is compact, repeats the RequestID when the request's RequestID
could be read, and is signed with the DCC's XML-signing key. Like the DCC's
own signed answers to DCC-only (Command Variant 8) requests it carries no
``ResponseID``: only responses from devices do (the schema makes it optional).

It is written from a template, not built as an lxml tree: the document is
tiny and always the same shape, and tree building, two C14N passes and
serialisation took about two thirds of the time of an answer, the ECDSA
signature the rest. The template writes the bytes ``signature.sign`` writes
for the same tree (lxml serialisation, inclusive C14N of the document for
the digest, exclusive C14N of SignedInfo for the signature);
``tests/test_response.py`` keeps an lxml reference builder and checks byte
equality over generated inputs, and checks the output against the DUIS
schema, our ``verify`` and ``xmlsec1``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from cryptography.hazmat.primitives.asymmetric import ec

from hubreturns.model import RequestId
from hubreturns.policy import Canonicalization, DigestMethod, SignatureMethod, Transform
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.envelope import DS_NS, SR_NS
from hubreturns.wire.signature import signature_value

__all__ = ["ResponseSigner", "build_response", "format_datetime"]


def format_datetime(moment: datetime) -> str:
    """UTC with milliseconds and ``Z``, as DUIS ResponseDateTime is written."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


@dataclass(frozen=True, slots=True)
class ResponseSigner:
    """The DCC key and certificate that sign every response."""

    key: ec.EllipticCurvePrivateKey
    certificate: SigningCertificate


#: Characters outside the XML 1.0 ``Char`` production; lxml refuses them too.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: What makes a value more than plain text: markup, a carriage return, a non-Char.
_SPECIAL = re.compile(f"[&<>\r]|{_NOT_XML.pattern}")
#: lxml writes a carriage return in text as ``&#13;``; C14N writes ``&#xD;``.
#: Both forms differ in nothing else here (no empty elements, no comments).
_CR_SERIALISED = {"\r": "&#13;"}

_DECLARATION = "<?xml version='1.0' encoding='UTF-8'?>\n"
_ROOT_OPEN = f'<sr:Response xmlns:sr="{SR_NS}" schemaVersion="5.4">'
_ROOT_CLOSE = "</sr:Response>"

# The enveloped signature ``signature.sign`` appends. SignedInfo appears twice:
# as exclusive C14N writes it (what is signed: the ds namespace declared on it,
# empty elements as start-end pairs) and as lxml serialises it in the document.
_ALGORITHMS = (
    ("CanonicalizationMethod", Canonicalization.EXCLUSIVE.value),
    ("SignatureMethod", SignatureMethod.ECDSA_SHA256.value),
)
_TRANSFORM = Transform.ENVELOPED.value
_DIGEST_METHOD = DigestMethod.SHA256.value
_SIGNED_INFO_C14N = (
    f'<ds:SignedInfo xmlns:ds="{DS_NS}">'
    + "".join(f'<ds:{n} Algorithm="{a}"></ds:{n}>' for n, a in _ALGORITHMS)
    + '<ds:Reference URI=""><ds:Transforms>'
    + f'<ds:Transform Algorithm="{_TRANSFORM}"></ds:Transform></ds:Transforms>'
    + f'<ds:DigestMethod Algorithm="{_DIGEST_METHOD}"></ds:DigestMethod>'
    + "<ds:DigestValue>{digest}</ds:DigestValue></ds:Reference></ds:SignedInfo>"
)
_SIGNATURE = (
    f'<ds:Signature xmlns:ds="{DS_NS}"><ds:SignedInfo>'
    + "".join(f'<ds:{n} Algorithm="{a}"/>' for n, a in _ALGORITHMS)
    + f'<ds:Reference URI=""><ds:Transforms><ds:Transform Algorithm="{_TRANSFORM}"/>'
    + f'</ds:Transforms><ds:DigestMethod Algorithm="{_DIGEST_METHOD}"/>'
    + "<ds:DigestValue>{digest}</ds:DigestValue></ds:Reference></ds:SignedInfo>"
    + "<ds:SignatureValue>{value}</ds:SignatureValue>"
    + "<ds:KeyInfo><ds:X509Data><ds:X509IssuerSerial>"
    + "<ds:X509IssuerName>{issuer}</ds:X509IssuerName>"
    + "<ds:X509SerialNumber>{serial}</ds:X509SerialNumber>"
    + "</ds:X509IssuerSerial></ds:X509Data></ds:KeyInfo></ds:Signature>"
)


def _text(value: str) -> str:
    """``value`` as element text, escaped as lxml serialises it."""
    if _SPECIAL.search(value) is None:
        return value  # the usual case: ids, codes and dates are plain text
    if _NOT_XML.search(value):
        raise ValueError(f"{value!r} holds a character XML does not allow")
    return escape(value, _CR_SERIALISED)


def build_response(
    *,
    request_id: RequestId | None,
    code: str,
    service_reference: str,
    service_reference_variant: str,
    now: datetime,
    signer: ResponseSigner,
) -> bytes:
    """A signed, schema-valid ``sr:Response`` for one request.

    ``code`` is the wire code (``CodeProfile.code``), from the DUIS enumeration.
    """
    ids = "" if request_id is None else f"<sr:RequestID>{_text(str(request_id))}</sr:RequestID>"
    content = (
        f"<sr:Header>{ids}<sr:ResponseCode>{_text(code)}</sr:ResponseCode>"
        f"<sr:ResponseDateTime>{_text(format_datetime(now))}</sr:ResponseDateTime></sr:Header>"
        "<sr:Body><sr:ResponseMessage>"
        f"<sr:ServiceReference>{_text(service_reference)}</sr:ServiceReference>"
        "<sr:ServiceReferenceVariant>"
        f"{_text(service_reference_variant)}</sr:ServiceReferenceVariant>"
        "</sr:ResponseMessage></sr:Body>"
    )
    # Inclusive C14N of the unsigned document: what the enveloped Reference digests.
    canonical = _ROOT_OPEN + content.replace("&#13;", "&#xD;") + _ROOT_CLOSE
    digest = base64.b64encode(hashlib.sha256(canonical.encode()).digest()).decode()
    value = signature_value(signer.key, _SIGNED_INFO_C14N.format(digest=digest).encode())
    signature = _SIGNATURE.format(
        digest=digest,
        value=value,
        issuer=_text(signer.certificate.issuer),
        serial=signer.certificate.serial,
    )
    return (_DECLARATION + _ROOT_OPEN + content + signature + _ROOT_CLOSE).encode()
