"""The Service User's client: build, sign, send and read 8.14.3 / 8.14.4 requests.

The pieces a Supplier's or RSA's developer needs, without any printing:

* ``request_from_values`` turns command-line options or one CSV row (columns
  ``COLUMNS``, mirroring the request body) into a checked ``ReturnRequest``;
  ``read_returns_csv`` reads a whole file and reports every bad row with its
  line number before anything is sent.
* ``CounterStore`` hands out RequestID counters from a small JSON state file
  per originator, under an ``fcntl.flock`` lock, persisted with fsync *before*
  the request leaves, so a counter is never used twice, across restarts and
  concurrent processes.
* ``Submitter`` signs, POSTs, verifies the DCC's signed response and returns a
  ``SubmitResult``; ``run_bulk`` sends many rows with bounded concurrency and
  writes each result as soon as it is known, so an interrupted run keeps what
  was done.
* ``sign_document`` / ``verify_document`` back ``hubreturns sign`` / ``verify``.
"""

from __future__ import annotations

import csv
import enum
import fcntl
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from hubreturns.codes import CODE_INFO, DEFAULT_PROFILE, CodeInfo, CodeProfile, Reason, ResponseCode
from hubreturns.errors import EnvelopeRejection, HintedError, Rejection, SignatureRejection
from hubreturns.model import (
    COUNTER_MAX,
    DEFAULT_ACB,
    FAULT_ONLY_FIELDS,
    RETURN_FIELDS,
    Endpoint,
    FieldProblem,
    RequestId,
    ReturnRequest,
    eui,
)
from hubreturns.pki import load_credential, packaged_pki
from hubreturns.policy import DSP_RESPONSE_POLICY, REQUEST_POLICY
from hubreturns.user.client import read_response
from hubreturns.wire import envelope, signature
from hubreturns.wire.certificate import SigningCertificate, load_pem_files
from hubreturns.wire.request import build_request, sign_request

__all__ = [
    "COLUMNS",
    "FAULT_ONLY_COLUMNS",
    "RESULT_COLUMNS",
    "BulkSummary",
    "ClientError",
    "CounterStore",
    "CsvRow",
    "Failure",
    "FieldProblem",
    "InvalidFields",
    "InvalidReturnsFile",
    "Signer",
    "SubmitResult",
    "Submitter",
    "default_dcc_certificates",
    "default_state_dir",
    "is_response",
    "load_certificates",
    "load_signer",
    "read_results",
    "read_returns_csv",
    "request_from_values",
    "run_bulk",
    "service_url",
    "sign_document",
    "verify_document",
]

#: CSV columns (and ``submit`` options), in the order of the request body.
COLUMNS: Final = RETURN_FIELDS
#: Columns that only 8.14.3 CHFFaultReturn has (must be empty for 8.14.4).
FAULT_ONLY_COLUMNS: Final = frozenset(FAULT_ONLY_FIELDS)

_SR = f"{{{envelope.SR_NS}}}"
_DS = f"{{{envelope.DS_NS}}}"


class ClientError(HintedError):
    """A problem on the client's side, with an actionable ``hint``."""

    code = "client"


# ------------------------------------------------------------------ request values


class InvalidFields(ValueError):
    """The values do not make a valid request; ``problems`` lists every one."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def request_from_values(values: Mapping[str, str | None], request_id: RequestId) -> ReturnRequest:
    """A checked 8.14.3 / 8.14.4 request from column values (empty or None = absent).

    The cells are trimmed, then read by the rules every channel shares
    (``ReturnRequest.from_fields``), so a request built here is never refused
    as E31; raises ``InvalidFields`` listing every problem.
    """
    cells = {name: (value or "").strip() or None for name, value in values.items()}
    read = ReturnRequest.from_fields(cells, request_id=request_id)
    if isinstance(read, list):
        raise InvalidFields(read)
    try:  # the belt to the braces above: the schema has the last word
        envelope.validate(build_request(read))
    except EnvelopeRejection as exc:
        raise InvalidFields([FieldProblem("request", exc.message)]) from None
    return read


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One data row of a returns CSV; ``line`` is its line in the file (header = 1)."""

    line: int
    values: Mapping[str, str]


