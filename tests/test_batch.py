"""A batch of requests in one transaction decides each one as if they had come one
at a time (SQLite and PostgreSQL): the group committer reads a batch's facts in one
statement and writes in bulk (``Ledger`` deferred mode), so a later request must
still see the counters and hubs the earlier ones took."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.codes import Reason, ResponseCode
from hubreturns.dcc.processing import Outcome, Processor
from hubreturns.dcc.store.db import writer_connection
from hubreturns.dcc.store.models import AuditEntry, Device, ReplayCounter, ReturnRecord
from hubreturns.dcc.store.repository import AuditFields, Ledger, ReturnFields, WriteConflict
from hubreturns.model import Channel, Endpoint, ReturnRequest
from hubreturns.user.scenarios import SCENARIOS, DemoWorld, Scenario, scenario_bodies
from hubreturns.wire.certificate import SigningCertificate


def _warm_certificates(processor: Processor, world: DemoWorld) -> None:
    """Cache every repository certificate, so no request needs a thread to look one up."""
    certificates = [
        SigningCertificate.from_pem(path.read_bytes())
        for path in sorted(world.store_certificates.glob("*.pem"))
    ]
    processor.certificates.read(cert.key for cert in certificates)


def _together(processor: Processor, bodies: Iterable[tuple[bytes, Endpoint]]) -> list[Outcome]:
    """Start every request in one turn of an event loop: their jobs share a batch."""

    async def run() -> list[Outcome]:
        return list(
            await asyncio.gather(
                *(processor.handle_duis_async(body, endpoint) for body, endpoint in bodies)
            )
        )

    return asyncio.run(run())


def _scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


def test_the_demo_scenarios_in_one_batch_get_the_codes_they_get_one_by_one(
    processor: Processor, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    _warm_certificates(processor, world)
    bodies = list(scenario_bodies(world))
    jobs, batches = processor.committer.jobs, processor.committer.batches
    checking, answering = processor.checking, processor.answering
    checked, answered = checking.together, answering.together
    checks, answers = checking.groups, answering.groups
    outcomes = _together(processor, [(body, s.endpoint) for s, body in bodies])
    assert [(s.name, o.code) for (s, _), o in zip(bodies, outcomes, strict=True)] == [
        (s.name, s.expected_code) for s in SCENARIOS
    ]
    # They really shared transactions: far fewer commits than requests.
    assert processor.committer.jobs - jobs == len(SCENARIOS)
    commits = processor.committer.batches - batches
    assert commits <= 3
    # And their CPU work ran in lock-step (they came together): all were checked in
    # one group, and a commit's answers were signed in one.
    assert (checking.together - checked, checking.groups - checks) == (len(SCENARIOS), 1)
    assert answering.together - answered >= 2
    assert 1 <= answering.groups - answers <= commits

    accepted = [o for o in outcomes if o.accepted]
    with seeded() as session:
        records = {r.id: r for r in session.scalars(select(ReturnRecord))}
        assert sorted(records) == sorted(o.return_id for o in accepted)  # type: ignore[type-var]
        for outcome in accepted:
            assert outcome.return_id is not None
            record = records[outcome.return_id]
            assert record.request_id == str(outcome.request_id)
            device = session.get(Device, record.device_id)
            assert device is not None
            assert device.open_return_id == record.id
        audit = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert sorted(a.code for a in audit) == sorted(s.expected_code for s in SCENARIOS)
        assert {a.return_id for a in audit if a.accepted} == set(records)


def test_a_replay_and_a_second_return_of_a_hub_in_the_same_batch_are_refused(
    processor: Processor, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    _warm_certificates(processor, world)
    first = _scenario("IS fault return, Pending hub")
    again = Scenario(
        name="same hub, next counter",
        sender=first.sender,
        device=first.device,
        expected=Reason.OPEN_RETURN,
    )
    (_, body), (_, second) = scenario_bodies(world, [first, again], first_counter=500)
    batches = processor.committer.batches
    outcomes = _together(processor, [(b, Endpoint.NON_DEVICE) for b in (body, body, second)])
    assert [o.verdict for o in outcomes] == [ResponseCode.I99, Reason.REPLAY, Reason.OPEN_RETURN]
    # Decided in the batch itself, not by rolling it back and going one by one.
    assert processor.committer.batches - batches == 1
    with seeded() as session:
        records = session.scalars(select(ReturnRecord)).all()
        assert [(r.device_id, r.request_id) for r in records] == [
            (first.device, str(outcomes[0].request_id))
        ]
        counter = session.get(ReplayCounter, first.sender)
        # The E44 request's counter was not spent: only accepted requests advance it.
        assert counter is not None
        assert int(counter.last_counter) == 500


def test_counters_out_of_order_within_a_batch_refuse_the_lower_one(
    processor: Processor, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    _warm_certificates(processor, world)
    first = _scenario("IS fault return, Pending hub")
    other = _scenario("IS no-fault return, Commissioned hub")
    assert first.sender == other.sender
    (_, low), (_, high) = scenario_bodies(world, [first, other], first_counter=900)
    batches = processor.committer.batches
    outcomes = _together(processor, [(high, Endpoint.NON_DEVICE), (low, Endpoint.NON_DEVICE)])
    assert [o.verdict for o in outcomes] == [ResponseCode.I99, Reason.REPLAY]
    assert processor.committer.batches - batches == 1
    with seeded() as session:
        counter = session.get(ReplayCounter, first.sender)
        assert counter is not None
        assert int(counter.last_counter) == 901
        assert [r.device_id for r in session.scalars(select(ReturnRecord))] == [other.device]


def test_two_returns_by_one_sender_in_a_batch_are_both_recorded(
    processor: Processor, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    """Two advances of one counter in a batch (PostgreSQL sends them as one row)."""
    _warm_certificates(processor, world)
    first = _scenario("IS fault return, Pending hub")
    other = _scenario("IS no-fault return, Commissioned hub")
    (_, low), (_, high) = scenario_bodies(world, [first, other], first_counter=300)
    outcomes = _together(processor, [(low, Endpoint.NON_DEVICE), (high, Endpoint.NON_DEVICE)])
    assert [o.verdict for o in outcomes] == [ResponseCode.I99, ResponseCode.I99]
    with seeded() as session:
        counter = session.get(ReplayCounter, first.sender)
        assert counter is not None
        assert int(counter.last_counter) == 301
        devices = sorted(r.device_id for r in session.scalars(select(ReturnRecord)))
        assert devices == sorted([first.device, other.device])
        for device_id in devices:
            device = session.get(Device, device_id)
            assert device is not None
            assert device.open_return_id is not None


def _request(world: DemoWorld, scenario: Scenario, counter: int) -> ReturnRequest:
    from hubreturns.user.scenarios import scenario_request

    return scenario_request(scenario, counter)


#: Races between a batch's read and its write need a second writer, which SQLite
#: never admits (one writer at a time): these run on PostgreSQL only.
postgres_only = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@contextmanager
def _batch_connection(engine: Engine, kind: str) -> Iterator[Connection]:
    """A connection as a batch has it: in a transaction, or the committer's own
    (``writer_connection``: autocommit, where the write statement is the commit)."""
    if kind == "transaction":
        with engine.connect() as connection, connection.begin():
            yield connection
        return
    with writer_connection(engine) as connection:
        try:
            with connection.begin():
                yield connection
        finally:
            connection.invalidate()  # its session settings stay out of the pool


@postgres_only
@pytest.mark.parametrize("kind", ["transaction", "writer"])
@pytest.mark.parametrize("race", ["counter", "hub"])
def test_a_race_lost_to_another_connection_after_the_read_raises_write_conflict(
    engine: Engine, seeded: sessionmaker[Session], world: DemoWorld, race: str, kind: str
) -> None:
    """The batch's write finds the lost race and writes nothing, not even the rows
    that did not race: on the committer's connection that statement is the commit."""
    scenario = _scenario("IS fault return, Pending hub")
    request = _request(world, scenario, 40)
    now = datetime.now(UTC)
    with _batch_connection(engine, kind) as connection:
        ledger = Ledger(connection, deferred=True)
        ledger.prefetch([(request.originator, request.device_id)])
        facts = ledger.facts(
            request, endpoint=Endpoint.NON_DEVICE, access_control_broker="x", now=now
        )
        assert facts.last_counter is None
        assert facts.device is not None
        assert not facts.device.has_open_return
        # Another worker commits its own acceptance in between.
        with engine.begin() as other:
            if race == "counter":
                other.execute(
                    text("INSERT INTO replay_counters VALUES (:o, :c, :t)"),
                    {"o": request.originator, "c": f"{41:020d}", "t": now},
                )
            else:
                other.execute(
                    text("UPDATE devices SET open_return_id = -1 WHERE device_id = :d"),
                    {"d": request.device_id},
                )
        assert ledger.advance_counter(request.originator, 40, now)
        assert ledger.claim_device(request.device_id, ledger.add_return(_row(request, now)), now)
        ledger.add_audit(_audit(request, now))
        with pytest.raises(WriteConflict, match="advances" if race == "counter" else "claims"):
            ledger.flush()
    with engine.connect() as reader:
        assert reader.scalar(select(func.count()).select_from(ReturnRecord)) == 0
        assert reader.scalar(select(func.count()).select_from(AuditEntry)) == 0
        counter = reader.scalar(
            select(ReplayCounter.last_counter).where(ReplayCounter.originator == request.originator)
        )
        claim = reader.scalar(
            select(Device.open_return_id).where(Device.device_id == request.device_id)
        )
    # Only the other connection's write is there.
    assert (counter, claim) == ((f"{41:020d}", None) if race == "counter" else (None, -1))


