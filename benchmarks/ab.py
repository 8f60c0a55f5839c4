"""Two trees end to end, alternated: ``python -m benchmarks.ab OLD_SRC NEW_SRC [--rounds 3]``.

Made for the comparison issue 23 asks of every mechanism: section 4 (the
service over HTTP, saturation with wrk and latency at fixed offered loads)
run with ``OLD_SRC``'s service and then ``NEW_SRC``'s (each a ``src`` folder
of a checkout of this project, first on the server's ``PYTHONPATH``), A B A B,
so that whatever else the machine does falls on both. The measuring code is
this tree's for both sides. Per engine and worker count it prints, round by
round, accepted (durably committed) requests/s at saturation, and at each
offered rate p50 / p99, the server's CPU and thread sleeps a request; then
the ratio new/old of the mean accepted rate. Every run's figures are written
to ``--out`` as JSON.

The benchmark world is built with this tree's code, and each server migrates
the database at start: both trees must share their migrations (a server
whose migrations do not know the database's revision exits, and its log in
the run's scratch folder says so). Trees further apart are compared with
each tree's own ``benchmarks.run``, alternated by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.http import end_to_end, fastest

__all__ = ["main"]

_Key = tuple[str, int]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("old", type=Path, help="the old tree's src folder")
    parser.add_argument("new", type=Path, help="the new tree's src folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rates", default="1000")
    parser.add_argument("--connections", default="64")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run and rate")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    return parser.parse_args(argv)


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _one(side: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="hubreturns-ab-"))  # kept: the servers' logs
    section = end_to_end(
        folder,
        saturation_seconds=args.seconds,
        rate_seconds=args.seconds,
        rates=_numbers(args.rates),
        workers=_numbers(args.workers),
        ceiling=None,
        cores=1,
        connections=_numbers(args.connections),
        engines={e.strip().lower() for e in args.engines.split(",") if e.strip()},
        source=side.resolve(),
    )
    runs: list[dict[str, Any]] = section.data["runs"]
    return runs


def _accepted(runs: list[dict[str, Any]]) -> dict[_Key, float]:
    """One run's accepted requests/s at saturation, per (engine, workers)."""
    return {
        (engine, workers): best["accepted_rate"]
        for (engine, workers, kind), best in fastest(runs).items()
        if kind == "accepted"
    }


def _cells(rounds: list[list[dict[str, Any]]]) -> dict[_Key, dict[str, list[str]]]:
    """Per (engine, workers): each row's figure, one per round, as printed."""
    cells: dict[_Key, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for runs in rounds:
        for key, accepted in _accepted(runs).items():
            cells[key]["accepted/s"].append(f"{accepted:,.0f}")
        for run in runs:
            if run["kind"] != "rate":
                continue
            row = cells[run["engine"], run["workers"]]
            rate = f"{run['offered_rate']:,.0f} req/s"
            row[f"{rate}: p50, p99 ms"].append(f"{run['p50_ms']:.1f}, {run['p99_ms']:.1f}")
            row[f"{rate}: CPU µs, sleeps"].append(
                f"{run['server_cpu_us']:,.0f}, {run['server_sleeps']:.1f}"
            )
    return cells


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    sides = {"old": args.old, "new": args.new}
    rounds: dict[str, list[list[dict[str, Any]]]] = {"old": [], "new": []}
    for number in range(1, args.rounds + 1):
        for name, side in sides.items():
            print(f"round {number}: {name} ({side})", flush=True)
            rounds[name].append(_one(side, args))
    cells = {name: _cells(found) for name, found in rounds.items()}
    for key in sorted(cells["new"]):
        engine, workers = key
        print(f"\n{engine}, {workers} worker{'s' if workers > 1 else ''} (rounds 1 / 2 / ...)")
        for row in cells["new"][key]:
            print(f"  {row:30} old {' / '.join(cells['old'][key][row])}")
            print(f"  {'':30} new {' / '.join(cells['new'][key][row])}")
        old, new = ([a[key] for a in map(_accepted, rounds[n]) if key in a] for n in sides)
        if old and new:
            ratio = statistics.mean(new) / statistics.mean(old)
            print(f"  accepted/s new/old (means): {ratio:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.out / f"ab-{stamp}.json"
    path.write_text(json.dumps({"sides": {k: str(v) for k, v in sides.items()}, **rounds}))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
