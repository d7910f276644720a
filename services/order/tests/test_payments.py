"""payment.succeeded outcomes of DESIGN §4, on the real database."""

from __future__ import annotations

import asyncio
import uuid

import aiomysql
import pytest

from paylane_common import events
from paylane_common.consumer import Reject, Retry
from paylane_common.db import transaction
from paylane_common.events import PaymentSucceeded
from paylane_order.payments import PaymentApplier
from services.order.tests.support import MERCHANT, basic_order, payment
from tests.support.events import payment_succeeded
from tests.support.queries import fetch_one, order_status

pytestmark = pytest.mark.integration


async def _paid_events(pool: aiomysql.Pool, out_trade_no: str) -> int:
    row = await fetch_one(
        pool,
        "SELECT COUNT(*) AS n FROM outbox WHERE routing_key = 'order.paid' AND payload LIKE %s",
        f"%{out_trade_no}%",
    )
    return int(row["n"])


async def test_pending_order_is_paid_once_with_outbox_event(db_pool):
    applier = PaymentApplier(db_pool, MERCHANT)
    out_trade_no, _ = await basic_order(db_pool)
    envelope, data = payment(out_trade_no)
    assert await applier(envelope, data) == "paid"
    assert await applier(envelope, data) == "duplicate"  # same event id: inbox
    again, again_data = payment(out_trade_no)  # same payment, another event id
    assert await applier(again, again_data) == "duplicate"
    row = await fetch_one(
        db_pool,
        "SELECT status, transaction_id, paid_event_at IS NOT NULL AS staged"
        " FROM payment_orders WHERE out_trade_no = %s",
        out_trade_no,
    )
    # paid_event_at: paylane staged this order's order.paid (in the same transaction).
    assert row == {"status": "paid", "transaction_id": "4200001", "staged": 1}
    assert await _paid_events(db_pool, out_trade_no) == 1


async def test_concurrent_distinct_events_for_one_payment_pay_once(db_pool):
    applier = PaymentApplier(db_pool, MERCHANT)
    out_trade_no, _ = await basic_order(db_pool)
    deliveries = [payment(out_trade_no) for _ in range(20)]
    outcomes = await asyncio.gather(*(applier(e, d) for e, d in deliveries))
    assert sorted(outcomes) == ["duplicate"] * 19 + ["paid"]
    assert await _paid_events(db_pool, out_trade_no) == 1


async def test_second_transaction_is_recorded_for_refund_not_granted(db_pool):
    applier = PaymentApplier(db_pool, MERCHANT)
    out_trade_no, _ = await basic_order(db_pool)
    assert await applier(*payment(out_trade_no, txn="TXN-FIRST")) == "paid"
    assert await applier(*payment(out_trade_no, txn="TXN-SECOND")) == "duplicate_payment"
    row = await fetch_one(
        db_pool,
        "SELECT p.transaction_id, l.detail FROM payment_orders p JOIN payment_logs l"
        " ON l.out_trade_no = p.out_trade_no AND l.type = 'duplicate_payment'"
        " WHERE p.out_trade_no = %s",
        out_trade_no,
    )
    assert row["transaction_id"] == "TXN-FIRST"
    assert "TXN-FIRST" in row["detail"]
    assert await _paid_events(db_pool, out_trade_no) == 1


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"amount": 1}, "amount 1 differs"),
        ({"mchid": "1999999999"}, "mchid 1999999999 is not ours"),
        ({"appid": "wx-other"}, "appid wx-other differs"),
    ],
)
async def test_mismatch_flags_for_review_without_order_paid(db_pool, overrides, reason):
    applier = PaymentApplier(db_pool, MERCHANT)
    out_trade_no, _ = await basic_order(db_pool)
    amount = int(overrides.pop("amount", 990))
    envelope, data = payment(out_trade_no, amount=amount, **overrides)
    assert await applier(envelope, data) == "needs_review"
    row = await fetch_one(
        db_pool,
        "SELECT status, review_reason, paid_event_at FROM payment_orders WHERE out_trade_no = %s",
        out_trade_no,
    )
    assert row["status"] == "needs_review"
    assert reason in row["review_reason"]
    assert row["paid_event_at"] is None
    assert await _paid_events(db_pool, out_trade_no) == 0