class InvalidReturnsFile(ValueError):
    """A returns CSV with bad rows; ``problems`` are ``(line, message)``; nothing was sent."""

    def __init__(self, problems: Sequence[tuple[int, str]]) -> None:
        self.problems = sorted(problems)
        super().__init__(
            f"{len(self.problems)} problem(s); nothing was sent:\n"
            + "\n".join(f"  line {line}, {message}" for line, message in self.problems)
        )


def read_returns_csv(data: bytes | str) -> list[CsvRow]:
    """Every row of a returns CSV, each checked as a request; all problems at once.

    The first non-blank line is the header: exactly the ``COLUMNS``, any order.
    Blank lines are skipped, cells are stripped, UTF-8 with or without BOM.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise InvalidReturnsFile([(line, "file: is not valid UTF-8")]) from None
    else:
        text = data.removeprefix("\ufeff")
    problems: list[tuple[int, str]] = []
    rows: list[CsvRow] = []
    header: list[str] | None = None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    previous_end = 0
    probe = RequestId(originator=DEFAULT_ACB, target=DEFAULT_ACB, counter=0)
    try:
        for raw in reader:
            line, previous_end = previous_end + 1, reader.line_num
            cells = [c.strip() for c in raw]
            if not any(cells):
                continue
            if header is None:
                header = cells
                missing = [c for c in COLUMNS if c not in header]
                extra = [c for c in header if c not in COLUMNS]
                if missing or extra or len(set(header)) != len(header):
                    raise InvalidReturnsFile(
                        [
                            (
                                line,
                                f"header: expected the columns {','.join(COLUMNS)} "
                                f"(missing {missing or 'none'}, unknown {extra or 'none'})",
                            )
                        ]
                    )
                continue
            if len(cells) != len(header):
                problems.append(
                    (line, f"row: has {len(cells)} fields, the header has {len(header)}")
                )
                continue
            values = dict(zip(header, cells, strict=True))
            try:
                request_from_values(values, probe)
            except InvalidFields as exc:
                problems.extend((line, str(p)) for p in exc.problems)
                continue
            rows.append(CsvRow(line, values))
    except csv.Error as exc:
        problems.append((reader.line_num or 1, f"file: not readable CSV ({exc})"))
    if header is None:
        problems.append((1, f"file: is empty; expected the header {','.join(COLUMNS)}"))
    if problems:
        raise InvalidReturnsFile(problems)
    return rows


# ----------------------------------------------------------------------- counters


def default_state_dir() -> Path:
    """``$HUBRETURNS_STATE_DIR``, else ``$XDG_STATE_HOME/hubreturns`` (~/.local/state)."""
    if os.environ.get("HUBRETURNS_STATE_DIR"):
        return Path(os.environ["HUBRETURNS_STATE_DIR"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "hubreturns"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class CounterStore:
    """Next RequestID counter per originator: ``counter-<EUI>.json`` in ``folder``.

    ``allocate`` takes an exclusive ``flock`` on a sibling ``.lock`` file, reads
    the last counter handed out, writes the next one to a temporary file,
    fsyncs it, renames it over the state file and fsyncs the folder, and only
    then returns the counter: a crash after that may waste a counter, never
    reuse one. Counters follow the current time in milliseconds (as DCC's own
    signing tool does), never lower than the last one plus one.
    """

    def __init__(self, folder: Path, clock_ms: Callable[[], int] = _now_ms) -> None:
        self.folder = folder
        self._clock_ms = clock_ms

    def path(self, originator: str) -> Path:
        return self.folder / f"counter-{eui(originator).replace('-', '')}.json"

    @contextmanager
    def _locked(self, originator: str) -> Iterator[Path]:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            state = self.path(originator)
            fd = os.open(state.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ClientError(
                f"cannot use the counter state folder {self.folder}: {exc.strerror}",
                "Give a writable folder with --state-dir (or $HUBRETURNS_STATE_DIR).",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield state
        finally:
            os.close(fd)  # closing releases the lock

    def last(self, originator: str) -> int | None:
        """The last counter handed out for ``originator``, or None for a fresh state."""
        state = self.path(originator)
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ClientError(
                f"counter state {state} is unreadable ({exc})",
                "Restore it, or delete it to restart from the current time in milliseconds.",
            ) from None
        value = data.get("last_counter") if isinstance(data, dict) else None
        if not isinstance(value, int) or not 0 <= value <= COUNTER_MAX:
            raise ClientError(
                f"counter state {state} has no valid last_counter",
                "Restore it, or delete it to restart from the current time in milliseconds.",
            )
        return value

    def allocate(self, originator: str, exactly: int | None = None) -> int:
        """A counter never handed out before for ``originator``, durably recorded.

        By default the current time in milliseconds, or one more than the last
        counter when that is higher (several requests within a millisecond, or
        a clock set back): a counter that follows the clock cannot fall behind
        what the service last accepted from this User ID, even when the state
        file was lost, restored from a backup or copied from another machine.
        ``exactly`` (``--counter N``) uses N and records it as the last one.
        """
        with self._locked(originator) as state:
            last = self.last(originator)
            if exactly is not None:
                counter = exactly
            else:
                counter = self._clock_ms() if last is None else max(self._clock_ms(), last + 1)
            if not 0 <= counter <= COUNTER_MAX:
                raise ClientError(
                    f"the RequestID counter {counter} of {originator} is out of range",
                    f"Counters are 0 to {COUNTER_MAX}; check --counter and the state file.",
                )
            temporary = state.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            payload = json.dumps({"originator": eui(originator), "last_counter": counter})
            with open(temporary, "w", encoding="utf-8") as out:
                out.write(payload + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, state)
            directory = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return counter


# --------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class Signer:
    """A Service User's signing key with its certificate and the User ID it names."""

    key: ec.EllipticCurvePrivateKey
    certificate: SigningCertificate
    originator: str


