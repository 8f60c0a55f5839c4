"""Sections 3 and 5: the request path in process (bytes in, signed bytes out, database included).

``Processor.handle_duis`` is called directly on one thread with pre-signed
mixed requests (80 % accepted), each outcome checked against the code it must
get, so a fast wrong answer cannot pass for a fast right one. Section 5 runs
the same measurement over inventories of growing size and with 100k
users/certificates (a cold certificate cache: nearly every request names a
certificate not seen before).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import Section, pg_available, pg_bench_url, sqlite_url, throughput
from benchmarks.world import Body, build_world, mixed_bodies, populate, reset
from hubreturns.codes import ResponseCode
from hubreturns.config import Settings
from hubreturns.model import Endpoint
from hubreturns.policy import REQUEST_POLICY
from hubreturns.processing import authenticate
from hubreturns.service import processor_from_settings
from hubreturns.wire.response import build_response

__all__ = ["InProcess", "measure", "request_path", "scale"]


@dataclass(frozen=True, slots=True)
class InProcess:
    requests: int
    seconds: float
    accepted: int
    wrong: dict[str, int]
    #: CPU time of this thread: unlike wall time, barely moved by other load on the machine.
    cpu_seconds: float

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
    processor = processor_from_settings(Settings(database_url=url))
    wrong: Counter[str] = Counter()
    accepted = 0
    done = 0
    started = time.perf_counter()
    cpu_started = time.thread_time()
    deadline = started + seconds
    try:
        for body in bodies:
            outcome = processor.handle_duis(body.data, Endpoint.NON_DEVICE)
            done += 1
            if outcome.code is not body.expected:
                wrong[f"{body.expected.value}->{outcome.code.value}"] += 1
            elif outcome.code is ResponseCode.I99:
                accepted += 1
            if done % 64 == 0 and time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - started
        cpu = time.thread_time() - cpu_started
    finally:
        engine = processor.sessions.kw.get("bind")
        if engine is not None:
            engine.dispose()
    return InProcess(done, elapsed, accepted, dict(wrong), cpu)


def request_path(
    folder: Path, *, seconds: float, requests: int, hubs: int, ceiling: float | None
) -> Section:
    section = Section("3. in-process request path (bytes -> signed response, database included)")
    world = build_world(1000)
    bodies = list(mixed_bodies(world, requests, hubs=hubs))
    certs = {u.certificate.key: u.certificate for u in world.users}
    signer = Settings().signer()
    now = datetime.now(UTC)
    accepted_bodies = [b.data for b in bodies if b.expected is ResponseCode.I99][:2000]

    def wire(i: int) -> None:
        request = authenticate(
            accepted_bodies[i % len(accepted_bodies)],
            lambda issuer, serial: certs.get((issuer, serial)),
            REQUEST_POLICY,
            now,
        )
        build_response(
            request_id=request.request_id,
            code=ResponseCode.I99,
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
    for name, url in engines:
        populate(url, world, hubs)
        result = measure(url, bodies, seconds)
        section.add(
            f"{name}: requests (mixed 80/20)",
            result.rate,
            "req/s",
            baseline="in-process / crypto ceiling",
            ratio=result.rate / ceiling if ceiling else None,
            note=f"{result.requests} requests, wrong answers: {result.wrong or 'none'}",
        )
        section.add(f"{name}: CPU time of the request thread", result.cpu_micros, "µs/request")
        section.add(
            f"{name}: accepted, committed",
            result.accepted_rate,
            "req/s",
            baseline="in-process / wire only",
            ratio=result.rate / wire_rate,
        )
        section.data[name] = {
            "rate": result.rate,
            "accepted_rate": result.accepted_rate,
            "wrong": result.wrong,
            "cpu_micros": result.cpu_micros,
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
) -> Section:
    """Per-request cost against inventory size, and with ``users`` users/certificates.

    The figure is CPU time of the request thread per request (the database is
    in process for SQLite), which other load on the machine barely moves;
    wall-clock rates are in the notes.
    """
    section = Section("5. scale: inventory size and number of users/certificates")
    engines = [("SQLite", lambda: sqlite_url(folder, "scale.db"))]
    if postgres and pg_available():
        engines.append(("PostgreSQL", pg_bench_url))
    world = build_world(1000)
    series: dict[str, list[tuple[int, float]]] = {}
    for name, make_url in engines:
        first: float | None = None
        for size in sizes:
            url = make_url()
            started = time.perf_counter()
            populate(url, world, size)
            load_seconds = time.perf_counter() - started
            bodies = list(mixed_bodies(world, requests, hubs=size, spread=True))
            result = measure(url, bodies, seconds)
            micros = result.cpu_micros
            first = first or micros
            section.add(
                f"{name}: {size:,} hubs, 1,000 users",
                micros,
                "CPU µs/req",
                baseline=f"vs {sizes[0]:,} hubs",
                ratio=micros / first,
                note=f"wall {result.rate:.0f} req/s; inventory loaded in {load_seconds:.0f} s"
                + (f"; wrong: {result.wrong}" if result.wrong else ""),
            )
            series.setdefault(name, []).append((size, micros))
        if users:
            many = build_world(users)
            url = make_url()
            hubs = max(sizes[0], 2 * users)
            populate(url, many, hubs)
            bodies = list(mixed_bodies(many, requests, hubs=hubs, spread=True))
            result = measure(url, bodies, seconds)
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
