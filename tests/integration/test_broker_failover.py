"""AMQP_URL naming several hosts (the nodes of a cluster): the connection skips a host
that refuses it, and after losing its connection goes on to the next host, round and
round; its consumer and its publisher carry on wherever it lands."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

import aio_pika
import pytest

from paylane_common.broker import amqp
from paylane_common.broker.publisher import Publisher
from paylane_common.broker.topology import QueueSpec
from paylane_common.contract.events import Envelope
from paylane_common.delivery.consumer import Consumer
from paylane_common.runtime.outages import Dependency
from tests.support.events import order_paid
from tests.support.faultproxy import FaultProxy
from tests.support.infra import Infra
from tests.support.polling import eventually

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    """A port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _hosts_url(infra: Infra, vhost: str, first: int, *then: str) -> str:
    """The session broker's URL naming ``127.0.0.1:first``, then ``then``."""
    return dataclasses.replace(
        infra, amqp_host="127.0.0.1", amqp_port=first, amqp_more_hosts=then
    ).amqp_url(vhost)


@pytest.fixture
def vhost(amqp_url: str) -> str:
    return unquote(urlsplit(amqp_url).path.removeprefix("/"))


@pytest.fixture
async def proxy(infra: Infra) -> AsyncIterator[FaultProxy]:
    """A second way to the same broker, whose connections the test can break."""
    async with FaultProxy(infra.amqp_host, infra.amqp_port, name="amqp") as proxy:
        yield proxy


async def test_a_host_that_refuses_is_skipped(infra: Infra, vhost: str) -> None:
    broker = f"{infra.amqp_host}:{infra.amqp_port}"
    connection = await amqp.connect(_hosts_url(infra, vhost, _closed_port(), broker), "first-down")
    try:
        assert isinstance(connection, amqp.FailoverConnection)
        assert connection.broker == broker
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"through the second host"), routing_key=queue.name
        )
        got = await queue.get(timeout=5)
        assert got.body == b"through the second host"
    finally:
        await connection.close()


async def test_no_host_answering_fails_the_first_connection_naming_each(
    infra: Infra, vhost: str
) -> None:
    first, second = _closed_port(), _closed_port()
    with pytest.raises(ConnectionError) as failed:
        await amqp.connect(_hosts_url(infra, vhost, first, f"127.0.0.1:{second}"), "none-up")
    said = str(failed.value)
    assert said.startswith(f"no broker answered (127.0.0.1:{first}: "), said
    assert f"; 127.0.0.1:{second}: " in said and "Connect call failed" in said, said
    assert "guest" not in said


async def test_a_lost_connection_moves_to_the_next_host_and_round_again(
    infra: Infra, vhost: str, proxy: FaultProxy, database: Dependency
) -> None:
    broker = f"{infra.amqp_host}:{infra.amqp_port}"
    connection = await amqp.connect(_hosts_url(infra, vhost, proxy.port, broker), "failover")
    assert isinstance(connection, amqp.FailoverConnection)
    publisher = await Publisher.open(connection)
    key = f"failover.{uuid.uuid4().hex[:8]}"
    spec = QueueSpec(f"test.failover.{uuid.uuid4().hex[:8]}", (key,))
    received: asyncio.Queue[str] = asyncio.Queue()

    async def handler(envelope: Envelope, _data: object) -> str:
        received.put_nowait(envelope.event_id)
        return "processed"

    async def delivered_through(host: str) -> None:
        """Once reconnected to ``host`` (channels restored), an event goes round."""
        await eventually(lambda: connection.broker == host, timeout=10, what=f"on {host}")
        await asyncio.wait_for(connection.ready(), 10)
        event = order_paid().envelope
        async with asyncio.timeout(10):
            while True:  # the publisher's channel may still be restoring
                try:
                    await publisher.publish(event, routing_key=key)
                    break
                except Exception:
                    await asyncio.sleep(0.1)
        # (An earlier event whose ack the break lost comes again first: at least once.)
        async with asyncio.timeout(10):
            while await received.get() != event.event_id:
                pass

    consumer = Consumer(connection, publisher, spec, handler, database=database)
    await consumer.start()
    try:
        await delivered_through(f"127.0.0.1:{proxy.port}")
        assert proxy.stats.accepted == 1

        assert proxy.reset() == 1  # the first host's connection breaks: on to the next
        await delivered_through(broker)
        assert proxy.stats.accepted == 1

        # The broker closes it: round to the first host again.
        assert await asyncio.to_thread(infra.broker.close_connections, vhost, "paylane-failover")
        await delivered_through(f"127.0.0.1:{proxy.port}")
        assert proxy.stats.accepted == 2
    finally:
        await consumer.stop()
        await publisher.close()
        await connection.close()
