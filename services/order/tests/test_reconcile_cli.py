"""``paylane reconcile --once`` against the sandbox and the real broker and database."""

from __future__ import annotations

import secrets
import uuid

import aiohttp
import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker.topology import declare_exchange
from paylane_common.contract.events import parse_event
from paylane_common.storage.db import transaction
from paylane_common.wechatpay.testing import order_request
from paylane_order.reconcile_cli import reconcile
from services.order.tests.support import order_settings
from tests.support.queries import order_status
from tests.support.sandbox import running_sandbox, sandbox_settings
from tests.support.seeding import add_order, add_user, ago, from_now
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.integration


async def _pending_row(pool: aiomysql.Pool, out_trade_no: str, expired: bool) -> None:
    async with transaction(pool) as cur:
        await add_order(
            cur,
            await add_user(cur),
            out_trade_no,
            package_type="basic",
            trade_type="NATIVE",
            amount="9.90",
            status="pending",
            created_at=ago(300),
            expires_at=from_now(-60 if expired else 600),
        )


async def test_reconcile_once_recovers_paid_and_closes_expired(
    amqp_url: str,
    mysql_url: str,
    db_pool: aiomysql.Pool,
    amqp_connection: AbstractRobustConnection,
) -> None:
    keys = FakeWechat()
    paid_no = f"RC{secrets.token_hex(8).upper()}"
    expired_no = f"RC{secrets.token_hex(8).upper()}"
    channel = await amqp_connection.channel()
    spy = await channel.declare_queue(f"spy.{uuid.uuid4().hex}", exclusive=True)
    await spy.bind(await declare_exchange(channel), routing_key="payment.succeeded")

    async with running_sandbox(sandbox_settings(keys)) as sandbox, aiohttp.ClientSession() as http:
        wechat = keys.merchant_client(sandbox.base_url, http)
        for no in (paid_no, expired_no):
            await wechat.place("NATIVE", order_request("native", no))
            await _pending_row(db_pool, no, expired=no == expired_no)
        # Paid at WeChat Pay, but the notification never comes.
        await sandbox.ok("POST", f"/sandbox/orders/{paid_no}/pay", {"notify": False})

        settings = order_settings(keys, sandbox.base_url, amqp_url, mysql_url, reconcile_after_s=1)
        found = await reconcile(settings, once=True)
        assert found["paid_recovered"] >= 1
        assert found["closed_expired"] >= 1
        expired_state = await sandbox.ok("GET", f"/sandbox/orders/{expired_no}")
        paid_state = await sandbox.ok("GET", f"/sandbox/orders/{paid_no}")

    assert expired_state["trade_state"] == "CLOSED"
    assert await order_status(db_pool, expired_no) == "failed"

    recovered = []
    while (message := await spy.get(no_ack=True, fail=False)) is not None:
        envelope, data = parse_event(message.body)
        if data.out_trade_no == paid_no:
            recovered.append((envelope.event_id, data))
    assert len(recovered) == 1
    event_id, data = recovered[0]
    assert data.source == "reconcile"
    assert data.transaction_id == paid_state["transaction_id"]
    assert data.amount_total == 990
    assert event_id == f"reconcile-{data.transaction_id}"  # stable: reruns dedupe
    await channel.close()
