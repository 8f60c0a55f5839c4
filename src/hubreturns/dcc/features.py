"""Where the DCC side's features plug into the HTTP app.

Each feature (observability, the Service Desk, logistics) exposes
``routes(processor, settings)``; this is the one list of them, imported lazily
by ``service`` so that the core never imports feature code and imports go one
way, from the features to the core (``tests/test_shape.py`` fails on a cycle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from hubreturns.dcc.config import Settings
    from hubreturns.dcc.processing import Processor

__all__ = ["feature_routes"]


def feature_routes(processor: Processor, settings: Settings) -> list[BaseRoute]:
    from hubreturns.dcc import desk, logistics, observability

    return [
        *observability.routes(processor, settings),
        *desk.routes(processor, settings),
        *logistics.routes(processor, settings),
    ]
