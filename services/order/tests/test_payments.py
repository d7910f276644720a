"""payment.succeeded outcomes (docs/order-api.md, docs/security.md), on the real database."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiomysql
import pytest

from paylane_common.contract import events
from paylane_common.contract.events import WechatNotification, make_event, payment_from_transaction
from paylane_common.contract.money import yuan
from paylane_common.delivery.consumer import Reject, Retry
from paylane_common.storage.db import transaction
from paylane_common.wechatpay.testing import order_request
from paylane_order import catalog_prices
from paylane_order.payments import PaymentApplier
from services.order.tests.support import CATALOG, basic_order, payment, payment_gate
from tests.support.events import payment_succeeded
from tests.support.queries import fetch_one, order_status
from tests.support.seeding import add_order, add_user
from tests.support.wechat import KIT, FakeWechat

pytestmark = pytest.mark.integration


async def _paid_events(pool: aiomysql.Pool, out_trade_no: str) -> int:
    row = await fetch_one(
        pool,
        "SELECT COUNT(*) AS n FROM outbox WHERE routing_key = 'order.paid' AND payload LIKE %s",
        f"%{out_trade_no}%",
    )
    return int(row["n"])


async def test_pending_order_is_paid_once_with_outbox_event(db_pool, gate):
    applier = PaymentApplier(db_pool, gate)
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


async def test_concurrent_distinct_events_for_one_payment_pay_once(db_pool, gate):
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _ = await basic_order(db_pool)
    deliveries = [payment(out_trade_no) for _ in range(20)]
    outcomes = await asyncio.gather(*(applier(e, d) for e, d in deliveries))
    assert sorted(outcomes) == ["duplicate"] * 19 + ["paid"]
    assert await _paid_events(db_pool, out_trade_no) == 1


async def test_second_transaction_is_recorded_for_refund_not_granted(db_pool, gate):
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _ = await basic_order(db_pool)
    assert await applier(*payment(out_trade_no, txn="TXN-FIRST")) == "paid"
    assert await applier(*payment(out_trade_no, txn="TXN-SECOND")) == "duplicate_payment"
    row = await fetch_one(
        db_pool,
        "SELECT p.transaction_id, l.detail FROM payment_orders p JOIN payment_logs l"
        " ON l.out_trade_no = p.out_trade_no AND l.kind = 'duplicate_payment'"
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
async def test_mismatch_flags_for_review_without_order_paid(db_pool, overrides, reason, gate):
    applier = PaymentApplier(db_pool, gate)
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


async def test_late_payment_after_the_order_failed_is_honoured(db_pool, gate):
    """``failed``: timed out or cancelled (closed). The money was taken all the same."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _ = await basic_order(db_pool, status="failed")
    assert await applier(*payment(out_trade_no)) == "paid"
    row = await fetch_one(
        db_pool,
        "SELECT l.detail, l.source, o.status FROM payment_logs l JOIN payment_orders o"
        " ON o.out_trade_no = l.out_trade_no WHERE l.out_trade_no = %s AND l.kind = 'paid'",
        out_trade_no,
    )
    assert row == {"detail": "paid after close", "source": "wechatpay", "status": "paid"}
    assert await _paid_events(db_pool, out_trade_no) == 1


@pytest.mark.parametrize("status", ["paid", "refunded"])
async def test_a_payment_never_moves_a_settled_order(db_pool, status, gate):
    """Only pending and failed orders are payable: a paid order another writer settled
    (with another transaction) is a second payment, recorded, nothing staged."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _ = await basic_order(db_pool, status=status)
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET transaction_id = 'TXN-OTHER' WHERE out_trade_no = %s",
            (out_trade_no,),
        )
    assert await applier(*payment(out_trade_no)) == "duplicate_payment"
    assert await order_status(db_pool, out_trade_no) == status
    assert await _paid_events(db_pool, out_trade_no) == 0


async def test_an_order_another_writer_made_is_paid_with_fen_from_its_yuan(db_pool, gate):
    """A row with only the shared columns (amount 29.90 yuan, no currency, mchid, appid,
    expires_at of paylane's): its fen is the generated 2990, and order.paid says so."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, user_id = await basic_order(
        db_pool, amount=2990, generation_id="gen-42", package_type="premium"
    )
    assert await applier(*payment(out_trade_no, amount=2990)) == "paid"
    row = await fetch_one(
        db_pool,
        "SELECT payload FROM outbox WHERE routing_key = 'order.paid' AND payload LIKE %s",
        f"%{out_trade_no}%",
    )
    data = events.Envelope.model_validate_json(row["payload"]).typed_data()
    assert (data.user_id, data.amount_total, data.generation_id) == (user_id, 2990, "gen-42")
    # 29.89 is not 29.90: one fen short is a mismatch, never rounded away.
    short, _ = await basic_order(db_pool, amount=2990, package_type="premium")
    assert await applier(*payment(short, amount=2989)) == "needs_review"


