"""The SECMP0039 decision table, row by row, under every eligibility profile, plus a
supplier regression table that every profile must keep."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_helpers import ACB, DEVICE, GPF, RSA_USER, SUPPLIER, SUPPLIER_2

from hubreturns.codes import DEFAULT_PROFILE, Reason, ResponseCode, Verdict
from hubreturns.dcc.rules import (
    APPOINTMENT_RULES,
    PROFILES,
    RULES,
    SECMP0039,
    AppointmentFacts,
    Authorisation,
    DeviceFacts,
    EligibilityProfile,
    Facts,
    OrderFacts,
    OrderRefusal,
    RoleGrant,
    UserFacts,
    appointing_suppliers,
    check_order,
    decide,
    eligibility_profile,
)
from hubreturns.model import (
    ConnectionMethod,
    DeviceType,
    Endpoint,
    FaultReason,
    RequestId,
    ReturnKind,
    ReturnRequest,
    Role,
    SmiStatus,
    UserStatus,
)

C = ResponseCode
R = Reason
OTHER_GPF = "00-DB-12-34-56-78-90-AF"
NOT_ACB = "90-B3-D5-1F-30-00-00-09"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def request(
    kind: ReturnKind = ReturnKind.FAULT,
    *,
    originator: str = SUPPLIER,
    target: str = ACB,
    counter: int = 10,
    command_variant: int = 8,
    device_id: str = DEVICE,
    other_device_id: str | None = GPF,
) -> ReturnRequest:
    if kind is ReturnKind.FAULT:
        return ReturnRequest(
            request_id=RequestId(originator=originator, target=target, counter=counter),
            command_variant=command_variant,
            service_reference="8.14",
            kind=kind,
            device_id=device_id,
            return_type="Fault identified prior to installation",
            other_device_id=other_device_id,
            connection_method=ConnectionMethod.HOT_SHOE,
            fault_reason=FaultReason.DAMAGED_CASE,
        )
    return ReturnRequest(
        request_id=RequestId(originator=originator, target=target, counter=counter),
        command_variant=command_variant,
        service_reference="8.14",
        kind=kind,
        device_id=device_id,
        return_type="No Fault Return (general)",
    )


def facts(
    *,
    kind: ReturnKind = ReturnKind.FAULT,
    role: Role = Role.IS,
    user_id: str = SUPPLIER,
    status: SmiStatus = SmiStatus.PENDING,
    device_type: DeviceType = DeviceType.CHF,
    responsible: frozenset[str] = frozenset({SUPPLIER}),
    appointed_by: frozenset[str] = frozenset(),
    ordered_for: frozenset[str] = frozenset(),
    eligibility: EligibilityProfile = SECMP0039,
) -> Facts:
    """Minimal facts that are accepted unless a keyword says otherwise."""
    return Facts(
        request=request(kind, originator=user_id),
        endpoint=Endpoint.NON_DEVICE,
        access_control_broker=ACB,
        user=UserFacts(user_id=user_id, role=role, status=UserStatus.ACTIVE),
        last_counter=None,
        device=DeviceFacts(
            device_id=DEVICE,
            device_type=device_type,
            smi_status=status,
            responsible_suppliers=responsible,
            gpf_id=GPF,
            has_open_return=False,
        ),
        appointed_by=appointed_by,
        ordered_for=ordered_for,
        eligibility=eligibility,
    )


def rsa_facts(**kwargs: object) -> Facts:
    kwargs.setdefault("role", Role.RSA)
    kwargs.setdefault("user_id", RSA_USER)
    kwargs.setdefault("appointed_by", frozenset({SUPPLIER}))
    return facts(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ one test per row

Breaker = Callable[[Facts], Facts]


def _user(f: Facts, **changes: object) -> Facts:
    assert f.user is not None
    return replace(f, user=replace(f.user, **changes))  # type: ignore[arg-type]


def _device(f: Facts, **changes: object) -> Facts:
    assert f.device is not None
    return replace(f, device=replace(f.device, **changes))  # type: ignore[arg-type]


def _request(f: Facts, **changes: object) -> Facts:
    return replace(f, request=replace(f.request, **changes))  # type: ignore[arg-type]


def _wrong_target(f: Facts) -> Facts:
    rid = f.request.request_id
    return _request(f, request_id=replace(rid, target=NOT_ACB))


def _rsa_on_installed_hub(f: Facts) -> Facts:
    f = _user(f, role=Role.RSA, user_id=RSA_USER)
    f = replace(f, appointed_by=frozenset({SUPPLIER}))
    return _device(f, smi_status=SmiStatus.COMMISSIONED)


#: (code, how to break only that row, fragment of the reason), in RULES order.
ROWS: list[tuple[Verdict, Breaker, str]] = [
    (
        R.WRONG_TARGET,
        _wrong_target,
        f"business target {NOT_ACB} is not the DCC Access Control Broker",
    ),
    (C.E1, lambda f: replace(f, user=None), f"{SUPPLIER} is not a registered User ID"),
    (C.E3, lambda f: _user(f, status=UserStatus.SUSPENDED), "is suspended"),
    (C.E2, lambda f: _user(f, role=Role.ED), "role ED may not send 8.14.3"),
    (R.REPLAY, lambda f: replace(f, last_counter=10), "counter 10 is not above the last"),
    (C.E12, lambda f: _request(f, command_variant=1), "CommandVariant 1; 8.14 requests use 8"),
    (C.E13, lambda f: replace(f, endpoint=Endpoint.SEND_COMMAND), "not the non-device endpoint"),
    (C.E19, lambda f: replace(f, device=None), f"device {DEVICE} is not in the inventory"),
    (C.E11, lambda f: _device(f, device_type=DeviceType.GPF), "is a GPF, not a CHF"),
    (
        C.E4,
        lambda f: _device(f, responsible_suppliers=frozenset({SUPPLIER_2})),
        f"{SUPPLIER} is not a responsible Supplier for {DEVICE}",
    ),
    (C.E5, _rsa_on_installed_hub, "an RSA may return a hub only while it is Pending"),
    (
        R.GPF_MISMATCH,
        lambda f: _request(f, other_device_id=OTHER_GPF),
        f"OtherDeviceID {OTHER_GPF} is not the hub's GPF {GPF}",
    ),
    (R.OPEN_RETURN, lambda f: _device(f, has_open_return=True), "already has an open return"),
]


def test_rows_cover_every_rule_in_order() -> None:
    assert [code for code, _, _ in ROWS] == [rule.code for rule in RULES]
    assert all(rule.name and rule.source for rule in RULES)


def test_baseline_facts_are_accepted() -> None:
    decision = decide(facts())
    assert decision.code is C.I99
    assert decision.accepted
    assert decision.reason == "return accepted"
    assert decision.on_behalf_of == SUPPLIER


PROFILE_NAMES = list(PROFILES)


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize(
    ("code", "breaker", "fragment"), ROWS, ids=[code.value for code, _, _ in ROWS]
)
def test_each_rule_row(code: ResponseCode, breaker: Breaker, fragment: str, profile: str) -> None:
    decision = decide(replace(breaker(facts()), eligibility=PROFILES[profile]))
    if code is C.E5 and profile == "pre-secmp0039":
        # The E5 row's sender is an RSA, which this profile does not know at all.
        code, fragment = C.E2, "role RSA may not send 8.14.3 (eligibility profile pre-secmp0039)"
    if code is C.E2 and profile == "all-ordering-parties":
        # Every role may send; an ED is then tied to the hub only by an order it placed.
        code, fragment = C.E4, "needs to be placed the order the hub was delivered against"
    assert decision.code is code
    assert fragment in decision.reason
    assert not decision.accepted
    assert decision.on_behalf_of is None


@pytest.mark.parametrize(
    ("first", "second"),
    list(itertools.pairwise(ROWS)),
    ids=[f"{a[0].value}-before-{b[0].value}" for a, b in itertools.pairwise(ROWS)],
)
def test_first_failing_row_decides(
    first: tuple[ResponseCode, Breaker, str], second: tuple[ResponseCode, Breaker, str]
) -> None:
    broken = first[1](second[1](facts()))
    assert decide(broken).code is first[0]
    if first[0] is not C.E2:  # under the orderers' profile every role passes E2
        # It decides in the same order (its RSA is authorised as before).
        assert (
            decide(replace(broken, eligibility=PROFILES["all-ordering-parties"])).code is first[0]
        )


def test_everything_broken_gives_the_first_row() -> None:
    f = facts()
    for _, breaker, _ in reversed(ROWS):
        f = breaker(f)
    assert decide(f).code is R.WRONG_TARGET


def test_supplier_not_responsible_message() -> None:
    f = facts(responsible=frozenset({SUPPLIER_2}))
    assert decide(f).reason == f"{SUPPLIER} is not a responsible Supplier for {DEVICE}"


def test_gpf_rule_does_not_apply_to_no_fault_returns_or_unknown_gpf() -> None:
    no_fault = _request(facts(kind=ReturnKind.NO_FAULT), other_device_id=OTHER_GPF)
    assert decide(no_fault).code is C.I99
    unknown_gpf = _request(_device(facts(), gpf_id=None), other_device_id=OTHER_GPF)
    assert decide(unknown_gpf).code is C.I99


@pytest.mark.parametrize("role", [Role.ES, Role.ED, Role.GT, Role.OU])
def test_non_eligible_roles_are_e2(role: Role) -> None:
    assert decide(facts(role=role)).code is C.E2


# ------------------------------------------------------------------ RSA (SECMP0039)


@pytest.mark.parametrize("kind", list(ReturnKind), ids=lambda k: k.variant)
def test_rsa_for_responsible_supplier_on_pending_hub_is_accepted(kind: ReturnKind) -> None:
    decision = decide(
        rsa_facts(
            kind=kind,
            responsible=frozenset({SUPPLIER, "00-00-00-00-00-00-00-99"}),
            appointed_by=frozenset({SUPPLIER, SUPPLIER_2}),
        )
    )
    assert decision.code is C.I99
    assert decision.on_behalf_of == SUPPLIER


def test_rsa_appointed_by_the_second_responsible_supplier_acts_for_it() -> None:
    decision = decide(
        rsa_facts(
            responsible=frozenset({SUPPLIER, SUPPLIER_2}), appointed_by=frozenset({SUPPLIER_2})
        )
    )
    assert (decision.code, decision.on_behalf_of) == (C.I99, SUPPLIER_2)


NON_PENDING = [s for s in SmiStatus if s is not SmiStatus.PENDING]


def test_there_are_eight_non_pending_statuses() -> None:
    assert len(NON_PENDING) == 8


@pytest.mark.parametrize("status", NON_PENDING, ids=lambda s: s.value)
@pytest.mark.parametrize("kind", list(ReturnKind), ids=lambda k: k.variant)
def test_rsa_on_non_pending_hub_is_e5(status: SmiStatus, kind: ReturnKind) -> None:
    decision = decide(rsa_facts(status=status, kind=kind))
    assert decision.code is C.E5
    assert decision.reason == (
        f"an RSA may return a hub only while it is Pending; {DEVICE} is {status.value}"
    )
    assert decision.on_behalf_of is None


@pytest.mark.parametrize(
    "appointed_by",
    [frozenset({SUPPLIER_2}), frozenset(), frozenset({RSA_USER})],
    ids=["other supplier", "nobody", "itself"],
)
def test_rsa_not_appointed_by_a_responsible_supplier_is_e4(appointed_by: frozenset[str]) -> None:
    decision = decide(rsa_facts(appointed_by=appointed_by))
    assert decision.code is C.E4
    assert decision.reason == (
        f"RSA {RSA_USER} holds no current appointment from a Supplier responsible for {DEVICE}"
    )


def test_rsa_listed_as_responsible_itself_is_still_e4() -> None:
    f = rsa_facts(responsible=frozenset({RSA_USER}), appointed_by=frozenset({SUPPLIER}))
    assert decide(f).code is C.E4


def test_rsa_unauthorised_on_installed_hub_is_e4_before_e5() -> None:
    f = rsa_facts(appointed_by=frozenset({SUPPLIER_2}), status=SmiStatus.COMMISSIONED)
    assert decide(f).code is C.E4


# ------------------------------------------------------------------ eligibility profiles

PRE = PROFILES["pre-secmp0039"]
ORDERERS = PROFILES["all-ordering-parties"]
ORDERER = "00-DB-12-34-56-78-00-0A"


def test_the_default_profile_is_secmp0039_and_the_names_are_known() -> None:
    assert Facts.__dataclass_fields__["eligibility"].default is SECMP0039
    assert SECMP0039.name == "secmp0039"
    assert PROFILE_NAMES == ["pre-secmp0039", "secmp0039", "all-ordering-parties"]
    assert PRE.roles == {Role.IS, Role.GS}
    assert SECMP0039.roles == {Role.IS, Role.GS, Role.RSA}
    assert ORDERERS.roles == set(Role)
    with pytest.raises(ValueError, match="known: pre-secmp0039, secmp0039, all-ordering"):
        eligibility_profile("everyone")


@pytest.mark.parametrize("kind", list(ReturnKind), ids=lambda k: k.variant)
def test_rsa_is_refused_e2_before_secmp0039(kind: ReturnKind) -> None:
    decision = decide(rsa_facts(kind=kind, eligibility=PRE))
    assert decision.code is C.E2
    assert decision.reason == (
        f"role RSA may not send {kind.variant} (eligibility profile pre-secmp0039)"
    )


@pytest.mark.parametrize("role", [Role.ES, Role.ED, Role.GT, Role.OU])
@pytest.mark.parametrize("kind", list(ReturnKind), ids=lambda k: k.variant)
def test_ordering_party_returns_its_delivered_pending_hub(role: Role, kind: ReturnKind) -> None:
    f = facts(
        kind=kind,
        role=role,
        user_id=ORDERER,
        ordered_for=frozenset({SUPPLIER}),
        eligibility=ORDERERS,
    )
    decision = decide(f)
    assert (decision.code, decision.on_behalf_of) == (C.I99, SUPPLIER)
    # The same facts under the other profiles: the role is not eligible at all.
    assert decide(replace(f, eligibility=SECMP0039)).code is C.E2
    assert decide(replace(f, eligibility=PRE)).code is C.E2


@pytest.mark.parametrize("status", NON_PENDING, ids=lambda s: s.value)
def test_ordering_party_on_installed_hub_is_e5(status: SmiStatus) -> None:
    f = facts(
        role=Role.GT,
        user_id=ORDERER,
        status=status,
        ordered_for=frozenset({SUPPLIER}),
        eligibility=ORDERERS,
    )
    decision = decide(f)
    assert decision.code is C.E5
    assert decision.reason == (
        f"a GT may return a hub only while it is Pending; {DEVICE} is {status.value}"
    )


def test_ordering_party_without_an_order_for_the_hub_is_e4_before_e5() -> None:
    for status in (SmiStatus.PENDING, SmiStatus.COMMISSIONED):
        decision = decide(facts(role=Role.OU, user_id=ORDERER, status=status, eligibility=ORDERERS))
        assert decision.code is C.E4
        assert decision.reason == (
            f"OU {ORDERER} is not authorised for {DEVICE}: needs to be placed the order the "
            "hub was delivered against"
        )


def test_rsa_under_the_orderers_profile_may_rely_on_its_order() -> None:
    ordered = rsa_facts(appointed_by=frozenset(), ordered_for=frozenset({SUPPLIER_2}))
    assert decide(ordered).code is C.E4
    decision = decide(replace(ordered, eligibility=ORDERERS))
    assert (decision.code, decision.on_behalf_of) == (C.I99, SUPPLIER_2)
    installed = _device(replace(ordered, eligibility=ORDERERS), smi_status=SmiStatus.WHITELISTED)
    assert decide(installed).code is C.E5
    nothing = replace(ordered, eligibility=ORDERERS, ordered_for=frozenset())
    assert decide(nothing).reason == (
        f"RSA {RSA_USER} is not authorised for {DEVICE}: needs to be appointed by a "
        "responsible Supplier or placed the order the hub was delivered against"
    )


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (
            lambda: RoleGrant(
                role=Role.IS,
                authorisations=(Authorisation.RESPONSIBLE_SUPPLIER,),
                pending_only=True,
            ),
            "Suppliers are authorised as the responsible Supplier",
        ),
        (
            lambda: RoleGrant(
                role=Role.GS, authorisations=(Authorisation.ORDERED,), pending_only=False
            ),
            "Suppliers are authorised as the responsible Supplier",
        ),
        (
            lambda: RoleGrant(
                role=Role.OU, authorisations=(Authorisation.ORDERED,), pending_only=False
            ),
            "every other role only Pending hubs",
        ),
        (
            lambda: RoleGrant(role=Role.OU, authorisations=(), pending_only=True),
            "needs at least one kind of authorisation",
        ),
        (
            lambda: EligibilityProfile(name="x", summary="", grants=SECMP0039.grants[1:]),
            "must keep the Suppliers",
        ),
        (
            lambda: EligibilityProfile(
                name="x", summary="", grants=(*SECMP0039.grants, SECMP0039.grants[2])
            ),
            "lists a role twice",
        ),
    ],
    ids=["pending IS", "GS by order", "OU any status", "no authorisation", "no IS", "twice"],
)
def test_a_profile_that_breaks_the_requirements_cannot_exist(
    make: Callable[[], object], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        make()


# ------------------------------------------------------------------ supplier regression

#: Suppliers' behaviour before SECMP0039, written out by hand: a responsible
#: Supplier may return a hub in any SMI status (I99); a Supplier that is not
#: responsible gets E4; a DeviceID that is not a CHF gets E11 (checked first).
#: role  SMI status  responsible  device type  variant  expected
SUPPLIER_GOLDEN = """
IS  Pending                   yes  CHF     8.14.3  I99
IS  Pending                   yes  CHF     8.14.4  I99
IS  Pending                   yes  GPF     8.14.3  E11
IS  Pending                   yes  ESME    8.14.4  E11
IS  Pending                   no   CHF     8.14.3  E4
IS  Pending                   no   CHF     8.14.4  E4
IS  Pending                   no   GSME    8.14.3  E11
IS  Pending                   no   PPMID   8.14.4  E11
IS  Whitelisted               yes  CHF     8.14.3  I99
IS  Whitelisted               yes  CHF     8.14.4  I99
IS  Whitelisted               yes  HCALCS  8.14.3  E11
IS  Whitelisted               yes  IHD     8.14.4  E11
IS  Whitelisted               no   CHF     8.14.3  E4
IS  Whitelisted               no   CHF     8.14.4  E4
IS  Whitelisted               no   GPF     8.14.3  E11
IS  Whitelisted               no   ESME    8.14.4  E11
IS  InstalledNotCommissioned  yes  CHF     8.14.3  I99
IS  InstalledNotCommissioned  yes  CHF     8.14.4  I99
IS  InstalledNotCommissioned  yes  GSME    8.14.3  E11
IS  InstalledNotCommissioned  yes  PPMID   8.14.4  E11
IS  InstalledNotCommissioned  no   CHF     8.14.3  E4
IS  InstalledNotCommissioned  no   CHF     8.14.4  E4
IS  InstalledNotCommissioned  no   HCALCS  8.14.3  E11
IS  InstalledNotCommissioned  no   IHD     8.14.4  E11
IS  Commissioned              yes  CHF     8.14.3  I99
IS  Commissioned              yes  CHF     8.14.4  I99
IS  Commissioned              yes  GPF     8.14.3  E11
IS  Commissioned              yes  ESME    8.14.4  E11
IS  Commissioned              no   CHF     8.14.3  E4
IS  Commissioned              no   CHF     8.14.4  E4
IS  Commissioned              no   GSME    8.14.3  E11
IS  Commissioned              no   PPMID   8.14.4  E11
IS  Decommissioned            yes  CHF     8.14.3  I99
IS  Decommissioned            yes  CHF     8.14.4  I99
IS  Decommissioned            yes  HCALCS  8.14.3  E11
IS  Decommissioned            yes  IHD     8.14.4  E11
IS  Decommissioned            no   CHF     8.14.3  E4
IS  Decommissioned            no   CHF     8.14.4  E4
IS  Decommissioned            no   GPF     8.14.3  E11
IS  Decommissioned            no   ESME    8.14.4  E11
IS  Withdrawn                 yes  CHF     8.14.3  I99
IS  Withdrawn                 yes  CHF     8.14.4  I99
IS  Withdrawn                 yes  GSME    8.14.3  E11
IS  Withdrawn                 yes  PPMID   8.14.4  E11
IS  Withdrawn                 no   CHF     8.14.3  E4
IS  Withdrawn                 no   CHF     8.14.4  E4
IS  Withdrawn                 no   HCALCS  8.14.3  E11
IS  Withdrawn                 no   IHD     8.14.4  E11
IS  Suspended                 yes  CHF     8.14.3  I99
IS  Suspended                 yes  CHF     8.14.4  I99
IS  Suspended                 yes  GPF     8.14.3  E11
IS  Suspended                 yes  ESME    8.14.4  E11
IS  Suspended                 no   CHF     8.14.3  E4
IS  Suspended                 no   CHF     8.14.4  E4
IS  Suspended                 no   GSME    8.14.3  E11
IS  Suspended                 no   PPMID   8.14.4  E11
IS  Recovery                  yes  CHF     8.14.3  I99
IS  Recovery                  yes  CHF     8.14.4  I99
IS  Recovery                  yes  HCALCS  8.14.3  E11
IS  Recovery                  yes  IHD     8.14.4  E11
IS  Recovery                  no   CHF     8.14.3  E4
IS  Recovery                  no   CHF     8.14.4  E4
IS  Recovery                  no   GPF     8.14.3  E11
IS  Recovery                  no   ESME    8.14.4  E11
IS  Recovered                 yes  CHF     8.14.3  I99
IS  Recovered                 yes  CHF     8.14.4  I99
IS  Recovered                 yes  GSME    8.14.3  E11
IS  Recovered                 yes  PPMID   8.14.4  E11
IS  Recovered                 no   CHF     8.14.3  E4
IS  Recovered                 no   CHF     8.14.4  E4
IS  Recovered                 no   HCALCS  8.14.3  E11
IS  Recovered                 no   IHD     8.14.4  E11
GS  Pending                   yes  CHF     8.14.3  I99
GS  Pending                   yes  CHF     8.14.4  I99
GS  Pending                   yes  GPF     8.14.3  E11
GS  Pending                   yes  ESME    8.14.4  E11
GS  Pending                   no   CHF     8.14.3  E4
GS  Pending                   no   CHF     8.14.4  E4
GS  Pending                   no   GSME    8.14.3  E11
GS  Pending                   no   PPMID   8.14.4  E11
GS  Whitelisted               yes  CHF     8.14.3  I99
GS  Whitelisted               yes  CHF     8.14.4  I99
GS  Whitelisted               yes  HCALCS  8.14.3  E11
GS  Whitelisted               yes  IHD     8.14.4  E11
GS  Whitelisted               no   CHF     8.14.3  E4
GS  Whitelisted               no   CHF     8.14.4  E4
GS  Whitelisted               no   GPF     8.14.3  E11
GS  Whitelisted               no   ESME    8.14.4  E11
GS  InstalledNotCommissioned  yes  CHF     8.14.3  I99
GS  InstalledNotCommissioned  yes  CHF     8.14.4  I99
GS  InstalledNotCommissioned  yes  GSME    8.14.3  E11
GS  InstalledNotCommissioned  yes  PPMID   8.14.4  E11
GS  InstalledNotCommissioned  no   CHF     8.14.3  E4
GS  InstalledNotCommissioned  no   CHF     8.14.4  E4
GS  InstalledNotCommissioned  no   HCALCS  8.14.3  E11
GS  InstalledNotCommissioned  no   IHD     8.14.4  E11
GS  Commissioned              yes  CHF     8.14.3  I99
GS  Commissioned              yes  CHF     8.14.4  I99
GS  Commissioned              yes  GPF     8.14.3  E11
GS  Commissioned              yes  ESME    8.14.4  E11
GS  Commissioned              no   CHF     8.14.3  E4
GS  Commissioned              no   CHF     8.14.4  E4
GS  Commissioned              no   GSME    8.14.3  E11
GS  Commissioned              no   PPMID   8.14.4  E11
GS  Decommissioned            yes  CHF     8.14.3  I99
GS  Decommissioned            yes  CHF     8.14.4  I99
GS  Decommissioned            yes  HCALCS  8.14.3  E11
GS  Decommissioned            yes  IHD     8.14.4  E11
GS  Decommissioned            no   CHF     8.14.3  E4
GS  Decommissioned            no   CHF     8.14.4  E4
GS  Decommissioned            no   GPF     8.14.3  E11
GS  Decommissioned            no   ESME    8.14.4  E11
GS  Withdrawn                 yes  CHF     8.14.3  I99
GS  Withdrawn                 yes  CHF     8.14.4  I99
GS  Withdrawn                 yes  GSME    8.14.3  E11
GS  Withdrawn                 yes  PPMID   8.14.4  E11
GS  Withdrawn                 no   CHF     8.14.3  E4
GS  Withdrawn                 no   CHF     8.14.4  E4
GS  Withdrawn                 no   HCALCS  8.14.3  E11
GS  Withdrawn                 no   IHD     8.14.4  E11
GS  Suspended                 yes  CHF     8.14.3  I99
GS  Suspended                 yes  CHF     8.14.4  I99
GS  Suspended                 yes  GPF     8.14.3  E11
GS  Suspended                 yes  ESME    8.14.4  E11
GS  Suspended                 no   CHF     8.14.3  E4
GS  Suspended                 no   CHF     8.14.4  E4
GS  Suspended                 no   GSME    8.14.3  E11
GS  Suspended                 no   PPMID   8.14.4  E11
GS  Recovery                  yes  CHF     8.14.3  I99
GS  Recovery                  yes  CHF     8.14.4  I99
GS  Recovery                  yes  HCALCS  8.14.3  E11
GS  Recovery                  yes  IHD     8.14.4  E11
GS  Recovery                  no   CHF     8.14.3  E4
GS  Recovery                  no   CHF     8.14.4  E4
GS  Recovery                  no   GPF     8.14.3  E11
GS  Recovery                  no   ESME    8.14.4  E11
GS  Recovered                 yes  CHF     8.14.3  I99
GS  Recovered                 yes  CHF     8.14.4  I99
GS  Recovered                 yes  GSME    8.14.3  E11
GS  Recovered                 yes  PPMID   8.14.4  E11
GS  Recovered                 no   CHF     8.14.3  E4
GS  Recovered                 no   CHF     8.14.4  E4
GS  Recovered                 no   HCALCS  8.14.3  E11
GS  Recovered                 no   IHD     8.14.4  E11
"""


def _golden_rows() -> list[tuple[str, str, str, str, str, str]]:
    rows = []
    for line in SUPPLIER_GOLDEN.strip().splitlines():
        role, status, responsible, device_type, variant, code = line.split()
        rows.append((role, status, responsible, device_type, variant, code))
    return rows


GOLDEN = _golden_rows()


def test_golden_table_covers_every_combination() -> None:
    combos = {
        (role, status, responsible, device_type == "CHF", variant)
        for role, status, responsible, device_type, variant, _ in GOLDEN
    }
    assert len(GOLDEN) == 2 * 9 * 2 * 2 * 2
    assert len(combos) == len(GOLDEN)
    assert {status for _, status, *_ in GOLDEN} == {s.value for s in SmiStatus}


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize(
    ("role", "status", "responsible", "device_type", "variant", "expected"),
    GOLDEN,
    ids=["-".join(row) for row in GOLDEN],
)
def test_supplier_regression(
    role: str,
    status: str,
    responsible: str,
    device_type: str,
    variant: str,
    expected: str,
    profile: str,
) -> None:
    """The same golden table under every profile: Supplier outcomes never change."""
    f = facts(
        eligibility=PROFILES[profile],
        # Nor do orders the Supplier placed (its RSA's, another Supplier's).
        ordered_for=frozenset({SUPPLIER_2}),
        kind=ReturnKind.from_variant(variant),
        role=Role(role),
        status=SmiStatus(status),
        device_type=DeviceType(device_type),
        responsible=frozenset({SUPPLIER if responsible == "yes" else SUPPLIER_2}),
        # Appointments never widen what a Supplier may do.
        appointed_by=frozenset({SUPPLIER_2}),
    )
    decision = decide(f)
    assert DEFAULT_PROFILE.code(decision.code) == expected
    assert decision.on_behalf_of == (SUPPLIER if expected == "I99" else None)


# ------------------------------------------------------------------ property

EUIS = [SUPPLIER, SUPPLIER_2, RSA_USER, ACB, DEVICE, GPF, OTHER_GPF, NOT_ACB]
eui_values = st.sampled_from(EUIS)
counters = st.one_of(st.integers(0, 20), st.integers(0, 2**64 - 1))


@st.composite
def any_request(draw: st.DrawFn) -> ReturnRequest:
    kind = draw(st.sampled_from(list(ReturnKind)))
    return request(
        kind,
        originator=draw(eui_values),
        target=draw(st.sampled_from([ACB, NOT_ACB])),
        counter=draw(counters),
        command_variant=draw(st.sampled_from([8, 1, 2, 3, 4, 5, 6, 7])),
        device_id=draw(eui_values),
        other_device_id=draw(eui_values),
    )


any_facts = st.builds(
    Facts,
    request=any_request(),
    endpoint=st.sampled_from(list(Endpoint)),
    access_control_broker=st.sampled_from([ACB, NOT_ACB]),
    user=st.none()
    | st.builds(
        UserFacts,
        user_id=eui_values,
        role=st.sampled_from(list(Role)),
        status=st.sampled_from(list(UserStatus)),
    ),
    last_counter=st.none() | counters,
    device=st.none()
    | st.builds(
        DeviceFacts,
        device_id=eui_values,
        device_type=st.sampled_from(list(DeviceType)),
        smi_status=st.sampled_from(list(SmiStatus)),
        responsible_suppliers=st.frozensets(eui_values, max_size=3),
        gpf_id=st.none() | eui_values,
        has_open_return=st.booleans(),
    ),
    appointed_by=st.frozensets(eui_values, max_size=3),
    ordered_for=st.frozensets(eui_values, max_size=2),
    eligibility=st.sampled_from(list(PROFILES.values())),
)

ALLOWED_CODES = {rule.code for rule in RULES} | {C.I99}


@settings(max_examples=400, deadline=None)
@given(any_facts)
def test_decide_is_total_and_never_lets_an_rsa_through_wrongly(f: Facts) -> None:
    decision = decide(f)
    assert decision.code in ALLOWED_CODES
    assert decision.reason
    if not decision.accepted:
        assert decision.on_behalf_of is None
        return
    assert f.user is not None
    assert f.device is not None
    assert f.device.device_type is DeviceType.CHF
    grant = f.eligibility.grant(f.user.role)
    assert grant is not None
    if f.user.role.is_supplier:
        assert decision.on_behalf_of in f.device.responsible_suppliers
        assert decision.on_behalf_of == f.user.user_id
        return
    assert f.device.smi_status is SmiStatus.PENDING
    assert f.user.role in (Role.RSA, Role.ES, Role.ED, Role.GT, Role.OU)
    appointed = f.device.responsible_suppliers & f.appointed_by
    ordered = f.ordered_for if Authorisation.ORDERED in grant.authorisations else frozenset()
    if Authorisation.APPOINTED not in grant.authorisations:
        appointed = frozenset()
    assert decision.on_behalf_of in appointed | ordered


# -- appointments and orders: the other two tables of rules.py ---------------------


def _appointment(**changes: object) -> AppointmentFacts:
    base = AppointmentFacts(
        supplier_user_id=SUPPLIER,
        supplier_role=Role.IS,
        supplier_status=UserStatus.ACTIVE,
        valid_from=NOW,
        valid_to=NOW + timedelta(days=1),
        revoked_at=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


#: (row name, what breaks it, the moment judged)
_BROKEN_APPOINTMENTS = [
    ("not revoked", {"revoked_at": NOW}, NOW),
    ("started", {}, NOW - timedelta(seconds=1)),
    ("not ended", {}, NOW + timedelta(days=1)),
    ("appointing Supplier active", {"supplier_status": UserStatus.SUSPENDED}, NOW),
    ("appointing party is a Supplier", {"supplier_role": Role.ES}, NOW),
    ("appointing party is a Supplier", {"supplier_role": None}, NOW),
]


def test_an_appointment_holds_from_start_until_end() -> None:
    assert appointing_suppliers([_appointment()], NOW) == {SUPPLIER}
    assert appointing_suppliers([_appointment(valid_to=None)], NOW + timedelta(days=999)) == {
        SUPPLIER
    }
    assert [rule.code for rule in APPOINTMENT_RULES] == [ResponseCode.E4] * 5


@pytest.mark.parametrize(("name", "changes", "now"), _BROKEN_APPOINTMENTS)
def test_each_appointment_row(name: str, changes: dict[str, object], now: datetime) -> None:
    broken = _appointment(**changes)
    failing = [rule.name for rule in APPOINTMENT_RULES if not rule.holds(broken, now)]
    assert failing == [name]
    assert appointing_suppliers([broken], now) == frozenset()


def _order(**changes: object) -> OrderFacts:
    base = OrderFacts(
        supplier_id=SUPPLIER,
        supplier=UserFacts(user_id=SUPPLIER, role=Role.IS, status=UserStatus.ACTIVE),
        placed_by=RSA_USER,
        placer=UserFacts(user_id=RSA_USER, role=Role.RSA, status=UserStatus.ACTIVE),
        appointed_by=frozenset({SUPPLIER}),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


_ES = UserFacts(user_id=RSA_USER, role=Role.ES, status=UserStatus.ACTIVE)


@pytest.mark.parametrize(
    ("changes", "name", "refusal"),
    [
        ({"supplier": None}, "Supplier registered", OrderRefusal.INVALID),
        (
            {"supplier": UserFacts(user_id=SUPPLIER, role=Role.ES, status=UserStatus.ACTIVE)},
            "Supplier registered",
            OrderRefusal.INVALID,
        ),
        (
            {"supplier": UserFacts(user_id=SUPPLIER, role=Role.IS, status=UserStatus.SUSPENDED)},
            "Supplier active",
            OrderRefusal.CONFLICT,
        ),
        ({"placer": None}, "placer registered", OrderRefusal.INVALID),
        ({"placer": _ES}, "placer may order", OrderRefusal.INVALID),
        (
            {"placer": UserFacts(user_id=RSA_USER, role=Role.RSA, status=UserStatus.SUSPENDED)},
            "placer active",
            OrderRefusal.CONFLICT,
        ),
        ({"appointed_by": frozenset()}, "RSA appointed", OrderRefusal.CONFLICT),
    ],
)
def test_each_order_row(changes: dict[str, object], name: str, refusal: OrderRefusal) -> None:
    assert check_order(_order()) is None
    failed = check_order(_order(**changes))
    assert failed is not None
    rule, message, hint = failed
    assert (rule.name, rule.refusal) == (name, refusal)
    assert message.startswith(f"{rule.field}: ")
    assert hint


def test_an_orderer_role_may_order_under_the_profile_that_authorises_it() -> None:
    profile = eligibility_profile("all-ordering-parties")
    assert check_order(_order(placer=_ES, eligibility=profile)) is None
    assert (
        check_order(
            _order(supplier=_order().supplier, placed_by=SUPPLIER, placer=_order().supplier)
        )
        is None
    )
