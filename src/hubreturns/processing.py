"""The request path: bytes in, one transaction, signed bytes out.

``authenticate`` is pure (parse, schema, signature, identity). ``Processor``
adds the edges: certificate lookups, the decision's facts, and the one
transaction in which an accepted return advances the replay counter, is
recorded, claims the hub and writes its audit row. A refusal writes the audit
row only. Transactions are run by the group ``Committer``, which shares one
commit among the requests that arrive together; nothing is answered before
its transaction has committed. Both channels (DUIS and the Service Desk)
record through ``_RecordReturn`` so one rule set serves both.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial

from lxml import etree
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.codes import DEFAULT_PROFILE, CodeProfile, Reason, Verdict, info
from hubreturns.committer import Arrival, Committer, Contended, FunctionJob, Job
from hubreturns.errors import Rejection, SignatureRejection
from hubreturns.model import REASON_LIMIT, Channel, Endpoint, RequestId, ReturnRequest, clip
from hubreturns.policy import SecurityPolicy
from hubreturns.rules import SECMP0039, Decision, EligibilityProfile, decide
from hubreturns.stages import Stages, Steps, complete, one_step
from hubreturns.store.db import reading
from hubreturns.store.repository import AuditFields, FactsKey, Ledger
from hubreturns.wire import envelope, signature
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.response import ResponseSigner, build_response

__all__ = [
    "REVOCATION_WINDOW",
    "CertificateCache",
    "NotCached",
    "Observer",
    "Outcome",
    "Processor",
    "authenticate",
    "authenticate_document",
    "current_request_id",
]

log = logging.getLogger("hubreturns.processing")

#: RequestID of the DUIS request being handled in this context, once it can be read
#: (unverified until authenticated); log lines carry it (see ``observability``).
current_request_id: ContextVar[str | None] = ContextVar("hubreturns_request_id", default=None)


def utcnow() -> datetime:
    return datetime.now(UTC)


def authenticate(
    data: bytes,
    lookup: signature.CertificateLookup,
    policy: SecurityPolicy,
    now: datetime,
) -> ReturnRequest:
    """Bytes to a verified request, or a ``Rejection`` (envelope or signature Reasons)."""
    return authenticate_document(envelope.parse(data, policy), lookup, policy, now)


def authenticate_document(
    root: etree._Element,
    lookup: signature.CertificateLookup,
    policy: SecurityPolicy,
    now: datetime,
) -> ReturnRequest:
    """A parsed document to a verified request: schema and version, signature, then
    identity."""
    return complete(authentication_steps(root, lookup, policy, now))


def authentication_steps(
    root: etree._Element,
    lookup: signature.CertificateLookup,
    policy: SecurityPolicy,
    now: datetime,
) -> Steps[ReturnRequest]:
    """``authenticate_document`` in steps, for ``Stages`` (yields between them)."""
    if policy.validate_schema:
        envelope.validate(root)
        yield
    envelope.check_version(root, policy)
    certificate = yield from signature.verification_steps(root, lookup, policy, now)
    yield
    try:
        request = envelope.read_request(root)
    except Rejection as refusal:  # signed, so its signer is known: the audit keeps it
        raise type(refusal)(refusal.code, refusal.message, sender=certificate.eui) from None
    if certificate.eui != request.originator:
        raise SignatureRejection(
            Reason.IDENTITY_MISMATCH,
            f"certificate serial {certificate.serial} belongs to {certificate.eui}, "
            f"not to originator {request.originator}",
            sender=certificate.eui,
        )
    return request


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


#: Called with every outcome after it is final (metrics, structured logs).
Observer = Callable[[Outcome], None]


class NotCached(Exception):
    """Raised by ``CertificateCache.cached``: the lookup needs the database."""

    def __init__(self, issuer: str, serial: int) -> None:
        super().__init__(issuer, serial)
        self.issuer, self.serial = issuer, serial


#: A cache entry: (monotonic time it expires, time it is due to be confirmed, certificate).
_Entry = tuple[float, float, SigningCertificate]

#: Revocations: a busy worker re-reads the store's certificate change number this
#: often, in the background; and trusts its cache for at most this long after the
#: last read began. A certificate revoked or removed at t is refused by every
#: worker, on every host, by t + REVOCATION_WINDOW (seconds).
REVOCATION_REFRESH = 0.4
REVOCATION_WINDOW = 0.9


class CertificateCache:
    """Certificates by (issuer, serial), read through to the store.

    Only found certificates are cached, so a certificate loaded later is seen
    at once. An entry is trusted for ``ttl`` seconds after the store last
    confirmed it, so a certificate removed from the store stops being trusted
    within ``ttl``.

    Certificates in use are confirmed before then, in the background and in
    bulk: a request on the event loop (``cached``) that finds its entry past a
    random 50–75 % of ``ttl`` notes it and is answered from the entry; one
    read in a thread then checks every noted entry in one query. Without this,
    every busy sender's entry expired in the request path once a minute, each
    worker re-reading its whole cache within seconds: p99 at 1,000 req/s went
    from 30 to 105 ms while it did (and to 570 ms with one background read per
    entry, which flooded the thread pool).

    Revocations and removals must take effect within a second, so on top of
    that the whole cache is trusted only for ``REVOCATION_WINDOW`` after the
    last read of the store's change number (``check_revocations``): a busy
    worker re-reads it in the background every ``REVOCATION_REFRESH``; a
    request that finds it older than the window is looked up through a thread
    (``fetched``), which reads it first. When the number has moved, every
    entry is dropped (revocations are rare; re-reading is cheap).
    """

    def __init__(self, sessions: sessionmaker[Session], ttl: float = 60.0) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._entries: dict[tuple[str, int], _Entry] = {}
        self._lock = threading.Lock()
        #: Entries due to be confirmed, and whether a confirmation is running
        #: (both touched on the event loop only).
        self._due: set[tuple[str, int]] = set()
        self._confirming = False
        #: The change number last read, when that read began (monotonic), whether a
        #: background read is running, and a count of drops (so that a read begun
        #: before a drop does not put back what the drop took out).
        self._generation: int | None = None
        self._checked_at = -float("inf")
        self._checking = False
        self._check_lock = threading.Lock()
        self._epoch = 0
        #: Called once for each certificate read from the store on a request's
        #: behalf (the metrics count them: a worker whose cache is warm reads none).
        self.on_read: Callable[[], None] | None = None

    def __call__(self, issuer: str, serial: int) -> SigningCertificate | None:
        key = (issuer, serial)
        if time.monotonic() >= self._checked_at + REVOCATION_WINDOW:
            self.check_revocations()
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and entry[0] > now and now < self._checked_at + REVOCATION_WINDOW:
            return entry[2]
        epoch = self._epoch
        engine = self._sessions.kw["bind"]
        with reading(engine) as connection, connection.begin():
            cert = Ledger(connection).certificate(issuer, serial)
        if self.on_read is not None:
            self.on_read()
        if cert is not None:
            with self._lock:
                if self._epoch == epoch:
                    self._entries[key] = self._entry(cert, time.monotonic())
        return cert

    def check_revocations(self) -> None:
        """Read the store's change number; drop every entry if it moved since the last read.

        A failed read is logged and leaves the cache untrusted (lookups then
        read through to the store), never trusted longer.
        """
        with self._check_lock:
            started = time.monotonic()
            try:
                with reading(self._sessions.kw["bind"]) as connection, connection.begin():
                    generation = Ledger(connection).certificate_generation()
            except SQLAlchemyError as exc:
                log.warning("reading the certificate change number failed: %s", exc)
                return
            with self._lock:
                if generation != self._generation:
                    self._entries.clear()
                    self._epoch += 1
                    self._generation = generation
                self._checked_at = started

    def _check_soon(self) -> None:
        """On the event loop: ``check_revocations`` in a thread, unless one is running."""
        if self._checking:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._checking = True
        done = loop.run_in_executor(None, self.check_revocations)
        done.add_done_callback(self._checked)

    def _checked(self, _: object) -> None:
        self._checking = False

    def _entry(self, cert: SigningCertificate, confirmed_at: float) -> _Entry:
        due = confirmed_at + self._ttl * (0.5 + 0.25 * random.random())  # noqa: S311 (spread)
        return (confirmed_at + self._ttl, due, cert)

    def cached(self, issuer: str, serial: int) -> SigningCertificate | None:
        """The certificate if cached and fresh; raises ``NotCached`` rather than read the store.

        Called on an event loop, it also notes an entry due to be confirmed.
        """
        key = (issuer, serial)
        now = time.monotonic()
        if now >= self._checked_at + REVOCATION_REFRESH:
            if now >= self._checked_at + REVOCATION_WINDOW:
                raise NotCached(issuer, serial)  # revocations unchecked: through a thread
            self._check_soon()
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            raise NotCached(issuer, serial)
        if entry[1] <= now:
            self._due.add(key)
            self._confirm_due()
        return entry[2]

    def _confirm_due(self) -> None:
        if self._confirming or not self._due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the entries simply expire when their time is up
            return
        keys, self._due = self._due, set()
        self._confirming = True
        done = loop.run_in_executor(None, self._confirm, keys)
        done.add_done_callback(self._confirmed)

    def _confirmed(self, _: object) -> None:
        self._confirming = False
        self._confirm_due()  # whatever was noted meanwhile

    def _confirm(self, keys: set[tuple[str, int]]) -> None:
        """In a thread: extend the entries the store still holds, forget the others."""
        engine = self._sessions.kw["bind"]
        confirmed_at = time.monotonic()  # before the read: trust runs from what it saw
        try:
            with reading(engine) as connection, connection.begin():
                present = Ledger(connection).certificates_present(keys)
        except SQLAlchemyError as exc:  # the entries stay until they expire
            log.warning("confirming %d cached certificates failed: %s", len(keys), exc)
            return
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    continue
                if key in present:
                    self._entries[key] = self._entry(entry[2], confirmed_at)
                else:
                    del self._entries[key]

    async def fetched(self, issuer: str, serial: int) -> signature.CertificateLookup:
        """Read one certificate in a thread; returns a lookup that answers with what was read.

        Only the read leaves the loop: the request is then prepared on the loop
        again (parsed twice, verified once), which costs less than preparing it
        in a thread that contends with the loop for the GIL. A store error is
        raised when the lookup is called, inside ``_preparing``, which answers E100.
        """
        try:
            found = await asyncio.to_thread(self, issuer, serial)
        except SQLAlchemyError as exc:
            error = exc

            def failed(issuer: str, serial: int) -> SigningCertificate | None:
                raise error

            return failed

        def answer(wanted_issuer: str, wanted_serial: int) -> SigningCertificate | None:
            if (wanted_issuer, wanted_serial) == (issuer, serial):
                return found
            return self(wanted_issuer, wanted_serial)  # not this request's: read through

        return answer

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass(frozen=True, slots=True)
class _Recorded:
    decision: Decision
    return_id: int | None
    role: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class _RecordReturn:
    """Facts, decision and writes for one authenticated request (a committer job).

    The race checks (counter advance, hub claim) are conditional writes. If
    one loses to a concurrent request the job raises ``Contended``: the
    transaction is rolled back and the refusal (REPLAY / OPEN_RETURN) is recorded in a
    fresh one, so an accepted request's four writes are all-or-nothing.
    """

    request: ReturnRequest
    endpoint: Endpoint
    access_control_broker: str
    eligibility: EligibilityProfile
    raw: bytes | None
    entered_by: str | None
    audit: dict[str, object]
    check_counter: bool
    codes: CodeProfile

    @property
    def reads(self) -> FactsKey:
        """The key of this job's facts, so the committer can read a batch's together."""
        return (self.request.originator, self.request.device_id)

    @property
    def channel(self) -> Channel:
        channel = self.audit["channel"]
        assert isinstance(channel, Channel)
        return channel

    @property
    def now(self) -> datetime:
        now = self.audit["received_at"]
        assert isinstance(now, datetime)
        return now

    def run(self, ledger: Ledger) -> _Recorded:
        request = self.request
        facts = ledger.facts(
            request,
            endpoint=self.endpoint,
            access_control_broker=self.access_control_broker,
            now=self.now,
            check_counter=self.check_counter,
            eligibility=self.eligibility,
        )
        decision = decide(facts)
        role = facts.user.role.value if facts.user is not None else None
        return_id: int | None = None
        if decision.accepted:
            assert facts.device is not None
            return_id = self._accept(ledger, decision, role, facts.device.smi_status.value)
        ledger.add_audit(self._audit_fields(decision, return_id))
        return _Recorded(decision, return_id, role)

    def after_race(self, ledger: Ledger, race: Contended) -> _Recorded:
        recorded = race.detail
        assert isinstance(recorded, _Recorded)
        ledger.add_audit(self._audit_fields(recorded.decision, None))
        return recorded

    def _accept(self, ledger: Ledger, decision: Decision, role: str | None, smi: str) -> int:
        """The accepted-request writes; returns the new return's id or raises ``Contended``."""
        request, now = self.request, self.now
        if self.check_counter and not ledger.advance_counter(
            request.originator, request.request_id.counter, now
        ):
            lost = Decision(Reason.REPLAY, "counter already used (concurrent request)")
            raise Contended(_Recorded(lost, None, role))
        return_id = ledger.add_return(
            {
                "request_id": _record_request_id(request, self.channel),
                "channel": self.channel.value,
                "originator": request.originator,
                "role": role,
                "on_behalf_of": decision.on_behalf_of,
                "entered_by": self.entered_by,
                "device_id": request.device_id,
                "service_reference_variant": request.kind.variant,
                "return_type": request.return_type,
                "other_device_id": request.other_device_id,
                "connection_method": (
                    request.connection_method.value if request.connection_method else None
                ),
                "fault_reason": request.fault_reason.value if request.fault_reason else None,
                "user_ref_datetime": request.user_ref_datetime,
                "user_ref_id": request.user_ref_id,
                "incident_reference": request.incident_reference,
                "additional_information": request.additional_information,
                "smi_status_at_return": smi,
                "status": "notified",
                "received_at": now,
                "request_xml": self.raw,
            }
        )
        if not ledger.claim_device(request.device_id, return_id, now):
            lost = Decision(Reason.OPEN_RETURN, "hub already has an open return (concurrent)")
            raise Contended(_Recorded(lost, None, role))
        return return_id

    def _audit_fields(self, decision: Decision, return_id: int | None) -> AuditFields:
        request = self.request
        suffix = f"; entered by {self.entered_by}" if self.entered_by else ""
        return AuditFields(
            **self.audit,  # type: ignore[arg-type]
            code=self.codes.code(decision.code),
            accepted=decision.accepted,
            reason=clip(decision.reason + suffix, REASON_LIMIT),
            http_status=info(decision.code).http_status,
            request_id=_record_request_id(request, self.channel),
            originator=request.originator,
            service_reference_variant=request.kind.variant,
            device_id=request.device_id,
            return_id=return_id,
        )


