"""Load import files into the store: parse everything, then write in one transaction.

A file with any bad row loads nothing (``ImportFailed`` lists every bad row);
a good file is upserted, so loading it twice changes nothing. Certificates
are added, never replaced (``load_certificates``). Role checks use
the registry as it will be after the load, i.e. the database's users.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.dcc.importers import (
    DeviceRow,
    ImportFailed,
    parse_appointments,
    parse_devices,
    parse_users,
)
from hubreturns.dcc.smki import (
    VOUCHED_WARNING,
    TrustAnchors,
    TrustMode,
    certificate_files,
)
from hubreturns.dcc.store.models import Device, DeviceSupplier, User
from hubreturns.dcc.store.repository import CertificateConflict, Repository
from hubreturns.errors import HintedError
from hubreturns.model import Role
from hubreturns.wire.certificate import SigningCertificate, normalize_issuer

__all__ = [
    "CertificateLoad",
    "CertificatesRefused",
    "CrlLoad",
    "FileProblem",
    "ImportFailed",
    "InventoryChange",
    "load_appointments",
    "load_certificates",
    "load_crl",
    "load_devices",
    "load_inventory",
    "load_users",
    "registry_roles",
]

log = logging.getLogger("hubreturns.dcc.loading")


def registry_roles(session: Session) -> dict[str, Role]:
    return {uid: Role(role) for uid, role in session.execute(select(User.user_id, User.role))}


def load_users(sessions: sessionmaker[Session], text: str | bytes, now: datetime) -> int:
    rows = parse_users(text)
    with sessions.begin() as session:
        repo = Repository(session)
        for row in rows:
            repo.upsert_user(row.user_id, row.role, row.name, row.status, now)
    return len(rows)


def load_appointments(sessions: sessionmaker[Session], text: str | bytes) -> int:
    with sessions.begin() as session:
        rows = parse_appointments(text, roles=registry_roles(session))
        repo = Repository(session)
        for row in rows:
            repo.appoint(row.rsa_user_id, row.supplier_user_id, row.valid_from, row.valid_to)
    return len(rows)


def load_devices(sessions: sessionmaker[Session], text: str | bytes, now: datetime) -> int:
    """Upsert the file's devices (``load_inventory`` without replacing); how many rows."""
    change = load_inventory(sessions, text, now)
    return len(change.added) + len(change.updated) + len(change.unchanged)


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryChange:
    """What an inventory load did (or, with ``dry_run``, would do), by Device ID.

    ``added`` includes devices listed again after being withdrawn.
    """

    added: list[str]
    updated: list[str]
    unchanged: list[str]
    withdrawn: list[str]
    dry_run: bool


#: What a device's inventory entry is compared by: type, SMI status, GPF, suppliers.
_Entry = tuple[str, str, str | None, frozenset[str]]


def _entry(row: DeviceRow) -> _Entry:
    return (row.device_type.value, row.smi_status.value, row.gpf_id, row.responsible_suppliers)


def _inventory(session: Session) -> tuple[dict[str, _Entry], set[str]]:
    """Every device's entry, and the Device IDs currently withdrawn."""
    suppliers: dict[str, set[str]] = {}
    for device_id, supplier in session.execute(
        select(DeviceSupplier.device_id, DeviceSupplier.supplier_user_id)
    ):
        suppliers.setdefault(device_id, set()).add(supplier)
    entries: dict[str, _Entry] = {}
    withdrawn: set[str] = set()
    for device in session.scalars(select(Device)):
        found = frozenset(suppliers.get(device.device_id, ()))
        entries[device.device_id] = (device.device_type, device.smi_status, device.gpf_id, found)
        if device.withdrawn_at is not None:
            withdrawn.add(device.device_id)
    return entries, withdrawn


def _compare(
    rows: Sequence[DeviceRow], held: dict[str, _Entry], withdrawn: set[str], replace: bool
) -> InventoryChange:
    added, updated, unchanged = [], [], []
    for row in rows:
        if row.device_id not in held or row.device_id in withdrawn:
            added.append(row.device_id)
        elif held[row.device_id] != _entry(row):
            updated.append(row.device_id)
        else:
            unchanged.append(row.device_id)
    listed = {row.device_id for row in rows}
    gone = sorted(set(held) - listed - withdrawn) if replace else []
    return InventoryChange(
        added=added, updated=updated, unchanged=unchanged, withdrawn=gone, dry_run=False
    )


