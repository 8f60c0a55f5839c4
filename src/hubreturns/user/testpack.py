"""The conformance test pack: signed requests with expected codes, and the data they need.

``write_pack`` creates a folder a Service User can run against any endpoint
(this service or another): every success and error outcome of 8.14.3 and
8.14.4 for IS, GS and RSA senders, each scenario in a folder of its own with
the users / appointments / devices CSVs and certificates to load into the
service under test, the signed ``request.xml`` and ``expected.json``.
``run_pack`` sends them in manifest order and checks each signed response.

The pack has User IDs of its own (``00-DB-<pack>-A0-0n``, never the demo's or
a registry's) with certificates from a CA of its own, so it loads beside real
or demo data without touching it. A *run* of the pack (its hubs and RequestID
counters) can be sent once: an accepted request cannot be accepted twice and a
returned hub stays returned. ``renew_pack`` makes the next run: new hubs
(``00-DB-<run>-…``) and counters above the last run's (the time in ms), signed
again with the pack's keys; ``hubreturns testpack run --load`` renews when
needed and loads the run's data into this service's database, so the pack can
be run again and again against the same database.
"""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
from lxml import etree

from hubreturns.codes import CODE_INFO, DEFAULT_PROFILE, CodeProfile, Reason, ResponseCode, Verdict
from hubreturns.errors import HintedError, Rejection
from hubreturns.model import (
    DEFAULT_ACB,
    ConnectionMethod,
    Endpoint,
    FaultReason,
    FaultReturnType,
    NoFaultReturnType,
    RequestId,
    ReturnKind,
    ReturnRequest,
)
from hubreturns.pki import Credential, DemoCA, load_credential, write_credential
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import SCENARIOS as DEMO_SCENARIOS
from hubreturns.user.scenarios import Tamper
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.request import build_request, sign_request
from hubreturns.wire.signature import sign

__all__ = [
    "FORMAT",
    "PackError",
    "PackScenario",
    "ScenarioOutcome",
    "current_run",
    "pack_scenarios",
    "renew_pack",
    "run_pack",
    "sent_run",
    "write_pack",
]

#: manifest.json ``format``; bump when the layout changes.
FORMAT: Final = 2

# The pack's users, by name; their User IDs are the pack's own (``_World.eui``).
IS, GS, RSA = "is", "gs", "rsa"
RSA_UNAPPOINTED, ED = "rsa-unappointed", "ed"
GS_SUSPENDED, UNREGISTERED = "gs-suspended", "unregistered"
IS_SUSPENDED, RSA_SUSPENDED = "is-suspended", "rsa-suspended"
#: Stands for the pack's own non-ACB RequestID target (``00-DB-<pack>-FF-FF``).
WRONG_TARGET: Final = "wrong-target"

#: user name -> (role, name, status); the last byte of the User ID is the position.
_USERS: Final[dict[str, tuple[str, str, str]]] = {
    IS: ("IS", "Pack Import Supplier", "active"),
    GS: ("GS", "Pack Gas Supplier", "active"),
    RSA: ("RSA", "Pack Agent (appointed by the IS)", "active"),
    RSA_UNAPPOINTED: ("RSA", "Pack Agent (appointed by nobody)", "active"),
    ED: ("ED", "Pack Electricity Distributor", "active"),
    IS_SUSPENDED: ("IS", "Pack Suspended Import Supplier", "suspended"),
    GS_SUSPENDED: ("GS", "Pack Suspended Gas Supplier", "suspended"),
    RSA_SUSPENDED: ("RSA", "Pack Suspended Agent (appointed by the IS)", "suspended"),
}
#: Every user name with a User ID (the unregistered one is not in users.csv).
_USER_IDS: Final = (*_USERS, UNREGISTERED)
#: RSA -> the Suppliers that have confirmed it.
_APPOINTED_BY: Final = {RSA: (IS,), RSA_SUSPENDED: (IS,)}
_ROLE_SENDERS: Final = {"IS": IS, "GS": GS, "RSA": RSA}
_SUSPENDED: Final = {"IS": IS_SUSPENDED, "GS": GS_SUSPENDED, "RSA": RSA_SUSPENDED}
_KINDS: Final = (ReturnKind.FAULT, ReturnKind.NO_FAULT)

