"""Fixtures shared by the integration tests: a confirm publisher and a plain channel on
the session's broker connection."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractChannel

from paylane_common.broker.publisher import Publisher


@pytest.fixture(scope="module")
async def publisher(amqp_connection) -> AsyncIterator[Publisher]:
    publisher = await Publisher.open(amqp_connection, timeout=3.0)  # declares the topology
    yield publisher
    await publisher.close()


@pytest.fixture
async def channel(amqp_connection) -> AsyncIterator[AbstractChannel]:
    channel = await amqp_connection.channel()
    yield channel
    await channel.close()
