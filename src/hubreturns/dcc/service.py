"""The HTTP edge: DUIS endpoints and health, on Starlette.

The DUIS endpoints only move bytes: the body is read with a cap while
streaming, the content type is checked, and ``Processor`` does the rest: the
CPU-bound checks and signing on the event loop, the database writes in its
group committer. Every answerable request gets a signed DUIS response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from hubreturns.dcc.committer import Load
from hubreturns.dcc.config import TEST_KEYS_WARNING, Settings, redact_url
from hubreturns.dcc.observability import (
    Exchange,
    RequestContextMiddleware,
    metrics_for,
    process_metrics,
)
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.serving import CONNECTIONS_STATE_KEY, EDGE_LIMITS_STATE_KEY, EdgeLimits
from hubreturns.dcc.smki import VOUCHED_WARNING, trust_mode
from hubreturns.dcc.store.db import make_engine
from hubreturns.model import Endpoint, clip
from hubreturns.policy import SecurityPolicy

__all__ = [
    "CLIENT_GONE",
    "DuisEndpoint",
    "Service",
    "app_from_environment",
    "build_service",
    "create_app",
]

log = logging.getLogger("hubreturns.dcc.service")


def build_service(
    settings: Settings, *, engine: Engine | None = None, policy: SecurityPolicy | None = None
) -> Processor:
    """The composition root: the store, the policy, the metrics and the committer, wired once.

    ``engine`` and ``policy`` are the settings' unless given (tests share an engine,
    or tighten a limit).
    """
    return Processor(
        engine if engine is not None else make_engine(settings.database_url),
        signer=settings.signer(),
        policy=policy if policy is not None else settings.policy(),
        access_control_broker=settings.acb_eui,
        commit_hold=settings.commit_hold_ms / 1000,
        codes=settings.response_codes,
        eligibility=settings.eligibility(),
        telemetry=process_metrics(),
    )


#: The DUIS endpoints by path, and the route template they are counted under.
_DUIS_PATHS = {f"/api/v1/{endpoint.value}": endpoint for endpoint in Endpoint}
_DUIS_ROUTE = "/api/v1/{endpoint}"
#: HTTP status recorded (access line, metrics) for a client that left mid-body.
CLIENT_GONE = 499


class _Unreadable(Exception):
    """The body cannot be had: a MALFORMED refusal with this HTTP status."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class _ClientGone(Exception):
    """The client disconnected before its whole body arrived: nobody to answer."""


