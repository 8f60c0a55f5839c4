"""The DCC operator's commands of ``hubreturns`` (Typer + Rich).

Each command is a thin shell over the library: it loads settings, opens the
store, calls one function and prints the result. Errors are printed as
``error: … / hint: …`` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.codes import CodeProfile, Reason
from hubreturns.dcc import registry
from hubreturns.dcc.config import Settings, load_settings, redact_url
from hubreturns.dcc.loading import (
    load_appointments,
    load_certificates,
    load_crl,
    load_inventory,
    load_users,
)
from hubreturns.dcc.registry import DeviceFilter, Listing
from hubreturns.dcc.rules import RULES, EligibilityProfile
from hubreturns.dcc.store.db import make_engine, make_sessionmaker, migrate
from hubreturns.dcc.store.models import Certificate, CertificateRevocation
from hubreturns.dcc.store.repository import Repository, ReturnFilter
from hubreturns.errors import HintedError
from hubreturns.model import (
    Channel,
    DeviceType,
    Role,
    SmiStatus,
    UserStatus,
    as_utc,
    eui,
    utcnow,
)
from hubreturns.tables import emit_rows, print_rows
from hubreturns.wire.certificate import normalize_issuer

__all__ = ["ConfigOption", "CsvOption", "app", "console", "fail", "report"]

app = typer.Typer(
    help="DCC Communications Hub returns service (DUIS 8.14.3 / 8.14.4, SECMP0039).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
load_app = typer.Typer(help="Load import files (CSV or PEM); a file with a bad row loads nothing.")
app.add_typer(load_app, name="load")
certs_app = typer.Typer(
    help="The SMKI repository: list, revoke and remove certificates, load a CRL.",
    no_args_is_help=True,
)
app.add_typer(certs_app, name="certs")
list_app = typer.Typer(
    help="List the registry: users, certs, appointments, devices (table, --csv or --json).",
    no_args_is_help=True,
)
app.add_typer(list_app, name="list")
remove_app = typer.Typer(
    help="Remove a User, appointment or device that no history refers to.",
    no_args_is_help=True,
)
app.add_typer(remove_app, name="remove")
users_app = typer.Typer(help="Suspend or activate a User.", no_args_is_help=True)
app.add_typer(users_app, name="users")

console = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"hubreturns {metadata.version('hubreturns')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """DCC Communications Hub returns service (DUIS 8.14.3 / 8.14.4, SECMP0039)."""


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML settings file (default: $HUBRETURNS_CONFIG, ./hubreturns.toml).",
    ),
]
CsvOption = Annotated[bool, typer.Option("--csv", help="CSV on stdout.")]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON records on stdout.")]


def fail(message: str, hint: str, code: str | None = None) -> NoReturn:
    raise HintedError(message, hint, code=code)


def _database_failure(exc: SQLAlchemyError, url: str) -> HintedError:
    """What went wrong with the database, for a person: unreachable, or not migrated."""
    first = redact_url(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
    if isinstance(exc, DBAPIError) and exc.statement is None:  # failed while connecting
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            where = f"the SQLite file {parsed.database}"
            check = "Does its folder exist, and may this user write there?"
        else:
            where = f"{parsed.host or 'localhost'} port {parsed.port or 5432}"
            check = "Is the server running there, and are the host, port, user and password right?"
        return HintedError(
            f"cannot connect to the database at {where} ({redact_url(url)}): {first}",
            f"{check} Check database_url (HUBRETURNS_DATABASE_URL).",
            code="database_unreachable",
        )
    return HintedError(
        f"database: {first}",
        "Run `hubreturns init` to create or migrate the schema, and check database_url.",
        code="database_schema",
    )


def _connect(engine: Engine, url: str) -> None:
    """Open one connection now, so an unreachable database is said as such."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise _database_failure(exc, url) from None


def _settings(config: Path | None) -> Settings:
    if config is not None:
        # Worker processes (serve --workers N) read the same file through the environment.
        os.environ["HUBRETURNS_CONFIG"] = str(config.resolve())
    return load_settings(config)


@contextmanager
def _store(config: Path | None) -> Iterator[sessionmaker[Session]]:
    settings = _settings(config)
    engine = make_engine(settings.database_url)
    try:
        yield make_sessionmaker(engine)
    except SQLAlchemyError as exc:
        raise _database_failure(exc, settings.database_url) from None
    finally:
        engine.dispose()


