"""Who may return a Communications Hub: the SECMP0039 decision, as a table.

Typed facts go in, a ``Decision`` comes out; nothing here touches a database
or the network. ``RULES`` is read top to bottom and the first rule whose check
returns a reason decides the verdict (a DUIS-defined code, or a ``Reason``
whose wire code the ``CodeProfile`` gives). Each row names the text it implements, so
it can be matched against DUIS and the SEC line by line. Both channels (DUIS
and the Service Desk) decide through ``decide``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hubreturns.codes import Reason, ResponseCode, Verdict
from hubreturns.model import (
    DeviceType,
    Endpoint,
    ReturnKind,
    ReturnRequest,
    Role,
    SmiStatus,
    UserStatus,
)

__all__ = [
    "ELIGIBLE_ROLES",
    "RULES",
    "Decision",
    "DeviceFacts",
    "Facts",
    "Rule",
    "UserFacts",
    "decide",
]

#: DUIS 8.14.3/8.14.4 eligible User roles; RSA added by SECMP0039.
ELIGIBLE_ROLES = frozenset({Role.IS, Role.GS, Role.RSA})


@dataclass(frozen=True, slots=True, kw_only=True)
class UserFacts:
    user_id: str
    role: Role
    status: UserStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceFacts:
    """The latest Device Inventory entry for the DeviceID of the request."""

    device_id: str
    device_type: DeviceType
    smi_status: SmiStatus
    responsible_suppliers: frozenset[str]
    gpf_id: str | None
    has_open_return: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """Everything the decision depends on, read in the request's transaction.

    ``appointed_by`` holds the Suppliers whose appointment of the sending user
    (as their RSA) is valid now; it is empty for other roles.
    """

    request: ReturnRequest
    endpoint: Endpoint
    access_control_broker: str
    user: UserFacts | None
    last_counter: int | None
    device: DeviceFacts | None
    appointed_by: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    code: Verdict
    reason: str
    #: The Supplier the return is made for: the sender itself, or the
    #: responsible Supplier that appointed the RSA. ``None`` when refused.
    on_behalf_of: str | None = None

    @property
    def accepted(self) -> bool:
        return self.code.accepted


Check = Callable[[Facts], str | None]


@dataclass(frozen=True, slots=True)
class Rule:
    code: Verdict
    name: str
    source: str
    check: Check


def _acting_suppliers(facts: Facts) -> frozenset[str]:
    """Responsible Suppliers the sender may act for on this hub."""
    assert facts.user is not None and facts.device is not None
    if facts.user.role.is_supplier:
        return facts.device.responsible_suppliers & {facts.user.user_id}
    return facts.device.responsible_suppliers & facts.appointed_by


def _target(f: Facts) -> str | None:
    if f.request.request_id.target != f.access_control_broker:
        return (
            f"business target {f.request.request_id.target} is not the DCC Access Control "
            f"Broker {f.access_control_broker}"
        )
    return None


def _known_user(f: Facts) -> str | None:
    return None if f.user else f"{f.request.originator} is not a registered User ID"


def _active_user(f: Facts) -> str | None:
    assert f.user is not None
    if f.user.status is not UserStatus.ACTIVE:
        return f"User ID {f.user.user_id} is {f.user.status.value}"
    return None


def _eligible_role(f: Facts) -> str | None:
    assert f.user is not None
    if f.user.role not in ELIGIBLE_ROLES:
        return f"role {f.user.role.value} may not send {f.request.kind.variant}"
    return None


def _fresh_counter(f: Facts) -> str | None:
    counter = f.request.request_id.counter
    if f.last_counter is not None and counter <= f.last_counter:
        return f"counter {counter} is not above the last accepted counter {f.last_counter}"
    return None


def _command_variant(f: Facts) -> str | None:
    if f.request.command_variant != 8:
        return f"CommandVariant {f.request.command_variant}; 8.14 requests use 8"
    return None


def _endpoint(f: Facts) -> str | None:
    if f.endpoint is not Endpoint.NON_DEVICE:
        return f"8.14 was sent to {f.endpoint.value}, not the non-device endpoint serviceD"
    return None


def _device_known(f: Facts) -> str | None:
    return None if f.device else f"device {f.request.device_id} is not in the inventory"


def _device_is_hub(f: Facts) -> str | None:
    assert f.device is not None
    if f.device.device_type is not DeviceType.CHF:
        return f"device {f.device.device_id} is a {f.device.device_type.value}, not a CHF"
    return None


def _authorised(f: Facts) -> str | None:
    assert f.user is not None and f.device is not None
    if _acting_suppliers(f):
        return None
    if f.user.role.is_supplier:
        return f"{f.user.user_id} is not a responsible Supplier for {f.device.device_id}"
    return (
        f"RSA {f.user.user_id} holds no current appointment from a Supplier responsible "
        f"for {f.device.device_id}"
    )


def _rsa_pending_only(f: Facts) -> str | None:
    assert f.user is not None and f.device is not None
    if f.user.role is Role.RSA and f.device.smi_status is not SmiStatus.PENDING:
        return (
            f"an RSA may return a hub only while it is Pending; {f.device.device_id} is "
            f"{f.device.smi_status.value}"
        )
    return None


def _gpf_matches(f: Facts) -> str | None:
    assert f.device is not None
    other = f.request.other_device_id
    if f.request.kind is ReturnKind.FAULT and f.device.gpf_id and other != f.device.gpf_id:
        return f"OtherDeviceID {other} is not the hub's GPF {f.device.gpf_id}"
    return None


def _no_open_return(f: Facts) -> str | None:
    assert f.device is not None
    if f.device.has_open_return:
        return f"hub {f.device.device_id} already has an open return"
    return None


_C, _R = ResponseCode, Reason
#: First failing row decides. (verdict, name, where the rule comes from, check)
RULES: tuple[Rule, ...] = (
    Rule(_R.WRONG_TARGET, "business target", "DUIS 3.4.1: target of 8.14 is the DCC ACB", _target),
    Rule(_C.E1, "known user", "DUIS 3.5: originator is a registered User ID", _known_user),
    Rule(_C.E3, "active user", "DUIS 3.5: User ID status allows requests", _active_user),
    Rule(_C.E2, "eligible role", "DUIS 8.14.3/8.14.4 + SECMP0039: IS, GS, RSA", _eligible_role),
    Rule(_R.REPLAY, "fresh counter", "DUIS 3.4.1: counter strictly increases", _fresh_counter),
    Rule(_C.E12, "command variant", "DUIS 8.14: CommandVariant 8 (DCC only)", _command_variant),
    Rule(_C.E13, "endpoint", "DUIS 8.14: non-device endpoint", _endpoint),
    Rule(_C.E19, "device known", "DUIS 3.5: DeviceID in Smart Metering Inventory", _device_known),
    Rule(_C.E11, "device is CHF", "DUIS 8.14.3/8.14.4: DeviceID is a CHF", _device_is_hub),
    Rule(
        _C.E4,
        "authorised for hub",
        "SEC F5 / SECMP0039: responsible Supplier, or RSA it has confirmed",
        _authorised,
    ),
    Rule(
        _C.E5,
        "RSA: hub Pending",
        "SECMP0039: RSA only while SMI status is Pending (latest inventory)",
        _rsa_pending_only,
    ),
    Rule(
        _R.GPF_MISMATCH, "GPF matches", "DUIS 8.14.3: OtherDeviceID is the hub's GPF", _gpf_matches
    ),
    Rule(_R.OPEN_RETURN, "no open return", "hubreturns: one open return per hub", _no_open_return),
)


def decide(facts: Facts) -> Decision:
    """Apply ``RULES`` in order; the first failing rule's verdict is the answer."""
    for rule in RULES:
        reason = rule.check(facts)
        if reason is not None:
            return Decision(rule.code, reason)
    acting = sorted(_acting_suppliers(facts))
    return Decision(ResponseCode.I99, "return accepted", acting[0])