# Hubs by name: (SMI status, responsible supplier); each has a GPF "<name>-gpf".
_HUBS: Final = {
    **{
        f"accept-{r}-{k.variant}": ("Pending", GS if r == "GS" else IS)
        for r in _ROLE_SENDERS
        for k in _KINDS
    },
    **{
        f"commissioned-{r}-{k.variant}": ("Commissioned", GS if r == "GS" else IS)
        for r in ("IS", "GS")
        for k in _KINDS
    },
    "spare-is": ("Pending", IS),
    "spare-gs": ("Pending", GS),
    "installed-is": ("Commissioned", IS),
}
_TAMPERED_REF: Final = "pack-tampered"


class PackError(HintedError):
    """The pack cannot be written or read; ``hint`` says what to do."""

    code = "test_pack"


@dataclass(frozen=True, slots=True, kw_only=True)
class PackScenario:
    """One request of the pack and the code the SECMP0039 rules call for."""

    slug: str
    description: str
    role: str
    sender: str  # a user name (``IS``, ``GS``, …), not a User ID
    expected: Verdict
    device: str  # hub name, "esme" or "unknown"
    kind: ReturnKind
    signer: str | None = None  # credential name when not the sender's own
    endpoint: Endpoint = Endpoint.NON_DEVICE
    target: str = DEFAULT_ACB
    command_variant: int = 8
    wrong_gpf: bool = False
    tamper: Tamper = Tamper.NONE
    depends_on: str | None = None  # slug that must have run (and been accepted) first

    @property
    def expected_code(self) -> str:
        """The wire code expected from a service with the default code profile."""
        return DEFAULT_PROFILE.code(self.expected)


def _slug(role: str, kind: ReturnKind, what: str) -> str:
    return f"{role.lower()}-{kind.variant}-{what}"


#: Refusals every role meets on its spare hub, in running order: (what, description,
#: expected, fields); ``_role_fields`` adds what depends on the role.
_EACH_ROLE_REFUSALS: Final[tuple[tuple[str, str, Verdict, Mapping[str, Any]], ...]] = (
    ("suspended", "sender's User ID is suspended", ResponseCode.E3, {}),
    (
        "wrong-target",
        "RequestID target is not the ACB",
        Reason.WRONG_TARGET,
        {"target": WRONG_TARGET},
    ),
    ("command-variant-1", "CommandVariant 1", ResponseCode.E12, {"command_variant": 1}),
    (
        "send-command-endpoint",
        "sent to /api/v1/serviceS",
        ResponseCode.E13,
        {"endpoint": Endpoint.SEND_COMMAND},
    ),
    ("unknown-device", "DeviceID not in the inventory", ResponseCode.E19, {"device": "unknown"}),
    ("esme", "DeviceID is an ESME, not a CHF", ResponseCode.E11, {"device": "esme"}),
    ("wrong-gpf", "OtherDeviceID is another hub's GPF", Reason.GPF_MISMATCH, {"wrong_gpf": True}),
    (
        "body-changed",
        "body changed after signing",
        Reason.SIGNATURE,
        {"tamper": Tamper.BODY_AFTER_SIGNING},
    ),
    ("unsigned", "no signature", Reason.SIGNATURE, {"tamper": Tamper.UNSIGNED}),
    (
        "unknown-certificate",
        "certificate not in the SMKI repository",
        Reason.UNKNOWN_CERTIFICATE,
        {},
    ),
    ("expired-certificate", "expired certificate", Reason.UNUSABLE_CERTIFICATE, {}),
    (
        "other-users-certificate",
        "signed with another user's certificate",
        Reason.IDENTITY_MISMATCH,
        {},
    ),
    ("doctype", "DOCTYPE with an external entity", Reason.MALFORMED, {"tamper": Tamper.DOCTYPE}),
    (
        "schema-invalid",
        "DeviceID is not an EUI-64 (schema)",
        Reason.SCHEMA,
        {"tamper": Tamper.SCHEMA},
    ),
)

