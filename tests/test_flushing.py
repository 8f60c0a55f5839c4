"""The group commit's flush policy on its own: observations in, a hold out (no database)."""

from __future__ import annotations

from hubreturns.dcc.flushing import FlushPolicy, Load

HOLD = 0.003


def _steady(policy: FlushPolicy, gap: float, count: int, load: Load | None = None) -> float:
    """``count`` jobs ``gap`` seconds apart; returns the time of the last."""
    now = 100.0
    for _ in range(count):
        now += gap
        policy.job(now, load)
    return now


def test_jobs_coming_often_hold_the_batch_and_rare_ones_do_not() -> None:
    busy, quiet = FlushPolicy(HOLD), FlushPolicy(HOLD)
    _steady(busy, 0.0005, 60)
    _steady(quiet, 0.05, 60)
    assert busy.hold_for(1) == HOLD
    assert quiet.hold_for(1) == 0.0
    assert (busy.holds, quiet.holds) == (1, 0)


def test_a_hold_that_gathers_nothing_stops_holding_but_for_rarer_probes() -> None:
    policy = FlushPolicy(HOLD)
    _steady(policy, 0.0005, 60)
    for _ in range(30):  # a sequential client: every held batch ends with its one job
        if policy.hold_for(1):
            policy.ended(1)
    held = sum(1 for _ in range(200) if policy.hold_for(1) and (policy.ended(1) or True))
    assert 0 < held <= 200 // 16  # probes only, growing rarer
    policy.ended(4)  # a probe that gathered company: holding pays again
    assert sum(1 for _ in range(16) if policy.hold_for(1)) >= 1


def test_with_every_client_in_the_batch_it_goes_at_once() -> None:
    policy = FlushPolicy(HOLD)
    _steady(policy, 0.0005, 60, Load(clients=3))
    assert policy.hold_for(3) == 0.0  # all in before the hold began
    assert policy.hold_for(1) == HOLD
    assert not policy.ends_early(2)
    assert policy.ends_early(3)
    assert (policy.holds, policy.holds_ended_early) == (1, 1)


def test_a_request_on_its_way_keeps_the_batch_open_until_its_job_comes() -> None:
    policy = FlushPolicy(HOLD)
    late = policy.arrived()  # received; its body is still being read
    policy.job(1.0, Load(clients=2, arrival=policy.arrived()))  # the early one's job
    assert policy.arriving()
    assert not policy.all_in(2)
    policy.job(1.001, Load(clients=2, arrival=late))
    assert not policy.arriving()
    assert policy.all_in(2)
    late.close()  # the edge closes it again when the request ends: counted out once
    assert not policy.arriving()
    policy.arrived()  # a new one counts again
    assert policy.arriving()


def test_a_mark_separates_requests_in_flight_from_those_that_come_later() -> None:
    """The writer waits for the requests in flight when it took its batch, not for
    a stream that keeps coming: those go in the next batch."""
    policy = FlushPolicy(HOLD)
    before = policy.arrived()
    mark = policy.mark()
    after = policy.arrived()
    assert policy.arriving(before=mark)
    before.close()
    assert not policy.arriving(before=mark)  # only the later one is open
    assert policy.arriving()
    assert policy.arriving(before=policy.mark())  # for the next batch, it is in flight
    after.close()
    assert not policy.arriving()


def test_a_request_that_brings_no_job_stops_counting_once_closed() -> None:
    policy = FlushPolicy(HOLD)
    gone = policy.arrived()  # the client will leave before its body is read
    policy.job(1.0, Load(clients=1))
    assert policy.arriving()
    assert not policy.all_in(1)
    gone.close()
    assert not policy.arriving()
    assert policy.all_in(1)


def test_without_a_load_only_time_ends_a_hold_and_zero_never_holds() -> None:
    policy = FlushPolicy(HOLD)
    _steady(policy, 0.0005, 60)
    assert not policy.all_in(1000)
    never = FlushPolicy(0.0)
    _steady(never, 0.0005, 60)
    assert never.hold_for(1) == 0.0
