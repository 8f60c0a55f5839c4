"""DUIS response codes: the fixed DUIS meanings, and the code profile for the rest.

DUIS publishes the meaning of the common "DCC Systems Response Codes" (DUIS
clause 3.5.10). Those this service answers with (``ResponseCode``) keep their
published meaning and cannot be changed. The refusals DUIS leaves to the DCC
(malformed XML, bad signature, replay, …) are named by a ``Reason``; which code
each one is answered with is *this project's choice pending DCC's DUGIDS*, kept
in one table of data, the ``CodeProfile``. Its defaults avoid every code whose
published meaning differs (E17, E20, E21, E30), and an operator may align it with
the DCC's own documentation in the ``[response_codes]`` table of the
configuration file. Refusals are raised with a ``ResponseCode`` or a ``Reason``
(a ``Verdict``) and turned into a wire code once, by ``CodeProfile.code``, where
the signed answer and its audit row are made.

``CODE_INFO`` (meaning, hint, HTTP status per verdict) is the single source for
``hubreturns codes``, docs/response-codes.md and the client's explanations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from types import MappingProxyType

from lxml import etree

__all__ = [
    "CODE_INFO",
    "DEFAULT_CODES",
    "DEFAULT_PROFILE",
    "PUBLISHED_UNUSED",
    "CodeInfo",
    "CodeProfile",
    "Reason",
    "ResponseCode",
    "Verdict",
    "duis_response_codes",
    "info",
]


class ResponseCode(StrEnum):
    """The DUIS-defined codes this service answers with; their meanings are fixed."""

    I99 = "I99"
    E1 = "E1"
    E2 = "E2"
    E3 = "E3"
    E4 = "E4"
    E5 = "E5"
    E11 = "E11"
    E12 = "E12"
    E13 = "E13"
    E19 = "E19"

    @property
    def accepted(self) -> bool:
        return self is ResponseCode.I99


class Reason(StrEnum):
    """A refusal DUIS publishes no code for; the ``CodeProfile`` gives it one.

    The values are the keys of the ``[response_codes]`` configuration table.
    """

    MALFORMED = "malformed"
    SCHEMA = "schema"
    SCHEMA_VERSION = "schema_version"
    SIGNATURE = "signature"
    UNKNOWN_CERTIFICATE = "unknown_certificate"
    UNUSABLE_CERTIFICATE = "unusable_certificate"
    IDENTITY_MISMATCH = "identity_mismatch"
    REPLAY = "replay"
    WRONG_TARGET = "wrong_target"
    OPEN_RETURN = "open_return"
    GPF_MISMATCH = "gpf_mismatch"
    UNAVAILABLE = "unavailable"

    @property
    def accepted(self) -> bool:
        return False


#: What a request was answered with, before the profile turns it into a wire code.
Verdict = ResponseCode | Reason

#: Codes whose published DUIS meaning is not one of ours: never answered, never
#: accepted in an override (a Service User's system acts on their published meaning).
PUBLISHED_UNUSED: MappingProxyType[str, str] = MappingProxyType(
    {
        "E17": "Request not available for local command services",
        "E20": "Unable to communicate with the device",
        "E21": "No response received from the device",
        "E30": "Time-out of a future-dated command",
    }
)

#: This project's choice pending DCC's DUGIDS (docs/response-codes.md).
DEFAULT_CODES: MappingProxyType[Reason, str] = MappingProxyType(
    {
        Reason.MALFORMED: "E46",
        Reason.SCHEMA: "E31",
        Reason.SCHEMA_VERSION: "E49",
        Reason.SIGNATURE: "E40",
        Reason.UNKNOWN_CERTIFICATE: "E41",
        Reason.UNUSABLE_CERTIFICATE: "E42",
        Reason.IDENTITY_MISMATCH: "E43",
        Reason.OPEN_RETURN: "E44",
        Reason.GPF_MISMATCH: "E45",
        Reason.WRONG_TARGET: "E47",
        Reason.REPLAY: "E48",
        Reason.UNAVAILABLE: "E100",
    }
)


@dataclass(frozen=True, slots=True)
class CodeInfo:
    meaning: str
    hint: str
    http_status: int


_C, _R = ResponseCode, Reason
CODE_INFO: MappingProxyType[Verdict, CodeInfo] = MappingProxyType(
    {
        _C.I99: CodeInfo("Acknowledged: the return is recorded", "No action needed.", 200),
        _C.E1: CodeInfo(
            "User ID unknown or invalid",
            "The RequestID originator is not a registered DCC User ID; check the EUI.",
            403,
        ),
        _C.E2: CodeInfo(
            "Role not eligible for this service request",
            "Only the roles of the service's eligibility profile may send 8.14.3/8.14.4 "
            "(IS, GS and RSA under the default profile, secmp0039).",
            403,
        ),
        _C.E3: CodeInfo(
            "User not in a status that allows service requests",
            "The User ID is suspended; contact the DCC Service Desk.",
            403,
        ),
        _C.E4: CodeInfo(
            "User not authorised for this device",
            "A Supplier must be responsible for the hub; an RSA must hold a current "
            "appointment from a responsible Supplier; under the all-ordering-parties "
            "profile another party must have placed the order the hub was delivered against.",
            403,
        ),
        _C.E5: CodeInfo(
            "Device SMI status does not allow this request",
            "Roles other than the Suppliers (an RSA) may return a hub only while its SMI "
            "status is Pending; ask the responsible Supplier to return an installed hub.",
            409,
        ),
        _C.E11: CodeInfo(
            "Device is not of the type this request needs",
            "DeviceID must be the Communications Hub Function (CHF) of the hub.",
            422,
        ),
        _C.E12: CodeInfo(
            "Command variant not allowed for this request",
            "8.14.3/8.14.4 use CommandVariant 8 (DCC only).",
            422,
        ),
        _C.E13: CodeInfo(
            "Request sent to the wrong endpoint",
            "Send 8.14 service requests to the non-device endpoint /api/v1/serviceD.",
            421,
        ),
        _C.E19: CodeInfo(
            "Device does not exist in the inventory",
            "Check the DeviceID against the Smart Metering Inventory.",
            404,
        ),
        _R.MALFORMED: CodeInfo(
            "Malformed request",
            "Send one well-formed UTF-8 XML document as application/xml, without DOCTYPE, "
            "entities, comments or processing instructions, within the size limit.",
            400,
        ),
        _R.SCHEMA: CodeInfo(
            "Request does not conform to the DUIS 5.4 schema",
            "Validate the request against the DUIS 5.4 XSD before sending.",
            400,
        ),
        _R.SCHEMA_VERSION: CodeInfo(
            "schemaVersion not accepted by this service",
            "Set sr:Request schemaVersion to a version this service accepts (the message "
            "names them; 5.4 by default).",
            400,
        ),
        _R.SIGNATURE: CodeInfo(
            "Signature missing, malformed or invalid",
            "Sign the compact document with one enveloped ECDSA-SHA256 signature as the last "
            'child of sr:Request (exclusive C14N SignedInfo, one Reference URI="").',
            401,
        ),
        _R.UNKNOWN_CERTIFICATE: CodeInfo(
            "Signing certificate unknown",
            "KeyInfo X509IssuerSerial must name a certificate held in the SMKI repository.",
            401,
        ),
        _R.UNUSABLE_CERTIFICATE: CodeInfo(
            "Signing certificate not usable for DUIS signing",
            "Use a currently valid DUIS XML-signing certificate (OU 87) on P-256.",
            401,
        ),
        _R.IDENTITY_MISMATCH: CodeInfo(
            "Signing certificate does not belong to the originator",
            "Sign with the certificate whose x500UniqueIdentifier is the RequestID originator.",
            401,
        ),
        _R.REPLAY: CodeInfo(
            "Replayed RequestID counter",
            "Use a counter strictly greater than the last one accepted for this User ID.",
            409,
        ),
        _R.WRONG_TARGET: CodeInfo(
            "Wrong business target",
            "The RequestID target must be the DCC Access Control Broker EUI.",
            422,
        ),
        _R.OPEN_RETURN: CodeInfo(
            "Communications Hub already has an open return",
            "The hub was already notified as returned; look it up before sending again.",
            409,
        ),
        _R.GPF_MISMATCH: CodeInfo(
            "OtherDeviceID does not match the hub's GPF",
            "OtherDeviceID must be the Gas Proxy Function of the same hub.",
            422,
        ),
        _R.UNAVAILABLE: CodeInfo(
            "Service temporarily unavailable; nothing was recorded",
            "Send the same request again later with the same RequestID.",
            503,
        ),
    }
)


def info(verdict: Verdict) -> CodeInfo:
    return CODE_INFO[verdict]


@cache
def duis_response_codes() -> frozenset[str]:
    """The ``sr:ResponseCode`` enumeration of the packaged DUIS 5.4 schema.

    A code outside it would make every answer schema-invalid.
    """
    path = resources.files("hubreturns.wire") / "schemas" / "DUIS_Schema_V5.4.xsd"
    tree = etree.fromstring(path.read_bytes(), etree.XMLParser(resolve_entities=False))
    xs = "{http://www.w3.org/2001/XMLSchema}"
    values = tree.xpath(
        "xs:simpleType[@name='ResponseCode']/xs:restriction/xs:enumeration/@value",
        namespaces={"xs": xs[1:-1]},
    )
    assert isinstance(values, list)
    return frozenset(str(value) for value in values)


#: A service-request-specific code: E, then the service reference's two-digit parts.
_SR_SPECIFIC = re.compile(r"E(\d\d)(\d\d)\d\d")


def _check_refusal_code(reason: Reason, code: str) -> None:
    """Refuse a code a Service User's system would read as something else than a refusal.

    I and W codes say a request was accepted, and another service request's
    own codes carry the meanings DUIS gives them for that request.
    """
    if not code.startswith("E"):
        raise ValueError(
            f"{reason.value} = {code!r}: {code} is not an error code; a refusal needs an "
            "E code (I and W codes tell a Service User the request was accepted)"
        )
    specific = _SR_SPECIFIC.fullmatch(code)
    if specific and specific.groups() != ("08", "14"):
        sr = ".".join(str(int(part)) for part in specific.groups())
        raise ValueError(
            f"{reason.value} = {code!r}: {code} is a code of service request {sr}; only "
            "the common codes and 8.14's own (E0814xx) may answer 8.14.3/8.14.4"
        )


@dataclass(frozen=True, slots=True)
class CodeProfile:
    """Which wire code each ``Reason`` is answered with; checked when built.

    Every reason has an E code from the DUIS 5.4 enumeration, no code serves
    two reasons, and none is a DUIS-defined code, one whose published meaning
    differs or another service request's own. A ``ValueError`` names what is wrong.
    """

    codes: Mapping[Reason, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "codes", MappingProxyType(dict(self.codes)))
        missing = [r.value for r in Reason if r not in self.codes]
        if missing:
            raise ValueError(f"no response code for {missing}")
        enumeration = duis_response_codes()
        seen: dict[str, Reason] = {}
        for reason, code in self.codes.items():
            if code in ResponseCode.__members__:
                raise ValueError(
                    f"{reason.value} = {code!r}: {code} is DUIS-defined "
                    f"({CODE_INFO[ResponseCode(code)].meaning}) and keeps that meaning"
                )
            if code in PUBLISHED_UNUSED:
                raise ValueError(
                    f"{reason.value} = {code!r}: {code} has a published DUIS meaning "
                    f"({PUBLISHED_UNUSED[code]}); choose another code"
                )
            if code not in enumeration:
                raise ValueError(
                    f"{reason.value} = {code!r}: not a code of the DUIS 5.4 sr:ResponseCode "
                    "enumeration; the answer would not be schema-valid"
                )
            _check_refusal_code(reason, code)
            if code in seen:
                raise ValueError(
                    f"{code} is given to both {seen[code].value} and {reason.value}; "
                    "each reason needs its own code"
                )
            seen[code] = reason

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, str]) -> CodeProfile:
        """The defaults with ``overrides`` (``reason value -> code``) applied."""
        unknown = sorted(set(overrides) - {r.value for r in Reason})
        if unknown:
            raise ValueError(
                f"unknown reason(s) {unknown}; known: {sorted(r.value for r in Reason)}"
            )
        codes = dict(DEFAULT_CODES)
        for name, code in overrides.items():
            if not isinstance(code, str):
                raise ValueError(f"{name} must be a response code string such as 'E48'")
            codes[Reason(name)] = code.strip()
        return cls(codes)

    def code(self, verdict: Verdict) -> str:
        """The wire code for ``verdict``: the one translation point."""
        if isinstance(verdict, Reason):
            return self.codes[verdict]
        return verdict.value

    def verdict(self, code: str) -> Verdict | None:
        """What a received wire code means under this profile (None: not one of ours)."""
        if code in ResponseCode.__members__:
            return ResponseCode(code)
        return next((r for r, c in self.codes.items() if c == code), None)

    def explain(self, code: str) -> CodeInfo | None:
        verdict = self.verdict(code)
        return None if verdict is None else CODE_INFO[verdict]

    def rows(self) -> Iterator[tuple[str, Verdict, CodeInfo]]:
        """(code, verdict, info) for every code this service may answer with."""
        for fixed in ResponseCode:
            yield fixed.value, fixed, CODE_INFO[fixed]
        for reason in Reason:
            yield self.codes[reason], reason, CODE_INFO[reason]


DEFAULT_PROFILE = CodeProfile(DEFAULT_CODES)
