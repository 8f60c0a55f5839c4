"""Pure logistics rules: lifecycle table, delivery files, consignment plan, charges, tariff."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from hubreturns.dcc.logistics.charges import (
    CHARGE_RULES,
    DCC_SOURCE,
    DEFAULT_TARIFF,
    Basis,
    ChargedHub,
    ChargeFacts,
    ChargeStatus,
    ExtraItem,
    TariffItem,
    load_tariff,
    price,
    summarise,
)
from hubreturns.dcc.logistics.consignments import PlanItem, group_consignments, plan_month
from hubreturns.dcc.logistics.errors import Conflict, Invalid
from hubreturns.dcc.logistics.lifecycle import (
    TRANSITIONS,
    HubPath,
    Step,
    TestOutcome,
    next_status,
)
from hubreturns.dcc.logistics.orders import check_delivery, parse_delivery
from hubreturns.dcc.logistics.values import HubVariant, OrderChange, OrderRequest, Period
from hubreturns.model import FaultReturnType, NoFaultReturnType, ReturnStatus

A, B, C = "00-DB-12-34-56-78-AA-01", "00-DB-12-34-56-78-AA-02", "00-DB-12-34-56-78-AA-03"
D = "00-DB-12-34-56-78-AA-04"

# -- lifecycle ---------------------------------------------------------------------------

R, L = HubPath.RETURNED, HubPath.LOST_OR_STOLEN
HAPPY = [
    (R, ReturnStatus.NOTIFIED, Step.COLLECT, ReturnStatus.COLLECTED),
    (R, ReturnStatus.COLLECTED, Step.RECEIVE, ReturnStatus.RECEIVED),
    (R, ReturnStatus.RECEIVED, Step.TEST, ReturnStatus.TESTED),
    (R, ReturnStatus.TESTED, Step.CLOSE, ReturnStatus.CLOSED),
    (L, ReturnStatus.NOTIFIED, Step.WRITE_OFF, ReturnStatus.WRITTEN_OFF),
]


def test_transition_table_is_exactly_the_documented_chain() -> None:
    assert sorted((p, s, st, n) for (p, s, st), n in TRANSITIONS.items()) == sorted(HAPPY)


@pytest.mark.parametrize(("path", "status", "step", "new"), HAPPY)
def test_each_allowed_step(
    path: HubPath, status: ReturnStatus, step: Step, new: ReturnStatus
) -> None:
    assert next_status(7, status, step, path) is new


INVALID = [
    (path, status, step)
    for path in HubPath
    for status in ReturnStatus
    for step in Step
    if (path, status, step) not in TRANSITIONS
]


@pytest.mark.parametrize(("path", "status", "step"), INVALID)
def test_every_other_step_is_refused_with_the_allowed_one(
    path: HubPath, status: ReturnStatus, step: Step
) -> None:
    with pytest.raises(Conflict) as caught:
        next_status(7, status, step, path)
    assert f" 7 is {status.value}" in caught.value.message
    order = "notified → collected" if path is R else "never collected: notified → written_off"
    assert order in caught.value.hint
    assert caught.value.status == 409


def test_a_lost_or_stolen_hub_is_never_collected_received_or_tested() -> None:
    for step in (Step.COLLECT, Step.RECEIVE, Step.TEST, Step.CLOSE):
        with pytest.raises(Conflict) as caught:
            next_status(3, ReturnStatus.NOTIFIED, step, L)
        assert "lost or stolen hub return 3" in caught.value.message
        assert "next step is write_off" in caught.value.hint
    with pytest.raises(Conflict):
        next_status(3, ReturnStatus.NOTIFIED, Step.WRITE_OFF, R)


# -- delivery files -------------------------------------------------------------------------


def test_delivery_file_parses_and_normalises() -> None:
    rows = parse_delivery(
        b"\xef\xbb\xbfgpf_device_id,chf_device_id\n\n" + f"{B.lower()},{A}\n{D},{C}\n".encode()
    )
    assert [(r.line, r.chf_id, r.gpf_id) for r in rows] == [(3, A, B), (4, C, D)]


def test_delivery_file_lists_every_bad_row() -> None:
    text = (
        "chf_device_id,gpf_device_id\n"
        f"{A},{B}\n"
        f"not-an-eui,{C}\n"
        f"{C},{A}\n"  # A repeats line 2
        f"{D},{D}\n"
        f"{D}\n"
    )
    with pytest.raises(Invalid) as caught:
        parse_delivery(text)
    found = [(p.line, p.field) for p in caught.value.problems]
    assert found == [
        (3, "chf_device_id"),
        (4, "gpf_device_id"),
        (5, "gpf_device_id"),
        (6, None),
    ]
    assert "line 2 (chf_device_id)" in str(caught.value)
    assert "nothing was loaded" in caught.value.hint


@pytest.mark.parametrize(
    "text", ["", "device_id,gpf\n" + f"{A},{B}\n", "chf_device_id,gpf_device_id\n"]
)
def test_delivery_file_without_header_or_rows_is_refused(text: str) -> None:
    with pytest.raises(Invalid):
        parse_delivery(text)


def test_delivery_check_refuses_known_ids_and_over_delivery() -> None:
    rows = parse_delivery(f"chf_device_id,gpf_device_id\n{A},{B}\n{C},{D}\n")
    with pytest.raises(Conflict) as known:
        check_delivery(
            order_id=3,
            quantity=10,
            already_delivered=0,
            rows=rows,
            known={D: "in the Smart Metering Inventory"},
        )
    assert [(p.line, p.field) for p in known.value.problems] == [(3, "gpf_device_id")]
    with pytest.raises(Conflict) as over:
        check_delivery(order_id=3, quantity=3, already_delivered=2, rows=rows, known={})
    assert "order 3 is for 3 hub(s), 2 already delivered, this file has 2 (1 too many)" in str(
        over.value
    )
    check_delivery(order_id=3, quantity=4, already_delivered=2, rows=rows, known={})


NOW = datetime(2026, 12, 5, tzinfo=UTC)
GOOD_ORDER: dict[str, object] = {
    "supplier": A,
    "placed_by": None,
    "quantity": 5,
    "hub_variant": "dual_band",
    "delivery_location": "Leeds depot",
    "requested_month": "2026-12",
}


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("supplier", {"supplier": "nope"}),
        ("quantity", {"quantity": 0}),
        ("quantity", {"quantity": True}),
        ("hub_variant", {"hub_variant": "  "}),
        ("hub_variant", {"hub_variant": "HAN variant: triple band"}),
        ("delivery_location", {"delivery_location": ""}),
        ("requested_month", {"requested_month": "2026-13"}),
        ("requested_month", {"requested_month": "2026-11"}),  # the past
        ("placed_by", {"placed_by": "x"}),
    ],
)
def test_order_fields_are_checked(field: str, changes: dict[str, object]) -> None:
    with pytest.raises(Invalid) as caught:
        OrderRequest.parse(**(GOOD_ORDER | changes), now=NOW)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert [p.field for p in caught.value.problems] == [field]


def test_every_wrong_order_field_is_reported_at_once() -> None:
    bad = {"supplier": "nope", "quantity": 0, "hub_variant": "x", "requested_month": "2020-01"}
    with pytest.raises(Invalid) as caught:
        OrderRequest.parse(**(GOOD_ORDER | bad), now=NOW)  # type: ignore[arg-type]
    assert [p.field for p in caught.value.problems] == [
        "supplier",
        "quantity",
        "hub_variant",
        "requested_month",
    ]
    assert "2020-01 is in the past (this month is 2026-12)" in str(caught.value)


def test_hub_variant_is_an_enumeration() -> None:
    order = OrderRequest.parse(**(GOOD_ORDER | {"hub_variant": "Single Band"}), now=NOW)  # type: ignore[arg-type]
    assert order.hub_variant is HubVariant.SINGLE_BAND
    assert order.requested_month == "2026-12"  # this month is allowed


def test_an_amendment_changes_only_what_it_names() -> None:
    change = OrderChange.parse(quantity=3, requested_month="2027-01", now=NOW)
    assert change.changes() == {"quantity": 3, "requested_month": "2027-01"}
    with pytest.raises(Invalid, match="nothing to change"):
        OrderChange.parse(now=NOW)
    with pytest.raises(Invalid) as caught:
        OrderChange.parse(quantity=-1, requested_month="2026-01", now=NOW)
    assert [p.field for p in caught.value.problems] == ["quantity", "requested_month"]


def test_period_includes_both_days_and_checks_order() -> None:
    period = Period.parse("2026-02-01", "2026-02-28")
    assert (period.end - period.start).days == 28
    assert Period.of_month("2026-12").last_day.isoformat() == "2026-12-31"
    with pytest.raises(Invalid, match="before"):
        Period.parse("2026-03-02", "2026-03-01")
    with pytest.raises(Invalid) as caught:
        Period.parse("01/03/2026", "2026-03-01")
    assert caught.value.field == "from"


# -- consignments plan ----------------------------------------------------------------------


def test_monthly_plan_consolidates_per_location_and_shows_the_saving() -> None:
    items = [
        PlanItem(return_id=1, party="P1", location="Leeds", device_id=A),
        PlanItem(return_id=2, party="P1", location="Leeds", device_id=B),
        PlanItem(return_id=3, party="P2", location="Leeds", device_id=C),
        PlanItem(return_id=4, party="P1", location="York", device_id=D),
    ]
    plan = plan_month("2026-11", items, Decimal("12.50"))
    assert [(s.location, s.hubs, s.parties) for s in plan.shipments] == [
        ("Leeds", 3, ("P1", "P2")),
        ("York", 1, ("P1",)),
    ]
    leeds = plan.shipments[0]
    assert (leeds.consolidated_cost, leeds.individual_cost, leeds.saving) == (
        Decimal("12.50"),
        Decimal("37.50"),
        Decimal("25.00"),
    )
    assert plan.hubs == 4
    assert plan.consolidated_cost == Decimal("25.00")  # 2 shipments
    assert plan.individual_cost == Decimal("50.00")  # 4 hubs
    assert plan.saving == Decimal("25.00")  # (4 - 2) x 12.50
    assert group_consignments(items) == {
        ("P1", "Leeds"): (1, 2),
        ("P1", "York"): (4,),
        ("P2", "Leeds"): (3,),
    }


def test_empty_plan_costs_nothing() -> None:
    plan = plan_month("2026-11", [], Decimal("25"))
    assert (plan.hubs, plan.saving, plan.shipments) == (0, Decimal("0.00"), ())


# -- charges ---------------------------------------------------------------------------------

PRE = FaultReturnType.PRE_INSTALL.value
LOST = NoFaultReturnType.LOST_OR_STOLEN.value
GENERAL = NoFaultReturnType.GENERAL.value
FAULT, NFF = TestOutcome.FAULT_CONFIRMED, TestOutcome.NO_FAULT_FOUND
SINGLE, DUAL = HubVariant.SINGLE_BAND, HubVariant.DUAL_BAND


def facts(return_type: str, outcome: TestOutcome | None, variant: HubVariant | None) -> ChargeFacts:
    return ChargeFacts(return_type=return_type, test_outcome=outcome, hub_variant=variant)


CASES = [
    # (facts, amount, status): by test outcome and hub variant, never by return type
    (facts(PRE, None, DUAL), "0.00", ChargeStatus.PENDING),
    (facts(GENERAL, None, SINGLE), "0.00", ChargeStatus.PENDING),
    (facts(PRE, NFF, DUAL), "8.27", ChargeStatus.CHARGED),
    (facts(GENERAL, NFF, None), "8.27", ChargeStatus.CHARGED),
    (facts(PRE, FAULT, SINGLE), "30.87", ChargeStatus.CHARGED),
    (facts(GENERAL, FAULT, SINGLE), "30.87", ChargeStatus.CHARGED),
    (facts(PRE, FAULT, DUAL), "58.75", ChargeStatus.CHARGED),
    (facts(PRE, FAULT, None), "0.00", ChargeStatus.VARIANT_UNKNOWN),
    (facts(LOST, None, DUAL), "0.00", ChargeStatus.NOT_RETURNED),
    (facts(LOST, None, None), "0.00", ChargeStatus.NOT_RETURNED),
]


@pytest.mark.parametrize(("fact", "amount", "status"), CASES)
def test_default_tariff_prices(fact: ChargeFacts, amount: str, status: ChargeStatus) -> None:
    charge = price(fact, DEFAULT_TARIFF)
    assert charge.amount == Decimal(amount)
    assert charge.status is status


def test_built_in_tariff_is_dccs_published_returns_charges_with_their_source() -> None:
    assert {item: p.amount for item, p in DEFAULT_TARIFF.prices.items()} == {
        TariffItem.REDEPLOYABLE: Decimal("8.27"),
        TariffItem.NON_REDEPLOYABLE_SINGLE_BAND: Decimal("30.87"),
        TariffItem.NON_REDEPLOYABLE_DUAL_BAND: Decimal("58.75"),
    }
    assert {p.source for p in DEFAULT_TARIFF.prices.values()} == {DCC_SOURCE}
    assert "DP238" in DCC_SOURCE
    assert DEFAULT_TARIFF.extras == ()
    assert load_tariff(None) is DEFAULT_TARIFF


def test_every_rule_is_reachable() -> None:
    used = {price(f, DEFAULT_TARIFF).rule for f, _a, _s in CASES}
    assert used == {rule.name for rule in CHARGE_RULES}


def test_custom_tariff_file(tmp_path: Path) -> None:
    path = tmp_path / "tariff.toml"
    path.write_text(
        '[charges.redeployable]\namount = "10.00"\nsource = "Agreement A"\n'
        '[charges.handling]\namount = 2\nsource = "Agreement B"\napplies_to = "non_redeployable"\n'
        '[logistics]\nshipment = "40.125"\n',
        encoding="utf-8",
    )
    tariff = load_tariff(path)
    assert tariff.prices[TariffItem.REDEPLOYABLE].amount == Decimal("10.00")
    assert tariff.prices[TariffItem.REDEPLOYABLE].source == "Agreement A"
    assert tariff.prices[TariffItem.NON_REDEPLOYABLE_DUAL_BAND].amount == Decimal("58.75")
    assert tariff.extras == (
        ExtraItem(
            key="handling",
            amount=Decimal("2.00"),
            source="Agreement B",
            applies_to=Basis.NON_REDEPLOYABLE,
        ),
    )
    assert tariff.shipment == Decimal("40.13")  # rounded half-up to pence
    assert price(facts(PRE, NFF, DUAL), tariff).amount == Decimal("10.00")
    dual = price(facts(PRE, FAULT, DUAL), tariff)
    assert (dual.amount, dual.items) == (
        Decimal("60.75"),
        ("non_redeployable_dual_band", "handling"),
    )
    assert price(facts(LOST, None, DUAL), tariff).amount == Decimal("0.00")
    assert price(facts(PRE, None, DUAL), tariff).amount == Decimal("0.00")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[charges.redeployable]\namount = "-1"\nsource = "x"\n', "charges.redeployable.amount"),
        ('[charges.redeployable]\namount = "lots"\nsource = "x"\n', "charges.redeployable.amount"),
        ("[charges.redeployable]\namount = true\nsource = 'x'\n", "charges.redeployable.amount"),
        ('[charges.redeployable]\namount = "1"\n', "charges.redeployable.source"),
        ('[charges.redeployable]\namount = "1"\nsource = " "\n', "charges.redeployable.source"),
        ('[charges]\nredeployable = "8.27"\n', "charges.redeployable"),
        ('[charges.no_fault_found]\namount = "7.43"\n', "charges.no_fault_found.source"),
        ('[charges.fee]\namount = "1"\nsource = "s"\n', "charges.fee.applies_to"),
        ('[charges.fee]\namount = "1"\nsource = "s"\napplies_to = "x"\n', "charges.fee.applies_to"),
        (
            '[charges.redeployable]\namount = "1"\nsource = "s"\napplies_to = "tested"\n',
            "charges.redeployable.applies_to",
        ),
        ('[charges."Bad Name"]\namount = "1"\nsource = "s"\n', "charges.Bad Name"),
        ('[logistics]\ntruck = "1"\n', "logistics.truck"),
        ("[charges\n", None),
        ("[other]\nx = 1\n", None),
    ],
)
def test_bad_tariff_files_name_the_field(tmp_path: Path, text: str, field: str | None) -> None:
    path = tmp_path / "tariff.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(Invalid) as caught:
        load_tariff(path)
    assert caught.value.field == field
    assert caught.value.hint


def test_missing_tariff_file(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="cannot read tariff file"):
        load_tariff(tmp_path / "absent.toml")


def test_summary_per_party_and_month() -> None:
    single = price(facts(PRE, FAULT, SINGLE), DEFAULT_TARIFF)
    nff = price(facts(PRE, NFF, DUAL), DEFAULT_TARIFF)
    pending = price(facts(PRE, None, DUAL), DEFAULT_TARIFF)
    lost = price(facts(LOST, None, DUAL), DEFAULT_TARIFF)
    out = summarise(
        [
            ChargedHub(party="S1", month="2026-11", device_id=A, charge=single),
            ChargedHub(party="S1", month="2026-11", device_id=B, charge=nff),
            ChargedHub(party="S1", month="2026-11", device_id=C, charge=lost),
            ChargedHub(party="S2", month="2026-10", device_id=D, charge=pending),
        ],
        DEFAULT_TARIFF.item_keys,
    )
    assert [
        (s.party, s.month, s.returns, s.charged, s.pending, s.not_returned, s.total) for s in out
    ] == [
        ("S1", "2026-11", 3, 2, 0, 1, Decimal("39.14")),
        ("S2", "2026-10", 1, 0, 1, 0, Decimal("0.00")),
    ]
    assert out[0].stock_charge_hubs == (C,)
    assert dict(out[0].counts) == {
        "redeployable": 1,
        "non_redeployable_single_band": 1,
        "non_redeployable_dual_band": 0,
    }


# -- README stays in step with the tables ----------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "logistics.md"


def _readme_section() -> str:
    return DOC.read_text(encoding="utf-8")


def test_readme_charges_table_is_the_rule_table() -> None:
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in _readme_section().splitlines()
        if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    ]
    assert [(int(r[0]), r[1]) for r in rows] == [
        (n, rule.name) for n, rule in enumerate(CHARGE_RULES, 1)
    ]
    for row, rule in zip(rows, CHARGE_RULES, strict=True):
        amount = sum((DEFAULT_TARIFF.prices[i].amount for i in rule.items), Decimal("0"))
        assert row[3] == (f"£{amount:.2f}" if rule.items else "none")
        assert row[2] == (" + ".join(f"`{i.value}`" for i in rule.items) or "nothing")
        assert row[4] == f"`{rule.status.value}`"


def test_readme_lifecycle_table_is_the_transition_table() -> None:
    paths = {p.value for p in HubPath}
    rows = {
        tuple(cell.strip() for cell in line.strip("|").split("|")[:4])
        for line in _readme_section().splitlines()
        if line.startswith("| ") and line.split("|")[1].strip() in paths
    }
    assert rows == {
        (p.value, s.value, step.value, new.value) for (p, s, step), new in TRANSITIONS.items()
    }
