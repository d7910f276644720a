"""Messaging against real RabbitMQ + MySQL: confirms, consumer outcomes, inbox, outbox."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from prometheus_client import REGISTRY

from paylane_common.broker.publisher import envelope_message
from paylane_common.broker.topology import QueueSpec, declare_exchange, declare_queue
from paylane_common.contract import events
from paylane_common.contract.events import Envelope, PaymentSucceeded
from paylane_common.delivery import outbox
from paylane_common.delivery.consumer import (
    ATTEMPT_HEADER,
    ORIGIN_HEADER,
    REASON_HEADER,
    Reject,
    Retry,
    RetryPolicy,
)
from paylane_common.delivery.inbox import claim
from paylane_common.runtime import tracing
from paylane_common.runtime.exceptions import PublishError
from paylane_common.storage.db import transaction
from tests.support.events import payment_succeeded
from tests.support.observed import Observed

pytestmark = pytest.mark.integration

SCRATCH = "test_messaging_effects"
#: Short retry tiers, so that retries in these tests take milliseconds.
FAST_RETRIES = (0.05, 0.2, 1.0)


@pytest.fixture
async def spec(channel: AbstractChannel) -> AsyncIterator[QueueSpec]:
    """A unique consumer queue (+ .dlq, .retry.*); messages reach it through the default
    exchange, so nothing lands in the service queues other suites consume."""
    spec = QueueSpec(
        f"test.messaging.{uuid.uuid4().hex}", routing_keys=(), retry_delays_s=FAST_RETRIES
    )
    await declare_queue(channel, spec)
    yield spec
    for name in (spec.name, spec.dlq, *spec.retry_queues):
        await channel.queue_delete(name)


@pytest.fixture
async def queue_names(channel: AbstractChannel) -> AsyncIterator[list[QueueSpec]]:
    """Specs a test declares itself: their queues are deleted afterwards."""
    specs: list[QueueSpec] = []
    yield specs
    for spec in specs:
        for name in (spec.name, spec.dlq, *spec.retry_queues):
            await channel.queue_delete(name)


@pytest.fixture
async def bound(channel: AbstractChannel) -> AsyncIterator[tuple[str, AbstractQueue]]:
    """``(routing_key, queue)``: an exclusive queue bound to a routing key of its own."""
    key = f"test.{uuid.uuid4().hex}"
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(await declare_exchange(channel), routing_key=key)
    yield key, queue
    await queue.delete(if_unused=False, if_empty=False)


@pytest.fixture(scope="module")
async def scratch(db_pool) -> str:
    async with transaction(db_pool) as cur:
        await cur.execute(
            f"CREATE TABLE IF NOT EXISTS {SCRATCH}"
            " (k VARCHAR(128) NOT NULL PRIMARY KEY, n INT NOT NULL DEFAULT 0)"
        )
    return SCRATCH


async def receive(channel: AbstractChannel, queue: str, count: int = 1) -> list[Any]:
    """Wait (bounded) for ``count`` messages on ``queue``, acking them."""
    received: list[AbstractIncomingMessage] = []
    consumer_queue = await channel.get_queue(queue, ensure=False)
    async with asyncio.timeout(10), consumer_queue.iterator() as it:
        async for message in it:
            await message.ack()
            received.append(message)
            if len(received) == count:
                break
    return received


async def ready_count(channel: AbstractChannel, queue: str) -> int:
    """Ready messages, asked of the broker now (aio-pika's RobustChannel answers a passive
    ``declare_queue`` of a queue it declared before from its cache)."""
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(queue, passive=True)
    assert declared.message_count is not None
    return declared.message_count


# --- publisher -------------------------------------------------------------------------------


async def test_confirmed_publish_is_in_the_bound_queue(publisher, channel, bound):
    key, queue = bound
    envelope = payment_succeeded().envelope
    await publisher.publish(envelope, routing_key=key, headers={"x-test": "yes"})
    [message] = await receive(channel, queue.name)
    assert message.body == envelope.to_json()
    assert (message.message_id, message.type) == (envelope.event_id, events.PAYMENT_SUCCEEDED)
    assert message.correlation_id == envelope.data["out_trade_no"]
    assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    assert message.headers["x-test"] == "yes"
    assert tracing.TRACE_HEADER in message.headers


async def test_unroutable_message_raises_and_the_channel_survives(publisher, channel, spec):
    with pytest.raises(PublishError):
        await publisher.publish_to_queue(f"no-such-queue-{uuid.uuid4()}", aio_pika.Message(b"{}"))
    await publisher.publish_to_queue(spec.name, aio_pika.Message(b"{}"))
    assert len(await receive(channel, spec.name)) == 1


async def test_unroutable_message_is_reported_as_returned(publisher, database):
    def returned() -> float:
        sample = "paylane_publish_confirm_seconds_count"
        return REGISTRY.get_sample_value(sample, {"outcome": "returned"}) or 0.0

    before = returned()
    with pytest.raises(PublishError, match="unroutable"):
        await publisher.publish_to_queue(f"no-such-queue-{uuid.uuid4()}", aio_pika.Message(b"{}"))
    assert returned() == before + 1


# --- consumer outcomes -----------------------------------------------------------------------


async def start_consumer(amqp_connection, publisher, spec, handler, database) -> Observed:
    retry = RetryPolicy(base_delay_s=0.01)
    consumer = Observed(amqp_connection, publisher, spec, handler, database=database, retry=retry)
    await consumer.start()
    return consumer


async def test_processed_message_is_acked(amqp_connection, publisher, channel, spec, database):
    calls: list[str] = []

    async def handler(envelope: Envelope, data: Any) -> str:
        assert isinstance(data, PaymentSucceeded)
        calls.append(envelope.event_id)
        return "processed"

    envelope = payment_succeeded().envelope
    await publisher.publish_to_queue(spec.name, envelope_message(envelope))
    consumer = await start_consumer(amqp_connection, publisher, spec, handler, database)
    await consumer.wait_settled(1)
    await consumer.stop()  # closes its channel: an unacked message would be ready again
    assert calls == [envelope.event_id]
    assert await ready_count(channel, spec.name) == 0
    assert await ready_count(channel, spec.dlq) == 0


@pytest.mark.parametrize(
    "body", [None, b"not json", b'{"event_id": "x"}'], ids=["reject", "invalid_json", "envelope"]
)
async def test_rejected_and_invalid_messages_are_dead_lettered(
    amqp_connection, publisher, channel, spec, body, database
):
    calls: list[str] = []

    async def handler(envelope: Envelope, data: Any) -> str:
        calls.append(envelope.event_id)
        raise Reject("why")

    message = (
        envelope_message(payment_succeeded().envelope) if body is None else aio_pika.Message(body)
    )
    message.message_id = message.message_id or uuid.uuid4().hex
    await publisher.publish_to_queue(spec.name, message)
    consumer = await start_consumer(amqp_connection, publisher, spec, handler, database)
    [dead] = await receive(channel, spec.dlq)
    await consumer.wait_settled(1)
    await consumer.stop()
    assert calls == ([message.message_id] if body is None else [])
    assert dead.message_id == message.message_id and dead.body == message.body
    reason = dead.headers[REASON_HEADER]
    assert reason == "why" if body is None else "invalid envelope" in reason
    assert dead.headers[ORIGIN_HEADER] == spec.name
    assert await ready_count(channel, spec.name) == 0


async def test_retry_every_time_dead_letters_after_max_attempts(
    amqp_connection, publisher, channel, spec, database
):
    calls: list[int] = []

    async def handler(envelope: Envelope, data: Any) -> str:
        calls.append(1)
        raise Retry("order row not committed yet", max_attempts=3, delay_s=0.05)

    envelope = payment_succeeded().envelope
    await publisher.publish_to_queue(spec.name, envelope_message(envelope))
    consumer = await start_consumer(amqp_connection, publisher, spec, handler, database)
    [dead] = await receive(channel, spec.dlq)
    await consumer.wait_settled(3)
    await consumer.stop()
    assert len(calls) == 3
    assert dead.message_id == envelope.event_id
    assert "after 3 attempts" in dead.headers[REASON_HEADER]
    assert dead.headers[ATTEMPT_HEADER] == 2
    for queue in (spec.name, *spec.retry_queues):
        assert await ready_count(channel, queue) == 0


@pytest.mark.parametrize("failure", ["retry", "unexpected"])
async def test_failure_then_success_is_processed_once(
    amqp_connection, publisher, channel, spec, failure, database
):
    outcomes: list[str] = []

    async def handler(envelope: Envelope, data: Any) -> str:
        if not outcomes:
            outcomes.append(failure)
            if failure == "retry":
                raise Retry("not yet", max_attempts=3, delay_s=0.05)
            raise RuntimeError("database went away")
        outcomes.append("processed")
        return "processed"

    await publisher.publish_to_queue(spec.name, envelope_message(payment_succeeded().envelope))
    consumer = await start_consumer(amqp_connection, publisher, spec, handler, database)
    await consumer.wait_settled(2)
    await consumer.stop()
    assert outcomes == [failure, "processed"]
    for queue in (spec.name, *spec.retry_queues, spec.dlq):
        assert await ready_count(channel, queue) == 0


async def test_a_long_retry_does_not_hold_up_a_short_one(
    amqp_connection, publisher, channel, queue_names, database
):
    """Per-delay retry queues: with one parking queue, per-message TTLs expire only at its
    head, so a 1 s retry parked behind a 30 s one would wait the 30 s too."""
    spec = QueueSpec(f"test.messaging.{uuid.uuid4().hex}", routing_keys=())
    queue_names.append(spec)
    await declare_queue(channel, spec)
    slow, fast = payment_succeeded().envelope, payment_succeeded().envelope
    delays = {slow.event_id: 30.0, fast.event_id: 1.0}
    handled: list[str] = []
    fast_back = asyncio.Event()

    async def handler(envelope: Envelope, data: Any) -> str:
        first = envelope.event_id not in handled
        handled.append(envelope.event_id)
        if first:
            raise Retry("not yet", max_attempts=3, delay_s=delays[envelope.event_id])
        if envelope.event_id == fast.event_id:
            fast_back.set()
        return "processed"

    consumer = await start_consumer(amqp_connection, publisher, spec, handler, database)
    await publisher.publish_to_queue(spec.name, envelope_message(slow))
    await consumer.wait_settled(1)  # the slow one is parked first, at the head
    await publisher.publish_to_queue(spec.name, envelope_message(fast))
    async with asyncio.timeout(25):  # well before the slow one's 30 s are up
        await fast_back.wait()
    await consumer.stop()
    assert handled == [slow.event_id, fast.event_id, fast.event_id]
    assert await ready_count(channel, spec.retry_queue_for(30.0)) == 1  # still parked


@pytest.mark.parametrize(
    ("asked", "tier"), [(0.001, 1), (1.0, 1), (1.5, 2), (5.0, 8), (30.0, 30), (600.0, 30)]
)
def test_a_retry_waits_in_the_shortest_tier_not_shorter_than_asked(asked, tier):
    spec = QueueSpec("order.payments", routing_keys=())
    assert spec.retry_queue_for(asked) == f"order.payments.retry.{tier}s"
    assert len(set(spec.retry_queues)) == len(spec.retry_delays_s) > 1


# --- inbox -----------------------------------------------------------------------------------


async def test_concurrent_claims_of_one_event_succeed_once(db_pool, scratch):
    consumer, event_id = f"test-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    async with transaction(db_pool) as cur:
        await cur.execute(f"INSERT INTO {scratch} (k) VALUES (%s)", (event_id,))

    async def attempt() -> bool:
        async with transaction(db_pool) as cur:
            if not await claim(cur, consumer, event_id):
                return False
            await cur.execute(f"UPDATE {scratch} SET n = n + 1 WHERE k = %s", (event_id,))
            return True

    claimed = await asyncio.gather(*(attempt() for _ in range(20)))
    assert claimed.count(True) == 1
    async with transaction(db_pool) as cur:
        await cur.execute(f"SELECT n FROM {scratch} WHERE k = %s", (event_id,))
        assert (await cur.fetchone())["n"] == 1


async def test_redelivered_event_is_applied_once_through_a_consumer(
    amqp_connection, publisher, db_pool, scratch, spec, database
):
    name, envelope = f"test-{uuid.uuid4().hex[:12]}", payment_succeeded().envelope
    outcomes: list[str] = []

    async def handler(envelope: Envelope, data: Any) -> str:
        async with transaction(db_pool) as cur:
            if await claim(cur, name, envelope.event_id):
                await cur.execute(f"INSERT INTO {scratch} (k, n) VALUES (%s, 1)", (name,))
                outcome = "processed"
            else:
                outcome = "duplicate"
        outcomes.append(outcome)
        return outcome

    for _ in range(20):
        await publisher.publish_to_queue(spec.name, envelope_message(envelope))
    consumer = await start_consumer(amqp_connection, publisher, spec, handler, database)
    await consumer.wait_settled(20)
    await consumer.stop()
    assert Counter(outcomes) == {"processed": 1, "duplicate": 19}
    async with transaction(db_pool) as cur:
        await cur.execute(f"SELECT COUNT(*) AS c FROM {scratch} WHERE k = %s", (name,))
        assert (await cur.fetchone())["c"] == 1


# --- outbox ----------------------------------------------------------------------------------


async def stage(db_pool, producer: str, routing_key: str, count: int) -> list[str]:
    """Commit ``count`` outbox rows with no relay running (the crash before publishing)."""
    envelopes = [
        Envelope(
            event_id=uuid.uuid4().hex,
            type=routing_key,
            occurred_at=datetime.now(UTC),
            data={"out_trade_no": f"T{i}", "n": i},
        )
        for i in range(count)
    ]
    async with transaction(db_pool) as cur:
        for envelope in envelopes:
            await outbox.add(cur, producer, envelope)
    return [e.event_id for e in envelopes]


async def unpublished(db_pool, producer: str) -> int:
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT COUNT(*) AS c FROM outbox WHERE producer = %s AND published_at IS NULL",
            (producer,),
        )
        return (await cur.fetchone())["c"]


class SignallingRelay(outbox.OutboxRelay):
    """Sets ``idle`` once a pass (publish + mark, then backlog) is over."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.idle = asyncio.Event()

    async def _update_backlog(self) -> None:
        await super()._update_backlog()
        self.idle.set()


