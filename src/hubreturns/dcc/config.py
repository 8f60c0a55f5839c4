"""Settings from a TOML file and ``HUBRETURNS_*`` environment variables.

Precedence: built-in defaults < TOML file < environment. The TOML file is
``--config PATH``, else ``$HUBRETURNS_CONFIG``, else ``./hubreturns.toml`` when
it exists. Keys (TOML / environment):

=====================  ===============================  ==========================
``database_url``       ``HUBRETURNS_DATABASE_URL``      ``sqlite:///hubreturns.db``
``signing_key``        ``HUBRETURNS_SIGNING_KEY``       none: required to serve
``signing_cert``       ``HUBRETURNS_SIGNING_CERT``      none: required to serve
``allow_test_keys``    ``HUBRETURNS_ALLOW_TEST_KEYS``   ``false`` (env: ``1``/``0``)
``acb_eui``            ``HUBRETURNS_ACB_EUI``           ``90-B3-D5-1F-30-00-00-02``
``max_body_bytes``     ``HUBRETURNS_MAX_BODY_BYTES``    ``65536``
``session_secret``     ``HUBRETURNS_SESSION_SECRET``    random per process (1 worker)
``operator_token``     ``HUBRETURNS_OPERATOR_TOKEN``    none (desk sessions only)
``workers``            ``HUBRETURNS_WORKERS``           ``1`` (``serve --workers``)
``tariff_file``        ``HUBRETURNS_TARIFF_FILE``       DCC returns charges (DP238)
``header_timeout_s``   ``HUBRETURNS_HEADER_TIMEOUT_S``  ``10`` (a request head)
``idle_timeout_s``     ``HUBRETURNS_IDLE_TIMEOUT_S``    ``10`` (a silent connection)
``max_connections``    ``HUBRETURNS_MAX_CONNECTIONS``   ``512`` per worker
``tls_cert``           ``HUBRETURNS_TLS_CERT``          none (plain HTTP)
``tls_key``            ``HUBRETURNS_TLS_KEY``           none
``tls_client_ca``      ``HUBRETURNS_TLS_CLIENT_CA``     none (no client certificate)
``smki_ca_certs``      ``HUBRETURNS_SMKI_CA_CERTS``     none (operator-vouched)
``schema_versions``    ``HUBRETURNS_SCHEMA_VERSIONS``   ``["5.4"]`` (env: ``5.4,5.3``)
``[response_codes]``   (TOML only)                      ``codes.DEFAULT_CODES``
=====================  ===============================  ==========================

The connection limits and TLS are described in docs/configuration.md and docs/tls.md.

Fail-safe (issue 21 §7, docs/operations.md): without ``signing_key`` and
``signing_cert`` the service refuses to start, unless ``allow_test_keys`` lets it
sign with the public DCC *test* key shipped in the package (a WARNING says so,
``/healthz`` reports ``"test_keys": true``); more than one worker needs a
``session_secret``; an ``operator_token`` must have at least 32 characters.

``[response_codes]`` maps refusal reasons to response codes (``replay = "E48"``),
over the defaults; an unknown reason, a code outside the DUIS 5.4 enumeration, a
DUIS-defined or published-meaning code, or a code given twice is refused at start
(docs/response-codes.md).

The role to 8.14.3/8.14.4 matrix is its own table, as DCC Data Management
holds it apart from the service's settings: ``[eligibility] profile = "…"``
(``HUBRETURNS_ELIGIBILITY_PROFILE``; default ``secmp0039``; the names are
``rules.PROFILES``; docs/eligibility.md).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from hubreturns.codes import DEFAULT_PROFILE, CodeProfile
from hubreturns.dcc.rules import DEFAULT_PROFILE as DEFAULT_ELIGIBILITY
from hubreturns.dcc.rules import EligibilityProfile, eligibility_profile
from hubreturns.dcc.smki import TrustAnchors, load_trust_anchors
from hubreturns.errors import HintedError
from hubreturns.model import DEFAULT_ACB, eui
from hubreturns.pki import packaged_pki
from hubreturns.policy import REQUEST_POLICY, SecurityPolicy
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.response import ResponseSigner

__all__ = [
    "DEFAULT_COMMIT_HOLD_MS",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_COMMIT_HOLD_MS",
    "MIN_OPERATOR_TOKEN",
    "NEW_KEY_COMMAND",
    "TEST_KEYS_WARNING",
    "ConfigError",
    "Settings",
    "load_settings",
    "redact_url",
]

#: A number a setting is converted to (``_number``).
N = TypeVar("N", int, float)

_DSP_STEM = "dsp-xml-sign-90B3D51F30000002-ds"


#: How long a SQLite commit may wait for company by default, and at most (a longer
#: hold would only add latency: batches are full well before it).
DEFAULT_COMMIT_HOLD_MS = 3.0
MAX_COMMIT_HOLD_MS = 50.0

#: A client has this long to send a whole request head, and a connection may stay
#: this long without sending anything (slowloris, idle sockets; issue 21 §2).
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 10.0
#: Open connections per worker; more are answered 503 and closed. Below the usual
#: 1024 open files per process, leaving room for database connections and logs.
DEFAULT_MAX_CONNECTIONS = 512
#: Bounds of the timeouts above (seconds): beyond an hour they are no guard.
_MAX_TIMEOUT_S = 3600.0
_TLS_FILES = ("tls_cert", "tls_key", "tls_client_ca")
#: The schemaVersion values accepted unless configured: the schema this service holds.
REQUEST_POLICY_SCHEMA_VERSIONS: tuple[str, ...] = tuple(sorted(REQUEST_POLICY.schema_versions))
#: A schemaVersion as DUIS writes it (the schema types it as a decimal, e.g. ``5.4``).
_SCHEMA_VERSION = re.compile(r"[0-9]+\.[0-9]+")


#: Shortest ``operator_token`` accepted: 32 characters of ``token_urlsafe`` are 192 bits.
MIN_OPERATOR_TOKEN = 32
#: How to make a secret (``operator_token``, ``session_secret``).
NEW_KEY_COMMAND = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
#: Logged at start when responses are signed with the packaged public test key.
TEST_KEYS_WARNING = (
    "allow_test_keys: responses are signed with the public DCC test key shipped in the "
    "package; anyone can forge them. Set signing_key and signing_cert for real use"
)
_DEFAULT_HINT = "See docs/configuration.md; `hubreturns --help` lists the commands."


class ConfigError(HintedError):
    """A setting is missing or wrong: ``code`` names the problem, ``message`` says
    what is wrong (never a secret's value) and ``hint`` what a person can do."""

    code = "config"

    def __init__(self, message: str, *, hint: str = _DEFAULT_HINT, code: str | None = None) -> None:
        super().__init__(message, hint, code=code)


def redact_url(url: str) -> str:
    """``url`` as it may be shown: any password (in the URL or its query) as ``***``.

    The one way a database URL is printed or logged. A URL SQLAlchemy cannot
    parse is shown with everything between ``//`` and ``@`` hidden.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return re.sub(r"//[^/@]*@", "//***@", url)
    secret = {k: "***" for k in parsed.query if "password" in k.lower()}
    return parsed.update_query_dict(secret).render_as_string(hide_password=True)


def _is_test_certificate(path: Path) -> bool:
    """Whether ``path`` holds a certificate whose key ships in the package (public)."""
    try:
        key = x509.load_pem_x509_certificate(path.read_bytes()).public_key()
    except (OSError, ValueError):
        return False
    for shipped in packaged_pki().glob("*.cert.pem"):
        if x509.load_pem_x509_certificate(shipped.read_bytes()).public_key() == key:
            return True
    return False


#: Settings whose values are secrets: never shown, not even by ``repr``.
_SECRET_FIELDS = frozenset({"session_secret", "operator_token"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every setting, with its default; docs/configuration.md is generated from these fields."""

    #: SQLAlchemy URL of the database: ``sqlite:///FILE`` or ``postgresql+psycopg://…``.
    database_url: str = "sqlite:///hubreturns.db"
    #: The DCC's response-signing private key (PEM, P-256); with ``signing_cert``, or
    #: neither. Required to serve unless ``allow_test_keys``.
    signing_key: Path | None = None
    #: The certificate of ``signing_key`` (PEM).
    signing_cert: Path | None = None
    #: Without ``signing_key``/``signing_cert``, sign with DCC's public *test* key shipped
    #: in the package (demo, tests): a WARNING at start, ``/healthz`` ``"test_keys": true``.
    allow_test_keys: bool = False
    #: Worker processes of ``serve`` (``--workers`` overrides it); above 1 needs ``session_secret``.
    workers: int = 1
    #: EUI-64 of the DCC Access Control Broker: the RequestID target every request must name.
    acb_eui: str = DEFAULT_ACB
    #: Largest DUIS request body in bytes; a longer one is cut off while streaming (413).
    max_body_bytes: int = 64 * 1024
    #: Service Desk session-cookie key; None = a random key per process (one worker only).
    session_secret: str | None = None
    #: Bearer token for the operator JSON API, at least 32 characters; None = the API
    #: refuses every call (401).
    operator_token: str | None = None
    #: Charges tariff (TOML); None = DCC's returns charges as quoted on SECAS's DP238 page.
    tariff_file: Path | None = None
    #: SQLite: how long a commit may wait for more requests to share it under
    #: steady load (``flushing.FlushPolicy``); 0 = never wait.
    commit_hold_ms: float = DEFAULT_COMMIT_HOLD_MS
    #: Seconds from a request's first byte to the end of its head (``serving``).
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    #: Seconds a connection may send nothing, before a request and between requests.
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    #: Open connections per worker; beyond it a new connection is answered 503.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: HTTPS: the server's certificate chain (PEM); None = plain HTTP.
    tls_cert: Path | None = None
    #: HTTPS: the private key of ``tls_cert`` (PEM); set both or neither.
    tls_key: Path | None = None
    #: Mutual TLS: client certificates must chain to this CA (PEM); None = not asked.
    tls_client_ca: Path | None = None
    #: SMKI CA certificates (PEM file or folder) every loaded certificate must chain
    #: to; None = certificates are operator-vouched (``smki``), and the service says so.
    smki_ca_certs: Path | None = None
    #: The wire code of each refusal reason (``[response_codes]`` over the defaults).
    response_codes: CodeProfile = DEFAULT_PROFILE
    #: Name of the role to 8.14.3/8.14.4 matrix in force (``rules.PROFILES``).
    eligibility_profile: str = DEFAULT_ELIGIBILITY
    #: The ``schemaVersion`` values a request may carry; others are refused
    #: (``Reason.SCHEMA_VERSION``); the environment takes them comma-separated (``5.4,5.3``).
    #: Requests are validated against the DUIS 5.4 schema.
    schema_versions: tuple[str, ...] = REQUEST_POLICY_SCHEMA_VERSIONS

    def __post_init__(self) -> None:
        # Fail at start-up, not on the first request: an unknown profile is refused here.
        self.eligibility()
        self._check_database_url()
        self._check_secrets()
        # A half-configured TLS would serve plain HTTP or skip client certificates:
        # refused at start rather than failing open.
        if self.tls_key is not None and self.tls_cert is None:
            raise ConfigError(
                "tls_key is set but tls_cert is not; set tls_cert (HUBRETURNS_TLS_CERT) to the "
                "server's certificate chain (PEM), or unset tls_key to serve plain HTTP"
            )
        if self.tls_cert is not None and self.tls_key is None:
            raise ConfigError(
                "tls_cert is set but tls_key is not; set tls_key (HUBRETURNS_TLS_KEY) to the "
                "certificate's private key (PEM)"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "tls_client_ca needs TLS: set tls_cert and tls_key too (client certificates "
                "are only asked for over HTTPS)"
            )

    def _check_database_url(self) -> None:
        try:
            _ = make_url(self.database_url).port  # a port that is not a number raises here
        except (ArgumentError, ValueError):
            raise ConfigError(
                f"database_url {redact_url(self.database_url)} is not a database URL",
                hint="Write it like postgresql+psycopg://USER:PASSWORD@HOST:5432/NAME or "
                "sqlite:///path/to/hubreturns.db (HUBRETURNS_DATABASE_URL).",
                code="database_url",
            ) from None

    def _check_secrets(self) -> None:
        """Refuse settings that would serve with a guessable or half-set secret."""
        if (self.signing_key is None) != (self.signing_cert is None):
            given, missing = (
                ("signing_key", "signing_cert")
                if self.signing_cert is None
                else ("signing_cert", "signing_key")
            )
            raise ConfigError(
                f"{given} is set but {missing} is not",
                hint=f"Set {missing} (HUBRETURNS_{missing.upper()}) too: the DSP's key and "
                "its certificate go together.",
                code="signing_pair",
            )
        if self.operator_token is not None and len(self.operator_token) < MIN_OPERATOR_TOKEN:
            raise ConfigError(  # the token itself is never repeated
                f"operator_token is {len(self.operator_token)} characters long; "
                f"at least {MIN_OPERATOR_TOKEN} are required",
                hint=f"Make one with: {NEW_KEY_COMMAND} (HUBRETURNS_OPERATOR_TOKEN).",
                code="operator_token",
            )
        if self.workers > 1 and not self.session_secret:
            raise ConfigError(
                f"{self.workers} workers need a session_secret: each would sign Service Desk "
                "sessions with a key of its own and sign staff out at random",
                hint=f"Set HUBRETURNS_SESSION_SECRET (or session_secret) to the output of "
                f"{NEW_KEY_COMMAND}, or serve with --workers 1.",
                code="session_secret",
            )

    def __repr__(self) -> str:
        """Every field, with the database password and the secrets shown as ``***``.

        A ``repr`` reaches tracebacks, debuggers and test reports; the secrets must not.
        """
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "database_url":
                value = redact_url(value)
            elif item.name in _SECRET_FIELDS and value is not None:
                value = "***"
            shown.append(f"{item.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def test_keys(self) -> bool:
        """Whether responses are signed with a key shipped in the package (public)."""
        return self.signing_cert is None or _is_test_certificate(self.signing_cert)

    def eligibility(self) -> EligibilityProfile:
        try:
            return eligibility_profile(self.eligibility_profile)
        except ValueError as exc:
            raise ConfigError(
                f"[eligibility] profile: {exc} (HUBRETURNS_ELIGIBILITY_PROFILE)"
            ) from None

    @property
    def tls(self) -> bool:
        """Whether the service is served over HTTPS."""
        return self.tls_cert is not None

    def policy(self) -> SecurityPolicy:
        return replace(
            REQUEST_POLICY,
            max_body_bytes=self.max_body_bytes,
            schema_versions=frozenset(self.schema_versions),
        )

    def signing_files(self) -> tuple[Path, Path]:
        """(key, certificate) responses are signed with; the packaged test pair only
        when ``allow_test_keys`` says so, else a ConfigError (fail closed)."""
        if self.test_keys and not self.allow_test_keys:
            what = (
                "signing_key and signing_cert are not set"
                if self.signing_key is None
                else (f"signing_cert {self.signing_cert} is a public DCC test certificate")
            )
            raise ConfigError(
                f"{what}: responses would be signed with a key anyone can download",
                hint="Set signing_key and signing_cert (HUBRETURNS_SIGNING_KEY / "
                "HUBRETURNS_SIGNING_CERT) to the DSP's credential; for a demo or test system "
                "only, set allow_test_keys = true (HUBRETURNS_ALLOW_TEST_KEYS=1).",
                code="test_keys",
            )
        if self.signing_key is None or self.signing_cert is None:
            return packaged_pki() / f"{_DSP_STEM}.key.pem", packaged_pki() / f"{_DSP_STEM}.cert.pem"
        return self.signing_key, self.signing_cert

    def signer(self) -> ResponseSigner:
        key_path, cert_path = self.signing_files()
        key = _read_pem(key_path, "signing_key", lambda d: load_pem_private_key(d, password=None))
        cert = _read_pem(cert_path, "signing_cert", SigningCertificate.from_pem)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(
                f"signing_key {key_path} is not an EC private key",
                hint="DUIS responses are signed with ECDSA on P-256: give the DSP's EC key.",
                code="signing_key",
            )
        if (
            cert.public_key is None
            or cert.public_key.public_numbers() != key.public_key().public_numbers()
        ):
            # Responses signed with a key their certificate does not hold verify nowhere.
            raise ConfigError(
                f"signing_key {key_path} does not belong to signing_cert {cert_path}",
                hint="Set both to the same DCC credential.",
                code="signing_pair",
            )
        return ResponseSigner(key, cert)

    def trust_anchors(self) -> TrustAnchors | None:
        """The configured SMKI CA certificates, or None when certificates are operator-vouched."""
        if self.smki_ca_certs is None:
            return None
        try:
            return load_trust_anchors(self.smki_ca_certs)
        except ValueError as exc:
            raise ConfigError(
                f"smki_ca_certs: {exc}; set smki_ca_certs (HUBRETURNS_SMKI_CA_CERTS) to a PEM "
                "file or folder of SMKI CA certificates"
            ) from None


R = TypeVar("R")
_PEM_KINDS = {"signing_key": "private key", "signing_cert": "certificate"}


def _read_pem(path: Path, name: str, parse: Callable[[bytes], R]) -> R:
    """``parse`` of the file ``path``, or a ConfigError naming the setting and the path."""
    env = f"HUBRETURNS_{name.upper()}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{name} {path} cannot be read ({exc.strerror})",
            hint=f"Check the path and its permissions, or set {name} ({env}) to the PEM file.",
            code=name,
        ) from None
    try:
        return parse(data)
    except ValueError:
        raise ConfigError(
            f"{name} {path} is not a PEM {_PEM_KINDS[name]}",
            hint=f"Set {name} ({env}) to the DSP's PEM file.",
            code=name,
        ) from None


def _number(name: str, value: Any, convert: Callable[[Any], N], what: str) -> N:
    """``value`` (TOML number or environment string) through ``convert``, or a ConfigError.

    A TOML boolean is refused although Python counts it an int (``true`` is not 1 here).
    """
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        return convert(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {what}, got {value!r}") from None


def _whole(value: Any) -> int:
    """``int(value)``, but 1.5 is refused rather than cut to 1."""
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _profile(value: Any) -> CodeProfile:
    """The ``[response_codes]`` table over the defaults, or a ConfigError saying why not."""
    if not isinstance(value, dict):
        raise ConfigError(
            'response_codes must be a TOML table such as [response_codes] replay = "E48"'
        )
    try:
        return CodeProfile.with_overrides(value)
    except ValueError as exc:
        raise ConfigError(
            f"[response_codes]: {exc}; `hubreturns codes` lists the profile in force, "
            "docs/response-codes.md the rules"
        ) from None


def _schema_versions(value: Any) -> tuple[str, ...]:
    """A TOML list of versions, or the environment's comma-separated ``5.4,5.3``."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f'schema_versions must be a list such as ["5.4"], got {value!r}')
    versions = tuple(v.strip() for v in items if v.strip())
    bad = [v for v in versions if not _SCHEMA_VERSION.fullmatch(v)]
    if bad or not versions:
        raise ConfigError(
            f"schema_versions must name DUIS schema versions such as 5.4, got {value!r}; "
            f"the default is {', '.join(REQUEST_POLICY_SCHEMA_VERSIONS)}"
        )
    return versions


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _flag(name: str, value: Any) -> bool:
    """A TOML boolean, or an environment ``1``/``0`` (``true``/``false``, ``yes``/``no``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(
        f"{name} must be true or false, got {value!r}",
        hint=f"Write {name} = true in the settings file, or HUBRETURNS_{name.upper()}=1.",
    )


def _coerce(name: str, value: Any) -> Any:
    if name == "allow_test_keys":
        return _flag(name, value)
    if name == "workers":
        count = _number(name, value, _whole, "a whole number of processes")
        if count < 1:
            raise ConfigError(f"workers must be at least 1, got {count}")
        return count
    if name == "response_codes":
        return _profile(value)
    if name == "schema_versions":
        return _schema_versions(value)
    if name in ("signing_key", "signing_cert", "tariff_file", "smki_ca_certs", *_TLS_FILES):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a file path, got {value!r}")
        return Path(value).expanduser()
    if name in ("header_timeout_s", "idle_timeout_s"):
        seconds = _number(name, value, float, "a number of seconds")
        if not 0 < seconds <= _MAX_TIMEOUT_S:
            raise ConfigError(
                f"{name} must be more than 0 and at most {_MAX_TIMEOUT_S:g} seconds, got "
                f"{seconds:g}; the default is {DEFAULT_HEADER_TIMEOUT_S:g}"
            )
        return seconds
    if name == "max_connections":
        count = _number(name, value, _whole, "a whole number of connections")
        if count < 1:
            raise ConfigError(
                f"max_connections must be at least 1, got {count}; "
                f"the default is {DEFAULT_MAX_CONNECTIONS} per worker"
            )
        return count
    if name == "max_body_bytes":
        number = _number(name, value, _whole, "a whole number of bytes")
        if number <= 0:
            raise ConfigError("max_body_bytes must be positive")
        return number
    if name == "commit_hold_ms":
        hold = _number(name, value, float, "a number of milliseconds")
        if not 0 <= hold <= MAX_COMMIT_HOLD_MS:
            raise ConfigError(
                f"commit_hold_ms must be from 0 (never wait) to {MAX_COMMIT_HOLD_MS:g}, "
                f"got {hold:g}; the default is {DEFAULT_COMMIT_HOLD_MS:g}"
            )
        return hold
    if name == "acb_eui":
        try:
            return eui(str(value))
        except ValueError as exc:
            raise ConfigError(f"acb_eui: {exc}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _eligibility_section(section: Any, path: Path) -> dict[str, Any]:
    """``[eligibility]``: its one key ``profile``, as the setting ``eligibility_profile``."""
    if section is None:
        return {}
    if not isinstance(section, dict) or set(section) - {"profile"}:
        raise ConfigError(
            f'[eligibility] in {path} takes one key, profile = "NAME"; got {section!r}'
        )
    return {"eligibility_profile": section["profile"]} if "profile" in section else {}


def load_settings(
    config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if environ is None else environ
    path = config_file or (Path(env["HUBRETURNS_CONFIG"]) if "HUBRETURNS_CONFIG" in env else None)
    if path is None and Path("hubreturns.toml").is_file():
        path = Path("hubreturns.toml")
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        section = dict(data.get("hubreturns", data))
        if "response_codes" in data:  # a top-level table beside [hubreturns]
            section.setdefault("response_codes", data["response_codes"])
        # [eligibility] sits beside the settings, or inside [hubreturns].
        eligibility = section.pop("eligibility", data.get("eligibility"))
        values.update(_eligibility_section(eligibility, path))
        unknown = set(section) - known
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {sorted(unknown)} in {path}; known: {sorted(known)}"
            )
        values.update(section)
    for name in known - {"response_codes"}:  # a table: TOML only
        key = f"HUBRETURNS_{name.upper()}"
        if key in env:
            values[name] = env[key]
    return Settings(**{name: _coerce(name, value) for name, value in values.items()})
