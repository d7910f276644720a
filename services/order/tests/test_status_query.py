"""``GET /orders/{no}`` of a pending order asks WeChat Pay (the sandbox, in process) and
settles a payment it confirms through the payment gate, at most once per interval an
order across replicas, and never fails because WeChat Pay did (real database)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiomysql
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from paylane_common.storage.db import transaction
from paylane_common.storage.rows import OrderRow, fetch_one
from paylane_common.wechatpay import WechatPayClient
from paylane_common.wechatpay.testing import order_request
from paylane_order import api
from paylane_order.config import ORDER_CONFIG, OrderConfig, StatusQueryConfig
from paylane_order.errors import error_middleware
from paylane_order.gate import Gate
from paylane_order.orders import Orders
from paylane_order.payments import PaymentApplier
from paylane_order.sessions import Sessions
from paylane_order.status_query import StatusQuery
from services.order.tests.support import MERCHANT, order_settings
from tests.support.sandbox import RunningSandbox
from tests.support.seeding import add_order, add_user, ago
from tests.support.wechat import KIT

pytestmark = pytest.mark.integration

CONFIG = StatusQueryConfig(after_s=5, interval_s=60, timeout_s=2)
BACKEND_SECRET = "status-query-backend-secret-of-32-bytes"
QUERY_PATH = "/v3/pay/transactions/out-trade-no/"


def _query(db_pool: aiomysql.Pool, gate: Gate, config: StatusQueryConfig = CONFIG) -> StatusQuery:
    """One replica's on-demand query (each test may make two: two replicas)."""
    return StatusQuery(db_pool, gate, PaymentApplier(db_pool, gate), config)


async def _pending_order(
    db_pool: aiomysql.Pool, client: WechatPayClient, age_s: float = 10
) -> OrderRow:
    """A basic order (9.90 yuan) placed at WeChat Pay ``age_s`` ago, still pending."""
    no = f"SQ{secrets.token_hex(10).upper()}"
    await client.place("NATIVE", order_request("native", no, 990))
    await add_order(
        db_pool,
        await add_user(db_pool),
        no,
        amount="9.90",
        trade_type="NATIVE",
        created_at=ago(age_s),
    )
    return await _row(db_pool, no)


async def _row(db_pool: aiomysql.Pool, out_trade_no: str) -> OrderRow:
    async with transaction(db_pool) as cur:
        await cur.execute("SELECT * FROM payment_orders WHERE out_trade_no = %s", (out_trade_no,))
        row = await fetch_one(cur, OrderRow)
    assert row is not None
    return row


async def _paid_logs(db_pool: aiomysql.Pool, out_trade_no: str) -> list[tuple[str, str]]:
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT source, event_id FROM payment_logs WHERE out_trade_no = %s AND kind = 'paid'",
            (out_trade_no,),
        )
        return [(r["source"], r["event_id"]) for r in await cur.fetchall()]


async def _pay_silently(sandbox: RunningSandbox, out_trade_no: str) -> str:
    """The payer pays; WeChat Pay's notification is never sent."""
    paid = await sandbox.ok("POST", f"/sandbox/orders/{out_trade_no}/pay", {"notify": False})
    assert paid["notification_id"] is None
    return str(paid["transaction_id"])


async def _asked_in_between(sandbox: RunningSandbox) -> bool:
    """Whether WeChat Pay was asked since the query fault was set (a query takes it)."""
    return not any(f["path_prefix"] == QUERY_PATH for f in await sandbox.faults())


async def test_a_payment_whose_notification_never_came_is_settled_when_the_client_asks(
    db_pool: aiomysql.Pool, kit_wechat: tuple[RunningSandbox, WechatPayClient], gate: Gate
) -> None:
    sandbox, client = kit_wechat
    order = await _pending_order(db_pool, client)
    transaction_id = await _pay_silently(sandbox, order["out_trade_no"])

    assert await _query(db_pool, gate).settle(order) is True
    row = await _row(db_pool, order["out_trade_no"])
    assert (row["status"], row["transaction_id"]) == ("paid", transaction_id)
    # The payment consumer's own path: its log row, under the query's inbox id.
    assert await _paid_logs(db_pool, order["out_trade_no"]) == [
        ("query", f"query-{transaction_id}")
    ]
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT COUNT(*) AS n FROM outbox WHERE routing_key = 'order.paid' AND payload LIKE %s",
            (f"%{order['out_trade_no']}%",),
        )
        assert (await cur.fetchone())["n"] == 1  # order.paid, for the grant and the push
    # Paid now: another GET asks nothing.
    assert await _query(db_pool, gate).settle(await _row(db_pool, order["out_trade_no"])) is False


async def test_a_young_order_is_not_asked_about(
    db_pool: aiomysql.Pool, kit_wechat: tuple[RunningSandbox, WechatPayClient], gate: Gate
) -> None:
    sandbox, client = kit_wechat
    order = await _pending_order(db_pool, client, age_s=1)
    await _pay_silently(sandbox, order["out_trade_no"])
    await sandbox.ok("DELETE", "/sandbox/faults")
    await sandbox.add_fault(path_prefix=QUERY_PATH, method="GET", status=403, code="NO_AUTH")

    assert await _query(db_pool, gate).settle(order) is False
    assert not await _asked_in_between(sandbox)
    assert (await _row(db_pool, order["out_trade_no"]))["status"] == "pending"
    await sandbox.ok("DELETE", "/sandbox/faults")


