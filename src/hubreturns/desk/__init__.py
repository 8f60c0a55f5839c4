"""Service Desk web channel (issue 4): staff sign-in, hub look-up, returns on behalf of users."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from hubreturns.config import Settings
    from hubreturns.processing import Processor

__all__ = ["register_cli", "routes"]


def routes(processor: Processor, settings: Settings) -> list[BaseRoute]:
    return []


def register_cli(app: typer.Typer) -> None:
    return None
