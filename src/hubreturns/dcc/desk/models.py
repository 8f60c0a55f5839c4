"""Service Desk tables: staff accounts and server-side sign-in sessions.

Sessions live in the database (the cookie only carries a random token, signed
by ``SessionMiddleware``), so signing out or disabling an account ends a
session for good, even if someone kept a copy of the cookie. Only the SHA-256
of the token is stored: a leaked table does not hand out sessions.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from hubreturns.dcc.store.models import Base
from hubreturns.dcc.store.types import Moment

__all__ = ["DeskSession", "SignInFailures", "StaffAccount"]


class StaffAccount(Base):
    """A DCC Service Desk staff member who may sign in to the desk."""

    __tablename__ = "desk_staff"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(Moment)
    updated_at: Mapped[datetime] = mapped_column(Moment)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(Moment)


class DeskSession(Base):
    """One signed-in browser; valid until ``expires_at`` unless revoked."""

    __tablename__ = "desk_sessions"
    __table_args__ = (Index("ix_desk_sessions_staff", "staff_name"),)

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    staff_name: Mapped[str] = mapped_column(
        String(64), ForeignKey("desk_staff.name", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(Moment)
    expires_at: Mapped[datetime] = mapped_column(Moment)
    revoked_at: Mapped[datetime | None] = mapped_column(Moment)


class SignInFailures(Base):
    """Failed sign-ins in a row under one name, known or not (``accounts.sign_in``).

    In the database rather than in memory, so that every worker counts the
    same failures and a restart forgets none.
    """

    __tablename__ = "desk_sign_in_failures"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failed_at: Mapped[datetime] = mapped_column(Moment)
    locked_until: Mapped[datetime | None] = mapped_column(Moment)
