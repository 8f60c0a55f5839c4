"""``hubreturns submit`` / ``sign`` / ``verify`` through the CLI against the real HTTP
service (SQLite and PostgreSQL), with the database checked afterwards; the counter
state file on its own, across invocations, threads and processes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import typer
from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result
from wire_helpers import xmlsec_verify

from hubreturns.cli import app
from hubreturns.codes import CODE_INFO, DEFAULT_PROFILE, Reason, ResponseCode, Verdict
from hubreturns.dcc.config import Settings
from hubreturns.dcc.store.models import AuditEntry, ReturnRecord
from hubreturns.extensions import register_commands
from hubreturns.model import RequestId, ReturnKind, ReturnRequest
from hubreturns.user.scenarios import DemoWorld
from hubreturns.user.submission import (
    ClientError,
    CounterStore,
    Submitter,
    default_dcc_certificates,
    load_signer,
)
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.request import build_request
from hubreturns.wire.response import build_response

runner = CliRunner()

IS, GS, RSA = "90-B3-D5-1F-30-01-00-00", "90-B3-D5-1F-30-02-00-00", "00-DB-12-34-56-78-00-04"
ED, GS_SUSPENDED, UNREGISTERED = (
    "00-DB-12-34-56-78-00-06",
    "00-DB-12-34-56-78-00-07",
    "00-DB-12-34-56-78-00-08",
)
HEADER = (
    "variant,device_id,return_type,other_device_id,connection_method,fault_reason,"
    "user_ref_datetime,user_ref_id,incident_reference,additional_information\n"
)
PRE_INSTALL = "Fault identified prior to installation"


def hub(n: str) -> str:
    return f"00-DB-12-34-56-78-90-{n}"


def _app() -> typer.Typer:
    if not any(c.name == "submit" for c in app.registered_commands):
        register_commands(app)
    return app


def creds(world: DemoWorld, who: str) -> list[str]:
    stem = who.replace("-", "").lower()
    return [
        "--key",
        str(world.pki / f"{stem}.key.pem"),
        "--cert",
        str(world.pki / f"{stem}.cert.pem"),
    ]


def fault(device: str, gpf: str) -> list[str]:
    return [
        "--variant", "8.14.3", "--device", device, "--return-type", PRE_INSTALL,
        "--other-device", gpf, "--connection-method", "Hot-shoe",
        "--fault-reason", "Damaged case",
    ]  # fmt: skip


def no_fault(device: str) -> list[str]:
    return ["--variant", "8.14.4", "--device", device, "--return-type", "No Fault Return (general)"]


def submit(server: str, world: DemoWorld, who: str, state: Path, *args: str) -> Result:
    return runner.invoke(
        _app(),
        ["submit", *creds(world, who), "--url", server, "--state-dir", str(state), *args],
    )


# ----------------------------------------------------------------------- single


def test_single_submit_is_accepted_and_recorded(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    result = submit(
        server, world, IS, tmp_path, *fault(hub("A2"), hub("A0")), "--user-ref-id", "job-1"
    )
    assert result.exit_code == 0, result.output
    assert "I99" in result.output
    assert CODE_INFO[ResponseCode.I99].meaning in result.output
    with seeded() as session:
        (record,) = session.scalars(select(ReturnRecord)).all()
    assert record.originator == IS
    assert record.device_id == hub("A2")
    assert record.fault_reason == "Damaged case"
    assert record.request_id in result.output


def test_every_refusal_prints_code_meaning_and_hint(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    accepted = submit(server, world, IS, tmp_path, *no_fault(hub("B2")))
    assert accepted.exit_code == 0, accepted.output
    cases: list[tuple[Verdict, str, list[str]]] = [
        (Reason.OPEN_RETURN, IS, no_fault(hub("B2"))),
        (ResponseCode.E4, GS, no_fault(hub("F2"))),
        (ResponseCode.E5, RSA, fault(hub("D2"), hub("D0"))),
        (ResponseCode.E19, IS, no_fault(hub("99"))),
        (ResponseCode.E11, IS, no_fault(hub("A1"))),
        (Reason.GPF_MISMATCH, IS, fault(hub("F2"), hub("B0"))),
        (ResponseCode.E2, ED, no_fault(hub("F2"))),
        (ResponseCode.E3, GS_SUSPENDED, no_fault(hub("E2"))),
        (ResponseCode.E1, UNREGISTERED, no_fault(hub("F2"))),
        (Reason.UNKNOWN_CERTIFICATE, "is-unloaded", no_fault(hub("F2"))),
        (Reason.UNUSABLE_CERTIFICATE, "is-expired", no_fault(hub("F2"))),
        (Reason.WRONG_TARGET, IS, [*no_fault(hub("F2")), "--target", "00-DB-12-34-56-78-FF-FF"]),
    ]
    wrong: list[str] = []
    for code, who, args in cases:
        result = submit(server, world, who, tmp_path / who, *args)
        info = CODE_INFO[code]
        if result.exit_code != 1 or not all(
            text in result.output for text in (DEFAULT_PROFILE.code(code), info.meaning, info.hint)
        ):
            wrong.append(f"{code}: exit {result.exit_code}\n{result.output}")
    assert not wrong, "\n".join(wrong)
    with seeded() as session:
        codes = [a.code for a in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
        assert codes == ["I99"] + [DEFAULT_PROFILE.code(c) for c, _, _ in cases]
        assert len(session.scalars(select(ReturnRecord)).all()) == 1


def _audit(seeded: sessionmaker[Session]) -> list[tuple[str, str]]:
    with seeded() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        return [(a.request_id, a.code) for a in rows]


def test_a_state_file_behind_the_service_still_gets_i99(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    """The reported failure: a state file restored from an old backup. Counters
    follow the clock, so the client is never behind; no refusal, one row each."""
    assert submit(server, world, IS, tmp_path, *no_fault(hub("B2"))).exit_code == 0
    state = CounterStore(tmp_path).path(IS)
    state.write_text(json.dumps({"originator": IS, "last_counter": 5}))
    result = submit(server, world, IS, tmp_path, *no_fault(hub("F2")))
    assert result.exit_code == 0, result.output
    audit = _audit(seeded)
    assert [code for _, code in audit] == ["I99", "I99"]
    first, second = (RequestId.parse(request_id).counter for request_id, _ in audit)
    assert second > first > 5
    assert json.loads(state.read_text())["last_counter"] == second


def test_an_explicit_counter_behind_is_refused_once_with_a_fitting_hint(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    assert submit(server, world, IS, tmp_path, *no_fault(hub("B2"))).exit_code == 0
    result = submit(server, world, IS, tmp_path, *no_fault(hub("F2")), "--counter", "5")
    assert result.exit_code == 1
    replay = CODE_INFO[Reason.REPLAY]
    assert replay.meaning in result.output
    assert replay.hint in result.output
    assert "--counter set above it" in result.output
    assert f"{IS}:90-B3-D5-1F-30-00-00-02:5" in result.output
    # refused once, never resent with another counter
    assert [code for _, code in _audit(seeded)] == ["I99", DEFAULT_PROFILE.code(Reason.REPLAY)]
    assert CounterStore(tmp_path).last(IS) == 5  # --counter sets the state ...
    again = submit(server, world, IS, tmp_path, *no_fault(hub("F2")))
    assert again.exit_code == 0, again.output  # ... and the clock takes over again
    assert [code for _, code in _audit(seeded)][-1] == "I99"


def test_invalid_options_are_refused_before_anything_is_sent(
    world: DemoWorld, tmp_path: Path
) -> None:
    result = submit(
        "http://127.0.0.1:9", world, IS, tmp_path,
        "--variant", "8.14.4", "--device", "nope", "--return-type", "No Fault Return (general)",
        "--fault-reason", "Damaged case",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "device_id" in result.output
    assert "fault_reason: must be empty for 8.14.4" in result.output
    assert not CounterStore(tmp_path).path(IS).exists()  # no counter was spent


# ---------------------------------------------------------------------- counters


def test_counter_state_persists_and_increments_across_invocations(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    before_ms = time.time_ns() // 1_000_000
    first = submit(server, world, IS, tmp_path, *no_fault(hub("B2")))
    second = submit(server, world, IS, tmp_path, *no_fault(hub("F2")))
    after_ms = time.time_ns() // 1_000_000
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    with seeded() as session:
        ids = [
            r.request_id for r in session.scalars(select(ReturnRecord).order_by(ReturnRecord.id))
        ]
    counters = [RequestId.parse(i).counter for i in ids]
    assert before_ms <= counters[0] < counters[1] <= after_ms  # the clock, in milliseconds
    state = json.loads(CounterStore(tmp_path).path(IS).read_text())
    assert state == {"originator": IS, "last_counter": counters[1]}


def test_counter_store_follows_the_clock_and_never_goes_back(tmp_path: Path) -> None:
    now = [1_700_000_000_000]
    store = CounterStore(tmp_path, clock_ms=lambda: now[0])
    assert [store.allocate(IS) for _ in range(3)] == [1_700_000_000_000 + n for n in range(3)]
    later = CounterStore(tmp_path, clock_ms=lambda: 5)  # a clock set back: last + 1
    assert later.allocate(IS) == 1_700_000_000_003
    now[0] = 1_800_000_000_000  # time moved on: the clock again, not last + 1
    assert store.allocate(IS) == 1_800_000_000_000
    assert later.allocate(GS) == 5  # each originator has its own state
    assert store.allocate(GS, exactly=3) == 3  # --counter N sets it
    assert store.last(GS) == 3
    with pytest.raises(ClientError, match="out of range"):
        store.allocate(GS, exactly=2**64)
    later.path(IS).write_text("{not json")
    with pytest.raises(ClientError, match="unreadable"):
        later.allocate(IS)


def test_counters_never_repeat_across_threads(tmp_path: Path) -> None:
    store = CounterStore(tmp_path)
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [CounterStore(tmp_path).allocate(IS) for _ in range(25)]
        assert mine == sorted(set(mine))  # each thread's counters strictly increase
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(got)) == 100
    assert store.last(IS) == max(got)


def test_counters_never_repeat_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from hubreturns.user.submission import CounterStore\n"
        "s = CounterStore(Path(sys.argv[1]))\n"
        "print('\\n'.join(str(s.allocate(sys.argv[2])) for _ in range(60)))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), IS], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    got = [int(x) for out in outputs for x in out.split()]
    assert len(got) == 120
    assert len(set(got)) == 120
    for out in outputs:  # each process's counters strictly increase
        mine = [int(x) for x in out.split()]
        assert mine == sorted(set(mine))


# -------------------------------------------------------------------------- bulk


def _results(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_bulk_mixed_csv_matches_the_database(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    good = tmp_path / "good.csv"
    good.write_text(
        HEADER
        + f"8.14.3,{hub('C2')},{PRE_INSTALL},{hub('C0')},Cradle,LED Fault,,good-1,,\n"
        + f"8.14.4,{hub('D2')},No Fault Return (general),,,,2026-01-02T03:04:05Z,good-2,INC1,ok\n"
    )
    ok = submit(
        server, world, IS, tmp_path, "--csv", str(good), "--results", str(tmp_path / "g.csv")
    )
    assert ok.exit_code == 0, ok.output
    assert [r["code"] for r in _results(tmp_path / "g.csv")] == ["I99", "I99"]

    mixed = tmp_path / "mixed.csv"
    mixed.write_text(
        HEADER
        + f"8.14.3,{hub('A2')},{PRE_INSTALL},{hub('A0')},Hot-shoe,Damaged case,,,,\n"
        + "\n"  # blank lines are skipped; rows keep their file line numbers
        + f"8.14.4,{hub('B2')},no fault return (GENERAL),,,,,,,\n"
        + f"8.14.3,{hub('F2')},{PRE_INSTALL},{hub('B0')},ESME,SM WAN Fault,,,,\n"
        + f"8.14.4,{hub('99')},No Fault Return (general),,,,,,,\n"
        + f"8.14.4,{hub('A1')},Lost or Stolen Hub,,,,,,,\n"
        + f"8.14.4,{hub('E2')},No Fault Return (general),,,,,,,\n"
    )
    out = tmp_path / "results.csv"
    result = submit(server, world, IS, tmp_path, "--csv", str(mixed), "--results", str(out))
    assert result.exit_code == 1, result.output
    assert "4 of 6 rows were not accepted" in result.output
    rows = _results(out)  # one row per input row, in input order
    assert [(r["row"], r["code"]) for r in rows] == [
        ("2", "I99"), ("4", "I99"), ("5", "E45"), ("6", "E19"), ("7", "E11"), ("8", "E4"),
    ]  # fmt: skip
    explained = [DEFAULT_PROFILE.explain(r["code"]) for r in rows]
    assert [r["meaning"] for r in rows] == [getattr(e, "meaning", None) for e in explained]
    assert [r["device_id"] for r in rows] == [hub(n) for n in ("A2", "B2", "F2", "99", "A1", "E2")]
    assert [r["hint"] for r in rows] == [""] * 2 + [getattr(e, "hint", None) for e in explained[2:]]
    assert _results(tmp_path / "g.csv")[1]["user_ref_id"] == "good-2"
    with seeded() as session:
        audit = {a.request_id: a.code for a in session.scalars(select(AuditEntry))}
        returns = {r.request_id for r in session.scalars(select(ReturnRecord))}
    for row in rows:
        assert audit[row["request_id"]] == row["code"]
    assert {r["request_id"] for r in rows if r["code"] == "I99"} <= returns
    assert len(returns) == 4  # 2 good + 2 mixed


def test_bulk_with_bad_rows_sends_nothing(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        HEADER
        + f"8.14.4,{hub('B2')},No Fault Return (general),,,,,,,\n"
        + f"8.14.3,{hub('F2')},{PRE_INSTALL},,Hot-shoe,Damaged case,,,,\n"
        + f"8.14.4,{hub('F2')},No Fault Return (general),,,,,,,\n"
        + f"8.14.5,{hub('F2')},No Fault Return (general),,,,,,,\n"
        + f"8.14.4,{hub('F2')},No Fault Return (general),,,,,{'x' * 26},,\n"
    )
    out = tmp_path / "results.csv"
    result = submit(server, world, IS, tmp_path, "--csv", str(bad), "--results", str(out))
    assert result.exit_code == 2
    assert "line 3, other_device_id" in result.output
    assert "line 5, variant" in result.output
    assert "line 6, user_ref_id: At most 25 characters (DUIS 5.4); this has 26." in result.output
    assert "nothing was sent" in result.output
    assert not out.exists()
    with seeded() as session:
        assert session.scalars(select(AuditEntry)).all() == []


def test_bulk_interrupted_keeps_exactly_the_completed_rows(
    server: str,
    world: DemoWorld,
    seeded: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = "".join(
        f"8.14.4,{hub(f'9{n}')},No Fault Return (general),,,,,row-{n},,\n" for n in range(6)
    )
    (tmp_path / "many.csv").write_text(HEADER + rows)
    real = Submitter.submit
    calls: list[int] = []

    def interrupt_on_third(self: Submitter, values: dict[str, str]) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C does to the process
        return real(self, values)

    monkeypatch.setattr(Submitter, "submit", interrupt_on_third)
    out = tmp_path / "results.csv"
    result = submit(
        server, world, IS, tmp_path, "--csv", str(tmp_path / "many.csv"), "--results", str(out),
        "--concurrency", "1",
    )  # fmt: skip

    assert result.exit_code == 130, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a traceback
    assert "interrupted" in result.output
    assert len(calls) == 3  # nothing started after the interrupt
    written = _results(out)  # every input row, the ones not sent marked so
    assert [(r["row"], r["code"]) for r in written] == [
        ("2", "E19"), ("3", "E19"), ("4", ""), ("5", ""), ("6", ""), ("7", ""),
    ]  # fmt: skip
    assert all(r["meaning"] == "not sent (interrupted)" for r in written[2:])
    done = written[:2]
    with seeded() as session:
        audit = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    assert [a.request_id for a in audit] == [r["request_id"] for r in done]


# ------------------------------------------------------------------ sign / verify


def _unsigned(originator: str, device: str) -> bytes:
    request = ReturnRequest(
        request_id=RequestId(originator=originator, target="90-B3-D5-1F-30-00-00-02", counter=1),
        command_variant=8,
        service_reference="8.14",
        kind=ReturnKind.NO_FAULT,
        device_id=device,
        return_type="No Fault Return (general)",
        additional_information="signed by hubreturns sign",
    )
    root = build_request(request)
    etree.indent(root)  # a person's pretty-printed file; sign compacts it first
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def test_sign_then_verify_round_trip_and_xmlsec1_agrees(
    world: DemoWorld, server: str, tmp_path: Path, seeded: sessionmaker[Session]
) -> None:
    unsigned = tmp_path / "request.xml"
    unsigned.write_bytes(_unsigned(IS, hub("F2")))
    signed = tmp_path / "signed.xml"
    result = runner.invoke(_app(), ["sign", str(unsigned), *creds(world, IS), "-o", str(signed)])
    assert result.exit_code == 0, result.output

    cert = world.pki / "90b3d51f30010000.cert.pem"
    ok = runner.invoke(_app(), ["verify", str(signed), "--cert", str(cert)])
    assert ok.exit_code == 0, ok.output
    assert f"OK request {signed}: signed by {IS}" in ok.output
    done = xmlsec_verify(signed.read_bytes(), SigningCertificate.from_pem(cert.read_bytes()))
    assert done.returncode == 0, done.stderr

    # the signed file is what the service accepts, and its answer verifies too
    reply = httpx.post(
        f"{server}/api/v1/serviceD",
        content=signed.read_bytes(),
        headers={"content-type": "application/xml"},
    )
    assert reply.headers["x-duis-response-code"] == "I99"
    response = tmp_path / "response.xml"
    response.write_bytes(reply.content)
    answer = runner.invoke(_app(), ["verify", str(response)])  # a response, by its root
    assert answer.exit_code == 0, answer.output
    assert f"OK response {response}" in answer.output
    assert "response code I99" in answer.output

    stdout = runner.invoke(_app(), ["sign", str(unsigned), *creds(world, IS)])
    assert stdout.exit_code == 0
    assert stdout.stdout_bytes.startswith(b"<?xml")


def test_sign_refuses_signed_or_foreign_documents(world: DemoWorld, tmp_path: Path) -> None:
    unsigned = tmp_path / "request.xml"
    unsigned.write_bytes(_unsigned(IS, hub("F2")))
    signed = tmp_path / "signed.xml"
    assert (
        runner.invoke(
            _app(), ["sign", str(unsigned), *creds(world, IS), "-o", str(signed)]
        ).exit_code
        == 0
    )
    again = runner.invoke(_app(), ["sign", str(signed), *creds(world, IS)])
    assert again.exit_code == 2
    assert "already signed" in again.output
    assert "hubreturns verify" in again.output
    foreign = runner.invoke(_app(), ["sign", str(unsigned), *creds(world, GS)])
    assert foreign.exit_code == 2
    assert "E43" in foreign.output


def test_verify_refuses_tampered_or_unknown(world: DemoWorld, tmp_path: Path) -> None:
    unsigned = tmp_path / "request.xml"
    unsigned.write_bytes(_unsigned(IS, hub("F2")))
    signed = tmp_path / "signed.xml"
    assert (
        runner.invoke(
            _app(), ["sign", str(unsigned), *creds(world, IS), "-o", str(signed)]
        ).exit_code
        == 0
    )
    tampered = tmp_path / "tampered.xml"
    tampered.write_bytes(signed.read_bytes().replace(b"signed by hubreturns sign", b"changed"))
    is_cert = str(world.pki / "90b3d51f30010000.cert.pem")
    gs_cert = str(world.pki / "90b3d51f30020000.cert.pem")

    bad = runner.invoke(_app(), ["verify", str(tampered), "--cert", is_cert])
    assert bad.exit_code == 1
    assert "FAILED request E40" in bad.output
    assert "signed content was changed" in bad.output
    unknown = runner.invoke(_app(), ["verify", str(signed), "--cert", gs_cert])
    assert unknown.exit_code == 1
    assert "FAILED request E41" in unknown.output
    assert "signer's XML-signing certificate with --cert" in unknown.output
    as_response = runner.invoke(_app(), ["verify", str(signed), "--as-response"])
    assert as_response.exit_code == 1
    assert "expected Response" in as_response.output


# ------------------------------------------------------------------------- retries


class _Flaky(httpx.BaseTransport):
    """Real HTTP, except that the first ``fail`` requests get ``first`` instead
    (an exception: a transport failure; bytes: that answer, HTTP 503)."""

    def __init__(self, first: Exception | bytes, fail: int = 1) -> None:
        self.inner = httpx.HTTPTransport()
        self.first = first
        self.fail = fail
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.read())
        if len(self.bodies) <= self.fail:
            if isinstance(self.first, Exception):
                raise self.first
            return httpx.Response(503, content=self.first, request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _submitter(world: DemoWorld, server: str, tmp_path: Path, http: httpx.Client) -> Submitter:
    stem = IS.replace("-", "").lower()
    return Submitter(
        url=server,
        signer=load_signer(world.pki / f"{stem}.key.pem", world.pki / f"{stem}.cert.pem"),
        dcc_certificates=default_dcc_certificates(),
        counters=CounterStore(tmp_path / "state"),
        http=http,
        retries=3,
        retry_delay=0.01,
        save_dir=tmp_path / "saved",
    )


NO_FAULT_F2 = {
    "variant": "8.14.4",
    "device_id": hub("F2"),
    "return_type": "No Fault Return (general)",
}


def test_a_transport_failure_is_resent_with_the_same_request_id_and_bytes(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    flaky = _Flaky(httpx.ConnectError("connection refused"), fail=2)
    with httpx.Client(transport=flaky) as http:
        result = _submitter(world, server, tmp_path, http).submit(NO_FAULT_F2)
    assert result.ok, result
    assert result.attempts == 3
    assert len(flaky.bodies) == 3
    assert len(set(flaky.bodies)) == 1  # the same bytes each time
    assert _audit(seeded) == [(result.request_id, "I99")]
    with seeded() as session:
        assert [r.request_id for r in session.scalars(select(ReturnRecord))] == [result.request_id]
    saved = sorted(p.name for p in (tmp_path / "saved").iterdir())
    counter = RequestId.parse(result.request_id).counter
    assert saved == [f"90B3D51F30010000-{counter}.{what}.xml" for what in ("request", "response")]


def test_an_unavailable_answer_is_resent_with_the_same_request_id(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    state = CounterStore(tmp_path / "state")
    counter = state.allocate(IS) + 1  # the counter the submitter will use next
    request_id = RequestId(originator=IS, target="90-B3-D5-1F-30-00-00-02", counter=counter)
    unavailable = build_response(
        request_id=request_id,
        code=DEFAULT_PROFILE.code(Reason.UNAVAILABLE),
        service_reference="8.14",
        service_reference_variant="8.14.4",
        now=datetime.now(UTC),
        signer=Settings(allow_test_keys=True).signer(),
    )
    flaky = _Flaky(unavailable)
    with httpx.Client(transport=flaky) as http:
        submitter = _submitter(world, server, tmp_path, http)
        submitter.counters = CounterStore(tmp_path / "state", clock_ms=lambda: 0)
        result = submitter.submit(NO_FAULT_F2)
    assert result.request_id == str(request_id)
    assert result.ok
    assert result.attempts == 2
    assert flaky.bodies[0] == flaky.bodies[1]
    assert _audit(seeded) == [(str(request_id), "I99")]


def test_an_answered_refusal_is_never_resent(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    rows = "".join(
        f"8.14.4,{hub(f'9{n}')},No Fault Return (general),,,,,row-{n},,\n" for n in range(8)
    )
    (tmp_path / "unknown.csv").write_text(HEADER + rows)
    out = tmp_path / "results.csv"
    result = submit(
        server, world, IS, tmp_path, "--csv", str(tmp_path / "unknown.csv"),
        "--results", str(out), "--retries", "5", "--retry-delay", "0", "--concurrency", "4",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    audit = _audit(seeded)
    assert [code for _, code in audit] == ["E19"] * 8  # one audit row per row, no resends
    written = _results(out)  # in input order although sent four at a time
    assert [(r["row"], r["user_ref_id"]) for r in written] == [
        (str(n + 2), f"row-{n}") for n in range(8)
    ]
    assert sorted(r["request_id"] for r in written) == sorted(i for i, _ in audit)


# -------------------------------------------------------------- save-dir and verify


def test_save_dir_keeps_request_and_response_and_verify_tells_them_apart(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    saved = tmp_path / "saved"
    result = submit(
        server, world, GS, tmp_path, *no_fault(hub("F2")), "--save-dir", str(saved)
    )  # GS is not responsible for F2: E4
    assert result.exit_code == 1, result.output
    ((request_id, code),) = _audit(seeded)
    assert code == "E4"
    counter = RequestId.parse(request_id).counter
    request = saved / f"90B3D51F30020000-{counter}.request.xml"
    response = saved / f"90B3D51F30020000-{counter}.response.xml"
    assert sorted(saved.iterdir()) == [request, response]
    assert request_id.encode() in request.read_bytes()

    answer = runner.invoke(_app(), ["verify", str(response)])
    assert answer.exit_code == 0, answer.output
    assert f"OK response {response}" in answer.output
    assert f"response code E4: {CODE_INFO[ResponseCode.E4].meaning}" in answer.output
    assert CODE_INFO[ResponseCode.E4].hint in answer.output

    no_cert = runner.invoke(_app(), ["verify", str(request)])
    assert no_cert.exit_code == 2
    assert "is a request (root sr:Request): --cert is required" in no_cert.output
    gs_cert = str(world.pki / "90b3d51f30020000.cert.pem")
    ok = runner.invoke(_app(), ["verify", str(request), "--cert", gs_cert])
    assert ok.exit_code == 0, ok.output
    assert f"OK request {request}" in ok.output

    # a response checked with the wrong certificate: the hint is about the DCC's one
    wrong = runner.invoke(_app(), ["verify", str(response), "--cert", gs_cert])
    assert wrong.exit_code == 1
    assert "FAILED response E41" in wrong.output
    assert "DCC's response-signing certificate with --cert" in wrong.output


def test_sign_counter_sets_the_request_id(world: DemoWorld, tmp_path: Path) -> None:
    unsigned = tmp_path / "request.xml"
    unsigned.write_bytes(_unsigned(IS, hub("F2")))
    signed = tmp_path / "signed.xml"
    result = runner.invoke(
        _app(),
        ["sign", str(unsigned), *creds(world, IS), "-o", str(signed), "--counter", "1234567"],
    )
    assert result.exit_code == 0, result.output
    assert f"{IS}:90-B3-D5-1F-30-00-00-02:1234567".encode() in signed.read_bytes()
    cert = str(world.pki / "90b3d51f30010000.cert.pem")
    assert runner.invoke(_app(), ["verify", str(signed), "--cert", cert]).exit_code == 0


# --------------------------------------------------------------- results and resume


def test_an_existing_results_file_is_never_overwritten_silently(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    returns = tmp_path / "returns.csv"
    returns.write_text(HEADER + f"8.14.4,{hub('F2')},No Fault Return (general),,,,,,,\n")
    out = tmp_path / "results.csv"
    out.write_text("keep me\n")
    refused = submit(server, world, IS, tmp_path, "--csv", str(returns), "--results", str(out))
    assert refused.exit_code == 2
    assert "exists; results are never overwritten silently" in refused.output
    assert "--overwrite" in refused.output
    assert out.read_text() == "keep me\n"
    assert _audit(seeded) == []  # nothing was sent
    replaced = submit(
        server, world, IS, tmp_path, "--csv", str(returns), "--results", str(out), "--overwrite"
    )
    assert replaced.exit_code == 0, replaced.output
    assert [r["code"] for r in _results(out)] == ["I99"]


def test_resume_sends_only_the_rows_not_accepted(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    returns = tmp_path / "returns.csv"
    returns.write_text(
        HEADER
        + f"8.14.4,{hub('C2')},No Fault Return (general),,,,,first,,\n"
        + f"8.14.4,{hub('E2')},No Fault Return (general),,,,,gs-hub,,\n"  # E4 for the IS
        + f"8.14.4,{hub('F2')},No Fault Return (general),,,,,third,,\n"
    )
    first = tmp_path / "first.csv"
    ran = submit(server, world, IS, tmp_path, "--csv", str(returns), "--results", str(first))
    assert ran.exit_code == 1, ran.output
    before = _results(first)
    assert [r["code"] for r in before] == ["I99", "E4", "I99"]

    second = tmp_path / "second.csv"
    resumed = submit(
        server, world, GS, tmp_path / "gs", "--csv", str(returns),
        "--resume", str(first), "--results", str(second),
    )  # fmt: skip  # the GS is responsible for E2: now accepted
    assert resumed.exit_code == 0, resumed.output
    assert "2 of 3 rows were accepted and are not sent again" in resumed.output
    after = _results(second)
    assert [r["row"] for r in after] == ["2", "3", "4"]
    assert [r["code"] for r in after] == ["I99"] * 3
    assert after[0] == before[0]  # carried over, not resent
    assert after[2] == before[2]
    assert after[1]["request_id"].startswith(GS)
    assert [code for _, code in _audit(seeded)] == ["I99", "E4", "I99", "I99"]

    other = tmp_path / "other.csv"
    other.write_text(HEADER + f"8.14.4,{hub('A2')},No Fault Return (general),,,,,,,\n")
    mismatch = submit(
        server, world, IS, tmp_path, "--csv", str(other),
        "--resume", str(first), "--results", str(tmp_path / "third.csv"),
    )  # fmt: skip
    assert mismatch.exit_code == 2
    assert "Resume with the same CSV" in mismatch.output
    assert len(_audit(seeded)) == 4
