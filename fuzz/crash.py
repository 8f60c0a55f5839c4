"""kill -9 harness: load, kill the server at a random moment, restart, check; repeat.

``scripts/crash --cycles 20 --database postgresql`` prepares a fresh database,
then per cycle starts ``hubreturns serve``, lets ``--clients`` senders send
accepted requests, kills the server's whole process group with SIGKILL after a
random 0.5-``--max-seconds`` seconds, and checks the database against every
answer (``reliability.check`` with ``crashed=True``): every I99 has its return
record, no record lacks its audit row, replay counters equal the highest
stored counter. The next cycle's clients carry on above their counters.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reliability

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/crash", description=__doc__)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=3.0)
    parser.add_argument("--database", default="sqlite", help="sqlite, postgresql or a URL")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)  # noqa: S311 - kill timing, not cryptography

    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crash-")))
        if args.database == "sqlite":
            url = f"sqlite:///{folder / 'crash.db'}"
        elif args.database == "postgresql":
            url = stack.enter_context(contextlib.contextmanager(reliability.pg_schema)(PG_DEFAULT))
        else:
            url = args.database
        hubs = int(400 * args.max_seconds * args.cycles / args.clients) + 50
        bench = reliability.prepare(url, folder, clients=args.clients, hubs=hubs)
        told: list[reliability.Told] = []
        failed = 0
        for cycle in range(1, args.cycles + 1):
            server = reliability.served(url, workers=args.workers, log=folder / "serve.log")
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=reliability.drive,
                    args=(server.url, client, told, stop),
                    kwargs={"mix": False, "seed": cycle * 100 + n},
                )
                for n, client in enumerate(bench.clients)
            ]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.5, args.max_seconds))
            server.kill()
            for thread in threads:
                thread.join()
            report = reliability.check(url, told, crashed=True)
            cut = sum(t.code is None for t in told)
            print(
                f"cycle {cycle}: killed with {cut} requests unanswered so far; {report.summary()}"
            )
            for problem in report.problems[:20]:
                print(f"  problem: {problem}")
            failed += not report.ok
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
