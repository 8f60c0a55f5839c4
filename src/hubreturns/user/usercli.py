"""The Service User's commands: submit, sign, verify, testpack.

Thin shells over ``hubreturns.user.submission`` and ``hubreturns.user.testpack``. Exit
status: 0 = accepted / verified / all passed; 1 = the service refused, a
response did not verify, or a scenario failed; 2 = a usage problem (printed as
``error:`` + ``hint:``, nothing sent); 130 = interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from hubreturns.codes import DEFAULT_PROFILE, CodeProfile, Reason, Verdict
from hubreturns.errors import Rejection
from hubreturns.model import DEFAULT_ACB, RequestId, eui
from hubreturns.user.client import TlsSetupError, tls_context
from hubreturns.user.submission import (
    COLUMNS,
    BulkSummary,
    ClientError,
    CounterStore,
    CsvRow,
    InvalidFields,
    InvalidReturnsFile,
    SubmitResult,
    Submitter,
    default_dcc_certificates,
    default_state_dir,
    is_response,
    load_certificates,
    load_signer,
    read_results,
    read_returns_csv,
    request_from_values,
    run_bulk,
    sign_document,
    verify_document,
)
from hubreturns.user.testpack import (
    PackError,
    ScenarioOutcome,
    renew_pack,
    run_pack,
    write_pack,
)

__all__ = ["register_cli"]

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _usage(message: str, hint: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}\n[yellow]hint:[/yellow] {hint}")
    raise typer.Exit(EXIT_USAGE)


def _dcc(paths: list[Path] | None) -> list[Any]:
    try:
        return load_certificates(paths) if paths else default_dcc_certificates()
    except ClientError as exc:
        _usage(str(exc), exc.hint)


KeyOption = Annotated[Path, typer.Option("--key", help="Your XML-signing private key (PEM).")]
CertOption = Annotated[
    Path, typer.Option("--cert", help="Your XML-signing certificate (PEM, OU 87).")
]
DccOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--dcc-cert",
        help="DCC response-signing certificate(s) (PEM); default: the DCC test DSP certificates.",
    ),
]
CaOption = Annotated[
    Path | None,
    typer.Option("--ca", help="HTTPS: the CA of the service's TLS certificate (PEM)."),
]
ClientCertOption = Annotated[
    Path | None,
    typer.Option("--client-cert", help="Mutual TLS: your TLS client certificate (PEM)."),
]
ClientKeyOption = Annotated[
    Path | None, typer.Option("--client-key", help="Mutual TLS: its private key (PEM).")
]
CodesOption = Annotated[
    Path | None,
    typer.Option(
        "--codes",
        help="TOML file with the service's [response_codes] table (its settings file "
        "will do), so codes are explained as that service means them; default: "
        "$HUBRETURNS_CONFIG when set, else the default profile.",
    ),
]


def _code_profile(path: Path | None) -> CodeProfile:
    """The code profile answers are explained with (``--codes``), or a usage error."""
    path = path or (
        Path(os.environ["HUBRETURNS_CONFIG"]) if "HUBRETURNS_CONFIG" in os.environ else None
    )
    if path is None:
        return DEFAULT_PROFILE
    hint = "Give the service's settings file, or a file with only its [response_codes] table."
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        _usage(f"--codes: cannot read {path}: {exc.strerror}", hint)
    except tomllib.TOMLDecodeError as exc:
        _usage(f"--codes: {path} is not valid TOML: {exc}", hint)
    table = data.get("response_codes", data.get("hubreturns", {}).get("response_codes", {}))
    try:
        return CodeProfile.with_overrides(table)
    except (ValueError, TypeError, AttributeError) as exc:
        _usage(f"--codes: [response_codes] in {path}: {exc}", hint)


def _verify(ca: Path | None, client_cert: Path | None, client_key: Path | None) -> Any:
    """httpx's ``verify`` for the TLS options, or a usage error with a hint."""
    try:
        return tls_context(ca, client_cert, client_key)
    except TlsSetupError as exc:
        _usage(str(exc), exc.hint)


