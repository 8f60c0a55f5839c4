"""SMKI trust: what may enter the certificate repository, and how fast a revocation bites.

Loads and the ``certs`` commands run through the CLI (Typer's runner in-process,
the installed script where the exit status and error text matter) on SQLite and
PostgreSQL; the database is read back afterwards. Revocation is shown end to
end: a two-worker ``hubreturns serve`` answers I99, ``hubreturns certs revoke``
runs, and within a second the same signer gets E42 with an audit row.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import SERVE_ENV
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from hubreturns.cli import app
from hubreturns.codes import ResponseCode
from hubreturns.dcc.certificates import REVOCATION_WINDOW
from hubreturns.dcc.config import ConfigError, Settings, load_settings
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.service import build_service, create_app
from hubreturns.dcc.serving import free_port, running_server
from hubreturns.dcc.smki import TrustMode
from hubreturns.dcc.store.db import make_engine, make_sessionmaker
from hubreturns.dcc.store.models import AuditEntry, Certificate, CertificateRevocation
from hubreturns.dcc.store.repository import Ledger, Repository
from hubreturns.model import Endpoint
from hubreturns.pki import Credential, DemoCA, packaged_pki
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import IS, DemoWorld, Scenario, scenario_bodies
from hubreturns.wire.certificate import SigningCertificate

SCRIPT = Path(sys.executable).with_name("hubreturns")
USER = "00-DB-12-34-56-78-00-09"
HUB = "00-DB-12-34-56-78-90-A2"  # the demo's Pending hub of the IS


# -- harness ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stdout + stderr with Rich's line wrapping undone."""
        return " ".join((self.out + " " + self.err).split())


@dataclass(frozen=True, slots=True)
class Pki:
    """A CA of our own (its certificate in ``ca_file``) and a leaf it issued (in ``leaf_file``)."""

    folder: Path
    ca: DemoCA
    ca_file: Path
    leaf: Credential
    leaf_file: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = DemoCA.generate()
    ca_file = folder / "ca.cert.pem"
    ca_file.write_bytes(ca.credential.cert_pem)
    leaf = ca.issue_xml_signing(USER)
    (folder / "repo").mkdir()
    leaf_file = folder / "repo" / "user.cert.pem"
    leaf_file.write_bytes(leaf.cert_pem)
    return Pki(folder, ca, ca_file, leaf, leaf_file)


@dataclass(frozen=True, slots=True)
class Cli:
    url: str
    cwd: Path

    def _env(self, ca: Path | None) -> dict[str, str | None]:
        return {
            "HUBRETURNS_DATABASE_URL": self.url,
            "HUBRETURNS_CONFIG": None,
            "HUBRETURNS_SMKI_CA_CERTS": str(ca) if ca is not None else None,
        }

    def ok(self, *args: str | Path, ca: Path | None = None) -> Run:
        """In-process; the command must succeed."""
        result = CliRunner().invoke(app, [str(a) for a in args], env=self._env(ca))
        assert result.exit_code == 0, (result.exception, result.output)
        return Run(0, result.stdout, result.stderr)

    def script(self, *args: str | Path, ca: Path | None = None) -> Run:
        """The installed console script: exit status and ``error: / hint:`` output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
        env |= {k: v for k, v in self._env(ca).items() if v is not None}
        env |= {"COLUMNS": "250", "NO_COLOR": "1"}
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

    def certificates(self) -> dict[tuple[str, str], Certificate]:
        engine = make_engine(self.url)
        try:
            with make_sessionmaker(engine)() as session:
                return {(c.issuer, c.serial): c for c in session.scalars(select(Certificate))}
        finally:
            engine.dispose()


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # no stray ./hubreturns.toml
    cli = Cli(database_url, work)
    cli.ok("init")
    return cli


def _forged(pki: Pki) -> x509.Certificate:
    """A certificate from *another* CA of the same name, with the trusted leaf's serial."""
    impostor = DemoCA.generate()  # same default name, other key
    original = pki.leaf.certificate
    assert impostor.certificate.subject == pki.ca.certificate.subject
    other = impostor.issue_xml_signing(USER)
    return (
        x509.CertificateBuilder()
        .subject_name(original.subject)
        .issuer_name(original.issuer)
        .public_key(other.key.public_key())
        .serial_number(original.serial_number)
        .not_valid_before(original.not_valid_before_utc)
        .not_valid_after(original.not_valid_after_utc)
        .sign(impostor.key, hashes.SHA256())
    )


