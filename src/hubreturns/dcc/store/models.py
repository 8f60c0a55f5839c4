"""Tables. The Alembic migrations in ``dcc/store/migrations`` create exactly these.

Replay counters are unsigned 64-bit, which neither SQLite's INTEGER nor
PostgreSQL's BIGINT holds; they are stored as 20-digit zero-padded text, whose
byte order is numeric order (``C`` collation on PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hubreturns.dcc.store.types import Moment, text_enum
from hubreturns.model import (
    Channel,
    ConnectionMethod,
    DeviceType,
    Endpoint,
    FaultReason,
    ReturnStatus,
    Role,
    SmiStatus,
    UserStatus,
)

__all__ = [
    "Appointment",
    "AuditEntry",
    "Base",
    "Certificate",
    "CertificateChanges",
    "CertificateRevocation",
    "Device",
    "DeviceSupplier",
    "ReplayCounter",
    "ReturnRecord",
    "User",
    "counter_text",
]

EUI = String(23)
#: Auto-incrementing 64-bit key (SQLite only auto-increments INTEGER PRIMARY KEY).
BigId = BigInteger().with_variant(Integer(), "sqlite")
Counter = String(20).with_variant(String(20, collation="C"), "postgresql")


def counter_text(counter: int) -> str:
    return f"{counter:020d}"


class Base(DeclarativeBase):
    pass


class User(Base):
    """A DCC User ID with its role and status, as the users import file gives it."""

    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(EUI, primary_key=True)
    role: Mapped[Role] = mapped_column(text_enum(Role, 3))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[UserStatus] = mapped_column(text_enum(UserStatus, 16))
    updated_at: Mapped[datetime] = mapped_column(Moment)


class Certificate(Base):
    """The SMKI repository: certificates found by issuer + serial."""

    __tablename__ = "certificates"

    issuer: Mapped[str] = mapped_column(String(500), primary_key=True)
    serial: Mapped[str] = mapped_column(String(50), primary_key=True)
    eui: Mapped[str | None] = mapped_column(EUI, index=True)
    organisational_units: Mapped[str] = mapped_column(String(100))
    not_before: Mapped[datetime] = mapped_column(Moment)
    not_after: Mapped[datetime] = mapped_column(Moment)
    pem: Mapped[str] = mapped_column(Text)
    loaded_at: Mapped[datetime] = mapped_column(Moment)


class CertificateRevocation(Base):
    """A revoked (issuer, serial): kept apart from ``certificates`` so that a
    revocation (from a CRL, say) holds for a certificate not loaded yet, and
    outlives the removal of one that was."""

    __tablename__ = "certificate_revocations"

    issuer: Mapped[str] = mapped_column(String(500), primary_key=True)
    serial: Mapped[str] = mapped_column(String(50), primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(Moment)
    reason: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(Moment)


class CertificateChanges(Base):
    """One row: a number raised by every revocation and removal.

    Each worker polls it (a one-row read) to know when its certificate cache
    must be dropped (``processing.CertificateCache``).
    """

    __tablename__ = "certificate_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


class Appointment(Base):
    """A Supplier's confirmation that an RSA works for it (SECMP0039)."""

    __tablename__ = "appointments"
    __table_args__ = (
        UniqueConstraint("rsa_user_id", "supplier_user_id", "valid_from"),
        Index("ix_appointments_rsa", "rsa_user_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rsa_user_id: Mapped[str] = mapped_column(EUI, ForeignKey("users.user_id"))
    supplier_user_id: Mapped[str] = mapped_column(EUI, ForeignKey("users.user_id"))
    valid_from: Mapped[datetime] = mapped_column(Moment)
    valid_to: Mapped[datetime | None] = mapped_column(Moment)
    revoked_at: Mapped[datetime | None] = mapped_column(Moment)


class Device(Base):
    """The latest Smart Metering Inventory entry of a device."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(EUI, primary_key=True)
    device_type: Mapped[DeviceType] = mapped_column(text_enum(DeviceType, 8))
    smi_status: Mapped[SmiStatus] = mapped_column(text_enum(SmiStatus, 32))
    gpf_id: Mapped[str | None] = mapped_column(EUI)
    open_return_id: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(Moment)
    #: Set when a replacing inventory load left it out (``load devices --replace``):
    #: the row stays for its history, and requests find no such device (E19).
    withdrawn_at: Mapped[datetime | None] = mapped_column(Moment)


class DeviceSupplier(Base):
    """A Supplier responsible for a device (a hub may have an IS and a GS)."""

    __tablename__ = "device_suppliers"
    __table_args__ = (Index("ix_device_suppliers_supplier", "supplier_user_id"),)

    device_id: Mapped[str] = mapped_column(
        EUI, ForeignKey("devices.device_id", ondelete="CASCADE"), primary_key=True
    )
    supplier_user_id: Mapped[str] = mapped_column(
        EUI, ForeignKey("users.user_id"), primary_key=True
    )


class ReturnRecord(Base):
    """One accepted return notification, with everything the request carried."""

    __tablename__ = "returns"
    __table_args__ = (
        Index("ix_returns_device", "device_id"),
        Index("ix_returns_originator", "originator"),
        Index("ix_returns_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(80), unique=True)
    channel: Mapped[Channel] = mapped_column(text_enum(Channel, 16))
    originator: Mapped[str] = mapped_column(EUI)
    role: Mapped[Role] = mapped_column(text_enum(Role, 3))
    on_behalf_of: Mapped[str] = mapped_column(EUI)
    entered_by: Mapped[str | None] = mapped_column(String(100))
    device_id: Mapped[str] = mapped_column(EUI)
    service_reference_variant: Mapped[str] = mapped_column(String(8))
    return_type: Mapped[str] = mapped_column(String(80))
    other_device_id: Mapped[str | None] = mapped_column(EUI)
    connection_method: Mapped[ConnectionMethod | None] = mapped_column(
        text_enum(ConnectionMethod, 16)
    )
    fault_reason: Mapped[FaultReason | None] = mapped_column(text_enum(FaultReason, 64))
    user_ref_datetime: Mapped[str | None] = mapped_column(String(40))
    user_ref_id: Mapped[str | None] = mapped_column(String(25))
    incident_reference: Mapped[str | None] = mapped_column(String(15))
    additional_information: Mapped[str | None] = mapped_column(String(200))
    smi_status_at_return: Mapped[SmiStatus] = mapped_column(text_enum(SmiStatus, 32))
    status: Mapped[ReturnStatus] = mapped_column(
        text_enum(ReturnStatus, 16), default=ReturnStatus.NOTIFIED
    )
    received_at: Mapped[datetime] = mapped_column(Moment)
    request_xml: Mapped[bytes | None] = mapped_column(LargeBinary)


class ReplayCounter(Base):
    """The last RequestID counter accepted per User ID, as 20-digit text (numeric order)."""

    __tablename__ = "replay_counters"

    originator: Mapped[str] = mapped_column(EUI, primary_key=True)
    last_counter: Mapped[str] = mapped_column(Counter)
    updated_at: Mapped[datetime] = mapped_column(Moment)


class AuditEntry(Base):
    """One row per request received on any channel, accepted or not.

    ``originator`` is only ever a *verified* sender: the User ID whose
    certificate verified the request's signature (or the Service User a
    signed-in desk member entered it for). ``claimed_originator`` is the
    originator the request's RequestID names when that was not verified to be
    the sender: a refusal before or at the signature check (malformed, schema,
    signature and certificate reasons: E46, E31, E40 - E43 by default). See
    migration 0007.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_received", "received_at"),
        Index("ix_audit_originator", "originator"),
        Index("ix_audit_claimed_originator", "claimed_originator"),
        Index("ix_audit_code", "code"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(Moment)
    channel: Mapped[Channel] = mapped_column(text_enum(Channel, 16))
    endpoint: Mapped[Endpoint | None] = mapped_column(text_enum(Endpoint, 16))
    request_id: Mapped[str | None] = mapped_column(String(80))
    originator: Mapped[str | None] = mapped_column(EUI)
    claimed_originator: Mapped[str | None] = mapped_column(EUI)
    service_reference_variant: Mapped[str | None] = mapped_column(String(8))
    device_id: Mapped[str | None] = mapped_column(EUI)
    code: Mapped[str] = mapped_column(String(10))
    accepted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    http_status: Mapped[int] = mapped_column(Integer)
    body_sha256: Mapped[str | None] = mapped_column(String(64))
    body_bytes: Mapped[int] = mapped_column(Integer, default=0)
    return_id: Mapped[int | None] = mapped_column(BigInteger)
