"""Shared pieces of the benchmark sections: timing, result rows, the machine, databases."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PG_URL",
    "Figure",
    "Machine",
    "Section",
    "machine",
    "percentile",
    "pg_available",
    "pg_bench_url",
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
    )


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


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def tree_cpu(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by process ``root`` and its live descendants.

    Read from /proc (Linux). CPU per request is steadier than throughput on a
    shared machine: it does not depend on how the cores were shared.
    """
    tick = os.sysconf("SC_CLK_TCK")
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
    user = system = 0.0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        fields = stats.get(pid)
        if fields is not None:
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
    return user, system