def _key(cert: x509.Certificate) -> tuple[str, str]:
    parsed = SigningCertificate.from_x509(cert)
    return (parsed.issuer, str(parsed.serial))


def _pem(cert: x509.Certificate) -> str:
    return SigningCertificate.from_x509(cert).pem.decode()


# -- what may enter the repository -----------------------------------------------------


def test_with_a_ca_a_look_alike_from_another_ca_is_refused_and_the_trusted_one_kept(
    cli: Cli, pki: Pki, tmp_path: Path
) -> None:
    assert "loaded 1 certificates" in cli.ok("load", "certs", pki.leaf_file, ca=pki.ca_file).text
    forged = tmp_path / "forged.pem"
    forged.write_bytes(SigningCertificate.from_x509(_forged(pki)).pem)
    run = cli.script("load", "certs", forged, ca=pki.ca_file)
    assert run.code == 2
    assert "forged.pem: does not chain to an SMKI CA" in run.text
    assert "hint:" in run.err
    stored = cli.certificates()
    assert list(stored) == [_key(pki.leaf.certificate)]
    assert stored[_key(pki.leaf.certificate)].pem == _pem(pki.leaf.certificate)


def test_without_a_ca_a_different_certificate_never_replaces_a_stored_one(
    cli: Cli, pki: Pki, tmp_path: Path
) -> None:
    cli.ok("load", "certs", pki.leaf_file)
    forged = tmp_path / "forged.pem"
    forged.write_bytes(SigningCertificate.from_x509(_forged(pki)).pem)
    run = cli.script("load", "certs", forged)
    assert run.code == 2
    assert "a different certificate is already stored for issuer CN=Z1-DEMO,OU=07" in run.text
    assert "no SMKI CA certificates configured" not in run.text  # refused before any warning
    assert cli.certificates()[_key(pki.leaf.certificate)].pem == _pem(pki.leaf.certificate)


def test_two_different_certificates_with_one_issuer_and_serial_in_one_load_are_refused(
    cli: Cli, pki: Pki
) -> None:
    (pki.folder / "repo" / "z-forged.pem").write_bytes(
        SigningCertificate.from_x509(_forged(pki)).pem
    )
    run = cli.script("load", "certs", pki.folder / "repo")
    assert run.code == 2
    assert "z-forged.pem: issuer CN=Z1-DEMO,OU=07 serial" in run.text
    assert "is also used by a different certificate in" in run.text
    assert cli.certificates() == {}


def test_an_identical_reload_is_a_no_op(cli: Cli, pki: Pki) -> None:
    cli.ok("load", "certs", pki.leaf_file, ca=pki.ca_file)
    first = cli.certificates()[_key(pki.leaf.certificate)].loaded_at
    run = cli.ok("load", "certs", pki.folder / "repo", ca=pki.ca_file)
    assert "loaded 0 certificates (1 already held, unchanged)" in run.text
    assert "unchanged" in run.text
    assert cli.certificates()[_key(pki.leaf.certificate)].loaded_at == first


