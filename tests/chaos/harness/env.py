"""The chaos scenarios' stack: tests/support/isolated.py's, on a vhost and a database of
its own (optionally through fault proxies), with the test's own connections."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tests.support.infra import Infra
from tests.support.isolated import QUIET_RECONCILER, IsolatedStack, isolated_stack
from tests.support.stack_api import Order, new_order

#: The reconciler stays out of the way (orders are paid within seconds, never at the
#: sandbox), so every paid order here comes from a notification. Shipping is off: the
#: driver plays WeChat's notifications without the sandbox knowing the payments, so every
#: upload would fail (10060001, "no such payment") and be retried, about 70 calls a
#: second from the order service that no scenario checks, slowing the payments they do.
ORDER_ENV = {**QUIET_RECONCILER, "SHIPPING_UPLOAD": "off"}
CONSUMERS = ("order", "entitlement", "notifier")
#: A stack of the chaos scenarios (the tier's name for tests/support/isolated.py's).
ChaosEnv = IsolatedStack


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
    async with isolated_stack(
        infra,
        log_dir,
        prefix="paylane_chaos",
        order_settings=ORDER_ENV,
        service_amqp=service_amqp,
        service_mysql=service_mysql,
        service_env=service_env,
    ) as env:
        yield env


async def create_orders(env: ChaosEnv, count: int, concurrency: int = 8) -> list[Order]:
    """``count`` orders (basic and premium, each for a new user) through ``POST /orders``."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Order:
        async with gate:
            return await new_order(env.stack, "premium" if i % 3 == 0 else "basic")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def kill9(env: ChaosEnv, name: str) -> int:
    return await env.stack.stop(name, signal.SIGKILL)
