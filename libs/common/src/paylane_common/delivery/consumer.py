"""Consumer runner: manual ack after the handler's work is durable, explicit outcomes.

A handler returns an outcome label (``"processed"``, ``"duplicate"``, …) and the message is
acked; or raises :class:`Retry` (parked in ``<queue>.retry.<delay>`` and redelivered
after the delay, up to a limit) or :class:`Reject` (copied to ``<queue>.dlq`` with the
reason, then acked).
Invalid messages are rejected to the DLQ at once; an unexpected exception is retried with
backoff (:class:`RetryPolicy`), then dead-lettered. Nothing is requeued forever.

An event from an identity that does not publish its type (identities.py: the validated
``user_id``) never reaches the handler: it is dead-lettered with the reason, logged as
``publisher_refused`` and counted with the outcome ``publisher_refused``. Retries, dead
letters and put-backs go through the queue's own forward exchange (topology.py), carrying
the publisher the message came from in ``x-paylane-original-user``.

An outage is not the message's fault (outages.py): when a handler fails because the
database is unreachable, stalled or read-only, the consumer pauses (stops taking
deliveries), puts the message back at the tail of its queue unchanged (its attempt count
does not grow; a new copy, so the broker's delivery limit does not count it either),
returns every other delivery it holds the same way, reports not-ready with the reason, and
takes deliveries again once the database answers its probe. A deadlock or lock-wait
timeout is retried without counting an attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from paylane_common.broker.amqp import (
    CLOSE_TIMEOUT_S,
    close_quietly,
    copy_message,
    without_broker_headers,
)
from paylane_common.broker.identities import (
    IdentityCheck,
    Publishers,
    connection_user,
    forwarded_headers,
)
from paylane_common.broker.pressure import IngressYield
from paylane_common.broker.publisher import Publisher
from paylane_common.broker.topology import (
    QueueSpec,
    declare_queue,
    existing_forward_exchange,
    existing_queue,
)
from paylane_common.contract.events import Envelope, parse_event
from paylane_common.runtime import metrics, tracing
from paylane_common.runtime.exceptions import EventValidationError, PaylaneError, PublishError
from paylane_common.runtime.outages import Dependency, NotReady, describe, is_contention
from paylane_common.runtime.settings import ConsumerSettings, default_of

log = structlog.get_logger(__name__)

ATTEMPT_HEADER = "x-paylane-attempt"
REASON_HEADER = "x-paylane-reason"
ORIGIN_HEADER = "x-paylane-queue"
FAILED_AT_HEADER = "x-paylane-failed-at"
#: The outcome of an event from an identity that does not publish its type.
PUBLISHER_REFUSED = "publisher_refused"

Handler = Callable[[Envelope, Any], Awaitable[str]]


class Retry(PaylaneError):
    """Try this message again later (e.g. the order row may still be committing)."""

    def __init__(self, reason: str, max_attempts: int = 4, delay_s: float = 1.0):
        super().__init__(reason)
        self.reason = reason
        self.max_attempts = max_attempts
        self.delay_s = delay_s


class Reject(PaylaneError):
    """This message can never succeed: dead-letter it with the reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """What a message whose handler keeps failing gets (settings: ``CONSUMER_RETRY_*``,
    ``CONSUMER_HANDLER_TIMEOUT_S``)."""

    attempts: int = default_of(ConsumerSettings, "consumer_retry_attempts")
    base_delay_s: float = 1.0
    max_delay_s: float = default_of(ConsumerSettings, "consumer_retry_max_delay_s")
    handler_timeout_s: float = default_of(ConsumerSettings, "consumer_handler_timeout_s")

    @classmethod
    def from_settings(cls, settings: ConsumerSettings) -> RetryPolicy:
        return cls(
            attempts=settings.consumer_retry_attempts,
            max_delay_s=settings.consumer_retry_max_delay_s,
            handler_timeout_s=settings.consumer_handler_timeout_s,
        )

    def delay_s(self, attempt: int) -> float:
        """The backoff before try ``attempt + 1``."""
        return float(min(self.base_delay_s * 2**attempt, self.max_delay_s))


