"""The request path: bytes in, one check, one transaction, signed bytes out.

A DUIS request goes down one path (``Processor.handle_duis_async``), each
step in one module, entered once:

1. read: ``wire.check.read`` parses the bytes (hardened, shape-checked);
2. certificate: ``certificates`` gives a snapshot of the one it names (cache,
   or one store read);
3. check: ``wire.check`` validates, verifies and identifies over that snapshot
   (pure; the processor runs these steps of the requests that arrive together
   in lock-step, ``stages``);
4. record: the group ``committer`` runs ``recording.RecordReturn`` in a shared
   transaction: the facts from the store, ``rules.decide``, the writes;
5. answer: ``wire.response`` builds and signs it, after the commit.

An accepted return advances the replay counter, is recorded, claims the hub
and writes its audit row, all or nothing; a refusal writes the audit row only.
The Service Desk's channel (``handle_desk``) enters at step 4.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Protocol

from lxml import etree
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.codes import DEFAULT_PROFILE, CodeProfile, Reason, Verdict, info
from hubreturns.dcc.certificates import CertificateCache, Snapshot, lookup
from hubreturns.dcc.committer import Committer, Load
from hubreturns.dcc.recording import Recorded, RecordReturn, Refused, job_for
from hubreturns.dcc.rules import SECMP0039, Decision, EligibilityProfile
from hubreturns.dcc.stages import Stages, Steps, complete, one_step
from hubreturns.dcc.store.db import make_sessionmaker
from hubreturns.dcc.store.repository import AuditFields, Received
from hubreturns.errors import Rejection
from hubreturns.model import (
    REASON_LIMIT,
    Channel,
    Endpoint,
    RequestId,
    ReturnRequest,
    clip,
    utcnow,
)
from hubreturns.policy import SecurityPolicy
from hubreturns.wire import check, envelope
from hubreturns.wire.response import ResponseSigner, build_response

__all__ = [
    "NULL_TELEMETRY",
    "Outcome",
    "Processor",
    "Telemetry",
    "current_request_id",
]

log = logging.getLogger("hubreturns.dcc.processing")

#: RequestID of the DUIS request being handled in this context, once it can be read
#: (unverified until checked); log lines carry it (see ``observability``).
current_request_id: ContextVar[str | None] = ContextVar("hubreturns_request_id", default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """A request's answer: ``code`` is the wire code (the profile's code for ``verdict``)."""

    code: str
    verdict: Verdict
    reason: str
    http_status: int
    request_id: RequestId | None
    service_reference_variant: str
    return_id: int | None
    response: bytes
    channel: Channel = Channel.DUIS
    endpoint: str | None = None
    role: str | None = None
    elapsed_seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.verdict.accepted


class Telemetry(Protocol):
    """What the request path reports (``observability.Metrics``; ``NULL_TELEMETRY`` by default)."""

    def outcome(self, outcome: Outcome) -> None:
        """A request's final outcome, on either channel."""

    def certificate_read(self) -> None:
        """A signing certificate read from the store (a worker with a warm cache reads none)."""

    def batch(self, size: int) -> None:
        """A transaction of the group committer committed ``size`` requests' writes."""


class _NullTelemetry:
    def outcome(self, outcome: Outcome) -> None:
        pass

    def certificate_read(self) -> None:
        pass

    def batch(self, size: int) -> None:
        pass


NULL_TELEMETRY: Telemetry = _NullTelemetry()


