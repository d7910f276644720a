"""The issue's reproductions of "granted without WeChat Pay's word", against the running
stack: the whole of paylane (ingress, order, entitlement) and the sandbox WeChat Pay.
Each grants nothing; the order stays pending or goes to ``needs_review``.

(The same claims at the handler level, and the gate's other refusals, are in
services/order/tests/test_payments.py and test_sweep.py.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker.publisher import Publisher, envelope_message
from paylane_common.contract import events
from paylane_common.contract.events import PaymentSucceeded, make_event
from paylane_common.storage.db import transaction
from tests.e2e.test_cloud_function_calls import order_created, order_created_body, until_written
from tests.e2e.test_hybrid import reconcile_once
from tests.support.cloud_function import cloud_ids, place_at_wechatpay
from tests.support.polling import eventually
from tests.support.queries import fetch_one, grants, user_state
from tests.support.seeding import add_order, add_user, ago
from tests.support.stack import Stack
from tests.support.stack_api import call, new_order, sandbox
from tests.support.stack_config import INTERNAL
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.e2e


@pytest.fixture
async def publisher(amqp_connection: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    publisher = await Publisher.open(amqp_connection)
    yield publisher
    await publisher.close()


async def order_state(pool: aiomysql.Pool, out_trade_no: str) -> dict[str, Any]:
    row = await fetch_one(
        pool,
        "SELECT status, review_reason, paid_event_at IS NOT NULL AS announced"
        " FROM payment_orders WHERE out_trade_no = %s",
        out_trade_no,
    )
    assert row is not None
    return dict(row)


async def until_logged(pool: aiomysql.Pool, out_trade_no: str, kind: str, n: int = 1) -> None:
    async def logged() -> bool:
        row = await fetch_one(
            pool,
            "SELECT COUNT(*) AS n FROM payment_logs WHERE out_trade_no = %s AND kind = %s",
            out_trade_no,
            kind,
        )
        return int(row["n"]) >= n

    await eventually(logged, what=f"{out_trade_no}: {kind} logged", timeout=20)


def forged_payment(out_trade_no: str, amount: int, wechat: FakeWechat) -> events.Envelope:
    """What a publisher with no WeChat Pay key can say: every field right, no evidence."""
    return make_event(
        events.PAYMENT_SUCCEEDED,
        PaymentSucceeded(
            out_trade_no=out_trade_no,
            transaction_id=f"4200FORGED{uuid.uuid4().hex[:10]}",
            amount_total=amount,
            mchid=wechat.mchid,
            appid=wechat.appid,
            source="wechatpay",
        ),
    )


async def test_a_forged_paid_row_is_swept_to_review_not_granted(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    """Reproduction 1: another writer puts ``status='paid', premium, 0.01,
    transaction_id='4200FORGED000001'`` in payment_orders; ``paylane reconcile --once``
    used to make the user premium with +100 regenerations."""
    out_trade_no = f"{uuid.uuid4().int % 10**18:018d}"
    async with transaction(db_pool) as cur:
        user_id = await add_user(cur)
        await add_order(
            cur,
            user_id,
            out_trade_no,
            amount="0.01",
            package_type="premium",
            trade_type="JSAPI",
            status="paid",
            transaction_id="4200FORGED000001",
            paid_at=ago(0),
        )
    found = await reconcile_once(stack)
    assert found.get("effect_needs_review", 0) >= 1, found
    state = await order_state(db_pool, out_trade_no)
    assert state["status"] == "needs_review"
    assert "WeChat Pay does not confirm" in state["review_reason"]
    assert not state["announced"]
    # The internal notify for the same order: refused (dead-lettered) as before.
    status, _ = await call(
        stack,
        "ingress",
        "POST",
        "/api/payment/internal/notify",
        {"outTradeNo": out_trade_no, "transactionId": "4200FORGED000001", "status": "paid"},
        INTERNAL,
    )
    assert status == 200
    await until_logged(db_pool, out_trade_no, "unconfirmed_payment")
    assert await grants(db_pool, out_trade_no) == {"n": 0, "revoked": 0}
    assert await user_state(db_pool, user_id) == ("free", 3)


@pytest.mark.parametrize("route", ["exchange", "amq.default"])
async def test_a_published_claim_without_wechat_pays_word_grants_nothing(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat, publisher: Publisher, route: str
) -> None:
    """Reproductions 2 and 3: ``payment.succeeded`` for a pending 29.90 order, published
    by someone who may publish (to the exchange, or straight into order.payments through
    the default exchange), while WeChat Pay says NOTPAY: the order used to be paid and
    the user premium. Now the order service asks WeChat Pay and leaves the order
    pending."""
    order = await new_order(stack, "premium", "NATIVE")
    forged = forged_payment(order.out_trade_no, order.amount_total, wechat)
    if route == "exchange":
        await publisher.publish(forged)
    else:
        await publisher.publish_to_queue("order.payments", envelope_message(forged))
    await until_logged(db_pool, order.out_trade_no, "unconfirmed_payment")
    assert (await order_state(db_pool, order.out_trade_no))["status"] == "pending"
    assert await grants(db_pool, order.out_trade_no) == {"n": 0, "revoked": 0}
    assert (await user_state(db_pool, order.user_id))[0] == "free"
    # The buyer really pays afterwards: granted, once.
    status, paid = await sandbox(stack, "POST", f"/sandbox/orders/{order.out_trade_no}/pay")
    assert status == 200, paid

    async def granted() -> bool:
        return await grants(db_pool, order.out_trade_no) == {"n": 1, "revoked": 0}

    await eventually(granted, what="the genuine payment granted", timeout=20)
    assert (await user_state(db_pool, order.user_id))[0] == "premium"


async def test_a_genuine_payment_of_the_wrong_price_is_not_granted(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    """Reproduction 4: ``order-created`` with ``{amount: 1, packageType: "premium"}``,
    then a genuine one-fen payment: the user used to become premium with 103."""
    ids = cloud_ids()
    await place_at_wechatpay(stack, wechat, ids, 1, "premium")
    await order_created(stack, order_created_body(ids, "premium", amount=1))
    await until_written(db_pool, ids["outTradeNo"])
    status, paid = await sandbox(stack, "POST", f"/sandbox/orders/{ids['outTradeNo']}/pay")
    assert status == 200, paid

    async def reviewed() -> bool:
        return (await order_state(db_pool, ids["outTradeNo"]))["status"] == "needs_review"

    await eventually(reviewed, what="the order in review", timeout=20)
    state = await order_state(db_pool, ids["outTradeNo"])
    assert state["review_reason"] == "amount 1 is not a price of 'premium' (prices then: 2990)"
    assert await grants(db_pool, ids["outTradeNo"]) == {"n": 0, "revoked": 0}
    assert await user_state(db_pool, ids["userId"]) == ("free", 3)
