"""A generated benchmark world: Suppliers with SMKI certificates, Pending hubs, signed requests.

Everything is made at scale without the CSV loaders (they check every row and
would dominate the set-up time): users and certificates go in with one
``executemany`` each, the inventory with ``executemany`` on SQLite and
``COPY`` on PostgreSQL. Request bodies are signed once and reused: between
runs ``reset`` empties returns, audit rows and replay counters and reopens
every hub, so the same counters are fresh again.

Mixed traffic (``mixed_bodies``): of every 20 requests, 16 are accepted
(each on its own Pending hub, signed by the hub's Supplier), one names an
unknown hub (E19), one a hub of another Supplier (E4), one was changed after
signing (E40) and one replays an accepted request some 200 positions earlier (E48).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, insert, text

from hubreturns.codes import Reason, ResponseCode, Verdict
from hubreturns.dcc.store.db import checkpoint, make_engine, migrate
from hubreturns.dcc.store.models import Certificate, Device, User
from hubreturns.model import (
    DEFAULT_ACB,
    ConnectionMethod,
    FaultReason,
    FaultReturnType,
    RequestId,
    ReturnKind,
    ReturnRequest,
)
from hubreturns.pki import DemoCA
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.request import sign_request

__all__ = [
    "BenchUser",
    "BenchWorld",
    "Body",
    "build_world",
    "eui_of",
    "gpf_id",
    "hub_id",
    "mixed_bodies",
    "populate",
    "reset",
    "user_id",
]

_USER_BASE = 0xAA00_0000_0000_0000
_HUB_BASE = 0x00DB_0000_0000_0000
#: A replay copies the accepted request this many accepted requests back.
_REPLAY_DISTANCE = 160
_STRIDE = 7919


def eui_of(number: int) -> str:
    return "-".join(f"{b:02X}" for b in number.to_bytes(8, "big"))


def user_id(n: int) -> str:
    return eui_of(_USER_BASE + n)


def hub_id(n: int) -> str:
    """CHF of hub ``n`` (even EUIs); its GPF is the next odd one."""
    return eui_of(_HUB_BASE + 2 * n)


def gpf_id(n: int) -> str:
    return eui_of(_HUB_BASE + 2 * n + 1)


@dataclass(frozen=True, slots=True)
class BenchUser:
    user_id: str
    key: ec.EllipticCurvePrivateKey
    certificate: SigningCertificate


@dataclass(slots=True)
class BenchWorld:
    """Users 0..n-1 are active Import Suppliers; hub ``h`` belongs to user ``h % n``."""

    ca: DemoCA
    users: list[BenchUser] = field(default_factory=list)

    def owner(self, hub: int) -> int:
        return hub % len(self.users)


def build_world(users: int, *, keys: int = 16) -> BenchWorld:
    """``users`` Suppliers, each with its own certificate; ``keys`` distinct key pairs shared.

    Sharing key pairs only saves key generation: every certificate (issuer +
    serial) is distinct, so the certificate cache sees ``users`` entries.
    """
    ca = DemoCA.generate(common_name="Z1-BENCH")
    pool = [ec.generate_private_key(ec.SECP256R1()) for _ in range(min(keys, users))]
    world = BenchWorld(ca)
    for n in range(users):
        key = pool[n % len(pool)]
        cred = ca.issue_xml_signing(user_id(n), key=key)
        world.users.append(
            BenchUser(user_id(n), key, SigningCertificate.from_x509(cred.certificate))
        )
    return world


def _is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def populate(url: str, world: BenchWorld, hubs: int, *, now: datetime | None = None) -> None:
    """A fresh schema with the world's users/certificates and ``hubs`` Pending CHFs."""
    moment = now or datetime.now(UTC)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if _is_postgres(engine):
                conn.execute(text("DROP SCHEMA IF EXISTS bench CASCADE"))
                conn.execute(text("CREATE SCHEMA bench"))
        migrate(engine)
        with engine.begin() as conn:
            conn.execute(
                insert(User),
                [
                    {
                        "user_id": u.user_id,
                        "role": "IS",
                        "name": f"Bench Supplier {n}",
                        "status": "active",
                        "updated_at": moment,
                    }
                    for n, u in enumerate(world.users)
                ],
            )
            conn.execute(
                insert(Certificate),
                [
                    {
                        "issuer": u.certificate.issuer,
                        "serial": str(u.certificate.serial),
                        "eui": u.certificate.eui,
                        "organisational_units": "87",
                        "not_before": u.certificate.not_before,
                        "not_after": u.certificate.not_after,
                        "pem": u.certificate.pem.decode(),
                        "loaded_at": moment,
                    }
                    for u in world.users
                ],
            )
        _insert_inventory(engine, world, hubs, moment)
    finally:
        engine.dispose()


