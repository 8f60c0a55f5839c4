"""Returns charges: a tariff (TOML, Decimal money) and the rules that price a return.

The built-in amounts are DCC's published returns charges, as quoted on SECAS's
DP238 page: £8.27 per returned hub that can be redeployed, and per returned hub
that cannot, £30.87 for a single band hub or £58.75 for a dual band hub. Whether
a hub can be redeployed is what the DCC test finds, so a return is priced once
its test outcome is known; before that it is *pending* (a figure guessed from
the declaration could flip either way on test). A lost or stolen hub is never
returned: it bears no return charge, but it goes on accruing the
pre-installation stock charge, so it is listed as such (our sources give no
stock charge figure, so none is computed).

``CHARGE_RULES`` is applied top to bottom; the first row whose condition holds
prices the return. Every built-in tariff item carries its source; a tariff file
may change an amount or add its own items, each with a ``source`` string.
"""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from hubreturns.dcc.logistics.errors import Invalid
from hubreturns.dcc.logistics.lifecycle import TestOutcome, is_lost_or_stolen
from hubreturns.dcc.logistics.values import HubVariant

__all__ = [
    "CHARGE_RULES",
    "DCC_SOURCE",
    "DEFAULT_TARIFF",
    "Basis",
    "Charge",
    "ChargeFacts",
    "ChargeRule",
    "ChargeStatus",
    "ChargeSummary",
    "ChargedHub",
    "ExtraItem",
    "Price",
    "Tariff",
    "TariffItem",
    "load_tariff",
    "money",
    "price",
    "summarise",
]

PENNY: Final = Decimal("0.01")
DCC_SOURCE: Final = "DCC returns charges, as quoted on SECAS's DP238 page"


def money(value: Decimal) -> Decimal:
    """Round to pence (half-up, as invoices do)."""
    return value.quantize(PENNY, rounding="ROUND_HALF_UP")


class TariffItem(StrEnum):
    """The built-in charges (keys of the ``[charges]`` table of a tariff file)."""

    REDEPLOYABLE = "redeployable"
    NON_REDEPLOYABLE_SINGLE_BAND = "non_redeployable_single_band"
    NON_REDEPLOYABLE_DUAL_BAND = "non_redeployable_dual_band"


class Basis(StrEnum):
    """Which tested returns an item a tariff file adds is charged on."""

    REDEPLOYABLE = "redeployable"
    NON_REDEPLOYABLE = "non_redeployable"
    TESTED = "tested"


class ChargeStatus(StrEnum):
    CHARGED = "charged"
    #: Returned hub whose test outcome is not known yet.
    PENDING = "pending"
    #: Tested, cannot be redeployed, but the hub was not delivered here: variant unknown.
    VARIANT_UNKNOWN = "variant_unknown"
    #: Lost or stolen: no return charge; the pre-installation stock charge accrues.
    NOT_RETURNED = "not_returned"


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    amount: Decimal
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtraItem:
    """An item a tariff file adds, charged on top of the built-in one on ``applies_to``."""

    key: str
    amount: Decimal
    source: str
    applies_to: Basis


@dataclass(frozen=True, slots=True, kw_only=True)
class Tariff:
    """Prices in GBP with their sources; ``shipment`` is the cost of one collection shipment."""

    prices: Mapping[TariffItem, Price]
    shipment: Decimal
    extras: tuple[ExtraItem, ...] = ()
    source: str = DCC_SOURCE

    def __post_init__(self) -> None:
        missing = [item.value for item in TariffItem if item not in self.prices]
        if missing:
            raise ValueError(f"tariff lacks {', '.join(missing)}")

    @property
    def item_keys(self) -> tuple[str, ...]:
        """Built-in items, then added ones, in tariff order (report columns)."""
        return (*(i.value for i in TariffItem), *(e.key for e in self.extras))


DEFAULT_TARIFF: Final = Tariff(
    prices=MappingProxyType(
        {
            TariffItem.REDEPLOYABLE: Price(amount=Decimal("8.27"), source=DCC_SOURCE),
            TariffItem.NON_REDEPLOYABLE_SINGLE_BAND: Price(
                amount=Decimal("30.87"), source=DCC_SOURCE
            ),
            TariffItem.NON_REDEPLOYABLE_DUAL_BAND: Price(
                amount=Decimal("58.75"), source=DCC_SOURCE
            ),
        }
    ),
    # Not a charge: the cost of one collection shipment in the monthly plan. No
    # published figure exists; set yours in the tariff file ([logistics] shipment).
    shipment=Decimal("25.00"),
)

