"""Ingress first (paylane_common.broker.pressure), on the real RabbitMQ and MySQL: while ingress
announces that it is busy, a consumer takes no batch and its backlog waits in the queue;
once the announcements stop it drains, every message applied once; a consumer that has
yielded its maximum works regardless."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from structlog.testing import capture_logs

from paylane_common.broker import amqp
from paylane_common.broker.pressure import HOLD_S, MAX_HOLD_S, IngressYield, LoadAnnouncer
from paylane_common.broker.publisher import Publisher, envelope_message
from paylane_common.broker.topology import (
    SIGNALS_EXCHANGE,
    QueueSpec,
    declare_signals_exchange,
)
from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_entitlement.grants import EntitlementApplier
from tests.integration import test_batch_consumer as batch_tests
from tests.integration.test_batch_consumer import (
    Observed,
    _state,
)
from tests.support.events import order_paid
from tests.support.infra import Infra, unique_name
from tests.support.polling import eventually
from tests.support.seeding import add_users

pytestmark = pytest.mark.integration

#: A fresh quorum queue with its retry queues and DLQ, the batch consumer tests' fixture.
spec = batch_tests.spec


def busy_cpu() -> float:
    """A process_time that advances twice as fast as the clock: two cores busy."""
    return time.monotonic() * 2


_TICKS = itertools.count()


def idle_cpu() -> float:
    """A process_time that barely moves: ingress idle."""
    return next(_TICKS) * 1e-6


async def _publish(publisher: Publisher, queue: str, users: list[str]) -> int:
    for user in users:
        await publisher.publish_to_queue(queue, envelope_message(order_paid(user).envelope))
    return len(users)


async def _until_busy(yielding: IngressYield) -> None:
    """Until the first announcement has arrived."""
    await eventually(lambda: yielding.busy, 5, what="an announcement", interval=0.02)


async def _left_in(channel: AbstractChannel, queue_name: str) -> int:
    """Takes (and acks) what ``queue_name`` holds now, by basic.get: a quorum queue's own
    message counts lag by seconds."""
    queue = await channel.get_queue(queue_name, ensure=False)
    taken = 0
    while (message := await queue.get(fail=False)) is not None:
        await message.ack()
        taken += 1
    return taken


async def _busy_ingress(connection: Any, max_s: float) -> tuple[LoadAnnouncer, IngressYield]:
    """An ingress announcing "busy" all along, and a consumer process's side listening."""
    announcer = LoadAnnouncer(0.5, interval_s=0.05, hold_s=1.0, repeat_s=0.1, cpu=busy_cpu)
    yielding = IngressYield(connection, "test", max_s=max_s)
    await yielding.start()
    await announcer.start(connection)
    return announcer, yielding


def _consumer(
    connection: Any,
    publisher: Publisher,
    spec: QueueSpec,
    pool: Any,
    database: Any,
    yielding: IngressYield,
) -> Observed:
    """Entitlement's batch consumer of ``spec``, yielding to ``yielding``."""
    handler = EntitlementApplier(pool, DEFAULT_CATALOG)
    return Observed(connection, publisher, spec, handler, database=database, yield_to=yielding)


async def test_consumers_wait_while_ingress_is_busy_then_drain(
    amqp_connection, publisher, channel, spec, db_pool, database
):
    announcer, yielding = await _busy_ingress(amqp_connection, max_s=60)
    users = await add_users(db_pool, 20, payment_status="free")
    consumer = _consumer(amqp_connection, publisher, spec, db_pool, database, yielding)
    try:
        await consumer.start()
        await _until_busy(yielding)
        assert not yielding.yielding  # nothing to wait with yet
        sent = await _publish(publisher, spec.name, users)
        await asyncio.sleep(2.0)
        assert consumer.settled == 0, "a consumer took a batch while ingress was busy"
        assert yielding.yielding
        await announcer.stop()  # the burst is over
        await consumer.wait_settled(sent)
    finally:
        await announcer.stop()
        await consumer.stop()
        await yielding.stop()
    assert not yielding.yielding
    assert yielding.yielded_s >= 2.0
    assert await _state(db_pool, users) == {user: ("basic", 23, 1) for user in users}
    assert await _left_in(channel, spec.name) == 0


async def test_a_stopping_consumer_starts_nothing_that_waited_for_its_turn(
    amqp_connection, publisher, channel, spec, db_pool, database
):
    announcer, yielding = await _busy_ingress(amqp_connection, max_s=60)
    users = await add_users(db_pool, 5, payment_status="free")
    sent = await _publish(publisher, spec.name, users)
    consumer = _consumer(amqp_connection, publisher, spec, db_pool, database, yielding)
    try:
        await _until_busy(yielding)
        await consumer.start()
        await eventually(lambda: yielding.yielding, 5, what="the consumer waiting")
        async with asyncio.timeout(3):  # not the 5 s a stuck batch would be given
            await consumer.stop()
    finally:
        await announcer.stop()
        await yielding.stop()
    assert consumer.settled == 0
    assert await _state(db_pool, users) == {user: ("free", 3, 0) for user in users}
    back = 0

    async def all_back() -> bool:
        nonlocal back
        back += await _left_in(channel, spec.name)
        return back >= sent

    await eventually(all_back, 10, what="the deliveries back in the queue")
    assert back == sent


