"""The request path's statements, as SQLAlchemy Core, shared by both engines' backends.

Each is built once at import; the backends add the forms that only their
engine can run (a batch's keys as one parameter, the batch write).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Select,
    String,
    Subquery,
    and_,
    bindparam,
    func,
    insert,
    select,
    update,
)

from hubreturns.dcc.store.models import (
    AuditEntry,
    Certificate,
    CertificateChanges,
    CertificateRevocation,
    Device,
    DeviceSupplier,
    ReplayCounter,
    ReturnRecord,
    User,
)

__all__ = [
    "ADD_AUDIT",
    "ADD_RETURN",
    "ADD_RETURN_WITH_ID",
    "AUDIT_COLUMNS",
    "CERTIFICATE_GENERATION",
    "CERTIFICATE_PEM",
    "CLAIM",
    "FACTS",
    "RETURN_COLUMNS",
    "advance",
    "certificates_in",
    "facts_statement",
]


def facts_statement(keys: Subquery) -> Select[*tuple[Any, ...]]:
    """User, replay counter, device and its suppliers for each row of ``keys``.

    ``keys`` has the columns ``originator`` and ``device_id``: one row of bound
    parameters for one request, or a table of them for a batch.
    """
    return (
        select(
            keys.c.originator.label("key_originator"),
            keys.c.device_id.label("key_device"),
            User.user_id,
            User.role,
            User.status,
            ReplayCounter.last_counter,
            Device.device_id.label("found_device"),
            Device.device_type,
            Device.smi_status,
            Device.gpf_id,
            Device.open_return_id,
            DeviceSupplier.supplier_user_id,
        )
        .select_from(keys)
        .outerjoin(User, User.user_id == keys.c.originator)
        .outerjoin(ReplayCounter, ReplayCounter.originator == keys.c.originator)
        # A withdrawn device (``load devices --replace``) is not in the inventory.
        .outerjoin(
            Device, and_(Device.device_id == keys.c.device_id, Device.withdrawn_at.is_(None))
        )
        .outerjoin(DeviceSupplier, DeviceSupplier.device_id == Device.device_id)
    )


#: One request's facts, by its key's two parameters.
FACTS = facts_statement(
    select(
        bindparam("originator", type_=String(23)).label("originator"),
        bindparam("device_id", type_=String(23)).label("device_id"),
    ).subquery("k")
)

#: The hub claim: set ``open_return_id`` only where it is still NULL.
CLAIM = (
    update(Device)
    .where(
        Device.device_id == bindparam("b_device", type_=String(23)),
        Device.open_return_id.is_(None),
    )
    .values(
        open_return_id=bindparam("b_return", type_=Device.__table__.c.open_return_id.type),
        updated_at=bindparam("b_now", type_=Device.__table__.c.updated_at.type),
    )
)


def advance(insert_of: Any) -> Any:
    """The conditional counter advance, from the engine's INSERT (``Backend.insert``).

    It changes one row (inserted or moved up) or none (the counter is not
    higher): the row count says which, for one request or summed over a batch.
    """
    columns = ReplayCounter.__table__.c
    values = insert_of(ReplayCounter).values(
        originator=bindparam("b_originator", type_=columns.originator.type),
        last_counter=bindparam("b_counter", type_=columns.last_counter.type),
        updated_at=bindparam("b_now", type_=columns.updated_at.type),
    )
    # The row count of an INSERT is kept only when asked for (``preserve_rowcount``).
    return values.on_conflict_do_update(
        index_elements=[ReplayCounter.originator],
        set_={
            "last_counter": values.excluded.last_counter,
            "updated_at": values.excluded.updated_at,
        },
        where=ReplayCounter.last_counter < values.excluded.last_counter,
    ).execution_options(preserve_rowcount=True)


CERTIFICATE_PEM = (
    select(Certificate.pem, CertificateRevocation.revoked_at)
    .outerjoin(
        CertificateRevocation,
        and_(
            CertificateRevocation.issuer == Certificate.issuer,
            CertificateRevocation.serial == Certificate.serial,
        ),
    )
    .where(
        Certificate.issuer == bindparam("b_issuer", type_=Certificate.__table__.c.issuer.type),
        Certificate.serial == bindparam("b_serial", type_=Certificate.__table__.c.serial.type),
    )
)
CERTIFICATE_GENERATION = select(CertificateChanges.generation).where(CertificateChanges.id == 1)


def certificates_in(keys: Any) -> Select[str, str]:
    """Which (issuer, serial) pairs of the table ``keys`` the store holds.

    One statement with the pairs as one parameter, compiled once: a tuple
    ``IN`` costs SQLAlchemy a compilation per list and two parameters per pair.
    """
    return (
        select(Certificate.issuer, Certificate.serial)
        .select_from(keys)
        .join(
            Certificate,
            and_(Certificate.issuer == keys.c.issuer, Certificate.serial == keys.c.serial),
        )
    )


#: What ``add_return`` is given: every column but the key.
RETURN_COLUMNS = tuple(c.name for c in ReturnRecord.__table__.c if c.name != "id")
AUDIT_COLUMNS = tuple(c.name for c in AuditEntry.__table__.c if c.name != "id")
ADD_RETURN = insert(ReturnRecord).returning(ReturnRecord.id)
#: A ``returns`` row whose id was reserved beforehand (a batch's deferred writes).
ADD_RETURN_WITH_ID = insert(ReturnRecord)
ADD_AUDIT = insert(AuditEntry)


def last_return_id() -> Select[int]:
    return select(func.coalesce(func.max(ReturnRecord.id), 0))
