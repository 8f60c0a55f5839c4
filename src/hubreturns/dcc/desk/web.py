"""The Service Desk web pages: a Starlette sub-application mounted at ``/desk``.

Layers, outermost first: security headers; the signed session cookie
(``SessionMiddleware``, which only carries a random session token and the CSRF
token); ``StaffGate``, which lets nothing but the sign-in page and the style
sheet through without a live server-side session. Every POST carries the
session's CSRF token in a hidden field, compared in constant time.

Returns logged here go through ``Processor.handle_desk``: the same facts, the
same rule table and the same codes as DUIS, recorded with channel
``servicedesk`` and the signed-in staff name.
"""

from __future__ import annotations

import csv
import dataclasses
import hmac
import io
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
from markupsafe import Markup, escape
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hubreturns.codes import CodeInfo, ResponseCode
from hubreturns.dcc.config import Settings
from hubreturns.dcc.desk import accounts, forms
from hubreturns.dcc.desk.queries import HubView, hub_view, service_users
from hubreturns.dcc.processing import Outcome, Processor
from hubreturns.dcc.store.models import AuditEntry, ReturnRecord
from hubreturns.dcc.store.repository import Repository, ReturnFilter
from hubreturns.model import (
    Channel,
    ConnectionMethod,
    FaultReason,
    eui,
)

__all__ = [
    "AUDIT_CSV_COLUMNS",
    "COOKIE_NAME",
    "RETURN_CSV_COLUMNS",
    "DeskContext",
    "SecurityHeaders",
    "StaffGate",
    "create_desk_app",
    "routes",
]

log = logging.getLogger("hubreturns.dcc.desk")

COOKIE_NAME = "hubreturns_desk"
#: Paths (inside /desk) served without signing in.
_PUBLIC = frozenset({"/login", "/desk.css"})
_MAX_FORM_BYTES = 16 * 1024
_MAX_FORM_FIELDS = 40
_SAFE_NEXT = re.compile(r"/(?!/)[A-Za-z0-9/_.\-?=&%+:]*")
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

#: Columns of the CSV exports: every stored field (the raw request XML excepted).
RETURN_CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "received_at",
    "channel",
    "request_id",
    "originator",
    "role",
    "on_behalf_of",
    "entered_by",
    "device_id",
    "service_reference_variant",
    "return_type",
    "other_device_id",
    "connection_method",
    "fault_reason",
    "user_ref_datetime",
    "user_ref_id",
    "incident_reference",
    "additional_information",
    "smi_status_at_return",
    "status",
)
AUDIT_CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "received_at",
    "channel",
    "endpoint",
    "request_id",
    "originator",
    "claimed_originator",
    "service_reference_variant",
    "device_id",
    "code",
    "accepted",
    "reason",
    "http_status",
    "body_sha256",
    "body_bytes",
    "return_id",
)


def _show_time(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short_time(moment: datetime | None) -> str:
    """Table cells: to the minute, without the zone (the column heading says UTC)."""
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _breakable(value: object) -> Markup:
    """Long identifiers (EUI-64s, RequestIDs) that may wrap after a ``-`` or ``:``.

    A narrow table then folds them onto two lines instead of pushing its last
    columns off the screen; the text, when copied, is unchanged.
    """
    text = str(escape("" if value is None else value))
    return Markup(text.replace("-", "-<wbr>").replace(":", ":<wbr>"))  # noqa: S704 escaped above


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Pager:
    """What the list pages show about paging: the rows on this page and the links around it."""

    page: int
    first_row: int
    last_row: int
    prev_url: str | None
    next_url: str | None


def _pager(request: Request, paging: forms.Paging, shown: int, more: bool) -> Pager:
    """Prev/Next links that keep every other query parameter as it is."""
    here = f"{request.scope.get('root_path', '')}{_sub_path(request.scope)}"
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "page"]

    def url(page: int) -> str:
        return f"{here}?{urlencode([*kept, ('page', str(page))])}"

    return Pager(
        page=paging.page,
        first_row=paging.offset + 1 if shown else 0,
        last_row=paging.offset + shown,
        prev_url=url(paging.page - 1) if paging.page > 1 else None,
        next_url=url(paging.page + 1) if more else None,
    )


