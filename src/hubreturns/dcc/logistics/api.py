"""The operator JSON API under ``/api/ops/``, with its OpenAPI document.

Every route comes from one table, ``ENDPOINTS``: the Starlette routes and the
OpenAPI 3.1 document (``/api/ops/openapi.json``) are both generated from it, so
they cannot drift apart. Request bodies and query strings are pydantic models
that refuse unknown fields (``extra="forbid"``) and report every field problem
at once (422); the document's schemas are those models' and the response
types' JSON Schemas (pydantic), and each operation lists only the responses it
can give. Every error, 404 and 405 included, is JSON.

Authentication is never optional: ``authenticate_operator`` accepts
``Authorization: Bearer <operator_token>`` (compared in constant time) and
nothing else yet; with no ``operator_token`` configured every call is refused
with 401 and a hint. It is the one hook to extend (e.g. Service Desk sign-in).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from hubreturns.dcc.config import Settings
from hubreturns.dcc.logistics.charges import ChargeSummary
from hubreturns.dcc.logistics.consignments import MonthlyPlan
from hubreturns.dcc.logistics.errors import Invalid, LogisticsError
from hubreturns.dcc.logistics.lifecycle import TRANSITIONS, TestOutcome
from hubreturns.dcc.logistics.operations import (
    ConsignmentView,
    DeliveryView,
    Logistics,
    OrderEventView,
    OrderView,
    ReturnView,
)
from hubreturns.dcc.logistics.render import to_csv
from hubreturns.dcc.logistics.reports import ReportRow, build_report
from hubreturns.dcc.logistics.values import (
    ConsignmentStatus,
    HubVariant,
    OrderChange,
    OrderRequest,
    Period,
    check_eui,
    check_location,
    check_month,
    check_requested_month,
)

__all__ = [
    "ENDPOINTS",
    "MAX_BODY_BYTES",
    "PREFIX",
    "ApiCall",
    "ApiEndpoint",
    "authenticate_operator",
    "openapi_document",
    "routes",
]

log = logging.getLogger("hubreturns.dcc.logistics.api")

PREFIX: Final = "/api/ops"
#: Largest request body (a delivery CSV of ~100 000 hubs fits).
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
_SETTINGS_KEY: Final = "hubreturns.settings"
_M = TypeVar("_M", bound=BaseModel)
_Q = TypeVar("_Q", bound=BaseModel)
#: Largest id a path may name (BIGINT); beyond it nothing exists.
_MAX_ID: Final = 2**63 - 1


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


# -- request models ------------------------------------------------------------------


def _checked(check: Callable[[str], object]) -> Callable[[str], Any]:
    """A pydantic validator from a ``values`` check: its message, without the field name."""

    def validate(value: str) -> Any:
        try:
            return check(value)
        except Invalid as exc:
            message = exc.message.split(": ", 1)[-1]
            raise PydanticCustomError(
                "invalid", "{message}; {hint}", {"message": message, "hint": exc.hint}
            ) from None

    return validate


def _future_month(value: str, info: ValidationInfo) -> str:
    now = info.context.get("now") if isinstance(info.context, dict) else None
    return check_requested_month_text(value, now or datetime.now(UTC))


def check_requested_month_text(value: str, now: datetime) -> str:
    month = _checked(lambda text: check_requested_month(text, now))(value)
    assert isinstance(month, str)
    return month


Eui = Annotated[str, AfterValidator(_checked(lambda t: check_eui(t, "id")))]
Location = Annotated[str, AfterValidator(_checked(lambda t: check_location(t, "location")))]
Month = Annotated[str, AfterValidator(_checked(lambda t: check_month(t, "month")))]
FutureMonth = Annotated[str, AfterValidator(_future_month)]
Quantity = Annotated[int, Field(strict=True, ge=1, le=100_000)]


class _Strict(BaseModel):
    """Unknown fields are refused: a misspelt field must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderIn(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "supplier": "90-B3-D5-1F-30-01-00-00",
                    "quantity": 50,
                    "hub_variant": "dual_band",
                    "delivery_location": "Leeds depot",
                    "requested_month": "2027-01",
                }
            ]
        }
    )
    supplier: Eui = Field(description="IS or GS User ID the hubs are for")
    placed_by: Eui | None = Field(None, description="RSA placing the order for the Supplier")
    quantity: Quantity
    hub_variant: HubVariant
    delivery_location: Location
    requested_month: FutureMonth = Field(description="YYYY-MM, this month or later")


