"""Metrics and structured logs (issue 5): /metrics and request-scoped JSON logging."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from hubreturns.config import Settings
    from hubreturns.processing import Processor

__all__ = ["routes"]


def routes(processor: Processor, settings: Settings) -> list[BaseRoute]:
    return []
