"""Deliveries against orders, as pure checks over an uploaded CSV.

A delivery file lists one hub per row: ``chf_device_id,gpf_device_id`` (the
Communications Hub Function and the Gas Proxy Function of the same hub). The
file is read completely and every problem is reported with its line number
before anything is written; the caller then writes all rows in one
transaction or none.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from hubreturns.dcc.logistics.errors import Conflict, Invalid, RowProblem
from hubreturns.model import eui

__all__ = [
    "DELIVERY_COLUMNS",
    "DeliveredRow",
    "check_delivery",
    "parse_delivery",
]

DELIVERY_COLUMNS: Final = ("chf_device_id", "gpf_device_id")
_FIX: Final = "Fix the listed rows and send the whole file again; nothing was loaded."


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveredRow:
    line: int
    chf_id: str
    gpf_id: str


def _text(data: str | bytes) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise Invalid(
            f"delivery file line {line} is not valid UTF-8",
            "Save the file as UTF-8 CSV.",
            problems=[RowProblem(line=line, field=None, message="is not valid UTF-8")],
        ) from None


def _check_header(header: list[str], line: int) -> None:
    if sorted(header) != sorted(DELIVERY_COLUMNS):
        raise Invalid(
            f"delivery file line {line}: header is {','.join(header)!r}",
            f"The first line must be exactly {','.join(DELIVERY_COLUMNS)}.",
            problems=[
                RowProblem(
                    line=line,
                    field=None,
                    message=f"expected the header {','.join(DELIVERY_COLUMNS)}",
                )
            ],
        )


def _row_ids(cell: Mapping[str, str], line: int, problems: list[RowProblem]) -> dict[str, str]:
    """The row's Device IDs by column; a bad one is a problem and is left out."""
    ids: dict[str, str] = {}
    for column in DELIVERY_COLUMNS:
        try:
            ids[column] = eui(cell[column])
        except ValueError:
            problems.append(
                RowProblem(
                    line=line,
                    field=column,
                    message=f"{cell[column]!r} is not an EUI-64 like 00-DB-12-34-56-78-00-04",
                )
            )
    return ids


def _read_row(
    cell: Mapping[str, str],
    line: int,
    seen: dict[str, tuple[int, str]],
    problems: list[RowProblem],
) -> DeliveredRow | None:
    """One hub's row, or None with its problems added (a Device ID already seen included)."""
    ids = _row_ids(cell, line, problems)
    if len(ids) != len(DELIVERY_COLUMNS):
        return None
    chf, gpf = ids["chf_device_id"], ids["gpf_device_id"]
    if chf == gpf:
        problems.append(
            RowProblem(
                line=line,
                field="gpf_device_id",
                message=f"{gpf} is the same as the CHF; a hub's GPF has its own ID",
            )
        )
        return None
    bad = False
    for column, value in (("chf_device_id", chf), ("gpf_device_id", gpf)):
        if value in seen:
            first_line, first_column = seen[value]
            problems.append(
                RowProblem(
                    line=line,
                    field=column,
                    message=f"{value} already appears on line {first_line} "
                    f"({first_column}); each Device ID is delivered once",
                )
            )
            bad = True
        else:
            seen[value] = (line, column)
    return None if bad else DeliveredRow(line=line, chf_id=chf, gpf_id=gpf)


def parse_delivery(data: str | bytes) -> list[DeliveredRow]:
    """Every row, checked; or ``Invalid`` listing every bad row (format and repeats)."""
    problems: list[RowProblem] = []
    rows: list[DeliveredRow] = []
    seen: dict[str, tuple[int, str]] = {}
    reader = csv.reader(io.StringIO(_text(data), newline=""))
    header: list[str] | None = None
    end = 0
    try:
        for raw in reader:
            line, end = end + 1, reader.line_num
            cells = [cell.strip() for cell in raw]
            if not any(cells):
                continue
            if header is None:
                _check_header(cells, line)
                header = cells
                continue
            if len(cells) != len(header):
                problems.append(
                    RowProblem(
                        line=line,
                        field=None,
                        message=f"has {len(cells)} fields, expected {len(header)}",
                    )
                )
                continue
            row = _read_row(dict(zip(header, cells, strict=True)), line, seen, problems)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        problems.append(
            RowProblem(line=reader.line_num or 1, field=None, message=f"is not readable CSV: {exc}")
        )
    if header is None:
        raise Invalid(
            "the delivery file is empty",
            f"Send a CSV whose first line is {','.join(DELIVERY_COLUMNS)}, one hub per row.",
        )
    if problems:
        raise Invalid(
            f"delivery refused ({len(problems)} problem(s)); nothing was loaded:",
            _FIX,
            problems=problems,
        )
    if not rows:
        raise Invalid("the delivery file lists no hubs", "Add one row per delivered hub.")
    return rows


def check_delivery(
    *,
    order_id: int,
    quantity: int,
    already_delivered: int,
    rows: Sequence[DeliveredRow],
    known: Mapping[str, str],
) -> None:
    """Refuse Device IDs already known and deliveries beyond the ordered quantity.

    ``known`` maps each Device ID of the file that already exists to where it
    was found ("in the Smart Metering Inventory", "delivered for order 3").
    """
    problems = [
        RowProblem(
            line=row.line,
            field=column,
            message=f"{value} is already {known[value]}",
        )
        for row in rows
        for column, value in (("chf_device_id", row.chf_id), ("gpf_device_id", row.gpf_id))
        if value in known
    ]
    if problems:
        raise Conflict(
            f"delivery refused: {len(problems)} Device ID(s) already exist; nothing was loaded:",
            "Remove hubs that were delivered or loaded before, or check the order number.",
            problems=problems,
        )
    remaining = quantity - already_delivered
    if len(rows) > remaining:
        raise Conflict(
            f"over-delivery: order {order_id} is for {quantity} hub(s), {already_delivered} "
            f"already delivered, this file has {len(rows)} ({len(rows) - remaining} too many)",
            f"Deliver at most {remaining} more hub(s) against order {order_id}, "
            "or record a new order for the rest.",
            field="quantity",
        )
