"""``hubreturns desk …``: managing Service Desk staff accounts.

Accounts are only ever created here, by someone with access to the server's
configuration and database, never through the web pages.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from hubreturns.config import load_settings
from hubreturns.desk import accounts
from hubreturns.store.db import make_engine, make_sessionmaker

__all__ = ["desk_app"]

desk_app = typer.Typer(help="Service Desk staff accounts (sign-in for the /desk pages).")
console = Console()

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML settings file (default: $HUBRETURNS_CONFIG, ./hubreturns.toml).",
    ),
]


def _fail(error: accounts.AccountError) -> NoReturn:
    from hubreturns.cli import CliError

    raise CliError(error.message, error.hint) from None


@contextmanager
def _transaction(config: Path | None) -> Iterator[Session]:
    from hubreturns.cli import CliError

    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine).begin() as session:
            yield session
    except SQLAlchemyError as exc:
        raise CliError(
            f"database error: {str(exc).splitlines()[0][:200]}",
            "Run `hubreturns init` to create or migrate the database, and check database_url.",
        ) from None
    finally:
        engine.dispose()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@desk_app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="Staff sign-in name, e.g. jsmith.")],
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Create a staff account (the password is asked for twice, or read from stdin)."""
    password = _read_password(password_stdin)
    try:
        with _transaction(config) as session:
            accounts.add_staff(session, name, password, datetime.now(UTC))
    except accounts.AccountError as exc:
        _fail(exc)
    console.print(f"[green]staff account created[/green]: {name}")


@desk_app.command("list-users")
def list_users(config: ConfigOption = None) -> None:
    """Staff accounts, with status and last sign-in."""
    with _transaction(config) as session:
        staff = accounts.list_staff(session)
    table = Table("name", "status", "created", "last sign-in", title="Service Desk staff")
    for s in staff:
        table.add_row(
            s.name,
            "active" if s.active else "disabled",
            s.created_at.strftime("%Y-%m-%d %H:%M"),
            s.last_sign_in_at.strftime("%Y-%m-%d %H:%M") if s.last_sign_in_at else "never",
        )
    console.print(table)


def _set_active(name: str, active: bool, config: Path | None) -> None:
    try:
        with _transaction(config) as session:
            accounts.set_active(session, name, active, datetime.now(UTC))
    except accounts.AccountError as exc:
        _fail(exc)


@desk_app.command("disable")
def disable(
    name: Annotated[str, typer.Argument(help="Staff sign-in name.")],
    config: ConfigOption = None,
) -> None:
    """Disable an account; its open sessions end at once."""
    _set_active(name, False, config)
    console.print(f"[yellow]staff account disabled[/yellow]: {name}")


@desk_app.command("enable")
def enable(
    name: Annotated[str, typer.Argument(help="Staff sign-in name.")],
    config: ConfigOption = None,
) -> None:
    """Re-enable a disabled account (it signs in again with its old password)."""
    _set_active(name, True, config)
    console.print(f"[green]staff account enabled[/green]: {name}")


@desk_app.command("unlock")
def unlock(
    name: Annotated[str, typer.Argument(help="Sign-in name, as typed at the sign-in page.")],
    config: ConfigOption = None,
) -> None:
    """Clear the failed sign-ins under a name, ending its lock at once."""
    with _transaction(config) as session:
        cleared = accounts.unlock(session, name)
    if cleared:
        console.print(f"[green]failed sign-ins cleared[/green]: {name}")
    else:
        console.print(f"no failed sign-ins recorded under {name}: nothing to clear")