def _write_inventory(
    session: Session, rows: Sequence[DeviceRow], change: InventoryChange, now: datetime
) -> None:
    repo = Repository(session)
    changed = set(change.added) | set(change.updated)
    for row in rows:
        if row.device_id not in changed:
            continue  # unchanged: its updated_at stays the time it last changed
        repo.upsert_device(
            device_id=row.device_id,
            device_type=row.device_type,
            smi_status=row.smi_status,
            responsible_suppliers=row.responsible_suppliers,
            gpf_id=row.gpf_id,
            now=now,
        )
    if change.added:
        session.execute(
            update(Device).where(Device.device_id.in_(change.added)).values(withdrawn_at=None)
        )
    if change.withdrawn:
        session.execute(
            update(Device)
            .where(Device.device_id.in_(change.withdrawn))
            .values(withdrawn_at=now, updated_at=now)
        )


def load_inventory(
    sessions: sessionmaker[Session],
    text: str | bytes,
    now: datetime,
    *,
    replace: bool = False,
    dry_run: bool = False,
) -> InventoryChange:
    """Load a Device Inventory file, in one transaction (a bad row loads nothing).

    Plain: an upsert; devices not in the file are left as they are. With
    ``replace`` the file is the whole latest inventory: devices held but not in
    it are withdrawn (``Device.withdrawn_at``; their rows, returns and audit
    stay, and new requests for them get E19). ``dry_run`` reports the change
    and writes nothing. An empty file never replaces: it would withdraw everything.
    """
    with sessions.begin() as session:
        rows = parse_devices(text, roles=registry_roles(session))
        if replace and not rows:
            raise HintedError(
                "the file lists no devices: replacing with it would withdraw every device",
                "Give the whole latest inventory, or load without --replace.",
                code="empty_inventory",
            )
        held, withdrawn = _inventory(session)
        change = _compare(rows, held, withdrawn, replace)
        if dry_run:
            session.rollback()
            return dataclasses.replace(change, dry_run=True)
        _write_inventory(session, rows, change, now)
    return change


