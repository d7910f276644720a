"""Daily bill reconciliation: WeChat Pay's trade bill of a China day against
``payment_orders`` and ``refunds``.

What it finds, and does (each recorded at most once however often it runs):

- ``paid_not_here``: paid at WeChat Pay, not here (the order is pending or failed). It is
  settled through the normal path: the reconciler asks WeChat Pay and publishes the same
  ``payment.succeeded`` (event id ``reconcile-{transaction_id}``) it would, so the
  consumer applies it once, whoever published it first.
- ``paid_unknown_order``: paid at WeChat Pay for an ``out_trade_no`` not in
  ``payment_orders``: an alert, nothing to settle.
- ``amount_differs``, ``transaction_differs``: paid at both, not alike. The order goes to
  ``needs_review`` (the reason says what differs) with an alert.
- Paid here that day but not in the bill: the bill is no proof that it was not paid
  (near midnight paylane's ``paid_at`` and WeChat Pay's ``success_time`` can fall on
  different China days, and WeChat Pay may have no bill at all), so WeChat Pay is asked
  (the order query) before anything moves. Paid there (SUCCESS or REFUND) at the same
  amount and transaction: no difference (it is in a neighbouring day's bill). Not paid
  there, or unknown (ORDER_NOT_EXIST): ``not_paid_at_wechat``; paid at another amount or
  transaction: ``amount_differs`` / ``transaction_differs``: the order to
  ``needs_review``. The query failed: ``not_in_bill_unconfirmed``, an alert; the order is
  not moved on a guess (run the day again once WeChat Pay answers).
- ``refund_not_here``, ``refund_not_at_wechat``, ``refund_amount_differs``,
  ``refund_state_differs``: the same for refunds, by ``out_refund_no``. One of ours not in
  the bill is asked about likewise (the refund query): unknown there
  (RESOURCE_NOT_EXISTS) is ``refund_not_at_wechat``, known there is compared as a bill
  line would be, a failed query is ``refund_not_in_bill_unconfirmed``. A refund that
  WeChat Pay finished and that is still pending here is settled by the reconciler's
  refund query (its ``refund.*`` event); the others are alerts (refunds have no review
  state), listed in the report like every difference.

- ``bill_record_unreadable``: a line of the bill that could not be read (a field too
  many, an amount that is not one): an alert naming its ``out_trade_no`` where the columns
  before the fault could be read, and the rest of the day is reconciled all the same. An
  order of ours behind it is then "paid here, not in the bill", asked about at WeChat Pay
  as above.

A day WeChat Pay has no bill of (NO_STATEMENT_EXIST) while paylane has payments or
refunds that day is said loudly (``bill_missing``, an alert, counted as a difference of
that kind; the report's ``no_statement``); each of them is asked about as above.

Every difference is logged (``bill_difference``, ``alert=True``), counted in
``paylane_bill_differences_total{kind}``, and written once (per day, kind, order and
refund) to ``payment_logs`` (type ``bill_difference``). The day is China time: the
bill's and the window over ``paid_at`` and ``refunds.created_at`` (UTC in the database).

The daily run (:class:`DailyBills`) reconciles a day once across replicas: the
``paylane.bills`` lease (leases.py) keeps two from running at once, and the finished day,
recorded in ``paylane_meta`` (``bills_reconciled:YYYY-MM-DD``), keeps a replica whose timer fires
later from running it again (a second alert, a second count). ``paylane reconcile bills
--date D`` runs a day whatever was recorded: the operator's explicit request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, TypeVar

import aiomysql
import pymysql
import structlog

from paylane_common.contract.china_time import CHINA
from paylane_common.contract.money import yuan_text
from paylane_common.runtime.background import BackgroundLoop
from paylane_common.storage.db import is_duplicate_key, placeholders, transaction
from paylane_common.storage.leases import Lease
from paylane_common.storage.rows import OrderStatus, RefundStatus, fetch_all
from paylane_common.wechatpay import (
    BadRecord,
    TradeBill,
    TradeBillRecord,
    WechatPayApiError,
    WechatPayClient,
    WechatPayError,
)

from . import audit, metrics
from .gate import PAID_STATES
from .query_log import QueryLog
from .reconciler import OrderToSettle, Reconciler, RefundToSettle
from .review import to_review

log = structlog.get_logger(__name__)


class _Order(OrderToSettle):
    """An order as the day's bill is compared with it (``_orders``)."""

    status: OrderStatus | None
    amount_total: int
    transaction_id: str | None
    paid_at: datetime | None


