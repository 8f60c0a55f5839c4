"""Lock-step stages: the steps of requests handed in during one turn of the loop run
together, step by step, each request still seeing its own steps in order; a failure
ends only its own request; log context follows each request."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from hubreturns.dcc.stages import Stages, Steps, complete, one_step

_who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def _steps(name: str, count: int, trace: list[str], *, fail_at: int | None = None) -> Steps[str]:
    for step in range(count):
        if step == fail_at:
            raise ValueError(f"{name} failed at step {step}")
        trace.append(f"{name}{step}:{_who.get()}")
        yield
    return f"{name} done"


def test_complete_runs_steps_straight_through() -> None:
    trace: list[str] = []
    assert complete(_steps("a", 3, trace)) == "a done"
    assert trace == ["a0:nobody", "a1:nobody", "a2:nobody"]
    with pytest.raises(ValueError, match="b failed at step 1"):
        complete(_steps("b", 3, trace, fail_at=1))
    assert complete(one_step(lambda: 42)) == 42


def test_requests_handed_in_together_run_their_steps_in_lock_step() -> None:
    stages = Stages()
    trace: list[str] = []

    async def request(name: str, count: int) -> str:
        _who.set(name)
        return await stages.run(_steps(name, count, trace))

    async def main() -> list[str]:
        return list(await asyncio.gather(request("a", 3), request("b", 1), request("c", 2)))

    assert asyncio.run(main()) == ["a done", "b done", "c done"]
    # Step by step across requests, each in its own context; a short one drops out.
    assert trace == ["a0:a", "b0:b", "c0:c", "a1:a", "c1:c", "a2:a"]
    assert (stages.requests, stages.together, stages.groups) == (3, 3, 1)


def test_a_failing_step_ends_its_own_request_only() -> None:
    stages = Stages(pays=0)  # always in lock-step
    trace: list[str] = []

    async def main() -> list[object]:
        return list(
            await asyncio.gather(
                stages.run(_steps("a", 3, trace)),
                stages.run(_steps("b", 3, trace, fail_at=1)),
                stages.run(_steps("c", 3, trace)),
                return_exceptions=True,
            )
        )

    first, second, third = asyncio.run(main())
    assert (first, third) == ("a done", "c done")
    assert isinstance(second, ValueError)
    assert str(second) == "b failed at step 1"
    steps = ["a0", "b0", "c0", "a1", "c1", "a2", "c2"]  # b's second step raised
    assert trace == [f"{step}:nobody" for step in steps]


async def _turns(stages: Stages, sizes: list[int], trace: list[str]) -> None:
    """``sizes[i]`` requests reach ``stages`` together, one group after another."""
    for turn, size in enumerate(sizes):
        await asyncio.gather(*(stages.run(_steps(f"t{turn}r{n}-", 2, trace)) for n in range(size)))


def test_requests_that_come_one_at_a_time_run_at_once_and_lock_step_returns_with_company() -> None:
    stages = Stages()
    trace: list[str] = []
    asyncio.run(_turns(stages, [1] * 20, trace))
    # The first was run in lock-step (a group of one), then each at once: its own
    # steps back to back, without waiting for the end of a turn.
    assert (stages.requests, stages.together, stages.groups) == (20, 1, 1)
    assert trace[-2:] == ["t19r0-0:nobody", "t19r0-1:nobody"]

    trace.clear()
    asyncio.run(_turns(stages, [16] * 3, trace))
    # The first crowd ran at once, one request after another; seeing it brought
    # lock-step back for the next two.
    assert trace[:4] == ["t0r0-0:nobody", "t0r0-1:nobody", "t0r1-0:nobody", "t0r1-1:nobody"]
    assert trace[32:35] == ["t1r0-0:nobody", "t1r1-0:nobody", "t1r2-0:nobody"]
    assert (stages.requests, stages.together, stages.groups) == (68, 33, 3)


def test_a_cancelled_waiter_does_not_stop_the_others() -> None:
    stages = Stages(pays=0)
    trace: list[str] = []

    async def main() -> str:
        gone = asyncio.ensure_future(stages.run(_steps("a", 2, trace)))
        kept = asyncio.ensure_future(stages.run(_steps("b", 2, trace)))
        await asyncio.sleep(0)  # both reach the stage
        gone.cancel()
        return await kept

    assert asyncio.run(main()) == "b done"
    # The cancelled request's steps still ran (its work may already be committed).
    assert trace == ["a0:nobody", "b0:nobody", "a1:nobody", "b1:nobody"]
