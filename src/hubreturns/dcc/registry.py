"""Registry administration for the DCC operator: list, suspend, remove, appoint.

Loads (``loading``) fill the registry; this module looks after it. Every
function takes an open session and writes nothing on refusal: a
``RegistryError`` carries a code, a message and a hint. Nothing with history
is deleted: a User, appointment or device that returns, audit rows, orders or
deliveries name is refused removal, with the reversible alternative as the
hint (suspend a User, end an appointment, withdraw a device by a replacing
inventory load). ``cli`` only parses arguments and prints what comes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Select, delete, func, or_, select
from sqlalchemy.orm import Session

from hubreturns.dcc.logistics.models import DeliveredHub, HubOrder
from hubreturns.dcc.store.models import (
    Appointment,
    AuditEntry,
    Device,
    DeviceSupplier,
    ReplayCounter,
    ReturnRecord,
    User,
)
from hubreturns.dcc.store.repository import Repository
from hubreturns.errors import HintedError
from hubreturns.model import DeviceType, Role, SmiStatus, UserStatus

__all__ = [
    "DeviceFilter",
    "Listing",
    "RegistryError",
    "appoint",
    "list_appointments",
    "list_certificates",
    "list_devices",
    "list_users",
    "records",
    "remove_appointment",
    "remove_device",
    "remove_user",
    "set_user_status",
]


class RegistryError(HintedError):
    """A registry change refused; nothing was written."""

    code = "registry"


@dataclass(frozen=True, slots=True)
class Listing:
    """Rows for a table, CSV or JSON: ``whole`` columns are never folded (IDs, times)."""

    title: str
    headers: tuple[str, ...]
    rows: Sequence[Sequence[object]]
    whole: frozenset[str]


def _moment(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


# -- Users -----------------------------------------------------------------------------


def list_users(session: Session, *, role: Role | None, status: UserStatus | None) -> Listing:
    """Registered Users by User ID, optionally of one role or status."""
    query = select(User).order_by(User.user_id)
    if role is not None:
        query = query.where(User.role == role)
    if status is not None:
        query = query.where(User.status == status)
    rows = [
        (u.user_id, u.role, u.status, u.name, _moment(u.updated_at)) for u in session.scalars(query)
    ]
    headers = ("user_id", "role", "status", "name", "updated")
    return Listing("Users", headers, rows, frozenset({"user_id", "updated"}))


def _user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise RegistryError(
            f"no User {user_id} is registered",
            "See `hubreturns list users`; load Users with `hubreturns load users FILE`.",
            code="not_found",
        )
    return user


def set_user_status(session: Session, user_id: str, status: UserStatus, now: datetime) -> bool:
    """Suspend or activate a User (requests from a suspended one get E3); False if it
    already had that status."""
    user = _user(session, user_id)
    if user.status == status:
        return False
    user.status = status
    user.updated_at = now
    return True


def _count(session: Session, model: type[object], *conditions: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(model).where(or_(*conditions))
    return int(session.scalar(query) or 0)


def _user_references(session: Session, user_id: str) -> dict[str, int]:
    """What names the User, by kind; only kinds with at least one row."""
    found = {
        "returns": _count(
            session,
            ReturnRecord,
            ReturnRecord.originator == user_id,
            ReturnRecord.on_behalf_of == user_id,
        ),
        "audit rows": _count(
            session,
            AuditEntry,
            AuditEntry.originator == user_id,
            AuditEntry.claimed_originator == user_id,
        ),
        "hub orders": _count(
            session, HubOrder, HubOrder.supplier_user_id == user_id, HubOrder.placed_by == user_id
        ),
        "appointments": _count(
            session,
            Appointment,
            Appointment.rsa_user_id == user_id,
            Appointment.supplier_user_id == user_id,
        ),
        "devices it is responsible for": _count(
            session, DeviceSupplier, DeviceSupplier.supplier_user_id == user_id
        ),
    }
    return {kind: n for kind, n in found.items() if n}


def _listed(references: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in references.items())


def remove_user(session: Session, user_id: str) -> None:
    """Delete a User nothing refers to (with its replay counter); else RegistryError."""
    user = _user(session, user_id)
    references = _user_references(session, user_id)
    if references:
        raise RegistryError(
            f"User {user_id} cannot be removed: {_listed(references)} refer to it",
            f"Suspend it instead (`hubreturns users suspend {user_id}`): its requests are "
            "then refused (E3) and its history stays.",
            code="in_use",
        )
    session.execute(delete(ReplayCounter).where(ReplayCounter.originator == user_id))
    session.delete(user)


# -- certificates ------------------------------------------------------------------------


def list_certificates(session: Session, *, eui: str | None) -> Listing:
    """The SMKI repository (or one User's certificates), with revocations."""
    rows = [
        (
            s.certificate.eui,
            s.certificate.issuer,
            s.certificate.serial,
            s.certificate.organisational_units,
            _moment(s.certificate.not_before),
            _moment(s.certificate.not_after),
            _moment(s.revocation.revoked_at) if s.revocation else None,
        )
        for s in Repository(session).stored_certificates(eui)
    ]
    headers = ("eui", "issuer", "serial", "ou", "valid_from", "valid_to", "revoked")
    whole = frozenset({"eui", "serial", "valid_from", "valid_to", "revoked"})
    return Listing("SMKI certificates", headers, rows, whole)


# -- appointments ------------------------------------------------------------------------


def _is_open(appointment: Appointment, now: datetime) -> bool:
    """Not revoked and not ended: in force now, or from a future date."""
    ended = appointment.valid_to is not None and appointment.valid_to <= now
    return appointment.revoked_at is None and not ended


def list_appointments(
    session: Session, *, rsa: str | None, supplier: str | None, open_only: bool, now: datetime
) -> Listing:
    """Suppliers' appointments of RSAs, oldest first, with their state at ``now``."""
    query = select(Appointment).order_by(Appointment.id)
    if rsa is not None:
        query = query.where(Appointment.rsa_user_id == rsa)
    if supplier is not None:
        query = query.where(Appointment.supplier_user_id == supplier)
    found = [a for a in session.scalars(query) if not open_only or _is_open(a, now)]
    rows = [
        (
            a.id,
            a.rsa_user_id,
            a.supplier_user_id,
            _moment(a.valid_from),
            _moment(a.valid_to),
            _moment(a.revoked_at),
            "open" if _is_open(a, now) else "ended",
        )
        for a in found
    ]
    headers = ("id", "rsa", "supplier", "valid_from", "valid_to", "revoked", "state")
    whole = frozenset({"rsa", "supplier", "valid_from", "valid_to", "revoked"})
    return Listing("Appointments", headers, rows, whole)


def _check_parties(session: Session, rsa: str, supplier: str) -> None:
    found = session.get(User, rsa)
    if found is None or found.role != Role.RSA:
        raise RegistryError(
            f"{rsa} is not a registered RSA user",
            "Load the user with role RSA first (`hubreturns load users FILE`).",
            code="not_found",
        )
    confirming = session.get(User, supplier)
    if confirming is None or confirming.role not in (Role.IS, Role.GS):
        raise RegistryError(
            f"{supplier} is not a registered IS or GS user",
            "Only Suppliers appoint RSAs; see `hubreturns list users --role IS`.",
            code="not_found",
        )
    if confirming.status != UserStatus.ACTIVE:
        raise RegistryError(
            f"Supplier {supplier} is {confirming.status}",
            f"A suspended Supplier appoints no one; `hubreturns users activate {supplier}` "
            "first if it should.",
            code="suspended",
        )


def appoint(
    session: Session, rsa: str, supplier: str, start: datetime, end: datetime | None, now: datetime
) -> Appointment:
    """Record a Supplier's appointment of an RSA; refused while an identical one is open."""
    _check_parties(session, rsa, supplier)
    held = session.scalars(
        select(Appointment).where(
            Appointment.rsa_user_id == rsa, Appointment.supplier_user_id == supplier
        )
    )
    for existing in held:
        if _is_open(existing, now):
            raise RegistryError(
                f"{supplier} already appoints RSA {rsa} (appointment {existing.id}, from "
                f"{_moment(existing.valid_from)})",
                "End it first (`hubreturns revoke --rsa ... --supplier ...`) to change its "
                "dates; `hubreturns list appointments` shows it.",
                code="duplicate",
            )
    return Repository(session).appoint(rsa, supplier, start, end)


def _appointment_returns(session: Session, appointment: Appointment) -> int:
    """Returns the RSA made for the Supplier while the appointment was in force."""
    until = appointment.revoked_at or appointment.valid_to
    query = (
        select(func.count())
        .select_from(ReturnRecord)
        .where(
            ReturnRecord.originator == appointment.rsa_user_id,
            ReturnRecord.on_behalf_of == appointment.supplier_user_id,
            ReturnRecord.received_at >= appointment.valid_from,
        )
    )
    if until is not None:
        query = query.where(ReturnRecord.received_at < until)
    return int(session.scalar(query) or 0)


def remove_appointment(session: Session, appointment_id: int) -> Appointment:
    """Delete an appointment no return was made under; else RegistryError."""
    appointment = session.get(Appointment, appointment_id)
    if appointment is None:
        raise RegistryError(
            f"no appointment {appointment_id}",
            "See `hubreturns list appointments` for the ids.",
            code="not_found",
        )
    used = _appointment_returns(session, appointment)
    if used:
        raise RegistryError(
            f"appointment {appointment_id} cannot be removed: {used} returns were made under it",
            f"End it instead (`hubreturns revoke --rsa {appointment.rsa_user_id} --supplier "
            f"{appointment.supplier_user_id}`): it then authorises nothing and stays on record.",
            code="in_use",
        )
    session.delete(appointment)
    return appointment


# -- devices ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceFilter:
    device_id: str | None = None
    supplier: str | None = None
    smi_status: SmiStatus | None = None
    device_type: DeviceType | None = None
    withdrawn: bool = False
    limit: int = 1000


def _device_query(where: DeviceFilter) -> Select[Device]:
    query = select(Device).order_by(Device.device_id).limit(where.limit)
    if where.device_id is not None:
        query = query.where(Device.device_id == where.device_id)
    if where.supplier is not None:
        held = select(DeviceSupplier.device_id).where(
            DeviceSupplier.supplier_user_id == where.supplier
        )
        query = query.where(Device.device_id.in_(held))
    if where.smi_status is not None:
        query = query.where(Device.smi_status == where.smi_status)
    if where.device_type is not None:
        query = query.where(Device.device_type == where.device_type)
    if not where.withdrawn:
        query = query.where(Device.withdrawn_at.is_(None))
    return query


def list_devices(session: Session, where: DeviceFilter) -> Listing:
    """The device inventory (withdrawn devices only when asked), by Device ID."""
    devices = list(session.scalars(_device_query(where)))
    suppliers: dict[str, list[str]] = {}
    ids = [d.device_id for d in devices]
    for device_id, supplier in session.execute(
        select(DeviceSupplier.device_id, DeviceSupplier.supplier_user_id)
        .where(DeviceSupplier.device_id.in_(ids))
        .order_by(DeviceSupplier.supplier_user_id)
    ):
        suppliers.setdefault(device_id, []).append(supplier)
    rows = [
        (
            d.device_id,
            d.device_type,
            d.smi_status,
            " ".join(suppliers.get(d.device_id, [])),
            d.gpf_id,
            "yes" if d.open_return_id is not None else "",
            *([_moment(d.withdrawn_at)] if where.withdrawn else []),
        )
        for d in devices
    ]
    # The withdrawn column only when asked for: the table then still fits 100 columns.
    headers: tuple[str, ...] = ("device", "type", "smi_status", "suppliers", "gpf", "open")
    headers += ("withdrawn",) if where.withdrawn else ()
    whole = frozenset({"device", "suppliers", "gpf", "withdrawn"})
    return Listing("Device inventory", headers, rows, whole)


def _device_references(session: Session, device_id: str) -> dict[str, int]:
    found = {
        "returns": _count(session, ReturnRecord, ReturnRecord.device_id == device_id),
        "audit rows": _count(session, AuditEntry, AuditEntry.device_id == device_id),
        "deliveries": _count(
            session,
            DeliveredHub,
            DeliveredHub.device_id == device_id,
            DeliveredHub.gpf_id == device_id,
        ),
    }
    return {kind: n for kind, n in found.items() if n}


def remove_device(session: Session, device_id: str) -> None:
    """Delete a device nothing refers to (with its suppliers); else RegistryError."""
    device = session.get(Device, device_id)
    if device is None:
        raise RegistryError(
            f"no device {device_id} is in the inventory",
            "See `hubreturns list devices --withdrawn`.",
            code="not_found",
        )
    references = _device_references(session, device_id)
    if references:
        raise RegistryError(
            f"device {device_id} cannot be removed: {_listed(references)} refer to it",
            "Leave it out of the next `hubreturns load devices --replace FILE`: it is then "
            "withdrawn (new returns for it get E19) and its history stays.",
            code="in_use",
        )
    session.delete(device)  # its device_suppliers rows go with it (ON DELETE CASCADE)


def records(listing: Listing) -> Sequence[dict[str, object]]:
    """The rows as records, for JSON."""
    return [dict(zip(listing.headers, row, strict=True)) for row in listing.rows]