@postgres_only
def test_a_counter_taken_between_two_advances_of_a_batch_is_a_lost_race(
    engine: Engine, seeded: sessionmaker[Session], world: DemoWorld
) -> None:
    """The batch advances one sender's counter to 40 and then 42; another worker
    commits 41 after the batch's read. One by one, 40 would have failed, so the
    batch must too, though its highest counter is still above the stored one."""
    first = _scenario("IS fault return, Pending hub")
    other = _scenario("IS no-fault return, Commissioned hub")
    low, high = _request(world, first, 40), _request(world, other, 42)
    now = datetime.now(UTC)
    with engine.connect() as connection, connection.begin():
        ledger = Ledger(connection, deferred=True)
        ledger.prefetch([(r.originator, r.device_id) for r in (low, high)])
        with engine.begin() as another:
            another.execute(
                text("INSERT INTO replay_counters VALUES (:o, :c, :t)"),
                {"o": first.sender, "c": f"{41:020d}", "t": now},
            )
        assert ledger.advance_counter(first.sender, 40, now)
        assert ledger.advance_counter(first.sender, 42, now)
        with pytest.raises(WriteConflict, match="advances: 0 of 1"):
            ledger.flush()


def _audit(request: ReturnRequest, now: datetime) -> AuditFields:
    return AuditFields(
        received_at=now,
        channel=Channel.DUIS,
        endpoint=Endpoint.NON_DEVICE.value,
        code="I99",
        accepted=True,
        reason="accepted",
        http_status=200,
        request_id=str(request.request_id),
        originator=request.originator,
        service_reference_variant=request.kind.variant,
        device_id=request.device_id,
    )