def _eui_option(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return eui(value)
    except ValueError as exc:
        fail(f"{name}: {exc}", "Write User and Device IDs as 00-DB-12-34-56-78-00-04.")


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(
            f"{name}: {value!r} is not an ISO 8601 date or time",
            "Use e.g. 2026-11-01 or 2026-11-01T09:30Z.",
        )
    return as_utc(moment)


# -- database ------------------------------------------------------------------------


@app.command()
def init(config: ConfigOption = None) -> None:
    """Create the database, or migrate it to the current schema."""
    settings = _settings(config)
    engine = make_engine(settings.database_url)
    try:
        _connect(engine, settings.database_url)
        migrate(engine)
    finally:
        engine.dispose()
    console.print(
        f"[green]database ready[/green]: {escape(redact_url(settings.database_url))}",
        highlight=False,
    )


# -- loads ---------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", "Check the path and permissions.")


@load_app.command("users")
def load_users_cmd(file: Path, config: ConfigOption = None) -> None:
    """Users CSV: user_id,role,name,status."""
    with _store(config) as sessions:
        count = load_users(sessions, _read(file), utcnow())
    console.print(f"[green]loaded {count} users[/green] from {file}")


@load_app.command("appointments")
def load_appointments_cmd(file: Path, config: ConfigOption = None) -> None:
    """Appointments CSV: rsa_user_id,supplier_user_id,valid_from,valid_to."""
    with _store(config) as sessions:
        count = load_appointments(sessions, _read(file))
    console.print(f"[green]loaded {count} appointments[/green] from {file}")


@load_app.command("devices")
def load_devices_cmd(
    file: Path,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="The file is the whole latest inventory: devices not in it are withdrawn "
            "(kept with their history; new returns for them get E19).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would change; write nothing.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Devices CSV: device_id,device_type,smi_status,responsible_suppliers,gpf_id.

    Without --replace an upsert: the file's devices are added or updated, others
    are left as they are. With --replace the file is the whole inventory (see
    docs/operations.md). Either way a file with a bad row loads nothing.
    """
    with _store(config) as sessions:
        change = load_inventory(sessions, _read(file), utcnow(), replace=replace, dry_run=dry_run)
    listed = len(change.added) + len(change.updated) + len(change.unchanged)
    verb = "would load" if change.dry_run else "loaded"
    console.print(
        f"[green]{verb} {listed} devices[/green] from {escape(str(file))}: "
        f"{len(change.added)} added, {len(change.updated)} updated, "
        f"{len(change.withdrawn)} withdrawn, {len(change.unchanged)} unchanged",
        highlight=False,
    )
    if change.dry_run:
        console.print("dry run: nothing was written", highlight=False)


@load_app.command("certs")
def load_certs_cmd(paths: list[Path], config: ConfigOption = None) -> None:
    """PEM certificates (files or folders) into the SMKI repository, all or nothing.

    With smki_ca_certs set, each must chain to one of those CAs.
    """
    settings = _settings(config)
    anchors = settings.trust_anchors()
    with _store(config) as sessions:
        # ``CertificatesRefused`` is a HintedError: reported with its own code by ``main``.
        done = load_certificates(sessions, paths, utcnow(), anchors=anchors)
    expired = {c.key for c in done.expired} | {c.key for c in done.not_yet_valid}
    revoked = {c.key for c in done.revoked}
    added = {c.key for c in done.added}
    table = Table("issuer", "serial", "EUI", "OU", "valid until", "load", "usable")
    for cert in done.certificates:
        table.add_row(
            cert.issuer,
            str(cert.serial),
            cert.eui or "-",
            ",".join(sorted(cert.organisational_units)),
            cert.not_after.date().isoformat(),
            "added" if cert.key in added else "unchanged",
            "REVOKED" if cert.key in revoked else "EXPIRED" if cert.key in expired else "yes",
        )
    console.print(table)
    for cert in done.expired:
        err.print(f"[yellow]warning:[/yellow] serial {cert.serial} expired on {cert.not_after}")
    for cert in done.not_yet_valid:
        err.print(f"[yellow]warning:[/yellow] serial {cert.serial} is valid from {cert.not_before}")
    for cert in done.revoked:
        err.print(f"[yellow]warning:[/yellow] serial {cert.serial} is revoked")
    trust = "chained to " + str(settings.smki_ca_certs) if anchors else "operator-vouched"
    console.print(
        f"[green]loaded {len(done.added)} certificates[/green] "
        f"({len(done.unchanged)} already held, unchanged); SMKI trust: {trust}"
    )


# -- the SMKI repository ----------------------------------------------------------------


def _issuer_serial(issuer: str, serial: str) -> tuple[str, int]:
    """ISSUER as an RFC 4514 name and SERIAL in decimal (or hex with 0x), as KeyInfo names them."""
    try:
        name = normalize_issuer(issuer)
    except ValueError as exc:
        fail(str(exc), "Write the issuer like OU=07,CN=Z1 (see `hubreturns certs list`).")
    try:
        number = int(serial, 16) if serial.lower().startswith("0x") else int(serial, 10)
    except ValueError:
        fail(f"{serial!r} is not a serial number", "Give it in decimal, or in hex as 0x...")
    return name, number


def _certificate_row(cert: Certificate, revoked: CertificateRevocation | None) -> Sequence[object]:
    return (
        cert.issuer,
        cert.serial,
        cert.eui,
        cert.organisational_units,
        cert.not_before.isoformat(timespec="seconds"),
        cert.not_after.isoformat(timespec="seconds"),
        revoked.revoked_at.isoformat(timespec="seconds") if revoked else None,
        revoked.reason if revoked else None,
    )


@certs_app.command("list")
def certs_list_cmd(
    user: Annotated[
        str | None, typer.Option("--eui", help="Only this User's certificates.")
    ] = None,
    as_csv: CsvOption = False,
    config: ConfigOption = None,
) -> None:
    """Stored certificates: issuer, serial, EUI, OU, validity, revocation."""
    with _store(config) as sessions, sessions() as session:
        stored = Repository(session).stored_certificates(_eui_option(user, "--eui"))
        rows: list[Sequence[object]] = [
            _certificate_row(s.certificate, s.revocation) for s in stored
        ]
    headers = ("issuer", "serial", "eui", "ou", "valid_from", "valid_to", "revoked", "reason")
    _emit(headers, rows, as_csv, "SMKI repository")


@certs_app.command("revoke")
def certs_revoke_cmd(
    issuer: Annotated[str, typer.Argument(help="Issuer name, e.g. OU=07,CN=Z1.")],
    serial: Annotated[str, typer.Argument(help="Serial number, decimal or 0x-hex.")],
    reason: Annotated[str, typer.Option(help="Recorded with the revocation.")] = "operator",
    config: ConfigOption = None,
) -> None:
    """Revoke a certificate: every worker refuses it (E42) within a second."""
    name, number = _issuer_serial(issuer, serial)
    now = utcnow()
    with _store(config) as sessions, sessions.begin() as session:
        repo = Repository(session)
        new = repo.revoke_certificate(name, number, revoked_at=now, reason=reason, now=now)
        stored = repo.certificate(name, number) is not None
    if not new:
        console.print(f"{name} serial {number} was already revoked")
        return
    console.print(f"[green]revoked[/green] {name} serial {number}")
    if not stored:
        err.print(
            "[yellow]warning:[/yellow] no such certificate is stored; "
            "it will be refused if it is ever loaded"
        )


@certs_app.command("remove")
def certs_remove_cmd(
    issuer: Annotated[str, typer.Argument(help="Issuer name, e.g. OU=07,CN=Z1.")],
    serial: Annotated[str, typer.Argument(help="Serial number, decimal or 0x-hex.")],
    config: ConfigOption = None,
) -> None:
    """Remove a certificate: requests signed with it get E41 within a second."""
    name, number = _issuer_serial(issuer, serial)
    with _store(config) as sessions, sessions.begin() as session:
        removed = Repository(session).remove_certificate(name, number)
    if not removed:
        fail(f"no certificate {name} serial {number} is stored", "See `hubreturns certs list`.")
    console.print(f"[green]removed[/green] {name} serial {number}")


@certs_app.command("load-crl")
def certs_load_crl_cmd(file: Path, config: ConfigOption = None) -> None:
    """Record every revocation in a CRL (PEM or DER); with smki_ca_certs, it must verify."""
    settings = _settings(config)
    anchors = settings.trust_anchors()
    with _store(config) as sessions:
        try:
            done = load_crl(sessions, file, utcnow(), anchors=anchors)
        except ValueError as exc:
            fail(str(exc), "Give the CRL issued by a CA in smki_ca_certs.")
    console.print(
        f"[green]{done.recorded} revocations recorded[/green] ({done.listed} in the CRL, "
        f"{done.listed - done.recorded} already recorded; "
        f"{len(done.stored)} of stored certificates)"
    )


# -- appointments ----------------------------------------------------------------------


@app.command()
def appoint(
    rsa: Annotated[str, typer.Option(help="The RSA's User ID.")],
    supplier: Annotated[str, typer.Option(help="The confirming Supplier's (IS/GS) User ID.")],
    valid_from: Annotated[str | None, typer.Option("--from", help="ISO 8601; default now.")] = None,
    valid_to: Annotated[
        str | None, typer.Option("--to", help="ISO 8601; default open-ended.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """A Supplier confirms that an RSA works for it (SECMP0039).

    Refused for an unknown or suspended Supplier, and while the same Supplier
    already has an open appointment of the same RSA.
    """
    rsa_id, supplier_id = _eui_option(rsa, "--rsa"), _eui_option(supplier, "--supplier")
    assert rsa_id is not None and supplier_id is not None
    start = _instant(valid_from, "--from") or utcnow()
    end = _instant(valid_to, "--to")
    if end is not None and end <= start:
        fail("--to must be after --from", "Leave --to out for an open-ended appointment.")
    with _store(config) as sessions, sessions.begin() as session:
        made = registry.appoint(session, rsa_id, supplier_id, start, end, utcnow())
    console.print(
        f"[green]{supplier_id} appoints RSA {rsa_id}[/green] from {start.isoformat()} "
        f"(appointment {made.id})"
    )


@app.command()
def revoke(
    rsa: Annotated[str, typer.Option(help="The RSA's User ID.")],
    supplier: Annotated[str, typer.Option(help="The Supplier withdrawing its confirmation.")],
    config: ConfigOption = None,
) -> None:
    """A Supplier withdraws its confirmation of an RSA, effective now."""
    rsa_id, supplier_id = _eui_option(rsa, "--rsa"), _eui_option(supplier, "--supplier")
    assert rsa_id is not None and supplier_id is not None
    with _store(config) as sessions, sessions.begin() as session:
        count = Repository(session).revoke(rsa_id, supplier_id, utcnow())
    if count == 0:
        fail(f"{supplier_id} has no open appointment of {rsa_id}", "See `hubreturns appoint`.")
    console.print(f"[green]revoked {count} appointment(s)[/green]")


# -- registry administration (``registry``) ----------------------------------------------


def _show(listing: Listing, as_csv: bool, as_json: bool) -> None:
    """A listing as a table (a list of records when too wide), CSV or JSON."""
    if as_json:
        print(json.dumps(registry.records(listing), indent=2))
        return
    if as_csv:
        _emit(listing.headers, list(listing.rows), True, listing.title)
        return
    empty = f"{listing.title}: no rows match."
    print_rows(
        console,
        listing.headers,
        listing.rows,
        title=listing.title,
        whole=listing.whole,
        empty=empty,
    )


_E = TypeVar("_E", bound=StrEnum)


def _choice(value: str | None, kind: type[_E], name: str) -> _E | None:
    """``value`` as a member of the enum ``kind`` (case-insensitive), or a usage error."""
    if value is None:
        return None
    for member in kind:
        if member.value.lower() == value.lower():
            return member
    fail(
        f"{name}: {value!r} is not one of {', '.join(m.value for m in kind)}", "Pick one of those."
    )


def _required_eui(value: str, name: str) -> str:
    found = _eui_option(value, name)
    assert found is not None
    return found


@list_app.command("users")
def list_users_cmd(
    role: Annotated[str | None, typer.Option(help="Only this role: IS, GS, RSA, ...")] = None,
    status: Annotated[str | None, typer.Option(help="active or suspended.")] = None,
    as_csv: CsvOption = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Registered Users: User ID, role, status, name."""
    chosen_role = _choice(role, Role, "--role")
    chosen_status = _choice(status, UserStatus, "--status")
    with _store(config) as sessions, sessions() as session:
        listing = registry.list_users(session, role=chosen_role, status=chosen_status)
    _show(listing, as_csv, as_json)


@list_app.command("certs")
def list_certs_cmd(
    user: Annotated[str | None, typer.Option("--eui", help="Only this User's.")] = None,
    as_csv: CsvOption = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """SMKI certificates: EUI, issuer, serial, OU, validity, revocation."""
    with _store(config) as sessions, sessions() as session:
        listing = registry.list_certificates(session, eui=_eui_option(user, "--eui"))
    _show(listing, as_csv, as_json)


@list_app.command("appointments")
def list_appointments_cmd(
    rsa: Annotated[str | None, typer.Option(help="Only this RSA's.")] = None,
    supplier: Annotated[str | None, typer.Option(help="Only this Supplier's.")] = None,
    open_only: Annotated[
        bool, typer.Option("--open", help="Only open ones (not revoked, not ended).")
    ] = False,
    as_csv: CsvOption = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Suppliers' appointments of RSAs, with their ids (for `remove appointment`)."""
    rsa_id, supplier_id = _eui_option(rsa, "--rsa"), _eui_option(supplier, "--supplier")
    with _store(config) as sessions, sessions() as session:
        listing = registry.list_appointments(
            session, rsa=rsa_id, supplier=supplier_id, open_only=open_only, now=utcnow()
        )
    _show(listing, as_csv, as_json)


@list_app.command("devices")
def list_devices_cmd(
    device: Annotated[str | None, typer.Option(help="Only this Device ID.")] = None,
    supplier: Annotated[
        str | None, typer.Option(help="Only devices it is responsible for.")
    ] = None,
    smi_status: Annotated[str | None, typer.Option(help="e.g. Pending, Commissioned.")] = None,
    device_type: Annotated[str | None, typer.Option("--type", help="e.g. CHF, GPF.")] = None,
    withdrawn: Annotated[
        bool, typer.Option("--withdrawn", help="Include devices withdrawn by a --replace load.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1)] = 1000,
    as_csv: CsvOption = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """The device inventory: type, SMI status, responsible Suppliers, GPF, open return."""
    where = DeviceFilter(
        device_id=_eui_option(device, "--device"),
        supplier=_eui_option(supplier, "--supplier"),
        smi_status=_choice(smi_status, SmiStatus, "--smi-status"),
        device_type=_choice(device_type, DeviceType, "--type"),
        withdrawn=withdrawn,
        limit=limit,
    )
    with _store(config) as sessions, sessions() as session:
        listing = registry.list_devices(session, where)
    _show(listing, as_csv, as_json)


@users_app.command("suspend")
def users_suspend_cmd(user: str, config: ConfigOption = None) -> None:
    """Suspend a User: its requests are refused (E3) from now; its history stays."""
    _set_status(user, UserStatus.SUSPENDED, config)


@users_app.command("activate")
def users_activate_cmd(user: str, config: ConfigOption = None) -> None:
    """Activate a suspended User again."""
    _set_status(user, UserStatus.ACTIVE, config)


def _set_status(user: str, status: UserStatus, config: Path | None) -> None:
    user_id = _required_eui(user, "EUI")
    with _store(config) as sessions, sessions.begin() as session:
        changed = registry.set_user_status(session, user_id, status, utcnow())
    state = "is now" if changed else "was already"
    console.print(f"{user_id} {state} {status.value}", highlight=False)


@remove_app.command("user")
def remove_user_cmd(user: str, config: ConfigOption = None) -> None:
    """Remove a User no return, audit row, order, appointment or device names."""
    user_id = _required_eui(user, "EUI")
    with _store(config) as sessions, sessions.begin() as session:
        registry.remove_user(session, user_id)
    console.print(f"removed User {user_id}", highlight=False)


@remove_app.command("appointment")
def remove_appointment_cmd(
    appointment: Annotated[int, typer.Argument(help="Its id (`hubreturns list appointments`).")],
    config: ConfigOption = None,
) -> None:
    """Remove an appointment no return was made under (e.g. one entered by mistake)."""
    with _store(config) as sessions, sessions.begin() as session:
        gone = registry.remove_appointment(session, appointment)
    console.print(
        f"removed appointment {appointment} ({gone.supplier_user_id} of RSA {gone.rsa_user_id})",
        highlight=False,
    )


@remove_app.command("device")
def remove_device_cmd(device: str, config: ConfigOption = None) -> None:
    """Remove a device no return, audit row or delivery names (e.g. loaded by mistake)."""
    device_id = _required_eui(device, "DEVICE")
    with _store(config) as sessions, sessions.begin() as session:
        registry.remove_device(session, device_id)
    console.print(f"removed device {device_id}", highlight=False)


# -- serving ---------------------------------------------------------------------------


def _serving_settings(
    config: Path | None, workers: int | None, tls: dict[str, Path | None]
) -> Settings:
    """The settings every worker will read, checked for serving before anything starts.

    Options reach the workers through the environment, so they are exported
    first; then the fail-safe checks run here, in the parent: test keys only
    with ``allow_test_keys``, a session secret for several workers, readable
    SMKI CA certificates and a reachable, migrated database.
    """
    for name, path in tls.items():
        if path is not None:  # the workers read their settings from the environment
            os.environ[f"HUBRETURNS_{name.upper()}"] = str(path.resolve())
    if workers is not None:
        os.environ["HUBRETURNS_WORKERS"] = str(workers)
    settings = _settings(config)
    settings.signer()  # fail now, not at the first request
    settings.trust_anchors()  # a configured SMKI CA that cannot be read: fail now too
    engine = make_engine(settings.database_url)
    try:
        _connect(engine, settings.database_url)
        migrate(engine)
    finally:
        engine.dispose()
    return settings


def _uvicorn_options(settings: Settings, host: str, port: int, log_level: str) -> dict[str, Any]:
    """uvicorn.run's keyword arguments for ``serve``."""
    from hubreturns.dcc.serving import HTTP_PROTOCOL, uvicorn_options

    if HTTP_PROTOCOL == "auto":
        fail(
            "httptools is not installed: the connection limits (header and idle timeouts, "
            "max_connections) would not be enforced",
            "Install hubreturns with its dependencies (pip install httptools).",
        )
    edge = uvicorn_options(settings)  # a ConfigError for unreadable TLS files, before workers
    return dict(
        factory=True,
        host=host,
        port=port,
        workers=settings.workers,
        log_level=log_level.lower(),
        log_config=None,  # uvicorn logs through our JSON handler
        access_log=False,  # hubreturns.http writes the access lines
        server_header=False,  # no "server: uvicorn": nothing to tell about the stack
        http=HTTP_PROTOCOL,  # a response's head and body in one send (serving.OneWritePerTurn)
        **edge,
        # uvicorn (>= 0.36) restarts a worker not ready in 5 s; a loaded host's imports take longer.
        timeout_worker_healthcheck=30,
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Worker processes (default: the setting workers, 1).", show_default=False
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="debug, info, warning or error (JSON lines on stderr).")
    ] = "info",
    config: ConfigOption = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="HTTPS: the server's certificate chain (PEM).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="HTTPS: its private key (PEM).")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="Mutual TLS: require client certificates issued by this CA (PEM)."),
    ] = None,
) -> None:
    """Serve the DUIS endpoints (/api/v1/serviceD|S|T), /healthz and /metrics.

    Refuses to start without signing_key and signing_cert (unless allow_test_keys),
    with more than one worker and no session_secret, or with an operator_token
    under 32 characters (docs/operations.md). The --tls-* options override the
    settings tls_cert, tls_key and tls_client_ca (docs/tls.md).
    """
    import uvicorn

    if not isinstance(logging.getLevelName(log_level.upper()), int):  # before the settings
        fail(f"unknown log level {log_level!r}", "Pass --log-level debug|info|warning|error.")
    tls = {"tls_cert": tls_cert, "tls_key": tls_key, "tls_client_ca": tls_client_ca}
    settings = _serving_settings(config, workers, tls)
    given, owned = _metrics_folder(settings.workers)
    from hubreturns.dcc.observability import reap_dead_workers
    from hubreturns.dcc.serving import run_workers, spreads_connections

    _start_logging(log_level)
    options = _uvicorn_options(settings, host, port, log_level)
    scheme = "https" if settings.tls else "http"
    mutual = " (client certificates required)" if settings.tls_client_ca else ""
    console.print(
        f"serving on {scheme}://{host}:{port}{mutual} with {settings.workers} worker(s), "
        f"{escape(redact_url(settings.database_url))}",
        highlight=False,
    )
    target = "hubreturns.dcc.service:app_from_environment"
    try:
        if settings.workers > 1 and spreads_connections():
            # Each worker on its own SO_REUSEPORT socket: see serving.WorkerListener.
            try:
                run_workers(uvicorn.Config(target, **options))
            except OSError as exc:
                fail(f"cannot listen on {host}:{port}: {exc}", "Is another server on that port?")
        else:
            uvicorn.run(target, **options)
    finally:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        elif given:
            reap_dead_workers(Path(given))  # every worker has stopped by now


def _metrics_folder(workers: int) -> tuple[str | None, Path | None]:
    """The multi-process metrics folder given in the environment, or one made here.

    It must be known before any worker imports prometheus_client. A folder made
    here (second value) is removed on exit; a given one is cleaned now.
    """
    import tempfile

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owned: Path | None = None
    if not given and workers > 1:
        owned = Path(tempfile.mkdtemp(prefix="hubreturns-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(owned)
    from hubreturns.dcc.observability import prepare_multiprocess_dir

    if given:
        prepare_multiprocess_dir(Path(given))
    return given, owned


def _start_logging(log_level: str) -> None:
    """JSON log lines at ``log_level`` here and, through the environment, in each worker."""
    from hubreturns.dcc.observability import LOG_LEVEL_ENV, configure_logging

    try:
        configure_logging(log_level)
    except ValueError as exc:
        fail(str(exc), "Pass --log-level debug|info|warning|error.")
    os.environ[LOG_LEVEL_ENV] = log_level


# -- queries ---------------------------------------------------------------------------


#: Columns printed whole, never folded or cut: identifiers and timestamps.
_WHOLE = frozenset(
    {
        "received",
        "request_id",
        "originator",
        "on_behalf_of",
        "device",
        "sender",
        "claimed, unverified",
    }
)


def _emit(headers: Sequence[str], rows: list[Sequence[object]], as_csv: bool, title: str) -> None:
    emit_rows(console, headers, rows, as_csv=as_csv, title=title, whole=_WHOLE)


@app.command("returns")
def returns_cmd(
    device: Annotated[str | None, typer.Option(help="Device ID of the hub.")] = None,
    originator: Annotated[str | None, typer.Option(help="Sending User ID.")] = None,
    on_behalf_of: Annotated[
        str | None, typer.Option(help="Supplier the return was made for.")
    ] = None,
    role: Annotated[str | None, typer.Option(help="IS, GS or RSA.")] = None,
    channel: Annotated[str | None, typer.Option(help="duis or servicedesk.")] = None,
    since: Annotated[
        str | None, typer.Option(help="ISO 8601 lower bound of received time.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    as_csv: CsvOption = False,
    config: ConfigOption = None,
) -> None:
    """List recorded returns, newest first."""
    where = ReturnFilter(
        device_id=_eui_option(device, "--device"),
        originator=_eui_option(originator, "--originator"),
        on_behalf_of=_eui_option(on_behalf_of, "--on-behalf-of"),
        role=_choice(role, Role, "--role"),
        channel=_choice(channel, Channel, "--channel"),
        since=_instant(since, "--since"),
        limit=limit,
    )
    with _store(config) as sessions, sessions() as session:
        records = Repository(session).returns(where)
        rows: list[Sequence[object]] = [
            (
                r.id,
                r.received_at.isoformat(timespec="seconds"),
                r.channel,
                r.request_id,
                r.originator,
                r.role,
                r.on_behalf_of,
                r.device_id,
                r.service_reference_variant,
                r.return_type,
                r.fault_reason,
                r.smi_status_at_return,
                r.status,
            )
            for r in records
        ]
    _emit(
        (
            "id",
            "received",
            "channel",
            "request_id",
            "originator",
            "role",
            "on_behalf_of",
            "device",
            "srv",
            "type",
            "fault_reason",
            "smi_at_return",
            "status",
        ),
        rows,
        as_csv,
        "Recorded returns",
    )


@app.command("log")
def log_cmd(
    originator: Annotated[
        str | None,
        typer.Option(help="User ID: requests it sent, and requests that claimed to be its."),
    ] = None,
    code: Annotated[str | None, typer.Option(help="Response code, e.g. E5.")] = None,
    refused: Annotated[bool, typer.Option("--refused", help="Only refused requests.")] = False,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    as_csv: CsvOption = False,
    config: ConfigOption = None,
) -> None:
    """The request audit log: every request received, accepted or not, newest first.

    "sender" is a verified sender; "claimed, unverified" the originator a
    refused request's RequestID named without that being verified.
    """
    with _store(config) as sessions, sessions() as session:
        entries = Repository(session).audit(
            originator=_eui_option(originator, "--originator"),
            code=code.upper() if code else None,
            accepted=False if refused else None,
            limit=limit,
        )
        rows: list[Sequence[object]] = [
            (
                e.id,
                e.received_at.isoformat(timespec="seconds"),
                e.channel,
                e.endpoint,
                e.request_id,
                e.originator,
                e.claimed_originator,
                e.code,
                e.http_status,
                e.reason,
            )
            for e in entries
        ]
    _emit(
        (
            "id",
            "received",
            "channel",
            "endpoint",
            "request_id",
            "sender",
            "claimed, unverified",
            "code",
            "http",
            "reason",
        ),
        rows,
        as_csv,
        "Request audit log",
    )


def _code_rows(profile: CodeProfile) -> list[tuple[str, str, str, str, str, str]]:
    """(code, reason, meaning, defined by, HTTP, hint) for every code in the profile."""
    return [
        (
            code,
            verdict.value if isinstance(verdict, Reason) else "",
            i.meaning,
            "configurable" if isinstance(verdict, Reason) else "DUIS",
            str(i.http_status),
            i.hint,
        )
        for code, verdict, i in profile.rows()
    ]


@app.command()
def codes(
    markdown: Annotated[bool, typer.Option(help="Markdown table (docs).")] = False,
    config: ConfigOption = None,
) -> None:
    """The response code profile in force: DUIS-defined codes and configurable choices.

    A configurable code is this project's choice pending DCC's DUGIDS, changed in
    the [response_codes] table of the configuration file (docs/response-codes.md).
    """
    rows = _code_rows(_settings(config).response_codes)
    if markdown:
        print("| code | reason | meaning | defined by | HTTP | hint |\n|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    table = Table("code", "reason", "meaning", "defined by", "HTTP", title="Response codes")
    for row in rows:
        table.add_row(*row[:5])
    Console(width=min(console.width, 100)).print(table)
    console.print(
        "configurable: this project's choice pending DCC's DUGIDS; set in [response_codes]",
        markup=False,  # the table name is text, not Rich markup
    )


def _matrix(profile: EligibilityProfile) -> list[tuple[str, str, str, str]]:
    """The role to 8.14.3/8.14.4 matrix of ``profile``: every role, allowed or not."""
    rows = []
    for role in Role:
        grant = profile.grant(role)
        if grant is None:
            rows.append((role.value, "no (E2)", "", ""))
            continue
        rows.append(
            (
                role.value,
                "yes",
                " or ".join(kind.value for kind in grant.authorisations),
                "Pending only (else E5)" if grant.pending_only else "any",
            )
        )
    return rows


@app.command()
def rules(
    config: ConfigOption = None,
    markdown: Annotated[bool, typer.Option(help="Markdown tables (docs).")] = False,
) -> None:
    """The decision table, in the order it is applied (codes from the profile in force),
    and the eligibility matrix in force."""
    settings = _settings(config)
    codes, profile = settings.response_codes, settings.eligibility()
    rows = [(str(n), codes.code(r.code), r.name, r.source) for n, r in enumerate(RULES, 1)]
    matrix = _matrix(profile)
    headers = ("role", "8.14.3/8.14.4", "authorised as (else E4)", "hub SMI status")
    if markdown:
        print("| # | code | check | source |\n|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print(f"\nEligibility profile `{profile.name}`: {profile.summary}\n")
        print("| " + " | ".join(headers) + " |\n|---|---|---|---|")
        for m in matrix:
            print("| " + " | ".join(m) + " |")
        return
    _emit(
        ("#", "code", "check", "source"),
        list(rows),
        False,
        "Decision rules (first failing row wins)",
    )
    _emit(headers, list(matrix), False, f"Eligibility profile {profile.name}")
    console.print(profile.summary, highlight=False)


def report(message: str, hint: str, code: str) -> NoReturn:
    """Print a refusal as error/hint/code lines on stderr and exit 2."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    err.print(f"[yellow]hint:[/yellow] {escape(hint)}", highlight=False)
    err.print(f"code: {code}", style="dim", highlight=False)
    sys.exit(2)
