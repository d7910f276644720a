"""Orders another writer settled: paylane announces their effect, once.

Beside paylane, the cloud function receives WeChat Pay's callback itself, marks the order
``paid`` (or, on a full refund, ``refunded``) in the shared table, and then calls
paylane's internal notify once, fire and forget (docs/adoption.md). So paylane meets
orders that are already settled, and sometimes never hears of them at all. The effect
(the plan granted or revoked, the generation unlocked, the client told) is still
paylane's to apply, exactly once:

- ``payment_orders.paid_event_at`` / ``refund_event_at`` say when paylane staged the
  order's ``order.paid`` / full ``order.refunded``. They are set by a conditional UPDATE in
  the transaction that stages the event, so whoever gets there first (the payment
  consumer, an internal notify for an order the cloud function already marked paid, or
  the sweep below) announces it, and nobody a second time.
- The sweep (run by the reconciler, so by ``paylane reconcile --once`` too, one replica at
  a time) finds orders ``paid`` or ``refunded`` whose event paylane never staged, and
  stages it as if the notify had come. A row marked ``paid`` is only another writer's
  word: the sweep asks WeChat Pay first and compares the amount with the package's price
  (gate.py); an order WeChat Pay does not confirm goes to ``needs_review``.
- Both look only at orders paid since ``paylane_meta.effects_since``, which only
  ``paylane cutover`` sets (to when the cloud function starts calling paylane): the
  orders settled before were the old backend's to grant, and it did. Until the cutover,
  neither runs. The sweep is bounded (``limit`` a pass), indexed (``ix_orders_paid_effect``,
  ``ix_orders_refund_effect``; its ``created_at`` range starts a day before
  ``effects_since``), and only takes rows untouched for ``grace_s``, so the notify that
  is on its way normally wins.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypedDict

import aiomysql
import structlog

from paylane_common.contract import events
from paylane_common.contract.events import OrderPaid, OrderRefunded, PaymentSucceeded, make_event
from paylane_common.delivery import outbox
from paylane_common.delivery.consumer import Retry
from paylane_common.storage.db import transaction
from paylane_common.storage.rows import fetch_all, fetch_one

from . import OUTBOX_PRODUCER, audit, catalog_prices, metrics
from .gate import Gate, Unconfirmed
from .review import OrderOwner, to_review

log = structlog.get_logger(__name__)

#: The columns ``order_paid`` and ``order_refunded`` read.
ORDER_COLUMNS = "out_trade_no, user_id, package_type, amount_total, generation_id, paid_at"


class OrderEffect(OrderOwner):
    """A row with ``ORDER_COLUMNS``."""

    amount_total: int
    generation_id: str
    paid_at: datetime | None


class _Settled(OrderEffect):
    """An order another writer settled (``_SETTLED_ELSEWHERE``)."""

    transaction_id: str | None


class _PaidElsewhere(_Settled):
    """An order another writer marked paid, with what the gate compares."""

    currency: str
    appid: str | None
    created_at: datetime | None
    description: str | None


class _Logged(TypedDict):
    out_trade_no: str
    transaction_id: str | None
    amount_total: int


def order_paid(order: OrderEffect, paid_at: datetime | None = None) -> events.Envelope:
    """``order.paid`` for ``order``."""
    moment = paid_at or order.get("paid_at") or datetime.now(UTC).replace(tzinfo=None)
    return make_event(
        events.ORDER_PAID,
        OrderPaid(
            out_trade_no=order["out_trade_no"],
            user_id=order["user_id"],
            package_type=order["package_type"],
            amount_total=order["amount_total"],
            paid_at=moment.replace(tzinfo=UTC).isoformat(),
            generation_id=order.get("generation_id") or None,
        ),
    )


def order_refunded(order: OrderOwner, *, amount_refund: int, full: bool) -> events.Envelope:
    return make_event(
        events.ORDER_REFUNDED,
        OrderRefunded(
            out_trade_no=order["out_trade_no"],
            user_id=order["user_id"],
            package_type=order["package_type"],
            amount_refund=amount_refund,
            full=full,
        ),
    )


#: ``paylane_meta.effects_since`` in SQL, to the second as the TIMESTAMPs it is compared
#: with (an order paid in that second counts); NULL (nothing is paylane's) when missing.
EFFECTS_SINCE = (
    "(SELECT CAST(LEFT(value, 19) AS DATETIME) FROM paylane_meta WHERE name = 'effects_since')"
)


async def claim_refund_event(cur: aiomysql.Cursor, out_trade_no: str) -> bool:
    """Whether this transaction is the one to stage the full ``order.refunded`` of an
    order that is ``refunded``."""
    await cur.execute(
        "UPDATE payment_orders SET refund_event_at = NOW(6)"
        " WHERE out_trade_no = %s AND status = 'refunded' AND refund_event_at IS NULL",
        (out_trade_no,),
    )
    return bool(cur.rowcount)


async def effects_since(pool: aiomysql.Pool) -> datetime | None:
    async with transaction(pool) as cur:
        await cur.execute("SELECT value FROM paylane_meta WHERE name = 'effects_since'")
        row = await cur.fetchone()
    # paid_at is a TIMESTAMP, to the second: an order paid in that second counts.
    return datetime.fromisoformat(row["value"]).replace(microsecond=0) if row else None


async def sweep(
    pool: aiomysql.Pool, gate: Gate, *, grace_s: float, limit: int, concurrency: int = 16
) -> Counter[str]:
    """One bounded pass over orders settled elsewhere; returns what it did."""
    found: Counter[str] = Counter()
    since = await effects_since(pool)
    if since is None:  # no `paylane cutover` yet: the old backend grants what it settles
        return found
    found.update(await _sweep_paid(pool, gate, since, grace_s, limit, concurrency))
    found["effect_refunded"] = await _sweep_refunded(pool, since, grace_s, limit)
    for kind, n in found.items():
        metrics.SWEPT.labels(kind).inc(n)
    return +found


_SETTLED_ELSEWHERE = (
    "SELECT " + ORDER_COLUMNS + ", transaction_id FROM payment_orders"
    " WHERE status = %s AND {marker} IS NULL{extra}"
    " AND created_at >= %s - INTERVAL 1 DAY AND COALESCE(paid_at, updated_at) >= %s"
    " AND updated_at <= NOW() - INTERVAL %s SECOND"
    " ORDER BY created_at LIMIT %s"
)
#: A pass stops asking WeChat Pay after this many failed queries (it is unreachable, or
#: refuses the merchant): the reconciler's lock is not held through minutes of timeouts.
SWEEP_FAILURES_PER_PASS = 3


async def _sweep_paid(
    pool: aiomysql.Pool,
    gate: Gate,
    since: datetime,
    grace_s: float,
    limit: int,
    concurrency: int,
) -> Counter[str]:
    """Paid by another writer, never announced: ``order.paid`` once WeChat Pay confirms
    the payment (a query: the row is only another writer's word) and its price, as the
    payment consumer would; ``needs_review`` when it does not. At most ``concurrency``
    queries in flight; WeChat Pay not answering leaves the orders for the next pass."""
    found: Counter[str] = Counter()
    async with transaction(pool) as cur:
        await cur.execute(
            _SETTLED_ELSEWHERE.format(marker="paid_event_at", extra=""),
            ("paid", since, since, int(grace_s), limit),
        )
        candidates = [row["out_trade_no"] for row in await fetch_all(cur, _Settled)]
    slots = asyncio.Semaphore(concurrency)

    async def settle(out_trade_no: str) -> None:
        async with slots:
            if found["effect_query_failed"] >= SWEEP_FAILURES_PER_PASS:
                return
            kind = await _settle_paid_elsewhere(pool, gate, out_trade_no)
        if kind is not None:
            found[kind] += 1

    async with asyncio.TaskGroup() as tasks:
        for out_trade_no in candidates:
            tasks.create_task(settle(out_trade_no))
    return found


async def _settle_paid_elsewhere(pool: aiomysql.Pool, gate: Gate, out_trade_no: str) -> str | None:
    """One order another writer marked paid: WeChat Pay asked, then the row (locked, as
    it is now) announced or sent to review. None: announced or moved meanwhile."""
    claim = PaymentSucceeded(out_trade_no=out_trade_no, transaction_id="-", source="reconcile")
    paid: PaymentSucceeded | None = None
    try:
        paid = await gate.from_query(claim, any_transaction=True, source="reconciler")
        reason = None
    except Retry as exc:
        log.warning("paid_elsewhere_query_failed", out_trade_no=out_trade_no, error=str(exc))
        return "effect_query_failed"
    except Unconfirmed as exc:
        reason = f"marked paid, but {exc}"
        metrics.UNCONFIRMED.labels("reconcile").inc()
    async with transaction(pool) as cur:
        await cur.execute(
            f"SELECT {ORDER_COLUMNS}, transaction_id, currency, appid, created_at, description"
            " FROM payment_orders WHERE out_trade_no = %s AND status = 'paid'"
            " AND paid_event_at IS NULL FOR UPDATE",
            (out_trade_no,),
        )
        order = await fetch_one(cur, _PaidElsewhere)
        if order is None:
            return None
        if paid is not None:
            if order["transaction_id"] not in (None, paid.transaction_id):
                reason = (
                    f"marked paid by transaction {order['transaction_id']},"
                    f" WeChat Pay says {paid.transaction_id}"
                )
            else:
                periods = await catalog_prices.load(cur, [order["package_type"]])
                reason = gate.mismatch(order, paid, periods)
        if reason is not None:
            await to_review(cur, out_trade_no, reason)
            await audit.write(cur, _entry(order, paid, "needs_review", reason, "needs_review"))
            log.error(
                "paid_elsewhere_refused", alert=True, out_trade_no=out_trade_no, reason=reason
            )
            return "effect_needs_review"
        assert paid is not None
        await cur.execute(
            "UPDATE payment_orders SET paid_event_at = NOW(6),"
            " transaction_id = COALESCE(transaction_id, %s) WHERE out_trade_no = %s",
            (paid.transaction_id, out_trade_no),
        )
        await outbox.add(cur, OUTBOX_PRODUCER, order_paid(order))
        detail = "paid by another writer, confirmed by WeChat Pay; no notify came"
        await audit.write(cur, _entry(order, paid, "paid_elsewhere", detail, "paid"))
    log.warning("paid_elsewhere_swept", out_trade_no=out_trade_no)
    return "effect_paid"


def _entry(
    order: _Logged,
    paid: PaymentSucceeded | None,
    kind: str,
    detail: str,
    order_status: str,
) -> audit.Entry:
    """The ``payment_callback`` row of an order another writer marked paid: WeChat Pay's
    answer about it (``paid``), or, when it has none, the row's own account."""
    payment = paid or PaymentSucceeded(
        out_trade_no=order["out_trade_no"],
        transaction_id=order["transaction_id"] or "-",
        amount_total=order["amount_total"],
        source="reconcile",
    )
    entry = audit.payment_callback(
        kind, payment, event_id=None, order_status=order_status, detail=detail, source="sweep"
    )
    return entry if paid else replace(entry, transaction_id=order["transaction_id"])


async def _sweep_refunded(pool: aiomysql.Pool, since: datetime, grace_s: float, limit: int) -> int:
    """Fully refunded by another writer after paylane announced the payment: the full
    ``order.refunded`` that revokes what the order granted. (Refunded before paylane ever
    announced the payment: nothing was granted, nothing to take back.)"""
    applied = 0
    async with transaction(pool) as cur:
        await cur.execute(
            _SETTLED_ELSEWHERE.format(
                marker="refund_event_at", extra=" AND paid_event_at IS NOT NULL"
            ),
            ("refunded", since, since, int(grace_s), limit),
        )
        for order in await fetch_all(cur, _Settled):
            if not await claim_refund_event(cur, order["out_trade_no"]):
                continue
            await cur.execute(
                "UPDATE payment_orders SET amount_refunded = GREATEST(amount_refunded, %s),"
                " refunded_at = COALESCE(refunded_at, NOW(6)) WHERE out_trade_no = %s",
                (order["amount_total"], order["out_trade_no"]),
            )
            await outbox.add(
                cur,
                OUTBOX_PRODUCER,
                order_refunded(order, amount_refund=order["amount_total"], full=True),
            )
            entry = audit.refund_callback(
                "refunded_elsewhere",
                order["out_trade_no"],
                None,
                order["amount_total"],
                status=None,
                request=None,
                response={"order_status": "refunded"},
                source="sweep",
                detail="refunded by another writer; no event came",
            )
            await audit.write(cur, entry)
            log.warning("refunded_elsewhere_swept", out_trade_no=order["out_trade_no"])
            applied += 1
    return applied