class Processor:
    """The request path for both channels (see the module docstring).

    The database-free work (reading, checking, the signed answer) runs in the
    caller's thread, or on the event loop in ``handle_duis_async``; the
    transaction runs in the group ``Committer``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        signer: ResponseSigner,
        policy: SecurityPolicy,
        access_control_broker: str,
        clock: Callable[[], datetime] = utcnow,
        commit_hold: float | None = None,
        codes: CodeProfile = DEFAULT_PROFILE,
        eligibility: EligibilityProfile = SECMP0039,
        telemetry: Telemetry = NULL_TELEMETRY,
    ) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = make_sessionmaker(engine)
        #: Which wire code each refusal ``Reason`` is answered with.
        self.codes = codes
        self.signer = signer
        self.policy = policy
        self.access_control_broker = access_control_broker
        #: The role to 8.14.3/8.14.4 matrix in force (``Settings.eligibility``).
        self.eligibility = eligibility
        self.clock = clock
        self.telemetry = telemetry
        self.certificates = CertificateCache(
            engine,
            ttl=policy.trust_ttl.total_seconds(),
            on_read=telemetry.certificate_read,
        )
        self.committer: Committer[Recorded | None] = Committer(
            engine, hold=commit_hold, on_batch=telemetry.batch
        )
        #: The event loop's requests' database-free steps, in lock-step when requests
        #: come together: checking them, and answering them once committed.
        self.checking = Stages()
        self.answering = Stages()

    def close(self) -> None:
        """Let queued writes finish and stop the committer thread."""
        self.committer.close()

    # -- channels -------------------------------------------------------------------

    def handle_duis(self, body: bytes, endpoint: Endpoint) -> Outcome:
        """One DUIS request: always returns a signed response, never raises Rejection."""
        started = time.perf_counter()
        token = current_request_id.set(None)
        try:
            now = self.clock()
            received = _received(body, endpoint, now)
            read = complete(self._preparing(body, endpoint, received, now))
            if isinstance(read, check.Document):  # its certificate is read from the store
                snapshot = self._read_certificates(read)
                read = complete(self._checking(read, snapshot, body, endpoint, received, now))
            outcome = read if isinstance(read, Outcome) else self._commit(read)
            return self._finish(outcome, started, Channel.DUIS, endpoint.value)
        finally:
            current_request_id.reset(token)

    async def handle_duis_async(
        self, body: bytes, endpoint: Endpoint, load: Load | None = None
    ) -> Outcome:
        """``handle_duis`` for an event loop: no thread hand-off on the common path.

        Reading, checking and signing are CPU-bound and short, so they run on
        the loop; the writes go to the committer and are awaited (on SQLite it
        runs them on the loop at the end of its turn, on PostgreSQL in its
        thread). A certificate not yet cached is read from the store in a
        worker thread; the request, already parsed, is then checked on the loop.
        The checks of the requests that arrive in one turn of the loop, and the
        answers of those one commit serves, run in lock-step (``Stages``: every
        parse, then every schema check, …), so each step's code and data stay
        in the CPU's caches: without it a request cost 40-55 % more CPU with 64
        in flight (docs/performance.md).
        """
        started = time.perf_counter()
        token = current_request_id.set(None)
        try:
            now = self.clock()
            received = _received(body, endpoint, now)
            read = await self.checking.run(self._preparing(body, endpoint, received, now))
            if isinstance(read, check.Document):  # its certificate is read from the store
                snapshot = await asyncio.to_thread(self._read_certificates, read)
                read = complete(self._checking(read, snapshot, body, endpoint, received, now))
            if isinstance(read, Outcome):
                outcome = read
            else:
                outcome = await self._commit_async(read, load)
            return self._finish(outcome, started, Channel.DUIS, endpoint.value)
        finally:
            current_request_id.reset(token)

    def handle_desk(self, request: ReturnRequest, *, entered_by: str) -> Outcome:
        """A return logged by Service Desk staff for a named Service User.

        The same facts and rules as DUIS apply; there is no signature and no
        replay counter (the desk entry is authenticated by the staff sign-in).
        """
        started = time.perf_counter()
        job = RecordReturn(
            request=request,
            endpoint=Endpoint.NON_DEVICE,
            access_control_broker=self.access_control_broker,
            eligibility=self.eligibility,
            raw=None,
            entered_by=entered_by,
            received=Received(self.clock(), Channel.SERVICE_DESK),
            check_counter=False,
            codes=self.codes,
        )
        outcome = self._conclude(job, *self._run(job))
        return self._finish(outcome, started, Channel.SERVICE_DESK, None)

    async def reject_unreadable_async(
        self, reason: str, endpoint: str | None, *, http_status: int, load: Load | None = None
    ) -> Outcome:
        """A request refused (MALFORMED) before its body could be read: content type, size, time.

        ``http_status`` (415, 413, 408) is what the client is sent and what the audit keeps.
        """
        started = time.perf_counter()
        received = Received(self.clock(), Channel.DUIS, endpoint)
        refused = self._refusal(
            Reason.MALFORMED, reason, None, "8.14.3", received, http_status=http_status
        )
        try:
            await self.committer.run_async(refused.job(), load)
            outcome = self._conclude(refused, None, None)
        except SQLAlchemyError as exc:
            outcome = self._conclude(refused, None, exc)
        return self._finish(outcome, started, Channel.DUIS, endpoint)

    # -- reading and checking: no database ------------------------------------------

    def _read(self, body: bytes, received: Received) -> check.Document | Refused:
        try:
            return check.read(body, self.policy)
        except Rejection as refusal:
            return self._refused_by(refusal, None, received)
        except Exception as exc:  # a bug in our own code, not a bad request
            return self._internal_error(exc, received)

    def _read_certificates(self, document: check.Document) -> Snapshot | Outcome:
        """Blocking: the snapshot ``document`` needs, or E100 if the store cannot be read."""
        try:
            return self.certificates.read([document.certificate])
        except SQLAlchemyError as exc:
            # The certificate lookup needs the database: unavailable, not a refusal.
            echo = self._echo(document.root)
            log.error("database error while reading a certificate, nothing recorded: %s", exc)
            return self._respond(
                Decision(Reason.UNAVAILABLE, "database unavailable; nothing was recorded"),
                echo.request_id,
                echo.service_reference_variant,
                None,
            )

    def _preparing(
        self, body: bytes, endpoint: Endpoint, received: Received, now: datetime
    ) -> Steps[RecordReturn | Refused | Outcome | check.Document]:
        """Read, then check over the cached certificate; the ``Document`` itself when its
        certificate must first be read from the store (then ``_checking`` goes on)."""
        document = self._read(body, received)
        if isinstance(document, Refused):
            return document
        yield
        snapshot = self.certificates.snapshot(document.certificate)
        if snapshot is None:
            return document
        return (yield from self._checking(document, snapshot, body, endpoint, received, now))

    def _checking(
        self,
        document: check.Document,
        snapshot: Snapshot | Outcome,
        body: bytes,
        endpoint: Endpoint,
        received: Received,
        now: datetime,
    ) -> Steps[RecordReturn | Refused | Outcome]:
        """``wire.check``'s three steps, yielding between them (``Stages``)."""
        if isinstance(snapshot, Outcome):
            return snapshot
        try:
            check.validate(document, self.policy)
            yield
            certificate = check.verify(document, lookup(snapshot), self.policy, now)
            yield
            request = check.identify(document, certificate)
        except Rejection as refusal:
            return self._refused_by(refusal, document, received)
        except Exception as exc:  # a bug in our own code, not a bad request
            return self._internal_error(exc, received, document)
        current_request_id.set(str(request.request_id))
        return RecordReturn(
            request=request,
            endpoint=endpoint,
            access_control_broker=self.access_control_broker,
            eligibility=self.eligibility,
            raw=body,
            entered_by=None,
            received=received,
            check_counter=True,
            codes=self.codes,
        )

    def _refused_by(
        self, refusal: Rejection, document: check.Document | None, received: Received
    ) -> Refused:
        echo = self._echo(document.root if document is not None else None)
        return self._refusal(
            refusal.code,
            refusal.message,
            echo.request_id,
            echo.service_reference_variant,
            received,
            sender=refusal.sender,
        )

    # -- the transaction, then the signed answer --------------------------------------

    def _commit(self, prepared: RecordReturn | Refused) -> Outcome:
        try:
            ran = self._run(prepared)
        except Exception as exc:  # a bug in the job: rolled back; E100 and its audit row
            prepared = self._failedjob_for(exc, prepared)
            ran = self._run(prepared)
        return self._conclude(prepared, *ran)

    async def _commit_async(self, prepared: RecordReturn | Refused, load: Load | None) -> Outcome:
        result: Recorded | None = None
        error: SQLAlchemyError | None = None
        try:
            result = await self.committer.run_async(job_for(prepared), load)
        except SQLAlchemyError as exc:
            error = exc
        except Exception as exc:  # a bug in the job: rolled back; E100 and its audit row
            prepared = self._failedjob_for(exc, prepared)
            try:
                result = await self.committer.run_async(prepared.job())
            except SQLAlchemyError as again:
                error = again
        # A batch's answers are signed together (its jobs' tasks wake in one turn).
        return await self.answering.run(one_step(partial(self._conclude, prepared, result, error)))

    def _internal_error(
        self, exc: Exception, received: Received, document: check.Document | None = None
    ) -> Refused:
        """A bug met while checking a request: refused with E100, never an unsigned 500.

        The traceback goes to the log, once; the audit row says only that it
        was an internal error (and its type), and that nothing was recorded.
        """
        try:
            echo = self._echo(document.root if document is not None else None)
        except Exception:  # the header cannot be read either: answer without it
            echo = envelope.peek_header(None)
        return self._internal_refusal(
            exc, received, echo.request_id, echo.service_reference_variant
        )

    def _failedjob_for(self, exc: Exception, prepared: RecordReturn | Refused) -> Refused:
        """A committer job that raised (a bug; its transaction was rolled back): E100."""
        if isinstance(prepared, RecordReturn):
            request = prepared.request
            return self._internal_refusal(
                exc,
                prepared.received,
                request.request_id,
                request.kind.variant,
                sender=request.originator,  # verified: its signature was checked
            )
        received = prepared.fields.received
        return self._internal_refusal(exc, received, prepared.request_id, prepared.variant)

    def _internal_refusal(
        self,
        exc: Exception,
        received: Received,
        request_id: RequestId | None,
        variant: str,
        sender: str | None = None,
    ) -> Refused:
        log.error("internal error handling a DUIS request, answered E100", exc_info=exc)
        reason = f"internal error ({type(exc).__name__}); nothing was recorded"
        return self._refusal(
            Reason.UNAVAILABLE, reason, request_id, variant, received, sender=sender
        )

    async def internal_error_async(self, exc: Exception, endpoint: str | None) -> Outcome:
        """The service's last resort for a request whose handling raised: a signed E100.

        Its audit row is written if the database allows; if signing fails too,
        this raises and the service sends a plain 500.
        """
        started = time.perf_counter()
        received = Received(self.clock(), Channel.DUIS, endpoint)
        refused = self._internal_refusal(exc, received, None, "8.14.3")
        error: SQLAlchemyError | None = None
        try:
            await self.committer.run_async(refused.job())
        except SQLAlchemyError as failed:
            error = failed
        return self._finish(self._conclude(refused, None, error), started, Channel.DUIS, endpoint)

    @staticmethod
    def _echo(root: etree._Element | None) -> envelope.HeaderEcho:
        """The refused request's header as far as it can be read; its RequestID goes on
        the log lines from here on (unverified: the request was refused)."""
        echo = envelope.peek_header(root)
        current_request_id.set(str(echo.request_id) if echo.request_id is not None else None)
        return echo

    def _refusal(
        self,
        code: Verdict,
        reason: str,
        request_id: RequestId | None,
        variant: str,
        received: Received,
        http_status: int | None = None,
        sender: str | None = None,
    ) -> Refused:
        """The audit row of a refused request: ``sender`` is its verified signer, if any.

        The RequestID was read without trusting it, so its originator is kept
        as claimed unless it is the verified signer: a forged request naming a
        Supplier is not logged as that Supplier's. The reason, which may quote
        what the request carried, is bounded here, once, for the row and the log.
        """
        status = http_status or info(code).http_status
        claimed = request_id.originator if request_id else None
        reason = clip(reason, REASON_LIMIT)
        fields = AuditFields.of(
            received,
            code=self.codes.code(code),
            accepted=False,
            reason=reason,
            http_status=status,
            request_id=str(request_id) if request_id else None,
            originator=sender,
            claimed_originator=claimed if claimed != sender else None,
            service_reference_variant=variant,
        )
        return Refused(code, reason, request_id, variant, status, fields)

    # -- the second half: the committer, then the signed answer ----------------------

    def _run(
        self, prepared: RecordReturn | Refused
    ) -> tuple[Recorded | None, SQLAlchemyError | None]:
        try:
            return self.committer.run(job_for(prepared)), None
        except SQLAlchemyError as exc:
            return None, exc

    def _conclude(
        self,
        prepared: RecordReturn | Refused,
        result: Recorded | None,
        error: SQLAlchemyError | None,
    ) -> Outcome:
        if isinstance(prepared, Refused):
            if error is not None:
                # The refusal stands; only its audit row is lost, and the log says so.
                log.error("database error, audit row for refused request not written: %s", error)
            outcome = self._respond(
                Decision(prepared.code, prepared.reason),
                prepared.request_id,
                prepared.variant,
                None,
            )
            return replace(outcome, http_status=prepared.http_status)
        request = prepared.request
        if error is not None:
            log.error("database error, request %s not recorded: %s", request.request_id, error)
            return self._unavailable(request)
        assert result is not None  # a return's job answers its record
        return self._respond(
            result.decision,
            request.request_id,
            request.kind.variant,
            result.return_id,
            result.role,
        )

    def _finish(
        self, outcome: Outcome, started: float, channel: Channel, endpoint: str | None
    ) -> Outcome:
        final = replace(
            outcome,
            channel=channel,
            endpoint=endpoint,
            elapsed_seconds=time.perf_counter() - started,
        )
        try:
            self.telemetry.outcome(final)
        except Exception:  # reporting must never change the answer
            log.exception("reporting an outcome failed")
        return final

    # -- responses ------------------------------------------------------------------

    def _unavailable(self, request: ReturnRequest) -> Outcome:
        return self._respond(
            Decision(Reason.UNAVAILABLE, "database unavailable; nothing was recorded"),
            request.request_id,
            request.kind.variant,
            None,
        )

    def _respond(
        self,
        decision: Decision,
        request_id: RequestId | None,
        variant: str,
        return_id: int | None,
        role: str | None = None,
    ) -> Outcome:
        code = self.codes.code(decision.code)  # the profile decides a Reason's wire code
        response = build_response(
            request_id=request_id,
            code=code,
            service_reference="8.14",
            service_reference_variant=variant,
            now=self.clock(),
            signer=self.signer,
        )
        return Outcome(
            code=code,
            verdict=decision.code,
            reason=decision.reason,
            http_status=info(decision.code).http_status,
            request_id=request_id,
            service_reference_variant=variant,
            return_id=return_id,
            response=response,
            role=role,
        )


def _received(body: bytes, endpoint: Endpoint, now: datetime) -> Received:
    """What the audit row of a DUIS request holds before the request is read."""
    return Received(now, Channel.DUIS, endpoint.value, hashlib.sha256(body).hexdigest(), len(body))
