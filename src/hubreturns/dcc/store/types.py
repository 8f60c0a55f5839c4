"""Column types shared by every table: aware UTC moments and enumerations stored as text.

``Moment`` exists because SQLite has no time zones: SQLAlchemy's ``DateTime``
writes an aware value's wall-clock time there and reads it back naive, which
every reader would have to re-attach UTC to. ``Moment`` writes UTC and always
reads back an aware UTC value, on either engine, and refuses a naive value
rather than guess its zone.

``text_enum`` stores an ``Enum``'s values (not its names) in a plain
``VARCHAR`` of the column's existing length, with no CHECK constraint or
database type: the stored form is what the migrations created, and reads
come back as the enum.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum as PyEnum
from typing import Any

from sqlalchemy import DateTime, Dialect, Enum
from sqlalchemy.types import TypeDecorator

__all__ = ["Moment", "text_enum"]


class Moment(TypeDecorator[datetime]):
    """A timezone-aware moment, stored in UTC and read back aware in UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone; the store keeps aware moments only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        if moment.tzinfo is None:  # SQLite: written in UTC by process_bind_param
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


def text_enum(enum: type[PyEnum], length: int) -> Enum:
    """``enum``'s values in a ``VARCHAR(length)``; no database enum type, no CHECK."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )
