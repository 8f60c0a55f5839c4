"""CSV import files (users, RSA appointments, device inventory) as typed rows.

Imports are all-or-nothing: a parser either returns every row of the file,
typed and validated, or raises ``ImportFailed`` naming *every* bad row by its
file line number, so an operator can fix the whole file in one pass and no
half-loaded registry ever exists. Nothing here touches a database.
"""

from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Final, TypeVar

from hubreturns.errors import HintedError
from hubreturns.model import DeviceType, Role, SmiStatus, UserStatus, as_utc, eui

__all__ = [
    "APPOINTMENT_COLUMNS",
    "DEVICE_COLUMNS",
    "USER_COLUMNS",
    "AppointmentRow",
    "DeviceRow",
    "ImportFailed",
    "RowProblem",
    "UserRow",
    "describe_formats",
    "parse_appointments",
    "parse_devices",
    "parse_users",
]

USER_COLUMNS: Final = ("user_id", "role", "name", "status")
APPOINTMENT_COLUMNS: Final = ("rsa_user_id", "supplier_user_id", "valid_from", "valid_to")
DEVICE_COLUMNS: Final = (
    "device_id",
    "device_type",
    "smi_status",
    "responsible_suppliers",
    "gpf_id",
)

_HINT: Final = "Fix the listed rows; nothing was loaded."


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRow:
    """One DCC user: a User ID holds exactly one role (DUIS: one ID per org and role)."""

    user_id: str
    role: Role
    name: str
    status: UserStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class AppointmentRow:
    """A Supplier's confirmation that an RSA acts for it, in ``[valid_from, valid_to)``.

    ``valid_to`` is ``None`` for an open-ended appointment; both are aware UTC.
    """

    rsa_user_id: str
    supplier_user_id: str
    valid_from: datetime
    valid_to: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRow:
    """A Device Inventory entry: what the SECMP0039 rules judge a return against."""

    device_id: str
    device_type: DeviceType
    smi_status: SmiStatus
    responsible_suppliers: frozenset[str]
    gpf_id: str | None


# ----------------------------------------------------------------------- problems


@dataclass(frozen=True, slots=True, kw_only=True)
class RowProblem:
    """One reason a file was refused: where (1-based line, header = 1) and why."""

    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.field is None else f"line {self.line}, {self.field}"
        return f"{where}: {self.message}"


class ImportFailed(HintedError):
    """A refused import file; ``problems`` lists every bad row, nothing was loaded."""

    code = "import"
    kind: str
    problems: list[RowProblem]

    def __init__(self, kind: str, problems: Sequence[RowProblem]) -> None:
        self.kind = kind
        self.problems = sorted(problems, key=lambda p: p.line)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{kind} import refused ({count} {noun}); nothing was loaded:"]
        lines.extend(f"  {p}" for p in self.problems)
        lines.append(_HINT)
        super().__init__("\n".join(lines), _HINT)


class _FieldError(ValueError):
    """A cell that cannot be read; the message is shown to the operator as is."""


# ------------------------------------------------------------------ cell readers

_E = TypeVar("_E", Role, UserStatus, SmiStatus, DeviceType)


def _enum(kind: type[_E], text: str) -> _E:
    try:
        return kind(text)
    except ValueError:
        allowed = " ".join(m.value for m in kind)
        raise _FieldError(f"{text!r} is not one of {allowed}") from None


def _eui(text: str) -> str:
    if not text:
        raise _FieldError("is empty; expected an EUI-64 like 00-DB-12-34-56-78-00-04")
    try:
        return eui(text)
    except ValueError:
        raise _FieldError(
            f"{text!r} is not an EUI-64 written XX-XX-XX-XX-XX-XX-XX-XX "
            "(e.g. 00-DB-12-34-56-78-00-04)"
        ) from None


def _instant(text: str) -> datetime:
    """ISO 8601 date (00:00 UTC) or datetime (naive = UTC), returned aware in UTC."""
    if not text:
        raise _FieldError("is empty; expected an ISO 8601 date or datetime")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _FieldError(
            f"{text!r} is not an ISO 8601 date or datetime "
            "(e.g. 2025-04-01 or 2025-04-01T09:30:00Z)"
        ) from None
    return as_utc(moment)


# -------------------------------------------------------------------- CSV reader


@dataclass(frozen=True, slots=True)
class _Record:
    line: int
    cells: dict[str, str]


def _decode(data: str | bytes) -> str:
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _DecodeFailed(data.count(b"\n", 0, exc.start) + 1) from None
    return data.removeprefix("\ufeff")


