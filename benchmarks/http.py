"""Section 4: end to end over real HTTP on loopback, with a separate load generator.

The service runs as ``hubreturns serve --workers N`` (a subprocess, as in
production); load comes from another process: wrk with benchmarks/wrk/duis.lua
for throughput at saturation (closed loop, 32 and 64 connections: with 32 a
server on two cores left up to 30 % of the machine idle, each connection
waiting for its batch's commit, so 32 alone did not saturate it), and
benchmarks/loadgen.py for latency at fixed offered loads (open loop,
constant rate). Two streams of pre-signed requests with unique counters: the
mixed 80/20 one, and one where every request is acceptable (the figure for
"accepted, durably committed per second"). Each server is warmed up first,
in rounds until its rate stops rising (every worker has every sender's
certificate cached, statements compiled), and the database is reset before
each run, so the counters are fresh again. The baseline is the HTTP floor: a
bare route served and loaded the same way (``benchmarks.floor``). The server's
CPU per request (its processes' user + system time, from /proc) is reported
beside the rates: it is steadier than throughput on a shared machine; so
are PostgreSQL's CPU per request (its server processes', from /proc) and the
machine's idle and stolen shares during the run (/proc/stat).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    CpuShares,
    Section,
    fsync_latencies,
    percentile,
    pg_available,
    pg_bench_url,
    postmaster_pid,
    sqlite_url,
    tree_cpu,
    tree_sleeps,
)
from benchmarks.loadgen import write_bodies
from benchmarks.world import build_world, mixed_bodies, populate, reset
from hubreturns.dcc.serving import free_port

__all__ = ["at_rate", "end_to_end", "fastest", "serve", "warm_up"]

_ROOT = Path(__file__).resolve().parent.parent
_LUA = Path(__file__).resolve().parent / "wrk" / "duis.lua"


@contextmanager
def serve(
    url: str, workers: int, folder: Path, *, floor: bool = False, source: Path | None = None
) -> Iterator[tuple[str, int]]:
    """``hubreturns serve`` on a free loopback port until the block ends.

    Yields the base URL and the server's process id (its workers are its children).

    With ``floor``, the bare app of ``benchmarks.floor`` is served instead. With
    ``source``, a ``src`` folder of another tree of the project, that tree's
    service is served (first on its ``PYTHONPATH``; ``benchmarks.ab``).
    """
    port = free_port()
    env = {**os.environ, "HUBRETURNS_DATABASE_URL": url, "HUBRETURNS_ALLOW_TEST_KEYS": "1"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    env.setdefault("HUBRETURNS_SESSION_SECRET", "benchmark-session-secret-0123456789abcdef")
    env.pop("HUBRETURNS_CONFIG", None)
    address = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if floor:
        command = [sys.executable, "-m", "uvicorn", "benchmarks.floor:app", *address]
        command += ["--log-level", "warning", "--no-access-log"]
        env["PYTHONPATH"] = str(_ROOT)
    else:
        command = [str(Path(sys.executable).with_name("hubreturns")), "serve", *address]
    name = "floor" if floor else "serve"
    log = (folder / f"{name}-{workers}.log").open("wb")
    process = subprocess.Popen(command, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    probe = f"{base}/api/v1/serviceD" if floor else f"{base}/healthz"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited; see {log.name}")
            try:
                answer = httpx.post(probe, timeout=1) if floor else httpx.get(probe, timeout=1)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become healthy within 60 s")
            time.sleep(0.2)
        yield base, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wrk(base: str, bodies: Path, seconds: float, connections: int) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    assert wrk is not None
    done = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(_LUA),
            base,
            "--",
            str(bodies),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in done.stdout.splitlines():
        if line.startswith("WRK-JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK-JSON "))
            result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


def warm_up(base: str, bodies: Path, url: str, *, rounds: int = 10) -> list[tuple[float, int]]:
    """Load the server in rounds of 2 s until no worker reads a certificate from the store.

    A worker caches a certificate the first time one of its connections
    brings it; until then each request costs about 1 ms more (a read in a
    thread). With 1,000 senders and connections hashed over workers, a worker
    has seen every sender only after some 10,000 requests. The service counts
    those reads (``hubreturns_certificate_store_reads_total``), so the warm-up
    ends on the fact, not on a rate that stopped rising: on a noisy machine a
    round that happened to be slow ended it early, with the caches still
    cold. Returns each round's rate and store reads. The database is reset
    before each round, as before a run.
    """
    done: list[tuple[float, int]] = []
    before = _metric_totals(base, _CERTIFICATE_READS)[_CERTIFICATE_READS]
    for _ in range(rounds):
        reset(url)
        rate = _wrk(base, bodies, 2, 32)["rate"]
        after = _metric_totals(base, _CERTIFICATE_READS)[_CERTIFICATE_READS]
        done.append((rate, round(after - before)))
        before = after
        if len(done) >= 2 and done[-1][1] == 0:
            break
    return done


_CERTIFICATE_READS = "hubreturns_certificate_store_reads_total"
#: Requests committed (the batch-size histogram's sum) and transactions (its count).
_COMMITTED_JOBS = "hubreturns_commit_batch_size_sum"
_COMMITTED_BATCHES = "hubreturns_commit_batch_size_count"


def _metric_totals(base: str, *names: str) -> dict[str, float]:
    """Each named sample of the service's metrics, summed over label sets and workers."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        if name in totals:
            totals[name] += float(value)
    return totals


