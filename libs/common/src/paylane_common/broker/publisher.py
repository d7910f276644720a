"""Publishing with publisher confirms + ``mandatory``: a publish returns only once the
broker has durably taken the message, and raises PublishError otherwise.

Every message carries the AMQP ``user_id`` of the publisher's connection, which RabbitMQ
checks and consumers hold against who may publish what (identities.py). Nothing goes
through the default exchange: events to ``paylane``, a consumer's forwards to its queue's
``<queue>.forward`` exchange (topology.py).

Messages go out on aio-pika's channel through its aiormq channel, with the properties
built once as pamqp's: building an ``aio_pika.Message`` for each event cost about 20 µs
of CPU, against 2 µs for its properties, on every publish of the hot paths (ingress's
acknowledgement, the outbox relays).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from pamqp.commands import Basic

from paylane_common.broker.identities import connection_user
from paylane_common.broker.topology import declare_exchange, declare_topology
from paylane_common.contract.events import Envelope
from paylane_common.runtime import metrics, tracing
from paylane_common.runtime.exceptions import PublishError

log = structlog.get_logger(__name__)


#: A nacked channel is replaced at most this often (a queue refusing for good, e.g.
#: without a quorum, must not make the publisher churn channels).
RENEW_AFTER_S = 1.0
#: Publish outcomes, their labelled histograms resolved once.
_CONFIRM_SECONDS = {
    outcome: metrics.PUBLISH_CONFIRM_SECONDS.labels(outcome)
    for outcome in ("confirmed", "timeout", "returned", "nack", "unavailable")
}
#: The broker or the channel is not there (down, restoring, closed).
_UNAVAILABLE = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)


class Publisher:
    """One confirm channel; safe for many concurrent publishes. Given its connection, it
    moves to a fresh channel after a nack (:meth:`_renew`), and stamps every message with
    the connection's user as ``user_id`` (else with ``user_id``, when given)."""

    def __init__(
        self,
        channel: AbstractChannel,
        exchange: AbstractExchange,
        timeout: float,
        *,
        connection: AbstractConnection | None = None,
        user_id: str | None = None,
    ):
        #: RabbitMQ refuses (closing the channel) a user_id that is not the connection's.
        self.user_id = user_id or (connection_user(connection) if connection else None)
        self._channel = channel
        self._exchange = exchange
        self._timeout = timeout
        self._closed = False
        self._connection = connection
        self._renewing = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._channel_since = time.monotonic()

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, timeout: float = 3.0, *, declare: bool = True
    ) -> Publisher:
        """A confirm channel; ``declare``: declare the whole topology first, else only
        check that the exchange exists (a user without *configure* permission)."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        if declare:
            exchange = await declare_topology(channel)
        else:
            exchange = await declare_exchange(channel, passive=True)
        return cls(channel, exchange, timeout, connection=connection)

    @property
    def ready(self) -> bool:
        """The confirm channel is open (not closed by us, not being restored)."""
        return not self._closed and not self._channel.is_closed

    async def close(self) -> None:
        self._closed = True
        if not self._channel.is_closed:
            await self._channel.close()

    async def publish(
        self,
        envelope: Envelope,
        routing_key: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish an event to the ``paylane`` exchange (routing key = its type), carrying
        the current trace (or starting one) unless ``headers`` already name it."""
        properties = envelope_properties(
            envelope, {**tracing.outgoing_headers(envelope.event_id), **(headers or {})}
        )
        await self._send(
            self._exchange.name, envelope.to_json(), properties, routing_key or envelope.type
        )

    async def publish_to_queue(
        self, queue: str, message: aio_pika.Message, *, exchange: str = ""
    ) -> None:
        """Publish to one queue through ``exchange``, a direct one bound to it by its name
        (a consumer queue's forward exchange: retry, DLQ, replay); the default exchange
        only when none is named, which no service's user may write to (an operator's
        replay to a queue outside the topology, tests)."""
        await self._send(exchange, message.body, message.properties, queue)

    async def publish_event_to_queue(
        self,
        queue: str,
        envelope: Envelope,
        headers: Mapping[str, Any] | None = None,
        *,
        exchange: str = "",
    ) -> None:
        """Publish an event to one queue with exactly ``headers`` (a replay from the
        outbox, with the trace it was stored with), as :meth:`publish_to_queue`."""
        properties = envelope_properties(envelope, headers)
        await self._send(exchange, envelope.to_json(), properties, queue)

    async def _send(
        self, exchange: str, body: bytes, properties: Basic.Properties, routing_key: str
    ) -> None:
        started = time.perf_counter()
        outcome = "confirmed"
        channel = self._channel
        properties.user_id = self.user_id
        try:
            if self._closed:
                raise RuntimeError("publisher closed")
            async with asyncio.timeout(self._timeout):
                if isinstance(channel, AbstractRobustChannel):
                    # After a reconnect the channel is restored in the background:
                    # wait for it within the same budget rather than fail at once.
                    await channel.ready()
                if channel.is_closed:
                    raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
                underlay = await channel.get_underlay_channel()
                # Raises DeliveryError on a nack, PublishError (its subclass) when returned
                # unroutable: the channel was opened with on_return_raises.
                await underlay.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=True,
                )
        except TimeoutError:
            outcome = "timeout"
            raise PublishError(f"broker did not confirm within {self._timeout:g}s") from None
        # PublishError (returned) subclasses DeliveryError (nack): test it first.
        except aio_pika.exceptions.PublishError:
            outcome = "returned"
            raise PublishError(f"message for {routing_key!r} was unroutable") from None
        except aio_pika.exceptions.DeliveryError as exc:
            outcome = "nack"
            await self._renew(channel)
            raise PublishError(f"broker refused the message: {exc.frame!r}") from None
        except _UNAVAILABLE as exc:
            outcome = "unavailable"
            raise PublishError(f"broker unavailable: {type(exc).__name__}") from None
        finally:
            _CONFIRM_SECONDS[outcome].observe(time.perf_counter() - started)

    async def _renew(self, nacked: AbstractChannel) -> None:
        """Publish on a fresh confirm channel from now on. RabbitMQ 3.10 keeps refusing
        every publish of a channel to a quorum queue whose leader's node was down when the
        channel first published to it (the channel's queue client keeps the dead leader,
        e.g. a channel restored on another node of a cluster right after a node died); a
        new channel finds the current leader. Once per channel, and not within
        ``RENEW_AFTER_S`` of the last renewal."""
        if self._connection is None:
            return
        async with self._renewing:
            if (
                self._closed
                or self._channel is not nacked
                or time.monotonic() - self._channel_since < RENEW_AFTER_S
            ):
                return
            try:
                async with asyncio.timeout(self._timeout):
                    channel = await self._connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
            except (*_UNAVAILABLE, TimeoutError) as exc:
                log.warning("publisher_channel_not_renewed", error=repr(exc))
                return
            name = self._exchange.name
            self._exchange = (
                await channel.get_exchange(name, ensure=False) if name else channel.default_exchange
            )
            self._channel, self._channel_since = channel, time.monotonic()
        log.warning("publisher_channel_renewed", reason="nack")
        # Closed once the publishes still waiting on it for confirms have had their time
        # (closing it now would fail them though the broker may hold them).
        closing = asyncio.create_task(self._close_later(nacked))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _close_later(self, channel: AbstractChannel) -> None:
        await asyncio.sleep(self._timeout)
        with contextlib.suppress(Exception):
            await channel.close()


def envelope_properties(
    envelope: Envelope, headers: Mapping[str, Any] | None = None
) -> Basic.Properties:
    """The AMQP properties of an envelope's message, as docs/events.md ("The envelope")
    names them."""
    return Basic.Properties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
        message_id=envelope.event_id,
        message_type=envelope.type,
        correlation_id=envelope.correlation_id,
        timestamp=datetime.now(UTC),
        headers=dict(headers or {}),
    )


def envelope_message(
    envelope: Envelope, headers: Mapping[str, Any] | None = None
) -> aio_pika.Message:
    """The AMQP message of an envelope, for :meth:`Publisher.publish_to_queue` and other
    aio-pika publishers: the properties of :func:`envelope_properties`."""
    p = envelope_properties(envelope, headers)
    return aio_pika.Message(
        body=envelope.to_json(),
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,  # as in envelope_properties
        message_id=p.message_id,
        type=p.message_type,
        correlation_id=p.correlation_id,
        timestamp=p.timestamp,
        headers=p.headers,
    )