@dataclass(frozen=True, slots=True)
class FileProblem:
    """Why one file (or one certificate in it) was refused."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class CertificatesRefused(HintedError):
    """A refused ``load certs``: every problem is listed, nothing was loaded."""

    code = "certificates"
    problems: list[FileProblem]

    def __init__(self, problems: Sequence[FileProblem], hint: str) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"certificate load refused ({count} {noun}); nothing was loaded:"]
        lines.extend(f"  {p}" for p in self.problems)
        super().__init__("\n".join(lines), hint)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateLoad:
    """What ``load_certificates`` did: stored, already held (identical), and what to report."""

    trust: TrustMode
    added: list[SigningCertificate]
    unchanged: list[SigningCertificate]
    #: Loaded but refused per request (E42): outside their validity, or revoked.
    expired: list[SigningCertificate]
    not_yet_valid: list[SigningCertificate]
    revoked: list[SigningCertificate]

    @property
    def certificates(self) -> list[SigningCertificate]:
        return [*self.added, *self.unchanged]


_HINT = (
    "Fix or remove the listed files; a folder must hold PEM certificate files only. "
    "Nothing was loaded."
)


def _read_file(file: Path, anchors: TrustAnchors | None, now: datetime) -> list[SigningCertificate]:
    """The certificates of one file, each checked against ``anchors``; ``ValueError`` if not."""
    if file.is_dir():
        raise ValueError("is a folder (folders are not searched recursively)")
    data = file.read_bytes()
    if b"PRIVATE KEY-----" in data:
        raise ValueError("holds a private key; load certificates only (and keep keys elsewhere)")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError("no PEM certificate in it")
    found = []
    for cert in x509.load_pem_x509_certificates(data):
        if anchors is not None:
            anchors.verify(cert, now)
        found.append(SigningCertificate.from_x509(cert))
    return found


def _read_certificates(
    paths: Sequence[Path], anchors: TrustAnchors | None, now: datetime
) -> tuple[list[tuple[Path, SigningCertificate]], list[FileProblem]]:
    """Every certificate of ``paths`` with its file, and every problem found on the way."""
    found: list[tuple[Path, SigningCertificate]] = []
    problems: list[FileProblem] = []
    for path in paths:
        if not path.exists():
            problems.append(FileProblem(path, "does not exist"))
            continue
        files = certificate_files(path)
        if not files:
            problems.append(FileProblem(path, "is an empty folder"))
        for file in files:
            try:
                found.extend((file, cert) for cert in _read_file(file, anchors, now))
            except OSError as exc:
                problems.append(FileProblem(file, f"cannot be read ({exc.strerror})"))
            except ValueError as exc:  # UntrustedCertificate too
                problems.append(FileProblem(file, str(exc)))
    return found, problems


def _duplicates(found: list[tuple[Path, SigningCertificate]]) -> list[FileProblem]:
    """Different certificates with the same issuer and serial within one load."""
    first: dict[tuple[str, int], tuple[Path, SigningCertificate]] = {}
    problems = []
    for file, cert in found:
        seen = first.setdefault(cert.key, (file, cert))
        if seen[1].pem != cert.pem:
            problems.append(
                FileProblem(
                    file,
                    f"issuer {cert.issuer} serial {cert.serial} is also used by a different "
                    f"certificate in {seen[0]}",
                )
            )
    return problems


def load_certificates(
    sessions: sessionmaker[Session],
    paths: Sequence[Path],
    now: datetime,
    *,
    anchors: TrustAnchors | None = None,
) -> CertificateLoad:
    """Certificates from PEM files or folders, all or nothing (``CertificatesRefused``).

    Refused, with every file named: a path that does not exist, a file that
    is not a PEM certificate file (in a folder, every non-hidden entry must
    be one), a certificate that does not chain to ``anchors`` when given, and
    a certificate whose issuer and serial are already held by a *different*
    one. Re-loading an identical certificate is a no-op. Without ``anchors``
    the certificates are operator-vouched, and a WARNING says so.
    """
    found, problems = _read_certificates(paths, anchors, now)
    problems.extend(_duplicates(found))
    files = {cert.key: file for file, cert in reversed(found)}
    unique = list({cert.key: cert for _file, cert in found}.values())
    if not unique and not problems:
        problems.append(FileProblem(paths[0] if paths else Path("."), "no certificate found"))
    with sessions.begin() as session:
        repo = Repository(session)
        held = {c.key for c in unique if repo.certificate(c.issuer, c.serial) is not None}
        try:
            added = repo.add_certificates(unique, now)
        except CertificateConflict as conflict:
            added = []
            problems.extend(
                FileProblem(
                    files[c.key],
                    f"a different certificate is already stored for issuer {c.issuer} "
                    f"serial {c.serial}; refused (`hubreturns certs remove` it first if "
                    "the stored one is wrong)",
                )
                for c in conflict.certificates
            )
        if problems:
            raise CertificatesRefused(problems, _HINT)  # rolls the transaction back
        revoked = [c for c in unique if repo.revocation(c.issuer, c.serial) is not None]
    trust = TrustMode.CA if anchors is not None else TrustMode.OPERATOR_VOUCHED
    if anchors is None:
        log.warning(VOUCHED_WARNING)
    return CertificateLoad(
        trust=trust,
        added=added,
        unchanged=[c for c in unique if c.key in held],
        expired=[c for c in unique if c.not_after < now],
        not_yet_valid=[c for c in unique if c.not_before > now],
        revoked=revoked,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CrlLoad:
    """What ``load_crl`` did: revocations listed, newly recorded, and of stored certificates."""

    trust: TrustMode
    listed: int
    recorded: int
    stored: list[tuple[str, int]]


def _read_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise ValueError(f"{path}: not a CRL (PEM or DER)") from None


def _crl_reason(entry: x509.RevokedCertificate, path: Path) -> str:
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return f"CRL {path.name}"
    return f"CRL {path.name}: {reason.value}"


def load_crl(
    sessions: sessionmaker[Session],
    path: Path,
    now: datetime,
    *,
    anchors: TrustAnchors | None = None,
) -> CrlLoad:
    """Record every revocation a CRL lists (``ValueError`` if it cannot be used).

    With ``anchors`` the CRL must be signed by one of them whose name is the
    CRL's issuer: a forged CRL could otherwise revoke, or seem to vouch for,
    anyone. Without them it is operator-vouched, like the certificates.
    Revocations are recorded whether or not the certificate is stored.
    """
    crl = _read_crl(path)
    issuer = normalize_issuer(crl.issuer.rfc4514_string())
    if anchors is not None and not any(
        ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        for ca in anchors.certificates
    ):
        raise ValueError(f"{path}: not signed by an SMKI CA in {anchors.source} named {issuer}")
    recorded = 0
    stored: list[tuple[str, int]] = []
    with sessions.begin() as session:
        repo = Repository(session)
        for entry in crl:
            serial = entry.serial_number
            recorded += repo.revoke_certificate(
                issuer,
                serial,
                revoked_at=entry.revocation_date_utc,
                reason=_crl_reason(entry, path),
                now=now,
            )
            if repo.certificate(issuer, serial) is not None:
                stored.append((issuer, serial))
    if anchors is None:
        log.warning(VOUCHED_WARNING)
    return CrlLoad(
        trust=TrustMode.CA if anchors is not None else TrustMode.OPERATOR_VOUCHED,
        listed=len(crl),
        recorded=recorded,
        stored=stored,
    )
