"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--only 1,2,3,4,5,6]``.

Prints one table (absolute figures and ratios against baselines measured in
the same run), writes ``bench-results/<stamp>.json`` and a PNG chart of
throughput and latency against offered load. See README "Performance".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import crypto, hostile, http, inprocess
from benchmarks.common import Section, machine

__all__ = ["main"]

console = Console(width=160)


def _sizes(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run in about a minute")
    parser.add_argument(
        "--only", default="1,2,3,4,5,6", help="sections to run, e.g. 1,2,4 (6: hostile shapes)"
    )
    parser.add_argument(
        "--hubs", default=None, help="inventory sizes for section 5 (default 10000,1000000)"
    )
    parser.add_argument(
        "--users", type=int, default=None, help="users/certificates for section 5 (100000)"
    )
    parser.add_argument("--rates", default=None, help="offered loads for section 4 (250,500,1000)")
    parser.add_argument("--workers", default=None, help="worker counts for section 4 (1,2)")
    parser.add_argument(
        "--connections", default=None, help="wrk connections for section 4's saturation (32,64)"
    )
    parser.add_argument(
        "--engines",
        default="sqlite,postgresql",
        help="databases for section 4 (sqlite,postgresql)",
    )
    parser.add_argument("--scale-postgres", action="store_true", help="section 5 on PostgreSQL too")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    quick = args.quick
    only = {s.strip() for s in args.only.split(",")}
    seconds = 1.0 if quick else 3.0
    started = time.perf_counter()
    dirty_at_start = _git_dirty()
    host = machine()
    console.print(
        f"[bold]hubreturns benchmarks[/bold] on {host.cpus} CPU(s), {host.cpu_model}, "
        f"Python {host.python}{' (quick)' if quick else ''}"
    )
    if host.load_average > 0.5:
        console.print(
            f"[yellow]load average {host.load_average:.1f} before the run: other processes "
            "share these CPUs, so absolute figures are low; ratios are less affected[/yellow]"
        )
    sections: list[Section] = []
    work = Path(tempfile.mkdtemp(prefix="hubreturns-bench-"))
    ceiling: float | None = None
    if "1" in only or "3" in only or "4" in only:
        first = crypto.ceiling(seconds)
        ceiling = first.data["ceiling_per_core"]
        if "1" in only:
            sections.append(first)
            _print(first)
    if "2" in only:
        sections.append(crypto.verification(seconds))
        _print(sections[-1])
    if "3" in only:
        sections.append(
            inprocess.request_path(
                work,
                seconds=2.0 if quick else 6.0,
                requests=1500 if quick else 12000,
                hubs=10_000,
                ceiling=ceiling,
            )
        )
        _print(sections[-1])
    if "4" in only:
        sections.append(
            http.end_to_end(
                work,
                saturation_seconds=3 if quick else 10,
                rate_seconds=2 if quick else 10,
                rates=_sizes(args.rates or ("250,500" if quick else "250,500,1000")),
                workers=_sizes(args.workers or ("1" if quick else "1,2")),
                ceiling=ceiling,
                cores=host.cpus,
                connections=_sizes(args.connections or ("32" if quick else "32,64")),
                engines={e.strip().lower() for e in args.engines.split(",") if e.strip()},
            )
        )
        _print(sections[-1])
    if "5" in only:
        sections.append(
            inprocess.scale(
                work,
                sizes=_sizes(args.hubs or ("10000,100000" if quick else "10000,1000000")),
                users=args.users if args.users is not None else (10_000 if quick else 100_000),
                seconds=1.5 if quick else 4.0,
                requests=800 if quick else 3000,
                postgres=args.scale_postgres,
            )
        )
        _print(sections[-1])
    if "6" in only:
        sections.append(
            hostile.hostile_shapes(
                work, seconds=1.0 if quick else 3.0, requests=1000 if quick else 4000
            )
        )
        _print(sections[-1])
    elapsed = time.perf_counter() - started
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "when": stamp,
        "quick": quick,
        "seconds": elapsed,
        "machine": asdict(host),
        "git": _git_revision(),
        # Uncommitted changes when the run started or ended: its figures are not the commit's.
        "git_dirty": dirty_at_start or _git_dirty(),
        "sections": [s.as_json() for s in sections],
        "targets": _targets(sections, host.cpus),
    }
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    chart = _chart(sections, args.out / f"{stamp}.png", host.cpus)
    _print_targets(document["targets"])
    console.print(f"results: {json_path}" + (f", chart: {chart}" if chart else ""))
    if document["git_dirty"]:
        console.print(
            "[yellow]uncommitted changes in the source: not the commit's figures[/yellow]"
        )
    console.print(
        f"suite took {elapsed:.0f} s; load average {host.load_average:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end; scratch databases in {work}"
    )
    return 0


def _git_dirty() -> bool | None:
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(done.stdout.strip())


def _git_revision() -> str | None:
    head = Path(".git/HEAD")
    if not head.exists():
        return None
    ref = head.read_text().strip()
    if ref.startswith("ref: "):
        target = Path(".git") / ref[5:]
        return target.read_text().strip() if target.exists() else ref[5:]
    return ref


