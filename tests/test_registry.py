"""Registry administration (issue 25 §1): list, suspend/activate, remove, appoint, and
device inventory loads that replace, through the real CLI app on both engines.

Each command runs in-process through ``typer.testing.CliRunner`` on
``hubreturns.cli.app``; refusals are the ``HintedError`` ``main()`` prints (code,
message, hint). The database is read afterwards, and requests go through the
real ``Processor`` where a change must change a decision.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.store.models import Appointment, Device, DeviceSupplier, User
from hubreturns.errors import HintedError
from hubreturns.user.scenarios import (
    ED,
    GS,
    GS_SUSPENDED,
    HUBS,
    IS,
    RSA,
    RSA_UNAPPOINTED,
    SCENARIOS,
    USERS,
    DemoWorld,
    Scenario,
    scenario_bodies,
)

HUB_A2, HUB_C2 = "00-DB-12-34-56-78-90-A2", "00-DB-12-34-56-78-90-C2"
HUB_F2 = "00-DB-12-34-56-78-90-F2"
STRANGER = "00-DB-12-34-56-78-0A-0A"


@dataclass(frozen=True, slots=True)
class Cli:
    url: str
    columns: int = 100

    def invoke(self, *args: str | Path) -> tuple[int, str, BaseException | None]:
        result = CliRunner().invoke(
            app,
            [str(a) for a in args],
            env={
                "HUBRETURNS_DATABASE_URL": self.url,
                "HUBRETURNS_CONFIG": None,
                "COLUMNS": str(self.columns),
            },
        )
        failure = result.exception if not isinstance(result.exception, SystemExit) else None
        return result.exit_code, result.stdout, failure

    def __call__(self, *args: str | Path) -> str:
        """The command's stdout; it must succeed."""
        code, out, failure = self.invoke(*args)
        assert failure is None, (failure, out)
        assert code == 0, out
        return out

    def refused(self, *args: str | Path) -> HintedError:
        """The refusal (code, message, hint) the command raised."""
        _, out, failure = self.invoke(*args)
        assert isinstance(failure, HintedError), (failure, out)
        assert failure.hint
        assert failure.hint != failure.message
        return failure


@pytest.fixture
def cli(database_url: str, seeded: sessionmaker[Session]) -> Cli:
    """The demo world loaded (users, certificates, one appointment, hubs)."""
    return Cli(database_url)


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def send(processor: Processor, world: DemoWorld, scenario: Scenario, counter: int) -> str:
    ((_, body),) = scenario_bodies(world, [scenario], first_counter=counter)
    return processor.handle_duis(body, scenario.endpoint).code


def scenario(sender: str, device: str) -> Scenario:
    from hubreturns.codes import ResponseCode

    return Scenario(name="probe", sender=sender, device=device, expected=ResponseCode.I99)


def count(sessions: sessionmaker[Session], model: type[object], *where: object) -> int:
    with sessions() as session:
        query = select(func.count()).select_from(model)
        for condition in where:
            query = query.where(condition)  # type: ignore[arg-type]
        return int(session.scalar(query) or 0)


# -- --version ---------------------------------------------------------------------------


def test_version_is_the_installed_package_version(cli: Cli) -> None:
    assert cli("--version").strip() == f"hubreturns {metadata.version('hubreturns')}"


# -- list --------------------------------------------------------------------------------


def test_list_users_csv_json_and_filters_match_the_database(
    cli: Cli, sessions: sessionmaker[Session]
) -> None:
    listed = csv_rows(cli("list", "users", "--csv"))
    with sessions() as session:
        stored = session.scalars(select(User).order_by(User.user_id)).all()
        assert [(r["user_id"], r["role"], r["status"], r["name"]) for r in listed] == [
            (u.user_id, u.role, u.status, u.name) for u in stored
        ]
    assert len(listed) == len(USERS)
    rsas = json.loads(cli("list", "users", "--role", "rsa", "--json"))
    assert {r["user_id"] for r in rsas} == {RSA, RSA_UNAPPOINTED}
    suspended = csv_rows(cli("list", "users", "--status", "SUSPENDED", "--csv"))
    assert [r["user_id"] for r in suspended] == [GS_SUSPENDED]
    refusal = cli.refused("list", "users", "--role", "boss")
    assert "'boss' is not one of" in refusal.message