def _row(request: ReturnRequest, now: datetime) -> ReturnFields:
    return ReturnFields.of(
        request,
        request_id=str(request.request_id),
        channel=Channel.DUIS,
        role="IS",
        on_behalf_of=request.originator,
        entered_by=None,
        smi_status_at_return="Pending",
        received_at=now,
        request_xml=None,
    )


@postgres_only
def test_a_race_lost_between_read_and_write_is_decided_again_alone(
    processor: Processor, world: DemoWorld, seeded: sessionmaker[Session], engine: Engine
) -> None:
    """Through the committer: the lost race rolls the batch back and the loser gets REPLAY."""
    _warm_certificates(processor, world)
    first = _scenario("IS fault return, Pending hub")
    neighbour = _scenario("GS no-fault return, Pending hub")
    (_, body), (_, other) = scenario_bodies(world, [first, neighbour], first_counter=70)
    original = Ledger.prefetch

    def prefetch_then_lose(self: Ledger, keys: Iterable[tuple[str, str]]) -> None:
        original(self, keys)
        with engine.begin() as connection:  # another worker, after our read
            connection.execute(
                text("INSERT INTO replay_counters VALUES (:o, :c, :t)"),
                {"o": first.sender, "c": f"{70:020d}", "t": datetime.now(UTC)},
            )
        Ledger.prefetch = original  # type: ignore[method-assign]

    Ledger.prefetch = prefetch_then_lose  # type: ignore[method-assign]
    try:
        outcomes = _together(processor, [(body, Endpoint.NON_DEVICE), (other, Endpoint.NON_DEVICE)])
    finally:
        Ledger.prefetch = original  # type: ignore[method-assign]
    assert [o.verdict for o in outcomes] == [Reason.REPLAY, ResponseCode.I99]
    with seeded() as session:
        assert [r.originator for r in session.scalars(select(ReturnRecord))] == [neighbour.sender]
        codes = sorted(a.code for a in session.scalars(select(AuditEntry)))
        assert codes == ["E48", "I99"]


