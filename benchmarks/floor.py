"""The HTTP floor: a bare Starlette route on uvicorn that reads the body and answers
a fixed response of a DUIS response's size, with no XML, crypto or database.

Served the same way and loaded by the same wrk script as the service, it shows
what the HTTP stack alone costs on this machine (section 4's baseline).
Run as ``uvicorn benchmarks.floor:app``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["app"]

#: About the size of a signed sr:Response (the answer to one return).
_ANSWER = b"<r>" + b"x" * 1100 + b"</r>"


async def _answer(request: Request) -> Response:
    await request.body()
    return Response(_ANSWER, media_type="application/xml", headers={"X-DUIS-Response-Code": "I99"})


app = Starlette(routes=[Route("/api/v1/{endpoint}", _answer, methods=["POST"])])