#: Refusals that depend on who the sender is, for each kind: (role, what, description,
#: expected, fields).
_PARTY_REFUSALS: Final[tuple[tuple[str, str, str, Verdict, Mapping[str, Any]], ...]] = (
    (
        "IS",
        "not-responsible",
        "hub of another Supplier (GS)",
        ResponseCode.E4,
        {"device": "spare-gs"},
    ),
    (
        "GS",
        "not-responsible",
        "hub of another Supplier (IS)",
        ResponseCode.E4,
        {"device": "spare-is"},
    ),
    (
        "RSA",
        "unappointed",
        "RSA appointed by nobody",
        ResponseCode.E4,
        {"sender": RSA_UNAPPOINTED, "device": "spare-is"},
    ),
    (
        "RSA",
        "supplier-not-responsible",
        "RSA appointed by the IS, hub of the GS only",
        ResponseCode.E4,
        {"device": "spare-gs"},
    ),
    (
        "RSA",
        "installed-hub",
        "RSA, hub Commissioned (not Pending)",
        ResponseCode.E5,
        {"device": "installed-is"},
    ),
    (
        "ED",
        "ineligible-role",
        "ED User ID sends a return",
        ResponseCode.E2,
        {"sender": ED, "device": "spare-is"},
    ),
    (
        "unregistered",
        "unknown-user",
        "originator is not a registered User ID",
        ResponseCode.E1,
        {"sender": UNREGISTERED, "device": "spare-is"},
    ),
)

_SPARE_HUBS: Final = {"IS": "spare-is", "GS": "spare-gs", "RSA": "spare-is"}


def _scenario(
    role: str, kind: ReturnKind, what: str, description: str, **fields: Any
) -> PackScenario:
    fields.setdefault("sender", _ROLE_SENDERS.get(role, IS))
    return PackScenario(
        slug=_slug(role, kind, what),
        description=f"{role} {kind.variant}: {description}",
        role=role,
        kind=kind,
        **fields,
    )


def _role_fields(role: str, what: str) -> dict[str, Any]:
    """The fields of an ``_EACH_ROLE_REFUSALS`` row that name the role's own users."""
    if what == "suspended":
        return {"sender": _SUSPENDED[role]}
    if what == "unknown-certificate":
        return {"signer": f"{role.lower()}-unloaded"}
    if what == "expired-certificate":
        return {"signer": f"{role.lower()}-expired"}
    if what == "other-users-certificate":
        return {"signer": GS if role == "IS" else IS}
    return {}


def _acceptances_and_repeats() -> list[PackScenario]:
    """Each role's accepted returns, then their replays and second requests."""
    each = [(role, kind) for role in _ROLE_SENDERS for kind in _KINDS]
    out = [
        _scenario(
            role,
            kind,
            "accepted",
            "return of a Pending hub it may return",
            expected=ResponseCode.I99,
            device=f"accept-{role}-{kind.variant}",
        )
        for role, kind in each
    ]
    out += [
        _scenario(
            role,
            kind,
            "accepted-commissioned",
            "Supplier returns its Commissioned hub (any SMI status)",
            expected=ResponseCode.I99,
            device=f"commissioned-{role}-{kind.variant}",
        )
        for role, kind in each[:4]
    ]
    for role, kind in each:
        hub = f"accept-{role}-{kind.variant}"
        accepted = _slug(role, kind, "accepted")
        out.append(
            _scenario(
                role,
                kind,
                "replay",
                "exact copy of the accepted request",
                expected=Reason.REPLAY,
                device=hub,
                tamper=Tamper.REPLAY,
                depends_on=accepted,
            )
        )
        out.append(
            _scenario(
                role,
                kind,
                "already-returned",
                "new request for the hub it just returned",
                expected=Reason.OPEN_RETURN,
                device=hub,
                depends_on=accepted,
            )
        )
    return out


def _refusals() -> list[PackScenario]:
    out: list[PackScenario] = []
    for role in _ROLE_SENDERS:
        for kind in _KINDS:
            for what, description, expected, fields in _EACH_ROLE_REFUSALS:
                if what == "wrong-gpf" and kind is not ReturnKind.FAULT:
                    continue  # a no-fault return carries no OtherDeviceID
                chosen = {"device": _SPARE_HUBS[role], **fields, **_role_fields(role, what)}
                out.append(_scenario(role, kind, what, description, expected=expected, **chosen))
    for kind in _KINDS:
        for role, what, description, expected, fields in _PARTY_REFUSALS:
            out.append(_scenario(role, kind, what, description, expected=expected, **fields))
    out.append(
        _scenario(
            "IS",
            ReturnKind.FAULT,
            "not-xml",
            "body is not XML",
            expected=Reason.MALFORMED,
            device="spare-is",
            tamper=Tamper.NOT_XML,
        )
    )
    return out


