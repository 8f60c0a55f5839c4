"""Group commit: many requests' writes in one transaction, one durable flush.

An acknowledged return must survive a crash, so nothing is answered before its
transaction has committed, and a commit costs a flush to disk (SQLite with
``synchronous=FULL``, PostgreSQL's WAL). One commit per request caps the
service at the disk's flush rate and makes every request wait for its own.
The ``Committer`` is one thread per process that takes every job queued while
the previous batch was committing and runs them in order in one transaction:
each job sees the writes of the jobs before it, the batch commits once, and
only then is any of them answered. Under light load a batch holds one job and
nothing waits; under heavy load batches grow and the flush is shared; under a
steady moderate load a batch on SQLite waits a few milliseconds for company
(``Committer._hold_for``), since a commit of one job costs about what one of
ten does, but no longer than until every client connected to the worker is
in it (``Committer._all_in``). The batch's ledger is a deferred one
(``Ledger``): the jobs' facts are read in one statement and their writes
sent in bulk, so a batch costs a few round trips to the database however
many requests it holds: on PostgreSQL two, on a connection of the writer's
own that commits each statement as it runs (``db.writer_connection``), the
writes being one statement.

A job's conditional writes can still lose a race against another process
(PostgreSQL, several workers): the job says so by raising ``Contended``, or the
batch's bulk write finds it (``WriteConflict``). The batch is rolled back and
each of its jobs is run again alone, where a lost race is recorded as the
refusal it is. Any other failure of one job is handled the
same way, so one bad job cannot sink its neighbours; a database that is
unavailable fails the whole batch at once (each caller answers E100) instead of
being retried job by job. On PostgreSQL the writer thread keeps one connection
between batches; one found dead before its batch commits is replaced and the
batch run again (``_commit_held``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.store.db import (
    SQLiteWriterLock,
    backend_for,
    checkpoint,
    writer_connection,
    writer_lock,
)
from hubreturns.store.repository import Ledger

__all__ = ["CONNECTIONS_STATE_KEY", "Arrival", "Committer", "Contended", "FunctionJob", "Job"]

log = logging.getLogger("hubreturns.committer")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

#: SQLite, on the loop: while the writer lock is busy (a sibling worker is
#: committing), the batch is tried again this often, for at most this long before
#: it goes to the writer thread (another program holding the database, say).
_LOOP_RETRY_EVERY = 0.0005
_LOOP_RETRY_FOR = 0.050

#: SQLite, on the loop: how long a batch waits for more jobs once its first has
#: come, when jobs come often enough and waiting has been gathering them
#: (``Committer._hold_for``). A transaction costs about the same for one job
#: as for ten (its commit writes the touched pages and flushes them), so at a
#: moderate load a batch of one or two costs twice the CPU a request of a
#: full one does: the hold trades a few milliseconds of latency for that.
_HOLD = 0.003
#: Weight of the newest value in the moving averages of the hold's decision.
_AVERAGE_WEIGHT = 0.1
#: The longest time between jobs the average takes in (after a quiet spell, the load
#: that returns is recognised within a few dozen jobs).
_GAP_CAP = 0.1
#: Holding pays when a held batch gathers at least this many more jobs, on average.
_HOLD_PAYS = 0.5
#: While holding does not pay, one batch in this many is held anyway, to notice when it
#: would; after each probe that gathered nothing, one in twice as many, up to the most.
_PROBE_EVERY = 16
_PROBE_EVERY_MOST = 512

#: Where the HTTP server puts, in the ASGI lifespan state, the set of its worker's open
#: connections (``serving``): a hold ends once each has its request in the batch.
CONNECTIONS_STATE_KEY = "hubreturns.connections"

#: How long the writer thread holds a batch open for requests that have arrived but
#: not yet brought their job (``Committer.arrival``): a bound on the latency it adds.
_GATHER_WAIT = 0.010

#: Errors that mean the database, not the job, is at fault: the batch fails as a whole.
_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError)


class Contended(Exception):
    """A conditional write lost a race; ``detail`` is what the job needs to record it."""

    def __init__(self, detail: object) -> None:
        super().__init__(detail)
        self.detail = detail


class Job(Protocol[T_co]):
    """Work for one request, run inside a transaction the committer owns.

    A job may also have a ``reads`` attribute, the ``FactsKey`` of the facts
    it will ask the ledger for: the committer reads a batch's facts in one
    statement (``Ledger.prefetch``) before running its jobs.
    """

    def run(self, ledger: Ledger) -> T_co:
        """Read and write through ``ledger``; raise ``Contended`` on a lost race."""
        ...

    def after_race(self, ledger: Ledger, race: Contended) -> T_co:
        """Record the lost race, in a fresh transaction of this job's own."""
        ...


