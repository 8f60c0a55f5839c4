"""The project's two error families.

``Rejection`` is the wire's refusal: raised where a DUIS request fails a check
of the envelope or the signature, and translated exactly once, at the service
edge, into a signed acknowledgement and an audit row (a ``Reason`` gets its
wire code from the ``CodeProfile`` there). Business rules do not raise: the
rule table returns its verdict. Any other exception escaping the request path
is a bug, answered with the UNAVAILABLE code after rolling back.

``HintedError`` is a refusal to a person (the CLI, the Service Desk, the
operator API): a ``code`` naming its kind, a ``message`` saying what was wrong
and a ``hint`` saying what to do; nothing was written.
"""

from __future__ import annotations

from hubreturns.codes import Verdict, info

__all__ = [
    "EnvelopeRejection",
    "HintedError",
    "Rejection",
    "SignatureRejection",
]


class HintedError(Exception):
    """What went wrong and what to do about it; ``str()`` is the message."""

    #: The kind of refusal; a subclass names its own, and ``code=`` names one case of it.
    code: str = "refused"
    message: str
    hint: str

    def __init__(self, message: str, hint: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code


class Rejection(Exception):
    """A request refused with ``code`` (a DUIS-defined code or a ``Reason``);
    ``message`` says what was wrong.

    ``sender`` is the User ID whose certificate verified the request's signature,
    when the refusal came after that (IDENTITY_MISMATCH, or a signed request unreadable); the
    audit row keeps it apart from the originator the request merely claims.
    """

    code: Verdict
    message: str
    sender: str | None

    def __init__(self, code: Verdict, message: str, *, sender: str | None = None) -> None:
        if type(self) is Rejection:
            raise TypeError("raise a layer-specific Rejection subclass")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.sender = sender

    @property
    def hint(self) -> str:
        return info(self.code).hint

    @property
    def http_status(self) -> int:
        return info(self.code).http_status


class EnvelopeRejection(Rejection):
    """Bytes that are not an acceptable DUIS document (MALFORMED, SCHEMA, SCHEMA_VERSION)."""


class SignatureRejection(Rejection):
    """Signature profile, cryptography or certificate failures (SIGNATURE … IDENTITY_MISMATCH)."""
