"""The robust RabbitMQ connection every service holds."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

log = structlog.get_logger(__name__)


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A connection that reconnects (every second) and restores its channels and consumers."""
    return await aio_pika.connect_robust(
        url, reconnect_interval=1.0, client_properties={"connection_name": f"paylane-{name}"}
    )


#: What closing a channel or a connection may take: with the broker away a robust one
#: would wait for it to come back, and SIGTERM must end a service within its budget.
CLOSE_TIMEOUT_S = 2.0


async def close_quietly(closable: Any, what: str) -> None:
    """``await closable.close()``, given up after :data:`CLOSE_TIMEOUT_S` (the broker is
    away: it drops what was open) or on an error, which is logged."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await closable.close()
    except Exception as exc:
        log.warning("amqp_close_failed", what=what, error=repr(exc)[:200])


def hosts_of(url: str) -> list[str]:
    """``host:port`` of each broker ``url`` names, without credentials (for logs)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    default = 5671 if url.startswith("amqps") else 5672
    hosts = [h for h in netloc.split(",") if h]
    return [h if ":" in h.rpartition("]")[2] else f"{h}:{default}" for h in hosts]


def broker_ready(connection: AbstractRobustConnection | None) -> bool:
    return connection is not None and not connection.is_closed and not connection.reconnecting


#: Broker bookkeeping that must not follow a copy (it describes the original's deliveries).
_BROKER_HEADERS = frozenset({"x-death", "x-delivery-count", "x-stream-offset"})
_BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


def without_broker_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        name: value
        for name, value in (headers or {}).items()
        if name not in _BROKER_HEADERS and not name.startswith(_BROKER_HEADER_PREFIXES)
    }


def copy_message(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """A persistent copy to publish elsewhere (retry, DLQ, replay) with exactly ``headers``.

    Not copied: expiration (the copy must not expire in its new queue) and user_id (the
    broker checks it against the publishing user)."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )
