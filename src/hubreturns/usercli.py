"""The Service User's commands (issue 4): submit, sign, verify, testpack."""

from __future__ import annotations

import typer

__all__ = ["register_cli"]


def register_cli(app: typer.Typer) -> None:
    return None
