"""DUIS response codes this service answers with: meaning, hint and HTTP status.

This table is the single source for the README's code table (``hubreturns codes``
prints it) and for the client's explanations. The codes in the second block are
this project's choices for failures DUIS leaves to the DCC; every one of them is
in the DUIS 5.4 ``sr:ResponseCode`` enumeration, so responses stay schema-valid.
Once published they do not change meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = ["CODE_INFO", "CodeInfo", "ResponseCode", "info"]


class ResponseCode(StrEnum):
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
    # hubreturns' choices (documented and stable):
    E20 = "E20"
    E21 = "E21"
    E30 = "E30"
    E31 = "E31"
    E40 = "E40"
    E41 = "E41"
    E42 = "E42"
    E43 = "E43"
    E44 = "E44"
    E45 = "E45"
    E100 = "E100"

    @property
    def accepted(self) -> bool:
        return self is ResponseCode.I99


@dataclass(frozen=True, slots=True)
class CodeInfo:
    meaning: str
    hint: str
    http_status: int
    chosen_here: bool = False


_C = ResponseCode
CODE_INFO: MappingProxyType[ResponseCode, CodeInfo] = MappingProxyType(
    {
        _C.I99: CodeInfo("Acknowledged: the return is recorded", "No action needed.", 200),
        _C.E1: CodeInfo(
            "User ID unknown or invalid",
            "The RequestID originator is not a registered DCC User ID; check the EUI.",
            403,
        ),
        _C.E2: CodeInfo(
            "Role not eligible for this service request",
            "8.14.3/8.14.4 may be sent by IS, GS or RSA User IDs only.",
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
            "appointment from a responsible Supplier.",
            403,
        ),
        _C.E5: CodeInfo(
            "Device SMI status does not allow this request",
            "An RSA may return a hub only while its SMI status is Pending; ask the "
            "responsible Supplier to return an installed hub.",
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
        _C.E20: CodeInfo(
            "Wrong business target",
            "The RequestID target must be the DCC Access Control Broker EUI.",
            422,
            True,
        ),
        _C.E21: CodeInfo(
            "Replayed RequestID counter",
            "Use a counter strictly greater than the last one accepted for this User ID.",
            409,
            True,
        ),
        _C.E30: CodeInfo(
            "Malformed request",
            "Send one well-formed UTF-8 XML document as application/xml, without DOCTYPE, "
            "entities, comments or processing instructions, within the size limit.",
            400,
            True,
        ),
        _C.E31: CodeInfo(
            "Request does not conform to the DUIS 5.4 schema",
            "Validate the request against the DUIS 5.4 XSD before sending.",
            400,
            True,
        ),
        _C.E40: CodeInfo(
            "Signature missing, malformed or invalid",
            "Sign the compact document with one enveloped ECDSA-SHA256 signature as the last "
            'child of sr:Request (exclusive C14N SignedInfo, one Reference URI="").',
            401,
            True,
        ),
        _C.E41: CodeInfo(
            "Signing certificate unknown",
            "KeyInfo X509IssuerSerial must name a certificate held in the SMKI repository.",
            401,
            True,
        ),
        _C.E42: CodeInfo(
            "Signing certificate not usable for DUIS signing",
            "Use a currently valid DUIS XML-signing certificate (OU 87) on P-256.",
            401,
            True,
        ),
        _C.E43: CodeInfo(
            "Signing certificate does not belong to the originator",
            "Sign with the certificate whose x500UniqueIdentifier is the RequestID originator.",
            401,
            True,
        ),
        _C.E44: CodeInfo(
            "Communications Hub already has an open return",
            "The hub was already notified as returned; look it up before sending again.",
            409,
            True,
        ),
        _C.E45: CodeInfo(
            "OtherDeviceID does not match the hub's GPF",
            "OtherDeviceID must be the Gas Proxy Function of the same hub.",
            422,
            True,
        ),
        _C.E100: CodeInfo(
            "Service temporarily unavailable; nothing was recorded",
            "Send the same request again later with the same RequestID.",
            503,
            True,
        ),
    }
)


def info(code: ResponseCode) -> CodeInfo:
    return CODE_INFO[code]
