"""Returns charges: a tariff (TOML, Decimal money) and the rules that price a return.

``CHARGE_RULES`` is applied top to bottom; the first row whose condition holds
prices the return as the sum of its tariff items. A return that has not been
tested yet is priced on what was declared and marked *provisional*. Defaults
are the SECMP0039 impact-assessment figures; the shipment cost is this
project's placeholder (the IA gives none) and should be set in the tariff file.
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Final

from hubreturns.logistics.errors import Invalid
from hubreturns.logistics.lifecycle import TestOutcome
from hubreturns.model import FaultReason, NoFaultReturnType

__all__ = [
    "CHARGE_RULES",
    "DEFAULT_TARIFF",
    "Charge",
    "ChargeFacts",
    "ChargeRule",
    "ChargeSummary",
    "Tariff",
    "TariffItem",
    "load_tariff",
    "money",
    "price",
    "summarise",
]

PENNY: Final = Decimal("0.01")


def money(value: Decimal) -> Decimal:
    """Round to pence (half-up, as invoices do)."""
    return value.quantize(PENNY, rounding="ROUND_HALF_UP")


class TariffItem(StrEnum):
    """Keys of the ``[charges]`` table of a tariff file."""

    REDEPLOYABLE = "redeployable"
    NON_REDEPLOYABLE_FAULT = "non_redeployable_fault"
    NON_REDEPLOYABLE_DAMAGE = "non_redeployable_damage"
    NO_FAULT_FOUND = "no_fault_found"


@dataclass(frozen=True, slots=True, kw_only=True)
class Tariff:
    """Prices in GBP; ``shipment`` is the cost of one collection shipment."""

    prices: Mapping[TariffItem, Decimal]
    shipment: Decimal
    source: str = "SECMP0039 impact assessment defaults"

    def __post_init__(self) -> None:
        missing = [item.value for item in TariffItem if item not in self.prices]
        if missing:
            raise ValueError(f"tariff lacks {', '.join(missing)}")


DEFAULT_TARIFF: Final = Tariff(
    prices=MappingProxyType(
        {
            TariffItem.REDEPLOYABLE: Decimal("8.27"),
            TariffItem.NON_REDEPLOYABLE_FAULT: Decimal("30.87"),
            TariffItem.NON_REDEPLOYABLE_DAMAGE: Decimal("58.75"),
            TariffItem.NO_FAULT_FOUND: Decimal("7.43"),
        }
    ),
    shipment=Decimal("25.00"),
)


def _amount(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid(
            f"{where}: {value!r} is not an amount",
            'Write amounts in pounds as strings, e.g. redeployable = "8.27".',
            field=where,
        )
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise Invalid(
            f"{where}: {value!r} is not a number",
            'Write amounts in pounds, e.g. redeployable = "8.27".',
            field=where,
        ) from None
    if not amount.is_finite() or amount < 0:
        raise Invalid(
            f"{where}: {value!r} must be a non-negative amount",
            "Charges and shipment costs are pounds, zero or more.",
            field=where,
        )
    return money(amount)


def load_tariff(path: Path | None) -> Tariff:
    """The tariff in ``path`` (missing keys take the defaults), or the defaults for None.

    Format::

        [charges]
        redeployable = "8.27"
        non_redeployable_fault = "30.87"
        non_redeployable_damage = "58.75"
        no_fault_found = "7.43"

        [logistics]
        shipment = "25.00"
    """
    if path is None:
        return DEFAULT_TARIFF
    hint = "See README, Hub logistics, for the tariff file format."
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise Invalid(f"cannot read tariff file {path}: {exc.strerror}", hint) from None
    except tomllib.TOMLDecodeError as exc:
        raise Invalid(f"tariff file {path} is not valid TOML: {exc}", hint) from None
    unknown = set(data) - {"charges", "logistics"}
    if unknown:
        raise Invalid(f"tariff file {path}: unknown table(s) {sorted(unknown)}", hint)
    charges = data.get("charges", {})
    logistics = data.get("logistics", {})
    if not isinstance(charges, dict) or not isinstance(logistics, dict):
        raise Invalid(f"tariff file {path}: [charges] and [logistics] must be tables", hint)
    known = {item.value for item in TariffItem}
    for key in charges:
        if key not in known:
            raise Invalid(
                f"tariff file {path}: unknown charge {key!r}",
                f"Known charges: {', '.join(sorted(known))}.",
                field=f"charges.{key}",
            )
    for key in logistics:
        if key != "shipment":
            raise Invalid(
                f"tariff file {path}: unknown setting logistics.{key}",
                "The [logistics] table has one key, shipment.",
                field=f"logistics.{key}",
            )
    prices = {
        item: _amount(charges[item.value], f"charges.{item.value}")
        if item.value in charges
        else DEFAULT_TARIFF.prices[item]
        for item in TariffItem
    }
    shipment = (
        _amount(logistics["shipment"], "logistics.shipment")
        if "shipment" in logistics
        else DEFAULT_TARIFF.shipment
    )
    return Tariff(prices=MappingProxyType(prices), shipment=shipment, source=str(path))


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeFacts:
    """What pricing looks at: the request variant and type, the fault, the test."""

    variant: str
    return_type: str
    fault_reason: str | None
    test_outcome: TestOutcome | None

    @property
    def is_fault_return(self) -> bool:
        return self.variant == "8.14.3"


_HANDLING_FAULTS: Final = frozenset(
    {
        FaultReason.DAMAGED_CASE.value,
        FaultReason.DAMAGED_CONNECTOR.value,
        FaultReason.ILLEGAL_INTERFERENCE.value,
        FaultReason.ENVIRONMENTAL.value,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeRule:
    name: str
    applies: Callable[[ChargeFacts], bool]
    items: tuple[TariffItem, ...]
    explanation: str


_I = TariffItem
#: First matching row prices the return. README's charges table mirrors this.
CHARGE_RULES: Final[tuple[ChargeRule, ...]] = (
    ChargeRule(
        name="SM WAN variant replacement requested by DCC",
        applies=lambda f: f.return_type == NoFaultReturnType.SM_WAN_VARIANT.value,
        items=(),
        explanation="DCC asked for the swap, so the Supplier is not charged",
    ),
    ChargeRule(
        name="Lost or stolen hub",
        applies=lambda f: f.return_type == NoFaultReturnType.LOST_OR_STOLEN.value,
        items=(_I.NON_REDEPLOYABLE_DAMAGE,),
        explanation="the hub never comes back, so it cannot be redeployed",
    ),
    ChargeRule(
        name="Fault return, no fault found on test",
        applies=lambda f: f.is_fault_return and f.test_outcome is TestOutcome.NO_FAULT_FOUND,
        items=(_I.REDEPLOYABLE, _I.NO_FAULT_FOUND),
        explanation="the hub is redeployable; the no-fault-found fee covers the test",
    ),
    ChargeRule(
        name="Fault return, damage / interference / environment",
        applies=lambda f: f.is_fault_return and f.fault_reason in _HANDLING_FAULTS,
        items=(_I.NON_REDEPLOYABLE_DAMAGE,),
        explanation="damaged case or connector, missing seals, environment exceeded",
    ),
    ChargeRule(
        name="Fault return, hub fault",
        applies=lambda f: f.is_fault_return,
        items=(_I.NON_REDEPLOYABLE_FAULT,),
        explanation="SM WAN, SMHAN, LED, aerial or manufacturing fault",
    ),
    ChargeRule(
        name="No-fault return, fault found on test",
        applies=lambda f: f.test_outcome is TestOutcome.FAULT_CONFIRMED,
        items=(_I.NON_REDEPLOYABLE_FAULT,),
        explanation="declared sound but the DCC test found a fault",
    ),
    ChargeRule(
        name="No-fault return",
        applies=lambda f: True,
        items=(_I.REDEPLOYABLE,),
        explanation="general, non-dom opt out, dual-supplier HAN variant replacement",
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Charge:
    rule: str
    items: tuple[TariffItem, ...]
    amount: Decimal
    provisional: bool


def price(facts: ChargeFacts, tariff: Tariff) -> Charge:
    """The charge for one return under ``tariff`` (first matching rule)."""
    for rule in CHARGE_RULES:
        if rule.applies(facts):
            amount = sum((tariff.prices[item] for item in rule.items), Decimal("0"))
            return Charge(
                rule=rule.name,
                items=rule.items,
                amount=money(amount),
                provisional=facts.test_outcome is None,
            )
    raise AssertionError("the last charge rule matches every return")  # pragma: no cover


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeSummary:
    """Charges of one party in one month (month of notification, YYYY-MM)."""

    party: str
    month: str
    returns: int
    provisional: int
    counts: Mapping[TariffItem, int] = field(default_factory=dict)
    total: Decimal = Decimal("0.00")


def summarise(
    priced: Iterable[tuple[str, str, Charge]],
) -> list[ChargeSummary]:
    """(party, month, charge) triples grouped per party and month, sorted."""
    groups: dict[tuple[str, str], list[Charge]] = defaultdict(list)
    for party, month, charge in priced:
        groups[(party, month)].append(charge)
    out = []
    for (party, month), charges in sorted(groups.items()):
        counts = {item: 0 for item in TariffItem}
        for charge in charges:
            for item in charge.items:
                counts[item] += 1
        out.append(
            ChargeSummary(
                party=party,
                month=month,
                returns=len(charges),
                provisional=sum(c.provisional for c in charges),
                counts=MappingProxyType(counts),
                total=money(sum((c.amount for c in charges), Decimal("0"))),
            )
        )
    return out