def _export_query(request: Request) -> str:
    """The list's filters for its CSV link (paging left out: the export has every row)."""
    return urlencode(
        [(k, v) for k, v in request.query_params.multi_items() if k not in ("page", "per_page")]
    )


def _sub_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class _Counter:
    """RequestID counters for desk entries: nanosecond time, strictly rising in this process."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


class StaffGate:
    """Lets a request in only with a live desk session (pure ASGI middleware).

    Pages answer an anonymous visitor with a redirect to the sign-in page;
    data (CSV, JSON API, or a client asking for JSON) with 401. The staff name
    goes into ``request.state.staff``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime],
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.clock = clock

    def _lookup(self, token: str) -> str | None:
        with self.sessions() as session:
            return accounts.staff_for_session(session, token, self.clock())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session: dict[str, Any] = scope["session"]
        token = session.get("sid")
        staff = await run_in_threadpool(self._lookup, token) if isinstance(token, str) else None
        if staff is None and token is not None:
            session.pop("sid", None)  # revoked or expired: drop it from the cookie
        scope.setdefault("state", {})["staff"] = staff
        sub = _sub_path(scope)
        if staff is not None or sub in _PUBLIC:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response: Response
        if _wants_data(sub, request.headers.get("accept", "")):
            response = JSONResponse(
                {"error": "sign in required", "hint": "Sign in at /desk/login first."},
                status_code=401,
            )
        else:
            target = f"{scope.get('root_path', '')}/login"
            if request.method == "GET":
                here = sub + (f"?{request.url.query}" if request.url.query else "")
                target += f"?next={quote(here, safe='')}"
            response = RedirectResponse(target, status_code=303)
        await response(scope, receive, send)


def _wants_data(sub: str, accept: str) -> bool:
    if sub.startswith("/api/") or sub.endswith(".csv"):
        return True
    first = accept.split(",")[0].strip().lower()
    return first.startswith("application/json") or first.startswith("text/csv")