class OrderChangeIn(_Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"quantity": 40, "requested_month": "2027-02"}]}
    )
    quantity: Quantity | None = None
    hub_variant: HubVariant | None = None
    delivery_location: Location | None = None
    requested_month: FutureMonth | None = None

    @model_validator(mode="after")
    def _something(self) -> OrderChangeIn:
        if not self.model_fields_set:
            raise PydanticCustomError(
                "nothing_to_change",
                "give at least one of quantity, hub_variant, delivery_location, requested_month",
            )
        return self


class ConsignmentsIn(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"month": "2026-11"}]})
    month: Month = Field(description="YYYY-MM the returns were notified")
    default_location: Location | None = Field(None, description="for returns without one")


class LocateIn(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"location": "Bristol yard"}]})
    location: Location


class TestIn(_Strict):
    __test__ = False  # not a pytest test class
    model_config = ConfigDict(json_schema_extra={"examples": [{"outcome": "fault_confirmed"}]})
    outcome: TestOutcome


class NoQuery(_Strict):
    """No query parameters (an unknown one is refused)."""


class OrdersQuery(_Strict):
    supplier: Eui | None = Field(None, description="only this Supplier's orders")


class DeliveryQuery(_Strict):
    source: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="name of the delivery file, for the record"
    )


class ConsignmentsQuery(_Strict):
    status: Literal["planned", "collected"] | None = None


class PlanQuery(_Strict):
    month: Month = Field(description="YYYY-MM the returns were notified")
    default_location: Location | None = Field(None, description="for returns without one")


class PeriodQuery(_Strict):
    model_config = ConfigDict(populate_by_name=False)
    first: date = Field(alias="from", description="first day, YYYY-MM-DD (included)")
    last: date = Field(alias="to", description="last day, YYYY-MM-DD (included)")

    def period(self) -> Period:
        return Period.parse(self.first.isoformat(), self.last.isoformat())


# -- response shapes -----------------------------------------------------------------


class ShipmentOut(TypedDict):
    location: str
    parties: list[str]
    return_ids: list[int]
    hubs: int
    consolidated_cost: Decimal
    individual_cost: Decimal
    saving: Decimal


class PlanOut(TypedDict):
    month: str
    shipment_cost: Decimal
    hubs: int
    consolidated_cost: Decimal
    individual_cost: Decimal
    saving: Decimal
    shipments: list[ShipmentOut]


ReportOut = TypedDict(
    "ReportOut", {"from": date, "to": date, "tariff": str, "rows": list[ReportRow], "csv": str}
)
TransitionOut = TypedDict("TransitionOut", {"hub": str, "from": str, "step": str, "to": str})


class ProblemOut(TypedDict, total=False):
    field: str | None
    message: str
    line: int


class ErrorOut(TypedDict, total=False):
    error: str
    hint: str
    field: str
    problems: list[ProblemOut]


def _plan_out(plan: MonthlyPlan) -> PlanOut:
    return PlanOut(
        month=plan.month,
        shipment_cost=plan.shipment_cost,
        hubs=plan.hubs,
        consolidated_cost=plan.consolidated_cost,
        individual_cost=plan.individual_cost,
        saving=plan.saving,
        shipments=[
            ShipmentOut(
                location=s.location,
                parties=list(s.parties),
                return_ids=list(s.return_ids),
                hubs=s.hubs,
                consolidated_cost=s.consolidated_cost,
                individual_cost=s.individual_cost,
                saving=s.saving,
            )
            for s in plan.shipments
        ],
    )


