"""A consumer meets a database outage (real RabbitMQ; real MariaDB behind a fault proxy
that refuses or blackholes it): it pauses and puts its messages back unchanged instead of
using up their attempts, says why on its readiness check, and resumes by itself.

The retry budget here is a few milliseconds, the outages seconds long: the behaviour must
not depend on the budget (outages.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aiomysql
import pymysql
import pytest
from aio_pika.abc import AbstractChannel
from pamqp.commands import Basic
from prometheus_client import REGISTRY

from paylane_common.broker.publisher import Publisher, envelope_message
from paylane_common.broker.topology import QueueSpec, declare_queue
from paylane_common.contract.events import Envelope
from paylane_common.delivery.consumer import ATTEMPT_HEADER, Consumer, RetryPolicy
from paylane_common.runtime.outages import Dependency, NotReady
from paylane_common.storage import db
from paylane_common.storage.db import transaction
from tests.support.events import payment_succeeded
from tests.support.faultproxy import FaultProxy, through
from tests.support.infra import Infra
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

#: Two attempts a few milliseconds apart: an outage of seconds is hundreds of budgets.
TINY_BUDGET = RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.01, handler_timeout_s=1)
MESSAGES = 5


@pytest.fixture
async def spec(channel: AbstractChannel) -> AsyncIterator[QueueSpec]:
    spec = QueueSpec(f"test.outage.{uuid.uuid4().hex}", routing_keys=(), retry_delays_s=(0.05,))
    await declare_queue(channel, spec)
    yield spec
    for name in (spec.name, spec.dlq, *spec.retry_queues):
        await channel.queue_delete(name)


@pytest.fixture
async def proxy(infra: Infra) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(infra.mysql_host, infra.mysql_port, name="mysql") as proxy:
        yield proxy


@pytest.fixture
async def proxied_pool(proxy: FaultProxy, mysql_url: str) -> AsyncIterator[aiomysql.Pool]:
    async with db.create_pool(through(proxy)(mysql_url), maxsize=4) as pool:
        yield pool


@pytest.fixture
async def scratch(db_pool: aiomysql.Pool) -> AsyncIterator[str]:
    table = f"test_outage_{uuid.uuid4().hex[:10]}"
    async with transaction(db_pool) as cur:
        await cur.execute(f"CREATE TABLE {table} (k VARCHAR(64) PRIMARY KEY)")
    yield table
    async with transaction(db_pool) as cur:
        await cur.execute(f"DROP TABLE {table}")


async def ready_and_dead(channel: AbstractChannel, spec: QueueSpec) -> tuple[int, int]:
    underlay = await channel.get_underlay_channel()
    ready = (await underlay.queue_declare(spec.name, passive=True)).message_count or 0
    dead = (await underlay.queue_declare(spec.dlq, passive=True)).message_count or 0
    return ready, dead


async def stored(db_pool: aiomysql.Pool, table: str) -> list[str]:
    async with transaction(db_pool) as cur:
        await cur.execute(f"SELECT k FROM {table} ORDER BY k")
        return [row["k"] for row in await cur.fetchall()]


def paused_gauge(spec: QueueSpec) -> float | None:
    """``paylane_consumer_paused`` of the queue: what the ConsumerPaused alert reads."""
    return REGISTRY.get_sample_value("paylane_consumer_paused", {"queue": spec.name})


class Recording:
    """A handler inserting each event once through the proxied pool; it notes the
    attempt header of every delivery it saw."""

    def __init__(self, pool: aiomysql.Pool, table: str) -> None:
        self.pool, self.table = pool, table
        self.calls = 0

    async def __call__(self, envelope: Envelope, _data: Any) -> str:
        self.calls += 1
        async with transaction(self.pool) as cur:
            await cur.execute(f"INSERT IGNORE INTO {self.table} VALUES (%s)", (envelope.event_id,))
        return "processed"


@pytest.mark.parametrize("fault", ["refused", "blackholed"])
async def test_an_outage_longer_than_the_budget_pauses_and_loses_nothing(
    amqp_connection: Any,
    publisher: Publisher,
    channel: AbstractChannel,
    spec: QueueSpec,
    proxy: FaultProxy,
    proxied_pool: aiomysql.Pool,
    db_pool: aiomysql.Pool,
    scratch: str,
    fault: str,
) -> None:
    database = Dependency("mysql", partial(db.ping, proxied_pool, 0.5), max_delay_s=0.5)
    handler = Recording(proxied_pool, scratch)
    consumer = Consumer(
        amqp_connection, publisher, spec, handler, database=database, retry=TINY_BUDGET
    )
    await consumer.start()
    try:
        first = payment_succeeded().envelope
        await publisher.publish_event_to_queue(spec.name, first)
        await eventually(lambda: _has(db_pool, scratch, first.event_id), 10, what="first")

        proxy.refuse() if fault == "refused" else proxy.blackhole()
        envelopes = [payment_succeeded().envelope for _ in range(MESSAGES)]
        for envelope in envelopes:
            await publisher.publish_event_to_queue(spec.name, envelope)
        await eventually(lambda: _true(consumer.paused), 15, what="consumer paused")
        with pytest.raises(NotReady, match="mysql down"):
            await consumer.check()
        assert paused_gauge(spec) == 1
        # Hundreds of budgets later: every message back in its queue, none dead (a quorum
        # queue's counts lag by seconds, and a handler held up by a blackholed connection
        # puts its message back when cut off).
        await asyncio.sleep(3)
        await eventually(
            lambda: _equal(ready_and_dead(channel, spec), (MESSAGES, 0)), 15, what="all back"
        )
        underlay = await channel.get_underlay_channel()
        for _ in range(MESSAGES):
            got = await underlay.basic_get(spec.name, no_ack=False)
            assert isinstance(got.delivery, Basic.GetOk), got.delivery
            assert (got.header.properties.headers or {}).get(ATTEMPT_HEADER, 0) == 0
            assert got.delivery.delivery_tag is not None
            await underlay.basic_reject(got.delivery.delivery_tag, requeue=True)

        proxy.heal()
        await eventually(lambda: _true(not consumer.paused), 15, what="consumer resumed")
        await consumer.check()
        assert paused_gauge(spec) == 0
        want = sorted([first.event_id, *(e.event_id for e in envelopes)])
        await eventually(lambda: _equal(stored(db_pool, scratch), want), 15, what="all applied")
        assert await ready_and_dead(channel, spec) == (0, 0)
    finally:
        proxy.heal()
        await consumer.stop()
        await database.close()


async def test_a_failure_while_the_database_answers_uses_the_budget(
    amqp_connection: Any,
    publisher: Publisher,
    channel: AbstractChannel,
    spec: QueueSpec,
    db_pool: aiomysql.Pool,
    database: Dependency,
) -> None:
    """A connection error that is not the database's (WeChat Pay unreachable, say): the
    probe answers, so it is the message's failure, retried and then dead-lettered."""

    async def handler(_envelope: Envelope, _data: Any) -> str:
        raise ConnectionRefusedError("api.mch.weixin.qq.com unreachable")

    consumer = Consumer(
        amqp_connection, publisher, spec, handler, database=database, retry=TINY_BUDGET
    )
    await consumer.start()
    try:
        await publisher.publish_to_queue(spec.name, envelope_message(payment_succeeded().envelope))
        await eventually(lambda: _equal(ready_and_dead(channel, spec), (0, 1)), 15, what="dlq")
        assert not consumer.paused and database.up
    finally:
        await consumer.stop()


async def test_a_deadlock_is_retried_without_counting_an_attempt(
    amqp_connection: Any,
    publisher: Publisher,
    channel: AbstractChannel,
    spec: QueueSpec,
    database: Dependency,
) -> None:
    attempts: list[int] = []

    async def handler(_envelope: Envelope, _data: Any) -> str:
        attempts.append(len(attempts))
        if len(attempts) <= 3:  # three deadlocks in a row, more than the budget's two
            raise pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
        return "processed"

    consumer = Consumer(
        amqp_connection, publisher, spec, handler, database=database, retry=TINY_BUDGET
    )
    await consumer.start()
    try:
        message = envelope_message(payment_succeeded().envelope)
        await publisher.publish_to_queue(spec.name, message)
        await eventually(lambda: _true(len(attempts) == 4), 15, what="four deliveries")
        await eventually(lambda: _equal(ready_and_dead(channel, spec), (0, 0)), 10, what="acked")
    finally:
        await consumer.stop()


async def _has(pool: aiomysql.Pool, table: str, key: str) -> bool:
    return key in await stored(pool, table)


async def _true(value: bool) -> bool:
    return value


async def _equal(got: Any, want: Any) -> bool:
    return await got == want