_OPTION_OF = {
    "variant": "--variant",
    "device_id": "--device",
    "return_type": "--return-type",
    "other_device_id": "--other-device",
    "connection_method": "--connection-method",
    "fault_reason": "--fault-reason",
    "user_ref_datetime": "--user-ref-datetime",
    "user_ref_id": "--user-ref-id",
    "incident_reference": "--incident-reference",
    "additional_information": "--additional-information",
}


def _print_result(result: SubmitResult) -> None:
    colour = "green" if result.ok else "red"
    console.print(f"request  {result.request_id}")
    if result.code is None:
        console.print(f"[{colour}]FAILED[/{colour}]  {result.detail}")
    else:
        status = f" (HTTP {result.http_status})" if result.http_status is not None else ""
        console.print(f"[{colour}]{result.code}[/{colour}]  {result.meaning}{status}")
    if not result.ok:
        console.print(f"hint     {result.hint}")


UrlOption = Annotated[str, typer.Option(help="Service base URL (…/api/v1/serviceD is added).")]
VariantOption = Annotated[str | None, typer.Option(help="8.14.3 (fault) or 8.14.4 (no fault).")]
DeviceOption = Annotated[str | None, typer.Option(help="DeviceID: the hub's CHF.")]
ReturnTypeOption = Annotated[
    str | None, typer.Option(help="CHFFaultReturnType / CHFNoFaultReturnType text.")
]
OtherDeviceOption = Annotated[str | None, typer.Option(help="8.14.3: the hub's GPF.")]
ConnectionMethodOption = Annotated[
    str | None, typer.Option(help="8.14.3: Hot-shoe, Cradle or ESME.")
]
FaultReasonOption = Annotated[str | None, typer.Option(help="8.14.3: CHFFaultReason.")]
UserRefDatetimeOption = Annotated[str | None, typer.Option(help="xs:dateTime.")]
UserRefIdOption = Annotated[str | None, typer.Option(help="Your reference (≤ 25).")]
IncidentOption = Annotated[str | None, typer.Option(help="≤ 15 characters.")]
AdditionalOption = Annotated[str | None, typer.Option(help="≤ 200 characters.")]
CsvFileOption = Annotated[
    Path | None, typer.Option("--csv", help="Bulk: a CSV of returns (docs/service-user.md).")
]
ResultsOption = Annotated[
    Path | None,
    typer.Option(help="Bulk: results CSV, one row per input row (never overwritten)."),
]
ResumeOption = Annotated[
    Path | None,
    typer.Option(help="Bulk: an earlier results CSV; send only the rows it has not I99."),
]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Bulk: replace an existing --results file.")
]
ConcurrencyOption = Annotated[
    int,
    typer.Option(
        min=1,
        max=64,
        help="Bulk: requests in flight. Above 1 a request overtaken by a later one of "
        "yours may be refused as a replay (send those again with --resume).",
    ),
]
RetriesOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Resends (same RequestID and bytes) after no response or E100; "
        "an answered request is never resent.",
    ),
]
RetryDelayOption = Annotated[
    float, typer.Option(min=0, help="Seconds before the first resend (then doubling).")
]
CounterOption = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="RequestID counter of the (first) request; default: the time in ms, "
        "above the last one in the state file.",
    ),
]
SaveDirOption = Annotated[
    Path | None,
    typer.Option(help="Keep each signed request and the response as XML files here."),
]
TargetOption = Annotated[str, typer.Option(help="RequestID target (the DCC ACB).")]
StateDirOption = Annotated[
    Path | None,
    typer.Option(help="Counter state folder (default $HUBRETURNS_STATE_DIR or XDG state)."),
]
TimeoutOption = Annotated[float, typer.Option(help="HTTP timeout in seconds.")]