def pack_scenarios() -> list[PackScenario]:
    """Every outcome, in the order they must run: acceptances first, then their
    replays and duplicates, then the refusals (E100, "try again later", cannot
    be provoked by a client and is not in the pack)."""
    out = _acceptances_and_repeats() + _refusals()
    slugs = [s.slug for s in out]
    assert len(set(slugs)) == len(slugs), "scenario slugs must be unique"
    missing = {s.expected for s in DEMO_SCENARIOS} - {s.expected for s in out}
    assert not missing, f"the pack misses demo outcomes {missing}"
    return out


# ------------------------------------------------------------------------- the world


@dataclass(slots=True)
class _World:
    """The pack's users (``tag``), one run's hubs (``hub_tag``) and every credential.

    ``tag`` and ``hub_tag`` are random 4-byte values, so User and Device IDs
    (``00-DB-<tag>-…``) are the pack's own and a new run's hubs are new.
    """

    tag: str
    hub_tag: str
    hubs: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (CHF, GPF)
    credentials: dict[str, Credential] = field(default_factory=dict)
    valid_from: str = ""

    def eui(self, name: str) -> str:
        """The User ID of a user name, or a request target."""
        if name == WRONG_TARGET:
            return f"00-DB-{self.tag}-FF-FF"
        if name in _USER_IDS:
            return f"00-DB-{self.tag}-A0-{_USER_IDS.index(name) + 1:02X}"
        return name  # already a User ID (the ACB)

    def stem(self, credential_name: str) -> str:
        """File stem of a credential: the User ID without dashes, or its own name."""
        if credential_name in _USER_IDS:
            return self.eui(credential_name).replace("-", "").lower()
        return credential_name

    @property
    def esme(self) -> str:
        return f"00-DB-{self.hub_tag}-F0-01"

    @property
    def unknown(self) -> str:
        return f"00-DB-{self.hub_tag}-FE-02"

    def chf(self, device: str) -> str:
        if device == "esme":
            return self.esme
        if device == "unknown":
            return self.unknown
        return self.hubs[device][0]

    def gpf(self, device: str) -> str:
        return self.hubs.get(device, self.hubs["spare-is"])[1]


def _tag() -> str:
    return "-".join(f"{b:02X}" for b in secrets.token_bytes(4))


#: Credentials besides each user's own: (name, user, expired).
_EXTRA_CREDENTIALS: Final = tuple(
    (f"{role.lower()}-{what}", user, what == "expired")
    for role, user in (("IS", IS), ("GS", GS), ("RSA", RSA))
    for what in ("unloaded", "expired")
)


def _build_world(
    now: datetime,
    tag: str | None = None,
    credentials: Path | None = None,
    ca: DemoCA | None = None,
) -> _World:
    """A new pack's world, or (``tag`` and its ``credentials`` folder) the next run of one."""
    world = _World(tag=tag or _tag(), hub_tag=_tag())
    for n, name in enumerate(_HUBS):
        base = f"00-DB-{world.hub_tag}-{n:02X}"
        world.hubs[name] = (f"{base}-02", f"{base}-00")
    world.valid_from = (now - timedelta(days=30)).date().isoformat()
    names = [*_USER_IDS, *(name for name, _, _ in _EXTRA_CREDENTIALS)]
    if credentials is not None:
        for name in names:
            stem = credentials / world.stem(name)
            try:
                world.credentials[name] = load_credential(
                    stem.with_name(stem.name + ".key.pem"), stem.with_name(stem.name + ".cert.pem")
                )
            except (OSError, ValueError) as exc:
                raise PackError(
                    f"cannot read the pack's credential {stem}: {exc}",
                    "The pack's credentials/ folder is incomplete; write a new pack.",
                ) from None
        return world
    ca = ca or DemoCA.generate(common_name=f"hubreturns-pack-{world.tag}")
    for name in _USER_IDS:
        world.credentials[name] = ca.issue_xml_signing(world.eui(name))
    for name, user, expired in _EXTRA_CREDENTIALS:
        world.credentials[name] = (
            ca.issue_xml_signing(
                world.eui(user),
                not_before=now - timedelta(days=400),
                not_after=now - timedelta(days=35),
            )
            if expired
            else ca.issue_xml_signing(world.eui(user))
        )
    return world


def _csv(header: str, rows: list[str]) -> str:
    return header + "\n" + "".join(f"{r}\n" for r in rows)


@dataclass(frozen=True, slots=True)
class _Data:
    users: frozenset[str]
    devices: frozenset[str]  # hub names, "esme"
    credentials: frozenset[str]  # certificates to load


