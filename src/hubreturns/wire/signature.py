"""SMKI XML signatures: verify fail-closed, sign compactly.

The profile (DUIS / SMKI XML signing) admits exactly one shape, and ``verify``
checks that shape before any cryptography runs:

* one ``ds:Signature`` in the whole document, the last child of the root;
* ``SignedInfo`` = exclusive C14N + ECDSA-SHA256 + one ``Reference URI=""``
  whose only transform is enveloped-signature, digest SHA-256;
* ``KeyInfo`` = one ``X509Data`` with one ``X509IssuerSerial`` and nothing
  else: the key always comes from our own certificate store, never from the
  document;
* ``SignatureValue`` = raw ``r||s`` (64 bytes for P-256);
* the text-bearing elements (DigestValue, SignatureValue, X509IssuerName,
  X509SerialNumber) hold text only, and no comment or PI appears anywhere.

Because the one reference is the whole document, what the rules later read is
exactly what was signed: there is nothing outside the signed content to wrap.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import datetime

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from lxml import etree

from hubreturns.codes import Reason
from hubreturns.errors import SignatureRejection
from hubreturns.model import clip
from hubreturns.policy import REQUEST_POLICY, SecurityPolicy
from hubreturns.wire.certificate import SigningCertificate, normalize_issuer
from hubreturns.wire.envelope import DS_NS

__all__ = ["CertificateLookup", "named_certificate", "sign", "signature_value", "verify"]

#: Finds a certificate in our own store by (normalised issuer, serial).
CertificateLookup = Callable[[str, int], SigningCertificate | None]

_DS = f"{{{DS_NS}}}"
_SIGNATURE_TAG = f"{_DS}Signature"
#: X509SerialNumber as the profile allows it: ASCII digits only (``str.isdigit`` also
#: takes "²", which ``int`` refuses), at most 49 of them (a 20-octet serial has 49).
_SERIAL = re.compile(r"[0-9]{1,49}")


def _bad(message: str) -> SignatureRejection:
    return SignatureRejection(Reason.SIGNATURE, message)


def _children(element: etree._Element, *names: str) -> list[etree._Element]:
    """The element's children, which must be exactly ``names`` in that order."""
    found = list(element)
    got = [etree.QName(c).localname if isinstance(c.tag, str) else "?" for c in found]
    if got != list(names) or any(c.tag != f"{_DS}{n}" for c, n in zip(found, names, strict=True)):
        raise _bad(
            f"ds:{etree.QName(element).localname} must contain {list(names)}, "
            f"found {clip(str(got))}"
        )
    return found


#: The one admitted ds:Signature tree, element by element in document order:
#: local name and number of children. A preorder listing with child counts
#: determines a tree exactly, so comparing two flat lists checks the whole
#: shape in one pass (no text-bearing leaf may hold an element either).
_PROFILE_TREE = (
    ("Signature", 3),
    ("SignedInfo", 3),
    ("CanonicalizationMethod", 0),
    ("SignatureMethod", 0),
    ("Reference", 3),
    ("Transforms", 1),
    ("Transform", 0),
    ("DigestMethod", 0),
    ("DigestValue", 0),
    ("SignatureValue", 0),
    ("KeyInfo", 1),
    ("X509Data", 1),
    ("X509IssuerSerial", 2),
    ("X509IssuerName", 0),
    ("X509SerialNumber", 0),
)
_PROFILE_TAGS = [f"{_DS}{name}" for name, _ in _PROFILE_TREE]
_PROFILE_ARITY = [arity for _, arity in _PROFILE_TREE]


def _profile_elements(signature: etree._Element) -> list[etree._Element]:
    """The Signature's elements in document order, if its tree is the profile's; else SIGNATURE."""
    # iter() also yields comments and PIs: their tags are not strings, so they never match.
    found = list(signature.iter())
    if [e.tag for e in found] != _PROFILE_TAGS or [len(e) for e in found] != _PROFILE_ARITY:
        _explain_shape(signature)
        raise _bad("ds:Signature does not have the profile's shape")  # fail closed regardless
    return found