class _Refund(RefundToSettle):
    """A refund as the day's bill is compared with it (``_refunds``)."""

    status: RefundStatus | None


_Row = TypeVar("_Row", bound=Mapping[str, object])

#: Orders whose payment the bill would show.
_PAID = ("paid", "refunded", "needs_review")
_REFUND_STATES = {"SUCCESS": "success", "CLOSED": "closed", "ABNORMAL": "abnormal"}
#: What the reconciler's refund query answers when it published the refund's outcome.
_SETTLED_REFUND = frozenset({"refund_success", "refund_closed", "refund_abnormal"})
#: A failed daily run (the bill not ready yet, WeChat Pay unreachable) is tried again.
RETRY_AFTER_S = 1800.0
RETRIES = 6


@dataclass(frozen=True)
class Difference:
    kind: str
    out_trade_no: str
    out_refund_no: str | None = None
    wechat_amount: int | None = None
    our_amount: int | None = None
    wechat_state: str | None = None
    our_state: str | None = None
    #: What was done: ``settled`` (published through the normal path), ``needs_review``,
    #: ``alert`` (reported only), ``already`` (done by an earlier run).
    action: str = "alert"


#: A daily run's outcome, as ``paylane_bill_reconcile_runs_total`` counts it: ``done``;
#: ``incomplete`` (WeChat Pay did not answer a query about part of the day: tried again);
#: or nothing done because another replica holds the lock (``other_replica``) or a run
#: finished the day already (``already_done``).
Outcome = Literal["done", "incomplete", "other_replica", "already_done"]