def _data(sc: PackScenario) -> _Data:
    users: set[str] = set()
    if sc.sender in _USERS:
        users.add(sc.sender)
    for supplier in _APPOINTED_BY.get(sc.sender, ()):
        users.add(supplier)
    devices: set[str] = set()
    if sc.device == "esme":
        devices.add("esme")
        users.add(IS)
    elif sc.device != "unknown":
        devices.add(sc.device)
        users.add(_HUBS[sc.device][1])
    signer = sc.signer or sc.sender
    credentials = set() if signer.endswith("-unloaded") else {signer}
    return _Data(frozenset(users), frozenset(devices), frozenset(credentials))


def _user_rows(world: _World, users: frozenset[str]) -> list[str]:
    return sorted(f"{world.eui(u)},{','.join(_USERS[u])}" for u in users)


def _appointment_rows(world: _World, users: frozenset[str]) -> list[str]:
    return sorted(
        f"{world.eui(rsa)},{world.eui(supplier)},{world.valid_from},"
        for rsa in users
        for supplier in _APPOINTED_BY.get(rsa, ())
    )


def _device_rows(world: _World, devices: frozenset[str]) -> list[str]:
    rows = []
    for name in sorted(devices):
        if name == "esme":
            rows.append(f"{world.esme},ESME,Commissioned,{world.eui(IS)},")
            continue
        status, supplier = _HUBS[name]
        chf, gpf = world.hubs[name]
        rows.append(f"{chf},CHF,{status},{world.eui(supplier)},{gpf}")
        rows.append(f"{gpf},GPF,{status},,")
    return rows


_USERS_HEADER = "user_id,role,name,status"
_APPOINTMENTS_HEADER = "rsa_user_id,supplier_user_id,valid_from,valid_to"
_DEVICES_HEADER = "device_id,device_type,smi_status,responsible_suppliers,gpf_id"


def _write_data(folder: Path, world: _World, data: _Data) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.csv").write_text(_csv(_USERS_HEADER, _user_rows(world, data.users)), "utf-8")
    (folder / "appointments.csv").write_text(
        _csv(_APPOINTMENTS_HEADER, _appointment_rows(world, data.users)), "utf-8"
    )
    (folder / "devices.csv").write_text(
        _csv(_DEVICES_HEADER, _device_rows(world, data.devices)), "utf-8"
    )
    certs = folder / "certs"
    certs.mkdir(exist_ok=True)
    for name in sorted(data.credentials):
        (certs / f"{world.stem(name)}.cert.pem").write_bytes(world.credentials[name].cert_pem)


# ---------------------------------------------------------------------- requests


def _request(world: _World, sc: PackScenario, counter: int) -> ReturnRequest:
    fault = sc.kind is ReturnKind.FAULT
    gpf = world.gpf("installed-is") if sc.wrong_gpf else world.gpf(sc.device)
    return ReturnRequest(
        request_id=RequestId(
            originator=world.eui(sc.sender), target=world.eui(sc.target), counter=counter
        ),
        command_variant=sc.command_variant,
        service_reference="8.14",
        kind=sc.kind,
        device_id=world.chf(sc.device),
        return_type=(FaultReturnType.PRE_INSTALL if fault else NoFaultReturnType.GENERAL).value,
        other_device_id=gpf if fault else None,
        connection_method=ConnectionMethod.HOT_SHOE if fault else None,
        fault_reason=FaultReason.DAMAGED_CASE if fault else None,
        user_ref_id=f"pack-{counter}",
    )


def _body(world: _World, sc: PackScenario, request: ReturnRequest) -> bytes:
    credential = world.credentials[sc.signer or sc.sender]
    cert = SigningCertificate.from_x509(credential.certificate)
    if sc.tamper is Tamper.NOT_XML:
        return b"this is not XML"
    if sc.tamper is Tamper.UNSIGNED:
        return etree.tostring(build_request(request), xml_declaration=True, encoding="UTF-8")
    if sc.tamper is Tamper.SCHEMA:
        root = build_request(request)
        device = root.find(".//{*}DeviceID")
        assert device is not None
        device.text = "not-an-eui"
        return sign(root, credential.key, cert)
    signed = sign_request(request, credential.key, cert)
    if sc.tamper is Tamper.DOCTYPE:
        prolog = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        return signed.replace(b"?>", b"?>" + prolog, 1)
    if sc.tamper is Tamper.BODY_AFTER_SIGNING:
        original = f">{request.user_ref_id}<".encode()
        assert original in signed
        return signed.replace(original, f">{_TAMPERED_REF}<".encode())
    return signed


