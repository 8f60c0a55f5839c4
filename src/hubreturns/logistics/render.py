"""Report output: Rich tables for the terminal, CSV, and one self-contained HTML file.

Charts are drawn with matplotlib's object API on the Agg canvas (no pyplot
global state, no display needed, safe in server threads) and embedded as
base64 PNG ``data:`` URIs, so the HTML file needs nothing else to be read.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from datetime import UTC, datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.console import Group
from rich.table import Table

from hubreturns.logistics.reports import REPORT_SECTIONS, Report, ReportRow

__all__ = ["CSV_COLUMNS", "chart_png", "to_csv", "to_html", "to_rich"]

CSV_COLUMNS = ("section", "key", "detail", "count", "amount_gbp")


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        writer.writerow(
            (row.section, row.key, row.detail, row.count, "" if row.amount is None else row.amount)
        )
    return out.getvalue()


def to_rich(report: Report) -> Group:
    tables = []
    for name, title in REPORT_SECTIONS:
        rows = report.section(name)
        table = Table(title=title, title_justify="left")
        for header in ("key", "detail", "count", "amount (£)"):
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(
                row.key, row.detail, str(row.count), "" if row.amount is None else str(row.amount)
            )
        if not rows:
            table.add_row("(none)", "", "0", "")
        tables.append(table)
    return Group(*tables)


def chart_png(title: str, rows: Sequence[ReportRow], *, amounts: bool = False) -> bytes:
    """A horizontal bar chart of one section as PNG bytes."""
    labels = [row.key if len(row.key) <= 40 else row.key[:39] + "…" for row in rows]
    values = [float(row.amount or 0) if amounts else row.count for row in rows]
    figure = Figure(figsize=(7, 0.45 * max(len(rows), 1) + 1.2), dpi=96)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.barh(labels[::-1], values[::-1], color="#2f6f8f")
    axes.set_title(title, fontsize=11)
    axes.set_xlabel("£" if amounts else "count")
    if not amounts:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not rows:
        axes.text(0.5, 0.5, "nothing in this period", ha="center", va="center")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


_CHARTS = (
    ("returns_by_type", "Returns by type", False),
    ("returns_by_role", "Returns by role", False),
    ("rejections_by_code", "Rejections by code", False),
    ("charges", "Charges by party (£)", True),
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left}
td.n{text-align:right}
img{display:block;margin:.5em 0 1.5em;max-width:100%}
"""


def to_html(report: Report, *, generated: datetime | None = None) -> str:
    """One HTML document with every section as a table and the charts embedded."""
    moment = (generated or datetime.now(UTC)).isoformat(timespec="seconds")
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hubreturns report {report.period.first_day} to {report.period.last_day}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Communications Hub returns, {report.period.first_day} to "
        f"{report.period.last_day}</h1>",
        f"<p>Generated {e(moment)}. Tariff: {e(report.tariff_source)}. "
        "Periods include both days; times are UTC.</p>",
        "<h2>Charts</h2>",
    ]
    for section, title, amounts in _CHARTS:
        png = base64.b64encode(chart_png(title, report.section(section), amounts=amounts))
        parts.append(f'<img alt="{e(title)}" src="data:image/png;base64,{png.decode()}">')
    for name, title in REPORT_SECTIONS:
        parts.append(f"<h2>{e(title)}</h2>")
        rows = report.section(name)
        if not rows:
            parts.append("<p>None in this period.</p>")
            continue
        parts.append("<table><tr><th>key</th><th>detail</th><th>count</th><th>amount (£)</th></tr>")
        for row in rows:
            amount = "" if row.amount is None else str(row.amount)
            parts.append(
                f"<tr><td>{e(row.key)}</td><td>{e(row.detail)}</td>"
                f'<td class="n">{row.count}</td><td class="n">{amount}</td></tr>'
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
