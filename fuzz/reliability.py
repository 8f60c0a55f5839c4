"""Load, soak and crash harness shared by ``scripts/soak``, ``scripts/crash`` and the tests.

A *bench* is a database with its own population: ``clients`` Import Suppliers,
each with its own SMKI credential and a block of Pending hubs it is responsible
for. Every client is one sequential sender with its own RequestID counter, so
the code each request must get is known in advance even when many clients send
at once. ``check`` then compares the database with what the clients were told:
every I99 stored exactly once with its audit row, every refusal in the audit log
only, replay counters equal to the highest accepted counter.
"""

from __future__ import annotations

import enum
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from hubreturns.codes import DEFAULT_PROFILE, Reason
from hubreturns.dcc.loading import load_certificates, load_devices, load_users
from hubreturns.dcc.store.db import make_engine, make_sessionmaker, migrate
from hubreturns.dcc.store.models import AuditEntry, Device, ReplayCounter, ReturnRecord
from hubreturns.errors import Rejection
from hubreturns.model import (
    DEFAULT_ACB,
    ConnectionMethod,
    FaultReason,
    FaultReturnType,
    NoFaultReturnType,
    RequestId,
    ReturnKind,
    ReturnRequest,
)
from hubreturns.pki import Credential, DemoCA, packaged_pki
from hubreturns.user.client import read_response
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.request import sign_request

__all__ = [
    "Bench",
    "Client",
    "Kind",
    "Report",
    "Told",
    "check",
    "dcc_certificates",
    "drive",
    "pg_schema",
    "prepare",
    "served",
]


class Kind(enum.Enum):
    """What a generated request is, and the code it must get."""

    ACCEPT = ("I99", 1.0)
    REPLAY = (DEFAULT_PROFILE.code(Reason.REPLAY), 0.15)
    TAMPERED = (DEFAULT_PROFILE.code(Reason.SIGNATURE), 0.1)
    NOT_XML = (DEFAULT_PROFILE.code(Reason.MALFORMED), 0.05)
    SCHEMA = (DEFAULT_PROFILE.code(Reason.SCHEMA), 0.05)
    UNKNOWN_DEVICE = ("E19", 0.1)
    ALREADY_RETURNED = (DEFAULT_PROFILE.code(Reason.OPEN_RETURN), 0.1)
    WRONG_ENDPOINT = ("E13", 0.05)

    def __init__(self, code: str, weight: float) -> None:
        self.code = code
        self.weight = weight


@dataclass(slots=True)
class Told:
    """One request and what its client was told (``code`` None: no answer arrived)."""

    kind: Kind
    originator: str
    counter: int
    body_sha256: str
    code: str | None = None
    http_status: int | None = None
    signed: bool = False
    error: str = ""

    @property
    def request_id(self) -> str:
        return f"{self.originator}:{DEFAULT_ACB}:{self.counter}"


@dataclass(slots=True)
class Client:
    """One Import Supplier sending sequentially with strictly rising counters."""

    user_id: str
    credential: Credential
    hubs: list[str]
    counter: int = 0
    returned: list[str] = field(default_factory=list)
    accepted_bodies: list[bytes] = field(default_factory=list)

    def request(self, device: str, kind: ReturnKind = ReturnKind.NO_FAULT) -> tuple[int, bytes]:
        self.counter += 1
        fault = kind is ReturnKind.FAULT
        request = ReturnRequest(
            request_id=RequestId(originator=self.user_id, target=DEFAULT_ACB, counter=self.counter),
            command_variant=8,
            service_reference="8.14",
            kind=kind,
            device_id=device,
            return_type=(FaultReturnType.PRE_INSTALL if fault else NoFaultReturnType.GENERAL).value,
            other_device_id=_hub(0xFFFF, 0xFF) if fault else None,
            connection_method=ConnectionMethod.HOT_SHOE if fault else None,
            fault_reason=FaultReason.DAMAGED_CASE if fault else None,
            user_ref_id=f"r-{self.counter}",
        )
        cert = SigningCertificate.from_x509(self.credential.certificate)
        return self.counter, sign_request(request, self.credential.key, cert)