_README: Final = """\
# hubreturns conformance test pack

Written {written} (pack {tag}, run {run}) by `hubreturns testpack`. {count}
scenarios cover every success and error outcome of DUIS 8.14.3 CHFFaultReturn
and 8.14.4 CHFNoFaultReturn for IS, GS and RSA senders (SECMP0039). E100 ("try
again later") cannot be provoked by a client and is not in the pack.

The pack has User IDs of its own (`00-DB-{tag}-A0-0n`) and hubs of its own
(`00-DB-{hub_tag}-…`), certified by a test CA of its own (`pack-ca.cert.pem`),
so its data loads beside real or demo data without touching it.

## 1. Load the data FIRST

The service under test must hold this pack's users, SMKI certificates, RSA
appointments and devices **before** any request is sent. If the service only
accepts certificates chaining to its SMKI CAs (`smki_ca_certs`), add
`pack-ca.cert.pem` to them first (a test CA: take it out again afterwards).
Load, in this order, either everything at once from `load/`:

```bash
hubreturns load users        load/users.csv
hubreturns load certs        load/certs
hubreturns load appointments load/appointments.csv
hubreturns load devices      load/devices.csv
```

or each scenario's own `users.csv`, `certs/`, `appointments.csv` and
`devices.csv` (the same rows, split per scenario; any subset of scenarios can
be loaded and run on its own, as long as a scenario's `depends_on` runs too).
For another implementation, load the same CSVs and PEM files with its tools.

## 2. Run

```bash
hubreturns testpack run {folder} --url http://127.0.0.1:8080
```

sends each `scenarios/*/request.xml` in `manifest.json` order to the
endpoint in its `expected.json` (`/api/v1/serviceD`, or serviceS for the
wrong-endpoint scenarios), verifies the signed response with the DCC
certificate (`--dcc-cert`, default the DCC test DSP certificates) and compares
the code with `expected_code`. Exit status 0 only when every scenario passes.

## 3. Run again

A run can pass once per service: accepted requests cannot be accepted again
(RequestID counters, from {base}, the time of writing in ms) and returned hubs
stay returned. `hubreturns testpack renew {folder}` makes the next run: new
hubs and higher counters, signed again with the pack's keys (the users and
certificates stay); load `load/devices.csv` again, then run. Against this
service, `hubreturns testpack run {folder} --url URL --load` does all of it
(renew when the run was sent, load into the configured database, run).

## Contents

- `manifest.json`: format, run, scenario folders in run order, expected codes
- `scenarios/NNN-<role>-<variant>-<case>/`: `request.xml` (signed bytes, send as
  they are), `expected.json`, and the data to load
- `load/`: the union of all scenarios' data
- `pack-ca.cert.pem`: the pack's test SMKI CA
- `credentials/`: every key and certificate used, including ones that must
  NOT be loaded (`*unloaded*`: the unknown-certificate scenarios). These are
  test keys: never use them anywhere else.
"""

_SENT: Final = "sent.json"


