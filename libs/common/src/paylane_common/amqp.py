"""The robust RabbitMQ connection every service holds."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractRobustConnection


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A connection that reconnects (every second) and restores its channels and consumers."""
    return await aio_pika.connect_robust(
        url, reconnect_interval=1.0, client_properties={"connection_name": f"paylane-{name}"}
    )


def broker_ready(connection: AbstractRobustConnection | None) -> bool:
    return connection is not None and not connection.is_closed and not connection.reconnecting
