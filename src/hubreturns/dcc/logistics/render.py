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
import textwrap
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.console import Group, RenderableType
from rich.text import Text

from hubreturns.dcc.logistics.reports import REPORT_SECTIONS, Report, ReportRow
from hubreturns.tables import rows_table

__all__ = [
    "CSV_COLUMNS",
    "chart_figure",
    "chart_label",
    "chart_png",
    "section_columns",
    "to_csv",
    "to_html",
    "to_rich",
]

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


#: Columns of a section's table: (heading, cell); a column empty in every row is left out.
_COLUMNS: tuple[tuple[str, Callable[[ReportRow], str]], ...] = (
    ("key", lambda row: row.key),
    ("detail", lambda row: row.detail),
    ("count", lambda row: str(row.count)),
    ("amount (£)", lambda row: "" if row.amount is None else str(row.amount)),
)


def section_columns(
    rows: Sequence[ReportRow],
) -> tuple[tuple[str, Callable[[ReportRow], str]], ...]:
    """The columns worth showing for ``rows``: never one that is blank all the way down."""
    return tuple((heading, cell) for heading, cell in _COLUMNS if any(cell(row) for row in rows))


def to_rich(report: Report) -> Group:
    """One table per section; keys (EUIs, codes) are never folded, a section with no rows
    says so in a line instead of a table."""
    parts: list[RenderableType] = []
    for name, title in REPORT_SECTIONS:
        rows = report.section(name)
        if not rows:
            parts.append(Text(f"{title}: none in this period.", style="italic"))
            continue
        columns = section_columns(rows)
        parts.append(
            rows_table(
                [heading for heading, _ in columns],
                [[cell(row) for _, cell in columns] for row in rows],
                title=title,
                whole={"key", "count", "amount (£)"},
            )
        )
    return Group(*parts)


def chart_label(row: ReportRow) -> str:
    """A bar's label: a party's name above its EUI, a code with its meaning; never a cut EUI."""
    if row.section == "rejections_by_code" and row.name:
        return f"{row.key}: {textwrap.shorten(row.name, 44, placeholder='…')}"
    if row.name:  # a party: charges rows also say which month
        named = row.detail if row.section == "charges" else row.name
        return f"{textwrap.shorten(named, 34, placeholder='…')}\n{row.key}"
    return textwrap.fill(row.key, 34)


def _value_text(value: float, amounts: bool) -> str:
    return f"£{value:,.2f}" if amounts else f"{int(value)}"


def chart_png(title: str, rows: Sequence[ReportRow], *, amounts: bool = False) -> bytes:
    """``chart_figure`` as PNG bytes."""
    buffer = io.BytesIO()
    chart_figure(title, rows, amounts=amounts).savefig(buffer, format="png")
    return buffer.getvalue()


def chart_figure(title: str, rows: Sequence[ReportRow], *, amounts: bool = False) -> Figure:
    """A horizontal bar chart of one section, each bar labelled with its value."""
    labels = [chart_label(row) for row in rows]
    values = [float(row.amount or 0) if amounts else row.count for row in rows]
    lines = sum(label.count("\n") + 1 for label in labels)
    figure = Figure(figsize=(8, 0.3 * max(lines, 1) + 0.2 * len(rows) + 1.2), dpi=96)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bars = axes.barh(labels[::-1], values[::-1], color="#2f6f8f")
    axes.bar_label(
        bars, labels=[_value_text(v, amounts) for v in values[::-1]], padding=3, fontsize=9
    )
    axes.set_title(title, fontsize=11)
    axes.set_xlabel("£" if amounts else "count")
    axes.tick_params(axis="y", labelsize=9)
    if values:
        axes.set_xlim(0, max(values) * 1.18 or 1)  # room for the value labels
    if not amounts:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not rows:
        axes.set_yticks([])
        axes.text(0.5, 0.5, "nothing in this period", ha="center", va="center")
    figure.tight_layout()
    return figure


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
        columns = section_columns(rows)
        parts.append(
            "<table><tr>" + "".join(f"<th>{e(heading)}</th>" for heading, _ in columns) + "</tr>"
        )
        for row in rows:
            cells = "".join(
                f'<td class="n">{e(cell(row))}</td>'
                if heading in ("count", "amount (£)")
                else f"<td>{e(cell(row))}</td>"
                for heading, cell in columns
            )
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
