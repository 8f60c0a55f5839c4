"""Sections 3 and 5: the request path in process (bytes in, signed bytes out, database included).

Pre-signed mixed requests (80 % accepted) go to the ``Processor`` directly,
each outcome checked against the code it must get, so a fast wrong answer
cannot pass for a fast right one: once one at a time (``handle_duis``: each
request waits for its own commit), and with 64 in flight on an event loop
(``handle_duis_async``, the service's own arrangement without HTTP: requests
that arrive together share a commit). Section 5 runs the one-at-a-time
measurement over inventories of growing size and with 100k users/certificates
(a cold certificate cache: nearly every request names a certificate not seen
before). CPU figures are the process's CPU time (all its threads).
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import Section, pg_available, pg_bench_url, sqlite_url, throughput
from benchmarks.world import Body, build_world, mixed_bodies, populate, reset
from hubreturns.codes import DEFAULT_PROFILE, ResponseCode
from hubreturns.dcc.config import Settings
from hubreturns.dcc.observability import configure_logging
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.service import build_service, create_app
from hubreturns.model import Endpoint
from hubreturns.policy import REQUEST_POLICY
from hubreturns.wire.check import check
from hubreturns.wire.response import build_response

__all__ = ["InProcess", "measure", "measure_concurrent", "request_path", "scale"]


@dataclass(frozen=True, slots=True)
class InProcess:
    requests: int
    seconds: float
    accepted: int
    wrong: dict[str, int]
    #: CPU time of this process (request threads and the committer): unlike wall
    #: time, barely moved by other load on the machine.
    cpu_seconds: float
    #: Requests per commit (the group committer's batches).
    per_commit: float = 1.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_micros(self) -> float:
        return 1e6 * self.cpu_seconds / self.requests

    @property
    def accepted_rate(self) -> float:
        return self.accepted / self.seconds


def measure(url: str, bodies: list[Body], seconds: float) -> InProcess:
    """Feed ``bodies`` in order to a fresh Processor for up to ``seconds``."""
    reset(url)
    processor = build_service(Settings(database_url=url, allow_test_keys=True))
    wrong: Counter[str] = Counter()
    accepted = 0
    done = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    deadline = started + seconds
    try:
        for body in bodies:
            outcome = processor.handle_duis(body.data, Endpoint.NON_DEVICE)
            done += 1
            if outcome.verdict is not body.expected:
                wrong[f"{body.expected.value}->{outcome.code}"] += 1
            elif outcome.verdict is ResponseCode.I99:
                accepted += 1
            if done % 64 == 0 and time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        _close(processor)
    return InProcess(done, elapsed, accepted, dict(wrong), cpu)


def measure_concurrent(
    url: str,
    bodies: list[Body],
    seconds: float,
    *,
    concurrency: int = 64,
    warm: Iterable[tuple[str, int]] = (),
) -> InProcess:
    """As ``measure``, but ``concurrency`` requests in flight on one event loop.

    This is the service's own arrangement without HTTP: ``handle_duis_async``
    does the CPU work on the loop and awaits the committer, so requests that
    arrive together share a commit. Requests are taken in stream order;
    the certificates named in ``warm`` are cached first.
    """
    reset(url)
    processor = build_service(Settings(database_url=url, allow_test_keys=True))

    async def handle(data: bytes) -> str:
        return (await processor.handle_duis_async(data, Endpoint.NON_DEVICE)).code

    processor.certificates.read(warm)
    batches, jobs = processor.committer.batches, processor.committer.jobs
    try:
        result = asyncio.run(_in_flight(handle, bodies, seconds, concurrency))
    finally:
        _close(processor)
    commits = processor.committer.batches - batches
    per_commit = (processor.committer.jobs - jobs) / commits if commits else 1.0
    return replace(result, per_commit=per_commit)


def _close(processor: Processor) -> None:
    """Stop the processor's committer and close its database connections."""
    processor.close()
    processor.engine.dispose()


async def _in_flight(
    handle: Callable[[bytes], Awaitable[str]],
    bodies: list[Body],
    seconds: float,
    concurrency: int,
) -> InProcess:
    """Feed ``bodies`` in stream order to ``handle`` with ``concurrency`` in flight,
    for up to ``seconds``, checking each answer's code against the expected one."""
    wrong: Counter[str] = Counter()
    counts = {"done": 0, "accepted": 0}
    stream = iter(bodies)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        for body in stream:
            code = await handle(body.data)
            counts["done"] += 1
            if code != DEFAULT_PROFILE.code(body.expected):
                wrong[f"{body.expected.value}->{code}"] += 1
            elif body.expected is ResponseCode.I99:
                counts["accepted"] += 1
            if time.perf_counter() > deadline:
                return

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return InProcess(counts["done"], elapsed, counts["accepted"], dict(wrong), cpu)