def test_bad_files_in_a_folder_are_each_named_and_nothing_is_loaded(cli: Cli, pki: Pki) -> None:
    repo = pki.folder / "repo"
    (repo / "notes.txt").write_text("certificates for the demo\n")
    (repo / "user.key.pem").write_bytes(pki.leaf.key_pem)
    (repo / "broken.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    )
    (repo / "old").mkdir()
    (repo / ".hidden").write_text("editor swap file")  # hidden entries are not files to load
    run = cli.script("load", "certs", repo, ca=pki.ca_file)
    assert run.code == 2
    assert "certificate load refused (4 problems); nothing was loaded" in run.text
    assert "notes.txt: no PEM certificate in it" in run.text
    assert "user.key.pem: holds a private key" in run.text
    assert "broken.pem:" in run.text
    assert "old: is a folder" in run.text
    assert "hint: Fix or remove the listed files" in run.text
    assert "code: certificates" in run.text
    assert cli.certificates() == {}  # user.cert.pem, which is fine, was not loaded either


def test_dcc_test_certificates_do_not_chain_to_another_ca(cli: Cli, pki: Pki) -> None:
    """The shipped DCC test certificates load operator-vouched, never under a foreign CA."""
    shipped = packaged_pki() / "xml-sign-90B3D51F30010000-ds.cert.pem"
    run = cli.script("load", "certs", shipped, ca=pki.ca_file)
    assert run.code == 2
    assert "does not chain to an SMKI CA" in run.text
    assert cli.certificates() == {}
    vouched = cli.script("load", "certs", shipped)
    assert vouched.code == 0, vouched.text
    assert "SMKI trust: operator-vouched" in vouched.text
    assert "no SMKI CA certificates configured" in vouched.err  # the WARNING


def test_expired_and_not_yet_valid_certificates_are_loaded_and_reported(cli: Cli, pki: Pki) -> None:
    now = datetime.now(UTC)
    expired = pki.ca.issue_xml_signing(
        USER, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    future = pki.ca.issue_xml_signing(
        USER, not_before=now + timedelta(days=1), not_after=now + timedelta(days=30)
    )
    for name, cred in (("expired", expired), ("future", future)):
        (pki.folder / "repo" / f"{name}.pem").write_bytes(cred.cert_pem)
    run = cli.ok("load", "certs", pki.folder / "repo", ca=pki.ca_file)
    assert f"serial {expired.certificate.serial_number} expired on" in run.text
    assert f"serial {future.certificate.serial_number} is valid from" in run.text
    assert run.out.count("EXPIRED") == 2
    assert len(cli.certificates()) == 3


def test_the_ca_setting_must_name_ca_certificates(cli: Cli, pki: Pki, tmp_path: Path) -> None:
    run = cli.script("load", "certs", pki.leaf_file, ca=pki.leaf_file)
    assert run.code == 2
    assert "smki_ca_certs:" in run.text
    assert "is not a CA certificate" in run.text
    missing = cli.script("load", "certs", pki.leaf_file, ca=tmp_path / "nowhere.pem")
    assert missing.code == 2
    assert "nowhere.pem does not exist" in missing.text
    assert cli.certificates() == {}
    with pytest.raises(ConfigError, match="smki_ca_certs must be a file path"):
        load_settings(environ={"HUBRETURNS_SMKI_CA_CERTS": ""})


# -- list, revoke, remove, CRL ---------------------------------------------------------


def _revocations(cli: Cli) -> list[tuple[str, str, str]]:
    engine = make_engine(cli.url)
    try:
        with make_sessionmaker(engine)() as session:
            return [
                (r.issuer, r.serial, r.reason)
                for r in session.scalars(select(CertificateRevocation))
            ]
    finally:
        engine.dispose()


def test_certs_list_revoke_and_remove(cli: Cli, pki: Pki) -> None:
    cli.ok("load", "certs", pki.leaf_file, ca=pki.ca_file)
    issuer, serial = _key(pki.leaf.certificate)
    listed = cli.ok("certs", "list", "--csv").out.splitlines()
    assert listed[0] == "issuer,serial,eui,ou,valid_from,valid_to,revoked,reason"
    row = listed[1].split(",")
    # The issuer holds a comma: csv quotes it.
    assert listed[1].startswith(f'"{issuer}",{serial},{USER},87,')
    assert row[-2:] == ["", ""]

    run = cli.ok("certs", "revoke", issuer.replace(",", ", "), serial, "--reason", "key lost")
    assert f"revoked {issuer} serial {serial}" in run.text
    assert _revocations(cli) == [(issuer, serial, "key lost")]
    assert cli.ok("certs", "list", "--csv", "--eui", USER).out.splitlines()[1].endswith(",key lost")
    assert "was already revoked" in cli.ok("certs", "revoke", issuer, hex(int(serial))).text

    assert "removed" in cli.ok("certs", "remove", issuer, serial).text
    assert cli.certificates() == {}
    assert _revocations(cli) == [(issuer, serial, "key lost")]  # the revocation outlives it
    again = cli.script("certs", "remove", issuer, serial)
    assert again.code == 2
    assert "is stored" in again.text
    assert "hint: See `hubreturns certs list`" in again.text
    bad = cli.script("certs", "revoke", issuer, "12z")
    assert bad.code == 2
    assert "'12z' is not a serial number" in bad.text


def _crl(ca: DemoCA, serials: list[int], signer: DemoCA | None = None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - timedelta(hours=1))
        .next_update(now + timedelta(days=1))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(minutes=5))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    crl = builder.sign((signer or ca).key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def test_a_crl_is_checked_against_the_ca_and_revokes_loaded_and_later_certificates(
    cli: Cli, pki: Pki, tmp_path: Path
) -> None:
    cli.ok("load", "certs", pki.leaf_file, ca=pki.ca_file)
    later = pki.ca.issue_xml_signing(USER)
    serials = [pki.leaf.certificate.serial_number, later.certificate.serial_number]
    forged = tmp_path / "forged.crl"
    forged.write_bytes(_crl(pki.ca, serials, signer=DemoCA.generate()))
    run = cli.script("certs", "load-crl", forged, ca=pki.ca_file)
    assert run.code == 2
    assert "forged.crl: not signed by an SMKI CA" in run.text
    assert _revocations(cli) == []

    crl = tmp_path / "z1.crl"
    crl.write_bytes(_crl(pki.ca, serials))
    run = cli.ok("certs", "load-crl", crl, ca=pki.ca_file)
    assert "2 revocations recorded (2 in the CRL, 0 already recorded; 1 of stored" in run.text
    assert sorted(r[1] for r in _revocations(cli)) == sorted(str(s) for s in serials)
    assert {r[2] for r in _revocations(cli)} == {"CRL z1.crl: keyCompromise"}
    assert "0 revocations recorded" in cli.ok("certs", "load-crl", crl, ca=pki.ca_file).text

    # A certificate revoked before it was loaded loads (as the SMKI repository holds it),
    # reported as revoked, and is refused per request.
    late_file = pki.folder / "repo" / "later.pem"
    late_file.write_bytes(later.cert_pem)
    run = cli.ok("load", "certs", late_file, ca=pki.ca_file)
    assert "REVOKED" in run.out
    assert f"serial {later.certificate.serial_number} is revoked" in run.text


# -- the request path --------------------------------------------------------------------


def _reply_code(reply: httpx.Response, world: DemoWorld) -> str:
    return read_response(reply.content, world.dcc_certificates()).code


def _bodies(world: DemoWorld, count: int, first_counter: int) -> list[bytes]:
    scenarios = [
        Scenario(name=f"IS {n}", sender=IS, device=HUB, expected=ResponseCode.I99)
        for n in range(count)
    ]
    return [body for _s, body in scenario_bodies(world, scenarios, first_counter=first_counter)]


def _audit(sessions: sessionmaker[Session], code: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.code == code)))