class Consumer:
    """Consumes one queue with a handler; start() / stop() around the service's life.

    ``database`` is the dependency whose outage pauses it (outages.py)."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        publisher: Publisher,
        spec: QueueSpec,
        handler: Handler,
        *,
        database: Dependency,
        retry: RetryPolicy | None = None,
        prefetch: int = 32,
        declare: bool = True,
        yield_to: IngressYield | None = None,
        publishers: Publishers | None = None,
    ):
        self._connection = connection
        #: Who may publish what; its own user is the connection's (identities.py).
        self.identities = IdentityCheck(publishers or Publishers(), connection_user(connection))
        #: Waited on before handling: ingress first while it is busy (pressure.py).
        self._yield = yield_to
        self._declare = declare
        self._publisher = publisher
        self.spec = spec
        self._handler = handler
        self._database = database
        self.retry = retry or RetryPolicy()
        self._prefetch = prefetch
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        #: Set while an outage pauses it: the task that takes deliveries again.
        self._resuming: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def paused(self) -> bool:
        return self._resuming is not None

    async def check(self) -> None:
        """Its readiness check: not ready while an outage pauses it."""
        if self.paused:
            raise NotReady(f"paused, {self._database.reason or 'resuming'}")

    async def start(self) -> None:
        self._stopping = False
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        if self._declare:
            self._queue = await declare_queue(channel, self.spec)
        else:  # its retry queues, DLQ and forward exchange come with it (definitions.json)
            self._queue = await existing_queue(channel, self.spec.name)
            await existing_forward_exchange(channel, self.spec)
        self._tag = await self._queue.consume(self._on_message)
        metrics.CONSUMER_PAUSED.labels(self.spec.name).set(0)
        for outcome in metrics.ALERTED_CONSUMER_OUTCOMES:
            metrics.CONSUMER_MESSAGES.labels(self.spec.name, outcome)
        log.info("consumer_started", queue=self.spec.name, prefetch=self._prefetch)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop taking messages, let in-flight ones finish (unacked ones are redelivered)."""
        self._stopping = True  # a handler meeting an outage now does not pause (resume) it
        if self._yield is not None:
            self._yield.release()  # what waits for its turn is left unacked: redelivered
        if self._resuming is not None:
            self._resuming.cancel()
            await asyncio.gather(self._resuming, return_exceptions=True)
        await self._cancel_consume()
        await self.finish_in_flight(timeout)
        if self._queue is not None and not self._queue.channel.is_closed:
            await close_quietly(self._queue.channel, f"consumer channel {self.spec.name}")

    async def _cancel_consume(self) -> None:
        if self._queue is not None and self._tag is not None:
            tag, self._tag = self._tag, None
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._queue.cancel(tag)
            except Exception as exc:  # broker gone: nothing more will arrive anyway
                log.warning("consumer_cancel_failed", queue=self.spec.name, error=repr(exc))

    def pause(self) -> None:
        """Stop taking deliveries until the database is back (see the module doc)."""
        if self._resuming is None and not self._stopping:
            log.error("consumer_paused", queue=self.spec.name, reason=self._database.reason)
            metrics.CONSUMER_PAUSED.labels(self.spec.name).set(1)
            self._resuming = asyncio.create_task(
                self._resume_when_up(),
                name=f"resume-{self.spec.name}",
                context=contextvars.Context(),  # not the log context of the message
            )

    async def _resume_when_up(self) -> None:
        paused_at = time.monotonic()
        await self._cancel_consume()
        await self._database.wait_up()
        delay = 0.5
        while self._queue is not None:
            try:
                self._tag = await self._queue.consume(self._on_message)
                break
            except Exception as exc:  # the broker is away too: its connection comes back
                log.warning("consumer_resume_failed", queue=self.spec.name, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._resuming = None
        metrics.CONSUMER_PAUSED.labels(self.spec.name).set(0)
        log.warning(
            "consumer_resumed",
            queue=self.spec.name,
            paused_for_s=round(time.monotonic() - paused_at, 1),
        )

    async def finish_in_flight(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the messages being handled."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            if self._yield is not None:
                await self._yield.turn()
                if self._stopping:
                    return  # unacked: redelivered once the channel closes
            await self.process(message)
        finally:
            self._in_flight.discard(task)

    def bind_context(self, message: AbstractIncomingMessage) -> None:
        """Log context and trace of ``message`` for what the current task does next."""
        structlog.contextvars.clear_contextvars()
        event_id = message.message_id or ""
        trace_id = tracing.from_headers(message.headers, event_id)
        tracing.begin(trace_id, event_id)
        structlog.contextvars.bind_contextvars(
            queue=self.spec.name,
            event_id=event_id,
            out_trade_no=message.correlation_id,
            trace_id=trace_id,
        )

    async def process(self, message: AbstractIncomingMessage) -> None:
        """Handle one message on its own and settle it (ack, retry or dead-letter)."""
        queue = self.spec.name
        self.bind_context(message)
        started = time.perf_counter()
        try:
            outcome = await self._handle(message)
        except Exception as exc:  # the broker is gone mid-ack: redelivery will follow
            log.warning("consumer_settle_failed", error=repr(exc))
            return
        finally:
            metrics.HANDLER_SECONDS.labels(queue).observe(time.perf_counter() - started)
            structlog.contextvars.clear_contextvars()
            tracing.end()
        metrics.CONSUMER_MESSAGES.labels(queue, outcome).inc()

    async def _handle(self, message: AbstractIncomingMessage) -> str:
        if self.paused:  # delivered before the pause took effect
            return await self.put_back(message)
        try:
            envelope, data = parse_event(message.body)
        except EventValidationError as exc:
            log.error("message_invalid", reason=str(exc))
            return await self._dead_letter(message, str(exc))
        structlog.contextvars.bind_contextvars(event_type=envelope.type)
        refused = self.refusal(message, envelope.type)
        if refused is not None:
            outcome = await self._dead_letter(message, refused)
            return PUBLISHER_REFUSED if outcome == "dead_lettered" else outcome
        attempt = _attempt(message)
        try:
            async with asyncio.timeout(self.retry.handler_timeout_s):
                outcome = await self._handler(envelope, data)
        except Reject as exc:
            log.error("message_rejected", reason=exc.reason)
            return await self._dead_letter(message, exc.reason)
        except Retry as exc:
            if attempt + 1 >= exc.max_attempts:
                log.error("message_retries_exhausted", reason=exc.reason, attempts=attempt + 1)
                return await self._dead_letter(
                    message, f"{exc.reason} (after {attempt + 1} attempts)"
                )
            log.info("message_retry", reason=exc.reason, attempt=attempt + 1)
            return await self._retry(message, attempt + 1, exc.delay_s)
        except Exception as exc:
            return await self.failed(message, attempt, exc)
        await message.ack()
        return outcome

    def refusal(self, message: AbstractIncomingMessage, event_type: str) -> str | None:
        """Why ``message`` is not taken from its publisher (logged as an alert), or None."""
        publisher = self.identities.publisher(message)
        reason = self.identities.refusal(event_type, publisher)
        if reason is not None:
            log.error("publisher_refused", publisher=publisher, user_id=message.user_id)
        return reason

    async def failed(self, message: AbstractIncomingMessage, attempt: int, exc: Exception) -> str:
        """Settle a message whose handler raised ``exc``: put back during an outage,
        tried again at once on contention, else retried with backoff, then dead-lettered."""
        if await self._database.confirm_down(exc):
            self.pause()
            return await self.put_back(message)
        reason = describe(exc)
        if is_contention(exc):
            log.info("message_contention_retry", reason=reason, attempt=attempt)
            return await self._retry(message, attempt, self.retry.base_delay_s)
        if attempt + 1 >= self.retry.attempts:
            log.error("message_failed", reason=reason, attempts=attempt + 1, exc_info=exc)
            return await self._dead_letter(message, reason)
        delay = self.retry.delay_s(attempt)
        log.warning("message_failed_will_retry", reason=reason, attempt=attempt + 1, delay_s=delay)
        return await self._retry(message, attempt + 1, delay)

    async def put_back(self, message: AbstractIncomingMessage) -> str:
        """At the tail of its queue, as it came (attempt count unchanged), as a new copy."""
        copy = copy_message(message, self._forwarded_headers(message))
        return await self._forward(message, self.spec.name, copy, "put_back_outage")

    def _forwarded_headers(self, message: AbstractIncomingMessage) -> dict[str, Any]:
        """A forward's headers: the message's, less the broker's, naming its publisher."""
        headers = without_broker_headers(message.headers)
        return forwarded_headers(headers, self.identities.publisher(message))

    async def _retry(self, message: AbstractIncomingMessage, attempt: int, delay_s: float) -> str:
        copy = copy_message(message, {**self._forwarded_headers(message), ATTEMPT_HEADER: attempt})
        # The parking queue's own TTL is the delay (no per-message expiration: that
        # expires only at a queue's head, behind longer delays).
        queue = self.spec.retry_queue_for(delay_s)
        return await self._forward(message, queue, copy, "retried")

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> str:
        copy = copy_message(
            message,
            {
                **self._forwarded_headers(message),
                REASON_HEADER: reason[:500],
                ORIGIN_HEADER: self.spec.name,
                FAILED_AT_HEADER: datetime.now(UTC).isoformat(),
            },
        )
        return await self._forward(message, self.spec.dlq, copy, "dead_lettered")

    async def _forward(
        self, message: AbstractIncomingMessage, queue: str, copy: aio_pika.Message, outcome: str
    ) -> str:
        """Publish the copy (confirmed) through the queue's forward exchange and only then
        ack the original."""
        try:
            await self._publisher.publish_to_queue(queue, copy, exchange=self.spec.forward_exchange)
        except PublishError as exc:
            log.warning("forward_failed_requeue", target=queue, error=str(exc))
            await message.nack(requeue=True)
            return "requeued"
        await message.ack()
        return outcome


def _attempt(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPT_HEADER, 0)
    return value if isinstance(value, int) else 0
