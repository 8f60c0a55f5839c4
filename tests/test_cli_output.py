"""What the command line and the period report show people: readable at 100 columns,
whole identifiers, names and meanings next to codes, consistent CSV headings.

Runs ``hubreturns`` through Typer's runner with ``COLUMNS=100`` on SQLite and
PostgreSQL, after the demo's DUIS scenarios have filled the database.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from hubreturns.cli import app
from hubreturns.codes import CODE_INFO, DEFAULT_PROFILE, ResponseCode
from hubreturns.dcc.config import Settings
from hubreturns.dcc.logistics.charts import chart_figure, chart_label
from hubreturns.dcc.logistics.reports import ReportRow
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.store.models import AuditEntry, ReturnRecord, User
from hubreturns.extensions import register_commands
from hubreturns.user.scenarios import GS, IS, DemoWorld, scenario_bodies

if not any(group.name == "desk" for group in app.registered_groups):
    register_commands(app)

runner = CliRunner()
MEANINGS = {code: info.meaning for code, _, info in DEFAULT_PROFILE.rows()}
_EUI = re.compile(r"[0-9A-F]{2}(?:-[0-9A-F]{2}){7}")


@pytest.fixture
def filled(
    processor: Processor, world: DemoWorld, seeded: sessionmaker[Session]
) -> sessionmaker[Session]:
    for scenario, body in scenario_bodies(world):
        processor.handle_duis(body, scenario.endpoint)
    return seeded


def run(settings: Settings, *args: str, columns: int = 100) -> Result:
    return runner.invoke(
        app,
        list(args),
        env={"HUBRETURNS_DATABASE_URL": settings.database_url, "COLUMNS": str(columns)},
    )


def _readable(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert "…" not in result.output, result.output  # nothing cut short
    widest = max(len(line) for line in result.output.splitlines())
    assert widest <= 100, widest
    return result.output


def test_returns_and_log_show_whole_euis_and_timestamps_at_100_columns(
    settings: Settings, filled: sessionmaker[Session]
) -> None:
    with filled() as session:
        records = session.scalars(select(ReturnRecord)).all()
        entries = session.scalars(select(AuditEntry)).all()
    output = _readable(run(settings, "returns"))
    for record in records:
        for eui in (record.originator, record.on_behalf_of, record.device_id):
            assert eui in output
        assert record.request_id in output
        assert record.received_at.isoformat(timespec="seconds")[:19] in output
    output = _readable(run(settings, "log"))
    for entry in entries:
        if entry.request_id:
            assert entry.request_id in output
    # what the table shows whole is every EUI in it, never a fragment of one
    assert set(_EUI.findall(output)) >= {e.originator for e in entries if e.originator}


def test_empty_results_say_so_in_a_line(settings: Settings, seeded: sessionmaker[Session]) -> None:
    for args, words in (
        (("returns",), "Recorded returns: no rows."),
        (("log", "--code", "E5"), "Request audit log: no rows."),
        (("consignments", "list"), "Consignments: no rows."),
        (("desk", "list-users"), "no staff accounts yet"),
    ):
        output = _readable(run(settings, *args))
        assert words in output, args
        assert "┏" not in output  # no empty table frame


def test_charges_and_report_at_100_columns_name_parties_and_codes(
    settings: Settings, filled: sessionmaker[Session]
) -> None:
    today = datetime.now(UTC).date()
    period = ("--from", str(today - timedelta(days=1)), "--to", str(today))
    output = _readable(run(settings, "charges", *period))
    assert IS in output
    assert GS in output
    with filled() as session:
        names = {str(u): str(n) for u, n in session.execute(select(User.user_id, User.name))}
    lines = _readable(run(settings, "report", *period)).splitlines()
    assert any(IS in line and names[IS] in line for line in lines)  # name next to the EUI
    for code in ("E4", "E40", "E44"):
        meaning = MEANINGS[code]
        assert any(f"│ {code} " in line and meaning[:12] in line for line in lines), code
    csv_rows = list(
        csv.DictReader(io.StringIO(run(settings, "report", *period, "--format", "csv").stdout))
    )
    rejection = next(
        r for r in csv_rows if r["section"] == "rejections_by_code" and r["key"] == "E5"
    )
    assert rejection["detail"] == MEANINGS["E5"]
    party = next(r for r in csv_rows if r["section"] == "returns_by_party" and r["key"] == IS)
    assert party["detail"] == names[IS]


def test_csv_headings_say_amount_gbp(settings: Settings, filled: sessionmaker[Session]) -> None:
    today = str(datetime.now(UTC).date())
    charges = run(settings, "charges", "--from", today, "--to", today, "--csv")
    assert charges.exit_code == 0, charges.output
    heading = charges.stdout.splitlines()[0].split(",")
    assert heading[-1] == "amount_gbp"
    assert not any("£" in h for h in heading)
    report = run(settings, "report", "--from", today, "--to", today, "--format", "csv")
    assert report.stdout.splitlines()[0] == "section,key,detail,count,amount_gbp"


def test_html_report_has_no_empty_columns_and_charts_label_their_bars(
    settings: Settings, filled: sessionmaker[Session], tmp_path: Path
) -> None:
    today = str(datetime.now(UTC).date())
    out = tmp_path / "report.html"
    result = run(
        settings, "report", "--from", today, "--to", today, "--format", "html", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    by_role = page.split("<h2>Returns by role</h2>")[1].split("</table>")[0]
    assert "<th>amount (£)</th>" not in by_role  # counts only: no blank amount column
    assert "<th>detail</th>" not in by_role
    charges = page.split("<h2>Charges by party and month</h2>")[1].split("</table>")[0]
    assert "<th>amount (£)</th>" in charges
    for table in page.split("<table>")[1:]:
        rows = [
            re.findall(r"<td[^>]*>(.*?)</td>", row)
            for row in table.split("</table>")[0].split("<tr>")
        ]
        columns = list(zip(*[r for r in rows if r], strict=True))
        assert all(any(cell for cell in column) for column in columns), table[:200]


def test_chart_bars_carry_values_names_and_meanings() -> None:
    party = ReportRow(
        section="charges",
        key=IS,
        count=3,
        amount=None,
        detail="Demo Import Supplier, 2026-12",
        name="Demo Import Supplier",
    )
    assert chart_label(party) == f"Demo Import Supplier, 2026-12\n{IS}"
    code = ReportRow(
        section="rejections_by_code", key="E5", count=2, name=CODE_INFO[ResponseCode.E5].meaning
    )
    assert chart_label(code).startswith("E5: ")
    figure = chart_figure("Rejections by code", [code, ReportRow(section="x", key="E4", count=7)])
    (axes,) = figure.axes
    assert sorted(t.get_text() for t in axes.texts) == ["2", "7"]
    ticks = [t.get_text() for t in axes.get_yticklabels()]
    assert ticks[-1].startswith("E5: ")
