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

from paylane_common.storage.db import transaction
from tests.support.cloud_function import cloud_ids, now_ms, place_at_wechatpay
from tests.support.polling import eventually
from tests.support.queries import fetch_one, user_state
from tests.support.stack import Stack
from tests.support.stack_api import call, new_order, sandbox
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


# The existing system's reports, as its team runs them on payment_logs: unchanged, they
# must see paylane's orders, payments and refunds as they saw the cloud function's.
REPORTS = {
    "orders": "SELECT DATE(created_at) AS day, COUNT(*) AS n, SUM(amount_total) AS fen"
    " FROM payment_logs WHERE type = 'order_create' GROUP BY DATE(created_at)",
    "payments": "SELECT DATE(created_at) AS day, COUNT(*) AS n, SUM(amount_total) AS fen"
    " FROM payment_logs WHERE type = 'payment_callback' AND event_type = 'TRANSACTION.SUCCESS'"
    " GROUP BY DATE(created_at)",
    "refund_requests": "SELECT DATE(created_at) AS day, COUNT(*) AS n, SUM(amount_total) AS fen"
    " FROM payment_logs WHERE type = 'refund_create' GROUP BY DATE(created_at)",
    "refunds": "SELECT DATE(created_at) AS day, COUNT(*) AS n, SUM(amount_total) AS fen"
    " FROM payment_logs WHERE type = 'refund_callback' AND event_type = 'REFUND.SUCCESS'"
    " GROUP BY DATE(created_at)",
}
#: An order's history, as the existing backend shows it.
HISTORY = (
    "SELECT type, event_type, amount_total, out_refund_no FROM payment_logs"
    " WHERE out_trade_no = %s ORDER BY created_at"
)


async def reports(pool: aiomysql.Pool) -> dict[str, tuple[int, int]]:
    """Each report's rows and fen, over all its days (the test may straddle midnight)."""
    totals = {}
    for name, sql in REPORTS.items():
        async with transaction(pool) as cur:
            await cur.execute(sql)
            days = await cur.fetchall()
        totals[name] = (sum(int(d["n"]) for d in days), sum(int(d["fen"] or 0) for d in days))
    return totals


async def history(pool: aiomysql.Pool, out_trade_no: str) -> list[tuple[Any, ...]]:
    async with transaction(pool) as cur:
        await cur.execute(HISTORY, (out_trade_no,))
        return sorted((tuple(row.values()) for row in await cur.fetchall()), key=str)