# -- calls ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiCall:
    """What a handler gets: path ids, the checked query and body, the operator."""

    path: Mapping[str, int]
    query: BaseModel
    body: BaseModel | bytes | None
    operator: str

    def model(self, kind: type[_M]) -> _M:
        assert isinstance(self.body, kind)
        return self.body

    def params(self, kind: type[_Q]) -> _Q:
        assert isinstance(self.query, kind)
        return self.query


Handler = Callable[[Logistics, ApiCall], object]


def _create_order(ops: Logistics, call: ApiCall) -> object:
    body = call.model(OrderIn)
    order = OrderRequest(
        supplier=body.supplier,
        placed_by=body.placed_by or body.supplier,
        quantity=body.quantity,
        hub_variant=body.hub_variant,
        delivery_location=body.delivery_location,
        requested_month=body.requested_month,
    )
    return ops.create_order(order, call.operator)


def _amend_order(ops: Logistics, call: ApiCall) -> object:
    body = call.model(OrderChangeIn)
    change = OrderChange(
        quantity=body.quantity,
        hub_variant=body.hub_variant,
        delivery_location=body.delivery_location,
        requested_month=body.requested_month,
    )
    return ops.amend_order(call.path["order_id"], change, call.operator)


def _deliver(ops: Logistics, call: ApiCall) -> object:
    assert isinstance(call.body, bytes)
    source = call.params(DeliveryQuery).source
    return ops.deliver(call.path["order_id"], call.body, source=source or "api upload")


def _consignment_status(call: ApiCall) -> ConsignmentStatus | None:
    status = call.params(ConsignmentsQuery).status
    return ConsignmentStatus(status) if status is not None else None


def _create_consignments(ops: Logistics, call: ApiCall) -> object:
    body = call.model(ConsignmentsIn)
    return ops.create_consignments(body.month, body.default_location)


def _plan(ops: Logistics, call: ApiCall) -> object:
    query = call.params(PlanQuery)
    return _plan_out(ops.plan(query.month, query.default_location))


def _report(ops: Logistics, call: ApiCall) -> object:
    report = build_report(ops, call.params(PeriodQuery).period())
    return {
        "from": report.period.first_day,
        "to": report.period.last_day,
        "tariff": report.tariff_source,
        "rows": list(report.rows),
        "csv": to_csv(report),
    }