def _insert_inventory(engine: Engine, world: BenchWorld, hubs: int, now: datetime) -> None:
    n_users = len(world.users)
    if _is_postgres(engine):
        stamp = now.isoformat()
        raw: Any = engine.raw_connection()
        try:
            with raw.cursor() as cur:
                for start in range(0, hubs, 500_000):
                    stop = min(hubs, start + 500_000)
                    devices = io.StringIO()
                    suppliers = io.StringIO()
                    for h in range(start, stop):
                        devices.write(f"{hub_id(h)}\tCHF\tPending\t{gpf_id(h)}\t{stamp}\n")
                        suppliers.write(f"{hub_id(h)}\t{world.users[h % n_users].user_id}\n")
                    with cur.copy(
                        "COPY devices (device_id, device_type, smi_status, gpf_id, updated_at)"
                        " FROM STDIN"
                    ) as copy:
                        copy.write(devices.getvalue())
                    with cur.copy(
                        "COPY device_suppliers (device_id, supplier_user_id) FROM STDIN"
                    ) as copy:
                        copy.write(suppliers.getvalue())
                cur.execute("ANALYZE users, certificates, devices, device_suppliers")
            raw.commit()
        finally:
            raw.close()
        return
    # SQLite: the driver's executemany with timestamps in SQLAlchemy's own format.
    bind = Device.__table__.c.updated_at.type.bind_processor(engine.dialect)
    stamp_value = bind(now) if bind is not None else now
    with engine.begin() as conn:
        for start in range(0, hubs, 200_000):
            stop = min(hubs, start + 200_000)
            conn.exec_driver_sql(
                "INSERT INTO devices (device_id, device_type, smi_status, gpf_id, updated_at)"
                " VALUES (?, 'CHF', 'Pending', ?, ?)",
                [(hub_id(h), gpf_id(h), stamp_value) for h in range(start, stop)],
            )
            conn.exec_driver_sql(
                "INSERT INTO device_suppliers (device_id, supplier_user_id) VALUES (?, ?)",
                [(hub_id(h), world.users[h % n_users].user_id) for h in range(start, stop)],
            )
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")


def reset(url: str) -> None:
    """Forget every request: no returns, audit rows or counters; every hub open again.

    Waits first until the service has finished what it was sent: a load
    generator that stops leaves requests in flight, and one committed after
    the reset would make the next run's copy of it look like a replay.
    """
    engine = make_engine(url)
    try:
        _wait_until_quiet(engine)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM returns"))
            conn.execute(text("DELETE FROM audit_log"))
            conn.execute(text("DELETE FROM replay_counters"))
            conn.execute(
                text("UPDATE devices SET open_return_id = NULL WHERE open_return_id IS NOT NULL")
            )
        if _is_postgres(engine):
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE returns, audit_log, replay_counters, devices"))
        else:
            # The deletions filled the WAL: copy it into the database now, or the
            # service's first checkpoint of the run does (a stall of its commits
            # behind that fsync, seen as a spike of every latency early in the run).
            checkpoint(engine)
    finally:
        engine.dispose()


def _wait_until_quiet(engine: Engine, *, still: float = 0.3, limit: float = 10.0) -> None:
    """Return once no audit row has been added for ``still`` seconds (at most ``limit``)."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one()
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= still:
            return
        time.sleep(0.05)


@dataclass(frozen=True, slots=True)
class Body:
    """One pre-signed request and the code it must get (processed in order)."""

    expected: Verdict
    data: bytes


def _request(sender: str, counter: int, hub: int, device: str | None = None) -> ReturnRequest:
    return ReturnRequest(
        request_id=RequestId(originator=sender, target=DEFAULT_ACB, counter=counter),
        command_variant=8,
        service_reference="8.14",
        kind=ReturnKind.FAULT,
        device_id=device or hub_id(hub),
        return_type=FaultReturnType.PRE_INSTALL.value,
        other_device_id=gpf_id(hub),
        connection_method=ConnectionMethod.HOT_SHOE,
        fault_reason=FaultReason.DAMAGED_CASE,
        user_ref_id=f"bench-{counter}",
    )


def mixed_bodies(
    world: BenchWorld,
    count: int,
    *,
    hubs: int,
    accepted_only: bool = False,
    spread: bool = False,
) -> Iterator[Body]:
    """``count`` signed requests, 80 % accepted and 20 % refused (E19, E4, E40, E48).

    Counters are the position in the stream + 1, so every sender's counters
    rise in stream order. Accepted requests use hubs 0, 1, 2, … or, with
    ``spread``, hubs scattered over the whole inventory (a prime stride), so
    a large inventory is not measured on its first pages only. ``hubs`` is
    the inventory size (an unknown hub is one past it).
    """
    n_users = len(world.users)
    sent: list[bytes] = []
    next_hub = 0
    stride = _STRIDE if spread and hubs % _STRIDE else 1
    for i in range(count):
        counter = i + 1
        slot = i % 20
        if accepted_only or slot < 16 or (slot == 19 and len(sent) < _REPLAY_DISTANCE):
            if next_hub >= hubs:
                raise ValueError(
                    f"{count} requests need more than the {hubs} hubs in the inventory"
                )
            hub = next_hub * stride % hubs
            next_hub += 1
            owner = world.users[world.owner(hub)]
            data = sign_request(_request(owner.user_id, counter, hub), owner.key, owner.certificate)
            sent.append(data)
            yield Body(ResponseCode.I99, data)
        elif slot == 16:
            sender = world.users[i % n_users]
            unknown = hubs + i
            data = sign_request(
                _request(sender.user_id, counter, unknown), sender.key, sender.certificate
            )
            yield Body(ResponseCode.E19, data)
        elif slot == 17:
            hub = (next_hub + 7) % hubs
            sender = world.users[(world.owner(hub) + 1) % n_users]
            data = sign_request(
                _request(sender.user_id, counter, hub), sender.key, sender.certificate
            )
            yield Body(ResponseCode.E4, data)
        elif slot == 18:
            sender = world.users[i % n_users]
            data = sign_request(
                _request(sender.user_id, counter, next_hub), sender.key, sender.certificate
            )
            yield Body(Reason.SIGNATURE, data.replace(b"bench-", b"bencX-", 1))
        else:
            yield Body(Reason.REPLAY, sent[len(sent) - _REPLAY_DISTANCE])
