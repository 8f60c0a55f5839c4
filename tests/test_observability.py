"""/metrics and the JSON logs, through real HTTP (and ``hubreturns serve --workers 2``)."""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SERVE_ENV
from prometheus_client.parser import text_string_to_metric_families

from hubreturns.codes import ResponseCode
from hubreturns.dcc.config import Settings
from hubreturns.dcc.observability import (
    JsonFormatter,
    Metrics,
    configure_logging,
    json_handler,
    metrics_for,
    process_metrics,
)
from hubreturns.dcc.processing import Outcome, Processor
from hubreturns.dcc.service import create_app
from hubreturns.dcc.serving import free_port, running_server
from hubreturns.dcc.store.db import make_engine, make_sessionmaker, migrate
from hubreturns.demo import seed
from hubreturns.model import Endpoint
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import (
    SCENARIOS,
    USERS,
    DemoWorld,
    Scenario,
    run_scenarios,
    scenario_bodies,
    scenario_request,
)

HUBRETURNS = Path(sys.executable).with_name("hubreturns")
UNAUTHENTICATED = {"E46", "E31", "E40", "E41", "E42", "E43", "E1"}
ROLES = {user_id: role for user_id, role, *_ in USERS}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str) -> Samples:
    reply = httpx.get(f"{base_url}/metrics", timeout=30)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over every label set that includes ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def expected_requests(scenarios: tuple[Scenario, ...]) -> collections.Counter[tuple[str, ...]]:
    """(variant, role, code) per scenario, as the service should label it."""
    expected: collections.Counter[tuple[str, ...]] = collections.Counter()
    for s in scenarios:
        code = s.expected_code
        role = "unknown" if code in UNAUTHENTICATED else ROLES[s.sender]
        # An unreadable document has no header to echo: the answer says 8.14.3.
        variant = "8.14.3" if code == "E46" else s.kind.variant
        expected[(variant, role, code)] += 1
    return expected


def test_metrics_count_the_demo_scenarios(server: str, world: DemoWorld) -> None:
    results = run_scenarios(server, world)
    assert all(r.passed for r in results)
    samples = scrape(server)

    counted = collections.Counter(
        {
            (dict(lab)["service_reference_variant"], dict(lab)["role"], dict(lab)["code"]): v
            for (name, lab), v in samples.items()
            if name == "hubreturns_requests_total" and v
        }
    )
    assert counted == expected_requests(SCENARIOS)
    assert total(samples, "hubreturns_requests_total", channel="duis") == len(SCENARIOS)
    by_code = collections.Counter(s.expected_code for s in SCENARIOS)
    for code in ("E40", "E41", "E42", "E43"):
        assert total(samples, "hubreturns_signature_failures_total", code=code) == by_code[code]
    assert total(samples, "hubreturns_signature_failures_total") == 5
    assert total(samples, "hubreturns_replays_total") == by_code["E48"] == 1
    assert total(samples, "hubreturns_returns_accepted_total", channel="duis") == by_code["I99"]
    assert total(samples, "hubreturns_returns_accepted_total", channel="servicedesk") == 0
    assert total(samples, "hubreturns_request_duration_seconds_count") == len(SCENARIOS)
    assert total(samples, "hubreturns_request_duration_seconds_sum") > 0
    assert total(
        samples, "hubreturns_http_request_duration_seconds_count", route="/api/v1/{endpoint}"
    ) == len(SCENARIOS)
    assert total(samples, "hubreturns_http_requests_in_progress") == 1  # this scrape
    # Every request's writes (its audit row, and the return if accepted) were committed
    # in some batch: the batch sizes add up to the requests, in at most as many commits.
    assert total(samples, "hubreturns_commit_batch_size_sum") == len(SCENARIOS)
    assert 1 <= total(samples, "hubreturns_commit_batch_size_count") <= len(SCENARIOS)


