"""Chaos: the broker, the database and each consumer fail while WeChat Pay's notifications
flow; afterwards every acknowledged notification has produced exactly one paid order and
exactly one grant, and nothing was dead-lettered.

The scenarios share one stack (on a vhost and a database of its own) and run one at a
time; each restores what it broke in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.chaos.harness.broker import start_broker, stop_broker
from tests.chaos.harness.driver import WechatDriver
from tests.chaos.harness.env import CONSUMERS, ChaosEnv, chaos_env, kill9
from tests.chaos.harness.invariants import assert_clean
from tests.chaos.harness.mariadb import (
    kill_connections,
    mariadb_control_problem,
    mariadb_crash,
    mariadb_start,
    mariadb_stop,
)
from tests.chaos.harness.scenario import run_scenario
from tests.chaos.harness.state import QueueDepth, query
from tests.support.infra import Infra
from tests.support.metrics import metric
from tests.support.polling import eventually

#: Messages waiting for a killed consumer before it is restarted (and killed again).
BACKLOG = 90
#: The consumers' prefetch and batch size in the kill test: small enough that a kill
#: lands with part of the backlog done, a window unacked and the rest still waiting.
PREFETCH = 32
KILL_TEST_ENV = {"CONSUMER_PREFETCH": str(PREFETCH), "CONSUMER_BATCH_MAX": "4"}
#: KILL every connection of the services this many times, a few notifications apart.
KILL_ROUNDS = 10

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]


@pytest.fixture(scope="module")
async def env(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChaosEnv]:
    try:
        async with chaos_env(infra, tmp_path_factory.mktemp("chaos-logs")) as env:
            yield env
    finally:
        # Whatever happened, leave the broker app and the database running.
        await start_broker(infra)
        if mariadb_control_problem(infra) is None:
            await mariadb_start(infra)


@pytest.mark.broker_outage
async def test_broker_stopped_and_started_mid_stream(
    env: ChaosEnv, infra: Infra, amqp_connection: AbstractRobustConnection
) -> None:
    async def inject(driver: WechatDriver) -> dict[str, Any]:
        await driver.wait_sent(40)  # a third of the stream
        failed = driver.stats.unavailable + driver.stats.errors
        down = time.monotonic()
        await stop_broker(infra)
        try:
            # Down until WeChat has felt it: 20 more deliveries answered 503 (or failed).
            await driver.wait_until(
                "503s while the broker is down",
                lambda s: s.unavailable + s.errors >= failed + 20,
            )
        finally:
            await start_broker(infra)
            outage = time.monotonic() - down
            await asyncio.wait_for(amqp_connection.ready(), 60)  # for the tests that follow
        return {"broker_down": f"{outage:.1f}s"}

    report = await run_scenario(env, "rabbitmq stop_app/start_app", inject)
    assert report.driver["503"] + report.driver["errors"] >= 20, report.line()
    assert_clean(report)


async def test_mariadb_connections_killed_then_server_restarted(
    env: ChaosEnv, infra: Infra, db_pool: aiomysql.Pool
) -> None:
    """KILL every connection of the services, again and again; then restart the server
    (mysqladmin shutdown); later in the same stream, crash it (kill -9) and start it."""
    problem = mariadb_control_problem(infra)
    if problem is not None:
        pytest.skip(f"cannot restart the database server here: {problem}")

    async def outage(driver: WechatDriver, stop: Callable[[], Awaitable[None]], at: int) -> str:
        await driver.wait_sent(at)
        down = time.monotonic()
        try:
            await stop()
            # Ingress needs no database: WeChat keeps being answered while it is down.
            await driver.wait_acks(45)
        finally:
            await mariadb_start(infra)
        return f"{time.monotonic() - down:.1f}s"

    async def inject(driver: WechatDriver) -> dict[str, Any]:
        # Rounds of KILLs while messages are handled, to catch transactions in flight.
        killed = 0
        for i in range(KILL_ROUNDS):
            await driver.wait_sent(20 + 3 * i)
            killed += await asyncio.to_thread(kill_connections, infra, env.database)
        shutdown = await outage(driver, lambda: mariadb_stop(infra), at=60)
        crash = await outage(driver, mariadb_crash, at=120)
        # The session's pool (other suites') holds dead connections now: it recovers.
        assert await query(db_pool, "SELECT 1 AS one") == [{"one": 1}]
        return {"connections_killed": killed, "db_down_shutdown": shutdown, "db_down_kill9": crash}

    report = await run_scenario(
        env, "mariadb KILL connections, restart, kill -9", inject, orders=180
    )
    assert report.notes["connections_killed"] > 0, report.line()
    assert_clean(report)


async def test_each_consumer_killed_mid_batch_and_restarted(env: ChaosEnv) -> None:
    """order, entitlement and notifier in turn: kill -9 while the stream flows, let a
    backlog build, restart, and kill -9 again in the middle of working it off (part of
    it done, its prefetch window delivered and unacked, the rest waiting), then restart
    for good."""
    queue_of = {"order": "order.payments", "entitlement": "entitlement.orders"}
    done_sql = {
        "order": "SELECT COUNT(*) AS n FROM payment_orders WHERE status = 'paid'",
        "entitlement": "SELECT COUNT(*) AS n FROM entitlement_grants",
    }
    evidence: dict[str, dict[str, int]] = {}

    async def done(name: str) -> int:
        return int((await query(env.pool, done_sql[name]))[0]["n"])

    async def kill_mid_backlog(name: str, queue: str) -> None:
        async with QueueDepth(env.connection) as depth:

            async def backlog() -> bool:
                return await depth.ready(queue) >= BACKLOG

            await eventually(backlog, timeout=30, what=f"a backlog in {queue}")
            before = await done(name)
            seen = {"backlog": await depth.ready(queue)}
            # Kill it once it has taken its prefetch window and acked a few, ready for
            # /readyz or not (a crash does not wait), with most of the backlog waiting.
            starting = asyncio.create_task(env.start(name))

            async def under_way() -> bool:
                if starting.done():
                    starting.result()  # raises if it could not start
                return await depth.ready(queue) <= seen["backlog"] - PREFETCH - 5

            await eventually(
                under_way, timeout=30, what=f"{name} working off its backlog", interval=0.002
            )
            seen["ready_at_kill"] = await depth.ready(queue)
            assert await kill9(env, name) == -9
        with contextlib.suppress(RuntimeError):  # "exited" while waiting to be ready
            await starting
        seen["done_before_kill"] = await done(name) - before
        evidence[name] = seen

    async def kill_while_pushing(driver: WechatDriver) -> None:
        await driver.wait_acks(20)  # while the notifier is down
        await env.start("notifier")

        async def pushing() -> bool:
            url = env.stack.services["notifier"].admin_url  # /metrics: the admin port
            return await metric(url, "paylane_consumer_messages_total", queue="notifier") >= 1

        await eventually(pushing, timeout=30, what="the notifier pushing again")
        assert await kill9(env, "notifier") == -9
        evidence["notifier"] = {"pushed_before_kill": 1}

    async def inject(driver: WechatDriver) -> dict[str, Any]:
        await driver.wait_sent(20)
        for name in CONSUMERS:
            assert await kill9(env, name) == -9
            if name in queue_of:
                env.extra_env[name] = {**env.extra_env.get(name, {}), **KILL_TEST_ENV}
            queue = queue_of.get(name)
            if queue is not None:  # its durable queue fills while it is down
                await kill_mid_backlog(name, queue)
            else:  # the notifier's own queue went with it: events pass it by
                await kill_while_pushing(driver)
            await env.start(name)
        return {"kills": evidence}

    report = await run_scenario(env, "kill -9 order/entitlement/notifier", inject, orders=600)
    for name in queue_of:
        seen = evidence[name]
        # Killed mid-batch: some of it done, the rest (beyond the unacked prefetch window)
        # still waiting in the queue.
        assert seen["done_before_kill"] >= 1 and seen["ready_at_kill"] > 0, (
            f"{name} not killed mid-batch: {seen}; {report.line()}"
        )
    assert_clean(report)
