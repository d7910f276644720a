"""Shutdown, broker reconnects, invalid messages, health and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from paylane_common.broker.publisher import Publisher, envelope_message
from paylane_common.broker.topology import EXCHANGE
from paylane_common.runtime.service import ADMIN_LISTENER, AMQP_CONNECTION
from paylane_notifier.hub import Hub
from paylane_notifier.messages import ClientMessage
from services.notifier.tests.support import (
    WAIT_S,
    Listener,
    SseListener,
    WsListener,
    granted_for,
    insert_order,
    insert_user,
    token_for,
)
from tests.support.events import order_paid
from tests.support.infra import Infra

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
Connect = Callable[..., Awaitable[Listener]]


async def test_shutdown_closes_every_client_promptly(
    start_notifier: Callable[..., Awaitable[Client]], connect: Connect, db_pool: aiomysql.Pool
) -> None:
    notifier = await start_notifier()
    user_id = await insert_user(db_pool)
    ws = await connect(notifier, "ws", token_for(user_id))
    sse = await connect(notifier, "sse", token_for(user_id))
    assert isinstance(ws, WsListener) and isinstance(sse, SseListener)

    loop = asyncio.get_running_loop()
    started = loop.time()
    shutdown = asyncio.create_task(notifier.server.close())
    assert await ws.closed() == WSCloseCode.GOING_AWAY
    assert await sse.closed() is True
    async with asyncio.timeout(WAIT_S):
        await shutdown
    # Well inside SIGTERM's 10 s: the streams end at once, not at the shutdown timeout.
    assert loop.time() - started < 2.0


async def test_clients_get_a_fresh_snapshot_after_a_broker_reconnect(
    notifier: Client,
    connect: Connect,
    publisher: Publisher,
    db_pool: aiomysql.Pool,
    infra: Infra,
    amqp_url: str,
) -> None:
    """Events published while the connection was down are lost for this replica's queue:
    its clients are re-sent the current state, and the queue consumes again."""
    user_id = await insert_user(db_pool)
    out_trade_no, _ = await insert_order(db_pool, user_id)
    client = await connect(notifier, "ws", token_for(user_id))
    assert (await client.next()).data["type"] == "order.state"

    connection = notifier.app[AMQP_CONNECTION]
    reconnected = asyncio.Event()
    connection.reconnect_callbacks.add(lambda *_: reconnected.set())
    vhost = unquote(urlsplit(amqp_url).path.removeprefix("/"))
    assert infra.broker.close_connections(vhost, "paylane-notifier"), "no notifier connection"

    async with asyncio.timeout(10):
        await reconnected.wait()
    resent = await client.next()
    assert (resent.data["type"], resent.data["out_trade_no"]) == ("order.state", out_trade_no)
    paid = order_paid(user_id).envelope
    await publisher.publish(granted_for(paid))  # pushes order.paid first
    assert (await client.next()).data["event_id"] == paid.event_id


async def test_invalid_messages_are_acked_and_skipped(
    notifier: Client,
    connect: Connect,
    publisher: Publisher,
    amqp_connection: AbstractRobustConnection,
    db_pool: aiomysql.Pool,
) -> None:
    user_id = await insert_user(db_pool)
    client = await connect(notifier, "sse", token_for(user_id))
    invalid_before = _sample("paylane_consumer_messages_total", queue="notifier", outcome="invalid")

    channel = await amqp_connection.channel()
    try:
        exchange = await channel.get_exchange(EXCHANGE)
        for body in (b"not json", b'{"event_id": "x", "type": "entitlement.granted"}'):
            await exchange.publish(aio_pika.Message(body), routing_key="entitlement.granted")
    finally:
        await channel.close()
    paid = order_paid(user_id).envelope
    await publisher.publish(granted_for(paid))  # pushes order.paid first

    assert (await client.next()).data["event_id"] == paid.event_id
    # This replica's queue took both (one queue per replica: at least ours counted them).
    assert (
        _sample("paylane_consumer_messages_total", queue="notifier", outcome="invalid")
        >= invalid_before + 2
    )


async def test_an_event_from_another_publisher_is_not_pushed(
    notifier: Client,
    connect: Connect,
    publisher: Publisher,
    amqp_connection: AbstractRobustConnection,
    db_pool: aiomysql.Pool,
) -> None:
    """An entitlement.granted that names no publisher (no ``user_id``) is refused and
    counted: only entitlement's broker user grants (paylane_common.broker.identities)."""
    user_id = await insert_user(db_pool)
    client = await connect(notifier, "sse", token_for(user_id))
    labels = {"queue": "notifier", "outcome": "publisher_refused"}
    refused_before = _sample("paylane_consumer_messages_total", **labels)

    forged = granted_for(order_paid(user_id).envelope)
    channel = await amqp_connection.channel()
    try:
        exchange = await channel.get_exchange(EXCHANGE)
        await exchange.publish(envelope_message(forged), routing_key=forged.type)
    finally:
        await channel.close()
    paid = order_paid(user_id).envelope
    await publisher.publish(granted_for(paid))  # with its user_id: pushed, after the forged

    assert (await client.next()).data["event_id"] == paid.event_id
    assert _sample("paylane_consumer_messages_total", **labels) >= refused_before + 1