def test_a_certificate_is_read_from_the_store_once_then_served_from_the_cache(
    server: str, world: DemoWorld
) -> None:
    first = next(s for s in SCENARIOS if s.name == "IS fault return, Pending hub")
    reads = []
    for _, body in scenario_bodies(world, [first, first, first]):
        reply = httpx.post(
            f"{server}/api/v1/{first.endpoint.value}",
            content=body,
            timeout=30,
            headers={"content-type": "application/xml"},
        )
        assert reply.status_code in (200, 409)
        reads.append(total(scrape(server), "hubreturns_certificate_store_reads_total"))
    assert reads == [1, 1, 1]


def test_desk_outcomes_are_counted_by_channel(server: str, processor: Processor) -> None:
    request = scenario_request(SCENARIOS[0], counter=1)
    outcome = processor.handle_desk(request, entered_by="desk.operator")
    assert outcome.verdict is ResponseCode.I99
    samples = scrape(server)
    assert total(samples, "hubreturns_returns_accepted_total", channel="servicedesk") == 1
    assert total(samples, "hubreturns_returns_accepted_total", channel="duis") == 0
    assert (
        total(samples, "hubreturns_requests_total", channel="servicedesk", role="IS", code="I99")
        == 1
    )


def test_a_second_app_registers_without_error_and_counts_once(
    server: str, processor: Processor, settings: Settings, world: DemoWorld
) -> None:
    """Two apps on one processor share its metrics; another processor has its own."""
    with running_server(create_app(processor, settings)) as second:
        results = run_scenarios(second, world, SCENARIOS[:3])
        assert [r.received for r in results] == ["I99", "I99", "I99"]
        assert total(scrape(second), "hubreturns_requests_total") == 3
    assert total(scrape(server), "hubreturns_requests_total") == 3
    other = Processor(
        processor.engine,
        signer=processor.signer,
        policy=processor.policy,
        access_control_broker=processor.access_control_broker,
    )
    with running_server(create_app(other, settings)) as third:
        assert total(scrape(third), "hubreturns_requests_total") == 0
    assert metrics_for(processor) is processor.telemetry  # one set, wired by build_service


# -- logs ------------------------------------------------------------------------------


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every log record of the test, as our JSON lines, from the root logger."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _count(lines: list[dict[str, Any]], logger: str) -> int:
    return sum(line["logger"] == logger for line in lines)


