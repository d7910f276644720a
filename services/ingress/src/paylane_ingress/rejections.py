"""A record of every notification ingress rejects, for the operators' console: ingress has
no database, so it publishes ``notification.rejected`` (docs/events.md) and the order
service writes the row (paylane_order.rejections).

Never at the answer's expense: the record is published in the background, after the
answer is decided, and the request does not wait for it. Never unbounded: at most
``per_second`` records a second per process and ``max_in_flight`` publishes waiting for
their confirm; what is not recorded is counted
(``paylane_ingress_rejections_unrecorded_total{why}``: ``rate``, ``busy``, ``broker``). A
flood of forged notifications thus costs the broker at most ``per_second`` small messages
a second per replica, into a queue that drops its oldest (topology.ORDER_REJECTIONS).

What a record holds is :class:`NotificationRejected`'s: never the body, nor any payer
data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from paylane_common.broker.publisher import Publisher
from paylane_common.contract.events import NOTIFICATION_REJECTED, NotificationRejected, make_event
from paylane_common.runtime.exceptions import PublishError
from paylane_common.runtime.service import PUBLISHER

from . import metrics

log = structlog.get_logger(__name__)

#: How long shutdown waits for the records still being published.
DRAIN_S = 2.0


class RejectionRecorder:
    """Publishes rejection records in the background, capped (see the module)."""

    def __init__(
        self,
        per_second: int,
        *,
        max_in_flight: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_second = per_second
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._second = -1
        self._used = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.publisher: Publisher | None = None

    def record(self, rejected: NotificationRejected) -> None:
        """Publish ``rejected`` in the background, unless over the cap."""
        if self.publisher is None or self._per_second <= 0:
            return
        second = int(self._clock())
        if second != self._second:
            self._second, self._used = second, 0
        if self._used >= self._per_second:
            metrics.REJECTIONS_UNRECORDED.labels("rate").inc()
            return
        if len(self._tasks) >= self._max_in_flight:
            metrics.REJECTIONS_UNRECORDED.labels("busy").inc()
            return
        self._used += 1
        task = asyncio.create_task(self._publish(self.publisher, rejected))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, publisher: Publisher, rejected: NotificationRejected) -> None:
        try:
            await publisher.publish(make_event(NOTIFICATION_REJECTED, rejected))
        except PublishError as exc:
            metrics.REJECTIONS_UNRECORDED.labels("broker").inc()
            log.info("rejection_not_recorded", error=str(exc))

    async def drain(self, timeout_s: float = DRAIN_S) -> None:
        """Wait (a little) for the records still being published; cancel the rest."""
        self._per_second = 0
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task


REJECTION_RECORDER = web.AppKey("rejection_recorder", RejectionRecorder)


def use_rejection_recorder(app: web.Application, per_second: int) -> None:
    """Record rejections through the app's publisher (add after use_broker: drained before
    the broker closes)."""
    recorder = app[REJECTION_RECORDER] = RejectionRecorder(per_second)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        recorder.publisher = app[PUBLISHER]
        yield
        await recorder.drain()
        recorder.publisher = None

    app.cleanup_ctx.append(ctx)


def record(
    request: web.Request,
    route: str,
    reason: str,
    status: int,
    received_at: datetime | None = None,
    **seen: str | None,
) -> None:
    """Record a rejection of ``request`` (no-op in an app without a recorder). ``seen``:
    what could be read (event_id, event_type, out_trade_no, transaction_id, serial),
    each cut to its column's length."""
    recorder = request.app.get(REJECTION_RECORDER)
    if recorder is None:
        return
    limits = {"serial": 128}
    fields = {k: v[: limits.get(k, 64)] for k, v in seen.items() if isinstance(v, str) and v}
    recorder.record(
        NotificationRejected(
            route=route,
            reason=reason[:32],
            status=status,
            received_at=received_at or datetime.now(UTC),
            **fields,
        )
    )


def body_fields(body: bytes, *names: str) -> dict[str, str]:
    """The top-level string fields ``names`` of a JSON body, when it is one (a rejected
    notification's ``id`` and ``event_type``, signed or not: they are what WeChat Pay's
    merchant platform shows, and nothing of the payer's)."""
    try:
        parsed: Any = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(parsed, Mapping):
        return {}
    return {name: parsed[name] for name in names if isinstance(parsed.get(name), str)}
