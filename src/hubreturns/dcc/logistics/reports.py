"""The period report: what was returned, refused, consigned and charged.

``build_report`` reads the database once per section into a ``Report`` value
(counts and Decimal amounts only); ``render`` turns that value into a Rich
table, CSV or a self-contained HTML page. The CSV is the report's canonical
form: one row per number, ``section,key,detail,count,amount_gbp``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select

from hubreturns.dcc.logistics.charges import ChargeSummary, money
from hubreturns.dcc.logistics.operations import ConsignmentView, Logistics, ProgressCallback
from hubreturns.dcc.logistics.values import Period
from hubreturns.dcc.store.models import AuditEntry, User

__all__ = ["REPORT_SECTIONS", "Report", "ReportRow", "build_report"]

#: Report sections in output order, with their titles.
REPORT_SECTIONS: tuple[tuple[str, str], ...] = (
    ("returns_by_party", "Returns by party (sender)"),
    ("returns_by_role", "Returns by role"),
    ("returns_by_type", "Returns by type"),
    ("returns_by_fault_reason", "Returns by fault reason (8.14.3)"),
    ("returns_by_status", "Returns by lifecycle status"),
    ("rejections_by_code", "Rejections by response code"),
    ("consignments", "Consignments created"),
    ("charges", "Charges by party and month"),
    ("stock_charges_accruing", "Lost or stolen hubs: no return charge, stock charge accrues"),
    ("totals", "Totals"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRow:
    section: str
    key: str
    count: int
    detail: str = ""
    amount: Decimal | None = None
    #: What the key stands for, shown next to it: a party's registered name, a code's meaning.
    name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    period: Period
    tariff_source: str
    rows: tuple[ReportRow, ...]
    consignments: tuple[ConsignmentView, ...]
    charges: tuple[ChargeSummary, ...]

    def section(self, name: str) -> tuple[ReportRow, ...]:
        return tuple(row for row in self.rows if row.section == name)


def _counted(
    section: str, counter: Counter[str], names: dict[str, str] | None = None
) -> list[ReportRow]:
    """Rows by count, largest first; ``names`` puts a name in the row's detail (and chart)."""
    named = names or {}
    return [
        ReportRow(
            section=section,
            key=key,
            count=count,
            detail=named.get(key, ""),
            name=named.get(key, ""),
        )
        for key, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _party_names(logistics: Logistics) -> dict[str, str]:
    with logistics.sessions() as session:
        return {str(u): str(n) for u, n in session.execute(select(User.user_id, User.name))}


def _return_rows(
    logistics: Logistics, period: Period, names: dict[str, str]
) -> tuple[list[ReportRow], int]:
    """The returns sections, and how many returns there were."""
    priced = logistics.priced_returns(period)
    rows = [
        *_counted("returns_by_party", Counter(p.record.originator for p in priced), names),
        *_counted("returns_by_role", Counter(p.record.role for p in priced)),
        *_counted("returns_by_type", Counter(p.record.return_type for p in priced)),
        *_counted(
            "returns_by_fault_reason",
            Counter(p.record.fault_reason for p in priced if p.record.fault_reason),
        ),
        *_counted("returns_by_status", Counter(p.record.status for p in priced)),
    ]
    return rows, len(priced)


def _rejection_rows(logistics: Logistics, period: Period) -> tuple[list[ReportRow], int]:
    """Refused requests by wire code, and how many there were."""
    with logistics.sessions() as session:
        found = session.execute(
            select(AuditEntry.code, func.count())
            .where(
                AuditEntry.accepted.is_(False),
                AuditEntry.received_at >= period.start,
                AuditEntry.received_at < period.end,
            )
            .group_by(AuditEntry.code)
        ).all()
    counter = Counter({str(code): int(count) for code, count in found})
    # Meanings under the service's own profile: an overridden code is explained as answered.
    meanings = {code: info.meaning for code, _, info in logistics.codes.rows()}
    return _counted("rejections_by_code", counter, meanings), sum(counter.values())


def _consignment_rows(found: Sequence[ConsignmentView]) -> list[ReportRow]:
    return [
        ReportRow(
            section="consignments",
            key=str(c.id),
            detail=f"{c.party} at {c.collection_location}, {c.month}, {c.status}",
            count=len(c.return_ids),
        )
        for c in found
    ]


def _charge_detail(summary: ChargeSummary, name: str) -> str:
    parts = (
        name,
        summary.month,
        f"{summary.charged} charged",
        f"{summary.pending} pending test" if summary.pending else "",
        f"{summary.not_returned} lost or stolen" if summary.not_returned else "",
    )
    return ", ".join(part for part in parts if part)


def _charge_rows(summaries: Sequence[ChargeSummary], names: dict[str, str]) -> list[ReportRow]:
    """Charges by party and month, then the lost or stolen hubs whose stock charge accrues."""
    charged = [
        ReportRow(
            section="charges",
            key=s.party,
            detail=_charge_detail(s, names.get(s.party, "")),
            count=s.returns,
            amount=s.total,
            name=names.get(s.party, ""),
        )
        for s in summaries
    ]
    accruing = [
        ReportRow(
            section="stock_charges_accruing",
            key=device_id,
            detail=f"{s.party}, notified {s.month}; pre-installation stock charge accrues",
            count=1,
        )
        for s in summaries
        for device_id in s.stock_charge_hubs
    ]
    return charged + accruing


def _total_rows(
    returns: int,
    rejections: int,
    consignments: Sequence[ConsignmentView],
    charges: Sequence[ChargeSummary],
) -> list[ReportRow]:
    return [
        ReportRow(section="totals", key="returns", count=returns),
        ReportRow(section="totals", key="rejections", count=rejections),
        ReportRow(
            section="totals",
            key="consignments",
            count=len(consignments),
            detail=f"{sum(len(c.return_ids) for c in consignments)} hubs",
        ),
        ReportRow(
            section="totals",
            key="charges",
            count=sum(s.returns for s in charges),
            amount=money(sum((s.total for s in charges), Decimal("0"))),
        ),
    ]


def build_report(
    logistics: Logistics, period: Period, *, progress: ProgressCallback | None = None
) -> Report:
    """Every section of the report for ``period`` (notification / receipt time in it)."""

    def read(done: int) -> None:
        if progress is not None:
            progress("reading the database", done, 4)

    names = _party_names(logistics)
    return_rows, returns = _return_rows(logistics, period, names)
    read(1)
    rejection_rows, rejections = _rejection_rows(logistics, period)
    read(2)
    consignments = tuple(logistics.consignments(period))
    read(3)
    charges = tuple(logistics.charges(period))
    read(4)
    rows = (
        *return_rows,
        *rejection_rows,
        *_consignment_rows(consignments),
        *_charge_rows(charges, names),
        *_total_rows(returns, rejections, consignments, charges),
    )
    return Report(
        period=period,
        tariff_source=logistics.tariff.source,
        rows=rows,
        consignments=consignments,
        charges=charges,
    )
