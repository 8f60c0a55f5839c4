"""``hubreturns orders|consignments|lifecycle|charges|report``: the operator's commands.

Thin shells over ``Logistics``: each command is one transaction, shows a Rich
progress bar on stderr while it works, and on a refusal prints ``error:`` /
``hint:`` (with every bad row of a file) and exits with status 2.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from sqlalchemy.exc import SQLAlchemyError

from hubreturns.dcc.cli import ConfigOption, CsvOption
from hubreturns.dcc.config import Settings, load_settings
from hubreturns.dcc.logistics.charges import load_tariff
from hubreturns.dcc.logistics.errors import LogisticsError, problem_text
from hubreturns.dcc.logistics.lifecycle import TRANSITIONS, TestOutcome
from hubreturns.dcc.logistics.operations import (
    ConsignmentView,
    Logistics,
    OrderView,
    ProgressCallback,
    ReturnView,
)
from hubreturns.dcc.logistics.render import to_csv, to_html, to_rich
from hubreturns.dcc.logistics.reports import build_report
from hubreturns.dcc.logistics.values import (
    HubVariant,
    OrderChange,
    OrderRequest,
    Period,
    check_consignment_status,
    check_eui,
    check_month,
)
from hubreturns.dcc.store.db import make_engine, make_sessionmaker
from hubreturns.errors import HintedError
from hubreturns.tables import emit_rows

__all__ = [
    "charges_cmd",
    "consignments_app",
    "lifecycle_app",
    "orders_app",
    "register",
    "report_cmd",
]

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

FromOption = Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD (included).")]
ToOption = Annotated[str, typer.Option("--to", help="Last day, YYYY-MM-DD (included).")]


class ReportFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    HTML = "html"


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return f"cli:uid{os.getuid()}"


@contextmanager
def _logistics(config: Path | None) -> Iterator[Logistics]:
    """Settings, tariff and store for one command; refusals become error/hint, exit 2."""
    try:
        settings: Settings = load_settings(config)
        tariff = load_tariff(settings.tariff_file)
        engine = make_engine(settings.database_url)
        try:
            yield Logistics(
                make_sessionmaker(engine),
                tariff,
                eligibility=settings.eligibility(),
                codes=settings.response_codes,
            )
        finally:
            engine.dispose()
    except LogisticsError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        for problem in exc.problems:
            err.print(f"  {problem_text(problem)}", highlight=False)
        err.print(f"[yellow]hint:[/yellow] {exc.hint}", highlight=False)
        raise typer.Exit(2) from None
    except HintedError as exc:
        err.print(f"[red]error:[/red] {exc}\n[yellow]hint:[/yellow] {exc.hint}")
        raise typer.Exit(2) from None
    except SQLAlchemyError as exc:
        err.print(f"[red]error:[/red] database: {str(exc).splitlines()[0]}", highlight=False)
        err.print("[yellow]hint:[/yellow] run `hubreturns init` and check database_url.")
        raise typer.Exit(2) from None


@contextmanager
def _progress(description: str) -> Iterator[ProgressCallback]:
    """A Rich progress bar on stderr, driven by the operations' callbacks."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def advance(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield advance


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot read {path}: {exc.strerror}", highlight=False)
        err.print("[yellow]hint:[/yellow] check the path and permissions.")
        raise typer.Exit(2) from None


def _emit(headers: Sequence[str], rows: list[Sequence[object]], as_csv: bool, title: str) -> None:
    emit_rows(console, headers, rows, as_csv=as_csv, title=title, whole=_WHOLE)


def _show_return(view: ReturnView) -> None:
    console.print(
        f"return {view.id} ({view.device_id}) is [bold]{view.status}[/bold]"
        + (f"; test: {view.test_outcome}" if view.test_outcome else "")
        + f"; charge £{view.charge} ({view.charge_rule}, {view.charge_status})"
        + (
            "; hub released, it can be returned again"
            if view.status in ("closed", "written_off") and view.hub_open_return_id is None
            else ""
        ),
        highlight=False,
    )


def _consignment_rows(found: Sequence[ConsignmentView]) -> list[Sequence[object]]:
    return [
        (
            c.id,
            c.party,
            c.collection_location,
            c.month,
            c.status,
            len(c.return_ids),
            " ".join(str(i) for i in c.return_ids),
        )
        for c in found
    ]


#: Columns printed whole, never folded (User IDs of parties, months).
_WHOLE = frozenset({"supplier", "placed_by", "party", "month", "at"})


#: Narrow headings of the built-in tariff items for the terminal (CSV keeps the keys).
_SHORT_ITEMS = {
    "redeployable": "redepl.",
    "non_redeployable_single_band": "1-band",
    "non_redeployable_dual_band": "2-band",
}


