"""Service Desk web channel: staff sign-in, hub look-up, returns on behalf of users.

``routes`` mounts the desk pages at ``/desk`` (a sub-application with its own
session, CSRF and sign-in gate, see ``desk.web``); ``register_cli`` adds
``hubreturns desk add-user | list-users | disable | enable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route

if TYPE_CHECKING:
    from hubreturns.dcc.config import Settings
    from hubreturns.dcc.processing import Processor

__all__ = ["register_cli", "routes"]


def routes(processor: Processor, settings: Settings) -> list[BaseRoute]:
    from hubreturns.dcc.desk.web import create_desk_app

    return [
        Route("/desk", RedirectResponse("/desk/", status_code=307), methods=["GET"]),
        Mount("/desk", app=create_desk_app(processor, settings), name="desk"),
    ]


def register_cli(app: typer.Typer) -> None:
    from hubreturns.dcc.desk.cli import desk_app

    app.add_typer(desk_app, name="desk")