def _transitions(_ops: Logistics, _call: ApiCall) -> object:
    return [
        {"hub": path.value, "from": s.value, "step": step.value, "to": new.value}
        for (path, s, step), new in TRANSITIONS.items()
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiEndpoint:
    """One operation: its route, checked inputs, response type and possible errors."""

    method: str
    path: str
    name: str
    summary: str
    handler: Handler
    response: Any
    status: int = 200
    body: type[BaseModel] | None = None
    csv_body: bool = False
    query: type[BaseModel] = NoQuery
    #: Refusals besides 401, 422 (and 413 with a body, 503 with the database).
    refusals: tuple[int, ...] = ()
    database: bool = True
    example: object = None


_ORDER_EXAMPLE: Final = {
    "id": 1,
    "supplier": "90-B3-D5-1F-30-01-00-00",
    "placed_by": "90-B3-D5-1F-30-01-00-00",
    "placed_by_role": "IS",
    "quantity": 50,
    "delivered": 0,
    "hub_variant": "dual_band",
    "delivery_location": "Leeds depot",
    "requested_month": "2027-01",
    "created_at": "2026-12-05T10:00:00+00:00",
    "status": "open",
}
_CSV_EXAMPLE: Final = (
    "chf_device_id,gpf_device_id\n00-DB-12-34-56-78-C1-01,00-DB-12-34-56-78-C1-00\n"
)

ENDPOINTS: Final[tuple[ApiEndpoint, ...]] = (
    ApiEndpoint(
        method="GET",
        path="/orders",
        name="listOrders",
        summary="Hub orders, with hubs delivered so far",
        handler=lambda ops, call: ops.orders(call.params(OrdersQuery).supplier),
        query=OrdersQuery,
        response=list[OrderView],
        example=[_ORDER_EXAMPLE],
    ),
    ApiEndpoint(
        method="POST",
        path="/orders",
        name="createOrder",
        summary="Record a hub order for a Supplier (or by an RSA it appoints)",
        handler=_create_order,
        status=201,
        body=OrderIn,
        refusals=(409,),
        response=OrderView,
        example=_ORDER_EXAMPLE,
    ),
    ApiEndpoint(
        method="GET",
        path="/orders/{order_id:int}",
        name="getOrder",
        summary="One order",
        handler=lambda ops, call: ops.order(call.path["order_id"]),
        refusals=(404,),
        response=OrderView,
        example=_ORDER_EXAMPLE,
    ),
    ApiEndpoint(
        method="POST",
        path="/orders/{order_id:int}/amend",
        name="amendOrder",
        summary="Change an open order before its first delivery (kept in its history)",
        handler=_amend_order,
        body=OrderChangeIn,
        refusals=(404, 409),
        response=OrderView,
    ),
    ApiEndpoint(
        method="POST",
        path="/orders/{order_id:int}/cancel",
        name="cancelOrder",
        summary="Cancel an open order before its first delivery",
        handler=lambda ops, call: ops.cancel_order(call.path["order_id"], call.operator),
        refusals=(404, 409),
        response=OrderView,
    ),
    ApiEndpoint(
        method="GET",
        path="/orders/{order_id:int}/history",
        name="orderHistory",
        summary="Everything done to an order: placed, amended (before, after), cancelled",
        handler=lambda ops, call: ops.order_history(call.path["order_id"]),
        refusals=(404,),
        response=list[OrderEventView],
    ),
    ApiEndpoint(
        method="POST",
        path="/orders/{order_id:int}/deliveries",
        name="deliver",
        summary="Load a delivery (CSV chf_device_id,gpf_device_id): all hubs or none",
        handler=_deliver,
        status=201,
        csv_body=True,
        query=DeliveryQuery,
        refusals=(404, 409),
        response=DeliveryView,
    ),
    ApiEndpoint(
        method="GET",
        path="/consignments",
        name="listConsignments",
        summary="Consignments with their returns",
        handler=lambda ops, call: ops.consignments(status=_consignment_status(call)),
        query=ConsignmentsQuery,
        response=list[ConsignmentView],
    ),
    ApiEndpoint(
        method="POST",
        path="/consignments",
        name="createConsignments",
        summary="Group a month's notified returns into consignments (party × location); "
        "lost or stolen hubs are never consigned",
        handler=_create_consignments,
        status=201,
        body=ConsignmentsIn,
        refusals=(409,),
        response=list[ConsignmentView],
    ),
    ApiEndpoint(
        method="GET",
        path="/consignments/plan",
        name="planCollections",
        summary="Monthly plan: one shipment per location and the saving against one per hub",
        handler=_plan,
        query=PlanQuery,
        response=PlanOut,
    ),
    ApiEndpoint(
        method="GET",
        path="/consignments/{consignment_id:int}",
        name="getConsignment",
        summary="One consignment",
        handler=lambda ops, call: ops.consignment(call.path["consignment_id"]),
        refusals=(404,),
        response=ConsignmentView,
    ),
    ApiEndpoint(
        method="POST",
        path="/consignments/{consignment_id:int}/collect",
        name="collect",
        summary="Lifecycle step collect, for every return of the consignment",
        handler=lambda ops, call: ops.collect(call.path["consignment_id"], call.operator),
        refusals=(404, 409),
        response=ConsignmentView,
    ),
    ApiEndpoint(
        method="GET",
        path="/returns/{return_id:int}",
        name="getReturn",
        summary="A return's lifecycle state and charge",
        handler=lambda ops, call: ops.return_view(call.path["return_id"]),
        refusals=(404,),
        response=ReturnView,
    ),
    ApiEndpoint(
        method="POST",
        path="/returns/{return_id:int}/locate",
        name="locate",
        summary="Set the collection location of a notified return (not a lost or stolen hub)",
        handler=lambda ops, call: ops.locate(call.path["return_id"], call.model(LocateIn).location),
        body=LocateIn,
        refusals=(404, 409),
        response=ReturnView,
    ),
    ApiEndpoint(
        method="POST",
        path="/returns/{return_id:int}/receive",
        name="receive",
        summary="Lifecycle step receive: the hub arrived at the DCC",
        handler=lambda ops, call: ops.receive(call.path["return_id"], call.operator),
        refusals=(404, 409),
        response=ReturnView,
    ),
    ApiEndpoint(
        method="POST",
        path="/returns/{return_id:int}/test",
        name="test",
        summary="Lifecycle step test: fault_confirmed or no_fault_found (prices the return)",
        handler=lambda ops, call: ops.test(
            call.path["return_id"], call.model(TestIn).outcome, call.operator
        ),
        body=TestIn,
        refusals=(404, 409),
        response=ReturnView,
    ),
    ApiEndpoint(
        method="POST",
        path="/returns/{return_id:int}/close",
        name="close",
        summary="Lifecycle step close: releases the hub so it can be returned again",
        handler=lambda ops, call: ops.close(call.path["return_id"], call.operator),
        refusals=(404, 409),
        response=ReturnView,
    ),
    ApiEndpoint(
        method="POST",
        path="/returns/{return_id:int}/write-off",
        name="writeOff",
        summary="Lifecycle step write off: closes a lost or stolen hub's return",
        handler=lambda ops, call: ops.write_off(call.path["return_id"], call.operator),
        refusals=(404, 409),
        response=ReturnView,
    ),
    ApiEndpoint(
        method="GET",
        path="/lifecycle",
        name="transitions",
        summary="The lifecycle transition table",
        handler=_transitions,
        database=False,
        response=list[TransitionOut],
    ),
    ApiEndpoint(
        method="GET",
        path="/charges",
        name="charges",
        summary="Charges per party and month of notification; lost or stolen hubs listed "
        "as still accruing the stock charge",
        handler=lambda ops, call: ops.charges(call.params(PeriodQuery).period()),
        query=PeriodQuery,
        response=list[ChargeSummary],
    ),
    ApiEndpoint(
        method="GET",
        path="/report",
        name="report",
        summary="The period report (returns, rejections, consignments, charges)",
        handler=_report,
        query=PeriodQuery,
        response=ReportOut,
    ),
)

_ADAPTERS: Final = {spec.name: TypeAdapter(spec.response) for spec in ENDPOINTS}


# -- OpenAPI -------------------------------------------------------------------------

_REF: Final = "#/components/schemas/{model}"
_ERROR_TEXT: Final = {
    401: "operator authentication required",
    404: "the order, consignment or return does not exist",
    409: "refused in the current state; nothing was written",
    413: f"body over {MAX_BODY_BYTES} bytes",
    422: "a field, parameter or row is wrong (every problem listed); nothing was written",
    503: "database unavailable; nothing was written",
}
_ERROR_EXAMPLES: Final[Mapping[int, object]] = {
    401: {"error": "operator authentication required", "hint": "Send Authorization: Bearer …"},
    404: {"error": "order 7 does not exist", "hint": "List orders with …", "field": "order"},
    409: {"error": "return 4 is notified; it cannot be received now", "hint": "…"},
    413: {"error": f"body over {MAX_BODY_BYTES} bytes", "hint": "Split the delivery …"},
    422: {
        "error": "request refused (2 problem(s)); nothing was written",
        "hint": "Fix every listed field and send it again.",
        "problems": [
            {"field": "quantity", "message": "Input should be greater than or equal to 1"},
            {"field": "colour", "message": "Extra inputs are not permitted"},
        ],
    },
    503: {"error": "database unavailable; nothing was written", "hint": "Repeat the call later."},
}


class _Components:
    """Collects pydantic's ``$defs`` into ``components.schemas``."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def add(self, schema: dict[str, Any]) -> dict[str, Any]:
        self.schemas.update(schema.pop("$defs", {}))
        return schema

    def of(self, adapter: TypeAdapter[Any], mode: Literal["validation", "serialization"]) -> Any:
        return self.add(adapter.json_schema(mode=mode, ref_template=_REF))


def _statuses(spec: ApiEndpoint) -> list[int]:
    codes = {401, 422, *spec.refusals}
    if spec.body is not None or spec.csv_body:
        codes.add(413)
    if spec.database:
        codes.add(503)
    return sorted(codes)


def _parameters(spec: ApiEndpoint, components: _Components) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
        for name in _path_names(spec.path)
    ]
    schema = components.add(spec.query.model_json_schema(ref_template=_REF))
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        out.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "description": prop.get("description", ""),
                "schema": prop,
            }
        )
    return out


def _operation(spec: ApiEndpoint, components: _Components) -> dict[str, Any]:
    success: dict[str, Any] = {"schema": components.of(_ADAPTERS[spec.name], "serialization")}
    if spec.example is not None:
        success["example"] = spec.example
    responses: dict[str, Any] = {
        str(spec.status): {"description": "done", "content": {"application/json": success}}
    }
    for code in _statuses(spec):
        responses[str(code)] = {
            "description": _ERROR_TEXT[code],
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF.format(model="ErrorOut")},
                    "example": _ERROR_EXAMPLES[code],
                }
            },
        }
    operation: dict[str, Any] = {
        "operationId": spec.name,
        "summary": spec.summary,
        "parameters": _parameters(spec, components),
        "responses": responses,
    }
    if spec.body is not None:
        schema = components.add(spec.body.model_json_schema(ref_template=_REF))
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": schema, "example": schema["examples"][0]}
                if "examples" in schema
                else {"schema": schema}
            },
        }
    elif spec.csv_body:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {
                        "type": "string",
                        "description": "header chf_device_id,gpf_device_id",
                    },
                    "example": _CSV_EXAMPLE,
                }
            },
        }
    return operation


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``ENDPOINTS`` (and of itself), schemas from pydantic."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for spec in ENDPOINTS:
        path = PREFIX + spec.path.replace(":int}", "}")
        paths.setdefault(path, {})[spec.method.lower()] = _operation(spec, components)
    error = {"$ref": _REF.format(model="ErrorOut")}
    paths[PREFIX + "/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}},
                "401": {
                    "description": _ERROR_TEXT[401],
                    "content": {
                        "application/json": {"schema": error, "example": _ERROR_EXAMPLES[401]}
                    },
                },
            },
        }
    }
    components.schemas["ErrorOut"] = components.add(
        TypeAdapter(ErrorOut).json_schema(ref_template=_REF)
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hubreturns operator API: hub logistics",
            "version": "2",
            "description": "Orders (amend, cancel, history), deliveries, consignments, the "
            "return lifecycle (write-off for lost or stolen hubs), charges and reports. Every "
            "call needs Authorization: Bearer <operator_token>. Unknown fields are refused.",
        },
        "servers": [{"url": "/", "description": "the hubreturns service serving this document"}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "securitySchemes": {"operatorToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"operatorToken": []}],
    }


def _path_names(path: str) -> list[str]:
    return [part[1:].split(":")[0].rstrip("}") for part in path.split("/") if part.startswith("{")]


# -- routes --------------------------------------------------------------------------


def _error(status: int, error: str, hint: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "hint": hint, **extra}, status_code=status)


def _invalid(exc: ValidationError) -> JSONResponse:
    """Every problem pydantic found, at once, as the API's 422 error body."""
    problems = [
        {
            "field": ".".join(str(part) for part in problem["loc"]) or "body",
            "message": problem["msg"],
        }
        for problem in exc.errors(include_url=False, include_input=False)
    ]
    extra: dict[str, Any] = {"problems": problems}
    if len(problems) == 1:
        extra["field"] = problems[0]["field"]
    return _error(
        422,
        f"request refused ({len(problems)} problem(s)); nothing was written",
        "Fix every listed field and send it again (unknown fields are refused).",
        **extra,
    )


async def _body(request: Request) -> bytes | None:
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _call(request: Request, spec: ApiEndpoint, operator: str) -> ApiCall | Response:
    """Checked inputs of one call, or the error response that refuses it."""
    if any(value > _MAX_ID for value in request.path_params.values()):
        return _error(404, "no such id", "Ids are the numbers the list calls show.")
    raw: bytes | None = b""
    if spec.body is not None or spec.csv_body:
        raw = await _body(request)
        if raw is None:
            return _error(413, _ERROR_TEXT[413], "Split the delivery into several files.")
    context = {"now": datetime.now(UTC)}
    try:
        query = spec.query.model_validate(dict(request.query_params), context=context)
        body: BaseModel | bytes | None = raw if spec.csv_body else None
        if spec.body is not None:
            body = spec.body.model_validate_json(raw or b"{}", context=context)
    except ValidationError as exc:
        return _invalid(exc)
    return ApiCall(path=request.path_params, query=query, body=body, operator=operator)


def _endpoint(logistics: Logistics, settings: Settings, spec: ApiEndpoint) -> Callable[..., Any]:
    adapter = _ADAPTERS[spec.name]

    async def endpoint(request: Request) -> Response:
        operator = authenticate_operator(request)
        if operator is None:
            return _unauthorised(settings)
        call = await _call(request, spec, operator)
        if isinstance(call, Response):
            return call
        try:
            result = await run_in_threadpool(spec.handler, logistics, call)
        except LogisticsError as exc:
            return JSONResponse(exc.as_json(), status_code=exc.status)
        except IntegrityError:
            return _error(
                409,
                "the data changed while this call ran; nothing was written",
                "Look again and repeat the call if it is still needed.",
            )
        except SQLAlchemyError:
            log.exception("operator API: database error in %s", spec.name)
            return _error(503, _ERROR_TEXT[503], "Repeat the call later.")
        return JSONResponse(adapter.dump_python(result, mode="json"), status_code=spec.status)

    return endpoint


def _by_method(handlers: Mapping[str, Callable[..., Any]]) -> Callable[..., Any]:
    """One endpoint for every method of a path (HEAD is answered as GET)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        response: Response = await handlers[method](request)
        return response

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 inside the API are JSON like every other answer."""
    assert isinstance(exc, HTTPException)
    hints = {
        404: "See /api/ops/openapi.json for the paths.",
        405: f"Allowed: {exc.headers.get('Allow', '') if exc.headers else ''}.",
    }
    return JSONResponse(
        {"error": exc.detail, "hint": hints.get(exc.status_code, "See /api/ops/openapi.json.")},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def routes(logistics: Logistics, settings: Settings) -> list[BaseRoute]:
    """One ``Mount`` at ``/api/ops``: a Starlette sub-app with every endpoint and the document."""
    document = openapi_document()

    async def openapi(request: Request) -> Response:
        if authenticate_operator(request) is None:
            return _unauthorised(settings)
        return JSONResponse(document)

    # One route per path, whatever its methods, so a 405's Allow names all of them.
    by_path: dict[str, dict[str, Callable[..., Any]]] = {}
    for spec in ENDPOINTS:
        by_path.setdefault(spec.path, {})[spec.method] = _endpoint(logistics, settings, spec)
    inner: list[BaseRoute] = [
        Route(path, _by_method(handlers), methods=list(handlers), name=path)
        for path, handlers in by_path.items()
    ]
    inner.append(Route("/openapi.json", openapi, methods=["GET"], name="openapi"))
    api = Starlette(
        routes=inner,
        middleware=[Middleware(_WithSettings, settings=settings)],
        exception_handlers={HTTPException: _http_error},
    )
    # No trailing-slash redirects: they echo the Host header.
    api.router.redirect_slashes = False
    return [Mount(PREFIX, app=api)]
