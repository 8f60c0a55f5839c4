"""Where the feature packages plug into the HTTP app and the CLI.

Each feature (Service Desk, logistics, observability, the Service User
client) exposes ``routes(processor, settings)`` and/or ``register_cli(app)``;
this module is the one list of them, so the core never imports feature code
elsewhere. Imports go one way, from here to the features and from them to the
core, never back (``tests/test_shape.py`` fails on an import cycle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from hubreturns.config import Settings
    from hubreturns.processing import Processor

__all__ = ["feature_routes", "register_commands"]


def feature_routes(processor: Processor, settings: Settings) -> list[BaseRoute]:
    from hubreturns import desk, logistics, observability

    return [
        *observability.routes(processor, settings),
        *desk.routes(processor, settings),
        *logistics.routes(processor, settings),
    ]


def register_commands(app: typer.Typer) -> None:
    from hubreturns import desk, logistics, usercli

    usercli.register_cli(app)
    desk.register_cli(app)
    logistics.register_cli(app)