@dataclass(slots=True)
class Bench:
    url: str
    clients: list[Client]


def _client_eui(n: int) -> str:
    return f"00-DB-12-34-5A-00-{n >> 8:02X}-{n & 0xFF:02X}"


def _hub(client: int, n: int) -> str:
    octets = [0x00, 0xDB, 0x5A, client >> 8, client & 0xFF, n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF]
    return "-".join(f"{b:02X}" for b in octets)


def prepare(url: str, folder: Path, *, clients: int = 4, hubs: int = 200) -> Bench:
    """Migrate ``url`` and load ``clients`` suppliers with ``hubs`` Pending hubs each."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    try:
        migrate(engine)
        sessions = make_sessionmaker(engine)
        now = datetime.now(UTC)
        ca = DemoCA.generate()
        bench = Bench(url, [])
        users = ["user_id,role,name,status"]
        devices = ["device_id,device_type,smi_status,responsible_suppliers,gpf_id"]
        certs = folder / f"certs-{uuid.uuid4().hex[:8]}"
        certs.mkdir()
        for n in range(clients):
            user = _client_eui(n)
            credential = ca.issue_xml_signing(user)
            (certs / f"{n}.cert.pem").write_bytes(credential.cert_pem)
            users.append(f"{user},IS,Load client {n},active")
            owned = [_hub(n, j) for j in range(hubs)]
            devices.extend(f"{hub},CHF,Pending,{user}," for hub in owned)
            bench.clients.append(Client(user, credential, owned))
        load_users(sessions, "\n".join(users) + "\n", now)
        load_certificates(sessions, [certs], now)
        load_devices(sessions, "\n".join(devices) + "\n", now)
    finally:
        engine.dispose()
    return bench


def dcc_certificates() -> list[SigningCertificate]:
    return [
        SigningCertificate.from_pem(p.read_bytes())
        for p in sorted(packaged_pki().glob("dsp-xml-sign-*.cert.pem"))
    ]


# ------------------------------------------------------------------ traffic


def _next(client: Client, kind: Kind, rng: random.Random) -> tuple[Kind, int, bytes, str]:
    """The request for ``kind`` (falling back to a refusal kind when it cannot be made)."""
    endpoint = "serviceD"
    if kind is Kind.ACCEPT and not client.hubs:
        kind = Kind.UNKNOWN_DEVICE
    if kind in (Kind.REPLAY, Kind.ALREADY_RETURNED) and not client.returned:
        kind = Kind.NOT_XML
    match kind:
        case Kind.ACCEPT:
            hub = client.hubs.pop()
            variant = rng.choice(list(ReturnKind))
            counter, body = client.request(hub, variant)
        case Kind.REPLAY:
            counter, body = -1, rng.choice(client.accepted_bodies)
        case Kind.TAMPERED:
            counter, body = client.request(_hub(0xFFFE, rng.randrange(1 << 16)))
            body = body.replace(b"<sr:UserRefID>r-", b"<sr:UserRefID>x-", 1)
        case Kind.NOT_XML:
            counter, body = -1, rng.randbytes(rng.randrange(1, 64))
        case Kind.SCHEMA:
            counter, body = client.request(_hub(0xFFFE, 1))
            body = body.replace(b"<sr:DeviceID>", b"<sr:DeviceID>Z", 1)
        case Kind.UNKNOWN_DEVICE:
            counter, body = client.request(_hub(0xFFFE, rng.randrange(1 << 16)))
        case Kind.ALREADY_RETURNED:
            counter, body = client.request(rng.choice(client.returned))
        case Kind.WRONG_ENDPOINT:
            counter, body = client.request(client.hubs[-1] if client.hubs else _hub(0xFFFE, 2))
            endpoint = "serviceS"
    return kind, counter, body, endpoint


def drive(
    base_url: str,
    client: Client,
    told: list[Told],
    stop: threading.Event,
    *,
    mix: bool = True,
    seed: int = 0,
    limit: int | None = None,
) -> None:
    """Send requests for ``client`` until ``stop`` (or ``limit`` requests); record answers.

    A request whose answer never arrives (server killed) is recorded with
    ``code=None`` and ends the loop.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible traffic, not cryptography
    kinds = list(Kind) if mix else [Kind.ACCEPT]
    weights = [k.weight for k in kinds]
    dcc = dcc_certificates()
    sent = 0
    with httpx.Client(base_url=base_url, timeout=30) as http:
        while not stop.is_set() and (limit is None or sent < limit):
            kind, counter, body, endpoint = _next(client, rng.choices(kinds, weights)[0], rng)
            entry = Told(kind, client.user_id, counter, hashlib.sha256(body).hexdigest())
            told.append(entry)
            sent += 1
            try:
                reply = http.post(
                    f"/api/v1/{endpoint}",
                    content=body,
                    headers={"content-type": "application/xml"},
                )
            except httpx.HTTPError as exc:
                entry.error = f"{type(exc).__name__}: {exc}"
                return
            entry.http_status = reply.status_code
            entry.code = reply.headers.get("x-duis-response-code")
            try:
                entry.signed = read_response(reply.content, dcc).code == entry.code
            except Rejection as exc:
                entry.error = f"response not verified: {exc}"
            if entry.code == "I99" and kind is Kind.ACCEPT:
                client.returned.append(_device_of(body))
                client.accepted_bodies.append(body)


