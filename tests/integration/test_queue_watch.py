"""The queue gauges the DLQ and queue-depth alerts read (queue_watch.py), on real
RabbitMQ: what the broker says about a consumer's queue and its DLQ, and a missing queue
or a broker away leaves the last values and does not stop the watch."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from prometheus_client import REGISTRY

from paylane_common.broker.queue_watch import QueueWatch
from paylane_common.broker.topology import QueueSpec, declare_queue

pytestmark = pytest.mark.integration


@pytest.fixture
async def spec(channel: AbstractChannel) -> AsyncIterator[QueueSpec]:
    spec = QueueSpec(f"test.watch.{uuid.uuid4().hex}", routing_keys=(), retry_delays_s=(0.05,))
    await declare_queue(channel, spec)
    yield spec
    for name in (spec.name, spec.dlq, *spec.retry_queues):
        await channel.queue_delete(name)


def gauges(queue: str) -> tuple[float | None, float | None]:
    return (
        REGISTRY.get_sample_value("paylane_queue_messages", {"queue": queue}),
        REGISTRY.get_sample_value("paylane_queue_consumers", {"queue": queue}),
    )


async def put(channel: AbstractChannel, queue: str, count: int) -> None:
    for n in range(count):
        await channel.default_exchange.publish(aio_pika.Message(str(n).encode()), queue)


async def test_ready_messages_and_consumers_of_a_queue_and_its_dlq(
    amqp_connection: Any, channel: AbstractChannel, spec: QueueSpec
) -> None:
    watch = QueueWatch(amqp_connection, (spec.name, spec.dlq))
    await watch.refresh()
    assert gauges(spec.name) == (0, 0) and gauges(spec.dlq) == (0, 0)

    await put(channel, spec.name, 3)
    await put(channel, spec.dlq, 2)
    queue = await channel.get_queue(spec.name)
    tag = await queue.consume(hold, no_ack=False)  # holds, never acks
    await watch.refresh()
    assert gauges(spec.dlq) == (2, 0)
    # A consumer holding deliveries: they are unacked, no longer ready.
    messages, consumers = gauges(spec.name)
    assert consumers == 1 and messages is not None and messages <= 3
    await queue.cancel(tag)


async def test_a_missing_queue_keeps_the_last_values(
    amqp_connection: Any, channel: AbstractChannel, spec: QueueSpec
) -> None:
    await put(channel, spec.dlq, 1)
    watch = QueueWatch(amqp_connection, (spec.dlq,))
    await watch.refresh()
    assert gauges(spec.dlq) == (1, 0)
    missing = f"test.watch.missing.{uuid.uuid4().hex}"
    await QueueWatch(amqp_connection, (missing, spec.dlq)).refresh()  # does not raise
    assert gauges(missing) == (None, None)
    assert gauges(spec.dlq) == (1, 0)
    await watch.refresh()  # and the next look works
    assert gauges(spec.dlq) == (1, 0)


async def hold(_message: Any) -> None:
    """A consumer that never acks: its deliveries stay unacked."""