def load_signer(key_path: Path, cert_path: Path) -> Signer:
    """Read the key and certificate PEM files; the originator is the certificate's EUI."""
    try:
        credential = load_credential(key_path, cert_path)
    except OSError as exc:
        raise ClientError(
            f"cannot read {exc.filename}: {exc.strerror}",
            "Give the PEM files of your XML-signing key (--key) and certificate (--cert).",
        ) from None
    except ValueError as exc:
        raise ClientError(
            f"unusable key/certificate: {exc}",
            "--key must be the unencrypted EC (P-256) key of the certificate in --cert.",
        ) from None
    certificate = SigningCertificate.from_x509(credential.certificate)
    if certificate.eui is None:
        raise ClientError(
            f"{cert_path} has no x500UniqueIdentifier (User ID)",
            "Use your DUIS XML-signing certificate (subject OU 87 with your User ID).",
        )
    return Signer(credential.key, certificate, certificate.eui)


def load_certificates(paths: Iterable[Path]) -> list[SigningCertificate]:
    """Certificates from PEM files or folders, for checking signatures."""
    found: list[SigningCertificate] = []
    for path in paths:
        try:
            for _file, certs in load_pem_files(path):
                found.extend(certs)
        except (OSError, ValueError) as exc:
            raise ClientError(
                f"cannot read certificates from {path}: {exc}", "Give PEM certificate files."
            ) from None
    if not found:
        raise ClientError(
            "no certificate found in " + ", ".join(str(p) for p in paths),
            "Give PEM files containing -----BEGIN CERTIFICATE-----.",
        )
    return found


def default_dcc_certificates() -> list[SigningCertificate]:
    """The packaged DCC *test* DSP certificates (what this service signs with by default)."""
    return load_certificates(sorted(packaged_pki().glob("dsp-xml-sign-*.cert.pem")))


def service_url(base: str, endpoint: Endpoint = Endpoint.NON_DEVICE) -> str:
    """``base`` + ``/api/v1/<endpoint>``, unless ``base`` already names an endpoint."""
    trimmed = base.rstrip("/")
    if "/api/v1/" in trimmed:
        return trimmed
    return f"{trimmed}/api/v1/{endpoint.value}"


# ------------------------------------------------------------------------ sending


