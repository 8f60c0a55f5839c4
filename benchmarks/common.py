"""Shared pieces of the benchmark sections: timing, result rows, the machine, databases."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "PG_URL",
    "CpuShares",
    "Figure",
    "Machine",
    "Section",
    "fsync_latencies",
    "machine",
    "percentile",
    "pg_available",
    "pg_bench_url",
    "postmaster_pid",
    "sqlite_url",
    "throughput",
]

#: PostgreSQL for the benchmarks; the suite works in a schema ``bench`` of its own.
PG_URL = os.environ.get(
    "HUBRETURNS_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def pg_bench_url() -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3Dbench"


def sqlite_url(folder: Path, name: str) -> str:
    path = folder / name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


def pg_available() -> bool:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Machine:
    cpus: int
    cpu_model: str
    python: str
    platform: str
    #: 1-minute load average when the run started: other work on the machine skews figures.
    load_average: float
    #: Versions of the packages on the request path: a figure belongs to them too.
    packages: dict[str, str] = field(default_factory=dict)


#: The distributions whose versions a run records (``Machine.packages``).
_PACKAGES = (
    "lxml",
    "cryptography",
    "SQLAlchemy",
    "psycopg",
    "uvicorn",
    "starlette",
    "uvloop",
    "httptools",
    "prometheus-client",
    "orjson",
)


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine() -> Machine:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return Machine(
        cpus=os.cpu_count() or 0,
        cpu_model=model,
        python=platform.python_version(),
        platform=platform.platform(),
        load_average=os.getloadavg()[0],
        packages=_versions(),
    )


class CpuShares:
    """How the machine's CPU time was spent between ``__init__`` and ``read`` (/proc/stat).

    ``idle`` is time no process wanted (idle + I/O wait): a server that leaves
    the cores idle at "saturation" is waiting on something other than the CPU.
    ``steal`` is time the hypervisor gave to other guests: a run with much of it
    was slowed by a neighbour, not by the code.
    """

    def __init__(self) -> None:
        self._start = self._ticks()

    @staticmethod
    def _ticks() -> list[int]:
        try:
            with open("/proc/stat") as stat:
                return [int(x) for x in stat.readline().split()[1:]]
        except OSError:
            return []

    def read(self) -> dict[str, float]:
        end = self._ticks()
        delta = [b - a for a, b in zip(self._start, end, strict=False)]
        total = sum(delta)
        if total <= 0 or len(delta) < 8:
            return {"idle": float("nan"), "steal": float("nan")}
        return {"idle": (delta[3] + delta[4]) / total, "steal": delta[7] / total}


def postmaster_pid(url: str) -> int | None:
    """The local PostgreSQL server's main process (for its CPU time), or None if remote."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            try:  # read while the backend lives: its parent is the postmaster
                stat = Path(f"/proc/{backend}/stat").read_text()
            except OSError:
                return None
    finally:
        engine.dispose()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure: ``value`` in ``unit``, optionally against a named baseline."""

    section: str
    name: str
    value: float
    unit: str
    baseline: str | None = None
    ratio: float | None = None
    note: str = ""


@dataclass(slots=True)
class Section:
    """A section's figures plus free-form data (latency series, for the chart)."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def add(self, name: str, value: float, unit: str, **extra: Any) -> Figure:
        figure = Figure(self.title, name, value, unit, **extra)
        self.figures.append(figure)
        return figure

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "skipped": self.skipped,
            "figures": [asdict(f) for f in self.figures],
            "data": self.data,
        }


def throughput(call: Callable[[int], object], seconds: float, *, batch: int = 50) -> float:
    """Calls per second of ``call(i)`` on this thread, over about ``seconds``."""
    for i in range(min(batch, 20)):  # warm up caches and lazily built state
        call(i)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(batch):
            call(done)
            done += 1
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - started)


def cpu_per_call(call: Callable[[int], object], *, idle: float, count: int) -> float:
    """CPU seconds one ``call(i)`` costs this thread when each follows ``idle`` seconds asleep.

    Why: on the VMs these benchmarks run on, work that follows a pause costs
    far more CPU than the same work back to back, and at a moderate load every
    request follows one. The median call is kept, so a stray interruption does
    not count.
    """
    for i in range(min(count, 20)):  # warm up lazily built state
        call(i)
    costs: list[float] = []
    for i in range(count):
        if idle:
            time.sleep(idle)
        started = time.thread_time()
        call(i)
        costs.append(time.thread_time() - started)
    return statistics.median(costs)


def fsync_latencies(folder: Path, seconds: float) -> list[float]:
    """Seconds each ``fsync`` of an 8 KiB append took, sorted, over about ``seconds``.

    The floor under every durable commit (SQLite's WAL and PostgreSQL's both
    wait for one): a disk that now and then takes 200 ms over an fsync puts
    that in the tail latency of every request committed meanwhile.
    """
    path = folder / "fsync-probe"
    taken: list[float] = []
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * 8192
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            os.write(descriptor, block)
            started = time.perf_counter()
            os.fsync(descriptor)
            taken.append(time.perf_counter() - started)
    finally:
        os.close(descriptor)
        path.unlink(missing_ok=True)
    return sorted(taken)


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def _tree(root: int) -> dict[int, list[str]]:
    """The /proc stat fields (after the name) of process ``root`` and its live descendants."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree: dict[int, list[str]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if pid in stats:
            tree[pid] = stats[pid]
    return tree


def tree_cpu(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by process ``root`` and its live descendants.

    Read from /proc (Linux). CPU per request is steadier than throughput on a
    shared machine: it does not depend on how the cores were shared.
    """
    tick = os.sysconf("SC_CLK_TCK")
    tree = _tree(root).values()
    return sum(int(f[11]) for f in tree) / tick, sum(int(f[12]) for f in tree) / tick


def tree_sleeps(root: int) -> int:
    """How many times the threads of ``root`` and its live descendants have gone to sleep.

    The sum of every thread's voluntary context switches (/proc, Linux). Each
    is a wait for something (a socket, a lock, the disk) and a wake-up after
    it: sleeps a request count the hand-offs between threads and processes a
    request costs, and the count does not depend on how busy the machine is.
    (Fewer of them did not mean less CPU: docs/performance.md, "Fifth round".)
    """
    sleeps = 0
    for pid in _tree(root):
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                status = (task / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    sleeps += int(line.split()[1])
    return sleeps
