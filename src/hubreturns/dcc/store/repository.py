"""Reads and writes over one SQLAlchemy connection or session; the caller owns the transaction.

The two writes that decide races are conditional, so they hold on SQLite and
on PostgreSQL alike without table locks:

* ``advance_counter`` is one ``INSERT … ON CONFLICT DO UPDATE … WHERE
  last < new``: of two requests with the same counter, exactly one changes a
  row;
* ``claim_device`` sets ``open_return_id`` only where it is still NULL.

A write that changes no row lost the race; in a batch (``Ledger`` deferred
mode) the row counts are summed and checked at ``flush``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Any, Final, get_args, get_type_hints

from sqlalchemy import String, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from hubreturns.dcc.logistics.models import DeliveredHub, HubOrder
from hubreturns.dcc.rules import (
    SECMP0039,
    AppointmentFacts,
    Authorisation,
    DeviceFacts,
    EligibilityProfile,
    Facts,
    UserFacts,
    appointing_suppliers,
)
from hubreturns.dcc.store import statements
from hubreturns.dcc.store.backend import (
    Backend,
    FactsKey,
    FactsRow,
    QueuedWrites,
    WriteConflict,
    facts_columns,
)
from hubreturns.dcc.store.db import backend_for
from hubreturns.dcc.store.models import (
    Appointment,
    AuditEntry,
    Certificate,
    CertificateChanges,
    CertificateRevocation,
    Device,
    DeviceSupplier,
    ReturnRecord,
    User,
    counter_text,
)
from hubreturns.model import (
    Channel,
    ConnectionMethod,
    DeviceType,
    Endpoint,
    FaultReason,
    ReturnRequest,
    ReturnStatus,
    Role,
    SmiStatus,
    UserStatus,
)
from hubreturns.wire.certificate import SigningCertificate

__all__ = [
    "AuditFields",
    "CertificateConflict",
    "FactsKey",
    "Ledger",
    "Received",
    "Repository",
    "ReturnFields",
    "ReturnFilter",
    "StoredCertificate",
    "WriteConflict",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReturnFields:
    """One accepted return as the ``returns`` table keeps it (``ReturnRecord``, less its id)."""

    request_id: str
    channel: Channel
    originator: str
    role: str | None
    on_behalf_of: str | None
    entered_by: str | None
    device_id: str
    service_reference_variant: str
    return_type: str
    other_device_id: str | None
    connection_method: ConnectionMethod | None
    fault_reason: FaultReason | None
    user_ref_datetime: str | None
    user_ref_id: str | None
    incident_reference: str | None
    additional_information: str | None
    smi_status_at_return: str
    status: ReturnStatus = ReturnStatus.NOTIFIED
    received_at: datetime
    request_xml: bytes | None

    @classmethod
    def of(
        cls,
        request: ReturnRequest,
        *,
        request_id: str,
        channel: Channel,
        role: str | None,
        on_behalf_of: str | None,
        entered_by: str | None,
        smi_status_at_return: str,
        received_at: datetime,
        request_xml: bytes | None,
    ) -> ReturnFields:
        """The request's own fields, and what the service recorded about it."""
        return cls(
            request_id=request_id,
            channel=channel,
            role=role,
            on_behalf_of=on_behalf_of,
            entered_by=entered_by,
            smi_status_at_return=smi_status_at_return,
            received_at=received_at,
            request_xml=request_xml,
            originator=request.originator,
            device_id=request.device_id,
            service_reference_variant=request.kind.variant,
            return_type=request.return_type,
            other_device_id=request.other_device_id,
            connection_method=request.connection_method,
            fault_reason=request.fault_reason,
            user_ref_datetime=request.user_ref_datetime,
            user_ref_id=request.user_ref_id,
            incident_reference=request.incident_reference,
            additional_information=request.additional_information,
        )

    def row(self) -> dict[str, Any]:
        """Column name -> plain value (PostgreSQL's batch write sends them past the
        column types, as arrays)."""
        values = {name: getattr(self, name) for name in statements.RETURN_COLUMNS}
        for name in _ENUM_FIELDS:
            value = values[name]
            if value is not None:
                values[name] = value.value
        return values


