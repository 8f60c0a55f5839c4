"""Demo SMKI credentials: shaped like DCC's, readable by SigningCertificate, stored safely."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from hubreturns.pki import Credential, DemoCA, load_credential, write_credential
from hubreturns.wire.certificate import SigningCertificate

TEST_PKI = Path(__file__).resolve().parents[1] / "src" / "hubreturns" / "data" / "test-pki"


@pytest.fixture(scope="module")
def ca() -> DemoCA:
    return DemoCA.generate()


def test_ca_is_self_signed_p256_with_dcc_like_name(ca: DemoCA) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=Z1-DEMO,OU=07"
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(cert)


def test_ca_name_is_configurable() -> None:
    other = DemoCA.generate(common_name="ZZ", ou="08")
    assert other.certificate.subject.rfc4514_string() == "CN=ZZ,OU=08"


@pytest.mark.parametrize(
    "eui",
    [
        "00-DB-12-34-56-78-00-04",
        "90-B3-D5-1F-30-01-00-00",
        "ff-ff-ff-ff-ff-ff-ff-fe",
        "01-00-00-00-00-00-00-00",
        "00-00-00-00-00-00-00-00",
    ],
)
def test_issued_certificate_round_trips_through_signing_certificate(ca: DemoCA, eui: str) -> None:
    cred = ca.issue_xml_signing(eui)
    parsed = SigningCertificate.from_pem(cred.cert_pem)
    assert parsed.eui == eui.upper()
    assert parsed.organisational_units == frozenset({"87"})
    assert parsed.issuer == "CN=Z1-DEMO,OU=07"
    assert parsed.serial == cred.certificate.serial_number
    assert parsed.not_before == cred.certificate.not_valid_before_utc
    assert parsed.not_after == cred.certificate.not_valid_after_utc
    assert parsed.public_key == cred.key.public_key()
    cred.certificate.verify_directly_issued_by(ca.certificate)


def test_unique_identifier_is_encoded_exactly_as_dcc_does(ca: DemoCA) -> None:
    """Same subject DER as DCC's own test certificate for this EUI (BIT STRING 03 09 00 ...)."""
    dcc = x509.load_pem_x509_certificate(
        (TEST_PKI / "xml-sign-00DB123456780004-ds.cert.pem").read_bytes()
    )
    ours = ca.issue_xml_signing("00-DB-12-34-56-78-00-04").certificate
    assert ours.subject.public_bytes() == dcc.subject.public_bytes()
    assert bytes.fromhex("03090000DB123456780004") in ours.subject.public_bytes()


def test_default_validity_is_yesterday_to_ten_years(ca: DemoCA) -> None:
    before = datetime.now(UTC)
    cert = ca.issue_xml_signing("00-DB-12-34-56-78-00-04").certificate
    after = datetime.now(UTC)
    slack = timedelta(seconds=2)
    assert before - timedelta(days=1) - slack <= cert.not_valid_before_utc
    assert cert.not_valid_before_utc <= after - timedelta(days=1)
    ten_years = timedelta(days=3650)
    assert before + ten_years - slack <= cert.not_valid_after_utc <= after + ten_years + slack


def test_explicit_validity_naive_means_utc(ca: DemoCA) -> None:
    cred = ca.issue_xml_signing(
        "00-DB-12-34-56-78-00-04",
        not_before=datetime(2020, 1, 1),
        not_after=datetime(2021, 1, 1, 1, tzinfo=UTC) + timedelta(hours=1),
    )
    parsed = SigningCertificate.from_pem(cred.cert_pem)
    assert parsed.not_before == datetime(2020, 1, 1, tzinfo=UTC)
    assert parsed.not_after == datetime(2021, 1, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (datetime(2021, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC)),
        (datetime(2021, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC)),
    ],
)
def test_empty_validity_is_refused(ca: DemoCA, not_before: datetime, not_after: datetime) -> None:
    with pytest.raises(ValueError, match="not after"):
        ca.issue_xml_signing("00-DB-12-34-56-78-00-04", not_before=not_before, not_after=not_after)


def test_bad_eui_is_refused(ca: DemoCA) -> None:
    with pytest.raises(ValueError, match="EUI-64"):
        ca.issue_xml_signing("00DB123456780004")


def test_other_ou_and_key_usage(ca: DemoCA) -> None:
    cred = ca.issue_xml_signing("90-B3-D5-1F-30-00-00-02", ou="89")
    assert SigningCertificate.from_x509(cred.certificate).organisational_units == {"89"}
    usage = cred.certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not usage.value.key_agreement


def test_serials_are_random_and_distinct(ca: DemoCA) -> None:
    serials = {
        ca.issue_xml_signing("00-DB-12-34-56-78-00-04").certificate.serial_number for _ in range(5)
    }
    assert len(serials) == 5
    assert all(s > 2**64 for s in serials)


