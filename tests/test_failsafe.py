"""Fail-safe configuration (issue 21 §7): the service refuses to start rather than
serve with public keys, per-process session keys or a guessable operator token, and
no secret (database password, operator token) appears in any output.

Refusals are checked through the real CLI app (CliRunner) and the installed
script (exit status, ``error:``/``hint:``/``code:`` lines); a started service over
HTTP (``/healthz``) and its log lines; the database is checked to be untouched.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from conftest import SERVE_ENV
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.dcc.config import (
    TEST_KEYS_WARNING,
    ConfigError,
    Settings,
    load_settings,
    redact_url,
)
from hubreturns.dcc.service import create_app
from hubreturns.dcc.serving import running_server
from hubreturns.dcc.store.db import make_engine
from hubreturns.pki import DemoCA, write_credential

SCRIPT = Path(sys.executable).with_name("hubreturns")
PASSWORD = "Pw-never-shown-7f3a9c"
TOKEN = "operator-token-never-shown-0123456789abcdef"


@dataclass(frozen=True, slots=True)
class Done:
    code: int
    out: str

    def __contains__(self, text: str) -> bool:
        return text in " ".join(self.out.split())


def script(*args: str, env: dict[str, str], cwd: Path) -> Done:
    """The installed ``hubreturns`` with only ``env`` as its HUBRETURNS_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
    done = subprocess.run(
        [str(SCRIPT), *args],
        env={**clean, "COLUMNS": "200", "NO_COLOR": "1", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Done(done.returncode, done.stdout + done.stderr)


def refusal(args: list[str], env: dict[str, str]) -> ConfigError:
    """The ConfigError the real app raises for ``args`` (CliRunner, in-process)."""
    # serve exports --workers for its workers; listed here, the runner restores it after.
    isolated = {"HUBRETURNS_CONFIG": None, "HUBRETURNS_WORKERS": None}
    result = CliRunner().invoke(app, args, env={**isolated, **env})
    assert isinstance(result.exception, ConfigError), (result.exception, result.output)
    return result.exception


def with_password(url: str) -> str:
    """``url`` with a password in it (PostgreSQL; the test server ignores it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return url
    return parsed.set(password=PASSWORD).render_as_string(hide_password=False)


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def dsp(tmp_path: Path) -> tuple[Path, Path]:
    """A DSP signing credential of the operator's own (not a packaged test key)."""
    credential = DemoCA.generate().issue_xml_signing("90-B3-D5-1F-30-00-00-02")
    return write_credential(credential, tmp_path / "dsp", "dsp")


# -- refusals at start --------------------------------------------------------------------


def test_serve_without_signing_key_refuses_and_touches_nothing(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    found = refusal(["serve"], {"HUBRETURNS_DATABASE_URL": database_url})
    assert found.code == "test_keys"
    assert "signing_key and signing_cert are not set" in found.message
    assert "HUBRETURNS_ALLOW_TEST_KEYS=1" in found.hint
    assert "HUBRETURNS_SIGNING_KEY" in found.hint
    assert tables(database_url) == set()  # refused before the database was migrated


def test_the_script_prints_code_message_and_hint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    done = script("serve", env={"HUBRETURNS_DATABASE_URL": url}, cwd=tmp_path)
    assert done.code == 2
    assert "error: signing_key and signing_cert are not set" in done
    assert "hint: Set signing_key and signing_cert" in done
    assert "code: test_keys" in done
    assert "Traceback" not in done.out
    assert not (tmp_path / "x.db").exists()


def test_a_packaged_test_certificate_set_by_path_is_still_test_keys(tmp_path: Path) -> None:
    from hubreturns.pki import packaged_pki

    stem = packaged_pki() / "dsp-xml-sign-90B3D51F30000002-ds"
    settings = Settings(signing_key=Path(f"{stem}.key.pem"), signing_cert=Path(f"{stem}.cert.pem"))
    assert settings.test_keys
    with pytest.raises(ConfigError, match="is a public DCC test certificate"):
        settings.signer()
    assert replace(settings, allow_test_keys=True).signer().certificate.eui is not None


def test_a_missing_signing_key_file_is_named(tmp_path: Path, dsp: tuple[Path, Path]) -> None:
    absent = tmp_path / "keys" / "absent.key.pem"
    env = {
        "HUBRETURNS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "HUBRETURNS_SIGNING_KEY": str(absent),
        "HUBRETURNS_SIGNING_CERT": str(dsp[1]),
    }
    done = script("serve", env=env, cwd=tmp_path)
    assert done.code == 2
    assert f"error: signing_key {absent} cannot be read" in done
    assert "code: signing_key" in done
    half = script("serve", env={**env, "HUBRETURNS_SIGNING_CERT": ""}, cwd=tmp_path)
    assert half.code == 2  # an empty path is no path
    only_key = {k: v for k, v in env.items() if k != "HUBRETURNS_SIGNING_CERT"}
    pair = script("serve", env=only_key, cwd=tmp_path)
    assert "signing_key is set but signing_cert is not" in pair
    assert "code: signing_pair" in pair


def test_several_workers_need_a_session_secret(database_url: str, tmp_path: Path) -> None:
    env = {"HUBRETURNS_DATABASE_URL": database_url, "HUBRETURNS_ALLOW_TEST_KEYS": "1"}
    found = refusal(["serve", "--workers", "3"], env)
    assert found.code == "session_secret"
    assert "3 workers need a session_secret" in found.message
    assert "secrets.token_urlsafe(32)" in found.hint
    assert tables(database_url) == set()
    # The setting refuses it as well, so a worker started some other way refuses too.
    with pytest.raises(ConfigError, match="need a session_secret"):
        load_settings(environ={"HUBRETURNS_WORKERS": "2"})
    assert load_settings(environ={"HUBRETURNS_WORKERS": "2", **SERVE_ENV}).workers == 2


@pytest.mark.parametrize("token", ["short", "x" * 31])
def test_a_short_operator_token_is_refused_and_never_shown(tmp_path: Path, token: str) -> None:
    secret = f"{token}"
    env = {
        "HUBRETURNS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "HUBRETURNS_OPERATOR_TOKEN": secret,
        **SERVE_ENV,
    }
    done = script("serve", env=env, cwd=tmp_path)
    assert done.code == 2
    assert f"operator_token is {len(secret)} characters long; at least 32" in done
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in done
    assert "code: operator_token" in done
    if len(secret) > 5:  # "short" is part of the message's own words
        assert secret not in done.out
    assert not (tmp_path / "x.db").exists()


def test_allow_test_keys_takes_only_true_or_false() -> None:
    assert load_settings(environ={"HUBRETURNS_ALLOW_TEST_KEYS": "1"}).allow_test_keys
    assert not load_settings(environ={"HUBRETURNS_ALLOW_TEST_KEYS": "0"}).allow_test_keys
    with pytest.raises(ConfigError, match="allow_test_keys must be true or false"):
        load_settings(environ={"HUBRETURNS_ALLOW_TEST_KEYS": "maybe"})


# -- /healthz and the start-up warning ------------------------------------------------------


def test_healthz_reports_test_keys(
    settings: Settings, seeded: object, dsp: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from hubreturns.dcc.service import build_service

    for chosen, expected in (
        (settings, True),
        (replace(settings, allow_test_keys=False, signing_key=dsp[0], signing_cert=dsp[1]), False),
    ):
        caplog.clear()
        with running_server(create_app(build_service(chosen), chosen)) as url:
            health = httpx.get(f"{url}/healthz", timeout=10).json()
        assert health["status"] == "ok"
        assert health["test_keys"] is expected
        warned = [r for r in caplog.records if r.getMessage() == TEST_KEYS_WARNING]
        assert [r.levelname for r in warned] == (["WARNING"] if expected else [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(
    database_url: str, tmp_path: Path, dsp: tuple[Path, Path], request: pytest.FixtureRequest
) -> Iterator[tuple[str, Path]]:
    """``hubreturns serve`` (test keys allowed, or the operator's own), its URL and log."""
    own_keys: bool = request.param
    port = free_port()
    env = {
        "HUBRETURNS_DATABASE_URL": with_password(database_url),
        "HUBRETURNS_OPERATOR_TOKEN": TOKEN,
        "HUBRETURNS_SESSION_SECRET": SERVE_ENV["HUBRETURNS_SESSION_SECRET"],
    }
    if own_keys:
        env |= {"HUBRETURNS_SIGNING_KEY": str(dsp[0]), "HUBRETURNS_SIGNING_CERT": str(dsp[1])}
    else:
        env["HUBRETURNS_ALLOW_TEST_KEYS"] = "1"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(SCRIPT), "serve", "--port", str(port), "--workers", "2"],
            env={**clean, "COLUMNS": "200", **env},
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert process.poll() is None, log.read_text()
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("served", [False, True], indirect=True, ids=["test-keys", "own-keys"])
def test_served_health_and_log_say_which_keys_and_show_no_secret(
    served: tuple[str, Path], database_url: str, request: pytest.FixtureRequest
) -> None:
    url, log = served
    own_keys = request.node.callspec.params["served"]
    health = httpx.get(f"{url}/healthz", timeout=10).json()
    assert health["test_keys"] is (not own_keys)
    time.sleep(0.5)  # the second worker's start-up lines
    text = log.read_text()
    warnings = [
        json.loads(line)
        for line in text.splitlines()
        if line.startswith("{") and "allow_test_keys" in line
    ]
    assert bool(warnings) is (not own_keys)
    assert all(w["level"] == "WARNING" for w in warnings)
    assert redact_url(with_password(database_url)) in text  # "serving on ..., <url>"
    assert PASSWORD not in text
    assert TOKEN not in text
    assert {"users", "returns"} <= tables(database_url)  # serve migrated it


# -- database URLs ---------------------------------------------------------------------------


def test_redact_url_hides_every_password() -> None:
    assert (
        redact_url("postgresql+psycopg://u:pw@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    )
    assert "pw" not in redact_url("postgresql+psycopg://u@h/db?password=pw&sslmode=require")
    assert "pw" not in redact_url("postgresql://u:pw@h:notaport/db")
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_settings_repr_shows_no_secret() -> None:
    """A repr reaches tracebacks and test reports: no password, token or session key in it."""
    settings = Settings(
        database_url=f"postgresql+psycopg://hub:{PASSWORD}@db:5432/hubreturns",
        operator_token=TOKEN,
        session_secret="session-secret-never-shown",
        allow_test_keys=True,
    )
    shown = repr(settings)
    for secret in (PASSWORD, TOKEN, "session-secret-never-shown"):
        assert secret not in shown
        assert secret not in str(settings)
    assert "database_url='postgresql+psycopg://hub:***@db:5432/hubreturns'" in shown
    assert "operator_token='***'" in shown
    assert "max_connections=512" in shown  # the other fields as they are
    assert "session_secret=None" in repr(Settings(allow_test_keys=True))


def test_init_prints_the_url_without_its_password(database_url: str, tmp_path: Path) -> None:
    done = script(
        "init", env={"HUBRETURNS_DATABASE_URL": with_password(database_url)}, cwd=tmp_path
    )
    assert done.code == 0, done.out
    assert f"database ready: {redact_url(with_password(database_url))}" in done
    assert PASSWORD not in done.out
    assert {"users", "devices", "returns"} <= tables(database_url)


def test_init_against_an_unreachable_server_says_where_it_looked(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://hub:{PASSWORD}@127.0.0.1:{port}/hubreturns"
    done = script("init", env={"HUBRETURNS_DATABASE_URL": url}, cwd=tmp_path)
    assert done.code == 2
    assert f"cannot connect to the database at 127.0.0.1 port {port}" in done
    assert f"postgresql+psycopg://hub:***@127.0.0.1:{port}/hubreturns" in done
    assert "Is the server running there" in done
    assert "code: database_unreachable" in done
    assert "hubreturns init" not in done.out
    assert PASSWORD not in done.out


def test_a_database_url_that_cannot_be_parsed_is_refused_without_its_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql+psycopg://hub:{PASSWORD}@db:notaport/hubreturns"
    done = script("init", env={"HUBRETURNS_DATABASE_URL": url}, cwd=tmp_path)
    assert done.code == 2
    assert "is not a database URL" in done
    assert "code: database_url" in done
    assert PASSWORD not in done.out
