"""Typed vocabulary of the returns service: identifiers, roles, statuses, requests.

Every value here is immutable and validated on construction, so an invalid EUI,
counter or enumeration value cannot exist past the edge that read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from functools import cache
from typing import Final

__all__ = [
    "CLIP_LIMIT",
    "COUNTER_MAX",
    "DEFAULT_ACB",
    "FAULT_ONLY_FIELDS",
    "REASON_LIMIT",
    "RETURN_FIELDS",
    "TEXT_LIMITS",
    "Channel",
    "ConnectionMethod",
    "DeviceType",
    "Endpoint",
    "FaultReason",
    "FaultReturnType",
    "FieldProblem",
    "NoFaultReturnType",
    "RequestId",
    "ReturnKind",
    "ReturnRequest",
    "ReturnStatus",
    "Role",
    "SmiStatus",
    "UserStatus",
    "as_utc",
    "clip",
    "eui",
    "eui_from_bytes",
    "is_xs_datetime",
]

#: The DCC's Access Control Broker EUI in the DCC test environment: the BusinessTargetID
#: of every 8.14.3 / 8.14.4 request and the sender of its answer.
DEFAULT_ACB = "90-B3-D5-1F-30-00-00-02"

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


def utcnow() -> datetime:
    """Now, aware and in UTC: the clock the service and its commands read by default."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC, a naive one taken as UTC: how operators' options, forms and
    files write times (the store's ``Moment`` column refuses naive values)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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


class ReturnStatus(StrEnum):
    """Where an accepted return is in its life (``returns.status``); an accepted request
    starts it ``notified`` and logistics' ``lifecycle.TRANSITIONS`` move it on."""

    NOTIFIED = "notified"
    COLLECTED = "collected"
    RECEIVED = "received"
    TESTED = "tested"
    CLOSED = "closed"
    WRITTEN_OFF = "written_off"


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


#: The fields of an 8.14.3 / 8.14.4 body (and ``variant``), in the body's order.
RETURN_FIELDS: Final = (
    "variant",
    "device_id",
    "return_type",
    "other_device_id",
    "connection_method",
    "fault_reason",
    "user_ref_datetime",
    "user_ref_id",
    "incident_reference",
    "additional_information",
)
#: Fields only 8.14.3 CHFFaultReturn has (DUIS 5.4 schema), with how a problem names them.
FAULT_ONLY_FIELDS: Final = {
    "other_device_id": "OtherDeviceID (GPF)",
    "connection_method": "connection method",
    "fault_reason": "fault reason",
}
#: maxLength of the free-text fields (DUIS 5.4 schema: UserRefID, IncidentReference,
#: AdditionalInformation).
TEXT_LIMITS: Final = {"user_ref_id": 25, "incident_reference": 15, "additional_information": 200}

#: The lexical form of xs:dateTime (XML Schema 1.0 part 2, 3.2.7.1), the type of
#: UserRefDateTime in the DUIS 5.4 schema: a ``T``, seconds, an optional offset.
_XS_DATETIME = re.compile(
    r"-?(?P<year>[1-9][0-9]{3,}|0[0-9]{3})-(?P<month>0[1-9]|1[0-2])-(?P<day>0[1-9]|[12][0-9]|3[01])"
    r"T(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?|24:00:00(?:\.0+)?)"
    r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))?"
)
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_xs_datetime(text: str) -> bool:
    """Whether ``text`` is an xs:dateTime as the DUIS schema validates it (whitespace
    collapsed, the day within its month)."""
    found = _XS_DATETIME.fullmatch(text.strip())
    if found is None:
        return False
    year, month, day = (int(found[name]) for name in ("year", "month", "day"))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return day <= _DAYS[month - 1] and (month != 2 or day <= 28 or leap)


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One unusable field value: which field and why (a sentence naming the field)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReturnRequest:
    """The content of a verified 8.14.3 / 8.14.4 request (or a Service Desk entry).

    ``return_type`` is the CHFFaultReturnType or CHFNoFaultReturnType text; the
    fault-only fields are ``None`` for 8.14.4. ``from_fields`` is the one reader
    of a return's field values, for every channel.
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
        if self.return_type not in _types(self.kind).values():
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

    @classmethod
    def from_fields(
        cls,
        fields: Mapping[str, str | None],
        *,
        request_id: RequestId,
        command_variant: int = 8,
        service_reference: str = "8.14",
    ) -> ReturnRequest | list[FieldProblem]:
        """The request from its field values (``RETURN_FIELDS``), or every problem found.

        The one set of field rules, those of the DUIS 5.4 schema, for the DUIS
        reader, the Service Desk form and the client's CSV alike. ``variant``
        may be left out: the return type names it (the two variants' types are
        disjoint). Enumerated values match ignoring case and are stored as the
        schema spells them. Values are taken as given: an edge that trims what
        people type trims before calling, and passes None for an empty cell (a
        free text given empty is kept empty, as DUIS signed it).
        """
        reader = _FieldReader(fields)
        kind = reader.kind()
        device_id = reader.eui("device_id", "Device ID")
        return_type = reader.return_type(kind)
        fault = reader.fault_fields(kind)
        optional = reader.optional_texts()
        if reader.problems or device_id is None or kind is None or return_type is None:
            return reader.problems
        return cls(
            request_id=request_id,
            command_variant=command_variant,
            service_reference=service_reference,
            kind=kind,
            device_id=device_id,
            return_type=return_type,
            user_ref_datetime=optional["user_ref_datetime"],
            user_ref_id=optional["user_ref_id"],
            incident_reference=optional["incident_reference"],
            additional_information=optional["additional_information"],
            other_device_id=fault.other_device_id,
            connection_method=fault.connection_method,
            fault_reason=fault.fault_reason,
        )


@dataclass(frozen=True, slots=True)
class _FaultFields:
    other_device_id: str | None = None
    connection_method: ConnectionMethod | None = None
    fault_reason: FaultReason | None = None


class _FieldReader:
    """``ReturnRequest.from_fields``'s rules, one method per field; problems collect."""

    def __init__(self, fields: Mapping[str, str | None]) -> None:
        #: None for an absent field; the free texts keep an empty value as given.
        self.given = {name: fields.get(name) for name in RETURN_FIELDS}
        self.values = {name: value or "" for name, value in self.given.items()}
        self.problems = [
            FieldProblem(name, f"{name} is not a field of 8.14.3 or 8.14.4")
            for name in sorted(set(fields) - set(RETURN_FIELDS))
        ]

    def problem(self, field: str, message: str) -> None:
        self.problems.append(FieldProblem(field, message))

    def kind(self) -> ReturnKind | None:
        """The variant given, else the one the return type belongs to; they must agree."""
        variant = self.values["variant"]
        if variant:
            try:
                return ReturnKind.from_variant(variant)
            except ValueError:
                self.problem("variant", f"{clip(variant)!r} is not 8.14.3 or 8.14.4.")
                return None
        for kind in ReturnKind:
            if _choose(self.values["return_type"], _types(kind)) is not None:
                return kind
        return None

    def eui(self, name: str, label: str) -> str | None:
        value = self.values[name]
        if not value:
            self.problem(name, f"{label} is required.")
            return None
        try:
            return eui(value)
        except ValueError:
            self.problem(
                name,
                f"{label} {clip(value)!r} is not an EUI-64; write it as 00-DB-12-34-56-78-90-A2.",
            )
            return None

    def return_type(self, kind: ReturnKind | None) -> str | None:
        value = self.values["return_type"]
        if not value:
            self.problem("return_type", "Return type is required.")
            return None
        if kind is None:
            if not self.values["variant"]:
                self.problem(
                    "return_type", f"{clip(value)!r} is not an 8.14.3 or 8.14.4 return type."
                )
            return None
        chosen = _choose(value, _types(kind))
        if chosen is None:
            self.problem(
                "return_type",
                f"{clip(value)!r} is not an {kind.variant} return type; "
                f"one of: {' | '.join(_types(kind).values())}.",
            )
        return chosen

    def fault_fields(self, kind: ReturnKind | None) -> _FaultFields:
        """8.14.3 needs all three fault fields; 8.14.4 must have none of them."""
        if kind is ReturnKind.NO_FAULT:
            for name, label in FAULT_ONLY_FIELDS.items():
                if self.values[name]:
                    self.problem(name, f"must be empty for 8.14.4 ({label} is an 8.14.3 field).")
            return _FaultFields()
        if kind is None:
            return _FaultFields()
        other = self.eui("other_device_id", "OtherDeviceID (GPF)")
        method = self.choice("connection_method", ConnectionMethod)
        reason = self.choice("fault_reason", FaultReason)
        return _FaultFields(
            other_device_id=other,
            connection_method=ConnectionMethod(method) if method else None,
            fault_reason=FaultReason(reason) if reason else None,
        )

    def choice(self, name: str, enum: type[StrEnum]) -> str | None:
        label = FAULT_ONLY_FIELDS[name]
        value = self.values[name]
        options = _options(enum)
        if not value:
            self.problem(name, f"The {label} is required for an 8.14.3 fault return.")
            return None
        chosen = _choose(value, options)
        if chosen is None:
            self.problem(
                name, f"{clip(value)!r} is not a {label}; one of: {' | '.join(options.values())}."
            )
        return chosen

    def optional_texts(self) -> dict[str, str | None]:
        """UserRefDateTime (xs:dateTime) and the length-limited free texts."""
        moment = self.values["user_ref_datetime"]
        if moment and not is_xs_datetime(moment):
            self.problem(
                "user_ref_datetime",
                f"{clip(moment)!r} is not a date and time as DUIS writes it (xs:dateTime, "
                "e.g. 2026-11-23T09:30:00Z).",
            )
        texts: dict[str, str | None] = {"user_ref_datetime": moment.strip() or None}
        for name, limit in TEXT_LIMITS.items():
            value = self.values[name]
            if len(value) > limit:
                self.problem(name, f"At most {limit} characters (DUIS 5.4); this has {len(value)}.")
            texts[name] = self.given[name]
        return texts


@cache
def _options(enum: type[StrEnum]) -> dict[str, str]:
    """An enumeration's values by their case-folded spelling, made once: every request
    reads three of them, and walking an Enum's members costs more than the rest."""
    return {member.value.casefold(): member.value for member in enum}


def _types(kind: ReturnKind) -> dict[str, str]:
    return _options(FaultReturnType if kind is ReturnKind.FAULT else NoFaultReturnType)


def _choose(value: str, options: Mapping[str, str]) -> str | None:
    """The option equal to ``value`` ignoring case, as the schema spells it."""
    return options.get(value.casefold())
