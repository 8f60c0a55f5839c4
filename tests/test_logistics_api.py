"""The operator API (/api/ops) over real HTTP: authentication, OpenAPI, the lifecycle.

Also: unknown fields refused, every field problem reported at once, every error
JSON (404 and 405 included), orders amended and cancelled, write-off.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Mount, Route

from hubreturns.dcc.config import Settings
from hubreturns.dcc.logistics.api import PREFIX
from hubreturns.dcc.logistics.models import DeliveredHub, HubOrder, HubOrderEvent
from hubreturns.dcc.logistics.operations import OrderView, ReturnView
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.service import create_app
from hubreturns.dcc.serving import running_server
from hubreturns.dcc.store.models import Device
from hubreturns.model import (
    DEFAULT_ACB,
    ConnectionMethod,
    FaultReason,
    FaultReturnType,
    NoFaultReturnType,
    RequestId,
    ReturnKind,
    ReturnRequest,
)
from hubreturns.user.scenarios import IS, DemoWorld
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.request import sign_request

TOKEN = "test-operator-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHF, GPF = "00-DB-12-34-56-78-D1-01", "00-DB-12-34-56-78-D1-00"
ORDER = {
    "supplier": IS,
    "quantity": 2,
    "hub_variant": "dual_band",
    "delivery_location": "Cardiff store",
    "requested_month": "2099-01",
}


def schema_of(kind: type) -> dict[str, Any]:
    schema: dict[str, Any] = TypeAdapter(kind).json_schema(mode="serialization")
    return schema


@pytest.fixture
def ops_settings(settings: Settings) -> Settings:
    return replace(settings, operator_token=TOKEN)


@pytest.fixture
def ops(processor: Processor, ops_settings: Settings) -> Iterator[httpx.Client]:
    """A client of the service started with an operator token."""
    with (
        running_server(create_app(processor, ops_settings)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def order_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(HubOrder)) or 0)


def test_api_is_closed_when_no_token_is_configured(
    http: httpx.Client, seeded: sessionmaker[Session]
) -> None:
    for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": "Bearer None"}):
        reply = http.post(f"{PREFIX}/orders", json=ORDER, headers=headers)
        assert reply.status_code == 401
        assert "operator_token" in reply.json()["hint"]
        assert reply.headers["www-authenticate"].startswith("Bearer")
    assert http.get(f"{PREFIX}/openapi.json").status_code == 401
    assert order_count(seeded) == 0


WRONG_CREDENTIALS: tuple[dict[str, str], ...] = (
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
)


def test_api_refuses_missing_or_wrong_token(
    ops: httpx.Client, seeded: sessionmaker[Session]
) -> None:
    for headers in WRONG_CREDENTIALS:
        reply = ops.post(f"{PREFIX}/orders", json=ORDER, headers=headers)
        assert reply.status_code == 401, headers
        assert reply.json()["error"] == "operator authentication required"
        assert ops.get(f"{PREFIX}/returns/1", headers=headers).status_code == 401
        assert ops.get(f"{PREFIX}/openapi.json", headers=headers).status_code == 401
    assert order_count(seeded) == 0
    assert ops.get(f"{PREFIX}/orders", headers=AUTH).json() == []


def _ops_routes(processor: Processor, settings: Settings) -> list[Route]:
    app = create_app(processor, settings)
    mounts = [r for r in app.routes if isinstance(r, Mount) and r.path == PREFIX]
    assert len(mounts) == 1
    routes = [r for r in mounts[0].routes if isinstance(r, Route)]
    assert len(routes) == len(mounts[0].routes)
    return routes


def test_openapi_documents_every_route_and_nothing_else(
    ops: httpx.Client, processor: Processor, ops_settings: Settings
) -> None:
    reply = ops.get(f"{PREFIX}/openapi.json", headers=AUTH)
    assert reply.status_code == 200
    document = reply.json()
    assert document["openapi"].startswith("3.1")
    validate(document)  # a valid OpenAPI 3.1 document, as a client generator reads it
    served = {
        (PREFIX + route.path_format, method.lower())
        for route in _ops_routes(processor, ops_settings)
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }
    assert served == documented
    assert len(served) >= 17
    assert document["servers"] == [
        {"url": "/", "description": "the hubreturns service serving this document"}
    ]
    for operations in document["paths"].values():
        for operation in operations.values():
            assert operation["summary"]
            assert "401" in operation["responses"]
            for reply in operation["responses"].values():
                if reply.get("content", {}).get("application/json", {}).get("schema"):
                    assert "example" in reply["content"]["application/json"] or reply is (
                        operation["responses"].get("200") or operation["responses"].get("201")
                    )
            body = operation.get("requestBody", {}).get("content", {})
            for media in body.values():
                assert "example" in media
    paths = document["paths"]
    order_response = paths[f"{PREFIX}/orders"]["post"]["responses"]["201"]
    assert order_response["content"]["application/json"]["schema"] == schema_of(OrderView)
    assert order_response["content"]["application/json"]["example"]["hub_variant"] == "dual_band"
    # Only the responses each operation can give.
    responses = {
        (path, method): sorted(operation["responses"])
        for path, operations in paths.items()
        for method, operation in operations.items()
    }
    assert responses[(f"{PREFIX}/orders/{{order_id}}", "get")] == [
        "200",
        "401",
        "404",
        "422",
        "503",
    ]
    assert responses[(f"{PREFIX}/orders", "post")] == ["201", "401", "409", "413", "422", "503"]
    assert responses[(f"{PREFIX}/lifecycle", "get")] == ["200", "401", "422"]
    assert responses[(f"{PREFIX}/returns/{{return_id}}/write-off", "post")] == [
        "200",
        "401",
        "404",
        "409",
        "422",
        "503",
    ]
    assert responses[(f"{PREFIX}/openapi.json", "get")] == ["200", "401"]
    request = paths[f"{PREFIX}/orders"]["post"]["requestBody"]["content"]["application/json"]
    assert request["schema"]["additionalProperties"] is False
    assert request["schema"]["properties"]["hub_variant"] == {
        "$ref": "#/components/schemas/HubVariant"
    }
    assert document["components"]["schemas"]["HubVariant"]["enum"] == ["single_band", "dual_band"]


def _duis_body(world: DemoWorld, counter: int) -> bytes:
    request = ReturnRequest(
        request_id=RequestId(originator=IS, target=DEFAULT_ACB, counter=counter),
        command_variant=8,
        service_reference="8.14",
        kind=ReturnKind.FAULT,
        device_id=CHF,
        return_type=FaultReturnType.POST_INSTALL.value,
        other_device_id=GPF,
        connection_method=ConnectionMethod.CRADLE,
        fault_reason=FaultReason.LED,
    )
    credential = world.credentials[IS]
    return sign_request(
        request, credential.key, SigningCertificate.from_x509(credential.certificate)
    )


def test_api_order_to_close(
    ops: httpx.Client, seeded: sessionmaker[Session], world: DemoWorld
) -> None:
    created = ops.post(f"{PREFIX}/orders", json=ORDER, headers=AUTH)
    assert created.status_code == 201, created.text
    order = created.json()
    assert set(order) == set(schema_of(OrderView)["properties"])
    assert (order["supplier"], order["quantity"], order["delivered"]) == (IS, 2, 0)

    bad = ops.post(f"{PREFIX}/orders", json=ORDER | {"quantity": "two"}, headers=AUTH)
    assert bad.status_code == 422
    assert bad.json()["field"] == "quantity"
    broken = ops.post(f"{PREFIX}/orders", content=b"{", headers=AUTH)
    assert broken.status_code == 422
    assert broken.json()["problems"]
    assert order_count(seeded) == 1

    csv_body = f"chf_device_id,gpf_device_id\n{CHF},{GPF}\n"
    missing = ops.post(f"{PREFIX}/orders/404/deliveries", content=csv_body, headers=AUTH)
    assert missing.status_code == 404
    duplicated = ops.post(
        f"{PREFIX}/orders/{order['id']}/deliveries",
        content=csv_body + f"{CHF},00-DB-12-34-56-78-D2-00\n",
        headers=AUTH,
    )
    assert duplicated.status_code == 422
    assert duplicated.json()["problems"][0] == {
        "line": 3,
        "field": "chf_device_id",
        "message": f"{CHF} already appears on line 2 (chf_device_id); "
        "each Device ID is delivered once",
    }
    with seeded() as session:
        assert session.get(Device, CHF) is None
        assert session.scalar(select(func.count()).select_from(DeliveredHub)) == 0

    delivered = ops.post(
        f"{PREFIX}/orders/{order['id']}/deliveries?source=d1.csv", content=csv_body, headers=AUTH
    )
    assert delivered.status_code == 201, delivered.text
    assert delivered.json()["order_delivered"] == 1

    reply = ops.post(
        "/api/v1/serviceD",
        content=_duis_body(world, 1),
        headers={"content-type": "application/xml"},
    )
    assert reply.headers["x-duis-response-code"] == "I99"
    with seeded() as session:
        hub = session.get(Device, CHF)
        assert hub is not None
        return_id = hub.open_return_id
    assert return_id is not None

    month = datetime.now(UTC).strftime("%Y-%m")
    plan = ops.get(f"{PREFIX}/consignments/plan", params={"month": month}, headers=AUTH)
    assert plan.status_code == 200
    assert plan.json()["shipments"][0]["location"] == "Cardiff store"
    assert ops.get(f"{PREFIX}/consignments/plan", headers=AUTH).json()["field"] == "month"

    early = ops.post(f"{PREFIX}/returns/{return_id}/receive", headers=AUTH)
    assert early.status_code == 409
    assert "cannot be received" in early.json()["error"]

    consignments = ops.post(f"{PREFIX}/consignments", json={"month": month}, headers=AUTH)
    assert consignments.status_code == 201, consignments.text
    (consignment,) = consignments.json()
    assert consignment["return_ids"] == [return_id]
    collected = ops.post(f"{PREFIX}/consignments/{consignment['id']}/collect", headers=AUTH)
    assert collected.json()["status"] == "collected"
    assert ops.post(f"{PREFIX}/returns/{return_id}/receive", headers=AUTH).status_code == 200
    wrong = ops.post(f"{PREFIX}/returns/{return_id}/test", json={"outcome": "meh"}, headers=AUTH)
    assert wrong.status_code == 422
    assert wrong.json()["field"] == "outcome"
    tested = ops.post(
        f"{PREFIX}/returns/{return_id}/test", json={"outcome": "fault_confirmed"}, headers=AUTH
    )
    # Delivered as dual band, cannot be redeployed: £58.75.
    assert tested.json()["charge"] == "58.75"
    assert tested.json()["charge_status"] == "charged"
    assert tested.json()["hub_variant"] == "dual_band"
    closed = ops.post(f"{PREFIX}/returns/{return_id}/close", headers=AUTH).json()
    assert set(closed) == set(schema_of(ReturnView)["properties"])
    assert (closed["status"], closed["hub_open_return_id"]) == ("closed", None)
    assert ops.post(f"{PREFIX}/returns/{return_id}/close", headers=AUTH).status_code == 409

    again = ops.post(
        "/api/v1/serviceD",
        content=_duis_body(world, 2),
        headers={"content-type": "application/xml"},
    )
    assert again.headers["x-duis-response-code"] == "I99"

    today = datetime.now(UTC).date().isoformat()
    charges = ops.get(f"{PREFIX}/charges", params={"from": today, "to": today}, headers=AUTH)
    assert [(c["party"], c["returns"], c["pending"], c["total"]) for c in charges.json()] == [
        (IS, 2, 1, "58.75")  # 58.75 tested + the second return, not tested yet
    ]
    report = ops.get(f"{PREFIX}/report", params={"from": today, "to": today}, headers=AUTH)
    totals = {r["key"]: r for r in report.json()["rows"] if r["section"] == "totals"}
    assert totals["returns"]["count"] == 2
    assert totals["consignments"]["count"] == 1
    assert ops.get(f"{PREFIX}/lifecycle", headers=AUTH).json()[0] == {
        "hub": "returned",
        "from": "notified",
        "step": "collect",
        "to": "collected",
    }


def test_simultaneous_deliveries_cannot_over_deliver(
    ops: httpx.Client, seeded: sessionmaker[Session]
) -> None:
    order = ops.post(f"{PREFIX}/orders", json=ORDER, headers=AUTH).json()  # quantity 2
    files = [
        "chf_device_id,gpf_device_id\n"
        + "".join(f"00-DB-12-34-56-78-E{n}-{i}1,00-DB-12-34-56-78-E{n}-{i}0\n" for i in (1, 2))
        for n in (1, 2)
    ]
    url = f"{PREFIX}/orders/{order['id']}/deliveries"
    with ThreadPoolExecutor(max_workers=2) as pool:
        replies = list(
            pool.map(
                lambda body: httpx.post(
                    str(ops.base_url) + url, content=body, headers=AUTH, timeout=30
                ),
                files,
            )
        )
    assert sorted(r.status_code for r in replies) == [201, 409]
    with seeded() as session:
        assert session.scalar(select(func.count()).select_from(DeliveredHub)) == 2
    assert ops.get(f"{PREFIX}/orders/{order['id']}", headers=AUTH).json()["delivered"] == 2


def test_unknown_fields_are_refused_and_every_problem_reported_at_once(
    ops: httpx.Client, seeded: sessionmaker[Session]
) -> None:
    reply = ops.post(
        f"{PREFIX}/orders",
        json=ORDER
        | {
            "supplier": "nope",
            "quantity": 0,
            "hub_variant": "SM WAN variant: dual band",
            "requested_month": "2020-01",
            "colour": "blue",
        },
        headers=AUTH,
    )
    assert reply.status_code == 422
    body = reply.json()
    assert "field" not in body
    fields = sorted(p["field"] for p in body["problems"])
    assert fields == ["colour", "hub_variant", "quantity", "requested_month", "supplier"]
    month = next(p for p in body["problems"] if p["field"] == "requested_month")
    assert "2020-01 is in the past" in month["message"]
    missing = ops.post(f"{PREFIX}/orders", json={}, headers=AUTH).json()
    assert len(missing["problems"]) == 5  # every required field but placed_by
    assert (
        ops.post(f"{PREFIX}/orders", json=ORDER | {"quantity": "2"}, headers=AUTH).status_code
        == 422
    )
    query = ops.get(f"{PREFIX}/charges", params={"from": "x", "to": "y", "z": "1"}, headers=AUTH)
    assert sorted(p["field"] for p in query.json()["problems"]) == ["from", "to", "z"]
    assert order_count(seeded) == 0


def test_every_error_is_json(ops: httpx.Client) -> None:
    for method, path, status in (
        ("GET", f"{PREFIX}/nowhere", 404),
        ("GET", f"{PREFIX}/orders/", 404),
        ("GET", f"{PREFIX}/orders/abc", 404),
        ("GET", f"{PREFIX}/orders/99", 404),
        ("GET", f"{PREFIX}/orders/99999999999999999999", 404),
        ("DELETE", f"{PREFIX}/orders", 405),
        ("GET", f"{PREFIX}/returns/1/close", 405),
    ):
        reply = ops.request(method, path, headers=AUTH)
        assert reply.status_code == status, (method, path)
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["error"]
        assert reply.json()["hint"]
    allowed = ops.request("DELETE", f"{PREFIX}/orders", headers=AUTH)
    assert set(allowed.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_orders_amended_and_cancelled_over_the_api(
    ops: httpx.Client, seeded: sessionmaker[Session]
) -> None:
    order = ops.post(f"{PREFIX}/orders", json=ORDER, headers=AUTH).json()
    url = f"{PREFIX}/orders/{order['id']}"
    amended = ops.post(
        f"{url}/amend", json={"quantity": 5, "hub_variant": "single_band"}, headers=AUTH
    )
    assert amended.status_code == 200, amended.text
    assert (amended.json()["quantity"], amended.json()["hub_variant"]) == (5, "single_band")
    nothing = ops.post(f"{url}/amend", json={}, headers=AUTH)
    assert nothing.status_code == 422
    unknown = ops.post(f"{url}/amend", json={"supplier": IS}, headers=AUTH)
    assert unknown.json()["field"] == "supplier"
    cancelled = ops.post(f"{url}/cancel", headers=AUTH)
    assert cancelled.json()["status"] == "cancelled"
    assert ops.post(f"{url}/cancel", headers=AUTH).status_code == 409
    csv_body = f"chf_device_id,gpf_device_id\n{CHF},{GPF}\n"
    assert ops.post(f"{url}/deliveries", content=csv_body, headers=AUTH).status_code == 409
    history = ops.get(f"{url}/history", headers=AUTH).json()
    assert [(e["action"], e["actor"]) for e in history] == [
        ("placed", "token"),
        ("amended", "token"),
        ("cancelled", "token"),
    ]
    assert history[1]["changes"] == {
        "quantity": [2, 5],
        "hub_variant": ["dual_band", "single_band"],
    }
    with seeded() as session:
        row = session.get(HubOrder, order["id"])
        assert row is not None
        assert (row.status, row.quantity) == ("cancelled", 5)
        assert session.scalar(select(func.count()).select_from(HubOrderEvent)) == 3
        assert session.scalar(select(func.count()).select_from(DeliveredHub)) == 0


def _lost_body(world: DemoWorld, counter: int) -> bytes:
    request = ReturnRequest(
        request_id=RequestId(originator=IS, target=DEFAULT_ACB, counter=counter),
        command_variant=8,
        service_reference="8.14",
        kind=ReturnKind.NO_FAULT,
        device_id=CHF,
        return_type=NoFaultReturnType.LOST_OR_STOLEN.value,
    )
    credential = world.credentials[IS]
    return sign_request(
        request, credential.key, SigningCertificate.from_x509(credential.certificate)
    )


def test_lost_or_stolen_hub_over_the_api(
    ops: httpx.Client, seeded: sessionmaker[Session], world: DemoWorld
) -> None:
    order = ops.post(f"{PREFIX}/orders", json=ORDER, headers=AUTH).json()
    csv_body = f"chf_device_id,gpf_device_id\n{CHF},{GPF}\n"
    assert (
        ops.post(
            f"{PREFIX}/orders/{order['id']}/deliveries", content=csv_body, headers=AUTH
        ).status_code
        == 201
    )
    reply = ops.post(
        "/api/v1/serviceD",
        content=_lost_body(world, 1),
        headers={"content-type": "application/xml"},
    )
    assert reply.headers["x-duis-response-code"] == "I99"
    with seeded() as session:
        hub = session.get(Device, CHF)
        assert hub is not None
        return_id = hub.open_return_id
    assert return_id is not None
    month = datetime.now(UTC).strftime("%Y-%m")
    refused = ops.post(f"{PREFIX}/consignments", json={"month": month}, headers=AUTH)
    assert refused.status_code == 409  # nothing to consign: the lost hub is never collected
    located = ops.post(
        f"{PREFIX}/returns/{return_id}/locate", json={"location": "Hull"}, headers=AUTH
    )
    assert located.status_code == 409
    assert ops.post(f"{PREFIX}/returns/{return_id}/receive", headers=AUTH).status_code == 409
    written = ops.post(f"{PREFIX}/returns/{return_id}/write-off", headers=AUTH)
    assert written.status_code == 200, written.text
    view = written.json()
    assert (view["status"], view["charge"], view["charge_status"]) == (
        "written_off",
        "0.00",
        "not_returned",
    )
    assert view["written_off_at"]
    assert view["hub_open_return_id"] is None
    today = datetime.now(UTC).date().isoformat()
    (summary,) = ops.get(
        f"{PREFIX}/charges", params={"from": today, "to": today}, headers=AUTH
    ).json()
    assert (summary["not_returned"], summary["stock_charge_hubs"], summary["total"]) == (
        1,
        [CHF],
        "0.00",
    )