@postgres_only
def test_a_batch_read_probes_indexes_even_when_planned_on_empty_tables(
    engine: Engine, seeded: sessionmaker[Session], world: DemoWorld
) -> None:
    """A batch's one plan is made once and kept; made while ``replay_counters`` was
    empty (a new service, or just after a clean-up), it must not scan the table.

    Seen in the benchmark: a sequential scan of every counter for every request in
    a batch, some 70 µs of PostgreSQL's CPU a request with 1,000 senders.
    """
    now = datetime.now(UTC)
    requests = [_request(world, _scenario("IS fault return, Pending hub"), 90)]
    keys = [(r.originator, r.device_id) for r in requests]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE replay_counters"))  # statistics: empty
    with engine.begin() as connection:  # then counters arrive, one heap page of them
        connection.execute(
            text("INSERT INTO replay_counters VALUES (:o, :c, :t)"),
            [
                {"o": f"00-00-00-00-00-00-{n // 256:02X}-{n % 256:02X}", "c": "1", "t": now}
                for n in range(150)
            ],
        )
    with writer_connection(engine) as connection:  # the committer's own
        before = _scans(connection)
        for _ in range(2):  # the first read plans; the second runs the kept plan
            Ledger(connection, deferred=True).prefetch(keys)
        after = _scans(connection)
        connection.invalidate()  # its session settings stay out of the pool
    tables = ("users", "replay_counters", "devices", "device_suppliers")
    assert {t: after[t][0] - before[t][0] for t in tables} == dict.fromkeys(tables, 0)
    assert {t: after[t][1] - before[t][1] for t in tables} == dict.fromkeys(tables, 2)


def _scans(connection: Connection) -> dict[str, tuple[int, int]]:
    """(sequential, index) scans of this schema's tables by this connection so far.

    ``pg_stat_xact_user_tables`` also holds counts of this connection's earlier
    transactions not yet reported, so a test compares two readings.
    """
    rows = connection.execute(
        text(
            "SELECT relname, seq_scan, idx_scan FROM pg_stat_xact_user_tables"
            " WHERE schemaname = current_schema()"
        )
    )
    return {name: (seq, idx) for name, seq, idx in rows}