def write_pack(
    folder: Path,
    *,
    now: datetime | None = None,
    force: bool = False,
    codes: CodeProfile = DEFAULT_PROFILE,
) -> int:
    """Write the pack into ``folder`` (empty or new); returns the number of scenarios.

    Expected codes are the ``codes`` profile's (the service under test's, when it
    overrides the defaults in ``[response_codes]``).
    """
    moment = now or datetime.now(UTC)
    if folder.exists() and any(folder.iterdir()):
        if not force:
            raise PackError(
                f"{folder} is not empty", "Give a new or empty folder, or --force to replace it."
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    world, ca_pem = _new_world(moment)
    credentials = folder / "credentials"
    for cred_name, credential in sorted(world.credentials.items()):
        write_credential(credential, credentials, world.stem(cred_name))
    (folder / "pack-ca.cert.pem").write_bytes(ca_pem)
    return _write_run(folder, world, moment, run=1, base=_ms(moment), codes=codes)


def renew_pack(folder: Path, *, now: datetime | None = None) -> int:
    """Make the pack's next run: new hubs, counters above the last run's, signed again.

    The users, credentials and code profile stay; ``scenarios/`` and ``load/``
    are rewritten. Returns the new run number.
    """
    moment = now or datetime.now(UTC)
    manifest = _manifest(folder)
    try:
        codes = CodeProfile.with_overrides(dict(manifest.get("response_codes", {})))
    except (TypeError, ValueError) as exc:
        raise PackError(
            f"{folder}/manifest.json: response_codes: {exc}", "Write a new pack."
        ) from None
    world = _build_world(moment, str(manifest["pack"]), folder / "credentials")
    run = int(manifest.get("run", 1)) + 1
    base = max(_ms(moment), int(manifest.get("last_counter", 0)) + 1)
    shutil.rmtree(folder / "scenarios", ignore_errors=True)
    shutil.rmtree(folder / "load", ignore_errors=True)
    _write_run(folder, world, moment, run=run, base=base, codes=codes)
    return run


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _new_world(now: datetime) -> tuple[_World, bytes]:
    tag = _tag()
    ca = DemoCA.generate(common_name=f"hubreturns-pack-{tag}")
    return _build_world(now, tag, ca=ca), ca.credential.cert_pem


def _write_run(
    folder: Path, world: _World, moment: datetime, *, run: int, base: int, codes: CodeProfile
) -> int:
    """Write one run's scenarios, load/ data, manifest and README; the scenario count."""
    scenarios = pack_scenarios()
    counters: dict[str, int] = {}
    bodies: dict[str, bytes] = {}
    manifest: list[dict[str, Any]] = []
    everything = _Data(frozenset(), frozenset(), frozenset())
    width = len(str(len(scenarios)))
    for n, sc in enumerate(scenarios, 1):
        name = f"{n:0{width}d}-{sc.slug}"
        where = folder / "scenarios" / name
        data = _data(sc)
        everything = _Data(
            everything.users | data.users,
            everything.devices | data.devices,
            everything.credentials | data.credentials,
        )
        _write_data(where, world, data)
        if sc.tamper is Tamper.REPLAY:
            assert sc.depends_on is not None
            body = bodies[sc.depends_on]
            request_id = RequestId.parse(etree.fromstring(body).findtext(".//{*}RequestID") or "")
        else:
            counters[sc.sender] = counters.get(sc.sender, base - 1) + 1
            request = _request(world, sc, counters[sc.sender])
            body = _body(world, sc, request)
            request_id = request.request_id
        bodies[sc.slug] = body
        (where / "request.xml").write_bytes(body)
        expected = {
            "scenario": sc.slug,
            "description": sc.description,
            "role": sc.role,
            "variant": sc.kind.variant,
            "sender": world.eui(sc.sender),
            "signed_with": world.stem(sc.signer or sc.sender),
            "request_id": str(request_id),
            "endpoint": f"/api/v1/{sc.endpoint.value}",
            "expected_code": codes.code(sc.expected),
            "expected_meaning": CODE_INFO[sc.expected].meaning,
            "depends_on": sc.depends_on,
        }
        (where / "expected.json").write_text(json.dumps(expected, indent=2) + "\n", "utf-8")
        manifest.append({"folder": f"scenarios/{name}", "expected_code": codes.code(sc.expected)})
    _write_data(folder / "load", world, everything)
    (folder / "manifest.json").write_text(
        json.dumps(
            {
                "format": FORMAT,
                "pack": world.tag,
                "run": run,
                "hubs": world.hub_tag,
                "written_at": moment.isoformat(timespec="seconds"),
                "counter_base": base,
                "last_counter": max(counters.values()),
                "codes": sorted({codes.code(s.expected) for s in scenarios}),
                "response_codes": {r.value: codes.code(r) for r in Reason},
                "scenarios": manifest,
            },
            indent=2,
        )
        + "\n",
        "utf-8",
    )
    (folder / "README.md").write_text(
        _README.format(
            written=moment.isoformat(timespec="seconds"),
            tag=world.tag,
            hub_tag=world.hub_tag,
            run=run,
            count=len(scenarios),
            folder=folder,
            base=base,
        ),
        "utf-8",
    )
    return len(scenarios)


def sent_run(folder: Path) -> int | None:
    """The run of this pack last sent to a service (``sent.json``), if any."""
    try:
        data = json.loads((folder / _SENT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    run = data.get("run") if isinstance(data, dict) else None
    return run if isinstance(run, int) else None


def current_run(folder: Path) -> int:
    return int(_manifest(folder).get("run", 1))


# --------------------------------------------------------------------------- run


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioOutcome:
    """One scenario's run: what was expected, what verified response came back."""

    folder: str
    description: str
    expected: str
    received: str
    http_status: int | None
    verified: bool
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.verified and self.received == self.expected


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PackError(f"cannot read {path}: {exc}", "Write the pack again.") from None
    if not isinstance(data, dict):
        raise PackError(f"{path} is not a JSON object", "Write the pack again.")
    return data


def _manifest(pack: Path) -> dict[str, Any]:
    manifest = _read_json(pack / "manifest.json")
    if manifest.get("format") != FORMAT:
        raise PackError(
            f"{pack}/manifest.json has format {manifest.get('format')!r}, expected {FORMAT}",
            "Write the pack with this version of hubreturns.",
        )
    return manifest


def _scenario_folders(pack: Path) -> list[str]:
    manifest = _manifest(pack)
    entries = manifest.get("scenarios")
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("folder"), str) for e in entries
    ):
        raise PackError(f"{pack}/manifest.json lists no scenarios", "Write the pack again.")
    return [str(e["folder"]) for e in entries]


def _run_one(
    pack: Path, name: str, client: httpx.Client, url: str, dcc: list[SigningCertificate]
) -> ScenarioOutcome:
    from hubreturns.user.submission import service_url

    where = pack / name
    try:
        expected = _read_json(where / "expected.json")
        body = (where / "request.xml").read_bytes()
        endpoint = Endpoint(str(expected["endpoint"]).rsplit("/", 1)[-1])
        code = str(expected["expected_code"])
        description = str(expected.get("description", ""))
    except (PackError, OSError, KeyError, ValueError) as exc:
        return ScenarioOutcome(
            folder=name,
            description="",
            expected="?",
            received="-",
            http_status=None,
            verified=False,
            detail=f"scenario unreadable: {exc}",
        )
    try:
        reply = client.post(
            service_url(url, endpoint), content=body, headers={"content-type": "application/xml"}
        )
    except httpx.HTTPError as exc:
        return ScenarioOutcome(
            folder=name,
            description=description,
            expected=code,
            received="-",
            http_status=None,
            verified=False,
            detail=f"no response: {exc}",
        )
    try:
        read = read_response(reply.content, dcc)
    except Rejection as exc:
        return ScenarioOutcome(
            folder=name,
            description=description,
            expected=code,
            received=reply.headers.get("x-duis-response-code", "?"),
            http_status=reply.status_code,
            verified=False,
            detail=f"response did not verify: {exc.message}",
        )
    return ScenarioOutcome(
        folder=name,
        description=description,
        expected=code,
        received=read.code,
        http_status=reply.status_code,
        verified=True,
    )


def run_pack(
    pack: Path,
    url: str,
    dcc_certificates: list[SigningCertificate],
    *,
    on_outcome: Callable[[ScenarioOutcome], None] | None = None,
    timeout: float = 30.0,
    verify: ssl.SSLContext | bool = True,
    resend: bool = False,
) -> list[ScenarioOutcome]:
    """Send every scenario in manifest order; an unlisted scenario folder fails the run.

    A run that was sent before is refused (its hubs are returned, its counters
    used: it would fail) unless ``resend`` (e.g. to another service); the run is
    marked as sent before its first request leaves. ``verify`` is httpx's: an
    ``ssl.SSLContext`` for a private CA or mutual TLS (``client.tls_context``).
    """
    folders = _scenario_folders(pack)
    run = current_run(pack)
    if sent_run(pack) == run and not resend:
        raise PackError(
            f"run {run} of {pack} was already sent: its hubs are returned and its "
            "counters used, so it would fail",
            f"`hubreturns testpack renew {pack}` makes a fresh run (load load/ again), or "
            "`testpack run --load` renews and loads it into this service's database; "
            "--resend sends it as it is (to another service).",
        )
    (pack / _SENT).write_text(
        json.dumps({"run": run, "url": url, "at": datetime.now(UTC).isoformat()}) + "\n", "utf-8"
    )
    present = (
        {f"scenarios/{p.name}" for p in (pack / "scenarios").iterdir() if p.is_dir()}
        if (pack / "scenarios").is_dir()
        else set()
    )
    outcomes: list[ScenarioOutcome] = []

    def emit(outcome: ScenarioOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    with httpx.Client(timeout=timeout, verify=verify) as client:
        for name in folders:
            emit(_run_one(pack, name, client, url, dcc_certificates))
    for name in sorted(present - set(folders)):
        emit(
            ScenarioOutcome(
                folder=name,
                description="",
                expected="-",
                received="-",
                http_status=None,
                verified=False,
                detail="folder is not listed in manifest.json",
            )
        )
    return outcomes