def measure_app(
    url: str,
    bodies: list[Body],
    seconds: float,
    *,
    concurrency: int = 32,
    warm: Iterable[tuple[str, int]] = (),
    access_line: bool = True,
) -> InProcess:
    """As ``measure_concurrent``, through the whole ASGI app but without sockets.

    Each request is an ASGI exchange driven directly (scope, body, send), so
    the figure holds everything the service does per request except uvicorn
    and the kernel: the DUIS endpoint, the exchange's metrics and JSON access
    line (``configure_logging`` to ``/dev/null``, or with ``access_line``
    false not written at all), the processor and the committer.
    """
    reset(url)
    settings = Settings(database_url=url, allow_test_keys=True)
    processor = build_service(settings)
    app = create_app(processor, settings)
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below, after the run
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    configure_logging("info" if access_line else "warning", sink)

    async def exchange(body: bytes) -> str:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/v1/serviceD",
            "raw_path": b"/api/v1/serviceD",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/xml")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        code = ""

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = dict(message["headers"]).get(b"x-duis-response-code", b"").decode()

        await app(scope, receive, send)  # type: ignore[arg-type]
        return code

    processor.certificates.read(warm)
    try:
        return asyncio.run(_in_flight(exchange, bodies, seconds, concurrency))
    finally:
        _close(processor)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
        sink.close()


def request_path(
    folder: Path, *, seconds: float, requests: int, hubs: int, ceiling: float | None
) -> Section:
    section = Section("3. in-process request path (bytes -> signed response, database included)")
    world = build_world(1000)
    bodies = list(mixed_bodies(world, requests, hubs=hubs))
    certs = {u.certificate.key: u.certificate for u in world.users}
    signer = Settings(allow_test_keys=True).signer()
    now = datetime.now(UTC)
    accepted_bodies = [b.data for b in bodies if b.expected is ResponseCode.I99][:2000]

    def wire(i: int) -> None:
        request = check(
            accepted_bodies[i % len(accepted_bodies)],
            lambda issuer, serial: certs.get((issuer, serial)),
            REQUEST_POLICY,
            now,
        )
        build_response(
            request_id=request.request_id,
            code=ResponseCode.I99.value,
            service_reference="8.14",
            service_reference_variant="8.14.3",
            now=now,
            signer=signer,
        )

    wire_rate = throughput(wire, min(seconds, 3.0))
    section.add(
        "wire only: parse + XSD + verify + signed response (no database)",
        wire_rate,
        "req/s",
        baseline="wire / crypto ceiling",
        ratio=wire_rate / ceiling if ceiling else None,
    )
    section.data["wire_only"] = wire_rate
    engines = [("SQLite", sqlite_url(folder, "inprocess.db"))]
    if pg_available():
        engines.append(("PostgreSQL", pg_bench_url()))
    else:
        section.add("PostgreSQL", float("nan"), "req/s", note="PostgreSQL unreachable: skipped")
    keys = [u.certificate.key for u in world.users]
    for name, url in engines:
        populate(url, world, hubs)
        result = measure(url, bodies, seconds)
        section.add(
            f"{name}: one request at a time (mixed 80/20)",
            result.rate,
            "req/s",
            baseline="in-process / crypto ceiling",
            ratio=result.rate / ceiling if ceiling else None,
            note=f"{result.requests} requests, wrong answers: {result.wrong or 'none'}; "
            "each waits for its own commit",
        )
        section.add(f"{name}: CPU time, one at a time", result.cpu_micros, "µs/request")
        together = measure_concurrent(url, bodies, seconds, concurrency=64, warm=keys)
        section.add(
            f"{name}: 64 in flight on an event loop (mixed 80/20)",
            together.rate,
            "req/s",
            baseline="in-process / crypto ceiling",
            ratio=together.rate / ceiling if ceiling else None,
            note=f"{together.requests} requests, wrong answers: {together.wrong or 'none'}; "
            f"{together.per_commit:.1f} requests per commit",
        )
        section.add(f"{name}: CPU time, 64 in flight", together.cpu_micros, "µs/request")
        section.add(
            f"{name}: accepted, committed (64 in flight)",
            together.accepted_rate,
            "req/s",
            baseline="in-process / wire only",
            ratio=together.rate / wire_rate,
        )
        if name == "SQLite":
            app_runs = {
                line: measure_app(url, bodies, seconds, warm=keys, access_line=line)
                for line in (True, False)
            }
            full, quiet = app_runs[True], app_runs[False]
            section.add(
                f"{name}: the ASGI app in process, 32 in flight (mixed 80/20)",
                full.rate,
                "req/s",
                baseline="app / processor, 64 in flight",
                ratio=full.rate / together.rate,
                note=f"{full.requests} requests, wrong answers: {full.wrong or 'none'}; "
                f"{full.cpu_micros:.0f} µs CPU/request; no sockets, no uvicorn",
            )
            section.add(
                f"{name}: the ASGI app in process, without the access line",
                quiet.cpu_micros,
                "µs/request",
                baseline="CPU with the line / without",
                ratio=full.cpu_micros / quiet.cpu_micros,
                note=f"the JSON access line costs {full.cpu_micros - quiet.cpu_micros:.0f} µs "
                "of CPU a request",
            )
            section.data["app"] = {"cpu_micros": full.cpu_micros, "quiet": quiet.cpu_micros}
        section.data[name] = {
            "rate": result.rate,
            "accepted_rate": result.accepted_rate,
            "wrong": result.wrong,
            "cpu_micros": result.cpu_micros,
            "concurrent_rate": together.rate,
            "concurrent_accepted_rate": together.accepted_rate,
            "concurrent_wrong": together.wrong,
            "concurrent_cpu_micros": together.cpu_micros,
            "per_commit": together.per_commit,
        }
    return section