class _DecodeFailed(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _records(
    kind: str, data: str | bytes, columns: Sequence[str], problems: list[RowProblem]
) -> Iterator[_Record]:
    """Rows as column -> stripped cell; header and shape problems go to ``problems``.

    Yields nothing further once the header is unusable, since cells could not
    be attributed to columns.
    """
    try:
        text = _decode(data)
    except _DecodeFailed as exc:
        problems.append(RowProblem(line=exc.line, field=None, message="is not valid UTF-8"))
        return
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    previous_end = 0
    try:
        for raw in reader:
            line = previous_end + 1
            previous_end = reader.line_num
            cells = [c.strip() for c in raw]
            if not any(cells):
                continue
            if header is None:
                header = cells
                if not _header_ok(header, columns, line, problems):
                    return
                continue
            if len(cells) != len(header):
                problems.append(
                    RowProblem(
                        line=line,
                        field=None,
                        message=(
                            f"has {len(cells)} fields, the header has {len(header)} "
                            f"({','.join(header)}); check commas and quoting"
                        ),
                    )
                )
                continue
            yield _Record(line=line, cells=dict(zip(header, cells, strict=True)))
    except csv.Error as exc:
        problems.append(
            RowProblem(
                line=reader.line_num or 1,
                field=None,
                message=f"is not readable CSV ({exc}); nothing after it was checked",
            )
        )
        return
    if header is None:
        problems.append(
            RowProblem(
                line=1,
                field=None,
                message=f"the {kind} file is empty; expected the header {','.join(columns)}",
            )
        )


def _header_ok(
    header: Sequence[str], columns: Sequence[str], line: int, problems: list[RowProblem]
) -> bool:
    found = len(problems)
    seen: set[str] = set()
    for name in header:
        if name in seen:
            problems.append(
                RowProblem(line=line, field=name, message="column appears twice in the header")
            )
        seen.add(name)
    for name in header:
        if name and name not in columns:
            close = difflib.get_close_matches(name.lower(), columns, n=1)
            advice = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                RowProblem(line=line, field=name, message=f"unknown column {name!r}{advice}")
            )
        elif not name:
            problems.append(RowProblem(line=line, field=None, message="header has an empty column"))
    missing = [c for c in columns if c not in seen]
    if missing:
        problems.append(
            RowProblem(
                line=line,
                field=None,
                message=(
                    f"header is missing column(s) {', '.join(missing)}; "
                    f"expected {','.join(columns)}"
                ),
            )
        )
    return len(problems) == found


_T = TypeVar("_T")


class _Cells:
    """One record's cells, each read by a typed reader; a cell that fails is recorded as
    a problem (and read as None), so a file's every bad cell is reported at once."""

    __slots__ = ("failed", "problems", "record")

    def __init__(self, record: _Record, problems: list[RowProblem]) -> None:
        self.record = record
        self.problems = problems
        self.failed = False

    def read(self, name: str, reader: Callable[[str], _T]) -> _T | None:
        try:
            return reader(self.record.cells[name])
        except _FieldError as exc:
            self.problems.append(RowProblem(line=self.record.line, field=name, message=str(exc)))
            self.failed = True
            return None


def _finish(kind: str, rows: list[_T], problems: list[RowProblem]) -> list[_T]:
    if problems:
        raise ImportFailed(kind, problems)
    return rows


def _role_problem(
    roles: Mapping[str, Role] | None, user_id: str, wanted: set[Role], what: str
) -> str | None:
    """Why ``user_id`` cannot play ``what`` per the registry, or None if it can."""
    if roles is None:
        return None
    role = roles.get(user_id)
    allowed = " or ".join(sorted(r.value for r in wanted))
    if role is None:
        return f"{user_id} is not a known user; {what} must be a registered {allowed} user"
    if role not in wanted:
        return f"{user_id} has role {role.value}; {what} must be {allowed}"
    return None


# ---------------------------------------------------------------------- parsers


def _name(text: str) -> str:
    if not text:
        raise _FieldError("is empty; give the organisation's name")
    return text


def parse_users(text: str | bytes) -> list[UserRow]:
    """Users file ``user_id,role,name,status`` -> rows; raises ``ImportFailed``."""
    problems: list[RowProblem] = []
    rows: list[UserRow] = []
    first_line: dict[str, int] = {}
    for record in _records("users", text, USER_COLUMNS, problems):
        bad = len(problems)
        cells = _Cells(record, problems)
        user_id = cells.read("user_id", _eui)
        role = cells.read("role", partial(_enum, Role))
        name = cells.read("name", _name)
        status = cells.read("status", partial(_enum, UserStatus))
        seen = _try_eui(record.cells["user_id"])
        if seen is not None:
            _duplicate(first_line, seen, record.line, "user_id", problems)
        if user_id is None or role is None or name is None or status is None:
            continue
        if len(problems) == bad:
            rows.append(UserRow(user_id=user_id, role=role, name=name, status=status))
    return _finish("users", rows, problems)


