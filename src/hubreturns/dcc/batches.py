"""Run a batch of jobs in one transaction and settle each job's future: no timing here.

A job's conditional writes can lose a race against another process
(PostgreSQL, several workers): the job says so by raising ``Contended``, or the
batch's bulk write finds it (``WriteConflict``). The batch is rolled back and
each of its jobs is run again alone, where a lost race is recorded as the
refusal it is. Any other failure of one job is handled the same way, so one
bad job cannot sink its neighbours; a database that is unavailable fails the
whole batch at once (each caller answers E100) instead of being retried job
by job. When and where a batch runs is the ``committer``'s business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, RootTransaction
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from hubreturns.dcc.store.repository import FactsKey, Ledger

__all__ = [
    "BatchWriter",
    "Contended",
    "FunctionJob",
    "Item",
    "Job",
    "Settleable",
    "StaleConnection",
    "fail",
]

log = logging.getLogger("hubreturns.dcc.committer")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)
D_co = TypeVar("D_co", covariant=True)

#: Errors that mean the database, not the job, is at fault: the batch fails as a whole.
_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError)


class Contended(Exception, Generic[D_co]):
    """A conditional write lost a race; ``detail`` is what the job that raised it needs
    to record the loss (its ``after_race`` is handed this exception back)."""

    def __init__(self, detail: D_co) -> None:
        super().__init__(detail)
        self.detail = detail


class Job(Protocol[T_co]):
    """Work for one request, run inside a transaction the committer owns; ``T_co`` is
    what it answers its caller with."""

    @property
    def reads(self) -> FactsKey | None:
        """The facts the job will ask the ledger for, if any: a batch's facts are read
        in one statement (``Ledger.prefetch``) before its jobs run."""
        ...

    def run(self, ledger: Ledger) -> T_co:
        """Read and write through ``ledger``; raise ``Contended`` on a lost race."""
        ...

    def after_race(self, ledger: Ledger, race: Contended[Any]) -> T_co:
        """Record the lost race, in a fresh transaction of this job's own.

        ``race`` is the one this job's ``run`` raised, so a job names its own detail
        type (``Contended[Recorded]``); ``Any`` here because an ``except`` clause
        cannot tell one job's races from another's.
        """
        ...


@dataclass(frozen=True, slots=True)
class FunctionJob(Generic[T]):
    """A job that cannot race (a refusal's audit row, say), from one function."""

    function: Callable[[Ledger], T]

    @property
    def reads(self) -> None:
        return None

    def run(self, ledger: Ledger) -> T:
        return self.function(ledger)

    def after_race(self, ledger: Ledger, race: Contended[object]) -> T:
        raise AssertionError("a plain write does not race") from race


class Settleable(Protocol[T_contra]):
    """Where a job's outcome goes: a thread's or a loop's future, or a stand-in for one."""

    def done(self) -> bool: ...

    def set_result(self, result: T_contra, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass(slots=True)
class Item(Generic[T]):
    """A job and where its outcome goes."""

    job: Job[T]
    future: Settleable[T]

    def answer(self, result: T) -> None:
        """Settle with ``result``, unless already settled (a loop's future may have
        been cancelled while the job waited: its neighbours must still be answered)."""
        if not self.future.done():
            self.future.set_result(result)


class StaleConnection(Exception):
    """A kept connection was found dead before its batch committed: run the batch again."""


def fail(batch: Sequence[Item[T]], error: BaseException) -> None:
    """Settle every unsettled job of ``batch`` with ``error``."""
    for item in batch:
        if not item.future.done():
            item.future.set_exception(error)


class BatchWriter:
    """N jobs in one transaction on a given connection, then their futures settled."""

    def __init__(self, on_batch: Callable[[int], None] | None = None) -> None:
        #: Called with the number of jobs of each committed transaction (metrics).
        self._on_batch = on_batch
        #: Transactions committed and jobs in them, since start (metrics and benchmarks).
        self.batches = 0
        self.jobs = 0

    def settle(
        self,
        connection: Connection,
        batch: Sequence[Item[T]],
        *,
        at_once: bool = False,
        stale_retry: bool = False,
        autocommit: bool = False,
    ) -> bool:
        """Run ``batch`` on ``connection`` (writer lock held) and settle every future.

        With ``at_once``, a database another connection has locked is not
        waited for: nothing is done or settled, and the result is False. With
        ``stale_retry``, a connection found dead before the commit raises
        ``StaleConnection``, nothing settled, so the caller can run the batch again.
        With ``autocommit`` (PostgreSQL, ``db.writer_connection``), the ledger's
        write statement is the commit, and a batch that must be run again job
        by job gets a transactional connection from the pool for it.
        """
        try:
            transaction = _begin(connection, at_once=at_once)
        except _UNAVAILABLE as exc:
            fail(batch, exc)
            return True
        if transaction is None:
            return False
        committing = False
        try:
            try:
                with transaction:
                    ledger = Ledger(connection, deferred=True)
                    keys = [key for item in batch if (key := item.job.reads) is not None]
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
                    raise StaleConnection from exc
                if not _rolled_back_by_the_server(exc):
                    fail(batch, exc)
                    return True
                raise
        except StaleConnection:
            raise
        except Exception as exc:  # Contended, WriteConflict, a deadlock, or one job's own failure
            log.debug("batch of %d rolled back (%s); running its jobs one by one", len(batch), exc)
            self._one_by_one(connection, batch, autocommit=autocommit)
            return True
        self._committed(len(batch))
        for item, result in zip(batch, results, strict=True):
            item.answer(result)
        return True

    def _one_by_one(
        self, connection: Connection, batch: Sequence[Item[T]], *, autocommit: bool
    ) -> None:
        if not autocommit:
            for item in batch:
                self._alone(connection, item)
            return
        try:
            alone = connection.engine.connect()
        except Exception as error:  # no connection to be had
            fail(batch, error)
            return
        with alone:
            for item in batch:
                self._alone(alone, item)

    def _alone(self, connection: Connection, item: Item[T]) -> None:
        try:
            try:
                with connection.begin():
                    result = item.job.run(Ledger(connection))
            except Contended as race:
                with connection.begin():
                    result = item.job.after_race(Ledger(connection), race)
        except Exception as exc:
            fail([item], exc)
            return
        self._committed(1)
        item.answer(result)

    def _committed(self, size: int) -> None:
        self.batches += 1
        self.jobs += size
        if self._on_batch is not None:
            self._on_batch(size)


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