async def test_outbox_rows_survive_a_crash_and_are_relayed_once(
    db_pool, publisher, channel, bound, database
):
    key, queue = bound
    producer = f"t-{uuid.uuid4().hex[:16]}"
    event_ids = await stage(db_pool, producer, key, 5)
    assert await unpublished(db_pool, producer) == 5
    assert await ready_count(channel, queue.name) == 0

    relay = SignallingRelay(db_pool, publisher, producer, database=database, poll_interval_s=30)
    relay.start()
    try:
        async with asyncio.timeout(10):
            await relay.idle.wait()
    finally:
        await relay.stop()
    assert await unpublished(db_pool, producer) == 0
    assert await ready_count(channel, queue.name) == 5  # publishes were confirmed
    received = await receive(channel, queue.name, 5)
    assert sorted(m.message_id for m in received) == sorted(event_ids)
    assert {m.type for m in received} == {key}

    assert (
        await outbox.OutboxRelay(db_pool, publisher, producer, database=database).relay_once() == 0
    )
    assert await unpublished(db_pool, producer) == 0


async def test_concurrent_relays_publish_each_row_once(
    db_pool, publisher, channel, bound, database
):
    key, queue = bound
    producer = f"t-{uuid.uuid4().hex[:16]}"
    event_ids = await stage(db_pool, producer, key, 40)

    async def drain(relay: outbox.OutboxRelay) -> int:
        total = 0
        while published := await relay.relay_once():
            total += published
        return total

    relays = [
        outbox.OutboxRelay(db_pool, publisher, producer, database=database, batch_size=4)
        for _ in range(2)
    ]
    totals = await asyncio.gather(*(drain(relay) for relay in relays))
    assert sum(totals) == 40
    assert await unpublished(db_pool, producer) == 0
    assert await ready_count(channel, queue.name) == 40  # every publish was confirmed
    received = await receive(channel, queue.name, 40)
    assert sorted(m.message_id for m in received) == sorted(event_ids)
