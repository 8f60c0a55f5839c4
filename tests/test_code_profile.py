"""The code profile: defaults, `[response_codes]` overrides, `hubreturns codes`, and the
answers a service with an overridden profile and a foreign schemaVersion gives over HTTP."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from test_desk import PASSWORD as PW
from test_desk import cli as desk_cli
from test_desk import sign_in as desk_sign_in
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.codes import (
    DEFAULT_PROFILE,
    PUBLISHED_UNUSED,
    CodeProfile,
    Reason,
    ResponseCode,
    duis_response_codes,
)
from hubreturns.dcc.config import ConfigError, Settings, load_settings
from hubreturns.dcc.store.models import AuditEntry, ReturnRecord
from hubreturns.extensions import register_commands
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import IS, SCENARIOS, DemoWorld, scenario_bodies, scenario_request
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.request import build_request
from hubreturns.wire.signature import sign

XML = {"content-type": "application/xml"}
OVERRIDES = '[response_codes]\nreplay = "E50"\nmalformed = "E51"\n'


def test_default_profile_avoids_every_published_meaning() -> None:
    codes = list(DEFAULT_PROFILE.codes.values())
    assert set(DEFAULT_PROFILE.codes) == set(Reason)
    assert len(set(codes)) == len(codes)
    assert not set(codes) & (set(PUBLISHED_UNUSED) | set(ResponseCode))
    assert set(codes) <= duis_response_codes()
    assert {"E17", "E20", "E21", "E30", "E46", "E49", "E100", "E081401"} <= duis_response_codes()
    assert DEFAULT_PROFILE.code(Reason.REPLAY) == "E48"
    assert DEFAULT_PROFILE.code(Reason.WRONG_TARGET) == "E47"
    assert DEFAULT_PROFILE.code(Reason.MALFORMED) == "E46"
    assert DEFAULT_PROFILE.code(ResponseCode.E4) == "E4"
    assert DEFAULT_PROFILE.verdict("E48") is Reason.REPLAY
    assert DEFAULT_PROFILE.verdict("E21") is None


def test_the_changelog_gives_every_reason_its_default_code() -> None:
    """The before/after table Service Users upgrade by says what the profile does."""
    text = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text(encoding="utf-8")
    after = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\|[^|\n]*\(`(\w+)`\) \|[^|\n]*\| \**(E\d+)\**? \|$", text, re.M)
    }
    assert after == {reason.value: code for reason, code in DEFAULT_PROFILE.codes.items()}


def _load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "hubreturns.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, environ={})


def test_override_changes_only_the_named_reasons(tmp_path: Path) -> None:
    profile = _load(tmp_path, OVERRIDES).response_codes
    assert (profile.code(Reason.REPLAY), profile.code(Reason.MALFORMED)) == ("E50", "E51")
    others = set(Reason) - {Reason.REPLAY, Reason.MALFORMED}
    assert all(profile.code(r) == DEFAULT_PROFILE.code(r) for r in others)
    beside = _load(tmp_path, '[hubreturns]\nacb_eui = "90-B3-D5-1F-30-00-00-02"\n' + OVERRIDES)
    assert beside.response_codes == profile


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ('replays = "E50"', "unknown reason(s) ['replays']"),
        ('replay = "E999"', "not a code of the DUIS 5.4 sr:ResponseCode enumeration"),
        ('replay = "E21"', "published DUIS meaning (No response received from the device)"),
        ('wrong_target = "E20"', "published DUIS meaning (Unable to communicate"),
        ('malformed = "E30"', "published DUIS meaning (Time-out of a future-dated command)"),
        ('schema = "E17"', "published DUIS meaning"),
        ('replay = "E4"', "E4 is DUIS-defined (User not authorised for this device)"),
        ('replay = "I99"', "I99 is DUIS-defined"),
        ('replay = "I0"', "I0 is not an error code; a refusal needs an E code"),
        ('open_return = "W081401"', "W081401 is not an error code"),
        ('replay = "E010101"', "E010101 is a code of service request 1.1; only the common"),
        ('gpf_mismatch = "E080201"', "E080201 is a code of service request 8.2"),
        ('replay = "E40"', "E40 is given to both"),
        ('replay = "E50"\nmalformed = "E50"', "E50 is given to both"),
        ("replay = 48", "must be a response code string"),
    ],
)
def test_bad_overrides_are_refused_at_start(tmp_path: Path, table: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"[response_codes]\n{table}\n")
    assert fragment in str(caught.value)
    assert "[response_codes]" in str(caught.value)


def test_an_override_may_use_the_common_codes_and_8_14s_own(tmp_path: Path) -> None:
    profile = _load(tmp_path, '[response_codes]\nreplay = "E081401"\nschema = "E1000"\n')
    assert profile.response_codes.code(Reason.REPLAY) == "E081401"
    assert profile.response_codes.code(Reason.SCHEMA) == "E1000"


def test_serve_refuses_a_bad_override_before_serving(tmp_path: Path) -> None:
    """Through the CLI: ``serve`` stops with a hinted error (``main`` prints it) and
    makes no database."""
    database = tmp_path / "never.db"
    config = tmp_path / "hubreturns.toml"
    config.write_text(
        f'database_url = "sqlite:///{database}"\nallow_test_keys = true\n'
        '[response_codes]\nreplay = "E21"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        app, ["serve", "--config", str(config), "--port", "1"], env={"HUBRETURNS_CONFIG": None}
    )
    assert result.exit_code != 0, result.output
    error = result.exception
    assert isinstance(error, ConfigError), result.output
    assert "replay = 'E21': E21 has a published DUIS meaning (No response received" in str(error)
    assert error.hint
    assert not database.exists()


def test_response_codes_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a TOML table"):
        _load(tmp_path, 'response_codes = "E48"\n')


def test_profile_refuses_a_missing_reason() -> None:
    partial = {r: c for r, c in DEFAULT_PROFILE.codes.items() if r is not Reason.REPLAY}
    with pytest.raises(ValueError, match="no response code for \\['replay'\\]"):
        CodeProfile(partial)


# -- hubreturns codes ----------------------------------------------------------------------


def _codes(*args: str) -> str:
    result = CliRunner().invoke(
        app, ["codes", *args], env={"HUBRETURNS_CONFIG": None, "COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_codes_prints_the_profile_in_force_within_100_columns(tmp_path: Path) -> None:
    text = _codes()
    assert max(len(line) for line in text.splitlines()) <= 100
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert set(lines) >= {code for code, _, _ in DEFAULT_PROFILE.rows()}
    assert "replay" in lines["E48"]
    assert "configurable" in lines["E48"]
    assert "409" in lines["E48"]
    assert "DUIS" in lines["E4"]
    assert "configurable" not in lines["E4"]
    assert not {"E20", "E21", "E30"} & set(lines)
    assert "configurable: this project's choice pending DCC's DUGIDS; set in [response_codes]" in (
        " ".join(text.split())
    )
    (tmp_path / "hubreturns.toml").write_text(OVERRIDES, encoding="utf-8")
    overridden = _codes("--config", str(tmp_path / "hubreturns.toml"), "--markdown")
    rows = {line.split("|")[1].strip(): line for line in overridden.splitlines()[2:]}
    assert "replay" in rows["E50"]
    assert "E48" not in rows
    assert "malformed" in rows["E51"]
    assert "E46" not in rows


# -- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """The service under test runs with the overridden profile (conftest's ``processor``)
    and accepts one more schemaVersion than the default."""
    path = tmp_path / "overrides.toml"
    path.write_text(
        f'database_url = "{database_url}"\nschema_versions = ["5.4", "5.3"]\n'
        f"allow_test_keys = true\n{OVERRIDES}",
        encoding="utf-8",
    )
    return load_settings(path, environ={})


def _answer(reply: httpx.Response, world: DemoWorld) -> str:
    code = read_response(reply.content, world.dcc_certificates()).code
    assert reply.headers["x-duis-response-code"] == code
    return code


def _audit(seeded: sessionmaker[Session]) -> list[tuple[str, bool, int]]:
    with seeded() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        return [(r.code, r.accepted, r.http_status) for r in rows]


def test_an_override_is_the_code_in_the_signed_answer_and_the_audit_row(
    http: httpx.Client, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    scenario = next(s for s in SCENARIOS if s.name == "IS fault return, Pending hub")
    ((_, body),) = scenario_bodies(world, [scenario], first_counter=7000)
    assert _answer(http.post("/api/v1/serviceD", content=body, headers=XML), world) == "I99"
    replay = http.post("/api/v1/serviceD", content=body, headers=XML)
    assert (_answer(replay, world), replay.status_code) == ("E50", 409)
    garbage = http.post("/api/v1/serviceD", content=b"not xml", headers=XML)
    assert (_answer(garbage, world), garbage.status_code) == ("E51", 400)
    assert _audit(seeded) == [("I99", True, 200), ("E50", False, 409), ("E51", False, 400)]
    with seeded() as session:
        assert len(session.scalars(select(ReturnRecord)).all()) == 1


def _with_schema_version(world: DemoWorld, version: str, counter: int) -> bytes:
    """A correctly signed request carrying ``version`` (schema-valid: any decimal)."""
    scenario = next(s for s in SCENARIOS if s.name == "IS fault return, Pending hub")
    root = build_request(scenario_request(scenario, counter))
    root.set("schemaVersion", version)
    credential = world.credentials[IS]
    return sign(root, credential.key, SigningCertificate.from_x509(credential.certificate))


def test_foreign_schema_version_is_refused(
    http: httpx.Client, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    body = _with_schema_version(world, "9.9", 7100)
    reply = http.post("/api/v1/serviceD", content=body, headers=XML)
    assert (_answer(reply, world), reply.status_code) == ("E49", 400)
    assert _audit(seeded) == [("E49", False, 400)]
    with seeded() as session:
        (row,) = session.scalars(select(AuditEntry)).all()
        assert "schemaVersion '9.9' is not accepted; this service accepts 5.3, 5.4" in row.reason
        assert session.scalars(select(ReturnRecord)).all() == []


def test_a_configured_schema_version_is_accepted(
    http: httpx.Client, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    reply = http.post(
        "/api/v1/serviceD", content=_with_schema_version(world, "5.3", 7200), headers=XML
    )
    assert (_answer(reply, world), reply.status_code) == ("I99", 200)
    assert _audit(seeded) == [("I99", True, 200)]
    with seeded() as session:
        assert len(session.scalars(select(ReturnRecord)).all()) == 1


def test_schema_versions_default_and_configured(tmp_path: Path) -> None:
    assert Settings().policy().schema_versions == {"5.4"}
    from_env = load_settings(None, environ={"HUBRETURNS_SCHEMA_VERSIONS": "5.4, 5.3"})
    assert from_env.policy().schema_versions == {"5.4", "5.3"}
    assert _load(tmp_path, 'schema_versions = ["5.4"]\n').schema_versions == ("5.4",)


@pytest.mark.parametrize("value", ['"five"', "[]", '["5.4", "v6"]', "[5.4]", '""'])
def test_bad_schema_versions_are_refused_at_start(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="schema_versions must"):
        _load(tmp_path, f"schema_versions = {value}\n")


def test_the_client_explains_codes_by_the_services_profile(
    http: httpx.Client, world: DemoWorld, tmp_path: Path
) -> None:
    """``verify --codes`` reads the service's ``[response_codes]``: E50 is its replay."""
    scenario = next(s for s in SCENARIOS if s.name == "IS fault return, Pending hub")
    ((_, body),) = scenario_bodies(world, [scenario], first_counter=7300)
    http.post("/api/v1/serviceD", content=body, headers=XML)
    answer = tmp_path / "replay.response.xml"
    answer.write_bytes(http.post("/api/v1/serviceD", content=body, headers=XML).content)
    if not any(c.name == "verify" for c in app.registered_commands):
        register_commands(app)
    verify = ["verify", str(answer)]
    plain = CliRunner().invoke(app, verify, env={"HUBRETURNS_CONFIG": None})
    assert "response code E50: not in this service's code profile" in plain.output
    codes = ["--codes", str(tmp_path / "overrides.toml")]
    told = CliRunner().invoke(app, [*verify, *codes], env={"HUBRETURNS_CONFIG": None})
    assert told.exit_code == 0, told.output
    replay = DEFAULT_PROFILE.explain("E48")
    assert replay is not None
    assert f"response code E50: {replay.meaning}" in told.output
    missing = CliRunner().invoke(app, [*verify, "--codes", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2
    assert "--codes: cannot read" in missing.output


def test_the_desk_audit_filter_and_labels_follow_the_services_profile(
    http: httpx.Client, server: str, settings: Settings, world: DemoWorld
) -> None:
    """A desk on a service that answers replays with E50 offers and explains E50, not E48."""
    scenario = next(s for s in SCENARIOS if s.name == "IS fault return, Pending hub")
    ((_, body),) = scenario_bodies(world, [scenario], first_counter=7100)
    http.post("/api/v1/serviceD", content=body, headers=XML)
    assert http.post("/api/v1/serviceD", content=body, headers=XML).status_code == 409
    code, output, _ = desk_cli(settings, "desk", "add-user", "bob", "--password-stdin", stdin=PW)
    assert code == 0, output
    with httpx.Client(base_url=server, timeout=30) as client:
        assert desk_sign_in(client, "bob", PW).status_code == 303
        page = client.get("/desk/audit")
        assert page.status_code == 200
        offered = re.findall(
            r"<option(?: selected)?(?: title=\"[^\"]*\")?>(E\d+|I99)</option>", page.text
        )
        assert {"E50", "E51", "I99", "E19"} <= set(offered)
        assert not {"E48", "E46"} & set(offered)
        assert {"E20", "E21", "E30"} <= set(offered)  # codes recorded before the profile
        assert "E17" not in offered  # published, never answered by this service
        meaning = DEFAULT_PROFILE.explain("E48")
        assert meaning is not None
        assert f'title="{meaning.meaning}">E50</span>' in page.text
        replays = client.get("/desk/audit", params={"code": "E50"})
        assert replays.status_code == 200
        assert replays.text.count('<span class="code bad"') == 1
        assert client.get("/desk/audit", params={"code": "E48"}).status_code == 422
        exported = client.get("/desk/audit.csv", params={"code": "E50"})
        assert exported.status_code == 200
        assert [row.split(",")[9] for row in exported.text.splitlines()[1:]] == ["E50"]
        assert client.get("/desk/audit.csv", params={"code": "E48"}).status_code == 422


def test_the_report_explains_rejections_by_the_services_profile(
    http: httpx.Client, settings: Settings, world: DemoWorld, tmp_path: Path
) -> None:
    """``report`` on a service answering replays with E50 explains E50 as a replay."""
    scenario = next(s for s in SCENARIOS if s.name == "IS fault return, Pending hub")
    ((_, body),) = scenario_bodies(world, [scenario], first_counter=7200)
    http.post("/api/v1/serviceD", content=body, headers=XML)
    assert http.post("/api/v1/serviceD", content=body, headers=XML).status_code == 409
    config = tmp_path / "overrides.toml"  # the file the settings fixture wrote
    if not any(c.name == "report" for c in app.registered_commands):
        register_commands(app)
    today = datetime.now(UTC).date().isoformat()
    args = ["report", "--from", today, "--to", today, "--format", "csv", "--config", str(config)]
    result = CliRunner().invoke(app, args, env={"HUBRETURNS_CONFIG": None})
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    (rejected,) = [r for r in rows if r["section"] == "rejections_by_code"]
    replay = DEFAULT_PROFILE.explain("E48")
    assert replay is not None
    assert (rejected["key"], rejected["detail"], rejected["count"]) == ("E50", replay.meaning, "1")
