"""The conformance pack: written by the CLI, loaded into a fresh service database
scenario by scenario, run over real HTTP on SQLite and PostgreSQL; every scenario
passes, the database agrees, and a wrong expectation makes the run fail."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.codes import ResponseCode
from hubreturns.dcc.loading import load_appointments, load_certificates, load_devices, load_users
from hubreturns.dcc.store.models import AuditEntry, ReturnRecord, User
from hubreturns.extensions import register_commands
from hubreturns.model import ReturnKind
from hubreturns.user.scenarios import HUBS as DEMO_HUBS
from hubreturns.user.scenarios import SCENARIOS as DEMO_SCENARIOS
from hubreturns.user.scenarios import USERS as DEMO_USERS
from hubreturns.user.scenarios import DemoWorld
from hubreturns.user.testpack import pack_scenarios

runner = CliRunner()


def _app() -> typer.Typer:
    if not any(c.name == "submit" for c in app.registered_commands):
        register_commands(app)
    return app


def _write(folder: Path, *args: str) -> None:
    result = runner.invoke(_app(), ["testpack", *args, str(folder)])
    assert result.exit_code == 0, result.output
    assert "load" in result.output


def _load_each_scenario(sessions: sessionmaker[Session], pack: Path) -> None:
    """What the pack README asks for, using each scenario's own files."""
    now = datetime.now(UTC)
    for entry in json.loads((pack / "manifest.json").read_text())["scenarios"]:
        where = pack / entry["folder"]
        load_users(sessions, (where / "users.csv").read_bytes(), now)
        if any((where / "certs").iterdir()):
            load_certificates(sessions, [where / "certs"], now)
        load_appointments(sessions, (where / "appointments.csv").read_bytes())
        load_devices(sessions, (where / "devices.csv").read_bytes(), now)


def test_pack_covers_every_outcome_for_each_role_and_variant() -> None:
    scenarios = pack_scenarios()
    cells = {(s.role, s.kind, s.expected_code) for s in scenarios}
    for role in ("IS", "GS", "RSA"):
        for kind in ReturnKind:
            for code in ("I99", "E3", "E4", "E11", "E12", "E13", "E19", "E47", "E48", "E44"):
                if (role, code) == ("RSA", "I99") or code != "I99" or role != "RSA":
                    assert (role, kind, code) in cells, (role, kind.variant, code)
            for code in ("E46", "E31", "E40", "E41", "E42", "E43"):
                assert (role, kind, code) in cells
        assert (role, ReturnKind.FAULT, "E45") in cells
    for kind in ReturnKind:
        assert ("RSA", kind, "E5") in cells
        assert ("ED", kind, "E2") in cells
        assert ("unregistered", kind, "E1") in cells
    assert {s.expected for s in DEMO_SCENARIOS} <= {s.expected for s in scenarios}


def test_pack_runs_against_the_service_and_all_pass(
    tmp_path: Path, server: str, sessions: sessionmaker[Session]
) -> None:
    pack = tmp_path / "pack"
    _write(pack)  # the default subcommand: `hubreturns testpack OUT/`
    readme = (pack / "README.md").read_text()
    assert "Load the data FIRST" in readme
    _load_each_scenario(sessions, pack)

    result = runner.invoke(_app(), ["testpack", "run", str(pack), "--url", server])

    total = len(pack_scenarios())
    assert result.exit_code == 0, result.output
    assert f"{total}/{total} scenarios passed" in result.output
    assert result.output.count("pass ") == total
    expected = [
        json.loads((pack / e["folder"] / "expected.json").read_text())
        for e in json.loads((pack / "manifest.json").read_text())["scenarios"]
    ]
    with sessions() as session:
        records = session.scalars(select(ReturnRecord)).all()
        audit = session.scalars(select(AuditEntry)).all()
        accepted = {e["request_id"] for e in expected if e["expected_code"] == "I99"}
        assert {r.request_id for r in records} == accepted
        assert Counter(a.code for a in audit) == Counter(e["expected_code"] for e in expected)


def test_a_wrong_expectation_or_an_unlisted_scenario_fails_the_run(
    tmp_path: Path, server: str, sessions: sessionmaker[Session]
) -> None:
    pack = tmp_path / "pack"
    _write(pack, "write")
    now = datetime.now(UTC)  # this time all at once, from load/
    load_users(sessions, (pack / "load" / "users.csv").read_bytes(), now)
    load_certificates(sessions, [pack / "load" / "certs"], now)
    load_appointments(sessions, (pack / "load" / "appointments.csv").read_bytes())
    load_devices(sessions, (pack / "load" / "devices.csv").read_bytes(), now)
    target = next((pack / "scenarios").glob("*-rsa-8.14.3-installed-hub"))
    expected = json.loads((target / "expected.json").read_text())
    assert expected["expected_code"] == "E5"
    expected["expected_code"] = "I99"
    (target / "expected.json").write_text(json.dumps(expected))
    (pack / "scenarios" / "999-stray").mkdir()

    result = runner.invoke(_app(), ["testpack", "run", str(pack), "--url", server])

    assert result.exit_code == 1, result.output
    fails = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2, fails
    assert f"FAIL {target.name}: expected I99, got E5" in fails[0]
    assert "999-stray" in fails[1]
    assert "not listed in manifest.json" in fails[1]
    total = len(pack_scenarios())
    assert f"{total - 1}/{total + 1} scenarios passed" in result.output