def test_tables_fit_100_columns_with_whole_ids_and_say_when_empty(cli: Cli) -> None:
    for kind in ("users", "certs", "appointments", "devices"):
        table = cli("list", kind)
        assert max(len(line) for line in table.splitlines()) <= 100, table
    devices = cli("list", "devices", "--type", "chf")
    for device_id, device_type, *_ in HUBS:
        if device_type != "GPF":  # a GPF is shown as its hub's gpf
            assert (device_id in devices) is (device_type == "CHF")
    assert HUB_A2 in devices
    assert "00-DB-12-34-56-78-90-A0" in devices
    none = cli("list", "devices", "--supplier", ED)
    assert none.strip() == "Device inventory: no rows match."
    # every EUI whole, the Suppliers' included: a fragment would look like another User ID
    shown = cli("list", "devices")
    for row in csv_rows(cli("list", "devices", "--csv")):
        for supplier in row["suppliers"].split():
            assert supplier in shown, supplier


def test_list_devices_filters(cli: Cli) -> None:
    by_supplier = csv_rows(cli("list", "devices", "--supplier", GS, "--csv"))
    assert [(r["device"], r["suppliers"]) for r in by_supplier] == [("00-DB-12-34-56-78-90-E2", GS)]
    pending = csv_rows(cli("list", "devices", "--smi-status", "Pending", "--type", "CHF", "--csv"))
    assert pending
    assert {r["smi_status"] for r in pending} == {"Pending"}
    one = json.loads(cli("list", "devices", "--device", HUB_A2.lower(), "--json"))
    assert [(d["device"], d["gpf"], d["type"]) for d in one] == [
        (HUB_A2, "00-DB-12-34-56-78-90-A0", "CHF")
    ]


def test_list_certs_and_appointments(cli: Cli, world: DemoWorld) -> None:
    certs = csv_rows(cli("list", "certs", "--eui", IS, "--csv"))
    assert certs
    assert {c["eui"] for c in certs} == {IS}
    everyone = csv_rows(cli("list", "certs", "--csv"))
    assert len(everyone) == len(list(world.store_certificates.glob("*.pem")))
    appointments = json.loads(cli("list", "appointments", "--json"))
    assert [(a["rsa"], a["supplier"], a["state"]) for a in appointments] == [(RSA, IS, "open")]
    assert json.loads(cli("list", "appointments", "--rsa", RSA_UNAPPOINTED, "--json")) == []


# -- users suspend / activate ---------------------------------------------------------------


def test_suspend_then_activate_changes_the_decision(
    cli: Cli, processor: Processor, world: DemoWorld, sessions: sessionmaker[Session]
) -> None:
    assert "is now suspended" in cli("users", "suspend", IS.lower())
    with sessions() as session:
        user = session.get(User, IS)
        assert user is not None
        assert user.status == "suspended"
    assert send(processor, world, scenario(IS, HUB_A2), 100) == "E3"
    assert "was already suspended" in cli("users", "suspend", IS)
    assert "is now active" in cli("users", "activate", IS)
    assert send(processor, world, scenario(IS, HUB_A2), 101) == "I99"
    assert cli.refused("users", "suspend", STRANGER).code == "not_found"


# -- remove -------------------------------------------------------------------------------


@pytest.fixture
def traffic(cli: Cli, processor: Processor, world: DemoWorld) -> Cli:
    """Every demo scenario sent: returns and audit rows now name users and hubs."""
    for sent, body in scenario_bodies(world):
        processor.handle_duis(body, sent.endpoint)
    return cli


def test_remove_user_with_history_is_refused_with_suspend_as_the_hint(
    traffic: Cli, sessions: sessionmaker[Session]
) -> None:
    refusal = traffic.refused("remove", "user", IS)
    assert refusal.code == "in_use"
    assert "returns" in refusal.message
    assert "audit rows" in refusal.message
    assert f"hubreturns users suspend {IS}" in refusal.hint
    assert count(sessions, User, User.user_id == IS) == 1


