"""The whole stack as processes against the session's own vhost and database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomysql
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from paylane_common.db import transaction
from tests.support import hygiene
from tests.support.stack import Stack
from tests.support.wechat import FakeWechat

TOKEN_SECRET = "e2e-client-token-secret-of-at-least-32-bytes"
INTERNAL_SECRET = "e2e-internal-secret"
#: The app backend's credential on the order API (never given to ingress).
BACKEND_SECRET = "e2e-backend-secret"
BACKEND = {"X-Internal-Secret": BACKEND_SECRET}
#: The mini-program's AppSecret, known to the sandbox's jscode2session and to order.
APP_SECRET = "e2e-miniprogram-app-secret"
#: WeChat's retry schedule at 1/100 (15 s → 150 ms); refunds completed by the tests.
SANDBOX_ENV = {"SANDBOX_TIME_FACTOR": "0.01", "SANDBOX_REFUND_MODE": "manual"}
#: The reconciler looks at orders after 1 s, every 0.5 s; unpaid orders expire after 4 s.
#: Its effects sweep waits an hour: test_hybrid.py runs it on demand (reconcile --once).
ORDER_ENV = {
    "RECONCILE_AFTER_S": "1",
    "RECONCILE_INTERVAL_S": "0.5",
    "ORDER_TTL_S": "4",
    "SWEEP_GRACE_S": "3600",
}


def order_env(sandbox_url: str) -> dict[str, str]:
    """The order service's own settings: the backend secret, the mini-program login."""
    return {
        **ORDER_ENV,
        "BACKEND_API_SECRET": BACKEND_SECRET,
        "WECHAT_APP_SECRET": APP_SECRET,
        "WECHAT_API_BASE": sandbox_url,
    }


@pytest.fixture(scope="session")
def wechat() -> FakeWechat:
    return FakeWechat()


@pytest.fixture(scope="session")
async def stack(
    amqp_url: str, mysql_url: str, wechat: FakeWechat, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    log_dir: Path = tmp_path_factory.mktemp("service-logs")
    hygiene.register(
        TOKEN_SECRET, INTERNAL_SECRET, BACKEND_SECRET, APP_SECRET, wechat.apiv3_key, "o-test-openid"
    )
    stack = Stack(
        {
            "AMQP_URL": amqp_url,
            "MYSQL_URL": mysql_url,
            "CLIENT_TOKEN_SECRET": TOKEN_SECRET,
            "INTERNAL_API_SECRET": INTERNAL_SECRET,
            **wechat.ingress_env(),
        },
        log_dir,
    )
    try:
        sandbox = await stack.start(
            "sandbox", {**wechat.sandbox_env(), **SANDBOX_ENV, "SANDBOX_APP_SECRET": APP_SECRET}
        )
        ingress = await stack.start("ingress")
        merchant = wechat.merchant_env(sandbox.url, f"{ingress.url}/notify/wechatpay")
        stack.base_env.update(merchant)
        for name in ("entitlement", "notifier", "order"):
            await stack.start(name, order_env(sandbox.url) if name == "order" else None)
        yield stack
    finally:
        await stack.stop_all()


@dataclass
class Order:
    out_trade_no: str
    user_id: str
    amount_total: int
    package_type: str
    client_token: str
    pay: dict[str, Any]


async def new_order(
    stack: Stack, package_type: str = "premium", trade_type: str = "JSAPI", **extra: Any
) -> Order:
    """A new user (by openid) and an order placed through ``POST /orders`` by the backend."""
    body = {
        "package_type": package_type,
        "trade_type": trade_type,
        "openid": f"o-{uuid.uuid4().hex[:16]}",
        **extra,
    }
    hygiene.register(body["openid"])  # payer data: must never be logged
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{stack.services['order'].url}/orders", json=body, headers=BACKEND
        ) as response:
            data = await response.json()
            assert response.status == 201, data
    return Order(
        data["out_trade_no"],
        data["user_id"],
        data["amount_total"],
        package_type,
        data["client_token"],
        data["pay"],
    )


async def sandbox(
    stack: Stack, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """Call the sandbox's control API (acting as the payer and as WeChat Pay)."""
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, f"{stack.services['sandbox'].url}{path}", json=body
        ) as response:
            return response.status, await response.json(content_type=None)


async def fetch_one(pool: aiomysql.Pool, sql: str, *args: object) -> dict[str, object]:
    async with transaction(pool) as cur:
        await cur.execute(sql, args)
        row: dict[str, object] = await cur.fetchone()
        return row


async def dead_letter(
    connection: AbstractRobustConnection, queue: str, out_trade_no: str, timeout: float = 30
) -> AbstractIncomingMessage:
    """Take the dead letter of ``out_trade_no`` from ``queue``'s DLQ (others stay).

    Consumes rather than gets and requeues: a quorum queue on RabbitMQ 3.x puts a
    requeued message back at its head, so a get loop would see another test's letter
    forever. Letters not taken go back to the DLQ when the channel closes."""
    channel = await connection.channel()
    try:
        await channel.set_qos(prefetch_count=1000)
        dlq = await channel.get_queue(f"{queue}.dlq", ensure=False)
        async with asyncio.timeout(timeout), dlq.iterator() as letters:
            async for message in letters:
                if message.correlation_id == out_trade_no:
                    await message.ack()
                    return message
        raise AssertionError(f"no dead letter for {out_trade_no}")
    finally:
        await channel.close()


async def call(
    stack: Stack,
    service: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP call to a service of the stack: (status, JSON body or None)."""
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, f"{stack.services[service].url}{path}", json=body, headers=headers
        ) as response:
            return response.status, await response.json(content_type=None)


async def user_state(pool: aiomysql.Pool, user_id: str) -> tuple[str, int]:
    row = await fetch_one(
        pool, "SELECT payment_status, regenerate_count FROM users WHERE id = %s", user_id
    )
    return str(row["payment_status"]), int(row["regenerate_count"])  # type: ignore[call-overload]


async def grants(pool: aiomysql.Pool, out_trade_no: str) -> dict[str, Any]:
    """The order's ledger rows: ``{"n": rows, "revoked": of them revoked}``."""
    return await fetch_one(
        pool,
        "SELECT COUNT(*) AS n, COUNT(revoked_at) AS revoked FROM entitlement_grants"
        " WHERE out_trade_no = %s",
        out_trade_no,
    )
