"""``paylane reconcile [--once]``: the reconciler outside the order service;
``paylane reconcile bills --date D``: one day's bill reconciliation (bills.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from datetime import date
from typing import Any

from paylane_common.broker.publisher import Publisher
from paylane_common.runtime.service import CommandResources

from . import catalog_prices
from .bills import BillReconciler, BillReport
from .config import OrderConfig
from .gate import Gate
from .reconciler import Reconciler
from .settings import OrderSettings


async def reconcile(settings: OrderSettings, *, once: bool) -> Counter[str]:
    async with AsyncExitStack() as stack:
        _pool, reconciler = await open_reconciler(stack, settings)
        total: Counter[str] = Counter()
        while True:
            # --once is an operator's pass: it waits out a replica's running one.
            found = await reconciler.run_once(wait_for_lock_s=60 if once else 0)
            total.update(found)
            if once:
                return total
            print(dict(found) or "nothing to reconcile", flush=True)
            await asyncio.sleep(settings.reconcile_interval_s or 30.0)


async def reconcile_bills(settings: OrderSettings, day: date) -> BillReport:
    """The day's trade bill against the database; waits out a replica's running one."""
    async with AsyncExitStack() as stack:
        pool, reconciler = await open_reconciler(stack, settings)
        report = await BillReconciler(pool, reconciler.client, reconciler).run(
            day, wait_for_lock_s=600
        )
        if report is None:
            raise TimeoutError("another bill reconciliation held the lock for 10 minutes")
        return report


async def open_reconciler(stack: AsyncExitStack, settings: OrderSettings) -> tuple[Any, Reconciler]:
    """The database, the broker and WeChat Pay, as the order service opens them."""
    opened = CommandResources(settings, "reconciler", stack)
    pool = await opened.pool(maxsize=2)
    publisher = await Publisher.open(
        await opened.broker(), settings.publish_timeout_s, declare=settings.amqp_declare_topology
    )
    api = await opened.wechatpay(settings)
    config = OrderConfig.from_settings(settings)
    await catalog_prices.record(pool, config.catalog)
    reconciler = Reconciler(
        pool, api.client, publisher, config.reconciler, Gate.of(config, api.client, pool)
    )
    return pool, reconciler