def _lines_once(
    stream: io.StringIO, ready: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The JSON lines, once ``ready`` says all expected ones are there (or after 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        if ready(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


class _Noisy:
    """Telemetry that also logs from inside the request, as any code there might."""

    def __init__(self, inner: Metrics) -> None:
        self.inner = inner

    def outcome(self, outcome: Outcome) -> None:
        logging.getLogger("tests.inside").warning("observed %s", outcome.code)
        self.inner.outcome(outcome)

    def certificate_read(self) -> None:
        self.inner.certificate_read()

    def batch(self, size: int) -> None:
        self.inner.batch(size)


def test_every_line_of_a_request_carries_its_request_id(
    processor: Processor, settings: Settings, world: DemoWorld, json_lines: io.StringIO
) -> None:
    noisy = Processor(
        processor.engine,
        signer=processor.signer,
        policy=processor.policy,
        access_control_broker=processor.access_control_broker,
        telemetry=_Noisy(process_metrics()),
    )
    dcc = world.dcc_certificates()
    expected: dict[str, str | None] = {}
    with (
        running_server(create_app(noisy, settings)) as server,
        httpx.Client(base_url=server, timeout=30) as client,
    ):
        for n, (scenario, body) in enumerate(scenario_bodies(world)):
            http_id = f"t-{n}"
            reply = client.post(
                f"/api/v1/{scenario.endpoint.value}",
                content=body,
                headers={"content-type": "application/xml", "x-request-id": http_id},
            )
            assert reply.headers["x-request-id"] == http_id
            expected[http_id] = read_response(reply.content, dcc).request_id
    # The access line is written after the response has gone out.
    lines = _lines_once(json_lines, lambda ls: _count(ls, "hubreturns.http") == len(expected))
    assert lines
    for line in lines:
        assert {"ts", "level", "logger", "message", "request_id", "http_request_id"} <= set(line)
        datetime.fromisoformat(line["ts"])
    by_exchange = collections.defaultdict(list)
    for line in lines:
        if line["http_request_id"] is not None:
            by_exchange[line["http_request_id"]].append(line)
    assert set(by_exchange) == set(expected)
    for http_id, group in by_exchange.items():
        assert {g["logger"] for g in group} == {"hubreturns.http", "tests.inside"}, http_id
        assert {g["request_id"] for g in group} == {expected[http_id]}, group
    # Requests that could be read carry a RequestID; unreadable XML has none.
    assert sum(v is None for v in expected.values()) == 2  # "Not XML" and the DOCTYPE
    # One line per exchange: the access line carries the outcome.
    assert _count(lines, "hubreturns.requests") == 0
    access_lines = [g for g in lines if g["logger"] == "hubreturns.http"]
    assert collections.Counter(g["code"] for g in access_lines) == collections.Counter(
        s.expected_code for s in SCENARIOS
    )
    for g in access_lines:
        assert g["processing_seconds"] >= 0
        assert g["elapsed_seconds"] >= g["processing_seconds"]
        assert {"role", "reason", "channel", "service_reference_variant"} <= set(g)
        assert g["message"].endswith(f"{g['code']}: {g['reason']}")


def test_outside_http_each_outcome_gets_a_line_of_its_own(
    processor: Processor, world: DemoWorld, json_lines: io.StringIO
) -> None:
    bodies = list(scenario_bodies(world))
    for scenario, body in bodies:
        processor.handle_duis(body, scenario.endpoint)
    lines = _lines_once(json_lines, lambda ls: _count(ls, "hubreturns.requests") == len(bodies))
    outcomes = [g for g in lines if g["logger"] == "hubreturns.requests"]
    assert collections.Counter(g["code"] for g in outcomes) == collections.Counter(
        s.expected_code for s in SCENARIOS
    )
    assert all(g["http_request_id"] is None and g["http_status"] >= 200 for g in outcomes)
    assert _count(lines, "hubreturns.http") == 0


def test_a_generated_http_request_id_when_the_client_sends_none_or_junk(
    server: str, json_lines: io.StringIO
) -> None:
    first = httpx.get(f"{server}/healthz")
    junk = httpx.get(f"{server}/healthz", headers={"x-request-id": "a b\tc" * 30})
    ids = {first.headers["x-request-id"], junk.headers["x-request-id"]}
    assert len(ids) == 2
    assert all(len(i) == 32 for i in ids)
    access = _lines_once(json_lines, lambda ls: _count(ls, "hubreturns.http") == 2)
    assert {a["http_request_id"] for a in access if a["logger"] == "hubreturns.http"} == ids


def test_json_formatter_outside_a_request_with_exception_and_extras() -> None:
    record: logging.LogRecord | None = None

    class Keep(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            nonlocal record
            record = rec

    log = logging.getLogger("tests.formatter")
    keep = Keep()
    log.addHandler(keep)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.error("failed for %s", "x", exc_info=True, extra={"device": "00-DB"})
    finally:
        log.removeHandler(keep)
    assert record is not None
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed for x"
    assert line["level"] == "ERROR"
    assert line["device"] == "00-DB"
    assert line["request_id"] is None
    assert line["http_request_id"] is None
    assert "ValueError: boom" in line["exception"]


def test_the_access_line_is_the_same_written_directly_or_through_logging(
    server: str, world: DemoWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only ``configure_logging``'s handler in the way the access line is written
    straight to it; with anything else in the way it goes through ``logging``."""
    from hubreturns.dcc import observability

    calls: list[str] = []
    original = observability.http_log.info

    def counted(*args: Any, **kwargs: Any) -> None:
        calls.append("logging")
        original(*args, **kwargs)

    monkeypatch.setattr(observability.http_log, "info", counted)
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    stream = io.StringIO()
    other = logging.NullHandler()
    scenario = next(s for s in SCENARIOS if s.name == "User ID not registered")
    (_, direct), (_, through) = scenario_bodies(world, [scenario, scenario], first_counter=60)
    try:
        configure_logging("info", stream)
        with httpx.Client(base_url=server, timeout=30) as client:
            headers = {"content-type": "application/xml", "x-request-id": "same-id"}
            client.post("/api/v1/serviceD", content=direct, headers=headers)
            _lines_once(stream, lambda ls: _count(ls, "hubreturns.http") == 1)
            assert calls == []  # written directly
            observability.http_log.addHandler(other)  # something else wants the records
            client.post("/api/v1/serviceD", content=through, headers=headers)
            _lines_once(stream, lambda ls: _count(ls, "hubreturns.http") == 2)
            assert calls == ["logging"]
    finally:
        observability.http_log.removeHandler(other)
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)
    first, second = (
        json.loads(line) for line in stream.getvalue().splitlines() if '"hubreturns.http"' in line
    )
    assert list(first) == list(second)  # the same fields in the same order
    varying = {"ts", "request_id", "client", "elapsed_seconds", "processing_seconds"}
    assert {k: v for k, v in first.items() if k not in varying} == {
        k: v for k, v in second.items() if k not in varying
    }
    assert first["http_request_id"] == "same-id"
    assert first["code"] == "E1"


def test_configure_logging_replaces_root_handlers_and_rejects_bad_levels() -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging("debug", stream)
        configure_logging("info", stream)  # idempotent: one handler, not two
        assert len(root.handlers) == 1
        logging.getLogger("uvicorn.error").info("started")
        logging.getLogger("uvicorn.access").info("GET / 200")  # ours replaces it
        with pytest.raises(ValueError, match="unknown log level"):
            configure_logging("loud", stream)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)
        logging.getLogger("uvicorn.access").disabled = False
    lines = [json.loads(s) for s in stream.getvalue().splitlines()]
    assert [(ln["logger"], ln["message"]) for ln in lines] == [("uvicorn.error", "started")]


def test_serve_refuses_an_unknown_log_level() -> None:
    done = subprocess.run(
        [str(HUBRETURNS), "serve", "--log-level", "loud"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown log level 'loud'" in done.stderr


# -- several worker processes ----------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_serve_with_two_workers_reports_service_wide_totals(
    database_url: str, world: DemoWorld, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    seed(make_sessionmaker(engine), world, datetime.now(UTC))
    engine.dispose()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale file of an earlier run")
    port = free_port()
    env = {
        **os.environ,
        "HUBRETURNS_DATABASE_URL": database_url,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **SERVE_ENV,
    }
    env.pop("HUBRETURNS_CONFIG", None)
    log_file = tmp_path / "serve.log"
    with log_file.open("a") as log_sink:  # O_APPEND: two workers share it
        server = subprocess.Popen(
            [
                str(HUBRETURNS),
                "serve",
                "--port",
                str(port),
                "--workers",
                "2",
                "--log-level",
                "info",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_sink,
            cwd=tmp_path,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, server, log_file)
        # Device not in the inventory (E19): authenticated, decided, refused,
        # and the request changes no state, so every counter value is usable.
        unknown_hub = next(s for s in SCENARIOS if s.expected is ResponseCode.E19)
        sent = 0

        def send(body: bytes) -> str:
            with httpx.Client(timeout=30) as client:  # a new connection each time
                reply = client.post(
                    f"{base}/api/v1/{Endpoint.NON_DEVICE.value}",
                    content=body,
                    headers={"content-type": "application/xml"},
                )
            return reply.headers["x-duis-response-code"]

        # Batches until both workers have answered (each writes its own sample file);
        # on a loaded machine the second worker may still be starting for a while.
        deadline = time.monotonic() + 120
        with ThreadPoolExecutor(8) as pool:
            while time.monotonic() < deadline:
                batch = scenario_bodies(world, [unknown_hub] * 24, first_counter=sent + 1)
                codes = list(pool.map(send, [body for _, body in batch]))
                assert set(codes) == {"E19"}
                sent += len(codes)
                if len(_worker_files(metrics_dir)) >= 2:
                    break
        assert len(_worker_files(metrics_dir)) == 2, f"one worker answered all {sent} requests"
        assert not (metrics_dir / "counter_999999.db").exists()

        # Whichever worker answers the scrape, it reports both workers' requests.
        for _ in range(6):
            samples = scrape(base)  # a new connection: may reach either worker
            assert total(samples, "hubreturns_requests_total") == sent
            assert (
                total(samples, "hubreturns_requests_total", code="E19", role="IS", channel="duis")
                == sent
            )
            assert total(samples, "hubreturns_request_duration_seconds_count") == sent
            assert (
                total(
                    samples,
                    "hubreturns_http_request_duration_seconds_count",
                    route="/api/v1/{endpoint}",
                )
                == sent
            )

        # A worker that dies keeps its counts; its live gauge is dropped at the next scrape.
        victim = int(sorted(_worker_files(metrics_dir))[0])
        os.kill(victim, signal.SIGKILL)  # a grandchild this test started
        _wait_gone(victim)
        samples = scrape(base)
        assert total(samples, "hubreturns_requests_total") == sent
        assert not (metrics_dir / f"gauge_livesum_{victim}.db").exists()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise AssertionError("serve did not stop within 120 s of SIGINT") from None
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    outcomes = [ln for ln in lines if ln["logger"] == "hubreturns.http" and "code" in ln]
    assert len(outcomes) == sent
    assert {ln["request_id"] for ln in outcomes} == {
        str(scenario_request(unknown_hub, counter).request_id) for counter in range(1, sent + 1)
    }
    assert not list(metrics_dir.glob("gauge_live*")), "workers marked dead on exit"


def _worker_files(folder: Path) -> set[str]:
    """Pids of the workers that have counted an E19 (their sample files name the labels)."""
    return {
        p.stem.rsplit("_", 1)[-1] for p in folder.glob("counter_*.db") if b'"E19"' in p.read_bytes()
    }


def _wait_gone(pid: int) -> None:
    """Until ``pid`` is a zombie or has been reaped by uvicorn's supervisor."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                return
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} still exists")


def _wait_ready(base: str, server: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + 180  # workers import slowly on a loaded host
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"serve exited: {log_file.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not become ready within 180 s")


def test_route_labels_are_full_templates_with_the_mount_prefix(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        assert client.get("/desk/returns").status_code == 303  # sign-in first
        assert client.get("/desk/returns/7").status_code == 303
        assert client.get("/desk/no-such-page").status_code in (303, 404)
        client.get("/api/ops/openapi.json")
        assert client.get("/no-such-page").status_code == 404
    samples = scrape(server)
    routes = {
        dict(labels)["route"]
        for (name, labels), _ in samples.items()
        if name == "hubreturns_http_request_duration_seconds_count"
    }
    assert {
        "/desk/returns",
        "/desk/returns/{return_id:int}",
        "/desk/unmatched",
        "/api/ops/openapi.json",
        "unmatched",
    } <= routes
    # nothing is labelled by the inner path alone, where desk and API routes would merge
    assert not {"/returns", "/returns/{return_id:int}", "/openapi.json"} & routes
    assert all(r == "unmatched" or r.startswith("/") for r in routes)


def test_json_lines_carry_no_terminal_colour_codes() -> None:
    record: logging.LogRecord | None = None

    class Keep(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            nonlocal record
            record = rec

    log = logging.getLogger("uvicorn.error")
    keep = Keep()
    log.addHandler(keep)
    try:
        # as uvicorn logs it: a plain message, and a coloured copy in "color_message"
        log.warning(
            "Uvicorn running on %s (\x1b[32mgreen\x1b[0m)",
            "http://127.0.0.1:8000",
            extra={"color_message": "Uvicorn running on \x1b[1m%s\x1b[0m"},
        )
    finally:
        log.removeHandler(keep)
    assert record is not None
    text = JsonFormatter().format(record)
    assert "\x1b" not in text
    assert "\\u001b" not in text
    line = json.loads(text)
    assert "color_message" not in line
    assert line["message"] == "Uvicorn running on http://127.0.0.1:8000 (green)"
