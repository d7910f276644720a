"""``payment.succeeded`` → order paid, in one MySQL transaction (docs/order-api.md, docs/events.md).

Every payment passes the gate first (gate.py): the order service applies WeChat Pay's
own account of the payment (a notification it verified itself, or its answer to a query),
never the event's fields, and only when the amount is the order's and a price of its
package. A payment WeChat Pay does not stand behind changes no order: it is logged
(``unconfirmed_payment``) and dead-lettered with the reason.

inbox row + conditional ``pending|failed → paid`` + ``payment_logs`` row + outbox
``order.paid`` (and ``paid_event_at``, saying paylane staged it). Every transition is a
conditional UPDATE; reads only classify what an UPDATE that changed nothing ran into.

A ``failed`` order (timed out or cancelled, the shared schema's word) whose payment still
arrives is paid all the same: the money was taken, so the buyer gets what they paid for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypedDict

import aiomysql
import structlog

from paylane_common.contract.events import Envelope, PaymentSucceeded
from paylane_common.delivery import inbox, outbox
from paylane_common.delivery.batching import BatchItem, first_deliveries
from paylane_common.delivery.consumer import Reject, Retry
from paylane_common.storage.db import placeholders, rows_table, transaction
from paylane_common.storage.rows import OrderStatus, fetch_all, fetch_one

from . import INBOX_CONSUMER, OUTBOX_PRODUCER, audit, catalog_prices, metrics, sweep
from .errors import Conflict
from .gate import Gate, Unconfirmed
from .review import OrderOwner, to_review

log = structlog.get_logger(__name__)


#: What a payment may move to ``paid``: a pending order, or one that timed out or was
#: cancelled (``failed``) and was paid all the same. The one-by-one and the batch path
#: both decide by it, in Python and in SQL.
PAYABLE_STATES = ("pending", "failed")
_PAYABLE_SQL = "(" + ", ".join(f"'{state}'" for state in PAYABLE_STATES) + ")"
_PAYABLE = f"status IN {_PAYABLE_SQL}"
#: What an operator's grant moves to ``paid`` (OperatorGrant): an order under review
#: that was never announced paid (else the entitlement ledger, which grants an order
#: once, already granted and revoked it), of WeChat Pay's transaction or none yet.
_GRANTABLE = (
    "status = 'needs_review' AND paid_event_at IS NULL"
    " AND (transaction_id IS NULL OR transaction_id = %s)"
)

#: The order row may still be committing when WeChat's notification arrives.
UNKNOWN_ORDER_ATTEMPTS = 4
UNKNOWN_ORDER_DELAY_S = 1.0


class PayableOrder(sweep.OrderEffect):
    """A row with ``_ORDER_COLUMNS``: what a payment is applied to."""

    currency: str
    status: OrderStatus | None
    transaction_id: str | None
    appid: str | None
    paid_event_at: datetime | None
    created_at: datetime | None
    description: str | None


@dataclass(frozen=True)
class OperatorGrant:
    """A ``needs_review`` order an operator resolves by granting it (the console, on
    WeChat Pay's answer to a query: review_grant.py). The payment goes the one way every
    payment does (:meth:`PaymentApplier.apply_confirmed`), with two differences: the
    order moves from ``needs_review`` (never announced: ``paid_event_at`` NULL) instead of
    ``pending|failed``, and the operator judges the price (``Gate.short_of`` instead of
    ``Gate.mismatch``). Anything else (the row moved meanwhile, WeChat Pay's payment short
    of the order) rolls the transaction back and raises :class:`Conflict`."""

    operator: str
    reason: str

    @property
    def detail(self) -> str:
        return f"granted by operator {self.operator}: {self.reason}"[:255]


class PaymentApplier:
    """Applies one payment.succeeded; returns the outcome label for metrics."""

    def __init__(
        self,
        pool: aiomysql.Pool,
        gate: Gate,
        on_commit: Callable[[], None] | None = None,
    ):
        self.pool = pool
        self._gate = gate
        self._on_commit = on_commit

    async def __call__(self, envelope: Envelope, claim: PaymentSucceeded) -> str:
        try:
            data = self._gate.from_notification(claim) or await self._query(envelope, claim)
        except Unconfirmed as why:
            await self._unconfirmed(envelope, claim, why)
            raise Reject(str(why)) from None
        if data is None:
            return "duplicate"
        return await self.apply_confirmed(envelope, data)

    async def apply_confirmed(
        self, envelope: Envelope, data: PaymentSucceeded, grant: OperatorGrant | None = None
    ) -> str:
        """A payment the gate returned (WeChat Pay's own account of it), applied once per
        ``envelope.event_id``: inbox row, the order paid (or the payment classified),
        ``payment_logs``, outbox. Also the path of an on-demand query (status_query.py)
        and of an operator's grant of a ``needs_review`` order (``grant``)."""
        async with transaction(self.pool) as cur:
            if not await inbox.claim(cur, INBOX_CONSUMER, envelope.event_id):
                return "duplicate"
            outcome = await self._apply(cur, envelope, data, grant)
        self.after_commit([outcome])
        return outcome

    async def _query(self, envelope: Envelope, claim: PaymentSucceeded) -> PaymentSucceeded | None:
        """WeChat Pay asked about a claim with no notification that verifies; None for a
        redelivery of what was applied already (the inbox has it), which asks nothing."""
        async with transaction(self.pool) as cur:
            if await inbox.seen(cur, INBOX_CONSUMER, [envelope.event_id]):
                return None
        return await self._gate.from_query(claim)

    def after_commit(self, outcomes: Sequence[str]) -> None:
        if "paid" in outcomes and self._on_commit is not None:
            self._on_commit()

    async def apply_batch(
        self, cur: aiomysql.Cursor, items: Sequence[BatchItem]
    ) -> list[str | None]:
        """The steady state of many payments in set-based statements (batching.py): first
        deliveries of matching payments for pending (or failed) orders. Everything else
        is left to ``__call__``, one by one."""
        outcomes: list[str | None] = [None] * len(items)
        # Only payments whose notification verifies here; the others (internal notifies,
        # the reconciler's, claims without evidence) are asked about one by one.
        fresh = [
            (i, it, paid)
            for i, it in await first_deliveries(
                cur, INBOX_CONSUMER, items, outcomes, PaymentSucceeded
            )
            if (paid := self._gate.from_notification(it.data)) is not None
        ]
        if not fresh:
            return outcomes
        nos = sorted({paid.out_trade_no for _, _, paid in fresh})
        await cur.execute(
            f"SELECT {_ORDER_COLUMNS} FROM payment_orders"
            f" WHERE out_trade_no IN ({placeholders(len(nos))}) FOR UPDATE",
            nos,
        )
        orders = {row["out_trade_no"]: row for row in await fetch_all(cur, PayableOrder)}
        # An order refunded before its payment arrived: left to __call__ (_refunded_before).
        refunded = await _with_refunds(cur, list(orders))
        periods = await catalog_prices.load(cur, (o["package_type"] for o in orders.values()))
        plain: list[tuple[int, BatchItem, PaymentSucceeded, PayableOrder, datetime]] = []
        for i, it, paid in fresh:
            order = orders.pop(paid.out_trade_no, None)  # pop: one payment per order
            if (
                order is not None
                and order["status"] in PAYABLE_STATES
                and order["out_trade_no"] not in refunded
                and self._gate.mismatch(order, paid, periods) is None
            ):
                plain.append((i, it, paid, order, _paid_at(paid.success_time)))
        if not plain:
            return outcomes
        await inbox.claim_many(
            cur, INBOX_CONSUMER, [it.envelope.event_id for _, it, _, _, _ in plain]
        )
        paid_rows, params = rows_table(
            ("out_trade_no", "transaction_id", "paid_at", "openid", "generation_id"),
            [
                (
                    paid.out_trade_no,
                    paid.transaction_id,
                    paid_at,
                    paid.openid,
                    paid.generation_id,
                )
                for _, _, paid, _, paid_at in plain
            ],
        )
        await cur.execute(
            f"UPDATE payment_orders o JOIN ({paid_rows}) v ON v.out_trade_no = o.out_trade_no"
            " SET o.status = 'paid', o.transaction_id = v.transaction_id,"
            " o.paid_at = v.paid_at, o._openid = COALESCE(o._openid, v.openid),"
            " o.paid_event_at = NOW(6), o.generation_id = IF(o.generation_id = '',"
            " COALESCE(v.generation_id, ''), o.generation_id)"
            f" WHERE o.{_PAYABLE}",
            params,
        )
        if cur.rowcount != len(plain):  # the rows are locked: cannot happen, but never guess
            raise RuntimeError(f"batch paid {cur.rowcount} of {len(plain)} locked orders")
        staged, logs = [], []
        for i, it, paid, order, paid_at in plain:
            it.bind()
            late = order["status"] == "failed"
            staged.append(outbox.Staged(_order_paid(paid, order, paid_at)))
            detail = "paid after close" if late else None
            logs.append(_entry(it.envelope, paid, "paid", detail, "paid"))
            log.info("order_paid", late=late, source=paid.source)
            outcomes[i] = "paid"
        await audit.write(cur, *logs)
        await outbox.add_many(cur, OUTBOX_PRODUCER, staged)
        return outcomes

    async def _apply(
        self,
        cur: aiomysql.Cursor,
        envelope: Envelope,
        data: PaymentSucceeded,
        grant: OperatorGrant | None = None,
    ) -> str:
        order = await _load(cur, data.out_trade_no)
        if order is None:
            raise Retry(
                f"unknown out_trade_no {data.out_trade_no}",
                max_attempts=UNKNOWN_ORDER_ATTEMPTS,
                delay_s=UNKNOWN_ORDER_DELAY_S,
            )
        if grant is None:
            periods = await catalog_prices.load(cur, [order["package_type"]])
            mismatch = self._gate.mismatch(order, data, periods)
        else:
            mismatch = self._gate.short_of(order, data)
        if mismatch is None:
            paid_at = _paid_at(data.success_time)
            where, args = (_GRANTABLE, (data.transaction_id,)) if grant else (_PAYABLE, ())
            await cur.execute(
                "UPDATE payment_orders SET status = 'paid', transaction_id = %s, paid_at = %s,"
                " _openid = COALESCE(_openid, %s), paid_event_at = NOW(6),"
                f" {_FILL_GENERATION} WHERE out_trade_no = %s AND {where}",
                (
                    data.transaction_id,
                    paid_at,
                    data.openid,
                    data.generation_id,
                    data.out_trade_no,
                    *args,
                ),
            )
            if cur.rowcount == 1:
                late = order["status"] == "failed"
                detail = grant.detail if grant else "paid after close" if late else None
                await _log(cur, envelope, data, "paid", detail, "paid")
                await outbox.add(cur, OUTBOX_PRODUCER, _order_paid(data, order, paid_at))
                await _refunded_before(cur, data, order)
                log.info("order_paid", late=late, source=data.source)
                return "paid"
            # Someone else moved the row since we read it: classify what it is now.
            order = await _load(cur, data.out_trade_no, lock=True)
            assert order is not None
        if grant is not None:  # rolls back the inbox row with the rest
            raise Conflict(mismatch or _not_grantable(order, data))
        return await self._not_applied(cur, envelope, data, order, mismatch)

    async def _announce_paid_elsewhere(
        self,
        cur: aiomysql.Cursor,
        envelope: Envelope,
        data: PaymentSucceeded,
        order: PayableOrder,
    ) -> str:
        """The cloud function marked the order paid itself (docs/adoption.md), so the
        conditional ``pending|failed → paid`` found nothing to move; the effect is still
        paylane's: ``order.paid``, once (``paid_event_at``, sweep.py), unless it was paid
        before ``effects_since``: then the backend before paylane granted it."""
        await cur.execute(
            "UPDATE payment_orders SET paid_event_at = NOW(6),"
            f" transaction_id = COALESCE(transaction_id, %s), {_FILL_GENERATION}"
            " WHERE out_trade_no = %s AND status = 'paid' AND paid_event_at IS NULL"
            " AND (transaction_id IS NULL OR transaction_id = %s)"
            f" AND COALESCE(paid_at, updated_at) >= {sweep.EFFECTS_SINCE}",
            (data.transaction_id, data.generation_id, data.out_trade_no, data.transaction_id),
        )
        if cur.rowcount != 1:  # announced meanwhile, or settled before paylane
            if order["paid_event_at"] is not None:
                await _log(cur, envelope, data, "duplicate_notification", None, "paid")
                return "duplicate"
            # Before the cutover (or with none yet): the old backend's to grant. Counted
            # apart, so that a deployment that never ran `paylane cutover` shows it.
            detail = "settled before paylane's cutover"
            await _log(cur, envelope, data, "duplicate_notification", detail, "paid")
            log.warning("paid_elsewhere_before_cutover", source=data.source)
            return "before_cutover"
        paid_at = order["paid_at"] or _paid_at(data.success_time)
        detail = "marked paid by another writer"
        await _log(cur, envelope, data, "paid_elsewhere", detail, "paid")
        await outbox.add(cur, OUTBOX_PRODUCER, _order_paid(data, order, paid_at))
        log.info("order_paid_elsewhere_announced", source=data.source)
        return "paid"

    async def _unconfirmed(
        self, envelope: Envelope, claim: PaymentSucceeded, why: Unconfirmed
    ) -> None:
        """A claim WeChat Pay does not stand behind: logged with the reason. Nothing else
        changes (a pending order stays payable), unless WeChat Pay says the order is not
        paid at all while another writer marked it ``paid`` (since the cutover, never
        announced): that row goes to ``needs_review``. A claim naming the wrong transaction
        of an order WeChat Pay says is paid flags nothing: the claim is what is wrong."""
        reason = str(why)
        async with transaction(self.pool) as cur:
            flagged = False
            if why.not_paid:
                await cur.execute(
                    "UPDATE payment_orders SET status = 'needs_review', review_reason = %s"
                    " WHERE out_trade_no = %s AND status = 'paid' AND paid_event_at IS NULL"
                    f" AND COALESCE(paid_at, updated_at) >= {sweep.EFFECTS_SINCE}",
                    (f"marked paid, but {reason}"[:255], claim.out_trade_no),
                )
                flagged = cur.rowcount == 1
            status = "needs_review" if flagged else None
            await _log(cur, envelope, claim, "unconfirmed_payment", reason[:255], status)
        metrics.UNCONFIRMED.labels(claim.source).inc()
        log.error(
            "payment_unconfirmed",
            alert=True,
            reason=reason,
            source=claim.source,
            order_flagged=flagged,
        )

    async def _not_applied(
        self,
        cur: aiomysql.Cursor,
        envelope: Envelope,
        data: PaymentSucceeded,
        order: PayableOrder,
        mismatch: str | None,
    ) -> str:
        status, paid_txn = order["status"], order["transaction_id"]
        if _paid_elsewhere(order, data):
            if mismatch is None:
                return await self._announce_paid_elsewhere(cur, envelope, data, order)
            # Paid elsewhere, but not what WeChat Pay says was paid: needs review, below.
        elif paid_txn == data.transaction_id and status in ("paid", "refunded", "needs_review"):
            await _log(cur, envelope, data, "duplicate_notification", None, status)
            return "duplicate"
        elif paid_txn is not None and status in ("paid", "refunded"):
            # Paid twice: keep the first, record the second for refund, grant nothing.
            detail = f"first transaction {paid_txn}"
            await _log(cur, envelope, data, "duplicate_payment", detail, status)
            log.error(
                "duplicate_payment",
                alert=True,
                first_transaction_id=paid_txn,
                transaction_id=data.transaction_id,
            )
            return "duplicate_payment"
        reason = mismatch or f"payment arrived for an order in status {status}"
        await to_review(cur, data.out_trade_no, reason, transaction_id=data.transaction_id)
        await _log(cur, envelope, data, "needs_review", reason, "needs_review")
        log.error("payment_needs_review", alert=True, reason=reason, source=data.source)
        return "needs_review"


#: An empty generation (a row written without one) takes the one a payment names.
_FILL_GENERATION = "generation_id = IF(generation_id = '', COALESCE(%s, ''), generation_id)"


def _not_grantable(order: PayableOrder, data: PaymentSucceeded) -> str:
    """Why an operator's grant moved nothing (:data:`_GRANTABLE`)."""
    if order["status"] != "needs_review":
        return f"the order is {order['status']}, not needs_review"
    if order["paid_event_at"] is not None:
        return (
            "the order was announced paid before its review (its grant was revoked), and an"
            " order is granted once: refund it instead"
        )
    return (
        f"WeChat Pay's transaction {data.transaction_id} is not the order's"
        f" {order['transaction_id']}"
    )


def _paid_elsewhere(order: PayableOrder, data: PaymentSucceeded) -> bool:
    """Marked ``paid`` by another writer, with this transaction (or none), and never
    announced by paylane."""
    return (
        order["status"] == "paid"
        and order["paid_event_at"] is None
        and order["transaction_id"] in (None, data.transaction_id)
    )


#: ``amount_total`` is the fen generated from the row's yuan ``amount``, whoever wrote it.
_ORDER_COLUMNS = (
    "out_trade_no, user_id, package_type, amount_total, currency, status, transaction_id,"
    " appid, generation_id, paid_at, paid_event_at, created_at, description"
)


def _order_paid(data: PaymentSucceeded, order: PayableOrder, paid_at: datetime) -> Envelope:
    """``order.paid`` for a payment this consumer applied; the generation is the row's, or
    the one an internal notify named for a row written without one."""
    generation_id = order.get("generation_id") or data.generation_id
    named: PayableOrder = {**order, "generation_id": generation_id or ""}
    return sweep.order_paid(named, paid_at)


class _RefundOf(TypedDict):
    out_trade_no: str


async def _with_refunds(cur: aiomysql.Cursor, out_trade_nos: list[str]) -> set[str]:
    """Those of the (locked) orders with a successful refund recorded."""
    if not out_trade_nos:
        return set()
    await cur.execute(
        "SELECT DISTINCT out_trade_no FROM refunds"
        f" WHERE out_trade_no IN ({placeholders(len(out_trade_nos))}) AND status = 'success'"
        " LOCK IN SHARE MODE",
        out_trade_nos,
    )
    return {row["out_trade_no"] for row in await fetch_all(cur, _RefundOf)}


async def _refunded_before(
    cur: aiomysql.Cursor, data: PaymentSucceeded, order: PayableOrder
) -> None:
    """A payment applied after refunds of it succeeded (a replayed DLQ, relays racing):
    the order row takes them into account, ``refunded`` when they cover the amount.

    ``order.paid`` has gone out all the same (the entitlement ledger pairs it with the
    refund: a grant after a full refund's tombstone grants nothing). A full refund is then
    restated as an ``order.refunded`` (``amount_refund``: all that came back), so the
    last word a client's stream hears about the order is ``refunded``; its revocation is
    a no-op. A partial refund's ``order.refunded`` already went out with it."""
    # A locking read: the latest committed refunds, not this transaction's snapshot.
    await cur.execute(
        "SELECT COALESCE(SUM(amount_refund), 0) AS n, MAX(refunded_at) AS at FROM refunds"
        " WHERE out_trade_no = %s AND status = 'success' LOCK IN SHARE MODE",
        (data.out_trade_no,),
    )
    row = await cur.fetchone()
    refunded = int(row["n"])
    if refunded == 0:
        return
    full = refunded >= order["amount_total"]
    # refund_event_at: the full order.refunded staged below.
    await cur.execute(
        "UPDATE payment_orders SET amount_refunded = %s, status = IF(%s, 'refunded', status),"
        " refunded_at = IF(%s, COALESCE(%s, NOW(6)), refunded_at),"
        " refund_event_at = IF(%s, NOW(6), refund_event_at) WHERE out_trade_no = %s",
        (refunded, full, full, row["at"], full, data.out_trade_no),
    )
    log.warning("order_paid_after_refund", full=full, refunded=refunded)
    if full:
        await add_order_refunded(cur, order, amount_refund=refunded, full=True)


async def add_order_refunded(
    cur: aiomysql.Cursor, order: OrderOwner, *, amount_refund: int, full: bool
) -> None:
    """``order.refunded`` for ``order`` (a row with out_trade_no, user_id, package_type)
    into the outbox, in the caller's transaction. With ``full``, the caller sets the
    order's ``refund_event_at`` in the same transaction."""
    await outbox.add(
        cur, OUTBOX_PRODUCER, sweep.order_refunded(order, amount_refund=amount_refund, full=full)
    )


async def _load(cur: aiomysql.Cursor, out_trade_no: str, lock: bool = False) -> PayableOrder | None:
    await cur.execute(
        f"SELECT {_ORDER_COLUMNS} FROM payment_orders WHERE out_trade_no = %s"
        + (" FOR UPDATE" if lock else ""),
        (out_trade_no,),
    )
    return await fetch_one(cur, PayableOrder)


def _entry(
    envelope: Envelope,
    data: PaymentSucceeded,
    kind: str,
    detail: str | None,
    order_status: str | None,
) -> audit.Entry:
    """The ``payment_callback`` row of a payment; ``kind`` says what became of it."""
    return audit.payment_callback(
        kind, data, event_id=envelope.event_id, order_status=order_status, detail=detail
    )


async def _log(
    cur: aiomysql.Cursor,
    envelope: Envelope,
    data: PaymentSucceeded,
    kind: str,
    detail: str | None,
    order_status: str | None,
) -> None:
    await audit.write(cur, _entry(envelope, data, kind, detail, order_status))


def _paid_at(success_time: str | None) -> datetime:
    """UTC, naive (DATETIME columns hold UTC)."""
    if success_time:
        try:
            parsed = datetime.fromisoformat(success_time)
            if parsed.tzinfo is not None:
                return parsed.astimezone(UTC).replace(tzinfo=None)
            return parsed
        except ValueError:
            log.warning("success_time_unparseable")
    return datetime.now(UTC).replace(tzinfo=None)