def submit(
    key: KeyOption,
    cert: CertOption,
    url: UrlOption,
    variant: VariantOption = None,
    device: DeviceOption = None,
    return_type: ReturnTypeOption = None,
    other_device: OtherDeviceOption = None,
    connection_method: ConnectionMethodOption = None,
    fault_reason: FaultReasonOption = None,
    user_ref_datetime: UserRefDatetimeOption = None,
    user_ref_id: UserRefIdOption = None,
    incident_reference: IncidentOption = None,
    additional_information: AdditionalOption = None,
    csv_file: CsvFileOption = None,
    results: ResultsOption = None,
    resume: ResumeOption = None,
    overwrite: OverwriteOption = False,
    concurrency: ConcurrencyOption = 1,
    retries: RetriesOption = 3,
    retry_delay: RetryDelayOption = 1.0,
    counter: CounterOption = None,
    save_dir: SaveDirOption = None,
    dcc_cert: DccOption = None,
    target: TargetOption = DEFAULT_ACB,
    state_dir: StateDirOption = None,
    timeout: TimeoutOption = 30.0,
    ca: CaOption = None,
    client_cert: ClientCertOption = None,
    client_key: ClientKeyOption = None,
    codes: CodesOption = None,
) -> None:
    """Sign and send 8.14.3 / 8.14.4 returns; verify and explain the DCC's answer."""
    verify = _verify(ca, client_cert, client_key)
    profile = _code_profile(codes)
    signer, target_eui = _signer_and_target(key, cert, target)
    sending = _Sending(
        url=url,
        signer=signer,
        dcc=_dcc(dcc_cert),
        counters=CounterStore(state_dir or default_state_dir()),
        target=target_eui,
        retries=retries,
        retry_delay=retry_delay,
        counter=counter,
        save_dir=save_dir,
        timeout=timeout,
        verify=verify,
        codes=profile,
    )
    fields = {
        "variant": variant,
        "device_id": device,
        "return_type": return_type,
        "other_device_id": other_device,
        "connection_method": connection_method,
        "fault_reason": fault_reason,
        "user_ref_datetime": user_ref_datetime,
        "user_ref_id": user_ref_id,
        "incident_reference": incident_reference,
        "additional_information": additional_information,
    }
    if csv_file is not None:
        given = [_OPTION_OF[k] for k, v in fields.items() if v]
        if given:
            _usage(
                f"--csv cannot be combined with {', '.join(given)}", "Put the values in the CSV."
            )
        if results is None:
            _usage("--csv needs --results OUT.csv", "Name a file for the per-row results.")
        _bulk(csv_file, results, resume, overwrite, concurrency, sending)
        return
    if resume is not None or overwrite:
        _usage("--resume and --overwrite are for --csv", "Use them with --csv and --results.")
    _single(fields, sending)


def _signer_and_target(key: Path, cert: Path, target: str) -> tuple[Any, str]:
    try:
        return load_signer(key, cert), eui(target)
    except ClientError as exc:
        _usage(str(exc), exc.hint)
    except ValueError as exc:
        _usage(f"--target: {exc}", "The target is the DCC ACB EUI, e.g. " + DEFAULT_ACB)


def _single(fields: dict[str, str | None], sending: _Sending) -> None:
    """One return from the options: checked before a counter is spent, then sent."""
    try:
        request_from_values(
            fields,
            RequestId(originator=sending.signer.originator, target=sending.target, counter=0),
        )
    except InvalidFields as exc:
        _usage(
            "the return is not valid: " + "; ".join(str(p) for p in exc.problems),
            "Options mirror the CSV columns: " + ", ".join(COLUMNS) + ".",
        )
    with httpx.Client(timeout=sending.timeout, verify=sending.verify) as http:
        try:
            result = sending.submitter(http).submit(fields)
        except ClientError as exc:
            _usage(str(exc), exc.hint)
    _print_result(result)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


@dataclass(frozen=True, slots=True)
class _Sending:
    """Everything ``submit`` needs to make a ``Submitter``, single or bulk."""

    url: str
    signer: Any
    dcc: list[Any]
    counters: CounterStore
    target: str
    retries: int
    retry_delay: float
    counter: int | None
    save_dir: Path | None
    timeout: float
    verify: Any
    codes: CodeProfile

    def submitter(self, http: httpx.Client) -> Submitter:
        return Submitter(
            url=self.url,
            signer=self.signer,
            dcc_certificates=self.dcc,
            counters=self.counters,
            target=self.target,
            http=http,
            retries=self.retries,
            retry_delay=self.retry_delay,
            first_counter=self.counter,
            save_dir=self.save_dir,
            codes=self.codes,
        )


