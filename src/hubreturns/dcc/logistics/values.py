"""Checked input values of the logistics operations (pure; no database).

Every constructor here names the field it refused and how to write it, so the
CLI and the API report the same message for the same mistake.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Final, TypeVar

from hubreturns.dcc.logistics.errors import Invalid, RowProblem
from hubreturns.model import eui

__all__ = [
    "ConsignmentStatus",
    "HubVariant",
    "OrderAction",
    "OrderChange",
    "OrderRequest",
    "OrderStatus",
    "Period",
    "check_consignment_status",
    "check_eui",
    "check_location",
    "check_month",
    "check_quantity",
    "check_requested_month",
    "check_variant",
    "month_of",
]

_T = TypeVar("_T")


class OrderStatus(StrEnum):
    """Values of ``hub_orders.status``."""

    OPEN = "open"
    CANCELLED = "cancelled"


class OrderAction(StrEnum):
    """Values of ``hub_order_events.action``: what was done to an order."""

    PLACED = "placed"
    AMENDED = "amended"
    CANCELLED = "cancelled"


class ConsignmentStatus(StrEnum):
    """Values of ``consignments.status``: a consignment is collected once, as a whole."""

    PLANNED = "planned"
    COLLECTED = "collected"


def check_consignment_status(text: str, field: str = "status") -> ConsignmentStatus:
    """``planned`` or ``collected`` (case forgiven)."""
    try:
        return ConsignmentStatus(text.strip().lower())
    except ValueError:
        raise Invalid(
            f"{field}: {text!r} is not a consignment status",
            f"Give one of: {', '.join(s.value for s in ConsignmentStatus)}.",
            field=field,
        ) from None


class HubVariant(StrEnum):
    """The Communications Hub variants a Supplier orders, as the charges distinguish them.

    DCC's returns charges for a hub that cannot be redeployed differ between a
    single band and a dual band (HAN) hub, so an order names one of these and
    every hub delivered against it keeps it.
    """

    SINGLE_BAND = "single_band"
    DUAL_BAND = "dual_band"


def check_variant(text: str, field: str = "hub_variant") -> HubVariant:
    """``single_band`` or ``dual_band`` (spaces and case forgiven)."""
    value = "_".join(text.strip().lower().replace("-", " ").split())
    try:
        return HubVariant(value)
    except ValueError:
        raise Invalid(
            f"{field}: {text!r} is not a hub variant",
            f"Give one of: {', '.join(v.value for v in HubVariant)}.",
            field=field,
        ) from None


def check_quantity(quantity: object, field: str = "quantity") -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= 100_000:
        raise Invalid(
            f"{field}: {quantity!r} is not a whole number from 1 to 100000",
            "Order at least one hub.",
            field=field,
        )
    return quantity


def check_requested_month(text: str, now: datetime, field: str = "requested_month") -> str:
    """A ``YYYY-MM`` month that is this month or later (hubs cannot be delivered in the past)."""
    value = check_month(text, field)
    current = month_of(now)
    if value < current:
        raise Invalid(
            f"{field}: {value} is in the past (this month is {current})",
            f"Ask for delivery in {current} or later.",
            field=field,
        )
    return value


def _collect(problems: list[RowProblem], check: Callable[[], _T]) -> _T | None:
    """Run one field check, keeping its problem instead of stopping at it."""
    try:
        return check()
    except Invalid as exc:
        problems.append(RowProblem(line=0, field=exc.field, message=exc.message))
        return None


def _refuse(problems: list[RowProblem], what: str) -> Invalid:
    return Invalid(
        f"{what} refused ({len(problems)} problem(s)); nothing was written:",
        "Fix every listed field and send it again.",
        field=problems[0].field if len(problems) == 1 else None,
        problems=problems,
    )


_MONTH_RE: Final = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


def check_month(text: str, field: str) -> str:
    """``YYYY-MM``."""
    value = text.strip()
    if not _MONTH_RE.fullmatch(value):
        raise Invalid(
            f"{field}: {text!r} is not a month written YYYY-MM",
            "Write the month as e.g. 2026-11.",
            field=field,
        )
    return value


def month_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def check_eui(text: str, field: str) -> str:
    try:
        return eui(text)
    except ValueError as exc:
        raise Invalid(
            f"{field}: {exc}", "Write User and Device IDs as 00-DB-12-34-56-78-00-04.", field=field
        ) from None


def check_location(text: str, field: str) -> str:
    value = " ".join(text.split())
    if not value or len(value) > 200:
        raise Invalid(
            f"{field}: a location needs 1 to 200 characters, got {len(value)}",
            "Give the site name or postcode the hubs are delivered to / collected from.",
            field=field,
        )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderRequest:
    """A Communications Hub order as entered (before the registry is consulted)."""

    supplier: str
    placed_by: str
    quantity: int
    hub_variant: HubVariant
    delivery_location: str
    requested_month: str

    @classmethod
    def parse(
        cls,
        *,
        supplier: str,
        placed_by: str | None,
        quantity: object,
        hub_variant: str,
        delivery_location: str,
        requested_month: str,
        now: datetime,
    ) -> OrderRequest:
        """Every field checked; ``Invalid`` lists every wrong field at once."""
        problems: list[RowProblem] = []
        supplier_id = _collect(problems, lambda: check_eui(supplier, "supplier"))
        placer = _collect(problems, lambda: check_eui(placed_by, "placed_by") if placed_by else "")
        count = _collect(problems, lambda: check_quantity(quantity))
        variant = _collect(problems, lambda: check_variant(hub_variant))
        place = _collect(problems, lambda: check_location(delivery_location, "delivery_location"))
        month = _collect(problems, lambda: check_requested_month(requested_month, now))
        if problems:
            raise _refuse(problems, "order")
        assert supplier_id is not None and placer is not None and count is not None
        assert variant is not None and place is not None and month is not None
        return cls(
            supplier=supplier_id,
            placed_by=placer or supplier_id,
            quantity=count,
            hub_variant=variant,
            delivery_location=place,
            requested_month=month,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderChange:
    """An amendment: only the fields given change (at least one)."""

    quantity: int | None = None
    hub_variant: HubVariant | None = None
    delivery_location: str | None = None
    requested_month: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        quantity: object = None,
        hub_variant: str | None = None,
        delivery_location: str | None = None,
        requested_month: str | None = None,
        now: datetime,
    ) -> OrderChange:
        problems: list[RowProblem] = []
        change = cls(
            quantity=None
            if quantity is None
            else _collect(problems, lambda: check_quantity(quantity)),
            hub_variant=None
            if hub_variant is None
            else _collect(problems, lambda: check_variant(hub_variant)),
            delivery_location=None
            if delivery_location is None
            else _collect(problems, lambda: check_location(delivery_location, "delivery_location")),
            requested_month=None
            if requested_month is None
            else _collect(problems, lambda: check_requested_month(requested_month, now)),
        )
        if problems:
            raise _refuse(problems, "amendment")
        if change == cls():
            raise Invalid(
                "amendment: nothing to change",
                "Give at least one of quantity, hub_variant, delivery_location, requested_month.",
            )
        return change

    def changes(self) -> dict[str, str | int]:
        """The given fields only, as plain values (for the order's history)."""
        out: dict[str, str | int] = {}
        for name in ("quantity", "hub_variant", "delivery_location", "requested_month"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.value if isinstance(value, HubVariant) else value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    """``[start, end)`` in UTC, from two inclusive dates."""

    start: datetime
    end: datetime
    first_day: date
    last_day: date

    @classmethod
    def parse(cls, first: str, last: str) -> Period:
        days = []
        for text, field in ((first, "from"), (last, "to")):
            try:
                days.append(date.fromisoformat(text.strip()))
            except ValueError:
                raise Invalid(
                    f"{field}: {text!r} is not a date written YYYY-MM-DD",
                    "Give the first and last day of the period, e.g. --from 2026-11-01 "
                    "--to 2026-11-30.",
                    field=field,
                ) from None
        if days[1] < days[0]:
            raise Invalid(
                f"to: {days[1]} is before from: {days[0]}",
                "The period runs from --from to --to, both days included.",
                field="to",
            )
        start = datetime(days[0].year, days[0].month, days[0].day, tzinfo=UTC)
        end = datetime(days[1].year, days[1].month, days[1].day, tzinfo=UTC) + timedelta(days=1)
        return cls(start=start, end=end, first_day=days[0], last_day=days[1])

    @classmethod
    def of_month(cls, month: str) -> Period:
        year, number = (int(part) for part in check_month(month, "month").split("-"))
        first = date(year, number, 1)
        following = date(year + number // 12, number % 12 + 1, 1)
        return cls.parse(first.isoformat(), (following - timedelta(days=1)).isoformat())
