"""BatchConsumer on real RabbitMQ + MySQL: what arrives together is applied in one
transaction, acked, and every message still has exactly one effect, also when a batch's
transaction fails and its messages go one by one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aio_pika
import aiomysql
import pymysql
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from prometheus_client import REGISTRY

from paylane_common.broker.publisher import Publisher, envelope_message
from paylane_common.broker.topology import QueueSpec, declare_queue
from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_common.delivery.batching import BatchConsumer, BatchItem
from paylane_common.delivery.consumer import REASON_HEADER
from paylane_common.storage.db import placeholders, transaction
from paylane_entitlement.grants import EntitlementApplier
from tests.support.events import order_paid
from tests.support.seeding import add_users

pytestmark = pytest.mark.integration


class Observed(BatchConsumer):
    """Counts the messages it has finished settling."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settled = 0
        self.changed = asyncio.Event()

    async def process_batch(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        await super().process_batch(messages)
        self.settled += len(messages)
        self.changed.set()

    async def wait_settled(self, count: int) -> None:
        async with asyncio.timeout(20):
            while self.settled < count:
                self.changed.clear()
                await self.changed.wait()


class FailsFirstBatch(EntitlementApplier):
    """Its first batch transaction dies as a deadlock would."""

    failed = False

    async def apply_batch(
        self, cur: aiomysql.Cursor, items: Sequence[BatchItem]
    ) -> list[str | None]:
        outcomes = await super().apply_batch(cur, items)
        if not self.failed:
            self.failed = True
            raise pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
        return outcomes


@pytest.fixture
async def spec(channel: AbstractChannel) -> AsyncIterator[QueueSpec]:
    spec = QueueSpec(f"test.batches.{uuid.uuid4().hex}", routing_keys=())
    await declare_queue(channel, spec)
    yield spec
    for name in (spec.name, spec.dlq, *spec.retry_queues):
        await channel.queue_delete(name)


async def _users(pool: aiomysql.Pool, n: int) -> list[str]:
    """``n`` rows of the shared ``users`` table (string ids, the seed's defaults)."""
    return await add_users(pool, n, payment_status="free")


async def _state(pool: aiomysql.Pool, users: list[str]) -> dict[str, tuple[str, int, int]]:
    """Per user: plan, regenerations, grants in the ledger."""
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT u.id, u.payment_status, u.regenerate_count, COUNT(g.out_trade_no) AS grants"
            " FROM users u LEFT JOIN entitlement_grants g ON g.user_id = u.id"
            f" WHERE u.id IN ({placeholders(len(users))}) GROUP BY u.id",
            users,
        )
        return {
            r["id"]: (r["payment_status"], r["regenerate_count"], r["grants"])
            for r in await cur.fetchall()
        }


def _batched_messages(queue: str) -> float:
    return REGISTRY.get_sample_value("paylane_consumer_batch_size_sum", {"queue": queue}) or 0.0


async def _publish_burst(
    publisher: Publisher, channel: AbstractChannel, queue: str, users: list[str], per_user: int
) -> int:
    """``per_user`` basic orders for each user, a redelivered copy of every fifth event,
    one invalid message and one order that names no publisher (no ``user_id``: refused,
    identities.py); returns how many messages were sent."""
    sent = 0
    for i in range(per_user):
        for n, user in enumerate(users):
            envelope = order_paid(user).envelope
            copies = 2 if (i + n) % 5 == 0 else 1
            for _ in range(copies):
                await publisher.publish_to_queue(queue, envelope_message(envelope))
                sent += 1
    await publisher.publish_to_queue(queue, aio_pika.Message(b"not json", message_id="bad-1"))
    unsigned = envelope_message(order_paid(users[0], event_id="unsigned-1").envelope)
    await channel.default_exchange.publish(unsigned, routing_key=queue)
    return sent + 2


@pytest.mark.parametrize("handler_cls", [EntitlementApplier, FailsFirstBatch])
async def test_a_burst_is_applied_in_batches_exactly_once(
    amqp_connection, publisher, channel, spec, db_pool, database, handler_cls
):
    users = await _users(db_pool, 4)
    # Queued before the consumer starts: its prefetch window fills at once, so batches form.
    sent = await _publish_burst(publisher, channel, spec.name, users, per_user=30)
    batched_before = _batched_messages(spec.name)
    handler = handler_cls(db_pool, DEFAULT_CATALOG)
    consumer = Observed(amqp_connection, publisher, spec, handler, database=database, max_batch=50)
    await consumer.start()
    try:
        await consumer.wait_settled(sent)
    finally:
        await consumer.stop()

    # 30 basic orders each: basic, 3 + 30 * 20 regenerations, 30 grants; copies ignored.
    assert await _state(db_pool, users) == {user: ("basic", 603, 30) for user in users}
    assert _batched_messages(spec.name) - batched_before > 0
    if handler_cls is FailsFirstBatch:
        assert handler.failed
    queue = await channel.get_queue(spec.name, ensure=False)
    assert (await queue.get(fail=False)) is None  # nothing left, nothing unacked requeued
    dlq = await channel.get_queue(spec.dlq, ensure=False)
    reasons = {}
    for _ in range(2):
        dead = await dlq.get(fail=True)
        reasons[dead.message_id] = dead.headers[REASON_HEADER]
        await dead.ack()
    assert set(reasons) == {"bad-1", "unsigned-1"}
    assert reasons["unsigned-1"] == "publisher refused: order.paid carries no user_id"
    assert (await dlq.get(fail=False)) is None
