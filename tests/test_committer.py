"""The group committer: shared commits, nothing answered before its commit, and
failures that stay with the job that caused them (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.dcc import committer as committer_module
from hubreturns.dcc.committer import Committer, Contended, FunctionJob, Job, Load
from hubreturns.dcc.store.db import make_engine, migrate, writer_lock
from hubreturns.dcc.store.models import AuditEntry
from hubreturns.dcc.store.repository import AuditFields, Ledger
from hubreturns.model import Channel

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

#: The tests of the PostgreSQL writer thread's own behaviour.
postgresql_only = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def _audit(reason: str) -> AuditFields:
    return AuditFields(
        received_at=NOW,
        channel=Channel.DUIS,
        code="E46",
        accepted=False,
        reason=reason,
        http_status=400,
    )


def _write(reason: str) -> FunctionJob[str]:
    def run(ledger: Ledger) -> str:
        ledger.add_audit(_audit(reason))
        return reason

    return FunctionJob(run)


def _reasons(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.scalars(select(AuditEntry.reason)))


class _Gate:
    """A job that holds the committer thread until opened, so later jobs queue up."""

    reads = None

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()

    def run(self, ledger: Ledger) -> str:
        self.entered.set()
        assert self.open.wait(30)
        ledger.add_audit(_audit("gate"))
        return "gate"

    def after_race(self, ledger: Ledger, race: Contended[object]) -> str:
        raise AssertionError("no race here")


def _queue_behind_gate(committer: Committer[str], jobs: Sequence[Job[str]]) -> list[Future[str]]:
    gate = _Gate()
    first = committer.submit(gate)
    assert gate.entered.wait(30)
    futures = [committer.submit(job) for job in jobs]
    gate.open.set()
    assert first.result(30) == "gate"
    return futures


def test_jobs_queued_together_share_one_commit(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    committer = Committer[str](engine)
    before = committer.batches
    futures = _queue_behind_gate(committer, [_write(f"r{i:03}") for i in range(100)])
    assert [f.result(30) for f in futures] == [f"r{i:03}" for i in range(100)]
    # The gate's own commit, then all hundred in one transaction.
    assert committer.batches - before == 2
    assert _reasons(engine) == sorted(["gate", *(f"r{i:03}" for i in range(100))])
    committer.close()


def test_an_answer_comes_only_after_its_commit(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    committer = Committer[str](engine)
    for n in range(5):
        assert committer.run(_write(f"w{n}")) == f"w{n}"
        # Seen from another connection the moment the caller has its answer.
        assert f"w{n}" in _reasons(engine)
    committer.close()


class _Racer:
    """Writes a row, then loses a race the first time it runs in a batch."""

    reads = None

    def __init__(self) -> None:
        self.runs = 0

    def run(self, ledger: Ledger) -> str:
        self.runs += 1
        ledger.add_audit(_audit(f"racer-run-{self.runs}"))
        raise Contended("lost")

    def after_race(self, ledger: Ledger, race: Contended[str]) -> str:
        ledger.add_audit(_audit(f"racer-refused-{race.detail}"))
        return "refused"


def test_a_lost_race_reruns_the_batch_alone_and_records_the_refusal(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    committer = Committer[str](engine)
    racer = _Racer()
    futures = _queue_behind_gate(committer, [_write("before"), racer, _write("after")])
    assert [f.result(30) for f in futures] == ["before", "refused", "after"]
    # The batch's writes were rolled back once and redone one job at a time: each
    # neighbour's row exists once, the racer's own writes never, its refusal once.
    assert racer.runs == 2
    assert _reasons(engine) == ["after", "before", "gate", "racer-refused-lost"]
    committer.close()


def test_one_failing_job_does_not_sink_its_neighbours(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    def broken(ledger: Ledger) -> str:
        ledger.add_audit(_audit("broken"))
        raise ValueError("a bug in one job")

    committer = Committer[str](engine)
    futures = _queue_behind_gate(committer, [_write("a"), FunctionJob(broken), _write("b")])
    assert futures[0].result(30) == "a"
    with pytest.raises(ValueError, match="a bug in one job"):
        futures[1].result(30)
    assert futures[2].result(30) == "b"
    assert _reasons(engine) == ["a", "b", "gate"]
    committer.close()


def test_an_unavailable_database_fails_the_batch_at_once(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    calls: list[str] = []

    def away(ledger: Ledger) -> str:
        calls.append("away")
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    def counted(reason: str) -> FunctionJob[str]:
        def run(ledger: Ledger) -> str:
            calls.append(reason)
            ledger.add_audit(_audit(reason))
            return reason

        return FunctionJob(run)

    committer = Committer[str](engine)
    futures = _queue_behind_gate(committer, [counted("x"), FunctionJob(away), counted("y")])
    for future in futures:
        with pytest.raises(OperationalError):
            future.result(30)
    # Not retried job by job: an outage must not cost each waiting request a timeout.
    assert calls == ["x", "away"]
    assert _reasons(engine) == ["gate"]
    committer.close()


class _Deadlocked(Exception):
    """What psycopg raises for a deadlock: an error carrying SQLSTATE 40P01."""

    sqlstate = "40P01"


def test_a_batch_the_server_rolled_back_is_run_again_job_by_job(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    """A deadlock or serialization failure is a lost race, not an outage: no E100."""
    runs: list[str] = []

    def deadlocked_once(ledger: Ledger) -> str:
        runs.append("victim")
        if runs.count("victim") == 1:
            raise OperationalError("UPDATE devices", {}, _Deadlocked("deadlock detected"))
        ledger.add_audit(_audit("victim"))
        return "victim"

    committer = Committer[str](engine)
    futures = _queue_behind_gate(
        committer, [_write("a"), FunctionJob(deadlocked_once), _write("b")]
    )
    assert [f.result(30) for f in futures] == ["a", "victim", "b"]
    assert runs == ["victim", "victim"]
    assert _reasons(engine) == ["a", "b", "gate", "victim"]
    committer.close()


def test_close_finishes_queued_work_and_a_later_submit_restarts(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    committer = Committer[str](engine)
    futures = [committer.submit(_write(f"c{n}")) for n in range(20)]
    committer.close()
    assert all(f.done() for f in futures)
    assert committer.run(_write("again")) == "again"
    committer.close()
    assert len(_reasons(engine)) == 21


def test_sqlite_writers_in_other_processes_queue_on_the_lock_file(tmp_path: Path) -> None:
    database = tmp_path / "locked.db"
    engine = make_engine(f"sqlite:///{database}")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.readline()\n",
            f"{database}-writer.lock",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        acquired = threading.Event()

        def write() -> None:
            with writer_lock(engine):
                acquired.set()

        thread = threading.Thread(target=write)
        thread.start()
        assert not acquired.wait(0.5), "took the writer lock another process holds"
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert acquired.wait(30), "the lock was not handed over when released"
        thread.join(30)
    finally:
        holder.stdin.close()
        holder.stdout.close()
        holder.kill()
        holder.wait()
        engine.dispose()


# -- on an event loop ------------------------------------------------------------------


def test_jobs_of_one_loop_turn_share_one_commit(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    committer = Committer[str](engine)

    async def main() -> list[str]:
        return await asyncio.gather(*(committer.run_async(_write(f"a{i:02}")) for i in range(40)))

    before = committer.batches
    assert asyncio.run(main()) == [f"a{i:02}" for i in range(40)]
    assert _reasons(engine) == [f"a{i:02}" for i in range(40)]
    # One transaction: on the loop itself (SQLite) or handed to the thread together.
    assert committer.batches - before == 1
    committer.close()


@postgresql_only
def test_the_writer_holds_a_batch_for_requests_that_have_arrived(
    sessions: sessionmaker[Session], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's writer thread: a request noted as arriving joins the batch before it."""
    monkeypatch.setattr(committer_module, "_GATHER_WAIT", 30.0)  # no timing in the test
    committer = Committer[str](engine)

    async def main() -> list[str]:
        on_the_way = committer.flush.arrived()  # the late request is being read
        early = asyncio.ensure_future(committer.run_async(_write("early"), Load(clients=2)))
        await asyncio.sleep(0.002)  # the early job is with the writer, which waits
        late = asyncio.ensure_future(
            committer.run_async(_write("late"), Load(clients=2, arrival=on_the_way))
        )
        return [await early, await late]

    before = committer.batches
    assert asyncio.run(main()) == ["early", "late"]
    assert committer.batches - before == 1
    assert _reasons(engine) == ["early", "late"]
    committer.close()