async def test_unknown_order_asks_for_retry_and_claims_nothing(db_pool, gate):
    applier = PaymentApplier(db_pool, gate)
    envelope, data = payment("NOPE" + uuid.uuid4().hex[:10])
    with pytest.raises(Retry, match="unknown out_trade_no"):
        await applier(envelope, data)
    # The inbox claim rolled back with the transaction: the retry will be processed.
    row = await fetch_one(
        db_pool, "SELECT COUNT(*) AS n FROM inbox WHERE event_id = %s", envelope.event_id
    )
    assert row["n"] == 0


async def _paid_at_wechat(wechat, out_trade_no: str, total: int = 990) -> str:
    """``out_trade_no`` placed and paid at the kit's WeChat Pay (the notification lost);
    returns WeChat Pay's transaction id."""
    sandbox, client = wechat
    await client.place("NATIVE", order_request("native", out_trade_no, total))
    await sandbox.ok("POST", f"/sandbox/orders/{out_trade_no}/pay", {"notify": False})
    return str((await client.query_by_out_trade_no(out_trade_no))["transaction_id"])


async def _unconfirmed_logged(pool: aiomysql.Pool, out_trade_no: str) -> int:
    row = await fetch_one(
        pool,
        "SELECT COUNT(*) AS n FROM payment_logs WHERE out_trade_no = %s"
        " AND kind = 'unconfirmed_payment'",
        out_trade_no,
    )
    return int(row["n"])


async def test_internal_notify_without_amount_is_not_granted_unless_wechat_pay_says_so(
    db_pool, gate, kit_wechat
):
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _ = await basic_order(db_pool)
    internal = payment_succeeded(out_trade_no, None, "T1", source="internal")
    with pytest.raises(Reject, match="does not confirm the payment: ORDER_NOT_EXIST"):
        await applier(*internal)
    assert await order_status(db_pool, out_trade_no) == "pending"
    assert await _unconfirmed_logged(db_pool, out_trade_no) == 1

    transaction_id = await _paid_at_wechat(kit_wechat, out_trade_no)
    paid = payment_succeeded(out_trade_no, None, transaction_id, source="internal")
    assert await applier(*paid) == "paid"
    assert await _paid_events(db_pool, out_trade_no) == 1


