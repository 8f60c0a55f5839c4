"""Reading the desk's forms: text in, typed values or per-field errors out.

Pure functions, no I/O. The return form carries the same fields as the DUIS
8.14.3 / 8.14.4 body; the variant follows from the return type chosen, so a
fault type can never be sent as a no-fault return. Lengths are those of the
DUIS 5.4 schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from hubreturns.codes import CodeProfile
from hubreturns.dcc.store.repository import ReturnFilter
from hubreturns.model import RETURN_FIELDS as MODEL_FIELDS
from hubreturns.model import (
    Channel,
    FaultReturnType,
    NoFaultReturnType,
    RequestId,
    ReturnKind,
    ReturnRequest,
    Role,
    as_utc,
    eui,
)

_E = TypeVar("_E", bound=StrEnum)

__all__ = [
    "FORM_ROLES",
    "RETURN_FIELDS",
    "RETURN_TYPES",
    "AuditQuery",
    "FormErrors",
    "Paging",
    "ReturnForm",
    "audit_codes",
    "parse_audit_query",
    "parse_paging",
    "parse_return_filter",
    "read_return_form",
]

#: The return types offered, grouped by the service request they belong to.
RETURN_TYPES: tuple[tuple[ReturnKind, tuple[str, ...]], ...] = (
    (ReturnKind.FAULT, tuple(t.value for t in FaultReturnType)),
    (ReturnKind.NO_FAULT, tuple(t.value for t in NoFaultReturnType)),
)
#: Roles a return can be filtered by (the ones that may send 8.14.3 / 8.14.4).
FORM_ROLES: tuple[str, ...] = (Role.IS.value, Role.GS.value, Role.RSA.value)

#: Form field names of the return form, in display order.
RETURN_FIELDS = ("originator", *(name for name in MODEL_FIELDS if name != "variant"))
_MAX_EXPORT = 100_000
#: Rows per page of the returns and audit lists: the default and the most one may ask for.
PER_PAGE = 50
_MAX_PER_PAGE = 200
_MAX_PAGE = 100_000
#: A whole number as a query may give it: ASCII digits, few enough for ``int`` (``str.isdigit``
#: also takes "²", which ``int`` refuses, and ``int`` refuses over 4,300 digits).
_WHOLE = re.compile(r"[0-9]{1,9}")

FormErrors = dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReturnForm:
    """What staff typed into the return form (kept to show it again on error)."""

    values: Mapping[str, str]
    errors: FormErrors = field(default_factory=dict)


def _text(form: Mapping[str, str], name: str) -> str:
    return form.get(name, "").strip()


def read_return_form(
    form: Mapping[str, str], *, target: str, counter: int
) -> tuple[ReturnRequest | None, FormErrors]:
    """A ``ReturnRequest`` from the desk form, or the errors to show next to each field.

    ``target`` is the DCC ACB (the desk speaks for the user to the DCC, like DUIS);
    ``counter`` makes the RequestID unique. The fields follow the rules every
    channel shares (``ReturnRequest.from_fields``); the variant follows from the
    return type chosen.
    """
    errors: FormErrors = {}
    originator = _optional_eui(form, "originator", "Service User ID", errors)
    if originator is None and "originator" not in errors:
        errors["originator"] = "Service User ID is required."
    request_id = RequestId(originator=originator or target, target=target, counter=counter)
    fields = {name: _text(form, name) or None for name in RETURN_FIELDS if name != "originator"}
    read = ReturnRequest.from_fields(fields, request_id=request_id)
    if isinstance(read, list):
        for problem in read:
            errors.setdefault(problem.field, problem.message)
        return None, errors
    return (None, errors) if errors else (read, errors)


def _optional_eui(
    query: Mapping[str, str], name: str, label: str, errors: FormErrors
) -> str | None:
    value = _text(query, name)
    if not value:
        return None
    try:
        return eui(value)
    except ValueError:
        errors[name] = f"{label} {value!r} is not an EUI-64; write it as 00-DB-12-34-56-78-90-A2."
        return None


def _optional_date(
    query: Mapping[str, str], name: str, label: str, errors: FormErrors
) -> datetime | None:
    value = _text(query, name)
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        errors[name] = f"{label} {value!r} is not a date; write e.g. 2026-11-23."
        return None
    return as_utc(moment)


def _limit(query: Mapping[str, str], default: int, maximum: int, errors: FormErrors) -> int:
    value = _text(query, "limit")
    if not value:
        return default
    if not _WHOLE.fullmatch(value) or not 1 <= int(value) <= maximum:
        errors["limit"] = f"Limit must be a whole number from 1 to {maximum}."
        return default
    return int(value)


def _one_of(
    query: Mapping[str, str], name: str, allowed: tuple[str, ...], errors: FormErrors
) -> str | None:
    value = _text(query, name)
    if not value:
        return None
    if value not in allowed:
        errors[name] = f"{value!r} is not one of {', '.join(allowed)}."
        return None
    return value


def _member(kind: type[_E], value: str | None) -> _E | None:
    """A value ``_one_of`` has checked, as the member of ``kind`` it names."""
    return kind(value) if value is not None else None


def parse_return_filter(
    query: Mapping[str, str], *, export: bool = False
) -> tuple[ReturnFilter, FormErrors]:
    """The returns list/CSV filter from query parameters; bad values are reported, not used."""
    errors: FormErrors = {}
    where = ReturnFilter(
        device_id=_optional_eui(query, "device_id", "Device ID", errors),
        originator=_optional_eui(query, "originator", "Sender", errors),
        on_behalf_of=_optional_eui(query, "on_behalf_of", "On behalf of", errors),
        role=_member(Role, _one_of(query, "role", FORM_ROLES, errors)),
        channel=_member(
            Channel, _one_of(query, "channel", tuple(c.value for c in Channel), errors)
        ),
        since=_optional_date(query, "since", "From", errors),
        until=_optional_date(query, "until", "Until", errors),
        limit=_limit(query, _MAX_EXPORT, _MAX_EXPORT, errors) if export else PER_PAGE,
    )
    return where, errors


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQuery:
    """Filter of the request audit log (the arguments of ``Repository.audit``)."""

    originator: str | None = None
    device_id: str | None = None
    code: str | None = None
    accepted: bool | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = PER_PAGE
    offset: int = 0


#: Codes refusals were answered with before the code profile (CHANGELOG, issue 24 table).
_RECORDED_BEFORE_PROFILE = ("E20", "E21", "E30")


def audit_codes(profile: CodeProfile) -> tuple[str, ...]:
    """Codes the audit log can be filtered by: those of the profile in force, then the
    codes refusals were recorded under before there was a profile (CHANGELOG, issue 24).

    The profile is the service's ``[response_codes]``: with an override, the default
    profile's code for that refusal is never recorded, so it is not offered.
    """
    current = tuple(code for code, _, _ in profile.rows())
    return (*current, *(code for code in _RECORDED_BEFORE_PROFILE if code not in current))


def parse_audit_query(
    query: Mapping[str, str], codes: Sequence[str], *, export: bool = False
) -> tuple[AuditQuery, FormErrors]:
    """The audit list/CSV filter (``codes``: those offered); rows come from ``parse_paging``."""
    errors: FormErrors = {}
    outcome = _one_of(query, "outcome", ("accepted", "refused"), errors)
    audit = AuditQuery(
        originator=_optional_eui(query, "originator", "Sender", errors),
        device_id=_optional_eui(query, "device_id", "Device ID", errors),
        code=_one_of(query, "code", tuple(codes), errors),
        accepted=None if outcome is None else outcome == "accepted",
        since=_optional_date(query, "since", "From", errors),
        until=_optional_date(query, "until", "Until", errors),
        limit=_limit(query, _MAX_EXPORT, _MAX_EXPORT, errors) if export else PER_PAGE,
    )
    return audit, errors


@dataclass(frozen=True, slots=True, kw_only=True)
class Paging:
    """Which page of a newest-first list to show (``page`` from 1, ``per_page`` rows)."""

    page: int = 1
    per_page: int = PER_PAGE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


def _whole(
    query: Mapping[str, str], name: str, default: int, maximum: int, errors: FormErrors
) -> int:
    value = _text(query, name)
    if not value:
        return default
    if not _WHOLE.fullmatch(value) or not 1 <= int(value) <= maximum:
        errors[name] = f"{name} must be a whole number from 1 to {maximum}."
        return default
    return int(value)


def parse_paging(query: Mapping[str, str], errors: FormErrors) -> Paging:
    """``page`` and ``per_page`` from the query; bad values are reported in ``errors``."""
    return Paging(
        page=_whole(query, "page", 1, _MAX_PAGE, errors),
        per_page=_whole(query, "per_page", PER_PAGE, _MAX_PER_PAGE, errors),
    )
