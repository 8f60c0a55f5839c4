"""The request path: bytes in, one transaction, signed bytes out.

``authenticate`` is pure (parse, schema, signature, identity). ``Processor``
adds the edges: certificate lookups, the decision's facts, and the one
transaction in which an accepted return advances the replay counter, is
recorded, claims the hub and writes its audit row. A refusal writes the audit
row only. Both channels (DUIS and the Service Desk) go through
``Processor._decide_and_record`` so one rule set serves both.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from lxml import etree
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.codes import ResponseCode, info
from hubreturns.errors import Rejection, SignatureRejection
from hubreturns.model import Channel, Endpoint, RequestId, ReturnRequest
from hubreturns.policy import SecurityPolicy
from hubreturns.rules import Decision, decide
from hubreturns.store.repository import AuditFields, Repository
from hubreturns.wire import envelope, signature
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.response import ResponseSigner, build_response

__all__ = [
    "CertificateCache",
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
    """Bytes to a verified request, or a ``Rejection`` (E30, E31, E40 – E43)."""
    return authenticate_document(envelope.parse(data, policy), lookup, policy, now)


def authenticate_document(
    root: etree._Element,
    lookup: signature.CertificateLookup,
    policy: SecurityPolicy,
    now: datetime,
) -> ReturnRequest:
    """A parsed document to a verified request: schema, signature, then identity."""
    if policy.validate_schema:
        envelope.validate(root)
    certificate = signature.verify(root, lookup, policy, now)
    request = envelope.read_request(root)
    if certificate.eui != request.originator:
        raise SignatureRejection(
            ResponseCode.E43,
            f"certificate serial {certificate.serial} belongs to {certificate.eui}, "
            f"not to originator {request.originator}",
        )
    return request


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    code: ResponseCode
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
        return self.code.accepted


#: Called with every outcome after it is final (metrics, structured logs).
Observer = Callable[[Outcome], None]


class CertificateCache:
    """Certificates by (issuer, serial), read through to the store, kept ``ttl`` seconds.

    Only found certificates are cached, so a certificate loaded later is
    seen at once; a removed one stops being trusted within ``ttl``.
    """

    def __init__(self, sessions: sessionmaker[Session], ttl: float = 60.0) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._entries: dict[tuple[str, int], tuple[float, SigningCertificate]] = {}
        self._lock = threading.Lock()

    def __call__(self, issuer: str, serial: int) -> SigningCertificate | None:
        key = (issuer, serial)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        with self._sessions() as session:
            cert = Repository(session).certificate(issuer, serial)
        if cert is not None:
            with self._lock:
                self._entries[key] = (time.monotonic() + self._ttl, cert)
        return cert

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class Processor:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        signer: ResponseSigner,
        policy: SecurityPolicy,
        access_control_broker: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.signer = signer
        self.policy = policy
        self.access_control_broker = access_control_broker
        self.clock = clock
        self.certificates = CertificateCache(sessions)
        # SQLite has one writer at a time. Threads of this process queue on a
        # lock instead of in SQLite's busy handler, which sleeps in growing
        # steps and wastes most of the time under contention.
        bind = sessions.kw.get("bind")
        self._write_lock: AbstractContextManager[object] = (
            threading.Lock()
            if bind is not None and bind.dialect.name == "sqlite"
            else nullcontext()
        )
        self.observers: list[Observer] = []

    # -- channels -------------------------------------------------------------------

    def handle_duis(self, body: bytes, endpoint: Endpoint) -> Outcome:
        """One DUIS request: always returns a signed response, never raises Rejection."""
        started = time.perf_counter()
        token = current_request_id.set(None)
        try:
            return self._finish(
                self._handle_duis(body, endpoint), started, Channel.DUIS, endpoint.value
            )
        finally:
            current_request_id.reset(token)

    def _handle_duis(self, body: bytes, endpoint: Endpoint) -> Outcome:
        now = self.clock()
        audit = {
            "received_at": now,
            "channel": Channel.DUIS,
            "endpoint": endpoint.value,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_bytes": len(body),
        }
        root: etree._Element | None = None
        try:
            root = envelope.parse(body, self.policy)
            echoed = envelope.peek_header(root).request_id
            current_request_id.set(str(echoed) if echoed is not None else None)
            request = authenticate_document(root, self.certificates, self.policy, now)
        except Rejection as refusal:
            echo = envelope.peek_header(root)
            return self._refuse(
                refusal.code,
                refusal.message,
                echo.request_id,
                echo.service_reference_variant,
                audit,
            )
        except SQLAlchemyError as exc:
            # The certificate lookup needs the database: unavailable, not a refusal.
            log.error("database error while authenticating, nothing recorded: %s", exc)
            echo = envelope.peek_header(root)
            return self._respond(
                Decision(ResponseCode.E100, "database unavailable; nothing was recorded"),
                echo.request_id,
                echo.service_reference_variant,
                None,
            )
        return self._decide_and_record(
            request, endpoint=endpoint, raw=body, entered_by=None, audit=audit, check_counter=True
        )

    def handle_desk(self, request: ReturnRequest, *, entered_by: str) -> Outcome:
        """A return logged by Service Desk staff for a named Service User.

        The same facts and rules as DUIS apply; there is no signature and no
        replay counter (the desk entry is authenticated by the staff sign-in).
        """
        started = time.perf_counter()
        now = self.clock()
        audit = {"received_at": now, "channel": Channel.SERVICE_DESK, "endpoint": None}
        outcome = self._decide_and_record(
            request,
            endpoint=Endpoint.NON_DEVICE,
            raw=None,
            entered_by=entered_by,
            audit=audit,
            check_counter=False,
        )
        return self._finish(outcome, started, Channel.SERVICE_DESK, None)

    def reject_unreadable(self, reason: str, endpoint: str | None, *, http_status: int) -> Outcome:
        """A request refused (E30) before its body could be read: content type, size, time.

        ``http_status`` (415, 413, 408) is what the client is sent and what the audit keeps.
        """
        started = time.perf_counter()
        audit = {"received_at": self.clock(), "channel": Channel.DUIS, "endpoint": endpoint}
        outcome = self._refuse(
            ResponseCode.E30, reason, None, "8.14.3", audit, http_status=http_status
        )
        return self._finish(outcome, started, Channel.DUIS, endpoint)

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

    # -- the one transaction ------------------------------------------------------

    def _decide_and_record(
        self,
        request: ReturnRequest,
        *,
        endpoint: Endpoint,
        raw: bytes | None,
        entered_by: str | None,
        audit: dict[str, object],
        check_counter: bool,
    ) -> Outcome:
        """Facts, decision and writes in one transaction; a lost race is re-recorded.

        The race checks (counter advance, hub claim) are conditional writes. If
        one loses to a concurrent request the whole transaction is rolled back
        and the refusal (E21 / E44) is recorded in a fresh one, so an accepted
        request's four writes are all-or-nothing without savepoints.
        """
        now = audit["received_at"]
        assert isinstance(now, datetime)
        channel = audit["channel"]
        assert isinstance(channel, Channel)
        record_id = _record_request_id(request, channel)
        reason_suffix = f"; entered by {entered_by}" if entered_by else ""

        def audit_fields(decision: Decision, return_id: int | None) -> AuditFields:
            return AuditFields(
                **audit,  # type: ignore[arg-type]
                code=decision.code.value,
                accepted=decision.accepted,
                reason=decision.reason + reason_suffix,
                http_status=info(decision.code).http_status,
                request_id=record_id,
                originator=request.originator,
                service_reference_variant=request.kind.variant,
                device_id=request.device_id,
                return_id=return_id,
            )

        try:
            with self._write_lock, self.sessions() as session:
                with session.begin():
                    repo = Repository(session)
                    facts = repo.facts(
                        request,
                        endpoint=endpoint,
                        access_control_broker=self.access_control_broker,
                        now=now,
                        check_counter=check_counter,
                    )
                    decision = decide(facts)
                    role = facts.user.role.value if facts.user is not None else None
                    return_id: int | None = None
                    lost: Decision | None = None
                    if decision.accepted:
                        assert facts.device is not None
                        return_id, lost = self._accept(
                            repo,
                            request,
                            decision,
                            channel,
                            now,
                            raw,
                            entered_by,
                            role,
                            facts.device.smi_status.value,
                            check_counter,
                        )
                    if lost is None:
                        repo.add_audit(audit_fields(decision, return_id))
                    else:
                        session.rollback()
                if lost is not None:
                    decision, return_id = lost, None
                    with session.begin():
                        Repository(session).add_audit(audit_fields(decision, None))
        except SQLAlchemyError as exc:
            log.error("database error, request %s not recorded: %s", request.request_id, exc)
            return self._unavailable(request)
        return self._respond(decision, request.request_id, request.kind.variant, return_id, role)

    def _accept(
        self,
        repo: Repository,
        request: ReturnRequest,
        decision: Decision,
        channel: Channel,
        now: datetime,
        raw: bytes | None,
        entered_by: str | None,
        role: str | None,
        smi_status: str,
        check_counter: bool,
    ) -> tuple[int | None, Decision | None]:
        """The accepted-request writes: (return id, None), or (None, the race it lost)."""
        if check_counter and not repo.advance_counter(
            request.originator, request.request_id.counter, now
        ):
            return None, Decision(ResponseCode.E21, "counter already used (concurrent request)")
        return_id = repo.add_return(
            {
                "request_id": _record_request_id(request, channel),
                "channel": channel.value,
                "originator": request.originator,
                "role": role,
                "on_behalf_of": decision.on_behalf_of,
                "entered_by": entered_by,
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
                "smi_status_at_return": smi_status,
                "status": "notified",
                "received_at": now,
                "request_xml": raw,
            }
        )
        if not repo.claim_device(request.device_id, return_id, now):
            return None, Decision(ResponseCode.E44, "hub already has an open return (concurrent)")
        return return_id, None

    # -- responses ------------------------------------------------------------------

    def _refuse(
        self,
        code: ResponseCode,
        reason: str,
        request_id: RequestId | None,
        variant: str,
        audit: dict[str, object],
        http_status: int | None = None,
    ) -> Outcome:
        status = http_status or info(code).http_status
        try:
            with self._write_lock, self.sessions.begin() as session:
                Repository(session).add_audit(
                    AuditFields(
                        **audit,  # type: ignore[arg-type]
                        code=code.value,
                        accepted=False,
                        reason=reason,
                        http_status=status,
                        request_id=str(request_id) if request_id else None,
                        originator=request_id.originator if request_id else None,
                        service_reference_variant=variant,
                    )
                )
        except SQLAlchemyError as exc:
            # The refusal stands; only its audit row is lost, and the log says so.
            log.error("database error, audit row for refused request not written: %s", exc)
        outcome = self._respond(Decision(code, reason), request_id, variant, None)
        return replace(outcome, http_status=status)

    def _unavailable(self, request: ReturnRequest) -> Outcome:
        return self._respond(
            Decision(ResponseCode.E100, "database unavailable; nothing was recorded"),
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
        response = build_response(
            request_id=request_id,
            code=decision.code,
            service_reference="8.14",
            service_reference_variant=variant,
            now=self.clock(),
            signer=self.signer,
        )
        return Outcome(
            code=decision.code,
            reason=decision.reason,
            http_status=info(decision.code).http_status,
            request_id=request_id,
            service_reference_variant=variant,
            return_id=return_id,
            response=response,
            role=role,
        )


def _record_request_id(request: ReturnRequest, channel: Channel) -> str:
    if channel is Channel.DUIS:
        return str(request.request_id)
    return f"SD:{request.request_id}"
