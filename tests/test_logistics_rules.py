"""Pure logistics rules: lifecycle table, delivery files, consignment plan, charges, tariff."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from hubreturns.logistics.charges import (
    CHARGE_RULES,
    DEFAULT_TARIFF,
    ChargeFacts,
    TariffItem,
    load_tariff,
    price,
    summarise,
)
from hubreturns.logistics.consignments import PlanItem, group_consignments, plan_month
from hubreturns.logistics.errors import Conflict, Invalid
from hubreturns.logistics.lifecycle import (
    TRANSITIONS,
    ReturnStatus,
    Step,
    TestOutcome,
    next_status,
)
from hubreturns.logistics.orders import check_delivery, parse_delivery
from hubreturns.logistics.values import OrderRequest, Period
from hubreturns.model import FaultReason, FaultReturnType, NoFaultReturnType

A, B, C = "00-DB-12-34-56-78-AA-01", "00-DB-12-34-56-78-AA-02", "00-DB-12-34-56-78-AA-03"
D = "00-DB-12-34-56-78-AA-04"

# -- lifecycle ---------------------------------------------------------------------------

HAPPY = [
    (ReturnStatus.NOTIFIED, Step.COLLECT, ReturnStatus.COLLECTED),
    (ReturnStatus.COLLECTED, Step.RECEIVE, ReturnStatus.RECEIVED),
    (ReturnStatus.RECEIVED, Step.TEST, ReturnStatus.TESTED),
    (ReturnStatus.TESTED, Step.CLOSE, ReturnStatus.CLOSED),
]


def test_transition_table_is_exactly_the_documented_chain() -> None:
    assert sorted((s, st, n) for (s, st), n in TRANSITIONS.items()) == sorted(HAPPY)


@pytest.mark.parametrize(("status", "step", "new"), HAPPY)
def test_each_allowed_step(status: ReturnStatus, step: Step, new: ReturnStatus) -> None:
    assert next_status(7, status.value, step) is new


INVALID = [
    (status, step) for status in ReturnStatus for step in Step if (status, step) not in TRANSITIONS
]


@pytest.mark.parametrize(("status", "step"), INVALID)
def test_every_other_step_is_refused_with_the_allowed_one(status: ReturnStatus, step: Step) -> None:
    with pytest.raises(Conflict) as caught:
        next_status(7, status.value, step)
    assert f"return 7 is {status.value}" in caught.value.message
    assert "notified → collected → received → tested → closed" in caught.value.hint
    assert caught.value.status == 409


def test_unknown_status_is_refused() -> None:
    with pytest.raises(Conflict, match="unknown status"):
        next_status(1, "lost", Step.CLOSE)


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


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("supplier", {"supplier": "nope"}),
        ("quantity", {"quantity": 0}),
        ("quantity", {"quantity": True}),
        ("hub_variant", {"hub_variant": "  "}),
        ("delivery_location", {"delivery_location": ""}),
        ("requested_month", {"requested_month": "2026-13"}),
        ("placed_by", {"placed_by": "x"}),
    ],
)
def test_order_fields_are_checked(field: str, changes: dict[str, object]) -> None:
    values: dict[str, object] = {
        "supplier": A,
        "placed_by": None,
        "quantity": 5,
        "hub_variant": "HAN variant: dual band",
        "delivery_location": "Leeds depot",
        "requested_month": "2026-12",
    } | changes
    with pytest.raises(Invalid) as caught:
        OrderRequest.parse(**values)  # type: ignore[arg-type]
    assert caught.value.field == field


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

FAULT, NO_FAULT = "8.14.3", "8.14.4"


def facts(
    variant: str, return_type: str, reason: str | None, outcome: TestOutcome | None
) -> ChargeFacts:
    return ChargeFacts(
        variant=variant, return_type=return_type, fault_reason=reason, test_outcome=outcome
    )


PRE = FaultReturnType.PRE_INSTALL.value
CASES = [
    # (facts, rule items, default amount, provisional)
    (facts(FAULT, PRE, FaultReason.LED.value, None), "30.87", True),
    (facts(FAULT, PRE, FaultReason.LED.value, TestOutcome.FAULT_CONFIRMED), "30.87", False),
    (
        facts(FAULT, PRE, FaultReason.DAMAGED_CASE.value, TestOutcome.FAULT_CONFIRMED),
        "58.75",
        False,
    ),
    (facts(FAULT, PRE, FaultReason.ENVIRONMENTAL.value, None), "58.75", True),
    (facts(FAULT, PRE, FaultReason.LED.value, TestOutcome.NO_FAULT_FOUND), "15.70", False),
    (facts(NO_FAULT, NoFaultReturnType.GENERAL.value, None, None), "8.27", True),
    (
        facts(NO_FAULT, NoFaultReturnType.GENERAL.value, None, TestOutcome.NO_FAULT_FOUND),
        "8.27",
        False,
    ),
    (
        facts(
            NO_FAULT, NoFaultReturnType.DUAL_SUPPLIER_HAN.value, None, TestOutcome.FAULT_CONFIRMED
        ),
        "30.87",
        False,
    ),
    (facts(NO_FAULT, NoFaultReturnType.SM_WAN_VARIANT.value, None, None), "0.00", True),
    (facts(NO_FAULT, NoFaultReturnType.LOST_OR_STOLEN.value, None, None), "58.75", True),
]


@pytest.mark.parametrize(("fact", "amount", "provisional"), CASES)
def test_default_tariff_prices(fact: ChargeFacts, amount: str, provisional: bool) -> None:
    charge = price(fact, DEFAULT_TARIFF)
    assert charge.amount == Decimal(amount)
    assert charge.provisional is provisional


def test_impact_assessment_defaults() -> None:
    assert dict(DEFAULT_TARIFF.prices) == {
        TariffItem.REDEPLOYABLE: Decimal("8.27"),
        TariffItem.NON_REDEPLOYABLE_FAULT: Decimal("30.87"),
        TariffItem.NON_REDEPLOYABLE_DAMAGE: Decimal("58.75"),
        TariffItem.NO_FAULT_FOUND: Decimal("7.43"),
    }
    assert load_tariff(None) is DEFAULT_TARIFF


def test_every_rule_is_reachable() -> None:
    used = {price(f, DEFAULT_TARIFF).rule for f, _a, _p in CASES}
    assert used == {rule.name for rule in CHARGE_RULES}


def test_custom_tariff_file(tmp_path: Path) -> None:
    path = tmp_path / "tariff.toml"
    path.write_text(
        '[charges]\nredeployable = "10.00"\nno_fault_found = 5\n[logistics]\nshipment = "40.125"\n',
        encoding="utf-8",
    )
    tariff = load_tariff(path)
    assert tariff.prices[TariffItem.REDEPLOYABLE] == Decimal("10.00")
    assert tariff.prices[TariffItem.NO_FAULT_FOUND] == Decimal("5.00")
    assert tariff.prices[TariffItem.NON_REDEPLOYABLE_FAULT] == Decimal("30.87")  # default kept
    assert tariff.shipment == Decimal("40.13")  # rounded half-up to pence
    nff = facts(FAULT, PRE, FaultReason.LED.value, TestOutcome.NO_FAULT_FOUND)
    assert price(nff, tariff).amount == Decimal("15.00")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[charges]\nredeployable = "-1"\n', "charges.redeployable"),
        ('[charges]\nredeployable = "lots"\n', "charges.redeployable"),
        ("[charges]\nredeployable = true\n", "charges.redeployable"),
        ('[charges]\nredeploy = "1"\n', "charges.redeploy"),
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
    led = price(facts(FAULT, PRE, FaultReason.LED.value, None), DEFAULT_TARIFF)
    nff = price(
        facts(FAULT, PRE, FaultReason.LED.value, TestOutcome.NO_FAULT_FOUND), DEFAULT_TARIFF
    )
    out = summarise([("S1", "2026-11", led), ("S1", "2026-11", nff), ("S2", "2026-10", led)])
    assert [(s.party, s.month, s.returns, s.provisional, s.total) for s in out] == [
        ("S1", "2026-11", 2, 1, Decimal("46.57")),
        ("S2", "2026-10", 1, 1, Decimal("30.87")),
    ]
    assert out[0].counts[TariffItem.REDEPLOYABLE] == 1
    assert out[0].counts[TariffItem.NO_FAULT_FOUND] == 1


# -- README stays in step with the tables ----------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("## Hub logistics", 1)[1].split("\n## ", 1)[0]


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
        amount = sum((DEFAULT_TARIFF.prices[i] for i in rule.items), Decimal("0"))
        assert row[3] == f"£{amount:.2f}"
        assert row[2] == (" + ".join(f"`{i.value}`" for i in rule.items) or "nothing")


def test_readme_lifecycle_table_is_the_transition_table() -> None:
    statuses = {s.value for s in ReturnStatus}
    rows = {
        tuple(cell.strip() for cell in line.strip("|").split("|")[:3])
        for line in _readme_section().splitlines()
        if line.startswith("| ") and line.split("|")[1].strip() in statuses
    }
    assert rows == {(s.value, step.value, new.value) for (s, step), new in TRANSITIONS.items()}
