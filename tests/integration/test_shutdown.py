"""Graceful shutdown: stop consuming, finish in-flight work, then close (DESIGN §8)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aio_pika.abc import AbstractRobustConnection

from paylane_common import events
from paylane_common.consumer import Consumer
from paylane_common.events import Envelope, OrderPaid, make_event
from paylane_common.publisher import Publisher
from paylane_common.topology import QueueSpec

pytestmark = pytest.mark.integration


async def test_stop_waits_for_in_flight_message_and_acks_it(
    amqp_connection: AbstractRobustConnection,
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

    consumer = Consumer(amqp_connection, publisher, spec, slow_handler)
    await consumer.start()
    data = OrderPaid(
        out_trade_no="S1", user_id=1, package_type="basic", amount_total=1, paid_at="x"
    )
    await publisher.publish(make_event(events.ORDER_PAID, data), routing_key=key)
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
