"""The operator JSON API under ``/api/ops/``, with its OpenAPI document.

Every route comes from one table, ``ENDPOINTS``: the Starlette routes and the
OpenAPI 3.1 document (``/api/ops/openapi.json``) are both generated from it, so
they cannot drift apart. Response schemas are derived from the dataclasses the
operations return.

Authentication is never optional: ``authenticate_operator`` accepts
``Authorization: Bearer <operator_token>`` (compared in constant time) and
nothing else yet; with no ``operator_token`` configured every call is refused
with 401 and a hint. It is the one hook to extend (e.g. Service Desk sign-in).
"""

from __future__ import annotations

import hmac
import json
import logging
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final, Union, get_args, get_origin, get_type_hints

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from hubreturns.config import Settings
from hubreturns.logistics.consignments import MonthlyPlan
from hubreturns.logistics.errors import Invalid, LogisticsError
from hubreturns.logistics.lifecycle import TRANSITIONS, TestOutcome
from hubreturns.logistics.operations import (
    ConsignmentView,
    DeliveryView,
    Logistics,
    OrderView,
    ReturnView,
)
from hubreturns.logistics.render import to_csv
from hubreturns.logistics.reports import build_report
from hubreturns.logistics.values import OrderRequest, Period, check_eui, check_month

__all__ = [
    "ENDPOINTS",
    "MAX_BODY_BYTES",
    "PREFIX",
    "ApiCall",
    "ApiEndpoint",
    "authenticate_operator",
    "openapi_document",
    "routes",
    "to_json",
]

log = logging.getLogger("hubreturns.logistics.api")

PREFIX: Final = "/api/ops"
#: Largest request body (a delivery CSV of ~100 000 hubs fits).
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
_SETTINGS_KEY: Final = "hubreturns.settings"


# -- authentication ------------------------------------------------------------------


def authenticate_operator(request: Request) -> str | None:
    """The operator's name if the request is authenticated, else None (never anonymous).

    Today: ``Authorization: Bearer <settings.operator_token>``, compared in
    constant time; the name is ``"token"``. With ``operator_token`` unset
    nothing is accepted. The Service Desk sign-in may extend this hook by
    returning the signed-in staff name when its session is valid.
    """
    settings = request.scope.get(_SETTINGS_KEY)
    if not isinstance(settings, Settings) or not settings.operator_token:
        return None
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return None
    if hmac.compare_digest(presented.strip().encode(), settings.operator_token.encode()):
        return "token"
    return None


def _unauthorised(settings: Settings) -> JSONResponse:
    hint = (
        "Send Authorization: Bearer <operator token>."
        if settings.operator_token
        else "The operator API is disabled: set operator_token (HUBRETURNS_OPERATOR_TOKEN) "
        "on the server, then send Authorization: Bearer <token>."
    )
    return JSONResponse(
        {"error": "operator authentication required", "hint": hint},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="hubreturns-ops"'},
    )


class _WithSettings:
    """Puts the settings into the ASGI scope for ``authenticate_operator``."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_SETTINGS_KEY] = self.settings
        await self.app(scope, receive, send)


# -- JSON ----------------------------------------------------------------------------


def to_json(value: object) -> Any:
    """Dataclasses, Decimals (as strings), datetimes (ISO 8601) and enums as JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(to_json(k)): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def _plan_json(plan: MonthlyPlan) -> dict[str, Any]:
    return {
        "month": plan.month,
        "shipment_cost": str(plan.shipment_cost),
        "hubs": plan.hubs,
        "consolidated_cost": str(plan.consolidated_cost),
        "individual_cost": str(plan.individual_cost),
        "saving": str(plan.saving),
        "shipments": [
            {
                "location": s.location,
                "parties": list(s.parties),
                "return_ids": list(s.return_ids),
                "hubs": s.hubs,
                "consolidated_cost": str(s.consolidated_cost),
                "individual_cost": str(s.individual_cost),
                "saving": str(s.saving),
            }
            for s in plan.shipments
        ],
    }