def _explain_shape(signature: etree._Element) -> None:
    """Raise SIGNATURE naming the first element whose children differ from the profile."""
    signed_info, signature_value, key_info = _children(
        signature, "SignedInfo", "SignatureValue", "KeyInfo"
    )
    c14n, method, reference = _children(
        signed_info, "CanonicalizationMethod", "SignatureMethod", "Reference"
    )
    _children(c14n)
    _children(method)
    transforms, digest_method, digest_value = _children(
        reference, "Transforms", "DigestMethod", "DigestValue"
    )
    (transform,) = _children(transforms, "Transform")
    for leaf in (transform, digest_method, digest_value, signature_value):
        _children(leaf)
    (x509_data,) = _children(key_info, "X509Data")
    (issuer_serial,) = _children(x509_data, "X509IssuerSerial")
    for leaf in _children(issuer_serial, "X509IssuerName", "X509SerialNumber"):
        _children(leaf)


def _attributes(element: etree._Element, expected: list[tuple[str, str]]) -> None:
    """The element's attributes must be exactly ``expected`` (at most one here)."""
    # Attribute names are unique, so with at most one expected pair list
    # equality is set equality; namespaced names read "{ns}name" and differ.
    found = element.items()
    if found != expected:
        name = etree.QName(element).localname
        shown = {str(k): str(v) for k, v in found}
        wanted = {k: str(v) for k, v in expected}
        raise _bad(f"ds:{name} has attributes {clip(str(shown))}, expected {wanted}")


def _b64(element: etree._Element, length: int, what: str) -> bytes:
    text = "".join((element.text or "").split())
    try:
        # What base64.b64decode(validate=True) does, without its wrappers.
        value = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{what} is not base64") from None
    if len(value) != length:
        raise _bad(f"{what} has {len(value)} bytes, expected {length}")
    return value


def _enveloped_digest(
    root: etree._Element, signature: etree._Element, policy: SecurityPolicy
) -> bytes:
    """The digest of the document's inclusive C14N 1.0 form without the Signature node.

    The whole document is canonicalised once and the Signature's own span cut
    out, so the tree is never touched. The Signature is the root's last child
    and everything inside it is fixed by the profile or escaped by C14N, so its
    span runs from the last start tag with its exact name to the last end tag
    with that name. Its tail text belongs to the document and stays, as the
    enveloped transform keeps it.
    """
    canonical = etree.tostring(root.getroottree(), method="c14n", exclusive=False)
    name = (f"{signature.prefix}:" if signature.prefix else "").encode() + b"Signature"
    end = canonical.rindex(b"</" + name + b">") + len(name) + 3
    start = max(
        canonical.rfind(b"<" + name + b">", 0, end), canonical.rfind(b"<" + name + b" ", 0, end)
    )
    if start < 0:
        raise _bad("the Signature could not be found in the canonical document")
    return policy.digest_method.digest(canonical[:start] + canonical[end:])


def _signed_info_bytes(signed_info: etree._Element, policy: SecurityPolicy) -> bytes:
    return etree.tostring(signed_info, method="c14n", exclusive=policy.canonicalization.exclusive)


#: What lxml (C14N, serialisation), binascii and cryptography raise on input they
#: cannot handle. Inside verification each is the document's failure, never ours.
_LIBRARY_ERRORS = (etree.LxmlError, ValueError, OverflowError, UnsupportedAlgorithm)


def verify(
    root: etree._Element,
    lookup: CertificateLookup,
    policy: SecurityPolicy,
    now: datetime,
) -> SigningCertificate:
    """Check the document's one signature and return the certificate that made it.

    ``lookup`` answers from a snapshot of our certificate store taken before
    the check (``named_certificate`` says which one to take). Raises
    ``SignatureRejection``: SIGNATURE for profile, format or cryptographic
    failures, UNKNOWN_CERTIFICATE when issuer+serial is not in the snapshot,
    UNUSABLE_CERTIFICATE when the certificate is not one allowed to sign
    (revoked, OU, curve, validity at ``now``). The caller still checks that
    the certificate belongs to the originator.

    The module's boundary: whatever a library raises while the document is
    checked (C14N refusing a relative namespace URI, a malformed key or
    value) is refused as E40 here, once, rather than case by case.
    """
    try:
        return _verify(root, lookup, policy, now)
    except _LIBRARY_ERRORS as exc:
        raise _bad(f"the signature could not be checked ({type(exc).__name__})") from None


