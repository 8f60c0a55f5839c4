"""Who may return a Communications Hub: the SECMP0039 decision, as a table.

Typed facts go in, a ``Decision`` comes out; nothing here touches a database
or the network. ``RULES`` is read top to bottom and the first rule whose check
returns a reason decides the verdict (a DUIS-defined code, or a ``Reason``
whose wire code the ``CodeProfile`` gives). Each row names the text it implements, so
it can be matched against DUIS and the SEC line by line. Both channels (DUIS
and the Service Desk) decide through ``decide``.

Who may send 8.14.3/8.14.4 is not a constant: SECMP0039 grants the RSA role
through DCC Data Management *configuration* (the role to service request
matrix), so the matrix is an ``EligibilityProfile`` chosen by name in the
settings. ``PROFILES`` holds the known ones; every profile keeps the Suppliers'
behaviour and makes every other role follow business requirement 2 (only while
the hub is Pending, judged on the latest inventory).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

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
    "APPOINTMENT_RULES",
    "DEFAULT_PROFILE",
    "ORDER_RULES",
    "PROFILES",
    "RULES",
    "SECMP0039",
    "AppointmentFacts",
    "AppointmentRule",
    "Authorisation",
    "Decision",
    "DeviceFacts",
    "EligibilityProfile",
    "Facts",
    "OrderFacts",
    "OrderRefusal",
    "OrderRule",
    "RoleGrant",
    "Rule",
    "UserFacts",
    "appointing_suppliers",
    "appointment_holds",
    "check_order",
    "decide",
    "eligibility_profile",
]


class Authorisation(enum.Enum):
    """How a sender is tied to the hub it returns (the E4 check)."""

    #: The sender is one of the hub's responsible Suppliers (SEC F5).
    RESPONSIBLE_SUPPLIER = "responsible Supplier for the hub"
    #: A responsible Supplier has confirmed (appointed) the sender as its RSA (SECMP0039).
    APPOINTED = "appointed by a responsible Supplier"
    #: The sender placed the order the hub was delivered against (logistics records).
    ORDERED = "placed the order the hub was delivered against"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleGrant:
    """One row of the role to 8.14.3/8.14.4 matrix: a role that may send the requests."""

    role: Role
    #: Any one of these ties the sender to the hub; checked in this order.
    authorisations: tuple[Authorisation, ...]
    #: Business requirement 2: only prior to installation (SMI status Pending), else E5.
    pending_only: bool

    def __post_init__(self) -> None:
        if not self.authorisations:
            raise ValueError(f"{self.role} needs at least one kind of authorisation")
        supplier = self.authorisations == (Authorisation.RESPONSIBLE_SUPPLIER,)
        if self.role.is_supplier != supplier or self.pending_only == self.role.is_supplier:
            # Suppliers keep their pre-SECMP0039 behaviour in every profile; every
            # other role returns only Pending hubs (SECMP0039 business requirement 2).
            raise ValueError(
                f"{self.role}: Suppliers are authorised as the responsible Supplier and may "
                "return hubs in any status; every other role only Pending hubs"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class EligibilityProfile:
    """A named role to 8.14.3/8.14.4 matrix, as DCC Data Management configures it."""

    name: str
    summary: str
    grants: tuple[RoleGrant, ...]

    def __post_init__(self) -> None:
        roles = [g.role for g in self.grants]
        if len(set(roles)) != len(roles):
            raise ValueError(f"profile {self.name} lists a role twice")
        if not {Role.IS, Role.GS} <= set(roles):
            raise ValueError(f"profile {self.name} must keep the Suppliers (IS, GS)")

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset(g.role for g in self.grants)

    def grant(self, role: Role) -> RoleGrant | None:
        """The role's row, or None: the role may not send 8.14.3/8.14.4 (E2)."""
        for g in self.grants:
            if g.role is role:
                return g
        return None


_A = Authorisation
_SUPPLIERS = (
    RoleGrant(role=Role.IS, authorisations=(_A.RESPONSIBLE_SUPPLIER,), pending_only=False),
    RoleGrant(role=Role.GS, authorisations=(_A.RESPONSIBLE_SUPPLIER,), pending_only=False),
)
_RSA = RoleGrant(role=Role.RSA, authorisations=(_A.APPOINTED,), pending_only=True)