@dataclass
class BillReport:
    day: date
    bill_payments: int = 0
    bill_paid_total: int = 0
    bill_refunds: int = 0
    bill_refund_total: int = 0
    our_payments: int = 0
    our_paid_total: int = 0
    our_refunds: int = 0
    our_refund_total: int = 0
    #: WeChat Pay had no bill for the day (NO_STATEMENT_EXIST).
    no_statement: bool = False
    differences: list[Difference] = field(default_factory=list)

    @property
    def unconfirmed(self) -> bool:
        """Part of the day WeChat Pay could not be asked about, or what it answered could
        not be settled (a query or a publish failed): the day is not done."""
        return any(_unsettled(d) for d in self.differences)

    @property
    def bill_missing(self) -> bool:
        """No bill from WeChat Pay, though paylane has payments or refunds that day."""
        return self.no_statement and (self.our_payments > 0 or self.our_refunds > 0)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["day"] = self.day.isoformat()
        data["bill_missing"] = self.bill_missing
        return data

    def table(self) -> str:
        """The report for a terminal: totals, then one line a difference."""

        def yuan(fen: int | None) -> str:
            return "" if fen is None else yuan_text(fen)

        lines = [
            f"bill reconciliation for {self.day} (China time)",
            f"{'':12}{'WeChat Pay':>24}{'paylane':>24}",
            f"{'payments':12}{self.bill_payments:>10} {yuan(self.bill_paid_total):>13}"
            f"{self.our_payments:>10} {yuan(self.our_paid_total):>13}",
            f"{'refunds':12}{self.bill_refunds:>10} {yuan(self.bill_refund_total):>13}"
            f"{self.our_refunds:>10} {yuan(self.our_refund_total):>13}",
            "",
        ]
        if self.no_statement:
            note = "WeChat Pay has no bill for this day (NO_STATEMENT_EXIST)"
            if self.bill_missing:
                note += (
                    ": BILL MISSING, though paylane has payments or refunds that day"
                    " (each was asked about at WeChat Pay)"
                )
            lines.insert(1, note)
        if not self.differences:
            return "\n".join([*lines, "no differences"])
        header = ("kind", "out_trade_no", "out_refund_no", "wechat", "paylane", "action")
        rows = [header] + [
            (
                d.kind,
                d.out_trade_no,
                d.out_refund_no or "",
                " ".join(x for x in (yuan(d.wechat_amount), d.wechat_state or "") if x),
                " ".join(x for x in (yuan(d.our_amount), d.our_state or "") if x),
                d.action,
            )
            for d in self.differences
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        lines.append(f"{len(self.differences)} difference(s)")
        return "\n".join(lines)


def china_day_window(day: date) -> tuple[datetime, datetime]:
    """The China day as naive UTC bounds, as the database holds times."""
    start = datetime(day.year, day.month, day.day, tzinfo=CHINA).astimezone(UTC)
    start = start.replace(tzinfo=None)
    return start, start + timedelta(days=1)


def previous_china_day(now: datetime | None = None) -> date:
    return ((now or datetime.now(UTC)).astimezone(CHINA) - timedelta(days=1)).date()


class BillReconciler:
    LOCK = "paylane.bills"

    def __init__(
        self, pool: aiomysql.Pool, client: WechatPayClient, reconciler: Reconciler
    ) -> None:
        self._pool = pool
        self._client = client
        self._queries = QueryLog(pool, client)
        self._reconciler = reconciler

    async def run(self, day: date, *, wait_for_lock_s: float = 60) -> BillReport | None:
        """Reconcile ``day``, again if it was (an operator's explicit request); None when
        another replica holds the lock that long."""
        _, report = await self._run(day, wait_for_lock_s, unless_done=False)
        return report

    async def run_daily(self, day: date) -> tuple[Outcome, BillReport | None]:
        """The daily run: ``day`` reconciled unless a replica is at it or finished it."""
        return await self._run(day, 0, unless_done=True)

    async def _run(
        self, day: date, wait_s: float, *, unless_done: bool
    ) -> tuple[Outcome, BillReport | None]:
        async with Lease(self._pool, self.LOCK).held(wait_s) as locked:
            if not locked:
                return "other_replica", None
            if unless_done and await self._done(day):
                log.info("bill_already_reconciled", day=str(day))
                await self.show_last_success()
                return "already_done", None
            bill = await self._client.trade_bill(day)
            report = await self._compare(day, bill)
            if report.unconfirmed:
                # WeChat Pay did not answer about some of it: not done, the daily run
                # tries the day again (RETRY_AFTER_S) rather than leave it to a person.
                outcome: Outcome = "incomplete"
            else:
                outcome = "done"
                await self._mark_done(day)
                metrics.BILLS_LAST_SUCCESS.set_to_current_time()
        for d in report.differences:
            metrics.BILL_DIFFERENCES.labels(d.kind).inc()
        if report.bill_missing:
            metrics.BILL_DIFFERENCES.labels("bill_missing").inc()
            log.error(
                "bill_missing",
                alert=True,
                day=str(day),
                our_payments=report.our_payments,
                our_refunds=report.our_refunds,
            )
        log.info(
            "bill_reconciled", day=str(day), differences=len(report.differences), outcome=outcome
        )
        return outcome, report

    async def show_last_success(self) -> None:
        """``paylane_bills_last_success_timestamp_seconds`` set to when the newest day
        recorded in ``paylane_meta`` was finished, by whichever replica (if any was)."""
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT MAX(value) AS finished FROM paylane_meta WHERE name LIKE %s",
                (_done_name(None),),
            )
            row = await cur.fetchone()
        if row and row["finished"]:
            finished = datetime.strptime(row["finished"], "%Y-%m-%d %H:%M:%S.%f")
            metrics.BILLS_LAST_SUCCESS.set(finished.replace(tzinfo=UTC).timestamp())

    async def _done(self, day: date) -> bool:
        async with transaction(self._pool) as cur:
            await cur.execute("SELECT 1 FROM paylane_meta WHERE name = %s", (_done_name(day),))
            return await cur.fetchone() is not None

    async def _mark_done(self, day: date) -> None:
        """The day recorded as reconciled; a rerun by hand finds it recorded already."""
        finished = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        try:
            async with transaction(self._pool) as cur:
                await cur.execute(
                    "INSERT INTO paylane_meta (name, value) VALUES (%s, %s)",
                    (_done_name(day), finished),
                )
        except pymysql.err.IntegrityError as exc:
            if not is_duplicate_key(exc):
                raise

    async def _compare(self, day: date, bill: TradeBill) -> BillReport:
        report = BillReport(day, no_statement=bill.no_statement)
        payments = {r.out_trade_no: r for r in bill.payments if r.trade_state == "SUCCESS"}
        refunds = {r.out_refund_no: r for r in bill.refunds if r.out_refund_no}
        report.bill_payments = len(payments)
        report.bill_paid_total = sum(r.order_total for r in payments.values())
        report.bill_refunds = len(refunds)
        report.bill_refund_total = sum(r.requested_refund for r in refunds.values())
        start, end = china_day_window(day)
        orders = await self._orders(list(payments), start, end)
        ours = [
            o for o in orders.values() if _in(o["paid_at"], start, end) and o["status"] in _PAID
        ]
        report.our_payments = len(ours)
        report.our_paid_total = sum(o["amount_total"] for o in ours)
        for bad in bill.bad_records:
            report.differences.append(await self._unreadable(bad, day))
        for no, record in payments.items():
            found = await self._payment(record, orders.get(no), day)
            if found is not None:
                report.differences.append(found)
        for order in ours:
            if order["out_trade_no"] not in payments and order["status"] != "needs_review":
                found = await self._order_not_in_bill(order, day)
                if found is not None:
                    report.differences.append(found)
        our_refunds = await self._refunds([k for k in refunds if k], start, end)
        in_window = [r for r in our_refunds.values() if _in(r["created_at"], start, end)]
        report.our_refunds = len(in_window)
        report.our_refund_total = sum(r["amount_refund"] for r in in_window)
        for no, record in refunds.items():
            found = await self._refund(record, our_refunds.get(no), day)
            if found is not None:
                report.differences.append(found)
        for row in in_window:
            if row["out_refund_no"] not in refunds and row["status"] != "closed":
                found = await self._refund_not_in_bill(row, day)
                if found is not None:
                    report.differences.append(found)
        return report

    async def _payment(
        self, record: TradeBillRecord, order: _Order | None, day: date
    ) -> Difference | None:
        seen = Difference(
            "", record.out_trade_no, wechat_amount=record.order_total, wechat_state="SUCCESS"
        )
        if order is None:
            return await self._record(replace(seen, kind="paid_unknown_order"), day)
        seen = replace(seen, our_amount=order["amount_total"], our_state=order["status"])
        if order["status"] in ("pending", "failed"):
            settled = await self._reconciler.settle_order(order)
            action = "settled" if settled == "paid_recovered" else "alert"
            return await self._record(replace(seen, kind="paid_not_here", action=action), day)
        if order["status"] == "needs_review":
            return None  # a person looks at it already
        return await self._paid_alike(seen, order, record.transaction_id, day)

    async def _paid_alike(
        self, seen: Difference, order: _Order, transaction_id: str | None, day: date
    ) -> Difference | None:
        """An order paid here against WeChat Pay's payment of it (``seen.wechat_amount``,
        ``transaction_id``): to review when they differ."""
        if order["amount_total"] != seen.wechat_amount:
            reason = f"bill {day}: WeChat Pay's amount {seen.wechat_amount} differs"
            return await self._review(replace(seen, kind="amount_differs"), reason, day)
        if order["transaction_id"] not in (None, transaction_id):
            reason = f"bill {day}: WeChat Pay's transaction {transaction_id} differs"
            return await self._review(replace(seen, kind="transaction_differs"), reason, day)
        return None

    async def _order_not_in_bill(self, order: _Order, day: date) -> Difference | None:
        """Paid here that day, not in the bill: WeChat Pay is asked, and only its answer
        moves the order (see the module's docstring)."""
        seen = Difference(
            "", order["out_trade_no"], our_amount=order["amount_total"], our_state=order["status"]
        )
        try:
            tx = await self._queries.order(order["out_trade_no"], "bills")
        except WechatPayApiError as exc:
            if exc.code != "ORDER_NOT_EXIST":
                return await self._unconfirmed(
                    replace(seen, kind="not_in_bill_unconfirmed"), exc, day
                )
            tx = {"trade_state": exc.code}
        except WechatPayError as exc:
            return await self._unconfirmed(replace(seen, kind="not_in_bill_unconfirmed"), exc, day)
        state = tx.get("trade_state")
        seen = replace(
            seen, wechat_amount=(tx.get("amount") or {}).get("total"), wechat_state=state
        )
        if state not in PAID_STATES:
            reason = f"bill {day}: not paid at WeChat Pay ({state})"
            return await self._review(replace(seen, kind="not_paid_at_wechat"), reason, day)
        return await self._paid_alike(seen, order, tx.get("transaction_id"), day)

    async def _refund(
        self, record: TradeBillRecord, row: _Refund | None, day: date
    ) -> Difference | None:
        seen = Difference(
            "",
            record.out_trade_no,
            record.out_refund_no,
            wechat_amount=record.requested_refund,
            wechat_state=record.refund_status,
        )
        if row is None:
            return await self._record(replace(seen, kind="refund_not_here"), day)
        return await self._refund_alike(seen, row, day)

    async def _refund_not_in_bill(self, row: _Refund, day: date) -> Difference | None:
        """Ours, made that day, not in the bill: WeChat Pay is asked (as for orders)."""
        seen = Difference(
            "",
            row["out_trade_no"],
            row["out_refund_no"],
            our_amount=row["amount_refund"],
            our_state=row["status"],
        )
        kind = "refund_not_in_bill_unconfirmed"
        try:
            answer = await self._queries.refund(row["out_refund_no"], "bills", row["out_trade_no"])
        except WechatPayApiError as exc:
            if exc.code == "RESOURCE_NOT_EXISTS":
                return await self._record(replace(seen, kind="refund_not_at_wechat"), day)
            return await self._unconfirmed(replace(seen, kind=kind), exc, day)
        except WechatPayError as exc:
            return await self._unconfirmed(replace(seen, kind=kind), exc, day)
        amount = (answer.get("amount") or {}).get("refund")
        seen = replace(seen, wechat_amount=amount, wechat_state=answer.get("status"))
        return await self._refund_alike(seen, row, day)

    async def _refund_alike(self, seen: Difference, row: _Refund, day: date) -> Difference | None:
        """A refund as WeChat Pay has it (``seen``: amount and status) against ours. WeChat
        Pay's PROCESSING (a bill shows a refund's status when the bill was made) is alike
        whatever ours is now."""
        seen = replace(seen, our_amount=row["amount_refund"], our_state=row["status"])
        if row["amount_refund"] != seen.wechat_amount:
            return await self._record(replace(seen, kind="refund_amount_differs"), day)
        expected = _REFUND_STATES.get(seen.wechat_state or "")
        if expected is None or expected == row["status"]:
            return None  # still processing at WeChat Pay, or alike
        action = "alert"
        if row["status"] == "pending":
            outcome = await self._reconciler.settle_refund(row)
            action = "settled" if outcome in _SETTLED_REFUND else "alert"
        return await self._record(replace(seen, kind="refund_state_differs", action=action), day)

    async def _unreadable(self, bad: BadRecord, day: date) -> Difference:
        """A record of the bill that could not be read: reported, nothing moved."""
        log.warning("bill_record_unreadable", day=str(day), record=bad.number, reason=bad.reason)
        seen = Difference(
            "bill_record_unreadable",
            bad.out_trade_no or "",
            bad.out_refund_no,
            wechat_state=f"record {bad.number} unreadable",
        )
        return await self._record(seen, day)

    async def _review(self, diff: Difference, reason: str, day: date) -> Difference:
        """The order to ``needs_review`` (once; what it granted revoked) and the difference
        recorded."""
        async with transaction(self._pool) as cur:
            moved = await to_review(cur, diff.out_trade_no, reason)
        return await self._record(replace(diff, action="needs_review" if moved else "already"), day)

    async def _unconfirmed(self, diff: Difference, exc: WechatPayError, day: date) -> Difference:
        """WeChat Pay could not be asked: an alert, nothing moved."""
        code = exc.code if isinstance(exc, WechatPayApiError) else type(exc).__name__
        log.warning("bill_query_failed", out_trade_no=diff.out_trade_no, error=str(exc))
        return await self._record(replace(diff, wechat_state=code, action="alert"), day)

    async def _record(self, diff: Difference, day: date) -> Difference:
        """Logged and alerted every run; written to ``payment_logs`` the first time (per
        day, kind, order and refund: two refunds of one order are two differences)."""
        detail = f"{day} {diff.kind}: wechat {diff.wechat_amount} {diff.wechat_state},"
        detail += f" paylane {diff.our_amount} {diff.our_state}"
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT 1 FROM payment_logs WHERE out_trade_no = %s AND out_refund_no <=> %s"
                " AND type = 'bill_difference' AND detail LIKE %s LIMIT 1",
                (diff.out_trade_no, diff.out_refund_no, f"{day} {diff.kind}:%"),
            )
            if await cur.fetchone() is None:
                entry = audit.bill_difference(
                    diff.kind, diff.out_trade_no, diff.out_refund_no, diff.wechat_amount, detail
                )
                await audit.write(cur, entry)
        log.error("bill_difference", alert=True, **asdict(diff))
        return diff

    async def _orders(
        self, out_trade_nos: list[str], start: datetime, end: datetime
    ) -> dict[str, _Order]:
        """Orders paid in the window, and those the bill names."""
        return await self._rows(
            _Order,
            "payment_orders",
            "out_trade_no",
            "status, amount_total, transaction_id, paid_at, expires_at, created_at",
            "paid_at",
            out_trade_nos,
            start,
            end,
        )

    async def _refunds(
        self, out_refund_nos: list[str], start: datetime, end: datetime
    ) -> dict[str, _Refund]:
        """Refunds made in the window, and those the bill names."""
        return await self._rows(
            _Refund,
            "refunds",
            "out_refund_no",
            "out_trade_no, status, amount_refund, refund_id, created_at",
            "created_at",
            out_refund_nos,
            start,
            end,
        )

    async def _rows(
        self,
        shape: type[_Row],
        table: str,
        key: str,
        columns: str,
        moment: str,
        keys: list[str],
        start: datetime,
        end: datetime,
    ) -> dict[str, _Row]:
        """``table``'s rows (``shape``) by ``key``: those whose ``moment`` is in the window,
        and those of ``keys`` (outside it: a payment near midnight, a row another day wrote)."""
        select = f"SELECT {key}, {columns} FROM {table}"
        async with transaction(self._pool) as cur:
            await cur.execute(f"{select} WHERE {moment} >= %s AND {moment} < %s", (start, end))
            rows = {str(r[key]): r for r in await fetch_all(cur, shape)}
            missing = [k for k in keys if k not in rows]
            for i in range(0, len(missing), 500):
                chunk = missing[i : i + 500]
                marks = placeholders(len(chunk))
                await cur.execute(f"{select} WHERE {key} IN ({marks})", chunk)
                rows.update({str(r[key]): r for r in await fetch_all(cur, shape)})
        return rows