def test_remove_user_nothing_refers_to(cli: Cli, sessions: sessionmaker[Session]) -> None:
    refusal = cli.refused("remove", "user", RSA)  # its appointment names it
    assert "1 appointments" in refusal.message
    assert "removed User" in cli("remove", "user", RSA_UNAPPOINTED)
    assert count(sessions, User, User.user_id == RSA_UNAPPOINTED) == 0
    assert count(sessions, User) == len(USERS) - 1
    assert cli.refused("remove", "user", RSA_UNAPPOINTED).code == "not_found"


def test_remove_appointment_refused_once_returns_were_made_under_it(
    cli: Cli, processor: Processor, world: DemoWorld, sessions: sessionmaker[Session]
) -> None:
    (appointment,) = json.loads(cli("list", "appointments", "--json"))
    assert send(processor, world, scenario(RSA, HUB_C2), 200) == "I99"
    refusal = cli.refused("remove", "appointment", str(appointment["id"]))
    assert refusal.code == "in_use"
    assert f"hubreturns revoke --rsa {RSA} --supplier {IS}" in refusal.hint
    assert count(sessions, Appointment) == 1


def test_remove_an_unused_appointment(cli: Cli, sessions: sessionmaker[Session]) -> None:
    (appointment,) = json.loads(cli("list", "appointments", "--json"))
    assert "removed appointment" in cli("remove", "appointment", str(appointment["id"]))
    assert count(sessions, Appointment) == 0
    assert cli.refused("remove", "appointment", str(appointment["id"])).code == "not_found"


def test_remove_device_with_history_is_refused_else_removed(
    cli: Cli, processor: Processor, world: DemoWorld, sessions: sessionmaker[Session]
) -> None:
    assert send(processor, world, scenario(IS, HUB_A2), 400) == "I99"
    refusal = cli.refused("remove", "device", HUB_A2)
    assert refusal.code == "in_use"
    assert "1 returns, 1 audit rows" in refusal.message
    assert "load devices --replace" in refusal.hint
    assert count(sessions, Device, Device.device_id == HUB_A2) == 1
    assert "removed device" in cli("remove", "device", HUB_F2)
    assert count(sessions, Device, Device.device_id == HUB_F2) == 0
    assert count(sessions, DeviceSupplier, DeviceSupplier.device_id == HUB_F2) == 0
    assert cli.refused("remove", "device", HUB_F2).code == "not_found"


# -- appoint -------------------------------------------------------------------------------


def test_an_identical_open_appointment_is_refused(
    cli: Cli, sessions: sessionmaker[Session]
) -> None:
    refusal = cli.refused("appoint", "--rsa", RSA, "--supplier", IS)
    assert refusal.code == "duplicate"
    assert "already appoints RSA" in refusal.message
    assert "hubreturns revoke" in refusal.hint
    assert count(sessions, Appointment) == 1
    assert "appoints RSA" in cli("appoint", "--rsa", RSA_UNAPPOINTED, "--supplier", IS)
    assert cli.refused("appoint", "--rsa", RSA_UNAPPOINTED, "--supplier", IS).code == "duplicate"
    assert count(sessions, Appointment) == 2
    cli("revoke", "--rsa", RSA_UNAPPOINTED, "--supplier", IS)
    cli("appoint", "--rsa", RSA_UNAPPOINTED, "--supplier", IS)  # ended, so a new one is fine
    assert count(sessions, Appointment) == 3


@pytest.mark.parametrize(
    ("supplier", "code", "fragment"),
    [
        (GS_SUSPENDED, "suspended", "is suspended"),
        (STRANGER, "not_found", "is not a registered IS or GS user"),
        (ED, "not_found", "is not a registered IS or GS user"),
    ],
    ids=["suspended", "unknown", "not-a-supplier"],
)
def test_appointing_for_a_suspended_or_unknown_supplier_is_refused(
    cli: Cli, sessions: sessionmaker[Session], supplier: str, code: str, fragment: str
) -> None:
    refusal = cli.refused("appoint", "--rsa", RSA_UNAPPOINTED, "--supplier", supplier)
    assert refusal.code == code
    assert fragment in refusal.message
    assert count(sessions, Appointment) == 1


# -- device inventory loads -------------------------------------------------------------------