#: The matrix in force after SECMP0039 (the default).
SECMP0039 = EligibilityProfile(
    name="secmp0039",
    summary="SECMP0039 as approved: Suppliers, and RSAs for Pending hubs",
    grants=(*_SUPPLIERS, _RSA),
)
PROFILES: Mapping[str, EligibilityProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            EligibilityProfile(
                name="pre-secmp0039",
                summary="before SECMP0039: Suppliers only (regression tests of the old behaviour)",
                grants=_SUPPLIERS,
            ),
            SECMP0039,
            EligibilityProfile(
                name="all-ordering-parties",
                summary="SECMP0039 business requirement 1 as first proposed: also any party "
                "that ordered the hub, for hubs delivered against its own orders",
                grants=(
                    *_SUPPLIERS,
                    RoleGrant(
                        role=Role.RSA,
                        authorisations=(_A.APPOINTED, _A.ORDERED),
                        pending_only=True,
                    ),
                    *(
                        RoleGrant(role=role, authorisations=(_A.ORDERED,), pending_only=True)
                        for role in (Role.ES, Role.ED, Role.GT, Role.OU)
                    ),
                ),
            ),
        )
    }
)
DEFAULT_PROFILE = SECMP0039.name


def eligibility_profile(name: str) -> EligibilityProfile:
    """The profile called ``name``; ``ValueError`` naming the known ones otherwise."""
    found = PROFILES.get(name)
    if found is None:
        raise ValueError(f"unknown eligibility profile {name!r}; known: {', '.join(PROFILES)}")
    return found


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
    (as their RSA) is valid now; ``ordered_for`` the Suppliers whose order,
    placed by the sending user, the hub was delivered against. Each is read
    only when ``eligibility`` authorises the sender's role that way, and is
    empty otherwise.
    """

    request: ReturnRequest
    endpoint: Endpoint
    access_control_broker: str
    user: UserFacts | None
    last_counter: int | None
    device: DeviceFacts | None
    appointed_by: frozenset[str] = frozenset()
    ordered_for: frozenset[str] = frozenset()
    eligibility: EligibilityProfile = SECMP0039


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


def _grant(f: Facts) -> RoleGrant:
    assert f.user is not None
    grant = f.eligibility.grant(f.user.role)
    assert grant is not None, "checked by the eligible-role row"
    return grant


def _acting_suppliers(facts: Facts) -> frozenset[str]:
    """The Suppliers the sender may act for on this hub, by the role's authorisations."""
    assert facts.user is not None and facts.device is not None
    responsible = facts.device.responsible_suppliers
    by_kind = {
        Authorisation.RESPONSIBLE_SUPPLIER: responsible & {facts.user.user_id},
        Authorisation.APPOINTED: responsible & facts.appointed_by,
        Authorisation.ORDERED: facts.ordered_for,
    }
    acting: frozenset[str] = frozenset()
    for kind in _grant(facts).authorisations:
        acting |= by_kind[kind]
    return acting


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
    if f.eligibility.grant(f.user.role) is None:
        return (
            f"role {f.user.role.value} may not send {f.request.kind.variant} "
            f"(eligibility profile {f.eligibility.name})"
        )
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
    kinds = _grant(f).authorisations
    if kinds == (Authorisation.RESPONSIBLE_SUPPLIER,):
        return f"{f.user.user_id} is not a responsible Supplier for {f.device.device_id}"
    if kinds == (Authorisation.APPOINTED,):
        return (
            f"RSA {f.user.user_id} holds no current appointment from a Supplier responsible "
            f"for {f.device.device_id}"
        )
    return (
        f"{f.user.role.value} {f.user.user_id} is not authorised for {f.device.device_id}: "
        f"needs to be {' or '.join(kind.value for kind in kinds)}"
    )


