"""The return lifecycle: every allowed step is a row of ``TRANSITIONS``, nothing else.

An accepted return starts ``notified`` (set by the request path). It is
collected in a consignment, received at the DCC, tested (fault confirmed or no
fault found) and closed. Closing releases the hub (``devices.open_return_id``
back to NULL), so the same hub can be returned again later. A step not in the
table is refused with the current status, the step and what would be allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from hubreturns.logistics.errors import Conflict

__all__ = [
    "TRANSITIONS",
    "ReturnStatus",
    "Step",
    "TestOutcome",
    "allowed_steps",
    "next_status",
]


class ReturnStatus(StrEnum):
    """Values of ``returns.status``."""

    NOTIFIED = "notified"
    COLLECTED = "collected"
    RECEIVED = "received"
    TESTED = "tested"
    CLOSED = "closed"


class Step(StrEnum):
    """What an operator does to a return (one CLI command and one API call each)."""

    COLLECT = "collect"
    RECEIVE = "receive"
    TEST = "test"
    CLOSE = "close"


class TestOutcome(StrEnum):
    """Result of the DCC's test of a returned hub."""

    __test__ = False  # not a pytest test class

    FAULT_CONFIRMED = "fault_confirmed"
    NO_FAULT_FOUND = "no_fault_found"


#: (status, step) -> new status. The only place lifecycle order is defined.
TRANSITIONS: Final[Mapping[tuple[ReturnStatus, Step], ReturnStatus]] = MappingProxyType(
    {
        (ReturnStatus.NOTIFIED, Step.COLLECT): ReturnStatus.COLLECTED,
        (ReturnStatus.COLLECTED, Step.RECEIVE): ReturnStatus.RECEIVED,
        (ReturnStatus.RECEIVED, Step.TEST): ReturnStatus.TESTED,
        (ReturnStatus.TESTED, Step.CLOSE): ReturnStatus.CLOSED,
    }
)


def allowed_steps(status: ReturnStatus) -> tuple[Step, ...]:
    return tuple(step for (state, step) in TRANSITIONS if state is status)


def next_status(return_id: int, status: str, step: Step) -> ReturnStatus:
    """The status after ``step``, or ``Conflict`` naming what is allowed instead."""
    try:
        current = ReturnStatus(status)
    except ValueError:
        raise Conflict(
            f"return {return_id} has unknown status {status!r}",
            "The returns table holds a status this version does not know; check migrations.",
            field="status",
        ) from None
    new = TRANSITIONS.get((current, step))
    if new is None:
        allowed = allowed_steps(current)
        hint = (
            f"From {current.value} the next step is {' or '.join(s.value for s in allowed)}."
            if allowed
            else f"A {current.value} return takes no further steps."
        )
        raise Conflict(
            f"return {return_id} is {current.value}; it cannot be {_past(step)} now",
            hint + " Order: notified → collected → received → tested → closed.",
            field="step",
        )
    return new


def _past(step: Step) -> str:
    return {
        Step.COLLECT: "collected",
        Step.RECEIVE: "received",
        Step.TEST: "tested",
        Step.CLOSE: "closed",
    }[step]
