"""The whole stack on a vhost and a database of its own: the one helper of every tier that
runs the services as processes (end-to-end, frontend, OpenAPI, chaos).

``started_stack`` runs the stack on the URLs it is given (tests/e2e: the session's own
vhost and database) and stops it afterwards; ``isolated_stack`` first makes a vhost and
a database nobody else uses, with the test's own connections to them, and removes them
afterwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiomysql
import pymysql
from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker import amqp
from paylane_common.storage import db
from paylane_common.storage.migrate import migrate
from tests.support.infra import Infra, unique_name
from tests.support.seed_db import create_seed_database
from tests.support.stack import Stack, wait_ready
from tests.support.stack_config import ORDER_ENV, new_stack, start_stack
from tests.support.wechat import FakeWechat

#: What starts the services of a stack (stack_config.start_stack, or another mode's):
#: returns the order service's environment.
StartStack = Callable[[Stack, FakeWechat, Mapping[str, str]], Awaitable[dict[str, str]]]

#: The reconciler out of the way (orders are paid within seconds, never at the sandbox),
#: so every paid order comes from a notification (chaos, OpenAPI).
QUIET_RECONCILER = {"RECONCILE_AFTER_S": "600", "RECONCILE_INTERVAL_S": "30"}


@dataclass
class IsolatedStack:
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

    def url(self, service: str) -> str:
        return self.stack.services[service].url

    async def start(self, name: str) -> None:
        await self.stack.start(name, self.extra_env.get(name))

    async def all_ready(self) -> None:
        for service in list(self.stack.services.values()):
            await wait_ready(service, timeout=60)


@contextlib.asynccontextmanager
async def started_stack(
    amqp_url: str,
    mysql_url: str,
    wechat: FakeWechat,
    log_dir: Path,
    *,
    order_settings: Mapping[str, str] = ORDER_ENV,
    service_env: Mapping[str, str] | None = None,
    start: StartStack = start_stack,
) -> AsyncIterator[tuple[Stack, dict[str, str]]]:
    """Every service started on these URLs (``start``: stack_config.start_stack by
    default), then stopped however the block ends: the stack and the order service's
    environment."""
    stack = new_stack(amqp_url, mysql_url, wechat, log_dir)
    stack.base_env.update(service_env or {})
    try:
        order_env = await start(stack, wechat, order_settings)
        yield stack, order_env
    finally:
        await stack.stop_all()


@contextlib.asynccontextmanager
async def isolated_stack(
    infra: Infra,
    log_dir: Path,
    *,
    prefix: str = "paylane_isolated",
    seed: bool = True,
    order_settings: Mapping[str, str] = QUIET_RECONCILER,
    service_amqp: Callable[[str], str] | None = None,
    service_mysql: Callable[[str], str] | None = None,
    service_env: dict[str, str] | None = None,
    start: StartStack = start_stack,
) -> AsyncIterator[IsolatedStack]:
    """A new vhost and database (named ``prefix``_…) and the whole stack on them. The
    database is the adopting team's (``seed``, as every test session's) or an empty one,
    then migrated. ``service_amqp`` / ``service_mysql`` map the real URL to what the
    services get (a fault proxy); ``service_env`` is given to every service; ``start``
    starts them (stack_config.start_stack by default)."""
    vhost, database = unique_name(prefix), unique_name(prefix)
    amqp_url, mysql_url = infra.amqp_url(vhost), infra.mysql_url(database)
    wechat = FakeWechat()
    connection: AbstractRobustConnection | None = None
    resources = contextlib.AsyncExitStack()
    try:
        await asyncio.to_thread(infra.broker.add_vhost, vhost, infra.amqp_user)
        if seed:
            await asyncio.to_thread(_create_seed_database, infra, database)
        await asyncio.to_thread(migrate, mysql_url)
        pool = await resources.enter_async_context(db.create_pool(mysql_url, maxsize=5))
        connection = await amqp.connect(amqp_url, "isolated-stack-tests")
        stack, order_env = await resources.enter_async_context(
            started_stack(
                service_amqp(amqp_url) if service_amqp else amqp_url,
                service_mysql(mysql_url) if service_mysql else mysql_url,
                wechat,
                log_dir,
                order_settings=order_settings,
                service_env=service_env,
                start=start,
            )
        )
        yield IsolatedStack(
            infra, vhost, database, stack, wechat, pool, connection, {"order": order_env}
        )
    finally:
        # The services first, then the test's connections, then what they ran on.
        await resources.aclose()
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 10)
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
