"""Lock-step stages: the CPU work of requests that arrive together, one step at a time.

A request's work on the event loop (parse, schema, signature, reading the
fields) touches a lot of code and data (libxml2's parser and validator,
OpenSSL's curve tables, the interpreter's own), and on a busy server every
request's turn finds those caches cold: the steps of one request in between
the steps of a dozen others cost two to four times what they cost in a loop
of their own (one profiling run, py-spy on a worker at saturation: parsing
a request took about 48 µs there against 12 µs in a tight loop; docs/performance.md
has the benchmark figures). So a
request's work is written as a generator that yields between steps
(``Steps``), and ``Stages`` runs the steps of every request that arrived in
the same turn of the loop together: all the parses, then all the schema
checks, and so on. The order each request sees is unchanged and nothing
waits for company; while requests come one a turn, each runs straight
through at once (``Stages``).

``complete`` runs one request's steps straight through, for callers that are
not on an event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["Stages", "Steps", "complete", "one_step"]

T = TypeVar("T")

#: A request's work, yielding between steps; its return value is the result.
Steps = Generator[None, None, T]


def one_step(function: Callable[[], T]) -> Steps[T]:
    """``function`` as steps of one step."""
    yield from ()
    return function()


def complete(steps: Steps[T]) -> T:
    """Run ``steps`` to the end and return its result (exceptions propagate)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


class _Entry:
    __slots__ = ("context", "future", "steps")

    def __init__(
        self, steps: Steps[Any], future: asyncio.Future[Any], context: contextvars.Context
    ) -> None:
        self.steps = steps
        self.future = future
        self.context = context


#: Lock-step pays when at least this many requests reach a stage in one turn of the
#: loop, on average: below it, a request's steps run at once, in its own turn.
_PAYS = 2.0
#: Weight of the newest turn in the moving average of requests per turn.
_WEIGHT = 0.1


class Stages:
    """Runs the ``Steps`` of requests that reach it in one turn of the loop together.

    Lock-step costs each request a turn of the loop and a future; it pays
    only when requests come together. So while fewer than ``pays`` requests
    a turn reach it, on average (a moving average), each request's steps run
    at once in its own task, and the requests of each turn are only counted;
    above it, they wait for the end of the turn and run in lock-step. Each
    request's steps run in its task's context (a copy, in lock-step: log
    lines carry its request id); a step that raises ends that request only,
    its task receiving the exception.
    """

    def __init__(self, *, pays: float = _PAYS) -> None:
        self._pays = pays
        self._waiting: list[_Entry] = []
        #: Requests run at once in the current turn, and the moving average of
        #: requests per turn (at once or in lock-step).
        self._this_turn = 0
        self._per_turn = pays  # lock-step from the start, until requests are seen alone
        #: Requests run, and those run in lock-step in how many groups.
        self.requests = 0
        self.together = 0
        self.groups = 0

    async def run(self, steps: Steps[T]) -> T:
        """``steps``' result, at once or in lock-step with the turn's other requests."""
        loop = asyncio.get_running_loop()
        self.requests += 1
        if self._waiting or self._per_turn >= self._pays:
            future: asyncio.Future[T] = loop.create_future()
            if not self._waiting:
                loop.call_soon(self._run_waiting)
            self._waiting.append(_Entry(steps, future, contextvars.copy_context()))
            return await future
        if not self._this_turn:
            loop.call_soon(self._turn_ended)
        self._this_turn += 1
        return complete(steps)

    def _turn_ended(self) -> None:
        self._note(self._this_turn)
        self._this_turn = 0

    def _note(self, count: int) -> None:
        self._per_turn += _WEIGHT * (count - self._per_turn)

    def _run_waiting(self) -> None:
        group, self._waiting = self._waiting, []
        self.together += len(group)
        self.groups += 1
        self._note(len(group))
        while group:
            going: list[_Entry] = []
            for entry in group:
                try:
                    entry.context.run(next, entry.steps)
                except StopIteration as done:
                    _settle(entry.future, done.value, None)
                except Exception as error:  # the request's own failure, for its task
                    _settle(entry.future, None, error)
                else:
                    going.append(entry)
            group = going


def _settle(future: asyncio.Future[Any], value: object, error: Exception | None) -> None:
    if future.cancelled():  # the client went away meanwhile: nobody to tell
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
