"""The HTTP edge: DUIS endpoints and health, on Starlette.

The handlers only move bytes: the body is read with a cap while streaming, the
content type is checked, and ``Processor`` does the rest: the CPU-bound checks
and signing on the event loop, the database writes in its committer thread.
Every answerable request gets a signed DUIS response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hubreturns.config import Settings
from hubreturns.model import Endpoint
from hubreturns.processing import Outcome, Processor
from hubreturns.store.db import make_engine, make_sessionmaker

__all__ = [
    "BODY_READ_TIMEOUT_SECONDS",
    "XMLResponse",
    "app_from_environment",
    "create_app",
    "processor_from_settings",
]

_XML_TYPES = ("application/xml", "text/xml")

#: A client must deliver its whole body within this many seconds (slowloris guard).
BODY_READ_TIMEOUT_SECONDS = 10.0


class XMLResponse(Response):
    media_type = "application/xml"


def processor_from_settings(settings: Settings) -> Processor:
    engine = make_engine(settings.database_url)
    return Processor(
        make_sessionmaker(engine),
        signer=settings.signer(),
        policy=settings.policy(),
        access_control_broker=settings.acb_eui,
    )


def _respond(outcome: Outcome) -> XMLResponse:
    return XMLResponse(
        outcome.response,
        status_code=outcome.http_status,
        headers={"X-DUIS-Response-Code": outcome.code.value},
    )


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    processor: Processor,
    settings: Settings | None = None,
    *,
    body_timeout: float = BODY_READ_TIMEOUT_SECONDS,
) -> Starlette:
    from hubreturns.extensions import feature_routes

    settings = settings or Settings()

    async def duis(request: Request) -> Response:
        name = request.path_params["endpoint"]
        try:
            endpoint = Endpoint(name)
        except ValueError:
            return JSONResponse({"error": f"no DUIS endpoint {name}"}, status_code=404)
        limit = processor.policy.max_body_bytes

        async def refuse_unread(reason: str, status: int) -> Response:
            outcome = await run_in_threadpool(
                processor.reject_unreadable, reason, endpoint.value, http_status=status
            )
            return _respond(outcome)

        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _XML_TYPES:
            return await refuse_unread(
                f"content type {content_type or 'none'} is not application/xml", 415
            )
        try:
            async with asyncio.timeout(body_timeout):  # no extra task, unlike wait_for
                body = await _read_capped(request, limit)
        except TimeoutError:
            # A trickling client holds no worker thread, but must not hold a socket forever.
            response = await refuse_unread(f"body not received within {body_timeout:g} s", 408)
            response.headers["connection"] = "close"
            return response
        if body is None:
            return await refuse_unread(f"body over the {limit}-byte limit", 413)
        return _respond(await processor.handle_duis_async(body, endpoint))

    async def healthz(_: Request) -> Response:
        def probe() -> bool:
            # A write transaction on purpose: ready means able to record returns.
            with processor.sessions() as session:
                session.execute(text("SELECT 1"))
            return True

        try:
            await run_in_threadpool(probe)
        except Exception as exc:  # any failure means "not ready"
            return JSONResponse({"status": "unavailable", "database": str(exc)[:200]}, 503)
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(processor.close)
        bind = processor.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()

    routes = [
        Route("/api/v1/{endpoint}", duis, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        *feature_routes(processor, settings),
    ]
    from hubreturns.observability import RequestContextMiddleware

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        # request ids for the JSON logs, access line, HTTP metrics
        middleware=[Middleware(RequestContextMiddleware, processor=processor)],
    )
    app.state.processor = processor
    return app


def app_from_environment() -> Starlette:
    """uvicorn factory (``--factory``) for multi-worker serving: settings from the environment."""
    from hubreturns.config import load_settings
    from hubreturns.observability import configure_logging_from_environment

    configure_logging_from_environment()  # JSON lines in each worker process
    settings = load_settings()
    return create_app(processor_from_settings(settings), settings)