class DuisEndpoint:
    """``POST /api/v1/serviceD|S|T`` as plain ASGI: request bytes in, signed bytes out.

    Why not a Starlette route: this is the path every DUIS request takes, and
    Starlette's layers around a route (error and exception middleware, router,
    request and response objects) cost more CPU than the rest of the HTTP
    handling. ``Service`` answers these requests ahead of them. What those
    layers gave is done here: the exchange's ids, access line and metrics
    (``Exchange``), and a logged 500 for an unexpected error. Reading the body
    is capped in size and time (slowloris), and the content type is checked.
    """

    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.metrics = metrics_for(processor)
        self.policy = processor.policy
        self.flush = processor.committer.flush

    def _load(self, scope: Scope) -> Load | None:
        """The load the committer is told of: the worker's open connections (from
        ``serving``'s protocol, when it serves) and this request, arriving from now
        (its body is read) until its job is submitted; None when nothing counts the
        connections (no ``serving``). Not from the request's first byte: a client
        trickling its body would keep every batch waiting for it."""
        connections = scope.get("state", {}).get(CONNECTIONS_STATE_KEY)
        if connections is None:
            return None
        return Load(clients=len(connections), arrival=self.flush.arrived())

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint
    ) -> None:
        exchange = Exchange(self.metrics, scope)
        status = 500
        load: Load | None = None
        try:
            try:
                body = await self._body(scope, receive)
            except _Unreadable as unread:
                load = self._load(scope)
                outcome = await self.processor.reject_unreadable_async(
                    unread.reason, endpoint.value, http_status=unread.status, load=load
                )
                close = unread.status == 408  # a trickling client must not keep the socket
            else:
                load = self._load(scope)
                outcome = await self.processor.handle_duis_async(body, endpoint, load)
                close = False
            status = outcome.http_status
            headers = [
                (b"content-type", b"application/xml"),
                (b"content-length", str(len(outcome.response)).encode("ascii")),
                (b"x-duis-response-code", outcome.code.encode("ascii")),
                exchange.header,
            ]
            if close:
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": outcome.response})
        except _ClientGone:
            status = CLIENT_GONE
        except Exception as exc:
            # A bug, not a bad request (those get signed answers): say so and keep serving.
            status = await self._internal_error(exc, endpoint, send, exchange.header)
        finally:
            if load is not None and load.arrival is not None:
                load.arrival.close()  # no job came (the client left, an error): not arriving
            exchange.close(status, _DUIS_ROUTE)

    async def _internal_error(
        self, exc: Exception, endpoint: Endpoint, send: Send, header: tuple[bytes, bytes]
    ) -> int:
        """Answer a request whose handling raised: a signed E100 with its audit row if
        the processor can still sign, else a plain 500. Returns the status sent."""
        try:
            outcome = await self.processor.internal_error_async(exc, endpoint.value)
        except Exception:
            log.exception("unexpected error answering a DUIS request; no signed answer either")
            outcome = None
        status = outcome.http_status if outcome is not None else 500
        if outcome is not None:
            headers = [
                (b"content-type", b"application/xml"),
                (b"content-length", str(len(outcome.response)).encode("ascii")),
                (b"x-duis-response-code", outcome.code.encode("ascii")),
                header,
            ]
            body = outcome.response
        else:
            headers = [(b"content-type", b"text/plain"), header]
            body = b"Internal Server Error"
        with contextlib.suppress(Exception):  # the response may have begun already
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        return status

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, read with a size cap and a deadline, or ``_Unreadable``."""
        policy = self.policy
        limit = policy.max_body_bytes
        content_type = declared = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                declared = value
        media = (content_type or "").split(";")[0].strip().lower()
        if media not in policy.content_types:
            shown = clip(media) if media else "none"  # the client's header: clipped
            raise _Unreadable(f"content type {shown} is not application/xml", 415)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Unreadable(f"body over the {limit}-byte limit", 413)
        chunks: list[bytes] = []
        size = 0
        seconds = policy.body_deadline.total_seconds()
        try:
            async with asyncio.timeout(seconds):  # slowloris: the whole body in time
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise _Unreadable(f"body over the {limit}-byte limit", 413)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise _Unreadable(f"body not received within {seconds:g} s", 408) from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Service(Starlette):
    """The Starlette app, with the DUIS endpoints answered ahead of its middleware stack.

    ``POST`` to ``/api/v1/serviceD|S|T`` goes straight to ``DuisEndpoint``;
    everything else (other methods and names under ``/api/v1``, health,
    metrics, the Service Desk, the operator API) is routed by Starlette.
    """

    def __init__(self, *, duis: DuisEndpoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.duis = duis

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path, root = scope["path"], scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            endpoint = _DUIS_PATHS.get(path)
            if endpoint is not None:
                await self.duis(scope, receive, send, endpoint)
                return
        await super().__call__(scope, receive, send)


def create_app(processor: Processor, settings: Settings | None = None) -> Service:
    from hubreturns.dcc.features import feature_routes

    settings = settings or Settings()

    async def other_duis(request: Request) -> Response:
        # POSTs to the real endpoints never get here (``Service`` answers them).
        name = request.path_params["endpoint"]
        return JSONResponse({"error": f"no DUIS endpoint {name}"}, status_code=404)

    #: Why the certificates are trusted (``smki``): "ca", or "operator-vouched".
    trust = trust_mode(settings.smki_ca_certs).value
    #: Whether answers are signed with the packaged public test key (``allow_test_keys``).
    test_keys = settings.test_keys

    async def healthz(_: Request) -> Response:
        def probe() -> bool:
            # A write transaction on purpose: ready means able to record returns.
            with processor.sessions() as session:
                session.execute(text("SELECT 1"))
            return True

        try:
            await run_in_threadpool(probe)
        except Exception as exc:  # any failure means "not ready"
            return JSONResponse(
                {
                    "status": "unavailable",
                    "database": redact_url(str(exc))[:200],
                    "smki_trust": trust,
                    "test_keys": test_keys,
                },
                503,
            )
        return JSONResponse({"status": "ok", "smki_trust": trust, "test_keys": test_keys})

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        if settings.smki_ca_certs is None:
            log.warning(VOUCHED_WARNING)
        if test_keys:
            log.warning(TEST_KEYS_WARNING)
        # The lifespan state reaches uvicorn's protocol as its ``app_state``.
        yield {EDGE_LIMITS_STATE_KEY: EdgeLimits.from_settings(settings)}
        await asyncio.to_thread(processor.close)
        processor.engine.dispose()

    routes = [
        Route(_DUIS_ROUTE, other_duis, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        *feature_routes(processor, settings),
    ]
    app = Service(
        duis=DuisEndpoint(processor),
        routes=routes,
        lifespan=lifespan,
        # request ids for the JSON logs, access line, HTTP metrics
        middleware=[Middleware(RequestContextMiddleware, processor=processor)],
    )
    _no_slash_redirects(app)
    app.state.processor = processor
    app.state.settings = settings
    return app


def _no_slash_redirects(app: Starlette) -> None:
    """No redirects anywhere: an unknown path is a plain 404 (issue 21 §4).

    Starlette answers ``/api/v1/serviceD/`` with a redirect to the URL without
    the slash, built from the request's Host header, so a forged Host sent the
    client elsewhere. Mounted apps have routers of their own, hence the walk.
    """
    routers = [app.router]
    while routers:
        router = routers.pop()
        router.redirect_slashes = False
        for route in router.routes:
            inner = getattr(route, "app", None)
            if isinstance(inner, Starlette):
                routers.append(inner.router)
            elif isinstance(inner, Router):
                routers.append(inner)


def app_from_environment() -> Starlette:
    """uvicorn factory (``--factory``) for multi-worker serving: settings from the environment."""
    from hubreturns.dcc.config import load_settings
    from hubreturns.dcc.observability import configure_logging_from_environment

    configure_logging_from_environment()  # JSON lines in each worker process
    settings = load_settings()
    return create_app(build_service(settings), settings)
