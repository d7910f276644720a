"""The whole stack as processes against the session's own vhost and database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomysql
import pytest

from paylane_common.db import transaction
from tests.support.stack import Stack
from tests.support.wechat import FakeWechat

TOKEN_SECRET = "e2e-client-token-secret-of-at-least-32-bytes"
INTERNAL_SECRET = "e2e-internal-secret"


@pytest.fixture(scope="session")
def wechat() -> FakeWechat:
    return FakeWechat()


@pytest.fixture(scope="session")
async def stack(
    amqp_url: str, mysql_url: str, wechat: FakeWechat, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    log_dir: Path = tmp_path_factory.mktemp("service-logs")
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
        for name in ("order", "entitlement", "notifier", "ingress"):
            await stack.start(name)
        yield stack
    finally:
        await stack.stop_all()


@dataclass
class Order:
    out_trade_no: str
    user_id: int
    amount_total: int
    package_type: str


async def new_order(
    pool: aiomysql.Pool, package_type: str = "premium", amount_total: int = 2990
) -> Order:
    """A user and a pending order, as POST /orders would leave them."""
    out_trade_no = f"E2E{uuid.uuid4().hex[:20].upper()}"
    async with transaction(pool) as cur:
        await cur.execute("INSERT INTO users (openid) VALUES (%s)", (f"o-{uuid.uuid4().hex[:16]}",))
        user_id = cur.lastrowid
        await cur.execute(
            "INSERT INTO payment_orders (out_trade_no, user_id, package_type, trade_type, amount,"
            " amount_total, status) VALUES (%s, %s, %s, 'JSAPI', %s, %s, 'pending')",
            (out_trade_no, user_id, package_type, amount_total / 100, amount_total),
        )
    return Order(out_trade_no, user_id, amount_total, package_type)


async def fetch_one(pool: aiomysql.Pool, sql: str, *args: object) -> dict[str, object]:
    async with transaction(pool) as cur:
        await cur.execute(sql, args)
        row: dict[str, object] = await cur.fetchone()
        return row