async def test_an_order_is_asked_about_once_an_interval_whichever_replica_serves_the_get(
    db_pool: aiomysql.Pool, kit_wechat: tuple[RunningSandbox, WechatPayClient], gate: Gate
) -> None:
    sandbox, client = kit_wechat
    replica_a, replica_b = _query(db_pool, gate), _query(db_pool, gate)
    order = await _pending_order(db_pool, client)
    assert await replica_a.settle(order) is False  # asked: NOTPAY
    assert (await _row(db_pool, order["out_trade_no"]))["queried_at"] is not None

    await _pay_silently(sandbox, order["out_trade_no"])
    await sandbox.ok("DELETE", "/sandbox/faults")
    await sandbox.add_fault(path_prefix=QUERY_PATH, method="GET", status=403, code="NO_AUTH")
    assert await replica_b.settle(order) is False  # within the interval: not asked
    assert not await _asked_in_between(sandbox)
    await sandbox.ok("DELETE", "/sandbox/faults")
    assert (await _row(db_pool, order["out_trade_no"]))["status"] == "pending"

    # The interval passes (time moved through the row, not waited for).
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET queried_at = queried_at - INTERVAL 61 SECOND"
            " WHERE out_trade_no = %s",
            (order["out_trade_no"],),
        )
    assert await replica_b.settle(order) is True
    assert (await _row(db_pool, order["out_trade_no"]))["status"] == "paid"


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 403, "code": "NO_AUTH"},  # WeChat Pay's error, not retried
        {"delay_s": 5},  # no answer within the GET's timeout
    ],
)
async def test_wechatpay_failing_leaves_the_order_as_it_is(
    db_pool: aiomysql.Pool,
    kit_wechat: tuple[RunningSandbox, WechatPayClient],
    gate: Gate,
    fault: dict[str, Any],
) -> None:
    sandbox, client = kit_wechat
    order = await _pending_order(db_pool, client)
    await _pay_silently(sandbox, order["out_trade_no"])
    await sandbox.ok("DELETE", "/sandbox/faults")
    await sandbox.add_fault(path_prefix=QUERY_PATH, method="GET", count=10, **fault)
    quick = StatusQueryConfig(after_s=5, interval_s=60, timeout_s=0.5)
    try:
        assert await _query(db_pool, gate, quick).settle(order) is False
    finally:
        await sandbox.ok("DELETE", "/sandbox/faults")
    assert (await _row(db_pool, order["out_trade_no"]))["status"] == "pending"


# --- through the route ------------------------------------------------------------------


@pytest.fixture
async def order_api(
    db_pool: aiomysql.Pool,
    kit_wechat: tuple[RunningSandbox, WechatPayClient],
    gate: Gate,
    amqp_url: str,
    mysql_url: str,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The order API's routes with what ``GET /orders/{no}`` uses (no broker, no consumer)."""
    sandbox, client = kit_wechat
    settings = order_settings(
        KIT, sandbox.base_url, amqp_url, mysql_url, backend_api_secret=BACKEND_SECRET
    )
    config = OrderConfig.from_settings(settings)
    app = web.Application(middlewares=[error_middleware, api.security_middleware])
    app[ORDER_CONFIG] = config
    app[api.SESSIONS] = Sessions(db_pool, config.tokens, config.token_ttl_s)
    app[api.ORDERS] = Orders(db_pool, client, KIT.merchant_signer(), MERCHANT)
    app[api.STATUS_QUERY] = _query(db_pool, gate)
    api.add_routes(app)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_the_get_answers_paid_or_the_row_as_it_is(
    db_pool: aiomysql.Pool,
    kit_wechat: tuple[RunningSandbox, WechatPayClient],
    order_api: TestClient[web.Request, web.Application],
) -> None:
    sandbox, client = kit_wechat
    backend = {"X-Internal-Secret": BACKEND_SECRET}
    failing, paying = await _pending_order(db_pool, client), await _pending_order(db_pool, client)
    for order in (failing, paying):
        await _pay_silently(sandbox, order["out_trade_no"])

    await sandbox.ok("DELETE", "/sandbox/faults")
    await sandbox.add_fault(path_prefix=QUERY_PATH, method="GET", status=403, code="NO_AUTH")
    try:
        response = await order_api.get(f"/orders/{failing['out_trade_no']}", headers=backend)
        assert response.status == 200
        assert (await response.json())["status"] == "pending"
    finally:
        await sandbox.ok("DELETE", "/sandbox/faults")

    response = await order_api.get(f"/orders/{paying['out_trade_no']}", headers=backend)
    assert response.status == 200
    view = await response.json()
    assert (view["status"], view["transaction_id"]) == (
        "paid",
        (await _row(db_pool, paying["out_trade_no"]))["transaction_id"],
    )