def _saturate(
    base: str, stream: Path, seconds: float, connections: int, pid: int, db_pid: int | None
) -> dict[str, Any]:
    """wrk at ``connections`` for ``seconds``, with the CPU the server, the database
    server and the machine spent meanwhile."""
    shares = CpuShares()
    cpu_before = tree_cpu(pid)
    db_before = tree_cpu(db_pid) if db_pid is not None else (0.0, 0.0)
    result = _wrk(base, stream, seconds, connections)
    cpu_after = tree_cpu(pid)
    db_after = tree_cpu(db_pid) if db_pid is not None else (0.0, 0.0)
    requests = max(1, result["requests"])
    user, system = (b - a for a, b in zip(cpu_before, cpu_after, strict=True))
    result["connections"] = connections
    result["server_cpu_us"] = 1e6 * (user + system) / requests
    result["server_sys_us"] = 1e6 * system / requests
    result["db_cpu_us"] = (
        1e6 * sum(b - a for a, b in zip(db_before, db_after, strict=True)) / requests
        if db_pid is not None
        else None
    )
    result.update(shares.read())
    result["accepted_rate"] = result["codes"].get("I99", 0) / (result["duration_us"] / 1e6)
    return result


def fastest(runs: Iterable[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """The fastest saturation run of each (engine, workers, stream).

    Saturation is the rate a server cannot exceed: the most any of the
    connection counts drew from it (the others stay in the table and the JSON).
    """
    best: dict[tuple[str, int, str], dict[str, Any]] = {}
    for run in runs:
        if run["kind"] == "rate":
            continue
        key = (run["engine"], run["workers"], run["kind"])
        if key not in best or run["rate"] > best[key]["rate"]:
            best[key] = run
    return best


def at_rate(base: str, bodies: Path, rate: float, seconds: float, pid: int) -> dict[str, Any]:
    """``_loadgen`` with the server's CPU and thread sleeps a request, its requests per
    commit, and the machine's idle and stolen shares meanwhile.

    Why: a request costs more CPU at a moderate rate than at saturation (fewer
    requests share each commit and each turn of the event loop), and that CPU,
    with the time the hypervisor takes, is what the tails queue behind.
    """
    shares = CpuShares()
    committed = (_COMMITTED_JOBS, _COMMITTED_BATCHES)
    cpu_before, commits_before = tree_cpu(pid), _metric_totals(base, *committed)
    sleeps_before = tree_sleeps(pid)
    result = _loadgen(base, bodies, rate, seconds)
    sleeps_after = tree_sleeps(pid)
    cpu_after, commits_after = tree_cpu(pid), _metric_totals(base, *committed)
    requests = max(1, result["requests"])
    result["server_cpu_us"] = 1e6 * (sum(cpu_after) - sum(cpu_before)) / requests
    result["server_sleeps"] = (sleeps_after - sleeps_before) / requests
    jobs = commits_after[_COMMITTED_JOBS] - commits_before[_COMMITTED_JOBS]
    batches = commits_after[_COMMITTED_BATCHES] - commits_before[_COMMITTED_BATCHES]
    result["per_commit"] = jobs / batches if batches else float("nan")
    result.update(shares.read())
    return result


def _loadgen(base: str, bodies: Path, rate: float, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            f"{base}/api/v1/serviceD",
            str(bodies),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=_ROOT,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def end_to_end(
    folder: Path,
    *,
    saturation_seconds: float,
    rate_seconds: float,
    rates: list[int],
    workers: list[int],
    ceiling: float | None,
    cores: int,
    connections: Sequence[int] = (32, 64),
    engines: Iterable[str] = ("sqlite", "postgresql"),
    source: Path | None = None,
) -> Section:
    section = Section("4. end to end over HTTP (loopback, separate load generator)")
    fsyncs = fsync_latencies(folder, min(5.0, saturation_seconds))
    fsync_ms = section.data["fsync_ms"] = {
        name: 1000 * percentile(fsyncs, fraction)
        for name, fraction in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))
    }
    section.add(
        "fsync of an 8 KiB append on this disk (the floor under a durable commit)",
        fsync_ms["p99"],
        "ms p99",
        note=f"{len(fsyncs)} fsyncs: p50 {fsync_ms['p50']:.2f} ms, "
        f"p99.9 {fsync_ms['p999']:.2f} ms, max {fsync_ms['max']:.1f} ms",
    )
    have_wrk = shutil.which("wrk") is not None
    count = int(max(saturation_seconds * 6000, max(rates, default=0) * rate_seconds) * 1.2) + 400
    hubs = count + 1000
    world = build_world(1000)
    bodies_file = folder / "bodies.bin"
    write_bodies(bodies_file, [b.data for b in mixed_bodies(world, count, hubs=hubs)])
    accepted_file = folder / "accepted.bin"
    write_bodies(
        accepted_file, [b.data for b in mixed_bodies(world, count, hubs=hubs, accepted_only=True)]
    )
    wanted = set(engines)
    databases = []
    if "sqlite" in wanted:
        databases.append(("SQLite", sqlite_url(folder, "http.db")))
    if "postgresql" in wanted:
        if pg_available():
            databases.append(("PostgreSQL", pg_bench_url()))
        else:
            section.skipped = "PostgreSQL unreachable: not measured"
    runs: list[dict[str, Any]] = []
    floors: dict[int, float] = {}
    if have_wrk:
        for n in workers:
            with serve(sqlite_url(folder, "floor.db"), n, folder, floor=True) as (base, _pid):
                _wrk(base, bodies_file, 1, 32)  # warm up
                floor = _wrk(base, bodies_file, saturation_seconds, 32)
            floors[n] = floor["rate"]
            section.add(
                f"HTTP floor, {n} worker{'s' if n > 1 else ''}: bare route (wrk, 32 conns)",
                floor["rate"],
                "req/s",
                note="reads the body, answers fixed bytes: no XML, crypto or database",
            )
    for engine, url in databases:
        populate(url, world, hubs)
        db_pid = postmaster_pid(url) if engine == "PostgreSQL" else None
        for n in workers:
            with serve(url, n, folder, source=source) as (base, pid):
                label = f"{engine}, {n} worker{'s' if n > 1 else ''}"
                if have_wrk:
                    warm = warm_up(base, bodies_file, url)
                    section.add(
                        f"{label}: warm-up",
                        warm[-1][0],
                        "req/s",
                        baseline="last round / first round",
                        ratio=warm[-1][0] / warm[0][0],
                        note="mixed stream, rounds of 2 s until no worker reads a certificate "
                        "from the store; rate (store reads) per round: "
                        + ", ".join(f"{rate:.0f} ({reads})" for rate, reads in warm),
                    )
                    for kind, stream in (("saturation", bodies_file), ("accepted", accepted_file)):
                        what = "mixed 80/20" if kind == "saturation" else "all acceptable"
                        for conns in connections:
                            reset(url)
                            sat = _saturate(base, stream, saturation_seconds, conns, pid, db_pid)
                            db = (
                                f"; PostgreSQL CPU {sat['db_cpu_us']:.0f} µs/request"
                                if sat["db_cpu_us"] is not None
                                else ""
                            )
                            section.add(
                                f"{label}: saturation, {what} (wrk, {conns} conns)",
                                sat["rate"],
                                "req/s",
                                baseline="end-to-end / HTTP floor",
                                ratio=sat["rate"] / floors[n] if n in floors else None,
                                note=f"accepted {sat['accepted_rate']:.0f}/s; "
                                f"p50 {sat['p50_us'] / 1000:.1f} ms, "
                                f"p99 {sat['p99_us'] / 1000:.1f} ms; server CPU "
                                f"{sat['server_cpu_us']:.0f} µs/request "
                                f"({sat['server_sys_us']:.0f} in the kernel){db}; machine idle "
                                f"{sat['idle']:.0%}, stolen {sat['steal']:.0%}; "
                                f"codes {sat['codes']}"
                                + (f"; socket errors {sat['errors']}" if sat["errors"] else "")
                                + (f"; WRAPPED {sat['wrapped']}" if sat["wrapped"] else ""),
                            )
                            runs.append({"engine": engine, "workers": n, "kind": kind, **sat})
                        best = fastest(runs)[(engine, n, kind)]
                        section.add(
                            f"{label}: accepted, durably committed ({what})",
                            best["accepted_rate"],
                            "req/s",
                            baseline="target 2,000/s",
                            ratio=best["accepted_rate"] / 2000,
                            note=f"the best of {', '.join(map(str, connections))} connections "
                            f"({best['connections']})",
                        )
                        if kind == "saturation" and ceiling:
                            # The server's ceiling is that of every core it can use.
                            used = min(n, cores)
                            share = best["rate"] / (ceiling * used)
                            section.add(
                                f"{label}: end to end, share of the crypto ceiling",
                                100 * share,
                                f"% of {used} core(s)",
                                baseline="target 25 %",
                                ratio=share / 0.25,
                                note=f"{best['connections']} connections; ceiling "
                                f"{ceiling:,.0f} req/s a core x {used}",
                            )
                for rate in rates:
                    reset(url)
                    result = at_rate(base, bodies_file, rate, rate_seconds, pid)
                    section.add(
                        f"{label}: {rate} req/s offered",
                        result["p99_ms"],
                        "ms p99",
                        baseline="p99 / 50 ms target",
                        ratio=result["p99_ms"] / 50,
                        note=f"achieved {result['achieved_rate']:.0f}/s, "
                        f"p50 {result['p50_ms']:.1f} ms, max {result['max_ms']:.0f} ms; "
                        f"generator CPU {result['generator_cpu_share']:.0%} of a core, "
                        f"lag {result['generator_max_lag_ms']:.1f} ms; "
                        f"server CPU {result['server_cpu_us']:.0f} µs/request, "
                        f"{result['server_sleeps']:.1f} thread sleeps/request, "
                        f"{result['per_commit']:.1f} requests per commit, "
                        f"idle {result['idle']:.0%}, stolen {result['steal']:.0%}"
                        + (f"; errors {result['errors']}" if result["errors"] else "")
                        + (
                            f"; {result['unanswered']} unanswered at the cut-off"
                            if result["unanswered"]
                            else ""
                        ),
                    )
                    runs.append({"engine": engine, "workers": n, "kind": "rate", **result})
    if not have_wrk:
        section.add(
            "saturation", float("nan"), "req/s", note="wrk not installed (apt-get install wrk)"
        )
    section.data["runs"] = runs
    return section
