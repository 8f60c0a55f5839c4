"""The operator's command line, end to end: commands run on a real database and the
database is checked afterwards.

Successful commands run in-process through ``typer.testing.CliRunner`` on
``hubreturns.cli.app``; refusals run the installed ``hubreturns`` script, because
the ``error: … / hint: …`` formatting and exit status 2 live in ``main()``.
Requests that show an appointment's effect go through the real ``Processor``.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.codes import DEFAULT_PROFILE, ResponseCode
from hubreturns.dcc.config import Settings
from hubreturns.dcc.rules import RULES
from hubreturns.dcc.service import build_service
from hubreturns.dcc.store.db import make_engine, make_sessionmaker
from hubreturns.dcc.store.models import (
    Appointment,
    AuditEntry,
    Certificate,
    Device,
    DeviceSupplier,
    ReturnRecord,
    User,
)
from hubreturns.dcc.store.repository import Repository
from hubreturns.extensions import register_commands
from hubreturns.user.scenarios import (
    ED,
    GS,
    HUBS,
    IS,
    RSA,
    SCENARIOS,
    USERS,
    DemoWorld,
    Scenario,
    scenario_bodies,
)

register_commands(app)

SCRIPT = Path(sys.executable).with_name("hubreturns")
HUB_PENDING, HUB_PENDING_2 = "00-DB-12-34-56-78-90-C2", "00-DB-12-34-56-78-90-A2"


# -- harness ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        """stdout + stderr with line wrapping undone (Rich wraps at the terminal width)."""
        return " ".join((self.stdout + " " + self.stderr).split())


@dataclass(frozen=True, slots=True)
class Cli:
    """Runs ``hubreturns`` against one database from a scratch working directory."""

    url: str
    cwd: Path

    def __call__(self, *args: str | Path) -> Run:
        """In-process (CliRunner); the command must succeed."""
        result = CliRunner().invoke(
            app,
            [str(a) for a in args],
            env={"HUBRETURNS_DATABASE_URL": self.url, "HUBRETURNS_CONFIG": None},
            catch_exceptions=True,
        )
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            result.exception,
            result.output,
        )
        assert result.exit_code == 0, result.output
        return Run(result.exit_code, result.stdout, result.stderr)

    def refused(self, *args: str | Path) -> Run:
        """In-process; the command must be refused with a message and a hint.

        ``main()`` prints such a refusal as ``error: …`` / ``hint: …`` with exit
        status 2 (checked through ``script``); here the text is rebuilt the same way.
        """
        result = CliRunner().invoke(
            app,
            [str(a) for a in args],
            env={"HUBRETURNS_DATABASE_URL": self.url, "HUBRETURNS_CONFIG": None},
            catch_exceptions=True,
        )
        hint = getattr(result.exception, "hint", None)
        assert isinstance(hint, str), (result.exception, result.output)
        assert hint
        return Run(2, result.stdout, f"error: {result.exception}\nhint: {hint}")

    def script(self, *args: str | Path) -> Run:
        """The installed console script (``main()``), for exit statuses and error output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
        env |= {"HUBRETURNS_DATABASE_URL": self.url, "COLUMNS": "250", "NO_COLOR": "1"}
        done = subprocess.run(
            [str(SCRIPT), *(str(a) for a in args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.cwd,
            timeout=120,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    @property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(make_engine(self.url))


def _cli(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # no stray ./hubreturns.toml
    cli = Cli(url, work)
    cli("init")
    yield cli


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """A migrated SQLite database driven through the CLI."""
    yield from _cli(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path, monkeypatch)


@pytest.fixture
def cli_both(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """The same on SQLite and on PostgreSQL (a fresh schema)."""
    yield from _cli(database_url, tmp_path, monkeypatch)


def counts(cli: Cli) -> dict[str, int]:
    sessions = cli.sessions
    try:
        with sessions() as session:
            return Repository(session).counts()
    finally:
        sessions.kw["bind"].dispose()


def rows(cli: Cli, model: type[object]) -> list[tuple[object, ...]]:
    """Every row of a table as a tuple of its column values (sorted), load times left out."""
    sessions = cli.sessions
    try:
        with sessions() as session:
            columns = [
                c.key
                for c in inspect(model).column_attrs
                if c.key not in ("loaded_at", "updated_at")
            ]
            return sorted(
                tuple(getattr(r, c) for c in columns) for r in session.scalars(select(model)).all()
            )
    finally:
        sessions.kw["bind"].dispose()


def load_world(cli: Cli, world: DemoWorld, *, appointments: bool = True) -> None:
    cli("load", "users", world.users_csv)
    cli("load", "certs", world.store_certificates)
    if appointments:
        cli("load", "appointments", world.appointments_csv)
    cli("load", "devices", world.devices_csv)


def send(cli: Cli, world: DemoWorld, scenario: Scenario, counter: int) -> str:
    """One signed request through the real request path; the response code."""
    processor = build_service(Settings(database_url=cli.url, allow_test_keys=True))
    try:
        ((_, body),) = scenario_bodies(world, [scenario], first_counter=counter)
        return processor.handle_duis(body, scenario.endpoint).code
    finally:
        processor.engine.dispose()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- init and loads --------------------------------------------------------------------


def test_init_creates_the_schema_and_is_idempotent(cli_both: Cli) -> None:
    first = rows_of_alembic(cli_both)
    run = cli_both("init")
    assert "database ready" in run.text
    assert rows_of_alembic(cli_both) == first
    assert counts(cli_both) == dict.fromkeys(
        ("users", "certificates", "appointments", "devices", "returns", "audit_log"), 0
    )


def rows_of_alembic(cli: Cli) -> list[str]:
    engine = make_engine(cli.url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            assert {"users", "devices", "returns", "audit_log", "replay_counters"} <= names
            return [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
    finally:
        engine.dispose()


def test_loads_fill_the_tables_and_reloading_only_updates(
    cli_both: Cli, world: DemoWorld, tmp_path: Path
) -> None:
    cli = cli_both
    load_world(cli, world)
    certs = list(world.store_certificates.glob("*.pem"))
    assert counts(cli) == {
        "users": len(USERS),
        "certificates": len(certs),
        "appointments": 1,
        "devices": len(HUBS),
        "returns": 0,
        "audit_log": 0,
    }
    before = {m: rows(cli, m) for m in (Appointment, Certificate, DeviceSupplier)}

    load_world(cli, world)  # the same files again: nothing new
    assert counts(cli)["users"] == len(USERS)
    assert {m: rows(cli, m) for m in before} == before

    renamed = world.users_csv.read_text().replace("Demo Import Supplier", "Renamed Supplier")
    cli("load", "users", write(tmp_path / "users.csv", renamed))
    devices = world.devices_csv.read_text().replace(
        f"{HUB_PENDING},CHF,Pending,{IS}", f"{HUB_PENDING},CHF,Commissioned,{IS};{GS}"
    )
    run = cli("load", "devices", write(tmp_path / "devices.csv", devices))
    assert f"loaded {len(HUBS)} devices" in run.text
    assert counts(cli)["users"] == len(USERS)
    assert counts(cli)["devices"] == len(HUBS)
    sessions = cli.sessions
    with sessions() as session:
        user = session.get(User, IS)
        assert user is not None
        assert user.name == "Renamed Supplier"
        hub = session.get(Device, HUB_PENDING)
        assert hub is not None
        assert hub.smi_status == "Commissioned"
        assert set(
            session.scalars(
                select(DeviceSupplier.supplier_user_id).where(
                    DeviceSupplier.device_id == HUB_PENDING
                )
            )
        ) == {IS, GS}
    sessions.kw["bind"].dispose()


def test_file_with_bad_rows_loads_nothing_and_lists_every_row(cli: Cli, tmp_path: Path) -> None:
    bad = write(
        tmp_path / "users.csv",
        "user_id,role,name,status\n"
        f"{IS},IS,Good Supplier,active\n"
        "00-DB-12-34-56-78-00-10,XX,Bad Role,active\n"
        f"{GS},GS,Good Gas,active\n"
        "00-DB-12-34-56,IS,Short EUI,active\n"
        "00-DB-12-34-56-78-00-11,GS,Bad Status,sleeping\n",
    )
    run = cli.script("load", "users", bad)
    assert run.code == 2
    assert "error:" in run.stderr
    assert "hint:" in run.stderr
    assert "line 3, role" in run.text
    assert "line 5, user_id" in run.text
    assert "line 6, status" in run.text
    assert "line 2" not in run.text
    assert "line 4" not in run.text
    assert "nothing was loaded" in run.text
    assert counts(cli)["users"] == 0


def test_bad_appointments_and_devices_load_nothing(
    cli: Cli, world: DemoWorld, tmp_path: Path
) -> None:
    cli("load", "users", world.users_csv)
    appointments = write(
        tmp_path / "appointments.csv",
        "rsa_user_id,supplier_user_id,valid_from,valid_to\n"
        f"{RSA},{IS},2025-04-01,\n"
        f"{IS},{RSA},2025-04-01,\n"
        f"{RSA},{GS},not-a-date,\n",
    )
    run = cli.refused("load", "appointments", appointments)
    assert run.code == 2
    assert "hint:" in run.stderr
    assert "line 3" in run.text
    assert "line 4" in run.text
    assert "line 2" not in run.text
    assert counts(cli)["appointments"] == 0


def test_devices_naming_unknown_suppliers_are_refused(
    cli: Cli, world: DemoWorld, tmp_path: Path
) -> None:
    cli("load", "users", world.users_csv)
    stranger = "00-DB-12-34-56-78-0A-0A"
    devices = write(
        tmp_path / "devices.csv",
        "device_id,device_type,smi_status,responsible_suppliers,gpf_id\n"
        f"{HUB_PENDING},CHF,Pending,{IS},\n"
        f"{HUB_PENDING_2},CHF,Pending,{stranger},\n"
        f"00-DB-12-34-56-78-90-B2,CHF,Pending,{ED},\n",
    )
    run = cli.refused("load", "devices", devices)
    assert run.code == 2
    assert "hint:" in run.stderr
    assert "line 3, responsible_suppliers" in run.text
    assert stranger in run.text
    assert "line 4, responsible_suppliers" in run.text
    assert counts(cli)["devices"] == 0


def test_certs_load_from_a_folder_and_from_a_file(cli: Cli, world: DemoWorld) -> None:
    files = sorted(world.store_certificates.glob("*.pem"))
    run = cli("load", "certs", files[0])
    assert "loaded 1 certificates" in run.text
    assert counts(cli)["certificates"] == 1
    run = cli("load", "certs", world.store_certificates)
    assert f"loaded {len(files) - 1} certificates (1 already held, unchanged)" in run.text
    assert counts(cli)["certificates"] == len(files)
    run = cli("load", "certs", world.store_certificates)
    assert f"loaded 0 certificates ({len(files)} already held, unchanged)" in run.text
    assert counts(cli)["certificates"] == len(files)


@pytest.mark.parametrize(
    "content",
    [
        b"just some notes\n",
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    ],
    ids=["no-pem", "broken-pem"],
)
def test_a_non_pem_file_is_refused_with_a_hint(
    cli: Cli, world: DemoWorld, tmp_path: Path, content: bytes
) -> None:
    notes = tmp_path / "notes.pem"
    notes.write_bytes(content)
    good = sorted(world.store_certificates.glob("*.pem"))[0]
    run = cli.script("load", "certs", good, notes)
    assert run.code == 2
    assert "error:" in run.stderr
    assert "notes.pem" in run.text
    assert "hint: Fix or remove the listed files" in run.text
    assert counts(cli)["certificates"] == 0  # the good file in the same call is not loaded


def test_missing_cert_path_is_refused(cli: Cli, tmp_path: Path) -> None:
    run = cli.refused("load", "certs", tmp_path / "nowhere")
    assert run.code == 2
    assert "does not exist" in run.text
    assert "hint:" in run.stderr


# -- appointments change the decision ---------------------------------------------------


def _rsa(device: str = HUB_PENDING) -> Scenario:
    return Scenario(name="RSA", sender=RSA, device=device, expected=ResponseCode.I99)


def test_appoint_then_revoke_changes_the_rsa_decision(cli: Cli, world: DemoWorld) -> None:
    load_world(cli, world, appointments=False)
    assert send(cli, world, _rsa(), 10) == "E4"

    start = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    run = cli("appoint", "--rsa", RSA.lower(), "--supplier", IS, "--from", start)
    assert "appoints RSA" in run.text
    assert send(cli, world, _rsa(), 11) == "I99"
    sessions = cli.sessions
    with sessions() as session:
        record = session.scalars(select(ReturnRecord)).one()
        assert (record.role, record.on_behalf_of, record.originator) == ("RSA", IS, RSA)
    sessions.kw["bind"].dispose()

    run = cli("revoke", "--rsa", RSA, "--supplier", IS)
    assert "revoked 1 appointment(s)" in run.text
    assert send(cli, world, _rsa(HUB_PENDING_2), 12) == "E4"
    assert counts(cli)["returns"] == 1

    again = cli.script("revoke", "--rsa", RSA, "--supplier", IS)
    assert again.code == 2
    assert "has no open appointment" in again.text
    assert "hint:" in again.stderr


def test_appointment_in_the_future_does_not_count_yet(cli: Cli, world: DemoWorld) -> None:
    load_world(cli, world, appointments=False)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    cli("appoint", "--rsa", RSA, "--supplier", IS, "--from", tomorrow)
    assert counts(cli)["appointments"] == 1
    assert send(cli, world, _rsa(), 20) == "E4"


@pytest.mark.parametrize(
    ("rsa", "supplier", "fragment"),
    [
        ("00-DB-12-34-56-78-0A-0A", IS, "is not a registered RSA user"),
        (IS, IS, "is not a registered RSA user"),
        (RSA, ED, "is not a registered IS or GS user"),
        (RSA, "00-DB-12-34-56-78-0A-0A", "is not a registered IS or GS user"),
        (RSA, "90-B3-D5", "--supplier"),
    ],
    ids=["unknown-rsa", "supplier-as-rsa", "ed-as-supplier", "unknown-supplier", "bad-eui"],
)
def test_appoint_refuses_unknown_or_wrong_role_users(
    cli: Cli, world: DemoWorld, rsa: str, supplier: str, fragment: str
) -> None:
    cli("load", "users", world.users_csv)
    run = cli.refused("appoint", "--rsa", rsa, "--supplier", supplier)
    assert run.code == 2
    assert fragment in run.text
    assert "hint:" in run.stderr
    assert counts(cli)["appointments"] == 0


def test_appoint_refuses_an_empty_validity_window(cli: Cli, world: DemoWorld) -> None:
    cli("load", "users", world.users_csv)
    run = cli.refused(
        "appoint", "--rsa", RSA, "--supplier", IS, "--from", "2026-01-02", "--to", "2026-01-01"
    )
    assert run.code == 2
    assert "--to must be after --from" in run.text
    assert counts(cli)["appointments"] == 0


# -- queries ----------------------------------------------------------------------------


@pytest.fixture
def traffic(cli: Cli, world: DemoWorld) -> Cli:
    """The demo world loaded and every demo scenario sent through the request path."""
    load_world(cli, world)
    processor = build_service(Settings(database_url=cli.url, allow_test_keys=True))
    try:
        for scenario, body in scenario_bodies(world):
            processor.handle_duis(body, scenario.endpoint)
    finally:
        processor.engine.dispose()
    return cli


def csv_rows(run: Run) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(run.stdout)))


def test_returns_csv_matches_the_database(traffic: Cli) -> None:
    listed = csv_rows(traffic("returns", "--csv"))
    sessions = traffic.sessions
    with sessions() as session:
        stored = session.scalars(select(ReturnRecord).order_by(ReturnRecord.id.desc())).all()
        assert [
            (int(r["id"]), r["request_id"], r["originator"], r["role"], r["on_behalf_of"])
            for r in listed
        ] == [(s.id, s.request_id, s.originator, s.role, s.on_behalf_of) for s in stored]
        assert [(r["device"], r["srv"], r["status"]) for r in listed] == [
            (s.device_id, s.service_reference_variant, s.status) for s in stored
        ]
    sessions.kw["bind"].dispose()
    assert len(listed) == sum(s.expected is ResponseCode.I99 for s in SCENARIOS)


def test_returns_filters(traffic: Cli) -> None:
    by_device = csv_rows(traffic("returns", "--device", HUB_PENDING.lower(), "--csv"))
    assert [(r["device"], r["originator"], r["role"]) for r in by_device] == [
        (HUB_PENDING, RSA, "RSA")
    ]
    by_originator = csv_rows(traffic("returns", "--originator", IS, "--csv"))
    assert {r["originator"] for r in by_originator} == {IS}
    assert len(by_originator) == 2
    by_role = csv_rows(traffic("returns", "--role", "rsa", "--csv"))
    assert [(r["originator"], r["on_behalf_of"]) for r in by_role] == [(RSA, IS)]
    for_is = csv_rows(traffic("returns", "--on-behalf-of", IS, "--csv"))
    assert len(for_is) == 3
    assert csv_rows(traffic("returns", "--role", "GS", "--device", HUB_PENDING, "--csv")) == []
    by_channel = csv_rows(traffic("returns", "--channel", "DUIS", "--csv"))
    assert len(by_channel) == len(csv_rows(traffic("returns", "--csv"))) > 0
    assert csv_rows(traffic("returns", "--channel", "servicedesk", "--csv")) == []
    for option, value in (("--channel", "post"), ("--role", "XX")):
        refused = traffic.refused("returns", option, value)
        assert refused.code == 2
        assert f"{option}: '{value}' is not one of" in refused.text
        assert "hint: Pick one of those." in refused.stderr
    limited = csv_rows(traffic("returns", "--limit", "1", "--csv"))
    assert len(limited) == 1
    table = traffic("returns", "--device", HUB_PENDING)
    assert "Recorded returns" in table.text


def test_log_lists_refusals_by_code(traffic: Cli) -> None:
    e5 = csv_rows(traffic("log", "--refused", "--code", "e5", "--csv"))
    sessions = traffic.sessions
    with sessions() as session:
        stored = session.scalars(select(AuditEntry).where(AuditEntry.code == "E5")).all()
        assert [(int(r["id"]), r["request_id"], r["code"], r["reason"]) for r in e5] == [
            (s.id, s.request_id, s.code, s.reason) for s in stored
        ]
        assert len(stored) == 1
    sessions.kw["bind"].dispose()
    refused = csv_rows(traffic("log", "--refused", "--csv", "--limit", "1000"))
    assert len(refused) == sum(s.expected is not ResponseCode.I99 for s in SCENARIOS)
    assert "I99" not in {r["code"] for r in refused}
    everything = csv_rows(traffic("log", "--csv", "--limit", "1000"))
    assert len(everything) == len(SCENARIOS)
    assert csv_rows(traffic("log", "--originator", RSA, "--csv")) != []


# -- reference tables --------------------------------------------------------------------


def _markdown_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_codes_markdown_lists_every_response_code(cli: Cli) -> None:
    table = _markdown_rows(cli("codes", "--markdown").stdout)
    assert [row[0] for row in table] == [code for code, _, _ in DEFAULT_PROFILE.rows()]
    assert all(len(row) == 6 and row[2] and row[5] for row in table)


def test_rules_markdown_lists_every_rule_in_order(cli: Cli) -> None:
    table = _markdown_rows(cli("rules", "--markdown").stdout.split("\n\n")[0])
    assert [(row[1], row[2]) for row in table] == [
        (DEFAULT_PROFILE.code(r.code), r.name) for r in RULES
    ]
    assert [row[0] for row in table] == [str(n) for n in range(1, len(RULES) + 1)]


def test_the_reference_pages_say_what_the_cli_says(cli: Cli) -> None:
    """docs/reference/ (generated by scripts/docs) and `codes`/`rules` agree row by row."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "reference"
    codes = _markdown_rows((docs / "response-codes.md").read_text(encoding="utf-8"))
    printed = _markdown_rows(cli("codes", "--markdown").stdout)
    assert [(r[0], r[2], r[4]) for r in codes[: len(printed)]] == [
        (r[0], r[2], r[4]) for r in printed
    ]
    page = (docs / "decision-table.md").read_text(encoding="utf-8").split("## ")[0]
    rules = cli("rules", "--markdown").stdout.split("\n\n")[0]
    assert _markdown_rows(page) == _markdown_rows(rules)


# -- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        (None, "cannot read config file"),
        ("database_url = [", "is not valid TOML"),
        ('colour = "blue"\n', "unknown setting(s)"),
        ("max_body_bytes = -1\n", "max_body_bytes must be positive"),
    ],
    ids=["missing", "bad-toml", "unknown-key", "bad-value"],
)
def test_bad_config_gives_error_and_hint(
    cli: Cli, tmp_path: Path, toml: str | None, fragment: str
) -> None:
    path = tmp_path / "hubreturns.toml"
    if toml is not None:
        path.write_text(toml, encoding="utf-8")
    run = cli.script("init", "--config", path)
    assert run.code == 2
    assert run.stderr.startswith("error:")
    assert fragment in run.text
    assert "hint:" in run.stderr
    assert "Traceback" not in run.stderr


def test_unmigrated_database_gives_error_and_hint(tmp_path: Path) -> None:
    cli = Cli(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    run = cli.script("returns")
    assert run.code == 2
    assert "error: database:" in run.text
    assert "hint: Run `hubreturns init`" in run.text
    assert "code: database_schema" in run.text


# -- the demo --------------------------------------------------------------------------------


def test_demo_passes_and_leaves_its_database(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run = cli("demo", "--out", out)
    passed = f"{len(SCENARIOS)}/{len(SCENARIOS)} passed"
    assert passed in run.text
    demo = Cli(f"sqlite:///{out / 'hubreturns-demo.db'}", tmp_path)
    tallies = counts(demo)
    assert tallies["returns"] == 4
    assert tallies["audit_log"] == 26
    assert {p.name for p in out.iterdir()} >= {
        "users.csv",
        "appointments.csv",
        "devices.csv",
        "pki",
        "hubreturns-demo.db",
    }


_STARTS = {
    "a command": ["--help"],
    "a server process": ["-c", "import hubreturns.dcc.service, hubreturns.dcc.logistics.api"],
}


@pytest.mark.parametrize("start", _STARTS.values(), ids=list(_STARTS))
def test_a_command_or_server_starts_without_importing_matplotlib(start: list[str]) -> None:
    """matplotlib takes about a second to import; only the HTML report's charts need
    it (``logistics.charts``, imported when they are drawn)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
    program = [str(SCRIPT)] if start[0] == "--help" else []
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *program, *start],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "hubreturns.dcc.logistics.render" in imported  # the report's module is loaded
    assert not {name for name in imported if name.split(".")[0] == "matplotlib"}
