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
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from hubreturns.dcc.cli import ConfigOption
from hubreturns.dcc.config import load_settings
from hubreturns.dcc.desk import accounts
from hubreturns.dcc.store.db import make_engine, make_sessionmaker
from hubreturns.errors import HintedError

__all__ = ["desk_app"]

desk_app = typer.Typer(help="Service Desk staff accounts (sign-in for the /desk pages).")
console = Console()


@contextmanager
def _transaction(config: Path | None) -> Iterator[Session]:
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine).begin() as session:
            yield session
    except SQLAlchemyError as exc:
        raise HintedError(
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
    with _transaction(config) as session:
        accounts.add_staff(session, name, password, datetime.now(UTC))
    console.print(f"[green]staff account created[/green]: {name}")


def _minute(moment: datetime) -> str:
    """A stored moment (aware, UTC) to the minute."""
    return moment.strftime("%Y-%m-%d %H:%M")


@desk_app.command("list-users")
def list_users(config: ConfigOption = None) -> None:
    """Staff accounts, with status (active, disabled, locked), creation and last sign-in (UTC)."""
    now = datetime.now(UTC)
    with _transaction(config) as session:
        staff = accounts.list_staff(session)
        locks = accounts.locks(session, now)
    if not staff:
        console.print("no staff accounts yet: add one with `hubreturns desk add-user NAME`")
        return
    table = Table(title="Service Desk staff (times UTC)")
    table.add_column("name", overflow="fold")
    table.add_column("status", overflow="fold")
    for heading in ("created", "last sign-in"):
        table.add_column(heading, no_wrap=True)
    for s in staff:
        status = "active" if s.active else "disabled"
        if s.name in locks:
            status += f", locked until {_minute(locks[s.name])}"
        table.add_row(
            s.name,
            status,
            _minute(s.created_at),
            _minute(s.last_sign_in_at) if s.last_sign_in_at else "never",
        )
    console.print(table)


@desk_app.command("reset-password")
def reset_password(
    name: Annotated[str, typer.Argument(help="Staff sign-in name.")],
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Set a new password; the account's sessions end and its sign-in lock is cleared."""
    password = _read_password(password_stdin)
    with _transaction(config) as session:
        accounts.reset_password(session, name, password, datetime.now(UTC))
    console.print(f"[green]password reset[/green]: {name} (its sessions have ended)")


@desk_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="Staff sign-in name.")],
    config: ConfigOption = None,
) -> None:
    """Delete an account for good (returns it entered keep its name); `disable` is reversible."""
    with _transaction(config) as session:
        accounts.remove_staff(session, name)
    console.print(f"[yellow]staff account removed[/yellow]: {name}")


def _set_active(name: str, active: bool, config: Path | None) -> None:
    with _transaction(config) as session:
        accounts.set_active(session, name, active, datetime.now(UTC))


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
