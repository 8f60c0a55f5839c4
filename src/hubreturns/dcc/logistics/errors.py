"""The one error type of the logistics layer: a message, an actionable hint, a status.

Operations raise ``LogisticsError`` (or a subclass naming the HTTP status it
maps to); the CLI prints ``error:``/``hint:`` and the API answers JSON. Row
problems of an uploaded file travel as ``RowProblem`` values; a problem with a
field of a command or JSON body (not a file row) has line 0 and is shown
without one.
"""

from __future__ import annotations

from collections.abc import Sequence

from hubreturns.dcc.importers import RowProblem
from hubreturns.errors import HintedError

__all__ = [
    "Conflict",
    "Invalid",
    "LogisticsError",
    "NotFound",
    "RowProblem",
    "problem_json",
    "problem_text",
]


def problem_text(problem: RowProblem) -> str:
    """``line N, field: message``, or ``field: message`` for a field that is not a row."""
    if problem.line:
        return str(problem)
    return f"{problem.field}: {problem.message}" if problem.field else problem.message


def problem_json(problem: RowProblem) -> dict[str, object]:
    body: dict[str, object] = {"field": problem.field, "message": problem.message}
    if problem.line:
        body["line"] = problem.line
    return body


class LogisticsError(HintedError):
    """An operation refused; nothing was written."""

    code = "invalid"
    status: int = 422

    def __init__(
        self,
        message: str,
        hint: str,
        *,
        field: str | None = None,
        problems: Sequence[RowProblem] = (),
    ) -> None:
        super().__init__(message, hint)
        self.field = field
        self.problems = tuple(sorted(problems, key=lambda p: p.line))

    def __str__(self) -> str:
        lines = [self.message, *(f"  {problem_text(p)}" for p in self.problems)]
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.message, "hint": self.hint}
        if self.field is not None:
            body["field"] = self.field
        if self.problems:
            body["problems"] = [problem_json(p) for p in self.problems]
        return body


class Invalid(LogisticsError):
    """The input itself is wrong (a field, a row)."""

    code = "invalid"
    status = 422


class NotFound(LogisticsError):
    """The order, return or consignment named does not exist."""

    code = "not_found"
    status = 404


class Conflict(LogisticsError):
    """The input is well-formed but the current state forbids it."""

    code = "conflict"
    status = 409