def _pending_only(f: Facts) -> str | None:
    assert f.user is not None and f.device is not None
    if _grant(f).pending_only and f.device.smi_status is not SmiStatus.PENDING:
        role = f.user.role.value
        article = "a" if role == Role.GT else "an"
        return (
            f"{article} {role} may return a hub only while it is Pending; "
            f"{f.device.device_id} is {f.device.smi_status.value}"
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
    Rule(
        _C.E2,
        "eligible role",
        "DUIS 8.14.3/8.14.4 + SECMP0039: the eligibility profile's roles",
        _eligible_role,
    ),
    Rule(_R.REPLAY, "fresh counter", "DUIS 3.4.1: counter strictly increases", _fresh_counter),
    Rule(_C.E12, "command variant", "DUIS 8.14: CommandVariant 8 (DCC only)", _command_variant),
    Rule(_C.E13, "endpoint", "DUIS 8.14: non-device endpoint", _endpoint),
    Rule(_C.E19, "device known", "DUIS 3.5: DeviceID in Smart Metering Inventory", _device_known),
    Rule(_C.E11, "device is CHF", "DUIS 8.14.3/8.14.4: DeviceID is a CHF", _device_is_hub),
    Rule(
        _C.E4,
        "authorised for hub",
        "SEC F5 / SECMP0039: as the profile says (responsible Supplier, its RSA, orderer)",
        _authorised,
    ),
    Rule(
        _C.E5,
        "non-Supplier: hub Pending",
        "SECMP0039 BR2: roles beyond the Suppliers only while Pending (latest inventory)",
        _pending_only,
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


# -- appointments: which Suppliers an RSA acts for (feeds E4) --------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AppointmentFacts:
    """One stored appointment of an RSA, with its appointing Supplier's registry entry."""

    supplier_user_id: str
    supplier_role: Role | None
    supplier_status: UserStatus | None
    valid_from: datetime
    valid_to: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class AppointmentRule:
    code: Verdict
    name: str
    source: str
    holds: Callable[[AppointmentFacts, datetime], bool]


#: An appointment counts at ``now`` only if every row holds; else the RSA is not
#: authorised through it (E4, ``_authorised`` above).
APPOINTMENT_RULES: tuple[AppointmentRule, ...] = (
    AppointmentRule(
        _C.E4,
        "not revoked",
        "SECMP0039: a Supplier may withdraw its confirmation of an RSA",
        lambda a, now: a.revoked_at is None,
    ),
    AppointmentRule(
        _C.E4,
        "started",
        "SECMP0039: the confirmation holds from its start",
        lambda a, now: a.valid_from <= now,
    ),
    AppointmentRule(
        _C.E4,
        "not ended",
        "SECMP0039: the confirmation holds until its end, if it has one",
        lambda a, now: a.valid_to is None or now < a.valid_to,
    ),
    AppointmentRule(
        _C.E4,
        "appointing Supplier active",
        "DUIS 3.5 / SEC: a suspended User ID cannot act, nor appoint",
        lambda a, now: a.supplier_status is UserStatus.ACTIVE,
    ),
    AppointmentRule(
        _C.E4,
        "appointing party is a Supplier",
        "SECMP0039: an RSA acts for an Import or Gas Supplier (IS, GS)",
        lambda a, now: a.supplier_role is not None and a.supplier_role.is_supplier,
    ),
)


def appointment_holds(appointment: AppointmentFacts, now: datetime) -> bool:
    """Whether every ``APPOINTMENT_RULES`` row holds for the appointment at ``now``."""
    return all(rule.holds(appointment, now) for rule in APPOINTMENT_RULES)


def appointing_suppliers(appointments: Iterable[AppointmentFacts], now: datetime) -> frozenset[str]:
    """The Suppliers whose appointment holds at ``now``."""
    return frozenset(a.supplier_user_id for a in appointments if appointment_holds(a, now))


# -- orders: who may order hubs for a Supplier (logistics) ------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderFacts:
    """An order's parties as the registry holds them, and the placer's appointments."""

    supplier_id: str
    supplier: UserFacts | None
    placed_by: str
    placer: UserFacts | None
    #: Suppliers appointing the placer now (``appointing_suppliers``); read for an RSA.
    appointed_by: frozenset[str] = frozenset()
    eligibility: EligibilityProfile = SECMP0039


class OrderRefusal(enum.Enum):
    """How a refused order is reported: a bad party (invalid) or a state (conflict)."""

    INVALID = "invalid"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class OrderRule:
    refusal: OrderRefusal
    field: str
    name: str
    source: str
    #: (message, hint) when the order is refused, None when the row holds.
    check: Callable[[OrderFacts], tuple[str, str] | None]


def _placer_may_order(f: OrderFacts) -> tuple[str, str] | None:
    assert f.placer is not None
    if f.placer.user_id == f.supplier_id or f.placer.role is Role.RSA:
        return None
    grant = f.eligibility.grant(f.placer.role)
    if grant is not None and Authorisation.ORDERED in grant.authorisations:
        return None
    return (
        f"placed_by: {f.placer.user_id} has role {f.placer.role}; only the "
        "Supplier or its RSA may order",
        "Leave placed_by out for the Supplier's own order.",
    )


def _placer_active(f: OrderFacts) -> tuple[str, str] | None:
    assert f.placer is not None
    if f.placer.user_id == f.supplier_id or f.placer.status is UserStatus.ACTIVE:
        return None
    return (
        f"placed_by: {f.placer.role} {f.placer.user_id} is {f.placer.status}",
        f"A suspended {f.placer.role} cannot order hubs.",
    )


def _rsa_appointed(f: OrderFacts) -> tuple[str, str] | None:
    assert f.placer is not None
    if f.placer.role is not Role.RSA or f.placer.user_id == f.supplier_id:
        return None
    if f.supplier_id in f.appointed_by:
        return None
    return (
        f"placed_by: RSA {f.placer.user_id} is not currently appointed by {f.supplier_id}",
        "The Supplier must confirm the RSA first (`hubreturns appoint`).",
    )


_INVALID, _CONFLICT = OrderRefusal.INVALID, OrderRefusal.CONFLICT
#: First failing row refuses the order. (refusal, field, name, source, check)
ORDER_RULES: tuple[OrderRule, ...] = (
    OrderRule(
        _INVALID,
        "supplier",
        "Supplier registered",
        "SEC F5: hubs are ordered for an Import or Gas Supplier",
        lambda f: (
            None
            if f.supplier is not None and f.supplier.role.is_supplier
            else (
                f"supplier: {f.supplier_id} is not a registered IS or GS user",
                "Orders are for an Import or Gas Supplier; load the user first.",
            )
        ),
    ),
    OrderRule(
        _CONFLICT,
        "supplier",
        "Supplier active",
        "DUIS 3.5 / SEC: a suspended User ID cannot act",
        lambda f: (
            None
            if f.supplier is not None and f.supplier.status is UserStatus.ACTIVE
            else (
                f"supplier: {f.supplier_id} is {f.supplier.status if f.supplier else 'unknown'}",
                "A suspended Supplier cannot order hubs; contact the DCC Service Desk.",
            )
        ),
    ),
    OrderRule(
        _INVALID,
        "placed_by",
        "placer registered",
        "SEC F5 / SECMP0039: the Supplier orders, or a party for it",
        lambda f: (
            None
            if f.placer is not None
            else (
                f"placed_by: {f.placed_by} is not a registered user",
                "Give the Supplier itself or an RSA it has appointed.",
            )
        ),
    ),
    OrderRule(
        _INVALID,
        "placed_by",
        "placer may order",
        "SECMP0039: the Supplier's RSA, or a role the profile authorises as orderer",
        _placer_may_order,
    ),
    OrderRule(
        _CONFLICT,
        "placed_by",
        "placer active",
        "DUIS 3.5 / SEC: a suspended User ID cannot act",
        _placer_active,
    ),
    OrderRule(
        _CONFLICT,
        "placed_by",
        "RSA appointed",
        "SECMP0039: an RSA acts only for a Supplier that appoints it now",
        _rsa_appointed,
    ),
)


def check_order(facts: OrderFacts) -> tuple[OrderRule, str, str] | None:
    """The first ``ORDER_RULES`` row the order fails, with its message and hint; or None."""
    for rule in ORDER_RULES:
        found = rule.check(facts)
        if found is not None:
            return rule, *found
    return None
