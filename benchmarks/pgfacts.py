"""A PostgreSQL batch's facts read three ways: ``python -m benchmarks.pgfacts [--rounds 3]``.

The read ``store.postgresql`` runs for every batch (each key's user, counter,
hub and Suppliers, and the batch's new return ids), on the committer's own
connection (``writer_connection``) over the benchmark world in
``$HUBRETURNS_BENCH_PG_URL`` (its schema is rebuilt), sent:

* **Core**: ``Connection.execute`` of the Core ``select``, rows by column name;
* **exec_driver_sql**: the same statement compiled once, sent as SQL text;
* **driver's cursor** (the service's way, ``PostgreSQLBackend.batch_facts``).

Per read, this process's CPU (user + system) and wall time, each way in
interleaved rounds; the figures are medians and ratios to Core. Why a
benchmark of its own: at 1,000 req/s a commit serves 2-4 requests, so what a
read costs beyond PostgreSQL's own work is paid per request, in the writer
thread that holds the GIL.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import pg_bench_url
from benchmarks.world import build_world, hub_id, populate, user_id
from hubreturns.dcc.store import postgresql
from hubreturns.dcc.store.backend import FactsRow, facts_columns
from hubreturns.dcc.store.db import make_engine, writer_connection

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pgfacts", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", type=int, default=2000, help="reads per round and way")
    parser.add_argument("--size", type=int, default=3, help="keys per batch")
    args = parser.parse_args(argv)
    url = pg_bench_url()
    populate(url, build_world(50), hubs=1000)
    engine = make_engine(url)
    connection = writer_connection(engine)
    keys = [(user_id(n % 50), hub_id(n)) for n in range(args.size)]
    statement = postgresql._BATCH_FACTS  # the statement the service runs
    columns = facts_columns(statement)
    compiled = statement.compile(dialect=connection.dialect)
    sql, fixed = str(compiled), dict(compiled.params)
    given = {"originators": [k[0] for k in keys], "devices": [k[1] for k in keys], "n": len(keys)}

    def core() -> Any:
        return [FactsRow._make(columns(r)) for r in connection.execute(statement, given).all()]

    def driver_sql() -> Any:
        return [
            FactsRow._make(columns(r))
            for r in connection.exec_driver_sql(sql, {**fixed, **given}).all()
        ]

    def driver_cursor() -> Any:
        return postgresql.BACKEND.batch_facts(connection, keys)[0]

    ways: dict[str, Callable[[], Any]] = {
        "Core": core,
        "exec_driver_sql": driver_sql,
        "driver's cursor": driver_cursor,
    }
    expected = driver_cursor()
    assert all(way() == expected for way in ways.values()), "the three ways read different facts"
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    wall: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            for _ in range(200):
                way()
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(args.reads):
                way()
            cpu[name].append(1e6 * (time.process_time() - cpu_started) / args.reads)
            wall[name].append(1e6 * (time.perf_counter() - started) / args.reads)
    connection.invalidate()
    connection.close()
    engine.dispose()
    base = statistics.median(cpu["Core"])
    print(f"a {args.size}-key facts read, {args.rounds} interleaved rounds of {args.reads}:")
    for name in ways:
        mid = statistics.median(cpu[name])
        print(
            f"  {name:16} CPU {mid:6.1f} µs ({mid / base:.2f} of Core), "
            f"wall {statistics.median(wall[name]):6.1f} µs; rounds "
            + ", ".join(f"{v:.0f}" for v in cpu[name])
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
