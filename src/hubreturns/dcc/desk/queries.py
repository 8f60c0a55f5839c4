"""Read-only queries behind the desk pages that the core repository does not offer.

The hub look-up gathers, in one session, what staff need to answer a caller:
the latest inventory entry, the responsible Suppliers, the RSAs those
Suppliers currently appoint, and every return and request for the hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from hubreturns.dcc.rules import AppointmentFacts, appointment_holds
from hubreturns.dcc.store.models import (
    Appointment,
    AuditEntry,
    Device,
    DeviceSupplier,
    ReturnRecord,
    User,
)
from hubreturns.dcc.store.repository import Repository, ReturnFilter
from hubreturns.model import Role

__all__ = ["Appointed", "HubView", "Party", "hub_view", "service_users"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Party:
    """A registered DCC user as the desk shows it."""

    user_id: str
    role: str
    name: str
    status: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Appointed:
    """An RSA holding a current appointment from one of the hub's Suppliers."""

    rsa: Party
    supplier_id: str
    valid_from: datetime
    valid_to: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HubView:
    device_id: str
    device_type: str
    smi_status: str
    gpf_id: str | None
    open_return_id: int | None
    updated_at: datetime
    #: Set when a replacing inventory load left the device out: no new return can be logged.
    withdrawn_at: datetime | None
    #: For a GPF: the hub (CHF) whose OtherDeviceID it is, if the inventory names one.
    hub_of_gpf: str | None
    suppliers: tuple[Party, ...]
    appointed: tuple[Appointed, ...]
    returns: tuple[ReturnRecord, ...]
    requests: tuple[AuditEntry, ...]


def _party(row: User) -> Party:
    return Party(user_id=row.user_id, role=row.role, name=row.name, status=row.status)


def _appointment_facts(row: Appointment, suppliers: dict[str, User]) -> AppointmentFacts:
    supplier = suppliers[row.supplier_user_id]
    return AppointmentFacts(
        supplier_user_id=row.supplier_user_id,
        supplier_role=supplier.role,
        supplier_status=supplier.status,
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        revoked_at=row.revoked_at,
    )


def hub_view(session: Session, device_id: str, now: datetime) -> HubView | None:
    """Everything about one device, or None if the inventory never held it.

    A device withdrawn by ``load devices --replace`` is still shown, marked
    withdrawn, because its returns and requests remain for staff to look at.
    """
    device = session.get(Device, device_id)
    if device is None:
        return None
    suppliers = session.scalars(
        select(User)
        .join(DeviceSupplier, DeviceSupplier.supplier_user_id == User.user_id)
        .where(DeviceSupplier.device_id == device_id)
        .order_by(User.user_id)
    ).all()
    rsa = aliased(User)
    by_id = {s.user_id: s for s in suppliers}
    rows = [
        (user, appointment)
        for user, appointment in session.execute(
            select(rsa, Appointment)
            .join(Appointment, Appointment.rsa_user_id == rsa.user_id)
            .where(Appointment.supplier_user_id.in_(list(by_id)))
            .order_by(rsa.user_id, Appointment.supplier_user_id)
        )
        if appointment_holds(_appointment_facts(appointment, by_id), now)
    ]
    requests = session.scalars(
        select(AuditEntry)
        .where(AuditEntry.device_id == device_id)
        .order_by(AuditEntry.id.desc())
        .limit(50)
    ).all()
    hub_of_gpf = (
        session.scalar(
            select(Device.device_id)
            .where(Device.gpf_id == device_id)
            .order_by(Device.device_id)
            .limit(1)
        )
        if device.device_type == "GPF"
        else None
    )
    return HubView(
        device_id=device.device_id,
        device_type=device.device_type,
        smi_status=device.smi_status,
        gpf_id=device.gpf_id,
        open_return_id=device.open_return_id,
        updated_at=device.updated_at,
        withdrawn_at=device.withdrawn_at,
        hub_of_gpf=hub_of_gpf,
        suppliers=tuple(_party(s) for s in suppliers),
        appointed=tuple(
            Appointed(
                rsa=_party(user),
                supplier_id=appointment.supplier_user_id,
                valid_from=appointment.valid_from,
                valid_to=appointment.valid_to,
            )
            for user, appointment in rows
        ),
        returns=tuple(Repository(session).returns(ReturnFilter(device_id=device_id, limit=50))),
        requests=tuple(requests),
    )


def service_users(session: Session) -> Sequence[Party]:
    """Registered users of the roles that may return a hub (for the form's suggestions)."""
    rows = session.scalars(
        select(User)
        .where(User.role.in_([Role.IS.value, Role.GS.value, Role.RSA.value]))
        .order_by(User.role, User.name)
    ).all()
    return [_party(r) for r in rows]