# -- calls ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiCall:
    """What a handler gets: path and query parameters, the body, the operator."""

    path: Mapping[str, Any]
    query: Mapping[str, str]
    body: bytes
    operator: str

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Invalid(
                f"body is not JSON: {exc}",
                "Send a JSON object with Content-Type: application/json.",
                field="body",
            ) from None
        if not isinstance(data, dict):
            raise Invalid("body must be a JSON object", 'Send {"field": value, …}.', field="body")
        return data

    def text(self, data: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
        value = data.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise Invalid(
                f"{name}: {'missing' if value is None else 'must be a string'}",
                f"Give {name} as a JSON string.",
                field=name,
            )
        return value

    def param(self, name: str, *, required: bool = True) -> str | None:
        value = self.query.get(name)
        if value is None and required:
            raise Invalid(
                f"{name}: missing query parameter", f"Add ?{name}=… to the URL.", field=name
            )
        return value


Handler = Callable[[Logistics, ApiCall], object]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiEndpoint:
    method: str
    path: str
    name: str
    summary: str
    handler: Handler
    status: int = 200
    query: tuple[tuple[str, bool, str], ...] = ()
    body: Mapping[str, Any] | None = None
    body_type: str = "application/json"
    response: Mapping[str, Any] | None = None


def _text(call: ApiCall, data: Mapping[str, Any], name: str) -> str:
    value = call.text(data, name)
    assert value is not None
    return value


def _create_order(ops: Logistics, call: ApiCall) -> object:
    data = call.json()
    return ops.create_order(
        OrderRequest.parse(
            supplier=_text(call, data, "supplier"),
            placed_by=call.text(data, "placed_by", required=False),
            quantity=data.get("quantity"),
            hub_variant=_text(call, data, "hub_variant"),
            delivery_location=_text(call, data, "delivery_location"),
            requested_month=_text(call, data, "requested_month"),
        )
    )


def _list_orders(ops: Logistics, call: ApiCall) -> object:
    supplier = call.param("supplier", required=False)
    return ops.orders(check_eui(supplier, "supplier") if supplier else None)


def _deliver(ops: Logistics, call: ApiCall) -> object:
    return ops.deliver(
        call.path["order_id"], call.body, source=call.query.get("source") or "api upload"
    )


def _plan(ops: Logistics, call: ApiCall) -> object:
    month = check_month(call.param("month") or "", "month")
    return _plan_json(ops.plan(month, call.param("default_location", required=False)))


def _create_consignments(ops: Logistics, call: ApiCall) -> object:
    data = call.json()
    return ops.create_consignments(
        check_month(_text(call, data, "month"), "month"),
        call.text(data, "default_location", required=False),
    )


def _test(ops: Logistics, call: ApiCall) -> object:
    data = call.json()
    text = _text(call, data, "outcome")
    try:
        outcome = TestOutcome(text)
    except ValueError:
        raise Invalid(
            f"outcome: {text!r} is not fault_confirmed or no_fault_found",
            'Send {"outcome": "fault_confirmed"} or {"outcome": "no_fault_found"}.',
            field="outcome",
        ) from None
    return ops.test(call.path["return_id"], outcome, call.operator)


def _period(call: ApiCall) -> Period:
    return Period.parse(call.param("from") or "", call.param("to") or "")


def _report(ops: Logistics, call: ApiCall) -> object:
    report = build_report(ops, _period(call))
    return {
        "from": report.period.first_day.isoformat(),
        "to": report.period.last_day.isoformat(),
        "tariff": report.tariff_source,
        "rows": to_json(report.rows),
        "csv": to_csv(report),
    }


# -- schemas -------------------------------------------------------------------------


def _type_schema(hint: Any) -> dict[str, Any]:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        schema = _type_schema(inner[0])
        return {**schema, "type": [schema["type"], "null"]}
    if origin is tuple:
        return {"type": "array", "items": _type_schema(get_args(hint)[0])}
    simple: dict[Any, dict[str, Any]] = {
        int: {"type": "integer"},
        str: {"type": "string"},
        bool: {"type": "boolean"},
        Decimal: {"type": "string", "format": "decimal", "description": "GBP"},
        datetime: {"type": "string", "format": "date-time"},
    }
    return dict(simple[hint])


def schema_of(cls: type) -> dict[str, Any]:
    """JSON Schema of a view dataclass, from its type hints."""
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    return {
        "type": "object",
        "required": names,
        "properties": {name: _type_schema(hints[name]) for name in names},
    }


def _array(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": dict(schema)}


_STR = {"type": "string"}
_MONEY = {"type": "string", "format": "decimal"}
_ORDER = schema_of(OrderView)
_DELIVERY = schema_of(DeliveryView)
_CONSIGNMENT = schema_of(ConsignmentView)
_RETURN = schema_of(ReturnView)
_PLAN = {
    "type": "object",
    "properties": {
        "month": _STR,
        "shipment_cost": _MONEY,
        "hubs": {"type": "integer"},
        "consolidated_cost": _MONEY,
        "individual_cost": _MONEY,
        "saving": _MONEY,
        "shipments": _array(
            {
                "type": "object",
                "properties": {
                    "location": _STR,
                    "parties": _array(_STR),
                    "return_ids": _array({"type": "integer"}),
                    "hubs": {"type": "integer"},
                    "consolidated_cost": _MONEY,
                    "individual_cost": _MONEY,
                    "saving": _MONEY,
                },
            }
        ),
    },
}
_CHARGE = {
    "type": "object",
    "properties": {
        "party": _STR,
        "month": _STR,
        "returns": {"type": "integer"},
        "provisional": {"type": "integer"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "total": _MONEY,
    },
}
_REPORT = {
    "type": "object",
    "properties": {
        "from": {"type": "string", "format": "date"},
        "to": {"type": "string", "format": "date"},
        "tariff": _STR,
        "rows": _array(
            {
                "type": "object",
                "properties": {
                    "section": _STR,
                    "key": _STR,
                    "count": {"type": "integer"},
                    "detail": _STR,
                    "amount": {"type": ["string", "null"], "format": "decimal"},
                },
            }
        ),
        "csv": {"type": "string", "description": "the same report as CSV"},
    },
}
_TRANSITIONS = _array({"type": "object", "properties": {"from": _STR, "step": _STR, "to": _STR}})
_PERIOD = (("from", True, "first day, YYYY-MM-DD"), ("to", True, "last day, YYYY-MM-DD"))

ENDPOINTS: Final[tuple[ApiEndpoint, ...]] = (
    ApiEndpoint(
        method="GET",
        path="/orders",
        name="listOrders",
        summary="Hub orders, with hubs delivered so far",
        handler=_list_orders,
        query=(("supplier", False, "only this Supplier's orders"),),
        response=_array(_ORDER),
    ),
    ApiEndpoint(
        method="POST",
        path="/orders",
        name="createOrder",
        summary="Record a hub order for a Supplier (or by an RSA it appoints)",
        handler=_create_order,
        status=201,
        body={
            "type": "object",
            "required": [
                "supplier",
                "quantity",
                "hub_variant",
                "delivery_location",
                "requested_month",
            ],
            "properties": {
                "supplier": {"type": "string", "description": "IS/GS User ID"},
                "placed_by": {"type": "string", "description": "RSA User ID (optional)"},
                "quantity": {"type": "integer", "minimum": 1},
                "hub_variant": _STR,
                "delivery_location": _STR,
                "requested_month": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
            },
        },
        response=_ORDER,
    ),
    ApiEndpoint(
        method="GET",
        path="/orders/{order_id:int}",
        name="getOrder",
        summary="One order",
        handler=lambda ops, call: ops.order(call.path["order_id"]),
        response=_ORDER,
    ),
    ApiEndpoint(
        method="POST",
        path="/orders/{order_id:int}/deliveries",
        name="deliver",
        summary="Load a delivery (CSV chf_device_id,gpf_device_id): all hubs or none",
        handler=_deliver,
        status=201,
        query=(("source", False, "name of the delivery file, for the record"),),
        body={"type": "string", "description": "CSV with header chf_device_id,gpf_device_id"},
        body_type="text/csv",
        response=_DELIVERY,
    ),
    ApiEndpoint(
        method="GET",
        path="/consignments",
        name="listConsignments",
        summary="Consignments with their returns",
        handler=lambda ops, call: ops.consignments(status=call.param("status", required=False)),
        query=(("status", False, "planned or collected"),),
        response=_array(_CONSIGNMENT),
    ),
    ApiEndpoint(
        method="POST",
        path="/consignments",
        name="createConsignments",
        summary="Group a month's notified returns into consignments (party × location)",
        handler=_create_consignments,
        status=201,
        body={
            "type": "object",
            "required": ["month"],
            "properties": {"month": _STR, "default_location": _STR},
        },
        response=_array(_CONSIGNMENT),
    ),
    ApiEndpoint(
        method="GET",
        path="/consignments/plan",
        name="planCollections",
        summary="Monthly plan: one shipment per location and the saving against one per hub",
        handler=_plan,
        query=(
            ("month", True, "YYYY-MM the returns were notified"),
            ("default_location", False, "for returns without a location"),
        ),
        response=_PLAN,
    ),
    ApiEndpoint(
        method="GET",
        path="/consignments/{consignment_id:int}",
        name="getConsignment",
        summary="One consignment",
        handler=lambda ops, call: ops.consignment(call.path["consignment_id"]),
        response=_CONSIGNMENT,
    ),
    ApiEndpoint(
        method="POST",
        path="/consignments/{consignment_id:int}/collect",
        name="collect",
        summary="Lifecycle step collect, for every return of the consignment",
        handler=lambda ops, call: ops.collect(call.path["consignment_id"], call.operator),
        response=_CONSIGNMENT,
    ),
    ApiEndpoint(
        method="GET",
        path="/returns/{return_id:int}",
        name="getReturn",
        summary="A return's lifecycle state and charge",
        handler=lambda ops, call: ops.return_view(call.path["return_id"]),
        response=_RETURN,
    ),
    ApiEndpoint(
        method="POST",
        path="/returns/{return_id:int}/locate",
        name="locate",
        summary="Set the collection location of a notified return",
        handler=lambda ops, call: ops.locate(
            call.path["return_id"], _text(call, call.json(), "location")
        ),
        body={"type": "object", "required": ["location"], "properties": {"location": _STR}},
        response=_RETURN,
    ),
    ApiEndpoint(
        method="POST",
        path="/returns/{return_id:int}/receive",
        name="receive",
        summary="Lifecycle step receive: the hub arrived at the DCC",
        handler=lambda ops, call: ops.receive(call.path["return_id"], call.operator),
        response=_RETURN,
    ),
    ApiEndpoint(
        method="POST",
        path="/returns/{return_id:int}/test",
        name="test",
        summary="Lifecycle step test: fault_confirmed or no_fault_found",
        handler=_test,
        body={
            "type": "object",
            "required": ["outcome"],
            "properties": {"outcome": {"enum": [o.value for o in TestOutcome]}},
        },
        response=_RETURN,
    ),
    ApiEndpoint(
        method="POST",
        path="/returns/{return_id:int}/close",
        name="close",
        summary="Lifecycle step close: releases the hub so it can be returned again",
        handler=lambda ops, call: ops.close(call.path["return_id"], call.operator),
        response=_RETURN,
    ),
    ApiEndpoint(
        method="GET",
        path="/lifecycle",
        name="transitions",
        summary="The lifecycle transition table",
        handler=lambda _ops, _call: [
            {"from": s.value, "step": step.value, "to": new.value}
            for (s, step), new in TRANSITIONS.items()
        ],
        response=_TRANSITIONS,
    ),
    ApiEndpoint(
        method="GET",
        path="/charges",
        name="charges",
        summary="Charges estimate per party and month of notification",
        handler=lambda ops, call: ops.charges(_period(call)),
        query=_PERIOD,
        response=_array(_CHARGE),
    ),
    ApiEndpoint(
        method="GET",
        path="/report",
        name="report",
        summary="The period report (returns, rejections, consignments, charges)",
        handler=_report,
        query=_PERIOD,
        response=_REPORT,
    ),
)

_ERROR = {
    "type": "object",
    "required": ["error", "hint"],
    "properties": {
        "error": _STR,
        "hint": _STR,
        "field": _STR,
        "problems": _array(
            {
                "type": "object",
                "properties": {
                    "line": {"type": "integer"},
                    "field": {"type": ["string", "null"]},
                    "message": _STR,
                },
            }
        ),
    },
}


def _openapi_path(path: str) -> str:
    return PREFIX + path.replace(":int}", "}")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``ENDPOINTS`` (and of itself)."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict[str, dict[str, Any]] = {}
    for spec in ENDPOINTS:
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}
            for name in _path_names(spec.path)
        ] + [
            {
                "name": name,
                "in": "query",
                "required": required,
                "description": text,
                "schema": {"type": "string"},
            }
            for name, required, text in spec.query
        ]
        operation: dict[str, Any] = {
            "operationId": spec.name,
            "summary": spec.summary,
            "parameters": parameters,
            "responses": {
                str(spec.status): {
                    "description": "done",
                    "content": {"application/json": {"schema": spec.response or {}}},
                },
                "401": {"description": "operator authentication required", **error},
                "404": {"description": "order, consignment or return not found", **error},
                "409": {"description": "refused in the current state", **error},
                "422": {"description": "a field or row is wrong", **error},
            },
        }
        if spec.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {spec.body_type: {"schema": dict(spec.body)}},
            }
        paths.setdefault(_openapi_path(spec.path), {})[spec.method.lower()] = operation
    paths[PREFIX + "/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}},
                "401": {"description": "operator authentication required", **error},
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hubreturns operator API: hub logistics",
            "version": "1",
            "description": "Orders, deliveries, consignments, the return lifecycle, charges "
            "and reports. Every call needs Authorization: Bearer <operator_token>.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"operatorToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"operatorToken": []}],
    }


