"""One set of field rules for a return, whichever way it arrives.

The DUIS reader, the Service Desk form and the client's CSV all read a
return's fields with ``ReturnRequest.from_fields``; the DUIS 5.4 schema is the
reference. Each case is run through the three, and through the schema itself.
"""

from __future__ import annotations

import pytest
from wire_helpers import ACB, DEVICE, GPF, SUPPLIER, fault_request

from hubreturns.dcc.desk import forms
from hubreturns.errors import EnvelopeRejection
from hubreturns.model import RequestId, ReturnRequest, is_xs_datetime
from hubreturns.policy import REQUEST_POLICY
from hubreturns.user.submission import COLUMNS, InvalidReturnsFile, read_returns_csv
from hubreturns.wire.envelope import parse, read_request, validate

#: (UserRefDateTime, valid as xs:dateTime)
DATETIMES = (
    ("2026-11-23T09:30:00Z", True),
    ("2026-11-23T09:30:00", True),  # no offset: the schema allows it
    ("2026-11-23T09:30:00.250+01:00", True),
    ("2024-02-29T00:00:00Z", True),  # a leap day
    ("2026-11-23T24:00:00Z", True),  # XML Schema 1.0: the end of the day
    ("2026-11-23T09:30", False),  # the schema needs seconds
    ("2026-11-23 09:30:00Z", False),  # and a T
    ("2026-11-23", False),
    ("2026-02-29T00:00:00Z", False),  # not a leap year
    ("2026-11-23T09:30:00+15:00", False),  # offsets stop at 14:00
    ("yesterday", False),
)
FAULT = "Fault identified prior to installation"


def _schema_accepts(value: str) -> bool:
    try:
        validate(parse(fault_request(user_ref_datetime=value), REQUEST_POLICY))
    except EnvelopeRejection:
        return False
    return True


def _duis(value: str) -> str | None:
    """The stored value as the DUIS reader reads a schema-valid request; None if refused."""
    root = parse(fault_request(user_ref_datetime=value), REQUEST_POLICY)
    try:
        validate(root)
    except EnvelopeRejection:
        return None
    return read_request(root).user_ref_datetime


def _desk(value: str) -> str | None:
    request, errors = forms.read_return_form(
        {
            "originator": SUPPLIER,
            "device_id": DEVICE,
            "return_type": FAULT,
            "other_device_id": GPF,
            "connection_method": "Hot-shoe",
            "fault_reason": "Damaged case",
            "user_ref_datetime": value,
        },
        target=ACB,
        counter=1,
    )
    if request is None:
        assert "is not a date and time" in errors["user_ref_datetime"]
        return None
    return request.user_ref_datetime


def _csv(value: str) -> str | None:
    row = {name: "" for name in COLUMNS} | {
        "variant": "8.14.3",
        "device_id": DEVICE,
        "return_type": FAULT,
        "other_device_id": GPF,
        "connection_method": "Hot-shoe",
        "fault_reason": "Damaged case",
        "user_ref_datetime": value,
    }
    text = ",".join(COLUMNS) + "\n" + ",".join(row[name] for name in COLUMNS) + "\n"
    try:
        (read,) = read_returns_csv(text)
    except InvalidReturnsFile as exc:
        problem = str(exc)
    else:
        return read.values["user_ref_datetime"]
    assert "user_ref_datetime: " in problem
    return None


@pytest.mark.parametrize(("value", "valid"), DATETIMES)
def test_user_ref_datetime_follows_the_schema_in_every_reader(value: str, valid: bool) -> None:
    assert _schema_accepts(value) is valid
    assert is_xs_datetime(value) is valid
    expected = value if valid else None
    assert _duis(value) == expected
    assert _desk(value) == expected
    assert _csv(value) == expected


def _fields(**changes: str | None) -> dict[str, str | None]:
    return {
        "variant": "8.14.3",
        "device_id": DEVICE,
        "return_type": FAULT,
        "other_device_id": GPF,
        "connection_method": "Hot-shoe",
        "fault_reason": "Damaged case",
    } | changes


RID = RequestId(originator=SUPPLIER, target=ACB, counter=1)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"variant": "8.14.5"}, "variant", "is not 8.14.3 or 8.14.4"),
        ({"device_id": None}, "device_id", "Device ID is required."),
        ({"device_id": "zz"}, "device_id", "is not an EUI-64"),
        ({"return_type": "No Fault Return (general)"}, "return_type", "not an 8.14.3 return"),
        ({"variant": None, "return_type": "Dropped"}, "return_type", "8.14.3 or 8.14.4 return"),
        ({"fault_reason": None}, "fault_reason", "is required for an 8.14.3"),
        ({"connection_method": "Glue"}, "connection_method", "is not a connection method"),
        ({"incident_reference": "X" * 16}, "incident_reference", "At most 15 characters"),
        ({"colour": "red"}, "colour", "is not a field of 8.14.3 or 8.14.4"),
        (
            {"variant": "8.14.4", "return_type": "Lost or Stolen Hub"},
            "other_device_id",
            "must be empty for 8.14.4",
        ),
    ],
)
def test_from_fields_names_each_problem(
    changes: dict[str, str | None], field: str, words: str
) -> None:
    read = ReturnRequest.from_fields(_fields(**changes), request_id=RID)
    assert isinstance(read, list)
    assert [p.message for p in read if p.field == field and words in p.message], read


def test_from_fields_reads_the_variant_from_the_return_type_and_spells_choices_as_duis() -> None:
    read = ReturnRequest.from_fields(
        _fields(variant=None, connection_method="hot-SHOE", user_ref_id=""), request_id=RID
    )
    assert isinstance(read, ReturnRequest)
    assert read.kind.variant == "8.14.3"
    assert read.connection_method == "Hot-shoe"
    assert read.user_ref_id == ""  # given empty, kept empty (as DUIS signed it)
    assert read.incident_reference is None  # absent
