"""Staff accounts and sign-in sessions of the Service Desk.

Passwords are hashed with Argon2id at OWASP's recommended parameters (19 MiB,
two passes, one lane), and re-hashed on sign-in when the
parameters change. Signing in with an unknown name costs the same
hash check as a wrong password, so the answer time does not tell which names
exist. A session is a random token; only its SHA-256 is stored.

Password guessing is slowed per name (``sign_in``): after ``FREE_FAILURES``
failures in a row a name is locked, for ``FIRST_LOCK`` and then twice as long
for each further failure, up to ``LONGEST_LOCK``; a locked name is refused
without its password being checked. Unknown names are counted the same way,
so a lock says nothing about whether a name exists. A success, or
``hubreturns desk unlock NAME``, clears the count.
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
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hubreturns.dcc.desk.models import DeskSession, SignInFailures, StaffAccount
from hubreturns.errors import HintedError

__all__ = [
    "FIRST_LOCK",
    "FREE_FAILURES",
    "LONGEST_LOCK",
    "MIN_PASSWORD_LENGTH",
    "SESSION_LIFETIME",
    "AccountError",
    "Locked",
    "Staff",
    "add_staff",
    "end_session",
    "list_staff",
    "locks",
    "remove_staff",
    "reset_password",
    "set_active",
    "sign_in",
    "staff_for_session",
    "start_session",
    "unlock",
    "valid_staff_name",
]

MIN_PASSWORD_LENGTH = 12
#: A desk session ends this long after sign-in, whatever happens in between.
SESSION_LIFETIME = timedelta(hours=8)

#: Failed sign-ins in a row a name is allowed before it is locked.
FREE_FAILURES = 5
#: The first lock; each further failure doubles it, up to ``LONGEST_LOCK``.
FIRST_LOCK = timedelta(minutes=15)
LONGEST_LOCK = timedelta(hours=4)
#: A name's count is forgotten this long after its last failure.
_FAILURES_KEPT = timedelta(hours=24)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
#: Verified against when the name is unknown, so both paths cost one Argon2 check.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(HintedError):
    """A staff-account operation cannot be done; carries a hint saying what to do."""

    code = "account"


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


def locks(session: Session, now: datetime) -> dict[str, datetime]:
    """Names (accounts or not) whose sign-in is locked at ``now``, with when the lock ends."""
    rows = session.scalars(
        select(SignInFailures).where(SignInFailures.locked_until.is_not(None))
    ).all()
    ends = {row.name: row.locked_until for row in rows if row.locked_until is not None}
    return {name: until for name, until in ends.items() if until > now}


def _account(session: Session, name: str) -> StaffAccount:
    row = session.get(StaffAccount, name)
    if row is None:
        raise AccountError(
            f"no staff account {name!r}", "`hubreturns desk list-users` shows the accounts."
        )
    return row


def _end_sessions(session: Session, name: str, now: datetime) -> None:
    session.execute(
        update(DeskSession)
        .where(DeskSession.staff_name == name, DeskSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def reset_password(session: Session, name: str, password: str, now: datetime) -> Staff:
    """A new password for an account: its sessions end and its failed sign-ins are forgotten.

    For a staff member who forgot theirs or whose password may be known to others.
    """
    row = _account(session, name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"the password has {len(password)} characters, fewer than {MIN_PASSWORD_LENGTH}",
            f"Choose a password (or passphrase) of at least {MIN_PASSWORD_LENGTH} characters.",
        )
    row.password_hash = _hasher.hash(password)
    row.updated_at = now
    _end_sessions(session, name, now)
    session.execute(delete(SignInFailures).where(SignInFailures.name == name))
    session.flush()
    return _staff(row)


def remove_staff(session: Session, name: str) -> None:
    """Delete an account and its sessions; returns it entered keep its name."""
    row = _account(session, name)
    session.execute(delete(DeskSession).where(DeskSession.staff_name == name))
    session.execute(delete(SignInFailures).where(SignInFailures.name == name))
    session.delete(row)
    session.flush()


def set_active(session: Session, name: str, active: bool, now: datetime) -> Staff:
    """Enable or disable an account; disabling also ends all its sessions at once."""
    row = _account(session, name)
    row.active = active
    row.updated_at = now
    if not active:
        _end_sessions(session, name, now)
    session.flush()
    return _staff(row)


@dataclass(frozen=True, slots=True)
class Locked:
    """Sign-in refused unchecked: too many failures in a row under this name."""

    until: datetime


def sign_in(session: Session, name: str, password: str, now: datetime) -> Staff | Locked | None:
    """The account if ``name`` is an active account with this password; ``Locked`` if
    the name is locked (the password is not checked); else None, the failure counted.

    The count is written in the caller's transaction, which must commit even when
    the answer is None.
    """
    counted = (
        session.get(SignInFailures, name, with_for_update=True) if valid_staff_name(name) else None
    )
    if counted is not None and counted.last_failed_at < now - _FAILURES_KEPT:
        counted.failures, counted.locked_until = 0, None  # a day without failures: forgotten
    if counted is not None and counted.locked_until is not None:
        locked_until = counted.locked_until
        if locked_until > now:
            return Locked(locked_until)
    staff = _check_password(session, name, password, now)
    if staff is not None:
        if counted is not None:
            session.delete(counted)
        return staff
    if valid_staff_name(name):
        _count_failure(session, name, counted, now)
    return None


def _count_failure(
    session: Session, name: str, counted: SignInFailures | None, now: datetime
) -> None:
    if counted is None:
        session.execute(
            delete(SignInFailures).where(SignInFailures.last_failed_at < now - _FAILURES_KEPT)
        )
        try:
            with session.begin_nested():  # another worker may count the same name now
                session.add(SignInFailures(name=name, failures=0, last_failed_at=now))
        except IntegrityError:
            pass
        counted = session.get(SignInFailures, name, with_for_update=True, populate_existing=True)
        assert counted is not None
    counted.failures += 1
    counted.last_failed_at = now
    beyond = counted.failures - FREE_FAILURES
    if beyond >= 0:
        counted.locked_until = now + min(FIRST_LOCK * 2 ** min(beyond, 16), LONGEST_LOCK)
    session.flush()


def unlock(session: Session, name: str) -> bool:
    """Forget the failed sign-ins under ``name``; False if there were none."""
    counted = session.get(SignInFailures, name)
    if counted is None:
        return False
    session.delete(counted)
    session.flush()
    return True


def _check_password(session: Session, name: str, password: str, now: datetime) -> Staff | None:
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