def _enum_fields(cls: type) -> tuple[str, ...]:
    """The fields of ``cls`` typed as an enumeration (or an optional one)."""
    return tuple(
        name
        for name, hint in get_type_hints(cls).items()
        if any(isinstance(t, type) and issubclass(t, Enum) for t in (hint, *get_args(hint)))
    )


#: ``ReturnFields``' enumerated fields: ``row`` sends their values.
_ENUM_FIELDS: Final = _enum_fields(ReturnFields)


@dataclass(frozen=True, slots=True)
class Received:
    """What is known of a request as it arrives, before it is read: its audit row's start."""

    received_at: datetime
    channel: Channel
    endpoint: str | None = None
    body_sha256: str | None = None
    body_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditFields:
    """What the audit log keeps about one request, accepted or not.

    ``originator`` is a verified sender only; ``claimed_originator`` the
    RequestID's originator when it was not verified (``AuditEntry``).
    """

    received_at: datetime
    channel: Channel
    code: str
    accepted: bool
    reason: str
    http_status: int
    endpoint: str | None = None
    request_id: str | None = None
    originator: str | None = None
    claimed_originator: str | None = None
    service_reference_variant: str | None = None
    device_id: str | None = None
    body_sha256: str | None = None
    body_bytes: int = 0
    return_id: int | None = None

    @classmethod
    def of(
        cls,
        received: Received,
        *,
        code: str,
        accepted: bool,
        reason: str,
        http_status: int,
        request_id: str | None = None,
        originator: str | None = None,
        claimed_originator: str | None = None,
        service_reference_variant: str | None = None,
        device_id: str | None = None,
        return_id: int | None = None,
    ) -> AuditFields:
        """The row of a request ``received`` so, with what its handling decided."""
        return cls(
            received_at=received.received_at,
            channel=received.channel,
            endpoint=received.endpoint,
            body_sha256=received.body_sha256,
            body_bytes=received.body_bytes,
            code=code,
            accepted=accepted,
            reason=reason,
            http_status=http_status,
            request_id=request_id,
            originator=originator,
            claimed_originator=claimed_originator,
            service_reference_variant=service_reference_variant,
            device_id=device_id,
            return_id=return_id,
        )

    @property
    def received(self) -> Received:
        return Received(
            self.received_at, self.channel, self.endpoint, self.body_sha256, self.body_bytes
        )


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    """A certificate of the SMKI repository and its revocation, if one is recorded."""

    certificate: Certificate
    revocation: CertificateRevocation | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReturnFilter:
    device_id: str | None = None
    originator: str | None = None
    on_behalf_of: str | None = None
    role: Role | None = None
    channel: Channel | None = None
    status: ReturnStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    #: Rows skipped first (newest first), for paging.
    offset: int = 0


#: An RSA's appointments with their appointing users' registry entries; which of
#: them hold at a moment is ``rules.APPOINTMENT_RULES``' to say.
_APPOINTMENTS = (
    select(
        Appointment.supplier_user_id,
        User.role,
        User.status,
        Appointment.valid_from,
        Appointment.valid_to,
        Appointment.revoked_at,
    )
    .outerjoin(User, User.user_id == Appointment.supplier_user_id)
    .where(Appointment.rsa_user_id == bindparam("b_rsa", type_=String(23)))
)

#: The Supplier whose order, placed by this user, the hub was delivered against
#: (logistics records); read only under a profile that authorises orderers.
_ORDERED_FOR = (
    select(HubOrder.supplier_user_id)
    .join(DeliveredHub, DeliveredHub.order_id == HubOrder.id)
    .where(
        DeliveredHub.device_id == bindparam("b_device", type_=String(23)),
        HubOrder.placed_by == bindparam("b_placed_by", type_=String(23)),
    )
)

#: A row of one request's facts (``statements.FACTS``) as ``FactsRow``'s values.
_FACTS_COLUMNS: Final = facts_columns(statements.FACTS)


