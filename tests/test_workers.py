"""``hubreturns serve --workers 2`` on PostgreSQL: two uvicorn worker processes share one
database and answer every demo scenario correctly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import SERVE_ENV
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.dcc.serving import free_port
from hubreturns.dcc.store.repository import Repository
from hubreturns.user.scenarios import SCENARIOS, DemoWorld, run_scenarios

SCRIPT = Path(sys.executable).with_name("hubreturns")


@pytest.fixture
def served(database_url: str, seeded: sessionmaker[Session], tmp_path: Path) -> Iterator[str]:
    """The CLI's multi-worker server on the seeded database; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
    env["HUBRETURNS_DATABASE_URL"] = database_url
    env |= SERVE_ENV
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(
        [str(SCRIPT), "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield url
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_workers_on_postgresql_answer_every_scenario(
    served: str, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    results = run_scenarios(served, world)
    failed = [(r.scenario.name, r.received, r.detail) for r in results if not r.passed]
    assert failed == []
    assert "server" not in httpx.get(f"{served}/healthz").headers  # the stack is not named
    assert len(results) == len(SCENARIOS)
    with seeded() as session:
        counts = Repository(session).counts()
    assert counts["returns"] == 4
    assert counts["audit_log"] == len(SCENARIOS)
