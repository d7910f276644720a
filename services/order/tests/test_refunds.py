"""refund.* outcomes on the real database."""

from __future__ import annotations

import uuid

import aiomysql
import pytest

from paylane_common import events
from paylane_common.db import transaction
from paylane_common.events import RefundEvent, make_event
from paylane_order.refunds import RefundApplier
from services.order.tests.test_payments import _order

pytestmark = pytest.mark.integration


async def _row(pool: aiomysql.Pool, sql: str, *args: object) -> dict[str, object]:
    async with transaction(pool) as cur:
        await cur.execute(sql, args)
        row: dict[str, object] = await cur.fetchone()
    return row


async def test_a_refund_closed_as_never_sent_still_succeeds_if_wechatpay_says_so(
    db_pool: aiomysql.Pool,
) -> None:
    out_trade_no, _ = await _order(db_pool, status="paid")
    out_refund_no = f"RF{uuid.uuid4().hex[:20]}"
    async with transaction(db_pool) as cur:
        await cur.execute(
            "INSERT INTO refunds (out_refund_no, out_trade_no, amount_refund, amount_total,"
            " status) VALUES (%s, %s, 990, 990, 'closed')",
            (out_refund_no, out_trade_no),
        )
    data = RefundEvent(
        out_trade_no=out_trade_no,
        out_refund_no=out_refund_no,
        refund_id="50000000000000000000000000001",
        amount_refund=990,
        amount_total=990,
        status="SUCCESS",
        success_time="2026-11-22T10:00:00+08:00",
    )
    assert await RefundApplier(db_pool)(make_event(events.REFUND_SUCCEEDED, data), data) == (
        "refunded"
    )
    refund = await _row(
        db_pool, "SELECT status FROM refunds WHERE out_refund_no = %s", out_refund_no
    )
    order = await _row(
        db_pool,
        "SELECT status, amount_refunded FROM payment_orders WHERE out_trade_no = %s",
        out_trade_no,
    )
    assert (refund["status"], order["status"], order["amount_refunded"]) == (
        "success",
        "refunded",
        990,
    )