def _bulk_inputs(
    csv_file: Path, results_path: Path, resume: Path | None, overwrite: bool
) -> tuple[list[CsvRow], dict[int, dict[str, str]]]:
    """The checked rows and the rows accepted before (``--resume``); nothing sent yet."""
    try:
        rows = read_returns_csv(csv_file.read_bytes())
    except OSError as exc:
        _usage(f"cannot read {csv_file}: {exc.strerror}", "Check the path.")
    except InvalidReturnsFile as exc:
        err.print(f"[red]error:[/red] {csv_file}: {exc}")
        err.print("[yellow]hint:[/yellow] fix the listed lines; columns: " + ",".join(COLUMNS))
        raise typer.Exit(EXIT_USAGE) from None
    accepted: dict[int, dict[str, str]] = {}
    if resume is not None:
        try:
            accepted = read_results(resume.read_text(encoding="utf-8"), rows)
        except OSError as exc:
            _usage(f"cannot read --resume {resume}: {exc.strerror}", "Check the path.")
        except ClientError as exc:
            _usage(f"--resume {resume}: {exc}", exc.hint)
    if results_path.exists() and not overwrite:
        _usage(
            f"{results_path} exists; results are never overwritten silently",
            "Name a new file with --results (to resume from it: --resume "
            f"{results_path} --results NEW.csv), or add --overwrite.",
        )
    return rows, accepted


