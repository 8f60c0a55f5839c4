"""Refusals: one exception type per layer, each carrying a ``Verdict``.

A ``Rejection`` is raised where a check fails and translated exactly once, at
the service edge, into a signed acknowledgement and an audit row (a ``Reason``
gets its wire code from the ``CodeProfile`` there). Any other
exception escaping the request path is a bug and is answered with the UNAVAILABLE code after
rolling back.
"""

from __future__ import annotations

from hubreturns.codes import Verdict, info

__all__ = [
    "EnvelopeRejection",
    "Rejection",
    "RuleRejection",
    "SignatureRejection",
]


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


class RuleRejection(Rejection):
    """Access control and business rules (E1 – E5, E11 – E19 and their Reasons)."""
