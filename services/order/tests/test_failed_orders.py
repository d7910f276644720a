"""An order that ends unpaid stages ``order.failed`` with the reason, in the transaction
that fails it, whoever fails it: a close through the API, the reconciler's closes of
expired and failed orders (the sandbox in process, the real database)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker.publisher import Publisher
from paylane_common.storage.db import transaction
from paylane_common.wechatpay import WechatPayClient
from paylane_common.wechatpay.testing import order_request
from paylane_order.config import ReconcilerConfig
from paylane_order.gate import Gate
from paylane_order.orders import Orders
from paylane_order.reconciler import Reconciler
from services.order.tests.support import MERCHANT
from tests.support.sandbox import RunningSandbox
from tests.support.seeding import add_order, add_user, ago
from tests.support.wechat import KIT

pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(amqp_connection: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    publisher = await Publisher.open(amqp_connection)
    yield publisher
    await publisher.close()


async def _placed(
    db_pool: aiomysql.Pool, client: WechatPayClient, **columns: Any
) -> tuple[str, str]:
    """A basic order placed at WeChat Pay and pending here: (out_trade_no, user_id)."""
    no = f"FO{secrets.token_hex(10).upper()}"
    user_id = await add_user(db_pool)
    await client.place("NATIVE", order_request("native", no, 990))
    await add_order(db_pool, user_id, no, amount="9.90", trade_type="NATIVE", **columns)
    return no, user_id


async def _failed_events(db_pool: aiomysql.Pool, out_trade_no: str) -> list[dict[str, Any]]:
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT payload FROM outbox WHERE routing_key = 'order.failed' AND payload LIKE %s",
            (f"%{out_trade_no}%",),
        )
        return [json.loads(r["payload"])["data"] for r in await cur.fetchall()]


async def _status(db_pool: aiomysql.Pool, out_trade_no: str) -> str:
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT status FROM payment_orders WHERE out_trade_no = %s", (out_trade_no,)
        )
        return str((await cur.fetchone())["status"])


async def test_a_closed_order_tells_its_client_once(
    db_pool: aiomysql.Pool, kit_wechat: tuple[RunningSandbox, WechatPayClient]
) -> None:
    _, client = kit_wechat
    orders = Orders(db_pool, client, KIT.merchant_signer(), MERCHANT)
    no, user_id = await _placed(db_pool, client)
    assert (await orders.close(no))["status"] == "failed"
    await orders.close(no)  # closed already: nothing more
    assert await _failed_events(db_pool, no) == [
        {
            "out_trade_no": no,
            "user_id": user_id,
            "package_type": "basic",
            "reason": "closed",
        }
    ]


@pytest.mark.parametrize(
    ("payer", "reason"),
    [
        (None, "expired"),  # nobody paid it before it expired: closed at WeChat Pay
        ("fail", "failed"),  # the payment failed (PAYERROR)
    ],
)
async def test_the_reconciler_tells_the_client_why_its_order_failed(
    db_pool: aiomysql.Pool,
    kit_wechat: tuple[RunningSandbox, WechatPayClient],
    gate: Gate,
    publisher: Publisher,
    payer: str | None,
    reason: str,
) -> None:
    sandbox, client = kit_wechat
    reconciler = Reconciler(db_pool, client, publisher, ReconcilerConfig(), gate)
    no, _ = await _placed(db_pool, client, created_at=ago(3600), expires_at=ago(1800))
    if payer is not None:
        await sandbox.ok("POST", f"/sandbox/orders/{no}/{payer}")
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT out_trade_no, expires_at, created_at FROM payment_orders"
            " WHERE out_trade_no = %s",
            (no,),
        )
        row = await cur.fetchone()
    await reconciler.settle_order(row)
    assert await _status(db_pool, no) == "failed"
    assert [e["reason"] for e in await _failed_events(db_pool, no)] == [reason]
