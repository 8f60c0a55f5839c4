"""Where the command lines of both sides join the one ``hubreturns`` command.

The Service User's tools (``user.usercli``), the Service Desk's and logistics'
commands each expose ``register_cli(app)``; this is the one list of them
(the HTTP features are listed in ``dcc.features``).
"""

from __future__ import annotations

import typer

__all__ = ["register_commands"]


def register_commands(app: typer.Typer) -> None:
    from hubreturns.dcc import desk, logistics
    from hubreturns.user import usercli

    usercli.register_cli(app)
    desk.register_cli(app)
    logistics.register_cli(app)
