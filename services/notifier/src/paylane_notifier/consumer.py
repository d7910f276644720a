"""Events → this replica's clients.

Every replica consumes through its *own* exclusive, auto-delete queue
``notifier.<hostname>.<random hex>`` bound to :data:`topology.NOTIFIER_KEYS`, so every
replica sees every event and a client may connect to any of them (docs/notifier.md). The queue
is declared on a channel of the robust connection: after a broker reconnect aio-pika
declares, binds and consumes it again; events published while the connection was down
never reached it, so every connected client then gets a fresh snapshot (``Hub.resync``).

The notifier owns no durable state and its queue dies with it, so it consumes without
acknowledgements (``no_ack``): a delivered message is handed to the hub at once, and an
invalid one is logged (nothing to dead-letter, nobody to retry for). Acks would cost the
broker and this process a frame per event and protect nothing. So is an event from an
identity that does not publish its type (paylane_common.broker.identities: ``entitlement.*``
only from entitlement, ``order.*`` only from order): logged as ``publisher_refused``
and counted with that outcome, never pushed.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiohttp import web

from paylane_common.broker.amqp import CLOSE_TIMEOUT_S, close_quietly
from paylane_common.broker.identities import IdentityCheck, Publishers, connection_user
from paylane_common.broker.topology import NOTIFIER_KEYS, declare_exchange
from paylane_common.contract.events import parse_event
from paylane_common.delivery.consumer import PUBLISHER_REFUSED
from paylane_common.runtime import tracing
from paylane_common.runtime.exceptions import EventValidationError
from paylane_common.runtime.metrics import CONSUMER_MESSAGES
from paylane_common.runtime.service import AMQP_CONNECTION, DECLARES_TOPOLOGY, PUBLISHERS

from .hub import HUB, Hub
from .messages import from_event

log = structlog.get_logger(__name__)

#: Label of ``paylane_consumer_messages_total`` for every replica's queue.
METRICS_QUEUE = "notifier"


def queue_name() -> str:
    """``notifier.<hostname>.<random hex>``: unique per replica and per start."""
    return f"notifier.{socket.gethostname()}.{secrets.token_hex(4)}"


class EventConsumer:
    """Consumes this replica's queue into the hub; start() / stop() around the app's life."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        hub: Hub,
        *,
        declare: bool = True,
        publishers: Publishers | None = None,
    ) -> None:
        self._connection = connection
        self.identities = IdentityCheck(publishers or Publishers(), connection_user(connection))
        self._hub = hub
        self._declare = declare
        self.queue_name = queue_name()
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None

    async def start(self) -> None:
        self._channel = await self._connection.channel()
        # Its own queue is always declared (the broker user may configure ``notifier.*``);
        # the exchange only checked when the topology is not this process's to declare.
        exchange = await declare_exchange(self._channel, passive=not self._declare)
        self._queue = await self._channel.declare_queue(
            self.queue_name,
            durable=False,
            exclusive=True,
            auto_delete=True,
            arguments={"x-queue-type": "classic"},
        )
        for key in NOTIFIER_KEYS:
            await self._queue.bind(exchange, routing_key=key)
        self._tag = await self._queue.consume(self._on_message, no_ack=True)
        CONSUMER_MESSAGES.labels(METRICS_QUEUE, PUBLISHER_REFUSED)  # at 0 for the alert
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        log.info("consumer_started", queue=self.queue_name, routing_keys=list(NOTIFIER_KEYS))

    async def stop(self) -> None:
        """Stop consuming; the broker deletes the queue with its last consumer."""
        self._connection.reconnect_callbacks.discard(self._on_reconnect)
        if self._queue is not None and self._tag is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._queue.cancel(self._tag)
            except Exception as exc:  # broker gone: the queue goes with the connection
                log.warning("consumer_cancel_failed", queue=self.queue_name, error=repr(exc))
            self._tag = None
        if self._channel is not None and not self._channel.is_closed:
            await close_quietly(self._channel, "notifier channel")

    def _on_reconnect(self, _connection: Any) -> None:
        log.warning("broker_reconnected_resync", queue=self.queue_name, clients=self._hub.count())
        self._hub.resync()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        outcome = self.handle(message)
        CONSUMER_MESSAGES.labels(METRICS_QUEUE, outcome).inc()

    def handle(self, message: AbstractIncomingMessage) -> str:
        """Hand one event to the hub (never waits); returns the outcome label."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            queue=self.queue_name,
            event_id=message.message_id,
            out_trade_no=message.correlation_id,
            trace_id=tracing.from_headers(message.headers, message.message_id or ""),
        )
        try:
            envelope, data = parse_event(message.body)
        except EventValidationError as exc:
            log.error("message_invalid", reason=str(exc))
            return "invalid"
        publisher = self.identities.publisher(message)
        refused = self.identities.refusal(envelope.type, publisher)
        if refused is not None:
            log.error(
                "publisher_refused",
                event_type=envelope.type,
                publisher=publisher,
                user_id=message.user_id,
                reason=refused,
            )
            return PUBLISHER_REFUSED
        routed = from_event(envelope, data)
        if routed is None:
            log.info("message_ignored", event_type=envelope.type)
            return "ignored"
        user_id, client_messages = routed
        delivered = 0
        for client_message in client_messages:
            delivered = self._hub.publish(user_id, client_message)
        log.info("event_pushed", event_type=envelope.type, user_id=user_id, clients=delivered)
        return "pushed" if delivered else "no_client"


async def consume_events(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: consume while the app runs (registered after ``use_broker``)."""
    consumer = EventConsumer(
        app[AMQP_CONNECTION],
        app[HUB],
        declare=app[DECLARES_TOPOLOGY],
        publishers=app[PUBLISHERS],
    )
    await consumer.start()
    app[EVENT_CONSUMER] = consumer
    yield
    await consumer.stop()


EVENT_CONSUMER = web.AppKey("event_consumer", EventConsumer)
