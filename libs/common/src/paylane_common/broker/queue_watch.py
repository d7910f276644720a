"""How deep a consumer's queue and its DLQ are, for Prometheus.

Every consumer service asks the broker, every ``interval_s``, about its own queue and
DLQ by a passive declaration (which needs no permission and returns the ready messages
and the consumers) and sets ``paylane_queue_messages`` / ``paylane_queue_consumers``.
A dead letter in a ``*.dlq`` is the alert an operator must act on, and it should not
depend on how the broker is monitored: RabbitMQ's own Prometheus plugin gives the same
numbers (and more) where it is enabled, but it is a broker-side choice paylane does not
make. Every replica reports the same values: aggregate with ``max by (queue)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker.amqp import close_quietly
from paylane_common.runtime import metrics
from paylane_common.runtime.background import BackgroundLoop

log = structlog.get_logger(__name__)

INTERVAL_S = 15.0


class QueueWatch(BackgroundLoop):
    """Refreshes the queue gauges of ``queues`` until stopped."""

    task_name = "queue-watch"

    def __init__(
        self,
        connection: AbstractRobustConnection,
        queues: Sequence[str],
        *,
        interval_s: float = INTERVAL_S,
    ):
        self._connection = connection
        self._queues = tuple(queues)
        self._interval_s = interval_s
        self._failing = False

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval_s)

    async def refresh(self) -> None:
        """One look at every queue; a failure (the broker away, a queue missing) keeps the
        last values and is logged once until a look succeeds again."""
        try:
            channel = await self._connection.channel()
            try:
                for name in self._queues:
                    queue = await channel.declare_queue(name, passive=True, robust=False)
                    result = queue.declaration_result
                    metrics.QUEUE_MESSAGES.labels(name).set(result.message_count or 0)
                    metrics.QUEUE_CONSUMERS.labels(name).set(result.consumer_count or 0)
            finally:
                await close_quietly(channel, "queue watch channel")
        except Exception as exc:
            if not self._failing:
                log.warning("queue_watch_failed", queues=self._queues, error=repr(exc)[:200])
            self._failing = True
            return
        self._failing = False