_HINT: Final = "See docs/logistics.md, Charges, for the tariff file format."
_KEY_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _amount(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid(
            f"{where}: {value!r} is not an amount",
            'Write amounts in pounds as strings, e.g. amount = "8.27".',
            field=where,
        )
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise Invalid(
            f"{where}: {value!r} is not a number",
            'Write amounts in pounds, e.g. amount = "8.27".',
            field=where,
        ) from None
    if not amount.is_finite() or amount < 0:
        raise Invalid(
            f"{where}: {value!r} must be a non-negative amount",
            "Charges and shipment costs are pounds, zero or more.",
            field=where,
        )
    return money(amount)


def _source(value: object, where: str) -> str:
    text = " ".join(value.split()) if isinstance(value, str) else ""
    if not text or len(text) > 200:
        raise Invalid(
            f"{where}: every charge needs a source (1 to 200 characters)",
            'Say where the amount comes from, e.g. source = "Supply agreement, schedule 3".',
            field=where,
        )
    return text


def _item(key: str, entry: object, path: Path) -> Price | ExtraItem:
    where = f"charges.{key}"
    if not isinstance(entry, dict):
        raise Invalid(
            f"tariff file {path}: {where} must be a table with amount and source",
            f'Write [{where}] with amount = "…" and source = "…". {_HINT}',
            field=where,
        )
    builtin = key in {i.value for i in TariffItem}
    allowed = {"amount", "source"} | (set() if builtin else {"applies_to"})
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise Invalid(
            f"tariff file {path}: unknown setting(s) {unknown} in {where}",
            f"[{where}] takes {', '.join(sorted(allowed))}.",
            field=f"{where}.{unknown[0]}",
        )
    amount = _amount(entry.get("amount"), f"{where}.amount")
    source = _source(entry.get("source"), f"{where}.source")
    if builtin:
        return Price(amount=amount, source=source)
    try:
        basis = Basis(str(entry.get("applies_to")))
    except ValueError:
        raise Invalid(
            f"tariff file {path}: {where}.applies_to must be one of "
            f"{', '.join(b.value for b in Basis)}",
            "An added item is charged on top of the built-in one for these tested returns.",
            field=f"{where}.applies_to",
        ) from None
    return ExtraItem(key=key, amount=amount, source=source, applies_to=basis)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise Invalid(f"cannot read tariff file {path}: {exc.strerror}", _HINT) from None
    except tomllib.TOMLDecodeError as exc:
        raise Invalid(f"tariff file {path} is not valid TOML: {exc}", _HINT) from None
    unknown = set(data) - {"charges", "logistics"}
    if unknown:
        raise Invalid(f"tariff file {path}: unknown table(s) {sorted(unknown)}", _HINT)
    charges, logistics = data.get("charges", {}), data.get("logistics", {})
    if not isinstance(charges, dict) or not isinstance(logistics, dict):
        raise Invalid(f"tariff file {path}: [charges] and [logistics] must be tables", _HINT)
    for key in logistics:
        if key != "shipment":
            raise Invalid(
                f"tariff file {path}: unknown setting logistics.{key}",
                "The [logistics] table has one key, shipment.",
                field=f"logistics.{key}",
            )
    return charges, logistics


def load_tariff(path: Path | None) -> Tariff:
    """The tariff in ``path`` (items not named keep the built-in ones), or the defaults.

    Format (every item is a table with an amount and its source)::

        [charges.non_redeployable_dual_band]
        amount = "58.75"
        source = "DCC returns charges, as quoted on SECAS's DP238 page"

        [charges.handling]            # an item of your own
        amount = "2.00"
        source = "Supply agreement, schedule 3"
        applies_to = "non_redeployable"   # or redeployable, tested

        [logistics]
        shipment = "25.00"
    """
    if path is None:
        return DEFAULT_TARIFF
    charges, logistics = _read(path)
    prices: dict[TariffItem, Price] = dict(DEFAULT_TARIFF.prices)
    extras: list[ExtraItem] = []
    for key, entry in charges.items():
        if not _KEY_RE.fullmatch(key):
            raise Invalid(
                f"tariff file {path}: {key!r} is not a charge name",
                "Name charges in lower case letters, digits and _, e.g. handling_fee.",
                field=f"charges.{key}",
            )
        item = _item(key, entry, path)
        if isinstance(item, Price):
            prices[TariffItem(key)] = item
        else:
            extras.append(item)
    shipment = (
        _amount(logistics["shipment"], "logistics.shipment")
        if "shipment" in logistics
        else DEFAULT_TARIFF.shipment
    )
    return Tariff(
        prices=MappingProxyType(prices), shipment=shipment, extras=tuple(extras), source=str(path)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeFacts:
    """What pricing looks at: the return type, the test outcome, the hub's variant."""

    return_type: str
    test_outcome: TestOutcome | None
    hub_variant: HubVariant | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeRule:
    name: str
    applies: Callable[[ChargeFacts], bool]
    items: tuple[TariffItem, ...]
    status: ChargeStatus
    basis: Basis | None
    explanation: str


def _fault(f: ChargeFacts) -> bool:
    return f.test_outcome is TestOutcome.FAULT_CONFIRMED


_I = TariffItem
#: First matching row prices the return. docs/logistics.md's charges table mirrors this.
CHARGE_RULES: Final[tuple[ChargeRule, ...]] = (
    ChargeRule(
        name="Lost or stolen hub",
        applies=lambda f: is_lost_or_stolen(f.return_type),
        items=(),
        status=ChargeStatus.NOT_RETURNED,
        basis=None,
        explanation="never returned: no return charge; the pre-installation stock charge "
        "goes on accruing",
    ),
    ChargeRule(
        name="Not tested yet",
        applies=lambda f: f.test_outcome is None,
        items=(),
        status=ChargeStatus.PENDING,
        basis=None,
        explanation="the charge depends on whether the DCC test finds the hub redeployable",
    ),
    ChargeRule(
        name="No fault found: redeployable",
        applies=lambda f: f.test_outcome is TestOutcome.NO_FAULT_FOUND,
        items=(_I.REDEPLOYABLE,),
        status=ChargeStatus.CHARGED,
        basis=Basis.REDEPLOYABLE,
        explanation="the hub can be redeployed",
    ),
    ChargeRule(
        name="Fault confirmed: not redeployable, single band",
        applies=lambda f: _fault(f) and f.hub_variant is HubVariant.SINGLE_BAND,
        items=(_I.NON_REDEPLOYABLE_SINGLE_BAND,),
        status=ChargeStatus.CHARGED,
        basis=Basis.NON_REDEPLOYABLE,
        explanation="the hub cannot be redeployed; single band hub",
    ),
    ChargeRule(
        name="Fault confirmed: not redeployable, dual band",
        applies=lambda f: _fault(f) and f.hub_variant is HubVariant.DUAL_BAND,
        items=(_I.NON_REDEPLOYABLE_DUAL_BAND,),
        status=ChargeStatus.CHARGED,
        basis=Basis.NON_REDEPLOYABLE,
        explanation="the hub cannot be redeployed; dual band hub",
    ),
    ChargeRule(
        name="Fault confirmed: variant unknown",
        applies=lambda f: True,
        items=(),
        status=ChargeStatus.VARIANT_UNKNOWN,
        basis=None,
        explanation="the hub was not delivered against an order here, so its variant "
        "(and charge) is unknown",
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Charge:
    rule: str
    items: tuple[str, ...]
    amount: Decimal
    status: ChargeStatus

    @property
    def pending(self) -> bool:
        return self.status in (ChargeStatus.PENDING, ChargeStatus.VARIANT_UNKNOWN)


def price(facts: ChargeFacts, tariff: Tariff) -> Charge:
    """The charge for one return under ``tariff`` (first matching rule, plus added items)."""
    for rule in CHARGE_RULES:
        if rule.applies(facts):
            amount = sum((tariff.prices[item].amount for item in rule.items), Decimal("0"))
            extras = tuple(
                e
                for e in tariff.extras
                if rule.basis is not None and e.applies_to in (rule.basis, Basis.TESTED)
            )
            return Charge(
                rule=rule.name,
                items=(*(i.value for i in rule.items), *(e.key for e in extras)),
                amount=money(amount + sum((e.amount for e in extras), Decimal("0"))),
                status=rule.status,
            )
    raise AssertionError("the last charge rule matches every return")  # pragma: no cover


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeSummary:
    """Charges of one party in one month (month of notification, YYYY-MM).

    ``stock_charge_hubs`` are the lost or stolen hubs (Device IDs): no return
    charge, but they go on accruing the pre-installation stock charge.
    """

    party: str
    month: str
    returns: int
    charged: int
    pending: int
    not_returned: int
    counts: Mapping[str, int] = field(default_factory=dict)
    total: Decimal = Decimal("0.00")
    stock_charge_hubs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargedHub:
    """One returned hub's charge, and the party and month it is charged to."""

    party: str
    month: str
    device_id: str
    charge: Charge


def summarise(priced: Iterable[ChargedHub], item_keys: Iterable[str]) -> list[ChargeSummary]:
    """Charged hubs grouped per party and month, sorted."""
    keys = tuple(item_keys)
    groups: dict[tuple[str, str], list[tuple[str, Charge]]] = defaultdict(list)
    for hub in priced:
        groups[(hub.party, hub.month)].append((hub.device_id, hub.charge))
    out = []
    for (party, month), charges in sorted(groups.items()):
        counts = dict.fromkeys(keys, 0)
        for _device, charge in charges:
            for item in charge.items:
                counts[item] = counts.get(item, 0) + 1
        out.append(
            ChargeSummary(
                party=party,
                month=month,
                returns=len(charges),
                charged=sum(c.status is ChargeStatus.CHARGED for _d, c in charges),
                pending=sum(c.pending for _d, c in charges),
                not_returned=sum(c.status is ChargeStatus.NOT_RETURNED for _d, c in charges),
                counts=counts,  # a plain dict: JSON-serialisable as it is
                total=money(sum((c.amount for _d, c in charges), Decimal("0"))),
                stock_charge_hubs=tuple(
                    sorted(d for d, c in charges if c.status is ChargeStatus.NOT_RETURNED)
                ),
            )
        )
    return out
