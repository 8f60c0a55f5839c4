"""Logistics tables (migration 0002): orders, deliveries, consignments, return progress.

They sit beside the core tables on the same ``Base`` and only *refer* to
``returns`` and ``devices``; the accepted-return path never writes them. A
return's lifecycle status stays in ``returns.status`` (the core column), the
timestamps and test outcome of each step live in ``return_progress``, and every
step is also appended to ``return_events`` so the history is never overwritten.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hubreturns.dcc.logistics.lifecycle import Step, TestOutcome
from hubreturns.dcc.logistics.values import ConsignmentStatus, HubVariant, OrderAction, OrderStatus
from hubreturns.dcc.store.models import Base
from hubreturns.dcc.store.types import Moment, text_enum
from hubreturns.model import ReturnStatus, Role

__all__ = [
    "Consignment",
    "DeliveredHub",
    "HubDelivery",
    "HubOrder",
    "HubOrderEvent",
    "ReturnEvent",
    "ReturnProgress",
]

EUI = String(23)
#: 64-bit keys; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigRef = BigInteger().with_variant(Integer(), "sqlite")
BigId = BigRef


class HubOrder(Base):
    """A Communications Hub order (SEC F5) for a Supplier, placed by it or by its RSA."""

    __tablename__ = "hub_orders"
    __table_args__ = (Index("ix_hub_orders_supplier", "supplier_user_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    supplier_user_id: Mapped[str] = mapped_column(EUI, ForeignKey("users.user_id"))
    placed_by: Mapped[str] = mapped_column(EUI, ForeignKey("users.user_id"))
    placed_by_role: Mapped[Role] = mapped_column(text_enum(Role, 3))
    quantity: Mapped[int] = mapped_column(Integer)
    #: A ``values.HubVariant`` value.
    hub_variant: Mapped[HubVariant] = mapped_column(text_enum(HubVariant, 64))
    delivery_location: Mapped[str] = mapped_column(String(200))
    requested_month: Mapped[str] = mapped_column(String(7))
    created_at: Mapped[datetime] = mapped_column(Moment)
    #: ``open`` or ``cancelled`` (migration 0009).
    status: Mapped[OrderStatus] = mapped_column(
        text_enum(OrderStatus, 16), default=OrderStatus.OPEN
    )


class HubOrderEvent(Base):
    """One thing done to an order (placed, amended, cancelled), by whom; append-only."""

    __tablename__ = "hub_order_events"
    __table_args__ = (Index("ix_hub_order_events_order", "order_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(BigRef, ForeignKey("hub_orders.id"))
    action: Mapped[OrderAction] = mapped_column(text_enum(OrderAction, 16))
    #: JSON object: the fields as placed, or ``{field: [before, after]}`` for an amendment.
    changes: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(Moment)


class HubDelivery(Base):
    """One delivery against an order (a CSV of hub Device IDs)."""

    __tablename__ = "hub_deliveries"
    __table_args__ = (Index("ix_hub_deliveries_order", "order_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(BigRef, ForeignKey("hub_orders.id"))
    hub_count: Mapped[int] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(String(200))
    delivered_at: Mapped[datetime] = mapped_column(Moment)


class DeliveredHub(Base):
    """A hub (CHF + GPF) that arrived in a delivery; a Device ID is delivered once."""

    __tablename__ = "delivered_hubs"
    __table_args__ = (Index("ix_delivered_hubs_order", "order_id"),)

    device_id: Mapped[str] = mapped_column(EUI, primary_key=True)
    gpf_id: Mapped[str] = mapped_column(EUI, unique=True)
    delivery_id: Mapped[int] = mapped_column(BigRef, ForeignKey("hub_deliveries.id"))
    order_id: Mapped[int] = mapped_column(BigRef, ForeignKey("hub_orders.id"))
    #: The order's ``values.HubVariant`` when the hub was delivered (migration 0009).
    hub_variant: Mapped[HubVariant] = mapped_column(text_enum(HubVariant, 16))


class Consignment(Base):
    """Returned hubs of one returning party collected together from one location."""

    __tablename__ = "consignments"
    __table_args__ = (Index("ix_consignments_party_location", "party", "collection_location"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    party: Mapped[str] = mapped_column(EUI)
    collection_location: Mapped[str] = mapped_column(String(200))
    month: Mapped[str] = mapped_column(String(7))
    status: Mapped[ConsignmentStatus] = mapped_column(text_enum(ConsignmentStatus, 16))
    created_at: Mapped[datetime] = mapped_column(Moment)
    collected_at: Mapped[datetime | None] = mapped_column(Moment)


class ReturnProgress(Base):
    """Where an accepted return is in its physical life after notification."""

    __tablename__ = "return_progress"
    __table_args__ = (Index("ix_return_progress_consignment", "consignment_id"),)

    return_id: Mapped[int] = mapped_column(BigRef, ForeignKey("returns.id"), primary_key=True)
    collection_location: Mapped[str | None] = mapped_column(String(200))
    consignment_id: Mapped[int | None] = mapped_column(BigRef, ForeignKey("consignments.id"))
    collected_at: Mapped[datetime | None] = mapped_column(Moment)
    received_at: Mapped[datetime | None] = mapped_column(Moment)
    tested_at: Mapped[datetime | None] = mapped_column(Moment)
    test_outcome: Mapped[TestOutcome | None] = mapped_column(text_enum(TestOutcome, 16))
    closed_at: Mapped[datetime | None] = mapped_column(Moment)
    written_off_at: Mapped[datetime | None] = mapped_column(Moment)


class ReturnEvent(Base):
    """One lifecycle step taken, by whom; append-only."""

    __tablename__ = "return_events"
    __table_args__ = (Index("ix_return_events_return", "return_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    return_id: Mapped[int] = mapped_column(BigRef, ForeignKey("returns.id"))
    step: Mapped[Step] = mapped_column(text_enum(Step, 16))
    from_status: Mapped[ReturnStatus] = mapped_column(text_enum(ReturnStatus, 16))
    to_status: Mapped[ReturnStatus] = mapped_column(text_enum(ReturnStatus, 16))
    actor: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(Moment)
