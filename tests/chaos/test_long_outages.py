"""Chaos: database outages many times longer than a consumer's whole retry budget, under a
steady stream of WeChat Pay notifications, with no operator step afterwards.

The consumers' budget for a failing message is made tiny here (``BUDGET_ENV``: three
attempts, a second apart at most, a handler cut off after three seconds) and each outage
lasts ``OUTAGE_S``, more than ten budgets: a message whose attempts counted while the
database was away would be dead-lettered many times over. What must happen instead: the
consumers pause and report not-ready with the reason, ingress keeps acknowledging
WeChat (it never needs the database), and once the database is back every acknowledged
payment is applied and granted exactly once and every DLQ is empty.

Two outages: the server stopped (connections refused), and a database that accepts
connections but answers nothing (the fault proxy's blackhole: every transaction times
out).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.chaos.harness.driver import WechatDriver
from tests.chaos.harness.env import ChaosEnv, chaos_env
from tests.chaos.harness.invariants import assert_clean
from tests.chaos.harness.mariadb import mariadb_control_problem, mariadb_start, mariadb_stop
from tests.chaos.harness.scenario import run_scenario
from tests.chaos.harness.state import WORK_QUEUES, queue_state
from tests.support.faultproxy import FaultProxy, through
from tests.support.infra import Infra
from tests.support.polling import eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

#: The retry budget of a message that fails: about three seconds in all.
BUDGET_ENV = {
    "CONSUMER_RETRY_ATTEMPTS": "3",
    "CONSUMER_RETRY_MAX_DELAY_S": "1",
    "CONSUMER_HANDLER_TIMEOUT_S": "3",
}
BUDGET_S = 3.0
OUTAGE_S = 40.0
#: Notifications a second: the stream outlasts the outage (orders / rate > OUTAGE_S).
RATE = 3.0
ORDERS = 180


@pytest.fixture(scope="module")
async def proxied(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ChaosEnv, FaultProxy]]:
    mysql = await FaultProxy(infra.mysql_host, infra.mysql_port, name="mysql").start()
    try:
        async with chaos_env(
            infra,
            tmp_path_factory.mktemp("chaos-long-outage-logs"),
            service_mysql=through(mysql),
            service_env=BUDGET_ENV,
        ) as env:
            yield env, mysql
    finally:
        mysql.heal()
        await mysql.stop()
        if mariadb_control_problem(infra) is None:
            await mariadb_start(infra)


async def readiness(env: ChaosEnv, name: str) -> tuple[int, dict[str, Any]]:
    service = env.stack.services[name]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service.admin_url}/readyz", timeout=aiohttp.ClientTimeout(5)) as r:
            return r.status, await r.json()


async def outage(
    env: ChaosEnv,
    driver: WechatDriver,
    begin: Callable[[], Awaitable[None]],
    end: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """``begin`` an outage a third into the stream, hold it ``OUTAGE_S`` while checking what
    the services say, ``end`` it; the figures of it."""
    await driver.wait_sent(ORDERS // 6)
    acks_before, began = driver.stats.ok, time.monotonic()
    await begin()
    try:
        not_ready: dict[str, str] = {}

        async def consumers_not_ready() -> bool:
            for name in ("order", "entitlement"):
                status, body = await readiness(env, name)
                down = {k: v for k, v in body["checks"].items() if v != "ok"}
                if status == 503 and down:
                    not_ready[name] = "; ".join(f"{k} {v}" for k, v in sorted(down.items()))
            # The order consumer met the outage: paused, and says so.
            return (
                set(not_ready) == {"order", "entitlement"}
                and "consumer down: paused" in (not_ready["order"])
            )

        await eventually(consumers_not_ready, OUTAGE_S / 2, what="consumers not ready")
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - began)))
        in_flight = await queue_state(env.connection, WORK_QUEUES)
        acked_during = driver.stats.ok - acks_before
    finally:
        await end()
    return {
        "outage": f"{time.monotonic() - began:.1f}s",
        "budget": f"{BUDGET_S:.0f}s",
        "acked_during_outage": acked_during,
        "in_flight_at_end": {q: ready for q, (ready, _) in in_flight.items()},
        "not_ready": not_ready,
    }


def assert_outage_handled(report_notes: dict[str, Any]) -> None:
    # Ingress never needs the database: WeChat kept being answered.
    assert report_notes["acked_during_outage"] > 0, report_notes
    for reason in report_notes["not_ready"].values():
        assert "mysql down" in reason, report_notes


async def test_mariadb_stopped_longer_than_the_retry_budget(
    proxied: tuple[ChaosEnv, FaultProxy], infra: Infra
) -> None:
    env, _ = proxied
    problem = mariadb_control_problem(infra)
    if problem is not None:
        pytest.skip(f"cannot stop the database server here: {problem}")

    async def inject(driver: WechatDriver) -> dict[str, Any]:
        return await outage(env, driver, lambda: mariadb_stop(infra), lambda: mariadb_start(infra))

    report = await run_scenario(
        env, "mariadb stopped > retry budget", inject, orders=ORDERS, rate=RATE
    )
    assert_outage_handled(report.notes)
    assert_clean(report)


async def test_database_blackholed_longer_than_the_retry_budget(
    proxied: tuple[ChaosEnv, FaultProxy],
) -> None:
    env, mysql = proxied

    async def blackhole() -> None:
        mysql.blackhole()

    async def heal() -> None:
        mysql.heal()

    async def inject(driver: WechatDriver) -> dict[str, Any]:
        return await outage(env, driver, blackhole, heal)

    report = await run_scenario(
        env, "database blackholed > retry budget", inject, orders=ORDERS, rate=RATE
    )
    assert_outage_handled(report.notes)
    assert_clean(report)
