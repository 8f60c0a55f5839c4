"""Report output: Rich tables for the terminal, CSV, and one self-contained HTML file.

The HTML file embeds the charts (``charts``) as base64 PNG ``data:`` URIs, so
it needs nothing else to be read.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.text import Text

from hubreturns.dcc.logistics.reports import REPORT_SECTIONS, Report, ReportRow
from hubreturns.tables import rows_table

__all__ = [
    "CSV_COLUMNS",
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
    # Imported here: matplotlib takes about a second to import, which every CLI
    # command and every server process would otherwise pay at start-up.
    from hubreturns.dcc.logistics.charts import CHARTS, chart_png

    for section, title, amounts in CHARTS:
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
