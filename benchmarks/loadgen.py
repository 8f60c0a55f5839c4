"""Open-loop constant-rate HTTP load generator (run as its own process).

``python -m benchmarks.loadgen URL BODIES --rate R --seconds S`` sends request
``i`` at ``start + i / R`` whether or not earlier ones have been answered
(wrk2's model; Debian's wrk has no constant-rate mode). Latency is measured
from the *intended* send time, so a stalled server shows up in the tail
instead of silently lowering the offered load (no coordinated omission).
Requests go over ``--connections`` keep-alive connections; a request waits for
a free one, and that wait counts as latency. The run is bounded: whatever is
unanswered ``max(5, seconds)`` after the last send is cut off, counted as
``unanswered`` and enters the percentiles at its latency so far.

It prints one JSON line: requests, achieved rate, p50/p90/p99/max latency,
response codes, and its own CPU use and scheduling lag, which show whether
the generator itself kept up. ``--trace FILE`` also writes every answer's
send time and latency, to see whether a tail is one stall or spread out.
An ``https://`` URL is sent over TLS; ``--ca``, ``--client-cert`` and
``--client-key`` name a private CA and the client's certificate (mutual TLS).

The generator shares the machine with the server, so it is kept lean: one
``asyncio.Protocol`` per connection over uvloop, requests written out before
the clock starts. At 1,000 req/s against the service with 2 workers it used
10-13 % of a core where the streams-based version used 19-22 %, and the
service's p50 and p99 fell with it (SQLite, interleaved runs: p50 6.5-8.4 ->
4.9-5.6 ms; PostgreSQL: p50 25-30 -> 18 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import ssl
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from hubreturns.user.client import tls_context

__all__ = ["main", "read_bodies", "write_bodies"]


def write_bodies(path: Path, bodies: list[bytes]) -> None:
    """Records ``<length>\\n<bytes>`` (the format benchmarks/wrk/duis.lua reads too)."""
    with path.open("wb") as out:
        for body in bodies:
            out.write(f"{len(body)}\n".encode())
            out.write(body)


def read_bodies(path: Path) -> list[bytes]:
    data = path.read_bytes()
    bodies = []
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        length = int(data[pos:newline])
        bodies.append(data[newline + 1 : newline + 1 + length])
        pos = newline + 1 + length
    return bodies


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time.

    A protocol, not asyncio streams: the generator shares this machine's two
    cores with the server it measures, so every microsecond it spends per
    request is taken from the server (with streams and the default event loop
    it used about a fifth of a core at 1,000 req/s).
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        #: Intended send time of the request awaiting its answer.
        self.pending: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.run.free(self)

    def send(self, index: int, intended: float) -> None:
        assert self.transport is not None
        self.pending = intended
        self.transport.write(self.run.requests[index])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.pending is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            header = self.buffer[:end]
            length = 0
            code = "HTTP " + header[9:12].decode()
            for line in header.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value)
                elif lowered == b"x-duis-response-code":
                    code = value.strip().decode()
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            intended, self.pending = self.pending, None
            self.run.answered(intended, code)
            self.run.free(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)


class _Run:
    """Dispatch requests to free connections; record answers."""

    def __init__(
        self,
        requests: list[bytes],
        address: tuple[str, int],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.requests = requests
        self.address = address
        self.tls = tls
        self.idle: list[_Connection] = []
        self.waiting: deque[tuple[int, float]] = deque()
        self.answers: list[tuple[float, float]] = []  # (intended send time, latency)
        self.codes: Counter[str] = Counter()
        self.errors = 0
        self.outstanding = 0
        self.drained: asyncio.Future[None] | None = None

    def submit(self, index: int, intended: float) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(index, intended)
        else:
            self.waiting.append((index, intended))

    def free(self, connection: _Connection) -> None:
        if self.waiting:
            connection.send(*self.waiting.popleft())
        else:
            self.idle.append(connection)

    def answered(self, intended: float, code: str) -> None:
        latency = time.perf_counter() - intended
        self.answers.append((intended, latency))
        self.codes[code] += 1
        self.outstanding -= 1
        if self.outstanding == 0 and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def lost(self, connection: _Connection) -> None:
        """A connection closed under us: its request is lost (counted unanswered); reopen."""
        if connection in self.idle:
            self.idle.remove(connection)
        if connection.pending is not None:
            self.errors += 1
            self.outstanding -= 1
            if self.outstanding == 0 and self.drained is not None and not self.drained.done():
                self.drained.set_result(None)
        if self.drained is None or not self.drained.done():
            asyncio.get_running_loop().create_task(self.open())

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: _Connection(self), *self.address, ssl=self.tls)


async def _run(
    url: str,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    connections: int,
    trace: Path | None = None,
    tls: ssl.SSLContext | None = None,
) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme == "https" and tls is None:
        tls = ssl.create_default_context()
    default_port = 443 if parts.scheme == "https" else 80
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    path = parts.path or "/api/v1/serviceD"
    total = min(len(bodies), int(rate * seconds))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/xml\r\nContent-Length: "
    ).encode()
    # Whole requests, written before the clock starts.
    requests = [head + str(len(body)).encode() + b"\r\n\r\n" + body for body in bodies[:total]]
    run = _Run(requests, (host, port), tls if parts.scheme == "https" else None)
    await asyncio.gather(*(run.open() for _ in range(connections)))
    loop = asyncio.get_running_loop()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter() + 0.05
    max_lag = 0.0
    i = 0
    while i < total:
        now = time.perf_counter()
        due = start + i / rate
        if due > now:
            # At least 1 ms: libuv's timers count whole milliseconds and fire a
            # shorter sleep at once, which would spin. A request sent up to 1 ms
            # late is timed from its intended moment all the same.
            await asyncio.sleep(max(due - now, 0.001))
            now = time.perf_counter()
        else:
            max_lag = max(max_lag, now - due)
        # Everything due by now goes out in this turn, each stamped with its own time.
        while i < total and start + i / rate <= now:
            run.submit(i, start + i / rate)
            i += 1
    run.drained = loop.create_future()
    if run.outstanding:
        # Bounded: a server far below the offered load would otherwise take minutes to drain.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.drained), timeout=max(5.0, seconds))
    elif not run.drained.done():
        run.drained.set_result(None)
    latencies = [latency for _, latency in run.answers]
    unanswered = total - len(latencies)
    elapsed = time.perf_counter() - start
    # Unanswered requests count at the cut-off: a lower bound on their latency.
    cutoff = time.perf_counter()
    latencies.extend(cutoff - (start + i / rate) for i in range(total - unanswered, total))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies.sort()
    if trace is not None:
        with trace.open("w") as out:
            for intended, latency in sorted(run.answers):
                out.write(f"{intended - start:.6f} {latency * 1000:.3f}\n")

    def pct(fraction: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, round(fraction * (len(latencies) - 1)))] * 1000

    return {
        "started_at": time.time() - (time.perf_counter() - start),
        "offered_rate": rate,
        "requests": total - unanswered,
        "unanswered": unanswered,
        "seconds": elapsed,
        "achieved_rate": (total - unanswered) / elapsed,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "codes": dict(run.codes),
        "errors": run.errors,
        "generator_cpu_share": cpu / elapsed,
        "generator_max_lag_ms": max_lag * 1000,
        "bodies_exhausted": total < int(rate * seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. http://127.0.0.1:8080/api/v1/serviceD")
    parser.add_argument("bodies", type=Path, help="file written by write_bodies")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--trace", type=Path, help="write each answer's send time (s) and latency (ms) here"
    )
    parser.add_argument("--ca", type=Path, help="https: the CA of the server's certificate")
    parser.add_argument("--client-cert", type=Path, help="mutual TLS: client certificate (PEM)")
    parser.add_argument("--client-key", type=Path, help="mutual TLS: its private key (PEM)")
    args = parser.parse_args(argv)
    verify = tls_context(args.ca, args.client_cert, args.client_key)
    tls = verify if isinstance(verify, ssl.SSLContext) else None
    try:  # uvloop, where installed (uvicorn[standard] brings it): a leaner generator
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    result = run(
        _run(
            args.url,
            read_bodies(args.bodies),
            args.rate,
            args.seconds,
            args.connections,
            args.trace,
            tls,
        )
    )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