def test_given_key_is_certified(ca: DemoCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cred = ca.issue_xml_signing("00-DB-12-34-56-78-00-04", key=key)
    assert cred.key is key
    assert cred.certificate.public_key() == key.public_key()


def test_other_curve_and_mismatch(ca: DemoCA) -> None:
    cred = ca.issue_xml_signing("00-DB-12-34-56-78-00-04", curve=ec.SECP384R1())
    assert isinstance(cred.key.curve, ec.SECP384R1)
    with pytest.raises(ValueError, match="secp256r1"):
        ca.issue_xml_signing(
            "00-DB-12-34-56-78-00-04",
            key=ec.generate_private_key(ec.SECP256R1()),
            curve=ec.SECP384R1(),
        )


def test_signatures_verify_with_the_certificate_key(ca: DemoCA) -> None:
    cred = ca.issue_xml_signing("00-DB-12-34-56-78-00-04")
    public = SigningCertificate.from_pem(cred.cert_pem).public_key
    assert public is not None
    signature = cred.key.sign(b"payload", ec.ECDSA(hashes.SHA256()))
    public.verify(signature, b"payload", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(signature, b"other", ec.ECDSA(hashes.SHA256()))


def test_pem_fields_match_objects(ca: DemoCA) -> None:
    cred = ca.issue_xml_signing("00-DB-12-34-56-78-00-04")
    assert cred.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert cred.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert x509.load_pem_x509_certificate(cred.cert_pem) == cred.certificate
    loaded = serialization.load_pem_private_key(cred.key_pem, password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == cred.key.private_numbers()


def test_credential_refuses_foreign_key(ca: DemoCA) -> None:
    cred = ca.issue_xml_signing("00-DB-12-34-56-78-00-04")
    with pytest.raises(ValueError, match="does not belong"):
        Credential.of(ec.generate_private_key(ec.SECP256R1()), cred.certificate)


# --------------------------------------------------------------------- on disk


def test_write_and_load_round_trip(ca: DemoCA, tmp_path: Path) -> None:
    cred = ca.issue_xml_signing("90-B3-D5-1F-30-01-00-00")
    key_path, cert_path = write_credential(cred, tmp_path / "new" / "dir", "user")
    assert key_path == tmp_path / "new" / "dir" / "user.key.pem"
    assert cert_path == tmp_path / "new" / "dir" / "user.cert.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes() == cred.key_pem
    assert cert_path.read_bytes() == cred.cert_pem
    loaded = load_credential(key_path, cert_path)
    assert loaded.certificate == cred.certificate
    assert loaded.key.private_numbers() == cred.key.private_numbers()
    assert loaded.key_pem == cred.key_pem
    assert loaded.cert_pem == cred.cert_pem
    assert SigningCertificate.from_pem(cert_path.read_bytes()).eui == "90-B3-D5-1F-30-01-00-00"


def test_overwriting_a_world_readable_key_tightens_its_mode(ca: DemoCA, tmp_path: Path) -> None:
    key_path = tmp_path / "user.key.pem"
    key_path.write_bytes(b"old")
    key_path.chmod(0o644)
    write_credential(ca.issue_xml_signing("00-DB-12-34-56-78-00-04"), tmp_path, "user")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_ca_credential_can_be_written(ca: DemoCA, tmp_path: Path) -> None:
    key_path, cert_path = write_credential(ca.credential, str(tmp_path), "ca")
    assert load_credential(str(key_path), str(cert_path)).certificate == ca.certificate


def test_load_refuses_mismatched_key(ca: DemoCA, tmp_path: Path) -> None:
    one, two = (ca.issue_xml_signing("00-DB-12-34-56-78-00-04") for _ in range(2))
    key_one, _ = write_credential(one, tmp_path, "one")
    _, cert_two = write_credential(two, tmp_path, "two")
    with pytest.raises(ValueError, match="does not belong"):
        load_credential(key_one, cert_two)


def test_load_refuses_non_ec_key(ca: DemoCA, tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path = tmp_path / "rsa.key.pem"
    key_path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    _, cert_path = write_credential(ca.issue_xml_signing("00-DB-12-34-56-78-00-04"), tmp_path, "u")
    with pytest.raises(ValueError, match="not an elliptic-curve"):
        load_credential(key_path, cert_path)


@pytest.mark.parametrize(
    ("stem", "eui", "ou"),
    [
        ("xml-sign-00DB123456780004-ds", "00-DB-12-34-56-78-00-04", "87"),
        ("xml-sign-90B3D51F30010000-ds", "90-B3-D5-1F-30-01-00-00", "87"),
        ("dsp-xml-sign-90B3D51F30000002-ds", "90-B3-D5-1F-30-00-00-02", "89"),
    ],
)
def test_load_real_dcc_test_credentials(stem: str, eui: str, ou: str) -> None:
    cred = load_credential(TEST_PKI / f"{stem}.key.pem", TEST_PKI / f"{stem}.cert.pem")
    parsed = SigningCertificate.from_x509(cred.certificate)
    assert parsed.eui == eui
    assert ou in parsed.organisational_units
    assert cred.certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Z1"
