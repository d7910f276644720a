"""An isolated stack for a chaos scenario: a vhost and a database of its own, every
service on them (optionally through fault proxies), and the test's own connections."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomysql
import pymysql
from aio_pika.abc import AbstractRobustConnection

from paylane_common import amqp, db
from paylane_common.migrate import migrate
from tests.support.infra import Infra, unique_name
from tests.support.seed_db import create_seed_database
from tests.support.stack import Stack, wait_ready
from tests.support.stack_api import Order, new_order
from tests.support.stack_config import new_stack, start_stack
from tests.support.wechat import FakeWechat

#: The reconciler stays out of the way (orders are paid within seconds, never at the
#: sandbox), so every paid order here comes from a notification.
ORDER_ENV = {"RECONCILE_AFTER_S": "600", "RECONCILE_INTERVAL_S": "30"}
CONSUMERS = ("order", "entitlement", "notifier")


@dataclass
class ChaosEnv:
    """A stack on a vhost and a database of its own, with the test's own connections."""

    infra: Infra
    vhost: str
    database: str
    stack: Stack
    wechat: FakeWechat
    pool: aiomysql.Pool
    connection: AbstractRobustConnection
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def ingress_url(self) -> str:
        return self.stack.services["ingress"].url

    async def start(self, name: str) -> None:
        await self.stack.start(name, self.extra_env.get(name))

    async def all_ready(self) -> None:
        for service in list(self.stack.services.values()):
            await wait_ready(service, timeout=60)


@contextlib.asynccontextmanager
async def chaos_env(
    infra: Infra,
    log_dir: Path,
    *,
    service_amqp: Callable[[str], str] | None = None,
    service_mysql: Callable[[str], str] | None = None,
    service_env: dict[str, str] | None = None,
) -> AsyncIterator[ChaosEnv]:
    """A new vhost and database and the whole stack on them. ``service_amqp`` /
    ``service_mysql`` map the real URL to what the services get (a fault proxy);
    ``service_env`` is given to every service."""
    vhost = unique_name("paylane_chaos")
    database = unique_name("paylane_chaos")
    amqp_url = infra.amqp_url(vhost)
    mysql_url = infra.mysql_url(database)
    wechat = FakeWechat()
    stack = new_stack(
        service_amqp(amqp_url) if service_amqp else amqp_url,
        service_mysql(mysql_url) if service_mysql else mysql_url,
        wechat,
        log_dir,
    )
    stack.base_env.update(service_env or {})
    connection: AbstractRobustConnection | None = None
    resources = contextlib.AsyncExitStack()
    try:
        await asyncio.to_thread(infra.broker.add_vhost, vhost, infra.amqp_user)
        # As every test session: the database the adopting team has, then paylane's migrations.
        await asyncio.to_thread(_create_seed_database, infra, database)
        await asyncio.to_thread(migrate, mysql_url)
        pool = await resources.enter_async_context(db.create_pool(mysql_url, maxsize=5))
        connection = await amqp.connect(amqp_url, "chaos-tests")
        order_env = await start_stack(stack, wechat, ORDER_ENV)
        yield ChaosEnv(
            infra, vhost, database, stack, wechat, pool, connection, {"order": order_env}
        )
    finally:
        await stack.stop_all()
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 10)
        await resources.aclose()
        with contextlib.suppress(RuntimeError):
            await asyncio.to_thread(infra.broker.delete_vhost, vhost)
        with contextlib.suppress(pymysql.err.MySQLError):
            await asyncio.to_thread(_drop_database, infra, database)


def _create_seed_database(infra: Infra, database: str) -> None:
    with infra.mysql_admin() as conn:
        create_seed_database(conn, database)


def _drop_database(infra: Infra, database: str) -> None:
    with infra.mysql_admin() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{database}`")


async def create_orders(env: ChaosEnv, count: int, concurrency: int = 8) -> list[Order]:
    """``count`` orders (basic and premium, each for a new user) through ``POST /orders``."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Order:
        async with gate:
            return await new_order(env.stack, "premium" if i % 3 == 0 else "basic")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def kill9(env: ChaosEnv, name: str) -> int:
    return await env.stack.stop(name, signal.SIGKILL)