def _device_of(body: bytes) -> str:
    start = body.index(b"<sr:DeviceID>") + len(b"<sr:DeviceID>")
    return body[start : body.index(b"</sr:DeviceID>")].decode()


# ------------------------------------------------------------------ the check


@dataclass(slots=True)
class Report:
    """The figures of a run and every inconsistency found (empty ``problems`` = pass)."""

    requests: int = 0
    answered: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    returns: int = 0
    audit_rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        codes = " ".join(f"{c}={n}" for c, n in sorted(self.codes.items()))
        return (
            f"{self.requests} requests, {self.answered} answered ({codes}); database: "
            f"{self.returns} returns, {self.audit_rows} audit rows; "
            f"{'consistent' if self.ok else f'{len(self.problems)} PROBLEMS'}"
        )


def check(url: str, told: list[Told], *, crashed: bool = False) -> Report:
    """Compare the database with what clients were told.

    Always: every I99 has exactly one return record and one accepted audit row;
    no refused request left a return record; every return record has its
    accepted audit row; each replay counter is the highest stored counter of its
    originator; an open return belongs to its device. Without a crash the
    counts must match exactly: one audit row per answer, returns = I99s.
    ``crashed``: requests without an answer may or may not be stored.
    """
    report = Report(requests=len(told))
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            returns = conn.execute(
                select(ReturnRecord.id, ReturnRecord.request_id, ReturnRecord.device_id)
            ).all()
            audit = conn.execute(
                select(
                    AuditEntry.body_sha256,
                    AuditEntry.code,
                    AuditEntry.accepted,
                    AuditEntry.return_id,
                    AuditEntry.request_id,
                )
            ).all()
            counters = {
                row.originator: int(row.last_counter)
                for row in conn.execute(
                    select(ReplayCounter.originator, ReplayCounter.last_counter)
                )
            }
            open_returns = conn.execute(
                select(Device.device_id, Device.open_return_id).where(
                    Device.open_return_id.is_not(None)
                )
            ).all()
    finally:
        engine.dispose()
    report.returns, report.audit_rows = len(returns), len(audit)
    problems = report.problems
    by_request = Counter(r.request_id for r in returns)
    record_by_id = {r.id: r for r in returns}
    accepted_audit = Counter(a.return_id for a in audit if a.accepted)
    audit_by_body: dict[str, list[str]] = {}
    for a in audit:
        audit_by_body.setdefault(a.body_sha256 or "", []).append(a.code)

    highest: dict[str, int] = {}
    for entry in told:
        if entry.code is None:
            continue
        report.answered += 1
        report.codes[entry.code] += 1
        if entry.code == "I99":
            highest[entry.originator] = max(highest.get(entry.originator, -1), entry.counter)
            if by_request[entry.request_id] != 1:
                problems.append(
                    f"{entry.request_id}: I99 but {by_request[entry.request_id]} return records"
                )
        elif entry.code == DEFAULT_PROFILE.code(Reason.UNAVAILABLE):
            if audit_by_body.get(entry.body_sha256):
                problems.append(f"{entry.request_id}: E100 but an audit row was written")
        elif entry.code not in audit_by_body.get(entry.body_sha256, []):
            problems.append(f"{entry.kind.name} told {entry.code}: no audit row with that code")
        unavailable = DEFAULT_PROFILE.code(Reason.UNAVAILABLE)
        if entry.code != entry.kind.code and not (crashed and entry.code == unavailable):
            problems.append(
                f"{entry.kind.name} {entry.request_id}: told {entry.code}, expected "
                f"{entry.kind.code}"
            )
        if not entry.signed:
            problems.append(f"{entry.request_id}: response not signed/verified {entry.error}")
    told_i99 = {e.request_id for e in told if e.code == "I99"}
    unanswered = {e.request_id for e in told if e.code is None and e.counter >= 0}
    for record in returns:
        if accepted_audit[record.id] != 1:
            problems.append(
                f"return {record.id} has {accepted_audit[record.id]} accepted audit rows"
            )
        if record.request_id not in told_i99 and record.request_id not in unanswered:
            problems.append(f"return {record.id} ({record.request_id}) was never acknowledged")
    for device_id, open_id in open_returns:
        owner = record_by_id.get(open_id)
        if owner is None or owner.device_id != device_id:
            problems.append(f"device {device_id} points at return {open_id} of another device")
    stored_max: dict[str, int] = {}
    for record in returns:
        originator, _target, counter = record.request_id.split(":")
        stored_max[originator] = max(stored_max.get(originator, -1), int(counter))
    if counters != stored_max:
        problems.append(f"replay counters {counters} != highest stored counters {stored_max}")
    for originator, counter in highest.items():
        if counters.get(originator, -1) < counter:
            problems.append(f"{originator}: counter below an acknowledged {counter}")
    if not crashed:
        if len(returns) != len(told_i99):
            problems.append(f"{len(returns)} return records for {len(told_i99)} I99 answers")
        stored_answers = report.answered - report.codes[DEFAULT_PROFILE.code(Reason.UNAVAILABLE)]
        if len(audit) != stored_answers:
            problems.append(f"{len(audit)} audit rows for {stored_answers} stored answers")
    return report


# ------------------------------------------------------------------ a served process


@dataclass(slots=True)
class Served:
    process: subprocess.Popen[bytes]
    url: str

    def kill(self) -> None:
        """kill -9 of the server and every process it started (its process group)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def _free_port() -> int:
    from hubreturns.dcc.serving import free_port

    return free_port()


def served(database_url: str, *, workers: int = 1, log: Path | None = None) -> Served:
    """``hubreturns serve`` as a child process in its own process group, once healthy."""
    port = _free_port()
    exe = Path(sys.executable).with_name("hubreturns")
    # A test service: the packaged test keys, and one desk session key for every worker.
    env = {**os.environ, "HUBRETURNS_DATABASE_URL": database_url, "HUBRETURNS_ALLOW_TEST_KEYS": "1"}
    env.setdefault("HUBRETURNS_SESSION_SECRET", "reliability-session-secret-0123456789abcdef")
    with open(log or os.devnull, "ab") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [str(exe), "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hubreturns serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return Served(process, url)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("hubreturns serve did not become healthy within 60 s")


def pg_schema(base_url: str) -> Iterator[str]:
    """A fresh schema on ``base_url`` for one run; dropped afterwards."""
    schema = f"rel_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