@postgresql_only
def test_the_writer_does_not_wait_for_requests_that_arrive_during_its_wait(
    sessions: sessionmaker[Session], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A steady stream must not hold every batch for the whole gather wait: the
    batch waits for what was on its way when it was taken, and a request that
    arrived meanwhile goes in the next batch."""
    monkeypatch.setattr(committer_module, "_GATHER_WAIT", 30.0)  # a wait would time out
    committer = Committer[str](engine)

    async def main() -> list[str]:
        in_flight = committer.flush.arrived()
        early = asyncio.ensure_future(committer.run_async(_write("early"), Load(clients=3)))
        await asyncio.sleep(0.2)  # the writer took the early job and waits for in_flight
        later = committer.flush.arrived()  # arrives during the wait
        joined = committer.run_async(_write("joined"), Load(clients=3, arrival=in_flight))
        first = await asyncio.wait_for(asyncio.gather(early, joined), timeout=10)
        last = await committer.run_async(_write("last"), Load(clients=3, arrival=later))
        return [*first, last]

    before = committer.batches
    assert asyncio.run(main()) == ["early", "joined", "last"]
    assert committer.batches - before == 2
    assert _reasons(engine) == ["early", "joined", "last"]
    committer.close()


@postgresql_only
def test_with_nothing_arriving_a_batch_goes_at_once_and_a_lost_arrival_only_delays(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    committer = Committer[str](engine)

    async def main() -> tuple[str, str]:
        alone = await committer.run_async(_write("alone"), Load(clients=1))  # nobody else
        # a request said to be on its way that never brings its job: a short wait only
        lost = committer.flush.arrived()
        waited = await committer.run_async(_write("waited"), Load(clients=2))
        lost.close()
        return alone, waited

    before = committer.batches
    assert asyncio.run(main()) == ("alone", "waited")
    assert committer.batches - before == 2
    committer.close()


@postgresql_only
def test_postgresql_batches_run_on_the_connection_the_writer_keeps(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    """No pool check-out (and pre-ping round trip) per batch; returned when the committer closes."""
    checkouts: list[object] = []
    checkins: list[object] = []
    event.listen(engine, "checkout", lambda *_: checkouts.append(1))
    event.listen(engine, "checkin", lambda *_: checkins.append(1))
    committer = Committer[str](engine)
    assert [committer.run(_write(f"k{n}")) for n in range(5)] == [f"k{n}" for n in range(5)]
    assert (len(checkouts), len(checkins)) == (1, 0)
    committer.close()
    assert (len(checkouts), len(checkins)) == (1, 1)


@postgresql_only
def test_a_kept_connection_that_died_is_replaced_and_its_batch_run_once(
    sessions: sessionmaker[Session], engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    backends: list[int] = []
    event.listen(engine, "checkout", lambda dbapi, *_: backends.append(dbapi.info.backend_pid))
    committer = Committer[str](engine)
    assert committer.run(_write("before")) == "before"
    (writer,) = backends  # the one check-out: the writer thread's
    with engine.connect() as admin:  # the writer's backend dies while idle
        assert admin.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": writer})
        admin.commit()
    with caplog.at_level(logging.INFO, logger="hubreturns.dcc.committer"):
        assert committer.run(_write("after")) == "after"
    assert "batch run again on a new one" in caplog.text
    assert _reasons(engine) == ["after", "before"]  # each exactly once
    committer.close()


def test_on_a_loop_a_failing_job_fails_alone(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    def broken(ledger: Ledger) -> str:
        ledger.add_audit(_audit("broken"))
        raise ValueError("a bug in one job")

    committer = Committer[str](engine)

    async def main() -> list[object]:
        jobs = [_write("x"), FunctionJob(broken), _write("y")]
        return await asyncio.gather(
            *(committer.run_async(job) for job in jobs), return_exceptions=True
        )

    first, failed, last = asyncio.run(main())
    assert (first, last) == ("x", "y")
    assert isinstance(failed, ValueError)
    assert _reasons(engine) == ["x", "y"]
    committer.close()


def test_a_request_given_up_while_its_batch_runs_leaves_its_neighbours_answered(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    """A caller cancelled while its job waits (a server shutting down, say) must not
    turn its batch's committed answers into errors for the others."""
    committer = Committer[str](engine)

    async def main() -> tuple[str, bool, str]:
        tasks = [asyncio.ensure_future(committer.run_async(_write(n))) for n in "abc"]
        await asyncio.sleep(0)  # each has queued its job; the batch has not run yet
        tasks[1].cancel()
        first, _, last = await asyncio.gather(*tasks, return_exceptions=True)
        return str(first), tasks[1].cancelled(), str(last)

    assert asyncio.run(main()) == ("a", True, "c")
    # The cancelled caller's job was committed with the rest: only its answer is lost.
    assert _reasons(engine) == ["a", "b", "c"]
    committer.close()


def test_a_briefly_busy_writer_lock_is_tried_again_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sibling worker's commit (a short hold): the jobs wait on the loop, not in the thread."""
    monkeypatch.setattr(committer_module, "_LOOP_RETRY_FOR", 30.0)  # no timing in the test
    engine = make_engine(f"sqlite:///{tmp_path / 'busy.db'}")
    migrate(engine)
    committer = Committer[str](engine)
    lock = writer_lock(engine)

    async def main() -> list[str]:
        lock.__enter__()
        try:
            first = asyncio.gather(*(committer.run_async(_write(f"b{i}")) for i in range(3)))
            await asyncio.sleep(0.003)  # tried and found busy, at least once
            later = asyncio.ensure_future(committer.run_async(_write("b3")))
            await asyncio.sleep(0.003)
            assert not first.done()
        finally:
            lock.__exit__(None, None, None)
        return [*await first, await later]

    before = committer.batches
    assert asyncio.run(main()) == ["b0", "b1", "b2", "b3"]
    assert committer._thread is None  # never handed to the writer thread
    assert committer.batches - before == 1  # the late job joined the waiting batch
    assert _reasons(engine) == ["b0", "b1", "b2", "b3"]
    committer.close()
    engine.dispose()


def _sqlite_committer(tmp_path: Path, *, hold: float) -> tuple[Committer[str], Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'held.db'}")
    migrate(engine)
    return Committer(engine, hold=hold), engine


async def _steady_stream(committer: Committer[str], prefix: str, count: int) -> list[str]:
    """``count`` jobs on one loop, one a turn, every 2 ms, none waiting for the one before."""
    runs = []
    for i in range(count):
        runs.append(asyncio.ensure_future(committer.run_async(_write(f"{prefix}{i:02}"))))
        await asyncio.sleep(0.002)
    return list(await asyncio.gather(*runs))


def test_under_a_steady_stream_a_batch_waits_for_the_jobs_behind_it(tmp_path: Path) -> None:
    """SQLite on the loop: jobs that come often, each on a turn of its own, share commits."""
    committer, engine = _sqlite_committer(tmp_path, hold=0.05)

    assert asyncio.run(_steady_stream(committer, "s", 40)) == [f"s{i:02}" for i in range(40)]
    assert _reasons(engine) == [f"s{i:02}" for i in range(40)]
    assert committer.jobs == 40
    assert committer.holds >= 1
    # Without the hold each job, alone on its turn, would be a commit of its own.
    assert committer.batches <= 20
    committer.close()
    engine.dispose()


def test_one_job_at_a_time_is_not_kept_waiting(tmp_path: Path) -> None:
    """A client that sends the next request only once answered gains nothing from a hold:
    after one that gathered nothing, batches go at once but for the occasional probe."""
    committer, engine = _sqlite_committer(tmp_path, hold=0.05)

    async def main() -> list[str]:
        return [await committer.run_async(_write(f"q{i:03}")) for i in range(200)]

    assert asyncio.run(main()) == [f"q{i:03}" for i in range(200)]
    assert committer.batches == 200
    # The first wait, then probes after 16, 32, 64 and 128 more batches at most.
    assert 1 <= committer.holds <= 5
    committer.close()
    engine.dispose()


def test_with_no_hold_every_turn_commits_at_once(tmp_path: Path) -> None:
    committer, engine = _sqlite_committer(tmp_path, hold=0.0)

    assert asyncio.run(_steady_stream(committer, "n", 20)) == [f"n{i:02}" for i in range(20)]
    assert committer.holds == 0
    assert committer.batches == 20
    committer.close()
    engine.dispose()


def test_each_commit_reports_how_many_jobs_it_held(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    sizes: list[int] = []
    committer = Committer[str](engine, on_batch=sizes.append)

    async def main() -> list[str]:
        return await asyncio.gather(*(committer.run_async(_write(f"m{i}")) for i in range(5)))

    asyncio.run(main())
    committer.run(_write("alone"))
    assert sizes == [5, 1]
    assert sum(sizes) == len(_reasons(engine))
    committer.close()


def test_the_loop_never_waits_for_a_writer_lock_held_elsewhere(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'held.db'}")
    migrate(engine)
    committer = Committer[str](engine)
    lock = writer_lock(engine)  # SQLite's; PostgreSQL has none to wait for

    async def main() -> tuple[list[str], int]:
        ticks = 0
        lock.__enter__()  # another thread of this process is writing
        try:
            pending = asyncio.gather(*(committer.run_async(_write(f"h{i}")) for i in range(5)))
            for _ in range(20):  # the loop keeps turning meanwhile
                await asyncio.sleep(0.005)
                ticks += 1
            assert not pending.done()
        finally:
            lock.__exit__(None, None, None)
        return await pending, ticks

    results, ticks = asyncio.run(main())
    assert results == [f"h{i}" for i in range(5)]
    assert ticks == 20
    assert _reasons(engine) == [f"h{i}" for i in range(5)]
    committer.close()
    engine.dispose()


def test_a_database_locked_by_another_connection_does_not_block_the_loop(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    engine = make_engine(url)
    migrate(engine)
    committer = Committer[str](engine)
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a bulk load in another program, say

    async def main() -> tuple[str, int]:
        pending = asyncio.ensure_future(committer.run_async(_write("waited")))
        ticks = 0
        for _ in range(20):
            await asyncio.sleep(0.005)
            ticks += 1
        assert not pending.done()
        holder.execute("ROLLBACK")
        return await pending, ticks

    try:
        assert asyncio.run(main()) == ("waited", 20)
    finally:
        holder.close()
    assert _reasons(engine) == ["waited"]
    committer.close()
    engine.dispose()


def test_sqlite_is_checkpointed_in_the_background_after_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    migrate(engine)
    calls: list[Engine] = []
    real = committer_module.checkpoint

    def counted(target: Engine) -> None:
        calls.append(target)
        real(target)

    monkeypatch.setattr(committer_module, "checkpoint", counted)
    committer = Committer[str](engine)
    committer.run(_write("w"))
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert calls == [engine]  # once for the new commits, not again while idle
    time.sleep(1.2)
    assert len(calls) == 1
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        assert raw is not None
        busy, log_pages, done = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, log_pages) == (0, done)  # everything committed is in the file
    committer.close()
    engine.dispose()


@postgresql_only
def test_the_writers_own_session_settings_never_reach_the_pool(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    """The writer's connection commits statement by statement and plans for the
    batch read (``writer_connection``); once the committer lets it go, it is
    closed, so no pooled connection is left autocommit or without sequential scans."""
    backends: list[int] = []
    event.listen(engine, "checkout", lambda dbapi, *_: backends.append(dbapi.info.backend_pid))
    committer = Committer[str](engine)
    assert committer.run(_write("once")) == "once"
    (writer,) = backends
    with engine.connect() as admin:
        idle = admin.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"
                " AND state = 'idle'"  # not 'idle in transaction': it commits as it goes
            ),
            {"pid": writer},
        ).scalar()
        assert idle == 1
    committer.close()
    # Its backend is gone, not pooled. The server ends it once the client has closed
    # the connection, a moment later on a busy machine: wait for that, within reason.
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as admin:
            left = admin.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": writer}
            )
        if left == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert left == 0
    held = [engine.connect() for _ in range(engine.pool.size())]  # type: ignore[attr-defined]
    try:
        for connection in held:
            assert connection.scalar(text("SHOW enable_seqscan")) == "on"
            assert connection.scalar(text("SHOW plan_cache_mode")) == "auto"
    finally:
        for connection in held:
            connection.close()


