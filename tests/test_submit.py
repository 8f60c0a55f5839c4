"""``hubreturns submit`` / ``sign`` / ``verify`` through the CLI against the real HTTP
service (SQLite and PostgreSQL), with the database checked afterwards; the counter
state file on its own, across invocations, threads and processes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
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
from hubreturns.demo import DemoWorld
from hubreturns.extensions import register_commands
from hubreturns.model import RequestId, ReturnKind, ReturnRequest
from hubreturns.store.models import AuditEntry, ReturnRecord
from hubreturns.submission import ClientError, CounterStore, Submitter
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.request import build_request

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


def test_a_counter_behind_the_service_gets_the_replay_code_with_its_hint(
    server: str, world: DemoWorld, seeded: sessionmaker[Session], tmp_path: Path
) -> None:
    assert submit(server, world, IS, tmp_path, *no_fault(hub("B2"))).exit_code == 0
    state = CounterStore(tmp_path).path(IS)
    state.write_text(json.dumps({"originator": IS, "last_counter": 5}))
    result = submit(server, world, IS, tmp_path, *no_fault(hub("F2")), "--retries", "0")
    assert result.exit_code == 1
    assert "E48" in result.output
    assert CODE_INFO[Reason.REPLAY].hint in result.output
    assert f"{IS}:90-B3-D5-1F-30-00-00-02:6" in result.output


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
    first = submit(server, world, IS, tmp_path, *no_fault(hub("B2")))
    second = submit(server, world, IS, tmp_path, *no_fault(hub("F2")))
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    with seeded() as session:
        ids = [
            r.request_id for r in session.scalars(select(ReturnRecord).order_by(ReturnRecord.id))
        ]
    counters = [RequestId.parse(i).counter for i in ids]
    assert counters[1] == counters[0] + 1
    state = json.loads(CounterStore(tmp_path).path(IS).read_text())
    assert state == {"originator": IS, "last_counter": counters[1]}


def test_counter_store_starts_from_the_clock_then_counts(tmp_path: Path) -> None:
    store = CounterStore(tmp_path, clock_ms=lambda: 1_700_000_000_000)
    assert [store.allocate(IS) for _ in range(3)] == [1_700_000_000_000 + n for n in range(3)]
    later = CounterStore(tmp_path, clock_ms=lambda: 5)  # a restart; the clock is ignored now
    assert later.allocate(IS) == 1_700_000_000_003
    assert later.allocate(GS) == 5  # each originator has its own state
    later.path(IS).write_text("{not json")
    with pytest.raises(ClientError, match="unreadable"):
        later.allocate(IS)


def test_counters_never_repeat_across_threads(tmp_path: Path) -> None:
    store = CounterStore(tmp_path)
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [CounterStore(tmp_path).allocate(IS) for _ in range(25)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(got)) == 100
    assert sorted(got) == list(range(min(got), min(got) + 100))
    assert store.last(IS) == max(got)


def test_counters_never_repeat_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom pathlib import Path\nfrom hubreturns.submission import CounterStore\n"
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
    assert sorted(got) == list(range(min(got), min(got) + 120))


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
    result = submit(
        server, world, IS, tmp_path, "--csv", str(mixed), "--results", str(out),
        "--concurrency", "3",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "4 of 6 rows were not accepted" in result.output
    rows = sorted(_results(out), key=lambda r: int(r["row"]))
    assert [(r["row"], r["code"]) for r in rows] == [
        ("2", "I99"), ("4", "I99"), ("5", "E45"), ("6", "E19"), ("7", "E11"), ("8", "E4"),
    ]  # fmt: skip
    assert all(
        r["meaning"] == getattr(DEFAULT_PROFILE.explain(r["code"]), "meaning", None) for r in rows
    )
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
    assert "line 6, user_ref_id: has 26 characters" in result.output
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
    done = _results(out)
    assert [(r["row"], r["code"]) for r in done] == [("2", "E19"), ("3", "E19")]
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
    assert f"OK {signed}: signed by {IS}" in ok.output
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
    answer = runner.invoke(_app(), ["verify", str(response), "--as-response"])
    assert answer.exit_code == 0, answer.output

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
    assert "FAILED E40" in bad.output
    assert "signed content was changed" in bad.output
    unknown = runner.invoke(_app(), ["verify", str(signed), "--cert", gs_cert])
    assert unknown.exit_code == 1
    assert "FAILED E41" in unknown.output
    as_response = runner.invoke(_app(), ["verify", str(signed), "--as-response"])
    assert as_response.exit_code == 1
    assert "expected Response" in as_response.output
