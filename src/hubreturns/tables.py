"""Rows for the terminal: a table when it fits, a list of records when it does not.

Identifiers (EUI-64s, RequestIDs) and timestamps are never cut or folded: a
truncated EUI looks like another hub's. Other columns fold onto more lines.
When even that is wider than the terminal (``COLUMNS``), each row is printed
as a block of ``name: value`` lines instead. An empty result says so in words.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Collection, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["emit_rows", "print_rows", "rows_table"]

#: The narrowest a folding column may get before the table reads worse than a list.
_FOLD_MIN = 10


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def _min_width(
    headers: Sequence[str], rows: Sequence[Sequence[object]], whole: Collection[str]
) -> int:
    """The narrowest the table can be drawn with every ``whole`` cell on one line."""
    total = len(headers) + 1  # the vertical rules
    for n, header in enumerate(headers):
        longest = max(len(header), *(len(_cell(row[n])) for row in rows))
        total += 2 + (longest if header in whole else min(longest, _FOLD_MIN))
    return total


def rows_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    title: str | None = None,
    whole: Collection[str] = (),
) -> Table:
    """A table whose ``whole`` columns never wrap; the others fold."""
    table = Table(title=title, title_justify="left")
    for header in headers:
        if header in whole:
            table.add_column(header, no_wrap=True)
        else:
            table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(Text(_cell(v)) for v in row))
    return table


def print_rows(
    console: Console,
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    title: str,
    whole: Collection[str] = (),
    empty: str | None = None,
) -> None:
    """``rows`` as a table if it fits the console's width, else as one block per row."""
    if not rows:
        console.print(empty or f"{title}: no rows.", highlight=False)
        return
    table = rows_table(headers, rows, title=title, whole=whole)
    if _min_width(headers, rows, whole) <= console.width:
        console.print(table)
        return
    count = f"{len(rows)} row" + ("" if len(rows) == 1 else "s")
    heading = f"{title} ({count}, one block each: too wide for a table here)"
    console.print(Text(heading, style="bold"))
    label = max(len(h) for h in headers)
    for row in rows:
        console.print()
        for header, value in zip(headers, row, strict=True):
            line = Text(f"{header:>{label}}: ", style="dim")
            line.append(_cell(value))
            console.print(line, overflow="fold")


def emit_rows(
    console: Console,
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    as_csv: bool,
    title: str,
    whole: Collection[str] = (),
) -> None:
    """``rows`` as CSV on standard output (for a pipe or a spreadsheet), else as ``print_rows``.

    CSV lines end in ``\\n``, as other Unix tools' output does; readers accept either ending.
    """
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows([_cell(v) for v in row] for row in rows)
        return
    print_rows(console, headers, rows, title=title, whole=whole)