def _bulk(
    csv_file: Path,
    results_path: Path,
    resume: Path | None,
    overwrite: bool,
    concurrency: int,
    sending: _Sending,
) -> None:
    rows, accepted = _bulk_inputs(csv_file, results_path, resume, overwrite)
    if resume is not None:
        console.print(
            f"resuming from {resume}: {len(accepted)} of {len(rows)} rows were accepted "
            f"and are not sent again"
        )
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    try:
        with (
            httpx.Client(timeout=sending.timeout, limits=limits, verify=sending.verify) as http,
            results_path.open("w", encoding="utf-8", newline="") as out,
            Progress(
                TextColumn("sending"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("[red]{task.fields[failed]} failed"),
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            task = progress.add_task("returns", total=len(rows) - len(accepted), failed=0)
            failed = 0

            def advance(_row: Any, result: SubmitResult) -> None:
                nonlocal failed
                failed += not result.ok
                progress.update(task, advance=1, failed=failed)

            summary = run_bulk(
                rows,
                sending.submitter(http).submit,
                out,
                concurrency=concurrency,
                on_result=advance,
                accepted=accepted,
            )
    except OSError as exc:
        _usage(f"cannot write {results_path}: {exc.strerror}", "Check the path and permissions.")
    except ClientError as exc:
        _usage(str(exc), exc.hint)
    _bulk_report(csv_file, results_path, summary, sending)


def _bulk_report(
    csv_file: Path, results_path: Path, summary: BulkSummary, sending: _Sending
) -> None:
    save_dir = sending.save_dir
    table = Table(title=f"{csv_file}: {summary.done} of {summary.total} sent")
    table.add_column("code", no_wrap=True)
    table.add_column("meaning", overflow="fold")
    table.add_column("rows", no_wrap=True)
    for code, count in sorted(summary.by_code.items()):
        found = sending.codes.explain(code)
        meaning = found.meaning if found is not None else code
        table.add_row(code, meaning, str(count))
    console.print(table)
    if summary.carried:
        console.print(f"{summary.carried} rows accepted earlier were not sent again")
    console.print(f"results in {results_path} (one row per input row)")
    if save_dir is not None:
        console.print(f"requests and responses in {save_dir}/")
    if summary.interrupted:
        err.print(
            f"[yellow]interrupted[/yellow]: {summary.done} of {summary.total} rows done and "
            f"recorded in {results_path}; the rest were not sent "
            f"(send them with --resume {results_path} --results NEW.csv)"
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.failed:
        err.print(
            f"[red]{summary.failed} of {summary.total} rows were not accepted[/red]; "
            f"the hint column of {results_path} says what to do"
        )
        raise typer.Exit(EXIT_FAILED)


def sign_cmd(
    document: Annotated[Path, typer.Argument(help="Unsigned sr:Request XML.")],
    key: KeyOption,
    cert: CertOption,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here (default: stdout).")
    ] = None,
    counter: Annotated[
        int | None,
        typer.Option(min=0, help="Set the RequestID counter (default: keep the document's)."),
    ] = None,
) -> None:
    """Sign an unsigned request document with the SMKI XML-signing profile."""
    try:
        signer = load_signer(key, cert)
        signed = sign_document(document.read_bytes(), signer.key, signer.certificate, counter)
    except OSError as exc:
        _usage(f"cannot read {document}: {exc.strerror}", "Check the path.")
    except ClientError as exc:
        _usage(str(exc), exc.hint)
    if out is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(signed)
        sys.stdout.buffer.flush()
        return
    out.write_bytes(signed)
    err.print(f"signed {document} -> {out} as {signer.originator}")


#: What to do when a *response* fails a check (the codes' own hints are for requests).
_RESPONSE_HINTS: dict[Verdict, str] = {
    Reason.MALFORMED: "Keep the exact bytes the service sent (submit --save-dir does); "
    "the file is not one well-formed XML document.",
    Reason.SCHEMA: "The file is not a DUIS 5.4 response; keep the exact bytes the "
    "service sent (submit --save-dir does).",
    Reason.SIGNATURE: "The response was changed after signing or is not signed; do not "
    "edit saved responses, fetch the original.",
    Reason.UNKNOWN_CERTIFICATE: "Give the DCC's response-signing certificate with --cert (default: "
    "the DCC test DSP certificates).",
    Reason.UNUSABLE_CERTIFICATE: "The certificate given is not a valid DCC response-signing "
    "certificate (OU 89 or 137) at this time.",
}


def _verify_hint(exc: Rejection, response: bool) -> str:
    if not response:
        if exc.code is Reason.UNKNOWN_CERTIFICATE:
            return "Give the signer's XML-signing certificate with --cert."
        return exc.hint
    return _RESPONSE_HINTS.get(exc.code, exc.hint)


def verify_cmd(
    document: Annotated[Path, typer.Argument(help="Signed request or response XML.")],
    cert: Annotated[
        list[Path] | None,
        typer.Option(
            "--cert",
            help="Certificate(s) that may have signed it (PEM); for a response the "
            "default is the DCC test DSP certificates.",
        ),
    ] = None,
    as_response: Annotated[
        bool,
        typer.Option(
            "--as-response", help="Check the file as a DCC sr:Response whatever its root."
        ),
    ] = False,
    codes: CodesOption = None,
) -> None:
    """Check a signed request or response (told apart by its root element) with the
    exact profile the service uses; print OK, and a response's code, or why not."""
    try:
        data = document.read_bytes()
    except OSError as exc:
        _usage(f"cannot read {document}: {exc.strerror}", "Check the path.")
    response = as_response or is_response(data)
    if not cert and not response:
        _usage(
            f"{document} is a request (root sr:Request): --cert is required",
            "Give the sender's XML-signing certificate (PEM) with --cert.",
        )
    certificates = _dcc(cert)
    profile = _code_profile(codes)
    what = "response" if response else "request"
    try:
        verified = verify_document(data, certificates, as_response=response)
    except Rejection as exc:
        code = profile.code(exc.code)
        console.print(f"[red]FAILED[/red] {what} {code} ({exc.code.value}): {exc.message}")
        console.print(f"hint: {_verify_hint(exc, response)}")
        raise typer.Exit(EXIT_FAILED) from None
    signer = verified.signer
    console.print(
        f"[green]OK[/green] {what} {document}: signed by {signer.eui or '-'} "
        f"(issuer {signer.issuer}, serial {signer.serial}); RequestID {verified.request_id}"
    )
    if verified.code is not None:
        info = profile.explain(verified.code)
        meaning = info.meaning if info is not None else "not in this service's code profile"
        console.print(f"response code {verified.code}: {meaning}")
        if info is not None and verified.code != "I99":
            console.print(f"hint: {info.hint}")


class _DefaultWrite(TyperGroup):
    """``hubreturns testpack OUT/`` means ``hubreturns testpack write OUT/``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's vendored Context
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["write", *args]
        return super().parse_args(ctx, args)


testpack_app = typer.Typer(
    cls=_DefaultWrite,
    no_args_is_help=True,
    help="Conformance test pack: `testpack OUT/` writes one, `testpack run OUT/ --url` runs it.",
)


@testpack_app.command("write")
def write_pack_cmd(
    out: Annotated[Path, typer.Argument(help="New or empty folder for the pack.")],
    force: Annotated[bool, typer.Option(help="Replace a non-empty folder.")] = False,
) -> None:
    """Write signed requests, expected codes and the data to load (see its README)."""
    try:
        count = write_pack(out, force=force)
    except PackError as exc:
        _usage(str(exc), exc.hint)
    console.print(f"[green]wrote {count} scenarios[/green] to {out}/")
    console.print(
        f"[bold]load {out}/load/ (users, certs, appointments, devices) into the service "
        f"first[/bold], then: hubreturns testpack run {out} --url URL"
    )


@testpack_app.command("renew")
def renew_pack_cmd(
    pack: Annotated[Path, typer.Argument(help="A folder written by `hubreturns testpack`.")],
) -> None:
    """Make the pack's next run: new hubs, higher counters, signed again (load load/ again)."""
    try:
        run = renew_pack(pack)
    except PackError as exc:
        _usage(str(exc), exc.hint)
    console.print(
        f"[green]run {run}[/green] of {pack}: new hubs and counters; load {pack}/load/ "
        f"again, then: hubreturns testpack run {pack} --url URL"
    )


@testpack_app.command("run")
def run_pack_cmd(
    pack: Annotated[Path, typer.Argument(help="A folder written by `hubreturns testpack`.")],
    url: Annotated[str, typer.Option(help="Service base URL.")],
    dcc_cert: DccOption = None,
    timeout: Annotated[float, typer.Option(help="HTTP timeout in seconds.")] = 30.0,
    ca: CaOption = None,
    client_cert: ClientCertOption = None,
    client_key: ClientKeyOption = None,
    load: Annotated[
        bool,
        typer.Option(
            "--load",
            help="This service: renew the run if it was sent, load it into the database of "
            "--config, then run (so the pack can run again and again).",
        ),
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="With --load: the service's configuration file.")
    ] = None,
    resend: Annotated[
        bool, typer.Option("--resend", help="Send a run that was sent before (another service).")
    ] = False,
) -> None:
    """Send every scenario in manifest order; pass/fail per scenario and a summary."""
    verify = _verify(ca, client_cert, client_key)
    dcc = _dcc(dcc_cert)

    def show(outcome: ScenarioOutcome) -> None:
        verdict = "[green]pass[/green]" if outcome.passed else "[red]FAIL[/red]"
        got = outcome.received if outcome.verified else f"{outcome.received} (unverified)"
        name = outcome.folder.removeprefix("scenarios/")
        line = f"{verdict} {name}: expected {outcome.expected}, got {got}"
        if outcome.detail:
            line += f" - {outcome.detail}"
        console.print(line, soft_wrap=True)

    try:
        if load:
            # The one place the Service User's tools reach into the DCC side: this
            # service's own database, as a convenience for running the pack again.
            from hubreturns.demo import load_pack_into_service

            console.print(load_pack_into_service(pack, config))
        outcomes = run_pack(
            pack, url, dcc, on_outcome=show, timeout=timeout, verify=verify, resend=resend
        )
    except PackError as exc:
        _usage(str(exc), exc.hint)
    passed = sum(o.passed for o in outcomes)
    colour = "green" if passed == len(outcomes) else "red"
    console.print(f"[{colour}]{passed}/{len(outcomes)} scenarios passed[/{colour}]")
    if passed != len(outcomes):
        raise typer.Exit(EXIT_FAILED)


def register_cli(app: typer.Typer) -> None:
    """Add submit, sign, verify and testpack to the main app (idempotent)."""
    if any(getattr(c, "name", None) == "submit" for c in app.registered_commands):
        return
    app.command("submit")(submit)
    app.command("sign")(sign_cmd)
    app.command("verify")(verify_cmd)
    app.add_typer(testpack_app, name="testpack")