class SecurityHeaders:
    """Strict headers on every desk response: no framing, no foreign content, no caching.

    A request that came over HTTPS (as the server reports it: behind a proxy
    that ends TLS, uvicorn takes ``X-Forwarded-Proto`` from the addresses in
    ``FORWARDED_ALLOW_IPS``, 127.0.0.1 by default) gets its session cookie
    marked ``Secure``, so a browser never sends it in clear.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", _CSP)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "same-origin")
                headers.setdefault("Cache-Control", "no-store")
                if scope.get("scheme") == "https":
                    _secure_cookies(headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _secure_cookies(headers: MutableHeaders) -> None:
    cookies = headers.getlist("set-cookie")
    if not cookies:
        return
    del headers["set-cookie"]
    for cookie in cookies:
        if "; secure" not in cookie.lower():
            cookie += "; secure"
        headers.append("set-cookie", cookie)


def _csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def _checked_form(request: Request) -> dict[str, str]:
    """The URL-encoded form of a POST, after its CSRF token has been checked.

    Read with a size cap and a field cap; a missing or wrong token is 403 and
    nothing is done.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("", "application/x-www-form-urlencoded"):
        raise HTTPException(415, "Send the form as application/x-www-form-urlencoded.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_FORM_BYTES:
            raise HTTPException(413, f"The form is larger than {_MAX_FORM_BYTES} bytes.")
        chunks.append(chunk)
    try:
        pairs = parse_qsl(
            b"".join(chunks).decode("utf-8"),
            keep_blank_values=True,
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "The form could not be read (UTF-8, URL-encoded).") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    sent = form.get("csrf_token", "")
    expected = request.session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(
        sent.encode("utf-8"), expected.encode("utf-8")
    ):
        log.warning("desk POST %s refused: CSRF token missing or wrong", request.url.path)
        raise HTTPException(
            403, "The form's security token is missing or out of date; reload the page and retry."
        )
    return form


def _csv_cell(value: object) -> object:
    """Plain values; text that a spreadsheet would run as a formula gets a leading quote."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_response(
    name: str, columns: Sequence[str], rows: Iterable[object], now: datetime
) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(getattr(row, column)) for column in columns])
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}-{stamp}.csv"'},
    )


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hubreturns.dcc.desk", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _show_time
    env.filters["short_when"] = _short_time
    env.filters["breakable"] = _breakable
    return Jinja2Templates(env=env)


def _session_secret(settings: Settings) -> str:
    if settings.session_secret:
        return settings.session_secret
    log.warning(
        "session_secret is not set: Service Desk sessions use a random key of this process "
        "and end when it restarts; set HUBRETURNS_SESSION_SECRET (required with --workers > 1)"
    )
    return secrets.token_urlsafe(32)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeskContext:
    """What the desk's endpoints share, kept in ``app.state.desk`` (one per desk app)."""

    processor: Processor
    templates: Jinja2Templates
    stylesheet: bytes
    next_counter: Callable[[], int]
    #: Wire code -> meaning under the profile in force (templates explain codes with it).
    code_info: Mapping[str, CodeInfo]
    #: Codes the audit filter offers and accepts (``forms.audit_codes`` of the profile).
    audit_codes: tuple[str, ...]
    accepted_code: str

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.processor.sessions

    def now(self) -> datetime:
        return self.processor.clock()


def _desk(request: Request) -> DeskContext:
    desk = request.app.state.desk
    assert isinstance(desk, DeskContext)
    return desk


def _prefix(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _staff_of(request: Request) -> str:
    staff = request.state.staff
    assert isinstance(staff, str)
    return staff


def _render(
    request: Request, name: str, context: Mapping[str, Any], status_code: int = 200
) -> Response:
    desk = _desk(request)
    base = {
        "prefix": _prefix(request),
        "staff": getattr(request.state, "staff", None),
        "csrf_token": _csrf_token(request),
        "code_info": desk.code_info,
    }
    return desk.templates.TemplateResponse(
        request, name, {**base, **context}, status_code=status_code
    )


# -- sign-in ---------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    if request.state.staff is not None:
        return RedirectResponse(f"{_prefix(request)}/", status_code=303)
    return _render(
        request,
        "login.html",
        {
            "next": request.query_params.get("next", ""),
            "error": None,
            "name": "",
            "signed_out": request.query_params.get("signed_out") == "1",
        },
    )


def _sign_in(desk: DeskContext, name: str, password: str) -> str | accounts.Locked | None:
    """A new session token, the lock-out in force, or None for a wrong name or password."""
    now = desk.now()
    with desk.sessions.begin() as session:
        staff = accounts.sign_in(session, name, password, now)
        if not isinstance(staff, accounts.Staff):
            return staff
        return accounts.start_session(session, staff.name, now)


def _login_refused(
    request: Request, form: Mapping[str, str], error: str, status_code: int
) -> Response:
    context = {
        "next": form.get("next", ""),
        "error": error,
        "name": form.get("name", "").strip(),
        "signed_out": False,
    }
    return _render(request, "login.html", context, status_code=status_code)


async def login(request: Request) -> Response:
    desk = _desk(request)
    form = await _checked_form(request)
    name = form.get("name", "").strip()
    token = await run_in_threadpool(_sign_in, desk, name, form.get("password", ""))
    if isinstance(token, accounts.Locked):
        log.warning("desk sign-in refused for %r: locked until %s", name[:64], token.until)
        response = _login_refused(
            request,
            form,
            "Too many failed sign-ins under this name. Try again after "
            f"{token.until.astimezone(UTC):%H:%M} UTC, or ask a desk "
            f"administrator to run: hubreturns desk unlock {name[:64]}",
            429,
        )
        wait = max(1, int((token.until - desk.now()).total_seconds()))
        response.headers["Retry-After"] = str(wait)
        return response
    if token is None:
        log.warning("desk sign-in refused for %r", name[:64])
        return _login_refused(
            request, form, "Wrong name or password, or the account is disabled.", 401
        )
    log.info("desk sign-in: %s", name)
    request.session.clear()  # a fresh session: nothing from before sign-in survives
    request.session["sid"] = token
    request.session["csrf"] = secrets.token_urlsafe(32)
    wanted = form.get("next", "")
    target = wanted if _SAFE_NEXT.fullmatch(wanted) and wanted != "/login" else "/"
    return RedirectResponse(f"{_prefix(request)}{target}", status_code=303)


def _end_session(desk: DeskContext, token: str) -> None:
    with desk.sessions.begin() as session:
        accounts.end_session(session, token, desk.now())


async def logout(request: Request) -> Response:
    await _checked_form(request)
    await run_in_threadpool(_end_session, _desk(request), str(request.session.get("sid")))
    log.info("desk sign-out: %s", request.state.staff)
    request.session.clear()
    return RedirectResponse(f"{_prefix(request)}/login?signed_out=1", status_code=303)


async def stylesheet(request: Request) -> Response:
    return Response(
        _desk(request).stylesheet,
        media_type="text/css",
        headers={"Cache-Control": "max-age=3600"},
    )


# -- hub look-up -----------------------------------------------------------------------


def _read_hub(desk: DeskContext, device_id: str) -> HubView | None:
    with desk.sessions() as session:
        return hub_view(session, device_id, desk.now())


async def hub(request: Request) -> Response:
    typed = request.query_params.get("device_id", "").strip()
    context: dict[str, Any] = {"device_id": typed, "error": None, "hub": None}
    if not typed:
        return _render(request, "hub.html", context)
    try:
        device_id = eui(typed)
    except ValueError:
        context["error"] = (
            f"Device ID {typed!r} is not an EUI-64; write it as 00-DB-12-34-56-78-90-A2."
        )
        return _render(request, "hub.html", context, status_code=422)
    view = await run_in_threadpool(_read_hub, _desk(request), device_id)
    if view is None:
        context["error"] = f"Device {device_id} is not in the Smart Metering Inventory."
        return _render(request, "hub.html", context, status_code=404)
    context.update(device_id=device_id, hub=view)
    return _render(request, "hub.html", context)


def _hub_json(view: HubView) -> dict[str, Any]:
    return {
        "device_id": view.device_id,
        "device_type": view.device_type,
        "smi_status": view.smi_status,
        "gpf_id": view.gpf_id,
        "open_return_id": view.open_return_id,
        "withdrawn_at": None if view.withdrawn_at is None else _csv_cell(view.withdrawn_at),
        "responsible_suppliers": [
            {"user_id": p.user_id, "role": p.role, "name": p.name, "status": p.status}
            for p in view.suppliers
        ],
        "appointed_rsas": [
            {
                "user_id": a.rsa.user_id,
                "name": a.rsa.name,
                "status": a.rsa.status,
                "appointed_by": a.supplier_id,
            }
            for a in view.appointed
        ],
        "returns": [
            {
                "id": r.id,
                "channel": r.channel,
                "request_id": r.request_id,
                "originator": r.originator,
                "role": r.role,
                "received_at": _csv_cell(r.received_at),
                "status": r.status,
            }
            for r in view.returns
        ],
    }


async def hub_api(request: Request) -> Response:
    try:
        device_id = eui(request.path_params["device_id"])
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    view = await run_in_threadpool(_read_hub, _desk(request), device_id)
    if view is None:
        return JSONResponse({"error": f"{device_id} is not in the inventory"}, 404)
    return JSONResponse(_hub_json(view))


# -- logging a return ------------------------------------------------------------------


def _form_page(
    request: Request,
    values: Mapping[str, str],
    *,
    errors: Mapping[str, str] | None = None,
    outcome: Outcome | None = None,
    status_code: int = 200,
) -> Response:
    with _desk(request).sessions() as session:
        users = service_users(session)
    return _render(
        request,
        "return_form.html",
        {
            "values": {name: values.get(name, "") for name in forms.RETURN_FIELDS},
            "errors": errors or {},
            "outcome": outcome,
            "users": users,
            "return_types": forms.RETURN_TYPES,
            "connection_methods": [m.value for m in ConnectionMethod],
            "fault_reasons": [r.value for r in FaultReason],
        },
        status_code=status_code,
    )


async def new_return_page(request: Request) -> Response:
    values = {name: request.query_params.get(name, "") for name in forms.RETURN_FIELDS}
    return await run_in_threadpool(_form_page, request, values)


async def new_return(request: Request) -> Response:
    desk = _desk(request)
    form = await _checked_form(request)
    staff = _staff_of(request)
    request_value, errors = forms.read_return_form(
        form, target=desk.processor.access_control_broker, counter=desk.next_counter()
    )
    if request_value is None:
        return await run_in_threadpool(_form_page, request, form, errors=errors, status_code=422)
    outcome = await run_in_threadpool(desk.processor.handle_desk, request_value, entered_by=staff)
    log.info(
        "desk return by %s for %s on %s: %s",
        staff,
        request_value.originator,
        request_value.device_id,
        outcome.code,
    )
    response: Response
    if outcome.accepted and outcome.return_id is not None:
        # POST/redirect/GET: a reload shows the record, it never logs the return twice.
        response = RedirectResponse(
            f"{_prefix(request)}/returns/{outcome.return_id}?logged=1", status_code=303
        )
    else:
        response = await run_in_threadpool(
            _form_page, request, form, outcome=outcome, status_code=outcome.http_status
        )
    response.headers["X-DUIS-Response-Code"] = outcome.code
    return response


# -- browsing --------------------------------------------------------------------------


def _read_returns(desk: DeskContext, where: ReturnFilter) -> Sequence[ReturnRecord]:
    with desk.sessions() as session:
        return Repository(session).returns(where)


async def returns_page(request: Request) -> Response:
    query = dict(request.query_params)
    where, errors = forms.parse_return_filter(query)
    paging = forms.parse_paging(query, errors)
    where = dataclasses.replace(where, limit=paging.per_page + 1, offset=paging.offset)
    rows = await run_in_threadpool(_read_returns, _desk(request), where)
    shown = rows[: paging.per_page]
    return _render(
        request,
        "returns.html",
        {
            "query": query,
            "errors": errors,
            "rows": shown,
            "pager": _pager(request, paging, len(shown), len(rows) > paging.per_page),
            "roles": forms.FORM_ROLES,
            "channels": [c.value for c in Channel],
            "csv_query": _export_query(request),
        },
        status_code=422 if errors else 200,
    )


async def returns_csv(request: Request) -> Response:
    desk = _desk(request)
    where, errors = forms.parse_return_filter(dict(request.query_params), export=True)
    if errors:
        return JSONResponse({"errors": errors}, status_code=422)
    rows = await run_in_threadpool(_read_returns, desk, where)
    return _csv_response("returns", RETURN_CSV_COLUMNS, rows, desk.now())


def _read_return(desk: DeskContext, return_id: int) -> ReturnRecord | None:
    with desk.sessions() as session:
        return session.get(ReturnRecord, return_id)


async def return_detail(request: Request) -> Response:
    desk = _desk(request)
    raw = request.path_params["return_id"]
    record = await run_in_threadpool(_read_return, desk, raw)
    if record is None:
        raise HTTPException(404, f"No return {raw} is recorded.")
    logged = request.query_params.get("logged") == "1" and record.channel == "servicedesk"
    return _render(
        request,
        "return_detail.html",
        {"record": record, "logged": logged, "accepted": desk.accepted_code},
    )


def _read_audit(desk: DeskContext, query: forms.AuditQuery) -> Sequence[AuditEntry]:
    with desk.sessions() as session:
        return Repository(session).audit(
            originator=query.originator,
            device_id=query.device_id,
            code=query.code,
            accepted=query.accepted,
            since=query.since,
            until=query.until,
            limit=query.limit,
            offset=query.offset,
        )


async def audit_page(request: Request) -> Response:
    query = dict(request.query_params)
    audit_query, errors = forms.parse_audit_query(query, _desk(request).audit_codes)
    paging = forms.parse_paging(query, errors)
    audit_query = dataclasses.replace(audit_query, limit=paging.per_page + 1, offset=paging.offset)
    rows = await run_in_threadpool(_read_audit, _desk(request), audit_query)
    shown = rows[: paging.per_page]
    return _render(
        request,
        "audit.html",
        {
            "query": query,
            "errors": errors,
            "rows": shown,
            "pager": _pager(request, paging, len(shown), len(rows) > paging.per_page),
            "codes": _desk(request).audit_codes,
            "csv_query": _export_query(request),
        },
        status_code=422 if errors else 200,
    )


async def audit_csv(request: Request) -> Response:
    desk = _desk(request)
    audit_query, errors = forms.parse_audit_query(
        dict(request.query_params), desk.audit_codes, export=True
    )
    if errors:
        return JSONResponse({"errors": errors}, status_code=422)
    rows = await run_in_threadpool(_read_audit, desk, audit_query)
    return _csv_response("audit", AUDIT_CSV_COLUMNS, rows, desk.now())


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if _wants_data(_sub_path(request.scope), request.headers.get("accept", "")):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    return _render(
        request,
        "error.html",
        {"status": exc.status_code, "detail": exc.detail},
        status_code=exc.status_code,
    )


routes = [
    Route("/", hub, methods=["GET"], name="home"),
    Route("/login", login_page, methods=["GET"], name="login_page"),
    Route("/login", login, methods=["POST"], name="login"),
    Route("/logout", logout, methods=["POST"], name="logout"),
    Route("/desk.css", stylesheet, methods=["GET"], name="css"),
    Route("/hub", hub, methods=["GET"], name="hub"),
    Route("/api/hubs/{device_id}", hub_api, methods=["GET"], name="hub_api"),
    Route("/returns/new", new_return_page, methods=["GET"], name="new_return_page"),
    Route("/returns/new", new_return, methods=["POST"], name="new_return"),
    Route("/returns", returns_page, methods=["GET"], name="returns"),
    Route("/returns.csv", returns_csv, methods=["GET"], name="returns_csv"),
    Route("/returns/{return_id:int}", return_detail, methods=["GET"], name="return"),
    Route("/audit", audit_page, methods=["GET"], name="audit"),
    Route("/audit.csv", audit_csv, methods=["GET"], name="audit_csv"),
]


def create_desk_app(processor: Processor, settings: Settings) -> Starlette:
    """The desk sub-application (mount it at ``/desk``)."""
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                SessionMiddleware,
                secret_key=_session_secret(settings),
                session_cookie=COOKIE_NAME,
                max_age=int(accounts.SESSION_LIFETIME.total_seconds()),
                path="/desk",
                same_site="strict",
                https_only=settings.tls,  # Secure: the browser never sends it over plain HTTP
            ),
            Middleware(StaffGate, sessions=processor.sessions, clock=processor.clock),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.state.desk = DeskContext(
        processor=processor,
        templates=_templates(),
        stylesheet=(resources.files("hubreturns.dcc.desk") / "static" / "desk.css").read_bytes(),
        next_counter=_Counter(),
        code_info={code: found for code, _, found in processor.codes.rows()},
        audit_codes=forms.audit_codes(processor.codes),
        accepted_code=processor.codes.code(ResponseCode.I99),
    )
    return app