async def test_an_internal_notify_is_applied_only_as_wechat_pay_confirms_it(
    db_pool, gate, kit_wechat
):
    """The cloud function's secret is not WeChat Pay's word: every internal notify is
    confirmed by a query, whatever amount it names (INTERNAL_NOTIFY_TRUSTED is gone)."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _ = await basic_order(db_pool, amount=990)
    await kit_wechat[1].place("NATIVE", order_request("native", out_trade_no, 990))
    # Placed, not paid (NOTPAY): an internal notify claiming it was is refused.
    with pytest.raises(Reject, match="trade_state NOTPAY"):
        await applier(*payment_succeeded(out_trade_no, 990, "T2", source="internal"))
    assert await order_status(db_pool, out_trade_no) == "pending"
    # Paid at WeChat Pay, but not by the transaction the notify names.
    transaction_id = await _paid_at_wechat(kit_wechat, out_trade_no)
    with pytest.raises(Reject, match=f"paid by {transaction_id}"):
        await applier(*payment_succeeded(out_trade_no, 990, "T-FORGED", source="internal"))
    assert await order_status(db_pool, out_trade_no) == "pending"
    assert await _unconfirmed_logged(db_pool, out_trade_no) == 2
    # WeChat Pay's own transaction: paid, with WeChat Pay's figures.
    assert (
        await applier(*payment_succeeded(out_trade_no, 1, transaction_id, source="internal"))
        == "paid"
    )


async def test_a_claim_with_no_notification_is_asked_about_and_refused(db_pool, gate):
    """Whoever can publish ``payment.succeeded`` (ingress's broker user, a replay) can
    claim a payment; without WeChat Pay's signature the gate asks WeChat Pay, which knows
    no such payment: nothing changes (issue: a pending 29.90 order was paid and granted
    while WeChat Pay said NOTPAY)."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _ = await basic_order(db_pool, amount=2990, package_type="premium")
    forged = payment(out_trade_no, amount=2990, txn="4200FORGED000002", signed=False)
    assert forged.data.notification is None
    with pytest.raises(Reject, match="does not confirm"):
        await applier(*forged)
    assert await order_status(db_pool, out_trade_no) == "pending"
    assert await _paid_events(db_pool, out_trade_no) == 0


async def test_the_event_fields_are_not_believed_only_the_signed_notification(db_pool, gate):
    """An event whose fields were changed after WeChat Pay signed its notification (a
    1-fen payment published as 29.90): the gate reads the payment from the notification."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _ = await basic_order(db_pool, amount=2990, package_type="premium")
    genuine = payment(out_trade_no, amount=1, txn="4200REAL0000001")
    inflated = genuine.data.model_copy(update={"amount_total": 2990})
    envelope = make_event(events.PAYMENT_SUCCEEDED, inflated)
    assert await applier(envelope, inflated) == "needs_review"
    row = await fetch_one(
        db_pool, "SELECT review_reason FROM payment_orders WHERE out_trade_no = %s", out_trade_no
    )
    assert row["review_reason"].startswith("amount 1 differs from order amount 2990")
    assert await _paid_events(db_pool, out_trade_no) == 0


async def test_a_notification_of_another_payment_is_no_evidence(db_pool, gate):
    """A genuine notification (of order A) attached to a claim about order B: B's payment
    is asked about, and WeChat Pay knows none."""
    applier = PaymentApplier(db_pool, gate)
    paid_elsewhere = payment(f"A{uuid.uuid4().hex[:20]}", amount=990, txn="4200A")
    b, _ = await basic_order(db_pool)
    claim = paid_elsewhere.data.model_copy(update={"out_trade_no": b})
    with pytest.raises(Reject, match="does not confirm"):
        await applier(make_event(events.PAYMENT_SUCCEEDED, claim), claim)
    assert await order_status(db_pool, b) == "pending"


async def test_a_notification_signed_by_another_key_is_no_evidence(db_pool, gate):
    """Signed, but not by WeChat Pay (another platform key under WeChat Pay's serial)."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _ = await basic_order(db_pool)
    impostor = FakeWechat(public_key_id=KIT.public_key_id, apiv3_key=KIT.apiv3_key)
    resource = KIT.transaction(out_trade_no, 990, "4200IMPOSTOR")
    headers, body = impostor.notify(resource)
    headers.pop("Content-Type")
    claim = payment_from_transaction(
        resource,
        "wechatpay",
        WechatNotification(body=body.decode(), headers=headers, received_at=int(time.time())),
    )
    with pytest.raises(Reject, match="does not confirm"):
        await applier(make_event(events.PAYMENT_SUCCEEDED, claim), claim)
    assert await order_status(db_pool, out_trade_no) == "pending"


async def test_the_amount_must_be_a_price_of_the_package_granted(db_pool, gate):
    """An order row whose amount is not its package's price (another writer's, or an
    ``order.created`` of ``{amount: 1, packageType: "premium"}``), then a genuine payment
    of that amount: WeChat Pay's word, but for the wrong price. Review, no grant."""
    applier = PaymentApplier(db_pool, gate)
    user_id = await add_user(db_pool)
    out_trade_no = f"T{uuid.uuid4().hex[:24]}"
    await add_order(
        db_pool, user_id, out_trade_no, amount=yuan(1), package_type="premium", trade_type="JSAPI"
    )
    assert await applier(*payment(out_trade_no, amount=1, txn="4200ONEFEN")) == "needs_review"
    row = await fetch_one(
        db_pool, "SELECT review_reason FROM payment_orders WHERE out_trade_no = %s", out_trade_no
    )
    assert row["review_reason"] == "amount 1 is not a price of 'premium' (prices then: 2990)"
    assert await _paid_events(db_pool, out_trade_no) == 0


async def test_a_price_replaced_a_moment_ago_still_counts(db_pool, gate):
    """The cloud function caches prices for five minutes: an order priced just before a
    change is paid at the old price (catalog_prices keeps the history)."""
    dearer = {**CATALOG, "basic": CATALOG["basic"].model_copy(update={"price_fen": 1990})}
    await catalog_prices.record(db_pool, CATALOG)
    await catalog_prices.record(db_pool, dearer)
    now_dearer = PaymentApplier(db_pool, payment_gate(gate.client, dearer))
    out_trade_no, _ = await basic_order(db_pool, amount=990)
    assert await now_dearer(*payment(out_trade_no, amount=990, txn="4200OLDPRICE")) == "paid"
    # An order made long after the change: the old price no longer counts.
    stale, _ = await basic_order(db_pool, amount=990)
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET created_at = NOW() + INTERVAL 10 MINUTE"
            " WHERE out_trade_no = %s",
            (stale,),
        )
    isolated = {"basic": CATALOG["basic"].model_copy(update={"price_fen": 1990})}
    assert (
        await PaymentApplier(db_pool, payment_gate(gate.client, isolated))(
            *payment(stale, amount=990, txn="4200STALE")
        )
        == "needs_review"
    )
    await catalog_prices.record(db_pool, CATALOG)