def test_writing_into_a_non_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    result = runner.invoke(_app(), ["testpack", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not empty" in result.output
    assert (tmp_path / "keep.txt").exists()


def test_every_pack_has_its_own_hubs_and_higher_counters(tmp_path: Path) -> None:
    _write(tmp_path / "a")
    _write(tmp_path / "b")
    first = json.loads((tmp_path / "a" / "manifest.json").read_text())
    second = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert first["pack"] != second["pack"]
    assert second["counter_base"] >= first["counter_base"]
    devices_a = (tmp_path / "a" / "load" / "devices.csv").read_text().splitlines()[1:]
    devices_b = (tmp_path / "b" / "load" / "devices.csv").read_text().splitlines()[1:]
    assert not {r.split(",")[0] for r in devices_a} & {r.split(",")[0] for r in devices_b}


def test_run_refuses_a_folder_that_is_not_a_pack(tmp_path: Path) -> None:
    result = runner.invoke(
        _app(), ["testpack", "run", str(tmp_path), "--url", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 2
    assert "manifest.json" in result.output


@pytest.mark.parametrize("args", [["testpack", "--help"], ["testpack", "run", "--help"]])
def test_help(args: list[str]) -> None:
    assert runner.invoke(_app(), args).exit_code == 0


def _config(tmp_path: Path, database_url: str, world: DemoWorld, pack: Path) -> Path:
    """The service's configuration: its database, and SMKI CAs the demo's and the pack's."""
    cas = tmp_path / "smki-cas"
    cas.mkdir()
    (cas / "demo.pem").write_bytes(world.smki_ca_certs.read_bytes())
    (cas / "pack.pem").write_bytes((pack / "pack-ca.cert.pem").read_bytes())
    config = tmp_path / "hubreturns.toml"
    config.write_text(
        f"database_url = {json.dumps(database_url)}\nsmki_ca_certs = {json.dumps(str(cas))}\n"
    )
    return config


def test_the_pack_loads_beside_the_demo_and_runs_again_and_again(
    tmp_path: Path,
    server: str,
    seeded: sessionmaker[Session],
    database_url: str,
    world: DemoWorld,
) -> None:
    pack = tmp_path / "pack"
    _write(pack)
    config = _config(tmp_path, database_url, world, pack)
    demo_ids = {u[0] for u in DEMO_USERS} | {h[0] for h in DEMO_HUBS} | {h[4] for h in DEMO_HUBS}
    with seeded() as session:
        demo_before = sorted((u.user_id, u.name, u.status) for u in session.scalars(select(User)))
    total = len(pack_scenarios())
    accepted = sum(s.expected is ResponseCode.I99 for s in pack_scenarios())
    runs: list[dict[str, str]] = []
    for n in (1, 2, 3):
        result = runner.invoke(
            _app(),
            ["testpack", "run", str(pack), "--url", server, "--load", "--config", str(config)],
        )
        assert result.exit_code == 0, result.output
        assert f"{total}/{total} scenarios passed" in result.output
        assert ("renewed as run" in result.output) == (n > 1)
        manifest = json.loads((pack / "manifest.json").read_text())
        assert manifest["run"] == n
        runs.append(manifest)
        pack_ids = {
            line.split(",")[0]
            for name in ("users.csv", "devices.csv")
            for line in (pack / "load" / name).read_text().splitlines()[1:]
        }
        assert not pack_ids & demo_ids  # its own User IDs and hubs, never the demo's
        assert not any(i.startswith("90-B3-D5") for i in pack_ids)  # nor DCC's test registry's
    assert len({r["hubs"] for r in runs}) == 3  # fresh hubs each run
    assert (
        runs[0]["last_counter"]
        < runs[1]["counter_base"]
        <= runs[1]["last_counter"]
        < runs[2]["counter_base"]
    )
    with seeded() as session:
        users = session.scalars(select(User)).all()
        demo_after = sorted((u.user_id, u.name, u.status) for u in users if u.user_id in demo_ids)
        assert demo_after == demo_before  # the demo's data is untouched
        assert len(session.scalars(select(ReturnRecord)).all()) == 3 * accepted
        audit = Counter(a.code for a in session.scalars(select(AuditEntry)))
        expected = Counter(s.expected_code for s in pack_scenarios())
        assert audit == Counter({code: 3 * n for code, n in expected.items()})


def test_a_sent_run_is_not_sent_again_until_renewed(
    tmp_path: Path, server: str, sessions: sessionmaker[Session]
) -> None:
    pack = tmp_path / "pack"
    _write(pack)
    _load_each_scenario(sessions, pack)
    first = runner.invoke(_app(), ["testpack", "run", str(pack), "--url", server])
    assert first.exit_code == 0, first.output
    before = json.loads((pack / "manifest.json").read_text())

    again = runner.invoke(_app(), ["testpack", "run", str(pack), "--url", server])
    assert again.exit_code == 2
    assert "run 1 of" in again.output
    assert "was already sent" in again.output
    assert "testpack renew" in again.output
    with sessions() as session:
        assert len(session.scalars(select(AuditEntry)).all()) == len(pack_scenarios())

    renewed = runner.invoke(_app(), ["testpack", "renew", str(pack)])
    assert renewed.exit_code == 0, renewed.output
    after = json.loads((pack / "manifest.json").read_text())
    assert after["run"] == 2
    assert after["pack"] == before["pack"]  # same users and credentials
    assert after["hubs"] != before["hubs"]
    assert after["counter_base"] > before["last_counter"]
    _load_each_scenario(sessions, pack)  # the renewed run's hubs; the users are already there
    total = len(pack_scenarios())
    second = runner.invoke(_app(), ["testpack", "run", str(pack), "--url", server])
    assert second.exit_code == 0, second.output
    assert f"{total}/{total} scenarios passed" in second.output
