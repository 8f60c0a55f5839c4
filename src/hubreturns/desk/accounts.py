"""Staff accounts and sign-in sessions of the Service Desk.

Passwords are hashed with Argon2id at OWASP's recommended parameters (19 MiB,
two passes, one lane: about 50 ms a check), and re-hashed on sign-in when the
parameters change. Signing in with an unknown name costs the same
hash check as a wrong password, so the answer time does not tell which names
exist. A session is a random token; only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from hubreturns.desk.models import DeskSession, StaffAccount

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "SESSION_LIFETIME",
    "AccountError",
    "Staff",
    "add_staff",
    "check_password",
    "end_session",
    "list_staff",
    "set_active",
    "staff_for_session",
    "start_session",
    "valid_staff_name",
]

MIN_PASSWORD_LENGTH = 12
#: A desk session ends this long after sign-in, whatever happens in between.
SESSION_LIFETIME = timedelta(hours=8)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
#: Verified against when the name is unknown, so both paths cost one Argon2 check.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(Exception):
    """A staff-account operation cannot be done; carries a hint saying what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True, slots=True, kw_only=True)
class Staff:
    """A staff account as the desk shows it (never the hash)."""

    name: str
    active: bool
    created_at: datetime
    last_sign_in_at: datetime | None


def _staff(row: StaffAccount) -> Staff:
    return Staff(
        name=row.name,
        active=row.active,
        created_at=row.created_at,
        last_sign_in_at=row.last_sign_in_at,
    )


def valid_staff_name(name: str) -> bool:
    """Names are short, printable identifiers: they end up in every desk record."""
    return _NAME_RE.fullmatch(name) is not None


def add_staff(session: Session, name: str, password: str, now: datetime) -> Staff:
    if not valid_staff_name(name):
        raise AccountError(
            f"{name!r} is not a usable staff name",
            "Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"the password has {len(password)} characters, fewer than {MIN_PASSWORD_LENGTH}",
            f"Choose a password (or passphrase) of at least {MIN_PASSWORD_LENGTH} characters.",
        )
    if session.get(StaffAccount, name) is not None:
        raise AccountError(
            f"staff account {name!r} already exists",
            "Pick another name, or `hubreturns desk enable NAME` to re-enable it.",
        )
    row = StaffAccount(
        name=name,
        password_hash=_hasher.hash(password),
        active=True,
        created_at=now,
        updated_at=now,
        last_sign_in_at=None,
    )
    session.add(row)
    session.flush()
    return _staff(row)


def list_staff(session: Session) -> Sequence[Staff]:
    rows = session.scalars(select(StaffAccount).order_by(StaffAccount.name)).all()
    return [_staff(r) for r in rows]


def set_active(session: Session, name: str, active: bool, now: datetime) -> Staff:
    """Enable or disable an account; disabling also ends all its sessions at once."""
    row = session.get(StaffAccount, name)
    if row is None:
        raise AccountError(
            f"no staff account {name!r}", "`hubreturns desk list-users` shows the accounts."
        )
    row.active = active
    row.updated_at = now
    if not active:
        session.execute(
            update(DeskSession)
            .where(DeskSession.staff_name == name, DeskSession.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    session.flush()
    return _staff(row)


def check_password(session: Session, name: str, password: str, now: datetime) -> Staff | None:
    """The account if ``name`` is an active account with this password, else None."""
    row = session.get(StaffAccount, name) if valid_staff_name(name) else None
    try:
        _hasher.verify(row.password_hash if row is not None else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None or not row.active:
        return None
    if _hasher.check_needs_rehash(row.password_hash):
        row.password_hash = _hasher.hash(password)
    row.last_sign_in_at = now
    return _staff(row)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, name: str, now: datetime) -> str:
    """A new session token for ``name`` (and expired sessions are swept)."""
    session.execute(delete(DeskSession).where(DeskSession.expires_at < now))
    token = secrets.token_urlsafe(32)
    session.add(
        DeskSession(
            token_sha256=_digest(token),
            staff_name=name,
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
            revoked_at=None,
        )
    )
    session.flush()
    return token


def staff_for_session(session: Session, token: str, now: datetime) -> str | None:
    """The staff name signed in with ``token``, if the session and account are still good."""
    return session.scalar(
        select(StaffAccount.name)
        .join(DeskSession, DeskSession.staff_name == StaffAccount.name)
        .where(
            DeskSession.token_sha256 == _digest(token),
            DeskSession.revoked_at.is_(None),
            DeskSession.expires_at > now,
            StaffAccount.active.is_(True),
        )
    )


def end_session(session: Session, token: str, now: datetime) -> None:
    session.execute(
        update(DeskSession)
        .where(DeskSession.token_sha256 == _digest(token), DeskSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