class Failure(enum.Enum):
    """Why a request has no verified answer."""

    TRANSPORT = "no response"
    UNVERIFIED = "response did not verify"
    MISMATCH = "response for another request"


_FAILURE_HINTS: Final = {
    Failure.TRANSPORT: "Nothing came back: check --url and the network, then send the row "
    "again later (if the service did record it, the resend is refused as already returned).",
    Failure.UNVERIFIED: "An answer came back but did not verify: check --dcc-cert (the DCC's "
    "response-signing certificate) and --url; look the hub up before sending it again.",
    Failure.MISMATCH: "The answer is for another RequestID: check that --url reaches the "
    "service directly (no caching proxy); look the hub up before sending it again.",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitResult:
    """What became of one request: the verified code, or why there is none."""

    request_id: str
    code: str | None
    http_status: int | None = None
    detail: str = ""
    attempts: int = 1
    failure: Failure | None = None
    #: The service's code profile: what ``code`` means (the service's own table).
    codes: CodeProfile = DEFAULT_PROFILE

    @property
    def ok(self) -> bool:
        return self.code == ResponseCode.I99

    @property
    def _info(self) -> CodeInfo | None:
        return self.codes.explain(self.code) if self.code is not None else None

    @property
    def meaning(self) -> str:
        if self.code is None:
            return self.detail
        found = self._info
        return found.meaning if found else f"code {self.code}, not in the code profile"

    @property
    def hint(self) -> str:
        if self.code is None:
            return _FAILURE_HINTS[self.failure or Failure.TRANSPORT]
        found = self._info
        if found is None:
            return "Compare the code with the DCC's documentation of response codes."
        hint = found.hint
        if self.codes.verdict(self.code) is Reason.REPLAY:
            counter = self.request_id.rsplit(":", 1)[-1]
            hint += (
                f" The service holds a higher counter for this User ID than {counter}: "
                "send again with --counter set above it."
            )
            if self.attempts > 1:
                hint += " (An earlier attempt of this same request may have been recorded.)"
        return hint


class Submitter:
    """Signs, sends and checks requests for one Service User.

    An answered request is never sent again: resending a refusal only adds
    refusals. ``retries`` covers the two cases where nothing was recorded for
    sure or no answer came at all: a transport failure and the "unavailable"
    answer (the profile's UNAVAILABLE, E100 by default). Those are resent
    with the *same* RequestID and bytes, after ``retry_delay`` seconds,
    doubling, so a request the service did record cannot be recorded twice.
    """

    def __init__(
        self,
        *,
        url: str,
        signer: Signer,
        dcc_certificates: Sequence[SigningCertificate],
        counters: CounterStore,
        target: str = DEFAULT_ACB,
        http: httpx.Client,
        retries: int = 3,
        retry_delay: float = 1.0,
        first_counter: int | None = None,
        save_dir: Path | None = None,
        codes: CodeProfile = DEFAULT_PROFILE,
    ) -> None:
        self.url = service_url(url)
        self.signer = signer
        self.dcc_certificates = list(dcc_certificates)
        self.counters = counters
        self.target = eui(target)
        self.http = http
        self.retries = retries
        self.retry_delay = retry_delay
        self.save_dir = save_dir
        self.codes = codes
        self._first_counter = first_counter
        self._lock = threading.Lock()

    def _counter(self) -> int:
        """``first_counter`` for the first request (``--counter N``), then the store's."""
        with self._lock:
            exactly, self._first_counter = self._first_counter, None
        return self.counters.allocate(self.signer.originator, exactly)

    def submit(self, values: Mapping[str, str | None]) -> SubmitResult:
        """Allocate a counter, sign, POST, verify the response; never raises for the wire."""
        request_id = RequestId(
            originator=self.signer.originator, target=self.target, counter=self._counter()
        )
        request = request_from_values(values, request_id)
        body = sign_request(request, self.signer.key, self.signer.certificate)
        self._save(request_id, "request", body)
        attempt = 0
        while True:
            attempt += 1
            result = replace(self.send(body, str(request_id)), attempts=attempt)
            again = result.failure is Failure.TRANSPORT or (
                result.code == self.codes.code(Reason.UNAVAILABLE)
            )
            if not again or attempt > self.retries:
                return result
            time.sleep(self.retry_delay * 2 ** (attempt - 1))

    def _save(self, request_id: RequestId, what: str, body: bytes) -> None:
        """``--save-dir``: keep the exact bytes sent or received, one file each."""
        if self.save_dir is None:
            return
        stem = f"{request_id.originator.replace('-', '')}-{request_id.counter}"
        path = self.save_dir / f"{stem}.{what}.xml"
        try:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        except OSError as exc:
            raise ClientError(
                f"cannot save {path}: {exc.strerror}", "Give a writable folder with --save-dir."
            ) from None

    def send(self, body: bytes, request_id: str) -> SubmitResult:
        """POST signed bytes and read the verified response code."""
        try:
            reply = self.http.post(
                self.url, content=body, headers={"content-type": "application/xml"}
            )
        except httpx.HTTPError as exc:
            return SubmitResult(
                request_id=request_id,
                code=None,
                detail=f"no response: {exc or type(exc).__name__}",
                failure=Failure.TRANSPORT,
            )
        self._save(RequestId.parse(request_id), "response", reply.content)
        try:
            read = read_response(reply.content, self.dcc_certificates)
        except Rejection as exc:
            claimed = reply.headers.get("x-duis-response-code", "?")
            return SubmitResult(
                request_id=request_id,
                code=None,
                http_status=reply.status_code,
                detail=f"response (claiming {claimed}) did not verify: {exc.message}",
                failure=Failure.UNVERIFIED,
            )
        if read.request_id is not None and read.request_id != request_id:
            return SubmitResult(
                request_id=request_id,
                code=None,
                http_status=reply.status_code,
                detail=f"response is for {read.request_id}, not this request",
                failure=Failure.MISMATCH,
            )
        return SubmitResult(
            request_id=request_id, code=read.code, http_status=reply.status_code, codes=self.codes
        )


# -------------------------------------------------------------------------- bulk

#: The results file: one row per input row, in input order.
RESULT_COLUMNS: Final = (
    "row",
    "device_id",
    "user_ref_id",
    "request_id",
    "code",
    "meaning",
    "hint",
)
_NOT_SENT: Final = "not sent (interrupted)"


@dataclass(slots=True)
class BulkSummary:
    """Counts per code (or ``"no response"``) and whether the run was interrupted.

    ``total`` is the rows to send; ``carried`` the rows accepted in the run
    resumed from (not sent again).
    """

    total: int
    done: int = 0
    failed: int = 0
    carried: int = 0
    by_code: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    def add(self, result: SubmitResult) -> None:
        self.done += 1
        self.failed += not result.ok
        key = result.code if result.code is not None else "no response"
        self.by_code[key] = self.by_code.get(key, 0) + 1


def _result_row(row: CsvRow, result: SubmitResult | None) -> dict[str, str]:
    base = {
        "row": str(row.line),
        "device_id": row.values.get("device_id", ""),
        "user_ref_id": row.values.get("user_ref_id", ""),
    }
    if result is None:
        hint = "Resume with --resume RESULTS to send the rows not accepted."
        return base | {"request_id": "", "code": "", "meaning": _NOT_SENT, "hint": hint}
    return base | {
        "request_id": result.request_id,
        "code": result.code if result.code is not None else "",
        "meaning": result.meaning,
        "hint": "" if result.ok else result.hint,
    }


def read_results(data: str, rows: Sequence[CsvRow]) -> dict[int, dict[str, str]]:
    """The accepted rows of an earlier results file, by input line, checked against ``rows``.

    Raises ``ClientError`` when the file is not a results file or does not
    belong to this returns CSV (a line names another device).
    """
    reader = csv.DictReader(io.StringIO(data.removeprefix("\ufeff"), newline=""))
    if reader.fieldnames is None or not set(RESULT_COLUMNS) <= set(reader.fieldnames):
        raise ClientError(
            "not a results file of `hubreturns submit --csv`",
            f"Give the file --results wrote (columns {','.join(RESULT_COLUMNS)}).",
        )
    devices = {row.line: row.values.get("device_id", "") for row in rows}
    accepted: dict[int, dict[str, str]] = {}
    for record in reader:
        line = int(record["row"]) if (record["row"] or "").isdigit() else -1
        if devices.get(line) != record["device_id"]:
            raise ClientError(
                f"results row {record['row']} ({record['device_id']}) is not line "
                f"{record['row']} of the returns CSV",
                "Resume with the same CSV the results were written for.",
            )
        if record["code"] == ResponseCode.I99.value:
            accepted[line] = {name: record[name] or "" for name in RESULT_COLUMNS}
    return accepted


def run_bulk(
    rows: Sequence[CsvRow],
    submit: Callable[[Mapping[str, str]], SubmitResult],
    results: TextIO,
    *,
    concurrency: int,
    on_result: Callable[[CsvRow, SubmitResult], None] | None = None,
    accepted: Mapping[int, Mapping[str, str]] | None = None,
) -> BulkSummary:
    """Send every row not in ``accepted`` with at most ``concurrency`` in flight.

    The results file gets one row per input row, in input order: each written
    and flushed (and fsynced) as soon as it and every row before it are known.
    ``accepted`` (``--resume``) rows are copied, not sent. On
    ``KeyboardInterrupt`` no further row starts; rows in flight are waited for
    and recorded (they were sent), then every row not sent is written as such
    and the summary comes back with ``interrupted`` set.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    carried = dict(accepted or {})
    writer = csv.DictWriter(results, RESULT_COLUMNS)
    writer.writeheader()
    results.flush()
    to_send = [row for row in rows if row.line not in carried]
    summary = BulkSummary(total=len(to_send), carried=len(rows) - len(to_send))
    known: dict[int, dict[str, str]] = {line: dict(r) for line, r in carried.items()}
    written = 0

    def flush_ready() -> None:
        nonlocal written
        while written < len(rows) and rows[written].line in known:
            writer.writerow(known.pop(rows[written].line))
            written += 1
        results.flush()
        with suppress(OSError, io.UnsupportedOperation):  # e.g. a StringIO: nothing to sync
            os.fsync(results.fileno())

    def record(row: CsvRow, result: SubmitResult) -> None:
        known[row.line] = _result_row(row, result)
        summary.add(result)
        flush_ready()
        if on_result is not None:
            on_result(row, result)

    summary.interrupted = _send_all(to_send, submit, concurrency, record)
    for row in rows[written:]:
        known.setdefault(row.line, _result_row(row, None))
    flush_ready()
    return summary


def _send_all(
    rows: Sequence[CsvRow],
    submit: Callable[[Mapping[str, str]], SubmitResult],
    concurrency: int,
    record: Callable[[CsvRow, SubmitResult], None],
) -> bool:
    """Send ``rows`` in order, ``concurrency`` at a time; True when interrupted."""
    pending = iter(rows)
    in_flight: dict[Future[SubmitResult], CsvRow] = {}
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="submit")
    try:
        try:
            for row in pending:
                in_flight[executor.submit(submit, row.values)] = row
                if len(in_flight) >= concurrency:
                    break
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    row = in_flight.pop(future)
                    record(row, future.result())  # re-raises an interrupt from the sender
                    following = next(pending, None)
                    if following is not None:
                        in_flight[executor.submit(submit, following.values)] = following
        except KeyboardInterrupt:
            for future, row in list(in_flight.items()):
                if future.cancel():
                    continue
                try:
                    record(row, future.result())
                except KeyboardInterrupt:
                    continue
            return True
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return False


# ------------------------------------------------------------------- sign / verify


def _compact(root: etree._Element) -> None:
    """Drop whitespace-only text between elements (DCC checks the compact form)."""
    for element in root.iter():
        if len(element) and element.text is not None and not element.text.strip():
            element.text = None
        if element.tail is not None and not element.tail.strip():
            element.tail = None


def sign_document(
    data: bytes,
    key: ec.EllipticCurvePrivateKey,
    cert: SigningCertificate,
    counter: int | None = None,
) -> bytes:
    """Sign an unsigned ``sr:Request`` document (compacted first) with the SMKI profile.

    Refuses an already signed document, a schema-invalid one, and one whose
    RequestID originator is not the certificate's User ID (the service would
    answer E43). ``counter`` (``--counter``) replaces the RequestID counter.
    """
    try:
        root = envelope.parse(data, REQUEST_POLICY)
    except EnvelopeRejection as exc:
        raise ClientError(
            f"not a request document: {exc.message}", CODE_INFO[exc.code].hint
        ) from None
    if next(root.iter(f"{_DS}Signature"), None) is not None:
        raise ClientError(
            "the document is already signed",
            "Sign the unsigned document (re-signing would nest signatures); "
            "check an existing signature with `hubreturns verify`.",
        )
    _compact(root)
    try:
        envelope.validate(root)
    except EnvelopeRejection as exc:
        raise ClientError(
            f"the document is not valid DUIS 5.4: {exc.message}", CODE_INFO[exc.code].hint
        ) from None
    element = root.find(f"{_SR}Header/{_SR}RequestID")
    try:
        request_id = RequestId.parse(element.text or "" if element is not None else "")
        if counter is not None:
            request_id = replace(request_id, counter=counter)
    except ValueError as exc:
        raise ClientError(
            str(exc), "RequestID must be ORIGINATOR:TARGET:COUNTER; --counter 0 to 2^64-1."
        ) from None
    if element is not None and counter is not None:
        element.text = str(request_id)
    originator = request_id.originator
    if cert.eui != originator:
        raise ClientError(
            f"the RequestID originator {originator} is not the certificate's User ID {cert.eui}",
            "Sign with the certificate of the originator (the service would answer "
            f"{DEFAULT_PROFILE.code(Reason.IDENTITY_MISMATCH)}).",
        )
    return signature.sign(root, key, cert)


def is_response(data: bytes) -> bool:
    """Whether the document's root is ``sr:Response`` (parsed with the hardened parser)."""
    try:
        return envelope.parse(data, DSP_RESPONSE_POLICY).tag == f"{_SR}Response"
    except EnvelopeRejection:
        return False