def _print(section: Section) -> None:
    table = Table(title=section.title, title_justify="left", show_lines=False)
    for name in ("measure", "value", "unit", "ratio", "against", "note"):
        table.add_column(name, overflow="fold")
    for f in section.figures:
        table.add_row(
            f.name,
            "n/a" if f.value != f.value else f"{f.value:,.1f}",
            f.unit,
            f"{f.ratio:.2f}" if f.ratio is not None else "",
            f.baseline or "",
            f.note,
        )
    console.print(table)
    if section.skipped:
        console.print(f"[yellow]{section.skipped}[/yellow]")


def _figure(sections: list[Section], name_part: str) -> float | None:
    for section in sections:
        for f in section.figures:
            if name_part in f.name and f.value == f.value:
                return f.value
    return None


def _targets(sections: list[Section], cores: int) -> list[dict[str, Any]]:
    """Each target with the figure measured against it in this run (reported, not asserted)."""
    by_title = {s.title[:1]: s for s in sections}
    targets: list[dict[str, Any]] = []
    verify = by_title.get("2")
    if verify is not None and "signxml" in verify.data:
        ratio = verify.data["ours"] / verify.data["signxml"]
        targets.append({"target": "verification >= 2x signxml", "value": ratio, "met": ratio >= 2})
    e2e = by_title.get("4")
    ceiling = by_title.get("1")
    if e2e is not None:
        for run in _best_saturation(e2e.data.get("runs", [])):
            label = f"{run['engine']}, {run['workers']} worker(s)"
            if run["kind"] == "accepted":
                accepted = run["accepted_rate"]
                targets.append(
                    {
                        "target": f">= 2,000 accepted req/s end to end ({label})",
                        "value": accepted,
                        "met": accepted >= 2000,
                    }
                )
            elif run["kind"] == "saturation":
                if ceiling is not None:
                    # Divided by the ceiling of every core the server's workers can use.
                    used = min(run["workers"], cores)
                    share = run["rate"] / (ceiling.data["ceiling_per_core"] * used)
                    targets.append(
                        {
                            "target": f"end to end >= 25 % of the crypto ceiling of its "
                            f"{used} core(s) ({label})",
                            "value": share,
                            "met": share >= 0.25,
                        }
                    )
            elif run["offered_rate"] == 1000:
                targets.append(
                    {
                        "target": f"p99 < 50 ms at 1,000 req/s ({label})",
                        "value": run["p99_ms"],
                        "met": run["p99_ms"] < 50 and run["achieved_rate"] > 950,
                    }
                )
    scale = by_title.get("5")
    if scale is not None:
        for f in scale.figures:
            if "1,000 users" in f.name and f.ratio is not None and f.ratio != 1.0:
                targets.append(
                    {
                        "target": f"flat cost: {f.name} vs smallest inventory",
                        "value": f.ratio,
                        "met": f.ratio <= 1.25,
                    }
                )
    return targets


def _best_saturation(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Section 4's runs with only the fastest saturation run of each server and stream."""
    return [*http.fastest(runs).values(), *(run for run in runs if run["kind"] == "rate")]


def _print_targets(targets: list[dict[str, Any]]) -> None:
    if not targets:
        return
    table = Table(title="targets (reported, not asserted)", title_justify="left")
    table.add_column("target")
    table.add_column("this run", justify="right")
    table.add_column("met")
    for t in targets:
        table.add_row(
            t["target"],
            f"{t['value']:,.2f}",
            "[green]yes[/green]" if t["met"] else "[red]no[/red]",
        )
    console.print(table)


def _chart(sections: list[Section], path: Path, cores: int) -> Path | None:
    e2e = next((s for s in sections if s.title.startswith("4.")), None)
    if e2e is None or not e2e.data.get("runs"):
        return None
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("[yellow]matplotlib not installed: no chart (pip install -e '.[bench]')")
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    configs: dict[str, list[dict[str, Any]]] = {}
    saturation: dict[str, float] = {}
    for run in _best_saturation(e2e.data["runs"]):
        label = f"{run['engine']}, {run['workers']}w"
        if run["kind"] == "rate":
            configs.setdefault(label, []).append(run)
        elif run["kind"] == "saturation":
            saturation[label] = run["rate"]
    for label, runs in configs.items():
        runs.sort(key=lambda r: r["offered_rate"])
        offered = [r["offered_rate"] for r in runs]
        (line,) = left.plot(offered, [r["achieved_rate"] for r in runs], marker="o", label=label)
        if label in saturation:
            left.axhline(saturation[label], color=line.get_color(), linestyle=":", linewidth=1)
        right.plot(
            offered,
            [r["p99_ms"] for r in runs],
            marker="o",
            color=line.get_color(),
            label=f"{label} p99",
        )
        right.plot(
            offered,
            [r["p50_ms"] for r in runs],
            marker=".",
            linestyle="--",
            color=line.get_color(),
            label=f"{label} p50",
        )
    top = max([*saturation.values(), *(r["offered_rate"] for rs in configs.values() for r in rs)])
    left.plot([0, top], [0, top], color="grey", linewidth=0.5, label="achieved = offered")
    left.set(
        xlabel="offered load (req/s)",
        ylabel="achieved throughput (req/s)",
        title="throughput vs load (dotted: wrk saturation)",
    )
    right.axhline(50, color="red", linewidth=0.8, linestyle=":", label="50 ms target")
    right.set(
        xlabel="offered load (req/s)",
        ylabel="latency (ms)",
        yscale="log",
        title="latency vs load (open loop)",
    )
    left.legend(fontsize=8)
    right.legend(fontsize=7)
    figure.suptitle(f"hubreturns end to end, mixed 80/20 traffic, {cores} CPU(s)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