def test_revoked_then_removed_certificate_is_refused_e42_then_e41(
    processor: Processor, seeded: sessionmaker[Session], world: DemoWorld
) -> None:
    first, second, third = _bodies(world, 3, 1)
    assert processor.handle_duis(first, Endpoint.NON_DEVICE).code == "I99"
    cert = SigningCertificate.from_x509(world.credentials[IS].certificate)
    now = datetime.now(UTC)
    with seeded.begin() as session:
        Repository(session).revoke_certificate(
            cert.issuer, cert.serial, revoked_at=now, reason="test", now=now
        )
    time.sleep(REVOCATION_WINDOW)
    outcome = processor.handle_duis(second, Endpoint.NON_DEVICE)
    assert (outcome.code, outcome.http_status) == ("E42", 401)
    assert "was revoked on" in outcome.reason
    with seeded.begin() as session:
        Repository(session).remove_certificate(cert.issuer, cert.serial)
    time.sleep(REVOCATION_WINDOW)
    assert processor.handle_duis(third, Endpoint.NON_DEVICE).code == "E41"
    assert [a.reason for a in _audit(seeded, "E42")] == [outcome.reason]
    assert len(_audit(seeded, "E41")) == 1


def test_healthz_reports_the_trust_mode_and_serve_start_warns_without_a_ca(
    processor: Processor,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="hubreturns.dcc.service"):
        with running_server(create_app(processor, settings)) as url:
            assert httpx.get(f"{url}/healthz").json() == {
                "status": "ok",
                "smki_trust": TrustMode.CA.value,
                "test_keys": True,
            }
        assert "no SMKI CA certificates configured" not in caplog.text
        vouched = replace(settings, smki_ca_certs=None)
        other = build_service(vouched)
        try:
            with running_server(create_app(other, vouched)) as url:
                assert httpx.get(f"{url}/healthz").json()["smki_trust"] == "operator-vouched"
        finally:
            other.close()
    assert "no SMKI CA certificates configured" in caplog.text


