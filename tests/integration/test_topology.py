"""The topology asks for its replicas when it creates a queue or the stream, and a broker
holding them from a release that did not ask (RabbitMQ compares the replication arguments
on redeclaration) still takes the declaration, leaving them as they are."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from paylane_common.broker import amqp
from paylane_common.broker.topology import (
    ENTITLEMENT_ORDERS,
    LOG_STREAM,
    ORDER_PAYMENTS,
    QUORUM_REPLICATION,
    REPLICAS,
    STREAM_REPLICATION,
    declare_topology,
    log_stream_arguments,
)
from tests.support.infra import Infra, unique_name

pytestmark = pytest.mark.integration

REPLICATION = (QUORUM_REPLICATION, STREAM_REPLICATION)


def _without_replication(arguments: Any) -> dict[str, Any]:
    return {k: v for k, v in arguments.items() if k not in REPLICATION}


def _arguments(infra: Infra, vhost: str) -> dict[str, dict[str, Any]]:
    """``{queue: {argument: value}}`` as the broker holds them."""
    listing = infra.broker.run(
        ["list_queues", "-p", vhost, "name", "arguments", "-q", "--formatter", "json"]
    )
    return {
        row["name"]: {name: value for name, _type, value in row["arguments"]}
        for row in json.loads(listing)
    }


@pytest.fixture
async def vhost(infra: Infra) -> AsyncIterator[str]:
    """A vhost of its own: the session's already holds the topology."""
    name = unique_name("paylane_topology")
    await asyncio.to_thread(infra.broker.add_vhost, name, infra.amqp_user)
    yield name
    await asyncio.to_thread(infra.broker.delete_vhost, name)


async def test_new_queues_ask_for_replicas_and_older_ones_keep_theirs(
    infra: Infra, vhost: str
) -> None:
    older = {LOG_STREAM: log_stream_arguments(), ORDER_PAYMENTS.name: ORDER_PAYMENTS.arguments()}
    older[ORDER_PAYMENTS.dlq] = ORDER_PAYMENTS.dlq_arguments()
    for delay in ORDER_PAYMENTS.retry_delays_s:
        older[ORDER_PAYMENTS.retry_queue_for(delay)] = ORDER_PAYMENTS.retry_arguments(delay)
    connection = await amqp.connect(infra.amqp_url(vhost), "topology-test")
    try:
        channel = await connection.channel()
        for name, arguments in older.items():  # as the release before replicas had them
            await channel.declare_queue(
                name, durable=True, arguments=_without_replication(arguments)
            )
        await declare_topology(channel)
        await declare_topology(channel)  # the channel is still open, declaring is idempotent
    finally:
        await connection.close()

    held = await asyncio.to_thread(_arguments, infra, vhost)
    for name, arguments in older.items():
        assert held[name] == _without_replication(arguments), name
    spec = ENTITLEMENT_ORDERS
    for name in (spec.name, spec.dlq, *spec.retry_queues):
        assert held[name][QUORUM_REPLICATION] == REPLICAS, name
    declared = spec.arguments()
    assert declared is not None
    assert held[spec.name] == dict(declared)
