"""Eligibility profiles end to end, on SQLite and PostgreSQL: the profile from the
settings file reaches the CLI, the logistics orders and the HTTP service.

Under ``all-ordering-parties`` an Electricity Distributor orders hubs for a
Supplier (CLI), the delivery is loaded, and its signed 8.14.4 requests go over
a real socket: accepted for its own delivered Pending hub, E5 once that hub is
installed, E4 for a hub of another order. Under ``pre-secmp0039`` the RSA is
refused E2 while the Supplier is served as before. The database is read after.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import typer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from hubreturns.cli import app
from hubreturns.codes import ResponseCode
from hubreturns.dcc.config import Settings
from hubreturns.dcc.loading import load_devices
from hubreturns.dcc.logistics.models import HubOrder
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.rules import PROFILES
from hubreturns.dcc.service import build_service, create_app
from hubreturns.dcc.serving import running_server
from hubreturns.dcc.store.models import AuditEntry, ReturnRecord
from hubreturns.extensions import register_commands
from hubreturns.model import ReturnKind, SmiStatus
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import ED, GS, IS, RSA, DemoWorld, Scenario, scenario_bodies

runner = CliRunner()
CHF1, GPF1 = "00-DB-12-34-56-78-E1-01", "00-DB-12-34-56-78-E1-00"
CHF2, GPF2 = "00-DB-12-34-56-78-E2-01", "00-DB-12-34-56-78-E2-00"
CHF3, GPF3 = "00-DB-12-34-56-78-E3-01", "00-DB-12-34-56-78-E3-00"
HUB_OF_IS = "00-DB-12-34-56-78-90-F2"  # demo world: IS responsible, Pending, not ED's order
HUB_RSA = "00-DB-12-34-56-78-90-C2"  # demo world: IS responsible, Pending
HUB_INSTALLED = "00-DB-12-34-56-78-90-B2"  # demo world: IS responsible, Commissioned
HUB_OF_GS = "00-DB-12-34-56-78-90-E2"  # demo world: GS responsible, Pending
ORDERERS = "all-ordering-parties"
#: ``--config`` exports HUBRETURNS_CONFIG for worker processes; the runner takes it
#: back after each command so no later test reads this module's files.
NO_CONFIG_LEFT: dict[str, str | None] = {"HUBRETURNS_CONFIG": None}


@pytest.fixture
def settings(database_url: str) -> Settings:
    """This module's service runs the original proposal's matrix, not the default."""
    return Settings(database_url=database_url, eligibility_profile=ORDERERS, allow_test_keys=True)


def _app() -> typer.Typer:
    if not any(c.name == "orders" for c in app.registered_groups):
        register_commands(app)
    return app


def _config(tmp_path: Path, database_url: str, profile: str | None) -> Path:
    config = tmp_path / f"hubreturns-{profile}.toml"
    text = f'database_url = "{database_url}"\n'
    if profile is not None:
        text += f'\n[eligibility]\nprofile = "{profile}"\n'
    config.write_text(text, encoding="utf-8")
    return config


@pytest.fixture
def cli(processor: Processor, settings: Settings, tmp_path: Path) -> Callable[..., Result]:
    """``hubreturns …`` on the test database, with ``[eligibility]`` from the file."""

    def run(*args: str, profile: str | None = ORDERERS) -> Result:
        config = _config(tmp_path, settings.database_url, profile)
        return runner.invoke(_app(), [*args, "--config", str(config)], env=NO_CONFIG_LEFT)

    return run


def _send(http: httpx.Client, world: DemoWorld, sender: str, device: str, counter: int) -> str:
    scenario = Scenario(
        name=f"{sender} on {device}",
        sender=sender,
        device=device,
        kind=ReturnKind.NO_FAULT,
        expected=ResponseCode.I99,
    )
    ((_, body),) = scenario_bodies(world, [scenario], first_counter=counter)
    reply = http.post("/api/v1/serviceD", content=body, headers={"content-type": "text/xml"})
    code = read_response(reply.content, world.dcc_certificates()).code
    assert reply.headers["x-duis-response-code"] == code
    return code


# Orders for a past month are refused, so the test orders for next month.
_TODAY = datetime.now(UTC).date()
_NEXT_MONTH = f"{_TODAY.year + _TODAY.month // 12}-{_TODAY.month % 12 + 1:02d}"

_ORDER_ARGS = (
    "orders",
    "add",
    "--supplier",
    IS,
    "--quantity",
    "2",
    "--variant",
    "dual_band",
    "--location",
    "Leeds depot",
    "--month",
    _NEXT_MONTH,
    "--placed-by",
)


def _order_and_deliver(cli: Callable[..., Result], tmp_path: Path, placed_by: str) -> Result:
    result = cli(*_ORDER_ARGS, placed_by)
    if result.exit_code != 0:
        return result
    delivery = tmp_path / "delivery.csv"
    delivery.write_text(
        f"chf_device_id,gpf_device_id\n{CHF1},{GPF1}\n{CHF2},{GPF2}\n", encoding="utf-8"
    )
    return cli("orders", "deliver", "1", str(delivery))


def test_an_ordering_party_returns_only_its_delivered_pending_hubs(
    cli: Callable[..., Result],
    http: httpx.Client,
    world: DemoWorld,
    seeded: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    ordered = _order_and_deliver(cli, tmp_path, ED)
    assert ordered.exit_code == 0, ordered.output
    with seeded() as session:
        order = session.scalars(select(HubOrder)).one()
        assert (order.supplier_user_id, order.placed_by, order.placed_by_role) == (IS, ED, "ED")
    # A hub delivered against an order the Supplier placed itself is not the ED's.
    assert cli(*_ORDER_ARGS, IS).exit_code == 0
    theirs = tmp_path / "delivery-2.csv"
    theirs.write_text(f"chf_device_id,gpf_device_id\n{CHF3},{GPF3}\n", encoding="utf-8")
    delivered = cli("orders", "deliver", "2", str(theirs))
    assert delivered.exit_code == 0, delivered.output
    load_devices(
        seeded,
        "device_id,device_type,smi_status,responsible_suppliers,gpf_id\n"
        f"{CHF2},CHF,Commissioned,{IS},{GPF2}\n",
        datetime.now(UTC),
    )

    assert _send(http, world, ED, CHF1, 1) == "I99"
    assert _send(http, world, ED, CHF2, 2) == "E5"
    assert _send(http, world, ED, HUB_OF_IS, 3) == "E4"
    assert _send(http, world, ED, CHF3, 4) == "E4"
    assert _send(http, world, RSA, HUB_RSA, 1) == "I99"  # the RSA as under secmp0039

    with seeded() as session:
        returns = session.scalars(select(ReturnRecord).order_by(ReturnRecord.id)).all()
        assert [(r.originator, r.role, r.on_behalf_of, r.device_id) for r in returns] == [
            (ED, "ED", IS, CHF1),
            (RSA, "RSA", IS, HUB_RSA),
        ]
        audit = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [(a.originator, a.device_id, a.code) for a in audit] == [
            (ED, CHF1, "I99"),
            (ED, CHF2, "E5"),
            (ED, HUB_OF_IS, "E4"),
            (ED, CHF3, "E4"),
            (RSA, HUB_RSA, "I99"),
        ]
        assert "an ED may return a hub only while it is Pending" in audit[1].reason


def test_only_the_orderers_profile_lets_other_roles_order(
    cli: Callable[..., Result], seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    refused = cli(*_ORDER_ARGS, ED, profile="secmp0039")
    assert refused.exit_code == 2
    assert "placed_by: 00-DB-12-34-56-78-00-06 has role ED" in refused.output
    with seeded() as session:
        assert session.scalars(select(HubOrder)).all() == []


def test_rules_prints_the_matrix_of_the_configured_profile(cli: Callable[..., Result]) -> None:
    wide = {"COLUMNS": "100"}
    orderers = runner.invoke(
        _app(),
        ["rules", "--markdown"],
        env={"HUBRETURNS_ELIGIBILITY_PROFILE": ORDERERS, **wide, **NO_CONFIG_LEFT},
    )
    assert orderers.exit_code == 0, orderers.output
    assert "Eligibility profile `all-ordering-parties`" in orderers.output
    assert "| OU | yes | placed the order the hub was delivered against | Pending only" in (
        orderers.output
    )
    before = cli("rules", profile="pre-secmp0039")
    assert before.exit_code == 0, before.output
    assert "Eligibility profile pre-secmp0039" in before.output
    assert all(len(line) <= 100 for line in before.output.splitlines())
    rsa_row = next(line for line in before.output.splitlines() if "│ RSA" in line)
    assert "no (E2)" in rsa_row


def test_an_unknown_profile_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    config = _config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", "everyone")
    result = runner.invoke(_app(), ["rules", "--config", str(config)], env=NO_CONFIG_LEFT)
    assert "HUBRETURNS_CONFIG" not in os.environ
    assert result.exit_code != 0
    assert "unknown eligibility profile 'everyone'" in str(result.exception)
    assert "pre-secmp0039, secmp0039, all-ordering-parties" in str(result.exception)


@pytest.fixture
def pre_secmp0039(
    database_url: str, engine: Engine, seeded: sessionmaker[Session]
) -> Iterator[httpx.Client]:
    """A second service on the same database, with the pre-SECMP0039 matrix."""
    before = Settings(
        database_url=database_url, eligibility_profile="pre-secmp0039", allow_test_keys=True
    )
    processor = build_service(before, engine=engine)
    with (
        running_server(create_app(processor, before)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def test_before_secmp0039_the_rsa_is_refused_e2_and_the_supplier_is_served(
    pre_secmp0039: httpx.Client, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    assert _send(pre_secmp0039, world, RSA, HUB_RSA, 1) == "E2"
    assert _send(pre_secmp0039, world, IS, HUB_RSA, 1) == "I99"
    with seeded() as session:
        audit = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [(a.originator, a.code) for a in audit] == [(RSA, "E2"), (IS, "I99")]
        assert "eligibility profile pre-secmp0039" in audit[0].reason
        returns = session.scalars(select(ReturnRecord)).all()
        assert [(r.originator, r.on_behalf_of) for r in returns] == [(IS, IS)]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_suppliers_are_served_alike_under_every_profile(
    profile: str,
    database_url: str,
    engine: Engine,
    world: DemoWorld,
    seeded: sessionmaker[Session],
) -> None:
    """SECMP0039 changes nothing for Suppliers: the same answers and rows whichever
    matrix the service runs (an installed hub, another Supplier's hub, its own)."""
    chosen = Settings(database_url=database_url, eligibility_profile=profile, allow_test_keys=True)
    with (
        running_server(create_app(build_service(chosen, engine=engine), chosen)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        codes = [
            _send(http, world, IS, HUB_INSTALLED, 1),
            _send(http, world, IS, HUB_OF_GS, 2),
            _send(http, world, GS, HUB_OF_GS, 1),
        ]
    assert codes == ["I99", "E4", "I99"]
    with seeded() as session:
        returns = session.scalars(select(ReturnRecord).order_by(ReturnRecord.id)).all()
        assert [
            (r.originator, r.on_behalf_of, r.device_id, r.smi_status_at_return) for r in returns
        ] == [
            (IS, IS, HUB_INSTALLED, SmiStatus.COMMISSIONED),
            (GS, GS, HUB_OF_GS, SmiStatus.PENDING),
        ]
        audit = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [(a.originator, a.code) for a in audit] == [(IS, "I99"), (IS, "E4"), (GS, "I99")]
