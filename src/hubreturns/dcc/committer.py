"""Group commit: many requests' writes in one transaction, one durable flush.

An acknowledged return must survive a crash, so nothing is answered before its
transaction has committed, and a commit costs a flush to disk (SQLite with
``synchronous=FULL``, PostgreSQL's WAL). One commit per request caps the
service at the disk's flush rate and makes every request wait for its own.

Three parts: ``batches.BatchWriter`` runs N jobs in one transaction and
settles them; ``flushing.FlushPolicy`` decides how long a batch waits for
company; and the ``Committer`` here runs batches, with one runner per engine
(``_SQLiteRunner``, ``_PostgresRunner``). Jobs queued while a batch commits
form the next one, run in order: each job sees the writes of the jobs before
it, the batch commits once, and only then is any of them answered. What the
HTTP edge knows of its load comes in explicitly with each job (``Load``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine

from hubreturns.dcc.batches import (
    BatchWriter,
    Contended,
    FunctionJob,
    Item,
    Job,
    StaleConnection,
    fail,
)
from hubreturns.dcc.flushing import DEFAULT_HOLD, FlushPolicy, Load
from hubreturns.dcc.store.db import (
    SQLiteWriterLock,
    backend_for,
    checkpoint,
    writer_connection,
    writer_lock,
)

__all__ = ["Committer", "Contended", "FunctionJob", "Job", "Load"]

log = logging.getLogger("hubreturns.dcc.committer")

#: What the committer's jobs answer (one type per committer: the request path's outcomes).
R = TypeVar("R")

#: SQLite, on the loop: while the writer lock is busy (a sibling worker is
#: committing), the batch is tried again this often, for at most this long before
#: it goes to the writer thread (another program holding the database, say).
_LOOP_RETRY_EVERY = 0.0005
_LOOP_RETRY_FOR = 0.050

#: How long the writer thread holds a batch open for requests that had arrived when
#: it took the batch but not yet brought their job (``FlushPolicy.arriving``): a
#: bound on the latency it adds.
_GATHER_WAIT = 0.010


class Committer(Generic[R]):
    """One writer thread per process, and the runner of the engine's batches.

    ``run``/``submit`` queue a job for the writer thread; ``run_async`` is the
    event loop's way in (see ``_SQLiteRunner`` and ``_PostgresRunner``). The
    counters (``batches``, ``jobs``, ``holds``…) are for metrics and tests.
    Every job answers an ``R`` (a batch mixes jobs, so they share one type).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 256,
        hold: float | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.writer = BatchWriter(on_batch)
        self.flush = FlushPolicy(DEFAULT_HOLD if hold is None else hold)
        self._runner: _Runner[R] = (
            _SQLiteRunner(self) if backend_for(engine).single_writer else _PostgresRunner(self)
        )
        self._queue: deque[Item[R]] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def hold(self) -> float:
        """Seconds a batch on the loop may wait for more jobs (``FlushPolicy``)."""
        return self.flush.hold

    @property
    def batches(self) -> int:
        return self.writer.batches

    @property
    def jobs(self) -> int:
        return self.writer.jobs

    @property
    def holds(self) -> int:
        return self.flush.holds

    @property
    def holds_ended_early(self) -> int:
        return self.flush.holds_ended_early

    # -- callers -----------------------------------------------------------------------

    def submit(self, job: Job[R]) -> Future[R]:
        """Queue ``job``; its future resolves once its transaction has committed."""
        future: Future[R] = Future()
        self.enqueue([Item(job, future)])
        return future

    def run(self, job: Job[R]) -> R:
        """Submit ``job`` and wait for it (for synchronous callers)."""
        return self.submit(job).result()

    async def run_async(self, job: Job[R], load: Load | None = None) -> R:
        """Run ``job`` for a coroutine; its transaction has committed when this returns.

        ``load`` is what the HTTP edge knows of the requests that may join the
        batch (``flushing.Load``); without it a batch is held only by time.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self.flush.job(loop.time(), load)
        self._runner.add(job, future, loop)
        return await future

    def close(self) -> None:
        """Finish the queued jobs and stop the threads (a later ``submit`` starts them again)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._runner.close()
        with self._ready:
            self._closed = False
            self._thread = None

    # -- the writer thread -------------------------------------------------------------

    def enqueue(self, items: Sequence[Item[R]]) -> None:
        """Hand ``items`` to the writer thread, with one wake-up for all of them."""
        self._runner.started()
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

    def _take(self) -> list[Item[R]] | None:
        with self._ready:
            while not self._queue:
                if self._closed:
                    return None
                self._ready.wait()
            mark = self.flush.mark()
            deadline = time.monotonic() + _GATHER_WAIT
            while (
                self._runner.expecting(mark)
                and len(self._queue) < self.max_batch
                and not self._closed
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            count = min(len(self._queue), self.max_batch)
            return [self._queue.popleft() for _ in range(count)]

    def _serve(self) -> None:
        try:
            while (batch := self._take()) is not None:
                try:
                    self._runner.commit(batch)
                except BaseException as exc:  # never leave a caller waiting
                    fail(batch, exc)
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    _hand_back(batch)
        finally:
            self._runner.stopped()


class _Runner(Generic[R]):
    """How one engine's batches are run: in the writer thread, and from the loop."""

    def __init__(self, committer: Committer[R]) -> None:
        self.committer = committer

    def add(self, job: Job[R], future: asyncio.Future[R], loop: asyncio.AbstractEventLoop) -> None:
        """From the loop: run ``job`` and settle ``future`` with its outcome."""
        raise NotImplementedError

    def commit(self, batch: list[Item[R]]) -> None:
        """In the writer thread: run ``batch`` and settle it."""
        raise NotImplementedError

    def expecting(self, mark: int) -> bool:
        """In the writer thread: whether jobs are on their way to the batch being taken
        (from requests that arrived before ``mark``, ``FlushPolicy.mark``)."""
        return False

    def started(self) -> None:
        """Jobs are being queued (background work may begin)."""

    def stopped(self) -> None:
        """The writer thread ends."""

    def close(self) -> None:
        """The committer closes: stop background work."""


class _PostgresRunner(_Runner[R]):
    """PostgreSQL: every batch in the writer thread, on a connection it keeps.

    The loop never waits on the network: the jobs queued in one turn of the
    loop go to the writer thread together, one wake-up for all of them, and
    the thread holds its next batch open (up to ``_GATHER_WAIT``) for the
    requests the edge had received when the batch was taken: under load a
    commit then serves every request in flight instead of the few that
    happened to be ready, and those received meanwhile go in the next one.

    Taking a connection from the pool for each batch cost the pool's
    pre-ping (a round trip) and the check-out and check-in themselves: about
    170 µs of CPU a batch, ours and PostgreSQL's together. A kept connection
    is not pinged, so one that died while idle (a terminated backend, a
    restarted server) fails the next batch's first statement, its read (or a
    ``SELECT 1`` in a batch with nothing to read). That is before the write,
    so nothing was written: the batch is run again, once, on a new connection
    from the pool, which pings it.
    """

    def __init__(self, committer: Committer[R]) -> None:
        super().__init__(committer)
        self._turn: list[Item[R]] = []
        self._held: Connection | None = None

    def add(self, job: Job[R], future: asyncio.Future[R], loop: asyncio.AbstractEventLoop) -> None:
        self._turn.append(Item(job, _LoopResult(future, loop)))
        if len(self._turn) == 1:
            loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        batch, self._turn = self._turn, []
        self.committer.enqueue(batch)

    def expecting(self, mark: int) -> bool:
        return bool(self._turn) or self.committer.flush.arriving(before=mark)

    def commit(self, batch: list[Item[R]]) -> None:
        engine = self.committer.engine
        held = self._held
        reused = held is not None and not held.invalidated
        if not reused:
            self.stopped()
            try:
                held = self._held = writer_connection(engine)
            except Exception as exc:  # no connection to be had
                fail(batch, exc)
                return
        assert held is not None
        try:
            self.committer.writer.settle(held, batch, stale_retry=reused, autocommit=True)
        except StaleConnection:
            log.info("the kept PostgreSQL connection had gone; batch run again on a new one")
            self.stopped()
            self.commit(batch)
            return
        if held.invalidated:
            self.stopped()

    def stopped(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close
                held.invalidate()  # closed, not pooled: its session is the writer's own
                held.close()


class _SQLiteRunner(_Runner[R]):
    """SQLite: the loop's batches run on the loop itself, at the end of a turn.

    Handing each request to the writer thread and back (wake-ups, GIL
    hand-offs between two busy threads) cost about 400 µs of CPU a request,
    several times SQLite's own work and its commit. The loop never blocks on
    the writer lock (a sibling worker's batch holds it) nor on another
    connection's hold on the database: the batch is tried again a little
    later, joined by the jobs that arrive meanwhile, and goes to the writer
    thread only if the database stays busy (``_LOOP_RETRY_FOR``). A batch may
    wait for company first, as the ``FlushPolicy`` says. A background thread
    checkpoints the WAL (``db.checkpoint``).
    """

    def __init__(self, committer: Committer[R]) -> None:
        super().__init__(committer)
        self._turn: list[Item[R]] = []
        self._waiting_since: float | None = None
        self._holding = False
        self._hold_timer: asyncio.TimerHandle | None = None
        self._checkpoints: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._lock = threading.Lock()

    def commit(self, batch: list[Item[R]]) -> None:
        engine = self.committer.engine
        try:
            with writer_lock(engine), engine.connect() as connection:
                self.committer.writer.settle(connection, batch)
        except Exception as exc:  # the connection itself could not be had
            fail(batch, exc)

    def add(self, job: Job[R], future: asyncio.Future[R], loop: asyncio.AbstractEventLoop) -> None:
        self.started()
        flush = self.committer.flush
        self._turn.append(Item(job, future))
        if len(self._turn) == 1:
            hold = flush.hold_for(1)
            if hold:
                self._holding = True
                self._hold_timer = loop.call_later(hold, self._end_of_turn)
            else:
                loop.call_soon(self._end_of_turn)
        elif self._hold_timer is not None and flush.ends_early(len(self._turn)):
            self._hold_timer.cancel()
            self._hold_timer = None
            loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        batch, self._turn = self._turn, []
        if self._holding:
            self._holding = False
            self.committer.flush.ended(len(batch))
        waiting_since, self._waiting_since = self._waiting_since, None
        size = self.committer.max_batch
        for start in range(0, len(batch), size):
            if self._on_loop(batch[start : start + size]):
                continue
            loop = asyncio.get_running_loop()
            now = loop.time()
            if waiting_since is None or now - waiting_since < _LOOP_RETRY_FOR:
                # Busy: the jobs wait on the loop, which goes on serving, and the
                # next try takes them with whatever arrives meanwhile.
                self._turn[:0] = batch[start:]
                self._waiting_since = waiting_since if waiting_since is not None else now
                loop.call_later(_LOOP_RETRY_EVERY, self._end_of_turn)
                return
            # Busy for long (another program holds the database): the writer
            # thread waits for it instead.
            self.committer.enqueue([_to_thread(item, loop) for item in batch[start:]])
            return

    def _on_loop(self, batch: list[Item[R]]) -> bool:
        """Run ``batch`` on the loop if the database can be had at once; False if busy."""
        engine = self.committer.engine
        lock = writer_lock(engine)
        if not (isinstance(lock, SQLiteWriterLock) and lock.acquire(timeout=0)):
            return False
        try:
            with engine.connect() as connection:
                return self.committer.writer.settle(connection, batch, at_once=True)
        except Exception as exc:  # the connection itself could not be had
            fail(batch, exc)
            return True
        finally:
            lock.release()

    # -- checkpoints ---------------------------------------------------------------------

    def started(self) -> None:
        if self._checkpoints is not None:
            return
        with self._lock:
            if self._checkpoints is None:
                self._checkpoints = threading.Thread(
                    target=self._checkpoint_loop, name="hubreturns-checkpoints", daemon=True
                )
                self._checkpoints.start()

    def _checkpoint_loop(self) -> None:
        """Every half second with new commits, a background checkpoint (``db.checkpoint``)."""
        seen = self.committer.jobs
        while not self._stop_checkpoints.wait(0.5):
            if self.committer.jobs == seen:
                continue
            seen = self.committer.jobs
            try:
                checkpoint(self.committer.engine)
            except Exception as exc:  # a later one will catch up; commits are unaffected
                log.warning("background checkpoint failed: %s", exc)

    def close(self) -> None:
        with self._lock:
            checkpoints, self._checkpoints = self._checkpoints, None
        if checkpoints is not None:
            self._stop_checkpoints.set()
            checkpoints.join()
            self._stop_checkpoints.clear()


class _LoopResult(Generic[R]):
    """An event loop's future as the writer thread sees it: the outcome is noted
    there and delivered on the loop by ``_hand_back``, one call per batch.

    Why: ``asyncio.wrap_future`` wakes the loop once per request; a batch
    needs one wake-up.
    """

    __slots__ = ("error", "future", "loop", "result", "settled")

    #: Set by ``set_result`` only (so no placeholder of another type is needed).
    result: R

    def __init__(self, future: asyncio.Future[R], loop: asyncio.AbstractEventLoop) -> None:
        self.future = future
        self.loop = loop
        self.error: BaseException | None = None
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, result: R, /) -> None:
        self.result, self.settled = result, True

    def set_exception(self, exception: BaseException, /) -> None:
        self.error, self.settled = exception, True


def _to_thread(item: Item[R], loop: asyncio.AbstractEventLoop) -> Item[R]:
    """A loop's job handed to the writer thread: its outcome comes back through the loop."""
    future = item.future
    assert isinstance(future, asyncio.Future)  # the loop's runner queued it so
    return Item(item.job, _LoopResult(future, loop))


def _hand_back(batch: list[Item[R]]) -> None:
    """Deliver the outcomes of ``batch`` that belong to event loops, one call per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_LoopResult[R]]] = {}
    for item in batch:
        if isinstance(item.future, _LoopResult):
            by_loop.setdefault(item.future.loop, []).append(item.future)
    for loop, results in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_deliver, results)


def _deliver(results: list[_LoopResult[R]]) -> None:
    for result in results:
        if result.future.done():  # cancelled while it waited
            continue
        if not result.settled:
            result.future.set_exception(RuntimeError("the committer stopped before this job"))
        elif result.error is not None:
            result.future.set_exception(result.error)
        else:
            result.future.set_result(result.result)
