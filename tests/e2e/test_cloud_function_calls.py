"""The existing cloud function's calls (docs/adoption.md, docs/cloud-function.md), end to
end: every service as a process, the WeChat Pay sandbox as a process, real RabbitMQ and
MySQL.

The test plays the cloud function: it places the order at WeChat Pay itself (a signed
``POST /v3/pay/transactions/jsapi`` to the sandbox), fails to write it, calls
``POST /api/payment/internal/order-created`` instead; the payer pays; paylane settles
the order it wrote and grants the package once.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiohttp
import aiomysql
import pytest

from tests.support.cloud_function import cloud_ids, now_ms, place_at_wechatpay
from tests.support.polling import eventually
from tests.support.queries import fetch_one, user_state
from tests.support.stack import Stack
from tests.support.stack_api import call, sandbox
from tests.support.stack_config import BACKEND, INTERNAL
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.e2e

PRICES = {"basic": (1, Decimal("0.01"), 20), "premium": (2990, Decimal("29.90"), 100)}


async def order_created(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await call(
        stack, "ingress", "POST", "/api/payment/internal/order-created", body, INTERNAL
    )
    assert status == 200, answer
    assert answer["success"] is True and answer["message"]
    return dict(answer)


def order_created_body(ids: dict[str, str], package: str, **extra: Any) -> dict[str, Any]:
    return {
        **ids,
        "amount": PRICES[package][0],
        "packageType": package,
        "tradeType": "JSAPI",
        "status": "pending",
        "reason": "db_unavailable",
        "dbError": "connect ETIMEDOUT 10.0.0.5:3306",
        **extra,
    }


async def order_row(pool: aiomysql.Pool, out_trade_no: str) -> dict[str, Any] | None:
    row = await fetch_one(
        pool,
        "SELECT id, user_id, generation_id, amount, amount_total, package_type, trade_type,"
        " status, transaction_id, paid_at, _openid FROM payment_orders WHERE out_trade_no = %s",
        out_trade_no,
    )
    return row


async def until_written(pool: aiomysql.Pool, out_trade_no: str) -> dict[str, Any]:
    async def written() -> bool:
        return await order_row(pool, out_trade_no) is not None

    await eventually(written, what=f"{out_trade_no} written to payment_orders")
    row = await order_row(pool, out_trade_no)
    assert row is not None
    return row


async def until_granted(pool: aiomysql.Pool, out_trade_no: str) -> None:
    async def settled() -> bool:
        row = await fetch_one(
            pool,
            "SELECT o.status, (SELECT COUNT(*) FROM entitlement_grants g"
            " WHERE g.out_trade_no = o.out_trade_no) AS grants"
            " FROM payment_orders o WHERE o.out_trade_no = %s",
            out_trade_no,
        )
        return row is not None and row["status"] == "paid" and row["grants"] == 1

    await eventually(settled, what=f"{out_trade_no} paid and granted")


async def test_an_order_the_cloud_function_could_not_write_is_written_paid_and_granted(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    ids = cloud_ids()
    await place_at_wechatpay(stack, wechat, ids, 2990, "premium")
    # Its insert failed (the database was unreachable): no orderId, the user not written.
    answer = await order_created(stack, order_created_body(ids, "premium"))
    order_id = answer["orderId"]
    assert re.fullmatch(rf"order-{ids['outTradeNo'][:13]}-[a-z0-9]{{8}}", order_id)

    row: dict[str, Any] | None = await until_written(db_pool, ids["outTradeNo"])
    assert row == {
        "id": order_id,
        "user_id": ids["userId"],
        "generation_id": "",
        "amount": Decimal("29.90"),
        "amount_total": 2990,
        "package_type": "premium",
        "trade_type": "JSAPI",
        "status": "pending",
        "transaction_id": None,
        "paid_at": None,
        "_openid": ids["openid"],
    }
    user = await fetch_one(db_pool, "SELECT openid FROM users WHERE id = %s", ids["userId"])
    assert user == {"openid": ids["openid"]}
    log = await fetch_one(
        db_pool,
        "SELECT type, source, detail, amount_total FROM payment_logs"
        " WHERE out_trade_no = %s AND type = 'order_create'",
        ids["outTradeNo"],
    )
    assert log == {
        "type": "order_create",
        "source": "internal",
        "detail": "db_unavailable",
        "amount_total": 2990,
    }

    # The payer pays: WeChat Pay notifies ingress, paylane settles the order it wrote.
    status, paid = await sandbox(stack, "POST", f"/sandbox/orders/{ids['outTradeNo']}/pay")
    assert status == 200, paid
    await until_granted(db_pool, ids["outTradeNo"])
    row = await order_row(db_pool, ids["outTradeNo"])
    assert row is not None
    assert (row["status"], row["transaction_id"]) == ("paid", paid["transaction_id"])
    assert row["paid_at"] is not None
    assert await user_state(db_pool, ids["userId"]) == ("premium", 3 + 100)

    # The backend sees it as any other order.
    status, view = await call(stack, "order", "GET", f"/orders/{ids['outTradeNo']}", None, BACKEND)
    assert status == 200, view
    assert (view["status"], view["amount"], view["amount_total"]) == ("paid", "29.90", 2990)


async def test_retried_calls_write_one_order_and_an_internal_notify_settles_it(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    """The cloud function's own order id, the call retried; its payment callback (which
    holds WeChat's notification, not paylane) then calls the internal notify, once or twice
    (seed body: no amount), and paylane confirms with WeChat Pay before granting."""
    ids = cloud_ids()
    order_id = f"order-{now_ms()}-{uuid.uuid4().hex[:6]}"
    await place_at_wechatpay(stack, wechat, ids, 1, "basic")
    body = order_created_body(ids, "basic", orderId=order_id, reason="db_insert_failed")
    for _ in range(2):
        assert (await order_created(stack, body))["orderId"] == order_id
    row = await until_written(db_pool, ids["outTradeNo"])
    assert (row["id"], row["amount"], row["amount_total"]) == (order_id, Decimal("0.01"), 1)
    count = await fetch_one(
        db_pool,
        "SELECT COUNT(*) AS n FROM payment_orders WHERE out_trade_no = %s",
        ids["outTradeNo"],
    )
    assert count == {"n": 1}

    status, paid = await sandbox(
        stack, "POST", f"/sandbox/orders/{ids['outTradeNo']}/pay", {"notify": False}
    )
    assert status == 200, paid
    notify = {
        "outTradeNo": ids["outTradeNo"],
        "transactionId": paid["transaction_id"],
        "status": "paid",
        "packageType": "basic",
        "generationId": f"gen-{now_ms()}-{uuid.uuid4().hex[:6]}",
        "openid": ids["openid"],
    }
    for _ in range(2):
        status, answer = await call(
            stack, "ingress", "POST", "/api/payment/internal/notify", notify, INTERNAL
        )
        assert status == 200, answer
        assert answer["success"] is True and answer["message"]
    await until_granted(db_pool, ids["outTradeNo"])
    assert await user_state(db_pool, ids["userId"]) == ("basic", 3 + 20)


async def test_the_internal_calls_refuse_a_wrong_secret_as_the_backend_did(stack: Stack) -> None:
    for path in ("/api/payment/internal/order-created", "/api/payment/internal/notify"):
        for headers in ({}, {"X-Internal-Secret": "wrong"}, BACKEND):
            status, answer = await call(stack, "ingress", "POST", path, {}, headers)
            assert (status, answer) == (401, {"error": "Unauthorized"})


async def test_prices_are_the_seed_shape_on_ingress_and_on_the_order_service(
    stack: Stack,
) -> None:
    async with aiohttp.ClientSession() as http:
        texts = {}
        for service, path in (("ingress", "/api/prices/current"), ("order", "/prices/current")):
            async with http.get(f"{stack.services[service].url}{path}") as response:
                assert response.status == 200
                texts[service] = await response.text()
    for service, text in texts.items():
        answer = json.loads(text, parse_float=Decimal)
        assert answer["success"] is True, service
        data = answer["data"]
        assert data["packages"] == {name: yuan for name, (_, yuan, _) in PRICES.items()}
        for key in ("effectiveAt", "updatedAt"):
            assert datetime.fromisoformat(data[key]).tzinfo is not None
    assert '"basic": 0.01, "premium": 29.90' in texts["ingress"]