class Ledger:
    """The request path's statements, over one Connection whose transaction the caller owns.

    Plain Core execution on a Connection skips the ORM's statement and
    unit-of-work processing, which cost more than the SQL itself.
    ``Repository`` exposes the same calls over a Session. What differs between
    the engines is the connection's backend's (``store.backend``).

    A ``deferred`` ledger serves a batch of requests in one transaction (the
    group committer, ``hubreturns.dcc.committer``) with a constant number of
    database round trips instead of several per request:

    * ``prefetch`` reads every request's facts in one statement (on PostgreSQL
      with the ids for the batch's new returns);
    * the writes are queued and ``flush`` hands them to the backend, which
      sends them as one ``executemany`` per statement (SQLite) or as one
      statement over arrays (PostgreSQL), counters and hubs in key order so
      that concurrent batches lock rows in the same order;
    * the facts of a later request in the batch see the earlier requests'
      counter advances and hub claims, the only facts a request changes, so
      each request is decided as if the ones before it had been written;
    * a conditional write that changes fewer rows than decided raises
      ``WriteConflict``: another process won that race after the read.
    """

    __slots__ = (
        "_advance",
        "_advances",
        "_audit",
        "_claimed",
        "_claims",
        "_counters",
        "_facts",
        "_ids",
        "_last_id",
        "_returns",
        "backend",
        "connection",
        "deferred",
    )

    def __init__(self, connection: Connection, *, deferred: bool = False) -> None:
        self.connection = connection
        self.deferred = deferred
        self.backend = backend_for(connection)
        self._advance = _advance_statement(self.backend)
        self._audit: list[Mapping[str, Any]] = []
        #: Deferred mode: rows read by ``prefetch``, by key.
        self._facts: dict[FactsKey, list[FactsRow]] = {}
        #: Deferred mode: return ids reserved for this batch, next first.
        self._ids: deque[int] = deque()
        #: Deferred mode: the last return id this batch has taken.
        self._last_id: int | None = None
        #: Deferred mode: queued writes, and what they change in later facts.
        self._advances: list[Mapping[str, Any]] = []
        self._returns: list[Mapping[str, Any]] = []
        self._claims: list[Mapping[str, Any]] = []
        self._counters: dict[str, int] = {}
        self._claimed: set[str] = set()

    def certificate(self, issuer: str, serial: int) -> SigningCertificate | None:
        """The stored certificate, with its revocation if one is recorded."""
        row = self.connection.execute(
            statements.CERTIFICATE_PEM, {"b_issuer": issuer, "b_serial": str(serial)}
        ).first()
        if row is None:
            return None
        cert = SigningCertificate.from_pem(row.pem.encode())
        return replace(cert, revoked_at=row.revoked_at) if row.revoked_at is not None else cert

    def certificate_generation(self) -> int:
        """The number every revocation and removal raises (``CertificateCache`` polls it)."""
        return int(self.connection.execute(statements.CERTIFICATE_GENERATION).scalar_one())

    def certificates_present(self, keys: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of these (issuer, serial) pairs the store still holds: one statement."""
        wanted = [(issuer, str(serial)) for issuer, serial in keys]
        if not wanted:
            return set()
        present = self.backend.certificates_present(self.connection, wanted)
        return {(issuer, int(serial)) for issuer, serial in present}

    # -- facts for the decision -------------------------------------------------

    def appointments(self, rsa_user_id: str) -> list[AppointmentFacts]:
        """Every stored appointment of this RSA, with its appointing user's registry entry."""
        rows = self.connection.execute(_APPOINTMENTS, {"b_rsa": rsa_user_id})
        return [
            AppointmentFacts(
                supplier_user_id=row.supplier_user_id,
                supplier_role=row.role,
                supplier_status=row.status,
                valid_from=row.valid_from,
                valid_to=row.valid_to,
                revoked_at=row.revoked_at,
            )
            for row in rows
        ]

    def appointed_by(self, rsa_user_id: str, now: datetime) -> frozenset[str]:
        """Suppliers whose appointment of this RSA holds at ``now`` (``rules``)."""
        return appointing_suppliers(self.appointments(rsa_user_id), now)

    def ordered_for(self, user_id: str, device_id: str) -> frozenset[str]:
        """Suppliers whose order placed by ``user_id`` the hub was delivered against."""
        rows = self.connection.execute(
            _ORDERED_FOR, {"b_device": device_id, "b_placed_by": user_id}
        )
        return frozenset(rows.scalars())

    def prefetch(self, keys: Iterable[FactsKey]) -> None:
        """Deferred mode: read the facts of a batch's requests, and reserve their return ids.

        A request whose key was not prefetched has its facts read when asked.
        """
        assert self.deferred, "prefetch serves a deferred (batch) ledger"
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return
        rows, ids = self.backend.batch_facts(self.connection, wanted)
        self._ids.extend(ids)
        for row in rows:
            self._facts.setdefault((row.key_originator, row.key_device), []).append(row)

    def facts(
        self,
        request: ReturnRequest,
        *,
        endpoint: Endpoint,
        access_control_broker: str,
        now: datetime,
        check_counter: bool = True,
        eligibility: EligibilityProfile = SECMP0039,
    ) -> Facts:
        # One statement, one round trip, one snapshot: user, counter, device and
        # its suppliers are read together. At READ COMMITTED an accepted request
        # commits its hub claim and counter together, so a claim seen here comes
        # with its counter (an identical concurrent request gets REPLAY, not OPEN_RETURN).
        key = (request.originator, request.device_id)
        rows = self._facts.get(key)
        if rows is None:
            parameters = {"originator": key[0], "device_id": key[1]}
            found = self.connection.execute(statements.FACTS, parameters)
            rows = [FactsRow._make(_FACTS_COLUMNS(row)) for row in found]
        user, device = self._user(rows[0]), self._device(rows)
        # The authorisation facts cost a statement each: read only those the
        # profile's row for the sender's role can use.
        grant = eligibility.grant(user.role) if user is not None else None
        kinds = grant.authorisations if grant is not None else ()
        appointed_by = ordered_for = frozenset[str]()
        if user is not None and Authorisation.APPOINTED in kinds:
            appointed_by = self.appointed_by(user.user_id, now)
        if user is not None and device is not None and Authorisation.ORDERED in kinds:
            ordered_for = self.ordered_for(user.user_id, device.device_id)
        return Facts(
            request=request,
            endpoint=endpoint,
            access_control_broker=access_control_broker,
            user=user,
            last_counter=self._last_counter(rows[0]) if check_counter else None,
            device=device,
            appointed_by=appointed_by,
            ordered_for=ordered_for,
            eligibility=eligibility,
        )

    @staticmethod
    def _user(row: FactsRow) -> UserFacts | None:
        if row.user_id is None or row.role is None or row.status is None:
            return None
        return UserFacts(user_id=row.user_id, role=row.role, status=row.status)

    def _device(self, rows: Sequence[FactsRow]) -> DeviceFacts | None:
        """The device of a facts read; one row per responsible Supplier."""
        first = rows[0]
        if first.found_device is None or first.device_type is None or first.smi_status is None:
            return None
        return DeviceFacts(
            device_id=first.found_device,
            device_type=first.device_type,
            smi_status=first.smi_status,
            responsible_suppliers=frozenset(
                r.supplier_user_id for r in rows if r.supplier_user_id is not None
            ),
            gpf_id=first.gpf_id,
            has_open_return=first.open_return_id is not None or first.found_device in self._claimed,
        )

    def _last_counter(self, row: FactsRow) -> int | None:
        """The stored counter, or this batch's queued one if higher."""
        stored = int(row.last_counter) if row.last_counter is not None else None
        queued = self._counters.get(row.key_originator)
        if queued is not None and (stored is None or queued > stored):
            return queued
        return stored

    # -- the accepted-request writes --------------------------------------------

    def advance_counter(self, originator: str, counter: int, now: datetime) -> bool:
        """Move the originator's counter up to ``counter``; False if it is not higher.

        Deferred: queued, and True unless this batch has already gone as high;
        ``flush`` checks it against the database.
        """
        parameters = {"b_originator": originator, "b_counter": counter_text(counter), "b_now": now}
        if self.deferred:
            if self._counters.get(originator, -1) >= counter:
                return False
            self._counters[originator] = counter
            self._advances.append(parameters)
            return True
        return bool(self.connection.execute(self._advance, parameters).rowcount == 1)

    def claim_device(self, device_id: str, return_id: int, now: datetime) -> bool:
        """Mark the hub as having an open return; False if it already has one.

        Deferred: queued, and True unless this batch has already claimed it;
        ``flush`` checks it against the database.
        """
        parameters = {"b_device": device_id, "b_return": return_id, "b_now": now}
        if self.deferred:
            if device_id in self._claimed:
                return False
            self._claimed.add(device_id)
            self._claims.append(parameters)
            return True
        return bool(self.connection.execute(statements.CLAIM, parameters).rowcount == 1)

    def add_return(self, fields: ReturnFields) -> int:
        """Insert one ``returns`` row; returns its id.

        Deferred: the id is one reserved for the batch, the row is queued.
        """
        values = fields.row()
        if not self.deferred:
            return int(self.connection.execute(statements.ADD_RETURN, dict(values)).scalar_one())
        if not self._ids:
            self._ids.extend(self.backend.return_ids(self.connection, 1, self._last_id))
        self._last_id = self._ids.popleft()
        self._returns.append({**values, "id": self._last_id})
        return self._last_id

    def add_audit(self, fields: AuditFields) -> None:
        values = {name: getattr(fields, name) for name in statements.AUDIT_COLUMNS}
        values["channel"] = fields.channel.value
        if self.deferred:
            self._audit.append(values)
        else:
            self.connection.execute(statements.ADD_AUDIT, values)

    def flush(self) -> None:
        """Deferred mode: write the queued rows (before the transaction commits).

        Raises ``WriteConflict`` if a counter advance or a hub claim changed
        fewer rows than were queued. Counters and hubs go in key order, so that
        concurrent batches lock rows in the same order.
        """
        queued = QueuedWrites(
            advances=sorted(self._advances, key=lambda p: (p["b_originator"], p["b_counter"])),
            returns=self._returns,
            claims=sorted(self._claims, key=lambda p: p["b_device"]),
            audit=self._audit,
        )
        self._advances, self._claims, self._returns, self._audit = [], [], [], []
        self.backend.write_batch(self.connection, queued)


def _advance_statement(backend: Backend) -> Any:
    """The conditional counter advance in the backend's INSERT, built once per engine."""
    found = _ADVANCES.get(backend.name)
    if found is None:
        found = _ADVANCES[backend.name] = statements.advance(backend.insert)
    return found


_ADVANCES: dict[str, Any] = {}


class CertificateConflict(Exception):
    """Different certificates already stored under these certificates' issuer and serial."""

    def __init__(self, certificates: Sequence[SigningCertificate]) -> None:
        self.certificates = list(certificates)
        keys = ", ".join(f"{c.issuer} serial {c.serial}" for c in self.certificates)
        super().__init__(f"a different certificate is already stored for {keys}")


class Repository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def ledger(self) -> Ledger:
        """The request path's statements on this session's connection."""
        return Ledger(self.session.connection())

    # -- facts for the decision -------------------------------------------------

    def user_facts(self, user_id: str) -> UserFacts | None:
        """The registry entry of a User ID, or None."""
        row = self.session.get(User, user_id)
        if row is None:
            return None
        return UserFacts(user_id=row.user_id, role=row.role, status=row.status)

    def appointed_by(self, rsa_user_id: str, now: datetime) -> frozenset[str]:
        """Active Suppliers whose appointment of this RSA is valid at ``now``."""
        return self.ledger.appointed_by(rsa_user_id, now)

    def add_return(self, fields: ReturnFields) -> int:
        return self.ledger.add_return(fields)

    def add_audit(self, fields: AuditFields) -> None:
        self.ledger.add_audit(fields)

    # -- the SMKI repository ------------------------------------------------------

    def certificate(self, issuer: str, serial: int) -> SigningCertificate | None:
        return self.ledger.certificate(issuer, serial)

    def add_certificates(
        self, certs: Iterable[SigningCertificate], now: datetime
    ) -> list[SigningCertificate]:
        """Store the certificates not held yet; returns those. An identical one is a no-op.

        Raises ``CertificateConflict`` (nothing is written by this call) if a
        *different* certificate is already stored under one's issuer and
        serial: a certificate from another CA that copies a trusted one's
        issuer name and serial must never replace it.
        """
        added: list[SigningCertificate] = []
        conflicts: list[SigningCertificate] = []
        for cert in certs:
            held = self.session.get(Certificate, (cert.issuer, str(cert.serial)))
            if held is None:
                added.append(cert)
            elif held.pem != cert.pem.decode():
                conflicts.append(cert)
        if conflicts:
            raise CertificateConflict(conflicts)
        self.session.add_all(
            Certificate(
                issuer=cert.issuer,
                serial=str(cert.serial),
                eui=cert.eui,
                organisational_units=",".join(sorted(cert.organisational_units)),
                not_before=cert.not_before,
                not_after=cert.not_after,
                pem=cert.pem.decode(),
                loaded_at=now,
            )
            for cert in added
        )
        return added

    def stored_certificates(self, eui: str | None = None) -> list[StoredCertificate]:
        """Every stored certificate (or one User's) with its revocation, by issuer and serial."""
        query = select(Certificate, CertificateRevocation).outerjoin(
            CertificateRevocation,
            and_(
                CertificateRevocation.issuer == Certificate.issuer,
                CertificateRevocation.serial == Certificate.serial,
            ),
        )
        if eui is not None:
            query = query.where(Certificate.eui == eui)
        rows = [StoredCertificate(cert, revoked) for cert, revoked in self.session.execute(query)]
        return sorted(rows, key=lambda row: (row.certificate.issuer, int(row.certificate.serial)))

    def revocation(self, issuer: str, serial: int) -> CertificateRevocation | None:
        return self.session.get(CertificateRevocation, (issuer, str(serial)))

    def revoke_certificate(
        self, issuer: str, serial: int, *, revoked_at: datetime, reason: str, now: datetime
    ) -> bool:
        """Record a revocation; False if one was already recorded (the first one stays).

        Recorded whether or not the certificate is stored: a revoked
        certificate loaded later is refused all the same.
        """
        if self.revocation(issuer, serial) is not None:
            return False
        self.session.add(
            CertificateRevocation(
                issuer=issuer,
                serial=str(serial),
                revoked_at=revoked_at,
                reason=reason[:200],
                recorded_at=now,
            )
        )
        self._certificates_changed()
        return True

    def remove_certificate(self, issuer: str, serial: int) -> bool:
        """Delete a stored certificate (its revocation, if any, stays); False if none."""
        held = self.session.get(Certificate, (issuer, str(serial)))
        if held is None:
            return False
        self.session.delete(held)
        self._certificates_changed()
        return True

    def _certificates_changed(self) -> None:
        """Raise the change number, so every worker drops its cached certificates."""
        self.session.flush()
        self.session.execute(
            update(CertificateChanges)
            .where(CertificateChanges.id == 1)
            .values(generation=CertificateChanges.generation + 1)
        )

    # -- registry and inventory loads (idempotent upserts) ------------------------

    def upsert_user(
        self, user_id: str, role: Role, name: str, status: UserStatus, now: datetime
    ) -> None:
        self.session.merge(
            User(user_id=user_id, role=role, name=name, status=status, updated_at=now)
        )

    def upsert_device(
        self,
        *,
        device_id: str,
        device_type: DeviceType,
        smi_status: SmiStatus,
        responsible_suppliers: Iterable[str],
        gpf_id: str | None,
        now: datetime,
    ) -> None:
        existing = self.session.get(Device, device_id)
        if existing is None:
            self.session.add(
                Device(
                    device_id=device_id,
                    device_type=device_type,
                    smi_status=smi_status,
                    gpf_id=gpf_id,
                    updated_at=now,
                )
            )
        else:
            existing.device_type = device_type
            existing.smi_status = smi_status
            existing.gpf_id = gpf_id
            existing.updated_at = now
        self.session.flush()
        self.session.execute(delete(DeviceSupplier).where(DeviceSupplier.device_id == device_id))
        for supplier in sorted(set(responsible_suppliers)):
            self.session.add(DeviceSupplier(device_id=device_id, supplier_user_id=supplier))

    def appoint(
        self,
        rsa_user_id: str,
        supplier_user_id: str,
        valid_from: datetime,
        valid_to: datetime | None,
    ) -> Appointment:
        """Record (or update) a Supplier's confirmation of an RSA; idempotent."""
        row = self.session.scalar(
            select(Appointment).where(
                Appointment.rsa_user_id == rsa_user_id,
                Appointment.supplier_user_id == supplier_user_id,
                Appointment.valid_from == valid_from,
            )
        )
        if row is None:
            row = Appointment(
                rsa_user_id=rsa_user_id,
                supplier_user_id=supplier_user_id,
                valid_from=valid_from,
                valid_to=valid_to,
            )
            self.session.add(row)
        else:
            row.valid_to = valid_to
            row.revoked_at = None
        self.session.flush()
        return row

    def revoke(self, rsa_user_id: str, supplier_user_id: str, now: datetime) -> int:
        """Withdraw every open appointment of the RSA by the Supplier; returns how many."""
        result = self.session.execute(
            update(Appointment)
            .where(
                Appointment.rsa_user_id == rsa_user_id,
                Appointment.supplier_user_id == supplier_user_id,
                Appointment.revoked_at.is_(None),
            )
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    # -- queries --------------------------------------------------------------------

    def returns(self, where: ReturnFilter) -> Sequence[ReturnRecord]:
        query = select(ReturnRecord)
        conditions = [
            column == value
            for column, value in (
                (ReturnRecord.device_id, where.device_id),
                (ReturnRecord.originator, where.originator),
                (ReturnRecord.on_behalf_of, where.on_behalf_of),
                (ReturnRecord.role, where.role),
                (ReturnRecord.channel, where.channel),
                (ReturnRecord.status, where.status),
            )
            if value is not None
        ]
        if where.since is not None:
            conditions.append(ReturnRecord.received_at >= where.since)
        if where.until is not None:
            conditions.append(ReturnRecord.received_at < where.until)
        if conditions:
            query = query.where(and_(*conditions))
        query = query.order_by(ReturnRecord.id.desc()).limit(where.limit).offset(where.offset)
        return self.session.scalars(query).all()

    def audit(
        self,
        *,
        originator: str | None = None,
        code: str | None = None,
        accepted: bool | None = None,
        limit: int = 100,
        device_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
    ) -> Sequence[AuditEntry]:
        """Audit rows, newest first; ``originator`` matches a verified sender or a claimed one.

        ``since`` is inclusive, ``until`` exclusive.

        An operator looking into a User's traffic needs to see what was sent in
        its name too; each row says which of the two it is.
        """
        query = select(AuditEntry)
        if device_id is not None:
            query = query.where(AuditEntry.device_id == device_id)
        if since is not None:
            query = query.where(AuditEntry.received_at >= since)
        if until is not None:
            query = query.where(AuditEntry.received_at < until)
        if originator is not None:
            query = query.where(
                or_(
                    AuditEntry.originator == originator,
                    AuditEntry.claimed_originator == originator,
                )
            )
        if code is not None:
            query = query.where(AuditEntry.code == code)
        if accepted is not None:
            query = query.where(AuditEntry.accepted.is_(accepted))
        query = query.order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
        return self.session.scalars(query).all()

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables (for ``hubreturns status`` and tests)."""
        tables = {
            "users": User,
            "certificates": Certificate,
            "appointments": Appointment,
            "devices": Device,
            "returns": ReturnRecord,
            "audit_log": AuditEntry,
        }
        return {
            name: int(self.session.scalar(select(func.count()).select_from(model)) or 0)
            for name, model in tables.items()
        }
