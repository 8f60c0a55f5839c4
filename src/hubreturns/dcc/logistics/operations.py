"""The logistics operations over the store: one transaction per call, all or nothing.

Each public method opens its own transaction (``sessions.begin()``), checks
everything first with the pure modules (``values``, ``orders``,
``lifecycle``, ``consignments``, ``charges``) and raises ``LogisticsError``
before any write, so a refused call leaves the database as it was. Races
between two operators are settled by conditional updates (``WHERE status =
…``), as in the core. The CLI and the HTTP API are thin shells over this class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.codes import DEFAULT_PROFILE, CodeProfile
from hubreturns.dcc.logistics.charges import (
    Charge,
    ChargedHub,
    ChargeFacts,
    ChargeSummary,
    Tariff,
    price,
    summarise,
)
from hubreturns.dcc.logistics.consignments import (
    MonthlyPlan,
    PlanItem,
    group_consignments,
    plan_month,
)
from hubreturns.dcc.logistics.errors import Conflict, Invalid, NotFound
from hubreturns.dcc.logistics.lifecycle import (
    Step,
    TestOutcome,
    is_lost_or_stolen,
    next_status,
    path_of,
)
from hubreturns.dcc.logistics.models import (
    Consignment,
    DeliveredHub,
    HubDelivery,
    HubOrder,
    HubOrderEvent,
    ReturnEvent,
    ReturnProgress,
)
from hubreturns.dcc.logistics.orders import DeliveredRow, check_delivery, parse_delivery
from hubreturns.dcc.logistics.values import (
    ConsignmentStatus,
    HubVariant,
    OrderAction,
    OrderChange,
    OrderRequest,
    OrderStatus,
    Period,
    check_location,
    month_of,
)
from hubreturns.dcc.rules import (
    SECMP0039,
    EligibilityProfile,
    OrderFacts,
    OrderRefusal,
    check_order,
)
from hubreturns.dcc.store.models import Device, ReturnRecord
from hubreturns.dcc.store.repository import Repository
from hubreturns.model import (
    DeviceType,
    NoFaultReturnType,
    ReturnStatus,
    Role,
    SmiStatus,
    utcnow,
)

__all__ = [
    "ConsignmentView",
    "DeliveryView",
    "Logistics",
    "OrderEventView",
    "OrderStatus",
    "OrderView",
    "PricedReturn",
    "ProgressCallback",
    "ReturnView",
]

#: Called as work advances: (what, done, total).
ProgressCallback = Callable[[str, int, int], None]


def _check_month_now(month: str, now: datetime) -> None:
    """A requested month before the current one is refused (checked at the write's clock)."""
    if month < month_of(now):
        raise Invalid(
            f"requested_month: {month} is in the past (this month is {month_of(now)})",
            f"Ask for delivery in {month_of(now)} or later.",
            field="requested_month",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PricedReturn:
    """A return notified in a period, with what it is charged (``Logistics.priced_returns``)."""

    record: ReturnRecord
    charge: Charge


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderView:
    id: int
    supplier: str
    placed_by: str
    placed_by_role: str
    quantity: int
    delivered: int
    hub_variant: str
    delivery_location: str
    requested_month: str
    created_at: datetime
    status: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderEventView:
    """One entry of an order's history; ``changes`` as recorded (see ``HubOrderEvent``)."""

    order_id: int
    action: str
    changes: dict[str, object]
    actor: str
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryView:
    id: int
    order_id: int
    hubs: int
    order_delivered: int
    order_quantity: int
    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsignmentView:
    id: int
    party: str
    collection_location: str
    month: str
    status: str
    return_ids: tuple[int, ...]
    created_at: datetime
    collected_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReturnView:
    id: int
    device_id: str
    originator: str
    role: str
    on_behalf_of: str
    service_reference_variant: str
    return_type: str
    fault_reason: str | None
    status: str
    notified_at: datetime
    collection_location: str | None
    consignment_id: int | None
    collected_at: datetime | None
    received_at: datetime | None
    tested_at: datetime | None
    test_outcome: str | None
    closed_at: datetime | None
    written_off_at: datetime | None
    hub_variant: str | None
    charge_rule: str
    charge: Decimal
    charge_status: str
    hub_open_return_id: int | None


def _refuse_order(facts: OrderFacts) -> None:
    """Raise the error of the first ``rules.ORDER_RULES`` row the order fails."""
    failed = check_order(facts)
    if failed is None:
        return
    rule, message, hint = failed
    error = Invalid if rule.refusal is OrderRefusal.INVALID else Conflict
    raise error(message, hint, field=rule.field)


class Logistics:
    """Orders, deliveries, consignments, lifecycle steps and charges over one database."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        tariff: Tariff,
        *,
        clock: Callable[[], datetime] = utcnow,
        eligibility: EligibilityProfile = SECMP0039,
        codes: CodeProfile = DEFAULT_PROFILE,
    ) -> None:
        self.sessions = sessions
        self.tariff = tariff
        self.clock = clock
        #: Under a profile that authorises orderers, their roles may place orders.
        self.eligibility = eligibility
        #: The service's ``[response_codes]``: reports explain recorded codes by it.
        self.codes = codes

    # -- orders and deliveries -----------------------------------------------------

    def create_order(self, order: OrderRequest, actor: str = "") -> OrderView:
        """Record an order for a Supplier, placed by it or by an RSA it appoints now."""
        now = self.clock()
        _check_month_now(order.requested_month, now)
        with self.sessions.begin() as session:
            facts = self._order_facts(session, order.supplier, order.placed_by, now)
            _refuse_order(facts)
            assert facts.supplier is not None and facts.placer is not None
            supplier, placer = facts.supplier, facts.placer
            row = HubOrder(
                supplier_user_id=supplier.user_id,
                placed_by=placer.user_id,
                placed_by_role=placer.role,
                quantity=order.quantity,
                hub_variant=order.hub_variant,
                delivery_location=order.delivery_location,
                requested_month=order.requested_month,
                created_at=now,
                status=OrderStatus.OPEN,
            )
            session.add(row)
            session.flush()
            placed = {
                "quantity": order.quantity,
                "hub_variant": order.hub_variant.value,
                "delivery_location": order.delivery_location,
                "requested_month": order.requested_month,
            }
            self._order_event(
                session, row.id, OrderAction.PLACED, placed, actor or placer.user_id, now
            )
            return self._order_view(session, row)

    def _order_facts(
        self, session: Session, supplier_id: str, placed_by: str, now: datetime
    ) -> OrderFacts:
        """The order's parties from the registry; an RSA placer's appointments with them."""
        repository = Repository(session)
        placer = repository.user_facts(placed_by)
        appointed_by = (
            repository.appointed_by(placed_by, now)
            if placer is not None and placer.role is Role.RSA
            else frozenset[str]()
        )
        return OrderFacts(
            supplier_id=supplier_id,
            supplier=repository.user_facts(supplier_id),
            placed_by=placed_by,
            placer=placer,
            appointed_by=appointed_by,
            eligibility=self.eligibility,
        )

    def amend_order(self, order_id: int, change: OrderChange, actor: str) -> OrderView:
        """Change an open order before any hub is delivered against it; kept in its history."""
        now = self.clock()
        if change.requested_month is not None:
            _check_month_now(change.requested_month, now)
        with self.sessions.begin() as session:
            row = self._undelivered_order(session, order_id, OrderAction.AMENDED)
            recorded: dict[str, object] = {}
            for name, value in change.changes().items():
                before = getattr(row, name)
                if before != value:
                    recorded[name] = [before, value]
                    setattr(row, name, value)
            if not recorded:
                raise Invalid(
                    f"order {order_id} already has these values; nothing to change",
                    "Give the fields that should change.",
                )
            self._order_event(session, order_id, OrderAction.AMENDED, recorded, actor, now)
            session.flush()
            return self._order_view(session, row)

    def cancel_order(self, order_id: int, actor: str) -> OrderView:
        """Cancel an open order before any hub is delivered against it."""
        now = self.clock()
        with self.sessions.begin() as session:
            row = self._undelivered_order(session, order_id, OrderAction.CANCELLED)
            row.status = OrderStatus.CANCELLED
            self._order_event(session, order_id, OrderAction.CANCELLED, {}, actor, now)
            session.flush()
            return self._order_view(session, row)

    def order_history(self, order_id: int) -> list[OrderEventView]:
        with self.sessions() as session:
            self._get_order(session, order_id)
            events = session.scalars(
                select(HubOrderEvent)
                .where(HubOrderEvent.order_id == order_id)
                .order_by(HubOrderEvent.id)
            )
            return [
                OrderEventView(
                    order_id=e.order_id,
                    action=e.action,
                    changes=json.loads(e.changes),
                    actor=e.actor,
                    at=e.at,
                )
                for e in events
            ]

    def _undelivered_order(self, session: Session, order_id: int, done: OrderAction) -> HubOrder:
        """The order, locked, if it is open and nothing was delivered against it yet."""
        row = self._get_order(session, order_id, lock=True)
        if row.status != OrderStatus.OPEN:
            raise Conflict(
                f"order {order_id} is {row.status}; it cannot be {done}",
                "Record a new order instead.",
                field="order",
            )
        delivered = self._delivered(session, order_id)
        if delivered:
            raise Conflict(
                f"order {order_id} has {delivered} hub(s) delivered; it cannot be {done}",
                "An order can be amended or cancelled only before its first delivery; "
                "record a new order for a change.",
                field="order",
            )
        return row

    @staticmethod
    def _order_event(
        session: Session,
        order_id: int,
        action: OrderAction,
        changes: Mapping[str, object],
        actor: str,
        now: datetime,
    ) -> None:
        session.add(
            HubOrderEvent(
                order_id=order_id,
                action=action,
                changes=json.dumps(changes, sort_keys=True),
                actor=actor[:100],
                at=now,
            )
        )

    def orders(self, supplier: str | None = None) -> list[OrderView]:
        with self.sessions() as session:
            query = select(HubOrder).order_by(HubOrder.id)
            if supplier is not None:
                query = query.where(HubOrder.supplier_user_id == supplier)
            return [self._order_view(session, row) for row in session.scalars(query)]

    def order(self, order_id: int) -> OrderView:
        with self.sessions() as session:
            return self._order_view(session, self._get_order(session, order_id))

    def deliver(
        self,
        order_id: int,
        data: str | bytes,
        *,
        source: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> DeliveryView:
        """Load a delivery CSV against an order: every hub or none.

        Delivered hubs enter the inventory as a CHF and its GPF, SMI status
        Pending, with the ordering Supplier responsible.
        """
        rows = parse_delivery(data)
        now = self.clock()
        with self.sessions.begin() as session:
            # Row lock on PostgreSQL (SQLite's BEGIN IMMEDIATE already serialises):
            # two deliveries against one order cannot both pass the quantity check.
            order = self._get_order(session, order_id, lock=True)
            if order.status != OrderStatus.OPEN:
                raise Conflict(
                    f"order {order_id} is {order.status}; nothing can be delivered against it",
                    "Check the order number, or record a new order.",
                    field="order",
                )
            delivered = self._delivered(session, order_id)
            known = _known_devices(session, rows)
            check_delivery(
                order_id=order_id,
                quantity=order.quantity,
                already_delivered=delivered,
                rows=rows,
                known=known,
            )
            delivery = HubDelivery(
                order_id=order_id, hub_count=len(rows), source=source, delivered_at=now
            )
            session.add(delivery)
            session.flush()
            _load_hubs(session, order, delivery, rows, now, progress)
            session.flush()
            return DeliveryView(
                id=delivery.id,
                order_id=order_id,
                hubs=len(rows),
                order_delivered=delivered + len(rows),
                order_quantity=order.quantity,
                device_ids=tuple(row.chf_id for row in rows),
            )

    # -- consignments ----------------------------------------------------------------

    def locate(self, return_id: int, location: str) -> ReturnView:
        """Set where a notified return is to be collected from."""
        place = check_location(location, "location")
        with self.sessions.begin() as session:
            record = self._get_return(session, return_id)
            _refuse_lost(record, "given a collection location")
            if record.status != ReturnStatus.NOTIFIED:
                raise Conflict(
                    f"return {return_id} is {record.status}; only a notified return can be "
                    "given a collection location",
                    "The location is fixed once the hub is collected.",
                    field="location",
                )
            progress_row = self._progress(session, return_id)
            if progress_row.consignment_id is not None:
                raise Conflict(
                    f"return {return_id} is already in consignment {progress_row.consignment_id}",
                    "Collect that consignment or leave the location as it is.",
                    field="location",
                )
            progress_row.collection_location = place
            session.flush()
            return self._return_view(session, record)

    def plan(self, month: str, default_location: str | None = None) -> MonthlyPlan:
        """The month's uncollected returns as one shipment per location (read-only)."""
        with self.sessions() as session:
            items = self._pending_items(session, month, default_location)
        return plan_month(month, items, self.tariff.shipment)

    def create_consignments(
        self,
        month: str,
        default_location: str | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[ConsignmentView]:
        """Group the month's notified, unconsigned returns by party and location."""
        now = self.clock()
        with self.sessions.begin() as session:
            items = self._pending_items(session, month, default_location)
            if not items:
                raise Conflict(
                    f"no notified returns from {month} are waiting for a consignment",
                    "Check the month (returns are grouped by the month they were notified).",
                    field="month",
                )
            groups = group_consignments(items)
            created = []
            for done, ((party, location), return_ids) in enumerate(groups.items(), 1):
                consignment = Consignment(
                    party=party,
                    collection_location=location,
                    month=month,
                    status=ConsignmentStatus.PLANNED,
                    created_at=now,
                )
                session.add(consignment)
                session.flush()
                for return_id in return_ids:
                    self._progress(session, return_id)
                    claimed = session.execute(
                        update(ReturnProgress)
                        .where(
                            ReturnProgress.return_id == return_id,
                            ReturnProgress.consignment_id.is_(None),
                        )
                        .values(collection_location=location, consignment_id=consignment.id)
                        .execution_options(synchronize_session=False)
                    )
                    if claimed.rowcount != 1:  # type: ignore[attr-defined]
                        raise Conflict(
                            f"return {return_id} was put in another consignment meanwhile",
                            "Run the command again; it takes only returns still waiting.",
                        )
                session.flush()
                created.append(self._consignment_view(session, consignment))
                if progress is not None:
                    progress("creating consignments", done, len(groups))
            return created

    def consignments(
        self, period: Period | None = None, status: ConsignmentStatus | None = None
    ) -> list[ConsignmentView]:
        with self.sessions() as session:
            query = select(Consignment).order_by(Consignment.id)
            if period is not None:
                query = query.where(
                    Consignment.created_at >= period.start, Consignment.created_at < period.end
                )
            if status is not None:
                query = query.where(Consignment.status == status)
            return [self._consignment_view(session, c) for c in session.scalars(query)]

    def consignment(self, consignment_id: int) -> ConsignmentView:
        with self.sessions() as session:
            return self._consignment_view(session, self._get_consignment(session, consignment_id))

    # -- lifecycle -------------------------------------------------------------------

    def collect(self, consignment_id: int, actor: str) -> ConsignmentView:
        """Step *collect* for every return of the consignment, together."""
        now = self.clock()
        with self.sessions.begin() as session:
            consignment = self._get_consignment(session, consignment_id)
            if consignment.status != ConsignmentStatus.PLANNED:
                raise Conflict(
                    f"consignment {consignment_id} is already {consignment.status}",
                    "Each consignment is collected once; see `hubreturns consignments list`.",
                    field="consignment",
                )
            return_ids = self._consignment_returns(session, consignment_id)
            for return_id in return_ids:
                record = self._get_return(session, return_id)
                self._step(session, record, Step.COLLECT, actor, now)
                self._progress(session, return_id).collected_at = now
            consignment.status = ConsignmentStatus.COLLECTED
            consignment.collected_at = now
            session.flush()
            return self._consignment_view(session, consignment)

    def receive(self, return_id: int, actor: str) -> ReturnView:
        """Step *receive*: the hub arrived at the DCC."""
        return self._single_step(return_id, Step.RECEIVE, actor)

    def test(self, return_id: int, outcome: TestOutcome, actor: str) -> ReturnView:
        """Step *test*: record fault confirmed / no fault found."""
        return self._single_step(return_id, Step.TEST, actor, outcome=outcome)

    def close(self, return_id: int, actor: str) -> ReturnView:
        """Step *close*: releases the hub (``devices.open_return_id`` back to NULL)."""
        return self._single_step(return_id, Step.CLOSE, actor)

    def write_off(self, return_id: int, actor: str) -> ReturnView:
        """Step *write off*, the one closing step of a lost or stolen hub's return.

        Like close it releases the hub (should it turn up, it can be returned).
        """
        return self._single_step(return_id, Step.WRITE_OFF, actor)

    def return_view(self, return_id: int) -> ReturnView:
        with self.sessions() as session:
            return self._return_view(session, self._get_return(session, return_id))

    def _single_step(
        self, return_id: int, step: Step, actor: str, *, outcome: TestOutcome | None = None
    ) -> ReturnView:
        now = self.clock()
        with self.sessions.begin() as session:
            record = self._get_return(session, return_id)
            self._step(session, record, step, actor, now)
            row = self._progress(session, return_id)
            if step is Step.RECEIVE:
                row.received_at = now
            elif step is Step.TEST:
                assert outcome is not None
                row.tested_at = now
                row.test_outcome = outcome
            elif step in (Step.CLOSE, Step.WRITE_OFF):
                if step is Step.CLOSE:
                    row.closed_at = now
                else:
                    row.written_off_at = now
                session.execute(
                    update(Device)
                    .where(Device.device_id == record.device_id, Device.open_return_id == return_id)
                    .values(open_return_id=None, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
            session.flush()
            session.expire_all()
            return self._return_view(session, self._get_return(session, return_id))

    def _step(
        self, session: Session, record: ReturnRecord, step: Step, actor: str, now: datetime
    ) -> None:
        """Apply one table transition with a conditional write (a lost race is a Conflict)."""
        current = record.status
        new = next_status(record.id, current, step, path_of(record.return_type))
        result = session.execute(
            update(ReturnRecord)
            .where(ReturnRecord.id == record.id, ReturnRecord.status == current)
            .values(status=new)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict(
                f"return {record.id} changed while this step ran",
                "Look at the return again and repeat the step if it is still due.",
            )
        session.add(
            ReturnEvent(
                return_id=record.id,
                step=step,
                from_status=current,
                to_status=new,
                actor=actor[:100],
                at=now,
            )
        )

    # -- charges ---------------------------------------------------------------------

    def priced_returns(self, period: Period) -> list[PricedReturn]:
        """Every return notified in ``period`` with its test outcome and charge."""
        with self.sessions() as session:
            rows = session.execute(
                select(ReturnRecord, ReturnProgress.test_outcome, DeliveredHub.hub_variant)
                .outerjoin(ReturnProgress, ReturnProgress.return_id == ReturnRecord.id)
                .outerjoin(DeliveredHub, DeliveredHub.device_id == ReturnRecord.device_id)
                .where(
                    ReturnRecord.received_at >= period.start,
                    ReturnRecord.received_at < period.end,
                )
                .order_by(ReturnRecord.id)
            ).all()
            return [
                PricedReturn(
                    record=row.ReturnRecord,
                    charge=self._price(row.ReturnRecord, row.test_outcome, row.hub_variant),
                )
                for row in rows
            ]

    def charges(self, period: Period) -> list[ChargeSummary]:
        """Charges per charged party (the Supplier the return was made for) and month."""
        return summarise(
            (
                ChargedHub(
                    party=priced.record.on_behalf_of,
                    month=month_of(priced.record.received_at),
                    device_id=priced.record.device_id,
                    charge=priced.charge,
                )
                for priced in self.priced_returns(period)
            ),
            self.tariff.item_keys,
        )

    def _price(self, record: ReturnRecord, outcome: str | None, variant: str | None) -> Charge:
        return price(
            ChargeFacts(
                return_type=record.return_type,
                test_outcome=TestOutcome(outcome) if outcome else None,
                hub_variant=HubVariant(variant) if variant else None,
            ),
            self.tariff,
        )

    # -- helpers -----------------------------------------------------------------------

    def _get_order(self, session: Session, order_id: int, *, lock: bool = False) -> HubOrder:
        return _get_or_not_found(
            session,
            HubOrder,
            order_id,
            "order",
            "List orders with `hubreturns orders list`; record one with `orders add`.",
            lock=lock,
        )

    def _get_return(self, session: Session, return_id: int) -> ReturnRecord:
        return _get_or_not_found(
            session, ReturnRecord, return_id, "return", "Find return ids with `hubreturns returns`."
        )

    def _get_consignment(self, session: Session, consignment_id: int) -> Consignment:
        return _get_or_not_found(
            session,
            Consignment,
            consignment_id,
            "consignment",
            "List consignments with `hubreturns consignments list`.",
        )

    def _progress(self, session: Session, return_id: int) -> ReturnProgress:
        row = session.get(ReturnProgress, return_id)
        if row is None:
            row = ReturnProgress(return_id=return_id)
            session.add(row)
            session.flush()
        return row

    def _delivered(self, session: Session, order_id: int) -> int:
        return int(
            session.scalar(
                select(func.count())
                .select_from(DeliveredHub)
                .where(DeliveredHub.order_id == order_id)
            )
            or 0
        )

    def _order_view(self, session: Session, row: HubOrder) -> OrderView:
        return OrderView(
            id=row.id,
            supplier=row.supplier_user_id,
            placed_by=row.placed_by,
            placed_by_role=row.placed_by_role,
            quantity=row.quantity,
            delivered=self._delivered(session, row.id),
            hub_variant=row.hub_variant,
            delivery_location=row.delivery_location,
            requested_month=row.requested_month,
            created_at=row.created_at,
            status=row.status,
        )

    def _consignment_returns(self, session: Session, consignment_id: int) -> tuple[int, ...]:
        return tuple(
            session.scalars(
                select(ReturnProgress.return_id)
                .where(ReturnProgress.consignment_id == consignment_id)
                .order_by(ReturnProgress.return_id)
            )
        )

    def _consignment_view(self, session: Session, row: Consignment) -> ConsignmentView:
        return ConsignmentView(
            id=row.id,
            party=row.party,
            collection_location=row.collection_location,
            month=row.month,
            status=row.status,
            return_ids=self._consignment_returns(session, row.id),
            created_at=row.created_at,
            collected_at=row.collected_at,
        )

    def _pending_items(
        self, session: Session, month: str, default_location: str | None
    ) -> list[PlanItem]:
        """Notified, unconsigned returns of ``month`` with their collection location.

        A lost or stolen hub is never collected, so its return is never planned.

        The location is the one set with ``locate``, else the delivery location
        of the order the hub came in, else ``default_location``.
        """
        period = Period.of_month(month)
        fallback = (
            check_location(default_location, "default_location")
            if default_location is not None
            else None
        )
        rows = session.execute(
            select(
                ReturnRecord.id,
                ReturnRecord.originator,
                ReturnRecord.device_id,
                ReturnProgress.collection_location,
                HubOrder.delivery_location,
            )
            .outerjoin(ReturnProgress, ReturnProgress.return_id == ReturnRecord.id)
            .outerjoin(DeliveredHub, DeliveredHub.device_id == ReturnRecord.device_id)
            .outerjoin(HubOrder, HubOrder.id == DeliveredHub.order_id)
            .where(
                ReturnRecord.status == ReturnStatus.NOTIFIED,
                ReturnRecord.return_type != NoFaultReturnType.LOST_OR_STOLEN.value,
                ReturnProgress.consignment_id.is_(None),
                ReturnRecord.received_at >= period.start,
                ReturnRecord.received_at < period.end,
            )
            .order_by(ReturnRecord.id)
        ).all()
        items: list[PlanItem] = []
        unlocated: list[int] = []
        for return_id, party, device_id, located, delivered_to in rows:
            location = located or delivered_to or fallback
            if location is None:
                unlocated.append(return_id)
                continue
            items.append(
                PlanItem(return_id=return_id, party=party, location=location, device_id=device_id)
            )
        if unlocated:
            shown = ", ".join(str(i) for i in unlocated[:20])
            raise Invalid(
                f"default_location: {len(unlocated)} return(s) have no known collection "
                f"location (return ids {shown}{' …' if len(unlocated) > 20 else ''})",
                "Set each with `hubreturns lifecycle locate RETURN_ID LOCATION`, or give "
                "--default-location for all of them.",
                field="default_location",
            )
        return items

    def _return_view(self, session: Session, record: ReturnRecord) -> ReturnView:
        progress = session.get(ReturnProgress, record.id)
        outcome = progress.test_outcome if progress is not None else None
        variant = session.scalar(
            select(DeliveredHub.hub_variant).where(DeliveredHub.device_id == record.device_id)
        )
        charge = self._price(record, outcome, variant)
        device = session.get(Device, record.device_id)
        return ReturnView(
            id=record.id,
            device_id=record.device_id,
            originator=record.originator,
            role=record.role,
            on_behalf_of=record.on_behalf_of,
            service_reference_variant=record.service_reference_variant,
            return_type=record.return_type,
            fault_reason=record.fault_reason,
            status=record.status,
            notified_at=record.received_at,
            collection_location=progress.collection_location if progress else None,
            consignment_id=progress.consignment_id if progress else None,
            collected_at=progress.collected_at if progress else None,
            received_at=progress.received_at if progress else None,
            tested_at=progress.tested_at if progress else None,
            test_outcome=outcome,
            closed_at=progress.closed_at if progress else None,
            written_off_at=progress.written_off_at if progress else None,
            hub_variant=variant,
            charge_rule=charge.rule,
            charge=charge.amount,
            charge_status=charge.status.value,
            hub_open_return_id=device.open_return_id if device is not None else None,
        )


def _refuse_lost(record: ReturnRecord, what: str) -> None:
    if is_lost_or_stolen(record.return_type):
        raise Conflict(
            f"return {record.id} is for a lost or stolen hub; it cannot be {what}",
            "A lost or stolen hub is never collected: write it off with "
            f"`hubreturns lifecycle write-off {record.id}`.",
            field="return",
        )


_Row = TypeVar("_Row")


def _get_or_not_found(
    session: Session, model: type[_Row], key: int, noun: str, hint: str, *, lock: bool = False
) -> _Row:
    """The row with primary key ``key``, or ``NotFound`` naming the ``noun`` and a next step."""
    row = session.get(model, key, with_for_update=lock)
    if row is None:
        raise NotFound(f"{noun} {key} does not exist", hint, field=noun)
    return row


def _known_devices(session: Session, rows: Sequence[DeliveredRow]) -> dict[str, str]:
    """Device IDs of ``rows`` already in the inventory or delivered, and where they are."""
    ids = [value for row in rows for value in (row.chf_id, row.gpf_id)]
    known: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for device_id in session.scalars(
            select(Device.device_id).where(Device.device_id.in_(chunk))
        ):
            known[device_id] = "in the Smart Metering Inventory"
        for device_id, other_order in session.execute(
            select(DeliveredHub.device_id, DeliveredHub.order_id).where(
                DeliveredHub.device_id.in_(chunk)
            )
        ):
            known.setdefault(device_id, f"delivered for order {other_order}")
        for gpf_id, other_order in session.execute(
            select(DeliveredHub.gpf_id, DeliveredHub.order_id).where(DeliveredHub.gpf_id.in_(chunk))
        ):
            known.setdefault(gpf_id, f"delivered for order {other_order}")
    return known


def _load_hubs(
    session: Session,
    order: HubOrder,
    delivery: HubDelivery,
    rows: Sequence[DeliveredRow],
    now: datetime,
    progress: ProgressCallback | None,
) -> None:
    """Each delivered CHF and its GPF enter the inventory Pending, the Supplier responsible."""
    repo = Repository(session)
    for done, row in enumerate(rows, 1):
        repo.upsert_device(
            device_id=row.gpf_id,
            device_type=DeviceType.GPF,
            smi_status=SmiStatus.PENDING,
            responsible_suppliers=[order.supplier_user_id],
            gpf_id=None,
            now=now,
        )
        repo.upsert_device(
            device_id=row.chf_id,
            device_type=DeviceType.CHF,
            smi_status=SmiStatus.PENDING,
            responsible_suppliers=[order.supplier_user_id],
            gpf_id=row.gpf_id,
            now=now,
        )
        session.add(
            DeliveredHub(
                device_id=row.chf_id,
                gpf_id=row.gpf_id,
                delivery_id=delivery.id,
                order_id=order.id,
                hub_variant=order.hub_variant,
            )
        )
        if progress is not None:
            progress("loading hubs", done, len(rows))