async def test_a_consumer_works_once_it_has_yielded_its_maximum(
    amqp_connection, publisher, channel, spec, db_pool, database
):
    announcer, yielding = await _busy_ingress(amqp_connection, max_s=1.0)
    users = await add_users(db_pool, 10, payment_status="free")
    sent = await _publish(publisher, spec.name, users)
    consumer = _consumer(amqp_connection, publisher, spec, db_pool, database, yielding)
    await _until_busy(yielding)
    started = time.monotonic()
    try:
        await consumer.start()
        await consumer.wait_settled(sent)  # while ingress still announces
        assert time.monotonic() - started >= 1.0
    finally:
        await consumer.stop()
        await announcer.stop()
        await yielding.stop()
    assert await _state(db_pool, users) == {user: ("basic", 23, 1) for user in users}


async def test_a_calm_ingress_announces_nothing(amqp_connection, channel):
    announcer = LoadAnnouncer(0.5, interval_s=0.05, hold_s=1.0, repeat_s=0.1, cpu=idle_cpu)
    await declare_signals_exchange(channel)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(SIGNALS_EXCHANGE)
    await announcer.start(amqp_connection)
    await asyncio.sleep(0.5)
    await announcer.stop()
    assert (await queue.get(fail=False)) is None
    busy = LoadAnnouncer(0.5, interval_s=0.05, hold_s=1.0, repeat_s=0.1, cpu=busy_cpu)
    await busy.start(amqp_connection)
    await asyncio.sleep(0.3)
    await busy.stop()
    message = await queue.get(fail=True, no_ack=True)
    assert json.loads(message.body)["busy_for_s"] == 1.0
    assert message.expiration == 1.0  # never outlives its advice


async def test_an_announcement_holds_at_most_max_hold(amqp_connection):
    now = [100.0]
    yielding = IngressYield(amqp_connection, "test", max_s=60, clock=lambda: now[0])
    yielding.hear(json.dumps({"busy_for_s": 3600}).encode())
    yielding.hear(b"not json")  # ignored, logged
    waiting = asyncio.create_task(yielding.turn())
    await asyncio.sleep(0.05)
    assert yielding.yielding and not waiting.done()
    now[0] += MAX_HOLD_S
    await asyncio.wait_for(waiting, MAX_HOLD_S + 2)  # woke at the end of the bounded hold
    assert not yielding.yielding
    assert yielding.yielded_s == MAX_HOLD_S


async def test_too_many_notifications_at_once_are_announced_at_once(amqp_connection, channel):
    """The first sign of a burst: no CPU window to wait for (busy_cpu 0: never by CPU)."""
    announcer = LoadAnnouncer(0, busy_in_flight=3, repeat_s=0.1)
    await declare_signals_exchange(channel)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(SIGNALS_EXCHANGE)
    await announcer.start(amqp_connection)
    try:
        announcer.entered()
        announcer.entered()
        await asyncio.sleep(0.3)
        assert (await queue.get(fail=False)) is None  # two at once: not busy
        announcer.entered()  # the third
        message = await _next(queue)
        assert json.loads(message.body) == {"busy_for_s": HOLD_S, "in_flight": 3}
        for _ in range(3):
            announcer.left()
        assert announcer.in_flight == 0
    finally:
        await announcer.stop()


async def _next(queue: Any) -> Any:
    async with asyncio.timeout(5), queue.iterator(no_ack=True) as arrived:
        return await anext(aiter(arrived))


async def test_without_the_signals_exchange_both_sides_run_and_nobody_yields(infra: Infra):
    """A broker whose topology predates paylane.signals (AMQP_DECLARE_TOPOLOGY=false): the
    services start anyway, warn, and the consumers never wait."""
    vhost = unique_name("paylane_signals")
    infra.broker.add_vhost(vhost, infra.amqp_user)
    try:
        connection = await amqp.connect(infra.amqp_url(vhost), "test-no-signals")
        try:
            announcer = LoadAnnouncer(0.5, busy_in_flight=1, declare=False)
            yielding = IngressYield(connection, "test", max_s=60, declare=False)
            with capture_logs() as logs:
                await announcer.start(connection)
                await yielding.start()
            warned = {entry["event"] for entry in logs if entry["log_level"] == "warning"}
            assert {"ingress_not_announcing", "consumer_not_yielding"} <= warned
            announcer.entered()  # would announce: there is nowhere to, and nothing breaks
            announcer.left()
            await asyncio.wait_for(yielding.turn(), 1)
            await announcer.stop()
            await yielding.stop()
            assert not connection.is_closed  # only the signals channel was given up
        finally:
            await connection.close()
    finally:
        infra.broker.delete_vhost(vhost)