def _held_together(committer: Committer[str], names: list[str], clients: int) -> list[str]:
    """``names`` as jobs in one turn of a loop, ``clients`` connected; a hold left to run
    its course fails the test."""
    load = Load(clients=clients)

    async def main() -> list[str]:
        jobs = asyncio.gather(*(committer.run_async(_write(name), load) for name in names))
        return list(await asyncio.wait_for(jobs, timeout=20))  # the hold is 60 s

    return asyncio.run(main())


def test_a_hold_ends_once_every_connected_client_is_in_the_batch(tmp_path: Path) -> None:
    """A closed loop: no client can send again before the commit answers it, so a
    hold would only idle; the batch commits as soon as the last client's job joins."""
    committer, engine = _sqlite_committer(tmp_path, hold=60.0)
    assert _held_together(committer, ["c0", "c1", "c2"], clients=3) == ["c0", "c1", "c2"]
    assert (committer.holds, committer.holds_ended_early, committer.batches) == (1, 1, 1)
    assert _reasons(engine) == ["c0", "c1", "c2"]
    committer.close()
    engine.dispose()


def test_a_hold_goes_on_while_a_client_could_still_send(tmp_path: Path) -> None:
    """One connected client has nothing in the batch: the hold runs its course."""
    committer, engine = _sqlite_committer(tmp_path, hold=0.15)  # above the first gap's 0.1 s
    assert _held_together(committer, ["d0", "d1", "d2"], clients=4) == ["d0", "d1", "d2"]
    assert (committer.holds, committer.holds_ended_early, committer.batches) == (1, 0, 1)
    committer.close()
    engine.dispose()