def named_certificate(root: etree._Element) -> tuple[str, int] | None:
    """The (issuer, serial) the document's KeyInfo names, if it can be read; else None.

    Read without any other check, so that the certificate can be looked up
    before ``verify`` runs (which refuses a document this cannot read). The
    profile's places are read by position: a path search cost twice as much.
    """
    signature = root[-1] if len(root) else None
    if signature is None or signature.tag != _SIGNATURE_TAG or len(signature) != 3:
        return None
    node = signature[2]
    for tag, children in _KEY_INFO_SHAPE:
        if node.tag != tag or len(node) != children:
            return None
        if children == 1:
            node = node[0]
    try:
        return _issuer_serial(node[0], node[1])
    except SignatureRejection:
        return None


#: KeyInfo down to X509IssuerSerial, each with its number of children.
_KEY_INFO_SHAPE = ((f"{_DS}KeyInfo", 1), (f"{_DS}X509Data", 1), (f"{_DS}X509IssuerSerial", 2))


def _issuer_serial(issuer_name: etree._Element, serial_number: etree._Element) -> tuple[str, int]:
    serial_text = (serial_number.text or "").strip()
    if not _SERIAL.fullmatch(serial_text):
        raise _bad("X509SerialNumber must be a decimal integer")
    try:
        issuer = normalize_issuer(issuer_name.text or "")
    except ValueError:
        raise SignatureRejection(
            Reason.UNKNOWN_CERTIFICATE, "X509IssuerName is not a valid name"
        ) from None
    return issuer, int(serial_text)


def _verify(
    root: etree._Element,
    lookup: CertificateLookup,
    policy: SecurityPolicy,
    now: datetime,
) -> SigningCertificate:
    signatures = list(root.iter(_SIGNATURE_TAG))
    if not signatures:
        raise _bad("the request is not signed (no ds:Signature)")
    if len(signatures) > 1:
        raise _bad(f"exactly one ds:Signature is allowed, found {len(signatures)}")
    signature = signatures[0]
    if signature.getparent() is not root or root[-1] is not signature:
        raise _bad("ds:Signature must be the last child of the root element")
    (
        _,  # the Signature itself
        signed_info,
        c14n,
        method,
        reference,
        _transforms,
        transform,
        digest_method,
        digest_value,
        signature_value,
        _key_info,
        _x509_data,
        _issuer_serial_element,
        issuer_name,
        serial_number,
    ) = _profile_elements(signature)
    # ``policy`` algorithms are StrEnums: each compares equal to its URI string.
    _attributes(signature, [])
    _attributes(signed_info, [])
    _attributes(c14n, [("Algorithm", policy.canonicalization)])
    _attributes(method, [("Algorithm", policy.signature_method)])
    _attributes(reference, [("URI", "")])
    _attributes(transform, [("Algorithm", policy.transform)])
    _attributes(digest_method, [("Algorithm", policy.digest_method)])
    _attributes(signature_value, [])

    expected_digest = _b64(digest_value, policy.digest_method.length, "DigestValue")
    suite = policy.signature_method
    raw_signature = _b64(signature_value, suite.raw_length, "SignatureValue")
    half = suite.raw_length // 2
    r = int.from_bytes(raw_signature[:half], "big")
    s = int.from_bytes(raw_signature[half:], "big")
    if not (0 < r < suite.order and 0 < s < suite.order):
        raise _bad("SignatureValue r or s is out of range")

    issuer, serial = _issuer_serial(issuer_name, serial_number)
    certificate = lookup(issuer, serial)
    if certificate is None:
        raise SignatureRejection(
            Reason.UNKNOWN_CERTIFICATE,
            f"no certificate issued by {clip(issuer)} with serial {serial}",
        )
    _check_certificate(certificate, policy, now)
    assert certificate.public_key is not None  # checked above

    if _enveloped_digest(root, signature, policy) != expected_digest:
        raise _bad("DigestValue does not match the document (the signed content was changed)")
    signed_bytes = _signed_info_bytes(signed_info, policy)
    try:
        certificate.public_key.verify(encode_dss_signature(r, s), signed_bytes, suite.algorithm)
    except InvalidSignature:
        raise _bad("SignatureValue does not verify with the named certificate") from None
    return certificate


