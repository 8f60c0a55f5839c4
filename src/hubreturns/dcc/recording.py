"""One request's transaction: its facts read, decided by the rules, its writes.

This is what the group committer runs for each request, inside the batch's
transaction: ``Ledger.facts`` (the store) → ``rules.decide`` (pure) → the
writes (the store again). The decision is taken inside the transaction on
purpose: it must see the facts the writes commit against, including what the
requests before it in the same batch took (a counter, a hub), so a batch
decides exactly as the same requests would one at a time. Both channels, DUIS
and the Service Desk, record through ``RecordReturn``, so one rule set decides
every return.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubreturns.codes import CodeProfile, Reason, Verdict, info
from hubreturns.dcc.committer import Contended, FunctionJob, Job
from hubreturns.dcc.rules import Decision, EligibilityProfile, decide
from hubreturns.dcc.store.repository import AuditFields, FactsKey, Ledger, Received, ReturnFields
from hubreturns.model import REASON_LIMIT, Channel, Endpoint, RequestId, ReturnRequest, clip

__all__ = ["RecordReturn", "Recorded", "Refused", "job_for", "record_request_id"]


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a request's transaction decided and wrote."""

    decision: Decision
    return_id: int | None
    role: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordReturn:
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
    received: Received
    check_counter: bool
    codes: CodeProfile

    @property
    def reads(self) -> FactsKey:
        """The key of this job's facts, so the committer can read a batch's together."""
        return (self.request.originator, self.request.device_id)

    def run(self, ledger: Ledger) -> Recorded:
        request = self.request
        facts = ledger.facts(
            request,
            endpoint=self.endpoint,
            access_control_broker=self.access_control_broker,
            now=self.received.received_at,
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
        return Recorded(decision, return_id, role)

    def after_race(self, ledger: Ledger, race: Contended[Recorded]) -> Recorded:
        recorded = race.detail
        ledger.add_audit(self._audit_fields(recorded.decision, None))
        return recorded

    def _accept(self, ledger: Ledger, decision: Decision, role: str | None, smi: str) -> int:
        """The accepted-request writes; returns the new return's id or raises ``Contended``."""
        request, now, channel = self.request, self.received.received_at, self.received.channel
        if self.check_counter and not ledger.advance_counter(
            request.originator, request.request_id.counter, now
        ):
            lost = Decision(Reason.REPLAY, "counter already used (concurrent request)")
            raise Contended(Recorded(lost, None, role))
        return_id = ledger.add_return(
            ReturnFields.of(
                request,
                request_id=record_request_id(request, channel),
                channel=channel,
                role=role,
                on_behalf_of=decision.on_behalf_of,
                entered_by=self.entered_by,
                smi_status_at_return=smi,
                received_at=now,
                request_xml=self.raw,
            )
        )
        if not ledger.claim_device(request.device_id, return_id, now):
            lost = Decision(Reason.OPEN_RETURN, "hub already has an open return (concurrent)")
            raise Contended(Recorded(lost, None, role))
        return return_id

    def _audit_fields(self, decision: Decision, return_id: int | None) -> AuditFields:
        request = self.request
        suffix = f"; entered by {self.entered_by}" if self.entered_by else ""
        return AuditFields.of(
            self.received,
            code=self.codes.code(decision.code),
            accepted=decision.accepted,
            reason=clip(decision.reason + suffix, REASON_LIMIT),
            http_status=info(decision.code).http_status,
            request_id=record_request_id(request, self.received.channel),
            originator=request.originator,
            service_reference_variant=request.kind.variant,
            device_id=request.device_id,
            return_id=return_id,
        )


@dataclass(frozen=True, slots=True)
class Refused:
    """A request refused before any facts were read: only its audit row is written."""

    code: Verdict
    reason: str
    request_id: RequestId | None
    variant: str
    http_status: int
    fields: AuditFields

    def job(self) -> FunctionJob[None]:
        return FunctionJob(lambda ledger: ledger.add_audit(self.fields))


def job_for(prepared: RecordReturn | Refused) -> Job[Recorded | None]:
    """What the committer runs for a prepared request."""
    return prepared if isinstance(prepared, RecordReturn) else prepared.job()


def record_request_id(request: ReturnRequest, channel: Channel) -> str:
    if channel is Channel.DUIS:
        return str(request.request_id)
    return f"SD:{request.request_id}"