def inventory(world: DemoWorld, tmp_path: Path, *, drop: str = "", change: str = "") -> Path:
    """The demo's devices file without ``drop`` and with ``change`` made Commissioned."""
    lines = world.devices_csv.read_text().splitlines()
    kept = [line for line in lines if not drop or not line.startswith(drop)]
    if change:
        kept = [
            line.replace(",Pending,", ",Commissioned,") if line.startswith(change) else line
            for line in kept
        ]
    path = tmp_path / "devices.csv"
    path.write_text("\n".join(kept) + "\n")
    return path


def snapshot(sessions: sessionmaker[Session]) -> list[tuple[object, ...]]:
    with sessions() as session:
        return [
            (d.device_id, d.smi_status, d.withdrawn_at, d.updated_at)
            for d in session.scalars(select(Device).order_by(Device.device_id))
        ]


def test_dry_run_reports_and_writes_nothing(
    cli: Cli, world: DemoWorld, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    before = snapshot(sessions)
    path = inventory(world, tmp_path, drop=HUB_F2, change=HUB_A2)
    out = " ".join(cli("load", "devices", path, "--replace", "--dry-run").split())
    assert f"would load {len(HUBS) - 1} devices" in out
    assert f"0 added, 1 updated, 1 withdrawn, {len(HUBS) - 2} unchanged" in out
    assert "dry run: nothing was written" in out
    assert snapshot(sessions) == before


def test_replace_withdraws_what_the_file_leaves_out_and_keeps_history(
    traffic: Cli,
    world: DemoWorld,
    processor: Processor,
    tmp_path: Path,
    sessions: sessionmaker[Session],
) -> None:
    path = inventory(world, tmp_path, drop=HUB_A2)  # A2 has an accepted return
    out = " ".join(traffic("load", "devices", path, "--replace").split())
    assert f"0 added, 0 updated, 1 withdrawn, {len(HUBS) - 1} unchanged" in out
    with sessions() as session:
        hub = session.get(Device, HUB_A2)
        assert hub is not None
        assert hub.withdrawn_at is not None
    assert csv_rows(traffic("returns", "--device", HUB_A2, "--csv"))  # history stays
    assert HUB_A2 not in traffic("list", "devices", "--csv")
    shown = csv_rows(traffic("list", "devices", "--withdrawn", "--device", HUB_A2, "--csv"))
    assert shown[0]["withdrawn"]
    assert send(processor, world, scenario(GS, HUB_A2), 300) == "E19"  # not in the inventory

    again = " ".join(traffic("load", "devices", world.devices_csv).split())
    assert f"1 added, 0 updated, 0 withdrawn, {len(HUBS) - 1} unchanged" in again
    with sessions() as session:
        hub = session.get(Device, HUB_A2)
        assert hub is not None
        assert hub.withdrawn_at is None


def test_plain_load_is_an_upsert_that_withdraws_nothing(
    cli: Cli, world: DemoWorld, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    path = inventory(world, tmp_path, drop=HUB_F2, change=HUB_A2)
    out = " ".join(cli("load", "devices", path).split())
    assert f"0 added, 1 updated, 0 withdrawn, {len(HUBS) - 2} unchanged" in out
    with sessions() as session:
        assert session.get(Device, HUB_F2) is not None
        assert session.get(Device, HUB_F2).withdrawn_at is None  # type: ignore[union-attr]
        assert session.get(Device, HUB_A2).smi_status == "Commissioned"  # type: ignore[union-attr]


def test_an_empty_replacing_file_is_refused(
    cli: Cli, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    before = snapshot(sessions)
    empty = tmp_path / "empty.csv"
    empty.write_text("device_id,device_type,smi_status,responsible_suppliers,gpf_id\n")
    refusal = cli.refused("load", "devices", empty, "--replace")
    assert refusal.code == "empty_inventory"
    assert snapshot(sessions) == before


def test_the_help_says_which_load_is_which(cli: Cli) -> None:
    text = " ".join(cli("load", "devices", "--help").split())
    assert "Without --replace an upsert" in text
    assert "With --replace the file is the whole inventory" in text


def test_every_scenario_still_decides_as_expected_after_a_full_replace(
    cli: Cli, world: DemoWorld, processor: Processor
) -> None:
    cli("load", "devices", world.devices_csv, "--replace")
    for (sent, body), expected in zip(scenario_bodies(world), SCENARIOS, strict=True):
        assert processor.handle_duis(body, sent.endpoint).code == processor.codes.code(
            expected.expected
        ), sent.name
