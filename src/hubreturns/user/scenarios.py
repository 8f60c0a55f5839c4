"""The demo world: users, certificates, hubs and a scripted set of signed requests.

``build_world`` writes the import files and credentials a newcomer can read
(``hubreturns.demo.seed`` loads them into a service through the same loaders as
``hubreturns load``); ``SCENARIOS`` lists every outcome of 8.14.3 / 8.14.4 with the code DUIS and
SECMP0039 call for; ``run_scenarios`` sends them over real HTTP and checks each
signed response. The test suite and the conformance pack use the same world.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from hubreturns.codes import DEFAULT_PROFILE, Reason, ResponseCode, Verdict
from hubreturns.errors import Rejection
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
from hubreturns.pki import Credential, DemoCA, load_credential, packaged_pki, write_credential
from hubreturns.user.client import read_response
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.request import build_request, sign_request
from hubreturns.wire.signature import sign

__all__ = [
    "HUBS",
    "SCENARIOS",
    "USERS",
    "DemoWorld",
    "Scenario",
    "ScenarioResult",
    "Tamper",
    "build_world",
    "run_scenarios",
    "scenario_bodies",
]

IS, GS, RSA = "90-B3-D5-1F-30-01-00-00", "90-B3-D5-1F-30-02-00-00", "00-DB-12-34-56-78-00-04"
RSA_UNAPPOINTED, ED = "00-DB-12-34-56-78-00-05", "00-DB-12-34-56-78-00-06"
GS_SUSPENDED, UNREGISTERED = "00-DB-12-34-56-78-00-07", "00-DB-12-34-56-78-00-08"
#: Extra credentials that are not a user's normal one.
IS_UNLOADED, IS_EXPIRED = "is-unloaded", "is-expired"

#: (user_id, role, name, status, shipped test-pki stem or None to generate)
USERS: tuple[tuple[str, str, str, str, str | None], ...] = (
    (IS, "IS", "Demo Import Supplier", "active", "xml-sign-90B3D51F30010000-ds"),
    (GS, "GS", "Demo Gas Supplier", "active", "xml-sign-90B3D51F30020000-ds"),
    (RSA, "RSA", "Demo Agent (appointed by the IS)", "active", "xml-sign-00DB123456780004-ds"),
    (RSA_UNAPPOINTED, "RSA", "Demo Agent (appointed by nobody)", "active", None),
    (ED, "ED", "Demo Electricity Distributor", "active", None),
    (GS_SUSPENDED, "GS", "Demo Suspended Supplier", "suspended", None),
)


def _hub(n: str) -> str:
    return f"00-DB-12-34-56-78-90-{n}"


#: (device_id, type, SMI status, responsible suppliers, gpf)
HUBS: tuple[tuple[str, str, str, str, str], ...] = (
    (_hub("A2"), "CHF", "Pending", IS, _hub("A0")),
    (_hub("B2"), "CHF", "Commissioned", IS, _hub("B0")),
    (_hub("C2"), "CHF", "Pending", IS, _hub("C0")),
    (_hub("D2"), "CHF", "InstalledNotCommissioned", IS, _hub("D0")),
    (_hub("E2"), "CHF", "Pending", GS, _hub("E0")),
    (_hub("F2"), "CHF", "Pending", IS, _hub("F0")),
    (_hub("A1"), "ESME", "Commissioned", IS, ""),
    (_hub("A0"), "GPF", "Pending", IS, ""),
)


class Tamper(enum.Enum):
    NONE = "none"
    BODY_AFTER_SIGNING = "body changed after signing"
    UNSIGNED = "no signature"
    NOT_XML = "not XML"
    SCHEMA = "schema-invalid DeviceID"
    DOCTYPE = "DOCTYPE with external entity"
    REPLAY = "exact copy of an accepted request"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    sender: str
    expected: Verdict
    device: str
    kind: ReturnKind = ReturnKind.FAULT
    signer: str | None = None
    endpoint: Endpoint = Endpoint.NON_DEVICE
    target: str = DEFAULT_ACB
    command_variant: int = 8
    other_device: str | None = None
    tamper: Tamper = Tamper.NONE
    replays: str | None = None

    @property
    def expected_code(self) -> str:
        """The wire code expected from a service with the default code profile."""
        return DEFAULT_PROFILE.code(self.expected)


_E, _R = ResponseCode, Reason
SCENARIOS: tuple[Scenario, ...] = (
    Scenario(name="IS fault return, Pending hub", sender=IS, device=_hub("A2"), expected=_E.I99),
    Scenario(
        name="IS no-fault return, Commissioned hub",
        sender=IS,
        device=_hub("B2"),
        kind=ReturnKind.NO_FAULT,
        expected=_E.I99,
    ),
    Scenario(
        name="GS no-fault return, Pending hub",
        sender=GS,
        device=_hub("E2"),
        kind=ReturnKind.NO_FAULT,
        expected=_E.I99,
    ),
    Scenario(name="RSA for its IS, Pending hub", sender=RSA, device=_hub("C2"), expected=_E.I99),
    Scenario(name="RSA for its IS, installed hub", sender=RSA, device=_hub("D2"), expected=_E.E5),
    Scenario(
        name="RSA appointed by nobody", sender=RSA_UNAPPOINTED, device=_hub("F2"), expected=_E.E4
    ),
    Scenario(name="GS, hub of another Supplier", sender=GS, device=_hub("F2"), expected=_E.E4),
    Scenario(name="ED sends a return", sender=ED, device=_hub("F2"), expected=_E.E2),
    Scenario(name="Suspended Supplier", sender=GS_SUSPENDED, device=_hub("F2"), expected=_E.E3),
    Scenario(name="User ID not registered", sender=UNREGISTERED, device=_hub("F2"), expected=_E.E1),
    Scenario(name="Device not in inventory", sender=IS, device=_hub("99"), expected=_E.E19),
    Scenario(name="Device is an ESME", sender=IS, device=_hub("A1"), expected=_E.E11),
    Scenario(
        name="Command variant 1",
        sender=IS,
        device=_hub("F2"),
        command_variant=1,
        expected=_E.E12,
    ),
    Scenario(
        name="Sent to the send-command endpoint",
        sender=IS,
        device=_hub("F2"),
        endpoint=Endpoint.SEND_COMMAND,
        expected=_E.E13,
    ),
    Scenario(
        name="Business target not the ACB",
        sender=IS,
        device=_hub("F2"),
        target="00-DB-12-34-56-78-FF-FF",
        expected=_R.WRONG_TARGET,
    ),
    Scenario(
        name="Replay of an accepted request",
        sender=IS,
        device=_hub("A2"),
        tamper=Tamper.REPLAY,
        replays="IS fault return, Pending hub",
        expected=_R.REPLAY,
    ),
    Scenario(name="Hub already returned", sender=IS, device=_hub("A2"), expected=_R.OPEN_RETURN),
    Scenario(
        name="OtherDeviceID not the hub's GPF",
        sender=IS,
        device=_hub("F2"),
        other_device=_hub("B0"),
        expected=_R.GPF_MISMATCH,
    ),
    Scenario(
        name="Body changed after signing",
        sender=IS,
        device=_hub("F2"),
        tamper=Tamper.BODY_AFTER_SIGNING,
        expected=_R.SIGNATURE,
    ),
    Scenario(
        name="Unsigned request",
        sender=IS,
        device=_hub("F2"),
        tamper=Tamper.UNSIGNED,
        expected=_R.SIGNATURE,
    ),
    Scenario(
        name="Certificate not in SMKI repository",
        sender=IS,
        signer=IS_UNLOADED,
        device=_hub("F2"),
        expected=_R.UNKNOWN_CERTIFICATE,
    ),
    Scenario(
        name="Expired certificate",
        sender=IS,
        signer=IS_EXPIRED,
        device=_hub("F2"),
        expected=_R.UNUSABLE_CERTIFICATE,
    ),
    Scenario(
        name="Signed with another user's certificate",
        sender=IS,
        signer=GS,
        device=_hub("F2"),
        expected=_R.IDENTITY_MISMATCH,
    ),
    Scenario(
        name="Not XML", sender=IS, device=_hub("F2"), tamper=Tamper.NOT_XML, expected=_R.MALFORMED
    ),
    Scenario(
        name="DOCTYPE / external entity",
        sender=IS,
        device=_hub("F2"),
        tamper=Tamper.DOCTYPE,
        expected=_R.MALFORMED,
    ),
    Scenario(
        name="Schema-invalid DeviceID",
        sender=IS,
        device=_hub("F2"),
        tamper=Tamper.SCHEMA,
        expected=_R.SCHEMA,
    ),
)


@dataclass(slots=True)
class DemoWorld:
    """Files and credentials of the demo, under ``folder``."""

    folder: Path
    credentials: dict[str, Credential] = field(default_factory=dict)

    @property
    def users_csv(self) -> Path:
        return self.folder / "users.csv"

    @property
    def appointments_csv(self) -> Path:
        return self.folder / "appointments.csv"

    @property
    def devices_csv(self) -> Path:
        return self.folder / "devices.csv"

    @property
    def pki(self) -> Path:
        return self.folder / "pki"

    @property
    def smki_ca_certs(self) -> Path:
        """The demo's own SMKI CA certificate: set as ``smki_ca_certs``, every
        repository certificate chains to it."""
        return self.pki / "smki-ca.cert.pem"

    @property
    def store_certificates(self) -> Path:
        """Certificates that go into the SMKI repository (not IS_UNLOADED's)."""
        return self.pki / "repository"

    def dcc_certificates(self) -> list[SigningCertificate]:
        return [
            SigningCertificate.from_pem(p.read_bytes())
            for p in sorted(packaged_pki().glob("dsp-xml-sign-*.cert.pem"))
        ]


def build_world(folder: Path, *, now: datetime | None = None) -> DemoWorld:
    """Write users/appointments/devices CSVs and every credential under ``folder``."""
    moment = now or datetime.now(UTC)
    world = DemoWorld(folder)
    world.store_certificates.mkdir(parents=True, exist_ok=True)
    ca = DemoCA.generate()
    world.smki_ca_certs.write_bytes(ca.credential.cert_pem)
    for user_id, _role, _name, _status, stem in USERS:
        # A user with a DCC test key keeps it, certified by the demo CA: DCC's
        # test CA certificate is not published, so its own certificates cannot chain.
        shipped = packaged_pki()
        key = (
            load_credential(shipped / f"{stem}.key.pem", shipped / f"{stem}.cert.pem").key
            if stem is not None
            else None
        )
        world.credentials[user_id] = ca.issue_xml_signing(user_id, key=key)
    world.credentials[UNREGISTERED] = ca.issue_xml_signing(UNREGISTERED)
    world.credentials[IS_UNLOADED] = ca.issue_xml_signing(IS)
    world.credentials[IS_EXPIRED] = ca.issue_xml_signing(
        IS, not_before=moment - timedelta(days=400), not_after=moment - timedelta(days=35)
    )
    for name, cred in world.credentials.items():
        stem = name.replace("-", "").lower()
        _key_path, cert_path = write_credential(cred, world.pki, stem)
        if name != IS_UNLOADED:
            (world.store_certificates / cert_path.name).write_bytes(cred.cert_pem)
    world.users_csv.write_text(
        "user_id,role,name,status\n" + "".join(f"{u},{r},{n},{s}\n" for u, r, n, s, _ in USERS),
        encoding="utf-8",
    )
    world.appointments_csv.write_text(
        "rsa_user_id,supplier_user_id,valid_from,valid_to\n"
        f"{RSA},{IS},{(moment - timedelta(days=30)).date().isoformat()},\n",
        encoding="utf-8",
    )
    world.devices_csv.write_text(
        "device_id,device_type,smi_status,responsible_suppliers,gpf_id\n"
        + "".join(f"{d},{t},{s},{r},{g}\n" for d, t, s, r, g in HUBS),
        encoding="utf-8",
    )
    return world


def scenario_request(scenario: Scenario, counter: int) -> ReturnRequest:
    fault = scenario.kind is ReturnKind.FAULT
    gpf = {d: g for d, _t, _s, _r, g in HUBS}.get(scenario.device) or _hub("A0")
    return ReturnRequest(
        request_id=RequestId(originator=scenario.sender, target=scenario.target, counter=counter),
        command_variant=scenario.command_variant,
        service_reference="8.14",
        kind=scenario.kind,
        device_id=scenario.device,
        return_type=(FaultReturnType.PRE_INSTALL if fault else NoFaultReturnType.GENERAL).value,
        other_device_id=(scenario.other_device or gpf) if fault else None,
        connection_method=ConnectionMethod.HOT_SHOE if fault else None,
        fault_reason=FaultReason.DAMAGED_CASE if fault else None,
        user_ref_id=f"demo-{counter}",
    )


def scenario_bodies(
    world: DemoWorld, scenarios: Iterable[Scenario] = SCENARIOS, *, first_counter: int = 1
) -> Iterator[tuple[Scenario, bytes]]:
    """Each scenario with its request bytes; counters rise per sender."""
    counters: dict[str, int] = {}
    sent: dict[str, bytes] = {}
    for scenario in scenarios:
        if scenario.tamper is Tamper.REPLAY:
            assert scenario.replays is not None
            yield scenario, sent[scenario.replays]
            continue
        counter = counters.get(scenario.sender, first_counter - 1) + 1
        counters[scenario.sender] = counter
        body = _body(world, scenario, scenario_request(scenario, counter))
        sent[scenario.name] = body
        yield scenario, body


def _body(world: DemoWorld, scenario: Scenario, request: ReturnRequest) -> bytes:
    cred = world.credentials[scenario.signer or scenario.sender]
    cert = SigningCertificate.from_x509(cred.certificate)
    match scenario.tamper:
        case Tamper.NOT_XML:
            return b"this is not XML"
        case Tamper.UNSIGNED:
            from lxml import etree

            return etree.tostring(build_request(request), xml_declaration=True, encoding="UTF-8")
        case Tamper.DOCTYPE:
            signed = sign_request(request, cred.key, cert)
            prolog = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            return signed.replace(b"?>", b"?>" + prolog, 1)
        case Tamper.SCHEMA:
            root = build_request(request)
            device = root.find(".//{*}DeviceID")
            assert device is not None
            device.text = "not-an-eui"
            return sign(root, cred.key, cert)
        case Tamper.BODY_AFTER_SIGNING:
            signed = sign_request(request, cred.key, cert)
            return signed.replace(b"Damaged case", b"Damaged Connector")
        case _:
            return sign_request(request, cred.key, cert)


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    scenario: Scenario
    received: str
    http_status: int
    signature_ok: bool
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.signature_ok and self.received == self.scenario.expected_code


def run_scenarios(
    base_url: str,
    world: DemoWorld,
    scenarios: Iterable[Scenario] = SCENARIOS,
    *,
    first_counter: int = 1,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> list[ScenarioResult]:
    """Send every scenario over HTTP and check each signed response."""
    dcc = world.dcc_certificates()
    results = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for scenario, body in scenario_bodies(world, scenarios, first_counter=first_counter):
            reply = client.post(
                f"/api/v1/{scenario.endpoint.value}",
                content=body,
                headers={"content-type": "application/xml"},
            )
            try:
                read = read_response(reply.content, dcc)
                result = ScenarioResult(scenario, read.code, reply.status_code, True)
            except Rejection as exc:
                result = ScenarioResult(
                    scenario,
                    reply.headers.get("x-duis-response-code", "?"),
                    reply.status_code,
                    False,
                    f"response not verified: {exc}",
                )
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
