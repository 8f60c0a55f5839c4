"""Consignments and the monthly collection plan (pure arithmetic over returns).

A consignment is the notified returns of one returning party at one
collection location. The monthly plan consolidates a month's returns into one
shipment per location (whoever the parties are) and shows the saving against
sending every hub on its own: ``saving = (hubs - shipments) * shipment cost``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from hubreturns.dcc.logistics.charges import money

__all__ = ["MonthlyPlan", "PlanItem", "Shipment", "group_consignments", "plan_month"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanItem:
    """One notified return waiting for collection."""

    return_id: int
    party: str
    location: str
    device_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Shipment:
    location: str
    parties: tuple[str, ...]
    return_ids: tuple[int, ...]
    consolidated_cost: Decimal
    individual_cost: Decimal

    @property
    def hubs(self) -> int:
        return len(self.return_ids)

    @property
    def saving(self) -> Decimal:
        return money(self.individual_cost - self.consolidated_cost)


@dataclass(frozen=True, slots=True, kw_only=True)
class MonthlyPlan:
    month: str
    shipment_cost: Decimal
    shipments: tuple[Shipment, ...]

    @property
    def hubs(self) -> int:
        return sum(s.hubs for s in self.shipments)

    @property
    def consolidated_cost(self) -> Decimal:
        return money(sum((s.consolidated_cost for s in self.shipments), Decimal("0")))

    @property
    def individual_cost(self) -> Decimal:
        return money(sum((s.individual_cost for s in self.shipments), Decimal("0")))

    @property
    def saving(self) -> Decimal:
        return money(self.individual_cost - self.consolidated_cost)


def plan_month(month: str, items: Iterable[PlanItem], shipment_cost: Decimal) -> MonthlyPlan:
    """One shipment per location, against one shipment per hub."""
    by_location: dict[str, list[PlanItem]] = defaultdict(list)
    for item in items:
        by_location[item.location].append(item)
    shipments = tuple(
        Shipment(
            location=location,
            parties=tuple(sorted({i.party for i in group})),
            return_ids=tuple(sorted(i.return_id for i in group)),
            consolidated_cost=money(shipment_cost),
            individual_cost=money(shipment_cost * len(group)),
        )
        for location, group in sorted(by_location.items())
    )
    return MonthlyPlan(month=month, shipment_cost=money(shipment_cost), shipments=shipments)


def group_consignments(items: Iterable[PlanItem]) -> dict[tuple[str, str], tuple[int, ...]]:
    """(party, location) -> return ids, each group becoming one consignment."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for item in items:
        groups[(item.party, item.location)].append(item.return_id)
    return {key: tuple(sorted(ids)) for key, ids in sorted(groups.items())}
