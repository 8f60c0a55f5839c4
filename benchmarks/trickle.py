"""Latency while clients trickle their bodies: ``python -m benchmarks.trickle [--rounds 2]``.

A client on a slow link (or a hostile one) sends a request's body a byte at
a time, for up to the body deadline. PostgreSQL's writer thread holds a batch
open for requests on their way to it (``FlushPolicy.arriving``); if a request
counted as on its way while its body was still coming in, every batch would
wait out the whole gather wait (10 ms) for it, and every other client's
latency would carry it.

The service (``hubreturns serve``, PostgreSQL in ``$HUBRETURNS_BENCH_PG_URL``,
2 workers) is loaded at a moderate constant rate, open loop
(``benchmarks.loadgen``), in interleaved rounds: once alone, once while
``--tricklers`` connections each send a request head and then one byte of its
body every half second. It prints p50 and p99 of both and their ratio; the
baseline is the run without tricklers in the same round.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import pg_available, pg_bench_url
from benchmarks.http import at_rate, serve, warm_up
from benchmarks.loadgen import write_bodies
from benchmarks.world import build_world, mixed_bodies, populate, reset

__all__ = ["main"]

#: A body length the edge accepts (under ``SecurityPolicy.max_body_bytes``), never completed.
_DECLARED = 3000


def _trickle(base: str, stop: threading.Event) -> None:
    """One slow client: a head, then a byte every half second; again once refused (408)."""
    host, port = base.removeprefix("http://").split(":")
    head = (
        f"POST /api/v1/serviceD HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/xml\r\nContent-Length: {_DECLARED}\r\n\r\n<"
    ).encode()
    while not stop.is_set():
        try:
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(head)
                while not stop.wait(0.5):
                    sock.sendall(b" ")
        except OSError:  # the body deadline passed and the server closed it
            stop.wait(0.05)


@contextmanager
def _tricklers(base: str, count: int) -> Iterator[None]:
    stop = threading.Event()
    threads = [threading.Thread(target=_trickle, args=(base, stop)) for _ in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # every head has been read
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trickle", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=250, help="offered req/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tricklers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if not pg_available():
        print("PostgreSQL unreachable ($HUBRETURNS_BENCH_PG_URL): not measured")
        return 1
    folder = Path(tempfile.mkdtemp(prefix="hubreturns-trickle-"))
    world = build_world(1000)
    count = int(args.rate * args.seconds * 2 * args.rounds) + 4000
    bodies = folder / "bodies.bin"
    write_bodies(bodies, [b.data for b in mixed_bodies(world, count, hubs=count + 1000)])
    url = pg_bench_url()
    populate(url, world, count + 1000)
    p50: dict[int, list[float]] = {0: [], args.tricklers: []}
    p99: dict[int, list[float]] = {0: [], args.tricklers: []}
    with serve(url, args.workers, folder) as (base, pid):
        warm_up(base, bodies, url)
        for _ in range(args.rounds):
            for tricklers in p50:
                with _tricklers(base, tricklers):
                    reset(url)
                    result = at_rate(base, bodies, args.rate, args.seconds, pid)
                p50[tricklers].append(result["p50_ms"])
                p99[tricklers].append(result["p99_ms"])
    print(
        f"PostgreSQL, {args.workers} workers, {args.rate} req/s offered, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s (ms, medians; rounds):"
    )
    for tricklers in p50:
        print(
            f"  {tricklers} trickling: p50 {statistics.median(p50[tricklers]):5.1f} "
            f"({', '.join(f'{v:.1f}' for v in p50[tricklers])}), "
            f"p99 {statistics.median(p99[tricklers]):5.1f} "
            f"({', '.join(f'{v:.1f}' for v in p99[tricklers])})"
        )
    ratio = statistics.median(p50[args.tricklers]) / statistics.median(p50[0])
    print(f"  p50 with {args.tricklers} trickling / without: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
