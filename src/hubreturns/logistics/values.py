"""Checked input values of the logistics operations (pure; no database).

Every constructor here names the field it refused and how to write it, so the
CLI and the API report the same message for the same mistake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from hubreturns.logistics.errors import Invalid
from hubreturns.model import eui

__all__ = [
    "OrderRequest",
    "Period",
    "check_eui",
    "check_location",
    "check_month",
    "month_of",
]

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
    hub_variant: str
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
    ) -> OrderRequest:
        supplier_id = check_eui(supplier, "supplier")
        if (
            isinstance(quantity, bool)
            or not isinstance(quantity, int)
            or not (1 <= quantity <= 100_000)
        ):
            raise Invalid(
                f"quantity: {quantity!r} is not a whole number from 1 to 100000",
                "Order at least one hub.",
                field="quantity",
            )
        variant = " ".join(hub_variant.split())
        if not variant or len(variant) > 64:
            raise Invalid(
                f"hub_variant: needs 1 to 64 characters, got {len(variant)}",
                "Name the Communications Hub variant as in the DCC catalogue, "
                "e.g. 'SM WAN variant: dual band' or 'HAN variant: single band'.",
                field="hub_variant",
            )
        return cls(
            supplier=supplier_id,
            placed_by=check_eui(placed_by, "placed_by") if placed_by else supplier_id,
            quantity=quantity,
            hub_variant=variant,
            delivery_location=check_location(delivery_location, "delivery_location"),
            requested_month=check_month(requested_month, "requested_month"),
        )


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
