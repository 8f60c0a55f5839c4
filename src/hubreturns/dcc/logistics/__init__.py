"""Hub logistics: orders, deliveries, return lifecycle, consignments, charges, reports.

Pure modules (``values``, ``orders``, ``lifecycle``, ``consignments``,
``charges``) hold every rule; ``operations.Logistics`` applies them to the
database one transaction at a time; ``cli`` and ``api`` are the two shells.
The tables (``models``) are created by migration 0002.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from starlette.routing import BaseRoute

from hubreturns.dcc.logistics import models as models  # register the tables on Base

if TYPE_CHECKING:
    from hubreturns.dcc.config import Settings
    from hubreturns.dcc.processing import Processor

__all__ = ["register_cli", "routes"]


def routes(processor: Processor, settings: Settings) -> list[BaseRoute]:
    """The operator API under ``/api/ops/``, on the processor's database."""
    from hubreturns.dcc.logistics import api
    from hubreturns.dcc.logistics.charges import load_tariff
    from hubreturns.dcc.logistics.operations import Logistics

    logistics = Logistics(
        processor.sessions,
        load_tariff(settings.tariff_file),
        eligibility=processor.eligibility,
        codes=processor.codes,
    )
    return api.routes(logistics, settings)


def register_cli(app: typer.Typer) -> None:
    """``orders``, ``consignments``, ``lifecycle``, ``charges`` and ``report``."""
    from hubreturns.dcc.logistics import cli

    cli.register(app)
