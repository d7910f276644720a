"""Lock contention between the outbox relay and the consumers, made deterministic.

The chaos scenarios sometimes log MySQL deadlocks (error 1213: the order consumer's
``INSERT INTO outbox`` against the relay's ``UPDATE outbox SET published_at``) right after
a broker outage, when a relay backlog meets a burst of redeliveries; the victim is retried,
so the exactly-once invariant holds, but it costs a retry (and a message that lost 8 times
in a row would be dead-lettered). The cause, pinned down here with the real
``OutboxRelay.relay_once`` and ``outbox.add``: the relay claims its rows with ``SELECT ...
FOR UPDATE SKIP LOCKED`` under REPEATABLE READ and keeps that transaction open while it
publishes (up to the publisher's 3 s confirm budget). Its next-key/gap locks block every
consumer transaction that adds an outbox row for that producer (each ``payment.succeeded``
and ``order.paid``) until the broker has confirmed; that wait is deterministic (asserted
below), and with the query plan MySQL picks on a larger outbox it turns into the deadlock
(the relay's UPDATE then needs the waiting consumer's new primary-key row).

Fix (not in the tests): claim under READ COMMITTED, i.e. ``SET TRANSACTION ISOLATION LEVEL
READ COMMITTED`` on the connection before ``BEGIN`` in ``relay_once`` (e.g. an
``isolation`` argument to ``paylane_common.storage.db.transaction``): the claim then takes record
locks only, SKIP LOCKED still keeps two relays off the same rows, and consumers never wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

import aiomysql
import pymysql
import pytest

from paylane_common.contract.events import Envelope
from paylane_common.delivery import outbox
from paylane_common.delivery.outbox import OutboxRelay
from paylane_common.runtime.outages import Dependency
from paylane_common.storage import db
from paylane_common.storage.migrate import migrate
from paylane_order import OUTBOX_PRODUCER
from tests.support.events import order_paid
from tests.support.infra import Infra, unique_name

pytestmark = pytest.mark.chaos


class SlowBroker:
    """Stands in for the Publisher: every publish waits until the test lets it confirm."""

    def __init__(self) -> None:
        self.publishing = asyncio.Event()
        self.confirm = asyncio.Event()

    async def publish(
        self,
        envelope: Envelope,
        routing_key: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        self.publishing.set()
        await self.confirm.wait()


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[aiomysql.Pool]:
    """A database of its own: one published outbox row, then three pending ones."""
    name = unique_name("paylane_locks")
    url = infra.mysql_url(name)
    await asyncio.to_thread(migrate, url)
    try:
        async with db.create_pool(url, maxsize=4) as pool:
            async with db.transaction(pool) as cur:
                for _ in range(4):
                    await outbox.add(cur, OUTBOX_PRODUCER, order_paid().envelope)
                await cur.execute("UPDATE outbox SET published_at = NOW(6) ORDER BY id LIMIT 1")
            yield pool
    finally:
        with infra.mysql_admin() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


async def test_relay_claim_neither_blocks_nor_deadlocks_consumers(pool: aiomysql.Pool) -> None:
    broker = SlowBroker()
    database = Dependency("mysql", partial(db.ping, pool))
    relay = OutboxRelay(pool, broker, OUTBOX_PRODUCER, database=database)  # type: ignore[arg-type]
    relaying = asyncio.create_task(relay.relay_once())
    await asyncio.wait_for(broker.publishing.wait(), 10)  # claimed, now publishing

    async def consumer_transaction() -> None:
        async with db.transaction(pool) as cur:
            await outbox.add(cur, OUTBOX_PRODUCER, order_paid().envelope)

    adding = asyncio.create_task(consumer_transaction())
    finished, _ = await asyncio.wait({adding}, timeout=1.0)
    blocked = not finished
    broker.confirm.set()  # the broker confirms: the relay marks its rows
    results = await asyncio.wait_for(asyncio.gather(relaying, adding, return_exceptions=True), 60)
    deadlocked = [
        r for r in results if isinstance(r, pymysql.err.OperationalError) and r.args[0] == 1213
    ]
    for result in results:
        if isinstance(result, BaseException) and result not in deadlocked:
            raise result  # anything else is not the known bug: a real failure
    assert not blocked and not deadlocked, (
        f"a consumer's outbox INSERT waited for the relay's publishes: {blocked};"
        f" deadlocks: {deadlocked}"
    )
    assert results[0] == 3, f"relay marked {results[0]!r} rows published, expected 3"
