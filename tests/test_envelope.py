"""Envelope layer: hardened parse (MALFORMED), DUIS schema (SCHEMA) and typed reading."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree
from wire_helpers import (
    ACB,
    DEVICE,
    GPF,
    SUPPLIER,
    VECTORS,
    fault_body,
    fault_request,
    load_signer,
    no_fault_request,
    request_xml,
    sign_bytes,
)

from hubreturns.codes import Reason
from hubreturns.errors import EnvelopeRejection
from hubreturns.model import (
    ConnectionMethod,
    FaultReason,
    RequestId,
    ReturnKind,
    ReturnRequest,
)
from hubreturns.policy import DSP_RESPONSE_POLICY, REQUEST_POLICY
from hubreturns.wire.envelope import parse, peek_header, read_request, validate

MALFORMED, SCHEMA = Reason.MALFORMED, Reason.SCHEMA


def accept(data: bytes) -> ReturnRequest:
    root = parse(data, REQUEST_POLICY)
    validate(root)
    return read_request(root)


def refusal(data: bytes) -> EnvelopeRejection:
    with pytest.raises(EnvelopeRejection) as caught:
        accept(data)
    return caught.value


# ------------------------------------------------------------------ accepted


def test_fault_return_with_every_field_reads_back() -> None:
    data = fault_request(
        counter=18446744073709551615,
        return_type="Fault identified post installation",
        user_ref_datetime="2025-01-02T03:04:05Z",
        user_ref_id="REF-1",
        other_device_id=GPF.lower(),
        incident_reference="INC123",
        connection_method="Cradle",
        fault_reason="SM WAN Fault",
        additional_information="caf\u00e9 & <ok>",
    )
    assert accept(data) == ReturnRequest(
        request_id=RequestId(originator=SUPPLIER, target=ACB, counter=2**64 - 1),
        command_variant=8,
        service_reference="8.14",
        kind=ReturnKind.FAULT,
        device_id=DEVICE,
        return_type="Fault identified post installation",
        user_ref_datetime="2025-01-02T03:04:05Z",
        user_ref_id="REF-1",
        incident_reference="INC123",
        additional_information="caf\u00e9 & <ok>",
        other_device_id=GPF,
        connection_method=ConnectionMethod.CRADLE,
        fault_reason=FaultReason.SM_WAN,
    )


def test_minimal_fault_return_reads_back() -> None:
    request = accept(fault_request())
    assert request.kind is ReturnKind.FAULT
    assert request.originator == SUPPLIER
    assert (request.other_device_id, request.connection_method, request.fault_reason) == (
        GPF,
        ConnectionMethod.HOT_SHOE,
        FaultReason.DAMAGED_CASE,
    )
    assert request.user_ref_id is None
    assert request.additional_information is None


@pytest.mark.parametrize(
    "return_type",
    [
        "No Fault Return (general)",
        "No Fault Return (non-dom opt out)",
        "No Fault Return (dual supplier HAN variant replacement)",
        "No Fault Return (SM WAN variant replacement requested by DCC)",
        "Lost or Stolen Hub",
    ],
)
def test_no_fault_return_reads_back(return_type: str) -> None:
    data = no_fault_request(
        counter=7,
        return_type=return_type,
        user_ref_id="U1",
        incident_reference="I-9",
        additional_information="left on site",
    )
    assert accept(data) == ReturnRequest(
        request_id=RequestId(originator=SUPPLIER, target=ACB, counter=7),
        command_variant=8,
        service_reference="8.14",
        kind=ReturnKind.NO_FAULT,
        device_id=DEVICE,
        return_type=return_type,
        user_ref_id="U1",
        incident_reference="I-9",
        additional_information="left on site",
    )


@pytest.mark.parametrize(
    "reason",
    [
        "Damaged case",
        "Damaged Connector",
        "Illegal interference or missing seals",
        "Environmental conditions exceeded",
        "SM WAN Fault",
        "SMHAN Interface Fault",
        "LED Fault",
        "Aerial fault",
        "Manufacturing defect",
    ],
)
def test_every_fault_reason_is_read(reason: str) -> None:
    assert accept(fault_request(fault_reason=reason)).fault_reason == FaultReason(reason)


def test_signed_request_parses_validates_and_reads() -> None:
    signed = sign_bytes(no_fault_request(), load_signer("xml-sign-90B3D51F30010000-ds"))
    assert accept(signed).kind is ReturnKind.NO_FAULT


def test_document_without_xml_declaration_is_accepted() -> None:
    assert accept(fault_request(declaration=False)).kind is ReturnKind.FAULT


def test_read_request_takes_the_first_of_repeated_children() -> None:
    # Schema validation refuses repeats; read_request on its own still picks the
    # first, as ElementTree's find() does, in the header and in the body.
    data = fault_request(counter=5, additional_information="first").replace(
        b"</sr:RequestID>",
        f"</sr:RequestID><sr:RequestID>{SUPPLIER}:{ACB}:6</sr:RequestID>".encode(),
    )
    data = data.replace(
        b"</sr:CHFFaultReturn>",
        b"<sr:AdditionalInformation>second</sr:AdditionalInformation></sr:CHFFaultReturn>",
    )
    request = read_request(parse(data, REQUEST_POLICY))
    assert request.request_id.counter == 5
    assert request.additional_information == "first"


def test_read_request_reads_an_empty_element_as_empty_text() -> None:
    data = fault_request(user_ref_id="@@").replace(b">@@<", b"><")
    request = read_request(parse(data, REQUEST_POLICY))
    assert request.user_ref_id == ""
    assert request.incident_reference is None


@pytest.mark.parametrize(
    "data",
    [
        request_xml(body="").replace(b"<sr:Body></sr:Body>", b""),
        request_xml(body=""),
        request_xml(body=fault_body())
        .replace(b"<sr:Header>", b"<sr:Head>")
        .replace(b"</sr:Header>", b"</sr:Head>"),
    ],
    ids=["no body", "empty body", "no header"],
)
def test_read_request_without_header_or_body_is_e31(data: bytes) -> None:
    with pytest.raises(EnvelopeRejection) as caught:
        read_request(parse(data, REQUEST_POLICY))
    assert caught.value.code is SCHEMA
    assert caught.value.message == "sr:Header and one sr:Body child are required"


def test_body_exactly_at_the_size_limit_is_parsed() -> None:
    data = fault_request()
    policy = replace(REQUEST_POLICY, max_body_bytes=len(data))
    assert parse(data, policy).tag.endswith("Request")


# ------------------------------------------------------------------ MALFORMED: parse


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
    b'<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">'
    b'<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">'
    b'<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">'
    b'<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">'
    b'<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">'
    b'<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>'
    b"<lolz>&lol9;</lolz>"
)


def _with_doctype(doctype: str, *, info: str = "x") -> bytes:
    data = fault_request(declaration=False, additional_information="@@")
    return ('<?xml version="1.0" encoding="UTF-8"?>' + doctype).encode() + data.replace(
        b"@@", info.encode()
    )


MALFORMED_CASES: dict[str, tuple[bytes, str]] = {
    "empty body": (b"", "empty"),
    "invalid utf-8": (
        fault_request(additional_information="@@").replace(b"@@", b"caf\xe9"),
        "not valid UTF-8",
    ),
    "overlong utf-8 sequence": (
        fault_request(additional_information="@@").replace(b"@@", b"\xc0\xaf"),
        "not valid UTF-8",
    ),
    "declared latin-1": (
        fault_request(declaration=False).replace(
            b"<sr:Request", b'<?xml version="1.0" encoding="ISO-8859-1"?><sr:Request', 1
        ),
        "declared encoding",
    ),
    "declared utf-16 on utf-8 bytes": (
        fault_request(declaration=False).replace(
            b"<sr:Request", b'<?xml version="1.0" encoding="UTF-16"?><sr:Request', 1
        ),
        "",
    ),
    "doctype": (_with_doctype("<!DOCTYPE sr:Request>"), "DOCTYPE"),
    "internal entity": (
        _with_doctype('<!DOCTYPE sr:Request [<!ENTITY e "hidden">]>', info="&e;"),
        "",
    ),
    "external entity": (
        _with_doctype(
            '<!DOCTYPE sr:Request [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', info="&xxe;"
        ),
        "",
    ),
    "parameter entity": (
        _with_doctype('<!DOCTYPE sr:Request [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x"> %p;]>'),
        "",
    ),
    "billion laughs": (BILLION_LAUGHS, ""),
    "processing instruction inside root": (
        fault_request().replace(b"<sr:Header>", b"<?evil x?><sr:Header>"),
        "processing instruction inside",
    ),
    "processing instruction before root": (
        fault_request(declaration=False).replace(
            b"<sr:Request", b"<?xml-stylesheet href='x.xsl'?><sr:Request", 1
        ),
        "processing instruction outside the root",
    ),
    "processing instruction after root": (
        fault_request() + b"<?evil x?>",
        "processing instruction outside the root",
    ),
    "comment inside a text node": (
        fault_request(additional_information="@@").replace(b"@@", b"visible<!-- hidden -->tail"),
        "comment inside",
    ),
    "comment between elements": (
        fault_request().replace(b"<sr:Body>", b"<sr:Body><!-- c -->"),
        "comment inside",
    ),
    "comment after root": (fault_request() + b"<!-- c -->", "comment outside the root"),
    "truncated document": (fault_request()[:-30], "not well-formed"),
    "two root elements": (fault_request() + fault_request(declaration=False), "not well-formed"),
    "not xml": (b"hello", "not well-formed"),
}


@pytest.mark.parametrize(
    ("data", "fragment"), list(MALFORMED_CASES.values()), ids=list(MALFORMED_CASES)
)
def test_malformed_documents_are_refused_as_malformed(data: bytes, fragment: str) -> None:
    rejection = refusal(data)
    assert rejection.code is MALFORMED
    assert fragment in rejection.message
    assert rejection.http_status == 400


def test_doctype_refusal_names_the_doctype() -> None:
    for doctype in (
        "<!DOCTYPE sr:Request>",
        '<!DOCTYPE sr:Request [<!ENTITY e "hidden">]>',
        '<!DOCTYPE sr:Request [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE sr:Request SYSTEM "http://127.0.0.1:9/duis.dtd">',
    ):
        assert refusal(_with_doctype(doctype)).message == "a DOCTYPE is not allowed"


def test_over_size_body_is_refused_before_parsing() -> None:
    data = fault_request(additional_information="a" * 100)
    policy = replace(REQUEST_POLICY, max_body_bytes=len(data) - 1)
    with pytest.raises(EnvelopeRejection) as caught:
        parse(data, policy)
    assert caught.value.code is MALFORMED
    assert caught.value.message == (
        f"the body has {len(data)} bytes, over the {len(data) - 1} limit"
    )


def test_default_size_limit_is_64_kib() -> None:
    padding = b" " * (64 * 1024)
    data = fault_request().replace(b"<sr:Header>", b"<sr:Header>" + padding)
    rejection = refusal(data)
    assert rejection.code is MALFORMED
    assert "over the 65536 limit" in rejection.message
    # Not the size limit of a DSP response: the same bytes are under 1 MiB.
    assert parse(data, DSP_RESPONSE_POLICY) is not None


def test_size_limit_counts_bytes_not_characters() -> None:
    text = "\u20ac" * 50  # 3 bytes each in UTF-8
    data = fault_request(additional_information=text)
    policy = replace(REQUEST_POLICY, max_body_bytes=len(data.decode()) + 10)
    with pytest.raises(EnvelopeRejection, match="over the"):
        parse(data, policy)


# ------------------------------------------------------------------ XXE: no file is read


class _Inotify:
    """Linux inotify watch on one file: did anyone open or read it?"""

    IN_ACCESS = 0x001
    IN_OPEN = 0x020
    IN_NONBLOCK = 0o4000

    def __init__(self, path: Path) -> None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name, use_errno=True)
        self.fd = libc.inotify_init1(self.IN_NONBLOCK)
        if self.fd < 0:
            pytest.skip("inotify is not available")
        wd = libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN | self.IN_ACCESS)
        if wd < 0:
            os.close(self.fd)
            pytest.skip("inotify watch failed")

    def events(self) -> bytes:
        try:
            return os.read(self.fd, 4096)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self.fd)


@contextmanager
def watched(path: Path) -> Iterator[_Inotify]:
    if not hasattr(os, "eventfd") or not Path("/proc/sys/fs/inotify").exists():
        pytest.skip("needs Linux inotify")
    watch = _Inotify(path)
    try:
        yield watch
    finally:
        watch.close()


def test_external_entity_is_refused_without_opening_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    data = _with_doctype(
        f'<!DOCTYPE sr:Request [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>', info="&xxe;"
    )
    with watched(secret) as watch:
        rejection = refusal(data)
        assert watch.events() == b"", "the parser opened the entity's file"
        # Positive control: the watch does see an open.
        assert secret.read_text() == "TOP-SECRET-MARKER"
        assert watch.events() != b""
    assert rejection.code is MALFORMED
    assert "TOP-SECRET-MARKER" not in str(rejection)


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE sr:Request SYSTEM "{uri}">',
        '<!DOCTYPE sr:Request PUBLIC "-//X//EN" "{uri}">',
        '<!DOCTYPE sr:Request [<!ENTITY % p SYSTEM "{uri}"> %p;]>',
    ],
    ids=["system dtd", "public dtd", "parameter entity"],
)
def test_external_dtd_is_refused_without_opening_the_file(tmp_path: Path, doctype: str) -> None:
    # Regression: with collect_ids=False libxml2 loaded the external DTD subset.
    dtd = tmp_path / "evil.dtd"
    dtd.write_text('<!ENTITY e "x">')
    data = _with_doctype(doctype.format(uri=dtd.as_uri()))
    with watched(dtd) as watch:
        rejection = refusal(data)
        assert watch.events() == b"", "the parser opened the DTD file"
    assert rejection.code is MALFORMED


def test_xxe_response_vector_is_refused_without_reading_etc_passwd() -> None:
    data = (VECTORS / "xxe-response.xml").read_bytes()
    with watched(Path("/etc/passwd")) as watch:
        for policy in (REQUEST_POLICY, DSP_RESPONSE_POLICY):
            with pytest.raises(EnvelopeRejection) as caught:
                parse(data, policy)
            assert caught.value.code is MALFORMED
            assert caught.value.message == "a DOCTYPE is not allowed"
        assert watch.events() == b""


# ------------------------------------------------------------------ SCHEMA: schema and variant


E31_CASES: dict[str, tuple[bytes, str]] = {
    "wrong root sr:Response": (fault_request(root="Response"), "not sr:Request"),
    "root in no namespace": (
        fault_request().replace(b"sr:Request", b"Request"),
        "not sr:Request",
    ),
    "bad DeviceID EUI": (fault_request(device_id="00-DB-12-34-56-78-90"), "DeviceID"),
    "non-hex DeviceID": (fault_request(device_id="00-DB-12-34-56-78-90-ZZ"), "DeviceID"),
    "bad OtherDeviceID EUI": (fault_request(other_device_id="not-an-eui"), "OtherDeviceID"),
    "bad RequestID": (fault_request(request_id="90-B3-D5-1F-30-01-00-00:1000"), "RequestID"),
    "negative counter": (fault_request(counter="-1"), "RequestID"),
    "missing CHFFaultReason": (fault_request(fault_reason=None), "CHFFaultReason"),
    "missing OtherDeviceID": (fault_request(other_device_id=None), "CHFConnectionMethod"),
    "missing DeviceID": (fault_request(device_id=None), "CHFFaultReturnType"),
    "missing no-fault type": (no_fault_request(return_type=None), "CHFNoFaultReturn"),
    "unknown fault reason": (fault_request(fault_reason="Dropped it"), "CHFFaultReason"),
    "unknown fault return type": (fault_request(return_type="Fault"), "CHFFaultReturnType"),
    "unknown connection method": (fault_request(connection_method="Glue"), "CHFConnectionMethod"),
    "unknown no-fault type": (no_fault_request(return_type="Bored"), "CHFNoFaultReturnType"),
    "duplicate DeviceID": (
        fault_request().replace(
            f"<sr:DeviceID>{DEVICE}</sr:DeviceID>".encode(),
            f"<sr:DeviceID>{DEVICE}</sr:DeviceID><sr:DeviceID>{DEVICE}</sr:DeviceID>".encode(),
        ),
        "DeviceID",
    ),
    "duplicate body": (
        request_xml(body=fault_body() + fault_body()),
        "CHFFaultReturn",
    ),
    "IncidentReference over 15 characters": (
        fault_request(incident_reference="X" * 16),
        "IncidentReference",
    ),
    "AdditionalInformation over 200 characters": (
        fault_request(additional_information="X" * 201),
        "AdditionalInformation",
    ),
    "unknown element in body": (
        fault_request().replace(
            b"</sr:CHFFaultReturn>", b"<sr:Extra>1</sr:Extra></sr:CHFFaultReturn>"
        ),
        "Extra",
    ),
    "missing schemaVersion": (
        fault_request().replace(b' schemaVersion="5.4"', b""),
        "schemaVersion",
    ),
    "variant 8.14.4 with a CHFFaultReturn body": (
        fault_request(variant="8.14.4"),
        "variant 8.14.4 does not match body CHFFaultReturn",
    ),
    "variant 8.14.3 with a CHFNoFaultReturn body": (
        no_fault_request(variant="8.14.3"),
        "variant 8.14.3 does not match body CHFNoFaultReturn",
    ),
    "ServiceReference 8.11 with an 8.14.3 body": (
        fault_request(service_reference="8.11"),
        "ServiceReference 8.11",
    ),
    "8.14.1 body": (
        request_xml(
            variant="8.14.1",
            body=(
                f"<sr:CHFInstallSuccessSMWAN><sr:DeviceID>{DEVICE}</sr:DeviceID>"
                "<sr:CHFInstallType>New CHF Install</sr:CHFInstallType>"
                "<sr:MPxN>1000999888</sr:MPxN><sr:AerialInstall>true</sr:AerialInstall>"
                "<sr:CHFLocation>Basement or Cellar</sr:CHFLocation>"
                "</sr:CHFInstallSuccessSMWAN>"
            ),
        ),
        "service request variant 8.14.1 is not served here",
    ),
    "8.14.3 variant with an 8.14.1 body": (
        request_xml(
            variant="8.14.3",
            body=(
                f"<sr:CHFInstallSuccessSMWAN><sr:DeviceID>{DEVICE}</sr:DeviceID>"
                "<sr:CHFInstallType>New CHF Install</sr:CHFInstallType>"
                "<sr:MPxN>1000999888</sr:MPxN><sr:AerialInstall>true</sr:AerialInstall>"
                "<sr:CHFLocation>Basement or Cellar</sr:CHFLocation>"
                "</sr:CHFInstallSuccessSMWAN>"
            ),
        ),
        "does not match body CHFInstallSuccessSMWAN",
    ),
}


@pytest.mark.parametrize(("data", "fragment"), list(E31_CASES.values()), ids=list(E31_CASES))
def test_schema_and_variant_failures_are_refused_with_e31(data: bytes, fragment: str) -> None:
    parse(data, REQUEST_POLICY)  # well-formed: not an MALFORMED
    rejection = refusal(data)
    assert rejection.code is SCHEMA
    assert fragment in rejection.message
    assert rejection.http_status == 400


def test_schema_error_message_names_the_line() -> None:
    rejection = refusal(fault_request(fault_reason="Dropped it"))
    assert rejection.message.startswith("line 1: ")


def test_dcc_example_templates_with_comments_are_refused() -> None:
    folder = Path(__file__).parent / "data" / "examples"  # copied from shared/duis/examples
    templates = sorted(folder.glob("8.14.[34]_*.XML"))
    assert len(templates) == 2
    for path in templates:
        with pytest.raises(EnvelopeRejection) as caught:
            parse(path.read_bytes(), REQUEST_POLICY)
        # The templates carry a comment inside ds:Signature.
        assert caught.value.code is MALFORMED, path.name
        assert "comment inside" in caught.value.message


# ------------------------------------------------------------------ peek_header


def test_peek_header_echoes_a_readable_request_id() -> None:
    root = parse(no_fault_request(counter=42), REQUEST_POLICY)
    echo = peek_header(root)
    assert echo.request_id == RequestId(originator=SUPPLIER, target=ACB, counter=42)
    assert (echo.service_reference, echo.service_reference_variant) == ("8.14", "8.14.4")


@pytest.mark.parametrize(
    "root",
    [
        None,
        etree.fromstring(b"<x/>"),
        etree.fromstring(fault_request(request_id="garbage", variant="9.9")),
    ],
    ids=["nothing", "other root", "garbage header"],
)
def test_peek_header_falls_back_without_raising(root: etree._Element | None) -> None:
    echo = peek_header(root)
    assert echo.request_id is None
    assert (echo.service_reference, echo.service_reference_variant) == ("8.14", "8.14.3")
