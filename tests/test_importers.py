"""CSV importers: typed rows for good files, every bad row named by line for bad ones."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from hubreturns.dcc.importers import (
    AppointmentRow,
    DeviceRow,
    ImportFailed,
    RowProblem,
    UserRow,
    describe_formats,
    parse_appointments,
    parse_devices,
    parse_users,
)
from hubreturns.model import DeviceType, Role, SmiStatus, UserStatus

IS_1 = "00-DB-12-34-56-78-00-04"
GS_1 = "90-B3-D5-1F-30-01-00-00"
RSA_1 = "00-DB-12-34-56-78-00-99"
ED_1 = "90-B3-D5-1F-30-02-00-00"
CHF_1 = "00-DB-12-34-56-78-AA-01"
GPF_1 = "00-DB-12-34-56-78-AA-02"
UNKNOWN = "00-00-00-00-00-00-00-01"

ROLES: dict[str, Role] = {IS_1: Role.IS, GS_1: Role.GS, RSA_1: Role.RSA, ED_1: Role.ED}

USERS_HEADER = "user_id,role,name,status\n"
APPTS_HEADER = "rsa_user_id,supplier_user_id,valid_from,valid_to\n"
DEVICES_HEADER = "device_id,device_type,smi_status,responsible_suppliers,gpf_id\n"


def refusal(call: Any, *args: Any, **kwargs: Any) -> ImportFailed:
    """Run a parser that must refuse its input; return the refusal to inspect."""
    with pytest.raises(ImportFailed) as caught:
        call(*args, **kwargs)
    return caught.value


def where(failure: ImportFailed) -> list[tuple[int, str | None]]:
    return [(p.line, p.field) for p in failure.problems]


# ------------------------------------------------------------------------ users


def test_good_users_file_loads_typed_normalised_rows() -> None:
    text = (
        "\ufeff user_id , role,name,status \r\n"
        f"{IS_1.lower()},IS, Example Energy ,active\r\n"
        "\r\n"
        f'{GS_1},GS,"Gas, Ltd",suspended\r\n'
        f"  {RSA_1}  ,RSA,Agent,active\r\n"
    )
    assert parse_users(text) == [
        UserRow(user_id=IS_1, role=Role.IS, name="Example Energy", status=UserStatus.ACTIVE),
        UserRow(user_id=GS_1, role=Role.GS, name="Gas, Ltd", status=UserStatus.SUSPENDED),
        UserRow(user_id=RSA_1, role=Role.RSA, name="Agent", status=UserStatus.ACTIVE),
    ]


def test_columns_may_come_in_any_order() -> None:
    text = f"status,name,role,user_id\nactive,A,OU,{IS_1}\n"
    assert parse_users(text) == [
        UserRow(user_id=IS_1, role=Role.OU, name="A", status=UserStatus.ACTIVE)
    ]


@pytest.mark.parametrize("role", list(Role))
def test_every_role_is_accepted(role: Role) -> None:
    assert parse_users(f"{USERS_HEADER}{IS_1},{role.value},A,active\n")[0].role is role


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(f"{USERS_HEADER}{IS_1},IS,A,active\n".encode(), id="bytes"),
        pytest.param(b"\xef\xbb\xbf" + f"{USERS_HEADER}{IS_1},IS,A,active\n".encode(), id="bom"),
        pytest.param("\ufeff" + f"{USERS_HEADER}{IS_1},IS,A,active\n", id="str-bom"),
        pytest.param(f"{USERS_HEADER}{IS_1},IS,A,active", id="no-final-newline"),
        pytest.param(f"\n\n{USERS_HEADER}\n{IS_1},IS,A,active\n\n", id="blank-lines"),
    ],
)
def test_encodings_and_layout_variants_load(data: str | bytes) -> None:
    assert parse_users(data) == [
        UserRow(user_id=IS_1, role=Role.IS, name="A", status=UserStatus.ACTIVE)
    ]


def test_utf8_names_survive() -> None:
    text = f"{USERS_HEADER}{IS_1},IS,Énergie Cymru — Ynni,active\n".encode()
    assert parse_users(text)[0].name == "Énergie Cymru — Ynni"


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        (f"{IS_1},XX,A,active", "role", "'XX' is not one of IS GS ES ED GT RSA OU"),
        (f"{IS_1},is,A,active", "role", "'is' is not one of"),
        (f"{IS_1},IS,A,Active", "status", "'Active' is not one of active suspended"),
        (f"{IS_1},IS,,active", "name", "is empty"),
        ("00DB123456780004,IS,A,active", "user_id", "'00DB123456780004' is not an EUI-64"),
        ("00-DB-12-34-56-78-00,IS,A,active", "user_id", "is not an EUI-64"),
        (",IS,A,active", "user_id", "is empty"),
        (f"{IS_1},IS,A", None, "has 3 fields, the header has 4"),
        (f"{IS_1},IS,A,active,extra", None, "has 5 fields, the header has 4"),
    ],
)
def test_bad_user_row_is_reported_with_line_and_field(
    row: str, field: str | None, fragment: str
) -> None:
    text = f"{USERS_HEADER}{GS_1},GS,Good,active\n{row}\n"
    failure = refusal(parse_users, text)
    assert failure.kind == "users"
    assert len(failure.problems) == 1
    problem = failure.problems[0]
    assert (problem.line, problem.field) == (3, field)
    assert fragment in problem.message


def test_every_bad_row_is_listed_with_its_file_line() -> None:
    text = (
        USERS_HEADER  # line 1
        + f"{IS_1},IS,Good,active\n"  # 2
        + "\n"  # 3 blank
        + f"{GS_1},XX,Bad role,active\n"  # 4
        + f'{RSA_1},RSA,"two\nline name",active\n'  # 5-6, fine
        + "nonsense,IS,,gone\n"  # 7: three problems
        + "   \n"  # 8 blank after stripping
        + f"{ED_1},ED,Good too,suspended\n"  # 9
        + f"{UNKNOWN},OU,x,active,surplus\n"  # 10
    )
    failure = refusal(parse_users, text)
    assert where(failure) == [
        (4, "role"),
        (7, "user_id"),
        (7, "name"),
        (7, "status"),
        (10, None),
    ]
    assert str(failure.problems[0]) == "line 4, role: 'XX' is not one of IS GS ES ED GT RSA OU"


def test_duplicate_user_id_is_reported_even_with_different_spelling() -> None:
    text = f"{USERS_HEADER}{IS_1},IS,A,active\n{GS_1},GS,B,active\n{IS_1.lower()},GS,C,active\n"
    failure = refusal(parse_users, text)
    assert where(failure) == [(4, "user_id")]
    assert failure.problems[0].message == f"duplicate: {IS_1} already appears on line 2"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "user_id,role,name",
            [(1, None, "header is missing column(s) status")],
        ),
        (
            "user_id,role,name,status,email",
            [(1, "email", "unknown column 'email'")],
        ),
        (
            "user_id,rol,name,status",
            [
                (1, "rol", "unknown column 'rol'; did you mean 'role'?"),
                (1, None, "missing column(s) role"),
            ],
        ),
        (
            "user_id,role,name,status,role",
            [(1, "role", "column appears twice in the header")],
        ),
        (
            "User_ID,role,name,status",
            [
                (1, "User_ID", "did you mean 'user_id'?"),
                (1, None, "missing column(s) user_id"),
            ],
        ),
        (
            "user_id,role,,name,status",
            [(1, None, "header has an empty column")],
        ),
    ],
)
def test_header_problems_name_the_columns(
    header: str, expected: list[tuple[int, str | None, str]]
) -> None:
    failure = refusal(parse_users, f"{header}\n{IS_1},IS,A,active\n")
    assert [(p.line, p.field) for p in failure.problems] == [(e[0], e[1]) for e in expected]
    for problem, (_, _, fragment) in zip(failure.problems, expected, strict=True):
        assert fragment in problem.message


@pytest.mark.parametrize("text", ["", "\ufeff", "\n\n  \n"])
def test_empty_file_is_refused(text: str) -> None:
    failure = refusal(parse_users, text)
    assert where(failure) == [(1, None)]
    assert "empty" in failure.problems[0].message
    assert "user_id,role,name,status" in failure.problems[0].message


def test_header_only_file_loads_nothing() -> None:
    assert parse_users(USERS_HEADER) == []


def test_invalid_utf8_is_reported_with_its_line() -> None:
    data = f"{USERS_HEADER}{IS_1},IS,A,active\n".encode() + b"\xff\xfe,IS,B,active\n"
    failure = refusal(parse_users, data)
    assert where(failure) == [(3, None)]
    assert "UTF-8" in failure.problems[0].message


def test_unterminated_quote_is_reported() -> None:
    failure = refusal(parse_users, f'{USERS_HEADER}{IS_1},IS,"A,active\n')
    assert where(failure) == [(2, None)]
    assert "not readable CSV" in failure.problems[0].message


def test_failure_message_lists_everything_and_says_nothing_loaded() -> None:
    failure = refusal(parse_users, f"{USERS_HEADER}{IS_1},XX,A,active\n{GS_1},GS,B,gone\n")
    text = str(failure)
    assert "users import refused (2 problems); nothing was loaded" in text
    assert "line 2, role: 'XX' is not one of" in text
    assert "line 3, status: 'gone' is not one of active suspended" in text
    assert failure.hint == "Fix the listed rows; nothing was loaded."
    assert failure.hint in text


def test_row_problem_without_field_prints_line_only() -> None:
    assert str(RowProblem(line=7, field=None, message="oops")) == "line 7: oops"


# ----------------------------------------------------------------- appointments


@pytest.mark.parametrize(
    ("valid_from", "expected"),
    [
        ("2025-04-01", datetime(2025, 4, 1, tzinfo=UTC)),
        ("2025-04-01T09:30:00", datetime(2025, 4, 1, 9, 30, tzinfo=UTC)),
        ("2025-04-01T09:30:00Z", datetime(2025, 4, 1, 9, 30, tzinfo=UTC)),
        ("2025-04-01T10:30:00+01:00", datetime(2025, 4, 1, 9, 30, tzinfo=UTC)),
        ("2025-04-01 09:30", datetime(2025, 4, 1, 9, 30, tzinfo=UTC)),
    ],
)
def test_appointment_instants_are_aware_utc(valid_from: str, expected: datetime) -> None:
    [row] = parse_appointments(f"{APPTS_HEADER}{RSA_1},{IS_1},{valid_from},\n")
    assert row.valid_from == expected
    assert row.valid_from.utcoffset() is not None
    assert row.valid_from.tzinfo is UTC
    assert row.valid_to is None


def test_good_appointments_with_roles_load() -> None:
    text = (
        f"{APPTS_HEADER}"
        f"{RSA_1},{IS_1},2025-04-01,\n"
        f"{RSA_1.lower()},{GS_1},2025-04-01T09:00:00Z,2026-04-01\n"
    )
    assert parse_appointments(text, roles=ROLES) == [
        AppointmentRow(
            rsa_user_id=RSA_1,
            supplier_user_id=IS_1,
            valid_from=datetime(2025, 4, 1, tzinfo=UTC),
            valid_to=None,
        ),
        AppointmentRow(
            rsa_user_id=RSA_1,
            supplier_user_id=GS_1,
            valid_from=datetime(2025, 4, 1, 9, tzinfo=UTC),
            valid_to=datetime(2026, 4, 1, tzinfo=UTC),
        ),
    ]


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        (f"{RSA_1},{IS_1},2025-13-01,", "valid_from", "'2025-13-01' is not an ISO 8601"),
        (f"{RSA_1},{IS_1},01/04/2025,", "valid_from", "is not an ISO 8601"),
        (f"{RSA_1},{IS_1},,", "valid_from", "is empty"),
        (f"{RSA_1},{IS_1},2025-04-01,tomorrow", "valid_to", "'tomorrow' is not an ISO 8601"),
        (f"{RSA_1},{IS_1},2025-04-01,2025-04-01", "valid_to", "is not after valid_from"),
        (f"{RSA_1},{IS_1},2025-04-02,2025-04-01", "valid_to", "is not after valid_from"),
        (
            f"{RSA_1},{IS_1},2025-04-01T01:00:00+01:00,2025-04-01",
            "valid_to",
            "is not after valid_from",
        ),
        (f"bad,{IS_1},2025-04-01,", "rsa_user_id", "'bad' is not an EUI-64"),
        (f"{RSA_1},bad,2025-04-01,", "supplier_user_id", "'bad' is not an EUI-64"),
        (f"{RSA_1},{RSA_1},2025-04-01,", "supplier_user_id", "same user as rsa_user_id"),
    ],
)
def test_bad_appointment_row_is_reported(row: str, field: str, fragment: str) -> None:
    failure = refusal(parse_appointments, f"{APPTS_HEADER}{RSA_1},{IS_1},2024-01-01,\n{row}\n")
    assert failure.kind == "appointments"
    assert where(failure) == [(3, field)]
    assert fragment in failure.problems[0].message


@pytest.mark.parametrize(
    ("rsa", "supplier", "field", "fragment"),
    [
        (UNKNOWN, IS_1, "rsa_user_id", f"{UNKNOWN} is not a known user"),
        (IS_1, GS_1, "rsa_user_id", f"{IS_1} has role IS; the agent must be RSA"),
        (ED_1, GS_1, "rsa_user_id", f"{ED_1} has role ED; the agent must be RSA"),
        (RSA_1, UNKNOWN, "supplier_user_id", f"{UNKNOWN} is not a known user"),
        (RSA_1, ED_1, "supplier_user_id", f"{ED_1} has role ED; the supplier must be GS or IS"),
    ],
)
def test_appointment_roles_are_checked_against_the_registry(
    rsa: str, supplier: str, field: str, fragment: str
) -> None:
    text = f"{APPTS_HEADER}{rsa},{supplier},2025-04-01,\n"
    failure = refusal(parse_appointments, text, roles=ROLES)
    assert where(failure) == [(2, field)]
    assert fragment in failure.problems[0].message
    # Without a registry the same file is structurally fine.
    assert len(parse_appointments(text)) == 1


def test_appointment_with_both_roles_wrong_reports_both() -> None:
    failure = refusal(
        parse_appointments, f"{APPTS_HEADER}{GS_1},{RSA_1},2025-04-01,\n", roles=ROLES
    )
    assert where(failure) == [(2, "rsa_user_id"), (2, "supplier_user_id")]


def test_duplicate_appointment_is_reported() -> None:
    text = (
        f"{APPTS_HEADER}"
        f"{RSA_1},{IS_1},2025-04-01,\n"
        f"{RSA_1},{GS_1},2025-04-01,\n"
        f"{RSA_1},{IS_1},2025-04-01T00:00:00Z,2026-01-01\n"
    )
    failure = refusal(parse_appointments, text)
    assert where(failure) == [(4, "valid_from")]
    assert "line 2" in failure.problems[0].message


# ---------------------------------------------------------------------- devices


def test_good_devices_load() -> None:
    text = (
        f"{DEVICES_HEADER}"
        f"{CHF_1},CHF,Pending,{IS_1},{GPF_1.lower()}\n"
        f"{GPF_1},GPF,Commissioned,,\n"
        f"00-DB-12-34-56-78-AA-03,CHF,InstalledNotCommissioned, {IS_1} ; {GS_1.lower()} ,\n"
    )
    assert parse_devices(text, roles=ROLES) == [
        DeviceRow(
            device_id=CHF_1,
            device_type=DeviceType.CHF,
            smi_status=SmiStatus.PENDING,
            responsible_suppliers=frozenset({IS_1}),
            gpf_id=GPF_1,
        ),
        DeviceRow(
            device_id=GPF_1,
            device_type=DeviceType.GPF,
            smi_status=SmiStatus.COMMISSIONED,
            responsible_suppliers=frozenset(),
            gpf_id=None,
        ),
        DeviceRow(
            device_id="00-DB-12-34-56-78-AA-03",
            device_type=DeviceType.CHF,
            smi_status=SmiStatus.INSTALLED_NOT_COMMISSIONED,
            responsible_suppliers=frozenset({IS_1, GS_1}),
            gpf_id=None,
        ),
    ]


@pytest.mark.parametrize("status", list(SmiStatus))
def test_every_smi_status_is_accepted(status: SmiStatus) -> None:
    [row] = parse_devices(f"{DEVICES_HEADER}{CHF_1},CHF,{status.value},{IS_1},\n")
    assert row.smi_status is status


@pytest.mark.parametrize("device_type", list(DeviceType))
def test_every_device_type_is_accepted(device_type: DeviceType) -> None:
    [row] = parse_devices(f"{DEVICES_HEADER}{CHF_1},{device_type.value},Pending,{IS_1},\n")
    assert row.device_type is device_type


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        (f"{CHF_1},CHF,pending,{IS_1},", "smi_status", "'pending' is not one of Pending"),
        (f"{CHF_1},CHF,Installed,{IS_1},", "smi_status", "InstalledNotCommissioned"),
        (f"{CHF_1},HUB,Pending,{IS_1},", "device_type", "'HUB' is not one of CHF GPF"),
        (f"{CHF_1},CHF,Pending,,", "responsible_suppliers", "a CHF needs at least one"),
        (f"{CHF_1},CHF,Pending,{IS_1};;{GS_1},", "responsible_suppliers", "entry 2"),
        (f"{CHF_1},CHF,Pending,{IS_1};,", "responsible_suppliers", "entry 2"),
        (f"{CHF_1},CHF,Pending,{IS_1};x,", "responsible_suppliers", "'x' is not an EUI-64"),
        (
            f"{CHF_1},CHF,Pending,{IS_1};{IS_1.lower()},",
            "responsible_suppliers",
            "listed twice",
        ),
        (f"{CHF_1},CHF,Pending,{IS_1},nope", "gpf_id", "'nope' is not an EUI-64"),
        (f"{CHF_1},CHF,Pending,{IS_1},{CHF_1}", "gpf_id", "own ID"),
        (f"AA,CHF,Pending,{IS_1},", "device_id", "'AA' is not an EUI-64"),
    ],
)
def test_bad_device_row_is_reported(row: str, field: str, fragment: str) -> None:
    failure = refusal(parse_devices, f"{DEVICES_HEADER}{GPF_1},GPF,Pending,,\n{row}\n")
    assert failure.kind == "devices"
    assert where(failure) == [(3, field)]
    assert fragment in failure.problems[0].message


@pytest.mark.parametrize(
    ("suppliers", "fragment"),
    [
        (UNKNOWN, f"{UNKNOWN} is not a known user"),
        (RSA_1, f"{RSA_1} has role RSA; a responsible supplier must be GS or IS"),
        (f"{IS_1};{ED_1}", f"{ED_1} has role ED"),
    ],
)
def test_responsible_suppliers_are_checked_against_the_registry(
    suppliers: str, fragment: str
) -> None:
    text = f"{DEVICES_HEADER}{CHF_1},CHF,Pending,{suppliers},\n"
    failure = refusal(parse_devices, text, roles=ROLES)
    assert where(failure) == [(2, "responsible_suppliers")]
    assert fragment in failure.problems[0].message
    assert len(parse_devices(text)) == 1


def test_duplicate_device_id_is_reported_and_other_rows_still_checked() -> None:
    text = (
        f"{DEVICES_HEADER}"
        f"{CHF_1},CHF,Pending,{IS_1},\n"
        f"{GPF_1},GPF,Pending,,\n"
        f"{CHF_1.lower()},CHF,Withdrawn,{GS_1},\n"
        f"00-DB-12-34-56-78-AA-09,CHF,Lost,{GS_1},\n"
    )
    failure = refusal(parse_devices, text)
    assert where(failure) == [(4, "device_id"), (5, "smi_status")]
    assert failure.problems[0].message == f"duplicate: {CHF_1} already appears on line 2"


def test_device_header_error_names_missing_column() -> None:
    failure = refusal(parse_devices, "device_id,device_type,smi_status,gpf_id\n")
    assert where(failure) == [(1, None)]
    assert "responsible_suppliers" in failure.problems[0].message


# ---------------------------------------------------------------- documentation


def _examples(markdown: str) -> list[str]:
    return re.findall(r"```csv\n(.*?)```", markdown, flags=re.DOTALL)


def test_described_examples_are_valid_files() -> None:
    """The README examples must load, or the documentation lies."""
    users_text, appts_text, devices_text = _examples(describe_formats())
    users = parse_users(users_text)
    roles = {u.user_id: u.role for u in users}
    assert parse_appointments(appts_text, roles=roles)
    assert parse_devices(devices_text, roles=roles)


@pytest.mark.parametrize(
    "fragment",
    [
        "user_id,role,name,status",
        "rsa_user_id,supplier_user_id,valid_from,valid_to",
        "device_id,device_type,smi_status,responsible_suppliers,gpf_id",
        "IS GS ES ED GT RSA OU",
        "InstalledNotCommissioned",
        "nothing is loaded",
    ],
)
def test_description_mentions(fragment: str) -> None:
    assert fragment in describe_formats()