def test_a_hold_waits_for_requests_on_their_way_before_it_ends(tmp_path: Path) -> None:
    """Two clients, one request being read: the batch of the other waits for it, and
    commits with it as soon as it joins."""
    committer, engine = _sqlite_committer(tmp_path, hold=60.0)

    async def main() -> list[str]:
        on_the_way = committer.flush.arrived()
        first = asyncio.ensure_future(committer.run_async(_write("e0"), Load(clients=2)))
        await asyncio.sleep(0.01)  # turns go by: the batch is held for the arriving one
        assert not first.done()
        second = committer.run_async(_write("e1"), Load(clients=2, arrival=on_the_way))
        return list(await asyncio.wait_for(asyncio.gather(first, second), timeout=20))

    assert asyncio.run(main()) == ["e0", "e1"]
    assert (committer.holds, committer.holds_ended_early, committer.batches) == (1, 1, 1)
    committer.close()
    engine.dispose()


def test_alone_with_its_only_client_a_batch_is_not_held(tmp_path: Path) -> None:
    committer, engine = _sqlite_committer(tmp_path, hold=60.0)
    assert _held_together(committer, ["f0"], clients=1) == ["f0"]
    assert (committer.holds, committer.batches) == (0, 1)
    committer.close()
    engine.dispose()
