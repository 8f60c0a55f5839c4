"""Settings from a TOML file and ``HUBRETURNS_*`` environment variables.

Precedence: built-in defaults < TOML file < environment. The TOML file is
``--config PATH``, else ``$HUBRETURNS_CONFIG``, else ``./hubreturns.toml`` when
it exists. Keys (TOML / environment):

=====================  ===============================  ==========================
``database_url``       ``HUBRETURNS_DATABASE_URL``      ``sqlite:///hubreturns.db``
``signing_key``        ``HUBRETURNS_SIGNING_KEY``       packaged DCC test DSP key
``signing_cert``       ``HUBRETURNS_SIGNING_CERT``      packaged DCC test DSP cert
``acb_eui``            ``HUBRETURNS_ACB_EUI``           ``90-B3-D5-1F-30-00-00-02``
``max_body_bytes``     ``HUBRETURNS_MAX_BODY_BYTES``    ``65536``
``session_secret``     ``HUBRETURNS_SESSION_SECRET``    random per process
``operator_token``     ``HUBRETURNS_OPERATOR_TOKEN``    none (desk sessions only)
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
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from hubreturns.codes import DEFAULT_PROFILE, CodeProfile
from hubreturns.errors import HintedError
from hubreturns.model import eui
from hubreturns.policy import REQUEST_POLICY, SecurityPolicy
from hubreturns.rules import DEFAULT_PROFILE as DEFAULT_ELIGIBILITY
from hubreturns.rules import EligibilityProfile, eligibility_profile
from hubreturns.smki import TrustAnchors, load_trust_anchors
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.response import ResponseSigner

__all__ = [
    "DEFAULT_COMMIT_HOLD_MS",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_COMMIT_HOLD_MS",
    "ConfigError",
    "Settings",
    "load_settings",
    "packaged_pki",
    "read_code_profile",
]

#: A number a setting is converted to (``_number``).
N = TypeVar("N", int, float)

DEFAULT_ACB = "90-B3-D5-1F-30-00-00-02"
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


class ConfigError(HintedError):
    """A setting is missing or wrong; the message names it and says how to fix it."""

    code = "config"

    def __init__(self, message: str) -> None:
        super().__init__(message, "see docs/configuration.md.")


def packaged_pki() -> Path:
    """Folder of the public DCC *test* SMKI credentials shipped as package data."""
    return Path(str(resources.files("hubreturns") / "data" / "test-pki"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every setting, with its default; docs/configuration.md is generated from these fields."""

    #: SQLAlchemy URL of the database: ``sqlite:///FILE`` or ``postgresql+psycopg://…``.
    database_url: str = "sqlite:///hubreturns.db"
    #: The DCC's response-signing private key (PEM, P-256); the default is DCC's public
    #: *test* key, never valid on the live network.
    signing_key: Path = packaged_pki() / f"{_DSP_STEM}.key.pem"
    #: The certificate of ``signing_key`` (PEM); the default is DCC's *test* DSP certificate.
    signing_cert: Path = packaged_pki() / f"{_DSP_STEM}.cert.pem"
    #: EUI-64 of the DCC Access Control Broker: the RequestID target every request must name.
    acb_eui: str = DEFAULT_ACB
    #: Largest DUIS request body in bytes; a longer one is cut off while streaming (413).
    max_body_bytes: int = 64 * 1024
    #: Service Desk session-cookie key; None = a random key per process (single worker only).
    session_secret: str | None = None
    #: Bearer token for the operator JSON API; None = the API refuses every call (401).
    operator_token: str | None = None
    #: Charges tariff (TOML); None = DCC's returns charges as quoted on SECAS's DP238 page.
    tariff_file: Path | None = None
    #: SQLite: how long a commit may wait for more requests to share it under
    #: steady load (``committer._HOLD``); 0 = never wait.
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

    def signer(self) -> ResponseSigner:
        try:
            key = load_pem_private_key(self.signing_key.read_bytes(), password=None)
            cert = SigningCertificate.from_pem(self.signing_cert.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the response-signing key/certificate ({exc}); set signing_key "
                "and signing_cert (HUBRETURNS_SIGNING_KEY / HUBRETURNS_SIGNING_CERT) to PEM files"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{self.signing_key} is not an EC private key; DUIS signs with P-256")
        if (
            cert.public_key is None
            or cert.public_key.public_numbers() != key.public_key().public_numbers()
        ):
            # Responses signed with a key their certificate does not hold verify nowhere.
            raise ConfigError(
                f"signing_key {self.signing_key} does not belong to signing_cert "
                f"{self.signing_cert}; set both to the same DCC credential"
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


def read_code_profile(path: Path) -> CodeProfile:
    """The ``[response_codes]`` table of a TOML file over the defaults.

    A Service User's client explains the DCC's answers with this, so its meanings
    follow a service whose profile an operator has overridden.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    table = data.get("response_codes", data.get("hubreturns", {}).get("response_codes", {}))
    return _profile(table)


def _coerce(name: str, value: Any) -> Any:
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