async def test_health_readiness_and_metrics(
    notifier: Client, connect: Connect, db_pool: aiomysql.Pool
) -> None:
    """/healthz on the public port; /readyz and /metrics on the admin listener only."""
    assert (await notifier.get("/healthz")).status == 200
    assert (await notifier.get("/readyz")).status == 404
    assert (await notifier.get("/metrics")).status == 404
    listener = notifier.app[ADMIN_LISTENER]
    assert listener.port == 9083  # the default
    async with TestClient(TestServer(listener.app)) as admin:
        ready = await admin.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["checks"] == {"broker": "ok", "mysql": "ok"}

        await connect(notifier, "ws", token_for(await insert_user(db_pool)))
        metrics = await (await admin.get("/metrics")).text()
    for name in (
        'paylane_notifier_connections{transport="ws"}',
        "paylane_notifier_pushes_total",
        "paylane_notifier_dropped_clients_total",
    ):
        assert name in metrics


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_clients_that_fall_behind_are_dropped_without_holding_up_others(
    start_notifier: Callable[..., Awaitable[Client]],
    connect: Connect,
    publisher: Publisher,
    db_pool: aiomysql.Pool,
) -> None:
    # Two slots: one payment pushes two messages (order.paid, then entitlement.granted) at
    # once, which a client that keeps up must be able to take whatever the machine's load.
    hub = Hub(queue_size=2)
    notifier = await start_notifier(hub=hub)
    slow, other = await insert_user(db_pool), await insert_user(db_pool)
    slow_ws = await connect(notifier, "ws", token_for(slow))
    slow_sse = await connect(notifier, "sse", token_for(slow))
    other_ws = await connect(notifier, "ws", token_for(other))
    dropped_before = _sample("paylane_notifier_dropped_clients_total")

    # Three messages before the writers can run: each slow client's two-slot queue overflows.
    assert hub.publish(slow, _state("o1")) == 2
    assert hub.publish(slow, _state("o2")) == 2
    assert hub.publish(slow, _state("o3")) == 0

    assert isinstance(slow_ws, WsListener) and isinstance(slow_sse, SseListener)
    async with asyncio.timeout(WAIT_S):
        # What was already written may still arrive (the first two at most), then the cut.
        received = [await slow_ws.ws.receive()]
        while received[-1].type is WSMsgType.TEXT:
            received.append(await slow_ws.ws.receive())
    assert len(received) <= 3
    assert received[-1].type in (WSMsgType.CLOSED, WSMsgType.ERROR)
    assert await slow_sse.closed() is False  # aborted, not ended politely
    assert _sample("paylane_notifier_dropped_clients_total") == dropped_before + 2
    assert hub.count(slow) == 0
    paid = order_paid(other).envelope
    await publisher.publish(granted_for(paid))  # pushes order.paid first
    assert (await other_ws.next()).data["event_id"] == paid.event_id


def _state(out_trade_no: str) -> ClientMessage:
    return ClientMessage(
        type="order.state",
        out_trade_no=out_trade_no,
        status="paid",
        payment_status="basic",
        regenerate_count=13,
        event_id=None,
        occurred_at=datetime.now(UTC),
    )