async def test_the_existing_reports_read_paylanes_orders_payments_and_refunds(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    """paylane's own order (placed, paid, partly refunded with a reason, noted by the
    backend), one it closed, and one the cloud function could not write: each leaves the
    rows the existing reports count, in their words, without the payer's data."""
    before = await reports(db_pool)
    placed = await new_order(stack, "premium", "JSAPI")
    status, paid = await sandbox(stack, "POST", f"/sandbox/orders/{placed.out_trade_no}/pay")
    assert status == 200, paid
    await until_granted(db_pool, placed.out_trade_no)
    status, refund = await call(
        stack,
        "order",
        "POST",
        f"/orders/{placed.out_trade_no}/refunds",
        {"amount": 990, "reason": "用户申请退款"},
        BACKEND,
    )
    assert status == 202, refund
    no = refund["out_refund_no"]
    await sandbox(stack, "POST", f"/sandbox/refunds/{no}/complete", {"status": "SUCCESS"})

    async def refunded() -> bool:
        row = await fetch_one(
            db_pool,
            "SELECT COUNT(*) AS n FROM payment_logs WHERE out_refund_no = %s"
            " AND type = 'refund_callback'",
            no,
        )
        return int(row["n"]) == 1

    await eventually(refunded, what=f"{no} refund_callback logged")
    closed = await new_order(stack, "basic", "NATIVE")
    status, view = await call(
        stack, "order", "POST", f"/orders/{closed.out_trade_no}/close", None, BACKEND
    )
    assert (status, view["status"]) == (200, "failed")
    ids = cloud_ids()
    await place_at_wechatpay(stack, wechat, ids, 1, "basic")
    await order_created(stack, order_created_body(ids, "basic"))
    await until_written(db_pool, ids["outTradeNo"])

    # Each order's history, in the existing words.
    assert await history(db_pool, placed.out_trade_no) == sorted(
        [
            ("order_create", None, 2990, None),
            ("payment_callback", "TRANSACTION.SUCCESS", 2990, None),
            ("refund_create", None, 990, no),
            ("refund_callback", "REFUND.SUCCESS", 990, no),
        ],
        key=str,
    )
    assert await history(db_pool, closed.out_trade_no) == sorted(
        [("order_create", None, 1, None), ("order_close", None, 1, None)], key=str
    )
    assert await history(db_pool, ids["outTradeNo"]) == [("order_create", None, 1, None)]
    kinds = await fetch_one(
        db_pool,
        "SELECT GROUP_CONCAT(CONCAT(type, ':', kind, ':', source) ORDER BY type)"
        " AS kinds FROM payment_logs WHERE out_trade_no = %s",
        placed.out_trade_no,
    )
    assert kinds["kinds"].split(",") == [
        "order_create:placed:api",
        "payment_callback:paid:wechatpay",
        "refund_callback:refund_success:wechatpay",
        "refund_create:refund_requested:api",
    ]

    # The reports count them (at least these: the stack's reconciler may add its own).
    after = await reports(db_pool)
    grew = {
        name: (after[name][0] - before[name][0], after[name][1] - before[name][1])
        for name in REPORTS
    }
    expected = {
        "orders": (3, 2990 + 1 + 1),
        "payments": (1, 2990),
        "refund_requests": (1, 990),
        "refunds": (1, 990),
    }
    for name, (rows, fen) in expected.items():
        assert grew[name][0] >= rows and grew[name][1] >= fen, (name, grew[name])

    # The request and response data are there, without the payer or a secret.
    payer = await fetch_one(
        db_pool,
        "SELECT _openid FROM payment_orders WHERE out_trade_no = %s",
        placed.out_trade_no,
    )
    logged = await fetch_one(
        db_pool,
        "SELECT GROUP_CONCAT(CONCAT(request_data, ' ', COALESCE(response_data, '')))"
        " AS data, SUM(request_data IS NULL) AS empty FROM payment_logs WHERE out_trade_no = %s",
        placed.out_trade_no,
    )
    assert logged["empty"] == 0
    for secret in (payer["_openid"], wechat.apiv3_key, "ciphertext", "paySign", "-----BEGIN"):
        assert secret not in logged["data"], secret
    assert paid["transaction_id"] in logged["data"] and "prepay_id" in logged["data"]

    # The backend's note and the refund's reason are on the order row, as it keeps them.
    status, noted = await call(
        stack, "order", "PATCH", f"/orders/{placed.out_trade_no}", {"remark": "VIP 客户"}, BACKEND
    )
    assert status == 200, noted
    assert (noted["remark"], noted["refund_reason"]) == ("VIP 客户", "用户申请退款")
    row = await fetch_one(
        db_pool,
        "SELECT remark, refund_reason FROM payment_orders WHERE out_trade_no = %s",
        placed.out_trade_no,
    )
    assert row == {"remark": "VIP 客户", "refund_reason": "用户申请退款"}
    owner = {"Authorization": f"Bearer {placed.client_token}"}
    status, mine = await call(stack, "order", "GET", f"/orders/{placed.out_trade_no}", None, owner)
    assert (status, mine["remark"], mine["refund_reason"]) == (200, None, "用户申请退款")
    status, refused = await call(
        stack, "order", "PATCH", f"/orders/{placed.out_trade_no}", {"remark": "x"}, owner
    )
    assert (status, refused["error"]) == (403, "forbidden")
    too_long = {"remark": "x" * 1001}
    status, refused = await call(
        stack, "order", "PATCH", f"/orders/{placed.out_trade_no}", too_long, BACKEND
    )
    assert (status, refused["error"]) == (400, "invalid_request")
    status, _ = await call(stack, "order", "PATCH", "/orders/NOSUCHORDER", {"remark": ""}, BACKEND)
    assert status == 404
