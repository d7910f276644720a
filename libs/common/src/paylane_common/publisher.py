"""Publishing with publisher confirms + ``mandatory``: a publish returns only once the
broker has durably taken the message, and raises PublishError otherwise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from . import metrics, tracing
from .events import Envelope
from .exceptions import PublishError
from .topology import declare_exchange, declare_topology


class Publisher:
    """One confirm channel; safe for many concurrent publishes."""

    def __init__(self, channel: AbstractChannel, exchange: AbstractExchange, timeout: float):
        self._channel = channel
        self._exchange = exchange
        self._timeout = timeout
        self._closed = False

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
        return cls(channel, exchange, timeout)

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
        message = envelope_message(
            envelope, {**tracing.outgoing_headers(envelope.event_id), **(headers or {})}
        )
        await self._send(self._exchange, message, routing_key or envelope.type)

    async def publish_to_queue(self, queue: str, message: aio_pika.Message) -> None:
        """Publish straight to one queue through the default exchange (retry, DLQ, replay)."""
        await self._send(self._channel.default_exchange, message, queue)

    async def _send(
        self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str
    ) -> None:
        started = time.perf_counter()
        outcome = "confirmed"
        try:
            if self._closed:
                raise RuntimeError("publisher closed")
            async with asyncio.timeout(self._timeout):
                if isinstance(self._channel, AbstractRobustChannel):
                    # After a reconnect the channel is restored in the background:
                    # wait for it within the same budget rather than fail at once.
                    await self._channel.ready()
                await exchange.publish(message, routing_key=routing_key, mandatory=True)
        except TimeoutError:
            outcome = "timeout"
            raise PublishError(f"broker did not confirm within {self._timeout:g}s") from None
        # PublishError (returned) subclasses DeliveryError (nack): test it first.
        except aio_pika.exceptions.PublishError:
            outcome = "returned"
            raise PublishError(f"message for {routing_key!r} was unroutable") from None
        except aio_pika.exceptions.DeliveryError as exc:
            outcome = "nack"
            raise PublishError(f"broker refused the message: {exc.frame!r}") from None
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            outcome = "unavailable"
            raise PublishError(f"broker unavailable: {type(exc).__name__}") from None
        finally:
            metrics.PUBLISH_CONFIRM_SECONDS.labels(outcome).observe(time.perf_counter() - started)


def envelope_message(
    envelope: Envelope, headers: Mapping[str, Any] | None = None
) -> aio_pika.Message:
    """The AMQP message of an envelope: properties as DESIGN §5 names them."""
    return aio_pika.Message(
        body=envelope.to_json(),
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=envelope.event_id,
        type=envelope.type,
        correlation_id=envelope.correlation_id,
        timestamp=datetime.now(UTC),
        headers=dict(headers or {}),
    )