def scale(
    folder: Path,
    *,
    sizes: list[int],
    users: int,
    seconds: float,
    requests: int,
    postgres: bool,
    scale_rounds: int = 3,
) -> Section:
    """Per-request cost against inventory size, and with ``users`` users/certificates.

    The figure is CPU time of the request thread per request (the database is
    in process for SQLite), which other load on the machine barely moves;
    wall-clock rates are in the notes.
    """
    section = Section("5. scale: inventory size and number of users/certificates")
    world = build_world(1000)
    series: dict[str, list[tuple[int, float]]] = {}
    engines: list[tuple[str, Callable[[str], str]]] = [
        ("SQLite", lambda name: sqlite_url(folder, f"scale-{name}.db"))
    ]
    if postgres and pg_available():
        engines.append(("PostgreSQL", lambda _name: pg_bench_url()))
    for name, make_url in engines:
        # SQLite keeps one database per size, so the sizes are measured in
        # interleaved rounds and each figure is the median of its rounds: one
        # pass per size in turn let the machine's drift between passes pass for
        # a cost of size (1M hubs measured at 0.63x and at 1.71x of 10k in two
        # runs of one afternoon). PostgreSQL holds one inventory at a time.
        keeps_all = name == "SQLite"
        rounds = scale_rounds if keeps_all else 1

        def load(size: int, make_url: Callable[[str], str] = make_url) -> tuple[str, float]:
            url = make_url(str(size))
            started = time.perf_counter()
            populate(url, world, size)
            return url, time.perf_counter() - started

        bodies = {
            size: list(mixed_bodies(world, requests, hubs=size, spread=True)) for size in sizes
        }
        loaded: dict[int, tuple[str, float]] = (
            {size: load(size) for size in sizes} if keeps_all else {}
        )
        runs: dict[int, list[InProcess]] = {size: [] for size in sizes}
        for _ in range(rounds):
            for size in sizes:
                if not keeps_all:
                    loaded[size] = load(size)
                runs[size].append(measure(loaded[size][0], bodies[size], seconds))
        first: float | None = None
        for size in sizes:
            results = runs[size]
            micros = statistics.median(r.cpu_micros for r in results)
            first = first or micros
            wrong = {k: v for r in results for k, v in r.wrong.items()}
            section.add(
                f"{name}: {size:,} hubs, 1,000 users",
                micros,
                "CPU µs/req",
                baseline=f"vs {sizes[0]:,} hubs",
                ratio=micros / first,
                note=f"median of {len(results)} interleaved round(s): "
                + ", ".join(f"{r.cpu_micros:.0f}" for r in results)
                + f" µs; wall {statistics.median(r.rate for r in results):.0f} req/s; "
                f"inventory loaded in {loaded[size][1]:.0f} s"
                + (f"; wrong: {wrong}" if wrong else ""),
            )
            series.setdefault(name, []).append((size, micros))
        if users:
            many = build_world(users)
            url = make_url("users")
            hubs = max(sizes[0], 2 * users)
            populate(url, many, hubs)
            many_bodies = list(mixed_bodies(many, requests, hubs=hubs, spread=True))
            result = measure(url, many_bodies, seconds)
            micros = result.cpu_micros
            section.add(
                f"{name}: {hubs:,} hubs, {users:,} users/certificates",
                micros,
                "CPU µs/req",
                baseline=f"vs {sizes[0]:,} hubs, 1,000 users",
                ratio=micros / first if first else None,
                note=f"wall {result.rate:.0f} req/s; nearly every request names a certificate "
                "not yet cached" + (f"; wrong: {result.wrong}" if result.wrong else ""),
            )
    section.data["series"] = series
    return section
