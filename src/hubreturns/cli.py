"""The ``hubreturns`` command: the DCC operator's commands (``dcc.cli``), the Service
User's tools and the features' commands (added by ``extensions``), and ``demo``,
which drives both sides against each other.
"""

from __future__ import annotations

import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from hubreturns.dcc.cli import app, console, fail, report
from hubreturns.dcc.config import Settings, redact_url
from hubreturns.dcc.store.db import migrate
from hubreturns.dcc.store.repository import Repository
from hubreturns.errors import HintedError

__all__ = ["app", "demo", "main"]


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo database, CSVs and keys.")] = Path(
        "demo-out"
    ),
    log_level: Annotated[
        str, typer.Option(help="JSON log lines on stderr from this level (info: one per request).")
    ] = "warning",
) -> None:
    """Set up a SQLite demo world, serve it over HTTP and run every scenario."""
    from hubreturns.dcc.observability import configure_logging
    from hubreturns.dcc.service import build_service, create_app
    from hubreturns.dcc.serving import running_server
    from hubreturns.demo import seed
    from hubreturns.user.scenarios import SCENARIOS, build_world, run_scenarios

    try:
        configure_logging(log_level)
    except ValueError as exc:
        fail(str(exc), "Pass --log-level debug|info|warning|error.")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    now = datetime.now(UTC)
    world = build_world(out, now=now)
    settings = Settings(
        database_url=f"sqlite:///{out / 'hubreturns-demo.db'}",
        # A demo: answers are signed with the packaged public DCC test key.
        allow_test_keys=True,
        # One process for one run: a fresh desk session key is exactly right here.
        session_secret=secrets.token_hex(32),
        smki_ca_certs=world.smki_ca_certs,  # the demo's own CA: every certificate chains to it
    )
    processor = build_service(settings)
    bind = processor.engine
    migrate(bind)
    seed(processor.sessions, world, now)
    console.print(
        f"demo world in [bold]{out}/[/bold]: users.csv, appointments.csv, devices.csv, pki/"
    )
    table = Table(title="8.14.3 / 8.14.4 scenarios over HTTP")
    for heading in ("#", "scenario", "expected", "received", "HTTP", "signed", "result"):
        table.add_column(heading, overflow="fold")
    with running_server(create_app(processor, settings)) as url:
        console.print(f"service on {url}; sending {len(SCENARIOS)} signed requests")
        results = run_scenarios(url, world)
    for n, result in enumerate(results, 1):
        table.add_row(
            str(n),
            result.scenario.name,
            result.scenario.expected_code,
            result.received,
            str(result.http_status),
            "yes" if result.signature_ok else "NO",
            "[green]pass[/green]" if result.passed else f"[red]FAIL[/red] {result.detail}",
        )
    console.print(table)
    with processor.sessions() as session:
        counts = Repository(session).counts()
    passed = sum(r.passed for r in results)
    console.print(
        f"{passed}/{len(results)} passed; database: {counts['returns']} returns recorded, "
        f"{counts['audit_log']} audit rows ({redact_url(settings.database_url)})"
    )
    bind.dispose()
    if passed != len(results):
        raise typer.Exit(1)


def main() -> None:
    from hubreturns.extensions import register_commands

    register_commands(app)
    try:
        app()
    except HintedError as exc:
        report(str(exc), exc.hint, exc.code)
    except SQLAlchemyError as exc:  # outside ``_store``: the URL is not known here
        first = redact_url(str(exc).splitlines()[0])
        report(f"database: {first}", "Run `hubreturns init` and check database_url.", "database")