async def test_late_payment_after_the_order_failed_is_honoured(db_pool):
    """``failed``: timed out or cancelled (closed). The money was taken all the same."""
    applier = PaymentApplier(db_pool, MERCHANT)
    out_trade_no, _ = await basic_order(db_pool, status="failed")
    assert await applier(*payment(out_trade_no)) == "paid"
    row = await fetch_one(
        db_pool,
        "SELECT l.detail, l.source, o.status FROM payment_logs l JOIN payment_orders o"
        " ON o.out_trade_no = l.out_trade_no WHERE l.out_trade_no = %s AND l.type = 'paid'",
        out_trade_no,
    )
    assert row == {"detail": "paid after close", "source": "wechatpay", "status": "paid"}
    assert await _paid_events(db_pool, out_trade_no) == 1


@pytest.mark.parametrize("status", ["paid", "refunded"])
async def test_a_payment_never_moves_a_settled_order(db_pool, status):
    """Only pending and failed orders are payable: a paid order another writer settled
    (with another transaction) is a second payment, recorded, nothing staged."""
    applier = PaymentApplier(db_pool, MERCHANT)
    out_trade_no, _ = await basic_order(db_pool, status=status)
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET transaction_id = 'TXN-OTHER' WHERE out_trade_no = %s",
            (out_trade_no,),
        )
    assert await applier(*payment(out_trade_no)) == "duplicate_payment"
    assert await order_status(db_pool, out_trade_no) == status
    assert await _paid_events(db_pool, out_trade_no) == 0


async def test_an_order_another_writer_made_is_paid_with_fen_from_its_yuan(db_pool):
    """A row with only the shared columns (amount 29.90 yuan, no currency, mchid, appid,
    expires_at of paylane's): its fen is the generated 2990, and order.paid says so."""
    applier = PaymentApplier(db_pool, MERCHANT)
    out_trade_no, user_id = await basic_order(db_pool, amount=2990, generation_id="gen-42")
    assert await applier(*payment(out_trade_no, amount=2990)) == "paid"
    row = await fetch_one(
        db_pool,
        "SELECT payload FROM outbox WHERE routing_key = 'order.paid' AND payload LIKE %s",
        f"%{out_trade_no}%",
    )
    data = events.Envelope.model_validate_json(row["payload"]).typed_data()
    assert (data.user_id, data.amount_total, data.generation_id) == (user_id, 2990, "gen-42")
    # 29.89 is not 29.90: one fen short is a mismatch, never rounded away.
    short, _ = await basic_order(db_pool, amount=2990)
    assert await applier(*payment(short, amount=2989)) == "needs_review"


async def test_unknown_order_asks_for_retry_and_claims_nothing(db_pool):
    applier = PaymentApplier(db_pool, MERCHANT)
    envelope, data = payment("NOPE" + uuid.uuid4().hex[:10])
    with pytest.raises(Retry, match="unknown out_trade_no"):
        await applier(envelope, data)
    # The inbox claim rolled back with the transaction: the retry will be processed.
    row = await fetch_one(
        db_pool, "SELECT COUNT(*) AS n FROM inbox WHERE event_id = %s", envelope.event_id
    )
    assert row["n"] == 0


async def test_internal_notify_without_amount_is_not_granted(db_pool):
    applier = PaymentApplier(db_pool, MERCHANT)
    out_trade_no, _ = await basic_order(db_pool)
    internal = payment_succeeded(out_trade_no, None, "T1", source="internal")
    with pytest.raises(Reject, match="no WeChat Pay client to confirm"):
        await applier(*internal)
    assert await order_status(db_pool, out_trade_no) == "pending"


async def test_an_internal_notify_with_amount_is_applied_only_as_wechat_pay_confirms_it(db_pool):
    """The cloud function's secret is not WeChat Pay's word: its notify is confirmed first,
    unless the operator trusts the caller (INTERNAL_NOTIFY_TRUSTED)."""
    out_trade_no, _ = await basic_order(db_pool, amount=990)
    internal = payment_succeeded(out_trade_no, 990, "T2", source="internal")
    asked: list[str] = []

    async def wechat_says_not_paid(payment: PaymentSucceeded) -> PaymentSucceeded:
        asked.append(payment.out_trade_no)
        raise Reject("WeChat Pay does not confirm the payment: trade_state NOTPAY")

    cautious = PaymentApplier(db_pool, MERCHANT, confirm=wechat_says_not_paid)
    with pytest.raises(Reject, match="does not confirm"):
        await cautious(*internal)
    assert asked == [out_trade_no]
    assert await order_status(db_pool, out_trade_no) == "pending"

    trusting = PaymentApplier(db_pool, MERCHANT, confirm=wechat_says_not_paid, trust_internal=True)
    # Another delivery of that notify (a new event id), now to a trusting applier.
    assert await trusting(*payment_succeeded(out_trade_no, 990, "T2", source="internal")) == "paid"
    assert asked == [out_trade_no]  # not asked again