def parse_appointments(
    text: str | bytes, *, roles: Mapping[str, Role] | None = None
) -> list[AppointmentRow]:
    """Appointments file ``rsa_user_id,supplier_user_id,valid_from,valid_to`` -> rows.

    With ``roles`` (user_id -> Role from the user registry), also refuses rows
    whose agent is not a known RSA or whose supplier is not a known IS/GS user,
    because an appointment is only meaningful between those roles.
    """
    problems: list[RowProblem] = []
    rows: list[AppointmentRow] = []
    first_line: dict[tuple[str, str, datetime], int] = {}
    for record in _records("appointments", text, APPOINTMENT_COLUMNS, problems):
        bad = len(problems)
        cells = _Cells(record, problems)
        rsa = cells.read("rsa_user_id", _eui)
        supplier = cells.read("supplier_user_id", _eui)
        valid_from = cells.read("valid_from", _instant)
        valid_to = cells.read("valid_to", _optional(_instant))
        if rsa is None or supplier is None or valid_from is None or cells.failed:
            continue
        if rsa == supplier:
            problems.append(
                RowProblem(
                    line=record.line,
                    field="supplier_user_id",
                    message="is the same user as rsa_user_id; an agent acts for another user",
                )
            )
        for field, user_id, wanted, what in (
            ("rsa_user_id", rsa, {Role.RSA}, "the agent"),
            ("supplier_user_id", supplier, {Role.IS, Role.GS}, "the supplier"),
        ):
            why = _role_problem(roles, user_id, wanted, what)
            if why is not None:
                problems.append(RowProblem(line=record.line, field=field, message=why))
        if valid_to is not None and valid_to <= valid_from:
            problems.append(
                RowProblem(
                    line=record.line,
                    field="valid_to",
                    message=(
                        f"{record.cells['valid_to']!r} is not after valid_from "
                        f"{record.cells['valid_from']!r}; leave it empty for open-ended"
                    ),
                )
            )
        _duplicate(
            first_line,
            (rsa, supplier, valid_from),
            record.line,
            "valid_from",
            problems,
            what="rsa_user_id, supplier_user_id and valid_from",
        )
        if len(problems) == bad:
            rows.append(
                AppointmentRow(
                    rsa_user_id=rsa,
                    supplier_user_id=supplier,
                    valid_from=valid_from,
                    valid_to=valid_to,
                )
            )
    return _finish("appointments", rows, problems)


def _suppliers(text: str) -> frozenset[str]:
    if not text:
        return frozenset()
    found: list[str] = []
    for position, item in enumerate(text.split(";"), start=1):
        item = item.strip()
        if not item:
            raise _FieldError(f"entry {position} of {text!r} is empty; separate EUIs with one ';'")
        value = _eui(item)
        if value in found:
            raise _FieldError(f"{value} is listed twice")
        found.append(value)
    return frozenset(found)


def parse_devices(text: str | bytes, *, roles: Mapping[str, Role] | None = None) -> list[DeviceRow]:
    """Devices file ``device_id,device_type,smi_status,responsible_suppliers,gpf_id`` -> rows.

    ``responsible_suppliers`` is ``;``-separated and required for a CHF, since a
    hub with no responsible supplier could never be returned by anyone. With
    ``roles``, each responsible supplier must be a known IS or GS user.
    """
    problems: list[RowProblem] = []
    rows: list[DeviceRow] = []
    first_line: dict[str, int] = {}
    for record in _records("devices", text, DEVICE_COLUMNS, problems):
        bad = len(problems)
        cells = _Cells(record, problems)
        cells.read("device_id", _eui)
        device_type = cells.read("device_type", partial(_enum, DeviceType))
        smi_status = cells.read("smi_status", partial(_enum, SmiStatus))
        suppliers = cells.read("responsible_suppliers", _suppliers)
        gpf_id = cells.read("gpf_id", _optional(_eui))
        device_id = _try_eui(record.cells["device_id"])
        if device_id is not None:
            _duplicate(first_line, device_id, record.line, "device_id", problems)
        if (
            device_id is None
            or device_type is None
            or smi_status is None
            or suppliers is None
            or cells.failed
        ):
            continue
        if device_type is DeviceType.CHF and not suppliers:
            problems.append(
                RowProblem(
                    line=record.line,
                    field="responsible_suppliers",
                    message="is empty; a CHF needs at least one responsible supplier",
                )
            )
        for supplier in sorted(suppliers):
            why = _role_problem(roles, supplier, {Role.IS, Role.GS}, "a responsible supplier")
            if why is not None:
                problems.append(
                    RowProblem(line=record.line, field="responsible_suppliers", message=why)
                )
        if gpf_id is not None and gpf_id == device_id:
            problems.append(
                RowProblem(line=record.line, field="gpf_id", message="is the device's own ID")
            )
        if len(problems) == bad:
            rows.append(
                DeviceRow(
                    device_id=device_id,
                    device_type=device_type,
                    smi_status=smi_status,
                    responsible_suppliers=suppliers,
                    gpf_id=gpf_id,
                )
            )
    return _finish("devices", rows, problems)


