"""Batches: what arrived together, applied in one MySQL transaction.

Under load a consumer's prefetch window fills faster than one transaction per message
drains it. A :class:`BatchConsumer` hands whatever has arrived (up to ``max_batch``) to
its handler's ``apply_batch`` inside one transaction, so that a batch costs a handful of
set-based statements and one commit instead of a transaction per message. Nothing waits
for a batch to fill: at low load every batch is a single message, handled as usual.

The per-message path stays the reference. ``apply_batch`` takes only the plain cases
(the steady state: a first delivery, the order pending, the amounts matching) and answers
``None`` for every message it leaves alone, with no effect of that message in the
transaction. Those, and every message of a batch whose transaction failed (a deadlock, a
lost connection, a bug), are then processed one by one, exactly as :class:`Consumer`
does; inbox and conditional updates make the second look safe. A batch that failed
because the database is down (outages.py) is put back whole and the consumer pauses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, runtime_checkable

import aiomysql
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import ChannelInvalidStateError

from paylane_common.broker.identities import Publishers
from paylane_common.broker.pressure import IngressYield
from paylane_common.broker.publisher import Publisher
from paylane_common.broker.topology import QueueSpec
from paylane_common.contract.events import Envelope, parse_event
from paylane_common.delivery import inbox
from paylane_common.delivery.consumer import Consumer, RetryPolicy
from paylane_common.runtime import metrics, tracing
from paylane_common.runtime.exceptions import EventValidationError
from paylane_common.runtime.outages import Dependency
from paylane_common.storage.db import transaction

log = structlog.get_logger(__name__)


@dataclass
class BatchItem:
    """One message of a batch, parsed. ``bind()`` sets its log context and trace: call
    it before logging or staging an event for it."""

    envelope: Envelope
    data: Any
    bind: Callable[[], None]


@runtime_checkable
class BatchHandler(Protocol):
    """A handler that can also apply many messages in one transaction."""

    pool: aiomysql.Pool

    async def __call__(self, envelope: Envelope, data: Any) -> str:
        """One message in its own transaction (the reference path)."""
        ...

    async def apply_batch(
        self, cur: aiomysql.Cursor, items: Sequence[BatchItem]
    ) -> list[str | None]:
        """Apply what it can of ``items`` with ``cur`` (one transaction): an outcome per
        item, or ``None`` for an item it left alone (nothing of it written)."""
        ...

    def after_commit(self, outcomes: Sequence[str]) -> None:
        """Called with the outcomes of a committed batch (e.g. to wake the outbox relay)."""
        ...


class BatchConsumer(Consumer):
    """A :class:`Consumer` that applies what has arrived together in one transaction."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        publisher: Publisher,
        spec: QueueSpec,
        handler: BatchHandler,
        *,
        database: Dependency,
        retry: RetryPolicy | None = None,
        prefetch: int = 128,
        max_batch: int = 64,
        declare: bool = True,
        yield_to: IngressYield | None = None,
        publishers: Publishers | None = None,
    ):
        super().__init__(
            connection,
            publisher,
            spec,
            handler,
            database=database,
            retry=retry,
            prefetch=prefetch,
            declare=declare,
            yield_to=yield_to,
            publishers=publishers,
        )
        self._batch_handler = handler
        self._max_batch = max_batch
        self._arrived: list[AbstractIncomingMessage] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping = False
        self._worker = asyncio.create_task(self._work(), name=f"batches-{self.spec.name}")
        await super().start()

    async def finish_in_flight(self, timeout: float) -> None:
        """Finish the batch being applied; what has arrived but not started is left
        unacked, so the broker redelivers it once the channel closes."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("batch_still_running_at_stop", queue=self.spec.name)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._arrived.append(message)
        self._wakeup.set()

    async def _work(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._arrived and not self._stopping:
                if self._yield is not None:
                    await self._yield.turn()  # ingress first (pressure.py)
                    if self._stopping:
                        break
                batch = self._arrived[: self._max_batch]
                del self._arrived[: len(batch)]
                self._idle.clear()
                try:
                    await self.process_batch(batch)
                except Exception as exc:  # never let the worker die: redelivery follows
                    log.exception("batch_worker_error", queue=self.spec.name, error=repr(exc))
                finally:
                    self._idle.set()

    async def process_batch(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        """Apply ``messages`` in one transaction where the handler can, then settle them;
        the rest one by one."""
        if len(messages) == 1 or self.paused:
            await self._one_by_one(messages)
            return
        metrics.BATCH_SIZE.labels(self.spec.name).observe(len(messages))
        started = time.perf_counter()
        items: list[BatchItem] = []
        parsed: list[AbstractIncomingMessage] = []
        alone: list[AbstractIncomingMessage] = []
        for message in messages:
            try:
                envelope, data = parse_event(message.body)
            except EventValidationError:
                alone.append(message)  # dead-lettered by the reference path, with the reason
                continue
            if self.identities.refusal(envelope.type, self.identities.publisher(message)):
                alone.append(message)  # refused by the reference path (consumer.py)
                continue
            items.append(BatchItem(envelope, data, partial(self.bind_context, message)))
            parsed.append(message)
        outcomes: list[str | None] | None = None
        failure: Exception | None = None
        if items:
            try:
                async with asyncio.timeout(self.retry.handler_timeout_s):
                    async with transaction(self._batch_handler.pool) as cur:
                        outcomes = await self._batch_handler.apply_batch(cur, items)
            except Exception as exc:
                failure = exc
            finally:  # the last item's context must not follow
                structlog.contextvars.clear_contextvars()
                tracing.end()
        if failure is not None:
            if await self._database.confirm_down(failure):
                self.pause()
                await self._one_by_one(messages)  # each put back: the consumer is paused
                return
            log.warning(
                "batch_failed_one_by_one",
                queue=self.spec.name,
                size=len(items),
                error=repr(failure)[:300],
            )
        if outcomes is None:
            await self._one_by_one(messages)
            return
        applied = [(m, o) for m, o in zip(parsed, outcomes, strict=True) if o is not None]
        alone += [m for m, o in zip(parsed, outcomes, strict=True) if o is None]
        if applied:
            self._batch_handler.after_commit([o for _, o in applied])
        elapsed = time.perf_counter() - started
        for _message, outcome in await _ack(messages, dict(applied)):
            metrics.HANDLER_SECONDS.labels(self.spec.name).observe(elapsed)
            metrics.CONSUMER_MESSAGES.labels(self.spec.name, outcome).inc()
        await self._one_by_one(alone)

    async def _one_by_one(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        for message in messages:
            await self.process(message)


async def _ack(
    messages: Sequence[AbstractIncomingMessage],
    applied: dict[AbstractIncomingMessage, str],
) -> list[tuple[AbstractIncomingMessage, str]]:
    """Ack the applied messages; returns those acked with their outcomes.

    Every delivery before this batch is settled (batches are settled in turn), so the
    longest run of applied messages from the batch's start on one channel is acked with
    one ``multiple`` ack of its last delivery tag; the rest one by one.
    """
    run = 0
    try:
        channel = messages[0].channel
        while run < len(messages) and messages[run] in applied:
            if messages[run].channel is not channel:
                break
            run += 1
    except ChannelInvalidStateError:  # closed: the acks below fail and are logged
        run = 0
    acked: list[tuple[AbstractIncomingMessage, str]] = []
    singles = [m for m in messages[run:] if m in applied]
    if run:
        try:
            await messages[run - 1].ack(multiple=True)
            acked += [(m, applied[m]) for m in messages[:run]]
        except Exception as exc:  # the broker is gone mid-ack: redelivery will follow
            log.warning("consumer_settle_failed", error=repr(exc), messages=run)
    for message in singles:
        try:
            await message.ack()
        except Exception as exc:
            log.warning("consumer_settle_failed", error=repr(exc), event_id=message.message_id)
            continue
        acked.append((message, applied[message]))
    return acked


async def first_deliveries(
    cur: aiomysql.Cursor,
    consumer: str,
    items: Sequence[BatchItem],
    outcomes: list[str | None],
    kind: type,
) -> list[tuple[int, BatchItem]]:
    """``(index, item)`` of the items of ``kind`` whose event ``consumer`` has not seen.
    Those already in the inbox get the outcome ``duplicate`` (as the reference path's
    claim would answer); a second copy within the batch is left alone (``None``)."""
    candidates: dict[str, tuple[int, BatchItem]] = {}
    for i, item in enumerate(items):
        if isinstance(item.data, kind):
            candidates.setdefault(item.envelope.event_id, (i, item))
    if not candidates:
        return []
    for event_id in await inbox.seen(cur, consumer, list(candidates)):
        outcomes[candidates.pop(event_id)[0]] = "duplicate"
    return list(candidates.values())
