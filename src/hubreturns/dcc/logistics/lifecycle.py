"""The return lifecycle: every allowed step is a row of ``TRANSITIONS``, nothing else.

An accepted return starts ``notified`` (set by the request path). A hub that
comes back is collected in a consignment, received at the DCC, tested (fault
confirmed or no fault found) and closed. A "Lost or Stolen Hub" return never
comes back (DUIS 8.14.4), so it is never collected, received or tested: its
one step is *write off*. Closing or writing off releases the hub
(``devices.open_return_id`` back to NULL), so the same hub can be returned
again later. A step not in the table is refused with the current status, the
step and what would be allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from hubreturns.dcc.logistics.errors import Conflict
from hubreturns.model import NoFaultReturnType, ReturnStatus

__all__ = [
    "TRANSITIONS",
    "HubPath",
    "Step",
    "TestOutcome",
    "allowed_steps",
    "is_lost_or_stolen",
    "next_status",
    "path_of",
]


class Step(StrEnum):
    """What an operator does to a return (one CLI command and one API call each)."""

    COLLECT = "collect"
    RECEIVE = "receive"
    TEST = "test"
    CLOSE = "close"
    WRITE_OFF = "write_off"


class HubPath(StrEnum):
    """Whether the hub physically comes back to the DCC; it decides the allowed steps."""

    RETURNED = "returned"
    LOST_OR_STOLEN = "lost_or_stolen"


class TestOutcome(StrEnum):
    """Result of the DCC's test of a returned hub."""

    __test__ = False  # not a pytest test class

    FAULT_CONFIRMED = "fault_confirmed"
    NO_FAULT_FOUND = "no_fault_found"


#: (path, status, step) -> new status. The only place lifecycle order is defined.
TRANSITIONS: Final[Mapping[tuple[HubPath, ReturnStatus, Step], ReturnStatus]] = MappingProxyType(
    {
        (HubPath.RETURNED, ReturnStatus.NOTIFIED, Step.COLLECT): ReturnStatus.COLLECTED,
        (HubPath.RETURNED, ReturnStatus.COLLECTED, Step.RECEIVE): ReturnStatus.RECEIVED,
        (HubPath.RETURNED, ReturnStatus.RECEIVED, Step.TEST): ReturnStatus.TESTED,
        (HubPath.RETURNED, ReturnStatus.TESTED, Step.CLOSE): ReturnStatus.CLOSED,
        (HubPath.LOST_OR_STOLEN, ReturnStatus.NOTIFIED, Step.WRITE_OFF): ReturnStatus.WRITTEN_OFF,
    }
)

_ORDER: Final = {
    HubPath.RETURNED: "notified → collected → received → tested → closed",
    HubPath.LOST_OR_STOLEN: "a lost or stolen hub is never collected: notified → written_off",
}


def is_lost_or_stolen(return_type: str) -> bool:
    return return_type == NoFaultReturnType.LOST_OR_STOLEN.value


def path_of(return_type: str) -> HubPath:
    """The path of a return from its DUIS return type."""
    return HubPath.LOST_OR_STOLEN if is_lost_or_stolen(return_type) else HubPath.RETURNED


def allowed_steps(path: HubPath, status: ReturnStatus) -> tuple[Step, ...]:
    return tuple(step for (way, state, step) in TRANSITIONS if way is path and state is status)


def next_status(return_id: int, current: ReturnStatus, step: Step, path: HubPath) -> ReturnStatus:
    """The status after ``step``, or ``Conflict`` naming what is allowed instead."""
    new = TRANSITIONS.get((path, current, step))
    if new is None:
        allowed = allowed_steps(path, current)
        hint = (
            f"From {current.value} the next step is {' or '.join(s.value for s in allowed)}."
            if allowed
            else f"A {current.value} return takes no further steps."
        )
        what = "lost or stolen hub return" if path is HubPath.LOST_OR_STOLEN else "return"
        raise Conflict(
            f"{what} {return_id} is {current.value}; it cannot be {_past(step)} now",
            f"{hint} Order: {_ORDER[path]}.",
            field="step",
        )
    return new


def _past(step: Step) -> str:
    return {
        Step.COLLECT: "collected",
        Step.RECEIVE: "received",
        Step.TEST: "tested",
        Step.CLOSE: "closed",
        Step.WRITE_OFF: "written off",
    }[step]
