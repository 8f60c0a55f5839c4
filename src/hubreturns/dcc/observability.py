"""Metrics and structured logs (issue 5): ``/metrics`` and request-scoped JSON logging.

Metrics come from the ``Processor``'s telemetry (``Metrics`` is one: a call per final
outcome, on either channel) and from a small ASGI middleware (HTTP latency, requests in
progress). They are exposed at ``GET /metrics`` in the Prometheus text format.

Two modes, chosen by the environment as prometheus-client does:

* single process (``PROMETHEUS_MULTIPROC_DIR`` unset): each ``Processor`` gets
  its own ``CollectorRegistry``, so several apps in one process (tests) never
  collide and never count each other's requests;
* multi-process (``hubreturns serve --workers N`` sets the variable): every
  worker writes its samples to files in that folder and ``/metrics`` sums all
  workers' files, so any worker answers with the service-wide totals.

Logs are JSON lines (``ts``, ``level``, ``logger``, ``message``,
``request_id``, ``http_request_id`` and any extra fields). ``request_id`` is
the DUIS RequestID once the request has been read (null before, and for a
request that has none); ``http_request_id`` names the HTTP exchange (the
client's ``X-Request-ID`` when it sends a sane one, else a random one) and is
echoed in the response's ``X-Request-ID`` header.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hubreturns.codes import DEFAULT_PROFILE, Reason, Verdict
from hubreturns.dcc.processing import current_request_id
from hubreturns.model import clip

if TYPE_CHECKING:
    from hubreturns.dcc.config import Settings
    from hubreturns.dcc.processing import Outcome, Processor

__all__ = [
    "LOG_LEVEL_ENV",
    "MULTIPROC_ENV",
    "Exchange",
    "JsonFormatter",
    "Metrics",
    "RequestContextMiddleware",
    "configure_logging",
    "configure_logging_from_environment",
    "json_handler",
    "metrics_for",
    "prepare_multiprocess_dir",
    "process_metrics",
    "reap_dead_workers",
    "route_label",
    "routes",
]

#: prometheus-client's own switch for multi-process mode (a writable folder).
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Log level for ``serve`` workers (set by ``hubreturns serve --log-level``).
LOG_LEVEL_ENV: Final = "HUBRETURNS_LOG_LEVEL"

#: Refusals counted as signature failures (labelled with their wire code).
SIGNATURE_REASONS: Final = (
    Reason.SIGNATURE,
    Reason.UNKNOWN_CERTIFICATE,
    Reason.UNUSABLE_CERTIFICATE,
    Reason.IDENTITY_MISMATCH,
)
#: Seconds; DUIS requests take milliseconds, a slow database seconds.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256)

outcome_log = logging.getLogger("hubreturns.requests")
http_log = logging.getLogger("hubreturns.http")


# -- request context -----------------------------------------------------------------


@dataclass(slots=True)
class RequestContext:
    """Per-HTTP-exchange state shared by the event loop and the worker thread.

    Mutable on purpose: the worker thread runs in a *copy* of the context, so
    a value it sets in a ContextVar never reaches the access-log line written
    afterwards on the event loop; a field of this shared object does.
    """

    http_request_id: str
    request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_context: ContextVar[RequestContext | None] = ContextVar("hubreturns_http", default=None)
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _current_ids() -> tuple[str | None, str | None]:
    """(DUIS RequestID, HTTP request id) of the code running now, if any."""
    ctx = _context.get()
    request_id = current_request_id.get()
    if request_id is None and ctx is not None:
        request_id = ctx.request_id
    return request_id, ctx.http_request_id if ctx is not None else None


# -- metrics -------------------------------------------------------------------------


class Metrics:
    """The service's Prometheus metrics, in one registry (or the multi-process files)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        #: None in multi-process mode: samples go to files, not to a registry.
        self.registry = registry
        self.requests = Counter(
            "hubreturns_requests",
            "Requests answered, by service reference variant, sender role, response code"
            " and channel (role 'unknown' when the sender was not identified).",
            ["service_reference_variant", "role", "code", "channel"],
            registry=registry,
        )
        self.latency = Histogram(
            "hubreturns_request_duration_seconds",
            "Time from receiving a request's bytes to its signed answer, by channel.",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.signature_failures = Counter(
            "hubreturns_signature_failures",
            "Requests refused for their signature or signing certificate (by code).",
            ["code"],
            registry=registry,
        )
        self.replays = Counter(
            "hubreturns_replays",
            "Requests refused as replays of an earlier RequestID counter.",
            registry=registry,
        )
        self.accepted = Counter(
            "hubreturns_returns_accepted",
            "Returns accepted and recorded, by channel.",
            ["channel"],
            registry=registry,
        )
        self.http_latency = Histogram(
            "hubreturns_http_request_duration_seconds",
            "HTTP exchanges by method, route template and status (all routes).",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.certificate_reads = Counter(
            "hubreturns_certificate_store_reads",
            "Signing certificates read from the store because a worker had no fresh copy"
            " cached (about one per sender and worker after a start; steady at zero).",
            registry=registry,
        )
        self.commit_batch = Histogram(
            "hubreturns_commit_batch_size",
            "Requests' writes committed together in one transaction (group commit):"
            " one at light load, more as load grows and requests share a disk flush.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "hubreturns_http_requests_in_progress",
            "HTTP exchanges being handled now (summed over live workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        for reason in SIGNATURE_REASONS:  # the default profile's codes exist from the start
            self.signature_failures.labels(code=DEFAULT_PROFILE.code(reason))
        for channel in ("duis", "servicedesk"):
            self.accepted.labels(channel=channel)
        # Labelled children by their label values: ``labels`` validates and looks
        # them up under a lock on every call, and a request needs several.
        self._outcome_children: dict[tuple[str, str | None, str, Verdict, str], tuple[Any, ...]]
        self._outcome_children = {}
        self._http_children: dict[tuple[str, str, int], Any] = {}

    def certificate_read(self) -> None:
        """``Telemetry``: a certificate read from the store."""
        self.certificate_reads.inc()

    def batch(self, size: int) -> None:
        """``Telemetry``: a group commit of ``size`` requests."""
        self.commit_batch.observe(size)

    def outcome(self, outcome: Outcome) -> None:
        """``Telemetry``: count one final outcome and write its log line."""
        self.observe(outcome)
        _log_outcome(outcome)

    def observe(self, outcome: Outcome) -> None:
        """Count one final outcome."""
        channel = outcome.channel.value
        key = (
            outcome.service_reference_variant,
            outcome.role,
            outcome.code,
            outcome.verdict,
            channel,
        )
        children = self._outcome_children.get(key)
        if children is None:
            children = self._outcome_children[key] = self._children_for(*key)
        for child in children[1:]:
            child.inc()
        children[0].observe(outcome.elapsed_seconds)

    def _children_for(
        self, variant: str, role: str | None, code: str, verdict: Verdict, channel: str
    ) -> tuple[Any, ...]:
        """The latency histogram one outcome of this kind is timed in, then its counters."""
        children = [
            self.latency.labels(channel=channel),
            self.requests.labels(
                service_reference_variant=variant,
                role=role or "unknown",
                code=code,
                channel=channel,
            ),
        ]
        if verdict in SIGNATURE_REASONS:
            children.append(self.signature_failures.labels(code=code))
        elif verdict is Reason.REPLAY:
            children.append(self.replays)
        if verdict.accepted:
            children.append(self.accepted.labels(channel=channel))
        return tuple(children)

    def http_child(self, method: str, route: str, status: int) -> Any:
        """The HTTP latency histogram for one method, route template and status."""
        key = (method, route, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http_latency.labels(
                method=method, route=route, status=str(status)
            )
        return child

    def exposition(self) -> bytes:
        """The Prometheus text format: this registry, or every worker's files."""
        if self.registry is not None:
            return bytes(generate_latest(self.registry))
        folder = os.environ.get(MULTIPROC_ENV)
        if folder:
            reap_dead_workers(Path(folder))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))


_lock = threading.Lock()
#: Multi-process mode: one set of metric objects per process (their values live in files).
_process_metrics: Metrics | None = None
#: Metrics for the HTTP edge of a processor built without them (``metrics_for``).
_unreported: weakref.WeakKeyDictionary[Processor, Metrics] = weakref.WeakKeyDictionary()


def _multiprocess() -> bool:
    """Multi-process mode: the variable names a folder (``serve`` sets it before workers start)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def process_metrics() -> Metrics:
    """The metrics for a new service: the process's shared set in multi-process mode,
    else a registry of its own (several services in one process never collide)."""
    global _process_metrics
    if not _multiprocess():
        return Metrics(CollectorRegistry())
    with _lock:
        if _process_metrics is None:
            _process_metrics = Metrics(None)
            # Drop this worker's live gauge files when it exits normally; a worker
            # stopped by a signal is reaped by the next scrape or by ``serve``.
            atexit.register(multiprocess.mark_process_dead, os.getpid())
        return _process_metrics


def metrics_for(processor: Processor) -> Metrics:
    """The metrics ``processor`` reports to; for one built without them (``NULL_TELEMETRY``),
    a set of its own for the HTTP edge, its outcomes uncounted."""
    if isinstance(processor.telemetry, Metrics):
        return processor.telemetry
    with _lock:
        found = _unreported.get(processor)
        if found is None:
            found = _unreported[processor] = Metrics(CollectorRegistry())
        return found


def reap_dead_workers(folder: Path) -> list[int]:
    """``mark_process_dead`` for every worker whose live-gauge file outlived it.

    uvicorn stops a worker with SIGTERM and re-raises it after shutdown, so
    exit hooks do not run, and a crashed worker runs none either; without this
    the requests-in-progress gauge would keep the dead worker's last value.
    Counters and histograms of dead workers are kept: they are totals.
    """
    dead: list[int] = []
    for path in folder.glob("gauge_live*_*.db"):
        pid_text = path.stem.rsplit("_", 1)[-1]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
            dead.append(pid)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # Linux: a killed worker its supervisor has not yet reaped is a zombie
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def prepare_multiprocess_dir(folder: Path) -> Path:
    """Create ``folder`` for multi-process metrics and remove stale sample files.

    Files left by an earlier run would be summed into the new one's totals.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    return folder


# -- logs ----------------------------------------------------------------------------

#: LogRecord attributes that are not "extra" fields.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName", "request_id", "http_request_id"}
    # uvicorn's copy of the message with terminal colours: escape codes have no
    # place in a JSON line, and the plain message is there already.
    | {"color_message"}
)
#: Terminal escape sequences (colours, cursor moves), stripped from logged text.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _plain(text: str) -> str:
    return _ANSI.sub("", text) if "\x1b" in text else text


class _ContextFilter(logging.Filter):
    """Stamps the request ids at emit time (formatting may happen later, elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id, http_request_id = _current_ids()
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id
        if getattr(record, "http_request_id", None) is None:
            record.http_request_id = http_request_id
        return True


def _json_line(
    created: float,
    level: str,
    logger: str,
    message: str,
    request_id: str | None,
    http_request_id: str | None,
    fields: Iterable[tuple[str, Any]],
) -> str:
    """One log line as JSON: ts, level, logger, message, ids, then ``fields``."""
    line: dict[str, Any] = {
        "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
        "request_id": request_id,
        "http_request_id": http_request_id,
    }
    line.update(fields)
    try:
        # orjson: about a tenth of json.dumps's time, for a line per request.
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # what orjson cannot encode (an int past 64 bits, say)
        return json.dumps(line, default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, ids, then extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        http_request_id = getattr(record, "http_request_id", None)
        if request_id is None and http_request_id is None:
            request_id, http_request_id = _current_ids()
        fields = [
            (key, value)
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        if record.exc_info:
            exception = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            fields.append(("exception", exception))
        return _json_line(
            record.created,
            record.levelname,
            record.name,
            _plain(record.getMessage()),
            request_id,
            http_request_id,
            fields,
        )


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The JSON lines handler (``json_handler``); ``configure_logging`` installs one."""


#: The handler ``configure_logging`` installed on the root logger, if any.
_installed: _JsonHandler | None = None


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing JSON lines to ``stream`` (stderr) with the request ids."""
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_ContextFilter())
    handler.set_name("hubreturns-json")
    return handler


def _only_our_handler(logger: logging.Logger, level: int) -> _JsonHandler | None:
    """The installed JSON handler, if it is all a record of ``logger`` would reach.

    Then the access line (one per request) can be written straight to it:
    building a ``LogRecord`` and passing it down the hierarchy cost more than
    the rest of the exchange's bookkeeping. Any other handler, filter or
    level on the way (a test's log capture, say) and the line goes through
    ``logging`` as usual; either way it is the same line (``_json_line``).
    """
    handler = _installed
    if handler is None or not logger.isEnabledFor(level) or handler.level > level:
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.disabled or node.filters or (node.handlers and node is not logging.root):
            return None
        if node is logging.root:
            return handler if node.handlers == [handler] else None
        if not node.propagate:
            return None
        node = node.parent
    return None


def _access_line(message: str, fields: dict[str, Any]) -> None:
    """Write the exchange's access line: to the JSON handler directly, or via logging."""
    handler = _only_our_handler(http_log, logging.INFO)
    if handler is None:
        http_log.info("%s", message, extra=fields)
        return
    request_id, http_request_id = _current_ids()
    line = _json_line(
        time.time(),
        "INFO",
        http_log.name,
        message,
        request_id,
        http_request_id,
        fields.items(),
    )
    handler.acquire()
    try:
        handler.stream.write(line + handler.terminator)
        handler.flush()
    except Exception:  # as logging does: a broken stream must not break the request
        handler.handleError(logging.makeLogRecord({"msg": message}))
    finally:
        handler.release()


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """JSON lines on stderr for the whole process (``serve``, ``demo``, workers).

    Replaces the root handlers (idempotent), sends uvicorn's own loggers through
    them, and silences uvicorn's access log: ``hubreturns.http`` writes one
    JSON access line per exchange instead.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(
            f"unknown log level {level!r}; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    # The JSON lines name no source file, thread or process, so records need not
    # look them up (the logging HOWTO's "Optimization" switches; a stack walk and
    # three lookups per record, with a record per request).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _installed
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    installed = json_handler(stream)
    assert isinstance(installed, _JsonHandler)
    root.addHandler(installed)
    _installed = installed
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
        uv.setLevel(numeric)
    # The HTTP client's own lines (demo, tests) are noise next to the server's.
    logging.getLogger("httpx").setLevel(max(numeric, logging.WARNING))
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True


def configure_logging_from_environment() -> None:
    """In a ``serve`` worker: JSON logging at ``$HUBRETURNS_LOG_LEVEL``, if set."""
    level = os.environ.get(LOG_LEVEL_ENV)
    if level:
        configure_logging(level)


def _log_outcome(outcome: Outcome) -> None:
    """Processor observer: the outcome's fields, on one ``info`` line.

    Inside an HTTP exchange the fields go on the exchange's access line
    (written on the event loop once the response is out), so each request
    costs one line; outside one (the library, the CLI) they get a line of
    their own from ``hubreturns.requests``.
    """
    fields = {
        "request_id": str(outcome.request_id) if outcome.request_id is not None else None,
        "code": outcome.code,
        "reason": outcome.reason,
        "role": outcome.role,
        "channel": outcome.channel.value,
        "endpoint": outcome.endpoint,
        "service_reference_variant": outcome.service_reference_variant,
        "processing_seconds": round(outcome.elapsed_seconds, 6),
    }
    ctx = _context.get()
    if ctx is not None:
        if outcome.request_id is not None:
            ctx.request_id = fields["request_id"]  # type: ignore[assignment]
        ctx.extra.update(fields)
        return
    outcome_log.info(
        "%s %s: %s",
        outcome.channel.value,
        outcome.code,
        outcome.reason,
        extra={**fields, "http_status": outcome.http_status},
    )


# -- HTTP ----------------------------------------------------------------------------


class Exchange:
    """One HTTP exchange seen by the logs and metrics: opened when it starts, closed
    once its response is out.

    It names the exchange (``http_request_id``, echoed as ``X-Request-ID``),
    makes that name and the DUIS RequestID current for every log line written
    meanwhile, counts it in progress, and on ``close`` writes the one access
    line and the HTTP latency sample. ``RequestContextMiddleware`` opens one
    per request, and so does the DUIS endpoint (``hubreturns.dcc.service``), which
    answers ahead of the middleware stack.
    """

    __slots__ = ("context", "header", "metrics", "scope", "started", "token")

    def __init__(self, metrics: Metrics, scope: Scope) -> None:
        self.metrics = metrics
        self.scope = scope
        self.context = RequestContext(_http_request_id(scope["headers"]))
        self.header = (b"x-request-id", self.context.http_request_id.encode("ascii"))
        self.token = _context.set(self.context)
        self.started = time.perf_counter()
        metrics.in_progress.inc()

    def close(self, status: int, route: str) -> None:
        """The response is out (or never will be): metrics, the access line, context reset."""
        scope, extra = self.scope, self.context.extra
        try:
            self.metrics.in_progress.dec()
            elapsed = time.perf_counter() - self.started
            self.metrics.http_child(scope["method"], route, status).observe(elapsed)
            outcome = f" {extra['code']}: {extra['reason']}" if "code" in extra else ""
            path = clip(scope["path"])  # the client's text, any length: clipped
            _access_line(
                f"{scope['method']} {path} {status}{outcome}",
                {
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "client": _client(scope),
                    "elapsed_seconds": round(elapsed, 6),
                    **extra,
                },
            )
        finally:
            _context.reset(self.token)


class RequestContextMiddleware:
    """Pure ASGI middleware: an ``Exchange`` (request ids, access line, metrics) per request."""

    def __init__(self, app: ASGIApp, processor: Processor) -> None:
        self.app = app
        self.metrics = metrics_for(processor)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(self.metrics, scope)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), exchange.header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            exchange.close(status, route_label(scope))


def route_label(scope: Scope) -> str:
    """The matched route's full template, the prefixes of the mounts it sits in included.

    Starlette records only the innermost route (``/returns``); its mounts show in
    how far ``root_path`` has grown past the application's own root path. So the
    desk's ``/desk/returns`` and an API's ``/api/ops/returns`` never share a label.
    A request answered inside a mount before its router ran (the desk's sign-in
    gate) is labelled by the route its path matches. A path matching no route is
    ``unmatched`` (inside a mount: ``/desk/unmatched``).
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "unmatched"
    root = str(scope.get("root_path", ""))
    mounted = root[len(str(scope.get("app_root_path", root))) :]
    if isinstance(route, Mount):
        return f"{mounted}{_inner_template(route, scope) or '/unmatched'}"
    return f"{mounted}{path}"


def _inner_template(mount: Mount, scope: Scope) -> str | None:
    """The template of the route inside ``mount`` that the request's path matches, if any."""
    partial = None
    for inner in mount.routes:
        match, _ = inner.matches(scope)
        if match is Match.FULL and not isinstance(inner, Mount):
            return str(getattr(inner, "path", "")) or None
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(inner, "path", "")) or None
    return partial


def _http_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _CLIENT_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex


def _client(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


def routes(processor: Processor, settings: Settings) -> list[BaseRoute]:
    """``GET /metrics``; also hooks the metrics and outcome log into ``processor``."""
    metrics = metrics_for(processor)

    async def metrics_endpoint(_: Request) -> Response:
        body = await run_in_threadpool(metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", metrics_endpoint, methods=["GET"])]
