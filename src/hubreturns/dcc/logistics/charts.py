"""The report's charts: horizontal bar charts drawn with matplotlib.

Drawn with matplotlib's object API on the Agg canvas: no pyplot global state,
no display needed, safe in server threads. Only ``render.to_html`` imports
this module, when it draws, since importing matplotlib takes about a second.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hubreturns.dcc.logistics.reports import ReportRow

__all__ = ["CHARTS", "chart_figure", "chart_label", "chart_png"]

#: The HTML report's charts: (report section, title, whether the bars are amounts in £).
CHARTS = (
    ("returns_by_type", "Returns by type", False),
    ("returns_by_role", "Returns by role", False),
    ("rejections_by_code", "Rejections by code", False),
    ("charges", "Charges by party (£)", True),
)


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