@pytest.fixture
def served(
    database_url: str, seeded: sessionmaker[Session], world: DemoWorld, tmp_path: Path
) -> Iterator[str]:
    """``hubreturns serve --workers 2`` on the seeded database, trusting the demo CA."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
    env["HUBRETURNS_DATABASE_URL"] = database_url
    env["HUBRETURNS_SMKI_CA_CERTS"] = str(world.smki_ca_certs)
    env |= SERVE_ENV
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(
        [str(SCRIPT), "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield url
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def _post(url: str, body: bytes) -> httpx.Response:
    """On a connection of its own, so the requests spread over both workers."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.post(
            f"/api/v1/{Endpoint.NON_DEVICE.value}",
            content=body,
            headers={"content-type": "application/xml"},
        )


def test_a_revocation_reaches_every_worker_within_a_second(
    served: str,
    database_url: str,
    seeded: sessionmaker[Session],
    world: DemoWorld,
    tmp_path: Path,
) -> None:
    bodies = iter(_bodies(world, 200, 1))
    assert _reply_code(_post(served, next(bodies)), world) == "I99"
    for _ in range(8):  # every worker now holds the certificate (E44: the hub is taken)
        assert _reply_code(_post(served, next(bodies)), world) == "E44"
    cert = SigningCertificate.from_x509(world.credentials[IS].certificate)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
    env["HUBRETURNS_DATABASE_URL"] = database_url
    done = subprocess.run(
        [str(SCRIPT), "certs", "revoke", cert.issuer, str(cert.serial)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    revoked = time.monotonic()  # the revocation has committed by now
    assert done.returncode == 0, done.stderr
    answers: list[tuple[float, str]] = []
    while time.monotonic() < revoked + 2.5:
        sent = time.monotonic() - revoked
        answers.append((sent, _reply_code(_post(served, next(bodies)), world)))
        time.sleep(0.05)
    late = [code for sent, code in answers if sent >= 1.0]
    assert len(late) >= 5
    assert set(late) == {"E42"}, answers
    first_e42 = min(sent for sent, code in answers if code == "E42")
    assert first_e42 < 1.0
    refused = _audit(seeded, "E42")
    assert len(refused) == sum(code == "E42" for _s, code in answers)
    assert all("was revoked on" in a.reason for a in refused)


def test_a_migrated_database_starts_at_change_number_zero(engine: Engine) -> None:
    with engine.connect() as connection:
        assert Ledger(connection).certificate_generation() == 0
