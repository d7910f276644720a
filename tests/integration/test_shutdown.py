"""Graceful shutdown: stop consuming, finish in-flight work, then close (docs/commands.md)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest
from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker.publisher import Publisher, envelope_message
from paylane_common.broker.topology import QueueSpec, declare_queue
from paylane_common.contract.events import Envelope
from paylane_common.delivery.batching import BatchConsumer, BatchItem
from paylane_common.delivery.consumer import Consumer
from paylane_common.runtime.outages import Dependency
from tests.support.events import order_paid
from tests.support.polling import handed_back

pytestmark = pytest.mark.integration


async def test_stop_waits_for_in_flight_message_and_acks_it(
    amqp_connection: AbstractRobustConnection, database: Dependency
) -> None:
    publisher = await Publisher.open(amqp_connection)
    key = f"shutdown.{uuid.uuid4().hex[:8]}"
    spec = QueueSpec(f"test.shutdown.{uuid.uuid4().hex[:8]}", (key,))
    started, release = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def slow_handler(envelope: Envelope, _data: object) -> str:
        started.set()
        await release.wait()  # the work in flight when SIGTERM arrives
        order.append("handler finished")
        return "processed"

    consumer = Consumer(amqp_connection, publisher, spec, slow_handler, database=database)
    await consumer.start()
    await publisher.publish(order_paid().envelope, routing_key=key)
    await asyncio.wait_for(started.wait(), 10)

    stopping = asyncio.create_task(consumer.stop(timeout=5))
    stopping.add_done_callback(lambda _: order.append("stop returned"))
    done, _ = await asyncio.wait({stopping}, timeout=0.5)
    assert not done  # stop() is waiting for the handler …
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert order == ["handler finished", "stop returned"]  # … and returned only after it

    # and the message was acked, not left for redelivery
    channel = await amqp_connection.channel()
    declared = await (await channel.get_underlay_channel()).queue_declare(spec.name, passive=True)
    assert declared.message_count == 0
    await channel.close()
    await publisher.close()


class _SlowBatches:
    """A BatchHandler whose every batch (or single message) waits for ``release``."""

    def __init__(self, pool: object) -> None:
        self.pool = pool
        self.started, self.release = asyncio.Event(), asyncio.Event()
        self.applied = 0
        self.order: list[str] = []

    async def _work(self, n: int) -> None:
        self.started.set()
        await self.release.wait()
        self.applied += n
        self.order.append("batch finished")

    async def __call__(self, envelope: Envelope, data: object) -> str:
        await self._work(1)
        return "processed"

    async def apply_batch(self, cur: object, items: Sequence[BatchItem]) -> list[str | None]:
        await self._work(len(items))
        return ["processed"] * len(items)

    def after_commit(self, outcomes: object) -> None:
        pass


async def test_batch_consumer_stop_finishes_the_batch_under_way_and_leaves_the_rest(
    amqp_connection: AbstractRobustConnection, db_pool, database: Dependency
) -> None:
    publisher = await Publisher.open(amqp_connection)
    spec = QueueSpec(f"test.shutdown.{uuid.uuid4().hex[:8]}", ())
    setup = await amqp_connection.channel()
    await declare_queue(setup, spec)
    await setup.close()
    for _ in range(40):
        await publisher.publish_to_queue(spec.name, envelope_message(order_paid().envelope))
    handler = _SlowBatches(db_pool)
    consumer = BatchConsumer(
        amqp_connection, publisher, spec, handler, database=database, prefetch=40, max_batch=8
    )
    await consumer.start()
    await asyncio.wait_for(handler.started.wait(), 10)

    stopping = asyncio.create_task(consumer.stop(timeout=5))
    stopping.add_done_callback(lambda _: handler.order.append("stop returned"))
    done, _ = await asyncio.wait({stopping}, timeout=0.5)
    assert not done  # stop() waits for the batch under way …
    handler.release.set()
    await asyncio.wait_for(stopping, 10)
    assert handler.order == ["batch finished", "stop returned"]  # … and only for that one

    # What that batch held was acked; everything else is back in the queue, none lost.
    # The broker requeues what the closed channel held after the close, not with it: a
    # quorum queue takes the returns as commands of its own, so the count is awaited.
    assert 1 <= handler.applied <= 8
    await handed_back(amqp_connection, spec.name, 40 - handler.applied)
    channel = await amqp_connection.channel()
    for name in (spec.name, spec.dlq, *spec.retry_queues):
        await channel.queue_delete(name)
    await channel.close()
    await publisher.close()