@dataclass(slots=True)
class _Item(Generic[T]):
    job: Job[T]
    future: Future[T] | asyncio.Future[T] | _LoopResult


class Committer:
    """One writer thread per process; see the module docstring.

    The engine is read from ``sessions`` for every batch, so a sessionmaker
    re-bound after construction (tests do this) is honoured.
    """

    def __init__(
        self, sessions: sessionmaker[Session], *, max_batch: int = 256, hold: float = _HOLD
    ) -> None:
        self._sessions = sessions
        self._max_batch = max_batch
        self._hold = hold
        #: The hold's evidence (on the loop): moving averages of the time between jobs
        #: and of the jobs a held batch gathered besides its first, batches since a probe,
        #: and whether the batch now forming is held.
        self._gap = _GAP_CAP
        self._last_job = 0.0
        self._gain = _HOLD_PAYS
        self._since_probe = 0
        self._probe_every = _PROBE_EVERY
        self._holding = False
        self._hold_timer: asyncio.TimerHandle | None = None
        #: How many clients are connected to this worker (None: not known; ``_all_in``).
        self.clients: Callable[[], int] | None = None
        self._queue: deque[_Item[object]] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._checkpoints: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        #: Jobs queued on the event loop during its current turn (``run_async``): run on
        #: the loop (SQLite), or handed to the writer thread together (PostgreSQL).
        self._turn: list[_Item[object]] = []
        #: Loop time since when the jobs in ``_turn`` have found the database busy.
        self._turn_waiting_since: float | None = None
        self._turn_thread: list[_Item[object]] = []
        #: Requests that have arrived and will bring a job (``arrival``); changed on the
        #: event loop only, read by the writer thread.
        self._arriving = 0
        #: PostgreSQL: the writer thread's connection, kept between batches (``_commit_held``).
        self._held: Connection | None = None
        #: Batches committed and jobs in them, since start (for metrics and benchmarks).
        self.batches = 0
        self.jobs = 0
        #: Batches that waited for company on the loop (``_hold_for``), and those whose
        #: wait ended early because every client was in (``_all_in``).
        self.holds = 0
        self.holds_ended_early = 0
        #: Called with the number of jobs of each committed transaction (metrics).
        self.on_batch: Callable[[int], None] | None = None

    @property
    def hold(self) -> float:
        """Seconds a batch on the loop may wait for more jobs (SQLite; ``_hold_for``)."""
        return self._hold

    # -- callers -----------------------------------------------------------------------

    def arrival(self) -> Arrival:
        """Note, on the event loop, a request that will bring a job for ``run_async``.

        While such requests are on their way, the writer thread holds its next
        batch open for them (up to ``_GATHER_WAIT``): under load a commit then
        serves every request in flight instead of the few that happened to be
        ready, and the per-commit cost of the database is shared more widely.
        With nothing arriving, a batch goes at once. Close it once the job is
        submitted or will not be (``run_async`` closes the one it is given).
        """
        self._arriving += 1
        return Arrival(self)

    def submit(self, job: Job[T]) -> Future[T]:
        """Queue ``job``; its future resolves once its transaction has committed."""
        future: Future[T] = Future()
        self._enqueue([_Item(job, future)])  # type: ignore[arg-type]
        return future

    def _enqueue(self, items: list[_Item[object]]) -> None:
        """Hand ``items`` to the writer thread, with one wake-up for all of them."""
        self._start_checkpoints()
        with self._ready:
            if self._closed:
                raise RuntimeError("the committer is closing")
            self._queue.extend(items)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="hubreturns-committer", daemon=True
                )
                self._thread.start()
            self._ready.notify()

    def run(self, job: Job[T]) -> T:
        """Submit ``job`` and wait for it (for synchronous callers)."""
        return self.submit(job).result()

    def close(self) -> None:
        """Finish the queued jobs and stop the thread (a later ``submit`` starts it again)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        checkpoints = self._checkpoints
        if checkpoints is not None:
            self._stop_checkpoints.set()
            checkpoints.join()
            self._stop_checkpoints.clear()
        with self._ready:
            self._closed = False
            self._thread = None
            self._checkpoints = None

    # -- SQLite checkpoints --------------------------------------------------------------

    def _start_checkpoints(self) -> None:
        if self._checkpoints is not None or not backend_for(self._engine()).single_writer:
            return
        with self._ready:
            if self._checkpoints is None and not self._closed:
                self._checkpoints = threading.Thread(
                    target=self._checkpoint_loop, name="hubreturns-checkpoints", daemon=True
                )
                self._checkpoints.start()

    def _checkpoint_loop(self) -> None:
        """Every half second with new commits, a background checkpoint (``db.checkpoint``)."""
        seen = self.jobs
        while not self._stop_checkpoints.wait(0.5):
            if self.jobs == seen:
                continue
            seen = self.jobs
            try:
                checkpoint(self._engine())
            except Exception as exc:  # a later one will catch up; commits are unaffected
                log.warning("background checkpoint failed: %s", exc)

    # -- the writer thread -------------------------------------------------------------

    def _take(self) -> list[_Item[object]] | None:
        with self._ready:
            while not self._queue:
                if self._closed:
                    return None
                self._ready.wait()
            deadline = time.monotonic() + _GATHER_WAIT
            while (
                self._arriving + len(self._turn_thread) > 0
                and len(self._queue) < self._max_batch
                and not self._closed
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            count = min(len(self._queue), self._max_batch)
            return [self._queue.popleft() for _ in range(count)]

    def _serve(self) -> None:
        try:
            while (batch := self._take()) is not None:
                try:
                    self._commit(batch)
                except BaseException as exc:  # never leave a caller waiting
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    _hand_back(batch)
        finally:
            self._release_held()

    def _engine(self) -> Engine:
        engine = self._sessions.kw.get("bind")
        assert isinstance(engine, Engine), "the sessionmaker has no engine bound"
        return engine

    def _commit(self, batch: list[_Item[object]]) -> None:
        engine = self._engine()
        if not backend_for(engine).single_writer:
            self._commit_held(engine, batch)
            return
        try:
            with writer_lock(engine), engine.connect() as connection:
                self._settle(connection, batch)
        except Exception as exc:  # the connection itself could not be had
            _fail(batch, exc)

    def _commit_held(self, engine: Engine, batch: list[_Item[object]]) -> None:
        """PostgreSQL: run ``batch`` on the connection the writer thread keeps.

        Taking a connection from the pool for each batch cost the pool's
        pre-ping (a round trip) and the check-out and check-in themselves:
        about 170 µs of CPU a batch, ours and PostgreSQL's together. A kept
        connection is not pinged, so one that died while idle (a terminated
        backend, a restarted server) fails the next batch's first statement,
        its read (or a ``SELECT 1`` in a batch with nothing to read). That is
        before the write, so nothing was written: the batch is run again,
        once, on a new connection from the pool, which pings it.
        """
        held = self._held
        reused = held is not None and held.engine is engine and not held.invalidated
        if not reused:
            self._release_held()
            try:
                held = self._held = writer_connection(engine)
            except Exception as exc:  # no connection to be had
                _fail(batch, exc)
                return
        assert held is not None
        try:
            self._settle(held, batch, stale_retry=reused, autocommit=True)
        except _StaleConnection:
            log.info("the kept PostgreSQL connection had gone; batch run again on a new one")
            self._release_held()
            self._commit_held(engine, batch)
            return
        if held.invalidated:
            self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close
                held.invalidate()  # closed, not pooled: its session is the writer's own
                held.close()

    def _settle(
        self,
        connection: Connection,
        batch: list[_Item[object]],
        *,
        at_once: bool = False,
        stale_retry: bool = False,
        autocommit: bool = False,
    ) -> bool:
        """Run ``batch`` on ``connection`` (writer lock held) and settle every future.

        With ``at_once``, a database another connection has locked is not
        waited for: nothing is done or settled, and the result is False. With
        ``stale_retry``, a connection found dead before the commit raises
        ``_StaleConnection``, nothing settled, so the caller can run the batch again.
        With ``autocommit`` (PostgreSQL, ``db.writer_connection``), the ledger's
        write statement is the commit, and a batch that must be run again job
        by job gets a transactional connection from the pool for it.
        """
        try:
            transaction = _begin(connection, at_once=at_once)
        except _UNAVAILABLE as exc:
            for item in batch:
                item.future.set_exception(exc)
            return True
        if transaction is None:
            return False
        committing = False
        try:
            try:
                with transaction:
                    ledger = Ledger(connection, deferred=True)
                    keys = [
                        key
                        for item in batch
                        if (key := getattr(item.job, "reads", None)) is not None
                    ]
                    ledger.prefetch(keys)
                    if autocommit and stale_retry and not keys:
                        # A kept connection says it is alive before a write that commits:
                        # the read does that for a batch with facts to read.
                        connection.exec_driver_sql("SELECT 1")
                    results = [item.job.run(ledger) for item in batch]
                    # Once the writes are sent, they may or may not land: with
                    # autocommit the flush commits, otherwise the block's end does.
                    committing = autocommit
                    ledger.flush()
                    committing = True
            except _UNAVAILABLE as exc:
                if stale_retry and not committing and getattr(exc, "connection_invalidated", False):
                    raise _StaleConnection from exc
                if not _rolled_back_by_the_server(exc):
                    for item in batch:
                        item.future.set_exception(exc)
                    return True
                raise
        except _StaleConnection:
            raise
        except Exception as exc:  # Contended, WriteConflict, a deadlock, or one job's own failure
            log.debug("batch of %d rolled back (%s); running its jobs one by one", len(batch), exc)
            if not autocommit:
                for item in batch:
                    self._alone(connection, item)
                return True
            try:
                alone = connection.engine.connect()
            except Exception as error:  # no connection to be had
                _fail(batch, error)
                return True
            with alone:
                for item in batch:
                    self._alone(alone, item)
            return True
        self.batches += 1
        self.jobs += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for item, result in zip(batch, results, strict=True):
            item.future.set_result(result)
        return True

    def _alone(self, connection: Connection, item: _Item[object]) -> None:
        try:
            try:
                with connection.begin():
                    result = item.job.run(Ledger(connection))
            except Contended as race:
                with connection.begin():
                    result = item.job.after_race(Ledger(connection), race)
        except Exception as exc:
            item.future.set_exception(exc)
            return
        self.batches += 1
        self.jobs += 1
        if self.on_batch is not None:
            self.on_batch(1)
        item.future.set_result(result)

    # -- on the event loop (SQLite) ------------------------------------------------------

    async def run_async(self, job: Job[T], arrival: Arrival | None = None) -> T:
        """Run ``job`` for a coroutine; its transaction has committed when this returns.

        On SQLite the jobs queued during one turn of the event loop are run as
        one batch on the loop itself, at the end of that turn. Why: handing each
        request to the writer thread and back (wake-ups, GIL hand-offs between
        two busy threads) cost about 400 µs of CPU a request, several times
        SQLite's own work and its commit. The loop never blocks on the writer
        lock (a sibling worker's batch holds it) nor on another connection's
        hold on the database: the batch is tried again a little later, joined
        by the jobs that arrive meanwhile, and goes to the writer thread only if
        the database stays busy (``_LOOP_RETRY_FOR``). (Polling the lock on the
        loop for up to 5 ms, as before, cost CPU and stalled the loop: with 2
        workers, 2,160 → 2,430-2,800 accepted/s without it.)
        PostgreSQL always goes to the thread, so the loop never waits on the
        network.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not backend_for(self._engine()).single_writer:
            self._turn_thread.append(_Item(job, _LoopResult(future, loop)))
            if arrival is not None:
                arrival.close()
            if len(self._turn_thread) == 1:
                loop.call_soon(self._end_of_turn_thread)
            return await future
        if arrival is not None:
            arrival.close()
        self._start_checkpoints()
        now = loop.time()
        self._gap += _AVERAGE_WEIGHT * (min(now - self._last_job, _GAP_CAP) - self._gap)
        self._last_job = now
        self._turn.append(_Item(job, future))  # type: ignore[arg-type]
        if len(self._turn) == 1:
            hold = 0.0 if self._all_in() else self._hold_for()
            if hold:
                self._holding = True
                self.holds += 1
                self._hold_timer = loop.call_later(hold, self._end_of_turn)
            else:
                loop.call_soon(self._end_of_turn)
        elif self._hold_timer is not None and self._all_in():
            self._hold_timer.cancel()
            self._hold_timer = None
            self.holds_ended_early += 1
            loop.call_soon(self._end_of_turn)
        return await future

    def _all_in(self) -> bool:
        """Whether no job can join the batch forming but those already on their way.

        True when every client connected to this worker has a request in the
        batch and nothing is arriving: with HTTP/1.1 a connection carries one
        request at a time, so a client whose request waits for this commit
        cannot send another, and a hold would only idle (a closed loop of 16
        connections a worker left a quarter of the machine idle; docs/performance-history.md).
        Unknown client counts (no ``clients``) never end a hold.
        """
        if self.clients is None or self._arriving:
            return False
        return len(self._turn) >= self.clients()

    def _hold_for(self) -> float:
        """How long the batch just begun waits for more jobs before it commits (SQLite).

        It waits ``hold`` when jobs have been coming less than ``hold`` apart
        and waiting has paid: the batches held lately gathered more jobs. A
        client that sends one request at a time is never helped by a wait
        (nothing can come until it is answered): after a wait that gathered
        nothing, batches go at once, but for an occasional probe (one in
        ``_PROBE_EVERY``, fewer while probes gather nothing: a sequential
        client waits once in 512 requests).
        Measured (SQLite, 2 workers, 1,000 req/s, 14 interleaved pairs):
        batches of 1.4-2.4 jobs became 2.9-4.3, and the service's CPU a
        request fell by 11-26 % in 11 pairs (docs/performance-history.md, earlier
        rounds). A hold also ends once every connected client is in the batch
        (``_all_in``): without that, a closed loop waited the whole hold for
        nothing (docs/performance-history.md, item 2).
        """
        if self._hold <= 0 or self._gap >= self._hold:
            return 0.0
        if self._gain >= _HOLD_PAYS:
            return self._hold
        self._since_probe += 1
        if self._since_probe < self._probe_every:
            return 0.0
        self._since_probe = 0
        return self._hold

    def _end_of_turn_thread(self) -> None:
        batch, self._turn_thread = self._turn_thread, []
        self._enqueue(batch)

    def _end_of_turn(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        batch, self._turn = self._turn, []
        if self._holding:
            self._holding = False
            self._gain += _AVERAGE_WEIGHT * (len(batch) - 1 - self._gain)
            if len(batch) > 1:
                self._probe_every = _PROBE_EVERY
            else:
                self._probe_every = min(2 * self._probe_every, _PROBE_EVERY_MOST)
        waiting_since, self._turn_waiting_since = self._turn_waiting_since, None
        for start in range(0, len(batch), self._max_batch):
            chunk = batch[start : start + self._max_batch]
            if self._on_loop(chunk):
                continue
            loop = asyncio.get_running_loop()
            now = loop.time()
            if waiting_since is None or now - waiting_since < _LOOP_RETRY_FOR:
                # Busy: the jobs wait on the loop, which goes on serving, and the
                # next try takes them with whatever arrives meanwhile.
                self._turn[:0] = batch[start:]
                self._turn_waiting_since = waiting_since if waiting_since is not None else now
                loop.call_later(_LOOP_RETRY_EVERY, self._end_of_turn)
                return
            # Busy for long (another program holds the database): the writer
            # thread waits for it instead.
            self._enqueue(
                [
                    _Item(item.job, _LoopResult(item.future, loop))  # type: ignore[arg-type]
                    for item in batch[start:]
                ]
            )
            return

    def _on_loop(self, batch: list[_Item[object]]) -> bool:
        """Run ``batch`` on the loop if the database can be had at once; False if busy."""
        engine = self._engine()
        lock = writer_lock(engine)
        if not (isinstance(lock, SQLiteWriterLock) and lock.acquire(timeout=0)):
            return False
        try:
            with engine.connect() as connection:
                return self._settle(connection, batch, at_once=True)
        except Exception as exc:  # the connection itself could not be had
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return True
        finally:
            lock.release()


class Arrival:
    """A request on its way to the committer (``Committer.arrival``); ``close`` is idempotent."""

    __slots__ = ("_committer",)

    def __init__(self, committer: Committer) -> None:
        self._committer: Committer | None = committer

    def close(self) -> None:
        if self._committer is not None:
            self._committer._arriving -= 1
            self._committer = None


class _LoopResult:
    """An event loop's future as the writer thread sees it: the outcome is noted
    there and delivered on the loop by ``_hand_back``, one call per batch.

    Why: ``asyncio.wrap_future`` wakes the loop once per request; a batch
    needs one wake-up.
    """

    __slots__ = ("failed", "future", "loop", "outcome", "settled")

    def __init__(self, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.future = future
        self.loop = loop
        self.outcome: Any = None
        self.failed = False
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, value: object) -> None:
        self.outcome, self.failed, self.settled = value, False, True

    def set_exception(self, error: BaseException) -> None:
        self.outcome, self.failed, self.settled = error, True, True


def _hand_back(batch: list[_Item[object]]) -> None:
    """Deliver the outcomes of ``batch`` that belong to event loops, one call per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_LoopResult]] = {}
    for item in batch:
        if isinstance(item.future, _LoopResult):
            by_loop.setdefault(item.future.loop, []).append(item.future)
    for loop, results in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_deliver, results)


def _deliver(results: list[_LoopResult]) -> None:
    for result in results:
        if result.future.done():  # cancelled while it waited
            continue
        if not result.settled:
            result.future.set_exception(RuntimeError("the committer stopped before this job"))
        elif result.failed:
            result.future.set_exception(result.outcome)
        else:
            result.future.set_result(result.outcome)


class _StaleConnection(Exception):
    """The kept connection was found dead before its batch committed (``_commit_held``)."""


def _fail(batch: list[_Item[object]], error: Exception) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(error)


def _rolled_back_by_the_server(error: Exception) -> bool:
    """A deadlock or serialization failure (SQLSTATE class 40): the batch lost to another
    transaction and can be run again, unlike an outage."""
    return str(getattr(getattr(error, "orig", None), "sqlstate", "") or "").startswith("40")


def _begin(connection: Connection, *, at_once: bool) -> RootTransaction | None:
    """Begin the write transaction; with ``at_once`` on SQLite, None if the database is busy."""
    if not at_once:
        return connection.begin()
    raw: Any = connection.connection.driver_connection
    (previous,) = raw.execute("PRAGMA busy_timeout").fetchone()
    raw.execute("PRAGMA busy_timeout = 0")
    try:
        return connection.begin()
    except OperationalError as exc:
        if getattr(exc.orig, "sqlite_errorname", None) in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            return None
        raise
    finally:
        raw.execute(f"PRAGMA busy_timeout = {int(previous)}")


@dataclass(frozen=True, slots=True)
class FunctionJob(Generic[T]):
    """A job that cannot race (a refusal's audit row, say), from one function."""

    function: Callable[[Ledger], T]

    def run(self, ledger: Ledger) -> T:
        return self.function(ledger)

    def after_race(self, ledger: Ledger, race: Contended) -> T:
        raise AssertionError("a plain write does not race") from race