def _check_certificate(cert: SigningCertificate, policy: SecurityPolicy, now: datetime) -> None:
    def refuse(why: str) -> SignatureRejection:
        return SignatureRejection(
            Reason.UNUSABLE_CERTIFICATE, f"certificate serial {cert.serial} {why}"
        )

    if cert.revoked_at is not None:
        raise refuse(f"was revoked on {cert.revoked_at.isoformat()}")
    if not cert.organisational_units & policy.signer_ous:
        raise refuse(f"has OU {sorted(cert.organisational_units)}, not {sorted(policy.signer_ous)}")
    method = policy.signature_method
    if cert.public_key is None or not isinstance(cert.public_key.curve, method.curve):
        raise refuse(f"does not hold a {method.curve_name} key")
    if now < cert.not_before - policy.clock_skew:
        raise refuse(f"is not valid before {cert.not_before.isoformat()}")
    if now > cert.not_after + policy.clock_skew:
        raise refuse(f"expired on {cert.not_after.isoformat()}")


def sign(
    root: etree._Element,
    key: ec.EllipticCurvePrivateKey,
    certificate: SigningCertificate,
    policy: SecurityPolicy = REQUEST_POLICY,
) -> bytes:
    """Append an enveloped SMKI signature to ``root`` and return the compact document.

    Produce documents compact (no whitespace between elements): DCC's own
    validator strips it before checking. The algorithms are the policy's.
    """
    # The enveloped transform digests the document as it is before the Signature exists.
    digest = policy.digest_method.digest(etree.tostring(root.getroottree(), method="c14n"))
    signature = etree.SubElement(root, f"{_DS}Signature", nsmap={"ds": DS_NS})
    signed_info = etree.SubElement(signature, f"{_DS}SignedInfo")
    algorithms = (
        ("CanonicalizationMethod", policy.canonicalization),
        ("SignatureMethod", policy.signature_method),
    )
    for name, algorithm in algorithms:
        etree.SubElement(signed_info, f"{_DS}{name}", Algorithm=algorithm.value)
    reference = etree.SubElement(signed_info, f"{_DS}Reference", URI="")
    transforms = etree.SubElement(reference, f"{_DS}Transforms")
    etree.SubElement(transforms, f"{_DS}Transform", Algorithm=policy.transform.value)
    etree.SubElement(reference, f"{_DS}DigestMethod", Algorithm=policy.digest_method.value)
    digest_value = etree.SubElement(reference, f"{_DS}DigestValue")
    value = etree.SubElement(signature, f"{_DS}SignatureValue")
    key_info = etree.SubElement(signature, f"{_DS}KeyInfo")
    issuer_serial = etree.SubElement(
        etree.SubElement(key_info, f"{_DS}X509Data"), f"{_DS}X509IssuerSerial"
    )
    etree.SubElement(issuer_serial, f"{_DS}X509IssuerName").text = certificate.issuer
    etree.SubElement(issuer_serial, f"{_DS}X509SerialNumber").text = str(certificate.serial)

    digest_value.text = base64.b64encode(digest).decode()
    value.text = signature_value(key, _signed_info_bytes(signed_info, policy), policy)
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8")


def signature_value(
    key: ec.EllipticCurvePrivateKey, signed_info: bytes, policy: SecurityPolicy = REQUEST_POLICY
) -> str:
    """SignatureValue text for canonical SignedInfo bytes: base64 of raw ``r||s``, not DER."""
    method = policy.signature_method
    r, s = decode_dss_signature(key.sign(signed_info, method.algorithm))
    half = method.raw_length // 2
    return base64.b64encode(r.to_bytes(half, "big") + s.to_bytes(half, "big")).decode()