@dataclass(frozen=True, slots=True)
class Verified:
    """A document whose signature checked out, and the certificate that made it.

    ``code`` is the response code when the document is a DCC response.
    """

    signer: SigningCertificate
    request_id: str | None
    is_response: bool = False
    code: str | None = None


def verify_document(
    data: bytes,
    certificates: Sequence[SigningCertificate],
    *,
    as_response: bool | None = None,
    now: datetime | None = None,
) -> Verified:
    """Check a signed request or DCC response with the exact profile, as the service does.

    Which it is comes from the root element (``sr:Request`` / ``sr:Response``)
    unless ``as_response`` says. Raises ``Rejection`` naming the code the
    reason the service would refuse it with: MALFORMED/SCHEMA for the document,
    SIGNATURE … UNUSABLE_CERTIFICATE for the signature, IDENTITY_MISMATCH when a
    request's originator is not the signer.
    """
    if as_response is None:
        as_response = is_response(data)
    policy = DSP_RESPONSE_POLICY if as_response else REQUEST_POLICY
    known = {c.key: c for c in certificates}
    root = envelope.parse(data, policy)
    expected = f"{_SR}Response" if as_response else f"{_SR}Request"
    if root.tag != expected:
        raise EnvelopeRejection(
            Reason.SCHEMA,
            f"the root element is {etree.QName(root).localname}, "
            f"expected {etree.QName(expected).localname}",
        )
    signer = signature.verify(
        root, lambda issuer, serial: known.get((issuer, serial)), policy, now or datetime.now(UTC)
    )
    request_id = root.findtext(f"{_SR}Header/{_SR}RequestID")
    if as_response:
        read = read_response(data, certificates, now)
        return Verified(signer, request_id, is_response=True, code=read.code)
    envelope.validate(root)
    try:
        originator = RequestId.parse(request_id or "").originator
    except ValueError as exc:
        raise EnvelopeRejection(Reason.SCHEMA, str(exc)) from None
    if signer.eui != originator:
        raise SignatureRejection(
            Reason.IDENTITY_MISMATCH,
            f"signed by {signer.eui}'s certificate, but the originator is {originator}",
        )
    return Verified(signer, request_id)
