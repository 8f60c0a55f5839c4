"""Hub logistics end to end through the CLI, on SQLite and PostgreSQL.

Order → delivery → hubs Pending in the inventory → a signed DUIS return →
consignment → collected → received → tested → closed → the hub can be returned
again; a lost or stolen hub is written off, never collected, and listed as
accruing the stock charge; orders are amended and cancelled before delivery,
with history; charges follow the test outcome and the hub's variant; refusals
write nothing; the report's CSV equals the database.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import typer
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from hubreturns.cli import app
from hubreturns.codes import Reason, ResponseCode
from hubreturns.dcc.config import Settings
from hubreturns.dcc.logistics.models import (
    Consignment,
    DeliveredHub,
    HubDelivery,
    HubOrder,
    HubOrderEvent,
    ReturnEvent,
    ReturnProgress,
)
from hubreturns.dcc.logistics.values import ConsignmentStatus
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.store.models import AuditEntry, Device, DeviceSupplier, ReturnRecord
from hubreturns.extensions import register_commands
from hubreturns.model import (
    DEFAULT_ACB,
    ConnectionMethod,
    Endpoint,
    FaultReason,
    FaultReturnType,
    NoFaultReturnType,
    RequestId,
    ReturnKind,
    ReturnRequest,
    ReturnStatus,
)
from hubreturns.user.scenarios import GS, IS, RSA, DemoWorld, scenario_bodies
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.request import sign_request

runner = CliRunner()
CHF1, GPF1 = "00-DB-12-34-56-78-C1-01", "00-DB-12-34-56-78-C1-00"
CHF2, GPF2 = "00-DB-12-34-56-78-C2-01", "00-DB-12-34-56-78-C2-00"
VARIANT = "dual_band"


def _month(offset: int) -> str:
    today = datetime.now(UTC).date()
    index = today.year * 12 + today.month - 1 + offset
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


MONTH = _month(1)  # a requested delivery month ahead of today


def _app() -> typer.Typer:
    if not any(c.name == "report" for c in app.registered_commands):
        register_commands(app)
    return app


@pytest.fixture
def cli(processor: Processor, settings: Settings, tmp_path: Path) -> Callable[..., Result]:
    """Run ``hubreturns …`` on the test database (the processor's seeded one)."""
    config = tmp_path / "hubreturns.toml"
    config.write_text(f'database_url = "{settings.database_url}"\n', encoding="utf-8")

    def run(*args: str) -> Result:
        return runner.invoke(_app(), [*args, "--config", str(config)])

    return run


def duis_return(
    world: DemoWorld, sender: str, device: str, gpf: str, counter: int, *, lost: bool = False
) -> bytes:
    """A signed 8.14.3 fault return, or with ``lost`` an 8.14.4 "Lost or Stolen Hub"."""
    request = (
        ReturnRequest(
            request_id=RequestId(originator=sender, target=DEFAULT_ACB, counter=counter),
            command_variant=8,
            service_reference="8.14",
            kind=ReturnKind.NO_FAULT,
            device_id=device,
            return_type=NoFaultReturnType.LOST_OR_STOLEN.value,
        )
        if lost
        else ReturnRequest(
            request_id=RequestId(originator=sender, target=DEFAULT_ACB, counter=counter),
            command_variant=8,
            service_reference="8.14",
            kind=ReturnKind.FAULT,
            device_id=device,
            return_type=FaultReturnType.PRE_INSTALL.value,
            other_device_id=gpf,
            connection_method=ConnectionMethod.HOT_SHOE,
            fault_reason=FaultReason.DAMAGED_CASE,
        )
    )
    credential = world.credentials[sender]
    return sign_request(
        request, credential.key, SigningCertificate.from_x509(credential.certificate)
    )


def delivery_file(tmp_path: Path, *rows: tuple[str, str], name: str = "delivery.csv") -> Path:
    path = tmp_path / name
    path.write_text(
        "chf_device_id,gpf_device_id\n" + "".join(f"{c},{g}\n" for c, g in rows), encoding="utf-8"
    )
    return path


def add_order(
    cli: Callable[..., Result], *extra: str, quantity: int = 3, variant: str = VARIANT
) -> Result:
    return cli(
        "orders",
        "add",
        "--supplier",
        IS,
        "--quantity",
        str(quantity),
        "--variant",
        variant,
        "--location",
        "Leeds depot",
        "--month",
        MONTH,
        *extra,
    )


def counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return {
            model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (HubOrder, HubDelivery, DeliveredHub, Device, DeviceSupplier, Consignment)
        }


def status_of(sessions: sessionmaker[Session], return_id: int) -> ReturnStatus:
    with sessions() as session:
        record = session.get(ReturnRecord, return_id)
        assert record is not None
        assert isinstance(record.status, ReturnStatus)  # read back as the enum
        return record.status


def test_order_delivery_return_lifecycle_and_return_again(
    cli: Callable[..., Result],
    processor: Processor,
    seeded: sessionmaker[Session],
    world: DemoWorld,
    tmp_path: Path,
) -> None:
    result = add_order(cli)
    assert result.exit_code == 0, result.output
    with seeded() as session:
        order = session.scalars(select(HubOrder)).one()
        assert (order.supplier_user_id, order.placed_by, order.quantity) == (IS, IS, 3)
        assert (order.hub_variant, order.delivery_location, order.requested_month) == (
            VARIANT,
            "Leeds depot",
            MONTH,
        )

    result = cli(
        "orders", "deliver", str(order.id), str(delivery_file(tmp_path, (CHF1, GPF1), (CHF2, GPF2)))
    )
    assert result.exit_code == 0, result.output
    assert "2 hubs loaded as Pending" in result.output
    with seeded() as session:
        for chf, gpf in ((CHF1, GPF1), (CHF2, GPF2)):
            hub = session.get(Device, chf)
            proxy = session.get(Device, gpf)
            assert hub is not None
            assert proxy is not None
            assert (hub.device_type, hub.smi_status, hub.gpf_id) == ("CHF", "Pending", gpf)
            assert (proxy.device_type, proxy.smi_status) == ("GPF", "Pending")
            suppliers = session.scalars(
                select(DeviceSupplier.supplier_user_id).where(DeviceSupplier.device_id == chf)
            ).all()
            assert suppliers == [IS]

    # The Supplier returns one of the delivered hubs over DUIS.
    first = processor.handle_duis(duis_return(world, IS, CHF1, GPF1, 1), Endpoint.NON_DEVICE)
    assert first.verdict is ResponseCode.I99, first.reason
    return_id = first.return_id
    assert return_id is not None
    assert status_of(seeded, return_id) == "notified"

    month = datetime.now(UTC).strftime("%Y-%m")
    result = cli("consignments", "plan", "--month", month, "--csv")
    assert result.exit_code == 0, result.output
    plan = list(csv.DictReader(io.StringIO(result.stdout)))
    assert plan[0]["location"] == "Leeds depot"
    assert plan[0]["hubs"] == "1"
    assert {"consolidated_gbp", "one_per_hub_gbp", "saving_gbp"} <= set(plan[0])

    # A step out of order is refused and changes nothing.
    result = cli("lifecycle", "receive", str(return_id))
    assert result.exit_code == 2
    assert "is notified; it cannot be received now" in result.output
    assert status_of(seeded, return_id) == "notified"

    result = cli("consignments", "create", "--month", month)
    assert result.exit_code == 0, result.output
    with seeded() as session:
        consignment = session.scalars(select(Consignment)).one()
        assert (consignment.party, consignment.collection_location, consignment.status) == (
            IS,
            "Leeds depot",
            "planned",
        )
    assert cli("lifecycle", "collect", str(consignment.id)).exit_code == 0
    assert status_of(seeded, return_id) == "collected"
    result = cli("lifecycle", "collect", str(consignment.id))
    assert result.exit_code == 2
    assert "already collected" in result.output
    with seeded() as session:
        stored = session.get(Consignment, consignment.id)
        assert stored is not None
        assert stored.status is ConsignmentStatus.COLLECTED
    collected = cli("consignments", "list", "--status", "Collected", "--csv")
    assert [r["id"] for r in csv.DictReader(io.StringIO(collected.stdout))] == [str(consignment.id)]
    assert cli("consignments", "list", "--status", "planned").output.strip().endswith("no rows.")
    result = cli("consignments", "list", "--status", "lost")
    assert result.exit_code == 2
    assert "--status: 'lost' is not a consignment status" in result.output
    assert "Give one of: planned, collected." in result.output

    result = cli("lifecycle", "close", str(return_id))
    assert result.exit_code == 2
    assert "cannot be closed" in result.output
    assert cli("lifecycle", "receive", str(return_id)).exit_code == 0
    result = cli("lifecycle", "test", str(return_id), "--outcome", "no_fault_found")
    assert result.exit_code == 0, result.output
    assert "charge £8.27 (No fault found: redeployable, charged)" in result.output

    # While the return is open, the hub cannot be returned again (E44).
    again = processor.handle_duis(duis_return(world, IS, CHF1, GPF1, 2), Endpoint.NON_DEVICE)
    assert again.verdict is Reason.OPEN_RETURN

    result = cli("lifecycle", "close", str(return_id))
    assert result.exit_code == 0, result.output
    assert "hub released" in result.output
    with seeded() as session:
        hub = session.get(Device, CHF1)
        assert hub is not None
        assert hub.open_return_id is None
        steps = session.scalars(
            select(ReturnEvent.step)
            .where(ReturnEvent.return_id == return_id)
            .order_by(ReturnEvent.id)
        ).all()
        assert steps == ["collect", "receive", "test", "close"]
    assert status_of(seeded, return_id) == "closed"
    result = cli("lifecycle", "test", str(return_id), "--outcome", "fault_confirmed")
    assert result.exit_code == 2
    assert "takes no further steps" in result.output

    # Closed: the same hub can be returned again.
    second = processor.handle_duis(duis_return(world, IS, CHF1, GPF1, 3), Endpoint.NON_DEVICE)
    assert second.verdict is ResponseCode.I99, second.reason

    today = datetime.now(UTC).date()
    result = cli("charges", "--from", str(today), "--to", str(today), "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [
        (r["party"], r["returns"], r["charged"], r["pending"], r["redeployable"], r["amount_gbp"])
        for r in rows
    ] == [(IS, "2", "1", "1", "1", "8.27")]  # the second return is not tested yet: pending


def test_rsa_orders_only_for_a_supplier_that_appoints_it(
    cli: Callable[..., Result], seeded: sessionmaker[Session]
) -> None:
    result = add_order(cli, "--placed-by", RSA)
    assert result.exit_code == 0, result.output
    result = cli(
        "orders",
        "add",
        "--supplier",
        GS,
        "--placed-by",
        RSA,
        "--quantity",
        "1",
        "--variant",
        VARIANT,
        "--location",
        "Hull",
        "--month",
        MONTH,
    )
    assert result.exit_code == 2
    assert "is not currently appointed by" in result.output
    result = cli(
        "orders",
        "add",
        "--supplier",
        RSA,
        "--quantity",
        "1",
        "--variant",
        VARIANT,
        "--location",
        "Hull",
        "--month",
        "2026-13",
    )
    assert result.exit_code == 2
    assert "requested_month" in result.output
    with seeded() as session:
        orders = session.scalars(select(HubOrder)).all()
        assert [(o.supplier_user_id, o.placed_by, o.placed_by_role) for o in orders] == [
            (IS, RSA, "RSA")
        ]


def test_bad_deliveries_load_nothing(
    cli: Callable[..., Result], seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    assert add_order(cli, quantity=3).exit_code == 0
    assert (
        cli(
            "orders", "deliver", "1", str(delivery_file(tmp_path, (CHF1, GPF1), (CHF2, GPF2)))
        ).exit_code
        == 0
    )
    before = counts(seeded)

    unknown = cli(
        "orders",
        "deliver",
        "99",
        str(delivery_file(tmp_path, ("00-DB-12-34-56-78-C3-01", "00-DB-12-34-56-78-C3-00"))),
    )
    assert unknown.exit_code == 2
    assert "order 99 does not exist" in unknown.output

    over = cli(
        "orders",
        "deliver",
        "1",
        str(
            delivery_file(
                tmp_path,
                ("00-DB-12-34-56-78-C3-01", "00-DB-12-34-56-78-C3-00"),
                ("00-DB-12-34-56-78-C4-01", "00-DB-12-34-56-78-C4-00"),
            )
        ),
    )
    assert over.exit_code == 2
    assert "over-delivery: order 1 is for 3 hub(s), 2 already delivered" in over.output

    in_file = cli(
        "orders",
        "deliver",
        "1",
        str(
            delivery_file(
                tmp_path,
                ("00-DB-12-34-56-78-C3-01", "00-DB-12-34-56-78-C3-00"),
                ("00-DB-12-34-56-78-C3-01", "00-DB-12-34-56-78-C5-00"),
            )
        ),
    )
    assert in_file.exit_code == 2
    assert (
        "line 3, chf_device_id: 00-DB-12-34-56-78-C3-01 already appears on line 2" in in_file.output
    )

    inventory = cli(
        "orders",
        "deliver",
        "1",
        str(delivery_file(tmp_path, ("00-DB-12-34-56-78-90-A2", "00-DB-12-34-56-78-C6-00"))),
    )
    assert inventory.exit_code == 2
    assert (
        "line 2, chf_device_id: 00-DB-12-34-56-78-90-A2 is already in the Smart Metering"
        in inventory.output
    )

    redelivered = cli(
        "orders", "deliver", "1", str(delivery_file(tmp_path, ("00-DB-12-34-56-78-C7-01", GPF2)))
    )
    assert redelivered.exit_code == 2
    assert f"gpf_device_id: {GPF2} is already" in redelivered.output

    missing = cli("orders", "deliver", "1", str(tmp_path / "absent.csv"))
    assert missing.exit_code == 2
    assert "cannot read" in missing.output
    assert counts(seeded) == before


def test_report_csv_matches_the_database_and_html_is_one_file(
    cli: Callable[..., Result],
    processor: Processor,
    seeded: sessionmaker[Session],
    world: DemoWorld,
    tmp_path: Path,
) -> None:
    for _scenario, body in scenario_bodies(world):
        processor.handle_duis(body, _scenario.endpoint)
    today = datetime.now(UTC).date()
    period = ("--from", str(today - timedelta(days=1)), "--to", str(today))
    result = cli("report", *period, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))

    def section(name: str) -> dict[str, int]:
        return {r["key"]: int(r["count"]) for r in rows if r["section"] == name}

    with seeded() as session:
        returns = session.scalars(select(ReturnRecord)).all()
        refused = session.scalars(select(AuditEntry).where(AuditEntry.accepted.is_(False))).all()
    assert len(returns) == 4
    assert len(refused) == 22
    assert section("returns_by_party") == dict(Counter(r.originator for r in returns))
    assert section("returns_by_role") == dict(Counter(r.role for r in returns))
    assert section("returns_by_role") == {"IS": 2, "GS": 1, "RSA": 1}
    assert section("returns_by_type") == dict(Counter(r.return_type for r in returns))
    assert section("returns_by_fault_reason") == dict(
        Counter(r.fault_reason for r in returns if r.fault_reason)
    )
    assert section("rejections_by_code") == dict(Counter(e.code for e in refused))
    assert section("totals")["returns"] == 4
    assert section("totals")["rejections"] == 22
    charges = {r["key"]: Decimal(r["amount_gbp"]) for r in rows if r["section"] == "charges"}
    # Nothing is tested yet, so nothing is charged: IS 3 returns pending, GS 1.
    assert charges == {IS: Decimal("0.00"), GS: Decimal("0.00")}
    details = {r["key"]: r["detail"] for r in rows if r["section"] == "charges"}
    assert details[IS].endswith("0 charged, 3 pending test")
    total = next(r for r in rows if r["section"] == "totals" and r["key"] == "charges")
    assert Decimal(total["amount_gbp"]) == Decimal("0.00")

    out = tmp_path / "out" / "report.html"
    result = cli("report", *period, "--format", "html", "--out", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 4
    assert base64.b64decode(images[0].split('"', 1)[0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<script" not in page
    assert "<link" not in page
    assert "http" not in page.replace("http-equiv", "")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary left over

    table = cli("report", *period)
    assert table.exit_code == 0
    assert "Rejections by response code" in table.output
    refused_html = cli("report", *period, "--format", "html")
    assert refused_html.exit_code == 2
    assert "--out" in refused_html.output
    bad = cli("report", "--from", "yesterday", "--to", str(today))
    assert bad.exit_code == 2
    assert "from: 'yesterday' is not a date" in bad.output


def test_unlocated_returns_need_a_location(
    cli: Callable[..., Result],
    processor: Processor,
    seeded: sessionmaker[Session],
    world: DemoWorld,
) -> None:
    bodies = dict((s.name, b) for s, b in scenario_bodies(world))
    accepted = processor.handle_duis(bodies["IS fault return, Pending hub"], Endpoint.NON_DEVICE)
    assert accepted.return_id is not None
    month = datetime.now(UTC).strftime("%Y-%m")
    result = cli("consignments", "create", "--month", month)
    assert result.exit_code == 2
    assert "no known collection location" in result.output
    assert counts(seeded)["consignments"] == 0
    assert cli("lifecycle", "locate", str(accepted.return_id), "Bristol yard").exit_code == 0
    assert cli("consignments", "create", "--month", month).exit_code == 0
    with seeded() as session:
        assert session.scalars(select(Consignment.collection_location)).all() == ["Bristol yard"]
    result = cli("consignments", "create", "--month", month)
    assert result.exit_code == 2
    assert "no notified returns" in result.output


def _deliver_one(
    cli: Callable[..., Result], tmp_path: Path, variant: str, chf: str, gpf: str
) -> int:
    assert add_order(cli, quantity=1, variant=variant).exit_code == 0
    order_id = int(cli("orders", "list", "--csv").stdout.strip().splitlines()[-1].split(",")[0])
    result = cli(
        "orders",
        "deliver",
        str(order_id),
        str(delivery_file(tmp_path, (chf, gpf), name=f"{chf}.csv")),
    )
    assert result.exit_code == 0, result.output
    return order_id


def test_lost_or_stolen_hub_is_written_off_never_collected(
    cli: Callable[..., Result],
    processor: Processor,
    seeded: sessionmaker[Session],
    world: DemoWorld,
    tmp_path: Path,
) -> None:
    _deliver_one(cli, tmp_path, "dual_band", CHF1, GPF1)
    _deliver_one(cli, tmp_path, "single_band", CHF2, GPF2)
    lost = processor.handle_duis(
        duis_return(world, IS, CHF1, GPF1, 1, lost=True), Endpoint.NON_DEVICE
    )
    assert lost.verdict is ResponseCode.I99, lost.reason
    kept = processor.handle_duis(duis_return(world, IS, CHF2, GPF2, 2), Endpoint.NON_DEVICE)
    assert kept.verdict is ResponseCode.I99, kept.reason
    assert lost.return_id is not None
    assert kept.return_id is not None
    month = datetime.now(UTC).strftime("%Y-%m")

    # Never planned, consigned or located; never collected, received or tested.
    plan = list(
        csv.DictReader(io.StringIO(cli("consignments", "plan", "--month", month, "--csv").stdout))
    )
    assert [row["hubs"] for row in plan] == ["1", "1"]  # one shipment + the TOTAL row
    refused = cli("lifecycle", "locate", str(lost.return_id), "Hull")
    assert refused.exit_code == 2
    assert "lost or stolen hub; it cannot be given a collection location" in refused.output
    assert cli("consignments", "create", "--month", month).exit_code == 0
    with seeded() as session:
        consigned = session.scalars(
            select(ReturnProgress.return_id).where(ReturnProgress.consignment_id.is_not(None))
        ).all()
        assert consigned == [kept.return_id]
    for step in (("receive",), ("test", "--outcome", "fault_confirmed"), ("close",)):
        result = cli("lifecycle", step[0], str(lost.return_id), *step[1:])
        assert result.exit_code == 2, step
        assert "next step is write_off" in result.output
    assert status_of(seeded, lost.return_id) == "notified"

    # The kept hub is tested: it cannot be redeployed, single band → £30.87.
    assert cli("consignments", "create", "--month", month).exit_code == 2
    with seeded() as session:
        consignment_id = session.scalars(select(Consignment.id)).one()
    assert cli("lifecycle", "collect", str(consignment_id)).exit_code == 0
    assert cli("lifecycle", "receive", str(kept.return_id)).exit_code == 0
    result = cli("lifecycle", "test", str(kept.return_id), "--outcome", "fault_confirmed")
    assert (
        "charge £30.87 (Fault confirmed: not redeployable, single band, charged)" in result.output
    )

    # The lost hub's one closing step: write off (releases the hub).
    result = cli("lifecycle", "write-off", str(lost.return_id))
    assert result.exit_code == 0, result.output
    assert "written_off" in result.output
    assert "not_returned" in result.output
    assert status_of(seeded, lost.return_id) == "written_off"
    with seeded() as session:
        hub = session.get(Device, CHF1)
        assert hub is not None
        assert hub.open_return_id is None
        progress = session.get(ReturnProgress, lost.return_id)
        assert progress is not None
        assert progress.written_off_at is not None
        assert progress.collected_at is None
        assert progress.consignment_id is None
        steps = session.scalars(
            select(ReturnEvent.step).where(ReturnEvent.return_id == lost.return_id)
        ).all()
        assert steps == ["write_off"]
    assert cli("lifecycle", "write-off", str(lost.return_id)).exit_code == 2
    assert cli("lifecycle", "write-off", str(kept.return_id)).exit_code == 2

    today = str(datetime.now(UTC).date())
    result = cli("charges", "--from", today, "--to", today, "--csv")
    (row,) = list(csv.DictReader(io.StringIO(result.stdout)))
    assert (row["returns"], row["charged"], row["lost/stolen"], row["amount_gbp"]) == (
        "2",
        "1",
        "1",
        "30.87",
    )
    assert row["non_redeployable_single_band"] == "1"
    table = cli("charges", "--from", today, "--to", today)
    assert f"{CHF1} ({IS}" in table.output
    assert "pre-installation stock charge goes on accruing" in table.output
    report = list(
        csv.DictReader(
            io.StringIO(cli("report", "--from", today, "--to", today, "--format", "csv").stdout)
        )
    )
    assert [r["key"] for r in report if r["section"] == "stock_charges_accruing"] == [CHF1]


def test_charge_follows_the_hub_variant_it_was_delivered_as(
    cli: Callable[..., Result],
    processor: Processor,
    seeded: sessionmaker[Session],
    world: DemoWorld,
    tmp_path: Path,
) -> None:
    _deliver_one(cli, tmp_path, "dual_band", CHF1, GPF1)
    with seeded() as session:
        assert session.scalars(select(DeliveredHub.hub_variant)).all() == ["dual_band"]
    accepted = processor.handle_duis(duis_return(world, IS, CHF1, GPF1, 1), Endpoint.NON_DEVICE)
    assert accepted.return_id is not None
    month = datetime.now(UTC).strftime("%Y-%m")
    assert cli("consignments", "create", "--month", month).exit_code == 0
    assert cli("lifecycle", "collect", "1").exit_code == 0
    assert cli("lifecycle", "receive", str(accepted.return_id)).exit_code == 0
    shown = cli("lifecycle", "show", str(accepted.return_id))
    assert "charge £0.00 (Not tested yet, pending)" in shown.output
    result = cli("lifecycle", "test", str(accepted.return_id), "--outcome", "fault_confirmed")
    assert "charge £58.75 (Fault confirmed: not redeployable, dual band, charged)" in result.output


def test_orders_are_amended_and_cancelled_before_delivery_with_history(
    cli: Callable[..., Result], seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    assert add_order(cli, quantity=3).exit_code == 0
    later = _month(2)
    result = cli(
        "orders", "amend", "1", "--quantity", "2", "--month", later, "--variant", "single_band"
    )
    assert result.exit_code == 0, result.output
    assert "order 1 amended" in result.output
    before = counts(seeded)

    past = cli("orders", "amend", "1", "--month", _month(-1), "--quantity", "0")
    assert past.exit_code == 2
    assert "requested_month" in past.output
    assert "in the past" in past.output
    assert "quantity" in past.output  # every wrong field at once
    assert cli("orders", "amend", "1").exit_code == 2  # nothing to change
    assert cli("orders", "amend", "9", "--quantity", "1").exit_code == 2
    refused_add = cli(
        "orders",
        "add",
        "--supplier",
        IS,
        "--quantity",
        "1",
        "--variant",
        "dual_band",
        "--location",
        "Hull",
        "--month",
        _month(-1),
    )
    assert refused_add.exit_code == 2
    assert "is in the past" in refused_add.output
    bad_variant = cli(
        "orders",
        "add",
        "--supplier",
        IS,
        "--quantity",
        "1",
        "--variant",
        "HAN variant: dual band",
        "--location",
        "Hull",
        "--month",
        MONTH,
    )
    assert bad_variant.exit_code == 2
    assert counts(seeded) == before

    assert cli("orders", "deliver", "1", str(delivery_file(tmp_path, (CHF1, GPF1)))).exit_code == 0
    for refused in (cli("orders", "amend", "1", "--quantity", "5"), cli("orders", "cancel", "1")):
        assert refused.exit_code == 2
        assert "order 1 has 1 hub(s) delivered" in refused.output

    assert add_order(cli, quantity=1).exit_code == 0
    assert cli("orders", "cancel", "2").exit_code == 0
    refused = cli("orders", "deliver", "2", str(delivery_file(tmp_path, (CHF2, GPF2))))
    assert refused.exit_code == 2
    assert "order 2 is cancelled" in refused.output
    assert cli("orders", "amend", "2", "--quantity", "2").exit_code == 2

    with seeded() as session:
        first = session.get(HubOrder, 1)
        second = session.get(HubOrder, 2)
        assert first is not None
        assert second is not None
        assert (first.quantity, first.requested_month, first.hub_variant, first.status) == (
            2,
            later,
            "single_band",
            "open",
        )
        assert second.status == "cancelled"
        assert session.scalars(select(DeliveredHub.hub_variant)).all() == ["single_band"]
        events = session.scalars(select(HubOrderEvent).order_by(HubOrderEvent.id)).all()
        assert [(e.order_id, e.action) for e in events] == [
            (1, "placed"),
            (1, "amended"),
            (2, "placed"),
            (2, "cancelled"),
        ]
        assert json.loads(events[1].changes) == {
            "quantity": [3, 2],
            "requested_month": [MONTH, later],
            "hub_variant": ["dual_band", "single_band"],
        }
        assert events[1].actor.startswith("cli:")
    history = cli("orders", "history", "1", "--csv")
    assert [r["action"] for r in csv.DictReader(io.StringIO(history.stdout))] == [
        "placed",
        "amended",
    ]
