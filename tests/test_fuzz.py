"""Property-based tests and a short fuzz run of the full request path.

* ``decide``: refusals for identity, replay and addressing never depend on the
  device; a used counter can never be accepted.
* ``parse``/``validate``/``read_request``: total on any bytes (a value or a
  ``Rejection``, nothing else); a schema-valid request reads back exactly.
* ``Processor.handle_duis`` on fuzzed bytes: returns, never raises, answers
  with a signed response carrying a known code and an HTTP status below 500.
* ``scripts/fuzz`` itself runs a few thousand inputs (the documented long run
  is ``scripts/fuzz --inputs 1000000``).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from test_rules import any_facts
from wire_helpers import ACB, SUPPLIER

from hubreturns.codes import Reason, ResponseCode
from hubreturns.dcc.rules import DeviceFacts, Facts, decide
from hubreturns.errors import Rejection
from hubreturns.model import (
    COUNTER_MAX,
    ConnectionMethod,
    DeviceType,
    FaultReason,
    FaultReturnType,
    NoFaultReturnType,
    RequestId,
    ReturnKind,
    ReturnRequest,
    SmiStatus,
)
from hubreturns.policy import REQUEST_POLICY
from hubreturns.wire.envelope import parse, read_request, validate
from hubreturns.wire.request import build_request

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fuzz"))
import harness as fuzz_harness  # noqa: E402

C = ResponseCode
R = Reason
#: Rows decided before the device is looked at (rules 1-7).
DEVICE_BLIND = {R.WRONG_TARGET, C.E1, C.E3, C.E2, R.REPLAY, C.E12, C.E13}

devices = st.none() | st.builds(
    DeviceFacts,
    device_id=st.just("00-DB-12-34-56-78-90-A2"),
    device_type=st.sampled_from(list(DeviceType)),
    smi_status=st.sampled_from(list(SmiStatus)),
    responsible_suppliers=st.frozensets(st.sampled_from([SUPPLIER, "90-B3-D5-1F-30-02-00-00"])),
    gpf_id=st.none() | st.just("00-DB-12-34-56-78-90-A0"),
    has_open_return=st.booleans(),
)


# ------------------------------------------------------------------ decide


@settings(max_examples=300, deadline=None)
@given(any_facts, devices)
def test_identity_and_replay_refusals_never_depend_on_the_device(
    facts: Facts, device: DeviceFacts | None
) -> None:
    decision = decide(facts)
    if decision.code in DEVICE_BLIND:
        assert decide(replace(facts, device=device)).code is decision.code


@settings(max_examples=300, deadline=None)
@given(any_facts)
def test_a_used_counter_is_never_accepted(facts: Facts) -> None:
    replayed = replace(facts, last_counter=facts.request.request_id.counter)
    assert decide(replayed).code is not C.I99
    if decide(facts).code is C.I99:
        assert decide(replayed).code is R.REPLAY


# ------------------------------------------------------------------ parsing


def _read(data: bytes) -> ReturnRequest:
    root = parse(data, REQUEST_POLICY)
    validate(root)
    return read_request(root)


def _refusal(data: bytes) -> ResponseCode | None:
    """The code ``data`` is refused with, or None when it reads; anything else propagates."""
    try:
        _read(data)
    except Rejection as refusal:
        return refusal.code
    return None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_parse_of_any_bytes_is_a_document_or_a_rejection(data: bytes) -> None:
    assert _refusal(data) in (None, R.MALFORMED, R.SCHEMA)


SAMPLE = etree.tostring(
    build_request(
        ReturnRequest(
            request_id=RequestId(originator=SUPPLIER, target=ACB, counter=1),
            command_variant=8,
            service_reference="8.14",
            kind=ReturnKind.FAULT,
            device_id="00-DB-12-34-56-78-90-A2",
            return_type=FaultReturnType.PRE_INSTALL.value,
            other_device_id="00-DB-12-34-56-78-90-A0",
            connection_method=ConnectionMethod.CRADLE,
            fault_reason=FaultReason.LED,
        )
    )
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(SAMPLE)), st.integers(0, 8), st.binary(max_size=12)),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_documents_are_read_or_rejected(edits: list[tuple[int, int, bytes]]) -> None:
    data = bytearray(SAMPLE)
    for at, drop, insert in edits:
        data[at : at + drop] = insert
    assert _refusal(bytes(data)) in (None, R.MALFORMED, R.SCHEMA)


euis = st.binary(min_size=8, max_size=8).map(lambda raw: "-".join(f"{b:02X}" for b in raw))
texts = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Cn"), blacklist_characters="\ufeff")
    | st.sampled_from("\t\n "),
    max_size=15,
)


@st.composite
def valid_requests(draw: st.DrawFn) -> ReturnRequest:
    kind = draw(st.sampled_from(list(ReturnKind)))
    fault = kind is ReturnKind.FAULT
    return ReturnRequest(
        request_id=RequestId(
            originator=draw(euis), target=draw(euis), counter=draw(st.integers(0, COUNTER_MAX))
        ),
        command_variant=draw(st.integers(1, 8)),
        service_reference="8.14",
        kind=kind,
        device_id=draw(euis),
        return_type=draw(st.sampled_from(list(FaultReturnType if fault else NoFaultReturnType))),
        user_ref_id=draw(st.none() | texts),
        incident_reference=draw(st.none() | texts),
        additional_information=draw(st.none() | texts),
        other_device_id=draw(euis) if fault else None,
        connection_method=draw(st.sampled_from(list(ConnectionMethod))) if fault else None,
        fault_reason=draw(st.sampled_from(list(FaultReason))) if fault else None,
    )


@settings(max_examples=150, deadline=None)
@given(valid_requests())
def test_a_schema_valid_request_reads_back_exactly(request: ReturnRequest) -> None:
    data = etree.tostring(build_request(request), xml_declaration=True, encoding="UTF-8")
    assert _read(data) == request


# ------------------------------------------------------------------ the full path


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> fuzz_harness.Harness:
    return fuzz_harness.Harness(tmp_path_factory.mktemp("fuzz"))


def _seeded_inputs() -> st.SearchStrategy[tuple[int, list[tuple[int, int, bytes]]]]:
    """(which seed, edits): resolved against the harness's signed seeds in the test."""
    insert = st.binary(max_size=16) | st.sampled_from(fuzz_harness.TOKENS)
    edit = st.tuples(st.integers(0, 10**6), st.integers(0, 16), insert)
    return st.tuples(st.integers(0, 40), st.lists(edit, min_size=1, max_size=4))


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.one_of(
        st.binary(max_size=512).map(lambda b: ("raw", b, [])),
        _seeded_inputs().map(lambda p: ("seed", p[0], p[1])),
        st.lists(texts, max_size=17).map(
            lambda words: ("structured", "\x1f".join(words).encode(), [])
        ),
    ),
    st.integers(0, 255),
)
def test_handle_duis_on_fuzzed_bytes_answers_signed_and_below_500(
    target: fuzz_harness.Harness, spec: tuple[str, object, list[tuple[int, int, bytes]]], first: int
) -> None:
    shape, value, edits = spec
    if shape == "raw":
        assert isinstance(value, bytes)
        data = bytes([first & 0x7F]) + value
    elif shape == "structured":
        assert isinstance(value, bytes)
        data = bytes([first | 0x80]) + value
    else:
        assert isinstance(value, int)
        body = bytearray(target.seeds[value % len(target.seeds)])
        for at, drop, insert in edits:
            at %= len(body) + 1
            body[at : at + drop] = insert
        data = bytes([first & 0x7F]) + bytes(body)
    target.one(data)  # asserts the property; any exception fails the test


def test_the_fuzz_script_runs_a_short_campaign() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "fuzz_request.py"),
            "--inputs",
            "2000",
            "--engine",
            "random",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2000 inputs in" in done.stdout
    assert "no unhandled exception" in done.stdout
