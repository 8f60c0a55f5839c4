"""Every demo scenario through real HTTP on SQLite and PostgreSQL, with the database
checked afterwards: accepted requests leave exactly one return, refusals leave
only their audit row."""

from __future__ import annotations

import threading

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.codes import ResponseCode
from hubreturns.dcc.store.models import AuditEntry, Device, ReplayCounter, ReturnRecord
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import SCENARIOS, DemoWorld, Scenario, run_scenarios, scenario_bodies


def test_every_scenario_gets_its_code_and_the_database_agrees(
    server: str, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    results = run_scenarios(server, world)
    assert [(r.scenario.name, r.received) for r in results] == [
        (s.name, s.expected_code) for s in SCENARIOS
    ]
    assert all(r.signature_ok for r in results)

    accepted = [s for s in SCENARIOS if s.expected is ResponseCode.I99]
    with seeded() as session:
        records = session.scalars(select(ReturnRecord).order_by(ReturnRecord.id)).all()
        audit = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [(r.originator, r.device_id) for r in records] == [
            (s.sender, s.device) for s in accepted
        ]
        assert [a.code for a in audit] == [s.expected_code for s in SCENARIOS]
        assert sum(a.accepted for a in audit) == len(accepted)
        for record in records:
            device = session.get(Device, record.device_id)
            assert device is not None
            assert device.open_return_id == record.id
            assert record.request_xml is not None
        rsa_return = next(r for r in records if r.role == "RSA")
        assert rsa_return.on_behalf_of == "90-B3-D5-1F-30-01-00-00"
        assert rsa_return.smi_status_at_return == "Pending"
        untouched = session.get(Device, "00-DB-12-34-56-78-90-F2")
        assert untouched is not None
        assert untouched.open_return_id is None


def _first(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


def test_identical_requests_at_the_same_time_give_one_acceptance(
    server: str, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    ((_, body),) = scenario_bodies(
        world, [_first("IS fault return, Pending hub")], first_counter=77
    )
    barrier = threading.Barrier(8)
    codes: list[str] = []
    lock = threading.Lock()

    def send() -> None:
        with httpx.Client(base_url=server, timeout=60) as client:
            barrier.wait()
            reply = client.post(
                "/api/v1/serviceD", content=body, headers={"content-type": "application/xml"}
            )
        code = read_response(reply.content, world.dcc_certificates()).code
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == ["E48"] * 7 + ["I99"]
    with seeded() as session:
        assert len(session.scalars(select(ReturnRecord)).all()) == 1
        counter = session.get(ReplayCounter, "90-B3-D5-1F-30-01-00-00")
        assert counter is not None
        assert int(counter.last_counter) == 77
        assert len(session.scalars(select(AuditEntry)).all()) == 8


@pytest.mark.parametrize("counter", [0, 2**64 - 1])
def test_counter_extremes_are_accepted_and_stored_exactly(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], counter: int
) -> None:
    ((_, body),) = scenario_bodies(
        world, [_first("IS fault return, Pending hub")], first_counter=counter
    )
    with httpx.Client(base_url=server) as client:
        reply = client.post(
            "/api/v1/serviceD", content=body, headers={"content-type": "application/xml"}
        )
    assert read_response(reply.content, world.dcc_certificates()).code == ResponseCode.I99
    with seeded() as session:
        stored = session.scalar(select(ReplayCounter.last_counter))
        assert stored is not None
        assert int(stored) == counter
