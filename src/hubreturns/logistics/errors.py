"""The one error type of the logistics layer: a message, an actionable hint, a status.

Operations raise ``LogisticsError`` (or a subclass naming the HTTP status it
maps to); the CLI prints ``error:``/``hint:`` and the API answers JSON. Row
problems of an uploaded file travel as ``RowProblem`` values.
"""

from __future__ import annotations

from collections.abc import Sequence

from hubreturns.importers import RowProblem

__all__ = ["Conflict", "Invalid", "LogisticsError", "NotFound", "RowProblem"]


class LogisticsError(Exception):
    """An operation refused; nothing was written."""

    status: int = 422

    def __init__(
        self,
        message: str,
        hint: str,
        *,
        field: str | None = None,
        problems: Sequence[RowProblem] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.field = field
        self.problems = tuple(sorted(problems, key=lambda p: p.line))

    def __str__(self) -> str:
        lines = [self.message, *(f"  {p}" for p in self.problems)]
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.message, "hint": self.hint}
        if self.field is not None:
            body["field"] = self.field
        if self.problems:
            body["problems"] = [
                {"line": p.line, "field": p.field, "message": p.message} for p in self.problems
            ]
        return body


class Invalid(LogisticsError):
    """The input itself is wrong (a field, a row)."""

    status = 422


class NotFound(LogisticsError):
    """The order, return or consignment named does not exist."""

    status = 404


class Conflict(LogisticsError):
    """The input is well-formed but the current state forbids it."""

    status = 409
