"""Settings: defaults < TOML file < HUBRETURNS_* environment, and helpful errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hubreturns.dcc.config import ConfigError, Settings, load_settings
from hubreturns.dcc.service import build_service
from hubreturns.pki import packaged_pki
from hubreturns.policy import REQUEST_POLICY

DSP = "dsp-xml-sign-90B3D51F30000002-ds"
DSP_KEY, DSP_CERT = packaged_pki() / f"{DSP}.key.pem", packaged_pki() / f"{DSP}.cert.pem"
TOKEN = "an-operator-token-of-forty-characters-xx"


@pytest.fixture(autouse=True)
def _no_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from an empty folder so a developer's ./hubreturns.toml is never read."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def toml(tmp_path: Path, text: str, name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.database_url == "sqlite:///hubreturns.db"
    assert settings.acb_eui == "90-B3-D5-1F-30-00-00-02"
    assert settings.max_body_bytes == 65536
    assert settings.signing_key is None
    assert settings.signing_cert is None
    assert settings.allow_test_keys is False
    assert settings.test_keys
    assert settings.workers == 1
    assert settings.session_secret is None
    assert settings.operator_token is None
    assert settings.tariff_file is None
    assert settings.policy().max_body_bytes == REQUEST_POLICY.max_body_bytes == 65536


def test_toml_file(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'database_url = "postgresql+psycopg://h@db/h"\n'
        'signing_key = "~/dsp.key.pem"\n'
        'signing_cert = "~/dsp.cert.pem"\n'
        'acb_eui = "90-b3-d5-1f-30-00-00-09"\n'
        "max_body_bytes = 1024\n",
    )
    settings = load_settings(path, environ={})
    assert settings.database_url == "postgresql+psycopg://h@db/h"
    assert settings.signing_key == Path("~/dsp.key.pem").expanduser()
    assert settings.acb_eui == "90-B3-D5-1F-30-00-00-09"
    assert settings.max_body_bytes == 1024
    assert settings.policy().max_body_bytes == 1024
    assert settings.signing_cert == Path("~/dsp.cert.pem").expanduser()


def test_toml_may_use_a_hubreturns_table(tmp_path: Path) -> None:
    path = toml(tmp_path, '[hubreturns]\ndatabase_url = "sqlite:///x.db"\n')
    assert load_settings(path, environ={}).database_url == "sqlite:///x.db"


def test_file_is_found_by_environment_and_in_the_working_folder(tmp_path: Path) -> None:
    path = toml(tmp_path, "max_body_bytes = 2048\n")
    assert load_settings(environ={"HUBRETURNS_CONFIG": str(path)}).max_body_bytes == 2048
    Path("hubreturns.toml").write_text("max_body_bytes = 4096\n", encoding="utf-8")
    assert load_settings(environ={}).max_body_bytes == 4096
    # an explicit file wins over both
    assert load_settings(path, environ={"HUBRETURNS_CONFIG": "nowhere.toml"}).max_body_bytes == 2048


def test_environment_overrides_toml(tmp_path: Path) -> None:
    path = toml(tmp_path, 'database_url = "sqlite:///file.db"\nmax_body_bytes = 1024\n')
    settings = load_settings(
        path,
        environ={
            "HUBRETURNS_DATABASE_URL": "sqlite:///env.db",
            "HUBRETURNS_MAX_BODY_BYTES": "2048",
            "HUBRETURNS_OPERATOR_TOKEN": TOKEN,
            "HUBRETURNS_TARIFF_FILE": "/etc/hubreturns/tariff.toml",
            "UNRELATED": "ignored",
        },
    )
    assert settings.database_url == "sqlite:///env.db"
    assert settings.max_body_bytes == 2048
    assert settings.operator_token == TOKEN
    assert settings.tariff_file == Path("/etc/hubreturns/tariff.toml")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('max_body_bytes = "lots"\n', ["max_body_bytes", "whole number", "'lots'"]),
        ("max_body_bytes = 0\n", ["max_body_bytes must be positive"]),
        ("max_body_bytes = -5\n", ["max_body_bytes must be positive"]),
        ("max_body_bytes = true\n", ["max_body_bytes", "whole number"]),
        ("max_body_bytes = 1.5\n", ["max_body_bytes", "whole number"]),
        ("commit_hold_ms = true\n", ["commit_hold_ms", "number of milliseconds"]),
        ("commit_hold_ms = 60\n", ["commit_hold_ms", "from 0 (never wait) to 50", "default is 3"]),
        ('acb_eui = "ACB"\n', ["acb_eui"]),
        ("database_url = 5\n", ["database_url", "string"]),
        (
            'colour = "blue"\ndatabse_url = "x"\n',
            ["unknown setting", "colour", "databse_url", "known:"],
        ),
        ("database_url = [\n", ["not valid TOML"]),
    ],
    ids=[
        "body-not-number",
        "body-zero",
        "body-negative",
        "body-bool",
        "body-fraction",
        "hold-bool",
        "hold-too-long",
        "acb",
        "url-not-string",
        "unknown-keys",
        "bad-toml",
    ],
)
def test_bad_file_values_give_a_helpful_error(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = toml(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("HUBRETURNS_MAX_BODY_BYTES", "64k", "max_body_bytes must be a whole number"),
        ("HUBRETURNS_ACB_EUI", "90-B3", "acb_eui"),
        ("HUBRETURNS_COMMIT_HOLD_MS", "soon", "commit_hold_ms must be a number of milliseconds"),
        ("HUBRETURNS_COMMIT_HOLD_MS", "500", "never wait.*to 50, got 500"),
        ("HUBRETURNS_COMMIT_HOLD_MS", "-1", "commit_hold_ms must be from 0"),
    ],
)
def test_bad_environment_values_give_a_helpful_error(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(environ={name: value})


def test_the_commit_hold_is_a_setting_that_reaches_the_committer(tmp_path: Path) -> None:
    assert load_settings(environ={}).commit_hold_ms == 3.0
    assert load_settings(environ={"HUBRETURNS_COMMIT_HOLD_MS": "0"}).commit_hold_ms == 0.0
    path = toml(tmp_path, "commit_hold_ms = 1.5\nallow_test_keys = true\n")
    settings = load_settings(path, environ={})
    assert settings.commit_hold_ms == 1.5
    processor = build_service(replace(settings, database_url=f"sqlite:///{tmp_path / 'hold.db'}"))
    try:
        assert processor.committer.hold == 0.0015
    finally:
        processor.close()


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml", environ={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(environ={"HUBRETURNS_CONFIG": str(tmp_path / "absent.toml")})


def test_signer_loads_the_packaged_dsp_key() -> None:
    signer = Settings(allow_test_keys=True).signer()
    assert signer.certificate.eui == "90-B3-D5-1F-30-00-00-02"
    assert "89" in signer.certificate.organisational_units
    assert signer.key.public_key().public_numbers() == (
        signer.certificate.public_key.public_numbers()  # type: ignore[union-attr]
    )


def test_signer_errors_name_the_settings(tmp_path: Path) -> None:
    absent = tmp_path / "absent.pem"
    missing = Settings(signing_key=absent, signing_cert=DSP_CERT, allow_test_keys=True)
    with pytest.raises(ConfigError, match=f"signing_key {absent} cannot be read") as found:
        missing.signer()
    assert "HUBRETURNS_SIGNING_KEY" in found.value.hint
    assert found.value.code == "signing_key"
    swapped = Settings(signing_key=DSP_CERT, signing_cert=DSP_CERT, allow_test_keys=True)
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        swapped.signer()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_path = tmp_path / "rsa.key.pem"
    rsa_path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not an EC private key"):
        Settings(signing_key=rsa_path, signing_cert=DSP_CERT, allow_test_keys=True).signer()


def test_signer_refuses_a_key_that_does_not_match_the_certificate() -> None:
    other = packaged_pki() / "xml-sign-90B3D51F30010000-ds.key.pem"
    with pytest.raises(ConfigError, match="does not belong to signing_cert"):
        Settings(signing_key=other, signing_cert=DSP_CERT, allow_test_keys=True).signer()


# -- the eligibility profile ------------------------------------------------------------------


def test_the_eligibility_profile_comes_from_its_own_table_then_the_environment(
    tmp_path: Path,
) -> None:
    assert load_settings(environ={}).eligibility().name == "secmp0039"
    path = toml(
        tmp_path, 'database_url = "sqlite:///x.db"\n\n[eligibility]\nprofile = "pre-secmp0039"\n'
    )
    assert load_settings(path, environ={}).eligibility().name == "pre-secmp0039"
    nested = toml(
        tmp_path,
        '[hubreturns]\nacb_eui = "90-B3-D5-1F-30-00-00-02"\n\n[eligibility]\n'
        'profile = "all-ordering-parties"\n',
        "nested.toml",
    )
    assert load_settings(nested, environ={}).eligibility_profile == "all-ordering-parties"
    env = {"HUBRETURNS_ELIGIBILITY_PROFILE": "all-ordering-parties"}
    assert load_settings(path, environ=env).eligibility().name == "all-ordering-parties"
    processor = build_service(
        load_settings(
            path,
            environ={
                "HUBRETURNS_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}",
                "HUBRETURNS_ALLOW_TEST_KEYS": "1",
            },
        )
    )
    try:
        assert processor.eligibility.name == "pre-secmp0039"
    finally:
        processor.engine.dispose()


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        ('[eligibility]\nprofile = "everyone"\n', {}, "unknown eligibility profile 'everyone'"),
        ("", {"HUBRETURNS_ELIGIBILITY_PROFILE": "RSA"}, "known: pre-secmp0039, secmp0039, all-"),
        ('[eligibility]\nroles = ["IS"]\n', {}, "takes one key, profile"),
        ("[eligibility]\nprofile = 3\n", {}, "eligibility_profile must be a string"),
    ],
    ids=["unknown in file", "unknown in env", "other key", "not a string"],
)
def test_a_bad_eligibility_profile_is_refused_at_start(
    tmp_path: Path, text: str, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(toml(tmp_path, text), environ=env)
