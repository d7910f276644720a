"""refund.* outcomes on the real database."""

from __future__ import annotations

import uuid
from decimal import Decimal

import aiomysql
import pytest

from paylane_common.contract.money import yuan
from paylane_common.storage.db import transaction
from paylane_order.payments import PaymentApplier
from paylane_order.refunds import RefundApplier
from services.order.tests.support import basic_order, payment
from tests.support.batches import batch_item
from tests.support.events import refund_succeeded
from tests.support.queries import fetch_one
from tests.support.seeding import add_refund

pytestmark = pytest.mark.integration


async def _refund_row(
    pool: aiomysql.Pool, out_trade_no: str, amount_refund: int, status: str = "pending"
) -> str:
    """A refund of ``amount_refund`` fen of a 9.90 order."""
    return await add_refund(
        pool, out_trade_no, yuan(amount_refund), "9.90", reason="x", status=status
    )


async def test_a_refund_closed_as_never_sent_still_succeeds_if_wechatpay_says_so(
    db_pool: aiomysql.Pool,
) -> None:
    out_trade_no, _ = await basic_order(db_pool, status="paid")
    out_refund_no = await _refund_row(db_pool, out_trade_no, 990, status="closed")
    succeeded = refund_succeeded(
        out_trade_no, out_refund_no, 990, 990, success_time="2026-11-22T10:00:00+08:00"
    )
    assert await RefundApplier(db_pool)(*succeeded) == "refunded"
    refund = await fetch_one(
        db_pool,
        "SELECT status, refunded_at FROM refunds WHERE out_refund_no = %s",
        out_refund_no,
    )
    order = await fetch_one(
        db_pool,
        "SELECT status, amount_refunded, refund_event_at IS NOT NULL AS staged"
        " FROM payment_orders WHERE out_trade_no = %s",
        out_trade_no,
    )
    assert (refund["status"], order["status"], order["amount_refunded"]) == (
        "success",
        "refunded",
        990,
    )
    assert str(refund["refunded_at"]) == "2026-11-22 02:00:00"  # WeChat's success_time, UTC
    assert order["staged"] == 1  # paylane staged the full order.refunded


async def test_a_partial_refund_is_recorded_without_marking_a_full_refund_staged(
    db_pool: aiomysql.Pool,
) -> None:
    out_trade_no, _ = await basic_order(db_pool, status="paid")
    out_refund_no = await _refund_row(db_pool, out_trade_no, 300)
    succeeded = refund_succeeded(out_trade_no, out_refund_no, 300, 990)
    assert await RefundApplier(db_pool)(*succeeded) == "refunded"
    order = await fetch_one(
        db_pool,
        "SELECT status, amount_refunded, refund_event_at FROM payment_orders"
        " WHERE out_trade_no = %s",
        out_trade_no,
    )
    assert order == {"status": "paid", "amount_refunded": 300, "refund_event_at": None}


async def test_a_refund_made_outside_paylane_is_recorded_in_yuan(db_pool: aiomysql.Pool) -> None:
    out_trade_no, _ = await basic_order(db_pool, amount=2990, status="paid")
    out_refund_no = f"CONSOLE{uuid.uuid4().hex[:20]}"
    succeeded = refund_succeeded(out_trade_no, out_refund_no, 1999, 2990)
    assert await RefundApplier(db_pool)(*succeeded) == "refunded"
    refund = await fetch_one(
        db_pool,
        "SELECT id, refund_amount, total_amount, amount_refund, status, reason FROM refunds"
        " WHERE out_refund_no = %s",
        out_refund_no,
    )
    assert str(refund.pop("id")).startswith("refund-")
    assert refund == {
        "refund_amount": Decimal("19.99"),
        "total_amount": Decimal("29.90"),
        "amount_refund": 1999,
        "status": "success",
        "reason": "external",
    }
    log = await fetch_one(
        db_pool,
        "SELECT type, kind, event_type, out_refund_no, amount_total FROM payment_logs"
        " WHERE out_trade_no = %s",
        out_trade_no,
    )
    assert log == {
        "type": "refund_callback",
        "kind": "refund_success",
        "event_type": "REFUND.SUCCESS",
        "out_refund_no": out_refund_no,
        "amount_total": 1999,
    }


async def _refunded_before_paid(pool: aiomysql.Pool, amount_refund: int = 990) -> str:
    """A pending order whose refund (as the order API records it) succeeded before its
    payment was applied: a replayed DLQ, relays racing on two replicas."""
    out_trade_no, _ = await basic_order(pool)
    out_refund_no = await _refund_row(pool, out_trade_no, amount_refund)
    succeeded = refund_succeeded(
        out_trade_no, out_refund_no, amount_refund, 990, success_time="2026-11-22T10:00:00+08:00"
    )
    assert await RefundApplier(pool)(*succeeded) == "refunded"
    return out_trade_no


async def _order_state(pool: aiomysql.Pool, out_trade_no: str) -> tuple[object, ...]:
    order = await fetch_one(
        pool,
        "SELECT status, amount_refunded, refunded_at IS NOT NULL AS dated,"
        " paid_event_at IS NOT NULL AS paid_staged, refund_event_at IS NOT NULL AS refund_staged"
        " FROM payment_orders WHERE out_trade_no = %s",
        out_trade_no,
    )
    return tuple(order.values())


async def _staged(pool: aiomysql.Pool, out_trade_no: str) -> list[str]:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT routing_key FROM outbox WHERE payload LIKE %s ORDER BY id",
            (f"%{out_trade_no}%",),
        )
        return [row["routing_key"] for row in await cur.fetchall()]


@pytest.mark.parametrize("path", ["one_by_one", "batch"])
async def test_a_payment_applied_after_its_full_refund_leaves_the_order_refunded(
    db_pool: aiomysql.Pool, path: str, gate
) -> None:
    out_trade_no = await _refunded_before_paid(db_pool)
    applier = PaymentApplier(db_pool, gate)
    envelope, data = payment(out_trade_no, txn=f"42{uuid.uuid4().hex[:20]}")
    if path == "batch":
        async with transaction(db_pool) as cur:
            outcomes = await applier.apply_batch(cur, [batch_item(envelope, data)])
        if outcomes == [None]:  # left to the one-by-one path
            outcomes = [await applier(envelope, data)]
    else:
        outcomes = [await applier(envelope, data)]

    assert outcomes == ["paid"]
    assert await _order_state(db_pool, out_trade_no) == ("refunded", 990, 1, 1, 1)
    # order.paid still goes out (the entitlement ledger pairs it with the refund), and
    # the full refund is restated after it, so the last word a stream hears is refunded.
    assert await _staged(db_pool, out_trade_no) == [
        "order.refunded",
        "order.paid",
        "order.refunded",
    ]


async def test_a_payment_applied_after_a_partial_refund_keeps_the_refunded_amount(
    db_pool: aiomysql.Pool,
    gate,
) -> None:
    out_trade_no = await _refunded_before_paid(db_pool, amount_refund=300)
    envelope, data = payment(out_trade_no, txn=f"42{uuid.uuid4().hex[:20]}")
    assert await PaymentApplier(db_pool, gate)(envelope, data) == "paid"
    assert await _order_state(db_pool, out_trade_no) == ("paid", 300, 0, 1, 0)
    assert await _staged(db_pool, out_trade_no) == ["order.refunded", "order.paid"]
