"""Soak: mixed accepted and refused traffic against the service, then a consistency check.

``scripts/soak --seconds 120 --database sqlite`` prepares a fresh database,
serves it with ``hubreturns serve`` on loopback (or uses ``--url`` with the
``--database-url`` that service writes to), runs ``--clients`` concurrent
senders for ``--seconds`` and checks the database against every answer
(``reliability.check``). Exit status 0 only if everything is consistent.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reliability

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="How long to send.")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent senders.")
    parser.add_argument("--workers", type=int, default=1, help="Server worker processes.")
    parser.add_argument("--hubs", type=int, default=3000, help="Pending hubs per client.")
    parser.add_argument(
        "--database",
        default="sqlite",
        help="sqlite (a fresh file), postgresql (a fresh schema on the local server) or a URL",
    )
    parser.add_argument("--url", help="Base URL of an already running service (else self-hosted).")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        if args.database == "sqlite":
            database_url = f"sqlite:///{folder / 'soak.db'}"
        elif args.database == "postgresql":
            database_url = stack.enter_context(
                contextlib.contextmanager(reliability.pg_schema)(PG_DEFAULT)
            )
        else:
            database_url = args.database
        print(f"preparing {args.clients} clients x {args.hubs} hubs on {database_url}")
        bench = reliability.prepare(database_url, folder, clients=args.clients, hubs=args.hubs)
        if args.url:
            base_url = args.url
        else:
            server = reliability.served(
                database_url, workers=args.workers, log=folder / "serve.log"
            )
            stack.callback(server.kill)
            base_url = server.url
        told: list[reliability.Told] = []
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=reliability.drive,
                args=(base_url, client, told, stop),
                kwargs={"seed": args.seed + n},
            )
            for n, client in enumerate(bench.clients)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        report = reliability.check(database_url, told)
        print(
            f"soak {args.database}, {args.clients} clients, {args.workers} worker(s), "
            f"{elapsed:.0f} s: {report.summary()}; {report.answered / elapsed:.0f} requests/s"
        )
        for problem in report.problems[:50]:
            print(f"  problem: {problem}")
        return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
