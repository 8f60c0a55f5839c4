"""A PostgreSQL batch's protocol alone: ``python -m benchmarks.pgbatch [--rounds 6 --batches 300]``.

One batch is a read of a few keys with some new ids, then a write of the same
keys, durably committed. Two ways to send it, run in interleaved rounds on one
connection to ``$HUBRETURNS_BENCH_PG_URL`` (default: the test database), over
a temporary table:

* **baseline, as before**: a transaction psycopg begins itself (an implicit
  BEGIN, which in a pipeline it follows with a sync of its own), the ids and
  the read as a pipeline of two commands, the write, then COMMIT;
* **ours** (``hubreturns.dcc.store.db.writer_connection``): autocommit, one read
  statement that also draws the ids, one write statement that is its own
  transaction.

Per batch: wall time, this process's CPU (user + system, from ``getrusage``)
and the server process's CPU (from ``/proc``), the median of the rounds, and
the ratios. The server's CPU comes in clock ticks (10 ms here), so a round
needs some hundreds of batches for its figure to mean anything. What it
isolates is the messages and round trips, not the statements, which are
small here; ``scripts/bench`` measures the service.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from itertools import count
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from benchmarks.common import pg_bench_url, tree_cpu

__all__ = ["main"]

_READ = "SELECT k, v FROM batch_bench WHERE k = ANY(%s)"
_READ_WITH_IDS = (
    "SELECT k, v, (SELECT array_agg(g) FROM generate_series(1, %s) AS g)"
    " FROM batch_bench WHERE k = ANY(%s)"
)
_IDS = "SELECT g FROM generate_series(1, %s) AS g"
_WRITE = "UPDATE batch_bench SET v = v + 1 WHERE k = ANY(%s)"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(pid: int) -> float:
    return sum(tree_cpu(pid))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pgbatch", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=300, help="batches per round and way")
    parser.add_argument("--size", type=int, default=8, help="keys per batch")
    args = parser.parse_args(argv)
    # The benchmark's SQLAlchemy URL as libpq reads it (its options keep the schema).
    url = make_url(pg_bench_url()).set(drivername="postgresql")
    conn = psycopg.connect(url.render_as_string(hide_password=False))
    conn.execute("CREATE TEMPORARY TABLE batch_bench (k integer PRIMARY KEY, v integer)")
    conn.execute("INSERT INTO batch_bench SELECT g, 0 FROM generate_series(1, 100000) AS g")
    conn.commit()
    pid = conn.info.backend_pid
    cursor, ids = conn.cursor(), conn.cursor()
    numbers = count()

    def keys() -> list[int]:
        first = next(numbers) * args.size % 99_000  # new rows each batch: no hot-row bloat
        return list(range(first + 1, first + 1 + args.size))

    def baseline() -> None:
        chosen = keys()
        with conn.pipeline():
            ids.execute(_IDS, (args.size,), prepare=True)
            cursor.execute(_READ, (chosen,), prepare=True)
        ids.fetchall()
        cursor.fetchall()
        cursor.execute(_WRITE, (chosen,), prepare=True)
        conn.commit()

    def ours() -> None:
        chosen = keys()
        cursor.execute(_READ_WITH_IDS, (args.size, chosen), prepare=True)
        cursor.fetchall()
        cursor.execute(_WRITE, (chosen,), prepare=True)

    ways: dict[str, tuple[Callable[[], None], bool]] = {
        "baseline: BEGIN, pipelined read, write, COMMIT": (baseline, False),
        "ours: autocommit, read, write": (ours, True),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, (run, autocommit) in ways.items():
            conn.autocommit = autocommit
            for _ in range(20):  # prepared, cached, warm
                run()
            # The server's reading scans /proc: before ours, so ours does not count it.
            server = _server_cpu(pid)
            started, cpu = time.perf_counter(), _cpu()
            for _ in range(args.batches):
                run()
            wall, ours_cpu = time.perf_counter() - started, _cpu() - cpu
            server = _server_cpu(pid) - server
            results[name].append(
                (wall / args.batches, ours_cpu / args.batches, server / args.batches)
            )
    conn.close()
    medians: dict[str, Any] = {
        name: [1e6 * statistics.median(column) for column in zip(*rows, strict=True)]
        for name, rows in results.items()
    }
    print(f"{args.rounds} interleaved rounds of {args.batches} batches of {args.size} keys")
    print(f"{'per batch (median µs)':50} {'wall':>8} {'our CPU':>8} {'server':>8}")
    for name, (wall, ours_cpu, server_cpu) in medians.items():
        print(f"{name:50} {wall:8.0f} {ours_cpu:8.0f} {server_cpu:8.0f}")
    base, mine = medians.values()
    print(
        "ratio baseline / ours: "
        + ", ".join(
            f"{label} {b / m:.2f}×"
            for label, b, m in zip(("wall", "our CPU", "server"), base, mine, strict=True)
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
