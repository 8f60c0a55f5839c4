"""Load import files into the store: parse everything, then write in one transaction.

A file with any bad row loads nothing (``ImportFailed`` lists every bad row);
a good file is upserted, so loading it twice changes nothing. Role checks use
the registry as it will be after the load, i.e. the database's users.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.importers import (
    ImportFailed,
    parse_appointments,
    parse_devices,
    parse_users,
)
from hubreturns.model import Role
from hubreturns.store.models import User
from hubreturns.store.repository import Repository
from hubreturns.wire.certificate import SigningCertificate, load_pem_files

__all__ = [
    "ImportFailed",
    "load_appointments",
    "load_certificates",
    "load_devices",
    "load_users",
    "registry_roles",
]


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
    with sessions.begin() as session:
        rows = parse_devices(text, roles=registry_roles(session))
        repo = Repository(session)
        for row in rows:
            repo.upsert_device(
                device_id=row.device_id,
                device_type=row.device_type,
                smi_status=row.smi_status,
                responsible_suppliers=row.responsible_suppliers,
                gpf_id=row.gpf_id,
                now=now,
            )
    return len(rows)


def load_certificates(
    sessions: sessionmaker[Session], paths: list[Path], now: datetime
) -> list[SigningCertificate]:
    """Certificates from PEM files or folders; a file that does not parse loads nothing."""
    certs: list[SigningCertificate] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        before = len(certs)
        try:
            for _file, found in load_pem_files(path):
                certs.extend(found)
        except ValueError as exc:
            raise ValueError(f"{path}: not a PEM certificate ({exc})") from None
        if len(certs) == before:
            # A path that names no certificate is an operator mistake, not an empty load.
            raise ValueError(f"{path}: no PEM certificate found")
    with sessions.begin() as session:
        Repository(session).upsert_certificates(certs, now)
    return certs
