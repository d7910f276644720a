"""Consumers really come back after a broker restart (a known aio-pika pain point)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker import amqp
from paylane_common.broker.publisher import Publisher
from paylane_common.broker.topology import QueueSpec
from paylane_common.contract.events import Envelope
from paylane_common.delivery.consumer import Consumer
from paylane_common.runtime.outages import Dependency
from tests.support.events import order_paid
from tests.support.infra import Infra

pytestmark = [pytest.mark.integration, pytest.mark.broker_outage]


async def test_consumer_resumes_after_broker_restart(
    amqp_url: str, infra: Infra, amqp_connection: AbstractRobustConnection, database: Dependency
) -> None:
    connection = await amqp.connect(amqp_url, "restart-test")
    publisher = await Publisher.open(connection)
    key = f"restart.{uuid.uuid4().hex[:8]}"
    spec = QueueSpec(f"test.restart.{uuid.uuid4().hex[:8]}", (key,))
    received: asyncio.Queue[str] = asyncio.Queue()

    async def handler(envelope: Envelope, _data: object) -> str:
        received.put_nowait(envelope.event_id)
        return "processed"

    consumer = Consumer(connection, publisher, spec, handler, database=database)
    await consumer.start()
    try:
        before = order_paid().envelope
        await publisher.publish(before, routing_key=key)
        assert await asyncio.wait_for(received.get(), 10) == before.event_id

        await asyncio.to_thread(infra.broker.stop)
        await asyncio.to_thread(infra.broker.start)
        # The robust connection reconnects and restores channels, queues and consumers;
        # the publisher's channel may need a moment longer, so publishing is retried.
        async with asyncio.timeout(30):
            after = order_paid().envelope
            while True:
                try:
                    await publisher.publish(after, routing_key=key)
                    break
                except Exception:  # the publisher channel may still be restoring
                    await asyncio.sleep(0.2)
        assert await asyncio.wait_for(received.get(), 20) == after.event_id
    finally:
        await consumer.stop()
        await publisher.close()
        await connection.close()
        # Leave the session's own connection usable for the tests that follow.
        await asyncio.wait_for(amqp_connection.ready(), 60)