def _unsettled(d: Difference) -> bool:
    if d.kind.endswith("_unconfirmed"):
        return True
    # Paid at WeChat Pay, pending or failed here, and the settling query or publish
    # failed; a refund WeChat Pay finished, pending here, likewise.
    if d.kind == "paid_not_here":
        return d.action == "alert"
    return d.kind == "refund_state_differs" and d.action == "alert" and d.our_state == "pending"


def _in(moment: datetime | None, start: datetime, end: datetime) -> bool:
    return moment is not None and start <= moment < end


def _done_name(day: date | None) -> str:
    """``paylane_meta``'s name for a day the bill reconciliation finished (None: a LIKE
    pattern of every day's)."""
    return f"bills_reconciled:{day.isoformat() if day else '%'}"


class DailyBills(BackgroundLoop):
    """Reconciles the previous China day once a day, at ``hour`` (China time), unless a
    replica did (or does)."""

    task_name = "daily-bills"

    def __init__(
        self,
        bills: BillReconciler,
        hour: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._bills = bills
        self._hour = hour
        self._clock = clock
        #: The last run's report (None: another replica's), and an event set after each
        #: run (for tests and probes).
        self.last_report: BillReport | None = None
        self.ran = asyncio.Event()

    def seconds_until_next(self, now: datetime) -> float:
        local = now.astimezone(CHINA)
        run = local.replace(hour=self._hour, minute=0, second=0, microsecond=0)
        if run <= local:
            run += timedelta(days=1)
        return (run - local).total_seconds()

    async def _run(self) -> None:
        try:
            await self._bills.show_last_success()  # a restarted replica knows it too
        except Exception as exc:  # the database away: the next run sets it
            log.warning("bill_last_success_unknown", error=repr(exc))
        while True:
            await asyncio.sleep(self.seconds_until_next(self._clock()))
            day = previous_china_day(self._clock())
            for attempt in range(1, RETRIES + 1):
                try:
                    outcome, report = await self._bills.run_daily(day)
                except Exception as exc:
                    metrics.BILL_RUNS.labels("failed").inc()
                    log.error(
                        "bill_reconcile_failed",
                        alert=attempt == RETRIES,
                        day=str(day),
                        attempt=attempt,
                        error=repr(exc),
                    )
                    await asyncio.sleep(RETRY_AFTER_S)
                    continue
                metrics.BILL_RUNS.labels(outcome).inc()
                self.last_report = report
                self.ran.set()
                if outcome != "incomplete" or attempt == RETRIES:
                    break
                await asyncio.sleep(RETRY_AFTER_S)