def _short(key: str) -> str:
    return _SHORT_ITEMS.get(key, key)


def _show_order(order: OrderView, what: str) -> None:
    console.print(
        f"[green]order {order.id} {what}[/green]: {order.quantity} × {order.hub_variant} for "
        f"{order.supplier} (placed by {order.placed_by_role} {order.placed_by}), "
        f"to {order.delivery_location} in {order.requested_month}; {order.status}",
        highlight=False,
    )


_CONSIGNMENT_HEADERS = ("id", "party", "location", "month", "status", "hubs", "returns")


orders_app = typer.Typer(help="Communications Hub orders and deliveries (SEC F5).")
consignments_app = typer.Typer(help="Group returned hubs for collection; monthly plan.")
lifecycle_app = typer.Typer(
    help="Move a return along notified → collected → received → tested → closed "
    "(a lost or stolen hub: notified → written_off)."
)


@orders_app.command("add")
def orders_add(
    supplier: Annotated[str, typer.Option(help="User ID of the IS/GS the hubs are for.")],
    quantity: Annotated[int, typer.Option(help="Number of hubs.")],
    variant: Annotated[HubVariant, typer.Option(help="Hub variant.")],
    location: Annotated[str, typer.Option(help="Delivery location (site or postcode).")],
    month: Annotated[str, typer.Option(help="Requested delivery month, YYYY-MM.")],
    placed_by: Annotated[
        str | None,
        typer.Option(
            help="RSA placing the order for the Supplier (or, under the "
            "all-ordering-parties eligibility profile, any ordering party)."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Record a hub order for a Supplier (or by an RSA the Supplier appoints)."""
    with _logistics(config) as logistics:
        order = logistics.create_order(
            OrderRequest.parse(
                supplier=supplier,
                placed_by=placed_by,
                quantity=quantity,
                hub_variant=variant.value,
                delivery_location=location,
                requested_month=month,
                now=logistics.clock(),
            ),
            _actor(),
        )
    _show_order(order, "placed")


@orders_app.command("amend")
def orders_amend(
    order: Annotated[int, typer.Argument(help="Order id.")],
    quantity: Annotated[int | None, typer.Option(help="New number of hubs.")] = None,
    variant: Annotated[HubVariant | None, typer.Option(help="New hub variant.")] = None,
    location: Annotated[str | None, typer.Option(help="New delivery location.")] = None,
    month: Annotated[str | None, typer.Option(help="New delivery month, YYYY-MM.")] = None,
    config: ConfigOption = None,
) -> None:
    """Change an order before its first delivery (kept in its history)."""
    with _logistics(config) as logistics:
        change = OrderChange.parse(
            quantity=quantity,
            hub_variant=variant.value if variant else None,
            delivery_location=location,
            requested_month=month,
            now=logistics.clock(),
        )
        view = logistics.amend_order(order, change, _actor())
    _show_order(view, "amended")


@orders_app.command("cancel")
def orders_cancel(
    order: Annotated[int, typer.Argument(help="Order id.")],
    config: ConfigOption = None,
) -> None:
    """Cancel an order before its first delivery."""
    with _logistics(config) as logistics:
        view = logistics.cancel_order(order, _actor())
    _show_order(view, "cancelled")


@orders_app.command("history")
def orders_history(
    order: Annotated[int, typer.Argument(help="Order id.")],
    as_csv: CsvOption = False,
    config: ConfigOption = None,
) -> None:
    """Everything done to an order: placed, amended (before → after), cancelled."""
    with _logistics(config) as logistics:
        events = logistics.order_history(order)
    _emit(
        ("at", "action", "actor", "changes"),
        [
            (e.at.isoformat(timespec="seconds"), e.action, e.actor, json.dumps(e.changes))
            for e in events
        ],
        as_csv,
        f"Order {order} history",
    )


@orders_app.command("list")
def orders_list(
    supplier: Annotated[str | None, typer.Option(help="Only this Supplier's.")] = None,
    as_csv: CsvOption = False,
    config: ConfigOption = None,
) -> None:
    """Orders with how many hubs were delivered so far."""
    with _logistics(config) as logistics:
        found = logistics.orders(check_eui(supplier, "--supplier") if supplier else None)
    _emit(
        (
            "id",
            "supplier",
            "placed_by",
            "role",
            "variant",
            "location",
            "month",
            "ordered",
            "delivered",
            "status",
        ),
        [
            (
                o.id,
                o.supplier,
                o.placed_by,
                o.placed_by_role,
                o.hub_variant,
                o.delivery_location,
                o.requested_month,
                o.quantity,
                o.delivered,
                o.status,
            )
            for o in found
        ],
        as_csv,
        "Hub orders",
    )


@orders_app.command("deliver")
def orders_deliver(
    order: Annotated[int, typer.Argument(help="Order id.")],
    file: Annotated[Path, typer.Argument(help="CSV: chf_device_id,gpf_device_id")],
    config: ConfigOption = None,
) -> None:
    """Load a delivery: hubs enter the inventory Pending, the Supplier responsible."""
    data = _read(file)
    with _logistics(config) as logistics, _progress("checking the file") as progress:
        delivery = logistics.deliver(order, data, source=file.name, progress=progress)
    console.print(
        f"[green]delivery {delivery.id}[/green]: {delivery.hubs} hubs loaded as Pending "
        f"against order {delivery.order_id} ({delivery.order_delivered} of "
        f"{delivery.order_quantity} delivered)",
        highlight=False,
    )


@consignments_app.command("plan")
def consignments_plan(
    month: Annotated[str, typer.Option(help="Month the returns were notified, YYYY-MM.")],
    default_location: Annotated[
        str | None, typer.Option(help="Location for returns without one.")
    ] = None,
    as_csv: CsvOption = False,
    config: ConfigOption = None,
) -> None:
    """One shipment per location for the month, and the saving against one per hub."""
    with _logistics(config) as logistics:
        plan = logistics.plan(check_month(month, "--month"), default_location)
    rows: list[Sequence[object]] = [
        (
            s.location,
            " ".join(s.parties),
            s.hubs,
            s.consolidated_cost,
            s.individual_cost,
            s.saving,
        )
        for s in plan.shipments
    ]
    rows.append(("TOTAL", "", plan.hubs, plan.consolidated_cost, plan.individual_cost, plan.saving))
    _emit(
        (
            ("location", "parties", "hubs", "consolidated_gbp", "one_per_hub_gbp", "saving_gbp")
            if as_csv
            else ("location", "parties", "hubs", "consolidated £", "one per hub £", "saving £")
        ),
        rows,
        as_csv,
        f"Collection plan {plan.month} (shipment £{plan.shipment_cost})",
    )


@consignments_app.command("create")
def consignments_create(
    month: Annotated[str, typer.Option(help="Month the returns were notified, YYYY-MM.")],
    default_location: Annotated[
        str | None, typer.Option(help="Location for returns without one.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Group the month's notified returns into consignments (party × location)."""
    with _logistics(config) as logistics, _progress("grouping returns") as progress:
        created = logistics.create_consignments(
            check_month(month, "--month"), default_location, progress=progress
        )
    _emit(_CONSIGNMENT_HEADERS, _consignment_rows(created), False, "Consignments created")


@consignments_app.command("list")
def consignments_list(
    status: Annotated[str | None, typer.Option(help="planned or collected.")] = None,
    as_csv: CsvOption = False,
    config: ConfigOption = None,
) -> None:
    """Every consignment with its returns."""
    with _logistics(config) as logistics:
        wanted = check_consignment_status(status, "--status") if status is not None else None
        found = logistics.consignments(status=wanted)
    _emit(_CONSIGNMENT_HEADERS, _consignment_rows(found), as_csv, "Consignments")


@lifecycle_app.command("collect")
def lifecycle_collect(
    consignment: Annotated[int, typer.Argument(help="Consignment id.")],
    config: ConfigOption = None,
) -> None:
    """Step collect: every return in the consignment was picked up."""
    with _logistics(config) as logistics:
        view = logistics.collect(consignment, _actor())
    console.print(
        f"[green]consignment {view.id} collected[/green]: returns "
        + " ".join(str(i) for i in view.return_ids),
        highlight=False,
    )


@lifecycle_app.command("receive")
def lifecycle_receive(
    return_id: Annotated[int, typer.Argument(help="Return id.")],
    config: ConfigOption = None,
) -> None:
    """Step receive: the hub arrived at the DCC."""
    with _logistics(config) as logistics:
        _show_return(logistics.receive(return_id, _actor()))


@lifecycle_app.command("test")
def lifecycle_test(
    return_id: Annotated[int, typer.Argument(help="Return id.")],
    outcome: Annotated[TestOutcome, typer.Option(help="What the DCC test found.")],
    config: ConfigOption = None,
) -> None:
    """Step test: record fault confirmed or no fault found."""
    with _logistics(config) as logistics:
        _show_return(logistics.test(return_id, outcome, _actor()))


@lifecycle_app.command("close")
def lifecycle_close(
    return_id: Annotated[int, typer.Argument(help="Return id.")],
    config: ConfigOption = None,
) -> None:
    """Step close: the return is finished and the hub may be returned again."""
    with _logistics(config) as logistics:
        _show_return(logistics.close(return_id, _actor()))


@lifecycle_app.command("write-off")
def lifecycle_write_off(
    return_id: Annotated[int, typer.Argument(help="Return id.")],
    config: ConfigOption = None,
) -> None:
    """Step write off: closes a lost or stolen hub's return (it is never collected)."""
    with _logistics(config) as logistics:
        _show_return(logistics.write_off(return_id, _actor()))


@lifecycle_app.command("locate")
def lifecycle_locate(
    return_id: Annotated[int, typer.Argument(help="Return id.")],
    location: Annotated[str, typer.Argument(help="Where the hub is to be collected.")],
    config: ConfigOption = None,
) -> None:
    """Set the collection location of a notified return."""
    with _logistics(config) as logistics:
        view = logistics.locate(return_id, location)
    console.print(f"return {view.id}: collect from {view.collection_location}")


@lifecycle_app.command("show")
def lifecycle_show(
    return_id: Annotated[int, typer.Argument(help="Return id.")],
    config: ConfigOption = None,
) -> None:
    """Where a return is in its lifecycle, and its charge."""
    with _logistics(config) as logistics:
        _show_return(logistics.return_view(return_id))


@lifecycle_app.command("transitions")
def lifecycle_transitions() -> None:
    """The lifecycle table: which step is allowed from which status."""
    _emit(
        ("hub", "from", "step", "to"),
        [
            (path.value, s.value, step.value, new.value)
            for (path, s, step), new in TRANSITIONS.items()
        ],
        False,
        "Return lifecycle",
    )


def charges_cmd(
    first: FromOption,
    last: ToOption,
    as_csv: CsvOption = False,
    config: ConfigOption = None,
) -> None:
    """Charges per party (Supplier charged) and month of notification, by tariff item."""
    with _logistics(config) as logistics:
        summaries = logistics.charges(Period.parse(first, last))
        tariff = logistics.tariff
    keys = tariff.item_keys
    _emit(
        (
            ("party", "month", "returns", "charged", "pending", "lost/stolen", *keys)
            if as_csv
            else ("party", "month", "n", "chg.", "pend.", "lost", *map(_short, keys))
        )
        + (("amount_gbp",) if as_csv else ("total £",)),
        [
            (
                s.party,
                s.month,
                s.returns,
                s.charged,
                s.pending,
                s.not_returned,
                *(s.counts.get(k, 0) for k in keys),
                s.total,
            )
            for s in summaries
        ],
        as_csv,
        "Charges",
    )
    if as_csv:
        return
    console.print(f"tariff: {tariff.source}", highlight=False)
    for s in summaries:
        for device_id in s.stock_charge_hubs:
            console.print(
                f"{device_id} ({s.party}, {s.month}): lost or stolen, no return charge; "
                "the pre-installation stock charge goes on accruing",
                highlight=False,
            )


def report_cmd(
    first: FromOption,
    last: ToOption,
    output_format: Annotated[
        ReportFormat, typer.Option("--format", help="table, csv or html.")
    ] = ReportFormat.TABLE,
    out: Annotated[
        Path | None, typer.Option(help="Write to this file (required for html).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Returns, rejections, consignments and charges for a period."""
    if output_format is ReportFormat.HTML and out is None:
        err.print("[red]error:[/red] --format html needs --out FILE")
        err.print("[yellow]hint:[/yellow] e.g. --out report.html")
        raise typer.Exit(2)
    with _logistics(config) as logistics, _progress("reading the database") as progress:
        report = build_report(logistics, Period.parse(first, last), progress=progress)
        if output_format is ReportFormat.HTML:
            progress("drawing charts", 0, 1)
            text = to_html(report)
        elif output_format is ReportFormat.CSV:
            text = to_csv(report)
        else:
            text = ""
    if out is None:
        if output_format is ReportFormat.CSV:
            sys.stdout.write(text)
        else:
            console.print(to_rich(report))
        return
    if output_format is ReportFormat.TABLE:
        buffer = io.StringIO()
        Console(file=buffer, width=120, color_system=None).print(to_rich(report))
        text = buffer.getvalue()
    _write_atomically(out, text)
    err.print(f"[green]report written[/green] to {out}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the logistics commands to the ``hubreturns`` app."""
    app.add_typer(orders_app, name="orders")
    app.add_typer(consignments_app, name="consignments")
    app.add_typer(lifecycle_app, name="lifecycle")
    app.command("charges")(charges_cmd)
    app.command("report")(report_cmd)


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, so no half-written report exists."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)  # a report is for reading; mkstemp makes it 0600
        os.replace(temporary, path)
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot write {path}: {exc.strerror}", highlight=False)
        err.print("[yellow]hint:[/yellow] check the folder exists and is writable.")
        raise typer.Exit(2) from None