def _path_names(path: str) -> list[str]:
    return [part[1:].split(":")[0].rstrip("}") for part in path.split("/") if part.startswith("{")]


# -- routes --------------------------------------------------------------------------


async def _body(request: Request) -> bytes | None:
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def routes(logistics: Logistics, settings: Settings) -> list[BaseRoute]:
    """One ``Mount`` at ``/api/ops`` holding every endpoint and the OpenAPI document."""

    def wrap(spec: ApiEndpoint) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            operator = authenticate_operator(request)
            if operator is None:
                return _unauthorised(settings)
            body = await _body(request)
            if body is None:
                return JSONResponse(
                    {
                        "error": f"body over {MAX_BODY_BYTES} bytes",
                        "hint": "Split the delivery into several files.",
                    },
                    status_code=413,
                )
            call = ApiCall(
                path=request.path_params,
                query=dict(request.query_params),
                body=body,
                operator=operator,
            )
            try:
                result = await run_in_threadpool(spec.handler, logistics, call)
            except LogisticsError as exc:
                return JSONResponse(exc.as_json(), status_code=exc.status)
            except IntegrityError:
                return JSONResponse(
                    {
                        "error": "the data changed while this call ran; nothing was written",
                        "hint": "Look again and repeat the call if it is still needed.",
                    },
                    status_code=409,
                )
            except SQLAlchemyError:
                log.exception("operator API: database error in %s", spec.name)
                return JSONResponse(
                    {
                        "error": "database unavailable; nothing was written",
                        "hint": "Repeat the call later.",
                    },
                    status_code=503,
                )
            return JSONResponse(to_json(result), status_code=spec.status)

        return endpoint

    document = openapi_document()

    async def openapi(request: Request) -> Response:
        if authenticate_operator(request) is None:
            return _unauthorised(settings)
        return JSONResponse(document)

    inner: list[BaseRoute] = [
        Route(spec.path, wrap(spec), methods=[spec.method], name=spec.name) for spec in ENDPOINTS
    ]
    inner.append(Route("/openapi.json", openapi, methods=["GET"], name="openapi"))
    # No trailing-slash redirects: they echo the Host header (issue 21 §4).
    router = Router(routes=inner, redirect_slashes=False)
    return [Mount(PREFIX, app=router, middleware=[Middleware(_WithSettings, settings=settings)])]
