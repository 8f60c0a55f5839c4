"""Two source trees' request path, alternated: ``python -m benchmarks.storeab OLD_SRC NEW_SRC``.

Made to decide whether a store mechanism stays (issue 23 §4): each round runs
section 3's in-process measurement (pre-signed mixed requests, 64 in flight
on one event loop, the service's group commit, database included) once with
``OLD_SRC`` and once with ``NEW_SRC`` on ``PYTHONPATH``, in a fresh process
each, alternating A B A B so that other load on the machine falls on both.
Per engine it prints each run's CPU µs per request and requests/s, their
medians and the ratio new/old. CPU time is this machine's process time (all
threads): unlike wall time, barely moved by other load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parent.parent


def _child(engine: str, seconds: float, requests: int, folder: Path) -> dict[str, float]:
    from benchmarks.common import pg_bench_url, sqlite_url
    from benchmarks.inprocess import measure_concurrent
    from benchmarks.world import build_world, mixed_bodies, populate

    world = build_world(1000)
    hubs = requests * 2
    bodies = list(mixed_bodies(world, requests, hubs=hubs))
    url = sqlite_url(folder, "storeab.db") if engine == "sqlite" else pg_bench_url()
    populate(url, world, hubs)
    keys = [u.certificate.key for u in world.users]
    result = measure_concurrent(url, bodies, seconds, warm=keys)
    if result.wrong:
        raise SystemExit(f"wrong answers: {result.wrong}")
    return {
        "cpu_us": result.cpu_seconds / result.requests * 1e6,
        "per_s": result.requests / result.seconds,
        "per_commit": result.per_commit,
    }


def _run(src: str, engine: str, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{src}:{_ROOT}"}
    command = [
        sys.executable,
        "-m",
        "benchmarks.storeab",
        "--child",
        engine,
        "--seconds",
        str(args.seconds),
        "--requests",
        str(args.requests),
        "--folder",
        str(args.folder),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{src} on {engine} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storeab", description=__doc__)
    parser.add_argument("old", nargs="?", help="the A tree's src folder")
    parser.add_argument("new", nargs="?", help="the B tree's src folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--folder", type=Path, default=Path("bench-results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(_child(args.child, args.seconds, args.requests, args.folder)))
        return 0
    if not (args.old and args.new):
        parser.error("give the two src folders")
    for engine in args.engines.split(","):
        runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for round_ in range(args.rounds):
            for name, src in (("old", args.old), ("new", args.new)):
                found = _run(src, engine, args)
                runs[name].append(found)
                print(
                    f"{engine} round {round_ + 1} {name}: {found['cpu_us']:.0f} µs CPU/request, "
                    f"{found['per_s']:.0f} req/s, {found['per_commit']:.1f} requests/commit",
                    flush=True,
                )
        medians = {
            name: {key: statistics.median(r[key] for r in found) for key in ("cpu_us", "per_s")}
            for name, found in runs.items()
        }
        old, new = medians["old"], medians["new"]
        print(
            f"{engine} medians: old {old['cpu_us']:.0f} µs, {old['per_s']:.0f} req/s; "
            f"new {new['cpu_us']:.0f} µs, {new['per_s']:.0f} req/s; "
            f"CPU new/old {new['cpu_us'] / old['cpu_us']:.3f}, "
            f"throughput new/old {new['per_s'] / old['per_s']:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
