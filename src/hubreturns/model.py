"""Typed vocabulary of the returns service: identifiers, roles, statuses, requests.

Every value here is immutable and validated on construction, so an invalid EUI,
counter or enumeration value cannot exist past the edge that read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, StrEnum

__all__ = [
    "CLIP_LIMIT",
    "COUNTER_MAX",
    "REASON_LIMIT",
    "Channel",
    "ConnectionMethod",
    "DeviceType",
    "Endpoint",
    "FaultReason",
    "FaultReturnType",
    "NoFaultReturnType",
    "RequestId",
    "ReturnKind",
    "ReturnRequest",
    "Role",
    "SmiStatus",
    "UserStatus",
    "clip",
    "eui",
    "eui_from_bytes",
]

#: RequestID counters are unsigned 64-bit (DUIS RequestIDType pattern).
COUNTER_MAX = 2**64 - 1

#: Characters of a value from an unverified request that logs and audit rows keep.
CLIP_LIMIT = 120
#: Characters of a reason that logs and audit rows keep (clipped once, where the
#: request's outcome is recorded): a backstop, since the values a reason quotes
#: from the request are clipped to ``CLIP_LIMIT`` where they are quoted.
REASON_LIMIT = 500

_EUI_RE = re.compile(r"[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){7}")
_COUNTER_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clip(value: str, limit: int = CLIP_LIMIT) -> str:
    """``value`` cut to ``limit`` characters, marked ``…[cut N chars]`` when cut.

    Used wherever text from a request that was not (or not yet) verified is
    copied into a reason, a log line or an audit row: a sender must not be
    able to make us store or log 60 kB of its own text per request, nor put
    terminal control sequences in front of an operator, so control characters
    are shown escaped (``\\x1b``). Nothing is cut silently: the mark says how
    much was dropped.
    """
    if len(value) <= limit and value.isprintable():  # the common case, at C speed
        return value
    kept = value if len(value) <= limit else value[:limit]
    shown = _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", kept)
    if len(value) <= limit:
        return shown
    return f"{shown}…[cut {len(value) - limit} chars]"


def eui(text: str) -> str:
    """Normalise an EUI-64 written ``XX-XX-XX-XX-XX-XX-XX-XX`` to upper case.

    Raises ``ValueError`` with the offending text; DUIS compares EUIs
    case-insensitively, we store one spelling.
    """
    value = text.strip()
    if not _EUI_RE.fullmatch(value):
        raise ValueError(f"'{clip(text)}' is not an EUI-64 written XX-XX-XX-XX-XX-XX-XX-XX")
    return value.upper()


def eui_from_bytes(raw: bytes) -> str:
    """The 8 bytes of an EUI-64 in the DUIS spelling."""
    if len(raw) != 8:
        raise ValueError(f"an EUI-64 has 8 bytes, got {len(raw)}")
    return "-".join(f"{b:02X}" for b in raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestId:
    """``ORIGINATOR:TARGET:COUNTER`` (DUIS 3.4.1); the counter is 0 … 2**64-1."""

    originator: str
    target: str
    counter: int

    def __post_init__(self) -> None:
        if not 0 <= self.counter <= COUNTER_MAX:
            raise ValueError(f"counter {self.counter} is outside 0 … 2^64-1")

    @classmethod
    def parse(cls, text: str) -> RequestId:
        parts = text.strip().split(":")
        if len(parts) != 3 or not _COUNTER_RE.fullmatch(parts[2]):
            raise ValueError(f"'{clip(text)}' is not ORIGINATOR:TARGET:COUNTER")
        return cls(originator=eui(parts[0]), target=eui(parts[1]), counter=int(parts[2]))

    def __str__(self) -> str:
        return f"{self.originator}:{self.target}:{self.counter}"


class Role(StrEnum):
    """DCC user roles (one User ID per organisation and role)."""

    IS = "IS"  # import supplier
    GS = "GS"  # gas supplier
    ES = "ES"  # export supplier
    ED = "ED"  # electricity distributor
    GT = "GT"  # gas transporter
    RSA = "RSA"  # registered supplier agent (SECMP0039)
    OU = "OU"  # other user

    @property
    def is_supplier(self) -> bool:
        return self in (Role.IS, Role.GS)


class UserStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class SmiStatus(StrEnum):
    PENDING = "Pending"
    WHITELISTED = "Whitelisted"
    INSTALLED_NOT_COMMISSIONED = "InstalledNotCommissioned"
    COMMISSIONED = "Commissioned"
    DECOMMISSIONED = "Decommissioned"
    WITHDRAWN = "Withdrawn"
    SUSPENDED = "Suspended"
    RECOVERY = "Recovery"
    RECOVERED = "Recovered"


class DeviceType(StrEnum):
    CHF = "CHF"
    GPF = "GPF"
    ESME = "ESME"
    GSME = "GSME"
    PPMID = "PPMID"
    HCALCS = "HCALCS"
    IHD = "IHD"


class Endpoint(StrEnum):
    """The three DUIS web service endpoints; 8.14 belongs to the non-device one."""

    NON_DEVICE = "serviceD"
    SEND_COMMAND = "serviceS"
    TRANSFORM = "serviceT"


class Channel(StrEnum):
    """How a return reached us: DUIS over HTTP or the Service Desk."""

    DUIS = "duis"
    SERVICE_DESK = "servicedesk"


class ReturnKind(Enum):
    """The two service request variants this service handles."""

    FAULT = ("8.14.3", "CHFFaultReturn")
    NO_FAULT = ("8.14.4", "CHFNoFaultReturn")

    def __init__(self, variant: str, body_element: str) -> None:
        self.variant = variant
        self.body_element = body_element

    @classmethod
    def from_variant(cls, variant: str) -> ReturnKind:
        for kind in cls:
            if kind.variant == variant:
                return kind
        raise ValueError(f"{variant!r} is not 8.14.3 or 8.14.4")


class FaultReturnType(StrEnum):
    PRE_INSTALL = "Fault identified prior to installation"
    POST_INSTALL = "Fault identified post installation"


class NoFaultReturnType(StrEnum):
    GENERAL = "No Fault Return (general)"
    NON_DOM_OPT_OUT = "No Fault Return (non-dom opt out)"
    DUAL_SUPPLIER_HAN = "No Fault Return (dual supplier HAN variant replacement)"
    SM_WAN_VARIANT = "No Fault Return (SM WAN variant replacement requested by DCC)"
    LOST_OR_STOLEN = "Lost or Stolen Hub"


class ConnectionMethod(StrEnum):
    HOT_SHOE = "Hot-shoe"
    CRADLE = "Cradle"
    ESME = "ESME"


class FaultReason(StrEnum):
    DAMAGED_CASE = "Damaged case"
    DAMAGED_CONNECTOR = "Damaged Connector"
    ILLEGAL_INTERFERENCE = "Illegal interference or missing seals"
    ENVIRONMENTAL = "Environmental conditions exceeded"
    SM_WAN = "SM WAN Fault"
    SMHAN = "SMHAN Interface Fault"
    LED = "LED Fault"
    AERIAL = "Aerial fault"
    MANUFACTURING = "Manufacturing defect"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReturnRequest:
    """The content of a verified 8.14.3 / 8.14.4 request (or a Service Desk entry).

    ``return_type`` is the CHFFaultReturnType or CHFNoFaultReturnType text; the
    fault-only fields are ``None`` for 8.14.4.
    """

    request_id: RequestId
    command_variant: int
    service_reference: str
    kind: ReturnKind
    device_id: str
    return_type: str
    user_ref_datetime: str | None = None
    user_ref_id: str | None = None
    incident_reference: str | None = None
    additional_information: str | None = None
    other_device_id: str | None = None
    connection_method: ConnectionMethod | None = None
    fault_reason: FaultReason | None = None

    def __post_init__(self) -> None:
        allowed = FaultReturnType if self.kind is ReturnKind.FAULT else NoFaultReturnType
        if self.return_type not in {m.value for m in allowed}:
            raise ValueError(f"'{clip(self.return_type)}' is not a {self.kind.body_element} type")
        if self.kind is ReturnKind.FAULT and (
            self.other_device_id is None
            or self.connection_method is None
            or self.fault_reason is None
        ):
            raise ValueError("8.14.3 needs OtherDeviceID, CHFConnectionMethod and CHFFaultReason")

    @property
    def originator(self) -> str:
        return self.request_id.originator