@dataclass(frozen=True, slots=True)
class _Refused:
    """A request refused before any facts were read: only its audit row is written."""

    code: Verdict
    reason: str
    request_id: RequestId | None
    variant: str
    http_status: int
    fields: AuditFields

    def job(self) -> FunctionJob[None]:
        return FunctionJob(lambda ledger: ledger.add_audit(self.fields))


#: What the database-free first half of a DUIS request leaves for the second.
_Prepared = _RecordReturn | _Refused | Outcome


class Processor:
    """The request path for both channels.

    The database-free half (parse, schema, signature, identity, and the signed
    answer) runs in the caller's thread, or on the event loop in
    ``handle_duis_async``; the database half runs in the group ``Committer``.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        signer: ResponseSigner,
        policy: SecurityPolicy,
        access_control_broker: str,
        clock: Callable[[], datetime] = utcnow,
        commit_hold: float | None = None,
        codes: CodeProfile = DEFAULT_PROFILE,
        eligibility: EligibilityProfile = SECMP0039,
    ) -> None:
        self.sessions = sessions
        #: Which wire code each refusal ``Reason`` is answered with.
        self.codes = codes
        self.signer = signer
        self.policy = policy
        self.access_control_broker = access_control_broker
        #: The role to 8.14.3/8.14.4 matrix in force (``Settings.eligibility``).
        self.eligibility = eligibility
        self.clock = clock
        self.certificates = CertificateCache(sessions)
        self.committer = (
            Committer(sessions) if commit_hold is None else Committer(sessions, hold=commit_hold)
        )
        #: The event loop's requests' database-free steps, in lock-step when requests
        #: come together: checking them, and answering them once committed.
        self.checking = Stages()
        self.answering = Stages()
        self.observers: list[Observer] = []

    def close(self) -> None:
        """Let queued writes finish and stop the committer thread."""
        self.committer.close()

    # -- channels -------------------------------------------------------------------

    def handle_duis(self, body: bytes, endpoint: Endpoint) -> Outcome:
        """One DUIS request: always returns a signed response, never raises Rejection."""
        started = time.perf_counter()
        token = current_request_id.set(None)
        try:
            prepared = complete(self._preparing(body, endpoint, self.certificates))
            if not isinstance(prepared, Outcome):
                try:
                    ran = self._run(prepared)
                except Exception as exc:  # a bug in the job: rolled back; E100 and its audit row
                    prepared = self._failed_job(exc, prepared)
                    ran = self._run(prepared)
                prepared = self._conclude(prepared, *ran)
            return self._finish(prepared, started, Channel.DUIS, endpoint.value)
        finally:
            current_request_id.reset(token)

    async def handle_duis_async(
        self, body: bytes, endpoint: Endpoint, arrival: Arrival | None = None
    ) -> Outcome:
        """``handle_duis`` for an event loop: no thread hand-off on the common path.

        Parsing, checking and signing are CPU-bound and short, so they run on
        the loop; the writes go to the committer and are awaited (on SQLite it
        runs them on the loop at the end of its turn, on PostgreSQL in its
        thread). A certificate not yet cached needs a database read, which
        that rare request makes in a worker thread (``CertificateCache.fetched``).
        When requests come together, the checks of those that arrive in one
        turn of the loop, and the answers of those one commit serves, run in
        lock-step (``Stages``: all the parses, then all the schema checks, …),
        so each step finds its code and data in the CPU's caches.
        """
        started = time.perf_counter()
        token = current_request_id.set(None)
        try:
            try:
                prepared = await self.checking.run(
                    self._preparing(body, endpoint, self.certificates.cached)
                )
            except NotCached as missing:
                lookup = await self.certificates.fetched(missing.issuer, missing.serial)
                prepared = complete(self._preparing(body, endpoint, lookup))
            current_request_id.set(_request_id_of(prepared))
            if not isinstance(prepared, Outcome):
                result: object = None
                error: SQLAlchemyError | None = None
                try:
                    result = await self.committer.run_async(_job(prepared), arrival)
                except SQLAlchemyError as exc:
                    error = exc
                except Exception as exc:  # a bug in the job: rolled back; E100 and its audit row
                    prepared = self._failed_job(exc, prepared)
                    try:
                        result = await self.committer.run_async(prepared.job())
                    except SQLAlchemyError as again:
                        error = again
                # A batch's answers are signed together (its jobs' tasks wake in one turn).
                prepared = await self.answering.run(
                    one_step(partial(self._conclude, prepared, result, error))
                )
            return self._finish(prepared, started, Channel.DUIS, endpoint.value)
        finally:
            current_request_id.reset(token)

    def handle_desk(self, request: ReturnRequest, *, entered_by: str) -> Outcome:
        """A return logged by Service Desk staff for a named Service User.

        The same facts and rules as DUIS apply; there is no signature and no
        replay counter (the desk entry is authenticated by the staff sign-in).
        """
        started = time.perf_counter()
        job = _RecordReturn(
            request=request,
            endpoint=Endpoint.NON_DEVICE,
            access_control_broker=self.access_control_broker,
            eligibility=self.eligibility,
            raw=None,
            entered_by=entered_by,
            audit={"received_at": self.clock(), "channel": Channel.SERVICE_DESK, "endpoint": None},
            check_counter=False,
            codes=self.codes,
        )
        outcome = self._conclude(job, *self._run(job))
        return self._finish(outcome, started, Channel.SERVICE_DESK, None)

    def reject_unreadable(self, reason: str, endpoint: str | None, *, http_status: int) -> Outcome:
        """A request refused (MALFORMED) before its body could be read: content type, size, time.

        ``http_status`` (415, 413, 408) is what the client is sent and what the audit keeps.
        """
        started = time.perf_counter()
        refused = self._unreadable(reason, endpoint, http_status)
        outcome = self._conclude(refused, *self._run(refused))
        return self._finish(outcome, started, Channel.DUIS, endpoint)

    async def reject_unreadable_async(
        self, reason: str, endpoint: str | None, *, http_status: int, arrival: Arrival | None = None
    ) -> Outcome:
        """``reject_unreadable`` for an event loop (its audit row through ``run_async``)."""
        started = time.perf_counter()
        refused = self._unreadable(reason, endpoint, http_status)
        try:
            await self.committer.run_async(refused.job(), arrival)
            outcome = self._conclude(refused, None, None)
        except SQLAlchemyError as exc:
            outcome = self._conclude(refused, None, exc)
        return self._finish(outcome, started, Channel.DUIS, endpoint)

    def _unreadable(self, reason: str, endpoint: str | None, http_status: int) -> _Refused:
        audit = {"received_at": self.clock(), "channel": Channel.DUIS, "endpoint": endpoint}
        return self._refusal(
            Reason.MALFORMED, reason, None, "8.14.3", audit, http_status=http_status
        )

    # -- the first half: no database ------------------------------------------------

    def _preparing(
        self, body: bytes, endpoint: Endpoint, lookup: signature.CertificateLookup
    ) -> Steps[_Prepared]:
        now = self.clock()
        audit: dict[str, object] = {
            "received_at": now,
            "channel": Channel.DUIS,
            "endpoint": endpoint.value,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_bytes": len(body),
        }
        root: etree._Element | None = None
        try:
            root = envelope.parse(body, self.policy)
            yield
            request = yield from authentication_steps(root, lookup, self.policy, now)
        except Rejection as refusal:
            echo = self._echo(root)
            return self._refusal(
                refusal.code,
                refusal.message,
                echo.request_id,
                echo.service_reference_variant,
                audit,
                sender=refusal.sender,
            )
        except SQLAlchemyError as exc:
            # The certificate lookup needs the database: unavailable, not a refusal.
            echo = self._echo(root)
            log.error("database error while authenticating, nothing recorded: %s", exc)
            return self._respond(
                Decision(Reason.UNAVAILABLE, "database unavailable; nothing was recorded"),
                echo.request_id,
                echo.service_reference_variant,
                None,
            )
        except NotCached:  # not a failure: ``handle_duis_async`` reads the certificate
            raise
        except Exception as exc:  # a bug in our own code, not a bad request
            return self._internal_error(exc, audit, root)
        current_request_id.set(str(request.request_id))
        return _RecordReturn(
            request=request,
            endpoint=endpoint,
            access_control_broker=self.access_control_broker,
            eligibility=self.eligibility,
            raw=body,
            entered_by=None,
            audit=audit,
            check_counter=True,
            codes=self.codes,
        )

    def _internal_error(
        self, exc: Exception, audit: dict[str, object], root: etree._Element | None = None
    ) -> _Refused:
        """A bug met while checking a request: refused with E100, never an unsigned 500.

        The traceback goes to the log, once; the audit row says only that it
        was an internal error (and its type), and that nothing was recorded.
        """
        try:
            echo = self._echo(root)
        except Exception:  # the header cannot be read either: answer without it
            echo = envelope.peek_header(None)
        return self._internal_refusal(exc, audit, echo.request_id, echo.service_reference_variant)

    def _failed_job(self, exc: Exception, prepared: _RecordReturn | _Refused) -> _Refused:
        """A committer job that raised (a bug; its transaction was rolled back): E100."""
        if isinstance(prepared, _RecordReturn):
            request = prepared.request
            return self._internal_refusal(
                exc,
                dict(prepared.audit),
                request.request_id,
                request.kind.variant,
                sender=request.originator,  # verified: its signature was checked
            )
        done = prepared.fields
        audit: dict[str, object] = {
            "received_at": done.received_at,
            "channel": done.channel,
            "endpoint": done.endpoint,
            "body_sha256": done.body_sha256,
            "body_bytes": done.body_bytes,
        }
        return self._internal_refusal(exc, audit, prepared.request_id, prepared.variant)

    def _internal_refusal(
        self,
        exc: Exception,
        audit: dict[str, object],
        request_id: RequestId | None,
        variant: str,
        sender: str | None = None,
    ) -> _Refused:
        log.error("internal error handling a DUIS request, answered E100", exc_info=exc)
        reason = f"internal error ({type(exc).__name__}); nothing was recorded"
        return self._refusal(Reason.UNAVAILABLE, reason, request_id, variant, audit, sender=sender)

    async def internal_error_async(self, exc: Exception, endpoint: str | None) -> Outcome:
        """The service's last resort for a request whose handling raised: a signed E100.

        Its audit row is written if the database allows; if signing fails too,
        this raises and the service sends a plain 500.
        """
        started = time.perf_counter()
        audit: dict[str, object] = {
            "received_at": self.clock(),
            "channel": Channel.DUIS,
            "endpoint": endpoint,
        }
        refused = self._internal_refusal(exc, audit, None, "8.14.3")
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
        audit: dict[str, object],
        http_status: int | None = None,
        sender: str | None = None,
    ) -> _Refused:
        """The audit row of a refused request: ``sender`` is its verified signer, if any.

        The RequestID was read without trusting it, so its originator is kept
        as claimed unless it is the verified signer: a forged request naming a
        Supplier is not logged as that Supplier's. The reason, which may quote
        what the request carried, is bounded here, once, for the row and the log.
        """
        status = http_status or info(code).http_status
        claimed = request_id.originator if request_id else None
        reason = clip(reason, REASON_LIMIT)
        fields = AuditFields(
            **audit,  # type: ignore[arg-type]
            code=self.codes.code(code),
            accepted=False,
            reason=reason,
            http_status=status,
            request_id=str(request_id) if request_id else None,
            originator=sender,
            claimed_originator=claimed if claimed != sender else None,
            service_reference_variant=variant,
        )
        return _Refused(code, reason, request_id, variant, status, fields)

    # -- the second half: the committer, then the signed answer ----------------------

    def _run(self, prepared: _RecordReturn | _Refused) -> tuple[object, SQLAlchemyError | None]:
        try:
            return self.committer.run(_job(prepared)), None
        except SQLAlchemyError as exc:
            return None, exc

    def _conclude(
        self, prepared: _RecordReturn | _Refused, result: object, error: SQLAlchemyError | None
    ) -> Outcome:
        if isinstance(prepared, _Refused):
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
        assert isinstance(result, _Recorded)
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
        for observer in self.observers:
            try:
                observer(final)
            except Exception:  # an observer must never change the answer
                log.exception("outcome observer failed")
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


def _job(prepared: _RecordReturn | _Refused) -> Job[object]:
    """What the committer runs for a prepared request."""
    return prepared if isinstance(prepared, _RecordReturn) else prepared.job()


def _request_id_of(prepared: _Prepared) -> str | None:
    """The request id a prepared request's log lines carry (unverified when refused)."""
    if isinstance(prepared, _RecordReturn):
        return str(prepared.request.request_id)
    return str(prepared.request_id) if prepared.request_id is not None else None


def _record_request_id(request: ReturnRequest, channel: Channel) -> str:
    if channel is Channel.DUIS:
        return str(request.request_id)
    return f"SD:{request.request_id}"
