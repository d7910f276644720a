"""Chaos: a degraded network between the services and both RabbitMQ and MySQL (a TCP
fault proxy in between): latency, then a blackhole of a few seconds, then every
connection reset, while WeChat Pay's notifications flow. Afterwards every acknowledged
notification has produced exactly one paid order and exactly one grant."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.chaos.harness.driver import WechatDriver
from tests.chaos.harness.env import ChaosEnv, chaos_env
from tests.chaos.harness.invariants import assert_clean
from tests.chaos.harness.scenario import run_scenario
from tests.support.faultproxy import FaultProxy, through
from tests.support.infra import Infra

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]

LATENCY_S = 0.2  # each way
BLACKHOLE_S = 3.0
RESETS = 4


@pytest.fixture(scope="module")
async def proxied(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ChaosEnv, FaultProxy, FaultProxy]]:
    broker = await FaultProxy(infra.amqp_host, infra.amqp_port, name="amqp").start()
    mysql = await FaultProxy(infra.mysql_host, infra.mysql_port, name="mysql").start()
    try:
        async with chaos_env(
            infra,
            tmp_path_factory.mktemp("chaos-proxied-logs"),
            service_amqp=through(broker),
            service_mysql=through(mysql),
        ) as env:
            yield env, broker, mysql
    finally:
        await broker.stop()
        await mysql.stop()


async def test_latency_blackhole_and_resets_mid_stream(
    proxied: tuple[ChaosEnv, FaultProxy, FaultProxy],
) -> None:
    env, broker, mysql = proxied
    proxies = (broker, mysql)
    assert broker.connections > 0 and mysql.connections > 0, "services bypass the proxies"

    async def inject(driver: WechatDriver) -> dict[str, Any]:
        phases: dict[str, Any] = {}
        await driver.wait_sent(20)
        try:
            # 1. Latency: every hop to the broker and the database 200 ms each way.
            for proxy in proxies:
                proxy.latency = LATENCY_S
            began = time.monotonic()
            await driver.wait_acks(60)
            for proxy in proxies:
                proxy.latency = 0.0
            phases["latency"] = f"{time.monotonic() - began:.1f}s"

            # 2. Blackhole: nothing moves for a few seconds; ingress cannot get its
            # confirms and answers 503 (WeChat retries).
            failed, began = driver.stats.unavailable + driver.stats.errors, time.monotonic()
            for proxy in proxies:
                proxy.blackhole()
            await asyncio.sleep(BLACKHOLE_S)  # the partition's length, not a wait
            await driver.wait_until(
                "503s during the blackhole",
                lambda s: s.unavailable + s.errors > failed,
                timeout=30,
            )
            phases["blackhole"] = f"{time.monotonic() - began:.1f}s"
        finally:
            for proxy in proxies:
                proxy.latency = 0.0
                proxy.heal()
        # 3. Healed, traffic flows again, then every connection is reset, a few times
        # over as the services reconnect and catch up (transactions, acks and confirms
        # in flight).
        resets = {p.name: 0 for p in proxies}
        for _ in range(RESETS):
            await driver.wait_acks(8)
            for proxy in proxies:
                resets[proxy.name] += proxy.reset()
        phases["reset"] = resets
        return phases

    report = await run_scenario(env, "fault proxy: latency, blackhole, reset", inject, orders=360)
    report.notes["proxied_connections"] = {p.name: p.stats.accepted for p in proxies}
    assert report.driver["503"] + report.driver["errors"] > 0, report.line()
    assert sum(report.notes["reset"].values()) > 0, report.line()
    assert_clean(report)
