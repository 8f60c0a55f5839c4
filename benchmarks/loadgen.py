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
the generator itself kept up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

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


async def _run(
    url: str, bodies: list[bytes], rate: float, seconds: float, connections: int
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/api/v1/serviceD"
    total = min(len(bodies), int(rate * seconds))
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    errors = 0
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/xml\r\nContent-Length: "
    ).encode()

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                index, intended = item
                body = bodies[index]
                writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
                try:
                    header = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                length = 0
                code = "HTTP " + header[9:12].decode()
                for line in header.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    lowered = name.strip().lower()
                    if lowered == b"content-length":
                        length = int(value)
                    elif lowered == b"x-duis-response-code":
                        code = value.strip().decode()
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - intended)
                codes[code] += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(0.2)  # let the connections open before the clock starts
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter() + 0.05
    max_lag = 0.0
    for i in range(total):
        intended = start + i / rate
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            max_lag = max(max_lag, -delay)
        queue.put_nowait((i, intended))
    for _ in tasks:
        queue.put_nowait(None)
    # Bounded: a server far below the offered load would otherwise take minutes to drain.
    _done, pending = await asyncio.wait(tasks, timeout=max(5.0, seconds))
    for task in pending:
        task.cancel()
    unanswered = total - len(latencies)
    elapsed = time.perf_counter() - start
    # Unanswered requests count at the cut-off: a lower bound on their latency.
    cutoff = time.perf_counter()
    latencies.extend(cutoff - (start + i / rate) for i in range(total - unanswered, total))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies.sort()

    def pct(fraction: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, round(fraction * (len(latencies) - 1)))] * 1000

    return {
        "offered_rate": rate,
        "requests": total - unanswered,
        "unanswered": unanswered,
        "seconds": elapsed,
        "achieved_rate": (total - unanswered) / elapsed,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "codes": dict(codes),
        "errors": errors,
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
    args = parser.parse_args(argv)
    result = asyncio.run(
        _run(args.url, read_bodies(args.bodies), args.rate, args.seconds, args.connections)
    )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
