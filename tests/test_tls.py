"""DUIS over TLS and mutual TLS (issue 24 §3), with real sockets and certificates
made here: a CA, the server's certificate, a client certificate from that CA and
one from another CA. No network beyond loopback.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest
import typer
from conftest import SERVE_ENV
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from test_testpack import _load_each_scenario, _write
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.codes import ResponseCode
from hubreturns.dcc.config import ConfigError, Settings, load_settings
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.service import create_app
from hubreturns.dcc.serving import free_port, running_server
from hubreturns.dcc.store.models import AuditEntry, ReturnRecord
from hubreturns.extensions import register_commands
from hubreturns.user.client import TlsSetupError, read_response, tls_context
from hubreturns.user.scenarios import SCENARIOS, DemoWorld, scenario_bodies

runner = CliRunner()
XML = {"content-type": "application/xml"}
IS = "90-B3-D5-1F-30-01-00-00"


class _Issuer:
    """A throw-away CA that issues TLS certificates (P-256, valid for a day)."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip

    def _builder(
        self, subject: x509.Name, public: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )

    def issue(self, folder: Path, stem: str, *, server: bool) -> tuple[Path, Path]:
        """A leaf certificate and key as PEM files: ``stem.cert.pem``, ``stem.key.pem``."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = folder / f"{stem}.cert.pem", folder / f"{stem}.key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    def write(self, folder: Path) -> Path:
        path = folder / "ca.cert.pem"
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("tls")
    ours, theirs = _Issuer("hubreturns test TLS CA"), _Issuer("some other CA")
    (folder / "other").mkdir()
    theirs.write(folder / "other")
    return Pki(
        ca=ours.write(folder),
        server=ours.issue(folder, "server", server=True),
        client=ours.issue(folder, "client", server=False),
        stranger=theirs.issue(folder / "other", "stranger", server=False),
    )


def _tls_settings(settings: Settings, pki: Pki, *, mutual: bool = True) -> Settings:
    return replace(
        settings,
        tls_cert=pki.server[0],
        tls_key=pki.server[1],
        tls_client_ca=pki.ca if mutual else None,
    )


@pytest.fixture
def https(processor: Processor, settings: Settings, pki: Pki) -> Iterator[str]:
    """The service over HTTPS requiring client certificates from ``pki.ca``."""
    with running_server(create_app(processor, _tls_settings(settings, pki))) as url:
        yield url


def _body(world: DemoWorld) -> bytes:
    scenario = next(s for s in SCENARIOS if s.expected is ResponseCode.I99)
    ((_, body),) = scenario_bodies(world, [scenario])
    return body


def _count(sessions: sessionmaker[Session], model: type[AuditEntry] | type[ReturnRecord]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _post(url: str, body: bytes, verify: ssl.SSLContext | bool) -> httpx.Response:
    with httpx.Client(base_url=url, verify=verify, timeout=10) as client:
        return client.post("/api/v1/serviceD", content=body, headers=XML)


# -- serving ---------------------------------------------------------------------------------


def test_a_client_with_a_certificate_from_the_ca_gets_i99_over_https(
    https: str, pki: Pki, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    assert https.startswith("https://")
    reply = _post(https, _body(world), tls_context(pki.ca, *pki.client))
    assert reply.status_code == 200
    assert read_response(reply.content, world.dcc_certificates()).code == ResponseCode.I99
    assert _count(seeded, ReturnRecord) == 1
    assert _count(seeded, AuditEntry) == 1


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_a_client_without_the_right_certificate_is_refused_in_the_handshake(
    https: str, pki: Pki, world: DemoWorld, seeded: sessionmaker[Session], who: str
) -> None:
    verify = tls_context(pki.ca, *pki.stranger) if who != "no certificate" else tls_context(pki.ca)
    with pytest.raises(httpx.TransportError):
        _post(https, _body(world), verify)
    assert _count(seeded, AuditEntry) == 0  # nothing reached the application
    assert _count(seeded, ReturnRecord) == 0


def test_plain_http_to_the_tls_port_gets_no_answer(
    https: str, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    with pytest.raises(httpx.TransportError):
        _post(https.replace("https://", "http://"), _body(world), True)
    assert _count(seeded, AuditEntry) == 0


def test_https_without_client_certificates_and_a_client_that_does_not_trust_the_server(
    processor: Processor, settings: Settings, pki: Pki, world: DemoWorld
) -> None:
    app_ = create_app(processor, _tls_settings(settings, pki, mutual=False))
    with running_server(app_) as url:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            _post(url, _body(world), tls_context())  # the system CAs do not know ours
        reply = _post(url, _body(world), tls_context(pki.ca))
    assert read_response(reply.content, world.dcc_certificates()).code == ResponseCode.I99


def test_the_desk_session_cookie_is_secure_under_tls(https: str, pki: Pki) -> None:
    with httpx.Client(base_url=https, verify=tls_context(pki.ca, *pki.client)) as client:
        page = client.get("/desk/login")
    assert page.status_code == 200
    cookie = page.headers["set-cookie"].lower()
    assert "secure" in cookie.split("; ")
    assert "httponly" in cookie.split("; ")


@pytest.mark.parametrize(
    ("trusted", "secure"),
    [(None, True), ("127.0.0.1", True), ("192.0.2.10", False)],
    ids=["default loopback", "the proxy's address", "another address"],
)
def test_behind_a_proxy_only_forwarded_allow_ips_peers_are_believed(
    processor: Processor,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    trusted: str | None,
    secure: bool,
) -> None:
    """docs/tls.md, behind a reverse proxy: plain HTTP from the proxy, whose
    ``X-Forwarded-Proto: https`` marks the desk cookie Secure only when the peer
    is in ``FORWARDED_ALLOW_IPS`` (uvicorn's; default loopback)."""
    if trusted is None:
        monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    else:
        monkeypatch.setenv("FORWARDED_ALLOW_IPS", trusted)
    assert not settings.tls
    with (
        running_server(create_app(processor, settings)) as url,
        httpx.Client(base_url=url, headers={"X-Forwarded-Proto": "https"}) as client,
    ):
        page = client.get("/desk/login")
    assert page.status_code == 200
    cookie = page.headers["set-cookie"].lower().split("; ")
    assert ("secure" in cookie) is secure
    assert "httponly" in cookie


def test_hubreturns_serve_with_the_tls_options_requires_client_certificates(
    database_url: str, seeded: sessionmaker[Session], world: DemoWorld, pki: Pki, tmp_path: Path
) -> None:
    """The CLI itself: ``serve --tls-cert --tls-key --tls-client-ca`` in a process of
    its own (the options reach the worker through the environment)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
    env |= SERVE_ENV | {"HUBRETURNS_DATABASE_URL": database_url}
    cert, key = pki.server
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("hubreturns")), "serve", "--port", str(port),
             "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(pki.ca)],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url, mutual = f"https://127.0.0.1:{port}", tls_context(pki.ca, *pki.client)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", verify=mutual, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with pytest.raises(httpx.TransportError):
            _post(url, _body(world), tls_context(pki.ca))  # no client certificate
        reply = _post(url, _body(world), mutual)
        assert read_response(reply.content, world.dcc_certificates()).code == ResponseCode.I99
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    assert f"serving on {url} (client certificates required)" in " ".join(log.read_text().split())
    assert (_count(seeded, AuditEntry), _count(seeded, ReturnRecord)) == (1, 1)


# -- clients -----------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    if not any(c.name == "submit" for c in app.registered_commands):
        register_commands(app)
    return app


def _tls_args(pki: Pki) -> list[str]:
    cert, key = pki.client
    return ["--ca", str(pki.ca), "--client-cert", str(cert), "--client-key", str(key)]


def test_submit_over_mutual_tls(
    https: str, pki: Pki, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    stem = IS.replace("-", "").lower()
    args = [
        "submit", "--key", str(world.pki / f"{stem}.key.pem"),
        "--cert", str(world.pki / f"{stem}.cert.pem"), "--url", https,
        "--state-dir", str(tmp_path), "--variant", "8.14.4",
        "--device", "00-DB-12-34-56-78-90-B2", "--return-type", "No Fault Return (general)",
    ]  # fmt: skip
    without = runner.invoke(_cli(), args)
    assert without.exit_code == 1, without.output  # the server is not trusted: no exchange
    assert "no response" in without.output
    assert "CERTIFICATE_VERIFY_FAILED" in without.output
    assert _count(seeded, ReturnRecord) == 0
    result = runner.invoke(_cli(), [*args, *_tls_args(pki)])
    assert result.exit_code == 0, result.output
    assert "I99" in result.output
    assert _count(seeded, ReturnRecord) == 1


def test_testpack_run_over_mutual_tls(
    https: str, pki: Pki, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    pack = tmp_path / "pack"
    _write(pack)
    _load_each_scenario(sessions, pack)
    result = runner.invoke(_cli(), ["testpack", "run", str(pack), "--url", https, *_tls_args(pki)])
    assert result.exit_code == 0, result.output
    assert "scenarios passed" in result.output
    assert _count(sessions, ReturnRecord) > 0


def test_client_tls_options_are_checked_with_a_hint(pki: Pki, tmp_path: Path) -> None:
    assert tls_context() is True
    with pytest.raises(TlsSetupError, match="--client-key needs --client-cert") as missing:
        tls_context(pki.ca, None, pki.client[1])
    assert missing.value.hint
    with pytest.raises(TlsSetupError, match="cannot load --ca"):
        tls_context(tmp_path / "absent.pem")
    with pytest.raises(TlsSetupError, match="cannot load --client-cert"):
        tls_context(pki.ca, pki.client[0], pki.stranger[1])  # not the certificate's key


def test_the_benchmark_load_generator_sends_over_mutual_tls(
    https: str, pki: Pki, world: DemoWorld, tmp_path: Path
) -> None:
    bodies = tmp_path / "bodies"
    body = _body(world)
    bodies.write_bytes(f"{len(body)}\n".encode() + body)  # benchmarks.loadgen.write_bodies
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    url = f"{https}/api/v1/serviceD"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", url, str(bodies), "--rate", "10",
         "--seconds", "0.1", "--connections", "1", *_tls_args(pki)],
        cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["codes"] == {"I99": 1}, result


# -- settings ----------------------------------------------------------------------------------


def test_half_configured_tls_is_refused_at_start_with_a_hint(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="tls_key is set but tls_cert is not"):
        load_settings(environ={"HUBRETURNS_TLS_KEY": str(pki.server[1])})
    with pytest.raises(ConfigError, match="tls_cert is set but tls_key is not"):
        Settings(tls_cert=pki.server[0])
    with pytest.raises(ConfigError, match="tls_client_ca needs TLS"):
        Settings(tls_client_ca=pki.ca)
    settings = load_settings(
        environ={
            "HUBRETURNS_TLS_CERT": str(pki.server[0]),
            "HUBRETURNS_TLS_KEY": str(pki.server[1]),
            "HUBRETURNS_TLS_CLIENT_CA": str(pki.ca),
        }
    )
    assert settings.tls
    assert settings.tls_client_ca == pki.ca


def test_serve_refuses_tls_files_that_do_not_load(pki: Pki, tmp_path: Path) -> None:
    from hubreturns.dcc.serving import uvicorn_options

    wrong_key = Settings(tls_cert=pki.server[0], tls_key=pki.client[1])
    with pytest.raises(ConfigError, match="its own private key"):
        uvicorn_options(wrong_key)
    no_ca = Settings(tls_cert=pki.server[0], tls_key=pki.server[1], tls_client_ca=tmp_path / "x")
    with pytest.raises(ConfigError, match="cannot load tls_client_ca"):
        uvicorn_options(no_ca)
    options = uvicorn_options(replace(no_ca, tls_client_ca=pki.ca))
    assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert options["ssl_ca_certs"] == str(pki.ca)