_K = TypeVar("_K")


def _duplicate(
    first_line: dict[_K, int],
    key: _K,
    line: int,
    field: str,
    problems: list[RowProblem],
    *,
    what: str | None = None,
) -> bool:
    """Record ``key`` at ``line``; report and return True when seen on an earlier line."""
    earlier = first_line.setdefault(key, line)
    if earlier == line:
        return False
    subject = f"same {what} as" if what else f"{key} already appears on"
    problems.append(
        RowProblem(line=line, field=field, message=f"duplicate: {subject} line {earlier}")
    )
    return True


def _try_eui(text: str) -> str | None:
    try:
        return eui(text)
    except ValueError:
        return None


def _optional(reader: Callable[[str], _T]) -> Callable[[str], _T | None]:
    """``reader`` for a column that may be left empty (read as None)."""

    def read(text: str) -> _T | None:
        return reader(text) if text else None

    return read


# ------------------------------------------------------------------ description


def describe_formats() -> str:
    """Markdown reference for the three import files, generated from the code's vocabulary."""
    roles = " ".join(r.value for r in Role)
    statuses = " ".join(s.value for s in UserStatus)
    types = " ".join(t.value for t in DeviceType)
    smi = " ".join(s.value for s in SmiStatus)
    return f"""\
## Import file formats

All three files are CSV (comma-separated, `"` quoting), UTF-8 with or without a
byte-order mark. The first non-blank line is the header; columns may come in
any order but must all be present, spelled exactly, and no others. Blank lines
are ignored and whitespace around cells is removed. EUI-64 identifiers are
written `XX-XX-XX-XX-XX-XX-XX-XX` in either case and stored upper case.

An import is all-or-nothing: if any row is wrong, nothing is loaded and every
problem is listed with its file line number (the header is line 1), e.g.
`line 4, role: 'XX' is not one of {roles}`.

### Users: `{",".join(USER_COLUMNS)}`

| column | content |
|---|---|
| `user_id` | the DCC User ID (EUI-64); unique within the file |
| `role` | one of {roles} |
| `name` | organisation name, not empty |
| `status` | one of {statuses} |

```csv
{",".join(USER_COLUMNS)}
90-B3-D5-1F-30-01-00-00,IS,Demo Import Supplier,active
90-B3-D5-1F-30-02-00-00,GS,Demo Gas Supplier,active
00-DB-12-34-56-78-00-04,RSA,Demo Agent (appointed by the IS),active
```

### RSA appointments: `{",".join(APPOINTMENT_COLUMNS)}`

A Supplier's confirmation that a Registered Supplier Agent works for it, valid
from `valid_from` (inclusive) until `valid_to` (exclusive).

| column | content |
|---|---|
| `rsa_user_id` | User ID of the agent; must be a registered RSA user |
| `supplier_user_id` | User ID of the Supplier; must be a registered IS or GS user |
| `valid_from` | ISO 8601 date (meaning 00:00 UTC) or datetime (no offset = UTC) |
| `valid_to` | same format, after `valid_from`; empty = open-ended |

The same agent, supplier and `valid_from` may appear only once.

```csv
{",".join(APPOINTMENT_COLUMNS)}
00-DB-12-34-56-78-00-04,90-B3-D5-1F-30-01-00-00,2025-04-01,
00-DB-12-34-56-78-00-04,90-B3-D5-1F-30-02-00-00,2025-04-01T09:00:00Z,2026-04-01
```

### Devices: `{",".join(DEVICE_COLUMNS)}`

| column | content |
|---|---|
| `device_id` | device EUI-64; unique within the file |
| `device_type` | one of {types} |
| `smi_status` | one of {smi} (exact spelling) |
| `responsible_suppliers` | `;`-separated IS/GS User IDs; at least one for a CHF |
| `gpf_id` | EUI-64 of the associated GPF, or empty |

```csv
{",".join(DEVICE_COLUMNS)}
00-DB-12-34-56-78-90-A2,CHF,Pending,90-B3-D5-1F-30-01-00-00,00-DB-12-34-56-78-90-A0
00-DB-12-34-56-78-91-02,CHF,Commissioned,90-B3-D5-1F-30-01-00-00;90-B3-D5-1F-30-02-00-00,
00-DB-12-34-56-78-90-A0,GPF,Pending,90-B3-D5-1F-30-01-00-00,
```
"""
